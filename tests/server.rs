//! The server over real sockets, driven by a Rust controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anycable_core::http::{OriginPolicy, OriginRule};
use anycable_core::protocol::Command;
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

#[derive(Clone, Default)]
struct TestController {
    hub: Arc<Mutex<Option<Arc<Hub>>>>,
    disconnected: Arc<Mutex<Vec<String>>>,
    /// What ran, in order: "command start", "command end", "disconnect".
    calls: Arc<Mutex<Vec<&'static str>>>,
    /// Sessions whose disconnect callback takes 200 ms (`?slow_bye`).
    slow_bye: Arc<Mutex<Vec<u64>>>,
}

impl Controller for TestController {
    async fn connect(&self, req: ConnectRequest) -> ConnectReply {
        if req.head.target.contains("reject") {
            ConnectReply::Rejected(anycable_core::DisconnectReason::UNAUTHORIZED)
        } else if req.head.target.contains("fail") {
            ConnectReply::Failed("boom".into())
        } else {
            if req.head.target.contains("slow_bye") {
                self.slow_bye.lock().push(req.session.id);
            }
            if let Some(user) = req.head.target.split("user=").nth(1) {
                req.session
                    .set_identifiers(serde_json::json!({ "user": user }));
            }
            ConnectReply::Accepted
        }
    }

    async fn command(&self, req: CommandRequest) {
        let CommandRequest { session, command } = req;
        let id = &command.identifier;
        match command.command {
            Command::Subscribe => {
                let hub = self.hub.lock().clone().unwrap();
                hub.subscribe(&session, "all", id);
                session.transmit(anycable_core::protocol::subscription_reply(id, true));
            }
            Command::Message => {
                let data = command.data.unwrap();
                if data.contains("slow") {
                    self.calls.lock().push("command start");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    self.calls.lock().push("command end");
                }
                session.transmit(format!(
                    r#"{{"identifier":{},"message":{}}}"#,
                    serde_json::to_string(id).unwrap(),
                    data
                ));
            }
            Command::Whisper | Command::Join => {}
            Command::Unsubscribe => {
                self.hub
                    .lock()
                    .clone()
                    .unwrap()
                    .unsubscribe_identifier(&session, id);
            }
        }
    }

    async fn disconnect(&self, session: SessionRef) {
        if self.slow_bye.lock().contains(&session.id) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.calls.lock().push("disconnect");
        self.disconnected.lock().push(session.sid.clone());
    }
}

async fn start(config: ServerConfig) -> (Server<TestController>, SocketAddr, TestController) {
    let controller = TestController::default();
    let hub = Arc::new(Hub::new(None));
    *controller.hub.lock() = Some(hub.clone());
    let server = Server::new(config, controller.clone(), hub);
    server.start().expect("no pub/sub to start");
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (server, addr, controller)
}

type Client = WebSocketStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    query: &str,
    extra: &[(&'static str, &str)],
) -> (Client, Option<String>) {
    let mut req = format!("ws://{addr}/cable{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "actioncable-v1-json, actioncable-unsupported"
            .parse()
            .unwrap(),
    );
    for (k, v) in extra {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = client_async(req, tcp).await.unwrap();
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    (ws, proto)
}

async fn next_json(ws: &mut Client) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("read error");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] != "ping" {
                return v;
            }
        }
    }
}

async fn send(ws: &mut Client, json: serde_json::Value) {
    ws.send(Message::Text(json.to_string().into()))
        .await
        .unwrap();
}

fn subscribe(id: &str) -> serde_json::Value {
    serde_json::json!({"command":"subscribe","identifier":id})
}

fn message(id: &str, data: &str) -> serde_json::Value {
    serde_json::json!({"command":"message","identifier":id,"data":data})
}

#[tokio::test]
async fn welcome_subscribe_broadcast_echo_and_disconnect() {
    let (server, addr, controller) = start(ServerConfig::default()).await;
    let (mut ws, proto) = connect(addr, "", &[("X-Request-ID", "req-1")]).await;
    assert_eq!(proto.as_deref(), Some("actioncable-v1-json"));
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    // The sid is the server's own, whatever the client sends as X-Request-ID.
    let sid = welcome["sid"].as_str().unwrap().to_string();
    assert!(sid.len() >= 16 && sid != "req-1", "{sid}");

    send(&mut ws, subscribe("{\"channel\":\"A\"}")).await;
    let confirm = next_json(&mut ws).await;
    assert_eq!(confirm["type"], "confirm_subscription");

    let delivered = server.hub().broadcast("all", r#"{"text":"hi"}"#, None);
    assert_eq!(delivered.sessions, 1);
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"identifier":"{\"channel\":\"A\"}","message":{"text":"hi"}})
    );

    send(&mut ws, message("{\"channel\":\"A\"}", r#"{"n":1}"#)).await;
    assert_eq!(
        next_json(&mut ws).await["message"],
        serde_json::json!({"n":1})
    );

    ws.close(None).await.unwrap();
    for _ in 0..100 {
        if !controller.disconnected.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*controller.disconnected.lock(), vec![sid]);
    assert_eq!(server.session_count(), 0);
    assert_eq!(server.hub().stream_count(), 0);
}

#[tokio::test]
async fn rejected_and_failed_connections_get_a_disconnect_message() {
    let (_server, addr, controller) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "?reject=1", &[]).await;
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"type":"disconnect","reason":"unauthorized","reconnect":false})
    );
    assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));

    let (mut ws, _) = connect(addr, "?fail=1", &[]).await;
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"type":"disconnect","reason":"server_error","reconnect":true})
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        controller.disconnected.lock().is_empty(),
        "disconnect is only for accepted sessions"
    );
}

#[tokio::test]
async fn bad_frames_are_ignored_and_the_connection_keeps_working() {
    let config = ServerConfig {
        max_message_size: 1024,
        ..Default::default()
    };
    let (_server, addr, _) = start(config).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    for bad in [
        "{not json".to_string(),
        r#"{"command":"dance","identifier":"x"}"#.to_string(),
        r#"{"command":"subscribe"}"#.to_string(),
        r#"{"command":"message","identifier":"x","data":{"a":1}}"#.to_string(),
        format!(
            r#"{{"command":"message","identifier":"x","data":"{}"}}"#,
            "a".repeat(2000)
        ),
    ] {
        ws.send(Message::Text(bad.into())).await.unwrap();
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    send(&mut ws, message("x", "7")).await;
    assert_eq!(next_json(&mut ws).await["message"], 7);
}

#[tokio::test]
async fn oversize_frames_close_with_1009_without_touching_others() {
    let config = ServerConfig {
        max_message_size: 1024,
        ..Default::default()
    };
    let limit = config.hard_message_limit();
    let (_server, addr, _) = start(config).await;
    let (mut other, _) = connect(addr, "", &[]).await;
    next_json(&mut other).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    let _ = ws.send(Message::Text("x".repeat(limit + 10).into())).await;
    let mut code = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(Some(frame)) = msg {
            code = Some(u16::from(frame.code));
        }
    }
    assert_eq!(code, Some(1009));
    send(&mut other, message("y", "1")).await;
    assert_eq!(next_json(&mut other).await["message"], 1);
}

#[tokio::test]
async fn pings_health_and_404() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (_server, addr, _) = start(config).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "ping");
    assert!(v["message"].as_u64().unwrap() > 1_600_000_000);

    for (path, status) in [("/health", "200"), ("/nope", "404")] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
    }
}

#[tokio::test]
async fn origins_are_checked() {
    let config = ServerConfig {
        origins: OriginPolicy {
            rules: vec![OriginRule::Host("good.test".into())],
            ..Default::default()
        },
        ..Default::default()
    };
    let (_server, addr, _) = start(config).await;
    let (mut ws, _) = connect(addr, "", &[("Origin", "https://good.test")]).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    let mut req = format!("ws://{addr}/cable").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.test".parse().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = client_async(req, tcp).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

/// Frames queued while a command runs wait for its end only briefly (the server
/// writes a command's transmits with its reply): a slow command does not hold back
/// broadcasts to its session.
#[tokio::test]
async fn broadcasts_reach_a_session_while_its_slow_command_runs() {
    let (server, addr, _) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, subscribe("{\"channel\":\"A\"}")).await;
    assert_eq!(next_json(&mut ws).await["type"], "confirm_subscription");
    send(&mut ws, message("x", r#""slow""#)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = std::time::Instant::now();
    server.hub().broadcast("all", r#"{"during":1}"#, None);
    assert_eq!(
        next_json(&mut ws).await["message"],
        serde_json::json!({"during": 1})
    );
    // The slow command sleeps 300 ms; the broadcast is not kept until it ends.
    assert!(
        sent.elapsed() < Duration::from_millis(150),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(next_json(&mut ws).await["message"], "slow");
}

#[tokio::test]
async fn commands_of_one_session_run_in_order() {
    let (_server, addr, _) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, message("x", r#""slow""#)).await;
    send(&mut ws, message("x", r#""fast""#)).await;
    assert_eq!(next_json(&mut ws).await["message"], "slow");
    assert_eq!(next_json(&mut ws).await["message"], "fast");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_as_too_slow() {
    let config = ServerConfig {
        max_pending_bytes: 64 * 1024,
        write_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (server, addr, controller) = start(config).await;
    let (mut stuck, _) = connect(addr, "", &[]).await;
    let stuck_sid = next_json(&mut stuck).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    send(&mut stuck, subscribe("s")).await;
    next_json(&mut stuck).await;
    let (mut fine, _) = connect(addr, "", &[]).await;
    next_json(&mut fine).await;

    let payload = format!("\"{}\"", "z".repeat(4000));
    for _ in 0..5000 {
        server.hub().broadcast("all", &payload, None);
        if !controller.disconnected.lock().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..300 {
        if !controller.disconnected.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*controller.disconnected.lock(), vec![stuck_sid]);
    send(&mut fine, message("q", "3")).await;
    assert_eq!(next_json(&mut fine).await["message"], 3);
}

#[tokio::test]
async fn shutdown_tells_clients_server_restart() {
    let (server, addr, controller) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    server.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"type":"disconnect","reason":"server_restart","reconnect":true})
    );
    assert_eq!(controller.disconnected.lock().len(), 1);
}

/// The broadcast key of the tests that post broadcasts: without one, `/_broadcast` is
/// not served.
const KEY: &str = "test-broadcast-key";

fn with_broadcast_key() -> ServerConfig {
    ServerConfig {
        broadcast_key: Some(KEY.into()),
        ..Default::default()
    }
}

async fn post_broadcast(addr: SocketAddr, body: &str, key: Option<&str>) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /_broadcast HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn http_broadcasts_with_batches_exclusion_keys_and_remote_disconnect() {
    let config = ServerConfig {
        broadcast_key: Some("s3cret".into()),
        ..Default::default()
    };
    let (_server, addr, _) = start(config).await;
    // Both clients claim one request id; exclusion must still tell them apart.
    let (mut a, _) = connect(addr, "?user=u1", &[("X-Request-ID", "same")]).await;
    let (mut b, _) = connect(addr, "?user=u2", &[("X-Request-ID", "same")]).await;
    let mut sids = Vec::new();
    for ws in [&mut a, &mut b] {
        sids.push(next_json(ws).await["sid"].as_str().unwrap().to_string());
        send(ws, subscribe("{\"channel\":\"A\"}")).await;
        next_json(ws).await;
    }
    assert_ne!(sids[0], sids[1]);

    assert!(post_broadcast(addr, r#"{"stream":"all","data":"1"}"#, None)
        .await
        .contains("401"));
    assert!(
        post_broadcast(addr, r#"{"stream":"all","data":"1"}"#, Some("wrong"))
            .await
            .contains("401")
    );
    assert!(post_broadcast(addr, "{nope", Some("s3cret"))
        .await
        .contains("422"));

    let batch = format!(
        r#"[{{"stream":"all","data":"{{\"n\":1}}"}},{{"stream":"all","data":"{{\"n\":2}}","meta":{{"exclude_socket":"{}"}}}}]"#,
        sids[1]
    );
    assert!(post_broadcast(addr, &batch, Some("s3cret"))
        .await
        .contains("201"));
    assert_eq!(
        next_json(&mut a).await["message"],
        serde_json::json!({"n":1})
    );
    assert_eq!(
        next_json(&mut a).await["message"],
        serde_json::json!({"n":2})
    );
    assert_eq!(
        next_json(&mut b).await["message"],
        serde_json::json!({"n":1})
    );

    let disconnect = r#"{"command":"disconnect","payload":{"identifier":"{\"user\":\"u2\"}","reconnect":false}}"#;
    assert!(post_broadcast(addr, disconnect, Some("s3cret"))
        .await
        .contains("201"));
    assert_eq!(
        next_json(&mut b).await,
        serde_json::json!({"type":"disconnect","reason":"remote","reconnect":false})
    );
    send(&mut a, message("{\"channel\":\"A\"}", "5")).await;
    assert_eq!(next_json(&mut a).await["message"], 5);
}

#[tokio::test]
async fn a_server_side_close_waits_for_the_command_in_flight_before_disconnect() {
    let (_server, addr, controller) = start(with_broadcast_key()).await;
    let (mut ws, _) = connect(addr, "?user=u9", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, message("x", r#""slow""#)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let disconnect =
        r#"{"command":"disconnect","payload":{"identifier":"{\"user\":\"u9\"}","reconnect":true}}"#;
    assert!(post_broadcast(addr, disconnect, Some(KEY))
        .await
        .contains("201"));
    for _ in 0..100 {
        if controller.calls.lock().contains(&"disconnect") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *controller.calls.lock(),
        vec!["command start", "command end", "disconnect"]
    );
}

#[tokio::test]
async fn shutdown_waits_for_every_disconnect_callback_and_counts_the_late_ones() {
    let (server, addr, controller) = start(ServerConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (mut ws, _) = connect(addr, "?slow_bye", &[]).await;
        next_json(&mut ws).await;
        clients.push(ws);
    }
    assert_eq!(server.shutdown(Duration::from_secs(5)).await, 0);
    assert_eq!(controller.disconnected.lock().len(), 20);

    let (server, addr, controller) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "?slow_bye", &[]).await;
    next_json(&mut ws).await;
    assert_eq!(server.shutdown(Duration::from_millis(20)).await, 1);
    assert!(controller.disconnected.lock().is_empty());
}

/// Writes one raw client frame (masked with a zero key) after the handshake.
async fn raw_frame(ws: &mut Client, first_byte: u8, payload: &[u8]) {
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    ws.get_mut().write_all(&frame).await.unwrap();
}

async fn close_code(ws: &mut Client) -> Option<u16> {
    let mut code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Close(Some(frame)) = msg {
            code = Some(u16::from(frame.code));
        }
    }
    code
}

#[tokio::test]
async fn protocol_violations_close_with_rfc_6455_codes() {
    let (_server, addr, _) = start(ServerConfig::default()).await;
    // Reserved bit RSV1 set on a text frame: 1002.
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    raw_frame(&mut ws, 0x80 | 0x40 | 0x1, b"{}").await;
    assert_eq!(close_code(&mut ws).await, Some(1002));
    // A text frame that is not UTF-8: 1007.
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    raw_frame(&mut ws, 0x80 | 0x1, &[0xff, 0xfe, 0xfd]).await;
    assert_eq!(close_code(&mut ws).await, Some(1007));
}

#[tokio::test]
async fn broadcasts_too_large_to_deliver_are_refused_where_they_enter() {
    let config = ServerConfig {
        max_pending_bytes: 64 * 1024,
        ..with_broadcast_key()
    };
    let (server, addr, _) = start(config).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, subscribe("s")).await;
    next_json(&mut ws).await;
    let big = format!("\"{}\"", "b".repeat(64 * 1024));
    let err = server.broadcast("all", &big, None).unwrap_err();
    assert_eq!(err.status(), 413);
    assert!(err.to_string().contains("over the"), "{err}");
    let body = serde_json::json!({"stream":"all","data":big}).to_string();
    assert!(post_broadcast(addr, &body, Some(KEY)).await.contains("413"));
    // The subscriber is still there and gets what fits.
    server.broadcast("all", "\"small\"", None).unwrap();
    assert_eq!(next_json(&mut ws).await["message"], "small");
}

#[tokio::test]
async fn sockets_that_never_send_their_request_count_for_max_conn() {
    let config = ServerConfig {
        max_conn: 5,
        ..Default::default()
    };
    let (_server, addr, _) = start(config).await;
    // Five sockets that send nothing hold the five places (until the handshake timeout)…
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …so a sixth is told 503 at once, and so is a WebSocket client.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), extra.read_to_string(&mut out))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    // When they go, their places are free again.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
}

#[tokio::test]
async fn without_a_broadcast_key_the_endpoint_is_not_served_even_to_loopback() {
    let (_server, addr, _) = start(ServerConfig::default()).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, subscribe("s")).await;
    next_json(&mut ws).await;
    let body = r#"{"stream":"all","data":"1"}"#;
    assert!(post_broadcast(addr, body, None).await.contains("404"));
    assert!(post_broadcast(addr, body, Some("any"))
        .await
        .contains("404"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), ws.next())
            .await
            .is_err(),
        "a broadcast got through"
    );
}

#[tokio::test]
async fn chunked_broadcast_requests_are_read() {
    let (_server, addr, _) = start(with_broadcast_key()).await;
    let (mut ws, _) = connect(addr, "", &[]).await;
    next_json(&mut ws).await;
    send(&mut ws, subscribe("s")).await;
    next_json(&mut ws).await;
    let body = r#"{"stream":"all","data":"{\"chunked\":true}"}"#;
    let (a, b) = body.split_at(10);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /_broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert_eq!(
        next_json(&mut ws).await["message"],
        serde_json::json!({"chunked":true})
    );
}

#[tokio::test]
async fn pubsub_and_turbo_streams_are_served_without_the_controller_and_whispers_skip_the_sender() {
    use anycable_core::auth::streams::{sign, StreamsConfig};
    let config = ServerConfig {
        streams: StreamsConfig {
            secret: Some(b"streams-secret".to_vec()),
            public: true,
            whisper: false,
            turbo_key: Some(b"turbo-key".to_vec()),
            presence: true,
        },
        ..Default::default()
    };
    let (server, addr, _controller) = start(config).await;
    let signed = serde_json::json!({"channel": "$pubsub", "signed_stream_name": sign("room", b"streams-secret")}).to_string();
    let forged =
        serde_json::json!({"channel": "$pubsub", "signed_stream_name": sign("room", b"other")})
            .to_string();
    let public = serde_json::json!({"channel": "$pubsub", "stream_name": "lobby"}).to_string();
    let turbo = serde_json::json!({"channel": "Turbo::StreamsChannel", "signed_stream_name": sign("t", b"turbo-key")}).to_string();

    let (mut a, _) = connect(addr, "", &[]).await;
    let (mut b, _) = connect(addr, "", &[]).await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    for (id, kind) in [
        (&signed, "confirm_subscription"),
        (&forged, "reject_subscription"),
        (&public, "confirm_subscription"),
        (&turbo, "confirm_subscription"),
    ] {
        send(&mut a, subscribe(id)).await;
        assert_eq!(
            next_json(&mut a).await,
            serde_json::json!({"identifier": id, "type": kind})
        );
    }
    send(&mut b, subscribe(&public)).await;
    assert_eq!(next_json(&mut b).await["type"], "confirm_subscription");

    server.hub().broadcast("room", r#"{"n":1}"#, None);
    assert_eq!(
        next_json(&mut a).await,
        serde_json::json!({"identifier": signed, "message": {"n": 1}})
    );
    server.hub().broadcast("t", r#""<turbo-stream>""#, None);
    assert_eq!(
        next_json(&mut a).await,
        serde_json::json!({"identifier": turbo, "message": "<turbo-stream>"})
    );

    // A whisper on the public stream reaches b, not a; on the signed one (whisper off) nobody.
    send(
        &mut a,
        serde_json::json!({"command": "whisper", "identifier": signed, "data": {"typing": 0}}),
    )
    .await;
    send(
        &mut a,
        serde_json::json!({"command": "whisper", "identifier": public, "data": {"typing": 1}}),
    )
    .await;
    assert_eq!(
        next_json(&mut b).await,
        serde_json::json!({"identifier": public, "message": {"typing": 1}})
    );

    // Unsubscribed: no more broadcasts on that stream.
    send(
        &mut a,
        serde_json::json!({"command": "unsubscribe", "identifier": signed}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.hub().broadcast("room", "1", None).sessions, 0);
    // The app's controller saw none of it: it subscribes every subscribe it gets to
    // "all", and nobody is on "all".
    assert_eq!(server.hub().broadcast("all", "1", None).sessions, 0);
}

/// Issue #24 (8, 17): one socket opened 1 200 subscriptions with 64 KB identifiers
/// (RSS +195 MiB) and whispered without bound. Now: at most `max_subscriptions`, no
/// identifier over `max_identifier_size`, at most `whispers_per_second`.
#[tokio::test]
async fn one_connection_holds_bounded_subscriptions_and_whispers_at_a_bounded_rate() {
    use anycable_core::auth::streams::StreamsConfig;
    let config = ServerConfig {
        streams: StreamsConfig {
            public: true,
            ..Default::default()
        },
        max_subscriptions: 3,
        max_identifier_size: 100,
        whispers_per_second: 5,
        ..Default::default()
    };
    let (_server, addr, _controller) = start(config).await;
    let room = |n: usize| {
        serde_json::json!({"channel": "$pubsub", "stream_name": format!("r{n}")}).to_string()
    };
    let (mut a, _) = connect(addr, "", &[]).await;
    let (mut b, _) = connect(addr, "", &[]).await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    for n in 0..4 {
        send(&mut a, subscribe(&room(n))).await;
        let kind = if n < 3 {
            "confirm_subscription"
        } else {
            "reject_subscription"
        };
        assert_eq!(
            next_json(&mut a).await,
            serde_json::json!({"identifier": room(n), "type": kind})
        );
    }
    // One of its own again is not a new one (the app's duplicate rule answers), and
    // a place freed by an unsubscribe is taken again.
    send(
        &mut a,
        serde_json::json!({"command": "unsubscribe", "identifier": room(2)}),
    )
    .await;
    send(&mut a, subscribe(&room(3))).await;
    assert_eq!(next_json(&mut a).await["type"], "confirm_subscription");
    // An app channel counts too.
    send(&mut a, subscribe(r#"{"channel":"A"}"#)).await;
    assert_eq!(next_json(&mut a).await["type"], "reject_subscription");

    let long =
        serde_json::json!({"channel": "$pubsub", "stream_name": "x".repeat(100)}).to_string();
    send(&mut b, subscribe(&long)).await;
    assert_eq!(
        next_json(&mut b).await,
        serde_json::json!({"identifier": long, "type": "reject_subscription"})
    );

    send(&mut b, subscribe(&room(0))).await;
    assert_eq!(next_json(&mut b).await["type"], "confirm_subscription");
    for n in 0..10 {
        send(
            &mut a,
            serde_json::json!({"command": "whisper", "identifier": room(0), "data": {"n": n}}),
        )
        .await;
    }
    for n in 0..5 {
        assert_eq!(
            next_json(&mut b).await["message"],
            serde_json::json!({"n": n})
        );
    }
    // The rest were dropped: the next thing b hears is the one after the window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(
        &mut a,
        serde_json::json!({"command": "whisper", "identifier": room(0), "data": {"n": "later"}}),
    )
    .await;
    assert_eq!(
        next_json(&mut b).await["message"],
        serde_json::json!({"n": "later"})
    );
}
