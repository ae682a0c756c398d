//! The NATS broker's history consumer: one per process, it reads every stored
//! broadcast in sequence order, delivers those stored since the process started to
//! its subscribers, and keeps the recent ones in memory for replays ([`Recent`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures_util::StreamExt;

use super::link::{StoredSink, REQUEST_TIMEOUT};
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
/// with (more are said in the log, not filled).
const MAX_GAP: usize = 10_000;

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
            None => {
                self.reader.recent.passed(self.epoch, seq);
                log::warn!(
                    "NATS JetStream: stored message {seq} is not an AnyCable broadcast; skipped"
                )
            }
        }
        CONSUMED.store(seq, Ordering::Release);
    }

    /// The consumer read `to` after `from - 1`: the sequences between are messages
    /// the limits took (a stream over `HISTORY_LIMIT` loses its oldest, anywhere in
    /// the JetStream stream), or ones this consumer missed (seen after a partition: a
    /// consumer made again on a replica still catching up). What the stream still has
    /// of them is read (from its leader when replicated), taken first, and logged; the
    /// rest is passed. If the stream cannot be read, the recent tail starts again
    /// after the jump.
    async fn fill(&self, from: u64, to: u64, start: time::OffsetDateTime) {
        let all = format!("{SUBJECT_PREFIX}>");
        let mut next = from;
        let mut found = 0usize;
        while next < to {
            let message = match self.reader.next_for(&all, next).await {
                Ok(Some(message)) if message.sequence < to => message,
                Ok(_) => break,
                Err(e) => {
                    log::error!("NATS JetStream: reading what the history consumer skipped ({next}..{}): {e}; not delivered", to - 1);
                    return;
                }
            };
            if found == 0 {
                log::warn!(
                    "NATS JetStream: the history consumer skipped stored broadcasts ({from}..{}); delivering them from the stream first",
                    to - 1
                );
            }
            found += 1;
            if found > MAX_GAP {
                log::error!("NATS JetStream: the history consumer skipped more than {MAX_GAP} stored broadcasts; the rest is not delivered (clients that ask their history get them)");
                return;
            }
            let seq = message.sequence;
            self.reader.recent.passed(self.epoch, seq - 1);
            self.take(seq, &message.payload, message.time, message.time >= start);
            next = seq + 1;
        }
        self.reader.recent.passed(self.epoch, to - 1);
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
    let first = reader
        .next_for(&format!("{SUBJECT_PREFIX}>"), from)
        .await
        .ok()??;
    (first.time < start).then_some((first.sequence, last))
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
        // What the stream holds when this consumer starts: it is stale if the stream
        // goes past it while nothing comes.
        let mut stored_at_start = None;
        match request(stream.info())
            .await
            .map(|i| (epoch_of(i.created), i.state.last_sequence))
        {
            Ok((now, _)) if now != epoch => {
                log::error!(
                    "NATS JetStream: the history stream {STREAM} was made anew (epoch {epoch} -> {now}): positions clients hold are refused, and its sequences start again"
                );
                *reader.epoch.write() = now.clone();
                reader.recent.reset(&now);
                epoch = now;
                last = None;
                preload = None;
                CONSUMED.store(0, Ordering::Release);
            }
            Ok((_, stored)) => stored_at_start = Some(stored),
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
        let messages = match request(stream.create_consumer(config)).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                crate::logging::once_a_second(&CREATE_FAILED_LOG, |more| {
                    log::error!("NATS JetStream: cannot read the history stream ({e}); retrying ({more} more since the last line)");
                });
                tokio::time::sleep(CREATE_RETRY_PAUSE).await;
                continue;
            }
        };
        let read_to = last.or(stored_at_start);
        reader.recent.set_reading(true);
        let taken = Taken {
            reader: &reader,
            sink: &sink,
            epoch: &epoch,
        };
        let mut watch = Watch::new(read_to.unwrap_or(0));
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = watch.tick() => {
                    let seen = last.unwrap_or(watch.seen);
                    // The stream's last message exists while it holds any (the limits
                    // take a subject's oldest, the ttl the oldest of all).
                    let stored = request(stream.info()).await.ok().map(|i| {
                        if i.state.messages > 0 { i.state.last_sequence } else { 0 }
                    });
                    match watch.look(stored, seen) {
                        Look::Stale => {
                            log::warn!("NATS JetStream: the history consumer read nothing for {:?} while the stream went on (its server lost?); starting another after the last message read", STALE_AFTER * 2);
                            break;
                        }
                        // Maybe lost: replays from JetStream until it reads again.
                        Look::Behind => reader.recent.set_reading(false),
                        Look::Current => {
                            if loading_to.take().is_some() {
                                reader.recent.set_loaded();
                            }
                        }
                        Look::Unknown => {}
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            watch.read();
            reader.recent.set_reading(true);
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
        reader.recent.set_reading(false);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// After a consumer could not be made: a cluster electing leaders is not asked more
/// often (a request that timed out here may still be carried out there).
const CREATE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A JetStream request (stream info, a consumer made) bounded by
/// [`REQUEST_TIMEOUT`] whatever the client library waits (a consumer placed on a
/// server that does not answer took 10 s), so that it is asked again sooner.
async fn request<T, E: std::fmt::Display>(
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

static CREATE_FAILED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

/// A consumer that read nothing this long while the stream went past what it read is
/// made again. The client library notices a consumer whose server is gone only after
/// two missed idle heartbeats (10 s); asking the stream finds it sooner.
const STALE_AFTER: Duration = Duration::from_secs(2);

/// Looks after the consumer while nothing comes: every [`STALE_AFTER`] without a
/// message, the stream's last sequence is asked; two looks in a row that find it past
/// what was read mean the consumer is stale.
struct Watch {
    ticker: tokio::time::Interval,
    read_since_tick: bool,
    behind: bool,
    /// The sequence read to when the consumer started.
    seen: u64,
}

impl Watch {
    fn new(seen: u64) -> Self {
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + STALE_AFTER, STALE_AFTER);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watch {
            ticker,
            read_since_tick: false,
            behind: false,
            seen,
        }
    }

    async fn tick(&mut self) {
        loop {
            self.ticker.tick().await;
            if !std::mem::take(&mut self.read_since_tick) {
                return;
            }
            self.behind = false;
        }
    }

    fn read(&mut self) {
        self.read_since_tick = true;
    }

    /// After a tick with nothing read: what the stream's last sequence (when it
    /// answered) says of a consumer that read to `read`.
    fn look(&mut self, stored: Option<u64>, read: u64) -> Look {
        let Some(stored) = stored else {
            return Look::Unknown;
        };
        let behind = stored > read;
        let was = std::mem::replace(&mut self.behind, behind);
        match (behind, was) {
            (false, _) => Look::Current,
            (true, false) => Look::Behind,
            (true, true) => Look::Stale,
        }
    }
}

/// What a look at the stream says of an idle consumer.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// The stream did not answer.
    Unknown,
    /// Nothing stored past what it read.
    Current,
    /// The stream went past it (messages may be on their way).
    Behind,
    /// Behind at two looks in a row: made again.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_is_stale_after_two_looks_behind_the_stream() {
        let mut watch = Watch::new(5);
        assert_eq!(watch.look(None, 5), Look::Unknown);
        assert_eq!(watch.look(Some(5), 5), Look::Current);
        // Behind once: messages may be on their way.
        assert_eq!(watch.look(Some(7), 5), Look::Behind);
        assert_eq!(watch.look(Some(7), 5), Look::Stale);
        // A look that finds it caught up starts the count again; one that got no
        // answer does not count.
        assert_eq!(watch.look(Some(7), 7), Look::Current);
        assert_eq!(watch.look(Some(8), 7), Look::Behind);
        assert_eq!(watch.look(None, 7), Look::Unknown);
        assert_eq!(watch.look(Some(9), 7), Look::Stale);
    }
}
