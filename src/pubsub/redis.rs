//! The Redis broadcast adapter: SUBSCRIBE on one channel, PUBLISH to it — the same
//! exactly-once scheme as [`crate::pubsub::nats`] — through the `redis` crate
//! (redis-rs: its RESP parser, AUTH/ACL handshake and pub/sub connection). The
//! connection under it is ours (`open`): TCP, TLS for `rediss://` (tokio-rustls,
//! already built for NATS, with the system's roots and a host-name check), and a
//! byte budget ([`MAX_BUFFERED`]): a server, or someone answering for it, cannot make
//! this process buffer without bound (a fake Redis announcing a 1 TiB reply aborted
//! Puma under the hand-written client this replaces).
//!
//! The subscriber reconnects with backoff (100 ms doubling to 2 s) and logs each state
//! change once. The publisher reconnects on demand and keeps payloads (bounded) until
//! one is delivered: Redis pub/sub keeps nothing, so a PUBLISH that reached no
//! subscriber (not even this process's own, still re-subscribing after an outage) is
//! sent again rather than counted as done. Only when it reached at least our own
//! subscriber is it done.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::pubsub::{PubSub, PublishQueue};

/// Where to connect: `redis[s]://[[user]:password@]host[:port][/db]` (credentials
/// percent-encoded, as in any URL).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `rediss://`: TLS, the certificate checked against the system's roots.
    pub tls: bool,
    pub db: i64,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err("unsupported Redis URL (redis:// or rediss:// only)".into()),
        };
        let (rest, db) = match rest.split_once('/') {
            Some((rest, path)) => {
                let path = path.split(['?', '#']).next().unwrap_or("");
                let db = if path.is_empty() {
                    0
                } else {
                    path.parse()
                        .map_err(|_| format!("bad database number {path:?} in the Redis URL"))?
                };
                (rest, db)
            }
            None => (rest, 0),
        };
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hostport)) => (Some(auth), hostport),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(auth) => match auth.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| decode(u)), Some(decode(p))),
                None => (None, Some(decode(auth))),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| "bad port in the Redis URL".to_string())?,
            ),
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host in the Redis URL".into());
        }
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
            tls,
            db,
        })
    }

    fn info(&self) -> redis::RedisConnectionInfo {
        redis::RedisConnectionInfo {
            db: self.db,
            username: self.user.clone(),
            password: self.password.clone(),
            protocol: redis::ProtocolVersion::RESP2,
        }
    }
}

/// Userinfo is percent-encoded in a URL (as Ruby's side decodes it too).
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// What one Redis connection may have read beyond the messages taken from it: more is
/// a reply no broadcast makes (broadcasts are bounded by `ANYCABLE_MAX_PENDING_BYTES`),
/// and the connection is dropped.
pub const MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// Bytes a connection has read and not yet seen taken as messages.
#[derive(Default)]
struct Budget(AtomicUsize);

impl Budget {
    fn taken(&self, bytes: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    fn exceeded(&self) -> bool {
        self.0.load(Ordering::Acquire) > MAX_BUFFERED
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A Redis connection's transport (TCP or TLS) whose reads count against a [`Budget`].
struct Bounded {
    inner: Box<dyn Io>,
    budget: Arc<Budget>,
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.budget.exceeded() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "Redis sent more than any broadcast is without a message",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.budget.0.fetch_add(read, Ordering::AcqRel);
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings of `rediss://`: the system's roots (`SSL_CERT_FILE` too), ring.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_native_certs::load_native_certs()
                .map_err(|e| format!("the system's certificate roots: {e}"))?;
            roots.add_parsable_certificates(certs);
            // The process's provider: ring, the only one built (as for async-nats).
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// A connection to `url`'s server (TLS for `rediss://`), its reads counted.
async fn open(url: &RedisUrl, budget: Arc<Budget>) -> Result<Bounded, String> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let inner: Box<dyn Io> = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    Ok(Bounded { inner, budget })
}

pub struct RedisPubSub {
    queue: Arc<PublishQueue>,
    connected: Arc<AtomicBool>,
}

impl RedisPubSub {
    /// Starts the subscriber and the publisher tasks. Call inside the runtime.
    pub fn start(
        url: &str,
        channel: String,
        deliver: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let url = RedisUrl::parse(url)?;
        let connected = Arc::new(AtomicBool::new(false));
        let state = connected.clone();
        let sub_url = url.clone();
        let sub_channel = channel.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut last_said: Option<std::time::Instant> = None;
            loop {
                let result = subscribe(&sub_url, &sub_channel, &state, &deliver).await;
                // A link that was up starts the backoff over (it used to be read after
                // the flag was cleared, so it never reset).
                let was_up = state.swap(false, Ordering::AcqRel);
                match result {
                    Ok(()) if was_up => log::warn!("Redis disconnected; reconnecting"),
                    Err(e) if was_up => log::warn!("Redis disconnected ({e}); reconnecting"),
                    Ok(()) => {}
                    // Said now and then (Redis may stay down a while), never dropped.
                    Err(e) if last_said.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) => {
                        log::warn!("Redis connect failed ({e}); retrying");
                        last_said = Some(std::time::Instant::now());
                    }
                    Err(e) => log::debug!("Redis connect failed: {e}"),
                }
                if was_up {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        let queue = Arc::new(PublishQueue::<String>::new("Redis"));
        let rx = queue.clone();
        let subscribed = connected.clone();
        tokio::spawn(async move {
            let mut conn: Option<(redis::aio::MultiplexedConnection, Arc<Budget>)> = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                let (at, payload) = rx.next().await;
                if !subscribed.load(Ordering::Acquire) {
                    // Published now, it would reach no one here (and maybe no one).
                    rx.retry(at, payload);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if conn.is_none() {
                    conn = connect_publisher(&url).await.ok();
                }
                // The reply counts the subscribers that got it; ours is one of them
                // once it is subscribed again.
                let sent = match conn.as_mut() {
                    Some((c, budget)) => {
                        let reply: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                            .arg(&channel)
                            .arg(payload.as_bytes())
                            .query_async(c)
                            .await;
                        budget.taken(64);
                        matches!(reply, Ok(n) if n > 0)
                    }
                    None => false,
                };
                if sent {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                // Redis is unreachable: the payload waits (bounded, in order) for the
                // next try instead of being dropped at once.
                conn = None;
                rx.retry(at, payload);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Ok(RedisPubSub { queue, connected })
    }
}

impl PubSub for RedisPubSub {
    fn publish(&self, payload: String) {
        self.queue.push(payload);
    }

    fn unsent(&self) -> usize {
        self.queue.len()
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// The publisher's connection: PUBLISH replies within 5 s or the connection is dropped.
async fn connect_publisher(
    url: &RedisUrl,
) -> Result<(redis::aio::MultiplexedConnection, Arc<Budget>), String> {
    let budget = Arc::new(Budget::default());
    let stream = open(url, budget.clone()).await?;
    let (conn, driver) = redis::aio::MultiplexedConnection::new_with_response_timeout(
        &url.info(),
        stream,
        Some(CONNECT_TIMEOUT),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok((conn, budget))
}

/// One subscriber connection's life: returns when it breaks.
async fn subscribe(
    url: &RedisUrl,
    channel: &str,
    state: &AtomicBool,
    deliver: &(impl Fn(&str) + Send + Sync),
) -> Result<(), String> {
    let budget = Arc::new(Budget::default());
    let stream = open(url, budget.clone()).await?;
    let mut pubsub = redis::aio::PubSub::new(&url.info(), stream)
        .await
        .map_err(|e| e.to_string())?;
    pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
    if !state.swap(true, Ordering::AcqRel) {
        log::info!("Redis connected; subscribed to {channel}");
    }
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload = message.get_payload_bytes();
        budget.taken(payload.len() + channel.len() + 64);
        match std::str::from_utf8(payload) {
            Ok(text) => deliver(text),
            Err(_) => log::warn!("Redis message on {channel} is not UTF-8; dropped"),
        }
    }
    if budget.exceeded() {
        return Err(format!(
            "Redis sent over {MAX_BUFFERED} bytes without a message (no broadcast is that \
             big); the connection was dropped"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, user: Option<&str>, password: Option<&str>) -> RedisUrl {
        RedisUrl {
            host: host.into(),
            port,
            user: user.map(Into::into),
            password: password.map(Into::into),
            tls: false,
            db: 0,
        }
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            RedisUrl::parse("redis://localhost").unwrap(),
            url("localhost", 6379, None, None)
        );
        let with_db = RedisUrl::parse("redis://:pw@10.0.0.1:6380/2").unwrap();
        assert_eq!(
            with_db,
            RedisUrl {
                db: 2,
                ..url("10.0.0.1", 6380, None, Some("pw"))
            }
        );
        let parsed = RedisUrl::parse("redis://u%40x:p%3Aw%25@h:1").unwrap();
        assert_eq!(parsed.password.as_deref(), Some("p:w%"));
        assert_eq!(parsed.user.as_deref(), Some("u@x"));
        let tls = RedisUrl::parse("rediss://default:s3cret@cache.example.com:6380").unwrap();
        assert!(tls.tls);
        assert_eq!((tls.host.as_str(), tls.port), ("cache.example.com", 6380));
        assert_eq!(RedisUrl::parse("redis://[::1]:7000").unwrap().host, "::1");
        assert!(RedisUrl::parse("http://h").is_err());
        assert!(RedisUrl::parse("redis://:1").is_err());
        assert!(RedisUrl::parse("redis://h/x").is_err());
        // No password in what may reach a log line.
        assert!(!format!("{tls:?}").contains("s3cret"));
        let bad = RedisUrl::parse("redis://u:s3cret@h:port").err().unwrap();
        assert!(!bad.contains("s3cret"), "{bad}");
    }

    /// Issue #24 (13): a fake Redis announcing a 1 TiB reply aborted Puma (`memory
    /// allocation of 1099511627778 bytes failed`). Now the subscriber reads at most
    /// MAX_BUFFERED beyond what it took as messages, then drops the connection.
    #[tokio::test]
    async fn a_server_announcing_endless_replies_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = socket.read(&mut buf).await; // SUBSCRIBE
            let _ = socket
                .write_all(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
                .await;
            let _ = socket
                .write_all(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1099511627776\r\n")
                .await;
            let chunk = vec![b'x'; 1 << 20];
            while socket.write_all(&chunk).await.is_ok() {}
        });
        let connected = AtomicBool::new(false);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            subscribe(
                &url("127.0.0.1", port, None, None),
                "ch",
                &connected,
                &|_: &str| {},
            ),
        )
        .await
        .expect("the subscriber kept reading");
        assert!(connected.load(Ordering::Acquire));
        let error = result.unwrap_err();
        assert!(error.contains("without a message"), "{error}");
    }
}
