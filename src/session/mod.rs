//! One client connection as the rest of the system sees it: an id, a queue of outbound
//! frames with a byte cap, and what it subscribes to.
//!
//! A `Session` is shared (`Arc`) between the connection task that owns the socket, the
//! hub and the controller. Its concerns, one file each:
//! - `outbox.rs`: the outbound queue. Sending never blocks: frames go to a queue whose
//!   byte count is capped; a client that falls behind the cap is disconnected as
//!   `too_slow` instead of growing memory;
//! - `subscriptions.rs`: the app's channel subscriptions, the server's own, their
//!   whisper and presence streams, and `state_attr_accessor` values;
//! - `hold.rs`: the gate that keeps live broadcasts behind a history replay;
//! - `restore.rs`: the session as a restore gets it back, and taking that back.
//!
//! Not here: the socket ([`crate::server`]), who gets which broadcast ([`crate::hub`]),
//! where closed sessions are kept ([`crate::broker`]).

mod hold;
mod outbox;
mod restore;
mod subscriptions;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::broadcast::{exclude_digest, SID_DIGEST_PREFIX};
use hold::Held;
pub(crate) use outbox::{Closing, Outbound, Outbox};
pub use subscriptions::PresenceJoins;
use subscriptions::{AppSubscription, PresenceSet};

/// Why the server ends a connection, as sent in `{"type":"disconnect",…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectReason {
    pub reason: Cow<'static, str>,
    pub reconnect: bool,
}

impl DisconnectReason {
    pub const fn new(reason: &'static str, reconnect: bool) -> Self {
        DisconnectReason {
            reason: Cow::Borrowed(reason),
            reconnect,
        }
    }
    pub const UNAUTHORIZED: Self = Self::new("unauthorized", false);
    pub const TOKEN_EXPIRED: Self = Self::new("token_expired", false);
    pub const SERVER_RESTART: Self = Self::new("server_restart", true);
    pub const SERVER_ERROR: Self = Self::new("server_error", true);
    pub const TOO_SLOW: Self = Self::new("too_slow", true);
    pub const REMOTE: Self = Self::new("remote", true);
    pub const INVALID_REQUEST: Self = Self::new("invalid_request", true);
    pub const NO_PONG: Self = Self::new("no_pong", true);

    /// WebSocket close code sent after the disconnect message.
    pub fn close_code(&self) -> u16 {
        match self.reason.as_ref() {
            "server_restart" => 1001,
            "server_error" => 1011,
            _ => 1000,
        }
    }
}

pub struct Session {
    /// Process-unique number; maps are keyed by it.
    pub id: u64,
    /// The session id the client sees in its welcome message.
    pub sid: String,
    /// [`exclude_digest`] of `sid`, made the first time it is needed.
    sid_digest: std::sync::OnceLock<Box<str>>,
    outbox: Mutex<VecDeque<Outbound>>,
    notify: Notify,
    /// The connection task is gone: nothing will read the outbox again.
    receiver_gone: AtomicBool,
    pending: AtomicUsize,
    max_pending: usize,
    closing: AtomicBool,
    too_slow_logged: AtomicBool,
    /// (stream, identifier) pairs this session is subscribed to in the hub.
    streams: Mutex<Vec<(Arc<str>, Arc<str>)>>,
    /// The connection's identifiers (`identified_by`), as JSON, for remote disconnects.
    identifiers: std::sync::OnceLock<serde_json::Value>,
    /// When the credential that opened it expires (a JWT's `exp`, unix seconds); a
    /// restored session keeps its first one's.
    expires_at: std::sync::OnceLock<u64>,
    /// Subscriptions the server made itself (`$pubsub`, Turbo Streams), by identifier,
    /// with the stream whispers on it go to, if any. Only the connection task uses it.
    server_subscriptions: Mutex<HashMap<String, Option<String>>>,
    /// Whisper streams of the app's channel subscriptions (`stream_from …, whisper:
    /// true`), by identifier: one per subscription, as AnyCable's.
    whispers: Mutex<HashMap<String, String>>,
    /// This second's whispers: (when it began, how many) (`ANYCABLE_WHISPERS_PER_SECOND`).
    whisper_window: Mutex<(Option<std::time::Instant>, u32)>,
    /// Set while some subscription's history is being replayed (see [`Session::hold`]):
    /// the hub checks this flag before it looks at `held`, so sessions with nothing
    /// held pay one relaxed load per broadcast.
    holding: AtomicBool,
    /// Live frames for held subscriptions, and what replays reached.
    held: Mutex<Held>,
    /// The app's channel subscriptions, in order (see [`AppSubscription`]).
    app_subscriptions: Mutex<Vec<AppSubscription>>,
    /// `state_attr_accessor` values, by subscription identifier ("" for the
    /// connection's own): name → JSON text. Boxed: most sessions have none.
    state: Mutex<Option<Box<StateMap>>>,
    /// Whose presence ids an unidentified session's client chose (kept by a restore).
    anonymous_owner: std::sync::OnceLock<Box<str>>,
    /// Presence sets, by subscription identifier (AnyCable's `$p`).
    presence_streams: Mutex<Vec<PresenceSet>>,
    /// The server or the app closed it: nothing to restore.
    final_close: AtomicBool,
    /// What a restore would get back changed since the NATS broker last stored it.
    changed: AtomicBool,
    /// The app built a connection object for it (disconnect callbacks are owed).
    app_connected: AtomicBool,
    /// Extended protocol: kept for a restore when the client goes.
    resumable: AtomicBool,
    /// Its last word was stored before a restorable close: its close stores nothing
    /// more (a write after a restore took it would make the sid restorable again).
    stored_before_close: AtomicBool,
}

type StateMap = HashMap<String, Vec<(String, String)>>;

pub type SessionRef = Arc<Session>;

impl Session {
    pub(crate) fn new(id: u64, sid: String, max_pending: usize) -> (SessionRef, Outbox) {
        let session = Arc::new(Session {
            id,
            sid,
            sid_digest: std::sync::OnceLock::new(),
            outbox: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            receiver_gone: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            max_pending,
            closing: AtomicBool::new(false),
            too_slow_logged: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            identifiers: std::sync::OnceLock::new(),
            expires_at: std::sync::OnceLock::new(),
            server_subscriptions: Mutex::new(HashMap::new()),
            whispers: Mutex::new(HashMap::new()),
            whisper_window: Mutex::new((None, 0)),
            holding: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            app_subscriptions: Mutex::new(Vec::new()),
            state: Mutex::new(None),
            anonymous_owner: std::sync::OnceLock::new(),
            presence_streams: Mutex::new(Vec::new()),
            final_close: AtomicBool::new(false),
            changed: AtomicBool::new(true),
            app_connected: AtomicBool::new(false),
            resumable: AtomicBool::new(false),
            stored_before_close: AtomicBool::new(false),
        });
        let outbox = Outbox {
            session: session.clone(),
        };
        (session, outbox)
    }

    /// Whether a broadcast's `exclude_socket` names this session: its sid, or its
    /// [`Session::sid_digest`] (what this server publishes).
    pub fn is_excluded_by(&self, exclude_socket: &str) -> bool {
        exclude_socket == self.sid
            || (exclude_socket.starts_with(SID_DIGEST_PREFIX)
                && self.sid_digest() == exclude_socket)
    }

    /// The sid's [`exclude_digest`]: how a broadcast this server publishes names the
    /// session it skips (the sid itself never leaves the process).
    pub fn sid_digest(&self) -> &str {
        self.sid_digest
            .get_or_init(|| exclude_digest(&self.sid).into_boxed_str())
    }

    /// How log lines name the session: the sid's first 8 characters. The whole sid
    /// restores the session (a credential), so it is never logged.
    pub fn log_id(&self) -> &str {
        self.sid.get(..8).unwrap_or(&self.sid)
    }

    /// Sends `{"type":"disconnect",…}` after what is already queued, then closes.
    /// Only the first call has an effect.
    pub fn close(&self, reason: DisconnectReason) {
        self.close_with(Closing::Told(reason));
    }

    /// Closes without a disconnect message: for when the application has already
    /// transmitted one (Action Cable's `Connection#close`) or wants none.
    pub fn close_quietly(&self) {
        self.close_with(Closing::Quiet);
    }

    /// Closes for a server restart, the session kept for a restore (the extended
    /// protocol, with sessions that outlive this process): 1001 and no message.
    /// `stored`: its last word is in the store already (its close writes nothing).
    pub fn close_restorable(&self, stored: bool) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.stored_before_close.store(stored, Ordering::Release);
            self.push(Outbound::Close(Closing::Restorable));
        }
    }

    /// Closed restorable with its last word stored before.
    pub(crate) fn stored_before_close(&self) -> bool {
        self.stored_before_close.load(Ordering::Acquire)
    }

    fn close_with(&self, closing: Closing) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            // A remote disconnect at logout, too_slow, a plain restart: nothing to
            // restore. Only a socket the client or the network ended, or one the
            // server closed restorable, is kept.
            self.final_close.store(true, Ordering::Release);
            self.push(Outbound::Close(closing));
        }
    }

    /// Disconnects as `too_slow`, logging why once per session (a full queue is
    /// usually followed by a write that times out too).
    pub fn too_slow(&self, why: std::fmt::Arguments<'_>) {
        if !self.too_slow_logged.swap(true, Ordering::AcqRel) {
            log::warn!(
                "session {}: {why}; disconnecting as too_slow",
                self.log_id()
            );
            crate::metrics::COUNTERS.disconnected_slow_clients.inc();
        }
        self.close(DisconnectReason::TOO_SLOW);
    }

    /// Records the connection's identifiers (once; later calls are ignored).
    pub fn set_identifiers(&self, identifiers: serde_json::Value) {
        let _ = self.identifiers.set(identifiers);
    }

    /// The credential that opened the session expires then (unix seconds; once).
    pub fn set_expires_at(&self, unix_seconds: u64) {
        let _ = self.expires_at.set(unix_seconds);
    }

    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at.get().copied()
    }

    pub fn identifiers(&self) -> Option<&serde_json::Value> {
        self.identifiers.get()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.receiver_gone.load(Ordering::Acquire)
    }

    /// The app built a connection object for it: its disconnect callbacks are owed.
    pub(crate) fn set_app_connected(&self) {
        self.app_connected.store(true, Ordering::Release);
    }

    pub(crate) fn app_connected(&self) -> bool {
        self.app_connected.load(Ordering::Acquire)
    }

    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("sid", &self.log_id())
            .finish()
    }
}
