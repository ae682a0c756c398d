//! `AnyCableRs::Native::Session`: one client connection as Ruby holds it — the core's
//! [`anycable_core::Session`], the name used on both sides of the seam (Action Cable's
//! `WebSocket` is the transport the app's `Connection` writes through; ours,
//! `AnyCableRs::ActionCable::WebSocket`, writes through this).

use std::sync::Arc;

use anycable_core::session::{PresenceJoins, SessionRef};
use anycable_core::{DisconnectReason, Hub};
use magnus::{Error, RString, Ruby};

/// A client connection as Ruby sees it. Every method is non-blocking and safe to call
/// from any Ruby thread.
#[magnus::wrap(class = "AnyCableRs::Native::Session", free_immediately, size)]
pub struct RbSession {
    pub session: SessionRef,
    pub hub: Arc<Hub>,
}

impl RbSession {
    pub fn id(&self) -> u64 {
        self.session.id
    }

    pub fn sid(&self) -> String {
        self.session.sid.clone()
    }

    /// Queues an already-encoded frame. False when the session is closing.
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
        self.session.stop_whisper(&identifier, &stream);
    }

    /// The app confirmed subscription `identifier`: a restore brings it back, and
    /// `history` for it is answered even when it has no stream here.
    pub fn add_subscription(&self, identifier: String) {
        self.session.add_subscription(&identifier);
    }

    /// Subscription `identifier` is gone: its streams and whispers with it (a
    /// restored channel's Ruby object does not know the streams it was given back).
    pub fn remove_subscription(&self, identifier: String) {
        self.hub.presence_leave(&self.session, &identifier);
        self.session
            .presence_to(&identifier, "", PresenceJoins::App);
        self.hub.unsubscribe_identifier(&self.session, &identifier);
        self.session.drop_held(&identifier);
        self.session.whisper_to(&identifier, "");
        self.session.remove_subscription(&identifier);
    }

    /// Subscription `identifier` streams through a Ruby block or coder, which the
    /// hub does not know: a restore leaves it out and the client subscribes again.
    pub fn pin_subscription(&self, identifier: String) {
        self.session.pin_subscription(&identifier);
    }

    /// A `state_attr_accessor` value (`json`: its JSON text) of subscription
    /// `identifier`, or of the connection for `""`: a restore gives it back.
    pub fn set_state(&self, identifier: String, name: String, json: String) {
        self.session.set_state(&identifier, &name, json);
    }

    /// `stream_from …, presence: true | :clients | :ask`: subscription `identifier`'s
    /// presence set is `stream`'s (an empty `stream`: none); `joins` ("app",
    /// "clients", "ask") says who may join it.
    pub fn presence_to(
        ruby: &Ruby,
        rb_self: &Self,
        stream: String,
        identifier: String,
        joins: String,
    ) -> Result<(), Error> {
        let joins = PresenceJoins::parse(&joins).ok_or_else(|| {
            Error::new(
                ruby.exception_arg_error(),
                format!("presence joins must be app, clients or ask, not {joins:?}"),
            )
        })?;
        rb_self.session.presence_to(&identifier, &stream, joins);
        Ok(())
    }

    /// `join_presence` from a channel: this session joins subscription `identifier`'s
    /// presence set as `id` (`info`: JSON text). False when it cannot (no presence
    /// stream, no broker, another id); the client is told `error` then.
    pub fn presence_join(&self, identifier: String, id: String, info: Option<String>) -> bool {
        self.hub
            .presence_join(&self.session, &identifier, &id, info, true)
    }

    /// `leave_presence` from a channel.
    pub fn presence_leave(&self, identifier: String) {
        self.hub.presence_leave(&self.session, &identifier);
    }

    /// The credential that opened it expires at `unix_seconds` (a JWT checked in Ruby):
    /// a restore past it gets `token_expired`. The first one set stays.
    pub fn set_expires_at(&self, unix_seconds: u64) {
        self.session.set_expires_at(unix_seconds);
    }

    /// `stream_from …, whisper: true`: the client's whispers on this subscription go
    /// to the stream's other subscribers (the server delivers them; no Ruby runs).
    /// The channel's `presence_join_requested` joined nobody: the client hears `error`.
    pub fn presence_refused(&self, identifier: String) {
        self.hub.presence_refused(&self.session, &identifier);
    }

    pub fn whisper_to(&self, stream: String, identifier: String) {
        self.session.whisper_to(&identifier, &stream);
    }
}

pub fn init(ruby: &Ruby, native: magnus::RClass) -> Result<(), Error> {
    use magnus::{method, Module};
    let class = native.define_class("Session", ruby.class_object())?;
    class.define_method("id", method!(RbSession::id, 0))?;
    class.define_method("sid", method!(RbSession::sid, 0))?;
    class.define_method("transmit", method!(RbSession::transmit, 1))?;
    class.define_method("close", method!(RbSession::close, 2))?;
    class.define_method("close_quietly", method!(RbSession::close_quietly, 0))?;
    class.define_method("closed?", method!(RbSession::is_closed, 0))?;
    class.define_method("stream", method!(RbSession::stream, 2))?;
    class.define_method("unstream", method!(RbSession::unstream, 2))?;
    class.define_method("whisper_to", method!(RbSession::whisper_to, 2))?;
    class.define_method("presence_refused", method!(RbSession::presence_refused, 1))?;
    class.define_method("add_subscription", method!(RbSession::add_subscription, 1))?;
    class.define_method(
        "remove_subscription",
        method!(RbSession::remove_subscription, 1),
    )?;
    class.define_method("pin_subscription", method!(RbSession::pin_subscription, 1))?;
    class.define_method("set_state", method!(RbSession::set_state, 3))?;
    class.define_method("presence_to", method!(RbSession::presence_to, 3))?;
    class.define_method("presence_join", method!(RbSession::presence_join, 3))?;
    class.define_method("presence_leave", method!(RbSession::presence_leave, 1))?;
    class.define_method("set_expires_at", method!(RbSession::set_expires_at, 1))?;
    class.define_method("identifiers=", method!(RbSession::set_identifiers, 1))?;
    Ok(())
}
