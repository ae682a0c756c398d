//! The WebSocket upgrade: check a request (method, headers, Origin, subprotocol) and
//! write the `101` reply, or the plain response that refuses it.
//!
//! Both entry points share it: sockets accepted on the server's own port, whose head the
//! server reads, and sockets handed over by Rack hijack, whose head Puma already parsed.

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::head::RequestHead;
use super::origin::OriginPolicy;
use crate::protocol::SUBPROTOCOLS;

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
pub fn check_upgrade(head: &RequestHead, origins: &OriginPolicy) -> Result<Upgrade, Refusal> {
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
    if !origins.allows(head.header("origin"), head.header("host"), head.https()) {
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
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status_text(status),
        body.len()
    )
}

/// The reason phrase of the statuses the server answers with.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
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
    fn accepts_upgrade_with_rfc_accept_key_and_protocol() {
        let up = check_upgrade(
            &head(&[(
                "sec-websocket-protocol",
                "actioncable-v1-json, actioncable-unsupported",
            )]),
            &OriginPolicy::any(),
        )
        .unwrap();
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocol, Some("actioncable-v1-json"));
        let protocol = |offer: &str| {
            check_upgrade(
                &head(&[("sec-websocket-protocol", offer)]),
                &OriginPolicy::any(),
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
            check_upgrade(&head(&[]), &OriginPolicy::any())
                .unwrap()
                .protocol,
            None
        );
    }

    #[test]
    fn refuses_bad_requests() {
        let config = OriginPolicy::any();
        let mut h = head(&[]);
        h.method = "POST".into();
        assert_eq!(check_upgrade(&h, &config).unwrap_err().status, 405);
        let mut h = head(&[]);
        h.headers.retain(|(k, _)| k != "sec-websocket-key");
        assert_eq!(check_upgrade(&h, &config).unwrap_err().status, 400);
    }

    #[test]
    fn refuses_a_disallowed_origin_with_403() {
        use crate::http::origin::OriginRule;
        let config = OriginPolicy {
            same_as_host: true,
            rules: vec![OriginRule::Exact("https://good.test".into())],
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
