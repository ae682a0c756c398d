//! Durable Streams reads over real sockets, where the Ruby specs cannot reach well: an
//! SSE read kept alive through a quiet spell, and a reader told it is not up to date
//! while a burst is still queued for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anycable_core::auth::streams::StreamsConfig;
use anycable_core::broker::HistoryConfig;
use anycable_core::config::DsConfig;
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The reads here are public and skip auth: the app is never asked.
struct NoApp;

impl Controller for NoApp {
    async fn connect(&self, _req: ConnectRequest) -> ConnectReply {
        panic!("a DS read with skip_auth asked the app")
    }
    async fn command(&self, _req: CommandRequest) {}
    async fn disconnect(&self, _session: SessionRef) {}
}

async fn start(keepalive: Duration) -> (Server<NoApp>, SocketAddr) {
    let config = ServerConfig {
        history: Some(HistoryConfig {
            limit: 2000,
            ttl: Duration::from_secs(300),
            ..Default::default()
        }),
        streams: StreamsConfig {
            public: true,
            ..Default::default()
        },
        ds: Some(DsConfig {
            skip_auth: true,
            keepalive,
            ..Default::default()
        }),
        max_pending_bytes: 8 << 20,
        ..Default::default()
    };
    let server = Server::new(config, NoApp, Arc::new(Hub::new(None)));
    server.start().expect("no pub/sub to start");
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (server, addr)
}

/// A GET of `target`, sent.
async fn send(addr: SocketAddr, target: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// A GET of `target`, its head read; the socket is left at the body.
async fn get(addr: SocketAddr, target: &str) -> (TcpStream, String, Vec<u8>) {
    let mut tcp = send(addr, target).await;
    let mut buf = Vec::new();
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..at].to_vec()).unwrap();
            return (tcp, head, buf[at + 4..].to_vec());
        }
        read_some(&mut tcp, &mut buf).await;
    }
}

async fn read_some(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
        .await
        .expect("nothing came within 5 s")
        .unwrap();
    assert!(n > 0, "closed");
    buf.extend_from_slice(&chunk[..n]);
}

/// The next SSE block (up to a blank line): `("", ":")` for a comment.
async fn next_block(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf[..at].to_vec()).unwrap();
            buf.drain(..at + 2);
            if block == ":" {
                return (String::new(), block);
            }
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .collect();
            return (event.to_string(), data.join("\n"));
        }
        read_some(tcp, buf).await;
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| {
            l.split_once(": ")
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .map(|(_, v)| v)
}

#[tokio::test]
async fn a_quiet_sse_read_gets_comments_and_then_its_messages() {
    let (server, addr) = start(Duration::from_millis(200)).await;
    let (mut tcp, head, mut buf) = get(addr, "/ds/chat?offset=now&live=sse").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(next_block(&mut tcp, &mut buf).await.0, "control");
    // Quiet: a comment every 200 ms, which SSE readers skip.
    for _ in 0..2 {
        assert_eq!(
            next_block(&mut tcp, &mut buf).await,
            (String::new(), ":".into())
        );
    }
    server
        .broadcast("$public:chat", r#"{"n":1}"#, None)
        .unwrap();
    let mut got = next_block(&mut tcp, &mut buf).await;
    while got.0.is_empty() {
        got = next_block(&mut tcp, &mut buf).await;
    }
    assert_eq!(got, ("data".into(), r#"[{"n":1}]"#.into()));
    assert_eq!(next_block(&mut tcp, &mut buf).await.0, "control");
}

#[tokio::test]
async fn a_reader_behind_a_queued_burst_is_not_told_it_is_up_to_date() {
    let (server, addr) = start(Duration::from_secs(60)).await;
    let burst = |server: &Server<NoApp>| {
        // No await: the whole burst is queued before the read takes any of it.
        for n in 1..=1000 {
            server
                .broadcast("$public:chat", &format!(r#"{{"n":{n}}}"#), None)
                .unwrap();
        }
    };

    // SSE: the controls say up to date only once the reader has everything.
    let (mut tcp, _, mut buf) = get(addr, "/ds/chat?offset=now&live=sse").await;
    assert_eq!(next_block(&mut tcp, &mut buf).await.0, "control");
    burst(&server);
    let (mut seen, mut behind) = (0, 0);
    while seen < 1000 {
        let (event, data) = next_block(&mut tcp, &mut buf).await;
        let data: Value = serde_json::from_str(&data).unwrap();
        match event.as_str() {
            "data" => seen += data.as_array().unwrap().len(),
            "control" if seen < 1000 => {
                assert_eq!(data.get("upToDate"), None, "up to date at {seen} of 1000");
                behind += 1;
            }
            _ => assert_eq!(data["upToDate"], true),
        }
    }
    assert!(behind > 0);
    let (event, data) = next_block(&mut tcp, &mut buf).await;
    assert_eq!(event, "control");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["upToDate"],
        true
    );

    // Long-poll: the answer holds a batch, not up to date; a catch-up gets the rest.
    let mut tcp = send(addr, "/ds/chat?offset=now&live=long-poll").await;
    // Joined (the SSE read above is still open: two sessions), then the burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.session_count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll did not join"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    burst(&server);
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(head, "Stream-Up-To-Date"), None);
    let taken = serde_json::from_str::<Value>(body)
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert!(taken < 1000, "{taken}");
    let next = header(head, "Stream-Next-Offset").unwrap();
    let (mut tcp, head, mut rest) = get(addr, &format!("/ds/chat?offset={next}")).await;
    tcp.read_to_end(&mut rest).await.unwrap();
    assert_eq!(header(&head, "Stream-Up-To-Date"), Some("true"));
    let more = serde_json::from_slice::<Value>(&rest)
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(taken + more, 1000);
}
