//! The NATS broadcast adapter: every server process subscribes to one subject and
//! applies what arrives (AnyCable's payload) to its own clients; a broadcast made in a
//! server process is only published, so each node — the publishing one included —
//! delivers it exactly once, when it comes back from NATS.
//!
//! async-nats reconnects with backoff by itself and re-subscribes; we log each state
//! change once and expose it for `/health`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;

use crate::pubsub::{PubSub, PublishQueue};

/// A running NATS link: publish with [`NatsPubSub::publish`]; messages received go to
/// the `deliver` callback given to [`NatsPubSub::start`].
pub struct NatsPubSub {
    queue: Arc<PublishQueue>,
    connected: Arc<AtomicBool>,
}

impl NatsPubSub {
    /// Starts connecting (in the background: a NATS server that is down at boot does
    /// not stop the WebSocket server) and subscribing. Call inside the runtime.
    pub fn start(
        servers: &str,
        subject: String,
        deliver: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let (addrs, label) = server_addrs(servers)?;
        let connected = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(PublishQueue::<String>::new("NATS"));
        let core = queue.clone();
        let link = connected.clone();
        tokio::spawn(async move {
            let Some(client) = connect(addrs, &label, link.clone()).await else {
                return;
            };
            run_core(client, subject, core, link, deliver).await;
        });
        Ok(NatsPubSub { queue, connected })
    }
}

impl PubSub for NatsPubSub {
    /// Queues a payload for publishing (never blocks).
    fn publish(&self, payload: String) {
        self.queue.push(payload);
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Parses `ANYCABLE_NATS_SERVERS` (comma-separated URLs); also returns them joined, for
/// log lines.
pub(crate) fn server_addrs(servers: &str) -> Result<(Vec<async_nats::ServerAddr>, String), String> {
    let servers: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err("no NATS servers configured".into());
    }
    let addrs = servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("bad NATS address {s}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((addrs, servers.join(",")))
}

/// Connects (retrying until the server is there), keeping `connected` up to date and
/// logging each change once. `None` (logged) when the client cannot be built.
pub(crate) async fn connect(
    addrs: Vec<async_nats::ServerAddr>,
    label: &str,
    connected: Arc<AtomicBool>,
) -> Option<async_nats::Client> {
    let options = ConnectOptions::new()
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let state = connected.clone();
            async move {
                match event {
                    Event::Connected => {
                        if !state.swap(true, Ordering::AcqRel) {
                            log::info!("NATS connected");
                        }
                    }
                    Event::Disconnected => {
                        if state.swap(false, Ordering::AcqRel) {
                            log::warn!("NATS disconnected; broadcasts wait until it is back");
                        }
                    }
                    other => log::debug!("NATS event: {other}"),
                }
            }
        });
    match options.connect(addrs).await {
        Ok(client) => Some(client),
        Err(e) => {
            log::error!("NATS ({label}): {e}");
            None
        }
    }
}

/// The core pub/sub on `subject`: publishes, in order, what `queue` hands over (while
/// NATS is down payloads wait in the queue, not in the client's own buffer), and
/// delivers what arrives.
pub(crate) async fn run_core(
    client: async_nats::Client,
    subject: String,
    queue: Arc<PublishQueue<String>>,
    link: Arc<AtomicBool>,
    deliver: impl Fn(&str) + Send + Sync + 'static,
) {
    let mut subscriber = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("NATS subscribe to {subject}: {e}");
            return;
        }
    };
    let subject_out = subject.clone();
    tokio::spawn(async move {
        loop {
            let (at, payload) = queue.next().await;
            wait_for(&link).await;
            if at.elapsed() > crate::pubsub::MAX_QUEUED_AGE {
                queue.retry(at, payload); // expired: next() drops and counts it
                continue;
            }
            if let Err(e) = client.publish(subject_out.clone(), payload.into()).await {
                log::error!("NATS publish failed: {e}");
            }
        }
    });
    while let Some(message) = subscriber.next().await {
        match std::str::from_utf8(&message.payload) {
            Ok(text) => deliver(text),
            Err(_) => log::warn!("NATS message on {subject} is not UTF-8; dropped"),
        }
    }
}

/// Returns once `link` says NATS is connected.
pub(crate) async fn wait_for(link: &AtomicBool) {
    while !link.load(Ordering::Acquire) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
