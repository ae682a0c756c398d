//! `http::parse_head` and `check_upgrade`: the request head a client sends on the
//! server's own port.

use anycable_core::http::handshake::{check_upgrade, switching_protocols};
use anycable_core::http::{parse_head, RequestHead};
use anycable_core::protocol::SUBPROTOCOLS;
use anycable_core::ServerConfig;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::*;

type Bytes = Vec<u8>;

/// `valid` mostly, else something near it or anything.
fn token(
    valid: &'static str,
    near: Vec<&'static str>,
    other: &'static str,
) -> BoxedStrategy<Bytes> {
    prop_oneof![
        40 => Just(valid.as_bytes().to_vec()),
        3 => prop::sample::select(near).prop_map(|s| s.as_bytes().to_vec()),
        1 => other.prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
    .boxed()
}

/// A header name as sent, in any case.
fn name(name: &'static str) -> BoxedStrategy<Bytes> {
    prop_oneof![
        6 => Just(name.as_bytes().to_vec()),
        1 => Just(name.to_ascii_lowercase().into_bytes()),
        1 => Just(name.to_ascii_uppercase().into_bytes()),
    ]
    .boxed()
}

/// A valid upgrade request, edited.
pub(super) fn near_valid() -> impl Strategy<Value = Bytes> {
    let method = token("GET", vec!["POST", "get", "PRI", ""], "[A-Z]{1,8}");
    let target = token(
        "/cable",
        vec![
            "/cable?x=1",
            "/health",
            "*",
            "/a b",
            "/%00",
            "",
            "/_broadcast",
        ],
        "/[ -~]{0,40}",
    );
    let version = token(
        "HTTP/1.1",
        vec!["HTTP/1.0", "HTTP/2.0", "http/1.1"],
        "HTTP/[0-9.]{0,4}",
    );
    let value = |valid, near| token(valid, near, "[ -~]{0,40}");
    let headers = edited(
        vec![
            (name("Host"), value("x", vec!["", "a b", "good.test:3000"])),
            (
                name("Upgrade"),
                value(
                    "websocket",
                    vec!["WebSocket", "h2c, websocket", "web socket"],
                ),
            ),
            (
                name("Connection"),
                value("Upgrade", vec!["keep-alive, Upgrade", "close"]),
            ),
            (
                name("Sec-WebSocket-Version"),
                value("13", vec![" 13 ", "8", "13, 8"]),
            ),
            (
                name("Sec-WebSocket-Key"),
                value("dGhlIHNhbXBsZSBub25jZQ==", vec!["", " ", "\u{e9}"]),
            ),
            (
                name("Sec-WebSocket-Protocol"),
                value(
                    "actioncable-v1-json, actioncable-unsupported",
                    vec!["", ",,", "x"],
                ),
            ),
            (
                name("Origin"),
                value("https://good.test", vec!["null", "", "caf\u{e9}"]),
            ),
        ],
        (
            prop_oneof![
                6 => "[A-Za-z][A-Za-z0-9-]{0,19}".prop_map(String::into_bytes),
                1 => prop::sample::select(vec!["", " Upgrade", "Up:grade"])
                    .prop_map(|s| s.as_bytes().to_vec()),
                1 => "[!-~]{1,20}".prop_map(String::into_bytes),
                1 => prop::collection::vec(any::<u8>(), 0..12),
            ]
            .boxed(),
            prop_oneof![
                6 => "[ -~]{0,40}".prop_map(String::into_bytes),
                1 => prop::sample::select(vec!["", "a\r\n folded", "\u{e9}", "\0"])
                    .prop_map(|s| s.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..40),
            ]
            .boxed(),
        ),
        true,
        0..3,
    );
    // Past 64 headers the parser gives up.
    let padding = prop_oneof![8 => Just(0usize), 1 => 55usize..70];
    let eol = prop_oneof![10 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])];
    let end = prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)];
    (method, target, version, headers, padding, eol, end).prop_map(
        |(method, target, version, headers, padding, eol, end)| {
            let mut out = [method, target, version].join(&b' ');
            out.extend_from_slice(eol);
            let padding = (0..padding).map(|i| (format!("X-Pad-{i}").into_bytes(), b"1".to_vec()));
            for (name, value) in headers.into_iter().chain(padding) {
                out.extend_from_slice(&name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(&value);
                out.extend_from_slice(eol);
            }
            match end {
                0 => out.extend_from_slice(eol),
                1 => out.extend_from_slice(b"\r\n{\"body\":1}"),
                _ => {}
            }
            out
        },
    )
}

/// Whether RFC 6455 (4.2.1) says the server must accept this request.
fn rfc_valid(head: &RequestHead) -> bool {
    let has_token = |name: &str, token: &str| {
        head.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    head.method == "GET"
        && head.header("host").is_some()
        && has_token("upgrade", "websocket")
        && has_token("connection", "upgrade")
        && head.header("sec-websocket-version").map(str::trim) == Some("13")
        && head
            .header("sec-websocket-key")
            .is_some_and(|k| !k.trim().is_empty())
}

fn check_head(buf: &[u8], cut: prop::sample::Index) -> Result<(), TestCaseError> {
    let Ok(Some((head, len))) = parse_head(buf) else {
        return Ok(());
    };
    prop_assert!(len <= buf.len());
    prop_assert!(!head.method.is_empty() && !head.method.contains(' '));
    prop_assert!(head.headers.len() <= 64);
    for (name, _) in &head.headers {
        prop_assert_eq!(name, &name.to_ascii_lowercase());
    }
    // The server reads a head as it arrives: every shorter prefix must ask for more,
    // or a client whose head came in two segments would get a 400.
    let short = cut.index(len);
    prop_assert!(
        matches!(parse_head(&buf[..short]), Ok(None)),
        "the first {} bytes are refused",
        short
    );
    // The head alone parses to the same.
    let again = parse_head(&buf[..len]);
    prop_assert!(
        matches!(&again, Ok(Some((h, l))) if *l == len
            && (&h.method, &h.target, &h.headers) == (&head.method, &head.target, &head.headers)),
        "{:?}",
        again
    );

    // The default origin policy allows any Origin.
    match check_upgrade(&head, &ServerConfig::default().origins) {
        Ok(upgrade) => {
            prop_assert_eq!(head.method.as_str(), "GET");
            let key = head.header("sec-websocket-key").unwrap_or("").trim();
            prop_assert_eq!(&upgrade.accept_key, &derive_accept_key(key.as_bytes()));
            prop_assert!(upgrade.protocol.is_none_or(|p| SUBPROTOCOLS.contains(&p)));
            let reply = switching_protocols(&upgrade);
            prop_assert_eq!(reply.find("\r\n\r\n"), Some(reply.len() - 4));
        }
        Err(refusal) => {
            prop_assert!(!rfc_valid(&head), "refused a valid upgrade: {:?}", refusal);
            prop_assert!(matches!(refusal.status, 400 | 403 | 405));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(PARSER_CASES))]

    #[test]
    fn heads_from_any_bytes(
        buf in prop::collection::vec(any::<u8>(), 0..512),
        cut in any::<prop::sample::Index>(),
    ) {
        check_head(&buf, cut)?;
    }

    #[test]
    fn near_valid_heads(buf in near_valid(), cut in any::<prop::sample::Index>()) {
        check_head(&buf, cut)?;
    }
}
