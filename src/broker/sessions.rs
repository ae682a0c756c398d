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
}

impl CachedSession {
    /// Identifiers of every restored subscription, as `restored_ids` lists them.
    pub fn restored_ids(&self) -> Vec<&str> {
        self.subscriptions
            .iter()
            .map(|s| s.identifier.as_str())
            .collect()
    }
}

/// Sessions kept at once (a few hundred bytes each): reached only by a churn of
/// about 300 closes a second for the default ttl.
pub const MAX_ENTRIES: usize = 100_000;

pub struct SessionCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_sid: HashMap<String, (CachedSession, Instant)>,
    /// Sids in the order they were put (so by expiry: one ttl for all); a taken one
    /// stays here until it reaches the front.
    order: VecDeque<(String, Instant)>,
}

static EVICTED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        Self::with_max(ttl, MAX_ENTRIES)
    }

    pub fn with_max(ttl: Duration, max: usize) -> Self {
        SessionCache {
            ttl,
            max,
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
        let mut entries = self.entries.lock();
        entries.by_sid.insert(sid.to_owned(), (session, expires));
        entries.order.push_back((sid.to_owned(), expires));
        let mut evicted = 0;
        while entries.by_sid.len() > self.max {
            let Some((oldest, at)) = entries.order.pop_front() else {
                break;
            };
            if entries.by_sid.get(&oldest).is_some_and(|(_, e)| *e == at) {
                entries.by_sid.remove(&oldest);
                evicted += 1;
            }
        }
        if evicted > 0 {
            crate::logging::once_a_second(&EVICTED_LOG, |more| {
                log::warn!(
                    "session cache full ({} sessions): the oldest closed sessions can no longer be restored ({} more since the last line)",
                    self.max,
                    more
                );
            });
        }
    }

    /// The entry for `sid`, removed: a sid restores once.
    pub fn take(&self, sid: &str) -> Option<CachedSession> {
        self.take_at(sid, Instant::now())
    }

    pub fn take_at(&self, sid: &str, now: Instant) -> Option<CachedSession> {
        let (session, expires) = self.entries.lock().by_sid.remove(sid)?;
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
            if entries.by_sid.get(&sid).is_some_and(|(_, e)| *e == at) {
                entries.by_sid.remove(&sid);
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
            }],
            expires_at: None,
            state: Vec::new(),
            app_connected: true,
        }
    }

    #[test]
    fn takes_once_within_ttl() {
        let cache = SessionCache::new(Duration::from_secs(10));
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
        let cache = SessionCache::with_max(Duration::from_secs(10), 2);
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

    #[test]
    fn expires_after_ttl_and_sweeps() {
        let cache = SessionCache::new(Duration::from_secs(10));
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
