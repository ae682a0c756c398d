//! The plain HTTP endpoints of the server's own port, beside the WebSocket path:
//! `/health`, AnyCable's `POST /_broadcast` (and `/metrics`, rendered by the server).
//!
//! Not here: the same broadcast endpoint on Puma's port, which is a Rack middleware
//! (`AnyCableRs::BroadcastEndpoint`) because Puma owns that port's HTTP.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::handshake;
use super::head::RequestHead;
use crate::metrics::COUNTERS;
use crate::protocol::broadcast::BroadcastError;

/// What the endpoints ask of the server, and nothing more.
pub(crate) trait EndpointHandle {
    /// Why `/health` should answer 503 (shutting down, the pub/sub away), if it should.
    fn unhealthy(&self) -> Option<String>;
    /// The bearer token `/_broadcast` requires, if one is set.
    fn broadcast_key(&self) -> Option<&str>;
    /// Takes a broadcast payload: checks it, then publishes it to every node (or
    /// applies it here without a pub/sub). Returns how many messages it held.
    fn take_broadcast(&self, payload: String) -> Result<usize, BroadcastError>;
}

/// Largest broadcast request body accepted.
pub const MAX_BROADCAST_BODY: usize = 1024 * 1024;

async fn reply(stream: &mut TcpStream, status: u16, text: &str) {
    let _ = stream
        .write_all(handshake::plain_response(status, text).as_bytes())
        .await;
}

/// 200, or 503 while shutting down or while the health probe reports a reason.
pub(crate) async fn serve_health(server: &impl EndpointHandle, stream: &mut TcpStream) {
    match server.unhealthy() {
        Some(reason) => reply(stream, 503, &reason).await,
        None => reply(stream, 200, "Success").await,
    }
}

/// `POST /_broadcast`: 201, 401 (bad key; or no key configured and the request is not
/// from this machine), 413 (too large), 422 (bad payload).
pub(crate) async fn serve_broadcast(
    server: &impl EndpointHandle,
    stream: &mut TcpStream,
    head: &RequestHead,
    body_start: Vec<u8>,
    peer: SocketAddr,
) {
    if head.method != "POST" {
        return reply(stream, 405, "POST only").await;
    }
    match server.broadcast_key() {
        Some(key) => {
            let given = head
                .header("authorization")
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
                log::warn!("broadcast request from {peer} refused: bad or missing key");
                return reply(stream, 401, "Unauthorized").await;
            }
        }
        // Without a key only this machine may broadcast: the port may listen on every
        // interface (Fly), and an open endpoint would let anyone write to any stream.
        None if !peer.ip().is_loopback() => {
            log::warn!(
                "broadcast request from {peer} refused: no broadcast key is set \
                 (ANYCABLE_SECRET or ANYCABLE_BROADCAST_KEY), so only loopback may broadcast"
            );
            return reply(stream, 401, "Unauthorized: set a broadcast key").await;
        }
        None => {}
    }
    let body = match read_body(stream, head, body_start).await {
        Ok(body) => body,
        Err(status) => {
            let text = if status == 413 {
                "Payload too large"
            } else {
                "Bad request body"
            };
            return reply(stream, status, text).await;
        }
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let result = server
        .take_broadcast(text)
        .map(|n| COUNTERS.publications.inc_by(n as u64));
    match result {
        Ok(()) => reply(stream, 201, "").await,
        Err(e) => {
            log::warn!("broadcast request from {peer} refused: {e}");
            reply(stream, e.status(), &e.to_string()).await;
        }
    }
}

/// The request body, by Content-Length or chunked; at most [`MAX_BROADCAST_BODY`].
async fn read_body(
    stream: &mut TcpStream,
    head: &RequestHead,
    mut body: Vec<u8>,
) -> Result<Vec<u8>, u16> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = if chunked {
        None
    } else {
        let length = head
            .header("content-length")
            .map(|v| v.trim().parse::<usize>().map_err(|_| 400u16))
            .transpose()?
            .unwrap_or(0);
        if length > MAX_BROADCAST_BODY {
            return Err(413);
        }
        Some(length)
    };
    loop {
        match length {
            Some(length) if body.len() >= length => {
                body.truncate(length);
                return Ok(body);
            }
            None => match decode_chunked(&body)? {
                Some(decoded) => return Ok(decoded),
                None if body.len() > MAX_BROADCAST_BODY + 64 * 1024 => return Err(413),
                None => {}
            },
            _ => {}
        }
        if body.capacity() - body.len() < 4096 {
            body.reserve(4096);
        }
        match stream.read_buf(&mut body).await {
            Ok(0) | Err(_) => return Err(400),
            Ok(_) => {}
        }
    }
}

/// A complete chunked body decoded, `None` while more is needed, or 400/413.
fn decode_chunked(mut buf: &[u8]) -> Result<Option<Vec<u8>>, u16> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| 400u16)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| 400u16)?;
        let rest = &buf[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line.
            let end = if rest.starts_with(b"\r\n") {
                Some(2)
            } else {
                rest.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| p + 4)
            };
            return Ok(end.map(|_| out));
        }
        // Not `out.len() + size`: a size near usize::MAX wraps that sum below the limit,
        // and `size + 2` below then panics slicing.
        if size > MAX_BROADCAST_BODY - out.len() {
            return Err(413);
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(400);
        }
        out.extend_from_slice(&rest[..size]);
        buf = &rest[size + 2..];
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunked_bodies_in_pieces() {
        let full = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(decode_chunked(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode_chunked(full), Ok(Some(b"hello world".to_vec())));
        assert_eq!(decode_chunked(b"zz\r\n"), Err(400));
        assert_eq!(decode_chunked(b"3\r\nabcX\r\n"), Err(400));
        assert_eq!(decode_chunked(b"FFFFFFF\r\n"), Err(413));
    }

    #[test]
    fn a_chunk_size_near_usize_max_is_too_large_not_a_panic() {
        // Found by tests/fuzz: after a first chunk, these sizes overflowed the check.
        assert_eq!(decode_chunked(b"1\r\na\r\nFFFFFFFFFFFFFFFF\r\nx"), Err(413));
        assert_eq!(decode_chunked(b"2\r\nab\r\nFFFFFFFFFFFFFFFE\r\n"), Err(413));
    }
}
