//! The HTTP side of a connection: parse a request head, answer `/health`, check an
//! upgrade request (method, headers, Origin, subprotocol) and write the `101` reply.
//!
//! Both entry points share it: sockets accepted on the server's own port, whose head we
//! read here, and sockets handed over by Rack hijack, whose head Puma already parsed.

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::ServerConfig;
use crate::protocol::SUBPROTOCOLS;

/// A parsed HTTP request head. Header names are lower-case.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: String,
    /// Path with query string, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The connection itself came over TLS (Puma's `HTTPS`/`rack.url_scheme`).
    pub tls: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Rack's `Request#ssl?`: TLS on this connection, else what a proxy says
    /// (`X-Forwarded-Ssl: on`, `X-Forwarded-Scheme`, the first `X-Forwarded-Proto`).
    pub fn https(&self) -> bool {
        if self.tls || self.header("x-forwarded-ssl") == Some("on") {
            return true;
        }
        let allowed = |s: &str| ["https", "http", "wss", "ws"].contains(&s);
        let scheme = self
            .header("x-forwarded-scheme")
            .filter(|s| allowed(s))
            .or_else(|| {
                self.header("x-forwarded-proto")
                    .map(|p| p.split(',').next().unwrap_or(""))
                    .filter(|s| allowed(s))
            });
        matches!(scheme, Some("https" | "wss"))
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses a request head from `buf`: `Ok(None)` while incomplete, else the head and
/// how many bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let head = RequestHead {
                method: req.method.unwrap_or("").to_string(),
                target: req.path.unwrap_or("").to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                tls: false,
            };
            Ok(Some((head, len)))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// An accepted upgrade: what goes into the `101` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub accept_key: String,
    pub protocol: Option<&'static str>,
}

/// A refused request: status and a short text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// Checks a WebSocket upgrade request against RFC 6455 and the origin policy.
pub fn check_upgrade(head: &RequestHead, config: &ServerConfig) -> Result<Upgrade, Refusal> {
    if head.method != "GET" {
        return Err(Refusal::new(405, "WebSocket upgrade needs GET"));
    }
    if !head.header_has_token("upgrade", "websocket") {
        return Err(Refusal::new(400, "missing Upgrade: websocket"));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal::new(400, "unsupported Sec-WebSocket-Version"));
    }
    let key = head
        .header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Refusal::new(400, "missing Sec-WebSocket-Key"))?;
    if !config
        .origins
        .allows(head.header("origin"), head.header("host"), head.https())
    {
        return Err(Refusal::new(
            403,
            format!(
                "origin not allowed: {}",
                head.header("origin").unwrap_or("(none)")
            ),
        ));
    }
    Ok(Upgrade {
        accept_key: derive_accept_key(key.as_bytes()),
        protocol: choose_protocol(head),
    })
}

/// The first subprotocol the client offers that we speak. A client that offers none we
/// speak is still accepted, without the header, as Action Cable does.
pub fn choose_protocol(head: &RequestHead) -> Option<&'static str> {
    head.headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .find_map(|offered| SUBPROTOCOLS.iter().find(|p| **p == offered).copied())
}

pub fn switching_protocols(upgrade: &Upgrade) -> String {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        upgrade.accept_key
    );
    if let Some(p) = upgrade.protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

pub fn plain_response(status: u16, body: &str) -> String {
    let text = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(extra: &[(&str, &str)]) -> RequestHead {
        let mut headers = vec![
            ("upgrade".to_string(), "websocket".to_string()),
            ("connection".to_string(), "Upgrade".to_string()),
            ("sec-websocket-version".to_string(), "13".to_string()),
            (
                "sec-websocket-key".to_string(),
                "dGhlIHNhbXBsZSBub25jZQ==".to_string(),
            ),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        RequestHead {
            method: "GET".into(),
            target: "/cable?jid=1".into(),
            headers,
            tls: false,
        }
    }

    #[test]
    fn parses_a_head_in_pieces() {
        let raw = b"GET /cable?x=1 HTTP/1.1\r\nHost: a\r\nX-Request-ID: r1\r\n\r\nrest";
        assert_eq!(parse_head(&raw[..10]).unwrap().map(|h| h.1), None);
        let (h, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(h.path(), "/cable");
        assert_eq!(h.header("X-Request-Id"), Some("r1"));
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn accepts_upgrade_with_rfc_accept_key_and_protocol() {
        let up = check_upgrade(
            &head(&[(
                "sec-websocket-protocol",
                "actioncable-v1-json, actioncable-unsupported",
            )]),
            &ServerConfig::default(),
        )
        .unwrap();
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocol, Some("actioncable-v1-json"));
        let protocol = |offer: &str| {
            check_upgrade(
                &head(&[("sec-websocket-protocol", offer)]),
                &ServerConfig::default(),
            )
            .unwrap()
            .protocol
        };
        assert_eq!(
            protocol("actioncable-v1-ext-json"),
            Some("actioncable-v1-ext-json")
        );
        // The client's order decides.
        assert_eq!(
            protocol("actioncable-v1-ext-json, actioncable-v1-json"),
            Some("actioncable-v1-ext-json")
        );
        assert_eq!(
            protocol("anycable-token.x, actioncable-v1-json, actioncable-v1-ext-json"),
            Some("actioncable-v1-json")
        );
        assert_eq!(
            check_upgrade(&head(&[]), &ServerConfig::default())
                .unwrap()
                .protocol,
            None
        );
    }

    #[test]
    fn refuses_bad_requests() {
        let config = ServerConfig::default();
        let mut h = head(&[]);
        h.method = "POST".into();
        assert_eq!(check_upgrade(&h, &config).unwrap_err().status, 405);
        let mut h = head(&[]);
        h.headers.retain(|(k, _)| k != "sec-websocket-key");
        assert_eq!(check_upgrade(&h, &config).unwrap_err().status, 400);
    }

    #[test]
    fn refuses_a_disallowed_origin_with_403() {
        use crate::origin::{OriginPolicy, OriginRule};
        let config = ServerConfig {
            origins: OriginPolicy {
                same_as_host: true,
                rules: vec![OriginRule::Exact("https://good.test".into())],
                ..Default::default()
            },
            ..Default::default()
        };
        let refused =
            |extra: &[(&str, &str)]| check_upgrade(&head(extra), &config).err().map(|r| r.status);
        assert_eq!(refused(&[("origin", "https://evil.com")]), Some(403));
        assert_eq!(refused(&[]), Some(403));
        assert_eq!(refused(&[("origin", "https://good.test")]), None);
        // Same origin as Host, with the scheme a proxy reports.
        assert_eq!(
            refused(&[("origin", "http://h.test"), ("host", "h.test")]),
            None
        );
        let behind_tls = [
            ("origin", "https://h.test"),
            ("host", "h.test"),
            ("x-forwarded-proto", "https,http"),
        ];
        assert_eq!(refused(&behind_tls), None);
        assert_eq!(
            refused(&[("origin", "https://h.test"), ("host", "h.test")]),
            Some(403)
        );
    }
}
