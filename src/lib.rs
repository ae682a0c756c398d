//! anycable-core: the pure-Rust half of anycable-rs.
//!
//! It speaks the Action Cable wire protocol (as AnyCable does), keeps sessions and the
//! stream → subscriber hub, and asks a [`Controller`] what to do on connect, on each
//! command and on disconnect. It knows nothing about Ruby: the extension in
//! `ext/anycable_rs` implements [`Controller`] by calling the app's Action Cable classes,
//! and `cargo test` drives it with a Rust controller.
//!
//! The modules, from the bottom up (each uses only those above it):
//! - [`logging`], [`metrics`]: bounded log lines and AnyCable's metrics.
//! - [`protocol`]: the wire format (client frames, server frames, broadcast payloads).
//! - [`http`]: request heads, the upgrade, Origin checks, the plain endpoints.
//! - [`auth`]: JWT identification and signed stream names.
//! - [`pubsub`]: the link between server processes, one adapter per file.
//! - [`broker`]: stream history and sessions kept for a restore (memory or NATS).
//! - [`session`]: one client connection as the rest see it (outbox, subscriptions).
//! - [`hub`]: who listens to which stream; presence.
//! - [`config`], [`controller`]: the server's settings and its seam to the app.
//! - [`server`]: accepting sockets and running each connection's task.

pub mod auth;
pub mod broker;
pub mod config;
pub mod controller;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub mod session;

pub use config::ServerConfig;
pub use controller::{CommandRequest, ConnectReply, ConnectRequest, Controller};
pub use hub::Hub;
pub use protocol::broadcast::BroadcastError;
pub use server::Server;
pub use session::{DisconnectReason, Session};
