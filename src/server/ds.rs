//! Durable Streams reads (`ANYCABLE_DS`, AnyCable's `/ds`), from the request to its
//! end: checked (Origin, `ANYCABLE_MAX_CONN`), the reader identified as a WebSocket
//! client is (a JWT or the app's `connect`; not at all with `ANYCABLE_DS_SKIP_AUTH`),
//! the stream authorized by its signed name (or as a public stream), then read from
//! the broker's history: at once, held for the next message (long-poll), or followed
//! as Server-Sent Events.
//!
//! A live read joins the stream before it reads the history, so nothing falls between
//! the two; what arrives live at or before the last offset it read is a message it has
//! already sent, and is skipped.
//!
//! Where this differs from AnyCable's, on purpose: the signed name must be the path's
//! stream (AnyCable reads the path's history with any stream's token); a long-poll
//! answers with every message that came, a `204` carries the reader's offset and
//! `Stream-Up-To-Date`; an SSE read starts with a `control` event even when there is
//! nothing to catch up on; a catch-up is cached `private` unless the URL alone
//! authorizes it; the `Stream-*` headers are exposed to allowed pages.
//!
//! Not here: reading the request ([`crate::http::ds`]), offsets and bodies
//! ([`crate::protocol::ds`]).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{interval_at, sleep, timeout, Instant, MissedTickBehavior};

use super::connection::Pending;
use super::events::status_for;
use super::lifecycle::OpenAs;
use super::Inner;
use crate::auth::streams::{verify, PUBLIC_STREAM_PREFIX};
use crate::broker::{unix_now, Entry, HistoryError, HistoryReader};
use crate::controller::Controller;
use crate::http::ds::{self, DsConfig, DsRequest, Live};
use crate::http::origin::request_allowed;
use crate::http::RequestHead;
use crate::metrics::COUNTERS;
use crate::protocol::ds::{
    cursor, encode_offset, json_array, parse_broadcast, push_sse, Control, Start,
};
use crate::session::{Outbound, Outbox, SessionRef};

/// The identifier a live read's session holds its stream under (never sent).
const READER: &str = r#"{"channel":"$ds"}"#;

/// Frames taken from the session in one go before they are written.
const BATCH: usize = 256;

/// Where a reader is: the last offset it has, and its epoch.
struct Place {
    offset: u64,
    epoch: String,
}

impl Place {
    fn text(&self) -> String {
        encode_offset(self.offset, &self.epoch)
    }
}

impl<C: Controller> Inner<C> {
    /// A read whose head was read: on the own port, or handed over by Rack hijack
    /// (`env_token`: its Rack env, for the app's `connect`).
    pub(super) async fn serve_ds(
        self: Arc<Self>,
        mut stream: TcpStream,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
    ) {
        let Some(config) = self.config.ds.clone() else {
            self.abandon_env(env_token);
            return;
        };
        let _ = stream.set_nodelay(true);
        let allowed = request_allowed(&head, &self.config.origins);
        let cors = ds::cors(&head, allowed);
        let head_only = head.method == "HEAD";
        let request = match admit(&head, &config, allowed, &cors, peer) {
            Ok(request) => request,
            Err(answer) => {
                let _ = stream.write_all(answer.as_bytes()).await;
                self.abandon_env(env_token);
                return;
            }
        };
        COUNTERS.ds_requests.inc();
        let shutting_down = ds::refusal(503, &cors, "Shutting down", head_only);
        if !self
            .room_for_session(&mut stream, &shutting_down, env_token)
            .await
        {
            return;
        }
        let pending = Pending::new(&self);
        let how = if config.skip_auth {
            OpenAs::Anonymous
        } else {
            OpenAs::Plain
        };
        let (mut opened, mut rx) = match self.open(head, peer, env_token, how).await {
            Ok(opened) => opened,
            Err(reason) => {
                let status = status_for(&reason.reason);
                let _ = stream
                    .write_all(ds::refusal(status, &cors, &reason.reason, head_only).as_bytes())
                    .await;
                return;
            }
        };
        let session = opened.session.clone();
        match self.authorized_stream(&request) {
            Ok(name) => {
                let read = Read {
                    request: &request,
                    config: &config,
                    name: &name,
                    cors: &cors,
                    public: config.skip_auth && (request.signed.is_none() || request.signed_in_url),
                };
                self.read(&mut stream, read, &session, &mut rx).await;
            }
            Err(why) => {
                crate::logging::refused(format_args!(
                    "session {}: stream read refused: {why}",
                    session.log_id()
                ));
                let _ = stream
                    .write_all(ds::refusal(401, &cors, why, head_only).as_bytes())
                    .await;
            }
        }
        drop(rx);
        self.finish(&mut opened).await;
        drop(pending);
    }

    /// The broker's stream the read may see: the signed name's, when it is the path's
    /// stream; else the path's public stream, when public streams are on.
    fn authorized_stream(&self, request: &DsRequest) -> Result<String, &'static str> {
        let streams = &self.config.streams;
        let Some(signed) = &request.signed else {
            return if streams.public {
                Ok(format!("{PUBLIC_STREAM_PREFIX}{}", request.name))
            } else {
                Err("no signed stream name, and public streams are off (ANYCABLE_PUBLIC_STREAMS)")
            };
        };
        let keys = [streams.secret.as_deref(), streams.turbo_key.as_deref()];
        if keys.iter().all(Option::is_none) {
            return Err("a signed stream name, but no streams secret is set");
        }
        match keys
            .into_iter()
            .flatten()
            .find_map(|key| verify(signed, key))
        {
            Some(name) if name == request.name => Ok(name),
            Some(_) => Err("the signed name is another stream's"),
            None => Err("the signed stream name did not verify"),
        }
    }

    async fn read(
        &self,
        stream: &mut TcpStream,
        read: Read<'_>,
        session: &SessionRef,
        rx: &mut Outbox,
    ) {
        let Some(store) = self.broker.history().await else {
            let answer = ds::refusal(
                503,
                read.cors,
                "the stream history is not reachable",
                read.request.head_only,
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            return;
        };
        let cursor = cursor(unix_now(), read.request.cursor.as_deref(), session.id);
        if read.request.head_only {
            let answer = match store.tail(read.name).await {
                Ok(tail) => {
                    let headers = format!(
                        "Cache-Control: no-store\r\nStream-Next-Offset: {}\r\n",
                        encode_offset(tail, &store.epoch())
                    );
                    ds::response(200, &headers, read.cors, "", true)
                }
                Err(why) => unavailable(read.cors, session, &why, true),
            };
            let _ = stream.write_all(answer.as_bytes()).await;
            return;
        }
        let live = read.request.live != Live::No;
        if live {
            // Joined before the history is read: nothing falls between the two.
            self.hub.subscribe(session, read.name, READER);
            self.sessions.write().insert(session.id, session.clone());
            if self
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
            {
                session.close(crate::session::DisconnectReason::SERVER_RESTART);
            }
        }
        let (entries, mut place) = match catch_up(&store, read.name, &read.request.start).await {
            Ok(caught) => caught,
            Err((503, why)) => {
                let answer = unavailable(read.cors, session, &why, false);
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            Err((status, why)) => {
                let answer = ds::refusal(status, read.cors, &why, false);
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
        };
        let (mut rd, mut wr) = stream.split();
        match read.request.live {
            Live::No => {
                let answer = read.catch_up_answer(&entries, &place, &cursor);
                self.write_answer(&mut wr, &answer).await;
            }
            Live::LongPoll if !entries.is_empty() => {
                let answer = read.messages_answer(&entries, &place, &cursor);
                self.write_answer(&mut wr, &answer).await;
            }
            Live::LongPoll => {
                COUNTERS.ds_poll_requests.inc();
                COUNTERS.ds_poll_clients.inc();
                let mut closed = false;
                let answer = tokio::select! {
                    biased;
                    got = next_messages(rx, session, &mut place, &mut closed) => match got {
                        Some(batch) => Some(read.live_answer(&batch, &place, &cursor)),
                        None => Some(read.no_content(&place, &cursor)),
                    },
                    _ = sleep(read.config.poll_interval) => Some(read.no_content(&place, &cursor)),
                    _ = gone(&mut rd) => None,
                };
                COUNTERS.ds_poll_clients.dec();
                if let Some(answer) = answer {
                    self.write_answer(&mut wr, &answer).await;
                }
            }
            Live::Sse => {
                COUNTERS.ds_sse_requests.inc();
                COUNTERS.ds_sse_clients.inc();
                self.follow(
                    &mut rd, &mut wr, &read, entries, place, &cursor, session, rx,
                )
                .await;
                COUNTERS.ds_sse_clients.dec();
            }
        }
    }

    /// An SSE read: what it caught up on, then each batch of messages as it comes,
    /// until the read's time is up, the reader goes, or it cannot keep up.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        rd: &mut ReadHalf<'_>,
        wr: &mut WriteHalf<'_>,
        read: &Read<'_>,
        entries: Vec<Entry>,
        mut place: Place,
        cursor: &str,
        session: &SessionRef,
        rx: &mut Outbox,
    ) {
        let mut out = ds::sse_head(read.cors);
        let control = |place: &Place, out: &mut String, messages: &[&str], more: bool| {
            let next = place.text();
            let control = Control {
                next_offset: &next,
                cursor,
                up_to_date: !more,
            };
            push_sse(messages.iter().copied(), &control, out);
        };
        let first: Vec<&str> = entries.iter().map(|e| &*e.data).collect();
        control(&place, &mut out, &first, false);
        if !self.write_events(wr, &mut out).await {
            return;
        }
        let ends = sleep(read.config.sse_ttl);
        tokio::pin!(ends);
        let every = read
            .config
            .keepalive
            .max(std::time::Duration::from_millis(10));
        let mut keepalive = interval_at(Instant::now() + every, every);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                got = next_messages(rx, session, &mut place, &mut closed) => match got {
                    Some(batch) => {
                        let messages: Vec<&str> = batch.messages.iter().map(String::as_str).collect();
                        control(&place, &mut out, &messages, batch.more);
                        if !self.write_events(wr, &mut out).await {
                            return;
                        }
                        keepalive.reset();
                    }
                    None => break,
                },
                _ = &mut ends => break,
                _ = keepalive.tick() => {
                    out.push_str(":\n\n");
                    if !self.write_events(wr, &mut out).await {
                        return;
                    }
                }
                _ = gone(rd) => return,
            }
        }
        let _ = wr.shutdown().await;
    }

    /// Writes `out` (then empties it) within the write timeout: false when the reader
    /// is gone or too slow to take it.
    async fn write_events(&self, wr: &mut WriteHalf<'_>, out: &mut String) -> bool {
        let written = timeout(self.config.write_timeout, wr.write_all(out.as_bytes())).await;
        let ok = matches!(written, Ok(Ok(())));
        if ok {
            COUNTERS.data_sent.inc_by(out.len() as u64);
        } else if written.is_err() {
            COUNTERS.disconnected_slow_clients.inc();
        }
        out.clear();
        ok
    }

    async fn write_answer(&self, wr: &mut WriteHalf<'_>, answer: &str) {
        let mut out = answer.to_string();
        if self.write_events(wr, &mut out).await {
            let _ = wr.shutdown().await;
        }
    }
}

/// A read's settings and what its answers carry.
struct Read<'a> {
    request: &'a DsRequest,
    config: &'a DsConfig,
    /// The broker's stream.
    name: &'a str,
    cors: &'a str,
    /// The URL alone authorizes the read (a shared cache may keep its answers).
    public: bool,
}

impl Read<'_> {
    fn cache_control(&self) -> &'static str {
        match (&self.request.start, self.public) {
            (Start::Now, _) => "no-store",
            (_, true) => "public, max-age=60, stale-while-revalidate=300",
            (_, false) => "private, max-age=60, stale-while-revalidate=300",
        }
    }

    fn headers(&self, place: &Place, cursor: &str, up_to_date: bool) -> String {
        format!(
            "Cache-Control: {}\r\nStream-Next-Offset: {}\r\nStream-Cursor: {cursor}\r\n{}",
            self.cache_control(),
            place.text(),
            if up_to_date {
                "Stream-Up-To-Date: true\r\n"
            } else {
                ""
            }
        )
    }

    /// A catch-up: its messages with an ETag naming the range (`304` when the reader
    /// has it already), but none for `now`, whose range moves.
    fn catch_up_answer(&self, entries: &[Entry], place: &Place, cursor: &str) -> String {
        if self.request.start == Start::Now {
            return self.messages_answer(entries, place, cursor);
        }
        let from = match &self.request.start {
            Start::After { offset, epoch } => encode_offset(*offset, epoch),
            _ => "-1".into(),
        };
        let etag = format!("\"{from}:{}\"", place.text());
        let mut headers = self.headers(place, cursor, true);
        headers.push_str(&format!("ETag: {etag}\r\n"));
        let cached = self
            .request
            .if_none_match
            .as_deref()
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if cached {
            return ds::response(304, &headers, self.cors, "", true);
        }
        let body = json_array(entries.iter().map(|e| &*e.data));
        ds::response(200, &headers, self.cors, &body, false)
    }

    fn messages_answer(&self, entries: &[Entry], place: &Place, cursor: &str) -> String {
        let body = json_array(entries.iter().map(|e| &*e.data));
        ds::response(
            200,
            &self.headers(place, cursor, true),
            self.cors,
            &body,
            false,
        )
    }

    /// A long-poll's answer with what came: up to date unless more was left queued.
    fn live_answer(&self, batch: &Batch, place: &Place, cursor: &str) -> String {
        let body = json_array(batch.messages.iter().map(String::as_str));
        let headers = self.headers(place, cursor, !batch.more);
        ds::response(200, &headers, self.cors, &body, false)
    }

    /// Nothing came while the long-poll was held: the reader asks again from where it is.
    fn no_content(&self, place: &Place, cursor: &str) -> String {
        let headers = format!(
            "Cache-Control: no-store\r\nStream-Next-Offset: {}\r\nStream-Cursor: {cursor}\r\n\
             Stream-Up-To-Date: true\r\n",
            place.text()
        );
        ds::response(204, &headers, self.cors, "", true)
    }
}

/// The request read and its Origin checked; else the answer that refuses it (a
/// preflight's too).
fn admit(
    head: &RequestHead,
    config: &DsConfig,
    allowed: bool,
    cors: &str,
    peer: Option<SocketAddr>,
) -> Result<DsRequest, String> {
    if head.method == "OPTIONS" {
        return Err(ds::preflight(head, cors));
    }
    if !allowed {
        super::accept::origin_refused("stream read", head, peer);
        return Err(ds::refusal(
            403,
            "Vary: Origin\r\n",
            "origin not allowed",
            head.method == "HEAD",
        ));
    }
    ds::read_request(head, &config.path).map_err(|refusal| {
        COUNTERS.failed_client_msg.inc();
        ds::refusal(refusal.status, cors, &refusal.reason, head.method == "HEAD")
    })
}

/// What the history has for a read from `start`, and the reader's place after it; or
/// the status and reason that refuse it (410: the offset cannot be read from).
async fn catch_up(
    store: &HistoryReader<'_>,
    stream: &str,
    start: &Start,
) -> Result<(Vec<Entry>, Place), (u16, String)> {
    let epoch = store.epoch();
    let failed = |why: HistoryError| (503, why.to_string());
    let (entries, from) = match start {
        Start::Now => (Vec::new(), store.tail(stream).await.map_err(failed)?),
        Start::Beginning => {
            let entries = store.since(stream, 0).await.map_err(failed)?;
            let tail = match entries.last() {
                Some(last) => last.offset,
                None => store.tail(stream).await.map_err(failed)?,
            };
            (entries, tail)
        }
        Start::After {
            offset,
            epoch: theirs,
        } => match store.from(stream, theirs, *offset).await {
            Ok(entries) => (entries, *offset),
            Err(HistoryError::EpochMismatch) => {
                return Err((
                    410,
                    "the offset is from another epoch of the stream's history: read from -1".into(),
                ))
            }
            Err(HistoryError::OffsetGone { .. } | HistoryError::UnknownStream)
                if *theirs == epoch
                    && store.missed_nothing(stream, *offset).await.unwrap_or(false) =>
            {
                // The stream was quiet past the history's ttl and the reader had it
                // all: nothing to replay, and it stays where it is.
                (Vec::new(), *offset)
            }
            Err(HistoryError::OffsetGone { .. } | HistoryError::UnknownStream) => {
                return Err((
                    410,
                    "messages after the offset are no longer kept: read from -1".into(),
                ))
            }
            Err(why) => return Err(failed(why)),
        },
    };
    let offset = entries.last().map_or(from, |e| e.offset);
    Ok((entries, Place { offset, epoch }))
}

/// Messages taken from a live read's session at once.
struct Batch {
    messages: Vec<String>,
    /// Frames were left queued (the batch is full): the reader is not up to date.
    more: bool,
}

/// The messages that come next (every one queued with the first, up to [`BATCH`] more),
/// past `place`, which moves to the last of them; `None` once the session is closed
/// (the server shutting down, the reader too slow, a remote disconnect: `closed`,
/// which a batch that came with the close leaves for the next call).
async fn next_messages(
    rx: &mut Outbox,
    session: &SessionRef,
    place: &mut Place,
    closed: &mut bool,
) -> Option<Batch> {
    loop {
        if *closed {
            return None;
        }
        let mut messages = Vec::new();
        let Some(first) = rx.recv().await else {
            *closed = true;
            return None;
        };
        let mut taken = 0;
        for out in
            std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()).take(BATCH))
        {
            taken += 1;
            match out {
                Outbound::Frame(frame) => {
                    // Off the session's waiting bytes once taken (what is written is
                    // bounded by the write timeout), pings and skipped ones too.
                    session.written(frame.len());
                    if let Some(message) = take(&frame, place) {
                        messages.push(message);
                    }
                }
                Outbound::Close(_) => *closed = true,
            }
        }
        if !messages.is_empty() {
            let more = taken > BATCH && !rx.is_empty();
            return Some(Batch { messages, more });
        }
    }
}

/// A live frame's message, unless the reader has it already (its offset at or before
/// the reader's place in the same epoch).
fn take(frame: &str, place: &mut Place) -> Option<String> {
    let broadcast = parse_broadcast(frame)?;
    if let Some((offset, epoch)) = &broadcast.place {
        if *epoch == place.epoch && *offset <= place.offset {
            return None;
        }
        place.offset = *offset;
        place.epoch = epoch.to_string();
    }
    Some(broadcast.message.to_string())
}

/// Resolves when the reader has closed its side (what it sends meanwhile is dropped).
async fn gone(rd: &mut ReadHalf<'_>) {
    let mut scratch = [0u8; 256];
    loop {
        match rd.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A 503 for a history the broker could not read: why goes to the log only.
fn unavailable(
    cors: &str,
    session: &SessionRef,
    why: &dyn std::fmt::Display,
    head_only: bool,
) -> String {
    log::warn!("session {}: stream read failed: {why}", session.log_id());
    ds::refusal(503, cors, "the stream history could not be read", head_only)
}
