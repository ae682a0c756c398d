//! AnyCable's Server-Sent Events endpoint (`ANYCABLE_SSE`, `/events`): a request
//! read into the subscribe commands it makes, its Origin checked, and the response
//! head.
//!
//! - `GET` (an `EventSource`, curl): one subscription from the query, the first of
//!   `identifier`, `channel`, `stream` (a public `$pubsub` stream), `signed_stream`,
//!   `turbo_signed_stream_name`; `history_since` (Unix seconds) and the
//!   `Last-Event-ID` header ask what was missed; `raw=1` sends broadcasts only.
//! - `POST`: `subscribe` commands, one JSON object a line (each may carry its
//!   `history`), at most [`MAX_BODY`] bytes; every frame is sent whole.
//!
//! Not here: serving the stream ([`crate::server`]), encoding the events
//! ([`crate::protocol::sse`]).

use serde_json::{json, Map, Value};

use super::handshake::Refusal;
use super::head::RequestHead;
use super::origin::cors_headers;
use crate::protocol::sse::{parse_last_event_id, EventMode};

/// The largest `POST` body (AnyCable's 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// What an events request asks.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsRequest {
    pub mode: EventMode,
    /// `subscribe` commands as the protocol's JSON text, each with its `history`.
    pub commands: Vec<String>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// The commands a request makes, or why it is refused (400, 405, 413).
pub fn read_request(head: &RequestHead, body: &[u8]) -> Result<EventsRequest, Refusal> {
    match head.method.as_str() {
        "GET" => read_get(head),
        "POST" => read_post(body),
        other => Err(refuse(
            405,
            format!("{other} is not served here: GET or POST"),
        )),
    }
}

fn read_get(head: &RequestHead) -> Result<EventsRequest, Refusal> {
    let params = head.query_params();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let identifier = if let Some(identifier) = param("identifier") {
        identifier.to_string()
    } else if let Some(channel) = param("channel") {
        json!({ "channel": channel }).to_string()
    } else if let Some(stream) = param("stream") {
        json!({ "channel": "$pubsub", "stream_name": stream }).to_string()
    } else if let Some(signed) = param("signed_stream") {
        json!({ "channel": "$pubsub", "signed_stream_name": signed }).to_string()
    } else if let Some(signed) = param("turbo_signed_stream_name") {
        json!({ "channel": "Turbo::StreamsChannel", "signed_stream_name": signed }).to_string()
    } else {
        return Err(refuse(
            400,
            "no channel: give identifier, channel, stream, signed_stream or turbo_signed_stream_name",
        ));
    };
    let mut history = Map::new();
    if let Some(since) = param("history_since") {
        let since: u64 = since
            .parse()
            .map_err(|_| refuse(400, "history_since is not a number of seconds"))?;
        if since > 0 {
            history.insert("since".into(), since.into());
        }
    }
    if let Some(id) = head.header("last-event-id") {
        if let Some(last) = parse_last_event_id(id).map_err(|e| refuse(400, e))? {
            history.insert(
                "streams".into(),
                json!({ last.stream: { "epoch": last.epoch, "offset": last.offset } }),
            );
        }
    }
    let mut command = json!({ "command": "subscribe", "identifier": identifier });
    if !history.is_empty() {
        command["history"] = Value::Object(history);
    }
    let raw = param("raw")
        .is_some_and(|v| ["true", "1", "t", "y", "yes"].contains(&v.to_ascii_lowercase().as_str()));
    Ok(EventsRequest {
        mode: if raw {
            EventMode::Raw
        } else {
            EventMode::Unwrapped
        },
        commands: vec![command.to_string()],
    })
}

fn read_post(body: &[u8]) -> Result<EventsRequest, Refusal> {
    if body.len() > MAX_BODY {
        return Err(refuse(413, format!("the body is over {MAX_BODY} bytes")));
    }
    let text = std::str::from_utf8(body).map_err(|_| refuse(400, "the body is not UTF-8"))?;
    let mut commands = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut command: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| refuse(400, format!("line {}: not a JSON object ({e})", n + 1)))?;
        match command.get("command") {
            None => {
                command.insert("command".into(), "subscribe".into());
            }
            Some(Value::String(c)) if c == "subscribe" => {}
            Some(_) => {
                return Err(refuse(
                    400,
                    format!("line {}: only subscribe commands are taken here", n + 1),
                ))
            }
        }
        commands.push(Value::Object(command).to_string());
    }
    Ok(EventsRequest {
        mode: EventMode::Envelope,
        commands,
    })
}

/// The answer to a preflight (`OPTIONS`): a POST with JSON, a JWT header; CORS
/// headers only for an allowed Origin.
pub fn preflight_response(head: &RequestHead, allowed: bool) -> String {
    format!(
        "HTTP/1.1 204 No Content\r\n{}Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
         Access-Control-Allow-Headers: Content-Type, Last-Event-ID, X-JID, Authorization\r\n\
         Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        cors_headers(head, allowed)
    )
}

/// A refusal, with the CORS headers for an allowed Origin (so its page can read why).
pub fn refusal_response(head: &RequestHead, allowed: bool, status: u16, reason: &str) -> String {
    let plain = super::handshake::plain_response(status, reason);
    let cors = cors_headers(head, allowed);
    match plain.split_once("\r\n") {
        Some((line, rest)) => format!("{line}\r\n{cors}{rest}"),
        None => plain,
    }
}

/// The head of an event stream (its Origin allowed): no caching, no buffering by
/// proxies, and the body ends with the connection.
pub fn stream_head(head: &RequestHead) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Cache-Control: private, no-cache, no-store, must-revalidate, max-age=0\r\n\
         Pragma: no-cache\r\nExpires: 0\r\nX-Accel-Buffering: no\r\n\
         X-Content-Type-Options: nosniff\r\n{}Connection: close\r\n\r\n",
        cors_headers(head, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tls: false,
        }
    }

    fn commands(head: &RequestHead) -> Vec<Value> {
        read_request(head, b"")
            .unwrap()
            .commands
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect()
    }

    #[test]
    fn a_get_subscribes_to_what_its_query_names() {
        let c = commands(&get("/events?channel=ChatChannel&stream=x", &[]));
        assert_eq!(c[0]["identifier"], r#"{"channel":"ChatChannel"}"#);
        let c = commands(&get("/events?signed_stream=a%2Bb--c", &[]));
        assert_eq!(
            c[0]["identifier"],
            r#"{"channel":"$pubsub","signed_stream_name":"a+b--c"}"#
        );
        let c = commands(&get("/events?turbo_signed_stream_name=t", &[]));
        assert_eq!(
            c[0]["identifier"],
            r#"{"channel":"Turbo::StreamsChannel","signed_stream_name":"t"}"#
        );
        let refused = read_request(&get("/events?raw=1", &[]), b"").unwrap_err();
        assert_eq!(refused.status, 400);
    }

    #[test]
    fn a_get_asks_history_since_its_last_event() {
        let head = get(
            "/events?stream=chat&history_since=100",
            &[("last-event-id", "7/e1/chat")],
        );
        let c = commands(&head);
        assert_eq!(c[0]["history"]["since"], 100);
        assert_eq!(c[0]["history"]["streams"]["chat"]["offset"], 7);
        assert_eq!(c[0]["history"]["streams"]["chat"]["epoch"], "e1");
        let bad = get("/events?stream=chat", &[("last-event-id", "x/e/chat")]);
        assert_eq!(read_request(&bad, b"").unwrap_err().status, 400);
        let raw = read_request(&get("/events?stream=chat&raw=1", &[]), b"").unwrap();
        assert_eq!(raw.mode, EventMode::Raw);
    }

    #[test]
    fn a_post_takes_subscribe_lines_only() {
        let mut head = get("/events", &[]);
        head.method = "POST".into();
        let body = b"{\"command\":\"subscribe\",\"identifier\":\"a\"}\n\n{\"identifier\":\"b\"}";
        let request = read_request(&head, body).unwrap();
        assert_eq!(request.mode, EventMode::Envelope);
        assert_eq!(request.commands.len(), 2);
        let refused = read_request(&head, b"{\"command\":\"message\",\"identifier\":\"a\"}");
        assert_eq!(refused.unwrap_err().status, 400);
        assert_eq!(read_request(&head, b"nope").unwrap_err().status, 400);
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(read_request(&head, &big).unwrap_err().status, 413);
        head.method = "PUT".into();
        assert_eq!(read_request(&head, b"").unwrap_err().status, 405);
    }

    #[test]
    fn only_an_allowed_origin_may_read() {
        let head = get("/events", &[("origin", "http://app.test")]);
        assert!(cors_headers(&head, true).contains("Access-Control-Allow-Origin: http://app.test"));
        assert_eq!(cors_headers(&head, false), "");
        assert!(!preflight_response(&head, false).contains("Allow-Origin"));
        let injected = get("/events", &[("origin", "http://a.test\r\nX-Evil: 1")]);
        assert_eq!(cors_headers(&injected, true), "");
    }

    #[test]
    fn a_cross_site_request_without_origin_is_refused() {
        use crate::http::origin::{request_allowed as origin_allowed, OriginPolicy};
        let policy = OriginPolicy {
            rules: vec![crate::http::OriginRule::Exact("http://app.test".into())],
            ..Default::default()
        };
        assert!(origin_allowed(&get("/events", &[]), &policy));
        assert!(origin_allowed(
            &get("/events", &[("sec-fetch-site", "same-origin")]),
            &policy
        ));
        assert!(!origin_allowed(
            &get("/events", &[("sec-fetch-site", "cross-site")]),
            &policy
        ));
        assert!(origin_allowed(
            &get("/events", &[("origin", "http://app.test")]),
            &policy
        ));
        assert!(!origin_allowed(
            &get("/events", &[("origin", "http://evil.test")]),
            &policy
        ));
    }
}
