//! Sessions kept for a restore in a JetStream key-value bucket.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::{fit_duplicate_window, get_or_create, sha256_hex};
use crate::broker::sessions::CachedSession;

/// The NATS broker's session cache: a JetStream key-value bucket ([`SESSIONS_BUCKET`]),
/// so a client restores its session on any node, also after the node that served it
/// died. Entries live `ANYCABLE_SESSIONS_TTL` after they were last written.
pub struct StoredSessions {
    kv: jetstream::kv::Store,
}

/// The key-value bucket of sessions.
pub const SESSIONS_BUCKET: &str = "anycable_rs_sessions";

/// A session's key in the bucket: the SHA-256 of its sid, in hex, so whoever can list
/// the bucket, or read the JetStream files, gets no sid from the keys.
fn session_key(sid: &str) -> String {
    sha256_hex(sid.as_bytes())
}

impl StoredSessions {
    pub async fn put(&self, sid: &str, session: &CachedSession) {
        let Ok(json) = serde_json::to_vec(session) else {
            return;
        };
        if let Err(e) = self.kv.put(session_key(sid), json.into()).await {
            log::warn!("NATS KV: a session could not be stored for a restore ({e})");
        }
    }

    /// The session stored under `sid`, taken: a sid restores once. Of restores racing
    /// for one sid (on any nodes) only the one whose purge finds the entry unchanged
    /// gets it (compare-and-delete on the key's revision); a get then a purge let 5 of
    /// 6 concurrent restores through.
    pub async fn take(&self, sid: &str) -> Option<CachedSession> {
        let key = session_key(sid);
        let entry = match self.kv.entry(key.clone()).await {
            Ok(Some(entry)) if entry.operation == jetstream::kv::Operation::Put => entry,
            Ok(_) => return None,
            Err(e) => {
                log::warn!("NATS KV: a session could not be read for a restore ({e})");
                return None;
            }
        };
        if let Err(e) = self
            .kv
            .purge_expect_revision(&key, Some(entry.revision))
            .await
        {
            log::debug!("NATS KV: a session went to another restore ({e})");
            return None;
        }
        serde_json::from_slice(&entry.value).ok()
    }

    /// Makes `sid` unrestorable (the server or the app closed its session).
    pub async fn forget(&self, sid: &str) {
        if let Err(e) = self.kv.purge(session_key(sid)).await {
            log::warn!("NATS KV: a closed session could not be forgotten ({e})");
        }
    }
}

/// Finds (or makes) the sessions bucket. Made as a plain stream: nats-server 2.9's
/// account info lacks what async-nats' `create_key_value` reads.
pub(super) async fn ensure_sessions(
    js: &jetstream::Context,
    ttl: Duration,
) -> Result<StoredSessions, String> {
    let wanted = stream::Config {
        name: format!("KV_{SESSIONS_BUCKET}"),
        subjects: vec![format!("$KV.{SESSIONS_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let what = format!("sessions bucket {SESSIONS_BUCKET}");
    let (_, info) = get_or_create(js, wanted, &what).await?;
    if info.config.max_age != ttl {
        let mut update = info.config;
        update.max_age = ttl;
        fit_duplicate_window(&mut update);
        js.update_stream(update)
            .await
            .map_err(|e| format!("updating sessions bucket {SESSIONS_BUCKET}: {e}"))?;
    }
    let kv = js
        .get_key_value(SESSIONS_BUCKET)
        .await
        .map_err(|e| format!("sessions bucket {SESSIONS_BUCKET}: {e}"))?;
    Ok(StoredSessions { kv })
}
