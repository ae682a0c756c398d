//! Streams a client subscribes to without entering Ruby, as AnyCable does: the
//! `$pubsub` pseudo-channel (a signed stream name, or a public one when allowed) and
//! Turbo Streams' `Turbo::StreamsChannel` (its signed stream name). The name is
//! verified here; a verified subscription goes straight into the hub.
//!
//! A signed name is Rails' `MessageVerifier` output with SHA256 and the JSON
//! serializer: `base64(JSON(name)) + "--" + hex(HMAC-SHA256(key, base64 text))`.

use base64::Engine;
use ring::hmac;
use serde::Deserialize;

pub const PUBSUB_CHANNEL: &str = "$pubsub";
pub const TURBO_CHANNEL: &str = "Turbo::StreamsChannel";

/// Where public `$pubsub` names live: a client's `stream_name: "lobby"` is the stream
/// `$public:lobby`, so a public name never reaches one of the app's streams (another
/// user's `stream_for`, Action Cable's `action_cable/<id>`). The app broadcasts to it
/// by that name (`AnyCableRs.public_stream("lobby")`). AnyCable shares the app's names.
pub const PUBLIC_STREAM_PREFIX: &str = "$public:";

/// What the server verifies itself (all off by default: every subscription goes to
/// the app's channels).
#[derive(Debug, Clone, Default)]
pub struct StreamsConfig {
    /// `ANYCABLE_STREAMS_SECRET` (else `ANYCABLE_SECRET`): `$pubsub` signed names.
    pub secret: Option<Vec<u8>>,
    /// `ANYCABLE_PUBLIC_STREAMS`: `$pubsub` with a plain `stream_name`.
    pub public: bool,
    /// `ANYCABLE_STREAMS_WHISPER`: whisper on signed `$pubsub` streams (public ones
    /// always allow it).
    pub whisper: bool,
    /// `ANYCABLE_TURBO_STREAMS`: the key `Turbo::StreamsChannel` names are signed with.
    pub turbo_key: Option<Vec<u8>>,
    /// `ANYCABLE_STREAMS_PRESENCE`: presence on signed `$pubsub` streams (public ones
    /// always allow it; with a broker that keeps presence).
    pub presence: bool,
}

/// What to do with a subscribe command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Subscribe to `stream` here; `whisper` if clients may whisper on it, `presence`
    /// if they may join its presence set.
    Stream {
        stream: String,
        whisper: bool,
        presence: bool,
    },
    /// Reply `reject_subscription`; `why` is for the log.
    Reject { why: &'static str },
    /// A channel of the app's: Ruby handles it.
    App,
}

#[derive(Deserialize)]
struct Identifier {
    channel: Option<String>,
    signed_stream_name: Option<String>,
    stream_name: Option<String>,
}

impl StreamsConfig {
    /// `$pubsub` is always the server's (with nothing configured, every subscription
    /// to it is rejected, as AnyCable does); `Turbo::StreamsChannel` only with a key.
    pub fn resolve(&self, identifier: &str) -> Resolution {
        // Most identifiers are the app's: skip parsing them.
        let ours = identifier.contains(PUBSUB_CHANNEL)
            || (self.turbo_key.is_some() && identifier.contains("Turbo::StreamsChannel"));
        if !ours {
            return Resolution::App;
        }
        let Ok(id) = serde_json::from_str::<Identifier>(identifier) else {
            return Resolution::App;
        };
        let signed = id.signed_stream_name.filter(|s| !s.is_empty());
        match id.channel.as_deref() {
            Some(PUBSUB_CHANNEL) => {
                if let Some(signed) = signed {
                    let Some(secret) = &self.secret else {
                        return Resolution::Reject {
                            why: "a signed stream, but no streams secret is set",
                        };
                    };
                    return match verify(&signed, secret) {
                        Some(stream) => Resolution::Stream {
                            stream,
                            whisper: self.whisper,
                            presence: self.presence,
                        },
                        None => Resolution::Reject {
                            why: "signed stream name did not verify",
                        },
                    };
                }
                match id.stream_name.filter(|s| !s.is_empty()) {
                    Some(name) if self.public => Resolution::Stream {
                        stream: format!("{PUBLIC_STREAM_PREFIX}{name}"),
                        whisper: true,
                        presence: true,
                    },
                    Some(_) => Resolution::Reject {
                        why: "public streams are off (ANYCABLE_PUBLIC_STREAMS)",
                    },
                    None => Resolution::Reject {
                        why: "no stream name",
                    },
                }
            }
            Some(TURBO_CHANNEL) if self.turbo_key.is_some() => {
                let key = self.turbo_key.as_deref().expect("checked");
                match signed.and_then(|s| verify(&s, key)) {
                    Some(stream) => Resolution::Stream {
                        stream,
                        whisper: false,
                        presence: false,
                    },
                    None => Resolution::Reject {
                        why: "Turbo signed stream name did not verify",
                    },
                }
            }
            _ => Resolution::App,
        }
    }
}

/// The stream name in `signed`, if its signature is `key`'s. The separator is the
/// `--` before the last 64 characters, lower-case hex (as Rails 7.1 finds it; a
/// URL-safe base64 part may itself hold `--`); the base64 part may use either
/// alphabet, padded or not; the JSON must be a string (Rails' metadata envelopes,
/// from `purpose:`/`expires_in:`, are refused, as AnyCable does).
pub fn verify(signed: &str, key: &[u8]) -> Option<String> {
    let split = signed.len().checked_sub(66)?;
    if !signed.is_char_boundary(split) {
        return None;
    }
    let (data, rest) = signed.split_at(split);
    let digest = rest.strip_prefix("--")?;
    if !digest
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let tag = decode_hex(digest)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, data.as_bytes(), &tag).ok()?;
    let json = decode_base64(data)?;
    serde_json::from_slice::<String>(&json).ok()
}

/// Bytes from hex text (either case); `None` for odd length or a non-hex character.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// Signs `stream` as Rails' `MessageVerifier` (SHA256, JSON, strict base64) does.
pub fn sign(stream: &str, key: &[u8]) -> String {
    let json = serde_json::to_string(stream).expect("a str serializes");
    let data = base64::engine::general_purpose::STANDARD.encode(json);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{data}--{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_documented_example_and_refuses_tampering() {
        let signed =
            "ImNoYXRfNDIi--71625ebab8df987529d7c5bc3ebb418c713db58ca94bb86dc538190b33f07734";
        assert_eq!(verify(signed, b"s3cr3t").as_deref(), Some("chat_42"));
        assert_eq!(sign("chat_42", b"s3cr3t"), signed);
        assert_eq!(verify(signed, b"other"), None);
        let flipped = signed.replace("ImNo", "ImNp");
        assert_eq!(verify(&flipped, b"s3cr3t"), None);
        assert_eq!(verify(&signed.to_uppercase(), b"s3cr3t"), None);
        assert_eq!(verify("short", b"s3cr3t"), None);
        assert_eq!(verify("é".repeat(40).as_str(), b"s3cr3t"), None);
    }

    #[test]
    fn takes_either_base64_alphabet_and_refuses_non_strings() {
        // "user>42" is InVzZXI+NDIi in the standard alphabet, InVzZXI-NDIi URL-safe.
        let key = b"k";
        let std = sign("user>42", key);
        assert!(std.starts_with("InVzZXI+NDIi--"));
        assert_eq!(verify(&std, key).as_deref(), Some("user>42"));
        let url = "InVzZXI-NDIi";
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), url.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            verify(&format!("{url}--{hex}"), key).as_deref(),
            Some("user>42")
        );
        // A JSON object (Rails' metadata envelope) is not a stream name.
        let data =
            base64::engine::general_purpose::STANDARD.encode(r#"{"_rails":{"message":"x"}}"#);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(verify(&format!("{data}--{hex}"), key), None);
    }

    #[test]
    fn resolves_pubsub_turbo_and_app_channels() {
        let config = StreamsConfig {
            secret: Some(b"s".to_vec()),
            public: false,
            whisper: false,
            turbo_key: Some(b"t".to_vec()),
            presence: true,
        };
        let signed = sign("room", b"s");
        let id = |channel: &str, key: &str, value: &str| {
            serde_json::json!({"channel": channel, key: value}).to_string()
        };
        assert_eq!(
            config.resolve(&id("$pubsub", "signed_stream_name", &signed)),
            Resolution::Stream {
                stream: "room".into(),
                whisper: false,
                presence: true
            }
        );
        assert!(matches!(
            config.resolve(&id("$pubsub", "stream_name", "room")),
            Resolution::Reject { .. }
        ));
        assert!(matches!(
            config.resolve(&id("Turbo::StreamsChannel", "signed_stream_name", &signed)),
            Resolution::Reject { .. }
        ));
        assert_eq!(
            config.resolve(&id(
                "Turbo::StreamsChannel",
                "signed_stream_name",
                &sign("t1", b"t")
            )),
            Resolution::Stream {
                stream: "t1".into(),
                whisper: false,
                presence: false
            }
        );
        assert_eq!(
            config.resolve(&id("ChatChannel", "room", "1")),
            Resolution::App
        );
        let public = StreamsConfig {
            public: true,
            ..Default::default()
        };
        assert_eq!(
            public.resolve(&id("$pubsub", "stream_name", "lobby")),
            Resolution::Stream {
                stream: "$public:lobby".into(),
                whisper: true,
                presence: true
            }
        );
        assert!(matches!(
            StreamsConfig::default().resolve(&id("$pubsub", "stream_name", "x")),
            Resolution::Reject { .. }
        ));
        assert_eq!(
            StreamsConfig::default().resolve(&id(
                "Turbo::StreamsChannel",
                "signed_stream_name",
                "x"
            )),
            Resolution::App
        );
    }
}
