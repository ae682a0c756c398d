//! Server-Sent Events subscribers (`--sse http://host:port/events`): each a plain
//! `GET <path>?identifier=<the channel's>` with the Cookie and Origin options, read as
//! an `EventSource` reads it. `connect` opens them (their cost per idle client);
//! `broadcast` makes them the subscribers, the sender still a WebSocket client at
//! `--url`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Opts;

/// One event stream, read event by event.
pub struct SseClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// An event: its name (none for a broadcast) and data.
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

impl SseClient {
    /// Opens the `index`-th stream (round robin over the comma-separated `--sse`
    /// URLs) and reads it until its subscription is confirmed.
    pub async fn open(o: &Opts, index: usize) -> Result<SseClient, String> {
        let urls: Vec<&str> = o.sse.as_deref().unwrap_or("").split(',').collect();
        let rest = urls[index % urls.len()]
            .strip_prefix("http://")
            .ok_or("--sse takes http:// URLs")?;
        let (host, path) = rest.split_once('/').ok_or("--sse needs a path")?;
        let tcp = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).ok();
        let identifier = crate::identifier(o);
        let mut req = format!(
            "GET /{path}?identifier={} HTTP/1.1\r\nHost: {host}\r\nOrigin: {}\r\n",
            encode(&identifier),
            o.origin
        );
        if let Some(cookie) = &o.cookie {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        req.push_str("\r\n");
        let mut client = SseClient {
            tcp,
            buf: Vec::with_capacity(1024),
        };
        client
            .tcp
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let head = client.until(b"\r\n\r\n").await?;
        let status = String::from_utf8_lossy(&head[..head.len().min(16)]).to_string();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("refused: {status}"));
        }
        loop {
            let event = client.next_event().await?;
            match event.name.as_deref() {
                Some("confirm_subscription") => return Ok(client),
                Some("reject_subscription") => return Err("rejected".into()),
                _ => {}
            }
        }
    }

    /// Bytes up to and including `end`.
    async fn until(&mut self, end: &[u8]) -> Result<Vec<u8>, String> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                let rest = self.buf.split_off(at + end.len());
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.tcp.read_buf(&mut self.buf))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
        }
    }

    /// The next event (pings too).
    pub async fn next_event(&mut self) -> Result<Event, String> {
        let block = self.until(b"\n\n").await?;
        let text = String::from_utf8_lossy(&block);
        let mut event = Event {
            name: None,
            data: String::new(),
        };
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                event.name = Some(name.to_string());
            } else if let Some(data) = line.strip_prefix("data: ") {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(data);
            }
        }
        Ok(event)
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `--clients` streams, `--concurrency` opening at once: the open ones, how many
/// failed, and the seconds it took.
pub async fn open_all(o: &Opts) -> (Vec<SseClient>, usize, f64) {
    crate::open_many(o, "SSE open", |index| {
        let o = o.clone();
        async move { SseClient::open(&o, index).await }
    })
    .await
}
