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
        let servers = NatsServers::parse(servers)?;
        let connected = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(PublishQueue::<String>::new("NATS"));
        let core = queue.clone();
        let link = connected.clone();
        tokio::spawn(async move {
            let Some(client) = connect(servers, link.clone()).await else {
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

/// `ANYCABLE_NATS_SERVERS`, parsed: the addresses, how log lines name them (without
/// credentials), and the credentials the URLs carry (`nats://user:password@host`, or
/// `nats://token@host`, percent-encoded as in any URL), used for every server.
pub(crate) struct NatsServers {
    pub(crate) addrs: Vec<async_nats::ServerAddr>,
    pub(crate) label: String,
    auth: Option<(String, Option<String>)>,
}

impl NatsServers {
    /// Comma-separated URLs.
    pub(crate) fn parse(servers: &str) -> Result<Self, String> {
        let servers: Vec<&str> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err("no NATS servers configured".into());
        }
        let mut addrs = Vec::new();
        let mut labels = Vec::new();
        let mut auth = None;
        for s in servers {
            let label = redact(s);
            let addr = s
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("bad NATS address {label}: {}", redact(&e.to_string())))?;
            if auth.is_none() && addr.has_user_pass() {
                let user = percent_decode(addr.username().unwrap_or_default());
                let pass = addr.password().map(percent_decode);
                auth = Some((user, pass));
            }
            addrs.push(addr);
            labels.push(label);
        }
        Ok(NatsServers {
            addrs,
            label: labels.join(","),
            auth,
        })
    }
}

/// A URL with its credentials, if any, replaced by `***` (for log lines).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

/// A URL's user info, `%XX` escapes decoded.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Connects (retrying until the server is there), keeping `connected` up to date and
/// logging each change once. `None` (logged) when the client cannot be built.
pub(crate) async fn connect(
    servers: NatsServers,
    connected: Arc<AtomicBool>,
) -> Option<async_nats::Client> {
    let NatsServers { addrs, label, auth } = servers;
    let options = match auth {
        Some((user, Some(pass))) => ConnectOptions::with_user_and_password(user, pass),
        Some((token, None)) => ConnectOptions::with_token(token),
        None => ConnectOptions::new(),
    };
    let options = options
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_urls_and_stay_out_of_the_label() {
        let s =
            NatsServers::parse("nats://any%40cable:p%40ss%20w0rd@127.0.0.1:4222, nats://h2:4222")
                .unwrap();
        assert_eq!(s.addrs.len(), 2);
        assert_eq!(s.label, "nats://***@127.0.0.1:4222,nats://h2:4222");
        assert_eq!(
            s.auth,
            Some(("any@cable".to_string(), Some("p@ss w0rd".to_string())))
        );
        let token = NatsServers::parse("nats://s3cr3t-token@127.0.0.1:4222").unwrap();
        assert_eq!(token.auth, Some(("s3cr3t-token".to_string(), None)));
        assert_eq!(NatsServers::parse("nats://127.0.0.1").unwrap().auth, None);
        let bad = NatsServers::parse("nats://u:pw@[::1")
            .err()
            .unwrap_or_default();
        assert!(!bad.contains("pw"), "{bad}");
        assert!(NatsServers::parse(" , ").is_err());
    }
}
