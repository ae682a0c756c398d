//! Long-polling sessions (`ANYCABLE_POLL`, AnyCable Pro's `/lp`): a session that
//! lives across requests. Its task runs the session loop (`connection.rs`) over a
//! [`Poll`] wire: the commands of each request are its frames in; what the session
//! sends is gathered and answers the request held open. Sessions are found by the id
//! the first response named (128 random bits: whoever holds it is the client), in
//! this process only: a poll that reaches another process (another machine, another
//! Puma worker) is told `session_expired` and the client opens another session —
//! long-polling clients need sticky sessions, as with AnyCable Pro.
//!
//! Every response is written by a task of its own, so the session loop never waits
//! for a client's socket (and the wire's `next` stays cancel-safe).
//!
//! Not here: the request's parsing and responses ([`crate::http::poll`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::connection::Pending;
use super::lifecycle::OpenAs;
use super::wire::Wire;
use super::Inner;
use crate::controller::Controller;
use crate::http::origin::{cors_headers, request_allowed};
use crate::http::poll::{self, PollConfig, SESSION_EXPIRED};
use crate::http::RequestHead;
use crate::logging::BadInputLog;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::session::{Closing, DisconnectReason, Session, SessionRef};

/// One request of a session: its commands, and the socket its answer goes to.
pub(super) struct PollRequest {
    commands: Vec<String>,
    stream: TcpStream,
    /// The CORS headers its answer carries.
    cors: String,
}

/// The requests of the sessions of this process, by id.
pub(super) type PollSessions =
    parking_lot::Mutex<std::collections::HashMap<String, mpsc::Sender<PollRequest>>>;

impl<C: Controller> Inner<C> {
    /// A long-polling request whose head and body were read: on the own port, or
    /// handed over by Rack hijack (`env_token`: its Rack env, for the app's `connect`).
    pub(super) async fn serve_poll(
        self: Arc<Self>,
        mut stream: TcpStream,
        head: RequestHead,
        body: Vec<u8>,
        peer: Option<SocketAddr>,
        env_token: u64,
    ) {
        let Some(config) = self.config.poll.clone() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let allowed = request_allowed(&head, &self.config.origins);
        let cors = cors_headers(&head, allowed);
        let refused = if head.method == "OPTIONS" {
            Some(poll::preflight(&cors))
        } else if head.method != "POST" {
            Some(poll::response(405, None, &cors, "POST only"))
        } else if !allowed {
            super::accept::origin_refused("poll", &head, peer);
            Some(poll::response(403, None, "", "origin not allowed"))
        } else {
            None
        };
        let commands = match refused {
            Some(response) => Err(response),
            None => poll::read_commands(&body, config.max_request_size)
                .map_err(|r| poll::response(r.status, None, &cors, &r.reason)),
        };
        drop(body);
        let commands = match commands {
            Ok(commands) => commands,
            Err(response) => {
                let _ = stream.write_all(response.as_bytes()).await;
                self.abandon_env(env_token);
                return;
            }
        };
        if let Some(id) = poll::poll_id(&head) {
            self.abandon_env(env_token);
            let sender = self.polls.lock().get(id).cloned();
            let request = PollRequest {
                commands,
                stream,
                cors,
            };
            let Some(sender) = sender else {
                return expired(request);
            };
            match sender.try_send(request) {
                Ok(()) => {}
                // Requests pile up faster than the session takes them (its queue of
                // commands is full while a command runs): a few wait; more are told
                // to come again (nothing to say yet) instead of holding sockets —
                // and one that carries commands is refused, never dropped quietly.
                Err(mpsc::error::TrySendError::Full(request)) if request.commands.is_empty() => {
                    let id = id.to_string();
                    respond(request, 204, Some(&id), String::new());
                }
                Err(mpsc::error::TrySendError::Full(request)) => {
                    let id = id.to_string();
                    let body =
                        "too many commands waiting for this session: send them again".to_string();
                    respond(request, 429, Some(&id), body);
                }
                Err(mpsc::error::TrySendError::Closed(request)) => expired(request),
            }
            return;
        }
        let shutting_down = poll::response(503, None, &cors, "Shutting down");
        if !self
            .room_for_session(&mut stream, &shutting_down, env_token)
            .await
        {
            return;
        }
        let pending = Pending::new(&self);
        let (mut opened, mut rx) = match self.open(head, peer, env_token, OpenAs::Plain).await {
            Ok(opened) => opened,
            Err(reason) => {
                let status = if reason.reason == DisconnectReason::SERVER_ERROR.reason {
                    422
                } else {
                    401
                };
                let body = format!(
                    "{}\n",
                    protocol::disconnect(&reason.reason, reason.reconnect)
                );
                let _ = stream
                    .write_all(poll::response(status, None, &cors, &body).as_bytes())
                    .await;
                return;
            }
        };
        let session = opened.session.clone();
        // Not the sid: clients show that to the app (X-Socket-ID); this one is a
        // credential of its own.
        let id = super::lifecycle::generate_sid(session.id);
        let (sender, requests) = mpsc::channel(MAX_QUEUED_REQUESTS);
        self.polls.lock().insert(id.clone(), sender);
        self.sessions.write().insert(session.id, session.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        COUNTERS.poll_clients.inc();
        let mut wire = Poll::new(
            id.clone(),
            session.clone(),
            requests,
            config,
            self.config.max_pending_bytes,
        );
        let _ = wire.feed(std::mem::take(&mut opened.welcome).into()).await;
        wire.attach(PollRequest {
            commands,
            stream,
            cors,
        });
        let mut bad_input = BadInputLog::default();
        let inflight = self
            .serve(&mut wire, &mut rx, &mut opened, None, &mut bad_input)
            .await;
        bad_input.finish(session.log_id());
        self.polls.lock().remove(&id);
        wire.answer();
        wire.expire_rest();
        drop(wire);
        drop(rx);
        COUNTERS.poll_clients.dec();
        if let Some(command) = inflight {
            command.await;
        }
        self.finish(&mut opened).await;
        drop(pending);
    }
}

/// Whether the client has closed its side of a held request: its socket reads as
/// ended. (A request's body was read whole; a client sends nothing more on it.)
fn gave_up(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Ok(0))
}

/// 401 `session_expired` for a poll whose session is gone.
fn expired(request: PollRequest) {
    COUNTERS.poll_stale_requests.inc();
    respond(request, 401, None, format!("{SESSION_EXPIRED}\n"));
}

/// Answers a request, in a task of its own (bounded in time).
fn respond(request: PollRequest, status: u16, id: Option<&str>, body: String) {
    let response = poll::response(status, id, &request.cors, &body);
    let mut stream = request.stream;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// Requests that wait for a session (in its queue), and bodies' worth of commands it
/// takes while a command runs.
const MAX_QUEUED_REQUESTS: usize = 4;

/// A session's requests as the session loop's wire.
pub(super) struct Poll {
    id: String,
    session: SessionRef,
    requests: mpsc::Receiver<PollRequest>,
    /// The request held open for what is to be sent, and until when.
    held: Option<(PollRequest, Instant)>,
    /// What is to be sent: JSON lines.
    backlog: String,
    /// When the backlog answers the held request.
    flush_at: Option<Instant>,
    /// Commands not yet handed to the session loop.
    commands: VecDeque<String>,
    /// Their bytes: requests are taken while a command runs only below
    /// [`MAX_QUEUED_REQUESTS`] bodies' worth.
    queued: usize,
    /// Commands were handed out since the last look: their replies are gathered for
    /// a flush interval from when they are done.
    handed_out: bool,
    /// When the session ends if no request comes.
    expires_at: Instant,
    config: PollConfig,
    max_backlog: usize,
}

impl Poll {
    fn new(
        id: String,
        session: SessionRef,
        requests: mpsc::Receiver<PollRequest>,
        config: PollConfig,
        max_backlog: usize,
    ) -> Self {
        Poll {
            id,
            session,
            handed_out: false,
            requests,
            held: None,
            backlog: String::new(),
            flush_at: None,
            commands: VecDeque::new(),
            queued: 0,
            expires_at: Instant::now() + config.keepalive_timeout,
            config,
            max_backlog,
        }
    }

    /// A request came: the one held before is answered empty (its client has moved
    /// on to this one: the JS transport aborts a held poll to send commands), this
    /// one is held. What is to be sent answers it a flush interval after the first
    /// of it is there (the backlog, or its commands' replies).
    fn attach(&mut self, request: PollRequest) {
        if let Some((old, _)) = self.held.take() {
            respond(old, 204, Some(&self.id), String::new());
        }
        let PollRequest {
            commands,
            stream,
            cors,
        } = request;
        self.queued += commands.iter().map(String::len).sum::<usize>();
        self.commands.extend(commands);
        let now = Instant::now();
        let held = PollRequest {
            commands: Vec::new(),
            stream,
            cors,
        };
        self.held = Some((held, now + self.config.interval));
        if !self.backlog.is_empty() {
            self.flush_at = Some(now + self.config.flush_interval);
        }
    }

    /// The held request answered with the backlog (204 when there is none); the
    /// session lives for the keepalive timeout from now.
    fn answer(&mut self) {
        self.flush_at = None;
        self.expires_at = Instant::now() + self.config.keepalive_timeout;
        if let Some((request, _)) = self.held.take() {
            if gave_up(&request.stream) {
                // Its client aborted it (the JS transport does, to send commands):
                // what is due waits for the request that comes next.
                return;
            }
            let body = std::mem::take(&mut self.backlog);
            let status = if body.is_empty() { 204 } else { 200 };
            respond(request, status, Some(&self.id), body);
        }
    }

    /// Requests still queued when the session ended: told it is gone.
    fn expire_rest(&mut self) {
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            expired(request);
        }
    }
}

impl Wire for Poll {
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        loop {
            if let Some(command) = self.commands.pop_front() {
                self.queued -= command.len();
                self.handed_out = true;
                return Some(Ok(Message::Text(command.into())));
            }
            if std::mem::take(&mut self.handed_out)
                && self.held.is_some()
                && !self.backlog.is_empty()
            {
                self.flush_at = Some(Instant::now() + self.config.flush_interval);
            }
            let held_until = self.held.as_ref().map(|(_, until)| *until);
            let flush_at = self.flush_at;
            let expires_at = self.held.is_none().then_some(self.expires_at);
            tokio::select! {
                // A newer request first: what is due goes to it, not to the one its
                // client gave up on.
                biased;
                request = self.requests.recv() => match request {
                    Some(request) => self.attach(request),
                    None => return None,
                },
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => self.answer(),
                _ = sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() && flush_at.is_none() => self.answer(),
                _ = sleep_until(expires_at.unwrap_or_else(Instant::now)), if expires_at.is_some() => return None,
            }
        }
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), WsError> {
        // No pings: the JS transport makes its own (AnyCable's sessions send none).
        if frame.as_str().starts_with(r#"{"type":"ping""#) {
            return Ok(());
        }
        if self.backlog.len() + frame.len() > self.max_backlog {
            // Cut as a socket that cannot keep up is; its next poll learns the
            // session is gone (`session_expired`), and the client opens another.
            self.session.too_slow(format_args!(
                "{} bytes waiting for its next poll",
                self.backlog.len() + frame.len()
            ));
            return Ok(());
        }
        self.backlog.push_str(frame.as_str());
        self.backlog.push('\n');
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        if self.held.is_some() && self.flush_at.is_none() && !self.backlog.is_empty() {
            self.flush_at = Some(Instant::now() + self.config.flush_interval);
        }
        Ok(())
    }

    async fn close(&mut self, closing: &Closing) {
        if let Closing::Told(reason) = closing {
            self.backlog
                .push_str(&protocol::disconnect(&reason.reason, reason.reconnect));
            self.backlog.push('\n');
        }
        // A newer request that came meanwhile takes the last words.
        while let Ok(request) = self.requests.try_recv() {
            self.attach(request);
        }
        let told_to_stay_away = matches!(closing, Closing::Told(r) if !r.reconnect);
        if self.held.is_none() && told_to_stay_away {
            // Only then do its last words wait for its next poll (within the keepalive
            // timeout): a client that is to come back learns the same from
            // `session_expired`, and a shutdown does not wait for it.
            if let Ok(Some(request)) =
                tokio::time::timeout(self.config.keepalive_timeout, self.requests.recv()).await
            {
                self.attach(request);
            }
        }
        self.answer();
    }

    async fn fail(&mut self, _session: &Session, _error: WsError) {}

    /// While a command runs: requests are taken (their commands wait for it) and the
    /// held one is answered on time, so that what the command broadcasts meanwhile
    /// (an LLM's tokens, say) reaches the client as it comes.
    ///
    /// What waits is bounded: past [`MAX_QUEUED_REQUESTS`] bodies' worth of commands,
    /// requests are left in the session's queue (then refused when it is full), as
    /// a socket's frames are left unread.
    async fn idle(&mut self) {
        let held_until = self.held.as_ref().map(|(_, until)| *until);
        let flush_at = self.flush_at;
        let room = self.queued < MAX_QUEUED_REQUESTS * self.config.max_request_size;
        tokio::select! {
            biased;
            // (Closed: the session is ending, which the loop learns elsewhere.)
            Some(request) = self.requests.recv(), if room => self.attach(request),
            _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => self.answer(),
            _ = sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() && flush_at.is_none() => self.answer(),
            else => std::future::pending().await,
        }
    }
}
