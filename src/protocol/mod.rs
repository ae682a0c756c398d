//! The Action Cable wire format: what clients send and what the server sends back.
//!
//! Every message type lives here, so the rest of the crate never writes JSON by hand.
//! Frames that are sent to many clients (pings, broadcasts) are built once as
//! `Utf8Bytes`, whose clones share one buffer.
//!
//! - [`client`]: what clients send, parsed.
//! - [`frames`]: what the server sends, built.
//! - [`broadcast`]: what publishers send (AnyCable's broadcast payload).
//! - [`sse`]: the server's frames as Server-Sent Events.
//! - [`ds`]: Durable Streams reads' offsets and bodies.

pub mod broadcast;
pub mod client;
pub mod ds;
pub mod frames;
pub mod sse;

pub use client::*;
pub use frames::*;

/// Subprotocols we speak. The client's order decides (the first one it offers that
/// is here), as AnyCable's.
pub const SUBPROTOCOLS: &[&str] = &[PLAIN_PROTOCOL, EXTENDED_PROTOCOL];

/// Action Cable's own protocol.
pub const PLAIN_PROTOCOL: &str = "actioncable-v1-json";

/// AnyCable's extended protocol: the same frames, plus what §5 of AnyCable's protocol
/// doc adds (pongs from the client, `pong_timeout`, session restore). Commands such as
/// `history` and `ping` are served on either protocol, as AnyCable does.
pub const EXTENDED_PROTOCOL: &str = "actioncable-v1-ext-json";

/// What the HTTP transports read of one of the server's frames to re-encode it: its
/// type (none for a broadcast), the broadcast's message and its place in its stream.
#[derive(serde::Deserialize)]
pub(crate) struct ServerFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    pub stream_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub offset: Option<u64>,
}
