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

pub use nats::NatsPubSub;
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
    /// At shutdown: stop taking publishes from others.
    fn close(&self) {}
}
