//! The NATS broker (`ANYCABLE_BROKER=nats`): stream history kept in NATS JetStream, so
//! every node of a cluster gives out the same offsets and any node can replay what a
//! client missed — across restarts of the node that served it.
//!
//! How a broadcast travels:
//! 1. Whoever broadcasts (a server process here, or a process that serves no sockets,
//!    from Ruby) publishes it to JetStream on the stream's subject
//!    ([`subject_for`]) and waits for the ack: it is stored exactly once, and the
//!    stream's sequence number is its offset.
//! 2. Every server process reads the JetStream stream with an ordered consumer
//!    (`consumer.rs`) and delivers each message, with its offset and the stream's
//!    epoch, to its own subscribers: once per node, in offset order. It keeps the
//!    recent ones in memory (`recent.rs`) for replays.
//!
//! Transient broadcasts (whispers) and remote disconnects are not stored: they go over
//! the core NATS subject as with the NATS pub/sub.
//!
//! One JetStream stream ([`STREAM`]) holds every Action Cable stream's history, one
//! subject each, at most `ANYCABLE_HISTORY_LIMIT` messages per subject for
//! `ANYCABLE_HISTORY_TTL` (AnyCable-Go makes a JetStream stream per Action Cable
//! stream; one stream with per-subject limits scales to many streams). Offsets are the
//! stream's sequence: they rise within an Action Cable stream but are not contiguous.
//! The epoch comes from the JetStream stream's creation time: it changes only when
//! the stream is deleted and made anew, and then every position a client holds is
//! refused.

mod consumer;
mod history;
mod lanes;
mod link;
mod recent;
mod sessions;

pub use consumer::consumed;
pub use history::StoredHistory;
pub use link::{JetStreamLink, PresenceLink, StoreSettings, StoredSink};
pub use sessions::{SessionsSettings, StoredSessions, SESSIONS_BUCKET};

use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, stream, ErrorCode};
use base64::Engine;

use crate::protocol::broadcast::{self, exclude_digest, sha256_hex, BroadcastMessage};

/// The JetStream stream that keeps the history.
pub const STREAM: &str = "anycable_history";
/// Its subjects: `anycable_history.<token>`, one per Action Cable stream.
pub const SUBJECT_PREFIX: &str = "anycable_history.";
/// Encoded names longer than this are hashed: NATS refuses control lines over 4 KiB.
const MAX_TOKEN: usize = 1024;
/// The subject of `stream`'s history: `s` and the name in unpadded base64url, or `h`
/// and its SHA-256 in hex when that would be long. Ruby computes the same
/// (`AnyCableRs::Broadcasting::JetStream.subject_for`).
pub fn subject_for(stream: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stream);
    if encoded.len() <= MAX_TOKEN {
        return format!("{SUBJECT_PREFIX}s{encoded}");
    }
    format!("{SUBJECT_PREFIX}h{}", sha256_hex(stream.as_bytes()))
}

/// The stored body of a broadcast: the AnyCable message, as published, the socket it
/// skips named by its [`exclude_digest`].
pub(super) fn body(stream: &str, data: &str, exclude_socket: Option<&str>) -> String {
    let mut message = serde_json::json!({"stream": stream, "data": data});
    if let Some(sid) = exclude_socket {
        message["meta"] = serde_json::json!({"exclude_socket": exclude_digest(sid)});
    }
    message.to_string()
}

/// (stream, data, exclude_socket) of a stored body.
pub(super) fn parse_body(payload: &[u8]) -> Option<(String, String, Option<String>)> {
    let text = std::str::from_utf8(payload).ok()?;
    match broadcast::parse(text).ok()?.into_iter().next()? {
        BroadcastMessage::Stream {
            stream,
            data,
            exclude_socket,
            ..
        } => Some((stream, data, exclude_socket)),
        BroadcastMessage::Disconnect { .. } => None,
    }
}

/// How many copies of the history stream and the sessions bucket JetStream keeps
/// (`ANYCABLE_BROKER_REPLICAS`), each on another server: with three, a machine lost
/// loses nothing and the stream goes on (two of three are a majority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// [`Replicas::AUTO_MAX`] once the cluster has that many JetStream servers, else
    /// one (a single server, or a cluster still forming: grown when the servers are
    /// there, looked at every few seconds). Never fewer than a stream has.
    Auto,
    /// Exactly this many: until the cluster has the servers, JetStream refuses the
    /// stream and the broker retries.
    Exactly(usize),
}

impl Replicas {
    /// What `Auto` grows to.
    pub const AUTO_MAX: usize = 3;

    fn wanted(self) -> usize {
        match self {
            Replicas::Auto => Self::AUTO_MAX,
            Replicas::Exactly(n) => n,
        }
    }
}

/// How often `Replicas::Auto` looks whether a stream can grow.
pub(super) const GROW_EVERY: Duration = Duration::from_secs(5);

/// JetStream's answer when a stream wants more servers than there are: too few in the
/// cluster (no suitable peers, insufficient resources), or no cluster.
fn too_few_servers(e: &CreateStreamError) -> bool {
    match e.kind() {
        CreateStreamErrorKind::JetStream(err) => [
            ErrorCode::CLUSTER_NO_PEERS,
            ErrorCode::INSUFFICIENT_RESOURCES,
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
        ]
        .contains(&err.error_code()),
        _ => false,
    }
}

/// The JetStream stream `wanted` names (made from `wanted` with the replicas
/// `replicas` asks for, if missing), and its info.
pub(super) async fn get_or_create(
    js: &jetstream::Context,
    mut wanted: stream::Config,
    what: &str,
    replicas: Replicas,
) -> Result<(stream::Stream, stream::Info), String> {
    wanted.num_replicas = replicas.wanted();
    let made = match js.get_or_create_stream(wanted.clone()).await {
        Err(e) if replicas == Replicas::Auto && too_few_servers(&e) => {
            wanted.num_replicas = 1;
            js.get_or_create_stream(wanted).await
        }
        other => other,
    };
    let mut stream = made.map_err(|e| format!("{what}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .clone();
    Ok((stream, info))
}

/// Brings the stream `name`'s replicas to what `replicas` asks: `Exactly(n)` that
/// many (an error while the cluster cannot), `Auto` grown to [`Replicas::AUTO_MAX`]
/// when the servers are there, never shrunk. The replicas it has after.
pub(super) async fn fit_replicas(
    js: &jetstream::Context,
    name: &str,
    what: &str,
    replicas: Replicas,
) -> Result<usize, String> {
    // get_stream fetched the stream's info: its config is current.
    let config = js
        .get_stream(name)
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .cached_info()
        .config
        .clone();
    let have = config.num_replicas.max(1);
    let want = match replicas {
        Replicas::Auto if have >= Replicas::AUTO_MAX => return Ok(have),
        other => other.wanted(),
    };
    if have == want {
        return Ok(have);
    }
    let mut update = config;
    update.num_replicas = want;
    match js.update_stream(&update).await {
        Ok(_) => {
            log::info!("NATS JetStream: {what} is now kept on {want} servers (it was on {have})");
            Ok(want)
        }
        Err(e) if replicas == Replicas::Auto && too_few_servers(&e) => Ok(have),
        Err(e) => Err(format!(
            "{what}: {want} replicas (ANYCABLE_BROKER_REPLICAS), it has {have}: {e}"
        )),
    }
}

/// nats-server refuses a duplicate window longer than `max_age` (a stream made with
/// the default window of 2 min keeps it when its max_age is lowered).
pub(super) fn fit_duplicate_window(config: &mut stream::Config) {
    if !config.max_age.is_zero() {
        config.duplicate_window = config.duplicate_window.min(config.max_age);
    }
}

/// The epoch of a history stream made at `created`, to the second: each replica
/// records its own time of making (they differ by microseconds), and a node that a
/// restart has answered by another replica must see the same epoch, or it refuses
/// every position the others gave. (A stream made anew within the same second would
/// share it; JetStream keeps no better mark on every replica before nats-server 2.10's
/// stream metadata.)
pub(super) fn epoch_of(created: time::OffsetDateTime) -> String {
    let seconds = created.unix_timestamp() as u64;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seconds.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_and_distinct() {
        assert_eq!(subject_for("chat_42"), "anycable_history.sY2hhdF80Mg");
        assert_eq!(subject_for(""), "anycable_history.s");
        assert_eq!(subject_for("a b.c>*"), "anycable_history.sYSBiLmM-Kg");
        // The same vectors as spec/unit/jetstream_subject_spec.rb (Ruby names them too).
        assert_eq!(subject_for("ü/é"), "anycable_history.sw7wvw6k");
        assert_eq!(subject_for(&"x".repeat(768)).len(), 1042);
        let long = "x".repeat(2000);
        let hashed = subject_for(&long);
        assert_eq!(
            hashed,
            "anycable_history.h5c0e0ea421571c300b5df6aec0a118b5c3dc02e0683a546341d5efc689df2f58"
        );
        assert_ne!(subject_for(&"x".repeat(2001)), hashed);
    }

    #[test]
    fn bodies_round_trip() {
        // The skipped socket is stored by its digest (spec/unit/jetstream_subject_spec.rb
        // has the same vector), once.
        let digest = "sha256:53453a19cbc7f60351e13709237b6025007b6bf5a6974aabaa03d5e19ea1ada3";
        let b = body("s", r#"{"a":1}"#, Some("sid1"));
        let (stream, data, exclude) = parse_body(b.as_bytes()).unwrap();
        assert_eq!((stream.as_str(), data.as_str()), ("s", r#"{"a":1}"#));
        assert_eq!(exclude.as_deref(), Some(digest));
        assert_eq!(exclude_digest(digest), digest);
        let again = body("s", "1", exclude.as_deref());
        assert_eq!(parse_body(again.as_bytes()).unwrap().2, exclude);
        assert_eq!(parse_body(b"{\"command\":\"x\"}"), None);
    }
}
