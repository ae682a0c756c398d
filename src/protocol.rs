//! The Action Cable wire format: what clients send and what the server sends back.
//!
//! Every message type lives here, so the rest of the crate never writes JSON by hand.
//! Frames that are sent to many clients (pings, broadcasts) are built once as
//! [`Utf8Bytes`], whose clones share one buffer.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Subprotocols we speak, in order of preference.
pub const SUBPROTOCOLS: &[&str] = &["actioncable-v1-json"];

/// A command from a client, e.g. `{"command":"subscribe","identifier":"{…}"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCommand {
    pub command: Command,
    pub identifier: String,
    /// `data` of a `message` command: the JSON-encoded string's text, decoded once;
    /// of a `whisper`: the JSON value's text as sent (AnyCable does not encode it).
    pub data: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Subscribe,
    Unsubscribe,
    Message,
    /// AnyCable's: `data` goes to the other subscribers of the subscription's whisper
    /// stream. Handled by the server, never by the app.
    Whisper,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Subscribe => "subscribe",
            Command::Unsubscribe => "unsubscribe",
            Command::Message => "message",
            Command::Whisper => "whisper",
        }
    }
}

/// Why a client frame could not be turned into a [`ClientCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Malformed(String),
    UnknownCommand(String),
    MissingIdentifier,
    InvalidData,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Malformed(e) => write!(f, "malformed message: {e}"),
            ParseError::UnknownCommand(c) => write!(f, "unknown command: {c:?}"),
            ParseError::MissingIdentifier => f.write_str("command without an identifier"),
            ParseError::InvalidData => f.write_str("message data must be a JSON-encoded string"),
        }
    }
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    command: Option<std::borrow::Cow<'a, str>>,
    identifier: Option<String>,
    data: Option<Box<RawValue>>,
}

/// Parses one client frame.
pub fn parse_command(text: &str) -> Result<ClientCommand, ParseError> {
    // serde would also read a JSON array into the struct, field by field.
    if !text.trim_start().starts_with('{') {
        return Err(ParseError::Malformed(
            "a command must be a JSON object".into(),
        ));
    }
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let name = raw
        .command
        .ok_or_else(|| ParseError::UnknownCommand(String::new()))?;
    let command = match name.as_ref() {
        "subscribe" => Command::Subscribe,
        "unsubscribe" => Command::Unsubscribe,
        "message" => Command::Message,
        "whisper" => Command::Whisper,
        other => return Err(ParseError::UnknownCommand(other.to_string())),
    };
    let identifier = raw.identifier.ok_or(ParseError::MissingIdentifier)?;
    let data = match (command, raw.data) {
        (Command::Message, Some(raw)) => {
            Some(serde_json::from_str::<String>(raw.get()).map_err(|_| ParseError::InvalidData)?)
        }
        (Command::Message, None) => return Err(ParseError::InvalidData),
        (Command::Whisper, Some(raw)) => Some(raw.get().to_string()),
        (Command::Whisper, None) => return Err(ParseError::InvalidData),
        _ => None,
    };
    Ok(ClientCommand {
        command,
        identifier,
        data,
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

/// `{"type":"welcome","sid":"…"}`
pub fn welcome(sid: &str) -> String {
    format!(r#"{{"type":"welcome","sid":{}}}"#, json_string(sid))
}

/// `{"type":"ping","message":<unix seconds>}`
pub fn ping(unix_seconds: u64) -> Utf8Bytes {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#).into()
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
    let mut out = String::with_capacity(identifier.len() + data.len() + 32);
    out.push_str(r#"{"identifier":"#);
    out.push_str(&json_string(identifier));
    out.push_str(r#","message":"#);
    if serde_json::from_str::<&RawValue>(data).is_ok() {
        out.push_str(data.trim());
    } else {
        out.push_str(&json_string(data));
    }
    out.push('}');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_json_object_only() {
        assert!(matches!(
            parse_command(r#"["subscribe","x",null]"#),
            Err(ParseError::Malformed(_))
        ));
        assert!(parse_command(r#" {"command":"subscribe","identifier":"x"}"#).is_ok());
    }

    #[test]
    fn parses_subscribe() {
        let c = parse_command(
            r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}"#,
        )
        .unwrap();
        assert_eq!(c.command, Command::Subscribe);
        assert_eq!(c.identifier, r#"{"channel":"ChatChannel"}"#);
        assert_eq!(c.data, None);
    }

    #[test]
    fn parses_message_data_as_string() {
        let c = parse_command(
            r#"{"command":"message","identifier":"x","data":"{\"action\":\"speak\"}"}"#,
        )
        .unwrap();
        assert_eq!(c.data.as_deref(), Some(r#"{"action":"speak"}"#));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            parse_command("{nope"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(
            parse_command(r#"{"command":"dance","identifier":"x"}"#),
            Err(ParseError::UnknownCommand("dance".into()))
        );
        assert_eq!(
            parse_command(r#"{"command":"subscribe"}"#),
            Err(ParseError::MissingIdentifier)
        );
        assert_eq!(
            parse_command(r#"{"command":"message","identifier":"x","data":{"a":1}}"#),
            Err(ParseError::InvalidData)
        );
        assert!(matches!(parse_command("[]"), Err(ParseError::Malformed(_))));
    }

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
}
