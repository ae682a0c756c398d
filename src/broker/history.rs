//! The memory broker's stream history (`ANYCABLE_BROKER=memory`): every broadcast to a
//! stream gets the stream's next offset, and the last messages are kept so that a
//! client that was away can ask for what it missed (the `history` command).
//!
//! What it is not: a cluster-wide sequencer. Each process has its own epoch and its own
//! offsets, so a position is only meaningful to the process that gave it out; a client
//! that comes back to another process (another Puma worker, another machine) is told
//! `reject_history` and must refetch. That needs a shared store (NATS JetStream).
//!
//! Memory: at most `limit` messages per stream for `ttl`, and at most `max_bytes` in
//! all (`ANYCABLE_HISTORY_MAX_BYTES`); past that the oldest messages of any stream go
//! first, with a warning, and clients that needed them get `reject_history`.
//!
//! Cost on the broadcast path: one lock of the stream's shard and the stored entry (the
//! payload is kept once, as an `Arc<str>`). The shard stays locked while the broadcast
//! is fanned out, so one stream's messages reach every subscriber in offset order even
//! when broadcasts enter from several threads at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// `ANYCABLE_HISTORY_LIMIT`, `ANYCABLE_HISTORY_TTL`, `ANYCABLE_HISTORY_MAX_BYTES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per stream.
    pub limit: usize,
    /// How long a message is kept.
    pub ttl: Duration,
    /// Bytes kept in all (payloads plus a per-message overhead).
    pub max_bytes: usize,
}

/// What a stored message costs besides its payload (entry, deque slots, order).
const ENTRY_OVERHEAD: usize = 96;

fn cost(entry: &Entry) -> usize {
    entry.data.len() + ENTRY_OVERHEAD
}

static EVICTED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

/// One stored broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    /// Unix seconds when it was stored (what `since` is compared with).
    pub at: u64,
    /// The broadcast payload (JSON), as subscribers get it in `message`.
    pub data: Arc<str>,
}

/// Why a request by position cannot be served: the client must refetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// The position was given out by another process or an earlier run.
    EpochMismatch,
    /// Nothing is known of the stream (never broadcast here, or forgotten).
    UnknownStream,
    /// Messages after the client's offset are no longer kept (or the offset was never
    /// given out): what it missed cannot be replayed whole.
    OffsetGone { offset: u64, oldest: u64, last: u64 },
    /// The store could not be read (NATS JetStream away or failing).
    Unavailable(String),
    /// More messages to replay than one replay sends.
    TooLong { max: usize },
}

impl std::fmt::Display for HistoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistoryError::EpochMismatch => f.write_str("epoch mismatch"),
            HistoryError::UnknownStream => f.write_str("unknown stream"),
            HistoryError::Unavailable(why) => write!(f, "history store unavailable: {why}"),
            HistoryError::TooLong { max } => write!(f, "more than {max} messages to replay"),
            HistoryError::OffsetGone {
                offset,
                oldest,
                last,
            } => write!(
                f,
                "offset {offset} not retained (oldest {oldest}, last {last})"
            ),
        }
    }
}

#[derive(Default)]
struct StreamHistory {
    /// The last offset given out (0: none yet).
    last_offset: u64,
    /// Unix seconds of the last message: the offsets are forgotten 10×ttl after it.
    last_at: u64,
    entries: VecDeque<Entry>,
}

/// Independent locks, so broadcasts to different streams rarely wait for each other.
const SHARDS: usize = 16;

pub struct History {
    epoch: String,
    limit: usize,
    ttl: u64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<Arc<str>, StreamHistory>>>,
    /// The highest offset of any stream whose offsets were forgotten: a stream that
    /// starts again continues above it, so under this epoch no offset is ever given
    /// twice (a client holding an old position gets reject_history, never another
    /// message's offset taken for the one it saw).
    floor: AtomicU64,
    max_bytes: usize,
    /// What the stored messages cost ([`cost`]).
    bytes: AtomicUsize,
    /// Every stored message in store order: (stream, offset, unix seconds), for the
    /// byte cap to find the oldest. Messages gone otherwise (limit, ttl) stay here
    /// until they expire or reach the front.
    order: Mutex<VecDeque<(Arc<str>, u64, u64)>>,
}

impl History {
    pub fn new(config: &HistoryConfig) -> Self {
        Self::with_epoch(config, random_epoch())
    }

    pub fn with_epoch(config: &HistoryConfig, epoch: String) -> Self {
        History {
            epoch,
            limit: config.limit.max(1),
            ttl: config.ttl.as_secs().max(1),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            floor: AtomicU64::new(0),
            max_bytes: config.max_bytes.max(1),
            bytes: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// This process's epoch: positions from another epoch are not ours.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn shard(&self, stream: &str) -> &Mutex<HashMap<Arc<str>, StreamHistory>> {
        &self.shards[self.hasher.hash_one(stream) as usize % SHARDS]
    }

    /// Stores `data` as `stream`'s next message and calls `deliver` with its offset
    /// while the stream is still locked (see the module doc).
    pub fn append<R>(&self, stream: &str, data: &str, deliver: impl FnOnce(u64) -> R) -> R {
        self.append_at(stream, data, unix_now(), deliver)
    }

    /// [`History::append`] at a given time (unix seconds).
    pub fn append_at<R>(
        &self,
        stream: &str,
        data: &str,
        now: u64,
        deliver: impl FnOnce(u64) -> R,
    ) -> R {
        let result = {
            let mut shard = self.shard(stream).lock();
            if !shard.contains_key(stream) {
                let fresh = StreamHistory {
                    last_offset: self.floor.load(Ordering::Acquire),
                    ..Default::default()
                };
                shard.insert(Arc::from(stream), fresh);
            }
            let key = shard.get_key_value(stream).expect("inserted").0.clone();
            let history = shard.get_mut(stream).expect("inserted");
            history.last_offset += 1;
            history.last_at = now;
            let offset = history.last_offset;
            if history.entries.len() >= self.limit {
                if let Some(gone) = history.entries.pop_front() {
                    self.bytes.fetch_sub(cost(&gone), Ordering::AcqRel);
                }
            }
            let entry = Entry {
                offset,
                at: now,
                data: Arc::from(data),
            };
            self.bytes.fetch_add(cost(&entry), Ordering::AcqRel);
            history.entries.push_back(entry);
            // Shard, then order: `evict` never holds the order while taking a shard.
            self.order.lock().push_back((key, offset, now));
            deliver(offset)
        };
        if self.bytes.load(Ordering::Acquire) > self.max_bytes {
            self.evict();
        }
        result
    }

    /// Drops the oldest stored messages, whatever their stream, until the history is
    /// within `max_bytes` again.
    fn evict(&self) {
        let mut evicted = 0u64;
        while self.bytes.load(Ordering::Acquire) > self.max_bytes {
            let Some((stream, offset, _)) = self.order.lock().pop_front() else {
                break;
            };
            let mut shard = self.shard(&stream).lock();
            if let Some(history) = shard.get_mut(&stream) {
                if history.entries.front().is_some_and(|e| e.offset == offset) {
                    let gone = history.entries.pop_front().expect("checked");
                    self.bytes.fetch_sub(cost(&gone), Ordering::AcqRel);
                    evicted += 1;
                }
            }
        }
        if evicted > 0 {
            crate::logging::once_a_second(&EVICTED_LOG, |more| {
                log::warn!(
                    "history over ANYCABLE_HISTORY_MAX_BYTES ({} bytes): its oldest messages were dropped early; clients that need them get reject_history ({} more since the last line)",
                    self.max_bytes,
                    more
                );
            });
        }
    }

    /// What the stored messages cost, in bytes (payloads plus overhead).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// The messages after `offset` in `epoch`, oldest first. Fails when the epoch is
    /// not ours, the stream unknown, or any message after `offset` is gone.
    pub fn from(&self, stream: &str, epoch: &str, offset: u64) -> Result<Vec<Entry>, HistoryError> {
        self.from_at(stream, epoch, offset, unix_now())
    }

    pub fn from_at(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
        now: u64,
    ) -> Result<Vec<Entry>, HistoryError> {
        if epoch != self.epoch {
            return Err(HistoryError::EpochMismatch);
        }
        let shard = self.shard(stream).lock();
        let history = shard.get(stream).ok_or(HistoryError::UnknownStream)?;
        let fresh = |e: &&Entry| !self.expired(e, now);
        let oldest = history
            .entries
            .iter()
            .find(fresh)
            .map_or(history.last_offset + 1, |e| e.offset);
        // The client has everything up to `offset`: it needs `offset + 1` onwards, all
        // of it still here, and cannot be ahead of us.
        if offset > history.last_offset || offset + 1 < oldest {
            return Err(HistoryError::OffsetGone {
                offset,
                oldest,
                last: history.last_offset,
            });
        }
        Ok(history
            .entries
            .iter()
            .filter(|e| e.offset > offset)
            .cloned()
            .collect())
    }

    /// The stream's last offset (0: none given out, or forgotten).
    pub fn tail(&self, stream: &str) -> u64 {
        self.shard(stream)
            .lock()
            .get(stream)
            .map_or(0, |h| h.last_offset)
    }

    /// The messages stored at or after `since` (unix seconds), oldest first; none for
    /// an unknown stream (not an error, as AnyCable's).
    pub fn since(&self, stream: &str, since: u64) -> Vec<Entry> {
        self.since_at(stream, since, unix_now())
    }

    pub fn since_at(&self, stream: &str, since: u64, now: u64) -> Vec<Entry> {
        let shard = self.shard(stream).lock();
        let Some(history) = shard.get(stream) else {
            return Vec::new();
        };
        history
            .entries
            .iter()
            .filter(|e| e.at >= since && !self.expired(e, now))
            .cloned()
            .collect()
    }

    fn expired(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.at) > self.ttl
    }

    /// Drops messages older than the ttl, and the offsets of streams with no message
    /// for 10×ttl (a stream broadcast to again after that continues above every
    /// forgotten offset; clients that held older positions get reject_history).
    /// (Kept here: the doc of `sweep` below.)
    pub fn sweep(&self) {
        self.sweep_at(unix_now())
    }

    pub fn sweep_at(&self, now: u64) {
        let forget_after = self.ttl.saturating_mul(10);
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.retain(|_, history| {
                while history
                    .entries
                    .front()
                    .is_some_and(|e| self.expired(e, now))
                {
                    let gone = history.entries.pop_front().expect("checked");
                    self.bytes.fetch_sub(cost(&gone), Ordering::AcqRel);
                }
                if history.entries.is_empty() && history.entries.capacity() > 0 {
                    history.entries = VecDeque::new();
                }
                let keep = !history.entries.is_empty()
                    || now.saturating_sub(history.last_at) <= forget_after;
                if !keep {
                    self.floor.fetch_max(history.last_offset, Ordering::AcqRel);
                }
                keep
            });
        }
        // What has expired has left every stream: its place in the order goes too.
        let mut order = self.order.lock();
        while order
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) > self.ttl)
        {
            order.pop_front();
        }
    }

    /// Streams with a history or remembered offsets.
    pub fn stream_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Four characters of nanoid's alphabet, as AnyCable's memory broker makes its epoch.
fn random_epoch() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let mut bits = h.finish();
    (0..4)
        .map(|_| {
            let c = ALPHABET[(bits % 64) as usize] as char;
            bits /= 64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(limit: usize, ttl: u64) -> History {
        History::with_epoch(
            &HistoryConfig {
                limit,
                ttl: Duration::from_secs(ttl),
                ..Default::default()
            },
            "ep01".into(),
        )
    }

    #[test]
    fn keeps_within_max_bytes_dropping_the_oldest_of_any_stream() {
        let h = History::with_epoch(
            &HistoryConfig {
                limit: 10,
                ttl: Duration::from_secs(60),
                max_bytes: 3 * (ENTRY_OVERHEAD + 4),
            },
            "ep01".into(),
        );
        h.append_at("a", "a001", 1000, |_| ());
        h.append_at("b", "b001", 1001, |_| ());
        h.append_at("a", "a002", 1002, |_| ());
        assert_eq!(h.bytes(), 3 * (ENTRY_OVERHEAD + 4));
        // A fourth: the oldest ("a" 1) goes; a client that saw nothing of "a" is refused.
        h.append_at("b", "b002", 1003, |_| ());
        assert_eq!(h.bytes(), 3 * (ENTRY_OVERHEAD + 4));
        assert!(h.from_at("a", "ep01", 0, 1003).is_err());
        assert_eq!(offsets(&h.from_at("a", "ep01", 1, 1003).unwrap()), vec![2]);
        assert_eq!(offsets(&h.since_at("b", 1, 1003)), vec![1, 2]);
        // Expiry gives the bytes back, and the order forgets what expired.
        h.sweep_at(1070);
        assert_eq!(h.bytes(), 0);
        assert!(h.order.lock().is_empty());
    }

    fn offsets(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn epochs_are_four_url_safe_characters_and_differ() {
        let a = random_epoch();
        assert_eq!(a.len(), 4);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let many: std::collections::HashSet<_> = (0..50).map(|_| random_epoch()).collect();
        assert!(many.len() > 40);
    }

    #[test]
    fn offsets_count_from_one_per_stream_and_deliver_sees_them() {
        let h = history(100, 300);
        assert_eq!(h.append_at("a", "1", 10, |o| o), 1);
        assert_eq!(h.append_at("a", "2", 10, |o| o), 2);
        assert_eq!(h.append_at("b", "x", 10, |o| o), 1);
        let got = h.from_at("a", "ep01", 0, 10).unwrap();
        assert_eq!(offsets(&got), vec![1, 2]);
        assert_eq!(&*got[1].data, "2");
        assert_eq!(offsets(&h.from_at("a", "ep01", 1, 10).unwrap()), vec![2]);
        // Up to date: nothing missed, and that is a success.
        assert_eq!(h.from_at("a", "ep01", 2, 10).unwrap(), vec![]);
    }

    #[test]
    fn keeps_at_most_the_limit_and_refuses_a_gap() {
        let h = history(3, 300);
        for i in 1..=5 {
            h.append_at("s", &i.to_string(), 10, |_| ());
        }
        // 3, 4, 5 kept. A client at 2 misses nothing that is gone.
        assert_eq!(
            offsets(&h.from_at("s", "ep01", 2, 10).unwrap()),
            vec![3, 4, 5]
        );
        assert_eq!(
            h.from_at("s", "ep01", 1, 10),
            Err(HistoryError::OffsetGone {
                offset: 1,
                oldest: 3,
                last: 5
            })
        );
        assert_eq!(
            h.from_at("s", "ep01", 0, 10).unwrap_err(),
            HistoryError::OffsetGone {
                offset: 0,
                oldest: 3,
                last: 5
            }
        );
        // Ahead of us: not an offset this process gave out.
        assert!(h.from_at("s", "ep01", 9, 10).is_err());
    }

    #[test]
    fn refuses_another_epoch_and_an_unknown_stream() {
        let h = history(10, 300);
        h.append_at("s", "1", 10, |_| ());
        assert_eq!(
            h.from_at("s", "zzzz", 0, 10),
            Err(HistoryError::EpochMismatch)
        );
        assert_eq!(
            h.from_at("nope", "ep01", 0, 10),
            Err(HistoryError::UnknownStream)
        );
        assert_eq!(h.since_at("nope", 1, 10), vec![]);
    }

    #[test]
    fn since_returns_messages_stored_at_or_after_it() {
        let h = history(10, 300);
        h.append_at("s", "a", 100, |_| ());
        h.append_at("s", "b", 105, |_| ());
        h.append_at("s", "c", 110, |_| ());
        assert_eq!(offsets(&h.since_at("s", 105, 110)), vec![2, 3]);
        assert_eq!(offsets(&h.since_at("s", 1, 110)), vec![1, 2, 3]);
        assert_eq!(offsets(&h.since_at("s", 111, 111)), Vec::<u64>::new());
    }

    #[test]
    fn messages_expire_after_the_ttl_and_offsets_after_ten_ttls() {
        let h = history(10, 60);
        h.append_at("s", "a", 1000, |_| ());
        h.append_at("s", "b", 1030, |_| ());
        // Not swept yet: an expired message is still never replayed.
        assert_eq!(offsets(&h.since_at("s", 1, 1070)), vec![2]);
        assert!(h.from_at("s", "ep01", 0, 1070).is_err());
        assert_eq!(offsets(&h.from_at("s", "ep01", 1, 1070).unwrap()), vec![2]);
        h.sweep_at(1070);
        assert_eq!(offsets(&h.since_at("s", 1, 1070)), vec![2]);
        h.sweep_at(1100);
        assert_eq!(h.since_at("s", 1, 1100), vec![]);
        // The offsets are still known: a client that saw 2 missed nothing.
        assert_eq!(h.from_at("s", "ep01", 2, 1100).unwrap(), vec![]);
        assert!(h.from_at("s", "ep01", 1, 1100).is_err());
        assert_eq!(h.append_at("s", "c", 1200, |o| o), 3);
        h.sweep_at(1200 + 600);
        assert_eq!(h.stream_count(), 1);
        h.sweep_at(1200 + 601);
        assert_eq!(h.stream_count(), 0);
        // Broadcast to again: above every offset given before, so a client that held
        // an old position is refused rather than served another message as the next.
        assert_eq!(h.append_at("s", "d", 2000, |o| o), 4);
        assert!(h.from_at("s", "ep01", 2, 2000).is_err());
        assert_eq!(offsets(&h.from_at("s", "ep01", 3, 2000).unwrap()), vec![4]);
        assert_eq!(h.append_at("t", "e", 2000, |o| o), 4);
    }
}
