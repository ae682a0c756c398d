//! The reconnect storm (issue #22): `--clients` clients connected and subscribed to
//! one server; the server restarts (bench/storm.rb stops and starts it once this tool
//! prints `READY`); every client reconnects on its own as soon as its socket closes,
//! trying again every 100–200 ms while the port refuses, at most `--concurrency`
//! handshakes at once. With the extended protocol it asks to restore its session
//! (`sid=` from its welcome); a restored welcome needs no subscribe, and the client
//! asks its history as `@anycable/web` does (since its last ping, and from the
//! position of the one broadcast, probe 0, every client received before the restart).
//!
//! Measured from the first successful TCP connect after the restart (the server
//! accepting again): when each client is back (welcome and subscription, or a
//! restored welcome), and when it first receives a probe — a broadcast POSTed to
//! `--probe` every `--interval-ms` (100 by default) from then on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::Message;

use crate::{identifier, percentiles, wait_for, ws_request, Opts, Ws};

const EXT: &str = "actioncable-v1-ext-json";

struct Shared {
    /// The first TCP connect that succeeded after a client lost its socket.
    accepting: OnceLock<Instant>,
    closed: AtomicUsize,
    receiving: AtomicUsize,
    handshakes: Semaphore,
}

#[derive(Default)]
struct Outcome {
    back: Option<Instant>,
    receiving: Option<Instant>,
    restored: bool,
    error: Option<String>,
}

/// TCP, WebSocket handshake, welcome: (socket, welcome), or why not. `tcp_ok` is
/// called once the TCP connect succeeded.
async fn dial(o: &Opts, url: &str, tcp_ok: impl FnOnce()) -> Result<(Ws, Value), String> {
    let req = ws_request(o, url)?;
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or("url without host")?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(host))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tcp_ok();
    tcp.set_nodelay(true).ok();
    let (mut ws, _) = client_async(req, tcp).await.map_err(|e| e.to_string())?;
    let welcome = wait_for(&mut ws, |v| {
        v["type"] == "welcome" || v["type"] == "disconnect"
    })
    .await?;
    if welcome["type"] != "welcome" {
        return Err(format!("refused: {welcome}"));
    }
    Ok((ws, welcome))
}

async fn subscribe(o: &Opts, ws: &mut Ws) -> Result<(), String> {
    ws.send(Message::Text(
        json!({"command":"subscribe","identifier":identifier(o)})
            .to_string()
            .into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let v = wait_for(ws, |v| {
        v["type"] == "confirm_subscription" || v["type"] == "reject_subscription"
    })
    .await?;
    if v["type"] == "confirm_subscription" {
        Ok(())
    } else {
        Err("subscription rejected".into())
    }
}

fn with_sid(url: &str, sid: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sid={sid}")
}

/// One client's life after the initial connect: waits for its socket to close, comes
/// back, waits for a probe.
async fn after_restart(
    o: Opts,
    index: usize,
    mut ws: Ws,
    sid: Option<String>,
    mut positions: serde_json::Map<String, Value>,
    shared: Arc<Shared>,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    // What @anycable/web asks after a restore: the history since its last ping (at
    // first, since it connected), and from each stream's last position it saw.
    let mut since = unix_now();
    // Until the server closes it (a restart).
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => {
                out.error = Some("the socket was never closed".into());
                return out;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(Message::Text(t)))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["type"] == "ping" {
                    since = v["message"].as_u64().unwrap_or(since);
                } else {
                    track_position(&mut positions, &v);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    drop(ws);
    shared.closed.fetch_add(1, Ordering::Relaxed);
    let url = match (&sid, o.protocol == EXT) {
        (Some(sid), true) => with_sid(&o.url, sid),
        _ => o.url.clone(),
    };
    let id = identifier(&o);
    let mut attempt = 0;
    let mut ws = loop {
        attempt += 1;
        if Instant::now() > deadline {
            out.error = Some("never back".into());
            return out;
        }
        let permit = shared.handshakes.acquire().await.unwrap();
        let dialed = dial(&o, &url, || {
            shared.accepting.get_or_init(Instant::now);
        })
        .await;
        match dialed {
            Ok((mut ws, welcome)) => {
                let restored = welcome["restored"] == true
                    && welcome["restored_ids"]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(id.as_str())));
                if !restored {
                    if let Err(e) = subscribe(&o, &mut ws).await {
                        drop(permit);
                        out.error.get_or_insert(e);
                        continue;
                    }
                }
                if restored {
                    // As @anycable/web does after a restore (live frames wait behind
                    // the replay until asked).
                    let history = json!({"command":"history","identifier":id,
                        "history":{"since":since,"streams":positions}});
                    if let Err(e) = ws.send(Message::Text(history.to_string().into())).await {
                        drop(permit);
                        out.error.get_or_insert(e.to_string());
                        continue;
                    }
                }
                out.restored = restored;
                out.back = Some(Instant::now());
                break ws;
            }
            Err(e) => {
                drop(permit);
                if shared.accepting.get().is_some() {
                    // Accepting, yet refused (a backlog overflow, a reset): kept.
                    out.error.get_or_insert(e);
                }
                // 100–200 ms, spread over the clients and the attempts.
                let jitter = (index * 37 + attempt * 61) % 100;
                tokio::time::sleep(Duration::from_millis(100 + jitter as u64)).await;
            }
        }
    };
    // Receiving again: the first probe.
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["identifier"].as_str() == Some(id.as_str())
                    && v["message"]["probe"].as_u64().is_some_and(|n| n > 0)
                {
                    out.receiving = Some(Instant::now());
                    shared.receiving.fetch_add(1, Ordering::Relaxed);
                    out.error = None;
                    // Kept open until every client is measured (a closing socket costs
                    // the server work the others would wait behind).
                    while Instant::now() < deadline
                        && shared.receiving.load(Ordering::Relaxed) < o.clients
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    return out;
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => {
                out.error = Some("closed after coming back".into());
                return out;
            }
            Err(_) => {
                out.error = Some("no probe".into());
                return out;
            }
        }
    }
}

/// Keeps the stream position an extended-protocol broadcast carries.
fn track_position(positions: &mut serde_json::Map<String, Value>, v: &Value) {
    if let (Some(stream), Some(offset)) = (v["stream_id"].as_str(), v["offset"].as_u64()) {
        positions.insert(
            stream.to_owned(),
            json!({"epoch": v["epoch"], "offset": offset}),
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs `{"probe": n}` (form field `n`) to `url` every `every` (`--interval-ms`) once the server
/// accepts again, until every client got one or the deadline.
async fn probe(
    url: String,
    every: Duration,
    shared: Arc<Shared>,
    clients: usize,
    deadline: Instant,
) -> usize {
    let (host, path) = host_and_path(&url);
    while shared.accepting.get().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut n = 0;
    while Instant::now() < deadline && shared.receiving.load(Ordering::Relaxed) < clients {
        n += 1;
        let (host, path) = (host.clone(), path.clone());
        tokio::spawn(async move { post(&host, &path, n).await });
        tokio::time::sleep(every).await;
    }
    n
}

/// ("host:port", "/path") of an http:// URL.
fn host_and_path(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

async fn post(host: &str, path: &str, n: usize) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    let body = format!("n={n}");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    Ok(())
}

pub async fn run(o: &Opts) -> Value {
    let Some(probe_url) = o.probe.clone() else {
        return json!({"mode":"storm","error":"--probe URL needed"});
    };
    let shared = Arc::new(Shared {
        accepting: OnceLock::new(),
        closed: AtomicUsize::new(0),
        receiving: AtomicUsize::new(0),
        handshakes: Semaphore::new(o.concurrency.max(1)),
    });
    // Everyone connected and subscribed first.
    let start = Instant::now();
    let mut opened = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        let (o, shared) = (o.clone(), shared.clone());
        opened.push(tokio::spawn(async move {
            let _permit = shared.handshakes.acquire().await.unwrap();
            let (mut ws, welcome) = dial(&o, &o.url, || {}).await?;
            subscribe(&o, &mut ws).await?;
            Ok::<_, String>((ws, welcome["sid"].as_str().map(str::to_owned)))
        }));
    }
    let mut clients = Vec::with_capacity(o.clients);
    let mut first_error = None;
    for t in opened {
        match t.await.unwrap() {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    if clients.len() < o.clients {
        return json!({"mode":"storm","error":format!("{} of {} connected (first error: {first_error:?})", clients.len(), o.clients)});
    }
    println!(
        "connected+subscribed {} clients in {connect_secs:.2}s",
        clients.len()
    );
    // One broadcast before the restart (probe 0): each client has a position in the
    // stream to ask its history from, as a page that has been open a while has.
    let (host, path) = host_and_path(&probe_url);
    if let Err(e) = post(&host, &path, 0).await {
        return json!({"mode":"storm","error":format!("probe 0: {e}")});
    }
    let mut positions = Vec::with_capacity(clients.len());
    for (ws, _) in clients.iter_mut() {
        let mut known = serde_json::Map::new();
        match wait_for(ws, |v| v["message"]["probe"] == 0).await {
            Ok(v) => track_position(&mut known, &v),
            Err(e) => return json!({"mode":"storm","error":format!("probe 0 not received: {e}")}),
        }
        positions.push(known);
    }
    println!("READY");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let deadline = Instant::now() + Duration::from_secs_f64(o.duration);
    let mut tasks = Vec::with_capacity(clients.len());
    for (index, ((ws, sid), known)) in clients.into_iter().zip(positions).enumerate() {
        tasks.push(tokio::spawn(after_restart(
            o.clone(),
            index,
            ws,
            sid,
            known,
            shared.clone(),
            deadline,
        )));
    }
    let every = Duration::from_millis(o.interval_ms.max(1));
    let prober = tokio::spawn(probe(probe_url, every, shared.clone(), o.clients, deadline));
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_default());
    }
    let probes = prober.await.unwrap_or(0);
    let Some(t0) = shared.accepting.get().copied() else {
        return json!({"mode":"storm","error":"the server never accepted again"});
    };
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let back: Vec<f64> = outcomes.iter().filter_map(|x| x.back.map(since)).collect();
    let receiving: Vec<f64> = outcomes
        .iter()
        .filter_map(|x| x.receiving.map(since))
        .collect();
    let restored = outcomes.iter().filter(|x| x.restored).count();
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|x| x.receiving.is_none())
        .filter_map(|x| x.error.as_deref())
        .collect();
    let all_receiving =
        (receiving.len() == o.clients).then(|| receiving.iter().cloned().fold(0.0, f64::max));
    println!(
        "storm: {} of {} back, {} receiving ({} restored), all receiving {} s after the server accepted again",
        back.len(),
        o.clients,
        receiving.len(),
        restored,
        all_receiving.map_or("–".to_string(), |s| format!("{s:.2}"))
    );
    if let Some(e) = failed.first() {
        println!("{} clients not receiving (first: {e})", failed.len());
    }
    json!({"mode":"storm","clients":o.clients,"initial_connect_s":connect_secs,
           "closed":shared.closed.load(Ordering::Relaxed),"back":back.len(),
           "receiving":receiving.len(),"restored":restored,"not_receiving":failed.len(),
           "all_receiving_s":all_receiving,"back_s":percentiles(back),
           "receiving_s":percentiles(receiving),"probes":probes})
}
