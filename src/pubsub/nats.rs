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
    /// Set once connected: whether the server reached may be used.
    client: Arc<std::sync::OnceLock<NatsClient>>,
}

impl NatsPubSub {
    /// Starts connecting (in the background: a NATS server that is down at boot does
    /// not stop the WebSocket server) and subscribing. Call inside the runtime.
    pub fn start(
        servers: &str,
        login: &NatsLogin,
        subject: String,
        deliver: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let servers = NatsServers::parse_with(servers, login)?;
        let connected = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(PublishQueue::<String>::new("NATS"));
        let core = queue.clone();
        let link = connected.clone();
        let client = Arc::new(std::sync::OnceLock::new());
        let cell = client.clone();
        tokio::spawn(async move {
            let Some(nats) = connect(servers, link.clone()).await else {
                return;
            };
            let _ = cell.set(nats.clone());
            run_core(nats, subject, core, link, deliver).await;
        });
        Ok(NatsPubSub {
            queue,
            connected,
            client,
        })
    }
}

impl PubSub for NatsPubSub {
    /// Queues a payload for publishing (never blocks).
    fn publish(&self, payload: String) {
        self.queue.push(payload);
    }

    fn unsent(&self) -> usize {
        self.queue.len()
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.client.get().is_some_and(|c| c.trusted())
    }
}

/// How the server processes log in to NATS besides credentials in the URLs (at most
/// one of these; either wins over URL credentials).
#[derive(Clone, Default)]
pub struct NatsLogin {
    /// `ANYCABLE_NATS_NKEY_SEED`: an nkey user seed (`SU…`).
    pub nkey_seed: Option<String>,
    /// `ANYCABLE_NATS_CREDENTIALS`: the path of a `.creds` file (a user JWT and its
    /// seed, as `nsc` writes them) for servers in operator (decentralized JWT) mode.
    pub credentials_file: Option<String>,
}

/// `ANYCABLE_NATS_SERVERS`, parsed: the addresses, how log lines name them (without
/// credentials), and the credentials the URLs carry (`nats://user:password@host`, or
/// `nats://token@host`, percent-encoded as in any URL), used for every server.
pub(crate) struct NatsServers {
    pub(crate) addrs: Vec<async_nats::ServerAddr>,
    pub(crate) label: String,
    auth: Option<(String, Option<String>)>,
    /// `ANYCABLE_NATS_NKEY_SEED`: log in with this nkey user (it wins over URL
    /// credentials).
    nkey_seed: Option<String>,
    /// The contents of `ANYCABLE_NATS_CREDENTIALS` (read once, at start, so a missing
    /// or malformed file is a boot error).
    credentials: Option<String>,
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
            nkey_seed: None,
            credentials: None,
        })
    }

    /// [`NatsServers::parse`], logging in as `login` says when it says anything.
    pub(crate) fn parse_with(servers: &str, login: &NatsLogin) -> Result<Self, String> {
        let mut parsed = Self::parse(servers)?;
        let seed = login.nkey_seed.as_deref().filter(|s| !s.is_empty());
        let file = login.credentials_file.as_deref().filter(|s| !s.is_empty());
        if seed.is_some() && file.is_some() {
            return Err(
                "both ANYCABLE_NATS_NKEY_SEED and ANYCABLE_NATS_CREDENTIALS are set: give one"
                    .into(),
            );
        }
        if let Some(seed) = seed {
            nkeys::KeyPair::from_seed(seed)
                .map_err(|_| "ANYCABLE_NATS_NKEY_SEED is not an nkey seed (SU…)".to_string())?;
            parsed.nkey_seed = Some(seed.to_owned());
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("ANYCABLE_NATS_CREDENTIALS ({path}): {e}"))?;
            // Parsed here too, so a file without a JWT and a seed fails the boot;
            // the error names neither (async-nats' messages do not quote the file).
            ConnectOptions::with_credentials(&text)
                .map_err(|e| format!("ANYCABLE_NATS_CREDENTIALS ({path}): {e}"))?;
            parsed.credentials = Some(text);
        }
        Ok(parsed)
    }
}

/// An nkey user from 32 bytes (the embedded NATS derives them from the app's secret;
/// tests make them at random): (seed `SU…`, public key `U…`).
pub fn nkey_user(bytes: [u8; 32]) -> Result<(String, String), String> {
    let pair =
        nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, bytes).map_err(|e| e.to_string())?;
    Ok((pair.seed().map_err(|e| e.to_string())?, pair.public_key()))
}

/// The public key (`U…`) of an nkey user `seed`.
pub fn nkey_public(seed: &str) -> Result<String, String> {
    nkeys::KeyPair::from_seed(seed)
        .map(|pair| pair.public_key())
        .map_err(|_| "not an nkey seed".to_string())
}

/// A server's `nonce` signed with an nkey user `seed`, as CONNECT's `sig` carries it
/// (unpadded base64url): what the Ruby publisher sends.
pub fn nkey_sign(seed: &str, nonce: &str) -> Result<String, String> {
    use base64::Engine;
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|_| "not an nkey seed".to_string())?;
    let signature = pair.sign(nonce.as_bytes()).map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature))
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
) -> Option<NatsClient> {
    let NatsServers {
        addrs,
        label,
        auth,
        nkey_seed,
        credentials,
    } = servers;
    let needs_login = auth.is_some() || nkey_seed.is_some() || credentials.is_some();
    let options = match (credentials, nkey_seed, auth) {
        // Checked by `parse_with`.
        (Some(text), _, _) => ConnectOptions::with_credentials(&text).ok()?,
        (None, Some(seed), _) => ConnectOptions::with_nkey(seed),
        (None, None, Some((user, Some(pass)))) => {
            ConnectOptions::with_user_and_password(user, pass)
        }
        (None, None, Some((token, None))) => ConnectOptions::with_token(token),
        (None, None, None) => ConnectOptions::new(),
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
        Ok(client) => Some(NatsClient {
            client,
            needs_login,
            label,
        }),
        Err(e) => {
            log::error!("NATS ({label}): {e}");
            None
        }
    }
}

/// A NATS client, and whether it holds credentials. Holding them, a server that asks
/// for no login is not the one they are for (someone squatting the embedded NATS
/// port, a misrouted address): nothing is published to it and what it sends is
/// dropped (issue #24: never adopt an unauthenticated server). Checked where a
/// message goes out or comes in, against the server info of the connection it uses
/// (a reconnect may reach another server).
#[derive(Clone)]
pub(crate) struct NatsClient {
    pub(crate) client: async_nats::Client,
    needs_login: bool,
    label: String,
}

static UNTRUSTED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();

impl NatsClient {
    /// The server now reached may be used.
    pub(crate) fn trusted(&self) -> bool {
        !self.needs_login || self.client.server_info().auth_required
    }

    /// Returns once [`NatsClient::trusted`]; says so (once a second at most) while it
    /// is not, past a short grace for the server's first INFO.
    pub(crate) async fn wait_trusted(&self) {
        let mut waited = 0u32;
        while !self.trusted() {
            waited += 1;
            if waited > 10 {
                self.refused();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn refused(&self) {
        crate::logging::once_a_second(&UNTRUSTED_LOG, |more| {
            log::error!(
                "NATS ({}) asks for no login, though credentials are set: not used (something \
                 else listens on the embedded NATS port?); broadcasts wait ({more} more such \
                 lines since the last)",
                self.label
            )
        });
    }
}

/// The core pub/sub on `subject`: publishes, in order, what `queue` hands over (while
/// NATS is down payloads wait in the queue, not in the client's own buffer), and
/// delivers what arrives.
pub(crate) async fn run_core(
    nats: NatsClient,
    subject: String,
    queue: Arc<PublishQueue<String>>,
    link: Arc<AtomicBool>,
    deliver: impl Fn(&str) + Send + Sync + 'static,
) {
    let client = nats.client.clone();
    let mut subscriber = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("NATS subscribe to {subject}: {e}");
            return;
        }
    };
    let subject_out = subject.clone();
    let out = nats.clone();
    tokio::spawn(async move {
        loop {
            let (at, payload) = queue.next().await;
            wait_for(&link).await;
            out.wait_trusted().await;
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
        if !nats.trusted() {
            nats.refused();
            continue;
        }
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
    fn nkey_users_sign_nonces_the_public_key_verifies() {
        let (seed, public) = nkey_user([7; 32]).unwrap();
        assert!(
            seed.starts_with("SU") && public.starts_with('U'),
            "{seed} {public}"
        );
        assert_eq!(nkey_user([7; 32]).unwrap(), (seed.clone(), public.clone()));
        assert_eq!(nkey_public(&seed).unwrap(), public);
        let sig = nkey_sign(&seed, "nonce-1").unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sig)
            .unwrap();
        let verifier = nkeys::KeyPair::from_public_key(&public).unwrap();
        assert!(verifier.verify(b"nonce-1", &raw).is_ok());
        assert!(verifier.verify(b"nonce-2", &raw).is_err());
        assert!(nkey_sign("SUnot-a-seed", "n").is_err());
        let login = |seed: &str| NatsLogin {
            nkey_seed: Some(seed.into()),
            credentials_file: None,
        };
        let bad = NatsServers::parse_with("nats://h:4222", &login("SUnope"))
            .err()
            .unwrap();
        assert!(!bad.contains("SUnope"), "{bad}");
    }

    /// ANYCABLE_NATS_CREDENTIALS is read and parsed at start: a missing or malformed
    /// file, or one given with an nkey seed too, is a boot error that quotes nothing
    /// from the file.
    #[test]
    fn a_credentials_file_is_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("anycable-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (seed, _) = nkey_user([9; 32]).unwrap();
        let good = dir.join("good.creds");
        std::fs::write(
            &good,
            format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        let bad = dir.join("bad.creds");
        std::fs::write(&bad, format!("just the seed {seed}\n")).unwrap();
        let file = |path: &std::path::Path| NatsLogin {
            nkey_seed: None,
            credentials_file: Some(path.display().to_string()),
        };
        let parsed = NatsServers::parse_with("nats://h:4222", &file(&good)).unwrap();
        assert!(parsed.credentials.is_some());
        for (login, says) in [
            (file(&bad), "bad.creds"),
            (file(&dir.join("missing.creds")), "missing.creds"),
            (
                NatsLogin {
                    nkey_seed: Some(seed.clone()),
                    ..file(&good)
                },
                "give one",
            ),
        ] {
            let error = NatsServers::parse_with("nats://h:4222", &login)
                .err()
                .unwrap();
            assert!(error.contains(says), "{error}");
            assert!(!error.contains(&seed), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake NATS server on loopback: says `INFO` (asking for a login or not),
    /// answers `PING`, accepts any `CONNECT` (handing over `"CONNECT"`), and hands
    /// over each `PUB` payload.
    async fn fake_nats(
        auth_required: bool,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (addr, rx, _server) = fake_nats_on(0, auth_required).await;
        (addr, rx)
    }

    /// [`fake_nats`] on `port` (0: any); aborting the handle closes the server and
    /// every connection it holds.
    async fn fake_nats_on(
        port: u16,
        auth_required: bool,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                connections.spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let info = serde_json::json!({"server_id": "FAKE", "server_name": "fake",
                        "version": "2.10.0", "go": "go1", "host": "127.0.0.1", "port": addr.port(),
                        "headers": true, "max_payload": 1048576, "proto": 1,
                        "auth_required": auth_required});
                    let _ = write.write_all(format!("INFO {info}\r\n").as_bytes()).await;
                    let mut lines = BufReader::new(read).lines();
                    let mut publishing = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if publishing {
                            let _ = tx.send(line);
                            publishing = false;
                        } else if line.starts_with("CONNECT") {
                            let _ = tx.send("CONNECT".into());
                        } else if line.starts_with("PING") {
                            let _ = write.write_all(b"PONG\r\n").await;
                        } else if line.starts_with("PUB ") || line.starts_with("HPUB ") {
                            publishing = true;
                        }
                    }
                });
            }
        });
        (addr, rx, server)
    }

    /// The next payload a fake NATS was sent within `ms` (its CONNECTs skipped).
    async fn next_publish(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
        ms: u64,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) if line == "CONNECT" => continue,
                Ok(line) => return line,
                Err(_) => return None,
            }
        }
    }

    /// A client of the NATS at `addr` that holds a password (core subject `s`).
    fn holding_a_password(addr: std::net::SocketAddr) -> NatsPubSub {
        NatsPubSub::start(
            &format!("nats://u:pw@{addr}"),
            &NatsLogin::default(),
            "s".into(),
            |_| {},
        )
        .unwrap()
    }

    /// Issue #24 (17), across a reconnect: the trusted server goes, something that
    /// asks for no login takes its port, and the client — reconnecting to it — sends
    /// it nothing and stops calling itself connected.
    #[tokio::test]
    async fn a_squatter_reached_by_a_reconnect_gets_nothing() {
        let (addr, mut first, server) = fake_nats_on(0, true).await;
        let pubsub = holding_a_password(addr);
        pubsub.publish("one".into());
        assert_eq!(next_publish(&mut first, 5000).await.as_deref(), Some("one"));
        assert!(pubsub.is_connected());
        server.abort();
        let _ = server.await;
        let (_, mut squatter, _squatting) = fake_nats_on(addr.port(), false).await;
        let reconnected = tokio::time::timeout(std::time::Duration::from_secs(10), squatter.recv())
            .await
            .unwrap();
        assert_eq!(reconnected.as_deref(), Some("CONNECT"));
        for n in 0..10 {
            pubsub.publish(format!("two-{n}"));
        }
        let sent = next_publish(&mut squatter, 1500).await;
        assert!(sent.is_none(), "the squatter got {sent:?}");
        assert!(!pubsub.is_connected());
    }

    /// Issue #24 (17): the embedded NATS was used whatever answered on its port. Now,
    /// holding credentials, the client publishes nothing to a server that asks for no
    /// login (and is not "connected"); to one that asks, it does.
    #[tokio::test]
    async fn holding_credentials_it_uses_no_server_that_asks_for_no_login() {
        for auth_required in [false, true] {
            let (addr, mut published) = fake_nats(auth_required).await;
            let pubsub = holding_a_password(addr);
            pubsub.publish("hello".into());
            let got = next_publish(&mut published, 1500).await;
            assert_eq!(
                got.is_some(),
                auth_required,
                "auth_required {auth_required}"
            );
            assert_eq!(pubsub.is_connected(), auth_required);
        }
    }

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
