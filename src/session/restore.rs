//! The session as a restore gets it back ([`CachedSession`]), and taking that back
//! into a new session; what changed since the NATS broker last stored it.

use std::sync::atomic::Ordering;

use super::{PresenceJoins, Session};
use crate::broker::sessions::{CachedSession, CachedSubscription};

impl Session {
    /// Something a restore gets back changed (subscriptions, streams, state).
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_resumable(&self) {
        self.resumable.store(true, Ordering::Release);
    }

    pub(crate) fn is_resumable(&self) -> bool {
        self.resumable.load(Ordering::Acquire)
    }

    /// Whether it changed since the last call.
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// The session as a restore gets it back; `None` when it must not be restored
    /// (the server or the app closed it).
    pub fn to_cache(&self, app_connected: bool) -> Option<CachedSession> {
        if self.final_close.load(Ordering::Acquire) {
            return None;
        }
        let whispers = self.whispers.lock();
        let mut subscriptions: Vec<CachedSubscription> = self
            .server_subscriptions
            .lock()
            .iter()
            .map(|(identifier, whisper)| CachedSubscription {
                identifier: identifier.clone(),
                streams: Vec::new(),
                whisper: whisper.clone(),
                server_side: true,
                state: Vec::new(),
                presence: self.presence_stream(identifier),
                presence_clients: true,
                presence_asks: false,
            })
            .collect();
        subscriptions.extend(
            self.app_subscriptions
                .lock()
                .iter()
                .filter(|s| s.confirmed && !s.pinned)
                .map(|s| CachedSubscription {
                    identifier: s.identifier.to_string(),
                    streams: Vec::new(),
                    whisper: whispers.get(s.identifier.as_ref()).cloned(),
                    server_side: false,
                    state: self.state_of(&s.identifier),
                    presence: self.presence_stream(&s.identifier),
                    presence_clients: self.presence_joins(&s.identifier)
                        == Some(PresenceJoins::Clients),
                    presence_asks: self.presence_joins(&s.identifier) == Some(PresenceJoins::Ask),
                }),
        );
        for (stream, identifier) in self.streams.lock().iter() {
            if let Some(sub) = subscriptions
                .iter_mut()
                .find(|s| s.identifier == identifier.as_ref())
            {
                sub.streams.push(stream.to_string());
            }
        }
        Some(CachedSession {
            identifiers: self.identifiers().map(|v| v.to_string()),
            subscriptions,
            state: self.state_of(""),
            app_connected,
            expires_at: self.expires_at(),
            presence_owner: self.anonymous_owner.get().map(|o| o.to_string()),
        })
    }

    /// Takes back what a cached session had, without the hub (the caller joins the
    /// streams): subscriptions, whisper streams, identifiers.
    pub(crate) fn restore_from(&self, cached: &CachedSession) {
        if let Some(at) = cached.expires_at {
            self.set_expires_at(at);
        }
        if let Some(owner) = &cached.presence_owner {
            let _ = self.anonymous_owner.set(owner.as_str().into());
        }
        if let Some(ids) = cached
            .identifiers
            .as_deref()
            .and_then(|ids| serde_json::from_str(ids).ok())
        {
            self.set_identifiers(ids);
        }
        for sub in &cached.subscriptions {
            if let Some(stream) = &sub.presence {
                let joins = if sub.presence_clients || sub.server_side {
                    PresenceJoins::Clients
                } else if sub.presence_asks {
                    PresenceJoins::Ask
                } else {
                    PresenceJoins::App
                };
                self.presence_to(&sub.identifier, stream, joins);
            }
            if sub.server_side {
                self.server_subscriptions
                    .lock()
                    .insert(sub.identifier.clone(), sub.whisper.clone());
            } else {
                self.add_subscription(&sub.identifier);
                if let Some(stream) = &sub.whisper {
                    self.whisper_to(&sub.identifier, stream);
                }
                for (name, json) in &sub.state {
                    self.set_state(&sub.identifier, name, json.clone());
                }
            }
        }
        for (name, json) in &cached.state {
            self.set_state("", name, json.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who may join each presence set survives a restore: a `presence: :ask` set
    /// must not come back as one clients join freely (nor as app-only).
    #[test]
    fn presence_join_policies_survive_a_restore() {
        let (before, _rx) = Session::new(1, "a".into(), 1 << 20);
        for (id, joins) in [
            ("app", PresenceJoins::App),
            ("clients", PresenceJoins::Clients),
            ("ask", PresenceJoins::Ask),
        ] {
            before.add_subscription(id);
            before.presence_to(id, &format!("lobby:{id}"), joins);
        }
        let cached = before.to_cache(true).unwrap();
        let (after, _rx) = Session::new(2, "b".into(), 1 << 20);
        after.restore_from(&cached);
        for (id, joins) in [
            ("app", PresenceJoins::App),
            ("clients", PresenceJoins::Clients),
            ("ask", PresenceJoins::Ask),
        ] {
            assert_eq!(after.presence_joins(id), Some(joins), "{id}");
        }
    }

    /// A session the server or the app closed restores no one; one closed restorable
    /// (a server restart with sessions kept in NATS) is kept, and says so on the wire
    /// with a bare close, not a disconnect message.
    #[test]
    fn only_a_restorable_close_keeps_the_session() {
        use crate::session::{Closing, DisconnectReason, Outbound};
        let (told, mut rx) = Session::new(1, "a".into(), 1 << 20);
        told.close(DisconnectReason::SERVER_RESTART);
        assert!(told.to_cache(true).is_none());
        assert!(matches!(
            rx.try_recv(),
            Ok(Outbound::Close(Closing::Told(_)))
        ));
        let (kept, mut rx) = Session::new(2, "b".into(), 1 << 20);
        kept.close_restorable(false);
        kept.close(DisconnectReason::SERVER_RESTART); // the first close wins
        assert!(kept.to_cache(true).is_some());
        assert!(matches!(
            rx.try_recv(),
            Ok(Outbound::Close(Closing::Restorable))
        ));
        assert!(rx.try_recv().is_err());
    }
}
