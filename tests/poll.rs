//! Long-polling sessions over real sockets, at their edges: a poll held when the
//! session is cut, the server shutting down, a backlog past its bound, MAX_CONN,
//! and polls that pile up behind a running command. (The protocol as the JS
//! transport speaks it: spec/js/long_polling.test.mjs; through Puma:
//! spec/integration/long_polling_spec.rb.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anycable_core::config::PollConfig;
use anycable_core::protocol::Command;
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Identifies a session by `?user=` in its first request; subscribes to "all";
/// a message whose data says "slow" takes 300 ms ("slowest": 1 s); counts disconnects.
#[derive(Clone, Default)]
struct App {
    hub: Arc<Mutex<Option<Arc<Hub>>>>,
    disconnects: Arc<Mutex<usize>>,
}

impl Controller for App {
    async fn connect(&self, req: ConnectRequest) -> ConnectReply {
        let user = req.head.target.split("user=").nth(1).unwrap_or("anyone");
        req.session.set_identifiers(json!({ "user": user }));
        ConnectReply::Accepted
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
                let data = command.data.unwrap_or_default();
                if data.contains("slowest") {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                } else if data.contains("slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                session.transmit(json!({ "identifier": id, "message": data }).to_string());
            }
            _ => {}
        }
    }

    async fn disconnect(&self, _session: SessionRef) {
        *self.disconnects.lock() += 1;
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        poll: Some(PollConfig {
            interval: Duration::from_secs(3),
            flush_interval: Duration::from_millis(50),
            keepalive_timeout: Duration::from_millis(500),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn start(config: ServerConfig) -> (Server<App>, SocketAddr, App) {
    let app = App::default();
    let hub = Arc::new(Hub::new(None));
    *app.hub.lock() = Some(hub.clone());
    let server = Server::new(config, app.clone(), hub);
    server.start().expect("no pub/sub to start");
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (server, addr, app)
}

/// An answer: its status, session id header and JSON lines.
#[derive(Debug)]
struct Answer {
    status: u16,
    id: Option<String>,
    lines: Vec<Value>,
}

/// POSTs `lines` to `/lp<query>` as session `id` (a new one without), and reads the
/// answer (the server closes the connection after it).
async fn post(addr: SocketAddr, query: &str, id: Option<&str>, lines: &[Value]) -> Answer {
    let body: Vec<String> = lines.iter().map(Value::to_string).collect();
    let body = body.join("\n");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let id_header = id.map_or(String::new(), |id| format!("X-Anycable-Poll-ID: {id}\r\n"));
    let request = format!(
        "POST /lp{query} HTTP/1.1\r\nHost: x\r\n{id_header}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("no answer within 10 s");
    // A refusal may come before the request is read: a reset after it is no error.
    assert!(read.is_ok() || !raw.is_empty(), "{read:?}");
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        id: head
            .lines()
            .find_map(|l| l.strip_prefix("X-Anycable-Poll-ID: ").map(str::to_string)),
        // (A refusal's body is plain text: no lines.)
        lines: body
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    }
}

const CHAT: &str = r#"{"channel":"ChatChannel"}"#;

/// A session subscribed to "all": its id.
async fn open(addr: SocketAddr, user: &str) -> String {
    let subscribe = json!({"command": "subscribe", "identifier": CHAT});
    let answer = post(addr, &format!("?user={user}"), None, &[subscribe]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let types: Vec<&str> = answer
        .lines
        .iter()
        .map(|l| l["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["welcome", "confirm_subscription"]);
    answer.id.unwrap()
}

/// A poll of session `id` sent now and answered later.
fn poll(addr: SocketAddr, id: &str) -> tokio::task::JoinHandle<(Answer, Duration)> {
    let id = id.to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        (post(addr, "", Some(&id), &[]).await, started.elapsed())
    })
}

fn disconnect(reason: &str, reconnect: bool) -> Value {
    json!({"type": "disconnect", "reason": reason, "reconnect": reconnect})
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_poll_held_when_its_session_is_cut_gets_the_last_words_at_once() {
    let (server, addr, app) = start(config()).await;
    let id = open(addr, "u1").await;
    let held = poll(addr, &id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A remote disconnect (the app's `ActionCable.server.remote_connections…`).
    let payload = json!({"command": "disconnect",
        "payload": {"identifier": json!({"user": "u1"}).to_string(), "reconnect": false}});
    server.apply_broadcast(&payload.to_string()).unwrap();
    let (answer, after) = held.await.unwrap();
    assert_eq!(answer.lines, [disconnect("remote", false)]);
    assert!(after < Duration::from_secs(2), "{after:?}");
    wait_for(|| *app.disconnects.lock() == 1).await;
    let gone = post(addr, "", Some(&id), &[]).await;
    assert_eq!(
        (gone.status, gone.lines),
        (401, vec![disconnect("session_expired", true)])
    );
    let stale = server.metrics_text().lines().find_map(|l| {
        l.strip_prefix("anycable_go_longpoll_stale_requests_total ")
            .map(str::to_string)
    });
    assert!(stale.is_some_and(|n| n.parse::<u64>().unwrap() >= 1));
}

#[tokio::test]
async fn shutdown_answers_a_held_poll_at_once_and_runs_the_disconnect() {
    let (server, addr, app) = start(config()).await;
    let id = open(addr, "u1").await;
    let held = poll(addr, &id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.shutdown(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let (answer, _) = held.await.unwrap();
    assert_eq!(answer.lines, [disconnect("server_restart", true)]);
    assert_eq!(*app.disconnects.lock(), 1);
}

#[tokio::test]
async fn a_backlog_past_max_pending_bytes_cuts_the_session_as_too_slow() {
    let mut config = ServerConfig {
        max_pending_bytes: 16384,
        ..config()
    };
    // Not cut for coming back late: for what waits for it.
    config.poll.as_mut().unwrap().keepalive_timeout = Duration::from_secs(10);
    let (server, addr, app) = start(config).await;
    let id = open(addr, "u1").await;
    let slow = open(addr, "u2").await;
    // Session `id` polls as the JS transport does; `slow` does not come back.
    let id2 = id.clone();
    let keeping_up = tokio::spawn(async move {
        let mut got = 0;
        while got < 100 {
            let answer = post(addr, "", Some(&id2), &[]).await;
            assert!(matches!(answer.status, 200 | 204), "{answer:?}");
            got += answer.lines.len();
        }
        got
    });
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..10 {
            server.broadcast("all", &data, None).unwrap();
        }
    }
    assert_eq!(keeping_up.await.unwrap(), 100);
    // About 25 KB waited for `slow`: cut, and its app's disconnect ran.
    wait_for(|| *app.disconnects.lock() == 1).await;
    let cut = post(addr, "", Some(&slow), &[]).await;
    assert_eq!(cut.status, 401);
}

#[tokio::test]
async fn max_conn_counts_sessions_and_lets_their_polls_in() {
    let config = ServerConfig {
        max_conn: 1,
        ..config()
    };
    let (server, addr, _) = start(config).await;
    let id = open(addr, "u1").await;
    let refused = post(addr, "?user=u2", None, &[]).await;
    assert_eq!(refused.status, 503);
    // The open session's own polls are not new connections to refuse.
    for n in 0..3 {
        let echo = json!({"command": "message", "identifier": CHAT, "data": n.to_string()});
        let answer = post(addr, "", Some(&id), &[echo]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // Once it is gone (its keepalive timeout passed), another may open.
    wait_for(|| server.session_count() == 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    open(addr, "u2").await;
}

#[tokio::test]
async fn polls_while_a_command_runs_lose_no_command_and_pile_up_only_so_far() {
    // Bodies of at most 100 bytes: four requests' worth of commands is 400 bytes.
    let mut config = config();
    config.poll.as_mut().unwrap().max_request_size = 100;
    let (_server, addr, _) = start(config).await;
    let id = open(addr, "u1").await;
    let slow = json!({"command": "message", "identifier": CHAT, "data": "slowest"});
    let id2 = id.clone();
    let first = tokio::spawn(async move { post(addr, "", Some(&id2), &[slow]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While the action runs (1 s): 12 requests, each with a command of ~75 bytes.
    let mut piled = Vec::new();
    for n in 0..12 {
        let echo = json!({"command": "message", "identifier": CHAT, "data": n.to_string()});
        let id = id.clone();
        piled.push(tokio::spawn(async move {
            post(addr, "", Some(&id), &[echo]).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = vec![first.await.unwrap()];
    for p in piled {
        answers.push(p.await.unwrap());
    }
    // Each is answered: 200 or 204 (its command taken), or 429 (refused, not dropped).
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert!(
        answers.iter().all(|a| matches!(a.status, 200 | 204 | 429)),
        "{answers:?}"
    );
    assert!(refused > 0, "nothing was refused: the queue is unbounded");
    // Every command taken gets its reply, once, in order.
    let mut replies: Vec<Value> = answers.iter().flat_map(|a| a.lines.clone()).collect();
    let want = 1 + 12 - refused;
    let deadline = Instant::now() + Duration::from_secs(10);
    while replies.len() < want {
        assert!(Instant::now() < deadline, "replies lost: {replies:?}");
        let more = post(addr, "", Some(&id), &[]).await;
        assert!(matches!(more.status, 200 | 204), "{more:?}");
        replies.extend(more.lines);
    }
    assert_eq!(replies.len(), want, "{replies:?}");
    assert_eq!(replies[0]["message"], "slowest");
    let echoed: Vec<u64> = replies[1..]
        .iter()
        .map(|r| r["message"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(echoed.windows(2).all(|w| w[0] < w[1]), "{echoed:?}");
}

#[tokio::test]
async fn what_comes_while_a_command_runs_answers_the_held_poll_on_time() {
    let (server, addr, _) = start(config()).await;
    let id = open(addr, "u1").await;
    // An action that streams as it works (an LLM's tokens): its request is held, and
    // what it broadcasts answers it before the action is done.
    let slowest = json!({"command": "message", "identifier": CHAT, "data": "slowest"});
    let id2 = id.clone();
    let started = Instant::now();
    let held = tokio::spawn(async move { post(addr, "", Some(&id2), &[slowest]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.broadcast("all", r#"{"token":"Hel"}"#, None).unwrap();
    let answer = held.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.lines,
        [json!({"identifier": CHAT, "message": {"token": "Hel"}})]
    );
    // The action's own reply comes with the next poll.
    let next = post(addr, "", Some(&id), &[]).await;
    assert_eq!(
        next.lines,
        [json!({"identifier": CHAT, "message": "slowest"})]
    );
}

#[tokio::test]
async fn a_held_poll_its_client_closed_is_not_answered_and_loses_nothing() {
    let (server, addr, _) = start(config()).await;
    let id = open(addr, "u1").await;
    // A held poll the client gives up on (the JS transport aborts one to send).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /lp HTTP/1.1\r\nHost: x\r\nX-Anycable-Poll-ID: {id}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What comes then waits for the next request instead of going to the closed one.
    server.broadcast("all", r#"{"n":1}"#, None).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = post(addr, "", Some(&id), &[]).await;
    assert_eq!(
        next.lines,
        [json!({"identifier": CHAT, "message": {"n": 1}})]
    );
}
