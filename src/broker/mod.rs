//! The broker (`ANYCABLE_BROKER`): what outlives a broadcast or a socket. Streams'
//! history, so a client gets what it missed (`history`), and closed sessions, so a client
//! restores its own (`?sid=`). The server holds one [`Broker`] and asks it; which kind it
//! is shows only here:
//!
//! - off (no `ANYCABLE_BROKER`): no offsets, history requests refused, no restores;
//! - memory: this process keeps both ([`history`], [`sessions`]);
//! - NATS: JetStream keeps both for every node ([`jetstream`]); they are reachable once
//!   the NATS link has found its stream and bucket ([`Broker::nats_history_ready`],
//!   [`Broker::nats_sessions_ready`]).
//!
//! Not here: delivering to sockets ([`crate::hub`]), the pub/sub between nodes
//! ([`crate::pubsub`]; the NATS broker's link, [`jetstream::JetStreamLink`], is one more
//! adapter of it).

pub mod history;
pub mod jetstream;
pub mod seal;
pub mod sessions;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use history::{unix_now, Entry, History, HistoryConfig, HistoryError};
pub use jetstream::{Replicas, StoredHistory, StoredSessions};
pub use sessions::{CachedSession, CachedSubscription, SessionCache};

use crate::protocol::Position;

/// AnyCable's brokers (`ANYCABLE_BROKER`), when one is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// This process keeps the history ([`History`]) and closed sessions.
    Memory,
    /// NATS JetStream keeps them for every node ([`jetstream`]).
    Nats,
}

/// How long a history request or a restore waits for JetStream right after boot (the
/// clients of a restarted node come straight back).
const NATS_READY_WAIT: Duration = Duration::from_secs(5);

pub struct Broker {
    store: Store,
    /// `ANYCABLE_SESSIONS_TTL` is not zero: closed extended-protocol sessions are kept.
    keeps_sessions: bool,
}

enum Store {
    Off,
    /// Boxed: the history's shards are large beside the other variants.
    Memory(Box<MemoryStore>),
    Nats {
        history: OnceLock<Arc<StoredHistory>>,
        sessions: OnceLock<Arc<StoredSessions>>,
    },
}

struct MemoryStore {
    history: History,
    sessions: Option<SessionCache>,
}

/// Where a history request is read from.
pub enum HistoryReader<'a> {
    Memory(&'a History),
    Stored(&'a StoredHistory),
}

impl HistoryReader<'_> {
    pub fn epoch(&self) -> String {
        match self {
            HistoryReader::Memory(h) => h.epoch().to_owned(),
            HistoryReader::Stored(h) => h.epoch(),
        }
    }

    /// The messages after `offset` in `epoch`, oldest first.
    pub async fn from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Vec<Entry>, HistoryError> {
        match self {
            HistoryReader::Memory(h) => h.from(stream, epoch, offset),
            HistoryReader::Stored(h) => h.from(stream, epoch, offset).await,
        }
    }

    /// The offset of the stream's last message (0: none kept).
    pub async fn tail(&self, stream: &str) -> Result<u64, HistoryError> {
        match self {
            HistoryReader::Memory(h) => Ok(h.tail(stream)),
            HistoryReader::Stored(h) => h.tail(stream).await,
        }
    }

    /// A read after `offset` of `stream`, which [`HistoryReader::from`] refused as gone,
    /// has in fact missed nothing: every message of the stream was dropped, none of them
    /// after `offset` (a reader at the end of a stream quiet for longer than the
    /// history's ttl). JetStream keeps no trace of a stream's last offset once its
    /// messages are gone, so this is asked of the whole history stream. The memory
    /// broker's [`History::from`] answers that case itself.
    pub async fn missed_nothing(&self, stream: &str, offset: u64) -> Result<bool, HistoryError> {
        match self {
            HistoryReader::Memory(_) => Ok(false),
            HistoryReader::Stored(h) => {
                Ok(h.since(stream, 0).await?.is_empty() && h.kept_all_after(offset).await?)
            }
        }
    }

    /// The messages kept since `since` (unix seconds), oldest first.
    pub async fn since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        match self {
            HistoryReader::Memory(h) => Ok(h.since(stream, since)),
            HistoryReader::Stored(h) => h.since(stream, since).await,
        }
    }
}

impl Broker {
    /// `kind` with the history limits (`None`: no broker), `ANYCABLE_SESSIONS_TTL` and
    /// `ANYCABLE_SESSIONS_MAX_BYTES` (the memory broker's; the NATS bucket's is set
    /// where it is made).
    pub fn new(
        kind: BrokerKind,
        history: Option<&HistoryConfig>,
        sessions_ttl: Duration,
        sessions_max_bytes: usize,
    ) -> Self {
        let keeps_sessions = history.is_some() && !sessions_ttl.is_zero();
        let store = match (kind, history) {
            (_, None) => Store::Off,
            (BrokerKind::Memory, Some(config)) => {
                let history = History::new(config);
                log::info!(
                    "memory broker: epoch {}, history limit {}, history ttl {:?}",
                    history.epoch(),
                    config.limit,
                    config.ttl,
                );
                Store::Memory(Box::new(MemoryStore {
                    history,
                    sessions: keeps_sessions
                        .then(|| SessionCache::new(sessions_ttl, sessions_max_bytes)),
                }))
            }
            (BrokerKind::Nats, Some(_)) => Store::Nats {
                history: OnceLock::new(),
                sessions: OnceLock::new(),
            },
        };
        Broker {
            store,
            keeps_sessions,
        }
    }

    /// A broker is on: broadcasts get offsets and history requests are served.
    pub fn is_on(&self) -> bool {
        !matches!(self.store, Store::Off)
    }

    pub fn is_nats(&self) -> bool {
        matches!(self.store, Store::Nats { .. })
    }

    /// The memory broker's history, when that is the broker.
    pub fn memory_history(&self) -> Option<&History> {
        match &self.store {
            Store::Memory(memory) => Some(&memory.history),
            _ => None,
        }
    }

    /// Runs `deliver` with the broadcast's place in its stream's history: the memory
    /// broker gives a non-transient broadcast the stream's next offset and keeps it
    /// (delivering under the stream's lock, so every subscriber gets a stream's
    /// broadcasts in offset order). Otherwise `None`: no broker, a transient message,
    /// or the NATS broker, whose offsets come from JetStream as it delivers.
    pub fn append<R>(
        &self,
        stream: &str,
        data: &str,
        transient: bool,
        deliver: impl FnOnce(Option<Position<'_>>) -> R,
    ) -> R {
        match &self.store {
            Store::Memory(memory) if !transient => {
                let history = &memory.history;
                history.append(stream, data, |offset| {
                    deliver(Some(Position {
                        stream,
                        epoch: history.epoch(),
                        offset,
                    }))
                })
            }
            _ => deliver(None),
        }
    }

    /// Where history requests are read from; `None` when there is no broker, or the
    /// NATS broker's JetStream is still away after a short wait (the client refetches).
    pub async fn history(&self) -> Option<HistoryReader<'_>> {
        match &self.store {
            Store::Off => None,
            Store::Memory(memory) => Some(HistoryReader::Memory(&memory.history)),
            Store::Nats { history, .. } => wait_for(history)
                .await
                .map(|h| HistoryReader::Stored(h.as_ref())),
        }
    }

    /// Live broadcasts may reach a session after a replay read them (the NATS broker's
    /// consumer lags its direct reads; the memory broker delivers under its lock).
    pub fn live_may_lag_replays(&self) -> bool {
        !matches!(self.store, Store::Memory(_))
    }

    /// Closed extended-protocol sessions are kept for a restore.
    pub fn keeps_sessions(&self) -> bool {
        self.keeps_sessions
    }

    /// The session kept under `sid`, taken: a sid restores once.
    pub async fn take_session(&self, sid: &str) -> Option<CachedSession> {
        if !self.keeps_sessions {
            return None;
        }
        match &self.store {
            Store::Off => None,
            Store::Memory(memory) => memory.sessions.as_ref()?.take(sid),
            Store::Nats { sessions, .. } => wait_for(sessions).await?.take(sid).await,
        }
    }

    /// A session's last word at its close: kept under `sid` for a restore, or (`None`:
    /// the server or the app closed it) made unrestorable.
    pub async fn keep_session(&self, sid: &str, session: Option<CachedSession>) {
        if !self.keeps_sessions {
            return;
        }
        match (&self.store, session) {
            (Store::Memory(memory), Some(session)) => {
                if let Some(cache) = &memory.sessions {
                    cache.put(sid, session);
                }
            }
            // Memory: nothing was kept while it was open.
            (Store::Memory(_), None) | (Store::Off, _) => {}
            (Store::Nats { sessions, .. }, session) => {
                if let Some(store) = sessions.get() {
                    match session {
                        Some(session) => store.put(sid, &session).await,
                        None => store.forget(sid).await,
                    }
                }
            }
        }
    }

    /// The NATS broker keeps open sessions too (written as they change): a client
    /// restores on any node even after the node that served it died. `None` until
    /// JetStream answered, and for other brokers.
    pub fn open_sessions_store(&self) -> Option<&StoredSessions> {
        match &self.store {
            Store::Nats { sessions, .. } if self.keeps_sessions => sessions.get().map(|s| &**s),
            _ => None,
        }
    }

    /// Whether [`Broker::open_sessions_store`] will have a store to write to.
    pub fn writes_open_sessions(&self) -> bool {
        self.keeps_sessions && self.is_nats()
    }

    /// With the NATS broker: the history stream answered; history requests are served
    /// from it from now on.
    pub fn nats_history_ready(&self, reader: Arc<StoredHistory>) {
        if let Store::Nats { history, .. } = &self.store {
            let _ = history.set(reader);
        }
    }

    /// With the NATS broker: the sessions bucket answered; restores are served from it
    /// and sessions kept in it from now on.
    pub fn nats_sessions_ready(&self, stored: Arc<StoredSessions>) {
        if let Store::Nats { sessions, .. } = &self.store {
            let _ = sessions.set(stored);
        }
    }

    /// Drops what outlived its ttl (called each second).
    pub fn sweep(&self) {
        if let Store::Memory(memory) = &self.store {
            memory.history.sweep();
            if let Some(cache) = &memory.sessions {
                cache.sweep();
            }
        }
    }
}

/// The NATS broker's history reader or sessions bucket, waiting a little for JetStream
/// right after boot.
async fn wait_for<T>(cell: &OnceLock<Arc<T>>) -> Option<&Arc<T>> {
    let deadline = tokio::time::Instant::now() + NATS_READY_WAIT;
    loop {
        if let Some(h) = cell.get() {
            return Some(h);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
