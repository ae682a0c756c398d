//! AnyCable's broadcast payload, as publishers send it (HTTP `POST /_broadcast`, and the
//! pub/sub adapters): one message, or an array of them.
//!
//! ```text
//! {"stream":"chat_42","data":"<JSON string>","meta":{"exclude_socket":"<sid>"}}
//! {"command":"disconnect","payload":{"identifier":"<identifiers JSON>","reconnect":true}}
//! ```

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum BroadcastMessage {
    Stream {
        stream: String,
        /// The payload as clients get it in `message`: JSON text.
        data: String,
        exclude_socket: Option<String>,
        /// `meta.transient` (whispers, AnyCable's transient broadcasts): delivered,
        /// never stored in the history nor given an offset.
        transient: bool,
        /// `meta.whisper` (ours; implies `transient`): a client's whisper, delivered
        /// only to subscriptions that take whispers on the stream, never to the app's
        /// `stream_from` blocks.
        whisper: bool,
    },
    /// Close the connections whose identifiers equal `identifiers` (compared as JSON).
    Disconnect { identifiers: Value, reconnect: bool },
}

#[derive(Deserialize)]
struct Raw<'a> {
    stream: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    command: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// A nested object (`meta`, `payload`). serde would also take a JSON array for a
/// struct, field by field; AnyCable takes objects only, and so do we.
fn object<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    what: &str,
) -> Result<Option<T>, String> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) if text.starts_with('{') => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("invalid {what}: {e}")),
        Some(_) => Err(format!("{what} must be a JSON object")),
    }
}

#[derive(Deserialize)]
struct Meta {
    exclude_socket: Option<String>,
    transient: Option<bool>,
    whisper: Option<bool>,
}

#[derive(Deserialize)]
struct CommandPayload {
    identifier: Option<String>,
    reconnect: Option<bool>,
}

/// The AnyCable payload for `messages` (one message, or an array): what [`parse`] reads.
pub fn to_payload(messages: &[BroadcastMessage]) -> String {
    let one = |m: &BroadcastMessage| match m {
        BroadcastMessage::Stream {
            stream,
            data,
            exclude_socket,
            transient,
            whisper,
        } => {
            let mut v = serde_json::json!({"stream": stream, "data": data});
            if exclude_socket.is_some() || *transient || *whisper {
                let mut meta = serde_json::Map::new();
                if let Some(sid) = exclude_socket {
                    meta.insert("exclude_socket".into(), sid.clone().into());
                }
                if *transient || *whisper {
                    meta.insert("transient".into(), true.into());
                }
                if *whisper {
                    meta.insert("whisper".into(), true.into());
                }
                v["meta"] = meta.into();
            }
            v
        }
        BroadcastMessage::Disconnect {
            identifiers,
            reconnect,
        } => serde_json::json!({
            "command": "disconnect",
            "payload": {"identifier": identifiers.to_string(), "reconnect": reconnect}
        }),
    };
    match messages {
        [single] => one(single).to_string(),
        many => Value::Array(many.iter().map(one).collect()).to_string(),
    }
}

/// Parses a payload into messages; an error says what is wrong, for a 422 reply.
pub fn parse(payload: &str) -> Result<Vec<BroadcastMessage>, String> {
    let trimmed = payload.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(trimmed).map_err(|e| format!("invalid JSON: {e}"))?;
        items.into_iter().map(|raw| parse_one(raw.get())).collect()
    } else {
        Ok(vec![parse_one(trimmed)?])
    }
}

fn parse_one(text: &str) -> Result<BroadcastMessage, String> {
    if !text.trim_start().starts_with('{') {
        return Err("a broadcast message must be a JSON object".into());
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(command) = raw.command {
        if command != "disconnect" {
            return Err(format!("unknown command {command:?}"));
        }
        let payload: CommandPayload =
            object(raw.payload, "payload")?.ok_or("disconnect without payload")?;
        let identifier = payload.identifier.ok_or("disconnect without identifier")?;
        let identifiers = serde_json::from_str(&identifier)
            .map_err(|e| format!("disconnect identifier is not JSON: {e}"))?;
        return Ok(BroadcastMessage::Disconnect {
            identifiers,
            reconnect: payload.reconnect.unwrap_or(true),
        });
    }
    let stream = raw
        .stream
        .filter(|s| !s.is_empty())
        .ok_or("missing stream")?;
    let data = raw.data.ok_or("missing data")?;
    // AnyCable sends data as a JSON-encoded string; accept plain JSON values too.
    let data = match serde_json::from_str::<String>(data.get()) {
        Ok(s) => s,
        Err(_) => data.get().to_string(),
    };
    let meta = object::<Meta>(raw.meta, "meta")?;
    let whisper = meta.as_ref().and_then(|m| m.whisper).unwrap_or(false);
    let transient = whisper || meta.as_ref().and_then(|m| m.transient).unwrap_or(false);
    Ok(BroadcastMessage::Stream {
        stream,
        data,
        exclude_socket: meta.and_then(|m| m.exclude_socket),
        transient,
        whisper,
    })
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Marks an `exclude_socket` that names a session by [`exclude_digest`], not its sid.
pub const SID_DIGEST_PREFIX: &str = "sha256:";

/// `sha256:<hex>` of a sid (one already in that form stays as it is): how a broadcast
/// this server publishes names the socket it skips. A sid restores its session (a
/// credential), so it never travels on a pub/sub subject nor is stored; receivers match
/// a raw sid (AnyCable's publishers send those) or its digest. Ruby's
/// `AnyCableRs::JetStream.exclude_digest` makes the same.
pub fn exclude_digest(sid: &str) -> String {
    if sid.starts_with(SID_DIGEST_PREFIX) {
        return sid.to_owned();
    }
    format!("{SID_DIGEST_PREFIX}{}", sha256_hex(sid.as_bytes()))
}

/// `payload` with every `exclude_socket` as its [`exclude_digest`]: what goes out on a
/// pub/sub. A payload with none (the usual broadcast) is returned as it is, unparsed;
/// one that does not parse too (it was checked where it entered).
pub fn digest_excludes(payload: String) -> String {
    // Most payloads name no socket, and Ruby's publishers send digests already: only
    // a raw sid is worth a parse.
    let raw_sid = payload
        .match_indices(r#""exclude_socket""#)
        .any(|(at, key)| {
            !payload[at + key.len()..]
                .trim_start()
                .strip_prefix(':')
                .is_some_and(|value| value.trim_start().starts_with(r#""sha256:"#))
        });
    if !raw_sid {
        return payload;
    }
    let Ok(mut messages) = parse(&payload) else {
        return payload;
    };
    let mut changed = false;
    for message in &mut messages {
        if let BroadcastMessage::Stream {
            exclude_socket: Some(sid),
            ..
        } = message
        {
            if !sid.starts_with(SID_DIGEST_PREFIX) {
                *sid = exclude_digest(sid);
                changed = true;
            }
        }
    }
    if changed {
        to_payload(&messages)
    } else {
        payload
    }
}

/// Refuses broadcast data no client could receive: its frame (data plus identifier and
/// wrapper, allowed 4 KiB) must fit in a client's `max_pending_bytes`, or every
/// subscriber would be disconnected as `too_slow` instead. Every process checks with
/// this (Ruby publishers through the extension).
pub fn check_size(len: usize, max_pending_bytes: usize) -> Result<(), BroadcastError> {
    let limit = max_pending_bytes.saturating_sub(4096);
    if len > limit {
        return Err(BroadcastError::TooLarge { size: len, limit });
    }
    Ok(())
}

/// Why a broadcast was refused where it entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastError {
    /// Not an AnyCable payload; says what is wrong.
    Malformed(String),
    /// Its data could never be delivered: every subscriber would be disconnected as
    /// `too_slow` instead (the frame is over `max_pending_bytes`).
    TooLarge { size: usize, limit: usize },
}

impl BroadcastError {
    /// The HTTP status for it.
    pub fn status(&self) -> u16 {
        match self {
            BroadcastError::Malformed(_) => 422,
            BroadcastError::TooLarge { .. } => 413,
        }
    }
}

impl std::fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BroadcastError::Malformed(e) => f.write_str(e),
            BroadcastError::TooLarge { size, limit } => write!(
                f,
                "broadcast data of {size} bytes is over the {limit}-byte limit \
                 (ANYCABLE_MAX_PENDING_BYTES less 4 KiB): no client could receive it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests_the_sids_a_payload_excludes() {
        let digest = exclude_digest("sid1");
        assert_eq!(
            digest,
            "sha256:53453a19cbc7f60351e13709237b6025007b6bf5a6974aabaa03d5e19ea1ada3"
        );
        let out = digest_excludes(
            r#"[{"stream":"a","data":"1","meta":{"exclude_socket":"sid1","transient":true}},{"stream":"b","data":"2"}]"#.into(),
        );
        assert!(!out.contains("\"sid1\""), "{out}");
        match &parse(&out).unwrap()[..] {
            [BroadcastMessage::Stream {
                exclude_socket: Some(x),
                transient: true,
                ..
            }, BroadcastMessage::Stream {
                exclude_socket: None,
                ..
            }] => assert_eq!(x, &digest),
            other => panic!("{other:?}"),
        }
        let plain = r#"{"stream":"a","data":"1"}"#.to_string();
        assert_eq!(digest_excludes(plain.clone()), plain);
        let digested =
            format!(r#"{{"stream":"a","data":"1","meta":{{"exclude_socket":"{digest}"}}}}"#);
        assert_eq!(digest_excludes(digested.clone()), digested);
    }

    use super::*;

    #[test]
    fn to_payload_is_read_back_as_written() {
        let messages = vec![
            BroadcastMessage::Stream {
                stream: "s".into(),
                data: r#"{"a":1}"#.into(),
                exclude_socket: Some("sid".into()),
                transient: true,
                whisper: false,
            },
            BroadcastMessage::Stream {
                stream: "w".into(),
                data: "1".into(),
                exclude_socket: None,
                transient: true,
                whisper: true,
            },
            BroadcastMessage::Disconnect {
                identifiers: serde_json::json!({"user": "u1"}),
                reconnect: false,
            },
        ];
        assert_eq!(parse(&to_payload(&messages)).unwrap(), messages);
        assert_eq!(parse(&to_payload(&messages[..1])).unwrap(), messages[..1]);
    }

    #[test]
    fn takes_objects_only_where_anycable_does() {
        assert!(parse(r#"["s","{}",null]"#).is_err());
        assert!(parse(r#"[["s","1",null,null,null]]"#).is_err());
        assert!(parse(r#"{"stream":"s","data":"1","meta":["sid"]}"#).is_err());
        assert!(parse(r#"{"command":"disconnect","payload":["{}",true]}"#).is_err());
        assert!(parse(r#"{"stream":"s","data":"1","meta":null}"#).is_ok());
    }

    #[test]
    fn parses_single_batch_exclude_and_disconnect() {
        assert_eq!(
            parse(r#"{"stream":"s","data":"{\"a\":1}"}"#).unwrap(),
            vec![BroadcastMessage::Stream {
                stream: "s".into(),
                data: r#"{"a":1}"#.into(),
                exclude_socket: None,
                transient: false,
                whisper: false
            }]
        );
        let batch = parse(
            r#"[{"stream":"a","data":"1","meta":{"exclude_socket":"sid1"}},{"stream":"b","data":{"x":2}}]"#,
        )
        .unwrap();
        assert_eq!(
            batch,
            vec![
                BroadcastMessage::Stream {
                    stream: "a".into(),
                    data: "1".into(),
                    exclude_socket: Some("sid1".into()),
                    transient: false,
                    whisper: false
                },
                BroadcastMessage::Stream {
                    stream: "b".into(),
                    data: r#"{"x":2}"#.into(),
                    exclude_socket: None,
                    transient: false,
                    whisper: false
                }
            ]
        );
        assert_eq!(
            parse(r#"{"command":"disconnect","payload":{"identifier":"{\"user\":\"u1\"}","reconnect":false}}"#)
                .unwrap(),
            vec![BroadcastMessage::Disconnect {
                identifiers: serde_json::json!({"user":"u1"}),
                reconnect: false
            }]
        );
    }

    #[test]
    fn a_whisper_is_transient() {
        assert!(matches!(
            parse(r#"{"stream":"s","data":"1","meta":{"whisper":true}}"#).unwrap()[0],
            BroadcastMessage::Stream {
                transient: true,
                whisper: true,
                ..
            }
        ));
    }

    #[test]
    fn reads_transient_from_meta() {
        assert!(matches!(
            parse(r#"{"stream":"s","data":"1","meta":{"transient":true,"exclude_socket":"x"}}"#)
                .unwrap()[0],
            BroadcastMessage::Stream {
                transient: true,
                ..
            }
        ));
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(parse("nope").unwrap_err().contains("must be a JSON object"));
        assert!(parse("{nope").unwrap_err().contains("invalid JSON"));
        assert_eq!(parse(r#"{"data":"1"}"#).unwrap_err(), "missing stream");
        assert_eq!(parse(r#"{"stream":"s"}"#).unwrap_err(), "missing data");
        assert!(parse(r#"{"command":"dance"}"#)
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse(r#"[{"stream":"s","data":"1"},{"stream":""}]"#).is_err());
    }
}
