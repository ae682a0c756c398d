//! Hostile clients against a server running in this process: raw bytes after a valid
//! WebSocket upgrade, or any request instead (a near-valid head, a broadcast `POST`
//! with a broken body). Whatever a client sends, the server answers with well-formed
//! HTTP and frames, ends the connection once the client is gone (with one
//! `disconnect` call per upgrade), and keeps serving everyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anycable_core::protocol;
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{contextualize_config, TestCaseError, TestRunner};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// Counts connects and disconnects; echoes `message` data as a broadcast frame (JSON
/// whatever the data is).
#[derive(Clone, Default)]
struct EchoController {
    connects: Arc<AtomicUsize>,
    disconnects: Arc<AtomicUsize>,
}

impl Controller for EchoController {
    async fn connect(&self, _req: ConnectRequest) -> ConnectReply {
        self.connects.fetch_add(1, Ordering::SeqCst);
        ConnectReply::Accepted
    }

    async fn command(&self, req: CommandRequest) {
        if let Some(data) = &req.command.data {
            let frame = protocol::broadcast_frame(&req.command.identifier, data);
            req.session.send_frame(frame);
        }
    }

    async fn disconnect(&self, _session: SessionRef) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
enum Length {
    /// The payload's length, in the shortest form.
    True,
    /// The payload's length in the 16- or 64-bit form.
    Wide(bool),
    /// Any length, whatever follows.
    Lie(u64),
}

#[derive(Debug, Clone)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    length: Length,
    payload: Vec<u8>,
}

impl RawFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 15));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let (len, wide) = match self.length {
            Length::True => (self.payload.len() as u64, None),
            Length::Wide(long) => (self.payload.len() as u64, Some(long)),
            Length::Lie(n) => (n, None),
        };
        match wide {
            None if len < 126 => out.push(mask_bit | len as u8),
            None if len <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Some(false) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
    }
}

#[derive(Debug, Clone)]
enum Chunk {
    Frame(RawFrame),
    Noise(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// Half-close: the server must end the connection on its own.
    Eof,
    /// A proper close frame, then half-close.
    Close,
    /// Drop the socket without reading what the server sent.
    Drop,
}

fn raw_frame() -> impl Strategy<Value = RawFrame> {
    let payload = prop_oneof![
        3 => prop::sample::select(vec![
            r#"{"command":"message","identifier":"x","data":"{\"n\":1}"}"#,
            r#"{"command":"subscribe","identifier":"{\"channel\":\"A\"}"}"#,
            r#"{"command":"message","identifier":"x","data":"not json"}"#,
            r#"{"command":"message","identifier":"x","#,
            r#"{"command":"dance"}"#,
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec![
            vec![0xff, 0xfe],
            vec![0xed, 0xa0, 0x80],
            vec![0xe2, 0x82],
            vec![0x03, 0xe8],
            vec![0x03, 0xed, b'b', b'y', b'e'],
            vec![0x03],
            vec![0x0b, 0xb8, 0xff],
        ]),
        1 => (126usize..4000).prop_map(|n| {
            format!(r#"{{"command":"message","identifier":"x","data":"\"{}\""}}"#, "a".repeat(n))
                .into_bytes()
        }),
    ];
    // Text, continuation, binary, close, ping, pong, and the reserved ones.
    let opcode = prop_oneof![
        3 => Just(1u8),
        2 => Just(0),
        2 => Just(2),
        1 => Just(8),
        2 => Just(9),
        1 => Just(10),
        1 => 0u8..16,
    ];
    let length = prop_oneof![
        6 => Just(Length::True),
        1 => any::<bool>().prop_map(Length::Wide),
        1 => prop_oneof![
            0u64..300,
            1_040_000u64..1_060_000,
            Just(u64::MAX),
            (1u64 << 63)..u64::MAX,
        ]
        .prop_map(Length::Lie),
    ];
    (
        prop::bool::weighted(0.8),
        prop_oneof![6 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop_oneof![6 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)],
        length,
        payload,
    )
        .prop_map(|(fin, rsv, opcode, mask, length, payload)| RawFrame {
            fin,
            rsv,
            opcode,
            mask,
            length,
            payload,
        })
}

/// A masked, final, unreserved frame.
fn good(opcode: u8, payload: &[u8], key: [u8; 4]) -> RawFrame {
    RawFrame {
        fin: true,
        rsv: 0,
        opcode,
        mask: Some(key),
        length: Length::True,
        payload: payload.to_vec(),
    }
}

/// Frames a well-behaved client sends: commands (whole or in fragments), pings, pongs.
fn well_formed() -> impl Strategy<Value = Vec<RawFrame>> {
    let command = prop::sample::select(vec![
        r#"{"command":"message","identifier":"x","data":"{\"n\":1}"}"#,
        r#"{"command":"subscribe","identifier":"{\"channel\":\"A\"}"}"#,
        r#"{"command":"message","identifier":"x","data":"caf\u00e9 \ud83d\ude00"}"#,
    ]);
    prop_oneof![
        4 => (command.clone(), any::<[u8; 4]>()).prop_map(|(c, k)| vec![good(1, c.as_bytes(), k)]),
        2 => (command, any::<prop::sample::Index>(), any::<[u8; 4]>()).prop_map(|(c, at, k)| {
            let (a, b) = c.as_bytes().split_at(at.index(c.len()));
            vec![RawFrame { fin: false, ..good(1, a, k) }, good(0, b, k)]
        }),
        1 => (prop::collection::vec(any::<u8>(), 0..126), any::<[u8; 4]>())
            .prop_map(|(p, k)| vec![good(9, &p, k)]),
        1 => (prop::collection::vec(any::<u8>(), 0..126), any::<[u8; 4]>())
            .prop_map(|(p, k)| vec![good(10, &p, k)]),
    ]
}

/// A few well-formed frames, then anything.
fn chunks() -> impl Strategy<Value = Vec<Chunk>> {
    let chunk = prop_oneof![
        6 => raw_frame().prop_map(Chunk::Frame),
        1 => prop::collection::vec(any::<u8>(), 1..32).prop_map(Chunk::Noise),
    ];
    (
        prop::collection::vec(well_formed(), 0..3),
        prop::collection::vec(chunk, 0..8),
    )
        .prop_map(|(good, hostile)| {
            good.into_iter()
                .flatten()
                .map(Chunk::Frame)
                .chain(hostile)
                .collect()
        })
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::Eof), Just(End::Close), Just(End::Drop)]
}

/// How a hostile client opens its connection.
#[derive(Debug, Clone)]
enum Opening {
    /// A valid upgrade, then these frames.
    Upgrade(Vec<Chunk>),
    /// These bytes instead of a valid upgrade, then half-close.
    Request(Text),
}

/// Bytes that are mostly text, shown as such when a case fails.
#[derive(Clone)]
struct Text(Vec<u8>);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn opening() -> impl Strategy<Value = Opening> {
    prop_oneof![
        4 => chunks().prop_map(Opening::Upgrade),
        1 => heads::near_valid().prop_map(|b| Opening::Request(Text(b))),
        2 => broadcast_request().prop_map(|b| Opening::Request(Text(b))),
    ]
}

/// `POST /_broadcast` with a body by Content-Length or in chunks, either of which may
/// lie about sizes.
fn broadcast_request() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        3 => broadcasts::near_valid().prop_map(|f| f.render(false)),
        1 => json_value().prop_map(|v| v.to_string()),
    ];
    let size = prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec![
            "FFFFFFFFFFFFFFFF",
            "FFFFFFFFFFFFFFFE",
            "10000000000000000",
            "100001",
            "-1",
            "",
            "zz",
            "1;ext=1",
            " 5 ",
        ])
        .prop_map(Some),
    ];
    let cuts = prop::collection::vec((any::<prop::sample::Index>(), size), 0..4);
    let length = prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(vec!["abc", "-1", "99999999999999999999", "2000000", "0", "5"])
            .prop_map(Some),
    ];
    let last = prop::sample::select(vec!["0\r\n\r\n", "0\r\nX-Trailer: 1\r\n\r\n", "0\r\n", ""]);
    (payload, any::<bool>(), cuts, length, last).prop_map(
        |(payload, chunked, cuts, length, last)| {
            let body = payload.as_bytes();
            let mut out = b"POST /_broadcast HTTP/1.1\r\nHost: x\r\n".to_vec();
            if !chunked {
                let length = length.map_or_else(|| body.len().to_string(), String::from);
                out.extend_from_slice(format!("Content-Length: {length}\r\n\r\n").as_bytes());
                out.extend_from_slice(body);
                return out;
            }
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut points: Vec<usize> = cuts
                .iter()
                .map(|(at, _)| at.index(body.len() + 1))
                .collect();
            points.sort_unstable();
            points.push(body.len());
            let sizes = cuts.into_iter().map(|(_, size)| size).chain([None]);
            let mut start = 0;
            for (end, size) in points.into_iter().zip(sizes) {
                let piece = &body[start..end];
                start = end;
                let size = size.map_or_else(|| format!("{:x}", piece.len()), String::from);
                out.extend_from_slice(format!("{size}\r\n").as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(last.as_bytes());
            out
        },
    )
}

const UPGRADE: &str =
    "GET /cable HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Checks what the server wrote: whole, unmasked frames, JSON text first (the welcome),
/// nothing after a close. `clean` is false when the read ended in a reset, which may
/// cut the last frame.
fn check_server_bytes(mut bytes: &[u8], clean: bool) -> Result<(), String> {
    let mut first = true;
    let mut closed = false;
    while !bytes.is_empty() {
        let Some((fin, opcode, payload, rest)) = split_frame(bytes)? else {
            return if clean {
                Err("a cut frame".into())
            } else {
                Ok(())
            };
        };
        bytes = rest;
        if closed {
            return Err("a frame after close".into());
        }
        if !fin {
            return Err("a fragmented frame".into());
        }
        match opcode {
            1 => {
                let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
                let value: Value =
                    serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?;
                if first && value["type"] != "welcome" {
                    return Err(format!("first frame is not the welcome: {text}"));
                }
            }
            8 => {
                closed = true;
                if let Some(code) = payload.get(..2) {
                    let code = u16::from_be_bytes([code[0], code[1]]);
                    let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                    if !valid || std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(format!("bad close payload {payload:?}"));
                    }
                } else if payload.len() == 1 {
                    return Err("one-byte close payload".into());
                }
            }
            10 if payload.len() <= 125 => {}
            _ => return Err(format!("unexpected opcode {opcode}")),
        }
        if first && opcode != 1 {
            return Err("first frame is not the welcome".into());
        }
        first = false;
    }
    Ok(())
}

type Split<'a> = Option<(bool, u8, &'a [u8], &'a [u8])>;

fn split_frame(bytes: &[u8]) -> Result<Split<'_>, String> {
    let [b0, b1, rest @ ..] = bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return Err(format!("reserved bits or mask set: {b0:#x} {b1:#x}"));
    }
    let (len, rest) = match b1 & 0x7f {
        126 if rest.len() >= 2 => (u16::from_be_bytes([rest[0], rest[1]]) as usize, &rest[2..]),
        127 if rest.len() >= 8 => {
            let len = u64::from_be_bytes(rest[..8].try_into().unwrap());
            (usize::try_from(len).map_err(|_| "huge length")?, &rest[8..])
        }
        126 | 127 => return Ok(None),
        n => (n as usize, rest),
    };
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some((
        b0 & 0x80 != 0,
        b0 & 0x0f,
        &rest[..len],
        &rest[len..],
    )))
}

/// Checks the server's answer to a request that was not a valid upgrade: HTTP, unless
/// the read ended in a reset; frames after a `101`. Returns whether it upgraded.
fn check_answer(answer: &[u8], clean: bool) -> Result<bool, String> {
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse::<u16>().ok());
    let Some(status) = status else {
        if clean || !b"HTTP/1.1 ".starts_with(&answer[..answer.len().min(9)]) {
            return Err(format!("not HTTP: {:?}", String::from_utf8_lossy(answer)));
        }
        return Ok(false);
    };
    if status != 101 {
        return Ok(false);
    }
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("a cut 101")?;
    check_server_bytes(&answer[head_end + 4..], clean)?;
    Ok(true)
}

/// Writes `bytes` and half-closes; returns what the server sent back and whether the
/// read ended cleanly.
async fn plain_client(addr: SocketAddr, bytes: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let clean = rd.read_to_end(&mut out).await.is_ok();
        (out, clean)
    });
    // The server may answer and close before reading everything.
    let _ = wr.write_all(bytes).await;
    let _ = wr.shutdown().await;
    let read = reader.await.map_err(|e| e.to_string())?;
    drop(wr);
    Ok(read)
}

/// Writes `bytes` as a raw client after a valid upgrade, then ends as `end` says; returns
/// what the server sent back and whether the read ended cleanly.
async fn hostile_client(
    addr: SocketAddr,
    bytes: &[u8],
    piece: usize,
    end: End,
) -> Result<Option<(Vec<u8>, bool)>, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(UPGRADE.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if tcp.read_buf(&mut got).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed during the handshake".into());
        }
    };
    if !got.starts_with(b"HTTP/1.1 101 ") {
        return Err(format!("no 101: {:?}", String::from_utf8_lossy(&got)));
    }
    let early = got.split_off(head_end);
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut out = early;
        let clean = rd.read_to_end(&mut out).await.is_ok();
        (out, clean)
    });
    // The server may close first (a protocol error); writes after that may fail.
    for piece in bytes.chunks(piece.max(1)) {
        if wr.write_all(piece).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    if let End::Close = end {
        let mut close = Vec::new();
        good(8, &[0x03, 0xe8], [1, 2, 3, 4]).encode(&mut close);
        let _ = wr.write_all(&close).await;
    }
    if let End::Drop = end {
        reader.abort();
        return Ok(None);
    }
    let _ = wr.shutdown().await;
    let read = reader.await.map_err(|e| e.to_string())?;
    drop(wr);
    Ok(Some(read))
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn client(addr: SocketAddr) -> Result<Client, String> {
    let req = format!("ws://{addr}/cable").into_client_request().unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let welcome = next_reply(&mut ws).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected a welcome, got {welcome}"));
    }
    Ok(ws)
}

/// The next frame that is not a ping.
async fn next_reply(ws: &mut Client) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] != "ping" {
                    return Ok(v);
                }
            }
            Some(Ok(_)) => {}
            other => return Err(format!("connection ended: {other:?}")),
        }
    }
}

/// Sends a `message` command and expects its echo.
async fn echo(ws: &mut Client, n: usize) -> Result<(), String> {
    let command = serde_json::json!({"command":"message","identifier":"x","data":n.to_string()});
    ws.send(Message::Text(command.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let reply = next_reply(ws).await?;
    if reply["message"] != n {
        return Err(format!("expected echo {n}, got {reply}"));
    }
    Ok(())
}

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn raw_frames_do_not_hurt_the_server() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("fuzz-server") {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fuzz-server")
        .enable_all()
        .build()
        .unwrap();
    let controller = EchoController::default();
    let server_config = ServerConfig {
        max_message_size: 1024,
        ping_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (server, addr, witness) = rt.block_on(async {
        let server = Server::new(server_config, controller.clone(), Arc::new(Hub::new(None)));
        server.start().expect("no pub/sub to start");
        let addr = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let witness = client(addr).await.unwrap();
        (server, addr, witness)
    });

    // Held across awaits inside `block_on`, hence an async mutex.
    let witness = tokio::sync::Mutex::new(witness);
    let mut runner = TestRunner::new(contextualize_config(config(SERVER_CASES)));
    let strategy = (opening(), prop_oneof![Just(usize::MAX), 1usize..64], end());
    let result = runner.run(&strategy, |(opening, piece, end)| {
        // Counts before the case: one that fails leaves the next ones to judge on their own,
        // so shrinking finds the input that did it.
        let connects = controller.connects.load(Ordering::SeqCst);
        let disconnects = controller.disconnects.load(Ordering::SeqCst);
        let sessions = server.session_count();
        let panics = SERVER_PANICS.load(Ordering::SeqCst);
        // Where a case that hangs was (a 10 s hang seen once in a full run, 2026-12-06,
        // not reproduced since: the next one says where).
        let stage = std::cell::Cell::new("the hostile client");
        let case = async {
            // Upgrades the hostile client got.
            let upgraded = match &opening {
                Opening::Upgrade(chunks) => {
                    let mut bytes = Vec::new();
                    for chunk in chunks {
                        match chunk {
                            Chunk::Frame(frame) => frame.encode(&mut bytes),
                            Chunk::Noise(noise) => bytes.extend_from_slice(noise),
                        }
                    }
                    if let Some((sent, clean)) = hostile_client(addr, &bytes, piece, end).await? {
                        check_server_bytes(&sent, clean)?;
                    }
                    1
                }
                Opening::Request(bytes) => {
                    let (answer, clean) = plain_client(addr, &bytes.0).await?;
                    usize::from(check_answer(&answer, clean)?)
                }
            };
            // A new client and the one connected all along are both served.
            stage.set("a fresh client's echo");
            let mut fresh = client(addr).await?;
            echo(&mut fresh, connects).await?;
            stage.set("the witness's echo");
            echo(&mut *witness.lock().await, connects).await?;
            stage.set("the fresh client's close");
            let _ = fresh.close(None).await;
            while fresh.next().await.is_some() {}
            stage.set("connects and disconnects to add up");
            // Every upgraded socket (the fresh one, and the hostile one if it got a 101)
            // reached `connect`, is gone, and got exactly one `disconnect`.
            let upgrades = upgraded + 1;
            loop {
                let c = controller.connects.load(Ordering::SeqCst) - connects;
                let d = controller.disconnects.load(Ordering::SeqCst) - disconnects;
                if c == upgrades && d == upgrades && server.session_count() == sessions {
                    break;
                }
                if c > upgrades || d > upgrades {
                    return Err(format!(
                        "{c} connects, {d} disconnects for {upgrades} upgrades"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, String>(())
        };
        let outcome =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), case).await });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(TestCaseError::fail(e)),
            Err(_) => {
                return Err(TestCaseError::fail(format!(
                    "case took over 10 s, waiting for {} ({} sessions, {} connects, {} \
                     disconnects since it began)",
                    stage.get(),
                    server.session_count(),
                    controller.connects.load(Ordering::SeqCst) - connects,
                    controller.disconnects.load(Ordering::SeqCst) - disconnects,
                )))
            }
        }
        prop_assert_eq!(
            SERVER_PANICS.load(Ordering::SeqCst),
            panics,
            "a server task panicked"
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
