//! Long polling (`ANYCABLE_POLL`, AnyCable Pro's `/lp`, the protocol of the
//! `@anycable/long-polling` JS transport): a request read into the commands it
//! carries, and the responses.
//!
//! Every request is a `POST`. Without an `X-Anycable-Poll-ID` header it opens a
//! session (identified as a WebSocket is: cookies, a JWT in the query); the response
//! names the session in that header. With it, it is the next poll of that session.
//! Bodies both ways are JSON lines (at most [`PollConfig::max_request_size`] bytes in).
//! A poll is held until there is something to send (gathered for
//! [`PollConfig::flush_interval`]) or for [`PollConfig::interval`] (then 204).
//!
//! Not here: the sessions and their requests ([`crate::server`]).

use std::time::Duration;

use serde_json::value::RawValue;

use super::handshake::Refusal;
use super::head::RequestHead;

/// The long-polling settings (AnyCable Pro's names and defaults).
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// `ANYCABLE_POLL_PATH`.
    pub path: String,
    /// `ANYCABLE_POLL_INTERVAL`: how long a poll with nothing to send is held.
    pub interval: Duration,
    /// `ANYCABLE_POLL_FLUSH_INTERVAL`: how long what is to be sent is gathered first.
    pub flush_interval: Duration,
    /// `ANYCABLE_POLL_KEEPALIVE_TIMEOUT`: how long a session outlives its last request.
    pub keepalive_timeout: Duration,
    /// `ANYCABLE_POLL_MAX_REQUEST_SIZE`: the largest body.
    pub max_request_size: usize,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            path: "/lp".into(),
            interval: Duration::from_secs(15),
            flush_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_secs(5),
            max_request_size: 64 * 1024,
        }
    }
}

/// The header that names a session, both ways.
pub const POLL_ID_HEADER: &str = "X-Anycable-Poll-ID";

/// What a poll for a session that is gone (expired, closed, or on another machine)
/// gets, with 401: the client opens another.
pub const SESSION_EXPIRED: &str =
    r#"{"type":"disconnect","reason":"session_expired","reconnect":true}"#;

/// The session a request polls, if it names one.
pub fn poll_id(head: &RequestHead) -> Option<&str> {
    head.header(POLL_ID_HEADER)
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

/// A body's commands, one JSON value a line (blank lines skipped), as the protocol's
/// text; 400 for a line that is not JSON, 413 for a body over `max`.
pub fn read_commands(body: &[u8], max: usize) -> Result<Vec<String>, Refusal> {
    if body.len() > max {
        return Err(Refusal {
            status: 413,
            reason: format!("the body is over {max} bytes"),
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| Refusal {
        status: 400,
        reason: "the body is not UTF-8".into(),
    })?;
    text.split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(n, line)| match serde_json::from_str::<&RawValue>(line) {
            Ok(_) => Ok(line.to_string()),
            Err(e) => Err(Refusal {
                status: 400,
                reason: format!("command {}: not JSON ({e})", n + 1),
            }),
        })
        .collect()
}

/// A response: `status`, the session's id when there is one, `cors` (the CORS headers
/// of an allowed Origin), and `body` (JSON lines).
pub fn response(status: u16, id: Option<&str>, cors: &str, body: &str) -> String {
    let text = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let id = id
        .map(|id| format!("{POLL_ID_HEADER}: {id}\r\n"))
        .unwrap_or_default();
    let expose = if cors.is_empty() {
        ""
    } else {
        "Access-Control-Expose-Headers: X-Anycable-Poll-ID\r\n"
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Cache-Control: private, no-cache, no-store, must-revalidate, max-age=0\r\n\
         Pragma: no-cache\r\nExpires: 0\r\nX-Content-Type-Options: nosniff\r\n{id}{cors}{expose}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The answer to a preflight: a POST carrying the session header.
pub fn preflight(cors: &str) -> String {
    format!(
        "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: POST, OPTIONS\r\n\
         Access-Control-Allow-Headers: Content-Type, X-Anycable-Poll-ID, X-JID, Authorization\r\n\
         Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_json_lines() {
        let body = b"{\"command\":\"subscribe\",\"identifier\":\"x\"}\n\n{\"command\":\"pong\"}";
        assert_eq!(read_commands(body, 1024).unwrap().len(), 2);
        assert_eq!(read_commands(b"", 1024).unwrap().len(), 0);
        assert_eq!(read_commands(b"{}\nnope", 1024).unwrap_err().status, 400);
        assert_eq!(read_commands(&[b' '; 11], 10).unwrap_err().status, 413);
    }

    #[test]
    fn a_response_names_its_session() {
        let r = response(200, Some("abc"), "", "{\"type\":\"welcome\"}\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("\r\nX-Anycable-Poll-ID: abc\r\n"));
        assert!(r.ends_with("\r\n\r\n{\"type\":\"welcome\"}\n"));
        assert!(!r.contains("Expose"));
        let cors = "Access-Control-Allow-Origin: http://a.test\r\n";
        assert!(response(204, None, cors, "").contains("Expose-Headers: X-Anycable-Poll-ID"));
    }
}
