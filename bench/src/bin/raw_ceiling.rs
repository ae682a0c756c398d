//! The raw ceiling: a fan-out server on tokio-tungstenite alone — no anycable-core, no
//! Ruby — that speaks just enough of the Action Cable protocol for the load tool:
//! welcome; subscribe → confirm and stream "all"; `echo` → transmit the data back;
//! `broadcast` → send the data to every subscriber, then transmit it to the sender.
//! What any WebSocket server on this machine could do at best.
//!
//!     anycable-raw-ceiling 127.0.0.1:4000

#[path = "../server_args.rs"]
mod server_args;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const SUBPROTOCOL: &str = "actioncable-v1-json";

/// Who streams "all": connection id → (identifier, outbox).
type Subscribers = RwLock<HashMap<u64, (String, mpsc::UnboundedSender<Message>)>>;

/// `{"identifier":…,"message":<data>}`; `data` is the client's JSON text, verbatim.
fn frame(identifier: &str, data: &str) -> Message {
    let id = serde_json::to_string(identifier).unwrap_or_default();
    Message::Text(Utf8Bytes::from(format!(
        "{{\"identifier\":{id},\"message\":{data}}}"
    )))
}

fn broadcast(subs: &Subscribers, data: &str) {
    let subs = subs.read().unwrap();
    // Encoded once per identifier; the frames share one buffer per identifier.
    let mut frames: HashMap<&str, Message> = HashMap::new();
    for (identifier, tx) in subs.values() {
        let msg = frames
            .entry(identifier.as_str())
            .or_insert_with(|| frame(identifier, data))
            .clone();
        let _ = tx.send(msg);
    }
}

async fn serve(stream: TcpStream, id: u64, subs: Arc<Subscribers>) {
    let _ = stream.set_nodelay(true);
    #[allow(clippy::result_large_err)] // the error type is tungstenite's callback contract
    let choose = |req: &Request, mut resp: Response| {
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if offered {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    // tungstenite's default read buffer is 128 KiB per connection; 4 KiB holds any
    // Action Cable command here and keeps the memory figure about the server.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(Message::Text(Utf8Bytes::from_static(
        r#"{"type":"welcome"}"#,
    )));

    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        let Ok(cmd) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let identifier = cmd["identifier"].as_str().unwrap_or("").to_string();
        match cmd["command"].as_str() {
            Some("subscribe") => {
                let confirm =
                    serde_json::json!({"identifier": identifier, "type": "confirm_subscription"});
                let _ = tx.send(Message::Text(Utf8Bytes::from(confirm.to_string())));
                subs.write().unwrap().insert(id, (identifier, tx.clone()));
            }
            Some("unsubscribe") => {
                subs.write().unwrap().remove(&id);
            }
            Some("message") => {
                let data = cmd["data"].as_str().unwrap_or("{}");
                let action = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|d| d["action"].as_str().map(str::to_string));
                if action.as_deref() == Some("broadcast") {
                    broadcast(&subs, data);
                }
                let _ = tx.send(frame(&identifier, data));
            }
            _ => {}
        }
    }
    subs.write().unwrap().remove(&id);
    drop(tx);
    let _ = writer.await;
}

fn main() {
    let (addr, rt) = server_args::addr_and_runtime();
    rt.block_on(async {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        println!("raw ceiling server on {}", listener.local_addr().unwrap());
        let subs: Arc<Subscribers> = Arc::new(RwLock::new(HashMap::new()));
        let next = AtomicU64::new(1);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let id = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(stream, id, subs.clone()));
        }
    });
}
