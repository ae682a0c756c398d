//! Reading `AnyCableRs::Native.new`'s options. Ruby (`AnyCableRs::Config`) owns the
//! settings, their names and their defaults, and passes every one; this only converts
//! them. A key nothing here reads is refused (a misspelt or stale setting must not be
//! ignored without a word), and so is a missing one (there is no default here to fall
//! back on).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use anycable_core::auth::streams::{decode_hex, StreamsConfig};
use anycable_core::auth::JwtConfig;
use anycable_core::broker::seal::SealKey;
use anycable_core::broker::HistoryConfig;
use anycable_core::config::{BrokerKind, DsConfig, PollConfig, Replicas};
use anycable_core::http::{OriginPolicy, OriginRule, RubyRegexp};
use anycable_core::pubsub::{NatsLogin, PubSubConfig};
use anycable_core::ServerConfig;
use magnus::{Error, RArray, RHash, Ruby, Symbol};

pub struct Settings {
    pub server: ServerConfig,
    pub log_level: String,
    pub queue_size: usize,
    /// `ANYCABLE_MAX_CALLBACK_JOBS`.
    pub max_callback_jobs: usize,
    pub worker_threads: usize,
    /// Ruby threads that run jobs (for the metrics).
    pub rpc_pool_size: usize,
}

fn arg_error(ruby: &Ruby, msg: impl Into<String>) -> Error {
    Error::new(ruby.exception_arg_error(), msg.into())
}

fn opt<T: magnus::TryConvert>(ruby: &Ruby, opts: RHash, key: &str) -> Result<Option<T>, Error> {
    opts.lookup::<_, Option<T>>(ruby.to_symbol(key))
}

/// The options hash as it is read: every key Ruby passes must be read (a key nothing
/// reads is a misspelt or stale setting), and every key read without a fallback must
/// be there (Ruby owns the defaults: this side has none to fill in).
struct Opts<'r> {
    ruby: &'r Ruby,
    hash: RHash,
    what: &'static str,
    unread: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<&'static str>>,
}

impl<'r> Opts<'r> {
    fn new(ruby: &'r Ruby, hash: RHash, what: &'static str) -> Result<Self, Error> {
        let mut keys = BTreeSet::new();
        hash.foreach(|key: Symbol, _: magnus::Value| {
            keys.insert(key.name()?.into_owned());
            Ok(magnus::r_hash::ForEach::Continue)
        })?;
        Ok(Opts {
            ruby,
            hash,
            what,
            unread: RefCell::new(keys),
            missing: RefCell::new(Vec::new()),
        })
    }

    /// A setting whose `nil` means "none".
    fn opt<T: magnus::TryConvert>(&self, key: &'static str) -> Result<Option<T>, Error> {
        self.unread.borrow_mut().remove(key);
        opt(self.ruby, self.hash, key)
    }

    /// A setting Ruby always passes. Missing, it is reported by [`Opts::finish`].
    fn get<T: magnus::TryConvert + Default>(&self, key: &'static str) -> Result<T, Error> {
        match self.opt(key)? {
            Some(v) => Ok(v),
            None => {
                self.missing.borrow_mut().push(key);
                Ok(T::default())
            }
        }
    }

    /// Seconds, as a Duration: negative, NaN or huge values are the caller's error,
    /// not a panic.
    fn secs(&self, key: &'static str) -> Result<Duration, Error> {
        let v: f64 = self.get(key)?;
        Duration::try_from_secs_f64(v).map_err(|_| {
            arg_error(
                self.ruby,
                format!("{key} must be a number of seconds >= 0, got {v}"),
            )
        })
    }

    /// Refuses keys nothing read, then keys that were needed and not given.
    fn finish(self) -> Result<(), Error> {
        let unknown = self.unread.into_inner();
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.into_iter().collect();
            return Err(arg_error(
                self.ruby,
                format!("unknown {} settings: {}", self.what, list.join(", ")),
            ));
        }
        let missing = self.missing.into_inner();
        if !missing.is_empty() {
            return Err(arg_error(
                self.ruby,
                format!(
                    "{} settings missing: {} (AnyCableRs::Config passes every one)",
                    self.what,
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl Settings {
    pub fn from_ruby(ruby: &Ruby, opts: RHash) -> Result<Self, Error> {
        let o = Opts::new(ruby, opts, "AnyCableRs::Native")?;
        // Internal sizes that are no settings keep the core's values.
        let internal = ServerConfig::default();
        let broker: String = o.get("broker")?;
        let history = history_config(&o, &broker)?;
        let jwt = match o.opt::<RHash>("jwt")? {
            Some(h) => Some(jwt_config(ruby, h)?),
            None => None,
        };
        let streams = match o.opt::<RHash>("streams")? {
            Some(h) => streams_config(ruby, h)?,
            None => StreamsConfig::default(),
        };
        let mut server = ServerConfig {
            path: o.get("path")?,
            health_path: o.get("health_path")?,
            ping_interval: o.secs("ping_interval")?,
            pong_timeout: o.secs("pong_timeout")?,
            history,
            broker: match broker.as_str() {
                "nats" => BrokerKind::Nats,
                _ => BrokerKind::Memory,
            },
            broker_replicas: broker_replicas(&o)?,
            sessions_ttl: o.secs("sessions_ttl")?,
            presence_ttl: o.secs("presence_ttl")?,
            sessions_max_bytes: o.get("sessions_max_bytes")?,
            max_subscriptions: o.get("max_subscriptions")?,
            max_identifier_size: o.get("max_identifier_size")?,
            whispers_per_second: o.get("whispers_per_second")?,
            max_message_size: o.get("max_message_size")?,
            write_timeout: o.secs("write_timeout")?,
            max_pending_bytes: o.get("max_pending_bytes")?,
            origins: match o.opt::<RHash>("origins")? {
                Some(policy) => origin_policy(ruby, policy)?,
                None => internal.origins,
            },
            read_buffer_size: internal.read_buffer_size,
            handshake_timeout: internal.handshake_timeout,
            broadcast_path: o.opt("broadcast_path")?,
            sse_path: o.opt("sse_path")?,
            poll: {
                // Every key read, whether polling is on or not (unread keys are refused).
                let path = o.opt::<String>("poll_path")?;
                let config = PollConfig {
                    path: String::new(),
                    interval: o.secs("poll_interval")?,
                    flush_interval: Duration::from_millis(o.get::<u64>("poll_flush_interval")?),
                    keepalive_timeout: o.secs("poll_keepalive_timeout")?,
                    max_request_size: o.get("poll_max_request_size")?,
                };
                path.map(|path| PollConfig { path, ..config })
            },
            ds: {
                // Every key read, whether reads are on or not (unread keys are refused).
                let path = o.opt::<String>("ds_path")?;
                let config = DsConfig {
                    path: String::new(),
                    skip_auth: o.get("ds_skip_auth")?,
                    poll_interval: o.secs("ds_poll_interval")?,
                    sse_ttl: o.secs("ds_sse_ttl")?,
                    // Not a setting.
                    keepalive: DsConfig::default().keepalive,
                };
                path.map(|path| DsConfig { path, ..config })
            },
            // Empty is unset (Ruby says so at boot): "" would match a missing header.
            broadcast_key: o.opt::<String>("broadcast_key")?.filter(|k| !k.is_empty()),
            metrics_path: o.opt("metrics_path")?,
            metrics_token: o.opt::<String>("metrics_token")?.filter(|k| !k.is_empty()),
            metrics_tags: match o.opt::<String>("metrics_tags")? {
                Some(tags) => anycable_core::metrics::parse_tags(&tags)
                    .map_err(|e| arg_error(ruby, format!("ANYCABLE_METRICS_TAGS: {e}")))?,
                None => Vec::new(),
            },
            max_conn: o.get("max_conn")?,
            max_conn_age: o.secs("max_conn_age")?,
            jwt,
            streams,
            pubsub: None,
            sessions_key: match o.opt::<String>("sessions_key_hex")? {
                None => None,
                Some(hex) => Some(
                    decode_hex(&hex)
                        .and_then(|bytes| SealKey::new(&bytes).ok())
                        .ok_or_else(|| {
                            arg_error(ruby, "sessions_key_hex is not 32 bytes in hex")
                        })?,
                ),
            },
        };
        let adapter: String = o.get("broadcast_adapter")?;
        let (nats_servers, nats_channel): (String, String) =
            (o.get("nats_servers")?, o.get("nats_channel")?);
        // Empty is unset (Ruby says so at boot).
        let nats_login = NatsLogin {
            nkey_seed: o.opt::<String>("nats_nkey_seed")?.filter(|s| !s.is_empty()),
            credentials_file: o
                .opt::<String>("nats_credentials")?
                .filter(|s| !s.is_empty()),
        };
        let (redis_url, redis_channel): (String, String) =
            (o.get("redis_url")?, o.get("redis_channel")?);
        let siblings_dir: Option<String> = o.opt("siblings_dir")?;
        server.pubsub = match adapter.as_str() {
            "nats" => Some(PubSubConfig::Nats {
                servers: nats_servers,
                subject: nats_channel,
                login: nats_login,
            }),
            "redis" => Some(PubSubConfig::Redis {
                url: redis_url,
                channel: redis_channel,
            }),
            _ => siblings_dir.map(|dir| PubSubConfig::Siblings { dir }),
        };
        let settings = Settings {
            server,
            log_level: o.get("log_level")?,
            queue_size: o.get("queue_size")?,
            max_callback_jobs: o.get("max_callback_jobs")?,
            worker_threads: o.get::<usize>("worker_threads")?.max(1),
            rpc_pool_size: o.get("rpc_pool_size")?,
        };
        o.finish()?;
        settings.server.check().map_err(|e| arg_error(ruby, e))?;
        Ok(settings)
    }
}

/// `broker:` "none", "memory" or "nats", with `history_limit:`, `history_ttl:`
/// (seconds) and `history_max_bytes:` (read whatever the broker: Ruby passes them).
/// Anything else is refused: a broker that is not there must not look as if it were.
fn history_config(o: &Opts<'_>, broker: &str) -> Result<Option<HistoryConfig>, Error> {
    let limit: usize = o.get("history_limit")?;
    let ttl: f64 = o.get("history_ttl")?;
    let max_bytes: usize = o.get("history_max_bytes")?;
    match broker {
        // "": not given (finish() reports it).
        "none" | "" => Ok(None),
        "memory" | "nats" => {
            if limit == 0 || !(ttl.is_finite() && ttl >= 1.0) {
                return Err(arg_error(
                    o.ruby,
                    "history_limit must be at least 1 and history_ttl at least 1 second",
                ));
            }
            if max_bytes < 1024 {
                return Err(arg_error(o.ruby, "history_max_bytes must be at least 1024"));
            }
            Ok(Some(HistoryConfig {
                limit,
                ttl: Duration::try_from_secs_f64(ttl)
                    .map_err(|_| arg_error(o.ruby, format!("history_ttl too large: {ttl}")))?,
                max_bytes,
            }))
        }
        other => Err(arg_error(
            o.ruby,
            format!("broker {other:?} is not supported here (none, memory or nats)"),
        )),
    }
}

/// `broker_replicas:` "auto" or a number of replicas, 1 to 5 (JetStream's most).
fn broker_replicas(o: &Opts<'_>) -> Result<Replicas, Error> {
    let value: String = o.get("broker_replicas")?;
    match value.as_str() {
        "auto" | "" => Ok(Replicas::Auto),
        n => match n.parse::<usize>() {
            Ok(n @ 1..=5) => Ok(Replicas::Exactly(n)),
            _ => Err(arg_error(
                o.ruby,
                format!("broker_replicas must be auto or 1 to 5, got {value:?}"),
            )),
        },
    }
}

/// `{secret_hex:, param:, enforce:}`, as `AnyCableRs::Config#jwt_options` builds it.
fn jwt_config(ruby: &Ruby, h: RHash) -> Result<JwtConfig, Error> {
    let o = Opts::new(ruby, h, "jwt")?;
    let secret: String = o.get("secret_hex")?;
    let config = JwtConfig {
        key: decode_hex(&secret).ok_or_else(|| arg_error(ruby, "jwt: secret_hex is not hex"))?,
        param: o.get("param")?,
        enforce: o.get("enforce")?,
    };
    o.finish()?;
    Ok(config)
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

/// `{secret_hex:, public:, whisper:, presence:, turbo_key_hex:}`, as `AnyCableRs::Config`
/// builds it (the keys as hex: they may be binary; `nil`: none).
fn streams_config(ruby: &Ruby, h: RHash) -> Result<StreamsConfig, Error> {
    let o = Opts::new(ruby, h, "streams")?;
    let key = |name: &'static str| -> Result<Option<Vec<u8>>, Error> {
        match o.opt::<String>(name)? {
            None => Ok(None),
            // Empty is unset: an HMAC with an empty key is anyone's to make.
            Some(hex) if hex.is_empty() => Ok(None),
            Some(hex) => decode_hex(&hex)
                .map(Some)
                .ok_or_else(|| arg_error(ruby, format!("streams: {name} is not hex"))),
        }
    };
    let config = StreamsConfig {
        secret: key("secret_hex")?,
        turbo_key: key("turbo_key_hex")?,
        public: o.get("public")?,
        whisper: o.get("whisper")?,
        presence: o.get("presence")?,
    };
    o.finish()?;
    Ok(config)
}

/// `AnyCableRs::Native.check_origins(policy)`: raises what `new` would, so a pattern
/// the server cannot check stops the app at boot rather than at the first socket.
pub fn check_origins(ruby: &Ruby, policy: RHash) -> Result<(), Error> {
    origin_policy(ruby, policy).map(|_| ())
}
