//! One Server-Sent Events client (`ANYCABLE_SSE`, AnyCable's `/events`), from its
//! request to the disconnect callback: checked (Origin, `ANYCABLE_MAX_CONN`),
//! identified as a WebSocket client is (the app's `connect` with its cookies, or a
//! JWT), subscribed by the commands its request makes — a refused identification
//! answers 401 and a rejected subscription 400, as AnyCable does — then served by the
//! session loop (`connection.rs`) over an [`EventStream`] until either side goes.
//!
//! Not here: reading the request into commands and its Origin rule
//! ([`crate::http::events`]), the events' encoding ([`crate::protocol::sse`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::commands::Run;
use super::connection::Pending;
use super::lifecycle::OpenAs;
use super::wire::{EventStream, Wire};
use super::Inner;
use crate::controller::Controller;
use crate::http::events::{self, EventsRequest};
use crate::http::RequestHead;
use crate::logging::BadInputLog;
use crate::metrics::COUNTERS;
use crate::session::{Closing, DisconnectReason, Outbound};

impl<C: Controller> Inner<C> {
    /// An events request whose head (and, for a POST, body) was read: on the own port,
    /// or handed over by Rack hijack (`env_token`: its Rack env, for the app's
    /// `connect`).
    pub(super) async fn serve_events(
        self: Arc<Self>,
        mut stream: TcpStream,
        head: RequestHead,
        body: Vec<u8>,
        peer: Option<SocketAddr>,
        env_token: u64,
    ) {
        let _ = stream.set_nodelay(true);
        let refuse =
            |status: u16, reason: &str| events::refusal_response(&head, true, status, reason);
        let answer = match self.admit_events(&head, &body, peer) {
            Ok(request) => Some(request),
            Err(response) => {
                let _ = stream.write_all(response.as_bytes()).await;
                None
            }
        };
        drop(body);
        let Some(request) = answer else {
            self.abandon_env(env_token);
            return;
        };
        if !self
            .room_for_session(&mut stream, &refuse(503, "Shutting down"), env_token)
            .await
        {
            return;
        }
        let pending = Pending::new(&self);
        let (mut opened, mut rx) = match self
            .open(head.clone(), peer, env_token, OpenAs::Plain)
            .await
        {
            Ok(opened) => opened,
            Err(reason) => {
                let status = status_for(&reason.reason);
                let _ = stream
                    .write_all(refuse(status, &reason.reason).as_bytes())
                    .await;
                return;
            }
        };
        let session = opened.session.clone();
        let mut bad_input = BadInputLog::default();
        let mode = request.mode;
        let asked = request.commands.len();
        for command in request.commands {
            if let Some(Run::App(run) | Run::Server(run)) =
                self.handle_text(&session, &command, &mut bad_input, &mut opened.lazy)
            {
                run.await;
            }
        }
        // What the subscriptions answered (and replayed), sent after the head: each
        // command confirmed, or the request refused before a byte of the stream.
        let mut backlog = Vec::new();
        let mut backlog_bytes = 0;
        let mut confirmed = 0;
        let mut refusal = None;
        while let Ok(out) = rx.try_recv() {
            match &out {
                Outbound::Frame(frame) => {
                    backlog_bytes += frame.len();
                    match reply_type(frame.as_str()).as_deref() {
                        Some("confirm_subscription") => confirmed += 1,
                        Some("reject_subscription") if refusal.is_none() => {
                            refusal = Some((400, "subscription rejected".to_string()));
                        }
                        _ => {}
                    }
                }
                Outbound::Close(closing) if refusal.is_none() => {
                    refusal = Some(match closing {
                        Closing::Told(reason) => {
                            (status_for(&reason.reason), reason.reason.to_string())
                        }
                        _ => (503, "closed".to_string()),
                    });
                }
                Outbound::Close(_) => {}
            }
            backlog.push(out);
        }
        if refusal.is_none() && confirmed < asked {
            refusal = Some((
                400,
                "subscription not confirmed (a bad identifier or command)".to_string(),
            ));
        }
        if let Some((status, reason)) = refusal {
            bad_input.finish(session.log_id());
            drop(rx);
            let _ = stream.write_all(refuse(status, &reason).as_bytes()).await;
            drop(stream);
            self.finish(&mut opened).await;
            drop(pending);
            return;
        }
        let mut wire = EventStream::new(stream, mode);
        if !self
            .start_stream(&mut wire, &head, &opened.welcome, backlog)
            .await
        {
            drop(wire);
            drop(rx);
            self.finish(&mut opened).await;
            return;
        }
        // The backlog was counted as waiting when it was queued.
        session.written(backlog_bytes);
        COUNTERS.data_sent.inc_by(backlog_bytes as u64);
        COUNTERS.sse_clients.inc();
        self.sessions.write().insert(session.id, session.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            session.close(DisconnectReason::SERVER_RESTART);
        }
        let inflight = self
            .serve(&mut wire, &mut rx, &mut opened, None, &mut bad_input)
            .await;
        bad_input.finish(session.log_id());
        COUNTERS.sse_clients.dec();
        drop(wire);
        drop(rx);
        if let Some(command) = inflight {
            command.await;
        }
        self.finish(&mut opened).await;
        drop(pending);
    }

    /// The request read and its Origin checked; else the response that refuses it (a
    /// preflight's answer too).
    fn admit_events(
        &self,
        head: &RequestHead,
        body: &[u8],
        peer: Option<SocketAddr>,
    ) -> Result<EventsRequest, String> {
        let allowed = crate::http::origin::request_allowed(head, &self.config.origins);
        if head.method == "OPTIONS" {
            return Err(events::preflight_response(head, allowed));
        }
        if !allowed {
            super::accept::origin_refused("events request", head, peer);
            return Err(events::refusal_response(
                head,
                false,
                403,
                "origin not allowed",
            ));
        }
        events::read_request(head, body).map_err(|refusal| {
            COUNTERS.failed_client_msg.inc();
            events::refusal_response(head, true, refusal.status, &refusal.reason)
        })
    }

    /// The head, the welcome and what the subscriptions answered; false when the
    /// client is gone already (or the backlog closed the stream).
    async fn start_stream(
        &self,
        wire: &mut EventStream,
        head: &RequestHead,
        welcome: &str,
        backlog: Vec<Outbound>,
    ) -> bool {
        let started = async {
            wire.write_raw(events::stream_head(head).as_bytes()).await?;
            wire.feed(welcome.to_string().into()).await?;
            for out in backlog {
                match out {
                    Outbound::Frame(frame) => wire.feed(frame).await?,
                    Outbound::Close(closing) => {
                        wire.close(&closing).await;
                        return Ok(false);
                    }
                }
            }
            wire.flush().await.map(|_| true)
        };
        matches!(
            tokio::time::timeout(self.config.write_timeout, started).await,
            Ok(Ok(true))
        )
    }
}

/// A frame's `type`, if it has one.
fn reply_type(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_str::<Reply>(frame).ok()?.kind
}

/// The status that refuses a client its connection was closed for `reason`: 401
/// when it is not let in (a browser's EventSource then stops for good), 500 when
/// the app failed, 503 for the rest (the server going away, say).
pub(super) fn status_for(reason: &str) -> u16 {
    match reason {
        "unauthorized" | "token_expired" => 401,
        "server_error" => 500,
        _ => 503,
    }
}
