//! anycable-bench: load for any Action Cable server (anycable-rs, Rails' own, a raw
//! fan-out server), against a `BenchmarkChannel`-shaped channel:
//! `subscribed: stream_from "all"`, `echo: transmit data`,
//! `broadcast: ActionCable.server.broadcast "all", data; transmit data`.
//!
//!     anycable-bench connect   --url ws://127.0.0.1:3000/cable --clients 1000 [--pid PID]
//!     anycable-bench echo      --url … --clients 50 --duration 10
//!     anycable-bench broadcast --url … --clients 1000 --messages 50 --interval-ms 100
//!     anycable-bench churn     --url … --cycles 5000 [--pid PID]
//!     anycable-bench http      --url http://127.0.0.1:3000/up --clients 5000
//!     anycable-bench storm     --url … --clients 5000 --probe http://…/probe --duration 120
//!
//! `--sse http://127.0.0.1:3000/events` (connect, broadcast): the clients are
//! Server-Sent Events streams there instead (`sse.rs`); `broadcast`'s sender stays a
//! WebSocket client at `--url`.
//!
//! `--lp http://127.0.0.1:3000/lp` or `--ds http://127.0.0.1:3000/ds/<stream>?signed=…`
//! (connect): the clients are long-polling sessions or Durable Streams readers
//! (`--ds-live sse|long-poll`) instead, polling or reading through the hold
//! (`polling.rs`); `connect` then also reports the server's CPU over the hold.
//!
//! `http` is the floor under `connect` for a server behind Puma: one plain GET per new
//! TCP connection (`Connection: close`), `--clients` of them, `--concurrency` at once —
//! what the Rack server and the app's middleware cost before any WebSocket work.
//!
//! `--url` may list several servers, comma-separated: clients are spread over them.
//!
//! Prints readable lines and one `SUMMARY {json}` line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod polling;
mod sse;
mod storm;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Debug)]
struct Opts {
    mode: String,
    url: String,
    clients: usize,
    concurrency: usize,
    duration: f64,
    messages: usize,
    interval_ms: u64,
    payload: usize,
    pid: Option<u32>,
    channel: String,
    origin: String,
    /// Subscribe with this identifier instead of `{"channel": <--channel>}`.
    identifier: Option<String>,
    /// A Cookie header for every connection (an app that authenticates from cookies).
    cookie: Option<String>,
    hold: f64,
    /// Clients bind to 127.0.0.1 … 127.0.0.N, round robin: N × ~28k ephemeral ports.
    local_addrs: u8,
    cycles: usize,
    /// The WebSocket subprotocol offered (`actioncable-v1-ext-json`: AnyCable's
    /// extended protocol, whose sessions a broker keeps for a restore).
    protocol: String,
    /// `storm`: where to POST the probe broadcasts.
    probe: Option<String>,
    /// Server-Sent Events subscribers at this URL (comma-separated: round robin).
    sse: Option<String>,
    /// Long-polling sessions at this URL.
    lp: Option<String>,
    /// Durable Streams readers of this URL (`…/ds/<stream>?signed=…`).
    ds: Option<String>,
    /// How the DS readers follow the stream: `sse` or `long-poll`.
    ds_live: String,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("usage: anycable-bench connect|echo|broadcast [options]")?;
    let mut o = Opts {
        mode,
        url: "ws://127.0.0.1:3000/cable".into(),
        clients: 100,
        concurrency: 100,
        duration: 10.0,
        messages: 50,
        interval_ms: 100,
        payload: 200,
        pid: None,
        channel: "BenchmarkChannel".into(),
        origin: "http://localhost".into(),
        identifier: None,
        cookie: None,
        hold: 2.0,
        local_addrs: 1,
        cycles: 1000,
        protocol: "actioncable-v1-json".into(),
        probe: None,
        sse: None,
        lp: None,
        ds: None,
        ds_live: "sse".into(),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => o.url = value()?,
            "--clients" => o.clients = num(value()?)? as usize,
            "--concurrency" => o.concurrency = num(value()?)? as usize,
            "--duration" => o.duration = num(value()?)?,
            "--messages" => o.messages = num(value()?)? as usize,
            "--interval-ms" => o.interval_ms = num(value()?)? as u64,
            "--payload" => o.payload = num(value()?)? as usize,
            "--pid" => o.pid = Some(num(value()?)? as u32),
            "--channel" => o.channel = value()?,
            "--origin" => o.origin = value()?,
            "--identifier" => o.identifier = Some(value()?),
            "--cookie" => o.cookie = Some(value()?),
            "--hold" => o.hold = num(value()?)?,
            "--local-addrs" => o.local_addrs = (num(value()?)? as u8).max(1),
            "--cycles" => o.cycles = num(value()?)? as usize,
            "--protocol" => o.protocol = value()?,
            "--probe" => o.probe = Some(value()?),
            "--sse" => o.sse = Some(value()?),
            "--lp" => o.lp = Some(value()?),
            "--ds" => o.ds = Some(value()?),
            "--ds-live" => o.ds_live = value()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// Resident memory of `pid` and all its descendants, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmRSS:") {
                    total += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

/// CPU time of `pid` so far (all its threads), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks (USER_HZ: 100 a
    // second on Linux, whatever the kernel's HZ).
    (ticks(11) + ticks(12)) / 100.0
}

fn identifier(o: &Opts) -> String {
    o.identifier
        .clone()
        .unwrap_or_else(|| json!({ "channel": o.channel }).to_string())
}

/// The handshake request for `url`: the Origin, Cookie and subprotocol the options
/// give.
fn ws_request(
    o: &Opts,
    url: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let headers = req.headers_mut();
    headers.insert("Origin", o.origin.parse().map_err(|_| "bad --origin")?);
    if let Some(cookie) = &o.cookie {
        headers.insert("Cookie", cookie.parse().map_err(|_| "bad --cookie")?);
    }
    headers.insert(
        "Sec-WebSocket-Protocol",
        o.protocol.parse().map_err(|_| "bad --protocol")?,
    );
    Ok(req)
}

/// Connects (to the `index`-th of the comma-separated `--url`s, round robin), waits
/// for welcome, subscribes, waits for the confirmation.
async fn open_client(o: &Opts, index: usize) -> Result<Ws, String> {
    let urls: Vec<&str> = o.url.split(',').collect();
    let req = ws_request(o, urls[index % urls.len()])?;
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or("url without host")?;
    let tcp = if o.local_addrs > 1 {
        let remote = tokio::net::lookup_host(&host)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        let local = std::net::Ipv4Addr::new(127, 0, 0, 1 + (index % o.local_addrs as usize) as u8);
        socket.bind((local, 0).into()).map_err(|e| e.to_string())?;
        socket.connect(remote).await.map_err(|e| e.to_string())?
    } else {
        TcpStream::connect(host).await.map_err(|e| e.to_string())?
    };
    tcp.set_nodelay(true).ok();
    let (mut ws, _) = client_async(req, tcp).await.map_err(|e| e.to_string())?;
    wait_for(&mut ws, |v| v["type"] == "welcome").await?;
    let id = identifier(o);
    ws.send(Message::Text(
        json!({"command":"subscribe","identifier":id})
            .to_string()
            .into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    wait_for(&mut ws, |v| {
        v["type"] == "confirm_subscription" || v["type"] == "reject_subscription"
    })
    .await
    .and_then(|v| {
        if v["type"] == "confirm_subscription" {
            Ok(v)
        } else {
            Err("rejected".into())
        }
    })?;
    Ok(ws)
}

async fn wait_for(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .map_err(|_| "timed out".to_string())?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

fn perform(o: &Opts, action: &str, data: Value) -> Message {
    let mut data = data;
    data["action"] = json!(action);
    Message::Text(
        json!({"command":"message","identifier":identifier(o),"data":data.to_string()})
            .to_string()
            .into(),
    )
}

fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    json!({"p50": p(0.5), "p95": p(0.95), "p99": p(0.99), "max": v[v.len() - 1], "n": v.len()})
}

/// `--clients` clients opened by `open` (given each one's index), `--concurrency` at
/// once: the open ones, how many failed (the first error printed, named `what`), and
/// the seconds it took.
async fn open_many<T, F, Fut>(o: &Opts, what: &str, open: F) -> (Vec<T>, usize, f64)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(o.clients);
    for index in 0..o.clients {
        let (sem, opening) = (sem.clone(), open(index));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            opening.await
        }));
    }
    let mut opened = Vec::new();
    let mut failures = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await.unwrap() {
            Ok(client) => opened.push(client),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("{what} failures: {failures} (first: {e})");
    }
    (opened, failures, start.elapsed().as_secs_f64())
}

async fn connect_all(o: &Opts) -> (Vec<Ws>, usize, f64) {
    open_many(o, "connect", |index| {
        let o = o.clone();
        async move { open_client(&o, index).await }
    })
    .await
}

/// Open clients, kept until dropped.
enum Held {
    Ws(Vec<Ws>),
    Sse(Vec<sse::SseClient>),
    /// The loops of long-polling sessions or DS readers: aborted when dropped.
    Polling(Vec<tokio::task::JoinHandle<()>>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Ws(c) => c.len(),
            Held::Sse(c) => c.len(),
            Held::Polling(c) => c.len(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Polling(loops) = self {
            loops.iter().for_each(|l| l.abort());
        }
    }
}

/// The transport `connect` and `broadcast` use, by the options.
fn transport(o: &Opts) -> String {
    match (&o.sse, &o.lp, &o.ds) {
        (Some(_), _, _) => "sse".into(),
        (_, Some(_), _) => "long polling".into(),
        (_, _, Some(_)) => format!("ds ({})", o.ds_live),
        _ => "websocket".into(),
    }
}

async fn run_connect(o: &Opts) -> Value {
    let before = o.pid.map(rss_kib);
    let stats = Arc::new(polling::Stats::default());
    let (clients, failures, secs) = if o.sse.is_some() {
        let (c, f, s) = sse::open_all(o).await;
        (Held::Sse(c), f, s)
    } else if o.lp.is_some() || o.ds.is_some() {
        let (c, f, s) = polling::open_all(o, &stats).await;
        (Held::Polling(c), f, s)
    } else {
        let (c, f, s) = connect_all(o).await;
        (Held::Ws(c), f, s)
    };
    let rate = clients.len() as f64 / secs;
    println!(
        "connected+subscribed {} {} clients in {secs:.2}s ({rate:.0}/s), {failures} failed",
        clients.len(),
        transport(o)
    );
    let cpu_before = o.pid.map(cpu_secs);
    let requests_before = stats.requests.load(Ordering::Relaxed);
    let errors_before = stats.errors.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(o.hold)).await;
    let after = o.pid.map(rss_kib);
    let hold_cpu = o.pid.map(|p| cpu_secs(p) - cpu_before.unwrap_or(0.0));
    let requests = stats.requests.load(Ordering::Relaxed) - requests_before;
    let errors = stats.errors.load(Ordering::Relaxed) - errors_before;
    if let Some(e) = stats.first_error.lock().unwrap().take() {
        eprintln!("errors while held: {errors} (first: {e})");
    }
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if clients.len() > 0 => {
            let per = (a as f64 - b as f64) / clients.len() as f64;
            println!("server RSS {b} KiB -> {a} KiB: {per:.1} KiB per connection");
            Some(per)
        }
        _ => None,
    };
    if let Some(cpu) = hold_cpu {
        println!(
            "server CPU over the {}s hold: {cpu:.2}s ({:.1}% of a core); {requests} requests, {errors} errors",
            o.hold,
            cpu / o.hold * 100.0
        );
    }
    json!({"mode":"connect","transport":transport(o),
           "clients":clients.len(),"failures":failures,"seconds":secs,
           "connects_per_sec":rate,"rss_before_kib":before,"rss_after_kib":after,
           "rss_per_conn_kib":per_conn,"hold_seconds":o.hold,"hold_cpu_seconds":hold_cpu,
           "hold_requests":requests,"hold_errors":errors})
}

async fn run_echo(o: &Opts) -> Value {
    let (clients, failures, _) = connect_all(o).await;
    let pad = "x".repeat(o.payload);
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(o.duration);
    let mut tasks = vec![];
    for mut ws in clients {
        let o = o.clone();
        let pad = pad.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let t = Instant::now();
                if ws
                    .send(perform(&o, "echo", json!({"seq": seq, "pad": pad})))
                    .await
                    .is_err()
                {
                    break;
                }
                match wait_for(&mut ws, |v| v["message"]["seq"] == seq).await {
                    Ok(_) => {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            let _ = ws.close(None).await;
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = done.load(Ordering::Relaxed);
    let rps = n as f64 / o.duration;
    let l = percentiles(all);
    println!(
        "echo: {n} round trips in {:.1}s = {rps:.0}/s; latency ms {l}",
        o.duration
    );
    json!({"mode":"echo","clients":o.clients,"failures":failures,"round_trips":n,"per_sec":rps,"latency_ms":l})
}

/// What the subscribers of a `broadcast` run got: per message, when it was sent,
/// when the last subscriber got it, and how many did.
struct Tally {
    origin: Instant,
    sent: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    counts: Vec<AtomicUsize>,
}

impl Tally {
    fn nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// A subscriber got message `seq`: its latency (ms), when it is one of ours.
    fn got(&self, seq: u64) -> Option<f64> {
        let seq = seq as usize;
        if seq >= self.sent.len() {
            return None;
        }
        let now = self.nanos();
        self.counts[seq].fetch_add(1, Ordering::Relaxed);
        self.last[seq].fetch_max(now, Ordering::Relaxed);
        Some((now - self.sent[seq].load(Ordering::Relaxed)) as f64 / 1e6)
    }
}

async fn run_broadcast(o: &Opts) -> Value {
    let m = o.messages;
    let tally = Arc::new(Tally {
        origin: Instant::now(),
        sent: (0..m).map(|_| AtomicU64::new(0)).collect(),
        last: (0..m).map(|_| AtomicU64::new(0)).collect(),
        counts: (0..m).map(|_| AtomicUsize::new(0)).collect(),
    });
    let per_client_lat = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let mut readers = vec![];
    let (n, failures) = if o.sse.is_some() {
        let (clients, failures, _) = sse::open_all(o).await;
        let n = clients.len();
        for mut c in clients {
            let (tally, lat) = (tally.clone(), per_client_lat.clone());
            readers.push(tokio::spawn(async move {
                let mut mine = vec![];
                while mine.len() < m {
                    let Ok(Ok(event)) =
                        tokio::time::timeout(Duration::from_secs(10), c.next_event()).await
                    else {
                        break;
                    };
                    if event.name.is_some() {
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    if let Some(ms) = v["bseq"].as_u64().and_then(|seq| tally.got(seq)) {
                        mine.push(ms);
                    }
                }
                lat.lock().unwrap().extend(mine);
                Held::Sse(vec![c])
            }));
        }
        (n, failures)
    } else {
        let (clients, failures, _) = connect_all(o).await;
        let n = clients.len();
        for mut ws in clients {
            let (tally, lat) = (tally.clone(), per_client_lat.clone());
            readers.push(tokio::spawn(async move {
                let mut mine = vec![];
                while mine.len() < m {
                    let Ok(Some(Ok(msg))) =
                        tokio::time::timeout(Duration::from_secs(10), ws.next()).await
                    else {
                        break;
                    };
                    let Message::Text(t) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    if let Some(ms) = v["message"]["bseq"].as_u64().and_then(|seq| tally.got(seq)) {
                        mine.push(ms);
                    }
                }
                lat.lock().unwrap().extend(mine);
                Held::Ws(vec![ws])
            }));
        }
        (n, failures)
    };
    let mut sender = match open_client(o, 0).await {
        Ok(ws) => ws,
        Err(e) => return json!({"mode":"broadcast","error":e}),
    };
    let pad = "x".repeat(o.payload);
    let mut ticker = tokio::time::interval(Duration::from_millis(o.interval_ms.max(1)));
    for seq in 0..m {
        ticker.tick().await;
        tally.sent[seq].store(tally.nanos(), Ordering::Relaxed);
        sender
            .send(perform(o, "broadcast", json!({"bseq": seq, "pad": pad})))
            .await
            .unwrap();
    }
    let mut clients = vec![];
    for r in readers {
        clients.push(r.await.unwrap());
    }
    let mut until_last = vec![];
    let mut received = 0;
    for seq in 0..m {
        let c = tally.counts[seq].load(Ordering::Relaxed);
        received += c;
        if c == n {
            until_last.push(
                (tally.last[seq].load(Ordering::Relaxed) - tally.sent[seq].load(Ordering::Relaxed))
                    as f64
                    / 1e6,
            );
        }
    }
    let missing = n * m - received;
    let ul = percentiles(until_last);
    let pc = percentiles(std::mem::take(&mut *per_client_lat.lock().unwrap()));
    println!("broadcast: {m} messages x {n} subscribers, {missing} missing");
    println!("  until the last subscriber got it (ms): {ul}");
    println!("  per subscriber (ms): {pc}");
    drop(clients);
    json!({"mode":"broadcast","transport":transport(o),
           "subscribers":n,"failures":failures,"messages":m,"missing":missing,
           "until_last_ms":ul,"per_client_ms":pc})
}

/// Connect, subscribe, disconnect, `--cycles` times (`--concurrency` at once): does
/// anything stay behind?
async fn run_churn(o: &Opts) -> Value {
    let before = o.pid.map(rss_kib);
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let failures = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(o.cycles);
    for index in 0..o.cycles {
        let (o, sem, failures) = (o.clone(), sem.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            match open_client(&o, index).await {
                Ok(mut ws) => {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(o.hold)).await;
    let after = o.pid.map(rss_kib);
    let failures = failures.load(Ordering::Relaxed);
    let rate = o.cycles as f64 / secs;
    println!("churn: {} cycles in {secs:.2}s ({rate:.0}/s), {failures} failed; server RSS {before:?} -> {after:?} KiB", o.cycles);
    json!({"mode":"churn","cycles":o.cycles,"failures":failures,"seconds":secs,"cycles_per_sec":rate,
           "rss_before_kib":before,"rss_after_kib":after})
}

/// One `GET` on a fresh connection; Ok(status) once the server closed it.
async fn http_get(host: &str, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(512);
    stream
        .read_to_end(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&body[..body.len().min(16)]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("not an HTTP response: {head:?}"))
}

async fn run_http(o: &Opts) -> Value {
    let rest = o.url.trim_start_matches("http://");
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let failures = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        let (sem, failures, host, path) =
            (sem.clone(), failures.clone(), host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            if !matches!(http_get(&host, &path).await, Ok(200)) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let failures = failures.load(Ordering::Relaxed);
    let rate = o.clients as f64 / secs;
    println!(
        "http: {} requests in {secs:.2}s ({rate:.0}/s), {failures} failed",
        o.clients
    );
    json!({"mode":"http","requests":o.clients,"failures":failures,"seconds":secs,"requests_per_sec":rate})
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(async {
        match o.mode.as_str() {
            "connect" => run_connect(&o).await,
            "echo" => run_echo(&o).await,
            "broadcast" => run_broadcast(&o).await,
            "churn" => run_churn(&o).await,
            "http" => run_http(&o).await,
            "storm" => storm::run(&o).await,
            other => {
                eprintln!("unknown mode {other}");
                std::process::exit(2);
            }
        }
    });
    println!("SUMMARY {summary}");
}
