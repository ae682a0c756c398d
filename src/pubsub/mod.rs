//! Pub/sub between server processes: a process publishes every broadcast and delivers
//! only what comes back, so each node delivers each broadcast exactly once. The
//! [`PubSub`] trait is what the server holds; each adapter implements it in its own
//! file ([`nats`], [`redis`], [`siblings`] for the Puma workers of one machine; the
//! NATS broker's link in [`crate::broker`]). [`PublishQueue`] bounds what waits for the
//! pub/sub server.
//!
//! Not here: what a broadcast looks like ([`crate::protocol::broadcast`]), delivering
//! it to sockets ([`crate::hub`]).

pub mod nats;
mod queue;
pub mod redis;
pub mod siblings;

pub use nats::{NatsLogin, NatsPubSub};
pub use queue::{
    PublishQueue, Queued, BACKLOG_AGE, DROPPED_PUBLISHES, DROP_REPORT_EVERY, MAX_QUEUED_AGE,
    MAX_QUEUED_BYTES, REPLAY_BYTES_PER_TICK, REPLAY_TICK,
};
pub use redis::RedisPubSub;
pub use siblings::SiblingPubSub;

pub trait PubSub: Send + Sync {
    /// Queues an AnyCable payload for publishing (never blocks).
    fn publish(&self, payload: String);
    /// Whether the link to the pub/sub server is up (for `/health`).
    fn is_connected(&self) -> bool;
    /// `publish`, and a future that resolves once what the pub/sub keeps of it (the
    /// NATS broker's stored messages) is kept: `false` if it never will be (dropped).
    /// `None`: nothing to wait for (the others).
    fn publish_stored(
        &self,
        payload: String,
    ) -> Option<futures_util::future::BoxFuture<'static, bool>> {
        self.publish(payload);
        None
    }
    /// At shutdown: stop taking publishes from others.
    fn close(&self) {}
    /// Broadcasts published here that the pub/sub server has not taken yet (queued,
    /// or, for the NATS broker, not yet acknowledged as stored): a shutdown waits for
    /// them, and says how many it could not.
    fn unsent(&self) -> usize {
        0
    }
}

/// What a server process subscribes to and publishes through
/// (`ANYCABLE_BROADCAST_ADAPTER` and its settings, as Ruby passes them).
#[derive(Clone)]
pub enum PubSubConfig {
    Nats {
        servers: String,
        subject: String,
        /// An nkey seed or a credentials file to log in with.
        login: NatsLogin,
    },
    Redis {
        url: String,
        channel: String,
    },
    /// `local`/`http` with several Puma workers: the workers relay among themselves.
    Siblings {
        dir: String,
    },
}

impl PubSubConfig {
    pub fn label(&self) -> &'static str {
        match self {
            PubSubConfig::Nats { .. } => "nats",
            PubSubConfig::Redis { .. } => "redis",
            PubSubConfig::Siblings { .. } => "workers relay",
        }
    }
}

/// Only the adapter: its URLs may hold a password.
impl std::fmt::Debug for PubSubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PubSubConfig({})", self.label())
    }
}

/// Starts the adapter `config` names; what comes back from it goes to `deliver`. Call
/// inside the runtime.
pub fn start(
    config: &PubSubConfig,
    deliver: impl Fn(&str) + Send + Sync + 'static,
) -> Result<std::sync::Arc<dyn PubSub>, String> {
    use std::sync::Arc;
    Ok(match config {
        PubSubConfig::Nats {
            servers,
            subject,
            login,
        } => Arc::new(NatsPubSub::start(servers, login, subject.clone(), deliver)?),
        PubSubConfig::Redis { url, channel } => {
            Arc::new(RedisPubSub::start(url, channel.clone(), deliver)?)
        }
        PubSubConfig::Siblings { dir } => Arc::new(
            SiblingPubSub::start(std::path::Path::new(dir), deliver)
                .map_err(|e| format!("workers relay in {dir}: {e}"))?,
        ),
    })
}
