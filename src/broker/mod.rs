//! The broker (`ANYCABLE_BROKER`): what outlives a broadcast or a socket. Streams'
//! history, so a client gets what it missed (`history`), and closed sessions, so a client
//! restores its own (`?sid=`). Memory keeps them in this process ([`history`],
//! [`sessions`]); NATS keeps them in JetStream for every node ([`jetstream`]).
//!
//! Not here: delivering to sockets ([`crate::hub`]), the pub/sub between nodes
//! ([`crate::pubsub`]; the NATS broker's link is one more adapter of it).

pub mod history;
pub mod jetstream;
pub mod sessions;

pub use history::{unix_now, Entry, History, HistoryConfig, HistoryError};
pub use sessions::{CachedSession, CachedSubscription, SessionCache};
