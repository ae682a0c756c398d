//! The WebSocket server: what the outside holds ([`Server`]) and the state every
//! connection task shares (`Inner`, private to this folder).
//!
//! The folder, by concern (one client frame's path: accept → connection → commands →
//! the controller, and back through the session's outbox):
//! - `accept.rs`: the own port's accept loop, Rack hijack hand-overs, the upgrade;
//! - `connection.rs`: one connection's task, its socket loop and writes, over a
//!   `wire.rs` (a WebSocket, an event stream);
//! - `events.rs`, `poll.rs`: the HTTP transports (Server-Sent Events, long polling);
//! - `lifecycle.rs`: how a connection opens (JWT, restore, the app's `connect`) and
//!   ends (cached for a restore, the app's disconnect callbacks);
//! - `commands.rs`: a client frame routed to the server itself or the app;
//! - `replay.rs`: history requests served from the [`Broker`];
//! - `broadcasts.rs`: broadcasts applied to this process's clients;
//! - `link.rs`: the pub/sub link to other processes, built from the config;
//! - `tasks.rs`: the timers (pings, sweeps, the NATS broker's session writer).
//!
//! Not here: the wire format ([`crate::protocol`]), HTTP parsing and the plain
//! endpoints ([`crate::http`]), who listens to what ([`crate::hub`]), what outlives a
//! socket ([`crate::broker`]).

mod accept;
mod broadcasts;
mod commands;
mod connection;
mod ds;
mod events;
mod lifecycle;
mod link;
mod poll;
mod replay;
mod tasks;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::broker::{Broker, History};
use crate::config::ServerConfig;
use crate::controller::Controller;
use crate::http::{endpoints, RequestHead};
use crate::hub::{Delivery, Hub};
use crate::metrics::{self, MetricsSource, COUNTERS};
use crate::protocol::broadcast::{self, BroadcastError};
use crate::session::{DisconnectReason, SessionRef};

pub struct Server<C: Controller> {
    inner: Arc<Inner<C>>,
}

impl<C: Controller> Clone for Server<C> {
    fn clone(&self) -> Self {
        Server {
            inner: self.inner.clone(),
        }
    }
}

/// What a socket handed over by Rack hijack asked for.
pub enum Handoff {
    WebSocket,
    /// Server-Sent Events, with the body of a POST (empty for a GET).
    Events(Vec<u8>),
    /// A long-polling request, with its body.
    Poll(Vec<u8>),
    /// A Durable Streams read.
    Ds,
}

/// What every connection task of one server shares.
struct Inner<C> {
    config: ServerConfig,
    controller: C,
    hub: Arc<Hub>,
    /// Stream history and sessions kept for a restore (`ANYCABLE_BROKER`).
    broker: Broker,
    /// The pub/sub to other processes, once started (`ANYCABLE_BROADCAST_ADAPTER`).
    link: OnceLock<link::Link>,
    metrics_source: RwLock<Option<MetricsSource>>,
    /// Welcomed sessions, for pings, remote disconnects and shutdown.
    sessions: RwLock<HashMap<u64, SessionRef>>,
    /// Long-polling sessions' requests, by the id their client polls with.
    polls: poll::PollSessions,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Connections whose app callbacks (connect, then disconnect) have not all run:
    /// shutdown waits for this to reach zero, not for `sessions` to empty (a session
    /// leaves that map before its disconnect callback runs).
    pending_callbacks: AtomicUsize,
    callbacks_done: Notify,
    /// Own-port sockets still sending their request head (they count for MAX_CONN).
    handshakes: AtomicUsize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<C: Controller> Server<C> {
    pub fn new(config: ServerConfig, controller: C, hub: Arc<Hub>) -> Self {
        let broker = Broker::new(
            config.broker,
            config.history.as_ref(),
            config.sessions_ttl,
            config.sessions_max_bytes,
        );
        if broker.is_on() {
            // The broker keeps presence too (AnyCable's memory broker; per process here).
            hub.enable_presence(config.presence_ttl);
        }
        Server {
            inner: Arc::new(Inner {
                broker,
                link: OnceLock::new(),
                metrics_source: RwLock::new(None),
                config,
                controller,
                hub,
                sessions: RwLock::new(HashMap::new()),
                polls: Default::default(),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                pending_callbacks: AtomicUsize::new(0),
                callbacks_done: Notify::new(),
                handshakes: AtomicUsize::new(0),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// Number of connected (welcomed) sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.read().len()
    }

    /// Starts the timers and the pub/sub link the config names. Call once, inside the
    /// runtime. Fails when the link's settings are unusable (a bad URL).
    pub fn start(&self) -> Result<(), String> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err("the server was shut down".into());
        }
        self.inner.start_link()?;
        self.inner.start_tasks();
        Ok(())
    }

    /// Binds `addr` and accepts connections on it until shutdown. Returns the bound
    /// address (useful with port 0). Other processes may bind the same port.
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.inner.listen(addr)
    }

    /// Takes over a socket whose request was already read (Rack hijack): upgrades it,
    /// streams its events, or takes its poll. Call inside the runtime.
    pub fn handoff(
        &self,
        stream: std::net::TcpStream,
        head: RequestHead,
        transport: Handoff,
        env_token: u64,
    ) {
        self.inner.handoff(stream, head, transport, env_token);
    }

    /// Applies an AnyCable broadcast payload (single, batch, or disconnect command) to
    /// this process's clients. Returns how many messages it held.
    pub fn apply_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        self.inner.apply_broadcast(payload)
    }

    /// Delivers `data` to this process's subscribers of `stream`, unless it is too
    /// large for any of them to receive.
    pub fn broadcast(
        &self,
        stream: &str,
        data: &str,
        exclude_sid: Option<&str>,
    ) -> Result<Delivery, BroadcastError> {
        self.inner.check_size(data)?;
        COUNTERS.broadcast_msg.inc();
        Ok(self.inner.deliver(stream, data, exclude_sid, false))
    }

    /// The memory broker's history, when `ANYCABLE_BROKER=memory`.
    pub fn history(&self) -> Option<&History> {
        self.inner.broker.memory_history()
    }

    /// Checks broadcast data for publishing: deliverable to a client.
    pub fn check_data(&self, data: &str) -> Result<(), BroadcastError> {
        self.inner.check_size(data)
    }

    /// Checks a payload for publishing: parsed, and every message deliverable.
    /// Returns how many messages it holds.
    pub fn check_broadcast(&self, payload: &str) -> Result<usize, BroadcastError> {
        self.inner.check_broadcast(payload)
    }

    /// Publishes a checked AnyCable payload through the pub/sub link: every node, this
    /// one included, delivers it when it comes back. Sids it excludes go out as their
    /// digests. With a future that resolves once what the broker keeps of it is stored
    /// (`false`: dropped, never will be); `Ok(None)` when there is nothing to wait for,
    /// `Err` when there is no link.
    #[allow(clippy::result_unit_err)]
    pub fn publish_stored(
        &self,
        payload: String,
    ) -> Result<Option<futures_util::future::BoxFuture<'static, bool>>, ()> {
        let link = self.inner.link.get().ok_or(())?;
        Ok(link
            .pubsub
            .publish_stored(broadcast::digest_excludes(payload)))
    }

    /// AnyCable's `POST /_broadcast` as Puma's port takes it (the own port serves it
    /// itself), first step: `None` when the request may go on to
    /// [`Server::take_broadcast_request`], else the (status, text) refusing it.
    pub fn admit_broadcast(
        &self,
        method: &str,
        authorization: Option<&str>,
        peer: &str,
    ) -> Option<(u16, String)> {
        endpoints::admit(&*self.inner, method, authorization, peer)
            .err()
            .map(|(status, text)| (status, text.to_owned()))
    }

    /// An admitted `POST /_broadcast`'s body: checked, then published (or applied
    /// here without a pub/sub). (status, text).
    pub fn take_broadcast_request(&self, body: &[u8], peer: &str) -> (u16, String) {
        endpoints::take(&*self.inner, body, peer)
    }

    /// More metrics to render with the server's (the Ruby side's).
    pub fn set_metrics_source(&self, source: MetricsSource) {
        *self.inner.metrics_source.write() = Some(source);
    }

    /// Every metric in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }

    /// Stops taking publishes from other processes, tells every client
    /// `server_restart` and waits (up to `wait`) until every connection's disconnect
    /// callback has run; stops accepting. Returns how many connections' callbacks had
    /// not finished by then (and logs it).
    ///
    /// With a broker that keeps sessions beyond this process (NATS), an
    /// extended-protocol session is closed restorable instead: kept, and closed 1001
    /// without the `server_restart` message (on which AnyCable's JS client forgets its
    /// sid), so its client restores on whichever node it reaches next, without the
    /// app's `connect` and `subscribed`.
    pub async fn shutdown(&self, wait: Duration) -> usize {
        let inner = &self.inner;
        if let Some(link) = inner.link.get() {
            link.pubsub.close();
        }
        inner.shutting_down.store(true, Ordering::Release);
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        let began = tokio::time::Instant::now();
        let sessions: Vec<SessionRef> = inner.sessions.read().values().cloned().collect();
        // In a presence set: told, so that its client subscribes (and joins) again (a
        // restore does not bring presence back).
        let in_presence = inner
            .hub
            .presence()
            .map(|p| p.sessions())
            .unwrap_or_default();
        let (restorable, told): (Vec<SessionRef>, Vec<SessionRef>) =
            sessions.into_iter().partition(|s| {
                inner.broker.open_sessions_store().is_some()
                    && s.is_resumable()
                    && !in_presence.contains(&s.id)
            });
        for session in told {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        if let Some(store) = inner.broker.open_sessions_store() {
            // Each one's last word stored first, then its socket closed: a client that
            // restores on another node at once finds it, and no write of ours lands
            // after that restore took it.
            let keep = futures_util::stream::iter(restorable.iter().map(|session| async move {
                if let Some(entry) = session.to_cache(session.app_connected()) {
                    store.put(&session.sid, &entry).await;
                }
                session.close_restorable(true);
            }))
            .buffer_unordered(STORE_AT_SHUTDOWN)
            .collect::<()>();
            if timeout(wait, keep).await.is_err() {
                log::warn!("shutdown: sessions not stored within {wait:?}; closed, their last word follows");
            }
            for session in &restorable {
                session.close_restorable(false); // the first close wins
            }
        }
        let all_done = async {
            loop {
                let done = inner.callbacks_done.notified();
                if inner.pending_callbacks.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = timeout(wait.saturating_sub(began.elapsed()), all_done).await;
        let left = inner.pending_callbacks.load(Ordering::Acquire);
        if left > 0 {
            // Those already queued still run while the Ruby threads drain the queue;
            // the Ruby side counts, once its threads are done, how many never did.
            log::warn!(
                "shutdown: {left} connections' disconnect callbacks had not finished within \
                 {wait:?} (ANYCABLE_SHUTDOWN_TIMEOUT); the queued ones run now"
            );
        }
        // What was broadcast here (the callbacks' too) leaves before the process does.
        if let Some(link) = inner.link.get() {
            let budget = wait.saturating_sub(began.elapsed()).max(MIN_FLUSH_WAIT);
            let unsent = flush(&*link.pubsub, budget).await;
            if unsent > 0 {
                log::error!(
                    "shutdown: {unsent} broadcasts made in this process were not yet taken by {} \
                     after {:.1} s: lost (is it reachable?)",
                    link.label,
                    budget.as_secs_f64()
                );
            }
        }
        left
    }
}

/// Sessions stored at once at shutdown (each one JetStream request).
const STORE_AT_SHUTDOWN: usize = 64;

/// At shutdown, how long the broadcasts still on their way out get at least, even
/// when the callbacks took all of `ANYCABLE_SHUTDOWN_TIMEOUT`.
const MIN_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Waits (up to `budget`) until `pubsub` holds nothing this process published, seen
/// twice in a row (an item passes from its queue to its publisher in between);
/// returns what it still holds.
async fn flush(pubsub: &dyn crate::pubsub::PubSub, budget: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + budget;
    let mut empty_before = false;
    loop {
        let unsent = pubsub.unsent();
        if unsent == 0 && empty_before {
            return 0;
        }
        empty_before = unsent == 0;
        if tokio::time::Instant::now() >= deadline {
            return unsent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl<C: Controller> Inner<C> {
    fn metrics_text(&self) -> String {
        // The sessions lock only while their handles are copied: connects and closes
        // need it, and a scrape walks every session.
        let sessions: Vec<SessionRef> = self.sessions.read().values().cloned().collect();
        let uniq: std::collections::HashSet<String> = sessions
            .iter()
            .map(|s| s.identifiers().map(|i| i.to_string()).unwrap_or_default())
            .collect();
        let snapshot = metrics::Snapshot {
            clients: sessions.len() as i64,
            clients_uniq: uniq.len() as i64,
            streams: self.hub.stream_count() as i64,
        };
        drop(sessions);
        let extra = self
            .metrics_source
            .read()
            .as_ref()
            .map(|source| source())
            .unwrap_or_default();
        metrics::render(snapshot, &self.config.metrics_tags, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A pub/sub whose publisher takes one queued broadcast per poll.
    struct Draining(AtomicUsize);

    impl crate::pubsub::PubSub for Draining {
        fn publish(&self, _payload: String) {}
        fn is_connected(&self) -> bool {
            true
        }
        fn unsent(&self) -> usize {
            let left = self.0.load(Ordering::Acquire);
            self.0.store(left.saturating_sub(1), Ordering::Release);
            left
        }
    }

    #[tokio::test]
    async fn a_shutdown_waits_for_what_is_on_its_way_out_and_counts_what_is_not() {
        assert_eq!(
            flush(&Draining(AtomicUsize::new(5)), Duration::from_secs(5)).await,
            0
        );
        let stuck = Draining(AtomicUsize::new(usize::MAX));
        let left = flush(&stuck, Duration::from_millis(100)).await;
        assert!(left > 0 && left < usize::MAX, "{left}");
    }
}
