//! The recent tail of the history stream, kept in memory by each process from what its
//! consumer reads ([`Recent`]). After a deploy thousands of clients come back at once and
//! each asks for the same last few messages (`history` after a restore); answered here,
//! a replay costs no NATS round trip. JetStream answers whatever the tail does not hold
//! (older messages, a tail broken by a gap, the first moments after boot).
//!
//! The tail is whole from its first message on: the consumer records every stored
//! broadcast in sequence order (the stream's subjects are all AnyCable's, so sequences
//! follow one another); a jump it could not fill, or a new epoch, empties it. A stream's
//! messages are replayed from here only when the client's own last message is in the tail
//! (so every later one of that stream is too) — what JetStream checks as well.
//!
//! Memory: at most `ANYCABLE_HISTORY_LIMIT` messages per stream for
//! `ANYCABLE_HISTORY_TTL`, and [`MAX_BYTES`] (or `ANYCABLE_HISTORY_MAX_BYTES` when lower)
//! in all; past that the oldest go first (JetStream still has them).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::broker::history::{unix_now, Entry, HistoryConfig};

/// The tail's size at most, per process, whatever `ANYCABLE_HISTORY_MAX_BYTES` says
/// (that is the JetStream stream's, shared by the cluster).
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// What a kept message costs besides its payload.
const ENTRY_OVERHEAD: usize = 128;

/// How many of the stream's last messages a process reads into its tail at boot (its
/// clients come straight back and ask for them).
pub(super) const PRELOAD: u64 = 10_000;

/// How long a replay waits for the boot's preload before it asks JetStream.
const LOADED_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Recent {
    limit: usize,
    ttl: u64,
    max_bytes: usize,
    inner: Mutex<Tail>,
    loaded: tokio::sync::watch::Sender<bool>,
    /// The consumer is reading (not being made again).
    reading: AtomicBool,
}

#[derive(Default)]
struct Tail {
    epoch: String,
    /// The last sequence recorded (0: none): the next one must follow it.
    last: u64,
    /// Every message stored after this (unix seconds) is here, but for those a
    /// stream's limit dropped (as JetStream drops them): when the tail began, or the
    /// newest message the byte cap or the ttl took.
    whole_after: u64,
    streams: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Kept messages in sequence order (stream, sequence, unix seconds), for the ttl and
    /// the byte cap; messages a stream's limit dropped stay until [`Tail::compact`].
    order: VecDeque<(Arc<str>, u64, u64)>,
    kept: usize,
    bytes: usize,
}

fn cost(stream: &str, entry: &Entry) -> usize {
    stream.len() + entry.data.len() + ENTRY_OVERHEAD
}

impl Recent {
    pub(super) fn new(config: &HistoryConfig) -> Self {
        Recent {
            limit: config.limit.max(1),
            ttl: config.ttl.as_secs().max(1),
            max_bytes: config.max_bytes.clamp(1, MAX_BYTES),
            inner: Mutex::new(Tail::default()),
            loaded: tokio::sync::watch::Sender::new(false),
            reading: AtomicBool::new(false),
        }
    }

    /// Records stored broadcast `seq` of `stream` (epoch `epoch`), stored at `at` (unix
    /// seconds). One that does not follow the last recorded empties the tail first.
    pub(super) fn record(&self, epoch: &str, seq: u64, stream: &str, at: u64, data: &str) {
        self.record_at(epoch, seq, stream, at, data, unix_now())
    }

    fn record_at(&self, epoch: &str, seq: u64, stream: &str, at: u64, data: &str, now: u64) {
        let mut tail = self.inner.lock();
        if tail.epoch != epoch {
            *tail = Tail {
                epoch: epoch.to_owned(),
                ..Default::default()
            };
        } else if seq <= tail.last {
            return;
        } else if tail.last != 0 && seq != tail.last + 1 {
            log::debug!(
                "NATS JetStream: recent tail emptied (sequence {seq} after {})",
                tail.last
            );
            tail.clear();
        }
        if tail.last == 0 {
            tail.whole_after = at;
        }
        tail.last = seq;
        let entry = Entry {
            offset: seq,
            at,
            data: Arc::from(data),
        };
        let size = cost(stream, &entry);
        let key = match tail.streams.get_key_value(stream) {
            Some((key, _)) => key.clone(),
            None => Arc::from(stream),
        };
        let entries = tail.streams.entry(key.clone()).or_default();
        entries.push_back(entry);
        let dropped = (entries.len() > self.limit)
            .then(|| entries.pop_front())
            .flatten();
        tail.kept += 1;
        tail.bytes += size;
        if let Some(gone) = dropped {
            tail.kept -= 1;
            tail.bytes -= cost(stream, &gone);
        }
        tail.order.push_back((key, seq, at));
        tail.trim(self.max_bytes, now.saturating_sub(self.ttl));
        if tail.order.len() > 2 * tail.kept + 64 {
            tail.compact();
        }
    }

    /// Sequences up to `seq` need no message in the tail (the limits took them, or they
    /// were not AnyCable's): the next one recorded may follow `seq`.
    pub(super) fn passed(&self, epoch: &str, seq: u64) {
        let mut tail = self.inner.lock();
        if tail.epoch == epoch && tail.last != 0 && seq > tail.last {
            tail.last = seq;
        }
    }

    /// The stream was made anew (epoch `epoch`): nothing kept is of it.
    pub(super) fn reset(&self, epoch: &str) {
        *self.inner.lock() = Tail {
            epoch: epoch.to_owned(),
            ..Default::default()
        };
    }

    /// The messages of `stream` after `offset`, when the tail holds the client's own
    /// last message (`None`: ask JetStream).
    pub(super) fn after(&self, epoch: &str, stream: &str, offset: u64) -> Option<Vec<Entry>> {
        self.after_at(epoch, stream, offset, unix_now())
    }

    fn after_at(&self, epoch: &str, stream: &str, offset: u64, now: u64) -> Option<Vec<Entry>> {
        // While the boot's preload reads, what it has not reached yet is neither here
        // nor delivered live (it was stored before this process started).
        if !*self.loaded.borrow() {
            return None;
        }
        let tail = self.inner.lock();
        if tail.epoch != epoch || offset == 0 {
            return None;
        }
        let entries = tail.streams.get(stream)?;
        let at = entries.binary_search_by_key(&offset, |e| e.offset).ok()?;
        if now.saturating_sub(entries[at].at) > self.ttl {
            return None;
        }
        Some(entries.range(at + 1..).cloned().collect())
    }

    /// The messages of `stream` stored at or after `since` (unix seconds), when the
    /// tail has every one of them (`None`: ask JetStream).
    pub(super) fn since(&self, epoch: &str, stream: &str, since: u64) -> Option<Vec<Entry>> {
        self.since_at(epoch, stream, since, unix_now())
    }

    fn since_at(&self, epoch: &str, stream: &str, since: u64, now: u64) -> Option<Vec<Entry>> {
        if !*self.loaded.borrow() {
            return None;
        }
        let tail = self.inner.lock();
        if tail.epoch != epoch || tail.last == 0 || since <= tail.whole_after {
            return None;
        }
        let fresh = |e: &&Entry| e.at >= since && now.saturating_sub(e.at) <= self.ttl;
        Some(
            tail.streams
                .get(stream)
                .map(|entries| entries.iter().filter(fresh).cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Whether the consumer is reading (`false` from its failure until another one
    /// is made).
    pub(super) fn set_reading(&self, reading: bool) {
        self.reading.store(reading, Ordering::Release);
    }

    pub(super) fn is_reading(&self) -> bool {
        self.reading.load(Ordering::Acquire)
    }

    /// The boot's preload is in (or was given up): replays read the tail from now on.
    pub(super) fn set_loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// Waits (a little) for the boot's preload.
    pub(super) async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = tokio::time::timeout(LOADED_WAIT, loaded.wait_for(|l| *l)).await;
    }

    /// Bytes kept.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl Tail {
    fn clear(&mut self) {
        self.last = 0;
        self.streams.clear();
        self.order.clear();
        self.kept = 0;
        self.bytes = 0;
    }

    /// Drops the oldest messages while over `max_bytes` or stored before `expired`.
    fn trim(&mut self, max_bytes: usize, expired: u64) {
        while let Some((stream, seq, at)) = self.order.front().cloned() {
            if self.bytes <= max_bytes && at >= expired {
                break;
            }
            self.order.pop_front();
            let Some(entries) = self.streams.get_mut(&stream) else {
                continue;
            };
            if entries.front().is_some_and(|e| e.offset == seq) {
                let gone = entries.pop_front().expect("checked");
                self.whole_after = self.whole_after.max(at);
                self.kept -= 1;
                self.bytes -= cost(&stream, &gone);
                if entries.is_empty() {
                    self.streams.remove(&stream);
                }
            }
        }
    }

    /// Forgets the places in `order` of messages a stream's limit dropped.
    fn compact(&mut self) {
        let streams = &self.streams;
        self.order.retain(|(stream, seq, _)| {
            streams
                .get(stream)
                .and_then(|e| e.front())
                .is_some_and(|first| first.offset <= *seq)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail before the boot's preload is in.
    fn unloaded(limit: usize, ttl: u64, max_bytes: usize) -> Recent {
        Recent::new(&HistoryConfig {
            limit,
            ttl: Duration::from_secs(ttl),
            max_bytes,
        })
    }

    fn recent(limit: usize, ttl: u64, max_bytes: usize) -> Recent {
        let r = unloaded(limit, ttl, max_bytes);
        r.set_loaded();
        r
    }

    /// What a 4-byte message of stream "s" costs.
    fn cost_of_yyyy() -> usize {
        let entry = Entry {
            offset: 1,
            at: 0,
            data: Arc::from("yyyy"),
        };
        cost("s", &entry)
    }

    #[test]
    fn serves_nothing_until_the_preload_is_in() {
        let r = unloaded(10, 60, 1 << 20);
        r.record_at("e", 1, "a", 100, "x", 100);
        r.record_at("e", 2, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e", "a", 1, 100)), None);
        r.set_loaded();
        assert_eq!(offsets(r.after_at("e", "a", 1, 100)), Some(vec![2]));
    }

    fn offsets(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.offset).collect())
    }

    #[test]
    fn replays_what_follows_the_clients_own_last_message() {
        let r = recent(10, 60, 1 << 20);
        for seq in 1..=6 {
            let stream = if seq % 2 == 0 { "a" } else { "b" };
            r.record_at("e1", seq, stream, 100, &format!("m{seq}"), 100);
        }
        assert_eq!(offsets(r.after_at("e1", "a", 2, 100)), Some(vec![4, 6]));
        assert_eq!(offsets(r.after_at("e1", "a", 6, 100)), Some(vec![]));
        assert_eq!(offsets(r.after_at("e1", "b", 1, 100)), Some(vec![3, 5]));
        // Not this stream's message, another epoch, no position, an unknown stream:
        // JetStream decides.
        assert_eq!(offsets(r.after_at("e1", "a", 3, 100)), None);
        assert_eq!(offsets(r.after_at("e2", "a", 2, 100)), None);
        assert_eq!(offsets(r.after_at("e1", "a", 0, 100)), None);
        assert_eq!(offsets(r.after_at("e1", "c", 2, 100)), None);
        assert_eq!(
            r.after_at("e1", "a", 4, 100).unwrap()[0].data.as_ref(),
            "m6"
        );
    }

    #[test]
    fn a_jump_in_sequences_or_a_new_epoch_empties_it() {
        let r = recent(10, 60, 1 << 20);
        r.record_at("e1", 1, "a", 100, "x", 100);
        r.record_at("e1", 2, "a", 100, "x", 100);
        r.record_at("e1", 2, "a", 100, "again", 100); // delivered twice: kept once
        assert_eq!(offsets(r.after_at("e1", "a", 1, 100)), Some(vec![2]));
        r.record_at("e1", 5, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e1", "a", 2, 100)), None);
        assert_eq!(offsets(r.after_at("e1", "a", 5, 100)), Some(vec![]));
        r.record_at("e1", 6, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e1", "a", 5, 100)), Some(vec![6]));
        r.record_at("e2", 1, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e1", "a", 5, 100)), None);
        assert_eq!(offsets(r.after_at("e2", "a", 1, 100)), Some(vec![]));
    }

    #[test]
    fn sequences_the_limits_took_keep_it_whole_a_new_epoch_empties_it() {
        let r = recent(10, 60, 1 << 20);
        r.record_at("e", 1, "a", 100, "x", 100);
        // 2 and 3 were taken by another stream's limit (the consumer read 4 next).
        r.passed("e", 3);
        r.record_at("e", 4, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e", "a", 1, 100)), Some(vec![4]));
        // Not another epoch's, and never backwards.
        r.passed("other", 9);
        r.passed("e", 2);
        r.record_at("e", 5, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e", "a", 1, 100)), Some(vec![4, 5]));
        r.reset("e2");
        assert_eq!(offsets(r.after_at("e", "a", 1, 100)), None);
        assert_eq!(offsets(r.since_at("e", "a", 101, 101)), None);
        r.record_at("e2", 1, "a", 100, "x", 100);
        assert_eq!(offsets(r.after_at("e2", "a", 1, 100)), Some(vec![]));
    }

    #[test]
    fn keeps_the_limit_per_stream_the_ttl_and_the_bytes() {
        let r = recent(3, 60, 1 << 20);
        for seq in 1..=5 {
            r.record_at("e", seq, "a", 100, "x", 100);
        }
        assert_eq!(offsets(r.after_at("e", "a", 2, 100)), None);
        assert_eq!(offsets(r.after_at("e", "a", 3, 100)), Some(vec![4, 5]));
        // The client's own message expired: JetStream decides (it refuses).
        assert_eq!(offsets(r.after_at("e", "a", 3, 161)), None);
        r.record_at("e", 6, "b", 170, "x", 170);
        assert_eq!(offsets(r.after_at("e", "a", 5, 170)), None);
        assert_eq!(offsets(r.after_at("e", "b", 6, 170)), Some(vec![]));

        let one = cost_of_yyyy();
        let r = recent(100, 60, 3 * one);
        for seq in 1..=5 {
            r.record_at("e", seq, if seq == 1 { "t" } else { "s" }, 100, "yyyy", 100);
        }
        assert!(r.bytes() <= 3 * one);
        assert_eq!(offsets(r.after_at("e", "s", 2, 100)), None);
        assert_eq!(offsets(r.after_at("e", "s", 3, 100)), Some(vec![4, 5]));
        assert_eq!(offsets(r.after_at("e", "t", 1, 100)), None);
    }

    #[test]
    fn replays_by_time_only_what_began_before_it() {
        let r = recent(2, 60, 1 << 20);
        r.record_at("e", 7, "a", 100, "x", 100);
        r.record_at("e", 8, "b", 101, "x", 101);
        r.record_at("e", 9, "a", 102, "x", 102);
        r.record_at("e", 10, "a", 103, "x", 103);
        // What was stored in the tail's first second may have company from before it.
        assert_eq!(offsets(r.since_at("e", "a", 100, 103)), None);
        // Stream a's limit (2) dropped 7, as JetStream's does.
        assert_eq!(offsets(r.since_at("e", "a", 101, 103)), Some(vec![9, 10]));
        assert_eq!(offsets(r.since_at("e", "a", 103, 103)), Some(vec![10]));
        assert_eq!(offsets(r.since_at("e", "c", 101, 103)), Some(vec![]));
        // Expired messages are not replayed.
        assert_eq!(offsets(r.since_at("e", "a", 101, 163)), Some(vec![10]));
        // A jump: the tail begins again.
        r.record_at("e", 20, "a", 110, "x", 110);
        assert_eq!(offsets(r.since_at("e", "a", 105, 110)), None);
        assert_eq!(offsets(r.since_at("e", "a", 111, 111)), Some(vec![]));

        // The byte cap took a message: what is older than it is not known whole.
        let one = cost_of_yyyy();
        let r = recent(100, 60, 2 * one);
        for seq in 1..=4 {
            r.record_at("e", seq, "s", 100 + seq, "yyyy", 104);
        }
        assert_eq!(offsets(r.since_at("e", "s", 102, 104)), None);
        assert_eq!(offsets(r.since_at("e", "s", 103, 104)), Some(vec![3, 4]));
        // Not until the preload is in.
        let fresh = unloaded(10, 60, 1 << 20);
        fresh.record_at("e", 1, "s", 100, "x", 100);
        assert_eq!(offsets(fresh.since_at("e", "s", 101, 101)), None);
    }

    #[test]
    fn order_stays_bounded_when_streams_limits_drop_messages() {
        let r = recent(1, 60, 1 << 20);
        for seq in 1..=10_000 {
            r.record_at("e", seq, "a", 100, "x", 100);
        }
        let tail = r.inner.lock();
        assert_eq!(tail.kept, 1);
        assert!(
            tail.order.len() <= 2 * tail.kept + 65,
            "{}",
            tail.order.len()
        );
    }
}
