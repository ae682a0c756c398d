//! One client connection as the rest of the system sees it: an id, a queue of outbound
//! frames with a byte cap, and the streams it subscribes to.
//!
//! A `Session` is shared (`Arc`) between the connection task that owns the socket, the
//! hub and the controller. Sending never blocks: frames go to a queue whose byte count
//! is capped; a client that falls behind the cap is disconnected as `too_slow` instead
//! of growing memory. The queue is a `VecDeque` behind a lock plus a `Notify`, not a
//! channel: an idle connection then holds no queue allocation at all (a tokio channel
//! keeps a block of slots per connection, about 1.3 KiB).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::sessions::{CachedSession, CachedSubscription};

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

pub(crate) enum Outbound {
    Frame(Utf8Bytes),
    /// Close after what is queued; with a reason, a disconnect message goes first.
    Close(Option<DisconnectReason>),
}

pub struct Session {
    /// Process-unique number; maps are keyed by it.
    pub id: u64,
    /// The session id the client sees in its welcome message.
    pub sid: String,
    /// [`crate::broker::jetstream::exclude_digest`] of `sid`, made the first time a broadcast
    /// excludes by digest.
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
    pub(crate) streams: Mutex<Vec<(Arc<str>, Arc<str>)>>,
    /// The connection's identifiers (`identified_by`), as JSON, for remote disconnects.
    identifiers: std::sync::OnceLock<serde_json::Value>,
    /// Subscriptions the server made itself (`$pubsub`, Turbo Streams), by identifier,
    /// with the stream whispers on it go to, if any. Only the connection task uses it.
    pub(crate) server_subscriptions: Mutex<HashMap<String, Option<String>>>,
    /// Whisper streams of the app's channel subscriptions (`stream_from …, whisper:
    /// true`), by identifier: one per subscription, as AnyCable's.
    whispers: Mutex<HashMap<String, String>>,
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
    /// Presence streams, by subscription identifier (AnyCable's `$p`).
    presence_streams: Mutex<Vec<(String, String)>>,
    /// The server or the app closed it: nothing to restore.
    final_close: AtomicBool,
    /// What a restore would get back changed since the NATS broker last stored it.
    changed: AtomicBool,
    /// The app built a connection object for it (disconnect callbacks are owed).
    pub(crate) app_connected: AtomicBool,
    /// Extended protocol: kept for a restore when the client goes.
    resumable: AtomicBool,
}

type StateMap = HashMap<String, Vec<(String, String)>>;

/// One of the app's channel subscriptions, as the server knows it.
struct AppSubscription {
    identifier: Arc<str>,
    /// The app confirmed it (its `subscribed` ran and did not reject).
    confirmed: bool,
    /// It streams through a Ruby block or coder, which the hub does not know: a
    /// restore leaves it out and the client subscribes again. Set during `subscribed`,
    /// so possibly before it is confirmed.
    pinned: bool,
}

/// A live broadcast frame kept back while its subscription's history is replayed.
type HeldFrame = (Arc<str>, Option<u64>, Utf8Bytes);

#[derive(Default)]
struct Held {
    /// Live frames for held subscriptions, by identifier: (stream, offset, frame).
    frames: HashMap<String, Vec<HeldFrame>>,
    /// (identifier, stream, offset) a replay from the NATS broker reached: a live
    /// frame at or below it was in the replay (JetStream's consumer can lag its direct
    /// reads). The first live frame above it ends the entry (they come in offset
    /// order); so does the consumer's delivering past it
    /// ([`crate::broker::jetstream::consumed`]).
    replayed: Vec<(String, Arc<str>, u64)>,
    /// Restored subscriptions held until the client's `history` for them (see
    /// [`Session::hold_restored`]); a `history` command claims its identifier.
    unclaimed: Vec<String>,
    /// Bytes of `frames`: they count against the session's cap as queued ones do.
    bytes: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.replayed.is_empty()
    }

    /// Takes subscription `identifier`'s held frames out.
    fn take(&mut self, identifier: &str) -> Vec<HeldFrame> {
        let frames = self.frames.remove(identifier).unwrap_or_default();
        self.bytes -= frames.iter().map(|(_, _, f)| f.len()).sum::<usize>();
        frames
    }
}

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
            server_subscriptions: Mutex::new(HashMap::new()),
            whispers: Mutex::new(HashMap::new()),
            holding: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            app_subscriptions: Mutex::new(Vec::new()),
            state: Mutex::new(None),
            presence_streams: Mutex::new(Vec::new()),
            final_close: AtomicBool::new(false),
            changed: AtomicBool::new(true),
            app_connected: AtomicBool::new(false),
            resumable: AtomicBool::new(false),
        });
        let outbox = Outbox {
            session: session.clone(),
        };
        (session, outbox)
    }

    fn push(&self, out: Outbound) -> bool {
        {
            let mut queue = self.outbox.lock();
            if self.receiver_gone.load(Ordering::Acquire) {
                return false;
            }
            queue.push_back(out);
        }
        self.notify.notify_one();
        true
    }

    /// Whether a broadcast's `exclude_socket` names this session: its sid, or (as the
    /// NATS broker stores it) its [`crate::broker::jetstream::exclude_digest`].
    pub fn is_excluded_by(&self, exclude_socket: &str) -> bool {
        use crate::broker::jetstream::{exclude_digest, SID_DIGEST_PREFIX};
        if exclude_socket == self.sid {
            return true;
        }
        exclude_socket.starts_with(SID_DIGEST_PREFIX)
            && self
                .sid_digest
                .get_or_init(|| exclude_digest(&self.sid).into_boxed_str())
                .as_ref()
                == exclude_socket
    }

    /// How log lines name the session: the sid's first 8 characters. The whole sid
    /// restores the session (a credential), so it is never logged.
    pub fn log_id(&self) -> &str {
        self.sid.get(..8).unwrap_or(&self.sid)
    }

    /// Queues a text frame. Returns false when the session is closing or gone.
    pub fn send_frame(&self, frame: Utf8Bytes) -> bool {
        if self.is_closing() {
            return false;
        }
        let len = frame.len();
        let pending = self.pending.fetch_add(len, Ordering::Relaxed) + len;
        if pending > self.max_pending {
            self.too_slow(format_args!("{pending} bytes waiting to be written"));
            return false;
        }
        self.push(Outbound::Frame(frame))
    }

    /// Queues a text frame built by the application (e.g. Ruby's `transmit`).
    pub fn transmit(&self, text: String) -> bool {
        self.send_frame(text.into())
    }

    /// Sends `{"type":"disconnect",…}` after what is already queued, then closes.
    /// Only the first call has an effect.
    pub fn close(&self, reason: DisconnectReason) {
        self.close_with(Some(reason));
    }

    /// Closes without a disconnect message: for when the application has already
    /// transmitted one (Action Cable's `Connection#close`) or wants none.
    pub fn close_quietly(&self) {
        self.close_with(None);
    }

    fn close_with(&self, reason: Option<DisconnectReason>) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            // Whatever the reason (a remote disconnect at logout, too_slow, a restart):
            // only a socket the client or the network ended is kept for a restore.
            self.final_close.store(true, Ordering::Release);
            self.push(Outbound::Close(reason));
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

    /// Whispers on subscription `identifier` go to `stream` from now on; an empty
    /// `stream` stops them (AnyCable's channel-state rule).
    pub fn whisper_to(&self, identifier: &str, stream: &str) {
        let mut whispers = self.whispers.lock();
        if stream.is_empty() {
            whispers.remove(identifier);
        } else {
            whispers.insert(identifier.to_string(), stream.to_string());
        }
    }

    /// Stops whispers to `stream` on `identifier` (the stream was stopped).
    pub fn stop_whisper(&self, identifier: &str, stream: &str) {
        let mut whispers = self.whispers.lock();
        if whispers.get(identifier).is_some_and(|s| s == stream) {
            whispers.remove(identifier);
        }
    }

    /// Subscription `identifier`'s presence set is `stream`'s (an empty `stream`: none).
    pub fn presence_to(&self, identifier: &str, stream: &str) {
        self.mark_changed();
        let mut streams = self.presence_streams.lock();
        streams.retain(|(i, _)| i != identifier);
        if !stream.is_empty() {
            streams.push((identifier.to_owned(), stream.to_owned()));
        }
    }

    pub fn presence_stream(&self, identifier: &str) -> Option<String> {
        self.presence_streams
            .lock()
            .iter()
            .find(|(i, _)| i == identifier)
            .map(|(_, s)| s.clone())
    }

    /// The stream a whisper on `identifier` goes to, if any.
    pub fn whisper_stream(&self, identifier: &str) -> Option<String> {
        if let Some(server_side) = self.server_subscriptions.lock().get(identifier) {
            return server_side.clone();
        }
        self.whispers.lock().get(identifier).cloned()
    }

    /// Lets the hub's fast path skip `held` again once nothing is held or remembered.
    fn settle_holding(&self, held: &Held) {
        if held.is_empty() {
            self.holding.store(false, Ordering::SeqCst);
        }
    }

    /// Keeps live broadcasts to subscription `identifier` back from now until
    /// [`Session::release`]: a subscribe with history joins its streams before the
    /// replay is read, and what arrives in between must follow the replay, once.
    pub fn hold(&self, identifier: &str) {
        let mut held = self.held.lock();
        held.unclaimed.retain(|i| i != identifier);
        held.frames.entry(identifier.to_owned()).or_default();
        self.holding.store(true, Ordering::SeqCst);
    }

    /// Holds restored subscriptions from before they join their streams again: the
    /// client asks each one's history right after the welcome (`restored_ids`), and
    /// what is broadcast in between must follow that replay, once and in order (AnyCable
    /// sends it first). A `history` command takes its subscription over
    /// ([`Session::hold`]); [`Session::release_unclaimed`] lets the others go.
    pub fn hold_restored<'a>(&self, identifiers: impl IntoIterator<Item = &'a str>) {
        let mut held = self.held.lock();
        for identifier in identifiers {
            held.frames.entry(identifier.to_owned()).or_default();
            held.unclaimed.push(identifier.to_owned());
        }
        if !held.is_empty() {
            self.holding.store(true, Ordering::SeqCst);
        }
    }

    /// Sends what restored subscriptions no `history` command claimed kept back (a
    /// client that asks no history): subscription by subscription, each in arrival
    /// order.
    pub fn release_unclaimed(&self) {
        let mut held = self.held.lock();
        for identifier in std::mem::take(&mut held.unclaimed) {
            for (_, _, frame) in held.take(&identifier) {
                self.send_frame(frame);
            }
        }
        self.settle_holding(&held);
    }

    /// Subscription `identifier` is gone (unsubscribed, rejected): what was held for
    /// it goes nowhere, and nothing is held for it any more.
    pub fn drop_held(&self, identifier: &str) {
        let mut held = self.held.lock();
        held.take(identifier);
        held.unclaimed.retain(|i| i != identifier);
        held.replayed.retain(|(i, _, _)| i != identifier);
        self.settle_holding(&held);
    }

    /// Queues a hub frame for subscription `identifier` on `stream`, or keeps it back
    /// when the subscription is held. Relaxed first check: `hold` runs before the
    /// hub subscription, whose lock orders it before any broadcast that sees it.
    pub(crate) fn send_live(
        &self,
        identifier: &str,
        stream: &Arc<str>,
        offset: Option<u64>,
        frame: Utf8Bytes,
    ) -> bool {
        if self.holding.load(Ordering::Relaxed) {
            let mut guard = self.held.lock();
            let held = &mut *guard;
            if let Some(frames) = held.frames.get_mut(identifier) {
                if self.is_closing() {
                    return false;
                }
                let waiting = self.pending.load(Ordering::Relaxed) + held.bytes + frame.len();
                if waiting <= self.max_pending {
                    held.bytes += frame.len();
                    frames.push((stream.clone(), offset, frame));
                    return true;
                }
                drop(guard);
                self.too_slow(format_args!(
                    "{waiting} bytes waiting to be written (held for a replay)"
                ));
                return false;
            }
            let mut held = guard;
            let consumed = crate::broker::jetstream::consumed();
            held.replayed.retain(|(_, _, upto)| *upto > consumed);
            if let (Some(offset), Some(at)) = (
                offset,
                held.replayed
                    .iter()
                    .position(|(i, s, _)| i == identifier && s == stream),
            ) {
                if offset <= held.replayed[at].2 {
                    return false; // sent with the replay
                }
                held.replayed.swap_remove(at);
            }
            self.settle_holding(&held);
        }
        self.send_frame(frame)
    }

    /// Ends [`Session::hold`]: queues `before` (the replay and its reply), then the
    /// frames kept back whose offset is above what `replayed` says the replay reached
    /// for their stream (frames without an offset all go), all before any later live
    /// frame for `identifier`.
    pub fn release(
        &self,
        identifier: &str,
        before: impl IntoIterator<Item = Utf8Bytes>,
        replayed: &HashMap<Arc<str>, u64>,
        lagging_live: bool,
    ) {
        let mut held = self.held.lock();
        for frame in before {
            self.send_frame(frame);
        }
        let consumed = crate::broker::jetstream::consumed();
        let mut reached: Vec<(Arc<str>, u64)> = replayed
            .iter()
            .filter(|(_, o)| lagging_live && **o > consumed)
            .map(|(s, o)| (s.clone(), *o))
            .collect();
        for (stream, offset, frame) in held.take(identifier) {
            let upto = replayed.get(&stream).copied().unwrap_or(0);
            if offset.is_none_or(|o| o > upto) {
                if offset.is_some() {
                    reached.retain(|(s, _)| *s != stream);
                }
                self.send_frame(frame);
            }
        }
        held.replayed.retain(|(i, _, _)| i != identifier);
        held.replayed.extend(
            reached
                .into_iter()
                .map(|(stream, o)| (identifier.to_owned(), stream, o)),
        );
        self.settle_holding(&held);
    }

    /// The streams subscription `identifier` receives broadcasts from (server-side ones
    /// and the app's plain `stream_from`), in the order they were added.
    pub fn streams_of(&self, identifier: &str) -> Vec<Arc<str>> {
        self.streams
            .lock()
            .iter()
            .filter(|(_, i)| i.as_ref() == identifier)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The app confirmed subscription `identifier` (its channel's `subscribed` ran and
    /// did not reject).
    pub fn add_subscription(&self, identifier: &str) {
        self.with_subscription(identifier, |sub| sub.confirmed = true);
        self.mark_changed();
    }

    /// Something a restore gets back changed (subscriptions, streams, state).
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_resumable(&self) {
        self.resumable.store(true, Ordering::Release);
    }

    pub(crate) fn is_resumable(&self) -> bool {
        self.resumable.load(Ordering::Acquire)
    }

    /// Whether it changed since the last call.
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// The app's subscription `identifier` is gone (or was rejected).
    pub fn remove_subscription(&self, identifier: &str) {
        self.mark_changed();
        self.app_subscriptions
            .lock()
            .retain(|s| s.identifier.as_ref() != identifier);
        if let Some(state) = self.state.lock().as_mut() {
            state.remove(identifier);
        }
    }

    /// Records a `state_attr_accessor` value (JSON text) of subscription `identifier`,
    /// or of the connection for `""`, for a restore to give back.
    pub fn set_state(&self, identifier: &str, name: &str, json: String) {
        self.mark_changed();
        let mut state = self.state.lock();
        let values = state
            .get_or_insert_with(Default::default)
            .entry(identifier.to_owned())
            .or_default();
        match values.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = json,
            None => values.push((name.to_owned(), json)),
        }
    }

    fn state_of(&self, identifier: &str) -> Vec<(String, String)> {
        self.state
            .lock()
            .as_ref()
            .and_then(|s| s.get(identifier).cloned())
            .unwrap_or_default()
    }

    /// Subscription `identifier` streams through Ruby: a restore leaves it out.
    pub fn pin_subscription(&self, identifier: &str) {
        self.with_subscription(identifier, |sub| sub.pinned = true);
    }

    fn with_subscription(&self, identifier: &str, f: impl FnOnce(&mut AppSubscription)) {
        let mut subs = self.app_subscriptions.lock();
        let i = match subs
            .iter()
            .position(|s| s.identifier.as_ref() == identifier)
        {
            Some(i) => i,
            None => {
                subs.push(AppSubscription {
                    identifier: identifier.into(),
                    confirmed: false,
                    pinned: false,
                });
                subs.len() - 1
            }
        };
        f(&mut subs[i]);
    }

    /// A subscription this session has: the app's confirmed ones or the server's own.
    pub fn has_subscription(&self, identifier: &str) -> bool {
        self.server_subscriptions.lock().contains_key(identifier)
            || self
                .app_subscriptions
                .lock()
                .iter()
                .any(|s| s.confirmed && s.identifier.as_ref() == identifier)
    }

    /// The session as a restore gets it back; `None` when it must not be restored
    /// (the server or the app closed it).
    pub fn to_cache(&self, app_connected: bool) -> Option<CachedSession> {
        if self.final_close.load(Ordering::Acquire) {
            return None;
        }
        let whispers = self.whispers.lock();
        let mut subscriptions: Vec<CachedSubscription> = self
            .server_subscriptions
            .lock()
            .iter()
            .map(|(identifier, whisper)| CachedSubscription {
                identifier: identifier.clone(),
                streams: Vec::new(),
                whisper: whisper.clone(),
                server_side: true,
                state: Vec::new(),
                presence: self.presence_stream(identifier),
            })
            .collect();
        subscriptions.extend(
            self.app_subscriptions
                .lock()
                .iter()
                .filter(|s| s.confirmed && !s.pinned)
                .map(|s| CachedSubscription {
                    identifier: s.identifier.to_string(),
                    streams: Vec::new(),
                    whisper: whispers.get(s.identifier.as_ref()).cloned(),
                    server_side: false,
                    state: self.state_of(&s.identifier),
                    presence: self.presence_stream(&s.identifier),
                }),
        );
        for (stream, identifier) in self.streams.lock().iter() {
            if let Some(sub) = subscriptions
                .iter_mut()
                .find(|s| s.identifier == identifier.as_ref())
            {
                sub.streams.push(stream.to_string());
            }
        }
        Some(CachedSession {
            identifiers: self.identifiers().map(|v| v.to_string()),
            subscriptions,
            state: self.state_of(""),
            app_connected,
        })
    }

    /// Takes back what a cached session had, without the hub (the caller joins the
    /// streams): subscriptions, whisper streams, identifiers.
    pub(crate) fn restore_from(&self, cached: &CachedSession) {
        if let Some(ids) = cached
            .identifiers
            .as_deref()
            .and_then(|ids| serde_json::from_str(ids).ok())
        {
            self.set_identifiers(ids);
        }
        for sub in &cached.subscriptions {
            if let Some(stream) = &sub.presence {
                self.presence_to(&sub.identifier, stream);
            }
            if sub.server_side {
                self.server_subscriptions
                    .lock()
                    .insert(sub.identifier.clone(), sub.whisper.clone());
            } else {
                self.add_subscription(&sub.identifier);
                if let Some(stream) = &sub.whisper {
                    self.whisper_to(&sub.identifier, stream);
                }
                for (name, json) in &sub.state {
                    self.set_state(&sub.identifier, name, json.clone());
                }
            }
        }
        for (name, json) in &cached.state {
            self.set_state("", name, json.clone());
        }
    }

    /// Records the connection's identifiers (once; later calls are ignored).
    pub fn set_identifiers(&self, identifiers: serde_json::Value) {
        let _ = self.identifiers.set(identifiers);
    }

    pub fn identifiers(&self) -> Option<&serde_json::Value> {
        self.identifiers.get()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.receiver_gone.load(Ordering::Acquire)
    }

    pub(crate) fn written(&self, bytes: usize) {
        self.pending.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

/// The reading end of a session's outbound queue, owned by its connection task.
pub(crate) struct Outbox {
    session: SessionRef,
}

impl Outbox {
    /// Waits for the next frame. Cancel-safe: nothing is taken until it returns.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Ok(out) = self.try_recv() {
                return Some(out);
            }
            // notify_one stores a permit when nobody waits, so a push between the
            // check above and this await is not missed.
            self.session.notify.notified().await;
        }
    }

    pub(crate) fn try_recv(&mut self) -> Result<Outbound, ()> {
        let mut queue = self.session.outbox.lock();
        let out = queue.pop_front().ok_or(())?;
        if queue.is_empty() && queue.capacity() > 32 {
            // A burst is over: give its memory back.
            *queue = VecDeque::new();
        }
        Ok(out)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.session.receiver_gone.store(true, Ordering::Release);
        std::mem::take(&mut *self.session.outbox.lock());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pending_bytes_then_closes_once() {
        let (s, mut rx) = Session::new(1, "s".into(), 10);
        assert!(s.send_frame("12345".into()));
        assert!(!s.send_frame("123456".into()));
        assert!(!s.send_frame("1".into()));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        match rx.try_recv() {
            Ok(Outbound::Close(r)) => assert_eq!(r, Some(DisconnectReason::TOO_SLOW)),
            _ => panic!("expected close"),
        }
        assert!(rx.try_recv().is_err());
    }

    fn frames(rx: &mut Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outbound::Frame(f)) = rx.try_recv() {
            out.push(f.as_str().to_owned());
        }
        out
    }

    #[test]
    fn a_live_copy_of_a_replayed_message_is_dropped_even_after_the_replay() {
        let (s, mut rx) = Session::new(1, "s".into(), 1 << 20);
        let stream: Arc<str> = Arc::from("st");
        s.hold("id");
        // Live 7 arrives while the replay (5, 6, 7) is read: held, then dropped.
        assert!(s.send_live("id", &stream, Some(7), "live7".into()));
        let replayed: HashMap<Arc<str>, u64> = [(stream.clone(), 7)].into();
        s.release(
            "id",
            ["r5".into(), "r6".into(), "r7".into()],
            &replayed,
            true,
        );
        assert_eq!(frames(&mut rx), ["r5", "r6", "r7"]);
        // JetStream's consumer lags: 6 and 7 come live after the replay; then 8.
        assert!(!s.send_live("id", &stream, Some(6), "live6".into()));
        assert!(!s.send_live("id", &stream, Some(7), "live7".into()));
        assert!(s.send_live("id", &stream, Some(8), "live8".into()));
        assert!(s.send_live("id", &stream, Some(9), "live9".into()));
        assert_eq!(frames(&mut rx), ["live8", "live9"]);
        assert!(!s.holding.load(Ordering::SeqCst));
        // The memory broker delivers under its lock: nothing to remember after a replay.
        s.hold("id");
        s.release("id", ["r10".into()], &[(stream.clone(), 10)].into(), false);
        assert!(s.send_live("id", &stream, Some(10), "live10".into()));
        assert!(!s.holding.load(Ordering::SeqCst));
    }

    #[test]
    fn restored_subscriptions_wait_for_their_history_then_go_without_it() {
        let (s, mut rx) = Session::new(1, "s".into(), 1 << 20);
        let stream: Arc<str> = Arc::from("st");
        s.hold_restored(["a", "b"]);
        assert!(s.send_live("a", &stream, Some(4), "a4".into()));
        assert!(s.send_live("b", &stream, Some(4), "b4".into()));
        assert!(frames(&mut rx).is_empty());
        // "a"'s history comes: its replay, then what was kept back past it.
        s.hold("a");
        s.release_unclaimed(); // the timer firing meanwhile leaves "a" alone
        assert_eq!(frames(&mut rx), ["b4"]);
        assert!(s.send_live("a", &stream, Some(5), "a5".into()));
        s.release(
            "a",
            ["r3".into(), "confirm".into()],
            &[(stream.clone(), 3)].into(),
            false,
        );
        assert_eq!(frames(&mut rx), ["r3", "confirm", "a4", "a5"]);
        assert!(s.send_live("b", &stream, Some(6), "b6".into()));
        assert_eq!(frames(&mut rx), ["b6"]);
        assert!(!s.holding.load(Ordering::SeqCst));
        // Unsubscribed (or rejected) before its history: what was held goes nowhere.
        s.hold_restored(["c"]);
        assert!(s.send_live("c", &stream, Some(7), "c7".into()));
        s.drop_held("c");
        s.release_unclaimed();
        assert!(frames(&mut rx).is_empty());
        assert!(!s.holding.load(Ordering::SeqCst));
    }

    #[test]
    fn held_frames_count_against_the_cap() {
        let (s, mut rx) = Session::new(1, "s".into(), 10);
        let stream: Arc<str> = Arc::from("st");
        s.hold("id");
        assert!(s.send_live("id", &stream, Some(1), "12345".into()));
        assert!(!s.send_live("id", &stream, Some(2), "123456".into()));
        assert!(s.is_closing());
        s.release("id", [], &HashMap::new(), false);
        assert!(frames(&mut rx).is_empty());
    }
}
