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
//!
//! With the NATS broker the nodes share their sets ([`Presence::share`], remote.rs):
//! `info` lists every node's records, and `join`/`leave` mean on any node.

mod remote;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use remote::{Announced, Remote, RemoteRecord};

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

/// A record as announced to the other nodes (its owner by digest).
fn announced(id: &str, info: Option<&str>, owner: Option<&str>) -> Announced {
    Announced {
        id: id.to_owned(),
        info: remote::raw_info(info),
        owner: owner.map(remote::owner_digest),
    }
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
    /// The other nodes' records, when shared (taken after `streams`, never before).
    remote: Mutex<Remote>,
    /// This node's name and where its announcements go, once shared.
    sharing: OnceLock<Sharing>,
}

/// Sends one announcement to the other nodes.
pub type Announce = Arc<dyn Fn(String) + Send + Sync>;

struct Sharing {
    node: String,
    out: Announce,
}

impl Presence {
    pub fn new(ttl: Duration) -> Self {
        Presence {
            ttl,
            streams: Mutex::new(HashMap::new()),
            remote: Mutex::new(Remote::default()),
            sharing: OnceLock::new(),
        }
    }

    /// Shares this node's sets with the others as `node` (a name unique to this
    /// process): announcements go to `out`, theirs come in through
    /// [`Presence::apply_announcement`]. Asks the others to announce theirs now.
    pub fn share(&self, node: String, out: Announce) {
        let hello = serde_json::to_string(&remote::Hello {
            hello: std::borrow::Cow::Borrowed(&node),
        })
        .expect("a hello always serializes");
        if self.sharing.set(Sharing { node, out }).is_ok() {
            self.announce(hello);
        }
    }

    /// How often every record is announced again: a third of the ttl (a record is
    /// kept a ttl after it was last heard), at least a second.
    pub fn announce_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }

    /// How long another node's record is kept after it was last heard: the ttl, and
    /// at least three announcement rounds and a second (a small ttl must not make
    /// records flap out and in between rounds).
    fn remote_ttl(&self) -> Duration {
        self.ttl
            .max(self.announce_every() * 3 + Duration::from_secs(1))
    }

    fn announce(&self, text: String) {
        if let Some(sharing) = self.sharing.get() {
            (sharing.out)(text);
        }
    }

    fn announce_change(&self, stream: &str, records: Vec<Announced>, left: Vec<String>) {
        if let Some(sharing) = self.sharing.get() {
            (sharing.out)(remote::encode(&sharing.node, stream, records, left));
        }
    }

    /// Every record this node holds, to the others (they keep each a ttl).
    pub fn announce_all(&self) {
        let Some(sharing) = self.sharing.get() else {
            return;
        };
        // Under the lock while queued: a change made meanwhile is heard after this.
        let streams = self.streams.lock();
        let all: Vec<(String, Vec<Announced>)> = streams
            .iter()
            .map(|(stream, records)| {
                let announced = records
                    .iter()
                    .map(|(id, r)| announced(id, r.info.as_deref(), r.owner.as_deref()))
                    .collect();
                (stream.clone(), announced)
            })
            .collect();
        for (stream, records) in all {
            for text in remote::announcements(&sharing.node, &stream, records) {
                (sharing.out)(text);
            }
        }
    }

    /// Another node's announcement: the events it makes for this node's subscribers
    /// (stream, event). A hello makes this node announce everything.
    pub fn apply_announcement(&self, text: &str) -> Result<Vec<(String, PresenceEvent)>, String> {
        self.apply_announcement_at(text, Instant::now())
    }

    pub fn apply_announcement_at(
        &self,
        text: &str,
        now: Instant,
    ) -> Result<Vec<(String, PresenceEvent)>, String> {
        let Some(sharing) = self.sharing.get() else {
            return Ok(Vec::new());
        };
        if let Ok(hello) = serde_json::from_str::<remote::Hello>(text) {
            if hello.hello != sharing.node {
                self.announce_all();
            }
            return Ok(Vec::new());
        }
        let a: remote::Announcement =
            serde_json::from_str(text).map_err(|e| format!("presence announcement: {e}"))?;
        if a.node == sharing.node {
            return Ok(Vec::new());
        }
        let stream = a.stream.as_ref();
        let streams = self.streams.lock();
        let mut remote = self.remote.lock();
        let here = |id: &str| streams.get(stream).is_some_and(|r| r.contains_key(id));
        let mut events = Vec::new();
        for record in a.records {
            if record
                .info
                .as_ref()
                .is_some_and(|i| i.get().len() > MAX_INFO_BYTES)
            {
                continue;
            }
            let known = here(&record.id) || remote.holds(stream, &record.id);
            let info = record.info.map(|i| i.get().to_owned());
            if !known {
                events.push((
                    stream.to_owned(),
                    PresenceEvent::Join {
                        id: record.id.clone(),
                        info: info.clone(),
                    },
                ));
            }
            if !known && remote.count(&a.node, stream) >= MAX_RECORDS {
                events.pop();
                continue;
            }
            let owner = record.owner;
            remote.upsert(
                &a.node,
                stream,
                record.id,
                RemoteRecord {
                    info,
                    owner,
                    seen: now,
                },
            );
        }
        for id in a.left {
            if remote.remove(&a.node, stream, &id) && !here(&id) && !remote.holds(stream, &id) {
                events.push((stream.to_owned(), PresenceEvent::Leave { id }));
            }
        }
        Ok(events)
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
        let remote = self.remote.lock();
        if let (Some(theirs), Joiner::Client { owner }) = (remote.record(stream, id), joiner) {
            if theirs.owner.as_deref() != Some(remote::owner_digest(owner).as_str()) {
                return Err(PresenceError::IdTaken);
            }
        }
        let elsewhere = remote.holds(stream, id);
        drop(remote);
        let records = streams.entry(stream.to_owned()).or_default();
        let result = match records.get_mut(id) {
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
                Ok((!elsewhere).then(|| PresenceEvent::Join {
                    id: id.to_owned(),
                    info,
                }))
            }
        };
        if self.sharing.get().is_some() {
            // Queued under the lock: the others hear this node's changes in the
            // order they were made.
            let record = &records[id];
            let change = announced(id, record.info.as_deref(), record.owner.as_deref());
            self.announce_change(stream, vec![change], Vec::new());
        }
        result
    }

    /// Session `session` leaves `stream`: a `Leave` event when it was the id's last.
    pub fn leave(&self, stream: &str, session: u64) -> Option<PresenceEvent> {
        let mut streams = self.streams.lock();
        let records = streams.get_mut(stream)?;
        let (id, record) = records
            .iter_mut()
            .find(|(_, r)| r.members.iter().any(|m| m.session == session))?;
        record.members.retain(|m| m.session != session);
        if !record.members.is_empty() {
            return None;
        }
        let id = id.clone();
        records.remove(&id);
        if records.is_empty() {
            streams.remove(stream);
        }
        let elsewhere = self.remote.lock().holds(stream, &id);
        self.announce_change(stream, Vec::new(), vec![id.clone()]);
        drop(streams);
        (!elsewhere).then_some(PresenceEvent::Leave { id })
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

    /// Also lets go of other nodes' records not heard of for `ttl`.
    pub fn sweep_at(&self, now: Instant) -> Vec<(String, PresenceEvent)> {
        let mut left: Vec<(String, String)> = Vec::new();
        let mut streams = self.streams.lock();
        streams.retain(|stream, records| {
            records.retain(|id, record| {
                record
                    .members
                    .retain(|m| m.gone_at.is_none_or(|at| now < at + self.ttl));
                if record.members.is_empty() {
                    left.push((stream.clone(), id.clone()));
                    false
                } else {
                    true
                }
            });
            !records.is_empty()
        });
        let mut remote = self.remote.lock();
        let expired = match now.checked_sub(self.remote_ttl()) {
            Some(before) => remote.expire(before),
            None => Vec::new(),
        };
        let mut events = Vec::new();
        for (stream, id) in &left {
            if !remote.holds(stream, id) {
                events.push((stream.clone(), PresenceEvent::Leave { id: id.clone() }));
            }
        }
        for (stream, id) in expired {
            let here = streams.get(&stream).is_some_and(|r| r.contains_key(&id));
            let counted = events.iter().any(|(s, e)| {
                s == &stream && matches!(e, PresenceEvent::Leave { id: i } if i == &id)
            });
            if !here && !remote.holds(&stream, &id) && !counted {
                events.push((stream, PresenceEvent::Leave { id }));
            }
        }
        drop(remote);
        for (stream, id) in left {
            self.announce_change(&stream, Vec::new(), vec![id]);
        }
        drop(streams);
        events
    }

    /// `{"type":"info","total":N,"records":[{"id":…,"info":…},…]}` for `stream`
    /// (`records` left out when not asked for; listed up to [`MAX_REPLY_BYTES`]).
    pub fn info_json(&self, stream: &str, return_records: bool) -> String {
        let streams = self.streams.lock();
        let remote = self.remote.lock();
        let mut all: HashMap<&str, Option<&str>> = remote.ids(stream);
        for (id, record) in streams.get(stream).into_iter().flatten() {
            all.insert(id.as_str(), record.info.as_deref());
        }
        let total = all.len();
        let mut out = format!(r#"{{"type":"info","total":{total}"#);
        if return_records {
            out.push_str(r#","records":["#);
            let mut sorted: Vec<_> = all.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (id, info)) in sorted.into_iter().enumerate() {
                let json = record_json("", id, info);
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

    /// The sessions of this process that hold a place in some set.
    pub fn sessions(&self) -> std::collections::HashSet<u64> {
        let streams = self.streams.lock();
        streams
            .values()
            .flat_map(|records| records.values())
            .flat_map(|r| r.members.iter().map(|m| m.session))
            .collect()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.lock().len()
    }
}

#[cfg(test)]
mod tests;
