//! Server-Sent Events (AnyCable's `/events`): the server's frames as SSE events, and
//! the `Last-Event-ID` a reconnecting `EventSource` sends back.
//!
//! An event is `event: <type>` (typed frames only), `data: …` (one line per line of
//! the payload) and, for a broadcast with a place in its stream's history,
//! `id: <offset>/<epoch>/<stream>` (AnyCable's order: what clients send back is
//! parsed the same way), then a blank line.

use super::ServerFrame;

/// What a client reads of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// `GET` (an `EventSource`): a broadcast's `data` is its message alone (a string
    /// unquoted, as Turbo's `<turbo-stream-source>` wants it); typed frames whole.
    Unwrapped,
    /// `POST` (a client that sent its commands in the body): every frame whole.
    Envelope,
    /// `GET` with `raw=1`: broadcasts' messages only; typed frames (welcome, pings,
    /// confirmations) are not sent.
    Raw,
}

/// The frame `json` (one of ours) as an SSE event appended to `out`; nothing when the
/// mode leaves it out. A frame that is not ours to parse goes out whole.
pub fn encode_event(json: &str, mode: EventMode, out: &mut String) {
    let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(json) else {
        push_data(json, out);
        out.push('\n');
        return;
    };
    let kind = frame.kind.as_deref().filter(|k| !k.is_empty());
    if let Some(kind) = kind {
        if mode == EventMode::Raw {
            return;
        }
        out.push_str("event: ");
        out.push_str(kind);
        out.push('\n');
    }
    match (kind, frame.message, mode) {
        (None, Some(message), EventMode::Unwrapped | EventMode::Raw) => {
            match serde_json::from_str::<String>(message.get()) {
                Ok(text) => push_data(&text, out),
                Err(_) => push_data(message.get(), out),
            }
        }
        _ => push_data(json, out),
    }
    if let (None, Some(stream), Some(epoch), Some(offset)) =
        (kind, frame.stream_id, frame.epoch, frame.offset)
    {
        if offset > 0 && !epoch.is_empty() && !stream.is_empty() {
            use std::fmt::Write;
            // An id cannot hold a line break (SSE ends the field there).
            let clean = |s: &str| s.replace(['\n', '\r'], "");
            let _ = writeln!(out, "id: {offset}/{}/{}", clean(&epoch), clean(&stream));
        }
    }
    out.push('\n');
}

/// `data: ` lines: each line break of `text` (CRLF, CR or LF) starts another.
fn push_data(text: &str, out: &mut String) {
    let mut rest = text;
    loop {
        out.push_str("data: ");
        match rest.find(['\r', '\n']) {
            Some(at) => {
                out.push_str(&rest[..at]);
                out.push('\n');
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                out.push_str(rest);
                out.push('\n');
                return;
            }
        }
    }
}

/// A place in a stream's history, as an event id carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEventId {
    pub offset: u64,
    pub epoch: String,
    pub stream: String,
}

/// `Last-Event-ID: <offset>/<epoch>/<stream>` (the stream may hold `/`). `Ok(None)`
/// for an id of another shape (ignored, as AnyCable does); `Err` for a bad offset.
pub fn parse_last_event_id(value: &str) -> Result<Option<LastEventId>, String> {
    let mut parts = value.trim().splitn(3, '/');
    let (Some(offset), Some(epoch), Some(stream)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let offset = offset
        .parse()
        .map_err(|_| format!("Last-Event-ID: offset {offset:?} is not a number"))?;
    Ok(Some(LastEventId {
        offset,
        epoch: epoch.to_string(),
        stream: stream.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str, mode: EventMode) -> String {
        let mut out = String::new();
        encode_event(json, mode, &mut out);
        out
    }

    #[test]
    fn typed_frames_are_named_events_sent_whole() {
        let welcome = r#"{"type":"welcome","sid":"s1"}"#;
        assert_eq!(
            event(welcome, EventMode::Unwrapped),
            format!("event: welcome\ndata: {welcome}\n\n")
        );
        assert_eq!(event(welcome, EventMode::Raw), "");
        assert_eq!(
            event(r#"{"type":"ping","message":5}"#, EventMode::Envelope),
            "event: ping\ndata: {\"type\":\"ping\",\"message\":5}\n\n"
        );
    }

    #[test]
    fn a_broadcast_is_its_message_with_its_place_as_the_id() {
        let frame = r#"{"identifier":"{\"channel\":\"A\"}","message":{"n":1},"stream_id":"chat/1","epoch":"e1","offset":42}"#;
        assert_eq!(
            event(frame, EventMode::Unwrapped),
            "data: {\"n\":1}\nid: 42/e1/chat/1\n\n"
        );
        assert_eq!(
            event(frame, EventMode::Envelope),
            format!("data: {frame}\nid: 42/e1/chat/1\n\n")
        );
        // A string message (a Turbo Stream) goes out unquoted, line by line.
        let turbo = r#"{"identifier":"x","message":"<turbo-stream>\r\n<template>a</template>\n</turbo-stream>"}"#;
        assert_eq!(
            event(turbo, EventMode::Raw),
            "data: <turbo-stream>\ndata: <template>a</template>\ndata: </turbo-stream>\n\n"
        );
    }

    #[test]
    fn an_event_id_round_trips() {
        assert_eq!(
            parse_last_event_id("42/e1/chat/1"),
            Ok(Some(LastEventId {
                offset: 42,
                epoch: "e1".into(),
                stream: "chat/1".into()
            }))
        );
        assert_eq!(parse_last_event_id("42"), Ok(None));
        assert!(parse_last_event_id("x/e1/s").is_err());
    }
}
