//! The pub/sub link to other server processes, built here from the config: the NATS
//! broker's JetStream link with `ANYCABLE_BROKER=nats`, else the adapter
//! `ANYCABLE_BROADCAST_ADAPTER` names. What comes back from it is applied here; what
//! enters over HTTP or as a whisper goes out through it, so every node gets it once.

use std::sync::{Arc, Weak};

use super::Inner;
use crate::broker::jetstream::{
    JetStreamLink, PresenceLink, SessionsSettings, StoreSettings, StoredSink,
};
use crate::controller::Controller;
use crate::pubsub::nats::NatsServers;
use crate::pubsub::{self, PubSub, PubSubConfig, PublishQueue};

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
                let presence = self.share_presence();
                Arc::new(JetStreamLink::start(
                    NatsServers::parse_with(servers, login)?,
                    subject.clone(),
                    StoreSettings {
                        history: history.clone(),
                        sessions,
                        replicas: self.config.broker_replicas,
                        presence,
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

    /// Presence shared with the other nodes through the NATS broker's link: this
    /// node's announcements queued for it, the others' applied here (their events to
    /// this node's subscribers). `None` with presence off.
    fn share_presence(self: &Arc<Self>) -> Option<PresenceLink> {
        let presence = self.hub.presence()?;
        let queue = Arc::new(PublishQueue::<String>::new("NATS presence"));
        let out = queue.clone();
        presence.share(node_name(), Arc::new(move |text| out.push(text)));
        let weak = Arc::downgrade(self);
        Some(PresenceLink {
            queue,
            deliver: Box::new(move |text: &str| {
                let Some(inner) = weak.upgrade() else { return };
                let Some(presence) = inner.hub.presence() else {
                    return;
                };
                match presence.apply_announcement(text) {
                    Ok(events) => {
                        for (stream, event) in events {
                            inner.hub.presence_event(&stream, &event);
                        }
                    }
                    Err(e) => crate::logging::once_a_second(&BAD_ANNOUNCEMENT_LOG, |more| {
                        log::warn!("{e}; ignored ({more} more since the last line)")
                    }),
                }
            }),
        })
    }

    /// Why the link makes this server unhealthy, if it does.
    pub(super) fn link_trouble(&self) -> Option<String> {
        let link = self.link.get()?;
        (!link.pubsub.is_connected()).then(|| format!("{} pub/sub disconnected", link.label))
    }
}

static BAD_ANNOUNCEMENT_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

/// This process's name among the nodes sharing presence: random, new at each start.
fn node_name() -> String {
    let mut bytes = [0u8; 9];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // No randomness (never seen): still unique among the nodes.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{}-{nanos}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
