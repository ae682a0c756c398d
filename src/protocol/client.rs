//! What clients send: commands for the app's channels and those the server answers
//! itself (ping, pong, history, presence), parsed from one JSON text frame.

use serde::Deserialize;
use serde_json::value::RawValue;

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
    /// A client's presence `join` on a subscription whose channel decides who joins
    /// (`presence: :ask`): `data` is `{"id":…,"info":…}`. Never parsed from a client's
    /// `command` (its frame is `join`); made by the server for the app.
    Join,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Subscribe => "subscribe",
            Command::Unsubscribe => "unsubscribe",
            Command::Message => "message",
            Command::Whisper => "whisper",
            Command::Join => "join",
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

/// What a client asks to be replayed (`history`, alone or on `subscribe`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Unix seconds; 0 when absent or not a number (JS may send `false`).
    pub since: u64,
    /// Per stream: the last (epoch, offset) the client saw.
    pub streams: Vec<(String, StreamPosition)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

impl HistoryRequest {
    /// AnyCable drops a request that asks for nothing, without a reply.
    pub fn is_empty(&self) -> bool {
        self.since == 0 && self.streams.is_empty()
    }

    pub fn position(&self, stream: &str) -> Option<&StreamPosition> {
        self.streams
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, p)| p)
    }
}

/// A presence record a client joins with (§4): `id` is a JSON string, `info` any JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceJoin {
    pub id: String,
    /// The `info` JSON text, when given.
    pub info: Option<String>,
}

/// One client frame: a command for the application (or the server's own streams), or
/// one the server answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `history` is set when a `subscribe` carries one: it is run after a confirmed
    /// subscription.
    /// `presence` is set when a `subscribe` carries one: joined after a confirmed
    /// subscription.
    Command {
        command: ClientCommand,
        history: Option<HistoryRequest>,
        presence: Option<PresenceJoin>,
    },
    /// `join`: this session enters the subscription's presence set.
    Join {
        identifier: String,
        presence: PresenceJoin,
    },
    /// `leave`: this session leaves it.
    Leave { identifier: String },
    /// `presence`: who is there (`return_records`: with their records, the default).
    PresenceInfo {
        identifier: String,
        return_records: bool,
    },
    History {
        identifier: String,
        history: HistoryRequest,
    },
    /// `{"command":"ping"}`: answered with `{"type":"pong"}`.
    Ping,
    /// `{"command":"pong"}`: the client is alive (any frame says so).
    Pong,
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    command: Option<std::borrow::Cow<'a, str>>,
    identifier: Option<String>,
    data: Option<Box<RawValue>>,
    #[serde(borrow)]
    history: Option<&'a RawValue>,
    #[serde(borrow)]
    presence: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPresence<'a> {
    id: Option<String>,
    #[serde(borrow)]
    info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPresenceOptions {
    return_records: Option<bool>,
}

fn parse_presence(raw: &RawValue) -> Result<PresenceJoin, ParseError> {
    let p: RawPresence = serde_json::from_str(raw.get())
        .map_err(|_| ParseError::Malformed("presence must be an object with a string id".into()))?;
    let id = p
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ParseError::Malformed("presence id must be a non-empty string".into()))?;
    let info = p.info.map(|i| i.get().to_string()).filter(|i| i != "null");
    Ok(PresenceJoin { id, info })
}

#[derive(Deserialize)]
struct RawHistory<'a> {
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    streams: Option<std::collections::BTreeMap<String, StreamPosition>>,
}

fn parse_history(raw: &RawValue) -> Result<HistoryRequest, ParseError> {
    let text = raw.get();
    if text == "null" {
        return Ok(HistoryRequest::default());
    }
    if !text.starts_with('{') {
        return Err(ParseError::Malformed(
            "history must be a JSON object".into(),
        ));
    }
    let h: RawHistory = serde_json::from_str(text)
        .map_err(|e| ParseError::Malformed(format!("invalid history: {e}")))?;
    // A non-number (JS sends `false` with historyTimestamp: false) counts as 0.
    let since = h
        .since
        .and_then(|v| serde_json::from_str::<f64>(v.get()).ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(0, |s| s as u64);
    let streams = h.streams.unwrap_or_default().into_iter().collect();
    Ok(HistoryRequest { since, streams })
}

/// Parses one client frame.
pub fn parse_frame(text: &str) -> Result<ClientFrame, ParseError> {
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
        .as_deref()
        .ok_or_else(|| ParseError::UnknownCommand(String::new()))?;
    let command = match name {
        "subscribe" => Command::Subscribe,
        "unsubscribe" => Command::Unsubscribe,
        "message" => Command::Message,
        "whisper" => Command::Whisper,
        "ping" => return Ok(ClientFrame::Ping),
        "pong" => return Ok(ClientFrame::Pong),
        "history" => {
            let identifier = raw.identifier.ok_or(ParseError::MissingIdentifier)?;
            let history = match raw.history {
                Some(h) => parse_history(h)?,
                None => HistoryRequest::default(),
            };
            return Ok(ClientFrame::History {
                identifier,
                history,
            });
        }
        "join" => {
            let identifier = raw.identifier.ok_or(ParseError::MissingIdentifier)?;
            let presence = raw
                .presence
                .ok_or_else(|| ParseError::Malformed("join without presence".into()))?;
            return Ok(ClientFrame::Join {
                identifier,
                presence: parse_presence(presence)?,
            });
        }
        "leave" => {
            let identifier = raw.identifier.ok_or(ParseError::MissingIdentifier)?;
            return Ok(ClientFrame::Leave { identifier });
        }
        "presence" => {
            let identifier = raw.identifier.ok_or(ParseError::MissingIdentifier)?;
            // `data` is an object here (AnyCable's), not a JSON-encoded string.
            let return_records = raw
                .data
                .and_then(|d| serde_json::from_str::<RawPresenceOptions>(d.get()).ok())
                .and_then(|o| o.return_records)
                .unwrap_or(true);
            return Ok(ClientFrame::PresenceInfo {
                identifier,
                return_records,
            });
        }
        other => return Err(ParseError::UnknownCommand(other.to_string())),
    };
    // Likewise a broken `presence` on a subscribe.
    let presence = match (command, raw.presence) {
        (Command::Subscribe, Some(p)) => parse_presence(p).ok(),
        _ => None,
    };
    // A broken `history` on a subscribe costs the history, not the subscription.
    let history = match (command, raw.history) {
        (Command::Subscribe, Some(h)) => parse_history(h).ok(),
        _ => None,
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
    Ok(ClientFrame::Command {
        command: ClientCommand {
            command,
            identifier,
            data,
        },
        history,
        presence,
    })
}

/// Parses a frame that must be a command for the application: subscribe,
/// unsubscribe, message or whisper.
pub fn parse_command(text: &str) -> Result<ClientCommand, ParseError> {
    match parse_frame(text)? {
        ClientFrame::Command { command, .. } => Ok(command),
        ClientFrame::History { .. } => Err(ParseError::UnknownCommand("history".into())),
        ClientFrame::Ping => Err(ParseError::UnknownCommand("ping".into())),
        ClientFrame::Pong => Err(ParseError::UnknownCommand("pong".into())),
        ClientFrame::Join { .. } => Err(ParseError::UnknownCommand("join".into())),
        ClientFrame::Leave { .. } => Err(ParseError::UnknownCommand("leave".into())),
        ClientFrame::PresenceInfo { .. } => Err(ParseError::UnknownCommand("presence".into())),
    }
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
    fn parses_ping_pong_and_history() {
        assert_eq!(parse_frame(r#"{"command":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(parse_frame(r#"{"command":"pong"}"#), Ok(ClientFrame::Pong));
        assert_eq!(
            parse_command(r#"{"command":"pong"}"#),
            Err(ParseError::UnknownCommand("pong".into()))
        );
        let h = parse_frame(
            r#"{"command":"history","identifier":"i","history":{"since":1681828329,"streams":{"chat_42":{"epoch":"vRXl","offset":32}}}}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            ClientFrame::History {
                identifier: "i".into(),
                history: HistoryRequest {
                    since: 1681828329,
                    streams: vec![(
                        "chat_42".into(),
                        StreamPosition {
                            epoch: "vRXl".into(),
                            offset: 32
                        }
                    )]
                }
            }
        );
        assert_eq!(
            parse_frame(r#"{"command":"history","history":{"since":1}}"#),
            Err(ParseError::MissingIdentifier)
        );
    }

    #[test]
    fn a_non_numeric_since_counts_as_zero() {
        for since in ["false", r#""1681828329""#, "null", "-5", "{}"] {
            let text = format!(
                r#"{{"command":"history","identifier":"i","history":{{"since":{since}}}}}"#
            );
            match parse_frame(&text) {
                Ok(ClientFrame::History { history, .. }) => {
                    assert_eq!(history.since, 0, "{since}");
                    assert!(history.is_empty());
                }
                other => panic!("{since}: {other:?}"),
            }
        }
        match parse_frame(r#"{"command":"history","identifier":"i","history":{"since":12.7}}"#) {
            Ok(ClientFrame::History { history, .. }) => assert_eq!(history.since, 12),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_presence_commands() {
        assert_eq!(
            parse_frame(
                r#"{"command":"join","identifier":"i","presence":{"id":"42","info":{"name":"B"}}}"#
            ),
            Ok(ClientFrame::Join {
                identifier: "i".into(),
                presence: PresenceJoin {
                    id: "42".into(),
                    info: Some(r#"{"name":"B"}"#.into())
                }
            })
        );
        assert_eq!(
            parse_frame(r#"{"command":"leave","identifier":"i"}"#),
            Ok(ClientFrame::Leave {
                identifier: "i".into()
            })
        );
        assert_eq!(
            parse_frame(
                r#"{"command":"presence","identifier":"i","data":{"return_records":false}}"#
            ),
            Ok(ClientFrame::PresenceInfo {
                identifier: "i".into(),
                return_records: false
            })
        );
        for bad in [
            r#"{"command":"join","identifier":"i","presence":{"id":42}}"#,
            r#"{"command":"join","identifier":"i","presence":{"id":""}}"#,
            r#"{"command":"join","identifier":"i"}"#,
            r#"{"command":"join","presence":{"id":"1"}}"#,
        ] {
            assert!(parse_frame(bad).is_err(), "{bad}");
        }
        match parse_frame(r#"{"command":"subscribe","identifier":"i","presence":{"id":"7"}}"#) {
            Ok(ClientFrame::Command { presence, .. }) => assert_eq!(
                presence,
                Some(PresenceJoin {
                    id: "7".into(),
                    info: None
                })
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscribe_may_carry_history_and_other_commands_ignore_it() {
        match parse_frame(
            r#"{"command":"subscribe","identifier":"i","history":{"since":5,"streams":{}}}"#,
        ) {
            Ok(ClientFrame::Command {
                command, history, ..
            }) => {
                assert_eq!(command.command, Command::Subscribe);
                assert_eq!(history.map(|h| h.since), Some(5));
            }
            other => panic!("{other:?}"),
        }
        for text in [
            r#"{"command":"unsubscribe","identifier":"i","history":{"since":5}}"#,
            r#"{"command":"subscribe","identifier":"i","history":[]}"#,
        ] {
            match parse_frame(text) {
                Ok(ClientFrame::Command { history, .. }) => assert_eq!(history, None),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            parse_frame(r#"{"command":"history","identifier":"i","history":[1]}"#),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_frame(
                r#"{"command":"history","identifier":"i","history":{"streams":{"s":{"epoch":"e"}}}}"#
            ),
            Err(ParseError::Malformed(_))
        ));
    }
}
