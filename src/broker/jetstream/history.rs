//! Reading a stream's history back from JetStream (direct gets), and the history
//! stream's settings.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::{
    epoch_of, fit_duplicate_window, get_or_create, parse_body, subject_for, STREAM, SUBJECT_PREFIX,
};
use crate::broker::history::{Entry, HistoryConfig, HistoryError};

/// Reads a stream's history from JetStream.
pub struct StoredHistory {
    pub(super) stream: stream::Stream,
    /// Changes if the stream is made anew (deleted, its store lost): see [`consume`].
    pub(super) epoch: parking_lot::RwLock<String>,
}

/// A replay reads at most this many messages of one stream (more than any per-stream
/// limit a node sets); past it the request is refused rather than cut short.
const MAX_REPLAY: usize = 10_000;

/// The last sequence this process's consumer delivered (one consumer per process).
pub(super) static CONSUMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Stored broadcasts up to this sequence have been delivered live here.
pub fn consumed() -> u64 {
    CONSUMED.load(Ordering::Acquire)
}

fn unavailable(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

fn is_not_found(e: &stream::DirectGetError) -> bool {
    matches!(e.kind(), stream::DirectGetErrorKind::NotFound)
}

impl StoredHistory {
    pub fn epoch(&self) -> String {
        self.epoch.read().clone()
    }

    fn entry(message: jetstream::message::StreamMessage) -> Option<Entry> {
        let (_, data, _) = parse_body(&message.payload)?;
        Some(Entry {
            offset: message.sequence,
            at: message.time.unix_timestamp().max(0) as u64,
            data: Arc::from(data),
        })
    }

    /// The messages of `subject` after sequence `after`, oldest first (every one: the
    /// per-stream limit is the stream's, which another node may have set higher).
    async fn after(&self, subject: &str, after: u64) -> Result<Vec<Entry>, HistoryError> {
        let mut entries = Vec::new();
        let mut next = after.saturating_add(1);
        loop {
            if entries.len() >= MAX_REPLAY {
                return Err(unavailable(format!(
                    "more than {MAX_REPLAY} messages to replay"
                )));
            }
            match self
                .stream
                .direct_get_next_for_subject(subject, Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence.saturating_add(1);
                    entries.extend(Self::entry(message));
                }
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(entries)
    }

    /// The messages after `offset` in `epoch`; fails when the epoch is not the
    /// stream's or the client's own last message is gone (what came after it may be
    /// gone too: a client whose last message expired is refused even when nothing
    /// followed it).
    pub async fn from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Vec<Entry>, HistoryError> {
        if epoch != *self.epoch.read() {
            return Err(HistoryError::EpochMismatch);
        }
        let subject = subject_for(stream);
        let entries = self.after(&subject, offset).await?;
        // Checked after reading: messages go oldest first, so while the client's last
        // one is still here, nothing after it has gone.
        match self.stream.direct_get(offset).await {
            Ok(message) if message.subject.as_str() == subject => Ok(entries),
            Ok(_) => Err(HistoryError::OffsetGone {
                offset,
                oldest: 0,
                last: 0,
            }),
            Err(e) if is_not_found(&e) || offset == 0 => Err(HistoryError::OffsetGone {
                offset,
                oldest: 0,
                last: 0,
            }),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The messages stored at or after `since` (unix seconds), oldest first.
    pub async fn since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        let subject = subject_for(stream);
        match self
            .stream
            .direct_get_last_for_subject(subject.as_str())
            .await
        {
            Ok(last) if (last.time.unix_timestamp().max(0) as u64) < since => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        }
        let mut entries = self.after(&subject, 0).await?;
        entries.retain(|e| e.at >= since);
        Ok(entries)
    }
}

/// The history stream as this process's settings want it.
fn stream_config(config: &HistoryConfig) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{SUBJECT_PREFIX}>")],
        max_messages_per_subject: config.limit.max(1) as i64,
        max_age: config.ttl,
        max_bytes: config.max_bytes as i64,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        allow_direct: true,
        // nats-server refuses a window longer than max_age (its default is 2 min).
        duplicate_window: config.ttl.min(Duration::from_secs(120)),
        ..Default::default()
    }
}

/// Finds the history stream (made, or its limits brought to this process's), and its
/// epoch.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    config: &HistoryConfig,
) -> Result<(stream::Stream, String), String> {
    let wanted = stream_config(config);
    let (stream, info) =
        get_or_create(js, wanted.clone(), &format!("history stream {STREAM}")).await?;
    let have = &info.config;
    if have.max_messages_per_subject != wanted.max_messages_per_subject
        || have.max_age != wanted.max_age
        || have.max_bytes != wanted.max_bytes
        || have.subjects != wanted.subjects
        || !have.allow_direct
        || have.duplicate_window > have.max_age.max(wanted.max_age)
    {
        log::warn!(
            "NATS JetStream: history stream {STREAM} had other limits (per stream {}, ttl {:?}, bytes {}); now {}, {:?}, {} (every node should have the same ANYCABLE_HISTORY_* settings)",
            have.max_messages_per_subject,
            have.max_age,
            have.max_bytes,
            wanted.max_messages_per_subject,
            wanted.max_age,
            wanted.max_bytes
        );
        let mut update = have.clone();
        update.max_messages_per_subject = wanted.max_messages_per_subject;
        update.max_age = wanted.max_age;
        update.max_bytes = wanted.max_bytes;
        update.subjects = wanted.subjects.clone();
        update.allow_direct = true;
        fit_duplicate_window(&mut update);
        js.update_stream(update)
            .await
            .map_err(|e| format!("updating history stream {STREAM}: {e}"))?;
    }
    Ok((stream, epoch_of(info.created)))
}
