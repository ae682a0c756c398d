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

use crate::broker::PublishQueue;

/// A running NATS link: publish with [`NatsBroker::publish`]; messages received go to
/// the `deliver` callback given to [`NatsBroker::start`].
pub struct NatsBroker {
    queue: Arc<PublishQueue>,
    connected: Arc<AtomicBool>,
}

impl NatsBroker {
    /// Starts connecting (in the background: a NATS server that is down at boot does
    /// not stop the WebSocket server) and subscribing. Call inside the runtime.
    pub fn start(
        servers: &str,
        subject: String,
        deliver: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let connected = Arc::new(AtomicBool::new(false));
        let state = connected.clone();
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
        let queue = Arc::new(PublishQueue::new("NATS"));
        let rx = queue.clone();
        let link = connected.clone();
        let label = servers.join(",");
        tokio::spawn(async move {
            let options = ConnectOptions::new()
                .retry_on_initial_connect()
                .event_callback(move |event| {
                    let state = state.clone();
                    async move {
                        match event {
                            Event::Connected => {
                                if !state.swap(true, Ordering::AcqRel) {
                                    log::info!("NATS connected");
                                }
                            }
                            Event::Disconnected => {
                                if state.swap(false, Ordering::AcqRel) {
                                    log::warn!(
                                        "NATS disconnected; broadcasts wait until it is back"
                                    );
                                }
                            }
                            other => log::debug!("NATS event: {other}"),
                        }
                    }
                });
            let client = match options.connect(addrs).await {
                Ok(c) => c,
                Err(e) => {
                    log::error!("NATS ({label}): {e}");
                    return;
                }
            };
            let mut subscriber = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    log::error!("NATS subscribe to {subject}: {e}");
                    return;
                }
            };
            let publisher = client.clone();
            let subject_out = subject.clone();
            // One task publishes, in order, what Ruby hands over. While NATS is down
            // payloads wait in our bounded queue, not in the client's own buffer.
            tokio::spawn(async move {
                loop {
                    let (at, payload) = rx.next().await;
                    while !link.load(Ordering::Acquire) {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    if at.elapsed() > crate::broker::MAX_QUEUED_AGE {
                        rx.retry(at, payload); // expired: next() drops and counts it
                        continue;
                    }
                    if let Err(e) = publisher.publish(subject_out.clone(), payload.into()).await {
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
        });
        Ok(NatsBroker { queue, connected })
    }

    /// Queues a payload for publishing (never blocks).
    pub fn publish(&self, payload: String) {
        self.queue.push(payload);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}
