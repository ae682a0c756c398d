//! The NATS broker's history consumer: one per process, it reads every stored
//! broadcast in sequence order, delivers those stored since the process started to
//! its subscribers, and keeps the recent ones in memory for replays ([`Recent`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures_util::StreamExt;

use super::link::StoredSink;
use super::recent::PRELOAD;
use super::{epoch_of, parse_body, StoredHistory, STREAM, SUBJECT_PREFIX};
use crate::pubsub::nats::NatsClient;

#[cfg(doc)]
use super::recent::Recent;

/// The last sequence this process's consumer read (one consumer per process).
static CONSUMED: AtomicU64 = AtomicU64::new(0);

/// Stored broadcasts up to this sequence have been delivered live here (or were
/// stored before this process started, and never will be).
pub fn consumed() -> u64 {
    CONSUMED.load(Ordering::Acquire)
}

/// At most this many stored broadcasts a jump in the consumer's sequences is filled
/// with (a longer one is said in the log, not filled).
const MAX_GAP: u64 = 10_000;

/// What the consumer does with stored broadcast `seq`: kept in the recent tail, and
/// delivered when it was stored since the process started (`live`).
struct Taken<'a> {
    reader: &'a StoredHistory,
    sink: &'a StoredSink,
    epoch: &'a str,
}

impl Taken<'_> {
    fn take(&self, seq: u64, payload: &[u8], at: time::OffsetDateTime, live: bool) {
        match parse_body(payload) {
            Some((stream, data, exclude)) => {
                let unix = at.unix_timestamp().max(0) as u64;
                self.reader
                    .recent
                    .record(self.epoch, seq, &stream, unix, &data);
                if live {
                    (self.sink)(&stream, &data, exclude.as_deref(), self.epoch, seq);
                }
            }
            None => log::warn!(
                "NATS JetStream: stored message {seq} is not an AnyCable broadcast; skipped"
            ),
        }
        CONSUMED.store(seq, Ordering::Release);
    }

    /// Takes the stored broadcasts `from..to`, which the consumer skipped, read from
    /// the stream (its leader when replicated); ones gone by the limits are passed.
    /// The consumer's filter takes every subject of the stream, whose sequences come
    /// one after another (older messages only go by the limits): a jump means it missed
    /// some (seen after a partition: a consumer made again on a replica still catching
    /// up). Unfilled, the recent tail starts again after the jump.
    async fn fill(&self, from: u64, to: u64, start: time::OffsetDateTime) {
        let missing = to - from;
        if missing > MAX_GAP {
            log::error!(
                "NATS JetStream: the history consumer skipped {missing} stored broadcasts ({from}..{}); too many to deliver late (clients that ask their history get them)",
                to - 1
            );
            return;
        }
        log::warn!(
            "NATS JetStream: the history consumer skipped {missing} stored broadcasts ({from}..{}); delivering them from the stream first",
            to - 1
        );
        for seq in from..to {
            match self.reader.at(seq).await {
                Ok(Some(message)) => {
                    self.take(seq, &message.payload, message.time, message.time >= start)
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("NATS JetStream: reading skipped message {seq}: {e}; the rest of the gap is not delivered");
                    return;
                }
            }
        }
    }
}

/// Where the first consumer starts: with the stream's last [`PRELOAD`] messages, all
/// stored before `start`, read into the recent tail; otherwise (some were stored
/// after: a slow boot under heavy broadcasting) at `start`, with nothing preloaded.
/// `(first sequence, the last the preload reads to)`.
async fn preload_from(
    stream: &mut async_nats::jetstream::stream::Stream,
    reader: &StoredHistory,
    start: time::OffsetDateTime,
) -> Option<(u64, u64)> {
    let state = stream.info().await.ok()?.state.clone();
    let last = state.last_sequence;
    let from = state
        .first_sequence
        .max(last.saturating_sub(PRELOAD - 1))
        .max(1);
    if last == 0 || from > last {
        return None;
    }
    let first = reader.at(from).await.ok()??;
    (first.time < start).then_some((from, last))
}

/// Delivers every stored broadcast from `start` on, in order, for as long as the
/// process runs, and keeps the recent ones (the stream's last [`PRELOAD`] at boot
/// too) for replays. The ordered consumer follows reconnects; when it fails (missed
/// heartbeats: its server went away under it) or ends, another goes on after the last
/// message read. A stream made anew (another creation time) gets a new epoch, and its
/// sequences count again from 1.
pub(super) async fn consume(
    client: async_nats::Client,
    nats: NatsClient,
    reader: Arc<StoredHistory>,
    start: time::OffsetDateTime,
    sink: StoredSink,
) {
    let mut stream = reader.stream.clone();
    let mut epoch = reader.epoch();
    let mut last: Option<u64> = None;
    let mut preload = preload_from(&mut stream, &reader, start).await;
    // Replays wait for the preload; none: nothing to wait for.
    let mut loading_to = preload.map(|(_, to)| to);
    if loading_to.is_none() {
        reader.recent.set_loaded();
    }
    loop {
        match stream.info().await.map(|i| epoch_of(i.created)) {
            Ok(now) if now != epoch => {
                log::error!(
                    "NATS JetStream: the history stream {STREAM} was made anew (epoch {epoch} -> {now}): positions clients hold are refused, and its sequences start again"
                );
                *reader.epoch.write() = now.clone();
                epoch = now;
                last = None;
                preload = None;
                CONSUMED.store(0, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => log::debug!("NATS JetStream: history stream info: {e}"),
        }
        let deliver_policy = match (last, preload) {
            (Some(seq), _) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            (None, Some((from, _))) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            (None, None) => consumer::DeliverPolicy::ByStartTime { start_time: start },
        };
        let config = consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{SUBJECT_PREFIX}>"),
            deliver_policy,
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                log::error!("NATS JetStream: cannot read the history stream ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let taken = Taken {
            reader: &reader,
            sink: &sink,
            epoch: &epoch,
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("NATS JetStream: the history consumer failed ({e}); starting another after the last message read");
                    break;
                }
            };
            if !nats.trusted() {
                nats.refused();
                continue;
            }
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            let live = info.published >= start;
            // A consumer the client library rebuilt before anything was read starts
            // from the stream's first message: none of that is wanted here.
            if last.is_some_and(|l| seq <= l) || (!live && preload.is_none()) {
                continue;
            }
            if let Some(l) = last.filter(|l| seq > l + 1) {
                taken.fill(l + 1, seq, start).await;
            }
            last = Some(seq);
            taken.take(seq, &message.payload, info.published, live);
            if loading_to.is_some_and(|to| seq >= to || info.pending == 0) {
                loading_to = None;
                reader.recent.set_loaded();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
