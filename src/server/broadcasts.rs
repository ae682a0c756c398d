//! Broadcasts applied to this process's clients: AnyCable payloads (from the pub/sub,
//! `POST /_broadcast` without one, Ruby), single messages, and what the NATS broker
//! delivers from JetStream. Each is checked first: data no client could receive is
//! refused where it entered.

use super::Inner;
use crate::controller::Controller;
use crate::hub::Delivery;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::protocol::broadcast::{self, BroadcastError, BroadcastMessage};
use crate::session::DisconnectReason;

impl<C: Controller> Inner<C> {
    pub(super) fn check_size(&self, data: &str) -> Result<(), BroadcastError> {
        broadcast::check_size(data.len(), self.config.max_pending_bytes)
    }

    fn check_sizes(&self, messages: &[BroadcastMessage]) -> Result<(), BroadcastError> {
        for message in messages {
            if let BroadcastMessage::Stream { data, .. } = message {
                self.check_size(data)?;
            }
        }
        Ok(())
    }

    /// Parsed, and every message deliverable; how many messages it holds.
    pub(super) fn check_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        let messages = broadcast::parse(payload).map_err(BroadcastError::Malformed)?;
        self.check_sizes(&messages)?;
        Ok(messages.len())
    }

    /// Delivers a broadcast to this process's subscribers, at its place in the
    /// history when the broker gives it one.
    pub(super) fn deliver(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
        transient: bool,
    ) -> Delivery {
        self.broker.append(stream, data, transient, |at| match at {
            Some(at) => self.hub.broadcast_at(stream, data, exclude_sid, Some(at)),
            None => self.hub.broadcast(stream, data, exclude_sid),
        })
    }

    /// With the NATS broker: a stored broadcast, at its place in the history.
    pub(super) fn deliver_stored(
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
        self.hub.broadcast_at(stream, data, exclude_sid, Some(at))
    }

    pub(super) fn apply_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        let messages = broadcast::parse(payload).map_err(BroadcastError::Malformed)?;
        self.check_sizes(&messages)?;
        COUNTERS.broadcast_msg.inc_by(messages.len() as u64);
        for message in &messages {
            match message {
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                    whisper: true,
                    ..
                } => {
                    self.hub.whisper(stream, data, exclude_socket.as_deref());
                }
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                    transient,
                    whisper: false,
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
}
