//! The hub: which sessions (and which application callbacks) listen to which stream.
//!
//! A broadcast to a stream is encoded once per (stream, identifier) and the same bytes
//! are queued to every session subscribed under that identifier. Streams whose messages
//! the application wants to see first (Action Cable's `stream_from` with a block or a
//! coder) are registered as callbacks: the hub hands the payload to the [`CallbackSink`]
//! given at construction, and never encodes a frame for them.

pub mod presence;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::hub::presence::{Joiner, Presence, PresenceEvent};
use crate::protocol;
use crate::session::{PresenceJoins, SessionRef};

/// The presence reply to a request presence cannot serve (AnyCable's).
const PRESENCE_ERROR: &str = r#"{"type":"error","total":0}"#;

/// Receives (callback id, payload) for callback subscriptions.
pub type CallbackSink = Arc<dyn Fn(u64, Arc<str>) + Send + Sync>;

#[derive(Default)]
struct StreamSubscribers {
    /// identifier → session id → session
    by_identifier: HashMap<Arc<str>, HashMap<u64, SessionRef>>,
    callbacks: Vec<u64>,
}

impl StreamSubscribers {
    fn is_empty(&self) -> bool {
        self.by_identifier.is_empty() && self.callbacks.is_empty()
    }
}

pub struct Hub {
    streams: RwLock<HashMap<Arc<str>, StreamSubscribers>>,
    sink: Option<CallbackSink>,
    /// Presence sets, with a broker that keeps them (`ANYCABLE_BROKER=memory`).
    presence: std::sync::OnceLock<Presence>,
}

/// What one broadcast reached, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub sessions: usize,
    pub callbacks: usize,
}

impl Hub {
    pub fn new(sink: Option<CallbackSink>) -> Self {
        Hub {
            streams: RwLock::new(HashMap::new()),
            sink,
            presence: std::sync::OnceLock::new(),
        }
    }

    /// Turns presence on (once), records kept `ttl` after their socket closed.
    pub fn enable_presence(&self, ttl: std::time::Duration) {
        let _ = self.presence.set(Presence::new(ttl));
    }

    pub fn presence(&self) -> Option<&Presence> {
        self.presence.get()
    }

    /// Session `session` joins the presence set of subscription `identifier` (its
    /// presence stream) as `id`; the stream's subscribers, `session` included, hear
    /// of an id new there. A client's join (`from_app` false) is taken only where the
    /// subscription lets clients join (`$pubsub` streams, `stream_from …, presence:
    /// :clients`), and only for an id new there or its own. False (and the requester
    /// told `error`) when refused: no presence stream, presence off, another id from
    /// this session, or a bound passed.
    pub fn presence_join(
        &self,
        session: &SessionRef,
        identifier: &str,
        id: &str,
        info: Option<String>,
        from_app: bool,
    ) -> bool {
        let (Some(presence), Some(stream)) = (self.presence(), session.presence_stream(identifier))
        else {
            session.send_frame(protocol::presence_frame(identifier, PRESENCE_ERROR));
            return false;
        };
        let owner;
        let joiner = if from_app {
            Joiner::App
        } else if session.presence_joins(identifier) == Some(PresenceJoins::Clients) {
            owner = session.presence_owner();
            Joiner::Client { owner: &owner }
        } else {
            log::debug!(
                "session {}: presence join refused: the channel joins its clients itself \
                 (stream_from …, presence: :clients or :ask lets them ask)",
                session.log_id()
            );
            session.send_frame(protocol::presence_frame(identifier, PRESENCE_ERROR));
            return false;
        };
        match presence.join(&stream, session.id, id, info, joiner) {
            Ok(event) => {
                if let Some(event) = event {
                    self.presence_event(&stream, &event);
                }
                true
            }
            Err(e) => {
                log::debug!("session {}: presence join refused: {e}", session.log_id());
                session.send_frame(protocol::presence_frame(identifier, PRESENCE_ERROR));
                false
            }
        }
    }

    /// Tells the requester its join was refused (the channel's
    /// `presence_join_requested` joined nobody).
    pub fn presence_refused(&self, session: &SessionRef, identifier: &str) {
        session.send_frame(protocol::presence_frame(identifier, PRESENCE_ERROR));
    }

    /// Session `session` leaves the presence set of subscription `identifier`.
    pub fn presence_leave(&self, session: &SessionRef, identifier: &str) {
        let (Some(presence), Some(stream)) = (self.presence(), session.presence_stream(identifier))
        else {
            return;
        };
        if let Some(event) = presence.leave(&stream, session.id) {
            self.presence_event(&stream, &event);
        }
    }

    /// `{"type":"presence",…,"message":{"type":"info",…}}` to the requester only.
    pub fn presence_info(&self, session: &SessionRef, identifier: &str, return_records: bool) {
        let message = match (self.presence(), session.presence_stream(identifier)) {
            (Some(presence), Some(stream)) => presence.info_json(&stream, return_records),
            _ => PRESENCE_ERROR.to_string(),
        };
        session.send_frame(protocol::presence_frame(identifier, &message));
    }

    /// A join or leave, to every subscriber of `stream` (never stored, no offset).
    pub fn presence_event(&self, stream: &str, event: &PresenceEvent) {
        let message = event.to_json();
        let streams = self.streams.read();
        let Some(subs) = streams.get(stream) else {
            return;
        };
        for (identifier, group) in &subs.by_identifier {
            let frame = protocol::presence_frame(identifier, &message);
            for session in group.values() {
                session.send_frame(frame.clone());
            }
        }
    }

    /// Subscribes `session` to `stream` under channel `identifier`. Idempotent.
    pub fn subscribe(&self, session: &SessionRef, stream: &str, identifier: &str) {
        let mut streams = self.streams.write();
        let stream_key = match streams.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let subs = streams.entry(stream_key.clone()).or_default();
        let id_key = match subs.by_identifier.get_key_value(identifier) {
            Some((k, _)) => k.clone(),
            None => Arc::from(identifier),
        };
        let group = subs.by_identifier.entry(id_key.clone()).or_default();
        if group.insert(session.id, session.clone()).is_none() {
            session.joined(stream_key, id_key);
        }
    }

    /// Removes one (stream, identifier) subscription of `session`.
    pub fn unsubscribe(&self, session: &SessionRef, stream: &str, identifier: &str) {
        let mut streams = self.streams.write();
        Self::remove_locked(&mut streams, session.id, stream, identifier);
        session.left(stream, identifier);
    }

    /// Removes every subscription of `session` under `identifier` (channel unsubscribed).
    pub fn unsubscribe_identifier(&self, session: &SessionRef, identifier: &str) {
        let mine = session.take_streams(Some(identifier));
        session.mark_changed();
        let mut streams = self.streams.write();
        for (stream, identifier) in mine {
            Self::remove_locked(&mut streams, session.id, &stream, &identifier);
        }
    }

    /// Drops everything `session` subscribed to; called when it disconnects.
    pub fn remove_session(&self, session: &SessionRef) {
        let mine = session.take_streams(None);
        if mine.is_empty() {
            return;
        }
        let mut streams = self.streams.write();
        for (stream, identifier) in mine {
            Self::remove_locked(&mut streams, session.id, &stream, &identifier);
        }
    }

    fn remove_locked(
        streams: &mut HashMap<Arc<str>, StreamSubscribers>,
        session_id: u64,
        stream: &str,
        identifier: &str,
    ) {
        if let Some(subs) = streams.get_mut(stream) {
            if let Some(group) = subs.by_identifier.get_mut(identifier) {
                group.remove(&session_id);
                if group.is_empty() {
                    subs.by_identifier.remove(identifier);
                }
            }
            if subs.is_empty() {
                streams.remove(stream);
            }
        }
    }

    /// Registers an application callback for `stream`.
    pub fn subscribe_callback(&self, stream: &str, callback_id: u64) {
        let mut streams = self.streams.write();
        let subs = streams.entry(stream.into()).or_default();
        if !subs.callbacks.contains(&callback_id) {
            subs.callbacks.push(callback_id);
        }
    }

    pub fn unsubscribe_callback(&self, stream: &str, callback_id: u64) {
        let mut streams = self.streams.write();
        if let Some(subs) = streams.get_mut(stream) {
            subs.callbacks.retain(|id| *id != callback_id);
            if subs.is_empty() {
                streams.remove(stream);
            }
        }
    }

    /// Delivers `data` (the broadcast payload, JSON) to every subscriber of `stream`,
    /// except the session `exclude_sid` names (its sid, or its digest: see
    /// [`crate::Session::is_excluded_by`]).
    pub fn broadcast(&self, stream: &str, data: &str, exclude_sid: Option<&str>) -> Delivery {
        self.broadcast_at(stream, data, exclude_sid, None)
    }

    /// [`Hub::broadcast`] of a message with a place in the stream's history: its
    /// frames carry `stream_id`, `epoch` and `offset`.
    pub fn broadcast_at(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
        at: Option<protocol::Position<'_>>,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let callbacks: Vec<u64>;
        {
            let streams = self.streams.read();
            let Some((stream_key, subs)) = streams.get_key_value(stream) else {
                return delivery;
            };
            let offset = at.map(|p| p.offset);
            for (identifier, group) in &subs.by_identifier {
                let frame = protocol::broadcast_frame_at(identifier, data, at);
                for session in group.values() {
                    if exclude_sid.is_some_and(|x| session.is_excluded_by(x)) {
                        continue;
                    }
                    if session.send_live(identifier, stream_key, offset, frame.clone()) {
                        delivery.sessions += 1;
                    }
                }
            }
            callbacks = subs.callbacks.clone();
        }
        // Outside the hub's lock: the sink may call back into the hub. With history on,
        // this runs under the stream's history shard lock (`History::append`), so the
        // sink must not block nor broadcast; `JobQueue::push` never blocks and never
        // re-enters `deliver`.
        if let (Some(sink), false) = (&self.sink, callbacks.is_empty()) {
            let payload: Arc<str> = data.into();
            for id in callbacks {
                sink(id, payload.clone());
                delivery.callbacks += 1;
            }
        }
        delivery
    }

    /// A client's whisper on `stream`: to the subscriptions that take whispers there
    /// (`whispers_to`, `stream_from … whisper: true`, `$pubsub` streams with whispers
    /// on), except the sender's session. Never to the app's callbacks (a whisper costs
    /// no Ruby job) nor to subscriptions that only listen to the stream.
    pub fn whisper(&self, stream: &str, data: &str, exclude_sid: Option<&str>) -> Delivery {
        let mut delivery = Delivery::default();
        let streams = self.streams.read();
        let Some((stream_key, subs)) = streams.get_key_value(stream) else {
            return delivery;
        };
        for (identifier, group) in &subs.by_identifier {
            let mut frame = None;
            for session in group.values() {
                if exclude_sid.is_some_and(|x| session.is_excluded_by(x))
                    || !session.takes_whispers(identifier, stream)
                {
                    continue;
                }
                let frame = frame
                    .get_or_insert_with(|| protocol::broadcast_frame_at(identifier, data, None));
                if session.send_live(identifier, stream_key, None, frame.clone()) {
                    delivery.sessions += 1;
                }
            }
        }
        delivery
    }

    /// Number of streams with at least one subscriber.
    pub fn stream_count(&self) -> usize {
        self.streams.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Outbound, Outbox, Session};
    use parking_lot::Mutex;

    fn frames(rx: &mut Outbox) -> Vec<String> {
        let mut out = vec![];
        while let Ok(Outbound::Frame(f)) = rx.try_recv() {
            out.push(f.as_str().to_string());
        }
        out
    }

    /// Review of #24 (6): guests (no identifiers, or only nil ones) must not share one
    /// owner, or any guest could take another's presence id.
    #[test]
    fn unidentified_sessions_own_their_presence_ids_apart() {
        let (a, _ra) = Session::new(1, "a".into(), 1 << 20);
        let (b, _rb) = Session::new(2, "b".into(), 1 << 20);
        a.set_identifiers(serde_json::json!({"current_user": null}));
        assert_ne!(a.presence_owner(), b.presence_owner());
        assert!(a.presence_owner().starts_with("anonymous:sha256:"));
        b.set_identifiers(serde_json::json!({"user": "u1"}));
        assert_eq!(b.presence_owner(), r#"{"user":"u1"}"#);
    }

    #[test]
    fn fans_out_once_per_identifier_and_excludes() {
        let hub = Hub::new(None);
        let (a, mut ra) = Session::new(1, "a".into(), 1 << 20);
        let (b, mut rb) = Session::new(2, "b".into(), 1 << 20);
        hub.subscribe(&a, "room", "A");
        hub.subscribe(&a, "room", "A");
        hub.subscribe(&b, "room", "B");
        let d = hub.broadcast("room", r#"{"x":1}"#, Some("b"));
        assert_eq!(d.sessions, 1);
        assert_eq!(
            frames(&mut ra),
            vec![r#"{"identifier":"A","message":{"x":1}}"#]
        );
        assert!(frames(&mut rb).is_empty());
        hub.broadcast("room", "2", None);
        assert_eq!(frames(&mut rb), vec![r#"{"identifier":"B","message":2}"#]);
        frames(&mut ra);
        // As the NATS broker stores it: by the sid's digest.
        let digest = crate::protocol::broadcast::exclude_digest("b");
        assert_eq!(hub.broadcast("room", "3", Some(&digest)).sessions, 1);
        assert!(frames(&mut rb).is_empty());
        assert_eq!(frames(&mut ra).len(), 1);
    }

    #[test]
    fn unsubscribes_and_forgets_empty_streams() {
        let hub = Hub::new(None);
        let (a, mut ra) = Session::new(1, "a".into(), 1 << 20);
        hub.subscribe(&a, "s1", "A");
        hub.subscribe(&a, "s2", "A");
        hub.subscribe(&a, "s3", "B");
        hub.unsubscribe(&a, "s1", "A");
        assert_eq!(hub.broadcast("s1", "1", None).sessions, 0);
        hub.unsubscribe_identifier(&a, "A");
        assert_eq!(hub.broadcast("s2", "1", None).sessions, 0);
        assert_eq!(hub.broadcast("s3", "1", None).sessions, 1);
        hub.remove_session(&a);
        assert_eq!(hub.stream_count(), 0);
        assert_eq!(frames(&mut ra).len(), 1);
    }

    #[test]
    fn hands_callback_streams_to_the_sink() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s2 = seen.clone();
        let hub = Hub::new(Some(Arc::new(move |id, data: Arc<str>| {
            s2.lock().push((id, data.to_string()))
        })));
        hub.subscribe_callback("s", 7);
        hub.subscribe_callback("s", 7);
        assert_eq!(hub.broadcast("s", r#""hi""#, None).callbacks, 1);
        hub.unsubscribe_callback("s", 7);
        hub.broadcast("s", "1", None);
        assert_eq!(*seen.lock(), vec![(7, r#""hi""#.to_string())]);
        assert_eq!(hub.stream_count(), 0);
    }
}
