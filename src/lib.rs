//! anycable-core: the pure-Rust half of anycable-rs.
//!
//! It speaks the Action Cable wire protocol (as AnyCable does), keeps sessions and the
//! stream → subscriber hub, and asks a [`Controller`] what to do on connect, on each
//! command and on disconnect. It knows nothing about Ruby: the extension in
//! `ext/anycable_rs` implements [`Controller`] by calling the app's Action Cable classes,
//! and `cargo test` drives it with a Rust controller.

pub mod broadcast;
pub mod config;
mod connection;
pub mod controller;
mod endpoints;
pub mod handshake;
pub mod history;
pub mod hub;
pub mod jetstream;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod origin;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod redis;
pub mod server;
pub mod session;
pub mod session_cache;
pub mod siblings;
pub mod streams;

pub use config::ServerConfig;
pub use controller::{CommandRequest, ConnectReply, ConnectRequest, Controller};
pub use hub::Hub;
pub use server::{BroadcastError, Server};
pub use session::{DisconnectReason, Session};
