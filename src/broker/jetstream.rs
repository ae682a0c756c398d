//! The NATS broker (`ANYCABLE_BROKER=nats`): stream history kept in NATS JetStream, so
//! every node of a cluster gives out the same offsets and any node can replay what a
//! client missed — across restarts of the node that served it.
//!
//! How a broadcast travels:
//! 1. Whoever broadcasts (a server process here, or a process that serves no sockets,
//!    from Ruby) publishes it to JetStream on the stream's subject
//!    ([`subject_for`]) and waits for the ack: it is stored exactly once, and the
//!    stream's sequence number is its offset.
//! 2. Every server process reads the JetStream stream with an ordered consumer and
//!    delivers each message, with its offset and the stream's epoch, to its own
//!    subscribers: once per node, in offset order.
//!
//! Transient broadcasts (whispers) and remote disconnects are not stored: they go over
//! the core NATS subject as with the NATS pub/sub.
//!
//! One JetStream stream ([`STREAM`]) holds every Action Cable stream's history, one
//! subject each, at most `ANYCABLE_HISTORY_LIMIT` messages per subject for
//! `ANYCABLE_HISTORY_TTL` (AnyCable-Go makes a JetStream stream per Action Cable
//! stream; one stream with per-subject limits scales to many streams). Offsets are the
//! stream's sequence: they rise within an Action Cable stream but are not contiguous.
//! The epoch comes from the JetStream stream's creation time: it changes only when
//! the stream is deleted and made anew, and then every position a client holds is
//! refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use base64::Engine;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use crate::broker::history::{Entry, HistoryConfig, HistoryError};
use crate::protocol::broadcast::{self, BroadcastMessage};
use crate::pubsub::{PubSub, PublishQueue, Queued};

/// The JetStream stream that keeps the history.
pub const STREAM: &str = "anycable_history";
/// Its subjects: `anycable_history.<token>`, one per Action Cable stream.
pub const SUBJECT_PREFIX: &str = "anycable_history.";
/// Encoded names longer than this are hashed: NATS refuses control lines over 4 KiB.
const MAX_TOKEN: usize = 1024;
/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;

/// The subject of `stream`'s history: `s` and the name in unpadded base64url, or `h`
/// and its SHA-256 in hex when that would be long. Ruby computes the same
/// (`AnyCableRs::Broadcasting::JetStream.subject_for`).
pub fn subject_for(stream: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stream);
    if encoded.len() <= MAX_TOKEN {
        return format!("{SUBJECT_PREFIX}s{encoded}");
    }
    format!("{SUBJECT_PREFIX}h{}", sha256_hex(stream.as_bytes()))
}

/// SHA-256 in lowercase hex.
fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Marks an `exclude_socket` that names a session by [`exclude_digest`], not its sid.
pub const SID_DIGEST_PREFIX: &str = "sha256:";

/// `sha256:<hex>` of a sid (one already in that form stays as it is): how what is
/// stored names the socket a broadcast skips. A sid restores its session (a
/// credential); the stream keeps messages for HISTORY_TTL. Ruby's
/// `AnyCableRs::JetStream.exclude_digest` makes the same.
pub fn exclude_digest(sid: &str) -> String {
    if sid.starts_with(SID_DIGEST_PREFIX) {
        return sid.to_owned();
    }
    format!("{SID_DIGEST_PREFIX}{}", sha256_hex(sid.as_bytes()))
}

/// The stored body of a broadcast: the AnyCable message, as published, the socket it
/// skips named by its [`exclude_digest`].
fn body(stream: &str, data: &str, exclude_socket: Option<&str>) -> String {
    let mut message = serde_json::json!({"stream": stream, "data": data});
    if let Some(sid) = exclude_socket {
        message["meta"] = serde_json::json!({"exclude_socket": exclude_digest(sid)});
    }
    message.to_string()
}

/// (stream, data, exclude_socket) of a stored body.
fn parse_body(payload: &[u8]) -> Option<(String, String, Option<String>)> {
    let text = std::str::from_utf8(payload).ok()?;
    match broadcast::parse(text).ok()?.into_iter().next()? {
        BroadcastMessage::Stream {
            stream,
            data,
            exclude_socket,
            ..
        } => Some((stream, data, exclude_socket)),
        BroadcastMessage::Disconnect { .. } => None,
    }
}

/// One broadcast waiting to be stored.
pub struct Stored {
    subject: String,
    body: String,
    /// `Nats-Msg-Id`: a retried publish is stored once.
    id: String,
}

impl Queued for Stored {
    fn size(&self) -> usize {
        self.subject.len() + self.body.len()
    }
}

/// Reads a stream's history from JetStream.
pub struct StoredHistory {
    stream: stream::Stream,
    /// Changes if the stream is made anew (deleted, its store lost): see [`consume`].
    epoch: parking_lot::RwLock<String>,
}

/// A replay reads at most this many messages of one stream (more than any per-stream
/// limit a node sets); past it the request is refused rather than cut short.
const MAX_REPLAY: usize = 10_000;

/// The last sequence this process's consumer delivered (one consumer per process).
static CONSUMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Stored broadcasts up to this sequence have been delivered live here.
pub fn consumed() -> u64 {
    CONSUMED.load(Ordering::Acquire)
}

fn unavailable(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

fn is_not_found(e: &stream::DirectGetError) -> bool {
    matches!(e.kind(), stream::DirectGetErrorKind::NotFound)
}

impl StoredHistory {
    pub fn epoch(&self) -> String {
        self.epoch.read().clone()
    }

    fn entry(message: jetstream::message::StreamMessage) -> Option<Entry> {
        let (_, data, _) = parse_body(&message.payload)?;
        Some(Entry {
            offset: message.sequence,
            at: message.time.unix_timestamp().max(0) as u64,
            data: Arc::from(data),
        })
    }

    /// The messages of `subject` after sequence `after`, oldest first (every one: the
    /// per-stream limit is the stream's, which another node may have set higher).
    async fn after(&self, subject: &str, after: u64) -> Result<Vec<Entry>, HistoryError> {
        let mut entries = Vec::new();
        let mut next = after.saturating_add(1);
        loop {
            if entries.len() >= MAX_REPLAY {
                return Err(unavailable(format!(
                    "more than {MAX_REPLAY} messages to replay"
                )));
            }
            match self
                .stream
                .direct_get_next_for_subject(subject, Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence.saturating_add(1);
                    entries.extend(Self::entry(message));
                }
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(entries)
    }

    /// The messages after `offset` in `epoch`; fails when the epoch is not the
    /// stream's or the client's own last message is gone (what came after it may be
    /// gone too: a client whose last message expired is refused even when nothing
    /// followed it).
    pub async fn from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Vec<Entry>, HistoryError> {
        if epoch != *self.epoch.read() {
            return Err(HistoryError::EpochMismatch);
        }
        let subject = subject_for(stream);
        let entries = self.after(&subject, offset).await?;
        // Checked after reading: messages go oldest first, so while the client's last
        // one is still here, nothing after it has gone.
        match self.stream.direct_get(offset).await {
            Ok(message) if message.subject.as_str() == subject => Ok(entries),
            Ok(_) => Err(HistoryError::OffsetGone {
                offset,
                oldest: 0,
                last: 0,
            }),
            Err(e) if is_not_found(&e) || offset == 0 => Err(HistoryError::OffsetGone {
                offset,
                oldest: 0,
                last: 0,
            }),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The messages stored at or after `since` (unix seconds), oldest first.
    pub async fn since(&self, stream: &str, since: u64) -> Result<Vec<Entry>, HistoryError> {
        let subject = subject_for(stream);
        match self
            .stream
            .direct_get_last_for_subject(subject.as_str())
            .await
        {
            Ok(last) if (last.time.unix_timestamp().max(0) as u64) < since => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        }
        let mut entries = self.after(&subject, 0).await?;
        entries.retain(|e| e.at >= since);
        Ok(entries)
    }
}

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
    pub async fn put(&self, sid: &str, session: &crate::broker::sessions::CachedSession) {
        let Ok(json) = serde_json::to_vec(session) else {
            return;
        };
        if let Err(e) = self.kv.put(session_key(sid), json.into()).await {
            log::warn!("NATS KV: a session could not be stored for a restore ({e})");
        }
    }

    /// The session stored under `sid`, taken (a sid restores once).
    pub async fn take(&self, sid: &str) -> Option<crate::broker::sessions::CachedSession> {
        let bytes = match self.kv.get(session_key(sid)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("NATS KV: a session could not be read for a restore ({e})");
                return None;
            }
        };
        self.forget(sid).await;
        serde_json::from_slice(&bytes).ok()
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
async fn ensure_sessions(js: &jetstream::Context, ttl: Duration) -> Result<StoredSessions, String> {
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

/// Where the NATS broker delivers what it reads: (stream, data, exclude_socket,
/// epoch, offset).
pub type StoredSink = Arc<dyn Fn(&str, &str, Option<&str>, &str, u64) + Send + Sync>;

/// The NATS broker's link: stores broadcasts in JetStream and delivers what is
/// stored; transient messages and commands go over the core subject.
pub struct NatsBroker {
    stored: Arc<PublishQueue<Stored>>,
    core: Arc<PublishQueue<String>>,
    connected: Arc<AtomicBool>,
    history: Arc<OnceLock<Arc<StoredHistory>>>,
}

impl NatsBroker {
    /// Connects in the background (a NATS server that is down at boot does not stop
    /// the WebSocket server), makes or updates the JetStream stream, and starts
    /// delivering. `core_deliver` gets what arrives on the core subject; `stored`
    /// every stored broadcast; `ready` the history reader once it works. Call inside
    /// the runtime.
    pub fn start(
        servers: &str,
        subject: String,
        config: HistoryConfig,
        sessions_ttl: Duration,
        core_deliver: impl Fn(&str) + Send + Sync + 'static,
        stored: StoredSink,
        ready: impl FnOnce(Arc<StoredHistory>, Option<Arc<StoredSessions>>) + Send + 'static,
    ) -> Result<Self, String> {
        let (addrs, label) = crate::pubsub::nats::server_addrs(servers)?;
        let connected = Arc::new(AtomicBool::new(false));
        let stored_queue = Arc::new(PublishQueue::<Stored>::new("NATS JetStream"));
        let core = Arc::new(PublishQueue::<String>::new("NATS"));
        let history = Arc::new(OnceLock::new());
        let broker = NatsBroker {
            stored: stored_queue.clone(),
            core: core.clone(),
            connected: connected.clone(),
            history: history.clone(),
        };
        // Stored broadcasts from now on reach this process's subscribers, however long
        // the setup takes (a second back for clocks that differ a little).
        let booted = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
        tokio::spawn(async move {
            let Some(client) = crate::pubsub::nats::connect(addrs, &label, connected.clone()).await
            else {
                return;
            };
            tokio::spawn(crate::pubsub::nats::run_core(
                client.clone(),
                subject,
                core,
                connected.clone(),
                core_deliver,
            ));
            let js = jetstream::new(client.clone());
            let (stream, epoch) = loop {
                match ensure_stream(&js, &config).await {
                    Ok(found) => break found,
                    Err(e) => {
                        log::error!(
                            "NATS JetStream: {e}; retrying (history and stored broadcasts wait)"
                        );
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            };
            log::info!(
                "NATS broker: JetStream stream {STREAM}, epoch {epoch}, history limit {}, ttl {:?}",
                config.limit,
                config.ttl
            );
            let reader = Arc::new(StoredHistory {
                stream: stream.clone(),
                epoch: parking_lot::RwLock::new(epoch),
            });
            let sessions = if sessions_ttl.is_zero() {
                None
            } else {
                match ensure_sessions(&js, sessions_ttl).await {
                    Ok(sessions) => Some(Arc::new(sessions)),
                    Err(e) => {
                        log::error!("NATS JetStream: {e}; sessions are not kept for a restore");
                        None
                    }
                }
            };
            let _ = history.set(reader.clone());
            ready(reader.clone(), sessions);
            tokio::spawn(publish_loop(js, config, stored_queue, connected));
            consume(client, reader, booted, stored).await;
        });
        Ok(broker)
    }
}

impl PubSub for NatsBroker {
    /// Queues an AnyCable payload: its non-transient stream messages are stored (and
    /// delivered from the store), everything else goes over the core subject.
    fn publish(&self, payload: String) {
        let Ok(messages) = broadcast::parse(&payload) else {
            // Checked before it got here; a bad one would be refused by every node.
            self.core.push(payload);
            return;
        };
        let mut rest = Vec::new();
        for message in messages {
            match message {
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                    transient: false,
                } => self.stored.push(Stored {
                    subject: subject_for(&stream),
                    body: body(&stream, &data, exclude_socket.as_deref()),
                    id: message_id(),
                }),
                other => rest.push(other),
            }
        }
        if !rest.is_empty() {
            self.core.push(broadcast::to_payload(&rest));
        }
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.history.get().is_some()
    }
}

/// A random `Nats-Msg-Id`.
fn message_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The history stream as this process's settings want it.
fn stream_config(config: &HistoryConfig) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{SUBJECT_PREFIX}>")],
        max_messages_per_subject: config.limit.max(1) as i64,
        max_age: config.ttl,
        max_bytes: config.max_bytes as i64,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        allow_direct: true,
        // nats-server refuses a window longer than max_age (its default is 2 min).
        duplicate_window: config.ttl.min(Duration::from_secs(120)),
        ..Default::default()
    }
}

/// Finds the history stream (made, or its limits brought to this process's), and its
/// epoch.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &HistoryConfig,
) -> Result<(stream::Stream, String), String> {
    let wanted = stream_config(config);
    let (stream, info) =
        get_or_create(js, wanted.clone(), &format!("history stream {STREAM}")).await?;
    let have = &info.config;
    if have.max_messages_per_subject != wanted.max_messages_per_subject
        || have.max_age != wanted.max_age
        || have.max_bytes != wanted.max_bytes
        || have.subjects != wanted.subjects
        || !have.allow_direct
        || have.duplicate_window > have.max_age.max(wanted.max_age)
    {
        log::warn!(
            "NATS JetStream: history stream {STREAM} had other limits (per stream {}, ttl {:?}, bytes {}); now {}, {:?}, {} (every node should have the same ANYCABLE_HISTORY_* settings)",
            have.max_messages_per_subject,
            have.max_age,
            have.max_bytes,
            wanted.max_messages_per_subject,
            wanted.max_age,
            wanted.max_bytes
        );
        let mut update = have.clone();
        update.max_messages_per_subject = wanted.max_messages_per_subject;
        update.max_age = wanted.max_age;
        update.max_bytes = wanted.max_bytes;
        update.subjects = wanted.subjects.clone();
        update.allow_direct = true;
        fit_duplicate_window(&mut update);
        js.update_stream(update)
            .await
            .map_err(|e| format!("updating history stream {STREAM}: {e}"))?;
    }
    Ok((stream, epoch_of(info.created)))
}

/// The JetStream stream `wanted` names (made from `wanted` if missing), and its info.
async fn get_or_create(
    js: &jetstream::Context,
    wanted: stream::Config,
    what: &str,
) -> Result<(stream::Stream, stream::Info), String> {
    let mut stream = js
        .get_or_create_stream(wanted)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .clone();
    Ok((stream, info))
}

/// nats-server refuses a duplicate window longer than `max_age` (a stream made with
/// the default window of 2 min keeps it when its max_age is lowered).
fn fit_duplicate_window(config: &mut stream::Config) {
    if !config.max_age.is_zero() {
        config.duplicate_window = config.duplicate_window.min(config.max_age);
    }
}

/// The epoch of a history stream made at `created`.
fn epoch_of(created: time::OffsetDateTime) -> String {
    let nanos = created.unix_timestamp_nanos() as u64;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nanos.to_be_bytes())
}

/// Stores what `queue` hands over, in order, up to [`IN_FLIGHT`] awaiting their acks.
/// One JetStream did not acknowledge (the stream's server away, a timeout) goes back to
/// the front (same id: stored once even if the first try was) and publishing pauses
/// for a moment; the queue reports what waited past its age limit as lost.
async fn publish_loop(
    js: jetstream::Context,
    config: HistoryConfig,
    queue: Arc<PublishQueue<Stored>>,
    link: Arc<AtomicBool>,
) {
    let mut ensured = Instant::now();
    type Ack = (Instant, Stored, Result<u64, String>);
    let mut acks: FuturesUnordered<futures_util::future::BoxFuture<'static, Ack>> =
        FuturesUnordered::new();
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            Some((at, item, result)) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = result {
                    crate::logging::once_a_second(&STORE_FAILED_LOG, |more| {
                        log::warn!("NATS JetStream: storing a broadcast failed ({e}); it waits and is tried again ({more} more since the last line)");
                    });
                    queue.retry(at, item);
                    paused_until = Some(tokio::time::Instant::now() + RETRY_PAUSE);
                    // The stream may be gone (deleted, its server's store lost): made
                    // again (a new epoch, which the consumer notices).
                    if ensured.elapsed() > ENSURE_EVERY {
                        ensured = Instant::now();
                        if let Err(e) = ensure_stream(&js, &config).await {
                            log::error!("NATS JetStream: {e}");
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            (at, item) = queue.next(), if acks.len() < IN_FLIGHT && paused_until.is_none() => {
                crate::pubsub::nats::wait_for(&link).await;
                if at.elapsed() > crate::pubsub::MAX_QUEUED_AGE {
                    queue.retry(at, item); // expired: next() drops and counts it
                    continue;
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", item.id.as_str());
                let sent = js
                    .publish_with_headers(item.subject.clone(), headers, item.body.clone().into())
                    .await;
                acks.push(Box::pin(async move {
                    let result = match sent {
                        Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    (at, item, result)
                }));
            }
        }
    }
}

static STORE_FAILED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

/// After failed publishes, the history stream is looked for (and made) at most this
/// often.
const ENSURE_EVERY: Duration = Duration::from_secs(5);

/// How long publishing pauses after JetStream did not acknowledge one.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Delivers every stored broadcast from `start` on, in order, for as long as the
/// process runs. The ordered consumer follows reconnects; when it fails (missed
/// heartbeats: its server went away under it) or ends, another goes on after the last
/// message delivered. A stream made anew (another creation time) gets a new epoch,
/// and its sequences count again from 1.
async fn consume(
    client: async_nats::Client,
    reader: Arc<StoredHistory>,
    start: time::OffsetDateTime,
    sink: StoredSink,
) {
    let mut stream = reader.stream.clone();
    let mut epoch = reader.epoch();
    let mut last: Option<u64> = None;
    loop {
        match stream.info().await.map(|i| epoch_of(i.created)) {
            Ok(now) if now != epoch => {
                log::error!(
                    "NATS JetStream: the history stream {STREAM} was made anew (epoch {epoch} -> {now}): positions clients hold are refused, and its sequences start again"
                );
                *reader.epoch.write() = now.clone();
                epoch = now;
                last = None;
                CONSUMED.store(0, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => log::debug!("NATS JetStream: history stream info: {e}"),
        }
        let deliver_policy = match last {
            Some(seq) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => consumer::DeliverPolicy::ByStartTime { start_time: start },
        };
        let config = consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{SUBJECT_PREFIX}>"),
            deliver_policy,
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                log::error!("NATS JetStream: cannot read the history stream ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("NATS JetStream: the history consumer failed ({e}); starting another after the last message delivered");
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            // A consumer the client library rebuilt before anything was delivered
            // starts from the stream's first message: none of that is live here.
            if last.is_some_and(|l| seq <= l) || info.published < start {
                continue;
            }
            last = Some(seq);
            match parse_body(&message.payload) {
                Some((stream, data, exclude)) => {
                    sink(&stream, &data, exclude.as_deref(), &epoch, seq)
                }
                None => log::warn!(
                    "NATS JetStream: stored message {seq} is not an AnyCable broadcast; skipped"
                ),
            }
            CONSUMED.store(seq, Ordering::Release);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_and_distinct() {
        assert_eq!(subject_for("chat_42"), "anycable_history.sY2hhdF80Mg");
        assert_eq!(subject_for(""), "anycable_history.s");
        assert_eq!(subject_for("a b.c>*"), "anycable_history.sYSBiLmM-Kg");
        // The same vectors as spec/unit/jetstream_subject_spec.rb (Ruby names them too).
        assert_eq!(subject_for("ü/é"), "anycable_history.sw7wvw6k");
        assert_eq!(subject_for(&"x".repeat(768)).len(), 1042);
        let long = "x".repeat(2000);
        let hashed = subject_for(&long);
        assert_eq!(
            hashed,
            "anycable_history.h5c0e0ea421571c300b5df6aec0a118b5c3dc02e0683a546341d5efc689df2f58"
        );
        assert_ne!(subject_for(&"x".repeat(2001)), hashed);
    }

    #[test]
    fn bodies_round_trip() {
        // The skipped socket is stored by its digest (spec/unit/jetstream_subject_spec.rb
        // has the same vector), once.
        let digest = "sha256:53453a19cbc7f60351e13709237b6025007b6bf5a6974aabaa03d5e19ea1ada3";
        let b = body("s", r#"{"a":1}"#, Some("sid1"));
        let (stream, data, exclude) = parse_body(b.as_bytes()).unwrap();
        assert_eq!((stream.as_str(), data.as_str()), ("s", r#"{"a":1}"#));
        assert_eq!(exclude.as_deref(), Some(digest));
        assert_eq!(exclude_digest(digest), digest);
        let again = body("s", "1", exclude.as_deref());
        assert_eq!(parse_body(again.as_bytes()).unwrap().2, exclude);
        assert_eq!(parse_body(b"{\"command\":\"x\"}"), None);
    }
}
