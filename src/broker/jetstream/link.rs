//! The NATS broker's link: broadcasts stored in JetStream (then delivered from there,
//! in offset order, by one ordered consumer per process), everything else over the core
//! NATS subject as with the NATS pub/sub.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::history::ensure_stream;
use super::lanes::Lanes;
use super::sessions::{ensure_sessions, SessionsSettings};
use super::{
    body, fit_replicas, subject_for, Replicas, StoredHistory, StoredSessions, GROW_EVERY,
    SESSIONS_BUCKET, STREAM,
};
use crate::broker::history::HistoryConfig;
use crate::protocol::broadcast::{self, BroadcastMessage};
use crate::pubsub::nats::NatsClient;
use crate::pubsub::{PubSub, PublishQueue, Queued};

/// How long a JetStream request (an ack, a read, a change) waits for its answer
/// before it is tried again. A cluster that lost a machine answers again once it has
/// elected new leaders; shorter than async-nats' 5 s, so a retry reaches them sooner.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;

/// One broadcast waiting to be stored.
pub struct Stored {
    subject: String,
    body: String,
    /// `Nats-Msg-Id`: a retried publish is stored once.
    id: String,
    /// Told when it is stored; dropped (the receiver sees an error) if it never is.
    stored: Option<tokio::sync::oneshot::Sender<()>>,
}

/// JetStream's leader notes a publish's id at sequence 0 when it proposes it to its
/// replicas, and its sequence once they have stored it; a retry meanwhile is
/// acknowledged as a duplicate at sequence 0 — not stored yet, and maybe never (a
/// leader cut off from its replicas). Taking that for stored lost a broadcast in
/// spec/cluster's partition example (nats-server 2.10); giving the retry another id
/// stored it twice (the proposal was stored seconds later). So it is a failure,
/// tried again with the same id until JetStream names its sequence (or the queue's
/// age limit reports it lost).
const NOT_STORED_YET: &str = "acknowledged as a duplicate at sequence 0: not stored yet";

impl Queued for Stored {
    fn size(&self) -> usize {
        self.subject.len() + self.body.len()
    }
}

/// Where the NATS broker delivers what it reads: (stream, data, exclude_socket,
/// epoch, offset).
pub type StoredSink = Arc<dyn Fn(&str, &str, Option<&str>, &str, u64) + Send + Sync>;

/// The NATS broker's link: stores broadcasts in JetStream and delivers what is
/// stored; transient messages and commands go over the core subject.
pub struct JetStreamLink {
    stored: Arc<PublishQueue<Stored>>,
    core: Arc<PublishQueue<String>>,
    connected: Arc<AtomicBool>,
    history: Arc<OnceLock<Arc<StoredHistory>>>,
    /// Stored broadcasts the publish loop holds: in its lanes or awaiting their ack.
    held: Arc<AtomicUsize>,
}

/// Presence shared between the nodes over core NATS, on `<subject>.presence`: what
/// this node announces waits in `queue`; what the others announce goes to `deliver`.
pub struct PresenceLink {
    pub queue: Arc<PublishQueue<String>>,
    pub deliver: Box<dyn Fn(&str) + Send + Sync>,
}

/// What the NATS broker keeps in JetStream, and how.
pub struct StoreSettings {
    pub history: HistoryConfig,
    /// `None`: no sessions kept for a restore.
    pub sessions: Option<SessionsSettings>,
    pub replicas: Replicas,
    /// Presence shared with the other nodes (when presence is on).
    pub presence: Option<PresenceLink>,
}

impl JetStreamLink {
    /// Connects in the background (a NATS server that is down at boot does not stop
    /// the WebSocket server), makes or updates the JetStream stream, and starts
    /// delivering. `core_deliver` gets what arrives on the core subject; `stored`
    /// every stored broadcast; `history_ready` the history reader once it works, and
    /// `sessions_ready` the sessions bucket once that does (tried until it does: a
    /// cluster electing leaders may not answer at first). Call inside the runtime.
    pub(crate) fn start(
        servers: crate::pubsub::nats::NatsServers,
        subject: String,
        settings: StoreSettings,
        core_deliver: impl Fn(&str) + Send + Sync + 'static,
        stored: StoredSink,
        history_ready: impl FnOnce(Arc<StoredHistory>) + Send + 'static,
        sessions_ready: impl FnOnce(Arc<StoredSessions>) + Send + 'static,
    ) -> Result<Self, String> {
        let StoreSettings {
            history: config,
            sessions,
            replicas,
            presence,
        } = settings;
        let connected = Arc::new(AtomicBool::new(false));
        let stored_queue = Arc::new(PublishQueue::<Stored>::new("NATS JetStream"));
        let core = Arc::new(PublishQueue::<String>::new("NATS"));
        let history = Arc::new(OnceLock::new());
        let held = Arc::new(AtomicUsize::new(0));
        let broker = JetStreamLink {
            stored: stored_queue.clone(),
            core: core.clone(),
            connected: connected.clone(),
            history: history.clone(),
            held: held.clone(),
        };
        // Stored broadcasts from now on reach this process's subscribers, however long
        // the setup takes (a second back for clocks that differ a little).
        let booted = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
        tokio::spawn(async move {
            let Some(nats) = crate::pubsub::nats::connect(servers, connected.clone()).await else {
                return;
            };
            let client = nats.client.clone();
            // Nothing JetStream (streams made, sessions kept) with a server that is not
            // the one the credentials are for.
            nats.wait_trusted().await;
            if let Some(presence) = presence {
                tokio::spawn(crate::pubsub::nats::run_core(
                    nats.clone(),
                    format!("{subject}.presence"),
                    presence.queue,
                    connected.clone(),
                    presence.deliver,
                ));
            }
            tokio::spawn(crate::pubsub::nats::run_core(
                nats.clone(),
                subject,
                core,
                connected.clone(),
                core_deliver,
            ));
            let mut js = jetstream::new(client.clone());
            js.set_timeout(REQUEST_TIMEOUT);
            // A server in no cluster keeps one copy, whatever a stream asks (nats-server
            // 2.9 takes a stream's growth to three there, and then stores nothing).
            let clustered = client
                .server_info()
                .cluster
                .is_some_and(|name| !name.is_empty());
            let replicas = match replicas {
                Replicas::Auto if !clustered => Replicas::Exactly(1),
                other => other,
            };
            let (stream, epoch, kept_on) = loop {
                match ensure_stream(&js, &config, replicas).await {
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
                "NATS broker: JetStream stream {STREAM}, epoch {epoch}, history limit {}, ttl {:?}, replicas {kept_on}",
                config.limit,
                config.ttl
            );
            let reader = Arc::new(StoredHistory {
                stream: stream.clone(),
                epoch: parking_lot::RwLock::new(epoch),
                replicated: AtomicBool::new(kept_on > 1),
                recent: super::recent::Recent::new(&config),
                link_up: connected.clone(),
            });
            let _ = history.set(reader.clone());
            history_ready(reader.clone());
            let kept_sessions = sessions.is_some();
            if let Some(settings) = sessions {
                let js = js.clone();
                tokio::spawn(async move {
                    let mut failed = false;
                    let sessions = loop {
                        match ensure_sessions(&js, &settings, replicas).await {
                            Ok(sessions) => break sessions,
                            Err(e) if !failed => {
                                failed = true;
                                log::error!("NATS JetStream: {e}; retrying (until then, sessions are not kept for a restore)");
                            }
                            Err(e) => log::debug!("NATS JetStream: {e}; retrying"),
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    };
                    sessions_ready(Arc::new(sessions));
                });
            }
            if replicas == Replicas::Auto {
                tokio::spawn(grow_replicas(js.clone(), reader.clone(), kept_sessions));
            }
            tokio::spawn(publish_loop(
                js,
                config,
                replicas,
                PublishState {
                    queue: stored_queue,
                    held,
                },
                connected,
                nats.clone(),
            ));
            super::consumer::consume(client, nats, reader, booted, stored).await;
        });
        Ok(broker)
    }
}

impl JetStreamLink {
    /// Queues an AnyCable payload: its non-transient stream messages are stored (and
    /// delivered from the store), everything else goes over the core subject. With
    /// `told`, a receiver per stored message, told once it is stored.
    fn enqueue(&self, payload: String, told: bool) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut receivers = Vec::new();
        let Ok(messages) = broadcast::parse(&payload) else {
            // Checked before it got here; a bad one would be refused by every node.
            self.core.push(payload);
            return receivers;
        };
        let mut rest = Vec::new();
        for message in messages {
            match message {
                BroadcastMessage::Stream {
                    stream,
                    data,
                    exclude_socket,
                    transient: false,
                    whisper: false,
                } => {
                    let stored = told.then(|| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        receivers.push(rx);
                        tx
                    });
                    self.stored.push(Stored {
                        subject: subject_for(&stream),
                        body: body(&stream, &data, exclude_socket.as_deref()),
                        id: message_id(),
                        stored,
                    })
                }
                other => rest.push(other),
            }
        }
        if !rest.is_empty() {
            self.core.push(broadcast::to_payload(&rest));
        }
        receivers
    }
}

impl PubSub for JetStreamLink {
    fn publish(&self, payload: String) {
        self.enqueue(payload, false);
    }

    /// Resolves once every message of it that is kept is stored: a process that
    /// waits for it before it goes on never has a later broadcast, its own or another
    /// machine's, stored before this one (as Action Cable's Redis adapter returns once
    /// Redis has it).
    /// Not while NATS is out of reach: the broadcast waits in the queue, and the app
    /// does not wait for it.
    fn publish_stored(&self, payload: String) -> Option<BoxFuture<'static, bool>> {
        let receivers = self.enqueue(payload, self.is_connected());
        if receivers.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for rx in receivers {
                if rx.await.is_err() {
                    return false;
                }
            }
            true
        }))
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.history.get().is_some()
    }

    fn unsent(&self) -> usize {
        self.stored.len() + self.held.load(Ordering::Acquire) + self.core.len()
    }
}

/// A random `Nats-Msg-Id`.
fn message_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored broadcasts' way out: the queue they wait in, and how many the publish
/// loop took from it and has not seen stored yet ([`PubSub::unsent`]).
struct PublishState {
    queue: Arc<PublishQueue<Stored>>,
    held: Arc<AtomicUsize>,
}

/// Stores what `queue` hands over, up to [`IN_FLIGHT`] awaiting their acks: one at a
/// time per Action Cable stream, streams in parallel ([`Lanes`]). One JetStream did
/// not acknowledge (the stream's leader away, a timeout) goes first in its lane again
/// (same id: stored once even if the first try was), so no later broadcast of its
/// stream is stored before it, and publishing pauses for a moment; the stream is
/// checked (made again if it is gone) beside, never in the way of the next tries.
/// What waited past the queue's age limit is reported as lost.
async fn publish_loop(
    js: jetstream::Context,
    config: HistoryConfig,
    replicas: Replicas,
    state: PublishState,
    link: Arc<AtomicBool>,
    nats: NatsClient,
) {
    let PublishState { queue, held } = state;
    let mut ensured = Instant::now();
    let ensuring = Arc::new(AtomicBool::new(false));
    let mut acks: FuturesUnordered<BoxFuture<'static, Ack>> = FuturesUnordered::new();
    let mut lanes: Lanes<(Instant, Stored)> = Lanes::default();
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            Some((at, item, result)) = acks.next(), if !acks.is_empty() => {
                let subject = item.subject.clone();
                let next = match result {
                    Ok(_) => {
                        held.fetch_sub(1, Ordering::AcqRel);
                        if let Some(told) = item.stored {
                            let _ = told.send(());
                        }
                        lanes.acked(&subject, paused_until.is_some())
                    }
                    Err(e) => {
                        crate::logging::once_a_second(&STORE_FAILED_LOG, |more| {
                            log::warn!("NATS JetStream: storing a broadcast failed ({e}); it waits and is tried again, before the later ones of its stream ({more} more since the last line)");
                        });
                        lanes.failed(&subject, (at, item));
                        paused_until = Some(tokio::time::Instant::now() + RETRY_PAUSE);
                        // The stream may be gone (deleted, its server's store lost): made
                        // again (a new epoch, which the consumer notices).
                        if ensured.elapsed() > ENSURE_EVERY && !ensuring.swap(true, Ordering::AcqRel) {
                            ensured = Instant::now();
                            let (js, config, ensuring) = (js.clone(), config.clone(), ensuring.clone());
                            tokio::spawn(async move {
                                if let Err(e) = ensure_stream(&js, &config, replicas).await {
                                    log::error!("NATS JetStream: {e}");
                                }
                                ensuring.store(false, Ordering::Release);
                            });
                        }
                        None
                    }
                };
                if let Some(next) = next {
                    send_in_lane(&js, &queue, &held, &mut lanes, &mut acks, next).await;
                }
            }
            _ = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => {
                paused_until = None;
                crate::pubsub::nats::wait_for(&link).await;
                nats.wait_trusted().await;
                for next in lanes.resume(IN_FLIGHT.saturating_sub(acks.len())) {
                    send_in_lane(&js, &queue, &held, &mut lanes, &mut acks, next).await;
                }
            }
            (at, item) = queue.next(), if acks.len() < IN_FLIGHT && lanes.waiting() < MAX_WAITING && paused_until.is_none() => {
                held.fetch_add(1, Ordering::AcqRel);
                crate::pubsub::nats::wait_for(&link).await;
                nats.wait_trusted().await;
                let subject = item.subject.clone();
                if let Some(now) = lanes.admit(&subject, (at, item), false) {
                    send_in_lane(&js, &queue, &held, &mut lanes, &mut acks, now).await;
                }
            }
        }
    }
}

/// A publish awaiting its ack: (queued at, what, its sequence or why not).
type Ack = (Instant, Stored, Result<u64, String>);

/// Broadcasts held in the lanes behind the ones in flight, at most; past it the
/// queue keeps them (and its limits apply).
const MAX_WAITING: usize = IN_FLIGHT * 16;

/// Publishes `item`, first of its lane; one that waited past the queue's age limit is
/// dropped (counted by the queue) and the lane's next goes instead.
async fn send_in_lane(
    js: &jetstream::Context,
    queue: &PublishQueue<Stored>,
    held: &AtomicUsize,
    lanes: &mut Lanes<(Instant, Stored)>,
    acks: &mut FuturesUnordered<BoxFuture<'static, Ack>>,
    item: (Instant, Stored),
) {
    let mut next = Some(item);
    while let Some((at, item)) = next.take() {
        if at.elapsed() > crate::pubsub::MAX_QUEUED_AGE {
            let subject = item.subject.clone();
            queue.retry(at, item); // expired: the queue's next() drops and counts it
            held.fetch_sub(1, Ordering::AcqRel);
            next = lanes.acked(&subject, false);
            continue;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", item.id.as_str());
        let sent = js
            .publish_with_headers(item.subject.clone(), headers, item.body.clone().into())
            .await;
        acks.push(Box::pin(async move {
            let result = match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) if ack.sequence == 0 => Err(NOT_STORED_YET.to_string()),
                    Ok(ack) => Ok(ack.sequence),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (at, item, result)
        }));
    }
}

static STORE_FAILED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

/// `Replicas::Auto`: the history stream (and the sessions bucket, when kept) grow to
/// [`Replicas::AUTO_MAX`] replicas once the cluster has the servers — machines of a
/// cluster start one by one, and JetStream places a stream on the servers it has when
/// the stream is made.
async fn grow_replicas(js: jetstream::Context, history: Arc<StoredHistory>, sessions: bool) {
    let mut streams = vec![(STREAM.to_string(), format!("history stream {STREAM}"))];
    if sessions {
        streams.push((
            format!("KV_{SESSIONS_BUCKET}"),
            format!("sessions bucket {SESSIONS_BUCKET}"),
        ));
    }
    loop {
        tokio::time::sleep(GROW_EVERY).await;
        for (name, what) in &streams {
            match fit_replicas(&js, name, what, Replicas::Auto).await {
                Ok(kept_on) if name == STREAM => {
                    history.replicated.store(kept_on > 1, Ordering::Release);
                }
                Ok(_) => {}
                Err(e) => log::debug!("NATS JetStream: {e}"),
            }
        }
    }
}

/// After failed publishes, the history stream is looked for (and made) at most this
/// often.
const ENSURE_EVERY: Duration = Duration::from_secs(5);

/// How long publishing pauses after JetStream did not acknowledge one.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
