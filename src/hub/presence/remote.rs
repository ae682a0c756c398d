//! Presence across nodes (the NATS broker): each node announces its own records over
//! core NATS — a join or a leave as it happens, all of them every third of the
//! presence TTL — and keeps what the others announce for the TTL after it last heard
//! it. A node that is gone (killed, cut off) stops announcing: its records go a TTL
//! later, with `leave` events, everywhere. Each node tells its own subscribers: a
//! `join` when an id appears on no node before, a `leave` when it is on none after.
//!
//! An announcement names a client-chosen id's owner by its digest (SHA-256 of the
//! connection's identifiers), never the identifiers: another node refuses a client
//! that joins as someone else's id, as this one does. Two clients joining one id on
//! two nodes at the same moment may both be let in (each node checks what it knows).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An announcement's records are split so that one stays under this size.
const MAX_ANNOUNCEMENT_BYTES: usize = 256 * 1024;

/// What one node says about one stream's presence set.
#[derive(Serialize, Deserialize)]
pub(super) struct Announcement<'a> {
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    /// Ids it holds (joined, or still held), with their info.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Announced>,
    /// Ids it no longer holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

/// A node just started: the others announce everything now, not at their next turn.
#[derive(Serialize, Deserialize)]
pub(super) struct Hello<'a> {
    #[serde(borrow)]
    pub hello: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Announced {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// The digest of the connection's identifiers of who chose the id; none when the
    /// app made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

pub(super) struct RemoteRecord {
    pub info: Option<String>,
    pub owner: Option<String>,
    pub seen: Instant,
}

/// The other nodes' records: node → stream → id → record.
#[derive(Default)]
pub(super) struct Remote {
    pub nodes: HashMap<String, HashMap<String, HashMap<String, RemoteRecord>>>,
}

impl Remote {
    /// Whether any other node holds `id` in `stream`.
    pub fn holds(&self, stream: &str, id: &str) -> bool {
        self.nodes
            .values()
            .any(|streams| streams.get(stream).is_some_and(|ids| ids.contains_key(id)))
    }

    /// The first record another node holds for `id` in `stream`.
    pub fn record(&self, stream: &str, id: &str) -> Option<&RemoteRecord> {
        self.nodes
            .values()
            .find_map(|streams| streams.get(stream).and_then(|ids| ids.get(id)))
    }

    /// Every id other nodes hold in `stream`, with one record's info each.
    pub fn ids<'a>(&'a self, stream: &str) -> HashMap<&'a str, Option<&'a str>> {
        let mut out = HashMap::new();
        for streams in self.nodes.values() {
            for (id, record) in streams.get(stream).into_iter().flatten() {
                out.entry(id.as_str()).or_insert(record.info.as_deref());
            }
        }
        out
    }

    pub fn upsert(&mut self, node: &str, stream: &str, id: String, record: RemoteRecord) {
        self.nodes
            .entry(node.to_owned())
            .or_default()
            .entry(stream.to_owned())
            .or_default()
            .insert(id, record);
    }

    /// `node` no longer holds `id` in `stream`: whether it did.
    pub fn remove(&mut self, node: &str, stream: &str, id: &str) -> bool {
        let Some(streams) = self.nodes.get_mut(node) else {
            return false;
        };
        let mut removed = false;
        if let Some(ids) = streams.get_mut(stream) {
            removed = ids.remove(id).is_some();
            if ids.is_empty() {
                streams.remove(stream);
            }
        }
        if streams.is_empty() {
            self.nodes.remove(node);
        }
        removed
    }

    /// How many ids `node` holds in `stream`.
    pub fn count(&self, node: &str, stream: &str) -> usize {
        self.nodes
            .get(node)
            .and_then(|streams| streams.get(stream))
            .map_or(0, |ids| ids.len())
    }

    /// Takes out what was last heard before `before`: (stream, id) of each.
    pub fn expire(&mut self, before: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        self.nodes.retain(|_, streams| {
            streams.retain(|stream, ids| {
                ids.retain(|id, record| {
                    let keep = record.seen >= before;
                    if !keep {
                        gone.push((stream.clone(), id.clone()));
                    }
                    keep
                });
                !ids.is_empty()
            });
            !streams.is_empty()
        });
        gone
    }
}

/// A client-chosen id's owner as announcements name it.
pub(super) fn owner_digest(owner: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, owner.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `records` of `stream` as announcements of `node`, each under
/// [`MAX_ANNOUNCEMENT_BYTES`] (one record alone may be bigger: info is bounded).
pub(super) fn announcements(node: &str, stream: &str, records: Vec<Announced>) -> Vec<String> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for record in records {
        let len = serde_json::to_string(&record).map_or(0, |t| t.len()) + 1;
        if !batch.is_empty() && size + len > MAX_ANNOUNCEMENT_BYTES {
            out.push(encode(node, stream, std::mem::take(&mut batch), Vec::new()));
            size = 0;
        }
        size += len;
        batch.push(record);
    }
    if !batch.is_empty() {
        out.push(encode(node, stream, batch, Vec::new()));
    }
    out
}

pub(super) fn encode(
    node: &str,
    stream: &str,
    records: Vec<Announced>,
    left: Vec<String>,
) -> String {
    serde_json::to_string(&Announcement {
        node: Cow::Borrowed(node),
        stream: Cow::Borrowed(stream),
        records,
        left,
    })
    .expect("an announcement always serializes")
}

/// An info as announced: JSON text (checked when the join took it).
pub(super) fn raw_info(info: Option<&str>) -> Option<Box<RawValue>> {
    info.and_then(|i| RawValue::from_string(i.to_owned()).ok())
}
