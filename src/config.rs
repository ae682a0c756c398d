//! Settings of the WebSocket server. Reading them from env and `config/anycable.yml`
//! is the Ruby side's job (one place, `AnyCableRs::Config`, which owns every name and
//! default); this struct only holds them. The defaults below are for the core's own
//! use (`cargo test`, the bench ceiling) and the internal sizes that are no setting;
//! the extension fills in every setting from Ruby.

use std::time::Duration;

use crate::auth::jwt::JwtConfig;
use crate::auth::streams::StreamsConfig;
use crate::broker::seal::SealKey;
use crate::broker::HistoryConfig;
pub use crate::broker::{BrokerKind, Replicas};
pub use crate::http::ds::DsConfig;
use crate::http::origin::OriginPolicy;
pub use crate::http::poll::PollConfig;
use crate::pubsub::PubSubConfig;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// WebSocket endpoint path, `ANYCABLE_PATH`.
    pub path: String,
    /// Health check path, `ANYCABLE_HEALTH_PATH`.
    pub health_path: String,
    /// `ANYCABLE_PING_INTERVAL`.
    pub ping_interval: Duration,
    /// `ANYCABLE_PONG_TIMEOUT`: an extended-protocol client that sends nothing for a
    /// ping interval plus this is disconnected as `no_pong`. Zero: off.
    pub pong_timeout: Duration,
    /// With a broker (`ANYCABLE_BROKER`), broadcasts get offsets and are kept for
    /// `history` within these limits. `None`: no broker (offsets off, history
    /// requests rejected).
    pub history: Option<HistoryConfig>,
    /// Which broker keeps the history when `history` is set.
    pub broker: BrokerKind,
    /// `ANYCABLE_BROKER_REPLICAS`: the NATS broker's copies of the history stream and
    /// the sessions bucket.
    pub broker_replicas: Replicas,
    /// `ANYCABLE_SESSIONS_TTL`: with a broker, an extended-protocol session is kept
    /// this long after its socket closed, for a restore. Zero: no restores.
    pub sessions_ttl: Duration,
    /// `ANYCABLE_SESSIONS_MAX_BYTES`: what the closed sessions kept for a restore may
    /// cost together (the memory broker's cache; the NATS broker's bucket); past it
    /// the oldest go first.
    pub sessions_max_bytes: usize,
    /// `ANYCABLE_PRESENCE_TTL`: with a broker, a presence record outlives its closed
    /// socket this long.
    pub presence_ttl: Duration,
    /// `ANYCABLE_MAX_SUBSCRIPTIONS`: subscriptions one connection may hold (the app's
    /// and the server's own); more are rejected. 0: no limit.
    pub max_subscriptions: usize,
    /// `ANYCABLE_MAX_IDENTIFIER_SIZE`: the longest channel identifier (bytes) a command
    /// may carry; a longer one is refused (a subscribe gets `reject_subscription`).
    pub max_identifier_size: usize,
    /// `ANYCABLE_WHISPERS_PER_SECOND`: whispers one connection may send each second;
    /// more are dropped, with a log line. 0: no limit.
    pub whispers_per_second: u32,
    /// Largest client message handled; bigger ones are logged and dropped.
    pub max_message_size: usize,
    /// A client that cannot take a frame within this time is disconnected as `too_slow`.
    pub write_timeout: Duration,
    /// Bytes queued for one client before it is disconnected as `too_slow`.
    pub max_pending_bytes: usize,
    /// Which Origins may upgrade (built by the Ruby side from Action Cable's settings
    /// or `ANYCABLE_ALLOWED_ORIGINS`); checked before the `101` on both entry points.
    pub origins: OriginPolicy,
    /// tungstenite's per-connection read buffer. Its default (128 KiB) would make 10k
    /// idle sockets cost over a gigabyte; Action Cable commands are small, and a bigger
    /// message grows the buffer for as long as it is read.
    pub read_buffer_size: usize,
    /// Time a client on the server's own port has to send its request head.
    pub handshake_timeout: Duration,
    /// `POST` endpoint for AnyCable's HTTP broadcasting on the server's own port.
    pub broadcast_path: Option<String>,
    /// Server-Sent Events at this path (`ANYCABLE_SSE`, `ANYCABLE_SSE_PATH`), on the
    /// own port and (handed over by the Rack middleware) Puma's. `None`: off.
    pub sse_path: Option<String>,
    /// Long polling (`ANYCABLE_POLL`, AnyCable Pro's `/lp`): `None` off.
    pub poll: Option<PollConfig>,
    /// Durable Streams reads (`ANYCABLE_DS`, AnyCable's `/ds`): `None` off.
    pub ds: Option<DsConfig>,
    /// Prometheus text at this path on the own port (`ANYCABLE_METRICS_HTTP`).
    pub metrics_path: Option<String>,
    /// `ANYCABLE_METRICS_TOKEN`: the metrics answer only `Authorization: Bearer
    /// <token>` (401 otherwise), on either port. `None`: anyone who reaches them.
    pub metrics_token: Option<String>,
    /// Labels on every sample (`ANYCABLE_METRICS_TAGS`).
    pub metrics_tags: Vec<(String, String)>,
    /// Connections open at once; more are refused before the upgrade (503). 0: no limit.
    pub max_conn: usize,
    /// A connection this old (plus up to 10% jitter) is told `server_restart`. Zero: never.
    pub max_conn_age: Duration,
    /// JWT identification (AnyCable's), when a secret is set.
    pub jwt: Option<JwtConfig>,
    /// `$pubsub` and Turbo Streams subscriptions verified and served without Ruby.
    pub streams: StreamsConfig,
    /// The pub/sub between server processes (`ANYCABLE_BROADCAST_ADAPTER`), if any. With
    /// the NATS broker it must be NATS: the broker's link is built on it.
    pub pubsub: Option<PubSubConfig>,
    /// Bearer token the broadcast endpoint requires; `None` accepts any request (for
    /// development, as AnyCable does without a key).
    pub broadcast_key: Option<String>,
    /// What the NATS broker seals the sessions it stores with (derived by the Ruby side
    /// from `ANYCABLE_SECRET`, else the app's `secret_key_base`). Required when it
    /// keeps sessions.
    pub sessions_key: Option<SealKey>,
}

/// The defaults of `ANYCABLE_HISTORY_LIMIT`, `_TTL` and `_MAX_BYTES`, as Ruby's.
impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            limit: 100,
            ttl: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            path: "/cable".into(),
            health_path: "/health".into(),
            ping_interval: Duration::from_secs(3),
            pong_timeout: Duration::ZERO,
            history: None,
            broker: BrokerKind::Memory,
            broker_replicas: Replicas::Auto,
            sessions_ttl: Duration::from_secs(300),
            presence_ttl: Duration::from_secs(15),
            sessions_max_bytes: 64 * 1024 * 1024,
            max_subscriptions: 256,
            max_identifier_size: 4096,
            whispers_per_second: 30,
            max_message_size: 64 * 1024,
            write_timeout: Duration::from_secs(2),
            max_pending_bytes: 1024 * 1024,
            origins: OriginPolicy::any(),
            read_buffer_size: 512,
            handshake_timeout: Duration::from_secs(10),
            broadcast_path: Some("/_broadcast".into()),
            broadcast_key: None,
            sse_path: None,
            poll: None,
            ds: None,
            metrics_path: None,
            metrics_tags: Vec::new(),
            metrics_token: None,
            max_conn: 0,
            max_conn_age: Duration::ZERO,
            streams: StreamsConfig::default(),
            jwt: None,
            pubsub: None,
            sessions_key: None,
        }
    }
}

impl ServerConfig {
    /// Refuses settings that cannot work together.
    pub fn check(&self) -> Result<(), String> {
        if self.ds.is_some() && self.history.is_none() {
            return Err("ds reads streams from the broker's history: it needs a broker (ANYCABLE_BROKER=memory or nats)".into());
        }
        if self.broker == BrokerKind::Nats
            && self.history.is_some()
            && !matches!(self.pubsub, Some(PubSubConfig::Nats { .. }))
        {
            return Err("broker nats keeps the history in NATS JetStream: it needs broadcast_adapter nats (ANYCABLE_BROADCAST_ADAPTER=nats, or ANYCABLE_EMBEDDED_NATS=true)".into());
        }
        if self.broker == BrokerKind::Nats
            && self.history.is_some()
            && !self.sessions_ttl.is_zero()
            && self.sessions_key.is_none()
        {
            return Err("broker nats stores sessions sealed with a key from the app's secret: it needs ANYCABLE_SECRET or a secret_key_base (or ANYCABLE_SESSIONS_TTL=0)".into());
        }
        Ok(())
    }

    /// Frames past this size end the connection (close code 1009): reading them to the
    /// end only to drop them would let a client make us buffer without bound.
    pub fn hard_message_limit(&self) -> usize {
        (self.max_message_size * 4).max(1024 * 1024)
    }
}
