//! Reading a stream's history back from JetStream (direct gets), and the history
//! stream's settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream, ErrorCode};

use super::recent::Recent;
use super::{
    epoch_of, fit_duplicate_window, fit_replicas, get_or_create, parse_body, subject_for, Replicas,
    STREAM, SUBJECT_PREFIX,
};
use crate::broker::history::{Entry, HistoryConfig, HistoryError};

/// Reads a stream's history from JetStream.
pub struct StoredHistory {
    pub(super) stream: stream::Stream,
    /// Changes if the stream is made anew (deleted, its store lost): see [`consume`].
    pub(super) epoch: parking_lot::RwLock<String>,
    /// The stream has more than one replica: reads go to its leader. A replica that
    /// is catching up (its machine just restarted) answers direct reads too, with "no
    /// message" for what it has not got yet — a replay would end early and be
    /// confirmed. With one replica, direct reads (any server, no API queue) are exact.
    pub(super) replicated: AtomicBool,
    /// What this process's consumer read lately: replays of it need no NATS round trip.
    pub(super) recent: Recent,
    /// The NATS link is up (see [`StoredHistory::tail_answers`]).
    pub(super) link_up: Arc<AtomicBool>,
}

/// A replay reads at most this many messages of one stream (more than any per-stream
/// limit a node sets); past it the request is refused rather than cut short.
const MAX_REPLAY: usize = 10_000;

fn unavailable(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

/// How long a history read tries again while JetStream does not answer: a machine
/// lost takes the stream's leader with it, and the others elect another in seconds
/// (meanwhile direct reads go unanswered). The client's replay waits rather than get
/// `reject_history` for a moment's election.
const READ_RETRY_FOR: Duration = Duration::from_secs(20);
const READ_RETRY_PAUSE: Duration = Duration::from_millis(250);

async fn retrying<F, Fut>(mut read: F) -> Result<Vec<Entry>, HistoryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Entry>, HistoryError>>,
{
    let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
    loop {
        match read().await {
            Err(HistoryError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                log::debug!("NATS JetStream: a history read failed ({why}); trying again");
                tokio::time::sleep(READ_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

fn direct_read(
    read: Result<StreamMessage, stream::DirectGetError>,
) -> Result<Option<StreamMessage>, HistoryError> {
    match read {
        Ok(message) => Ok(Some(message)),
        Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

fn leader_read(
    read: Result<StreamMessage, stream::RawMessageError>,
) -> Result<Option<StreamMessage>, HistoryError> {
    match read {
        Ok(message) => Ok(Some(message)),
        Err(e) => match e.kind() {
            stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            stream::RawMessageErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(None)
            }
            _ => Err(unavailable(e)),
        },
    }
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

    /// Replays come from the recent tail while the consumer reads (what it has not
    /// read yet follows live, in order), or while NATS is away (all there is); while
    /// it is being made again (its server lost), JetStream answers, whole.
    async fn tail_answers(&self) -> bool {
        self.recent.wait_loaded().await;
        self.recent.is_reading() || !self.link_up.load(Ordering::Acquire)
    }

    fn replicated(&self) -> bool {
        self.replicated.load(Ordering::Acquire)
    }

    /// The first message of `subject` (wildcards too) at or after sequence `from`.
    pub(super) async fn next_for(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<StreamMessage>, HistoryError> {
        if self.replicated() {
            leader_read(
                self.stream
                    .get_first_raw_message_by_subject(subject, from)
                    .await,
            )
        } else {
            direct_read(
                self.stream
                    .direct_get_next_for_subject(subject, Some(from))
                    .await,
            )
        }
    }

    /// The message at sequence `seq`.
    async fn at(&self, seq: u64) -> Result<Option<StreamMessage>, HistoryError> {
        if self.replicated() {
            leader_read(self.stream.get_raw_message(seq).await)
        } else {
            direct_read(self.stream.direct_get(seq).await)
        }
    }

    /// The last message of `subject`.
    async fn last_for(&self, subject: &str) -> Result<Option<StreamMessage>, HistoryError> {
        if self.replicated() {
            leader_read(self.stream.get_last_raw_message_by_subject(subject).await)
        } else {
            direct_read(self.stream.direct_get_last_for_subject(subject).await)
        }
    }

    /// The messages of `subject` after sequence `after`, oldest first (every one: the
    /// per-stream limit is the stream's, which another node may have set higher).
    async fn after(&self, subject: &str, after: u64) -> Result<Vec<Entry>, HistoryError> {
        let mut entries = Vec::new();
        let mut next = after.saturating_add(1);
        loop {
            if entries.len() >= MAX_REPLAY {
                return Err(HistoryError::TooLong { max: MAX_REPLAY });
            }
            match self.next_for(subject, next).await? {
                Some(message) => {
                    next = message.sequence.saturating_add(1);
                    entries.extend(Self::entry(message));
                }
                None => break,
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
        if self.tail_answers().await {
            if let Some(entries) = self.recent.after(epoch, stream, offset) {
                return Ok(entries);
            }
        }
        retrying(|| self.read_from(stream, epoch, offset)).await
    }

    async fn read_from(
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
        let gone = HistoryError::OffsetGone {
            offset,
            oldest: 0,
            last: 0,
        };
        if offset == 0 {
            return Err(gone);
        }
        match self.at(offset).await? {
            Some(message) if message.subject.as_str() == subject => Ok(entries),
            _ => Err(gone),
        }
    }

    /// The offset (stream sequence) of the stream's last kept message; 0 for none.
    pub async fn tail(&self, stream: &str) -> Result<u64, HistoryError> {
        let last = self.last_for(&subject_for(stream)).await?;
        Ok(last.map_or(0, |m| m.sequence))
    }

    /// Nothing of any stream after `offset` has been dropped (by age or the byte cap,
    /// which drop the oldest first): the history stream's first sequence is not past
    /// `offset + 1`.
    pub async fn kept_all_after(&self, offset: u64) -> Result<bool, HistoryError> {
        let info = self.stream.get_info().await.map_err(unavailable)?;
        Ok(info.state.first_sequence <= offset.saturating_add(1))
    }

    /// The messages stored at or after `since` (unix seconds), oldest first.
    pub async fn since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        if self.tail_answers().await {
            if let Some(entries) = self.recent.since(&self.epoch(), stream, since) {
                return Ok(entries);
            }
        }
        retrying(|| self.read_since(stream, since)).await
    }

    async fn read_since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        let subject = subject_for(stream);
        match self.last_for(&subject).await? {
            Some(last) if (last.time.unix_timestamp().max(0) as u64) >= since => {}
            _ => return Ok(Vec::new()),
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

/// Finds the history stream (made, or its limits and replicas brought to this
/// process's): the stream, its epoch and its replicas.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    config: &HistoryConfig,
    replicas: Replicas,
) -> Result<(stream::Stream, String, usize), String> {
    let wanted = stream_config(config);
    let what = format!("history stream {STREAM}");
    let (stream, info) = get_or_create(js, wanted.clone(), &what, replicas).await?;
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
    let replicas = fit_replicas(js, STREAM, &what, replicas).await?;
    Ok((stream, epoch_of(info.created), replicas))
}
