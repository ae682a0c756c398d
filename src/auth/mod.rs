//! Who a client is and what it may read, decided without Ruby: AnyCable's JWT
//! identification ([`jwt`]) and signed stream names for `$pubsub` and Turbo Streams
//! ([`streams`]).
//!
//! Not here: the app's own `connect` (cookies, sessions), which the
//! [`Controller`](crate::Controller) runs.

pub mod jwt;
pub mod streams;

pub use jwt::{JwtConfig, JwtError};
pub use streams::{Resolution, StreamsConfig};
