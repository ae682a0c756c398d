//! A client frame, routed: the commands the server answers itself (ping, presence,
//! history, `$pubsub` and Turbo Streams subscriptions, whispers) are served here
//! without Ruby; the others go to the app through the [`Controller`], its connection
//! object built first when it was left for later (JWT, restore).

use super::connection::CommandFuture;
use super::Inner;
use crate::auth::Resolution;
use crate::controller::{CommandRequest, ConnectRequest, Controller};
use crate::logging::BadInputLog;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::protocol::{ClientCommand, ClientFrame, Command, HistoryRequest, PresenceJoin};
use crate::session::{PresenceJoins, Session, SessionRef};

/// What [`Inner::serve_here`] did with a command.
enum Served<'a> {
    /// Not a command the server answers: the app's.
    No,
    Done,
    /// Answered; what is left runs as the command in flight.
    Then(CommandFuture<'a>),
}

/// What is left to run of a command.
pub(super) enum Run<'a> {
    /// May run the app's code: never beside another app call for the connection
    /// (a restored session's objects being rebuilt goes first).
    App(CommandFuture<'a>),
    /// The server's own (a bare `history`'s replay): runs beside a rebuild.
    Server(CommandFuture<'a>),
}

impl<C: Controller> Inner<C> {
    /// Handles one text frame; returns what is left to run when it is a command that
    /// waits (the app's, a history replay).
    pub(super) fn handle_text<'a>(
        &'a self,
        session: &SessionRef,
        text: &str,
        bad_input: &mut BadInputLog,
        lazy: &mut Option<ConnectRequest>,
    ) -> Option<Run<'a>> {
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
                return self
                    .client_join(session, identifier, presence, lazy)
                    .map(Run::App);
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
                return Some(Run::Server(Box::pin(async move {
                    self.send_history(&session, &identifier, &history).await;
                })));
            }
            Err(e) => {
                COUNTERS.failed_client_msg.inc();
                bad_input.warn(session.log_id(), format_args!("{e}; ignored"));
                return None;
            }
        };
        if self.over_limits(session, &command, bad_input) {
            return None;
        }
        match self.serve_here(session, &command, &mut history, &mut presence, bad_input) {
            Served::No => {}
            Served::Done => return None,
            Served::Then(next) => return Some(Run::App(next)),
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
        let run = self.to_app(request, lazy);
        let Some(id) = after_id else {
            return Some(Run::App(run));
        };
        // `history` and `presence` on a subscribe run after the app's subscribe, when
        // it confirmed the subscription.
        let session = session.clone();
        Some(Run::App(Box::pin(async move {
            run.await;
            if let Some(history) = history {
                self.send_history(&session, &id, &history).await;
            }
            if let Some(p) = presence {
                if session.has_subscription(&id) {
                    if let Some(ask) = self.client_join(&session, id, p, &mut None) {
                        ask.await;
                    }
                }
            }
        })))
    }

    /// A client's presence join on subscription `identifier`: taken by the hub, or —
    /// where the channel decides (`presence: :ask`) — handed to the app as a `join`
    /// command, whose `presence_join_requested` joins it as it sees fit (or not).
    fn client_join<'a>(
        &'a self,
        session: &SessionRef,
        identifier: String,
        presence: PresenceJoin,
        lazy: &mut Option<ConnectRequest>,
    ) -> Option<CommandFuture<'a>> {
        if session.presence_joins(&identifier) != Some(PresenceJoins::Ask) {
            self.hub
                .presence_join(session, &identifier, &presence.id, presence.info, false);
            return None;
        }
        let info = presence.info.as_deref().unwrap_or("null");
        let request = CommandRequest {
            session: session.clone(),
            command: ClientCommand {
                command: Command::Join,
                identifier,
                data: Some(format!(
                    r#"{{"id":{},"info":{info}}}"#,
                    serde_json::Value::from(presence.id)
                )),
            },
        };
        Some(self.to_app(request, lazy))
    }

    /// Runs `request` in the app's code — for the first command of a lazily
    /// connected session, after building its connection object.
    fn to_app<'a>(
        &'a self,
        request: CommandRequest,
        lazy: &mut Option<ConnectRequest>,
    ) -> CommandFuture<'a> {
        match lazy.take() {
            None => Box::pin(self.controller.command(request)),
            Some(connect) => {
                let connected = self.connect_lazily(request.session.clone(), connect);
                Box::pin(async move {
                    if connected.await {
                        self.controller.command(request).await;
                    }
                })
            }
        }
    }

    /// What one connection may hold (`ANYCABLE_MAX_IDENTIFIER_SIZE`,
    /// `ANYCABLE_MAX_SUBSCRIPTIONS`): a command past them is refused here, a subscribe
    /// with `reject_subscription`. True when refused.
    fn over_limits(
        &self,
        session: &Session,
        command: &ClientCommand,
        bad_input: &mut BadInputLog,
    ) -> bool {
        let id = &command.identifier;
        let subscribe = command.command == Command::Subscribe;
        let max_id = self.config.max_identifier_size;
        let max_subs = self.config.max_subscriptions;
        if id.len() > max_id {
            COUNTERS.failed_client_msg.inc();
            bad_input.warn(
                session.log_id(),
                format_args!(
                    "an identifier of {} bytes is over ANYCABLE_MAX_IDENTIFIER_SIZE ({max_id}); refused",
                    id.len()
                ),
            );
        } else if subscribe
            && max_subs > 0
            && session.subscription_count() >= max_subs
            && !session.has_subscription(id)
        {
            bad_input.warn(
                session.log_id(),
                format_args!(
                    "a subscription past ANYCABLE_MAX_SUBSCRIPTIONS ({max_subs}) on one connection; rejected"
                ),
            );
        } else {
            return false;
        }
        if subscribe {
            session.transmit(protocol::subscription_reply(id, false));
        }
        true
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
                    if !session.add_server_subscription(id, whisper.then(|| stream.clone())) {
                        bad_input.warn(
                            session.log_id(),
                            format_args!("already subscribed; ignored"),
                        );
                        return Served::Done;
                    }
                    if history.is_some() {
                        session.hold(id);
                    }
                    if presence_on {
                        session.presence_to(id, &stream, PresenceJoins::Clients);
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
                            self.hub.presence_join(&session, &id, &p.id, p.info, false);
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
                if !session.remove_server_subscription(id) {
                    return Served::No;
                }
                self.hub.presence_leave(session, id);
                session.presence_to(id, "", PresenceJoins::App);
                self.hub.unsubscribe_identifier(session, id);
                session.drop_held(id);
                Served::Done
            }
            Command::Message => {
                if !session.has_server_subscription(id) {
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
                    (Some(_), Some(_))
                        if !session.allow_whisper(self.config.whispers_per_second) =>
                    {
                        bad_input.warn(
                            session.log_id(),
                            format_args!(
                                "whispers past ANYCABLE_WHISPERS_PER_SECOND ({}); dropped",
                                self.config.whispers_per_second
                            ),
                        )
                    }
                    (Some(stream), Some(data)) => self.whisper(session, &stream, data),
                    _ => log::debug!(
                        "session {}: whisper on a subscription without a whisper stream ignored",
                        session.log_id()
                    ),
                }
                Served::Done
            }
            // Made by `client_join`, never parsed from a client's frame.
            Command::Join => Served::No,
        }
    }

    /// To the stream's other subscribers that take whispers there
    /// ([`crate::hub::Hub::whisper`]),
    /// on every node (through the pub/sub when there is one), never back to the
    /// sender's session.
    fn whisper(&self, session: &Session, stream: &str, data: &str) {
        match self.link.get() {
            Some(link) => link.pubsub.publish(
                serde_json::json!({
                    "stream": stream,
                    "data": data,
                    "meta": {"exclude_socket": session.sid_digest(), "transient": true, "whisper": true}
                })
                .to_string(),
            ),
            None => {
                COUNTERS.broadcast_msg.inc();
                self.hub.whisper(stream, data, Some(&session.sid));
            }
        }
    }
}
