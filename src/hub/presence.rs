//! Presence (AnyCable §4, memory broker): who is in a stream's presence set. A record
//! is keyed by stream, then presence id, and held by the sessions that joined with
//! that id. `join` announces an id that is new in the stream, `leave` one whose last
//! session left; a session whose socket closed keeps its place for
//! `ANYCABLE_PRESENCE_TTL` (a reconnecting client does not flicker out and in), then
//! the sweep lets it go.
//!
//! Unlike AnyCable-Go's memory broker, a live session's record never expires: this
//! process knows which sockets are open, so there is no refresh to miss (AnyCable-Go
//! expires records of plain-protocol sessions, which it does not refresh).
//!
//! Unlike AnyCable's, an id a client chose belongs to who joined with it first (its
//! connection's identifiers, or the session itself without any): another user cannot
//! join as it, replace its info, or keep it listed after its owner left. The app's own
//! joins (`join_presence`) are trusted. Info, records per stream and `info` replies
//! are bounded ([`MAX_INFO_BYTES`], [`MAX_RECORDS`], [`MAX_REPLY_BYTES`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What a change did to the set: an event for the stream's subscribers, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Join { id: String, info: Option<String> },
    Leave { id: String },
}

impl PresenceEvent {
    /// The event as AnyCable sends it in `message`.
    pub fn to_json(&self) -> String {
        match self {
            PresenceEvent::Join { id, info } => record_json("join", id, info.as_deref()),
            PresenceEvent::Leave { id } => record_json("leave", id, None),
        }
    }
}

fn record_json(kind: &str, id: &str, info: Option<&str>) -> String {
    let mut out = String::from("{");
    if !kind.is_empty() {
        out.push_str(r#""type":"#);
        out.push_str(&json_string(kind));
        out.push(',');
    }
    out.push_str(r#""id":"#);
    out.push_str(&json_string(id));
    if let Some(info) = info {
        out.push_str(r#","info":"#);
        out.push_str(info);
    }
    out.push('}');
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

/// The largest `info` (JSON text) a join may carry.
pub const MAX_INFO_BYTES: usize = 4096;
/// Ids one stream's presence set may hold; a join of a new one past it is refused.
pub const MAX_RECORDS: usize = 10_000;
/// An `info` reply lists records until it reaches this size (`total` counts them all).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum PresenceError {
    /// The session is in this stream's set under another id.
    IdMismatch,
    /// A client chose an id someone else joined with first.
    IdTaken,
    /// `info` is over [`MAX_INFO_BYTES`].
    InfoTooLarge,
    /// The stream's set holds [`MAX_RECORDS`] ids.
    Full,
}

impl std::fmt::Display for PresenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PresenceError::IdMismatch => f.write_str("presence ID mismatch"),
            PresenceError::IdTaken => f.write_str("presence ID held by another connection"),
            PresenceError::InfoTooLarge => {
                write!(f, "presence info over {MAX_INFO_BYTES} bytes")
            }
            PresenceError::Full => write!(f, "presence set full ({MAX_RECORDS} ids)"),
        }
    }
}

/// Who asks to join: the app (its choice of id is trusted) or a client, as the owner
/// its id is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joiner<'a> {
    App,
    Client { owner: &'a str },
}

struct Member {
    session: u64,
    /// When the session's socket closed; it goes `ttl` after.
    gone_at: Option<Instant>,
}

struct Record {
    info: Option<String>,
    members: Vec<Member>,
    /// Whose id it is when a client chose it; `None` when the app made it.
    owner: Option<String>,
}

pub struct Presence {
    ttl: Duration,
    /// stream → presence id → record.
    streams: Mutex<HashMap<String, HashMap<String, Record>>>,
}

impl Presence {
    pub fn new(ttl: Duration) -> Self {
        Presence {
            ttl,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Session `session` joins `stream` as `id` (again: its info is updated). A `Join`
    /// event when the id is new in the stream. A client joins an id only if it is new
    /// or its own.
    pub fn join(
        &self,
        stream: &str,
        session: u64,
        id: &str,
        info: Option<String>,
        joiner: Joiner<'_>,
    ) -> Result<Option<PresenceEvent>, PresenceError> {
        if info.as_ref().is_some_and(|i| i.len() > MAX_INFO_BYTES) {
            return Err(PresenceError::InfoTooLarge);
        }
        let mut streams = self.streams.lock();
        if let Some(records) = streams.get(stream) {
            if records
                .iter()
                .any(|(other, r)| other != id && r.members.iter().any(|m| m.session == session))
            {
                return Err(PresenceError::IdMismatch);
            }
            match (records.get(id), joiner) {
                (Some(record), Joiner::Client { owner })
                    if record.owner.as_deref() != Some(owner) =>
                {
                    return Err(PresenceError::IdTaken);
                }
                (None, _) if records.len() >= MAX_RECORDS => return Err(PresenceError::Full),
                _ => {}
            }
        }
        let records = streams.entry(stream.to_owned()).or_default();
        match records.get_mut(id) {
            Some(record) => {
                record.info = info;
                match record.members.iter_mut().find(|m| m.session == session) {
                    Some(member) => member.gone_at = None,
                    None => record.members.push(Member {
                        session,
                        gone_at: None,
                    }),
                }
                Ok(None)
            }
            None => {
                records.insert(
                    id.to_owned(),
                    Record {
                        info: info.clone(),
                        members: vec![Member {
                            session,
                            gone_at: None,
                        }],
                        owner: match joiner {
                            Joiner::App => None,
                            Joiner::Client { owner } => Some(owner.to_owned()),
                        },
                    },
                );
                Ok(Some(PresenceEvent::Join {
                    id: id.to_owned(),
                    info,
                }))
            }
        }
    }

    /// Session `session` leaves `stream`: a `Leave` event when it was the id's last.
    pub fn leave(&self, stream: &str, session: u64) -> Option<PresenceEvent> {
        let mut streams = self.streams.lock();
        let records = streams.get_mut(stream)?;
        let (id, record) = records
            .iter_mut()
            .find(|(_, r)| r.members.iter().any(|m| m.session == session))?;
        record.members.retain(|m| m.session != session);
        let event = record
            .members
            .is_empty()
            .then(|| PresenceEvent::Leave { id: id.clone() });
        if event.is_some() {
            let id = id.clone();
            records.remove(&id);
        }
        if records.is_empty() {
            streams.remove(stream);
        }
        event
    }

    /// Session `session`'s socket closed: its places go `ttl` from now.
    pub fn disconnected(&self, session: u64) {
        self.disconnected_at(session, Instant::now());
    }

    pub fn disconnected_at(&self, session: u64, now: Instant) {
        for records in self.streams.lock().values_mut() {
            for record in records.values_mut() {
                for m in record.members.iter_mut().filter(|m| m.session == session) {
                    m.gone_at = Some(now);
                }
            }
        }
    }

    /// Lets go of the places of sessions gone for `ttl`: (stream, `Leave`) for each id
    /// that has none left.
    pub fn sweep(&self) -> Vec<(String, PresenceEvent)> {
        self.sweep_at(Instant::now())
    }

    pub fn sweep_at(&self, now: Instant) -> Vec<(String, PresenceEvent)> {
        let mut events = Vec::new();
        let mut streams = self.streams.lock();
        streams.retain(|stream, records| {
            records.retain(|id, record| {
                record
                    .members
                    .retain(|m| m.gone_at.is_none_or(|at| now < at + self.ttl));
                if record.members.is_empty() {
                    events.push((stream.clone(), PresenceEvent::Leave { id: id.clone() }));
                    false
                } else {
                    true
                }
            });
            !records.is_empty()
        });
        events
    }

    /// `{"type":"info","total":N,"records":[{"id":…,"info":…},…]}` for `stream`
    /// (`records` left out when not asked for; listed up to [`MAX_REPLY_BYTES`]).
    pub fn info_json(&self, stream: &str, return_records: bool) -> String {
        let streams = self.streams.lock();
        let records = streams.get(stream);
        let total = records.map_or(0, |r| r.len());
        let mut out = format!(r#"{{"type":"info","total":{total}"#);
        if return_records {
            out.push_str(r#","records":["#);
            let mut sorted: Vec<_> = records.into_iter().flatten().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (id, record)) in sorted.into_iter().enumerate() {
                let json = record_json("", id, record.info.as_deref());
                if out.len() + json.len() > MAX_REPLY_BYTES {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json);
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    pub fn stream_count(&self) -> usize {
        self.streams.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Joiner<'static> = Joiner::Client {
        owner: r#"{"user":"alice"}"#,
    };
    const BOB: Joiner<'static> = Joiner::Client {
        owner: r#"{"user":"bob"}"#,
    };

    /// Issue #24 (6, 7): bob joined as "alice" and replaced her info; "alice" stayed
    /// listed after her socket closed; 60 KB infos made every reply too big to send.
    #[test]
    fn a_clients_id_is_its_owners_and_sizes_are_bounded() {
        let p = Presence::new(Duration::from_secs(15));
        assert_eq!(
            p.join("s", 1, "alice", Some("1".into()), ALICE),
            Ok(join_info("alice", "1"))
        );
        assert_eq!(
            p.join("s", 2, "alice", Some("2".into()), BOB),
            Err(PresenceError::IdTaken)
        );
        assert_eq!(
            p.leave("s", 1),
            Some(PresenceEvent::Leave { id: "alice".into() })
        );
        // The app's own joins are trusted, and no client joins an id the app made.
        assert_eq!(p.join("s", 3, "team", None, Joiner::App), Ok(join("team")));
        assert_eq!(p.join("s", 4, "team", None, Joiner::App), Ok(None));
        assert_eq!(
            p.join("s", 5, "team", None, ALICE),
            Err(PresenceError::IdTaken)
        );
        let big = format!(r#""{}""#, "x".repeat(MAX_INFO_BYTES));
        assert_eq!(
            p.join("s", 6, "bob", Some(big), BOB),
            Err(PresenceError::InfoTooLarge)
        );
        let info = format!(r#""{}""#, "y".repeat(MAX_INFO_BYTES - 2));
        for n in 0..100 {
            let owner = format!("owner{n}");
            let joiner = Joiner::Client { owner: &owner };
            p.join("big", 100 + n, &format!("u{n}"), Some(info.clone()), joiner)
                .unwrap();
        }
        let reply = p.info_json("big", true);
        assert!(reply.len() <= MAX_REPLY_BYTES + 1, "{}", reply.len());
        assert!(reply.starts_with(r#"{"type":"info","total":100,"records":[{"id":"u0""#));
        assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
    }

    #[test]
    fn a_full_set_takes_no_new_id() {
        let p = Presence::new(Duration::from_secs(15));
        for n in 0..MAX_RECORDS as u64 {
            p.join("s", n, &n.to_string(), None, Joiner::App).unwrap();
        }
        assert_eq!(
            p.join("s", u64::MAX, "new", None, Joiner::App),
            Err(PresenceError::Full)
        );
        // An id already there is still joined (another tab).
        assert_eq!(p.join("s", u64::MAX, "7", None, Joiner::App), Ok(None));
    }

    fn join_info(id: &str, info: &str) -> Option<PresenceEvent> {
        Some(PresenceEvent::Join {
            id: id.into(),
            info: Some(info.into()),
        })
    }

    fn join(id: &str) -> Option<PresenceEvent> {
        Some(PresenceEvent::Join {
            id: id.into(),
            info: None,
        })
    }

    #[test]
    fn joins_once_per_id_and_leaves_with_the_last_session() {
        let p = Presence::new(Duration::from_secs(15));
        assert_eq!(p.join("s", 1, "42", None, ALICE), Ok(join("42")));
        // Another tab of the same user: no new event; its info replaces the old.
        assert_eq!(
            p.join("s", 2, "42", Some(r#"{"n":2}"#.into()), ALICE),
            Ok(None)
        );
        assert_eq!(
            p.join("s", 1, "43", None, ALICE),
            Err(PresenceError::IdMismatch)
        );
        assert_eq!(
            p.info_json("s", true),
            r#"{"type":"info","total":1,"records":[{"id":"42","info":{"n":2}}]}"#
        );
        assert_eq!(p.leave("s", 1), None);
        assert_eq!(
            p.leave("s", 2),
            Some(PresenceEvent::Leave { id: "42".into() })
        );
        assert_eq!(p.leave("s", 2), None);
        assert_eq!(p.info_json("s", false), r#"{"type":"info","total":0}"#);
        assert_eq!(p.stream_count(), 0);
    }

    #[test]
    fn a_closed_session_keeps_its_place_for_the_ttl() {
        let p = Presence::new(Duration::from_secs(15));
        let t0 = Instant::now();
        p.join("s", 1, "42", None, ALICE).unwrap();
        p.join("s", 2, "7", None, Joiner::App).unwrap();
        p.disconnected_at(1, t0);
        assert!(p.sweep_at(t0 + Duration::from_secs(14)).is_empty());
        // Back within the ttl (a restored session joins again): no leave, no join.
        p.join("s", 3, "42", None, ALICE).unwrap();
        assert!(p.sweep_at(t0 + Duration::from_secs(16)).is_empty());
        p.disconnected_at(3, t0 + Duration::from_secs(20));
        assert_eq!(
            p.sweep_at(t0 + Duration::from_secs(35)),
            vec![("s".to_string(), PresenceEvent::Leave { id: "42".into() })]
        );
        assert_eq!(
            p.info_json("s", true),
            r#"{"type":"info","total":1,"records":[{"id":"7"}]}"#
        );
    }

    #[test]
    fn events_are_anycable_json() {
        assert_eq!(
            PresenceEvent::Join {
                id: "42".into(),
                info: Some(r#"{"name":"Bart"}"#.into())
            }
            .to_json(),
            r#"{"type":"join","id":"42","info":{"name":"Bart"}}"#
        );
        assert_eq!(
            PresenceEvent::Leave { id: "42".into() }.to_json(),
            r#"{"type":"leave","id":"42"}"#
        );
    }
}
