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
use tokio::sync::mpsc;

/// A running NATS link: publish with [`NatsBroker::publish`]; messages received go to
/// the `deliver` callback given to [`NatsBroker::start`].
pub struct NatsBroker {
    tx: mpsc::UnboundedSender<String>,
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
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
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
            // One task publishes, in order, what Ruby hands over.
            tokio::spawn(async move {
                while let Some(payload) = rx.recv().await {
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
        Ok(NatsBroker { tx, connected })
    }

    /// Queues a payload for publishing (never blocks).
    pub fn publish(&self, payload: String) {
        let _ = self.tx.send(payload);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}
