//! HTTP around the WebSocket: the request head (read on the server's own port or handed
//! over by Puma), the upgrade and its refusals, the Origin policy, and the plain
//! endpoints of the own port (`/health`, `POST /_broadcast`), the Server-Sent Events
//! request (`/events`), long polling's requests and responses (`/lp`), Durable Streams
//! reads (`/ds`).
//!
//! Not here: reading a head off a socket and routing it by path ([`crate::server`]),
//! identifying the client ([`crate::auth`]). Nothing here knows the server: the
//! endpoints ask it through [`endpoints::EndpointHandle`].

pub mod ds;
pub mod endpoints;
pub mod events;
pub mod handshake;
pub mod head;
pub mod origin;
pub mod poll;

pub use head::{parse_head, RequestHead};
pub use origin::{OriginPolicy, OriginRule, RubyRegexp};
