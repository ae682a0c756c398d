//! Sockets in: the own port's accept loop (its request head read here and routed by
//! path: `/health`, `/metrics`, `/_broadcast`, the WebSocket path) and sockets handed
//! over by Rack hijack; both upgraded the same way, then served by
//! [`Inner::run_session`] (`connection.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::Inner;
use crate::controller::Controller;
use crate::http::endpoints::{self, EndpointHandle};
use crate::http::{handshake, RequestHead};
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::protocol::broadcast::{self, BroadcastError};

const MAX_HEAD_BYTES: usize = 16 * 1024;

static REFUSED_CONN_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

impl<C: Controller> Inner<C> {
    /// Binds `addr` and accepts connections on it until shutdown. Returns the bound
    /// address (useful with port 0). Other processes may bind the same port.
    pub(super) fn listen(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
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
        let inner = self.clone();
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
        self.tasks.lock().push(task);
        log::info!("WebSocket server listening on {local}");
        Ok(local)
    }

    /// Takes over a socket whose request was already read (Rack hijack): an events
    /// request (`ANYCABLE_SSE`) is streamed, a poll (`ANYCABLE_POLL`) taken, a stream
    /// read (`ANYCABLE_DS`) served, any other upgraded. Call inside the runtime.
    pub(super) fn handoff(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        head: RequestHead,
        transport: super::Handoff,
        env_token: u64,
    ) {
        let inner = self.clone();
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
            match transport {
                super::Handoff::Events(body) if inner.config.sse_path.is_some() => {
                    inner
                        .serve_events(stream, head, body, peer, env_token)
                        .await
                }
                super::Handoff::Poll(body) if inner.config.poll.is_some() => {
                    inner.serve_poll(stream, head, body, peer, env_token).await
                }
                super::Handoff::Ds if inner.config.ds.is_some() => {
                    inner.serve_ds(stream, head, peer, env_token).await
                }
                _ => inner.upgrade(stream, head, peer, env_token).await,
            }
        });
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
        // ANYCABLE_MAX_CONN counts sockets still sending their request head too: else
        // sockets that never finish one (held until the handshake timeout) are not
        // limited at all.
        let Some(handshake) = Handshake::enter(&self) else {
            self.refuse_over_max_conn(&mut stream, false).await;
            return;
        };
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
        if handshake.slack && !self.is_poll_of_a_session(&head) {
            // Let in on a long-polling session's room: only its polls may use it.
            return self.refuse_over_max_conn(&mut stream, true).await;
        }
        if path == self.config.health_path {
            return endpoints::serve_health(&*self, &mut stream).await;
        }
        if self.config.metrics_path.as_deref() == Some(path) {
            let response = match &self.config.metrics_token {
                Some(token) if !endpoints::bearer_matches(head.header("authorization"), token) => {
                    handshake::plain_response(401, "Unauthorized")
                }
                _ => handshake::plain_response(200, &self.metrics_text()),
            };
            let _ = stream.write_all(response.as_bytes()).await;
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
        if self.config.sse_path.as_deref() == Some(path) {
            let refuse = |head: &RequestHead, allowed, status| {
                let why = if status == 413 {
                    "Payload too large"
                } else {
                    "Bad request body"
                };
                crate::http::events::refusal_response(head, allowed, status, why)
            };
            let max = crate::http::events::MAX_BODY;
            let Some(body) = self
                .read_post_body(&mut stream, &head, rest, max, refuse)
                .await
            else {
                return;
            };
            drop(handshake); // from here on it counts as a connection
            return self.serve_events(stream, head, body, Some(peer), 0).await;
        }
        if let Some(max) = self
            .config
            .poll
            .as_ref()
            .filter(|p| p.path == path)
            .map(|p| p.max_request_size)
        {
            let refuse = |head: &RequestHead, allowed, status| {
                let cors = crate::http::origin::cors_headers(head, allowed);
                crate::http::poll::response(status, None, &cors, "Bad request body")
            };
            let Some(body) = self
                .read_post_body(&mut stream, &head, rest, max, refuse)
                .await
            else {
                return;
            };
            drop(handshake); // from here on it counts as a connection
            return self.serve_poll(stream, head, body, Some(peer), 0).await;
        }
        if let Some(ds) = &self.config.ds {
            if crate::http::ds::is_ds_path(path, &ds.path) {
                drop(handshake); // from here on it counts as a connection
                return self.serve_ds(stream, head, Some(peer), 0).await;
            }
        }
        if path != self.config.path {
            let _ = stream
                .write_all(handshake::plain_response(404, "Not found").as_bytes())
                .await;
            return;
        }
        drop(handshake); // from here on it counts as a connection
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
            self.refuse_over_max_conn(&mut stream, true).await;
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

impl<C: Controller> Inner<C> {
    /// 503 for a socket over ANYCABLE_MAX_CONN: an upgrade (`head_sent`), or one that
    /// has not sent its request yet.
    /// The body of an HTTP transport's POST (none for another method), at most `max`
    /// bytes; `None` when it could not be read (the client was told, by `refuse`, when
    /// it sent a bad one).
    async fn read_post_body(
        &self,
        stream: &mut TcpStream,
        head: &RequestHead,
        rest: Vec<u8>,
        max: usize,
        refuse: impl Fn(&RequestHead, bool, u16) -> String,
    ) -> Option<Vec<u8>> {
        if head.method != "POST" {
            return Some(Vec::new());
        }
        let read = endpoints::read_body(stream, head, rest, max);
        match timeout(self.config.handshake_timeout, read).await {
            Ok(Ok(body)) => Some(body),
            Ok(Err(status)) => {
                let allowed = crate::http::origin::request_allowed(head, &self.config.origins);
                let _ = stream
                    .write_all(refuse(head, allowed, status).as_bytes())
                    .await;
                linger_close(stream).await;
                None
            }
            Err(_) => None,
        }
    }

    /// Whether an HTTP transport may open a session now: not while shutting down (the
    /// client gets `shutting_down`), nor over ANYCABLE_MAX_CONN (503). Else the Rack
    /// env of a refused hand-over is released.
    pub(super) async fn room_for_session(
        &self,
        stream: &mut TcpStream,
        shutting_down: &str,
        env_token: u64,
    ) -> bool {
        if self.shutting_down.load(Ordering::Acquire) {
            let _ = stream.write_all(shutting_down.as_bytes()).await;
        } else if self.config.max_conn > 0
            && self.pending_callbacks.load(Ordering::Acquire) >= self.config.max_conn
        {
            self.refuse_over_max_conn(stream, true).await;
        } else {
            return true;
        }
        self.abandon_env(env_token);
        false
    }

    /// A long-polling request that names its session (not one that opens a session).
    fn is_poll_of_a_session(&self, head: &RequestHead) -> bool {
        let at_path = self
            .config
            .poll
            .as_ref()
            .is_some_and(|p| p.path == head.path());
        at_path && crate::http::poll::poll_id(head).is_some()
    }

    /// A hand-over that will not reach the app's `connect`: its Rack env released.
    pub(super) fn abandon_env(&self, env_token: u64) {
        if env_token != 0 {
            self.controller.handoff_abandoned(env_token);
        }
    }

    pub(super) async fn refuse_over_max_conn(&self, stream: &mut TcpStream, head_sent: bool) {
        COUNTERS.refused_conn.inc();
        let open = self.pending_callbacks.load(Ordering::Acquire);
        let max = self.config.max_conn;
        crate::logging::once_a_second(&REFUSED_CONN_LOG, |unlogged| {
            if head_sent {
                log::warn!(
                    "refused a WebSocket connection: {open} are open, ANYCABLE_MAX_CONN is {max} \
                     ({unlogged} more refused since the last line)"
                )
            } else {
                log::warn!(
                    "refused a connection before its request: {open} are open and {} sending \
                     theirs, ANYCABLE_MAX_CONN is {max} ({unlogged} more refused since the last line)",
                    self.handshakes.load(Ordering::Acquire)
                )
            }
        });
        let _ = stream
            .write_all(handshake::plain_response(503, "Too many connections").as_bytes())
            .await;
    }
}

/// One socket of the own port still sending its request head, counted in
/// `Inner::handshakes` until it drops.
struct Handshake<'a> {
    count: &'a AtomicUsize,
    /// Let in past ANYCABLE_MAX_CONN, on the room of a long-polling session.
    slack: bool,
}

impl<'a> Handshake<'a> {
    /// `None` when ANYCABLE_MAX_CONN is reached by open connections and heads in flight.
    /// A long-polling session is one connection that comes back with a request at a
    /// time: each has room for one head more, so that its polls get in at the limit
    /// (a head that opens a session is refused after it is read).
    fn enter<C>(inner: &'a Inner<C>) -> Option<Self> {
        let count = &inner.handshakes;
        let before = count.fetch_add(1, Ordering::AcqRel);
        let open = inner.pending_callbacks.load(Ordering::Acquire);
        let max = inner.config.max_conn;
        let slack = max > 0 && before + open >= max;
        if slack && before + open >= max + inner.polls.lock().len() {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Handshake { count, slack })
    }
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<C: Controller> EndpointHandle for Inner<C> {
    fn unhealthy(&self) -> Option<String> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Some("Shutting down".into());
        }
        self.link_trouble()
    }

    fn broadcast_key(&self) -> Option<&str> {
        self.config.broadcast_key.as_deref()
    }

    fn take_broadcast(&self, payload: String) -> Result<usize, BroadcastError> {
        match self.link.get() {
            Some(link) => {
                let n = self.check_broadcast(&payload)?;
                link.pubsub.publish(broadcast::digest_excludes(payload));
                Ok(n)
            }
            None => self.apply_broadcast(&payload),
        }
    }
}

/// Logs (throttled) an HTTP transport's request refused for its Origin: `what` it was.
pub(super) fn origin_refused(what: &str, head: &RequestHead, peer: Option<SocketAddr>) {
    crate::logging::refused(format_args!(
        "refused {what} from {}: origin not allowed ({})",
        peer.map(|p| p.to_string()).unwrap_or_default(),
        head.header("origin").unwrap_or("none, from another site")
    ));
}

/// Ends a connection whose request body was not read (refused): the writing side
/// first, then what the client still sends is read away for a moment, so that the
/// close does not reset the connection before the client has read the answer.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = timeout(Duration::from_secs(1), async {
        let mut left = 256 * 1024;
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    })
    .await;
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
