//! What the server sends: every frame type as a function that builds its JSON.

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

/// `{"type":"welcome","sid":"…"}`
pub fn welcome(sid: &str) -> String {
    format!(r#"{{"type":"welcome","sid":{}}}"#, json_string(sid))
}

/// `{"type":"welcome","sid":"…","restored":true,"restored_ids":[…]}`: a restored
/// session's welcome, with the identifiers of the subscriptions it got back.
pub fn welcome_restored(sid: &str, restored_ids: &[&str]) -> String {
    serde_json::json!({
        "type": "welcome",
        "sid": sid,
        "restored": true,
        "restored_ids": restored_ids,
    })
    .to_string()
}

/// `{"type":"presence","identifier":"…","message":<message>}` (`message`: JSON).
pub fn presence_frame(identifier: &str, message: &str) -> Utf8Bytes {
    format!(
        r#"{{"type":"presence","identifier":{},"message":{message}}}"#,
        json_string(identifier)
    )
    .into()
}

/// `{"type":"ping","message":<unix seconds>}`
pub fn ping(unix_seconds: u64) -> Utf8Bytes {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#).into()
}

/// `{"type":"pong"}`: the answer to a client's `{"command":"ping"}`.
pub fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"pong"}"#)
}

/// `{"type":"confirm_history","identifier":"…"}` or `reject_history`.
pub fn history_reply(identifier: &str, confirmed: bool) -> String {
    let kind = if confirmed {
        "confirm_history"
    } else {
        "reject_history"
    };
    format!(
        r#"{{"type":"{kind}","identifier":{}}}"#,
        json_string(identifier)
    )
}

/// Where a broadcast sits in its stream's history (memory broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
}

/// `{"type":"disconnect","reason":"…","reconnect":bool}`
pub fn disconnect(reason: &str, reconnect: bool) -> String {
    format!(
        r#"{{"type":"disconnect","reason":{},"reconnect":{reconnect}}}"#,
        json_string(reason)
    )
}

/// `{"identifier":"…","type":"confirm_subscription"}` or `reject_subscription`.
pub fn subscription_reply(identifier: &str, confirmed: bool) -> String {
    let kind = if confirmed {
        "confirm_subscription"
    } else {
        "reject_subscription"
    };
    format!(
        r#"{{"identifier":{},"type":"{kind}"}}"#,
        json_string(identifier)
    )
}

/// `{"identifier":"…","message":<data>}`: a broadcast as the subscriber of one
/// identifier sees it. `data` is the broadcast payload, already JSON; anything that is
/// not valid JSON is sent as a JSON string, so a client never gets a broken frame.
pub fn broadcast_frame(identifier: &str, data: &str) -> Utf8Bytes {
    broadcast_frame_at(identifier, data, None)
}

/// [`broadcast_frame`] with the message's place in its stream's history, when there is
/// one: `…,"stream_id":"…","epoch":"…","offset":N}` (for either protocol, as AnyCable's
/// one encoder does).
pub fn broadcast_frame_at(identifier: &str, data: &str, at: Option<Position<'_>>) -> Utf8Bytes {
    let extra = at.map_or(0, |p| p.stream.len() + p.epoch.len() + 64);
    let mut out = String::with_capacity(identifier.len() + data.len() + 32 + extra);
    out.push_str(r#"{"identifier":"#);
    out.push_str(&json_string(identifier));
    out.push_str(r#","message":"#);
    if serde_json::from_str::<&RawValue>(data).is_ok() {
        out.push_str(data.trim());
    } else {
        out.push_str(&json_string(data));
    }
    if let Some(p) = at {
        use std::fmt::Write;
        out.push_str(r#","stream_id":"#);
        out.push_str(&json_string(p.stream));
        out.push_str(r#","epoch":"#);
        out.push_str(&json_string(p.epoch));
        let _ = write!(out, r#","offset":{}"#, p.offset);
    }
    out.push('}');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_server_frames() {
        assert_eq!(welcome("abc"), r#"{"type":"welcome","sid":"abc"}"#);
        assert_eq!(ping(5).as_str(), r#"{"type":"ping","message":5}"#);
        assert_eq!(
            disconnect("unauthorized", false),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert_eq!(
            broadcast_frame(r#"{"channel":"A"}"#, r#"{"text":"hi"}"#).as_str(),
            r#"{"identifier":"{\"channel\":\"A\"}","message":{"text":"hi"}}"#
        );
        assert_eq!(
            broadcast_frame("i", "not json").as_str(),
            r#"{"identifier":"i","message":"not json"}"#
        );
    }

    #[test]
    fn encodes_positions_and_history_replies() {
        assert_eq!(
            broadcast_frame_at(
                "i",
                r#"{"a":1}"#,
                Some(Position {
                    stream: "chat_42",
                    epoch: "vRXl",
                    offset: 32
                })
            )
            .as_str(),
            r#"{"identifier":"i","message":{"a":1},"stream_id":"chat_42","epoch":"vRXl","offset":32}"#
        );
        assert_eq!(
            history_reply("i", true),
            r#"{"type":"confirm_history","identifier":"i"}"#
        );
        assert_eq!(
            history_reply("i", false),
            r#"{"type":"reject_history","identifier":"i"}"#
        );
        assert_eq!(pong().as_str(), r#"{"type":"pong"}"#);
    }
}
