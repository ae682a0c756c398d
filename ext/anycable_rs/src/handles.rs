//! Ruby objects that wrap Rust handles: `AnyCableRs::Native::Socket` (one client
//! connection) and `AnyCableRs::Native::Reply` (the answer to one bridge job).

use std::sync::Arc;

use anycable_core::session::SessionRef;
use anycable_core::{ConnectReply, DisconnectReason, Hub};
use magnus::{Error, RString, Ruby};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A client connection as Ruby sees it. Every method is non-blocking and safe to call
/// from any Ruby thread.
#[magnus::wrap(class = "AnyCableRs::Native::Socket", free_immediately, size)]
pub struct Socket {
    pub session: SessionRef,
    pub hub: Arc<Hub>,
}

impl Socket {
    pub fn id(&self) -> u64 {
        self.session.id
    }

    pub fn sid(&self) -> String {
        self.session.sid.clone()
    }

    /// Queues an already-encoded frame. False when the socket is closing.
    pub fn transmit(&self, frame: RString) -> Result<bool, Error> {
        Ok(self.session.transmit(frame.to_string()?))
    }

    pub fn close(&self, reason: String, reconnect: bool) {
        self.session.close(DisconnectReason {
            reason: reason.into(),
            reconnect,
        });
    }

    pub fn close_quietly(&self) {
        self.session.close_quietly();
    }

    pub fn is_closed(&self) -> bool {
        self.session.is_closing()
    }

    /// Plain `stream_from`: broadcasts reach the client without entering Ruby.
    pub fn stream(&self, stream: String, identifier: String) {
        self.hub.subscribe(&self.session, &stream, &identifier);
    }

    /// The connection's identifiers as JSON, for AnyCable's remote disconnect command.
    pub fn set_identifiers(ruby: &Ruby, rb_self: &Self, json: String) -> Result<(), Error> {
        let value = serde_json::from_str(&json)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        rb_self.session.set_identifiers(value);
        Ok(())
    }

    pub fn unstream(&self, stream: String, identifier: String) {
        self.hub.unsubscribe(&self.session, &stream, &identifier);
    }
}

enum Pending {
    Connect(oneshot::Sender<ConnectReply>),
    Done(oneshot::Sender<()>),
}

/// The reply slot of one job. Dropping it unanswered (an exception in the dispatcher,
/// a thread killed) wakes the waiting task with an error instead of leaving it hanging.
#[magnus::wrap(class = "AnyCableRs::Native::Reply", free_immediately, size)]
pub struct Reply(Mutex<Option<Pending>>);

impl Reply {
    pub fn connect(tx: oneshot::Sender<ConnectReply>) -> Self {
        Reply(Mutex::new(Some(Pending::Connect(tx))))
    }

    pub fn done(tx: oneshot::Sender<()>) -> Self {
        Reply(Mutex::new(Some(Pending::Done(tx))))
    }

    /// `status`: "ok", "unauthorized", "invalid_request" or "error" (with `message`).
    /// Only the first call counts.
    pub fn resolve(
        ruby: &Ruby,
        rb_self: &Self,
        status: String,
        message: Option<String>,
    ) -> Result<bool, Error> {
        let Some(pending) = rb_self.0.lock().take() else {
            return Ok(false);
        };
        match pending {
            Pending::Done(tx) => Ok(tx.send(()).is_ok()),
            Pending::Connect(tx) => {
                let reply = match status.as_str() {
                    "ok" => ConnectReply::Accepted,
                    "unauthorized" => ConnectReply::Rejected(DisconnectReason::UNAUTHORIZED),
                    "invalid_request" => ConnectReply::Rejected(DisconnectReason::INVALID_REQUEST),
                    "error" => ConnectReply::Failed(message.unwrap_or_default()),
                    other => {
                        let _ = tx.send(ConnectReply::Failed(format!("bad status {other:?}")));
                        return Err(Error::new(
                            ruby.exception_arg_error(),
                            format!("unknown connect status {other:?}"),
                        ));
                    }
                };
                Ok(tx.send(reply).is_ok())
            }
        }
    }
}
