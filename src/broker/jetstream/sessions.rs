//! Sessions kept for a restore in a JetStream key-value bucket.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::{fit_duplicate_window, fit_replicas, get_or_create, Replicas};
use crate::broker::seal::Seal;
use crate::broker::sessions::CachedSession;
use crate::protocol::broadcast::sha256_hex;

/// The NATS broker's session cache: a JetStream key-value bucket ([`SESSIONS_BUCKET`]),
/// so a client restores its session on any node, also after the node that served it
/// died. Entries live `ANYCABLE_SESSIONS_TTL` after they were last written. Each is
/// sealed ([`Seal`]): whoever reaches NATS can neither read one nor forge one.
pub struct StoredSessions {
    kv: jetstream::kv::Store,
    seal: Seal,
}

/// How the NATS broker keeps sessions: for `ttl` after they were last written, at most
/// `max_bytes` in all (`ANYCABLE_SESSIONS_MAX_BYTES`; past it a new one is not stored,
/// with a warning, until old ones expire), sealed with `key`.
#[derive(Debug, Clone)]
pub struct SessionsSettings {
    pub ttl: Duration,
    pub max_bytes: usize,
    pub key: crate::broker::seal::SealKey,
}

/// The key-value bucket of sessions.
pub const SESSIONS_BUCKET: &str = "anycable_rs_sessions";

/// A session's key in the bucket: the SHA-256 of its sid, in hex, so whoever can list
/// the bucket, or read the JetStream files, gets no sid from the keys.
fn session_key(sid: &str) -> String {
    sha256_hex(sid.as_bytes())
}

/// A session write JetStream did not acknowledge is tried this many times in all,
/// this far apart.
const PUT_TRIES: u32 = 5;
const PUT_RETRY_PAUSE: Duration = Duration::from_millis(500);

impl StoredSessions {
    pub async fn put(&self, sid: &str, session: &CachedSession) {
        let Ok(json) = serde_json::to_vec(session) else {
            return;
        };
        let key = session_key(sid);
        let Some(sealed) = self.seal.seal(key.as_bytes(), &json) else {
            log::warn!("NATS KV: a session could not be sealed for a restore (no randomness)");
            return;
        };
        let mut tries = 1;
        let result = loop {
            match self.kv.put(&key, sealed.clone().into()).await {
                // Not stored for a moment (the bucket's leader lost, its replicas
                // growing): tried again, a session's last word matters for its restore.
                Err(e) if tries < PUT_TRIES && !e.to_string().contains("maximum") => {
                    tries += 1;
                    tokio::time::sleep(PUT_RETRY_PAUSE).await;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            static PUT_LOG: crate::logging::Throttle = crate::logging::Throttle::new();
            crate::logging::once_a_second(&PUT_LOG, |more| {
                log::warn!(
                    "NATS KV: a session could not be stored for a restore ({e}; full at \
                     ANYCABLE_SESSIONS_MAX_BYTES?) ({more} more since the last line)"
                )
            });
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
        let Some(json) = self.seal.open(key.as_bytes(), &entry.value) else {
            static FORGED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();
            crate::logging::once_a_second(&FORGED_LOG, |more| {
                log::warn!(
                    "NATS KV: a stored session did not open with this app's key (forged, \
                     altered, or sealed with another secret): refused like an unknown sid \
                     ({more} more since the last line)"
                )
            });
            return None;
        };
        serde_json::from_slice(&json).ok()
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
    settings: &SessionsSettings,
    replicas: Replicas,
) -> Result<StoredSessions, String> {
    let ttl = settings.ttl;
    let max_bytes = i64::try_from(settings.max_bytes).unwrap_or(i64::MAX);
    let wanted = stream::Config {
        name: format!("KV_{SESSIONS_BUCKET}"),
        subjects: vec![format!("$KV.{SESSIONS_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        max_bytes,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let what = format!("sessions bucket {SESSIONS_BUCKET}");
    let (_, info) = get_or_create(js, wanted, &what, replicas).await?;
    if info.config.max_age != ttl || info.config.max_bytes != max_bytes {
        let mut update = info.config;
        update.max_age = ttl;
        update.max_bytes = max_bytes;
        fit_duplicate_window(&mut update);
        js.update_stream(update)
            .await
            .map_err(|e| format!("updating sessions bucket {SESSIONS_BUCKET}: {e}"))?;
    }
    let kept_on = fit_replicas(js, &format!("KV_{SESSIONS_BUCKET}"), &what, replicas).await?;
    let kv = js
        .get_key_value(SESSIONS_BUCKET)
        .await
        .map_err(|e| format!("sessions bucket {SESSIONS_BUCKET}: {e}"))?;
    log::info!("NATS broker: sessions bucket {SESSIONS_BUCKET}, replicas {kept_on}");
    Ok(StoredSessions {
        kv,
        seal: Seal::new(&settings.key),
    })
}
