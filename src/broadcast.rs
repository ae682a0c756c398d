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
    },
    /// Close the connections whose identifiers equal `identifiers` (compared as JSON).
    Disconnect { identifiers: Value, reconnect: bool },
}

#[derive(Deserialize)]
struct Raw<'a> {
    stream: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    meta: Option<Meta>,
    command: Option<String>,
    payload: Option<CommandPayload>,
}

#[derive(Deserialize)]
struct Meta {
    exclude_socket: Option<String>,
}

#[derive(Deserialize)]
struct CommandPayload {
    identifier: Option<String>,
    reconnect: Option<bool>,
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
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(command) = raw.command {
        if command != "disconnect" {
            return Err(format!("unknown command {command:?}"));
        }
        let payload = raw.payload.ok_or("disconnect without payload")?;
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
    Ok(BroadcastMessage::Stream {
        stream,
        data,
        exclude_socket: raw.meta.and_then(|m| m.exclude_socket),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_batch_exclude_and_disconnect() {
        assert_eq!(
            parse(r#"{"stream":"s","data":"{\"a\":1}"}"#).unwrap(),
            vec![BroadcastMessage::Stream {
                stream: "s".into(),
                data: r#"{"a":1}"#.into(),
                exclude_socket: None
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
                    exclude_socket: Some("sid1".into())
                },
                BroadcastMessage::Stream {
                    stream: "b".into(),
                    data: r#"{"x":2}"#.into(),
                    exclude_socket: None
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
    fn says_what_is_wrong() {
        assert!(parse("nope").unwrap_err().contains("invalid JSON"));
        assert_eq!(parse(r#"{"data":"1"}"#).unwrap_err(), "missing stream");
        assert_eq!(parse(r#"{"stream":"s"}"#).unwrap_err(), "missing data");
        assert!(parse(r#"{"command":"dance"}"#)
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse(r#"[{"stream":"s","data":"1"},{"stream":""}]"#).is_err());
    }
}
