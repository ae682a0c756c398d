//! The WebSocket server: accepts sockets (on its own port, or handed over by Rack
//! hijack), upgrades them, and runs one task per connection that reads commands,
//! passes them to the [`Controller`] and writes queued frames.
//!
//! Not here: the wire format ([`crate::protocol`]), HTTP parsing
//! ([`crate::handshake`]), who listens to what ([`crate::hub`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::broadcast::{self, BroadcastMessage};
use crate::config::ServerConfig;
use crate::controller::{CommandRequest, ConnectReply, ConnectRequest, Controller};
use crate::handshake::{self, RequestHead};
use crate::hub::Hub;
use crate::protocol;
use crate::session::{DisconnectReason, Outbound, Outbox, Session, SessionRef};

const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest broadcast request body accepted.
const MAX_BROADCAST_BODY: usize = 1024 * 1024;
/// Frames written in one go before flushing.
const WRITE_BATCH: usize = 64;

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

struct Inner<C> {
    relay: parking_lot::RwLock<Option<BroadcastRelay>>,
    health: parking_lot::RwLock<Option<HealthProbe>>,
    config: ServerConfig,
    controller: C,
    hub: Arc<Hub>,
    sessions: RwLock<HashMap<u64, SessionRef>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<C: Controller> Server<C> {
    pub fn new(config: ServerConfig, controller: C, hub: Arc<Hub>) -> Self {
        Server {
            inner: Arc::new(Inner {
                relay: parking_lot::RwLock::new(None),
                health: parking_lot::RwLock::new(None),
                config,
                controller,
                hub,
                sessions: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        }
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
    }

    /// Binds `addr` and accepts connections on it until shutdown. Returns the bound
    /// address (useful with port 0).
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
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
                    return;
                }
            };
            inner.upgrade(stream, head, peer, env_token).await;
        });
    }

    /// Applies an AnyCable broadcast payload (single, batch, or disconnect command) to
    /// this process's clients. Returns how many messages it held.
    pub fn apply_broadcast(&self, payload: &str) -> Result<usize, String> {
        self.inner.apply_broadcast(payload)
    }

    /// Sends broadcasts that arrive over HTTP to `relay` (after checking them) instead of
    /// applying them here.
    pub fn set_broadcast_relay(&self, relay: BroadcastRelay) {
        *self.inner.relay.write() = Some(relay);
    }

    /// `/health` answers 503 with the probe's reason while it reports one.
    pub fn set_health_probe(&self, probe: HealthProbe) {
        *self.inner.health.write() = Some(probe);
    }

    /// Tells every client `server_restart` and waits (up to `wait`) for their
    /// disconnect callbacks; stops accepting.
    pub async fn shutdown(&self, wait: Duration) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        let sessions: Vec<SessionRef> = self.inner.sessions.read().values().cloned().collect();
        for session in sessions {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

type CommandFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl<C: Controller> Inner<C> {
    fn apply_broadcast(&self, payload: &str) -> Result<usize, String> {
        let messages = broadcast::parse(payload)?;
        for message in &messages {
            match message {
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                } => {
                    self.hub.broadcast(stream, data, exclude_socket.as_deref());
                }
                BroadcastMessage::Disconnect {
                    identifiers,
                    reconnect,
                } => {
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

    /// `POST /_broadcast` on the server's own port: 201, 401 (bad key), 422 (bad payload).
    async fn serve_broadcast(&self, stream: &mut TcpStream, head: &RequestHead, mut body: Vec<u8>) {
        let reply = |status: u16, text: &str| handshake::plain_response(status, text);
        if head.method != "POST" {
            let _ = stream.write_all(reply(405, "POST only").as_bytes()).await;
            return;
        }
        if let Some(key) = &self.config.broadcast_key {
            let given = head
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
                log::warn!("broadcast request refused: bad or missing key");
                let _ = stream
                    .write_all(reply(401, "Unauthorized").as_bytes())
                    .await;
                return;
            }
        }
        let length = head
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if length > MAX_BROADCAST_BODY {
            let _ = stream
                .write_all(reply(413, "Payload too large").as_bytes())
                .await;
            return;
        }
        while body.len() < length {
            if body.capacity() - body.len() < 4096 {
                body.reserve(4096);
            }
            match stream.read_buf(&mut body).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        body.truncate(length);
        let text = String::from_utf8_lossy(&body);
        let relay = self.relay.read().clone();
        let result = match relay {
            Some(relay) => broadcast::parse(&text).map(|_| relay(text.into_owned())),
            None => self.apply_broadcast(&text).map(|_| ()),
        };
        match result {
            Ok(_) => {
                let _ = stream.write_all(reply(201, "").as_bytes()).await;
            }
            Err(e) => {
                log::warn!("broadcast request refused: {e}");
                let _ = stream.write_all(reply(422, &e).as_bytes()).await;
            }
        }
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
            let degraded = self.health.read().as_ref().and_then(|probe| probe());
            let (status, body) = if self.shutting_down.load(Ordering::Acquire) {
                (503, "Shutting down".to_string())
            } else if let Some(reason) = degraded {
                (503, reason)
            } else {
                (200, "Success".to_string())
            };
            let _ = stream
                .write_all(handshake::plain_response(status, &body).as_bytes())
                .await;
            return;
        }
        if self.config.broadcast_path.as_deref() == Some(path) {
            let _ = timeout(
                self.config.handshake_timeout,
                self.serve_broadcast(&mut stream, &head, rest),
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
        let upgrade = match handshake::check_upgrade(&head, &self.config) {
            Ok(u) => u,
            Err(refusal) => {
                log::warn!(
                    "refused WebSocket request {} from {}: {}",
                    head.target,
                    peer.map(|p| p.to_string()).unwrap_or_default(),
                    refusal.reason
                );
                let _ = stream
                    .write_all(
                        handshake::plain_response(refusal.status, &refusal.reason).as_bytes(),
                    )
                    .await;
                return;
            }
        };
        if self.shutting_down.load(Ordering::Acquire) {
            let _ = stream
                .write_all(handshake::plain_response(503, "Shutting down").as_bytes())
                .await;
            return;
        }
        if stream
            .write_all(handshake::switching_protocols(&upgrade).as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let ws =
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(self.ws_config())).await;
        self.run_session(ws, head, peer, env_token).await;
    }

    fn new_sid(&self, id: u64, head: &RequestHead) -> String {
        if let Some(rid) = head.header("x-request-id") {
            let rid = rid.trim();
            if !rid.is_empty() && rid.len() <= 255 && rid.bytes().all(|b| b.is_ascii_graphic()) {
                return rid.to_string();
            }
        }
        generate_sid(id)
    }

    async fn run_session(
        self: Arc<Self>,
        mut ws: WebSocketStream<TcpStream>,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sid = self.new_sid(id, &head);
        let (session, mut rx) = Session::new(id, sid, self.config.max_pending_bytes);

        let reply = self
            .controller
            .connect(ConnectRequest {
                session: session.clone(),
                head,
                remote_addr: peer,
                env_token,
            })
            .await;
        match reply {
            ConnectReply::Accepted => {}
            ConnectReply::Rejected(reason) => {
                session.mark_closing();
                self.hub.remove_session(&session);
                send_close(&mut ws, Some(&reason)).await;
                return;
            }
            ConnectReply::Failed(error) => {
                log::error!("session {}: connect failed: {error}", session.sid);
                session.mark_closing();
                self.hub.remove_session(&session);
                send_close(&mut ws, Some(&DisconnectReason::SERVER_ERROR)).await;
                return;
            }
        }
        if ws
            .send(Message::Text(protocol::welcome(&session.sid).into()))
            .await
            .is_err()
        {
            self.finish(&session).await;
            return;
        }
        self.sessions.write().insert(id, session.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            session.close(DisconnectReason::SERVER_RESTART);
        }

        let mut inflight: Option<CommandFuture<'_>> = None;
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    if !self.write(&mut ws, &session, &mut rx, out).await {
                        break;
                    }
                }
                _ = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                }
                msg = ws.next(), if inflight.is_none() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        inflight = self.handle_text(&session, text.as_str());
                    }
                    Some(Ok(Message::Binary(_))) => {
                        log::warn!("session {}: binary frame ignored (the protocol is JSON text)", session.sid);
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(e))) => {
                        log::warn!("session {}: {e}; closing with 1009", session.sid);
                        let _ = ws.send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: "message too big".into(),
                        }))).await;
                        break;
                    }
                    Some(Err(e)) => {
                        log::debug!("session {}: read error: {e}", session.sid);
                        break;
                    }
                },
            }
        }
        drop(inflight);
        self.finish(&session).await;
    }

    fn handle_text<'a>(&'a self, session: &SessionRef, text: &str) -> Option<CommandFuture<'a>> {
        if text.len() > self.config.max_message_size {
            log::warn!(
                "session {}: message of {} bytes is over the {}-byte limit; ignored",
                session.sid,
                text.len(),
                self.config.max_message_size
            );
            return None;
        }
        match protocol::parse_command(text) {
            Ok(command) => Some(Box::pin(self.controller.command(CommandRequest {
                session: session.clone(),
                command,
            }))),
            Err(e) => {
                log::warn!("session {}: {e}; ignored", session.sid);
                None
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes.
    /// Returns false when the connection is done.
    async fn write(
        &self,
        ws: &mut WebSocketStream<TcpStream>,
        session: &Session,
        rx: &mut Outbox,
        first: Outbound,
    ) -> bool {
        let mut close = None;
        let mut bytes = 0;
        let batch = async {
            let mut next = Some(first);
            let mut n = 0;
            while let Some(out) = next.take() {
                match out {
                    Outbound::Frame(frame) => {
                        bytes += frame.len();
                        ws.feed(Message::Text(frame)).await?;
                    }
                    Outbound::Close(reason) => {
                        close = Some(reason);
                        break;
                    }
                }
                n += 1;
                if n < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            ws.flush().await
        };
        match timeout(self.config.write_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                log::warn!(
                    "session {}: write took over {:?}; disconnecting as too_slow",
                    session.sid,
                    self.config.write_timeout
                );
                return false;
            }
        }
        session.written(bytes);
        if let Some(reason) = close {
            send_close(ws, reason.as_ref()).await;
            return false;
        }
        true
    }

    async fn finish(&self, session: &SessionRef) {
        session.mark_closing();
        self.sessions.write().remove(&session.id);
        self.hub.remove_session(session);
        self.controller.disconnect(session.clone()).await;
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
        match handshake::parse_head(&buf) {
            Ok(Some((head, len))) => return Ok((head, buf.split_off(len))),
            Ok(None) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(None) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}

/// `{"type":"disconnect",…}` (when there is a reason) then a close frame; best
/// effort, bounded in time.
async fn send_close(ws: &mut WebSocketStream<TcpStream>, reason: Option<&DisconnectReason>) {
    let _ = timeout(Duration::from_secs(1), async {
        let frame = match reason {
            Some(reason) => {
                ws.feed(Message::Text(
                    protocol::disconnect(&reason.reason, reason.reconnect).into(),
                ))
                .await?;
                CloseFrame {
                    code: CloseCode::from(reason.close_code()),
                    reason: reason.reason.to_string().into(),
                }
            }
            None => CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            },
        };
        ws.send(Message::Close(Some(frame))).await
    })
    .await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn generate_sid(id: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}{:x}", h.finish(), id)
}
