//! Sessions kept after their socket closed, so a client that comes back with its old
//! sid (`?sid=` or `X-AnyCable-Restore-SID`) within `ANYCABLE_SESSIONS_TTL` gets its
//! identifiers and subscriptions back without the app's `connect` or `subscribed`
//! (AnyCable's session restore, §5.1). This is the memory broker's store: one process.
//!
//! An entry is written when an extended-protocol session's socket closes and taken
//! (removed) by the first restore, so a sid restores at most once; whatever is not
//! taken expires after the ttl (swept each second with the history). At most
//! [`MAX_ENTRIES`] are kept: past that the oldest go first (their clients connect
//! afresh), with a warning.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One subscription as a restored session gets it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedSubscription {
    pub identifier: String,
    /// The streams the hub delivered to it (the app's plain `stream_from`s, or the
    /// server's own stream for a `$pubsub`/Turbo Streams subscription).
    pub streams: Vec<String>,
    /// Where its whispers go, if anywhere.
    pub whisper: Option<String>,
    /// Served by the server itself, without Ruby (`$pubsub`, Turbo Streams).
    pub server_side: bool,
    /// The channel's `state_attr_accessor` values: name → JSON text.
    pub state: Vec<(String, String)>,
    /// Its presence stream, if it has one (the client joins again after a restore).
    pub presence: Option<String>,
    /// Its clients may join that presence set with ids of their own.
    #[serde(default)]
    pub presence_clients: bool,
    /// Its clients' joins go to the channel (`presence: :ask`).
    #[serde(default)]
    pub presence_asks: bool,
}

/// What a session leaves behind for a restore (JSON in the NATS broker's KV bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedSession {
    /// The connection's identifiers as JSON (records as GlobalID params), if it had any.
    pub identifiers: Option<String>,
    pub subscriptions: Vec<CachedSubscription>,
    /// The connection's `state_attr_accessor` values: name → JSON text.
    pub state: Vec<(String, String)>,
    /// The app built a connection object for it (so disconnect callbacks are owed for
    /// the restored session too); false for a JWT session that never reached Ruby.
    pub app_connected: bool,
    /// When the credential that opened the session expires (the JWT's `exp`, unix
    /// seconds): a restore past it is refused as `token_expired`, so restores cannot
    /// outlive the token. Absent in entries written before it was kept.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Whose presence ids its client chose when it has no identifiers (so the restored
    /// session rejoins as the same owner).
    #[serde(default)]
    pub presence_owner: Option<String>,
}

impl CachedSession {
    /// Identifiers of every restored subscription, as `restored_ids` lists them.
    pub fn restored_ids(&self) -> Vec<&str> {
        self.subscriptions
            .iter()
            .map(|s| s.identifier.as_str())
            .collect()
    }

    /// About what the entry costs in memory: its text plus a little per string.
    pub fn approx_bytes(&self) -> usize {
        let pairs =
            |v: &[(String, String)]| v.iter().map(|(k, x)| k.len() + x.len() + 48).sum::<usize>();
        let subscriptions: usize = self
            .subscriptions
            .iter()
            .map(|s| {
                s.identifier.len()
                    + s.streams.iter().map(|x| x.len() + 24).sum::<usize>()
                    + s.whisper.as_ref().map_or(0, String::len)
                    + s.presence.as_ref().map_or(0, String::len)
                    + pairs(&s.state)
                    + 128
            })
            .sum();
        128 + self.identifiers.as_ref().map_or(0, String::len)
            + self.presence_owner.as_ref().map_or(0, String::len)
            + subscriptions
            + pairs(&self.state)
    }
}

/// Sessions kept at once (a few hundred bytes each): reached only by a churn of
/// about 300 closes a second for the default ttl.
pub const MAX_ENTRIES: usize = 100_000;

pub struct SessionCache {
    ttl: Duration,
    max: usize,
    /// `ANYCABLE_SESSIONS_MAX_BYTES`: what all entries may cost together
    /// ([`CachedSession::approx_bytes`]); past it the oldest go first.
    max_bytes: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_sid: HashMap<String, (CachedSession, Instant, usize)>,
    /// Sids in the order they were put (so by expiry: one ttl for all); a taken one
    /// stays here until it reaches the front.
    order: VecDeque<(String, Instant)>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, sid: &str) -> Option<(CachedSession, Instant)> {
        let (session, expires, bytes) = self.by_sid.remove(sid)?;
        self.bytes -= bytes;
        Some((session, expires))
    }
}

static EVICTED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

impl SessionCache {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self::with_max(ttl, MAX_ENTRIES, max_bytes)
    }

    pub fn with_max(ttl: Duration, max: usize, max_bytes: usize) -> Self {
        SessionCache {
            ttl,
            max,
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn put(&self, sid: &str, session: CachedSession) {
        self.put_at(sid, session, Instant::now());
    }

    pub fn put_at(&self, sid: &str, session: CachedSession, now: Instant) {
        let expires = now + self.ttl;
        let bytes = session.approx_bytes();
        let mut entries = self.entries.lock();
        entries.remove(sid);
        if bytes > self.max_bytes {
            drop(entries);
            crate::logging::once_a_second(&EVICTED_LOG, |more| {
                log::warn!(
                    "a closed session of ~{bytes} bytes is over ANYCABLE_SESSIONS_MAX_BYTES \
                     ({}): it cannot be restored ({more} more such lines since the last)",
                    self.max_bytes
                );
            });
            return;
        }
        entries
            .by_sid
            .insert(sid.to_owned(), (session, expires, bytes));
        entries.bytes += bytes;
        entries.order.push_back((sid.to_owned(), expires));
        let mut evicted = 0;
        while entries.by_sid.len() > self.max || entries.bytes > self.max_bytes {
            let Some((oldest, at)) = entries.order.pop_front() else {
                break;
            };
            if entries
                .by_sid
                .get(&oldest)
                .is_some_and(|(_, e, _)| *e == at)
            {
                entries.remove(&oldest);
                evicted += 1;
            }
        }
        if evicted > 0 {
            crate::logging::once_a_second(&EVICTED_LOG, |more| {
                log::warn!(
                    "session cache full ({} sessions, ANYCABLE_SESSIONS_MAX_BYTES {}): the \
                     oldest closed sessions can no longer be restored ({more} more such lines \
                     since the last)",
                    self.max,
                    self.max_bytes,
                );
            });
        }
    }

    /// Bytes the kept entries cost ([`CachedSession::approx_bytes`]).
    pub fn bytes(&self) -> usize {
        self.entries.lock().bytes
    }

    /// The entry for `sid`, removed: a sid restores once.
    pub fn take(&self, sid: &str) -> Option<CachedSession> {
        self.take_at(sid, Instant::now())
    }

    pub fn take_at(&self, sid: &str, now: Instant) -> Option<CachedSession> {
        let (session, expires) = self.entries.lock().remove(sid)?;
        (now < expires).then_some(session)
    }

    /// Drops expired entries.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    pub fn sweep_at(&self, now: Instant) {
        let mut entries = self.entries.lock();
        while entries.order.front().is_some_and(|(_, at)| *at <= now) {
            let (sid, at) = entries.order.pop_front().expect("checked");
            if entries.by_sid.get(&sid).is_some_and(|(_, e, _)| *e == at) {
                entries.remove(&sid);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().by_sid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ids: &str) -> CachedSession {
        CachedSession {
            identifiers: Some(ids.into()),
            subscriptions: vec![CachedSubscription {
                identifier: r#"{"channel":"ChatChannel"}"#.into(),
                streams: vec!["chat".into()],
                whisper: None,
                server_side: false,
                state: vec![("room".into(), "\"r1\"".into())],
                presence: None,
                presence_clients: false,
                presence_asks: false,
            }],
            expires_at: None,
            presence_owner: None,
            state: Vec::new(),
            app_connected: true,
        }
    }

    #[test]
    fn takes_once_within_ttl() {
        let cache = SessionCache::new(Duration::from_secs(10), 1 << 20);
        let t0 = Instant::now();
        cache.put_at("a", entry("1"), t0);
        assert_eq!(
            cache.take_at("a", t0 + Duration::from_secs(9)),
            Some(entry("1"))
        );
        assert_eq!(cache.take_at("a", t0 + Duration::from_secs(9)), None);
        assert_eq!(
            entry("1").restored_ids(),
            vec![r#"{"channel":"ChatChannel"}"#]
        );
    }

    #[test]
    fn keeps_at_most_max_entries_oldest_out_first() {
        let cache = SessionCache::with_max(Duration::from_secs(10), 2, 1 << 20);
        let t0 = Instant::now();
        cache.put_at("a", entry("1"), t0);
        cache.put_at("b", entry("2"), t0 + Duration::from_secs(1));
        assert!(cache.take_at("b", t0).is_some());
        cache.put_at("c", entry("3"), t0 + Duration::from_secs(2));
        cache.put_at("d", entry("4"), t0 + Duration::from_secs(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.take_at("a", t0).is_none());
        assert!(cache.take_at("c", t0).is_some());
        // A sid put again is kept by its newer time.
        cache.put_at("d", entry("5"), t0 + Duration::from_secs(8));
        cache.sweep_at(t0 + Duration::from_secs(14));
        assert_eq!(
            cache.take_at("d", t0 + Duration::from_secs(14)),
            Some(entry("5"))
        );
    }

    /// Issue #24 (8): before, only entries were counted, and 70 MiB of one client's
    /// identifiers stayed after it closed.
    #[test]
    fn keeps_at_most_max_bytes_oldest_out_first() {
        let one = entry("1").approx_bytes();
        let cache = SessionCache::with_max(Duration::from_secs(10), 100, one * 2 + one / 2);
        let t0 = Instant::now();
        for (i, sid) in ["a", "b", "c"].iter().enumerate() {
            cache.put_at(sid, entry("1"), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.bytes(), one * 2);
        assert!(cache.take_at("a", t0).is_none());
        assert!(cache.take_at("c", t0).is_some());
        assert_eq!(cache.bytes(), one);
        // One bigger than the whole budget is not kept (and evicts nothing).
        let mut huge = entry("1");
        huge.identifiers = Some("x".repeat(one * 3));
        cache.put_at("h", huge, t0);
        assert!(cache.take_at("h", t0).is_none());
        assert!(cache.take_at("b", t0).is_some());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn expires_after_ttl_and_sweeps() {
        let cache = SessionCache::new(Duration::from_secs(10), 1 << 20);
        let t0 = Instant::now();
        cache.put_at("a", entry("1"), t0);
        cache.put_at("b", entry("2"), t0 + Duration::from_secs(5));
        assert_eq!(cache.take_at("a", t0 + Duration::from_secs(10)), None);
        cache.put_at("a", entry("1"), t0);
        cache.sweep_at(t0 + Duration::from_secs(11));
        assert_eq!(cache.len(), 1);
        assert!(cache.take_at("b", t0 + Duration::from_secs(11)).is_some());
    }
}
