//! One client connection's task, from the upgraded socket to the disconnect callback:
//! opened (`lifecycle.rs`), welcomed, then a loop that reads frames (handled in
//! `commands.rs`) and writes what the session's outbox holds, until either side closes.
//!
//! Backpressure: while a command runs, the loop reads no frame (one command per
//! connection at a time); the session's byte-capped outbox turns a reader that falls
//! behind into `too_slow`.
//!
//! Not here: accepting and upgrading sockets (`accept.rs`), the wire format
//! ([`crate::protocol`]), who gets which broadcast ([`crate::hub`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::commands::Run;
use super::lifecycle::{OpenAs, Opened};
use super::wire::Wire;
use super::Inner;
use crate::config::ServerConfig;
use crate::controller::{ConnectRequest, Controller};
use crate::http::RequestHead;
use crate::logging::BadInputLog;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::session::{Closing, DisconnectReason, Outbound, Outbox, Session, SessionRef};

type Ws = WebSocketStream<TcpStream>;

/// How long frames queued while a command runs may wait for its end before they are
/// written anyway (a slow action's transmits and broadcasts go out meanwhile).
const WRITE_DEFER: Duration = Duration::from_millis(2);

/// Frames written in one go before flushing.
const WRITE_BATCH: usize = 64;

/// A command in flight: the app's, or the server's own that waits (a replay).
pub(super) type CommandFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// How long a restored subscription's broadcasts wait for the client's `history`
/// command (sent right after the welcome) before they go out without it.
const RESTORED_HISTORY_WAIT: Duration = Duration::from_secs(3);

/// Holds one count of the server's connections whose callbacks have not all run; the
/// count drops when this does, whichever way the task ends.
pub(super) struct Pending<'a, C>(&'a Inner<C>);

impl<'a, C> Pending<'a, C> {
    pub(super) fn new(inner: &'a Inner<C>) -> Self {
        inner.pending_callbacks.fetch_add(1, Ordering::AcqRel);
        Pending(inner)
    }
}

impl<C> Drop for Pending<'_, C> {
    fn drop(&mut self) {
        if self.0.pending_callbacks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.callbacks_done.notify_waiters();
        }
    }
}

/// What the socket loop waits for besides frames, each off when `None`.
struct Deadlines {
    /// `ANYCABLE_PONG_TIMEOUT` (extended protocol only): the client must send
    /// something (a pong, any frame) within a ping interval plus the timeout.
    pong_window: Option<Duration>,
    pong: Option<Instant>,
    /// `ANYCABLE_MAX_CONN_AGE`: told `server_restart` once, then served until it goes.
    expires: Option<Instant>,
    /// While a command runs, what it transmits waits for its end until then: one wake
    /// of this task and one write per command, not a wake for the transmit and another
    /// for the reply a few microseconds later.
    defer_writes: Option<Instant>,
    /// Restored subscriptions wait for the client's `history` this long while no
    /// command runs (frames are not read meanwhile).
    unclaimed: Option<Instant>,
}

impl Deadlines {
    fn new(config: &ServerConfig, id: u64, extended: bool, restored: bool) -> Self {
        let now = Instant::now();
        let max_age = config.max_conn_age;
        let pong_window = (extended && !config.pong_timeout.is_zero())
            .then(|| config.ping_interval + config.pong_timeout);
        Deadlines {
            pong_window,
            pong: pong_window.map(|w| now + w),
            expires: (!max_age.is_zero()).then(|| now + max_age + jitter(max_age / 10, id)),
            defer_writes: None,
            unclaimed: restored.then(|| now + RESTORED_HISTORY_WAIT),
        }
    }

    /// A frame came: the pong window starts again.
    fn frame_read(&mut self) {
        if let (Some(window), Some(_)) = (self.pong_window, self.pong) {
            self.pong = Some(Instant::now() + window);
        }
    }

    /// The command in flight ended. Frames were not read meanwhile: the client gets
    /// whole windows again.
    fn command_done(&mut self) {
        self.defer_writes = None;
        if self.unclaimed.is_some() {
            self.unclaimed = Some(Instant::now() + RESTORED_HISTORY_WAIT);
        }
        self.frame_read();
    }
}

/// How a WebSocket of either protocol is identified.
fn open_as(extended: bool) -> OpenAs {
    if extended {
        OpenAs::Extended
    } else {
        OpenAs::Plain
    }
}

/// A deadline to sleep until (a disabled one is guarded off in `select!`).
fn at(deadline: Option<Instant>) -> Instant {
    deadline.unwrap_or_else(Instant::now)
}

/// What a frame from the client leads to.
enum Next<'a> {
    Read,
    Run(Run<'a>),
    End,
}

impl<C: Controller> Inner<C> {
    /// One connection, from the upgraded socket to the disconnect callback.
    pub(super) async fn run_session(
        self: Arc<Self>,
        mut ws: Ws,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
        extended: bool,
    ) {
        let pending = Pending::new(&self);
        let (mut opened, mut rx) = match self.open(head, peer, env_token, open_as(extended)).await {
            Ok(opened) => opened,
            Err(refusal) => {
                send_close(&mut ws, &Closing::Told(refusal)).await;
                return;
            }
        };
        let welcome = std::mem::take(&mut opened.welcome);
        if ws.send(Message::Text(welcome.into())).await.is_err() {
            drop(ws);
            self.finish(&mut opened).await;
            return;
        }
        let session = opened.session.clone();
        self.sessions.write().insert(session.id, session.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        let mut rebuild: Option<CommandFuture<'_>> = None;
        if opened.owes_disconnect {
            // A restored session the app had objects for gets them back now, not at the
            // first command (a client that only listens sends none): its channels'
            // timers run, and remote disconnects reach it. Its `history` replays
            // meanwhile; commands for the app wait for it.
            if let Some(connect) = opened.lazy.take() {
                let connected = self.connect_lazily(session.clone(), connect);
                rebuild = Some(Box::pin(async move {
                    connected.await;
                }));
            }
        }
        let mut bad_input = BadInputLog::default();
        let inflight = self
            .serve(&mut ws, &mut rx, &mut opened, rebuild, &mut bad_input)
            .await;
        bad_input.finish(session.log_id());
        // The socket goes first; the app's disconnect callback runs only after the
        // command in flight is done, so two Ruby threads never work on one connection.
        drop(ws);
        drop(rx);
        if let Some(command) = inflight {
            command.await;
        }
        self.finish(&mut opened).await;
        drop(pending);
    }

    /// The socket loop: frames in, the outbox out, the deadlines. Returns what still
    /// runs when the connection ended (the command in flight, a rebuild).
    pub(super) async fn serve<'a, W: Wire>(
        &'a self,
        ws: &mut W,
        rx: &mut Outbox,
        opened: &mut Opened,
        mut rebuild: Option<CommandFuture<'a>>,
        bad_input: &mut BadInputLog,
    ) -> Option<CommandFuture<'a>> {
        let mut inflight: Option<CommandFuture<'a>> = None;
        let session = opened.session.clone();
        let mut due = Deadlines::new(&self.config, session.id, opened.extended, opened.restored);
        loop {
            let busy = inflight.is_some();
            tokio::select! {
                _ = sleep_until(at(due.pong)), if due.pong.is_some() && inflight.is_none() => {
                    due.pong = None;
                    log::debug!("session {}: no frame within {:?}; no_pong", session.log_id(), due.pong_window.unwrap_or_default());
                    session.close(DisconnectReason::NO_PONG);
                }
                _ = sleep_until(at(due.expires)), if due.expires.is_some() => {
                    due.expires = None;
                    COUNTERS.expired_conn.inc();
                    session.close(DisconnectReason::SERVER_RESTART);
                }
                _ = sleep_until(at(due.defer_writes)), if due.defer_writes.is_some() => {
                    due.defer_writes = None;
                }
                _ = sleep_until(at(due.unclaimed)), if due.unclaimed.is_some() && inflight.is_none() => {
                    due.unclaimed = None;
                    session.release_unclaimed();
                }
                out = rx.recv(), if due.defer_writes.is_none() => {
                    let Some(out) = out else { break };
                    if !self.write(ws, &session, rx, out).await {
                        break;
                    }
                }
                _ = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    due.command_done();
                }
                _ = async { rebuild.as_mut().expect("guarded").await }, if rebuild.is_some() => {
                    rebuild = None;
                }
                // Nothing is read while a command runs (a session's commands run in
                // order); the wire may still have its own work.
                read = async { if busy { ws.idle().await; None } else { Some(ws.next().await) } } => {
                    let Some(msg) = read else { continue };
                    if matches!(msg, Some(Ok(_))) {
                        due.frame_read();
                    }
                    match self.on_frame(ws, &session, msg, bad_input, &mut opened.lazy).await {
                        Next::Read => {}
                        Next::Run(run) => {
                            inflight = Some(match (run, rebuild.take()) {
                                (Run::App(command), Some(first)) => Box::pin(async move {
                                    first.await;
                                    command.await;
                                }),
                                (Run::App(command) | Run::Server(command), other) => {
                                    rebuild = other;
                                    command
                                }
                            });
                            due.defer_writes = Some(Instant::now() + WRITE_DEFER);
                        }
                        Next::End => break,
                    }
                }
            }
        }
        match (inflight, rebuild) {
            (Some(command), Some(first)) => Some(Box::pin(async move {
                first.await;
                command.await;
            })),
            (command, first) => command.or(first),
        }
    }

    /// What one read from the socket leads to.
    async fn on_frame<'a, W: Wire>(
        &'a self,
        ws: &mut W,
        session: &SessionRef,
        msg: Option<Result<Message, WsError>>,
        bad_input: &mut BadInputLog,
        lazy: &mut Option<ConnectRequest>,
    ) -> Next<'a> {
        match msg {
            Some(Ok(Message::Text(text))) => {
                match self.handle_text(session, text.as_str(), bad_input, lazy) {
                    Some(run) => Next::Run(run),
                    None => Next::Read,
                }
            }
            Some(Ok(Message::Binary(data))) => {
                COUNTERS.data_rcvd.inc_by(data.len() as u64);
                COUNTERS.failed_client_msg.inc();
                bad_input.warn(
                    session.log_id(),
                    format_args!("binary frame ignored (the protocol is JSON text)"),
                );
                Next::Read
            }
            Some(Ok(Message::Close(_))) | None => Next::End,
            Some(Ok(_)) => Next::Read,
            Some(Err(e)) => {
                ws.fail(session, e).await;
                Next::End
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes.
    /// Returns false when the connection is done.
    pub(super) async fn write<W: Wire>(
        &self,
        ws: &mut W,
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
                        ws.feed(frame).await?;
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
                session.too_slow(format_args!(
                    "write took over {:?}",
                    self.config.write_timeout
                ));
                return false;
            }
        }
        session.written(bytes);
        COUNTERS.data_sent.inc_by(bytes as u64);
        if let Some(closing) = close {
            ws.close(&closing).await;
            return false;
        }
        true
    }
}

/// A read error ends the connection; a protocol violation is answered with the close
/// code RFC 6455 names for it (1002, 1007 for invalid UTF-8, 1009 for a frame too big).
pub(super) async fn fail(ws: &mut Ws, session: &Session, error: WsError) {
    let (code, reason) = match &error {
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
        _ => {
            log::debug!("session {}: read error: {error}", session.log_id());
            return;
        }
    };
    log::info!(
        "session {}: {error}; closing with {}",
        session.log_id(),
        u16::from(code)
    );
    let _ = timeout(
        Duration::from_secs(1),
        ws.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))),
    )
    .await;
}

/// `{"type":"disconnect",…}` (when there is a reason) then a close frame; best
/// effort, bounded in time.
pub(super) async fn send_close(ws: &mut Ws, closing: &Closing) {
    let _ = timeout(Duration::from_secs(1), async {
        let frame = match closing {
            Closing::Told(reason) => {
                SinkExt::feed(
                    ws,
                    Message::Text(protocol::disconnect(&reason.reason, reason.reconnect).into()),
                )
                .await?;
                CloseFrame {
                    code: CloseCode::from(reason.close_code()),
                    reason: reason.reason.to_string().into(),
                }
            }
            Closing::Quiet => CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            },
            Closing::Restorable => CloseFrame {
                code: CloseCode::Away,
                reason: DisconnectReason::SERVER_RESTART.reason.to_string().into(),
            },
        };
        ws.send(Message::Close(Some(frame))).await
    })
    .await;
}

/// A duration in `0..=max`, different per connection.
fn jitter(max: Duration, id: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
    max.mul_f64(fraction)
}
