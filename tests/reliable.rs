//! The extended protocol (`actioncable-v1-ext-json`: pings, pongs, `pong_timeout`) and
//! the memory broker's history (offsets, the `history` command, `history` on
//! `subscribe`) over real sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anycable_core::auth::streams::StreamsConfig;
use anycable_core::broker::HistoryConfig;
use anycable_core::protocol::{self, Command};
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

/// Subscribes to stream "all" (and "extra" when the identifier says so; none with
/// "nostream"), or rejects identifiers that contain "reject" as Action Cable does (no
/// streams left). Counts its callbacks; a connect with `?close` is closed for good.
#[derive(Default)]
struct Calls {
    connects: AtomicUsize,
    /// Connects for a restored session (identifiers given, `connect` not run).
    rebuilds: AtomicUsize,
    subscribes: AtomicUsize,
    disconnects: AtomicUsize,
    /// The subscriptions each rebuild was given.
    restored: parking_lot::Mutex<Vec<Vec<String>>>,
}

struct App {
    hub: Arc<Hub>,
    calls: Arc<Calls>,
}

impl Controller for App {
    async fn connect(&self, req: ConnectRequest) -> ConnectReply {
        if req.identifiers.is_some() {
            self.calls.rebuilds.fetch_add(1, Ordering::SeqCst);
            let gone = req
                .restored
                .iter()
                .flat_map(|c| &c.subscriptions)
                .any(|s| s.identifier.contains("gone"));
            if gone {
                // The app cannot rebuild it (a record deleted meanwhile).
                return ConnectReply::Failed("record not found".into());
            }
            self.calls.restored.lock().push(
                req.restored
                    .iter()
                    .flat_map(|c| &c.subscriptions)
                    .map(|s| format!("{} {:?}", s.identifier, s.streams))
                    .collect(),
            );
        } else {
            self.calls.connects.fetch_add(1, Ordering::SeqCst);
            req.session
                .set_identifiers(json!({"user": "gid://app/User/1"}));
        }
        ConnectReply::Accepted
    }

    async fn command(&self, req: CommandRequest) {
        let CommandRequest { session, command } = req;
        let id = &command.identifier;
        if command.command == Command::Message
            && command.data.as_deref() == Some(r#"{"action":"leave"}"#)
        {
            // Action Cable's `close(reconnect: false)` from a channel action.
            session.transmit(protocol::disconnect("unauthorized", false));
            session.close_quietly();
            return;
        }
        if command.command == Command::Unsubscribe {
            self.hub.unsubscribe_identifier(&session, id);
            session.remove_subscription(id);
            return;
        }
        if command.command != Command::Subscribe {
            return;
        }
        self.calls.subscribes.fetch_add(1, Ordering::SeqCst);
        if id.contains("nostream") {
            session.add_subscription(id);
            session.transmit(protocol::subscription_reply(id, true));
            return;
        }
        if id.contains("reject") {
            self.hub.subscribe(&session, "all", id);
            self.hub.unsubscribe_identifier(&session, id);
            session.transmit(protocol::subscription_reply(id, false));
            return;
        }
        self.hub.subscribe(&session, "all", id);
        if id.contains("slow") {
            // An app whose subscribe goes on after `stream_from`: broadcasts arrive
            // between the join and the replay.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if id.contains("extra") {
            self.hub.subscribe(&session, "extra", id);
        }
        session.add_subscription(id);
        session.transmit(protocol::subscription_reply(id, true));
    }

    async fn disconnect(&self, _session: SessionRef) {
        self.calls.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

async fn start(config: ServerConfig) -> (Server<App>, SocketAddr) {
    start_counting(config).await.0
}

async fn start_counting(config: ServerConfig) -> ((Server<App>, SocketAddr), Arc<Calls>) {
    let hub = Arc::new(Hub::new(None));
    let calls = Arc::new(Calls::default());
    let app = App {
        hub: hub.clone(),
        calls: calls.clone(),
    };
    let server = Server::new(config, app, hub);
    server.start().expect("no pub/sub to start");
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    ((server, addr), calls)
}

fn with_history(limit: usize) -> ServerConfig {
    ServerConfig {
        history: Some(HistoryConfig {
            limit,
            ttl: Duration::from_secs(300),
            ..Default::default()
        }),
        streams: StreamsConfig {
            public: true,
            secret: Some(STREAMS_SECRET.to_vec()),
            ..Default::default()
        },
        ..Default::default()
    }
}

const STREAMS_SECRET: &[u8] = b"streams-secret";

type Client = WebSocketStream<TcpStream>;

/// Connects offering `protocols`; returns the client, the chosen protocol and the
/// welcome message.
async fn connect(addr: SocketAddr, protocols: &str) -> (Client, Option<String>, Value) {
    connect_with(addr, "/cable", protocols, None).await
}

/// [`connect`] to `target` (path and query), with an `X-AnyCable-Restore-SID` header
/// when `restore_header` is set.
async fn connect_with(
    addr: SocketAddr,
    target: &str,
    protocols: &str,
    restore_header: Option<&str>,
) -> (Client, Option<String>, Value) {
    let mut req = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    if let Some(sid) = restore_header {
        req.headers_mut()
            .insert("X-AnyCable-Restore-SID", sid.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = client_async(req, tcp).await.unwrap();
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    let welcome = next(&mut ws).await;
    (ws, proto, welcome)
}

async fn ext(addr: SocketAddr) -> Client {
    connect(addr, "actioncable-v1-ext-json").await.0
}

/// The next frame that is not a ping.
async fn next(ws: &mut Client) -> Value {
    loop {
        let v = next_frame(ws).await;
        if v["type"] != "ping" {
            return v;
        }
    }
}

async fn next_frame(ws: &mut Client) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("stream ended")
        .expect("read error");
    match msg {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        Message::Close(c) => json!({"close": c.map(|c| u16::from(c.code))}),
        other => panic!("unexpected frame {other:?}"),
    }
}

/// Subscribes to `identifier` and expects the confirmation.
async fn subscribed(ws: &mut Client, identifier: &str) {
    send(
        ws,
        json!({"command": "subscribe", "identifier": identifier}),
    )
    .await;
    assert_eq!(next(ws).await["type"], "confirm_subscription");
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Nothing else arrives: a ping is answered with the next frame after whatever the
/// server had to say.
async fn assert_quiet(ws: &mut Client) {
    send(ws, json!({"command": "ping"})).await;
    assert_eq!(next(ws).await, json!({"type": "pong"}));
}

fn msg(id: &str, n: u64, epoch: &str, stream: &str) -> Value {
    json!({"identifier": id, "message": {"n": n}, "stream_id": stream, "epoch": epoch, "offset": n})
}

#[tokio::test]
async fn extended_protocol_is_chosen_when_offered_and_answers_pings() {
    let (_server, addr) = start(ServerConfig::default()).await;
    let (mut a, proto, welcome) = connect(addr, "actioncable-v1-ext-json").await;
    assert_eq!(proto.as_deref(), Some("actioncable-v1-ext-json"));
    assert_eq!(welcome["type"], "welcome");
    assert!(welcome["sid"].as_str().is_some_and(|s| !s.is_empty()));
    // A pong is taken silently; a ping gets a pong.
    send(&mut a, json!({"command": "pong"})).await;
    assert_quiet(&mut a).await;

    // Plain clients are served as before, and may ping too (not gated by protocol).
    let (mut b, proto, welcome) =
        connect(addr, "actioncable-v1-json, actioncable-unsupported").await;
    assert_eq!(proto.as_deref(), Some("actioncable-v1-json"));
    assert_eq!(welcome["type"], "welcome");
    assert_quiet(&mut b).await;
}

#[tokio::test]
async fn server_pings_carry_unix_seconds() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (_server, addr) = start(config).await;
    let mut a = ext(addr).await;
    let ping = next_frame(&mut a).await;
    assert_eq!(ping["type"], "ping");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ping["message"].as_u64().unwrap().abs_diff(now) <= 2,
        "{ping}"
    );
}

#[tokio::test]
async fn pong_timeout_disconnects_a_silent_extended_client_only() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (_server, addr) = start(config).await;
    // Before the silent client connects: its silence starts with its welcome.
    let started = std::time::Instant::now();
    let (mut silent, _, _) = connect(addr, "actioncable-v1-ext-json").await;
    let (mut plain, _, _) = connect(addr, "actioncable-v1-json").await;
    let (mut alive, _, _) = connect(addr, "actioncable-v1-ext-json").await;

    let keep_alive = tokio::spawn(async move {
        // Answers every ping with a pong, as @anycable/web with pongs: true.
        let until = std::time::Instant::now() + Duration::from_millis(1200);
        while std::time::Instant::now() < until {
            let v = next_frame(&mut alive).await;
            assert_eq!(v["type"], "ping", "{v}");
            send(&mut alive, json!({"command": "pong"})).await;
        }
        alive
    });
    assert_eq!(
        next(&mut silent).await,
        json!({"type": "disconnect", "reason": "no_pong", "reconnect": true})
    );
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_eq!(next(&mut silent).await, json!({"close": 1000}));

    let mut alive = keep_alive.await.unwrap();
    assert_quiet(&mut alive).await;
    // The plain client never sent a frame, and is still served.
    assert_quiet(&mut plain).await;
}

/// Broadcasts to "all" keep coming while clients subscribe with history, through the
/// app (which joins, then waits) and server-side (`$pubsub`): each client gets every
/// offset after its position once, in order, the replay before confirm_history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_live_broadcasts_do_not_interleave_on_subscribe() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let (server, addr) = start(with_history(100_000)).await;
    let server = Arc::new(server);
    let epoch = server.history().unwrap().epoch().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let broadcaster = {
        let (server, sent, stop) = (server.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed) + 1;
                server
                    .broadcast("all", &format!(r#"{{"n":{n}}}"#), None)
                    .unwrap();
                sent.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    while sent.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let identifiers = [
        r#"{"channel":"ChatChannel","slow":true}"#.to_string(),
        json!({"channel": "$pubsub", "signed_stream_name": anycable_core::auth::streams::sign("all", STREAMS_SECRET)}).to_string(),
    ];
    for round in 0..10 {
        let id = &identifiers[round % 2];
        let mut client = ext(addr).await;
        let from = sent.load(Ordering::Relaxed) - 10;
        let history = json!({"since": 0, "streams": {"all": {"epoch": epoch, "offset": from}}});
        send(
            &mut client,
            json!({"command": "subscribe", "identifier": id, "history": history}),
        )
        .await;
        assert_eq!(next(&mut client).await["type"], "confirm_subscription");
        let mut expected = from + 1;
        let mut confirmed_at = None;
        while confirmed_at.is_none_or(|at| expected < at + 20) {
            let v = next(&mut client).await;
            if v["type"] == "confirm_history" {
                assert!(confirmed_at.is_none(), "round {round}: {v}");
                assert!(expected > from + 10, "round {round}: replay cut short");
                confirmed_at = Some(expected);
                continue;
            }
            assert_eq!(v["offset"], expected, "round {round}: {v}");
            assert_eq!(v["message"]["n"], expected, "round {round}: {v}");
            expected += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    broadcaster.join().unwrap();
}

#[tokio::test]
async fn broadcasts_get_offsets_and_missed_ones_are_replayed_on_subscribe() {
    let (server, addr) = start(with_history(100)).await;
    let epoch = server.history().unwrap().epoch().to_string();
    let id = r#"{"channel":"ChatChannel"}"#;
    let mut a = ext(addr).await;
    subscribed(&mut a, id).await;
    for n in 1..=2 {
        server
            .broadcast("all", &format!(r#"{{"n":{n}}}"#), None)
            .unwrap();
        assert_eq!(next(&mut a).await, msg(id, n, &epoch, "all"));
    }
    // A plain client sees the offsets too (one encoder for both, as AnyCable).
    let (mut plain, _, _) = connect(addr, "actioncable-v1-json").await;
    subscribed(&mut plain, id).await;
    server.broadcast("all", r#"{"n":3}"#, None).unwrap();
    assert_eq!(next(&mut plain).await, msg(id, 3, &epoch, "all"));

    // Another client that saw up to 1 subscribes again with its position: 2 and 3
    // come after the confirmation, then confirm_history.
    let mut b = ext(addr).await;
    let history = json!({"since": 0, "streams": {"all": {"epoch": epoch, "offset": 1}}});
    send(
        &mut b,
        json!({"command": "subscribe", "identifier": id, "history": history}),
    )
    .await;
    assert_eq!(
        next(&mut b).await,
        json!({"identifier": id, "type": "confirm_subscription"})
    );
    assert_eq!(next(&mut b).await, msg(id, 2, &epoch, "all"));
    assert_eq!(next(&mut b).await, msg(id, 3, &epoch, "all"));
    assert_eq!(
        next(&mut b).await,
        json!({"type": "confirm_history", "identifier": id})
    );
    // Live broadcasts go on after it.
    server.broadcast("all", r#"{"n":4}"#, None).unwrap();
    assert_eq!(next(&mut b).await, msg(id, 4, &epoch, "all"));

    // A rejected subscription gets no history reply at all.
    let rejected = r#"{"channel":"ChatChannel","reject":true}"#;
    send(
        &mut b,
        json!({"command": "subscribe", "identifier": rejected, "history": history}),
    )
    .await;
    assert_eq!(next(&mut b).await["type"], "reject_subscription");
    assert_quiet(&mut b).await;
}

#[tokio::test]
async fn the_history_command_confirms_or_rejects_per_section_5_3() {
    let (server, addr) = start(with_history(3)).await;
    let epoch = server.history().unwrap().epoch().to_string();
    let id = r#"{"channel":"ChatChannel","extra":true}"#;
    let mut a = ext(addr).await;
    subscribed(&mut a, id).await;
    for n in 1..=5 {
        server
            .broadcast("all", &format!(r#"{{"n":{n}}}"#), None)
            .unwrap();
        next(&mut a).await;
    }
    server.broadcast("extra", r#"{"n":1}"#, None).unwrap();
    next(&mut a).await;
    let history = |h: Value| json!({"command": "history", "identifier": id, "history": h});

    // Positions: 3, 4, 5 are kept (limit 3); a client at 2 gets them, and the other
    // stream's part by `since`.
    let since = anycable_core::broker::unix_now() - 5;
    send(
        &mut a,
        history(json!({"since": since, "streams": {"all": {"epoch": epoch, "offset": 2}}})),
    )
    .await;
    for n in 3..=5 {
        assert_eq!(next(&mut a).await, msg(id, n, &epoch, "all"));
    }
    assert_eq!(next(&mut a).await, msg(id, 1, &epoch, "extra"));
    assert_eq!(
        next(&mut a).await,
        json!({"type": "confirm_history", "identifier": id})
    );

    // Older than what is kept, another epoch, or from the future: only reject_history.
    for streams in [
        json!({"all": {"epoch": epoch, "offset": 1}}),
        json!({"all": {"epoch": "zzzz", "offset": 4}}),
        json!({"all": {"epoch": epoch, "offset": 4}, "extra": {"epoch": epoch, "offset": 7}}),
    ] {
        send(&mut a, history(json!({"since": since, "streams": streams}))).await;
        assert_eq!(
            next(&mut a).await,
            json!({"type": "reject_history", "identifier": id}),
            "{streams}"
        );
    }

    // `since` alone: what was stored at or after it; a non-number counts as 0.
    send(&mut a, history(json!({"since": since}))).await;
    for n in 3..=5 {
        assert_eq!(next(&mut a).await, msg(id, n, &epoch, "all"));
    }
    assert_eq!(next(&mut a).await, msg(id, 1, &epoch, "extra"));
    assert_eq!(next(&mut a).await["type"], "confirm_history");
    send(&mut a, history(json!({"since": since + 3600}))).await;
    assert_eq!(next(&mut a).await["type"], "confirm_history");

    // Dropped without a reply: since 0 and no streams (or a non-numeric since), and a
    // subscription this session does not have.
    send(&mut a, history(json!({"since": 0}))).await;
    send(&mut a, history(json!({"since": false}))).await;
    send(
        &mut a,
        json!({"command": "history", "identifier": "{\"channel\":\"Other\"}", "history": {"since": since}}),
    )
    .await;
    assert_quiet(&mut a).await;
}

#[tokio::test]
async fn a_replay_over_the_clients_pending_bytes_is_rejected_and_the_client_stays() {
    let config = ServerConfig {
        max_pending_bytes: 64 * 1024,
        ..with_history(100)
    };
    let (server, addr) = start(config).await;
    let epoch = server.history().unwrap().epoch().to_string();
    let id = r#"{"channel":"ChatChannel"}"#;
    let mut a = ext(addr).await;
    subscribed(&mut a, id).await;
    // 20 messages of ~10 KB: each fits, the replay of all of them (200 KB) does not.
    let big = format!(r#""{}""#, "x".repeat(10_000));
    for _ in 0..20 {
        server.broadcast("all", &big, None).unwrap();
        next(&mut a).await;
    }
    let history = json!({"command": "history", "identifier": id,
        "history": {"streams": {"all": {"epoch": epoch, "offset": 0}}}});
    send(&mut a, history).await;
    // Before: 5 or 6 frames, then {"type":"disconnect","reason":"too_slow"} on every try.
    assert_eq!(
        next(&mut a).await,
        json!({"type": "reject_history", "identifier": id})
    );
    server.broadcast("all", r#"{"n":"after"}"#, None).unwrap();
    assert_eq!(next(&mut a).await["message"], json!({"n": "after"}));
    // What fits is still replayed.
    let history = json!({"command": "history", "identifier": id,
        "history": {"streams": {"all": {"epoch": epoch, "offset": 18}}}});
    send(&mut a, history).await;
    for _ in 0..3 {
        assert_eq!(next(&mut a).await["stream_id"], "all");
    }
    assert_eq!(
        next(&mut a).await,
        json!({"type": "confirm_history", "identifier": id})
    );
}

/// Issue #24 (3): a public `$pubsub` name lives in its own namespace (no app stream,
/// no `action_cable/<id>`), and a whisper reaches only subscriptions that take
/// whispers on its stream: not the app's plain `stream_from` on the same stream.
#[tokio::test]
async fn public_names_reach_no_app_stream_and_whispers_only_opted_in_subscriptions() {
    let mut config = with_history(100);
    config.streams.whisper = true;
    let (server, addr) = start(config).await;
    let app = r#"{"channel":"ChatChannel"}"#;
    let public_all = json!({"channel": "$pubsub", "stream_name": "all"}).to_string();
    let signed_all = json!({"channel": "$pubsub", "signed_stream_name": anycable_core::auth::streams::sign("all", STREAMS_SECRET)}).to_string();
    let mut victim = ext(addr).await;
    subscribed(&mut victim, app).await;
    let mut attacker = ext(addr).await;
    subscribed(&mut attacker, &public_all).await;
    let mut signed = ext(addr).await;
    subscribed(&mut signed, &signed_all).await;
    let mut listener = ext(addr).await;
    subscribed(&mut listener, &signed_all).await;

    // The app's stream "all" is not the public "all".
    server.broadcast("all", r#"{"n":1}"#, None).unwrap();
    assert_eq!(next(&mut victim).await["message"], json!({"n": 1}));
    assert_eq!(next(&mut signed).await["message"], json!({"n": 1}));
    assert_eq!(next(&mut listener).await["message"], json!({"n": 1}));
    assert_quiet(&mut attacker).await;
    send(
        &mut attacker,
        json!({"command": "whisper", "identifier": public_all, "data": {"type": "disconnect"}}),
    )
    .await;
    assert_quiet(&mut victim).await;
    assert_quiet(&mut signed).await;
    // The public stream is the app's to broadcast to, by its own name.
    server.broadcast("$public:all", r#"{"p":1}"#, None).unwrap();
    assert_eq!(next(&mut attacker).await["message"], json!({"p": 1}));

    // A whisper on the signed stream: the other signed subscriber takes it; the app's
    // ChatChannel on the same stream (no whisper: true) does not, nor the sender.
    send(
        &mut signed,
        json!({"command": "whisper", "identifier": signed_all, "data": {"typing": true}}),
    )
    .await;
    assert_eq!(
        next(&mut listener).await,
        json!({"identifier": signed_all, "message": {"typing": true}})
    );
    assert_quiet(&mut victim).await;
    assert_quiet(&mut signed).await;
}

#[tokio::test]
async fn whispers_and_transient_broadcasts_get_no_offset_and_server_streams_have_history() {
    let (server, addr) = start(with_history(100)).await;
    let epoch = server.history().unwrap().epoch().to_string();
    let public = json!({"channel": "$pubsub", "stream_name": "lobby"}).to_string();
    let mut a = ext(addr).await;
    let mut b = ext(addr).await;
    for ws in [&mut a, &mut b] {
        subscribed(ws, &public).await;
    }
    send(
        &mut a,
        json!({"command": "whisper", "identifier": public, "data": {"typing": true}}),
    )
    .await;
    assert_eq!(
        next(&mut b).await,
        json!({"identifier": public, "message": {"typing": true}})
    );
    server
        .apply_broadcast(
            r#"{"stream":"$public:lobby","data":"{\"t\":1}","meta":{"transient":true}}"#,
        )
        .unwrap();
    assert_eq!(
        next(&mut b).await,
        json!({"identifier": public, "message": {"t": 1}})
    );
    server
        .apply_broadcast(r#"{"stream":"$public:lobby","data":"{\"n\":1}"}"#)
        .unwrap();
    assert_eq!(next(&mut b).await, msg(&public, 1, &epoch, "$public:lobby"));

    // A $pubsub subscribe with history: replayed after the confirmation.
    let mut c = ext(addr).await;
    send(
        &mut c,
        json!({"command": "subscribe", "identifier": public, "history": {"streams": {"$public:lobby": {"epoch": epoch, "offset": 0}}}}),
    )
    .await;
    assert_eq!(next(&mut c).await["type"], "confirm_subscription");
    assert_eq!(next(&mut c).await, msg(&public, 1, &epoch, "$public:lobby"));
    assert_eq!(next(&mut c).await["type"], "confirm_history");
}

#[tokio::test]
async fn without_a_broker_history_is_rejected_and_broadcasts_have_no_offsets() {
    let (server, addr) = start(ServerConfig::default()).await;
    assert!(server.history().is_none());
    let id = r#"{"channel":"ChatChannel"}"#;
    let mut a = ext(addr).await;
    send(
        &mut a,
        json!({"command": "subscribe", "identifier": id, "history": {"since": 1}}),
    )
    .await;
    assert_eq!(next(&mut a).await["type"], "confirm_subscription");
    assert_eq!(
        next(&mut a).await,
        json!({"type": "reject_history", "identifier": id})
    );
    server.broadcast("all", r#"{"n":1}"#, None).unwrap();
    assert_eq!(
        next(&mut a).await,
        json!({"identifier": id, "message": {"n": 1}})
    );
}

/// A closed extended-protocol session comes back by its sid (§5.1): no `connect`, no
/// `subscribe`, its streams joined again before the welcome; what was broadcast while
/// it was away is there by history; a sid restores once.
#[tokio::test]
async fn a_session_is_restored_by_sid_without_connect_or_subscribe() {
    let ((server, addr), calls) = start_counting(with_history(100)).await;
    let epoch = server.history().unwrap().epoch().to_string();
    let id = r#"{"channel":"ChatChannel","extra":true}"#;
    let quiet = r#"{"channel":"nostream"}"#;
    let public = json!({"channel": "$pubsub", "stream_name": "lobby"}).to_string();
    let (mut a, _, welcome) = connect(addr, "actioncable-v1-ext-json").await;
    let old = welcome["sid"].as_str().unwrap().to_string();
    for identifier in [id, quiet, public.as_str()] {
        subscribed(&mut a, identifier).await;
    }
    server.broadcast("all", r#"{"n":1}"#, None).unwrap();
    assert_eq!(next(&mut a).await, msg(id, 1, &epoch, "all"));
    a.close(None).await.unwrap();
    drop(a);
    wait_for(|| calls.disconnects.load(Ordering::SeqCst) == 1).await;
    server.broadcast("all", r#"{"n":2}"#, None).unwrap();

    let (mut b, _, welcome) = connect_with(
        addr,
        &format!("/cable?sid={old}"),
        "actioncable-v1-ext-json",
        None,
    )
    .await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_ne!(welcome["sid"], old.as_str());
    // The app's objects are rebuilt at once, before any command (timers, remote
    // disconnects need them).
    wait_for(|| calls.rebuilds.load(Ordering::SeqCst) == 1).await;
    let mut ids: Vec<&str> = welcome["restored_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![id, quiet, public.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    // Live at once, and the missed one by history (the client's position: 1).
    server.broadcast("all", r#"{"n":3}"#, None).unwrap();
    assert_eq!(next(&mut b).await, msg(id, 3, &epoch, "all"));
    send(
        &mut b,
        json!({"command": "history", "identifier": id, "history": {"streams": {"all": {"epoch": epoch, "offset": 1}}}}),
    )
    .await;
    assert_eq!(next(&mut b).await, msg(id, 2, &epoch, "all"));
    assert_eq!(next(&mut b).await, msg(id, 3, &epoch, "all"));
    assert_eq!(next(&mut b).await["type"], "confirm_history");
    // A restored subscription without streams has nothing to miss (M5).
    send(
        &mut b,
        json!({"command": "history", "identifier": quiet, "history": {"since": 1}}),
    )
    .await;
    assert_eq!(
        next(&mut b).await,
        json!({"type": "confirm_history", "identifier": quiet})
    );
    // The server-side subscription too.
    server
        .apply_broadcast(r#"{"stream":"$public:lobby","data":"{\"n\":1}"}"#)
        .unwrap();
    assert_eq!(next(&mut b).await, msg(&public, 1, &epoch, "$public:lobby"));
    assert_eq!(calls.connects.load(Ordering::SeqCst), 1);
    // The two app subscriptions ($pubsub is the server's own).
    assert_eq!(calls.subscribes.load(Ordering::SeqCst), 2);
    // They were rebuilt with the identifiers and the app's subscriptions (not the
    // server-side one); a command does not rebuild them again.
    send(
        &mut b,
        json!({"command": "message", "identifier": id, "data": "{\"action\":\"x\"}"}),
    )
    .await;
    assert_quiet(&mut b).await;
    assert_eq!(calls.rebuilds.load(Ordering::SeqCst), 1);
    let mut rebuilt = calls.restored.lock()[0].clone();
    rebuilt.sort();
    assert_eq!(
        rebuilt,
        vec![format!("{id} [\"all\", \"extra\"]"), format!("{quiet} []")]
    );

    // Once only: the same old sid again is a new session, through `connect`.
    let (_c, welcome) = reconnect(addr, &old, "actioncable-v1-ext-json").await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
    assert_eq!(calls.connects.load(Ordering::SeqCst), 2);
}

/// Who may restore: extended-protocol clients only, by header (which wins) or query;
/// not with a zero ttl; not a session the app closed for good.
#[tokio::test]
async fn restore_needs_the_extended_protocol_a_live_ttl_and_a_reconnectable_close() {
    let ((_server, addr), calls) = start_counting(with_history(100)).await;
    let id = r#"{"channel":"ChatChannel"}"#;
    let closed = |calls: &Calls, n| calls.disconnects.load(Ordering::SeqCst) == n;
    let session = |addr| async move {
        let (mut a, _, welcome) = connect(addr, "actioncable-v1-ext-json").await;
        subscribed(&mut a, id).await;
        (a, welcome["sid"].as_str().unwrap().to_string())
    };

    // A plain-protocol client asking for a sid is not restored (and the entry stays).
    let old = closed_session(addr, &calls, id).await;
    let (_p, welcome) = reconnect(addr, &old, "actioncable-v1-json").await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
    // The header wins over the query.
    let (_r, _, welcome) = connect_with(
        addr,
        "/cable?sid=nonsense",
        "actioncable-v1-ext-json",
        Some(&old),
    )
    .await;
    assert_eq!(welcome["restored"], true, "{welcome}");

    // Closed by the app with reconnect: false: nothing to restore.
    let (mut a, old) = session(addr).await;
    send(
        &mut a,
        json!({"command": "message", "identifier": id, "data": "{\"action\":\"leave\"}"}),
    )
    .await;
    assert_eq!(next(&mut a).await["reason"], "unauthorized");
    drop(a);
    wait_for(|| closed(&calls, 2)).await;
    let (_d, welcome) = reconnect(addr, &old, "actioncable-v1-ext-json").await;
    assert!(welcome.get("restored").is_none(), "{welcome}");

    // ANYCABLE_SESSIONS_TTL=0, and no broker: no restores.
    for config in [
        ServerConfig {
            sessions_ttl: Duration::ZERO,
            ..with_history(100)
        },
        ServerConfig::default(),
    ] {
        let ((_server, addr), calls) = start_counting(config).await;
        let old = closed_session(addr, &calls, id).await;
        let (_e, welcome) = reconnect(addr, &old, "actioncable-v1-ext-json").await;
        assert!(welcome.get("restored").is_none(), "{welcome}");
    }
}

/// A restored session that closes without a command still gets the app's disconnect
/// callbacks (its objects rebuilt first), as AnyCable's Disconnect call for a restored
/// session; and is itself cached again for the next restore.
#[tokio::test]
async fn a_restore_past_the_tokens_expiry_is_refused_as_token_expired() {
    use anycable_core::auth::JwtConfig;
    use jsonwebtoken::{encode, EncodingKey, Header};
    let config = ServerConfig {
        jwt: Some(JwtConfig {
            key: b"jwt-key".to_vec(),
            param: "jid".into(),
            enforce: false,
        }),
        ..with_history(100)
    };
    let ((_server, addr), calls) = start_counting(config).await;
    let id = r#"{"channel":"ChatChannel"}"#;
    let ext_json = "actioncable-v1-ext-json";
    let exp = anycable_core::broker::unix_now() + 2;
    let claims = json!({"ext": r#"{"user":"u1"}"#, "exp": exp});
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"jwt-key"),
    )
    .unwrap();
    let disconnects = || calls.disconnects.load(Ordering::SeqCst);
    let (mut a, _, welcome) =
        connect_with(addr, &format!("/cable?jid={token}"), ext_json, None).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    subscribed(&mut a, id).await;
    drop(a);
    wait_for(|| disconnects() == 1).await;
    // Within the token's life the session restores, and the restored one keeps the expiry.
    let (b, welcome) = reconnect(addr, welcome["sid"].as_str().unwrap(), ext_json).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    drop(b);
    wait_for(|| disconnects() == 2).await;
    // Past it: token_expired, as the token itself gets (restores chained on after expiry).
    while anycable_core::broker::unix_now() < exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_c, refused) = reconnect(addr, welcome["sid"].as_str().unwrap(), ext_json).await;
    assert_eq!(
        refused,
        json!({"type": "disconnect", "reason": "token_expired", "reconnect": false})
    );
}

#[tokio::test]
async fn a_restored_session_is_owed_disconnect_and_restores_again() {
    let ((_server, addr), calls) = start_counting(with_history(100)).await;
    let id = r#"{"channel":"ChatChannel"}"#;
    let mut sid = closed_session(addr, &calls, id).await;
    for round in 2..=3 {
        let (b, welcome) = reconnect(addr, &sid, "actioncable-v1-ext-json").await;
        assert_eq!(welcome["restored"], true, "round {round}: {welcome}");
        assert_eq!(welcome["restored_ids"], json!([id]));
        sid = welcome["sid"].as_str().unwrap().to_string();
        drop(b);
        wait_for(|| calls.disconnects.load(Ordering::SeqCst) == round).await;
        assert_eq!(calls.rebuilds.load(Ordering::SeqCst), round - 1);
    }
    assert_eq!(calls.connects.load(Ordering::SeqCst), 1);
    assert_eq!(calls.subscribes.load(Ordering::SeqCst), 1);
}

/// A restore the app cannot rebuild (a record gone): the client is told server_error,
/// and the session is not kept for yet another restore.
#[tokio::test]
async fn a_restore_the_app_cannot_rebuild_is_closed_and_not_kept() {
    let ((_server, addr), calls) = start_counting(with_history(100)).await;
    let old = closed_session(addr, &calls, r#"{"channel":"gone"}"#).await;
    let (mut b, _, welcome) = connect_with(
        addr,
        &format!("/cable?sid={old}"),
        "actioncable-v1-ext-json",
        None,
    )
    .await;
    assert_eq!(welcome["restored"], true);
    assert_eq!(
        next(&mut b).await,
        json!({"type": "disconnect", "reason": "server_error", "reconnect": true})
    );
    let again = welcome["sid"].as_str().unwrap();
    wait_for(|| calls.disconnects.load(Ordering::SeqCst) == 2).await;
    let (_c, welcome) = reconnect(addr, again, "actioncable-v1-ext-json").await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
}

/// An extended-protocol session subscribed to `id` whose client went away, once the
/// app's disconnect has run: its sid.
async fn closed_session(addr: SocketAddr, calls: &Calls, id: &str) -> String {
    let before = calls.disconnects.load(Ordering::SeqCst);
    let (mut a, _, welcome) = connect(addr, "actioncable-v1-ext-json").await;
    subscribed(&mut a, id).await;
    drop(a);
    wait_for(|| calls.disconnects.load(Ordering::SeqCst) == before + 1).await;
    welcome["sid"].as_str().unwrap().to_string()
}

/// Connects again asking to restore `sid` by the query, offering `protocol`.
async fn reconnect(addr: SocketAddr, sid: &str, protocol: &str) -> (Client, Value) {
    let (ws, _, welcome) = connect_with(addr, &format!("/cable?sid={sid}"), protocol, None).await;
    (ws, welcome)
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

/// Presence (§4) on a public `$pubsub` stream: join and leave go to every subscriber,
/// the initiator included, once per id; `presence` answers the requester; a closed
/// socket's record goes after ANYCABLE_PRESENCE_TTL; what cannot be served is `error`.
#[tokio::test]
async fn presence_joins_leaves_and_expires_per_section_4() {
    let config = ServerConfig {
        presence_ttl: Duration::from_millis(300),
        ..with_history(100)
    };
    let (_server, addr) = start(config).await;
    let lobby = json!({"channel": "$pubsub", "stream_name": "lobby"}).to_string();
    let presence =
        |message: Value| json!({"type": "presence", "identifier": lobby, "message": message});
    let (mut a, mut b) = (ext(addr).await, ext(addr).await);
    for ws in [&mut a, &mut b] {
        subscribed(ws, &lobby).await;
    }
    let join = |id: &str, info: Value| json!({"command": "join", "identifier": lobby, "presence": {"id": id, "info": info}});
    send(&mut a, join("42", json!({"name": "A"}))).await;
    let joined = presence(json!({"type": "join", "id": "42", "info": {"name": "A"}}));
    assert_eq!(next(&mut a).await, joined);
    assert_eq!(next(&mut b).await, joined);
    // Again (new info): no event; under another id from the same session: error.
    send(&mut a, join("42", json!({"name": "A2"}))).await;
    send(&mut a, join("43", json!(null))).await;
    assert_eq!(
        next(&mut a).await,
        presence(json!({"type": "error", "total": 0}))
    );
    assert_quiet(&mut b).await;
    send(&mut b, json!({"command": "presence", "identifier": lobby})).await;
    assert_eq!(
        next(&mut b).await,
        presence(
            json!({"type": "info", "total": 1, "records": [{"id": "42", "info": {"name": "A2"}}]})
        )
    );
    send(
        &mut b,
        json!({"command": "presence", "identifier": lobby, "data": {"return_records": false}}),
    )
    .await;
    assert_eq!(
        next(&mut b).await,
        presence(json!({"type": "info", "total": 1}))
    );
    send(&mut a, json!({"command": "leave", "identifier": lobby})).await;
    let left = |id: &str| presence(json!({"type": "leave", "id": id}));
    assert_eq!(next(&mut a).await, left("42"));
    assert_eq!(next(&mut b).await, left("42"));

    // `presence` on a subscribe: joined after the confirmation.
    let mut c = ext(addr).await;
    send(
        &mut c,
        json!({"command": "subscribe", "identifier": lobby, "presence": {"id": "7"}}),
    )
    .await;
    assert_eq!(next(&mut c).await["type"], "confirm_subscription");
    assert_eq!(
        next(&mut c).await,
        presence(json!({"type": "join", "id": "7"}))
    );
    assert_eq!(
        next(&mut b).await,
        presence(json!({"type": "join", "id": "7"}))
    );
    // Its socket closes: the record stays for the ttl, then leaves.
    let gone = std::time::Instant::now();
    drop(c);
    assert_eq!(next(&mut b).await, left("7"));
    assert!(
        gone.elapsed() >= Duration::from_millis(300),
        "{:?}",
        gone.elapsed()
    );

    // An app channel without a presence stream, and an unknown subscription: error.
    let id = r#"{"channel":"ChatChannel"}"#;
    subscribed(&mut b, id).await;
    for identifier in [id, "nope"] {
        send(
            &mut b,
            json!({"command": "join", "identifier": identifier, "presence": {"id": "1"}}),
        )
        .await;
        assert_eq!(
            next(&mut b).await,
            json!({"type": "presence", "identifier": identifier, "message": {"type": "error", "total": 0}})
        );
    }
    // A join whose id is not a string is a bad frame (ignored, logged).
    send(
        &mut b,
        json!({"command": "join", "identifier": lobby, "presence": {"id": 5}}),
    )
    .await;
    assert_quiet(&mut b).await;
}

#[tokio::test]
async fn without_a_broker_presence_is_an_error() {
    let config = ServerConfig {
        streams: StreamsConfig {
            public: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (_server, addr) = start(config).await;
    let lobby = json!({"channel": "$pubsub", "stream_name": "lobby"}).to_string();
    let mut a = ext(addr).await;
    subscribed(&mut a, &lobby).await;
    send(
        &mut a,
        json!({"command": "join", "identifier": lobby, "presence": {"id": "1"}}),
    )
    .await;
    assert_eq!(
        next(&mut a).await,
        json!({"type": "presence", "identifier": lobby, "message": {"type": "error", "total": 0}})
    );
}
