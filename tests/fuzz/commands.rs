//! `protocol::parse_command`: what a client sends in a text frame.

use anycable_core::protocol::{parse_command, ClientCommand, Command};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::*;

// `history` on a subscribe: whatever it holds, the subscribe itself is parsed.
const KEYS: &[&str] = &["command", "identifier", "data", "history"];

/// A valid command, edited.
fn near_valid() -> impl Strategy<Value = Fields> {
    let name = prop_oneof![
        6 => prop::sample::select(vec!["subscribe", "unsubscribe", "message"])
            .prop_map(json_string),
        1 => Just(r#""sub\u0073cribe""#.to_string()),
    ];
    edited(
        vec![
            (key("command"), name.boxed()),
            (key("identifier"), json_in_string().boxed()),
            (key("data"), json_in_string().boxed()),
        ],
        (other_key(KEYS), fragment()),
        true,
        0..2,
    )
    .prop_map(Fields)
}

/// What `parse_command` must return for a plain JSON object, `None` meaning an error.
fn expected(map: &Map<String, Value>) -> Option<ClientCommand> {
    let command = match map.get("command")?.as_str()? {
        "subscribe" => Command::Subscribe,
        "unsubscribe" => Command::Unsubscribe,
        "message" => Command::Message,
        "whisper" => Command::Whisper,
        _ => return None,
    };
    let identifier = map.get("identifier")?.as_str()?.to_string();
    // Only a message needs data, and it must be a string; other commands ignore it.
    let data = match command {
        Command::Message => Some(map.get("data")?.as_str()?.to_string()),
        // Any JSON value, as sent (the oracle compares the value, re-serialized).
        Command::Whisper => Some(serde_json::to_string(map.get("data")?).ok()?),
        _ => None,
    };
    Some(ClientCommand {
        command,
        identifier,
        data,
    })
}

/// A whisper's data is its JSON text as sent; the oracle's is re-serialized.
fn normalized(mut c: ClientCommand) -> ClientCommand {
    if c.command == Command::Whisper {
        c.data = c.data.map(|d| {
            serde_json::to_string(&serde_json::from_str::<Value>(&d).expect("JSON")).unwrap()
        });
    }
    c
}

/// Facts of every accepted command, whatever else the text held.
fn check_facts(text: &str, command: &ClientCommand) -> Result<(), TestCaseError> {
    prop_assert!(
        serde_json::from_str::<&RawValue>(text).is_ok(),
        "accepted text that is not JSON"
    );
    prop_assert_eq!(
        command.data.is_some(),
        matches!(command.command, Command::Message | Command::Whisper)
    );
    Ok(())
}

fn check_fields(fields: &Fields, spaced: bool) -> Result<(), TestCaseError> {
    let text = fields.render(spaced);
    let result = parse_command(&text);
    if let Ok(c) = &result {
        check_facts(&text, c)?;
        // Each entry it used was there once and said what the result says.
        let named = |k| fields.single(k).and_then(decode_str);
        prop_assert_eq!(named("command"), Some(c.command.as_str().to_string()));
        prop_assert_eq!(named("identifier"), Some(c.identifier.clone()));
        if c.command == Command::Message {
            prop_assert_eq!(named("data"), c.data.clone());
        }
    }
    if let Some(map) = plain_object(&text) {
        prop_assert_eq!(result.ok().map(normalized), expected(&map), "for {}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(PARSER_CASES))]

    #[test]
    fn commands_from_any_string(text in any::<String>()) {
        if let Ok(c) = parse_command(&text) {
            check_facts(&text, &c)?;
        }
    }

    #[test]
    fn commands_from_json_values(value in json_value()) {
        if let Value::Object(map) = &value {
            return check_fields(&Fields::from_map(map), false);
        }
        let text = value.to_string();
        let result = parse_command(&text);
        if let Ok(c) = &result {
            check_facts(&text, c)?;
        }
        // serde reads a struct from an array too, by position; nothing else passes.
        let items = value.as_array().map_or(0, Vec::len);
        prop_assert!(result.is_err() || items == 3, "accepted {}", text);
    }

    #[test]
    fn near_valid_commands(fields in near_valid(), spaced in any::<bool>()) {
        check_fields(&fields, spaced)?;
    }
}
