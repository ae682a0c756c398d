//! The WebSocket server: its lifecycle (start, listen, shutdown), accepting sockets
//! (on its own port, or handed over by Rack hijack) and upgrading them, and applying
//! broadcasts. Each upgraded socket gets a task of its own (`connection.rs`).
//!
//! Not here: the wire format ([`crate::protocol`]), HTTP parsing and the plain
//! endpoints ([`crate::http`]), who listens to what ([`crate::hub`]).

mod connection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::broker::history::History;
use crate::broker::jetstream::{StoredHistory, StoredSessions};
use crate::broker::sessions::SessionCache;
use crate::config::BrokerKind;
use crate::config::ServerConfig;
use crate::controller::Controller;
use crate::http::endpoints::{self, EndpointHandle};
use crate::http::handshake;
use crate::http::RequestHead;
use crate::hub::{Delivery, Hub};
use crate::metrics::{self, MetricsSource, COUNTERS};
use crate::protocol;
use crate::protocol::broadcast::{self, BroadcastError, BroadcastMessage};
use crate::session::{DisconnectReason, SessionRef};

const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How often the NATS broker's session writer looks for changed sessions.
const SESSION_WRITE_EVERY: Duration = Duration::from_secs(1);

static REFUSED_CONN_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

pub struct Server<C: Controller> {
    inner: Arc<Inner<C>>,
}

impl<C: Controller> Clone for Server<C> {
    fn clone(&self) -> Self {
        Server {
            inner: self.inner.clone(),
        }
    }
}

/// Where broadcasts received over HTTP go instead of this process's hub: the pub/sub
/// publisher, so every node gets them.
pub type BroadcastRelay = Arc<dyn Fn(String) + Send + Sync>;

/// Reports why the server is degraded (e.g. "pub/sub disconnected"), or `None`.
pub type HealthProbe = Arc<dyn Fn() -> Option<String> + Send + Sync>;

pub(crate) struct Inner<C> {
    pub(crate) relay: RwLock<Option<BroadcastRelay>>,
    pub(crate) health: RwLock<Option<HealthProbe>>,
    pub(crate) metrics_source: RwLock<Option<MetricsSource>>,
    pub(crate) config: ServerConfig,
    pub(crate) controller: C,
    pub(crate) hub: Arc<Hub>,
    /// The memory broker's stream history (`ANYCABLE_BROKER=memory`).
    pub(crate) history: Option<History>,
    /// The NATS broker's history, once JetStream is reachable (`ANYCABLE_BROKER=nats`).
    pub(crate) stored_history: OnceLock<Arc<StoredHistory>>,
    /// The NATS broker's session cache (instead of `session_cache`).
    pub(crate) stored_sessions: OnceLock<Arc<StoredSessions>>,
    /// Closed extended-protocol sessions, for a restore (with a broker and a
    /// non-zero `ANYCABLE_SESSIONS_TTL`).
    pub(crate) session_cache: Option<SessionCache>,
    /// Welcomed sessions, for pings, remote disconnects and shutdown.
    pub(crate) sessions: RwLock<HashMap<u64, SessionRef>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    /// Connections whose app callbacks (connect, then disconnect) have not all run:
    /// shutdown waits for this to reach zero, not for `sessions` to empty (a session
    /// leaves that map before its disconnect callback runs).
    pub(crate) pending_callbacks: AtomicUsize,
    pub(crate) callbacks_done: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<C: Controller> Server<C> {
    pub fn new(config: ServerConfig, controller: C, hub: Arc<Hub>) -> Self {
        let history = match config.broker {
            BrokerKind::Memory => config.history.as_ref().map(History::new),
            BrokerKind::Nats => None,
        };
        if let Some(history) = &history {
            log::info!(
                "memory broker: epoch {}, history limit {}, history ttl {:?}",
                history.epoch(),
                config.history.as_ref().map_or(0, |h| h.limit),
                config.history.as_ref().map_or(Duration::ZERO, |h| h.ttl),
            );
        }
        let broker_on = config.history.is_some();
        let session_cache =
            (broker_on && config.broker == BrokerKind::Memory && !config.sessions_ttl.is_zero())
                .then(|| SessionCache::new(config.sessions_ttl));
        if broker_on {
            // The broker keeps presence too (AnyCable's memory broker; per process here).
            hub.enable_presence(config.presence_ttl);
        }
        Server {
            inner: Arc::new(Inner {
                history,
                stored_history: OnceLock::new(),
                stored_sessions: OnceLock::new(),
                session_cache,
                relay: RwLock::new(None),
                health: RwLock::new(None),
                metrics_source: RwLock::new(None),
                config,
                controller,
                hub,
                sessions: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                pending_callbacks: AtomicUsize::new(0),
                callbacks_done: Notify::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// Number of connected (welcomed) sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.read().len()
    }

    /// Starts the ping timer. Call once, inside the runtime.
    pub fn start(&self) {
        self.start_session_writer();
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(inner.config.ping_interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let frame = protocol::ping(now);
                for session in inner.sessions.read().values() {
                    session.send_frame(frame.clone());
                }
            }
        });
        self.inner.tasks.lock().push(task);
        if self.inner.config.history.is_some() {
            let inner = self.inner.clone();
            let sweep = tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(1));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    if let Some(history) = &inner.history {
                        history.sweep();
                    }
                    if let Some(cache) = &inner.session_cache {
                        cache.sweep();
                    }
                    if let Some(presence) = inner.hub.presence() {
                        for (stream, event) in presence.sweep() {
                            inner.hub.presence_event(&stream, &event);
                        }
                    }
                }
            });
            self.inner.tasks.lock().push(sweep);
        }
    }

    /// With the NATS broker, extended-protocol sessions are written to its bucket
    /// when what a restore gets back changed (at most once a second each), and all
    /// again every half ttl, so a client restores on any node even after the node
    /// that served it died.
    fn start_session_writer(&self) {
        let ttl = self.inner.config.sessions_ttl;
        if self.inner.config.broker != BrokerKind::Nats
            || self.inner.config.history.is_none()
            || ttl.is_zero()
        {
            return;
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSION_WRITE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut touched = tokio::time::Instant::now();
            loop {
                ticker.tick().await;
                let Some(store) = inner.stored_sessions.get() else {
                    continue;
                };
                let touch = touched.elapsed() >= ttl / 2;
                if touch {
                    touched = tokio::time::Instant::now();
                }
                let due: Vec<SessionRef> = inner
                    .sessions
                    .read()
                    .values()
                    .filter(|s| s.is_resumable() && (s.take_changed() || touch))
                    .cloned()
                    .collect();
                for session in due {
                    if session.is_closing() {
                        continue; // its close writes (or forgets) it
                    }
                    let app = session.app_connected.load(Ordering::Acquire);
                    if let Some(entry) = session.to_cache(app) {
                        store.put(&session.sid, &entry).await;
                    }
                }
            }
        });
        self.inner.tasks.lock().push(task);
    }

    /// Binds `addr` and accepts connections on it until shutdown. Returns the bound
    /// address (useful with port 0). Other processes may bind the same port.
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        // SO_REUSEPORT: every Puma worker listens on the same port and the kernel
        // spreads connections over them (each worker serves its own sockets).
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let local = listener.local_addr()?;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.serve_tcp(stream, peer).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        log::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        self.inner.tasks.lock().push(task);
        log::info!("WebSocket server listening on {local}");
        Ok(local)
    }

    /// Takes over a socket whose request head was already read (Rack hijack) and
    /// upgrades it. Call inside the runtime.
    pub fn handoff(&self, stream: std::net::TcpStream, head: RequestHead, env_token: u64) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let peer = stream.peer_addr().ok();
            let stream = match stream
                .set_nonblocking(true)
                .and_then(|_| TcpStream::from_std(stream))
            {
                Ok(s) => s,
                Err(e) => {
                    log::error!("could not take over hijacked socket: {e}");
                    inner.controller.handoff_abandoned(env_token);
                    return;
                }
            };
            inner.upgrade(stream, head, peer, env_token).await;
        });
    }

    /// Applies an AnyCable broadcast payload (single, batch, or disconnect command) to
    /// this process's clients. Returns how many messages it held.
    pub fn apply_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        self.inner.apply_broadcast(payload)
    }

    /// Delivers `data` to this process's subscribers of `stream`, unless it is too
    /// large for any of them to receive.
    pub fn broadcast(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
    ) -> Result<Delivery, BroadcastError> {
        self.inner.check_size(data)?;
        COUNTERS.broadcast_msg.inc();
        Ok(self.inner.deliver(stream, data, exclude_sid, false))
    }

    /// The memory broker's history, when `ANYCABLE_BROKER=memory`.
    pub fn history(&self) -> Option<&History> {
        self.inner.history.as_ref()
    }

    /// With the NATS broker: history requests are served from `history` from now on
    /// (until then they are refused: the client refetches).
    pub fn set_stored_history(&self, history: Arc<StoredHistory>) {
        let _ = self.inner.stored_history.set(history);
    }

    /// With the NATS broker: sessions are kept in (and restored from) `sessions`.
    pub fn set_stored_sessions(&self, sessions: Arc<StoredSessions>) {
        let _ = self.inner.stored_sessions.set(sessions);
    }

    /// With the NATS broker: delivers a stored broadcast, at its place in the
    /// history, to this process's subscribers.
    pub fn deliver_stored(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
        epoch: &str,
        offset: u64,
    ) -> Delivery {
        COUNTERS.broadcast_msg.inc();
        let at = protocol::Position {
            stream,
            epoch,
            offset,
        };
        self.inner
            .hub
            .broadcast_at(stream, data, exclude_sid, Some(at))
    }

    /// Checks broadcast data for publishing: deliverable to a client.
    pub fn check_data(&self, data: &str) -> Result<(), BroadcastError> {
        self.inner.check_size(data)
    }

    /// Checks a payload for publishing: parsed, and every message deliverable.
    /// Returns how many messages it holds.
    pub fn check_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        let messages = broadcast::parse(payload).map_err(BroadcastError::Malformed)?;
        self.inner.check_sizes(&messages)?;
        Ok(messages.len())
    }

    /// Sends broadcasts that arrive over HTTP to `relay` (after checking them) instead of
    /// applying them here.
    pub fn set_broadcast_relay(&self, relay: BroadcastRelay) {
        *self.inner.relay.write() = Some(relay);
    }

    /// More metrics to render with the server's (the Ruby side's).
    pub fn set_metrics_source(&self, source: MetricsSource) {
        *self.inner.metrics_source.write() = Some(source);
    }

    /// Every metric in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }

    /// `/health` answers 503 with the probe's reason while it reports one.
    pub fn set_health_probe(&self, probe: HealthProbe) {
        *self.inner.health.write() = Some(probe);
    }

    /// Tells every client `server_restart` and waits (up to `wait`) until every
    /// connection's disconnect callback has run; stops accepting. Returns how many
    /// connections' callbacks had not finished by then (and logs it).
    pub async fn shutdown(&self, wait: Duration) -> usize {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::Release);
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        let sessions: Vec<SessionRef> = inner.sessions.read().values().cloned().collect();
        for session in sessions {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        let all_done = async {
            loop {
                let done = inner.callbacks_done.notified();
                if inner.pending_callbacks.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = timeout(wait, all_done).await;
        let left = inner.pending_callbacks.load(Ordering::Acquire);
        if left > 0 {
            // Those already queued still run while the Ruby threads drain the queue;
            // the Ruby side counts, once its threads are done, how many never did.
            log::warn!(
                "shutdown: {left} connections' disconnect callbacks had not finished within \
                 {wait:?} (ANYCABLE_SHUTDOWN_TIMEOUT); the queued ones run now"
            );
        }
        left
    }
}

impl<C: Controller> Inner<C> {
    /// Largest broadcast data a client can receive: its frame (data plus identifier
    /// and wrapper, allowed 4 KiB) must fit in `max_pending_bytes`.
    fn max_broadcast_size(&self) -> usize {
        self.config.max_pending_bytes.saturating_sub(4096)
    }

    fn check_size(&self, data: &str) -> Result<(), BroadcastError> {
        let limit = self.max_broadcast_size();
        if data.len() > limit {
            return Err(BroadcastError::TooLarge {
                size: data.len(),
                limit,
            });
        }
        Ok(())
    }

    pub(crate) fn check_sizes(&self, messages: &[BroadcastMessage]) -> Result<(), BroadcastError> {
        for message in messages {
            if let BroadcastMessage::Stream { data, .. } = message {
                self.check_size(data)?;
            }
        }
        Ok(())
    }

    /// Delivers a broadcast to this process's subscribers; with the memory broker, a
    /// non-transient one is first given its offset and stored.
    pub(crate) fn deliver(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
        transient: bool,
    ) -> Delivery {
        match &self.history {
            Some(history) if !transient => history.append(stream, data, |offset| {
                let at = protocol::Position {
                    stream,
                    epoch: history.epoch(),
                    offset,
                };
                self.hub.broadcast_at(stream, data, exclude_sid, Some(at))
            }),
            _ => self.hub.broadcast(stream, data, exclude_sid),
        }
    }

    pub(crate) fn apply_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        let messages = broadcast::parse(payload).map_err(BroadcastError::Malformed)?;
        self.check_sizes(&messages)?;
        COUNTERS.broadcast_msg.inc_by(messages.len() as u64);
        for message in &messages {
            match message {
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                    transient,
                } => {
                    self.deliver(stream, data, exclude_socket.as_deref(), *transient);
                }
                BroadcastMessage::Disconnect {
                    identifiers,
                    reconnect,
                } => {
                    COUNTERS.remote_commands.inc();
                    let reason = DisconnectReason {
                        reconnect: *reconnect,
                        ..DisconnectReason::REMOTE
                    };
                    for session in self.sessions.read().values() {
                        if session.identifiers() == Some(identifiers) {
                            session.close(reason.clone());
                        }
                    }
                }
            }
        }
        Ok(messages.len())
    }

    pub(crate) fn metrics_text(&self) -> String {
        let snapshot = {
            let sessions = self.sessions.read();
            let uniq: std::collections::HashSet<String> = sessions
                .values()
                .map(|s| s.identifiers().map(|i| i.to_string()).unwrap_or_default())
                .collect();
            metrics::Snapshot {
                clients: sessions.len() as i64,
                clients_uniq: uniq.len() as i64,
                streams: self.hub.stream_count() as i64,
            }
        };
        let extra = self
            .metrics_source
            .read()
            .as_ref()
            .map(|source| source())
            .unwrap_or_default();
        metrics::render(snapshot, &self.config.metrics_tags, extra)
    }

    fn ws_config(&self) -> WebSocketConfig {
        let limit = self.config.hard_message_limit();
        WebSocketConfig::default()
            .read_buffer_size(self.config.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(self.config.max_pending_bytes * 2)
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
    }

    async fn serve_tcp(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let (head, rest) =
            match timeout(self.config.handshake_timeout, read_head(&mut stream)).await {
                Ok(Ok(read)) => read,
                Ok(Err(status)) => {
                    let _ = stream
                        .write_all(handshake::plain_response(status, "Bad request").as_bytes())
                        .await;
                    return;
                }
                Err(_) => return,
            };
        let path = head.path();
        if path == self.config.health_path {
            return endpoints::serve_health(&*self, &mut stream).await;
        }
        if self.config.metrics_path.as_deref() == Some(path) {
            let _ = stream
                .write_all(handshake::plain_response(200, &self.metrics_text()).as_bytes())
                .await;
            return;
        }
        if self.config.broadcast_path.as_deref() == Some(path) {
            let _ = timeout(
                self.config.handshake_timeout,
                endpoints::serve_broadcast(&*self, &mut stream, &head, rest, peer),
            )
            .await;
            return;
        }
        if path != self.config.path {
            let _ = stream
                .write_all(handshake::plain_response(404, "Not found").as_bytes())
                .await;
            return;
        }
        self.upgrade(stream, head, Some(peer), 0).await;
    }

    async fn upgrade(
        self: Arc<Self>,
        mut stream: TcpStream,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
    ) {
        let _ = stream.set_nodelay(true);
        let upgrade = match handshake::check_upgrade(&head, &self.config.origins) {
            Ok(u) => u,
            Err(refusal) => {
                crate::logging::refused(format_args!(
                    "refused WebSocket request {} from {}: {} ({})",
                    head.path(),
                    peer.map(|p| p.to_string()).unwrap_or_default(),
                    refusal.reason,
                    refusal.status
                ));
                let _ = stream
                    .write_all(
                        handshake::plain_response(refusal.status, &refusal.reason).as_bytes(),
                    )
                    .await;
                self.controller.handoff_abandoned(env_token);
                return;
            }
        };
        if self.shutting_down.load(Ordering::Acquire) {
            let _ = stream
                .write_all(handshake::plain_response(503, "Shutting down").as_bytes())
                .await;
            self.controller.handoff_abandoned(env_token);
            return;
        }
        let open = self.pending_callbacks.load(Ordering::Acquire);
        if self.config.max_conn > 0 && open >= self.config.max_conn {
            COUNTERS.refused_conn.inc();
            crate::logging::once_a_second(&REFUSED_CONN_LOG, |unlogged| {
                log::warn!(
                    "refused a WebSocket connection: {open} are open, ANYCABLE_MAX_CONN is {} \
                     ({unlogged} more refused since the last line)",
                    self.config.max_conn
                )
            });
            let _ = stream
                .write_all(handshake::plain_response(503, "Too many connections").as_bytes())
                .await;
            self.controller.handoff_abandoned(env_token);
            return;
        }
        if stream
            .write_all(handshake::switching_protocols(&upgrade).as_bytes())
            .await
            .is_err()
        {
            self.controller.handoff_abandoned(env_token);
            return;
        }
        let ws =
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(self.ws_config())).await;
        let extended = upgrade.protocol == Some(protocol::EXTENDED_PROTOCOL);
        self.run_session(ws, head, peer, env_token, extended).await;
    }
}

impl<C: Controller> EndpointHandle for Inner<C> {
    fn unhealthy(&self) -> Option<String> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Some("Shutting down".into());
        }
        self.health.read().as_ref().and_then(|probe| probe())
    }

    fn broadcast_key(&self) -> Option<&str> {
        self.config.broadcast_key.as_deref()
    }

    fn take_broadcast(&self, payload: String) -> Result<usize, BroadcastError> {
        let relay = self.relay.read().clone();
        match relay {
            Some(relay) => {
                let messages = broadcast::parse(&payload).map_err(BroadcastError::Malformed)?;
                self.check_sizes(&messages)?;
                relay(payload);
                Ok(messages.len())
            }
            None => self.apply_broadcast(&payload),
        }
    }
}

/// Reads a request head; returns it with whatever bytes followed it (a body's start).
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), u16> {
    // Read into a heap buffer: an array here would sit in every connection's future.
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        let n = stream.read_buf(&mut buf).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        match crate::http::parse_head(&buf) {
            Ok(Some((head, len))) => return Ok((head, buf.split_off(len))),
            Ok(None) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(None) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}
