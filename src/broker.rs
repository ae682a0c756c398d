//! What the pub/sub adapters ([`crate::nats`], [`crate::redis`]) have in common: a server
//! process publishes every broadcast and delivers only what comes back, so each node
//! delivers each broadcast exactly once.

pub trait Broker: Send + Sync {
    /// Queues an AnyCable payload for publishing (never blocks).
    fn publish(&self, payload: String);
    /// Whether the link to the pub/sub server is up (for `/health`).
    fn is_connected(&self) -> bool;
}

impl Broker for crate::nats::NatsBroker {
    fn publish(&self, payload: String) {
        crate::nats::NatsBroker::publish(self, payload)
    }
    fn is_connected(&self) -> bool {
        crate::nats::NatsBroker::is_connected(self)
    }
}

impl Broker for crate::redis::RedisBroker {
    fn publish(&self, payload: String) {
        crate::redis::RedisBroker::publish(self, payload)
    }
    fn is_connected(&self) -> bool {
        crate::redis::RedisBroker::is_connected(self)
    }
}
