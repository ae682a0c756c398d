//! The seam between the server and the application (cf. anycable-go's
//! `node/controller.go`). The server owns sockets and the protocol; a `Controller`
//! decides who may connect and runs channel code. The Ruby extension implements it by
//! running the app's `ApplicationCable` classes; tests implement it in Rust.
//!
//! A controller speaks back to the client through the [`Session`](crate::Session) it is
//! given (`transmit`, `close`) and subscribes it to streams through the
//! [`Hub`](crate::Hub), at any time, not only while a call is in flight: Action Cable's
//! timers and stream callbacks transmit on their own.

use std::future::Future;
use std::net::SocketAddr;

use crate::broker::sessions::CachedSession;
use crate::http::RequestHead;
use crate::protocol::ClientCommand;
use crate::session::{DisconnectReason, SessionRef};

pub struct ConnectRequest {
    pub session: SessionRef,
    pub head: RequestHead,
    pub remote_addr: Option<SocketAddr>,
    /// Set by whoever handed the socket over (Rack hijack): lets the application find
    /// the request env it kept for this connection. 0 when the server accepted it.
    pub env_token: u64,
    /// Set when a JWT identified the connection: its identifiers (the token's `ext`,
    /// JSON). The application builds its connection with them and must not run its
    /// own `connect`.
    pub identifiers: Option<String>,
    /// A restored session (its server-side subscriptions left out): the application
    /// rebuilds its channel objects (without `subscribed`) with their state; the hub
    /// already delivers their streams.
    pub restored: Option<CachedSession>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectReply {
    /// Send the welcome message and start reading commands.
    Accepted,
    /// `{"type":"disconnect",…}` with this reason (usually
    /// [`DisconnectReason::UNAUTHORIZED`]), then close.
    Rejected(DisconnectReason),
    /// The application failed; the client is told `server_error` and may reconnect.
    Failed(String),
}

pub struct CommandRequest {
    pub session: SessionRef,
    pub command: ClientCommand,
}

/// Commands of one session are handled one at a time, in order: the server reads the
/// next frame only when the previous command's future has finished.
pub trait Controller: Send + Sync + 'static {
    fn connect(&self, req: ConnectRequest) -> impl Future<Output = ConnectReply> + Send;
    fn command(&self, req: CommandRequest) -> impl Future<Output = ()> + Send;
    /// Called once for every accepted session, after its socket closed and after the
    /// command in flight (if any) has finished: never concurrently with a command.
    fn disconnect(&self, session: SessionRef) -> impl Future<Output = ()> + Send;
    /// A socket handed over with `env_token` will not reach [`Controller::connect`]
    /// (refused handshake, client gone, shutting down): whatever was kept for it can go.
    fn handoff_abandoned(&self, _env_token: u64) {}
}
