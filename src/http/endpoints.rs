//! The plain HTTP endpoints beside the WebSocket path: `/health` (own port) and
//! AnyCable's `POST /_broadcast` — on the own port, and on Puma's port through the
//! Rack middleware (`AnyCableRs::BroadcastEndpoint`, which hands [`admit`] the request
//! and [`take`] the body Puma read): one implementation, one rule for each case.
//! (`/metrics` is rendered by the server.)

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::handshake;
use super::head::RequestHead;
use crate::metrics::COUNTERS;
use crate::protocol::broadcast::BroadcastError;

/// What the endpoints ask of the server, and nothing more.
pub trait EndpointHandle {
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

/// Whether a broadcast request may go on: a `POST` with the key. Without a key the
/// endpoint is not served at all (the caller answers 404 or lets the app answer): an
/// open endpoint would let anyone who reaches the port write to any stream, and
/// "loopback only" still admits every client of a proxy on the same host.
pub fn admit(
    server: &impl EndpointHandle,
    method: &str,
    authorization: Option<&str>,
    peer: &str,
) -> Result<(), (u16, &'static str)> {
    let Some(key) = server.broadcast_key() else {
        return Err((404, "Not found"));
    };
    if method != "POST" {
        return Err((405, "POST only"));
    }
    if !bearer_matches(authorization, key) {
        static REFUSED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();
        crate::logging::once_a_second(&REFUSED_LOG, |more| {
            log::warn!(
                "broadcast request from {peer} refused: bad or missing key ({more} more \
                 refused since the last line)"
            )
        });
        return Err((401, "Unauthorized"));
    }
    Ok(())
}

/// Whether an `Authorization` header is `Bearer <key>` (compared in constant time):
/// the broadcast key, the metrics token.
pub fn bearer_matches(authorization: Option<&str>, key: &str) -> bool {
    let given = authorization
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

/// Takes an admitted request's body: 201, 413 (too large), 422 (bad payload).
pub fn take(server: &impl EndpointHandle, body: &[u8], peer: &str) -> (u16, String) {
    if body.len() > MAX_BROADCAST_BODY {
        return (413, "Payload too large".into());
    }
    let text = String::from_utf8_lossy(body).into_owned();
    match server.take_broadcast(text) {
        Ok(n) => {
            COUNTERS.publications.inc_by(n as u64);
            (201, String::new())
        }
        Err(e) => {
            static BAD_LOG: crate::logging::Throttle = crate::logging::Throttle::new();
            crate::logging::once_a_second(&BAD_LOG, |more| {
                log::warn!(
                    "broadcast request from {peer} refused: {} ({more} more refused since \
                     the last line)",
                    crate::logging::clip(&e.to_string(), crate::logging::MAX_LINE_TEXT)
                )
            });
            (e.status(), e.to_string())
        }
    }
}

/// `POST /_broadcast` on the own port: the body is read only once the request is
/// admitted. 201, 401 (bad key), 404 (no key: not served), 405, 413 (too large), 422
/// (bad payload).
pub(crate) async fn serve_broadcast(
    server: &impl EndpointHandle,
    stream: &mut TcpStream,
    head: &RequestHead,
    body_start: Vec<u8>,
    peer: SocketAddr,
) {
    let peer = peer.to_string();
    if let Err((status, text)) = admit(server, &head.method, head.header("authorization"), &peer) {
        return reply(stream, status, text).await;
    }
    let body = match read_body(stream, head, body_start, MAX_BROADCAST_BODY).await {
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
    let (status, text) = take(server, &body, &peer);
    reply(stream, status, &text).await;
}

/// The request body, by Content-Length or chunked; at most `max` bytes (413 past it).
pub(crate) async fn read_body(
    stream: &mut TcpStream,
    head: &RequestHead,
    mut body: Vec<u8>,
    max: usize,
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
        if length > max {
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
                None if body.len() > max + 64 * 1024 => return Err(413),
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
