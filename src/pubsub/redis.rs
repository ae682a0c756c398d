//! The Redis broadcast adapter: SUBSCRIBE on one channel, PUBLISH to it — the same
//! exactly-once scheme as [`crate::pubsub::nats`]. Only these two commands (plus AUTH) are
//! spoken, over RESP, so a full Redis client would be dead weight here.
//!
//! The subscriber reconnects with backoff (100 ms doubling to 2 s) and logs each state
//! change once. The publisher reconnects on demand and keeps payloads (bounded) until
//! one is delivered: Redis pub/sub keeps nothing, so a PUBLISH that reached no
//! subscriber (not even this process's own, still re-subscribing after an outage) is
//! sent again rather than counted as done. Only when it reached at least our own
//! subscriber is it done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::pubsub::{PubSub, PublishQueue};

/// Where to connect: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("unsupported Redis URL {url:?} (redis:// only)"))?;
        let rest = rest.split('/').next().unwrap_or("");
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hostport)) => (Some(auth), hostport),
            None => (None, rest),
        };
        // Userinfo is percent-encoded in a URL (as Ruby's side decodes it too).
        let (user, password) = match auth {
            Some(auth) => match auth.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)),
                    Some(percent_decode(p)),
                ),
                None => (None, Some(percent_decode(auth))),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            return Err(format!("no host in Redis URL {url:?}"));
        }
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One RESP reply, as far as SUBSCRIBE/PUBLISH/AUTH need.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

type Conn = BufReader<TcpStream>;

async fn read_line(conn: &mut Conn) -> std::io::Result<String> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

async fn read_scalar(conn: &mut Conn, line: String) -> std::io::Result<Reply> {
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(
            rest.parse()
                .map_err(|_| bad(format!("bad integer {rest}")))?,
        ),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| bad(format!("bad length {rest}")))?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0; len as usize + 2];
                conn.read_exact(&mut data).await?;
                data.truncate(len as usize);
                Reply::Bulk(Some(data))
            }
        }
        _ => return Err(bad(format!("unexpected reply {line:?}"))),
    })
}

async fn read_reply(conn: &mut Conn) -> std::io::Result<Reply> {
    let line = read_line(conn).await?;
    if let Some(count) = line.strip_prefix('*') {
        let count: i64 = count
            .parse()
            .map_err(|_| bad(format!("bad array {line}")))?;
        let mut items = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            let item_line = read_line(conn).await?;
            items.push(read_scalar(conn, item_line).await?);
        }
        return Ok(Reply::Array(items));
    }
    read_scalar(conn, line).await
}

async fn connect(url: &RedisUrl) -> std::io::Result<Conn> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true).ok();
    let mut conn = BufReader::new(stream);
    if let Some(password) = &url.password {
        let auth = match &url.user {
            Some(user) => command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => command(&[b"AUTH", password.as_bytes()]),
        };
        conn.get_mut().write_all(&auth).await?;
        if let Reply::Error(e) = read_reply(&mut conn).await? {
            return Err(bad(format!("AUTH: {e}")));
        }
    }
    Ok(conn)
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
            loop {
                let result = subscribe(&sub_url, &sub_channel, &state, &deliver).await;
                // A link that was up starts the backoff over (it used to be read after
                // the flag was cleared, so it never reset).
                let was_up = state.swap(false, Ordering::AcqRel);
                match result {
                    Ok(()) if was_up => log::warn!("Redis disconnected; reconnecting"),
                    Err(e) if was_up => log::warn!("Redis disconnected ({e}); reconnecting"),
                    Ok(()) => {}
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
            let mut conn: Option<Conn> = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                let (at, payload) = rx.next().await;
                if !subscribed.load(Ordering::Acquire) {
                    // Published now, it would reach no one here (and maybe no one).
                    rx.retry(at, payload);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let cmd = command(&[b"PUBLISH", channel.as_bytes(), payload.as_bytes()]);
                if conn.is_none() {
                    conn = connect(&url).await.ok();
                }
                // The reply counts the subscribers that got it; ours is one of them
                // once it is subscribed again.
                let sent = match conn.as_mut() {
                    Some(c) => {
                        c.get_mut().write_all(&cmd).await.is_ok()
                            && matches!(read_reply(c).await, Ok(Reply::Integer(n)) if n > 0)
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

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// One subscriber connection's life: returns when it breaks.
async fn subscribe(
    url: &RedisUrl,
    channel: &str,
    state: &AtomicBool,
    deliver: &(impl Fn(&str) + Send + Sync),
) -> std::io::Result<()> {
    let mut conn = connect(url).await?;
    conn.get_mut()
        .write_all(&command(&[b"SUBSCRIBE", channel.as_bytes()]))
        .await?;
    loop {
        let Reply::Array(items) = read_reply(&mut conn).await? else {
            return Err(bad("unexpected reply in subscriber mode".into()));
        };
        match items.as_slice() {
            [Reply::Bulk(Some(kind)), _, Reply::Integer(_)]
                if kind == b"subscribe" && !state.swap(true, Ordering::AcqRel) =>
            {
                log::info!("Redis connected; subscribed to {channel}");
            }
            [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(payload))] if kind == b"message" => {
                match std::str::from_utf8(payload) {
                    Ok(text) => deliver(text),
                    Err(_) => log::warn!("Redis message on {channel} is not UTF-8; dropped"),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            RedisUrl::parse("redis://localhost").unwrap(),
            RedisUrl {
                host: "localhost".into(),
                port: 6379,
                user: None,
                password: None
            }
        );
        assert_eq!(
            RedisUrl::parse("redis://:pw@10.0.0.1:6380/2").unwrap(),
            RedisUrl {
                host: "10.0.0.1".into(),
                port: 6380,
                user: None,
                password: Some("pw".into())
            }
        );
        assert_eq!(
            RedisUrl::parse("redis://u%40x:p%3Aw%25@h:1")
                .unwrap()
                .password
                .as_deref(),
            Some("p:w%")
        );
        assert_eq!(
            RedisUrl::parse("redis://u%40x:p@h:1")
                .unwrap()
                .user
                .as_deref(),
            Some("u@x")
        );
        assert_eq!(
            RedisUrl::parse("redis://u:p@h:1").unwrap().user.as_deref(),
            Some("u")
        );
        assert!(RedisUrl::parse("rediss://h").is_err());
        assert!(RedisUrl::parse("redis://:1").is_err());
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            command(&[b"PUBLISH", b"ch", b"hi"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n".to_vec()
        );
    }
}
