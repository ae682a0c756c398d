//! The pub/sub link to other server processes, built here from the config: the NATS
//! broker's JetStream link with `ANYCABLE_BROKER=nats`, else the adapter
//! `ANYCABLE_BROADCAST_ADAPTER` names. What comes back from it is applied here; what
//! enters over HTTP or as a whisper goes out through it, so every node gets it once.

use std::sync::{Arc, Weak};

use super::Inner;
use crate::broker::jetstream::{JetStreamLink, SessionsSettings, StoreSettings, StoredSink};
use crate::controller::Controller;
use crate::pubsub::nats::NatsServers;
use crate::pubsub::{self, PubSub, PubSubConfig};

/// A started link and what `/health` calls it.
pub(super) struct Link {
    pub(super) pubsub: Arc<dyn PubSub>,
    pub(super) label: &'static str,
}

impl<C: Controller> Inner<C> {
    /// Starts the link the config names (none: this process is alone). The link's
    /// callbacks hold the server weakly: it owns the link.
    pub(super) fn start_link(self: &Arc<Self>) -> Result<(), String> {
        let Some(config) = &self.config.pubsub else {
            return Ok(());
        };
        if self.link.get().is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let deliver = move |payload: &str| {
            if let Some(inner) = weak.upgrade() {
                if let Err(e) = inner.apply_broadcast(payload) {
                    log::error!("broadcast from the pub/sub dropped: {e}");
                }
            }
        };
        let pubsub: Arc<dyn PubSub> = match (config, self.config.history.as_ref()) {
            (
                PubSubConfig::Nats {
                    servers,
                    subject,
                    login,
                },
                Some(history),
            ) if self.broker.is_nats() => {
                let weak: Weak<Self> = Arc::downgrade(self);
                let stored: StoredSink = Arc::new(move |stream, data, exclude, epoch, offset| {
                    if let Some(inner) = weak.upgrade() {
                        inner.deliver_stored(stream, data, exclude, epoch, offset);
                    }
                });
                let weak: Weak<Self> = Arc::downgrade(self);
                let weak_sessions = weak.clone();
                let sessions = match &self.config.sessions_key {
                    _ if self.config.sessions_ttl.is_zero() => None,
                    Some(key) => Some(SessionsSettings {
                        ttl: self.config.sessions_ttl,
                        max_bytes: self.config.sessions_max_bytes,
                        key: key.clone(),
                    }),
                    None => {
                        return Err(
                            "the NATS broker keeps sessions only sealed: no sessions key".into(),
                        )
                    }
                };
                Arc::new(JetStreamLink::start(
                    NatsServers::parse_with(servers, login)?,
                    subject.clone(),
                    StoreSettings {
                        history: history.clone(),
                        sessions,
                        replicas: self.config.broker_replicas,
                    },
                    deliver,
                    stored,
                    move |reader| {
                        if let Some(inner) = weak.upgrade() {
                            inner.broker.nats_history_ready(reader);
                        }
                    },
                    move |sessions| {
                        if let Some(inner) = weak_sessions.upgrade() {
                            inner.broker.nats_sessions_ready(sessions);
                        }
                    },
                )?)
            }
            (config, _) => pubsub::start(config, deliver)?,
        };
        let _ = self.link.set(Link {
            pubsub,
            label: config.label(),
        });
        Ok(())
    }

    /// Why the link makes this server unhealthy, if it does.
    pub(super) fn link_trouble(&self) -> Option<String> {
        let link = self.link.get()?;
        (!link.pubsub.is_connected()).then(|| format!("{} pub/sub disconnected", link.label))
    }
}
