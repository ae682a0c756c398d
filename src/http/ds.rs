//! Durable Streams reads (`ANYCABLE_DS`, AnyCable's `/ds`): a request read into what
//! it asks, and the responses' heads.
//!
//! `GET <path>/<stream>?offset=<o>[&live=long-poll|sse][&cursor=<c>][&signed=<token>]`
//! reads a stream from an offset ([`crate::protocol::ds`]): at once (catch-up), held
//! until a message comes (`long-poll`), or as Server-Sent Events (`sse`). `HEAD` asks
//! the stream's tail. The stream is named by the rest of the path (percent-decoded, so
//! `chat%2F42` and `chat/42` are one stream); `signed` (or the `X-Signed` header) is
//! its signed name, as for a `$pubsub` subscription.
//!
//! Not here: serving the read ([`crate::server`]), the offsets and bodies
//! ([`crate::protocol::ds`]).

use std::time::Duration;

use super::handshake::{status_text, Refusal};
use super::head::RequestHead;
use super::origin::cors_headers;
use crate::protocol::ds::{parse_offset, Start};

/// The Durable Streams settings (AnyCable's names and defaults).
#[derive(Debug, Clone)]
pub struct DsConfig {
    /// `ANYCABLE_DS_PATH`: streams are read below it.
    pub path: String,
    /// `ANYCABLE_DS_SKIP_AUTH`: readers are not identified (no JWT, no `connect`);
    /// the stream's signed name (or a public stream) is all a read needs.
    pub skip_auth: bool,
    /// `ANYCABLE_DS_POLL_INTERVAL`: how long a long-poll with nothing new is held.
    pub poll_interval: Duration,
    /// `ANYCABLE_DS_SSE_TTL`: how long an SSE read lasts (the reader then reads on
    /// from its last offset).
    pub sse_ttl: Duration,
    /// How often a quiet SSE read gets a comment line, so that proxies that cut idle
    /// connections (often after 60 s) leave it open; readers ignore comments. Not a
    /// setting (AnyCable has none): 15 s, shorter in tests.
    pub keepalive: Duration,
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            path: "/ds".into(),
            skip_auth: false,
            poll_interval: Duration::from_secs(10),
            sse_ttl: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// How a read follows the stream after what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Catch-up: what there is, at once.
    No,
    /// Held until something comes, or for [`DsConfig::poll_interval`].
    LongPoll,
    /// Server-Sent Events for [`DsConfig::sse_ttl`].
    Sse,
}

/// What a read asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsRequest {
    /// The stream's name as the path gives it.
    pub name: String,
    pub start: Start,
    pub live: Live,
    /// A `HEAD`: the tail only.
    pub head_only: bool,
    /// The reader's `cursor`.
    pub cursor: Option<String>,
    /// The stream's signed name (`signed`, else `X-Signed`).
    pub signed: Option<String>,
    /// The signed name came in the URL (a cache keyed by URL holds what it reads).
    pub signed_in_url: bool,
    /// `If-None-Match`.
    pub if_none_match: Option<String>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// Whether `path` is a read below `prefix` (`/ds/…`).
pub fn is_ds_path(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// What a `GET` or `HEAD` below `prefix` asks, or why it is refused (400, 405).
pub fn read_request(head: &RequestHead, prefix: &str) -> Result<DsRequest, Refusal> {
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        other => {
            return Err(refuse(
                405,
                format!("{other} is not served here: streams are read with GET or HEAD"),
            ))
        }
    };
    let raw = head
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("");
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| refuse(400, "the stream name is not UTF-8"))?
        .into_owned();
    if name.is_empty() {
        return Err(refuse(400, "no stream: read <path>/<stream name>"));
    }
    let params = head.query_params();
    let one = |key: &str| -> Result<Option<&str>, Refusal> {
        let mut values = params.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(refuse(400, format!("{key} is given more than once")));
        }
        Ok(first.map(String::as_str))
    };
    let offset = one("offset")?;
    let live = match one("live")? {
        None | Some("") => Live::No,
        Some("long-poll") => Live::LongPoll,
        Some("sse") => Live::Sse,
        Some(_) => return Err(refuse(400, "live must be long-poll or sse")),
    };
    if live != Live::No && offset.is_none() && !head_only {
        return Err(refuse(400, "a live read needs an offset"));
    }
    let start = match offset {
        None => Start::Beginning,
        Some(text) => parse_offset(text).map_err(|why| refuse(400, why))?,
    };
    let signed_in_url = one("signed")?.is_some_and(|s| !s.is_empty());
    let signed = one("signed")?
        .filter(|s| !s.is_empty())
        .or_else(|| head.header("x-signed").filter(|s| !s.is_empty()))
        .map(str::to_string);
    Ok(DsRequest {
        name,
        start,
        live: if head_only { Live::No } else { live },
        head_only,
        cursor: one("cursor")?.map(str::to_string),
        signed,
        signed_in_url,
        if_none_match: head.header("if-none-match").map(str::to_string),
    })
}

/// The headers a read's answer to this `Origin` carries: CORS for an allowed one,
/// with the `Stream-*` headers readable by its page; `Vary: Origin` on every answer
/// (a shared cache must not hand one Origin's answer to another).
pub fn cors(head: &RequestHead, allowed: bool) -> String {
    let cors = cors_headers(head, allowed);
    if cors.is_empty() {
        return "Vary: Origin\r\n".into();
    }
    format!(
        "{cors}Access-Control-Expose-Headers: Stream-Next-Offset, Stream-Cursor, \
         Stream-Up-To-Date, Stream-Closed, ETag\r\n"
    )
}

/// The CORS headers let the page read the answer.
fn cors_allows(cors: &str) -> bool {
    cors.contains("Access-Control-Allow-Origin")
}

/// The answer to a preflight: reads, with the headers the page asks to send (the
/// signed name, a JWT, `If-None-Match`); CORS headers only for an allowed Origin.
pub fn preflight(head: &RequestHead, cors: &str) -> String {
    let asked = head
        .header("access-control-request-headers")
        .filter(|h| cors_allows(cors) && !h.contains(['\r', '\n']))
        .map(|h| format!("Access-Control-Allow-Headers: {h}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n\
         {asked}Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// A whole answer: `headers` are `Name: value\r\n` lines. A `HEAD`'s has no body
/// (nor a length, which would be its GET's); a 204 or 304 has neither, nor a type (a
/// cache would lay a 304's onto the answer it holds).
pub fn response(status: u16, headers: &str, cors: &str, body: &str, head_only: bool) -> String {
    let content_type = match status {
        204 | 304 => "",
        200..=299 => "Content-Type: application/json\r\n",
        _ => "Content-Type: text/plain\r\n",
    };
    let (length, body) = if head_only || matches!(status, 204 | 304) {
        (String::new(), "")
    } else {
        (format!("Content-Length: {}\r\n", body.len()), body)
    };
    format!(
        "HTTP/1.1 {status} {}\r\n{content_type}X-Content-Type-Options: nosniff\r\n\
         {headers}{cors}{length}Connection: close\r\n\r\n{body}",
        status_text(status),
    )
}

/// A refusal, readable by an allowed page (no body for a `HEAD`).
pub fn refusal(status: u16, cors: &str, reason: &str, head_only: bool) -> String {
    response(
        status,
        "Cache-Control: no-store\r\n",
        cors,
        reason,
        head_only,
    )
}

/// The head of an SSE read.
pub fn sse_head(cors: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
         Cache-Control: private, no-cache, no-store, must-revalidate, max-age=0\r\n\
         X-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\n{cors}Connection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_read_names_its_stream_offset_and_mode() {
        let r = read_request(
            &get("/ds/chat%2F42?offset=00000000000000000007::e1&live=sse&cursor=9&signed=t"),
            "/ds",
        )
        .unwrap();
        assert_eq!(r.name, "chat/42");
        assert_eq!(
            r.start,
            Start::After {
                offset: 7,
                epoch: "e1".into()
            }
        );
        assert_eq!(r.live, Live::Sse);
        assert_eq!(r.cursor.as_deref(), Some("9"));
        assert_eq!(r.signed.as_deref(), Some("t"));
        assert!(r.signed_in_url);
        let r = read_request(&get("/ds/chat/42"), "/ds").unwrap();
        assert_eq!((r.name.as_str(), &r.start), ("chat/42", &Start::Beginning));
        let mut with_header = get("/ds/a?offset=now");
        with_header.headers = vec![("x-signed".into(), "h".into())];
        let r = read_request(&with_header, "/ds").unwrap();
        assert_eq!((r.signed.as_deref(), r.signed_in_url), (Some("h"), false));
        assert_eq!(r.start, Start::Now);
    }

    #[test]
    fn bad_reads_are_refused_with_why() {
        for (target, status) in [
            ("/ds/", 400),
            ("/ds/a?offset=", 400),
            ("/ds/a?offset=0,1", 400),
            ("/ds/a?offset=-1&offset=now", 400),
            ("/ds/a?live=sse", 400),
            ("/ds/a?offset=-1&live=forever", 400),
            ("/ds/%FF", 400),
        ] {
            let refused = read_request(&get(target), "/ds").unwrap_err();
            assert_eq!(refused.status, status, "{target}: {}", refused.reason);
        }
        let mut put = get("/ds/a");
        put.method = "PUT".into();
        assert_eq!(read_request(&put, "/ds").unwrap_err().status, 405);
        assert!(is_ds_path("/ds/a", "/ds"));
        assert!(!is_ds_path("/dsx/a", "/ds"));
        assert!(!is_ds_path("/ds", "/ds"));
    }

    #[test]
    fn only_an_allowed_page_reads_the_stream_headers() {
        let mut head = get("/ds/a");
        head.headers = vec![
            ("origin".into(), "http://app.test".into()),
            ("access-control-request-headers".into(), "x-signed".into()),
        ];
        let allowed = cors(&head, true);
        assert!(allowed.contains("Expose-Headers: Stream-Next-Offset"));
        assert!(preflight(&head, &allowed).contains("Allow-Headers: x-signed"));
        assert_eq!(cors(&head, false), "Vary: Origin\r\n");
        assert!(!preflight(&head, &cors(&head, false)).contains("Allow-Headers"));
        let answer = response(200, "Stream-Next-Offset: 0\r\n", "", "[]", true);
        assert!(answer.ends_with("Stream-Next-Offset: 0\r\nConnection: close\r\n\r\n"));
        let full = response(200, "", "", "[]", false);
        assert!(full.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n[]"));
        let none = response(304, "ETag: \"x\"\r\n", "", "", false);
        assert!(!none.contains("\nContent-"), "{none}");
    }
}
