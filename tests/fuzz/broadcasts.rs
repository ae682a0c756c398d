//! `broadcast::parse`: what publishers send (HTTP `POST /_broadcast`, pub/sub), and
//! `protocol::broadcast_frame`, what subscribers then get.

use anycable_core::protocol;
use anycable_core::protocol::broadcast::{self, BroadcastMessage};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::*;

const KEYS: &[&str] = &["stream", "data", "meta", "command", "payload"];

/// A valid broadcast (to a stream, or a remote disconnect), edited.
pub(super) fn near_valid() -> impl Strategy<Value = Fields> {
    let stream_name = prop_oneof![
        3 => "[a-z_0-9]{0,8}".prop_map(|s| json_string(&s)),
        1 => any::<String>().prop_map(|s| json_string(&s)),
    ];
    let data = prop_oneof![
        2 => json_in_string(),
        1 => json_value().prop_map(|v| v.to_string()),
    ];
    let meta = prop_oneof![
        4 => object(vec![(
            key("exclude_socket"),
            any::<String>().prop_map(|s| json_string(&s)).boxed(),
        )]),
        2 => object(vec![
            (key("transient"), any::<bool>().prop_map(|b| b.to_string()).boxed()),
            (key("whisper"), any::<bool>().prop_map(|b| b.to_string()).boxed()),
        ]),
        1 => fragment(),
    ];
    let stream = edited(
        vec![
            (key("stream"), stream_name.boxed()),
            (key("data"), data.boxed()),
            (key("meta"), meta.boxed()),
        ],
        (other_key(KEYS), fragment()),
        true,
        0..2,
    );
    let command = prop_oneof![
        8 => Just(json_string("disconnect")),
        1 => prop::sample::select(vec!["subscribe", "Disconnect", ""]).prop_map(json_string),
    ];
    let identifiers = prop_oneof![
        2 => "[a-z0-9]{0,4}"
            .prop_map(|u| json_string(&serde_json::json!({ "user": u }).to_string())),
        1 => json_in_string(),
    ];
    let payload = prop_oneof![
        6 => object(vec![
            (key("identifier"), identifiers.boxed()),
            (key("reconnect"), any::<bool>().prop_map(|b| b.to_string()).boxed()),
        ]),
        1 => fragment(),
    ];
    let disconnect = edited(
        vec![
            (key("command"), command.boxed()),
            (key("payload"), payload.boxed()),
        ],
        (other_key(KEYS), fragment()),
        true,
        0..2,
    );
    prop_oneof![stream, disconnect].prop_map(Fields)
}

/// A nested object (`meta`, `payload`) from a template, edited, as JSON text.
fn object(template: Vec<(BoxedStrategy<String>, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    const NESTED_KEYS: &[&str] = &[
        "exclude_socket",
        "transient",
        "whisper",
        "identifier",
        "reconnect",
    ];
    edited(template, (other_key(NESTED_KEYS), fragment()), true, 0..2)
        .prop_map(|entries| Fields(entries).render(false))
        .boxed()
}

/// A field as serde's `Option` sees it: absent and `null` are both `None`.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// A field that must be a string when present.
fn opt_str(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// The oracle for one broadcast object (`Ok(None)` would mean outside what it models;
/// nested structs written as arrays are refused now, so every input is modelled).
/// `payload` is read only for a command, `meta` only for a stream message.
fn expected(
    map: &Map<String, Value>,
    raw_data: Option<&str>,
) -> Result<Option<BroadcastMessage>, ()> {
    let stream = opt_str(map, "stream")?;
    let command = opt_str(map, "command")?;
    if let Some(command) = command {
        if command != "disconnect" {
            return Err(());
        }
        let Some(Value::Object(p)) = present(map, "payload") else {
            return Err(());
        };
        let identifier = opt_str(p, "identifier")?;
        let reconnect = match present(p, "reconnect") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(()),
        };
        let identifiers = serde_json::from_str(&identifier.ok_or(())?).map_err(|_| ())?;
        return Ok(Some(BroadcastMessage::Disconnect {
            identifiers,
            reconnect: reconnect.unwrap_or(true),
        }));
    }
    let stream = stream.filter(|s| !s.is_empty()).ok_or(())?;
    let flag = |meta: &Map<String, Value>, key: &str| match present(meta, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(()),
    };
    let (exclude_socket, transient, whisper) = match present(map, "meta") {
        None => (None, false, false),
        Some(Value::Object(meta)) => (
            opt_str(meta, "exclude_socket")?,
            flag(meta, "transient")?,
            flag(meta, "whisper")?,
        ),
        Some(_) => return Err(()),
    };
    let data = match present(map, "data").ok_or(())? {
        Value::String(s) => s.clone(),
        _ => raw_data.expect("data is present").to_string(),
    };
    Ok(Some(BroadcastMessage::Stream {
        stream,
        data,
        exclude_socket,
        // A whisper is never stored.
        transient: transient || whisper,
        whisper,
    }))
}

/// Facts every accepted payload has.
fn check_facts(text: &str, messages: &[BroadcastMessage]) -> Result<(), TestCaseError> {
    let trimmed = text.trim_start();
    match serde_json::from_str::<Vec<&RawValue>>(trimmed) {
        Ok(items) if trimmed.starts_with('[') => prop_assert_eq!(messages.len(), items.len()),
        _ => prop_assert_eq!(messages.len(), 1),
    }
    for message in messages {
        if let BroadcastMessage::Stream { stream, data, .. } = message {
            prop_assert!(!stream.is_empty());
            check_client_frame(data)?;
        }
    }
    Ok(())
}

/// What a subscriber gets for `data` is JSON: `data` itself when it is JSON, else a
/// JSON string of it.
fn check_client_frame(data: &str) -> Result<(), TestCaseError> {
    let frame = protocol::broadcast_frame("{\"channel\":\"A\"}", data);
    let depth = data.chars().filter(|c| matches!(c, '[' | '{')).count();
    if depth < 100 {
        prop_assert!(
            serde_json::from_str::<&RawValue>(frame.as_str()).is_ok(),
            "frame is not JSON: {}",
            frame.as_str()
        );
    }
    if serde_json::from_str::<&RawValue>(data).is_err() {
        let parsed: Value = serde_json::from_str(frame.as_str())
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", frame.as_str())))?;
        prop_assert_eq!(&parsed["message"], &Value::String(data.to_string()));
    }
    Ok(())
}

/// Checks a payload of `items`: an array of them if `batch`, else the one item.
fn check_payload(items: &[Fields], batch: bool, lead: &str) -> Result<(), TestCaseError> {
    let rendered: Vec<String> = items.iter().map(|f| f.render(false)).collect();
    let text = if batch {
        format!("{lead}[{}]", rendered.join(","))
    } else {
        assert_eq!(items.len(), 1, "one item unless batch");
        format!("{lead}{}", rendered[0])
    };
    let result = broadcast::parse(&text);
    if let Ok(messages) = &result {
        check_facts(&text, messages)?;
    }
    let mut predicted = Vec::new();
    for (fields, text) in items.iter().zip(&rendered) {
        let Some(map) = plain_object(text) else {
            return Ok(());
        };
        let raw_data = fields
            .single("data")
            .map(|d| d.trim_matches([' ', '\t', '\n', '\r']));
        match expected(&map, raw_data) {
            Ok(Some(message)) => predicted.push(message),
            Ok(None) => return Ok(()),
            Err(()) => {
                prop_assert!(result.is_err(), "accepted {}", text);
                return Ok(());
            }
        }
    }
    prop_assert_eq!(result, Ok(predicted), "for {}", text);
    Ok(())
}

proptest! {
    #![proptest_config(config(PARSER_CASES))]

    #[test]
    fn broadcasts_from_any_string(text in any::<String>()) {
        if let Ok(messages) = broadcast::parse(&text) {
            check_facts(&text, &messages)?;
        }
    }

    #[test]
    fn broadcasts_from_json_values(value in json_value()) {
        let text = value.to_string();
        match &value {
            Value::Object(map) => check_payload(&[Fields::from_map(map)], false, "")?,
            Value::Array(items) if items.iter().all(Value::is_object) => {
                let items: Vec<Fields> = items
                    .iter()
                    .filter_map(Value::as_object)
                    .map(Fields::from_map)
                    .collect();
                check_payload(&items, true, "")?;
            }
            _ => {
                if let Ok(messages) = broadcast::parse(&text) {
                    check_facts(&text, &messages)?;
                }
            }
        }
    }

    #[test]
    fn near_valid_broadcasts(
        items in prop::collection::vec(near_valid(), 1..3),
        batch in any::<bool>(),
        lead in prop::sample::select(vec!["", " ", "\n\t", "\u{a0}"]),
    ) {
        let items = if batch { &items[..] } else { &items[..1] };
        check_payload(items, batch, lead)?;
    }

    #[test]
    fn client_frames_are_json(data in prop_oneof![any::<String>(), fragment()]) {
        check_client_frame(&data)?;
    }
}
