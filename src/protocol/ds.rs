//! Durable Streams reads (AnyCable's `/ds`): places in a stream as a reader holds
//! them (offsets), a stream's messages as the JSON array a read returns, and the SSE
//! form of a live read (`event: data` with the messages, then `event: control` with
//! the place after them).
//!
//! An offset is `<offset>::<epoch>`, AnyCable's form, with the offset zero-padded to
//! 20 digits so that offsets of one epoch sort as text, as the protocol asks (AnyCable
//! does not pad; its parser reads ours, and readers treat offsets as opaque). `-1`
//! (or `0`) is the stream's start, `now` its tail.

use serde_json::value::RawValue;

use super::ServerFrame;

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// `-1` or `0`: everything the history keeps.
    Beginning,
    /// `now`: only what comes after the read.
    Now,
    /// After a place this server gave (`Stream-Next-Offset`, `streamNextOffset`).
    After { offset: u64, epoch: String },
}

/// The offset of the message at `offset` of `epoch`; `0` for none (a stream with
/// nothing kept: reading from `0` reads it from its start).
pub fn encode_offset(offset: u64, epoch: &str) -> String {
    if offset == 0 || epoch.is_empty() {
        return "0".into();
    }
    format!("{offset:020}::{epoch}")
}

/// An `offset` parameter, or why it is not one.
pub fn parse_offset(text: &str) -> Result<Start, String> {
    match text {
        "-1" | "0" => return Ok(Start::Beginning),
        "now" => return Ok(Start::Now),
        _ => {}
    }
    let bad = || {
        format!(
            "offset {:?} is not -1, now, or an offset this server gave",
            text.chars().take(80).collect::<String>()
        )
    };
    let (offset, epoch) = text.split_once("::").ok_or_else(bad)?;
    let offset: u64 = offset.parse().map_err(|_| bad())?;
    if epoch.is_empty() || epoch.contains(['\r', '\n']) {
        return Err(bad());
    }
    Ok(if offset == 0 {
        Start::Beginning
    } else {
        Start::After {
            offset,
            epoch: epoch.to_string(),
        }
    })
}

/// One broadcast as a session's frame carries it (`message` and its place).
pub struct Broadcast<'a> {
    pub message: &'a str,
    /// Its offset and epoch; `None` for a message without a place (transient).
    pub place: Option<(u64, std::borrow::Cow<'a, str>)>,
}

/// The broadcast in one of the server's frames; `None` for any other frame.
pub fn parse_broadcast(frame: &str) -> Option<Broadcast<'_>> {
    let frame: ServerFrame<'_> = serde_json::from_str(frame).ok()?;
    if frame.kind.is_some_and(|k| !k.is_empty()) {
        return None;
    }
    let place = match (frame.offset, frame.epoch) {
        (Some(offset), Some(epoch)) if offset > 0 && !epoch.is_empty() => Some((offset, epoch)),
        _ => None,
    };
    Some(Broadcast {
        message: frame.message?.get(),
        place,
    })
}

/// `message` appended to a JSON array's items: as it is when it is JSON (broadcasts
/// are), else as a JSON string.
fn push_item(message: &str, out: &mut String) {
    if serde_json::from_str::<&RawValue>(message).is_ok() {
        out.push_str(message);
    } else {
        out.push_str(&serde_json::Value::String(message.to_string()).to_string());
    }
}

/// The messages as one JSON array (a catch-up or long-poll body).
pub fn json_array<'a>(messages: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, message) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_item(message, &mut out);
    }
    out.push(']');
    out
}

/// What a live SSE read's `control` event says after its messages.
pub struct Control<'a> {
    pub next_offset: &'a str,
    pub cursor: &'a str,
    pub up_to_date: bool,
}

/// `messages` as a `data` event (none when there are none) and the `control` event
/// after them, appended to `out`. A message's line breaks (whitespace in JSON) start
/// another `data:` line: readers join them with a line break.
pub fn push_sse<'a>(
    messages: impl IntoIterator<Item = &'a str>,
    control: &Control<'_>,
    out: &mut String,
) {
    let mut messages = messages.into_iter().peekable();
    if messages.peek().is_some() {
        let array = json_array(messages);
        out.push_str("event: data\n");
        for line in array.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            out.push_str("data:");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    let mut fields = serde_json::Map::new();
    fields.insert("streamNextOffset".into(), control.next_offset.into());
    fields.insert("streamCursor".into(), control.cursor.into());
    if control.up_to_date {
        fields.insert("upToDate".into(), true.into());
    }
    out.push_str("event: control\ndata:");
    out.push_str(&serde_json::Value::Object(fields).to_string());
    out.push_str("\n\n");
}

/// The cursor of a read: the current 20-second interval since 2024-10-09 (the
/// protocol's epoch), or, when the client's is not behind it, the client's moved on
/// by one to three minutes (so that a CDN's cached answers are not served back to
/// the same reader for ever).
pub fn cursor(now_unix: u64, client: Option<&str>, jitter_seed: u64) -> String {
    const EPOCH: u64 = 1_728_432_000; // 2024-10-09T00:00:00Z
    const INTERVAL: u64 = 20;
    let current = now_unix.saturating_sub(EPOCH) / INTERVAL;
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(theirs) if theirs >= current => theirs.saturating_add(3 + jitter_seed % 7).to_string(),
        _ => current.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_sort_as_text() {
        let a = encode_offset(9, "e1");
        let b = encode_offset(10, "e1");
        assert_eq!(a, "00000000000000000009::e1");
        assert!(a < b);
        assert!("0" < a.as_str());
        assert_eq!(
            parse_offset(&b),
            Ok(Start::After {
                offset: 10,
                epoch: "e1".into()
            })
        );
        // AnyCable's own (unpadded) offsets read the same.
        assert_eq!(parse_offset("10::e1"), parse_offset(&b));
        assert_eq!(parse_offset("-1"), Ok(Start::Beginning));
        assert_eq!(parse_offset("0"), Ok(Start::Beginning));
        assert_eq!(parse_offset("now"), Ok(Start::Now));
        assert_eq!(encode_offset(0, "e1"), "0");
        for bad in ["", "5", "abc", "0,1", "0 1", "x::e", "5::", "-5::e"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_broadcast_frame_is_its_message_and_place() {
        let frame =
            r#"{"identifier":"x","message":{"n":1},"stream_id":"s","epoch":"e","offset":4}"#;
        let b = parse_broadcast(frame).unwrap();
        assert_eq!(b.message, r#"{"n":1}"#);
        assert_eq!(b.place, Some((4, "e".into())));
        let transient = parse_broadcast(r#"{"identifier":"x","message":"hi"}"#).unwrap();
        assert!(transient.place.is_none());
        assert!(parse_broadcast(r#"{"type":"ping","message":1}"#).is_none());
        assert!(parse_broadcast("nope").is_none());
    }

    #[test]
    fn reads_are_json_arrays() {
        assert_eq!(json_array([]), "[]");
        assert_eq!(json_array([r#"{"a":1}"#, "2"]), r#"[{"a":1},2]"#);
        assert_eq!(json_array(["not json"]), r#"["not json"]"#);
    }

    #[test]
    fn sse_reads_pair_data_with_control() {
        let control = Control {
            next_offset: "00000000000000000002::e",
            cursor: "7",
            up_to_date: true,
        };
        let mut out = String::new();
        push_sse(["{\"a\":\n1}", "2"], &control, &mut out);
        assert_eq!(
            out,
            "event: data\ndata:[{\"a\":\ndata:1},2]\n\n\
             event: control\ndata:{\"streamCursor\":\"7\",\"streamNextOffset\":\"00000000000000000002::e\",\"upToDate\":true}\n\n"
        );
        let mut out = String::new();
        push_sse([], &control, &mut out);
        assert!(out.starts_with("event: control\n"), "{out}");
    }

    #[test]
    fn a_cursor_moves_past_the_clients() {
        let now = 1_728_432_000 + 20 * 100 + 5;
        assert_eq!(cursor(now, None, 0), "100");
        assert_eq!(cursor(now, Some("50"), 0), "100");
        assert_eq!(cursor(now, Some("junk"), 0), "100");
        let moved: u64 = cursor(now, Some("100"), 12).parse().unwrap();
        assert!((103..=109).contains(&moved), "{moved}");
    }
}
