//! Reading `AnyCableRs::Native.new`'s options. Ruby (`AnyCableRs::Config`) owns the
//! settings and their defaults; this only converts them, and refuses a key it does not
//! know (a misspelt or stale setting must not be ignored without a word).

use std::time::Duration;

use anycable_core::auth::streams::{decode_hex, StreamsConfig};
use anycable_core::auth::JwtConfig;
use anycable_core::broker::HistoryConfig;
use anycable_core::config::BrokerKind;
use anycable_core::http::{OriginPolicy, OriginRule, RubyRegexp};
use anycable_core::pubsub::PubSubConfig;
use anycable_core::ServerConfig;
use magnus::{Error, RArray, RHash, Ruby, Symbol};

pub struct Settings {
    pub server: ServerConfig,
    pub log_level: String,
    pub queue_size: usize,
    pub worker_threads: usize,
    /// Ruby threads that run jobs (for the metrics).
    pub rpc_pool_size: usize,
}

const KEYS: &[&str] = &[
    "path",
    "health_path",
    "ping_interval",
    "max_message_size",
    "write_timeout",
    "max_pending_bytes",
    "origins",
    "queue_size",
    "worker_threads",
    "log_level",
    "broadcast_path",
    "broadcast_key",
    "broadcast_adapter",
    "nats_servers",
    "nats_channel",
    "redis_url",
    "redis_channel",
    "siblings_dir",
    "metrics_path",
    "metrics_tags",
    "max_conn",
    "max_conn_age",
    "rpc_pool_size",
    "streams",
    "jwt",
    "pong_timeout",
    "broker",
    "history_limit",
    "history_ttl",
    "history_max_bytes",
    "sessions_ttl",
    "presence_ttl",
];

fn arg_error(ruby: &Ruby, msg: impl Into<String>) -> Error {
    Error::new(ruby.exception_arg_error(), msg.into())
}

fn opt<T: magnus::TryConvert>(ruby: &Ruby, opts: RHash, key: &str) -> Result<Option<T>, Error> {
    opts.lookup::<_, Option<T>>(ruby.to_symbol(key))
}

impl Settings {
    pub fn from_ruby(ruby: &Ruby, opts: RHash) -> Result<Self, Error> {
        let mut unknown = Vec::new();
        opts.foreach(|key: Symbol, _: magnus::Value| {
            let name = key.name()?.into_owned();
            if !KEYS.contains(&name.as_str()) {
                unknown.push(name);
            }
            Ok(magnus::r_hash::ForEach::Continue)
        })?;
        if !unknown.is_empty() {
            return Err(arg_error(
                ruby,
                format!(
                    "unknown AnyCableRs::Native settings: {}",
                    unknown.join(", ")
                ),
            ));
        }
        let defaults = ServerConfig::default();
        // Negative, NaN or huge values are the caller's error, not a panic.
        let secs = |key: &str, d: Duration| -> Result<Duration, Error> {
            match opt::<f64>(ruby, opts, key)? {
                None => Ok(d),
                Some(v) => Duration::try_from_secs_f64(v).map_err(|_| {
                    arg_error(
                        ruby,
                        format!("{key} must be a number of seconds >= 0, got {v}"),
                    )
                }),
            }
        };
        let mut server = ServerConfig {
            path: opt(ruby, opts, "path")?.unwrap_or(defaults.path),
            health_path: opt(ruby, opts, "health_path")?.unwrap_or(defaults.health_path),
            ping_interval: secs("ping_interval", defaults.ping_interval)?,
            pong_timeout: secs("pong_timeout", defaults.pong_timeout)?,
            history: history_config(ruby, opts)?,
            broker: match opt::<String>(ruby, opts, "broker")?.as_deref() {
                Some("nats") => BrokerKind::Nats,
                _ => BrokerKind::Memory,
            },
            sessions_ttl: secs("sessions_ttl", defaults.sessions_ttl)?,
            presence_ttl: secs("presence_ttl", defaults.presence_ttl)?,
            max_message_size: opt(ruby, opts, "max_message_size")?
                .unwrap_or(defaults.max_message_size),
            write_timeout: secs("write_timeout", defaults.write_timeout)?,
            max_pending_bytes: opt(ruby, opts, "max_pending_bytes")?
                .unwrap_or(defaults.max_pending_bytes),
            origins: match opt::<RHash>(ruby, opts, "origins")? {
                Some(policy) => origin_policy(ruby, policy)?,
                None => defaults.origins,
            },
            read_buffer_size: defaults.read_buffer_size,
            handshake_timeout: defaults.handshake_timeout,
            broadcast_path: opt(ruby, opts, "broadcast_path")?.or(defaults.broadcast_path),
            broadcast_key: opt(ruby, opts, "broadcast_key")?,
            metrics_path: opt(ruby, opts, "metrics_path")?,
            metrics_tags: match opt::<String>(ruby, opts, "metrics_tags")? {
                Some(tags) => anycable_core::metrics::parse_tags(&tags)
                    .map_err(|e| arg_error(ruby, format!("ANYCABLE_METRICS_TAGS: {e}")))?,
                None => Vec::new(),
            },
            max_conn: opt(ruby, opts, "max_conn")?.unwrap_or(0),
            max_conn_age: secs("max_conn_age", Duration::ZERO)?,
            jwt: match opt::<RHash>(ruby, opts, "jwt")? {
                Some(h) => Some(JwtConfig {
                    key: opt::<String>(ruby, h, "secret_hex")?
                        .as_deref()
                        .and_then(decode_hex)
                        .ok_or_else(|| arg_error(ruby, "jwt: secret_hex is missing or not hex"))?,
                    param: opt(ruby, h, "param")?.unwrap_or_else(|| "jid".into()),
                    enforce: opt(ruby, h, "enforce")?.unwrap_or(false),
                }),
                None => None,
            },
            streams: match opt::<RHash>(ruby, opts, "streams")? {
                Some(h) => streams_config(ruby, h)?,
                None => StreamsConfig::default(),
            },
            pubsub: None,
        };
        let pubsub = match opt::<String>(ruby, opts, "broadcast_adapter")?.as_deref() {
            Some("nats") => Some(PubSubConfig::Nats {
                servers: opt(ruby, opts, "nats_servers")?
                    .unwrap_or_else(|| "nats://localhost:4222".into()),
                subject: opt(ruby, opts, "nats_channel")?.unwrap_or_else(|| "__anycable__".into()),
            }),
            Some("redis") => Some(PubSubConfig::Redis {
                url: opt(ruby, opts, "redis_url")?
                    .unwrap_or_else(|| "redis://localhost:6379".into()),
                channel: opt(ruby, opts, "redis_channel")?.unwrap_or_else(|| "__anycable__".into()),
            }),
            _ => {
                opt::<String>(ruby, opts, "siblings_dir")?.map(|dir| PubSubConfig::Siblings { dir })
            }
        };
        server.pubsub = pubsub;
        server.check().map_err(|e| arg_error(ruby, e))?;
        Ok(Settings {
            server,
            log_level: opt(ruby, opts, "log_level")?.unwrap_or_else(|| "info".into()),
            queue_size: opt(ruby, opts, "queue_size")?.unwrap_or(1024),
            worker_threads: opt(ruby, opts, "worker_threads")?.unwrap_or(2usize).max(1),
            rpc_pool_size: opt(ruby, opts, "rpc_pool_size")?.unwrap_or(0),
        })
    }
}

/// `broker:` "none" (or unset), "memory" or "nats", with `history_limit:` and
/// `history_ttl:` (seconds). Anything else is refused: a broker that is not there must
/// not look as if it were.
fn history_config(ruby: &Ruby, opts: RHash) -> Result<Option<HistoryConfig>, Error> {
    match opt::<String>(ruby, opts, "broker")?.as_deref() {
        None | Some("none") => Ok(None),
        Some("memory" | "nats") => {
            let defaults = HistoryConfig::default();
            let limit: usize = opt(ruby, opts, "history_limit")?.unwrap_or(defaults.limit);
            let ttl: f64 = opt(ruby, opts, "history_ttl")?.unwrap_or(defaults.ttl.as_secs_f64());
            if limit == 0 || !(ttl.is_finite() && ttl >= 1.0) {
                return Err(arg_error(
                    ruby,
                    "history_limit must be at least 1 and history_ttl at least 1 second",
                ));
            }
            let max_bytes: usize =
                opt(ruby, opts, "history_max_bytes")?.unwrap_or(defaults.max_bytes);
            if max_bytes < 1024 {
                return Err(arg_error(ruby, "history_max_bytes must be at least 1024"));
            }
            Ok(Some(HistoryConfig {
                limit,
                ttl: Duration::try_from_secs_f64(ttl)
                    .map_err(|_| arg_error(ruby, format!("history_ttl too large: {ttl}")))?,
                max_bytes,
            }))
        }
        Some(other) => Err(arg_error(
            ruby,
            format!("broker {other:?} is not supported here (none, memory or nats)"),
        )),
    }
}

/// `{any:, same_as_host:, exact: [String], patterns: [{source:, ignore_case:, extended:,
/// multiline:}], hosts: [String]}`, as `AnyCableRs::OriginPolicy` builds it. A pattern
/// the regex crate cannot compile is an ArgumentError naming it.
pub fn origin_policy(ruby: &Ruby, h: RHash) -> Result<OriginPolicy, Error> {
    let flag = |key: &str| -> Result<bool, Error> { Ok(opt(ruby, h, key)?.unwrap_or(false)) };
    let strings =
        |key: &str| -> Result<Vec<String>, Error> { Ok(opt(ruby, h, key)?.unwrap_or_default()) };
    let mut rules: Vec<OriginRule> = strings("exact")?
        .into_iter()
        .map(OriginRule::Exact)
        .collect();
    rules.extend(strings("hosts")?.into_iter().map(OriginRule::Host));
    if let Some(patterns) = opt::<RArray>(ruby, h, "patterns")? {
        for p in patterns.into_iter() {
            let p = RHash::from_value(p)
                .ok_or_else(|| arg_error(ruby, "origin patterns must be Hashes"))?;
            let re = RubyRegexp {
                source: opt(ruby, p, "source")?.unwrap_or_default(),
                ignore_case: opt(ruby, p, "ignore_case")?.unwrap_or(false),
                extended: opt(ruby, p, "extended")?.unwrap_or(false),
                multiline: opt(ruby, p, "multiline")?.unwrap_or(false),
            };
            rules.push(OriginRule::Pattern(
                OriginPolicy::compile(&re).map_err(|e| arg_error(ruby, e))?,
            ));
        }
    }
    Ok(OriginPolicy {
        any: flag("any")?,
        same_as_host: flag("same_as_host")?,
        rules,
    })
}

/// `{secret_hex:, public:, whisper:, presence:, turbo_key_hex:}`, as `AnyCableRs::Config` builds it.
fn streams_config(ruby: &Ruby, h: RHash) -> Result<StreamsConfig, Error> {
    let key = |name: &str| -> Result<Option<Vec<u8>>, Error> {
        match opt::<String>(ruby, h, name)? {
            None => Ok(None),
            Some(hex) => decode_hex(&hex)
                .map(Some)
                .ok_or_else(|| arg_error(ruby, format!("streams: {name} is not hex"))),
        }
    };
    Ok(StreamsConfig {
        secret: key("secret_hex")?,
        public: opt(ruby, h, "public")?.unwrap_or(false),
        whisper: opt(ruby, h, "whisper")?.unwrap_or(false),
        presence: opt(ruby, h, "presence")?.unwrap_or(false),
        turbo_key: key("turbo_key_hex")?,
    })
}

/// `AnyCableRs::Native.check_origins(policy)`: raises what `new` would, so a pattern
/// the server cannot check stops the app at boot rather than at the first socket.
pub fn check_origins(ruby: &Ruby, policy: RHash) -> Result<(), Error> {
    origin_policy(ruby, policy).map(|_| ())
}
