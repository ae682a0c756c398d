//! Sessions kept after their socket closed, so a client that comes back with its old
//! sid (`?sid=` or `X-AnyCable-Restore-SID`) within `ANYCABLE_SESSIONS_TTL` gets its
//! identifiers and subscriptions back without the app's `connect` or `subscribed`
//! (AnyCable's session restore, §5.1). This is the memory broker's store: one process.
//!
//! An entry is written when an extended-protocol session's socket closes and taken
//! (removed) by the first restore, so a sid restores at most once; whatever is not
//! taken expires after the ttl (swept each second with the history).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One subscription as a restored session gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What a session leaves behind for a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedSession {
    /// The connection's identifiers as JSON (records as GlobalID params), if it had any.
    pub identifiers: Option<String>,
    pub subscriptions: Vec<CachedSubscription>,
    /// The connection's `state_attr_accessor` values: name → JSON text.
    pub state: Vec<(String, String)>,
    /// The app built a connection object for it (so disconnect callbacks are owed for
    /// the restored session too); false for a JWT session that never reached Ruby.
    pub app_connected: bool,
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

pub struct SessionCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (CachedSession, Instant)>>,
}

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        SessionCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn put(&self, sid: &str, session: CachedSession) {
        self.put_at(sid, session, Instant::now());
    }

    pub fn put_at(&self, sid: &str, session: CachedSession, now: Instant) {
        self.entries
            .lock()
            .insert(sid.to_owned(), (session, now + self.ttl));
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
        self.entries.lock().retain(|_, (_, expires)| now < *expires);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
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
