//! What a session subscribes to: the app's channel subscriptions (confirmed, or
//! pinned to Ruby), the server's own (`$pubsub`, Turbo Streams), the whisper and
//! presence streams of each, and `state_attr_accessor` values.

use std::sync::Arc;

use super::Session;

/// A subscription's presence set (AnyCable's `$p`).
pub(super) struct PresenceSet {
    pub(super) identifier: String,
    pub(super) stream: String,
    pub(super) joins: PresenceJoins,
}

/// Who may join a subscription's presence set, and how a client's `join` is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceJoins {
    /// Only the app, from Ruby (`stream_from …, presence: true`); a client's join is
    /// refused.
    App,
    /// Clients too, with ids of their own (`$pubsub` streams, `presence: :clients`).
    Clients,
    /// A client's join goes to the channel, which decides who joins as what
    /// (`presence: :ask`: its `presence_join_requested(id, info)`).
    Ask,
}

impl PresenceJoins {
    /// The name Ruby passes.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "app" => Some(PresenceJoins::App),
            "clients" => Some(PresenceJoins::Clients),
            "ask" => Some(PresenceJoins::Ask),
            _ => None,
        }
    }
}

/// One of the app's channel subscriptions, as the server knows it.
pub(super) struct AppSubscription {
    pub(super) identifier: Arc<str>,
    /// The app confirmed it (its `subscribed` ran and did not reject).
    pub(super) confirmed: bool,
    /// It streams through a Ruby block or coder, which the hub does not know: a
    /// restore leaves it out and the client subscribes again. Set during `subscribed`,
    /// so possibly before it is confirmed.
    pub(super) pinned: bool,
}

impl Session {
    /// Whispers on subscription `identifier` go to `stream` from now on; an empty
    /// `stream` stops them (AnyCable's channel-state rule).
    pub fn whisper_to(&self, identifier: &str, stream: &str) {
        let mut whispers = self.whispers.lock();
        if stream.is_empty() {
            whispers.remove(identifier);
        } else {
            whispers.insert(identifier.to_string(), stream.to_string());
        }
    }

    /// Stops whispers to `stream` on `identifier` (the stream was stopped).
    pub fn stop_whisper(&self, identifier: &str, stream: &str) {
        let mut whispers = self.whispers.lock();
        if whispers.get(identifier).is_some_and(|s| s == stream) {
            whispers.remove(identifier);
        }
    }

    /// Subscription `identifier`'s presence set is `stream`'s (an empty `stream`: none);
    /// `joins`: who may join it.
    pub fn presence_to(&self, identifier: &str, stream: &str, joins: PresenceJoins) {
        self.mark_changed();
        let mut streams = self.presence_streams.lock();
        streams.retain(|p| p.identifier != identifier);
        if !stream.is_empty() {
            streams.push(PresenceSet {
                identifier: identifier.to_owned(),
                stream: stream.to_owned(),
                joins,
            });
        }
    }

    pub fn presence_stream(&self, identifier: &str) -> Option<String> {
        self.presence_streams
            .lock()
            .iter()
            .find(|p| p.identifier == identifier)
            .map(|p| p.stream.clone())
    }

    /// Who may join subscription `identifier`'s presence set (None: it has none).
    pub fn presence_joins(&self, identifier: &str) -> Option<PresenceJoins> {
        self.presence_streams
            .lock()
            .iter()
            .find(|p| p.identifier == identifier)
            .map(|p| p.joins)
    }

    /// Who a presence id this session's client chooses belongs to: its connection's
    /// identifiers (every tab of one user), else — no identifiers, or only empty ones
    /// (a guest) — the session itself, by its first sid's digest, which a restore
    /// keeps.
    pub fn presence_owner(&self) -> String {
        let identified = match self.identifiers() {
            Some(serde_json::Value::Object(ids)) => ids.values().any(|v| !v.is_null()),
            Some(other) => !other.is_null(),
            None => false,
        };
        match self.identifiers() {
            Some(ids) if identified => ids.to_string(),
            _ => self.anonymous_owner().to_owned(),
        }
    }

    /// The owner of ids an unidentified session's client chooses (see
    /// [`Session::presence_owner`]).
    pub(crate) fn anonymous_owner(&self) -> &str {
        self.anonymous_owner
            .get_or_init(|| format!("anonymous:{}", self.sid_digest()).into_boxed_str())
    }

    /// The stream a whisper on `identifier` goes to, if any.
    pub fn whisper_stream(&self, identifier: &str) -> Option<String> {
        if let Some(server_side) = self.server_subscriptions.lock().get(identifier) {
            return server_side.clone();
        }
        self.whispers.lock().get(identifier).cloned()
    }

    /// Subscriptions it holds: the app's (confirmed, or being subscribed) and the
    /// server's own.
    pub fn subscription_count(&self) -> usize {
        self.server_subscriptions.lock().len() + self.app_subscriptions.lock().len()
    }

    /// Counts a whisper against `per_second` (a fixed one-second window); false when
    /// the window is full. 0: no limit.
    pub fn allow_whisper(&self, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        let mut window = self.whisper_window.lock();
        match window.0 {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {
                if window.1 >= per_second {
                    return false;
                }
                window.1 += 1;
            }
            _ => *window = (Some(now), 1),
        }
        true
    }

    /// Whether subscription `identifier` takes whispers on `stream` (its whisper stream
    /// is that one): a whisper reaches only such subscriptions.
    pub fn takes_whispers(&self, identifier: &str, stream: &str) -> bool {
        if let Some(server_side) = self.server_subscriptions.lock().get(identifier) {
            return server_side.as_deref() == Some(stream);
        }
        self.whispers
            .lock()
            .get(identifier)
            .is_some_and(|s| s == stream)
    }

    /// The streams subscription `identifier` receives broadcasts from (server-side ones
    /// and the app's plain `stream_from`), in the order they were added.
    pub fn streams_of(&self, identifier: &str) -> Vec<Arc<str>> {
        self.streams
            .lock()
            .iter()
            .filter(|(_, i)| i.as_ref() == identifier)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The app confirmed subscription `identifier` (its channel's `subscribed` ran and
    /// did not reject).
    pub fn add_subscription(&self, identifier: &str) {
        self.with_subscription(identifier, |sub| sub.confirmed = true);
        self.mark_changed();
    }

    /// The app's subscription `identifier` is gone (or was rejected).
    pub fn remove_subscription(&self, identifier: &str) {
        self.mark_changed();
        self.app_subscriptions
            .lock()
            .retain(|s| s.identifier.as_ref() != identifier);
        if let Some(state) = self.state.lock().as_mut() {
            state.remove(identifier);
        }
    }

    /// Records a `state_attr_accessor` value (JSON text) of subscription `identifier`,
    /// or of the connection for `""`, for a restore to give back.
    pub fn set_state(&self, identifier: &str, name: &str, json: String) {
        self.mark_changed();
        let mut state = self.state.lock();
        let values = state
            .get_or_insert_with(Default::default)
            .entry(identifier.to_owned())
            .or_default();
        match values.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = json,
            None => values.push((name.to_owned(), json)),
        }
    }

    pub(super) fn state_of(&self, identifier: &str) -> Vec<(String, String)> {
        self.state
            .lock()
            .as_ref()
            .and_then(|s| s.get(identifier).cloned())
            .unwrap_or_default()
    }

    /// Subscription `identifier` streams through Ruby: a restore leaves it out.
    pub fn pin_subscription(&self, identifier: &str) {
        self.with_subscription(identifier, |sub| sub.pinned = true);
    }

    fn with_subscription(&self, identifier: &str, f: impl FnOnce(&mut AppSubscription)) {
        let mut subs = self.app_subscriptions.lock();
        let i = match subs
            .iter()
            .position(|s| s.identifier.as_ref() == identifier)
        {
            Some(i) => i,
            None => {
                subs.push(AppSubscription {
                    identifier: identifier.into(),
                    confirmed: false,
                    pinned: false,
                });
                subs.len() - 1
            }
        };
        f(&mut subs[i]);
    }

    /// A subscription this session has: the app's confirmed ones or the server's own.
    pub fn has_subscription(&self, identifier: &str) -> bool {
        self.server_subscriptions.lock().contains_key(identifier)
            || self
                .app_subscriptions
                .lock()
                .iter()
                .any(|s| s.confirmed && s.identifier.as_ref() == identifier)
    }

    /// The hub joined it to (`stream`, `identifier`).
    pub(crate) fn joined(&self, stream: Arc<str>, identifier: Arc<str>) {
        self.streams.lock().push((stream, identifier));
        self.mark_changed();
    }

    /// The hub let go of (`stream`, `identifier`).
    pub(crate) fn left(&self, stream: &str, identifier: &str) {
        self.streams
            .lock()
            .retain(|(s, i)| !(s.as_ref() == stream && i.as_ref() == identifier));
        self.mark_changed();
    }

    /// Takes the (stream, identifier) pairs of subscription `identifier` out, or of
    /// every subscription with `None`.
    pub(crate) fn take_streams(&self, identifier: Option<&str>) -> Vec<(Arc<str>, Arc<str>)> {
        let mut list = self.streams.lock();
        let Some(identifier) = identifier else {
            return std::mem::take(&mut *list);
        };
        let (gone, kept): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|(_, i)| i.as_ref() == identifier);
        *list = kept;
        gone
    }

    /// A subscription the server makes itself (`$pubsub`, Turbo Streams), with the
    /// stream whispers on it go to, if any. False when it has one by that identifier.
    pub(crate) fn add_server_subscription(
        &self,
        identifier: &str,
        whisper: Option<String>,
    ) -> bool {
        let mut subs = self.server_subscriptions.lock();
        if subs.contains_key(identifier) {
            return false;
        }
        subs.insert(identifier.to_owned(), whisper);
        true
    }

    /// Whether the server's own subscription `identifier` was there (and is gone now).
    pub(crate) fn remove_server_subscription(&self, identifier: &str) -> bool {
        self.server_subscriptions
            .lock()
            .remove(identifier)
            .is_some()
    }

    pub(crate) fn has_server_subscription(&self, identifier: &str) -> bool {
        self.server_subscriptions.lock().contains_key(identifier)
    }
}
