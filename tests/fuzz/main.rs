//! Property tests over hostile input: the client command parser ([`commands`]), the
//! broadcast payload parser ([`broadcasts`]), the HTTP head parser ([`heads`]), and
//! hostile clients of a running server: raw frames after an upgrade, broken requests
//! and broadcast bodies ([`frames`]).
//!
//! Each parser must never panic, and what it accepts must mean what the input said:
//! for inputs that are plain JSON objects, an oracle built on `serde_json::Value`
//! predicts the exact result. Not a coverage-guided fuzzer: inputs are mostly valid
//! templates with a few edits (wrong types, repeated or escaped keys, lone surrogates,
//! deep nesting, lying frame lengths and chunk sizes), where parsers go wrong.
//!
//! Case counts are sized for CI (a few seconds in release mode); `PROPTEST_CASES=100000`
//! runs every test longer. Failures are not persisted: a real one becomes a focused
//! unit test beside the code.

mod broadcasts;
mod commands;
mod frames;
mod heads;

use std::collections::HashSet;
use std::fmt::Debug;
use std::ops::Range;

use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Cases per parser test: about a second each in release mode.
const PARSER_CASES: u32 = 4096;
/// Cases of the server test: each is a few round trips over loopback (under 1 ms).
const SERVER_CASES: u32 = 1024;

/// `cases` unless PROPTEST_CASES says otherwise; never writes regression files.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A failing server case can take seconds; shrinking stops after this.
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Any JSON value, with keys and strings the parsers look for.
fn json_value() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "command",
        "identifier",
        "data",
        "subscribe",
        "unsubscribe",
        "message",
        "disconnect",
        "stream",
        "meta",
        "payload",
        "exclude_socket",
        "reconnect",
        "",
        "{\"channel\":\"A\"}",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        words.clone().prop_map(Value::from),
    ];
    let key = prop_oneof![3 => words.prop_map(String::from), 1 => any::<String>()];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON value encoded as a JSON string, as identifiers and message data are.
fn json_in_string() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| json_string(&v.to_string())),
        any::<String>().prop_map(|s| json_string(&s)),
    ]
}

/// Text a field can hold: valid values, and the edges of the grammar.
fn fragment() -> BoxedStrategy<String> {
    let edges = prop::sample::select(vec![
        r#""subscribe""#,
        r#""message""#,
        r#""disconnect""#,
        r#""sub\u0073cribe""#,
        r#""{\"channel\":\"A\"}""#,
        r#""\ud800""#,
        r#""a\udc00b""#,
        r#""\ud800\u0041""#,
        r#""\uDBFF\uDFFF""#,
        r#""\u12""#,
        r#""\x""#,
        "\"tab\there\"",
        "1e400",
        "-0",
        "1.5e-400",
        "01",
        "tru",
        "null",
        "true",
        "\"\"",
        "[]",
        "{}",
        "[\"sid\"]",
        "[\"{\\\"user\\\":1}\",false]",
    ]);
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        4 => edges.prop_map(String::from),
        2 => json_in_string(),
        1 => (0usize..5000).prop_map(|n| json_string(&"a".repeat(n * 20))),
        1 => (1usize..600).prop_map(|n| "9".repeat(n)),
        1 => (120usize..140).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..3000).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        1 => any::<String>(),
    ]
    .boxed()
}

#[derive(Debug, Clone, Copy)]
enum Edit {
    Keep,
    Replace,
    Drop,
    Twice,
    Rename,
}

/// A template's entries, each kept, given another value, dropped, repeated (if
/// `twice`) or renamed; plus `extra` other entries; in any order.
fn edited<K, V>(
    template: Vec<(BoxedStrategy<K>, BoxedStrategy<V>)>,
    other: (BoxedStrategy<K>, BoxedStrategy<V>),
    twice: bool,
    extra: Range<usize>,
) -> impl Strategy<Value = Vec<(K, V)>>
where
    K: Clone + Debug + 'static,
    V: Clone + Debug + 'static,
{
    let edit = prop_oneof![
        12 => Just(Edit::Keep),
        2 => Just(Edit::Replace),
        1 => Just(Edit::Drop),
        1 => Just(Edit::Twice),
        1 => Just(Edit::Rename),
    ]
    .prop_map(move |e| match e {
        Edit::Twice if !twice => Edit::Keep,
        e => e,
    })
    .boxed();
    let (other_key, other_value) = other;
    let entries: Vec<_> = template
        .into_iter()
        .map(|(key, value)| {
            (
                edit.clone(),
                key,
                value,
                other_key.clone(),
                other_value.clone(),
            )
                .prop_map(|(edit, k, v, k2, v2)| match edit {
                    Edit::Keep => vec![(k, v)],
                    Edit::Replace => vec![(k, v2)],
                    Edit::Drop => vec![],
                    Edit::Twice => vec![(k.clone(), v), (k, v2)],
                    Edit::Rename => vec![(k2, v)],
                })
        })
        .collect();
    let extra = prop::collection::vec((other_key, other_value), extra);
    (entries, extra)
        .prop_map(|(entries, extra)| {
            entries
                .into_iter()
                .flatten()
                .chain(extra)
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// A JSON key, mostly as is, sometimes spelled with an escape (serde matches keys after
/// decoding them).
fn key(name: &'static str) -> BoxedStrategy<String> {
    let mut chars = name.chars();
    let first = chars.next().map_or(0, u32::from);
    let escaped = format!("\"\\u{first:04x}{}\"", chars.as_str());
    prop_oneof![9 => Just(json_string(name)), 1 => Just(escaped)].boxed()
}

/// A key for an entry added or renamed by [`edited`]: often one the parser knows.
fn other_key(known: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(known).prop_map(json_string),
        1 => "[a-z_]{0,12}".prop_map(|k| json_string(&k)),
        1 => any::<String>().prop_map(|k| json_string(&k)),
    ]
    .boxed()
}

/// An object written entry by entry, so keys can repeat and values can be broken.
#[derive(Debug, Clone)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn from_map(map: &Map<String, Value>) -> Self {
        Fields(
            map.iter()
                .map(|(k, v)| (json_string(k), v.to_string()))
                .collect(),
        )
    }

    fn render(&self, spaced: bool) -> String {
        let (sep, colon) = if spaced { (" ,\t", " :\n") } else { (",", ":") };
        let body: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}{colon}{v}"))
            .collect();
        format!("{{{}}}", body.join(sep))
    }

    /// The value of the one entry whose key decodes to `name`, if there is exactly one.
    fn single(&self, name: &str) -> Option<&str> {
        let mut named = self
            .0
            .iter()
            .filter(|(k, _)| decode_str(k).as_deref() == Some(name));
        match (named.next(), named.next()) {
            (Some((_, v)), None) => Some(v),
            _ => None,
        }
    }
}

fn decode_str(fragment: &str) -> Option<String> {
    serde_json::from_str(fragment).ok()
}

/// The object `text` holds, if it is plain JSON that a `Value` oracle can judge: it
/// parses as a `Value` (no lone surrogates, numbers in range, depth within limits) and no
/// object in it repeats a key (serde's derive refuses a repeated field; `Value` keeps
/// the last).
fn plain_object(text: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<NoRepeatedKeys>(text).ok()?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Any JSON value without a repeated key in any of its objects.
struct NoRepeatedKeys;

impl<'de> Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoRepeatedKeysVisitor)
    }
}

struct NoRepeatedKeysVisitor;

impl<'de> Visitor<'de> for NoRepeatedKeysVisitor {
    type Value = NoRepeatedKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON without repeated keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("repeated key"));
            }
            map.next_value::<NoRepeatedKeys>()?;
        }
        Ok(NoRepeatedKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
        Ok(NoRepeatedKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
}
