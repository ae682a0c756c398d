//! Clients that live across requests, for `connect` (what each costs the server while
//! idle): long-polling sessions (`--lp http://host:port/lp`, the protocol of AnyCable's
//! `@anycable/long-polling` transport) and Durable Streams readers
//! (`--ds http://host:port/ds/<stream>?signed=…`, `--ds-live sse|long-poll`).
//!
//! - A long-polling client POSTs its `subscribe` command without a session id, polls
//!   until the subscription is confirmed (the open), then polls again 500 ms after each
//!   answer, as the JS transport does (`cooldownPeriod`).
//! - A DS reader makes a catch-up read from `offset=now` (the open), then follows the
//!   stream: one SSE read held open (opened again when the server ends it), or
//!   long-polls from the offset and cursor each answer names.
//!
//! Every request is its own TCP connection (the server answers `Connection: close`),
//! with the Cookie and Origin options. Each client's loop runs until the load tool
//! drops it; [`Stats`] counts its requests and what went wrong.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::Opts;

/// What the clients' loops did: requests made (answered or failed), and what went
/// wrong.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Stats {
    fn failed(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(e);
    }
}

/// An answer: status, headers (names in lower case) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `http://host:port/path?query` as (host:port, /path?query).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("takes an http:// URL")?;
    let (host, path) = rest.split_once('/').ok_or("needs a path")?;
    Ok((host.to_string(), format!("/{path}")))
}

/// Sends one request on a new connection and reads its head; the socket is left
/// positioned at the body.
async fn send(
    o: &Opts,
    host: &str,
    method: &str,
    target: &str,
    extra: &str,
    body: &[u8],
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut tcp = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nOrigin: {}\r\n{extra}",
        o.origin
    );
    if let Some(cookie) = &o.cookie {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await.map_err(|e| e.to_string())?;
    Ok((tcp, Vec::with_capacity(1024)))
}

/// Reads a whole answer (the server closes the connection after it), waiting at most
/// `within`.
async fn answer(mut tcp: TcpStream, mut buf: Vec<u8>, within: Duration) -> Result<Answer, String> {
    tokio::time::timeout(within, tcp.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    let head = String::from_utf8_lossy(&buf[..at]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: buf[at + 4..].to_vec(),
    })
}

const ANSWER_WITHIN: Duration = Duration::from_secs(90);

/// A long-polling client: opens its session and subscribes, then polls until dropped.
async fn long_poll(o: Arc<Opts>, stats: Arc<Stats>) -> Result<JoinHandle<()>, String> {
    let (host, path) = split_url(o.lp.as_deref().unwrap_or(""))?;
    let subscribe =
        serde_json::json!({"command": "subscribe", "identifier": crate::identifier(&o)})
            .to_string();
    let (tcp, buf) = send(&o, &host, "POST", &path, "", subscribe.as_bytes()).await?;
    let first = answer(tcp, buf, ANSWER_WITHIN).await?;
    if first.status != 200 {
        return Err(format!("open: status {}", first.status));
    }
    let id = first
        .header("x-anycable-poll-id")
        .ok_or("no session id")?
        .to_string();
    let header = format!("X-Anycable-Poll-ID: {id}\r\n");
    let mut body = first.body;
    while !contains(&body, b"confirm_subscription") {
        if contains(&body, b"reject_subscription") || contains(&body, b"disconnect") {
            return Err(format!("refused: {}", String::from_utf8_lossy(&body)));
        }
        let (tcp, buf) = send(&o, &host, "POST", &path, &header, b"").await?;
        body = answer(tcp, buf, ANSWER_WITHIN).await?.body;
    }
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let polled = match send(&o, &host, "POST", &path, &header, b"").await {
                Ok((tcp, buf)) => answer(tcp, buf, ANSWER_WITHIN).await,
                Err(e) => Err(e),
            };
            stats.requests.fetch_add(1, Ordering::Relaxed);
            match polled {
                Ok(a) if a.status == 200 || a.status == 204 => {
                    if contains(&a.body, b"disconnect") {
                        stats.failed(format!(
                            "disconnected: {}",
                            String::from_utf8_lossy(&a.body)
                        ));
                        return;
                    }
                }
                Ok(a) => {
                    stats.failed(format!("poll: status {}", a.status));
                    return;
                }
                Err(e) => {
                    stats.failed(format!("poll: {e}"));
                    return;
                }
            }
        }
    }))
}

fn contains(body: &[u8], what: &[u8]) -> bool {
    body.windows(what.len()).any(|w| w == what)
}

/// A Durable Streams reader: a catch-up read from `now`, then the live reads.
async fn ds_read(o: Arc<Opts>, stats: Arc<Stats>) -> Result<JoinHandle<()>, String> {
    let (host, target) = split_url(o.ds.as_deref().unwrap_or(""))?;
    let join = if target.contains('?') { '&' } else { '?' };
    let (tcp, buf) = send(
        &o,
        &host,
        "GET",
        &format!("{target}{join}offset=now"),
        "",
        b"",
    )
    .await?;
    let first = answer(tcp, buf, ANSWER_WITHIN).await?;
    if first.status != 200 {
        return Err(format!("catch-up: status {}", first.status));
    }
    let mut offset = first
        .header("stream-next-offset")
        .ok_or("no Stream-Next-Offset")?
        .to_string();
    let mut cursor = first.header("stream-cursor").map(str::to_string);
    let sse = o.ds_live == "sse";
    Ok(tokio::spawn(async move {
        loop {
            let mut read = format!("{target}{join}offset={offset}");
            read.push_str(if sse { "&live=sse" } else { "&live=long-poll" });
            if let Some(c) = &cursor {
                read.push_str(&format!("&cursor={c}"));
            }
            let got = match send(&o, &host, "GET", &read, "", b"").await {
                Ok((tcp, buf)) => answer(tcp, buf, ANSWER_WITHIN).await,
                Err(e) => Err(e),
            };
            stats.requests.fetch_add(1, Ordering::Relaxed);
            match got {
                // An SSE read ended by its TTL: read again from its last control event.
                Ok(a) if sse && a.status == 200 => {
                    let text = String::from_utf8_lossy(&a.body).to_string();
                    if let Some(next) = last_field(&text, "\"streamNextOffset\":\"") {
                        offset = next;
                    }
                    cursor = last_field(&text, "\"streamCursor\":\"").or(cursor.take());
                }
                Ok(a) if a.status == 200 || a.status == 204 => {
                    if let Some(next) = a.header("stream-next-offset") {
                        offset = next.to_string();
                    }
                    cursor = a
                        .header("stream-cursor")
                        .map(str::to_string)
                        .or(cursor.take());
                }
                Ok(a) => {
                    stats.failed(format!("read: status {}", a.status));
                    return;
                }
                Err(e) => {
                    stats.failed(format!("read: {e}"));
                    return;
                }
            }
        }
    }))
}

/// The value of the last `"name":"value"` whose prefix is `key`.
fn last_field(text: &str, key: &str) -> Option<String> {
    let at = text.rfind(key)? + key.len();
    let end = text[at..].find('"')?;
    Some(text[at..at + end].to_string())
}

/// `--clients` clients, `--concurrency` opening at once: the loops of the open ones,
/// how many failed to open, and the seconds it took.
pub async fn open_all(o: &Opts, stats: &Arc<Stats>) -> (Vec<JoinHandle<()>>, usize, f64) {
    let o = Arc::new(o.clone());
    crate::open_many(&o.clone(), "open", |_| {
        let (o, stats) = (o.clone(), stats.clone());
        async move {
            if o.lp.is_some() {
                long_poll(o, stats).await
            } else {
                ds_read(o, stats).await
            }
        }
    })
    .await
}
