//! One client connection's task, from the upgraded socket to the disconnect callback:
//! connect through the [`Controller`], welcome, then read commands and write queued
//! frames until either side closes.
//!
//! Not here: accepting and upgrading sockets ([`crate::server`]), the wire format
//! ([`crate::protocol`]), who gets which broadcast ([`crate::hub`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::auth::jwt::JwtError;
use crate::auth::streams::Resolution;
use crate::broker::history::{Entry, History, HistoryError};
use crate::broker::jetstream::StoredHistory;
use crate::broker::sessions::CachedSession;
use crate::config::BrokerKind;
use crate::controller::{CommandRequest, ConnectReply, ConnectRequest, Controller};
use crate::http::RequestHead;
use crate::logging::BadInputLog;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::protocol::{
    ClientCommand, ClientFrame, Command, HistoryRequest, Position, PresenceJoin,
};
use crate::server::Inner;
use crate::session::{DisconnectReason, Outbound, Outbox, Session, SessionRef};

/// How long frames queued while a command runs may wait for its end before they are
/// written anyway (a slow action's transmits and broadcasts go out meanwhile).
const WRITE_DEFER: Duration = Duration::from_millis(2);

/// Frames written in one go before flushing.
const WRITE_BATCH: usize = 64;

type CommandFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// How long a history request waits for the NATS broker's JetStream after boot.
const STORED_HISTORY_WAIT: Duration = Duration::from_secs(5);

/// How long a restored subscription's broadcasts wait for the client's `history`
/// command (sent right after the welcome) before they go out without it.
const RESTORED_HISTORY_WAIT: Duration = Duration::from_secs(3);

/// What [`Inner::serve_here`] did with a command.
enum Served<'a> {
    /// Not a command the server answers: the app's.
    No,
    Done,
    /// Answered; what is left runs as the command in flight.
    Then(CommandFuture<'a>),
}

/// Where a history request is served from.
enum Store<'a> {
    Memory(&'a History),
    Stored(&'a StoredHistory),
}

impl Store<'_> {
    fn epoch(&self) -> String {
        match self {
            Store::Memory(h) => h.epoch().to_owned(),
            Store::Stored(h) => h.epoch(),
        }
    }

    async fn from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Vec<Entry>, HistoryError> {
        match self {
            Store::Memory(h) => h.from(stream, epoch, offset),
            Store::Stored(h) => h.from(stream, epoch, offset).await,
        }
    }

    async fn since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        match self {
            Store::Memory(h) => Ok(h.since(stream, since)),
            Store::Stored(h) => h.since(stream, since).await,
        }
    }
}

/// Holds one count of the server's connections whose callbacks have not all run; the
/// count drops when this does, whichever way the task ends.
pub(crate) struct Pending<'a, C>(&'a Inner<C>);

impl<'a, C> Pending<'a, C> {
    pub(crate) fn new(inner: &'a Inner<C>) -> Self {
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

impl<C: Controller> Inner<C> {
    pub(crate) async fn run_session(
        self: Arc<Self>,
        mut ws: WebSocketStream<TcpStream>,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
        extended: bool,
    ) {
        let pending = Pending::new(&self);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Always ours: a client-chosen id (X-Request-ID) could collide with another
        // client's, and `exclude_socket` would then skip both.
        let sid = generate_sid(id);
        let (session, mut rx) = Session::new(id, sid, self.config.max_pending_bytes);

        // A JWT identifies the connection here, without the app's `connect`; the app
        // builds its connection object only when a command needs it (`lazy`).
        // While `lazy` holds the request, the app has no connection for this session
        // (and is owed no disconnect callbacks).
        let mut lazy: Option<ConnectRequest> = None;
        // A restored session (extended protocol, within ANYCABLE_SESSIONS_TTL) comes
        // back without the app's `connect`: its connection and channel objects are
        // rebuilt, without `subscribed`, when a command first needs them.
        let restored = if extended {
            session.set_resumable();
            self.restore(&head, &session).await
        } else {
            None
        };
        // Disconnect callbacks are owed for a restored session whose first one had an
        // app connection, even if no command rebuilt it here (AnyCable's Disconnect).
        let mut owes_disconnect = false;
        let identified = match &restored {
            Some(cached) => Some(Ok(cached.identifiers.clone())),
            None => self.identify_by_jwt(&head, &session).map(|r| r.map(Some)),
        };
        let reply = match identified {
            Some(Ok(identifiers)) => {
                if env_token != 0 {
                    self.controller.handoff_abandoned(env_token);
                }
                owes_disconnect = restored.as_ref().is_some_and(|c| c.app_connected);
                lazy = Some(ConnectRequest {
                    session: session.clone(),
                    head,
                    remote_addr: peer,
                    env_token: 0,
                    // A restored session without identifiers still skips `connect`.
                    identifiers: Some(identifiers.unwrap_or_else(|| "{}".into())),
                    restored: restored.as_ref().map(|c| CachedSession {
                        subscriptions: c
                            .subscriptions
                            .iter()
                            .filter(|s| !s.server_side)
                            .cloned()
                            .collect(),
                        ..c.clone()
                    }),
                });
                ConnectReply::Accepted
            }
            Some(Err(reason)) => {
                if env_token != 0 {
                    self.controller.handoff_abandoned(env_token);
                }
                ConnectReply::Rejected(reason)
            }
            None => {
                self.controller
                    .connect(ConnectRequest {
                        session: session.clone(),
                        head,
                        remote_addr: peer,
                        env_token,
                        identifiers: None,
                        restored: None,
                    })
                    .await
            }
        };
        match reply {
            ConnectReply::Accepted => {
                if lazy.is_none() || owes_disconnect {
                    session.app_connected.store(true, Ordering::Release);
                }
            }
            ConnectReply::Rejected(reason) => {
                if [
                    DisconnectReason::UNAUTHORIZED,
                    DisconnectReason::TOKEN_EXPIRED,
                ]
                .iter()
                .any(|r| r.reason == reason.reason)
                {
                    COUNTERS.failed_auths.inc();
                }
                session.mark_closing();
                self.hub.remove_session(&session);
                send_close(&mut ws, Some(&reason)).await;
                return;
            }
            ConnectReply::Failed(error) => {
                log::error!("session {}: connect failed: {error}", session.log_id());
                session.mark_closing();
                self.hub.remove_session(&session);
                send_close(&mut ws, Some(&DisconnectReason::SERVER_ERROR)).await;
                return;
            }
        }
        let welcome = match &restored {
            Some(cached) => protocol::welcome_restored(&session.sid, &cached.restored_ids()),
            None => protocol::welcome(&session.sid),
        };
        // Restored subscriptions wait for the client's `history` (sent right after the
        // welcome) this long while no command runs: frames are not read meanwhile.
        let mut unclaimed_deadline = restored
            .is_some()
            .then(|| tokio::time::Instant::now() + RESTORED_HISTORY_WAIT);
        drop(restored);
        if ws.send(Message::Text(welcome.into())).await.is_err() {
            drop(ws);
            self.finish(&session, &mut lazy, owes_disconnect, extended)
                .await;
            drop(pending);
            return;
        }
        self.sessions.write().insert(id, session.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            session.close(DisconnectReason::SERVER_RESTART);
        }

        let mut bad_input = BadInputLog::default();
        let mut inflight: Option<CommandFuture<'_>> = None;
        if owes_disconnect {
            // A restored session the app had objects for gets them back now, not at the
            // first command (a client that only listens sends none): its channels'
            // timers run, and remote disconnects reach it.
            if let Some(connect) = lazy.take() {
                let connected = self.connect_lazily(session.clone(), connect);
                inflight = Some(Box::pin(async move {
                    connected.await;
                }));
            }
        }
        // While a command runs, what it transmits waits for its end (up to
        // WRITE_DEFER): one wake of this task and one write per command, not a wake for
        // the transmit and another for the reply a few microseconds later.
        let mut defer_until: Option<tokio::time::Instant> = None;
        // ANYCABLE_MAX_CONN_AGE: told server_restart once, then served until it goes.
        let max_age = self.config.max_conn_age;
        let mut expires = (!max_age.is_zero())
            .then(|| tokio::time::Instant::now() + max_age + jitter(max_age / 10, id));
        // ANYCABLE_PONG_TIMEOUT (extended protocol only): the client must send something
        // (a pong, any frame) within a ping interval plus the timeout.
        let pong_window = (extended && !self.config.pong_timeout.is_zero())
            .then(|| self.config.ping_interval + self.config.pong_timeout);
        let mut pong_deadline = pong_window.map(|w| tokio::time::Instant::now() + w);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(pong_deadline.unwrap_or_else(tokio::time::Instant::now)), if pong_deadline.is_some() && inflight.is_none() => {
                    pong_deadline = None;
                    log::debug!("session {}: no frame within {:?}; no_pong", session.log_id(), pong_window.unwrap_or_default());
                    session.close(DisconnectReason::NO_PONG);
                }
                _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)), if expires.is_some() => {
                    expires = None;
                    COUNTERS.expired_conn.inc();
                    session.close(DisconnectReason::SERVER_RESTART);
                }
                _ = tokio::time::sleep_until(defer_until.unwrap_or_else(tokio::time::Instant::now)), if defer_until.is_some() => {
                    defer_until = None;
                }
                _ = tokio::time::sleep_until(unclaimed_deadline.unwrap_or_else(tokio::time::Instant::now)), if unclaimed_deadline.is_some() && inflight.is_none() => {
                    unclaimed_deadline = None;
                    session.release_unclaimed();
                }
                out = rx.recv(), if defer_until.is_none() => {
                    let Some(out) = out else { break };
                    if !self.write(&mut ws, &session, &mut rx, out).await {
                        break;
                    }
                }
                _ = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    defer_until = None;
                    if unclaimed_deadline.is_some() {
                        unclaimed_deadline = Some(tokio::time::Instant::now() + RESTORED_HISTORY_WAIT);
                    }
                    // Frames were not read meanwhile: the client gets a whole window.
                    if let (Some(window), Some(_)) = (pong_window, pong_deadline) {
                        pong_deadline = Some(tokio::time::Instant::now() + window);
                    }
                }
                msg = ws.next(), if inflight.is_none() => {
                    if let (Some(window), Some(_), Some(Ok(_))) = (pong_window, pong_deadline, &msg) {
                        pong_deadline = Some(tokio::time::Instant::now() + window);
                    }
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            inflight = self.handle_text(&session, text.as_str(), &mut bad_input, &mut lazy);
                            if inflight.is_some() {
                                defer_until = Some(tokio::time::Instant::now() + WRITE_DEFER);
                            }
                        }
                        Some(Ok(Message::Binary(data))) => {
                            COUNTERS.data_rcvd.inc_by(data.len() as u64);
                            COUNTERS.failed_client_msg.inc();
                            bad_input.warn(session.log_id(), format_args!("binary frame ignored (the protocol is JSON text)"));
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            fail(&mut ws, &session, e).await;
                            break;
                        }
                    }
                }
            }
        }
        bad_input.finish(session.log_id());
        // The socket goes first; the app's disconnect callback runs only after the
        // command in flight is done, so two Ruby threads never work on one connection.
        drop(ws);
        drop(rx);
        if let Some(command) = inflight {
            command.await;
        }
        self.finish(&session, &mut lazy, owes_disconnect, extended)
            .await;
        drop(pending);
    }

    /// Builds the app's connection (and a restored session's channel) objects that
    /// were left for later (JWT, restore): true when the app did. If it cannot (a
    /// record gone, an error), the client is told and the session is not kept for a
    /// restore.
    async fn connect_lazily(&self, session: SessionRef, connect: ConnectRequest) -> bool {
        match self.controller.connect(connect).await {
            ConnectReply::Accepted => {
                session.app_connected.store(true, Ordering::Release);
                true
            }
            ConnectReply::Rejected(reason) => {
                session.close(reason);
                false
            }
            ConnectReply::Failed(error) => {
                log::error!("session {}: connect failed: {error}", session.log_id());
                session.close(DisconnectReason::SERVER_ERROR);
                false
            }
        }
    }

    /// The cached session the client asks back (`X-AnyCable-Restore-SID`, else
    /// `?sid=`), joined to its streams again; `None` when there is none to restore.
    async fn restore(&self, head: &RequestHead, session: &SessionRef) -> Option<CachedSession> {
        let old = restore_sid(head)?;
        let cached = match &self.session_cache {
            Some(cache) => cache.take(old)?,
            None => {
                // The NATS broker's bucket; right after boot, once JetStream answered
                // (set with the history reader).
                self.stored_history().await?;
                self.stored_sessions.get()?.take(old).await?
            }
        };
        session.restore_from(&cached);
        // Until the client's `history` for each (`run_session` lets them go after
        // RESTORED_HISTORY_WAIT without one).
        session.hold_restored(cached.restored_ids());
        for sub in &cached.subscriptions {
            for stream in &sub.streams {
                self.hub.subscribe(session, stream, &sub.identifier);
            }
        }
        COUNTERS.restored_sessions.inc();
        log::debug!(
            "session {}: restored from an earlier session",
            session.log_id()
        );
        Some(cached)
    }

    /// `None` when JWT is off or not used here; else the token's identifiers, or the
    /// reason to refuse the connection.
    fn identify_by_jwt(
        &self,
        head: &RequestHead,
        session: &Session,
    ) -> Option<Result<String, DisconnectReason>> {
        let jwt = self.config.jwt.as_ref()?;
        let Some(token) = jwt.token(head) else {
            return jwt.enforce.then_some(Err(DisconnectReason::UNAUTHORIZED));
        };
        Some(match jwt.verify(token) {
            Ok(identifiers) => {
                if let Ok(json) = serde_json::from_str(&identifiers) {
                    session.set_identifiers(json);
                }
                Ok(identifiers)
            }
            Err(JwtError::Expired) => Err(DisconnectReason::TOKEN_EXPIRED),
            Err(JwtError::Invalid(why)) => {
                // Never the token itself: it is a credential.
                crate::logging::refused(format_args!(
                    "session {}: JWT refused ({why}); unauthorized",
                    session.log_id()
                ));
                Err(DisconnectReason::UNAUTHORIZED)
            }
        })
    }

    fn handle_text<'a>(
        &'a self,
        session: &SessionRef,
        text: &str,
        bad_input: &mut BadInputLog,
        lazy: &mut Option<ConnectRequest>,
    ) -> Option<CommandFuture<'a>> {
        COUNTERS.data_rcvd.inc_by(text.len() as u64);
        if text.len() > self.config.max_message_size {
            COUNTERS.failed_client_msg.inc();
            bad_input.warn(
                session.log_id(),
                format_args!(
                    "message of {} bytes is over the {}-byte limit; ignored",
                    text.len(),
                    self.config.max_message_size
                ),
            );
            return None;
        }
        let frame = protocol::parse_frame(text);
        if frame.is_ok() {
            COUNTERS.client_msg.inc();
        }
        let (command, mut history, mut presence) = match frame {
            Ok(ClientFrame::Command {
                command,
                history,
                presence,
            }) => (command, history, presence),
            Ok(ClientFrame::Join {
                identifier,
                presence,
            }) => {
                self.hub
                    .presence_join(session, &identifier, &presence.id, presence.info);
                return None;
            }
            Ok(ClientFrame::Leave { identifier }) => {
                self.hub.presence_leave(session, &identifier);
                return None;
            }
            Ok(ClientFrame::PresenceInfo {
                identifier,
                return_records,
            }) => {
                self.hub.presence_info(session, &identifier, return_records);
                return None;
            }
            Ok(ClientFrame::Ping) => {
                session.send_frame(protocol::pong());
                return None;
            }
            Ok(ClientFrame::Pong) => {
                return None;
            }
            Ok(ClientFrame::History {
                identifier,
                history,
            }) => {
                let session = session.clone();
                return Some(Box::pin(async move {
                    self.send_history(&session, &identifier, &history).await;
                }));
            }
            Err(e) => {
                COUNTERS.failed_client_msg.inc();
                bad_input.warn(session.log_id(), format_args!("{e}; ignored"));
                return None;
            }
        };
        match self.serve_here(session, &command, &mut history, &mut presence, bad_input) {
            Served::No => {}
            Served::Done => return None,
            Served::Then(next) => return Some(next),
        }
        if history.is_some() {
            // Before the app's subscribe joins the streams: see `send_history`.
            session.hold(&command.identifier);
        }
        // For what runs after the app's subscribe; most commands need no copy.
        let after_id =
            (history.is_some() || presence.is_some()).then(|| command.identifier.clone());
        let request = CommandRequest {
            session: session.clone(),
            command,
        };
        let run: CommandFuture<'a> = match lazy.take() {
            None => Box::pin(self.controller.command(request)),
            // The first command for the app's code: its connection object first.
            Some(connect) => {
                let connected = self.connect_lazily(session.clone(), connect);
                Box::pin(async move {
                    if connected.await {
                        self.controller.command(request).await;
                    }
                })
            }
        };
        let Some(id) = after_id else {
            return Some(run);
        };
        // `history` and `presence` on a subscribe run after the app's subscribe, when
        // it confirmed the subscription.
        let session = session.clone();
        Some(Box::pin(async move {
            run.await;
            if let Some(history) = history {
                self.send_history(&session, &id, &history).await;
            }
            if let Some(p) = presence {
                if session.has_subscription(&id) {
                    self.hub.presence_join(&session, &id, &p.id, p.info);
                }
            }
        }))
    }

    /// Replays what a client missed on subscription `identifier`'s streams, then
    /// `confirm_history`; or only `reject_history` when any stream's part cannot be
    /// served (AnyCable's `History`). A request for nothing, or for a subscription
    /// with no streams here, gets no reply.
    ///
    /// Which subscriptions have streams is what the session knows: server-side ones
    /// and the app's plain `stream_from`/`stream_for`. A rejected subscribe has none
    /// (Action Cable stops a rejected channel's streams), so `history` on a subscribe
    /// is answered only when it succeeded; a subscription that streams only through
    /// Ruby blocks (`stream_from` with a block or coder) has none either.
    async fn send_history(&self, session: &Session, identifier: &str, request: &HistoryRequest) {
        // Held from before the subscribe joined the streams, or from now for a bare
        // `history` command: live frames wait until the replay is queued.
        session.hold(identifier);
        let mut replayed: HashMap<Arc<str>, u64> = HashMap::new();
        let frames = self
            .history_frames(session, identifier, request, &mut replayed)
            .await;
        let lagging_live = self.history.is_none();
        session.release(identifier, frames, &replayed, lagging_live);
    }

    /// The NATS broker's history reader; right after boot (clients of a restarted
    /// node come straight back) it waits a little for JetStream.
    async fn stored_history(&self) -> Option<&StoredHistory> {
        if self.config.broker != BrokerKind::Nats {
            return None;
        }
        let deadline = tokio::time::Instant::now() + STORED_HISTORY_WAIT;
        loop {
            if let Some(h) = self.stored_history.get() {
                return Some(h);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The replay and its reply for [`Self::send_history`]; `replayed` gets, per
    /// stream, the offset the client has everything up to once the replay is in.
    async fn history_frames(
        &self,
        session: &Session,
        identifier: &str,
        request: &HistoryRequest,
        replayed: &mut HashMap<Arc<str>, u64>,
    ) -> Vec<Utf8Bytes> {
        if request.is_empty() || session.is_closing() {
            return Vec::new();
        }
        let broker_on = self.config.history.is_some();
        let streams = session.streams_of(identifier);
        if streams.is_empty() {
            // A subscription with no stream here has nothing to miss: confirmed, as
            // AnyCable does; an unknown one gets no reply.
            return if session.has_subscription(identifier) {
                vec![protocol::history_reply(identifier, broker_on).into()]
            } else {
                Vec::new()
            };
        }
        let store = match (&self.history, self.stored_history().await) {
            (Some(memory), _) => Store::Memory(memory),
            (None, Some(stored)) => Store::Stored(stored),
            // No broker: nothing is kept, as AnyCable's legacy broker. The NATS broker
            // with JetStream still away: the client refetches.
            (None, None) => return vec![protocol::history_reply(identifier, false).into()],
        };
        let epoch = store.epoch();
        let mut frames = Vec::new();
        for stream in &streams {
            let (result, from) = match request.position(stream) {
                Some(p) => (store.from(stream, &p.epoch, p.offset).await, p.offset),
                None if request.since > 0 => (store.since(stream, request.since).await, 0),
                None => continue,
            };
            let entries = match result {
                Ok(entries) => entries,
                Err(why) => {
                    log::debug!("session {}: history refused: {why}", session.log_id());
                    return vec![protocol::history_reply(identifier, false).into()];
                }
            };
            let last = entries.last().map_or(from, |e| e.offset.max(from));
            replayed.insert(stream.clone(), last);
            frames.extend(entries.iter().map(|e| {
                protocol::broadcast_frame_at(
                    identifier,
                    &e.data,
                    Some(Position {
                        stream,
                        epoch: &epoch,
                        offset: e.offset,
                    }),
                )
            }));
        }
        frames.push(protocol::history_reply(identifier, true).into());
        frames
    }

    /// Commands the server answers itself, without Ruby: subscribing to `$pubsub` and
    /// Turbo Streams (verified names), unsubscribing from those, and whispers. True
    /// when handled here.
    fn serve_here<'a>(
        &'a self,
        session: &SessionRef,
        command: &ClientCommand,
        history: &mut Option<HistoryRequest>,
        presence: &mut Option<PresenceJoin>,
        bad_input: &mut BadInputLog,
    ) -> Served<'a> {
        let id = &command.identifier;
        match command.command {
            Command::Subscribe => match self.config.streams.resolve(id) {
                Resolution::App => Served::No,
                Resolution::Stream {
                    stream,
                    whisper,
                    presence: presence_on,
                } => {
                    {
                        let mut subs = session.server_subscriptions.lock();
                        if subs.contains_key(id) {
                            drop(subs);
                            bad_input.warn(
                                session.log_id(),
                                format_args!("already subscribed; ignored"),
                            );
                            return Served::Done;
                        }
                        subs.insert(id.clone(), whisper.then(|| stream.clone()));
                    }
                    if history.is_some() {
                        session.hold(id);
                    }
                    if presence_on {
                        session.presence_to(id, &stream);
                    }
                    self.hub.subscribe(session, &stream, id);
                    session.transmit(protocol::subscription_reply(id, true));
                    let (history, presence) = (history.take(), presence.take());
                    if history.is_none() && presence.is_none() {
                        return Served::Done;
                    }
                    // The replay (a JetStream read with the NATS broker) first, then
                    // the presence join, as after an app's subscribe.
                    let (session, id) = (session.clone(), id.clone());
                    Served::Then(Box::pin(async move {
                        if let Some(history) = history {
                            self.send_history(&session, &id, &history).await;
                        }
                        if let Some(p) = presence {
                            self.hub.presence_join(&session, &id, &p.id, p.info);
                        }
                    }))
                }
                Resolution::Reject { why } => {
                    // The name itself is not logged: it may be a stream a user should
                    // not learn of from a shared log.
                    bad_input.warn(
                        session.log_id(),
                        format_args!("subscription rejected: {why}"),
                    );
                    session.transmit(protocol::subscription_reply(id, false));
                    Served::Done
                }
            },
            Command::Unsubscribe => {
                if session.server_subscriptions.lock().remove(id).is_none() {
                    return Served::No;
                }
                self.hub.presence_leave(session, id);
                session.presence_to(id, "");
                self.hub.unsubscribe_identifier(session, id);
                session.drop_held(id);
                Served::Done
            }
            Command::Message => {
                if !session.server_subscriptions.lock().contains_key(id) {
                    return Served::No;
                }
                bad_input.warn(
                    session.log_id(),
                    format_args!("a message to a server-side stream subscription has no action to run; ignored"),
                );
                Served::Done
            }
            Command::Whisper => {
                match (session.whisper_stream(id), command.data.as_deref()) {
                    (Some(stream), Some(data)) => self.whisper(session, &stream, data),
                    _ => log::debug!(
                        "session {}: whisper on a subscription without a whisper stream ignored",
                        session.log_id()
                    ),
                }
                Served::Done
            }
        }
    }

    /// To the stream's other subscribers, on every node (through the pub/sub when
    /// there is one), never back to the sender's session.
    fn whisper(&self, session: &Session, stream: &str, data: &str) {
        let relay = self.relay.read().clone();
        match relay {
            Some(relay) => relay(
                serde_json::json!({
                    "stream": stream,
                    "data": data,
                    "meta": {"exclude_socket": session.sid, "transient": true}
                })
                .to_string(),
            ),
            None => {
                COUNTERS.broadcast_msg.inc();
                self.hub.broadcast(stream, data, Some(&session.sid));
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
                session.too_slow(format_args!(
                    "write took over {:?}",
                    self.config.write_timeout
                ));
                return false;
            }
        }
        session.written(bytes);
        COUNTERS.data_sent.inc_by(bytes as u64);
        if let Some(reason) = close {
            send_close(ws, reason.as_ref()).await;
            return false;
        }
        true
    }

    /// Ends a session: caches it for a restore (extended protocol), leaves the hub,
    /// and runs the app's disconnect callbacks when they are owed: the app built a
    /// connection for it (`lazy` is taken), or it was restored from a session that had
    /// one — its objects are rebuilt first, as AnyCable's Disconnect call does. A JWT
    /// connection that never reached the app's code is owed none.
    async fn finish(
        &self,
        session: &SessionRef,
        lazy: &mut Option<ConnectRequest>,
        owes_disconnect: bool,
        resumable: bool,
    ) {
        session.mark_closing();
        self.sessions.write().remove(&session.id);
        let mut app_knows = lazy.is_none();
        if let (true, Some(cache)) = (resumable, &self.session_cache) {
            // Before the hub and the app's `unsubscribed` let go of its streams.
            if let Some(entry) = session.to_cache(app_knows || owes_disconnect) {
                cache.put(&session.sid, entry);
            }
        }
        if let (true, Some(stored)) = (resumable, self.stored_sessions.get()) {
            // The NATS broker has had it since the welcome: the last word now, or
            // gone if the server or the app closed it.
            match session.to_cache(app_knows || owes_disconnect) {
                Some(entry) => stored.put(&session.sid, &entry).await,
                None => stored.forget(&session.sid).await,
            }
        }
        self.hub.remove_session(session);
        if let Some(presence) = self.hub.presence() {
            // Kept for ANYCABLE_PRESENCE_TTL: a client back by then does not flicker.
            presence.disconnected(session.id);
        }
        if let (Some(connect), true) = (lazy.take(), owes_disconnect) {
            app_knows = matches!(
                self.controller.connect(connect).await,
                ConnectReply::Accepted
            );
        }
        if app_knows {
            self.controller.disconnect(session.clone()).await;
        }
    }
}

/// A read error ends the connection; a protocol violation is answered with the close
/// code RFC 6455 names for it (1002, 1007 for invalid UTF-8, 1009 for a frame too big).
async fn fail(ws: &mut WebSocketStream<TcpStream>, session: &Session, error: WsError) {
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

/// The sid a client asks to restore: the `X-AnyCable-Restore-SID` header wins over
/// the `sid` query parameter (as AnyCable reads them).
fn restore_sid(head: &RequestHead) -> Option<&str> {
    if let Some(sid) = head
        .header("x-anycable-restore-sid")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        return Some(sid);
    }
    head.target
        .split_once('?')?
        .1
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "sid")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A duration in `0..=max`, different per connection.
fn jitter(max: Duration, id: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
    max.mul_f64(fraction)
}

/// A session id no client can choose or guess (it restores a session, so it is a
/// credential): 128 bits from the system's CSPRNG, plus the process-unique number so
/// two ids of one process never collide.
fn generate_sid(id: u64) -> String {
    use ring::rand::SecureRandom;
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // getrandom failing is not something a server can carry on from quietly.
        panic!("the system's random number generator failed");
    }
    let mut sid = String::with_capacity(48);
    for b in bytes {
        let _ = write!(sid, "{b:02x}");
    }
    let _ = write!(sid, "{id:x}");
    sid
}
