//! History requests (`history`, alone or on a subscribe): what a client missed on a
//! subscription's streams, read from the [`Broker`](crate::broker::Broker), replayed
//! in order before whatever arrived live meanwhile (the session's hold gate), then
//! `confirm_history`; or `reject_history` when any part cannot be served.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Inner;
use crate::controller::Controller;
use crate::protocol;
use crate::protocol::{HistoryRequest, Position};
use crate::session::Session;

impl<C: Controller> Inner<C> {
    /// Replays what a client missed on subscription `identifier`'s streams, then
    /// `confirm_history`; or only `reject_history` when any stream's part cannot be
    /// served (AnyCable's `History`). A request for nothing, or for a subscription
    /// with no streams here, gets no reply.
    ///
    /// Which subscriptions have streams is what the session knows: server-side ones
    /// and the app's plain `stream_from`/`stream_for`. A rejected subscribe has none
    /// (Action Cable stops a rejected channel's streams), so `history` on a subscribe
    /// is answered only when it succeeded; a subscription that streams only through
    /// Ruby blocks (`stream_from` with a block or coder) has none either.
    pub(super) async fn send_history(
        &self,
        session: &Session,
        identifier: &str,
        request: &HistoryRequest,
    ) {
        // Held from before the subscribe joined the streams, or from now for a bare
        // `history` command: live frames wait until the replay is queued.
        session.hold(identifier);
        let mut replayed: HashMap<Arc<str>, u64> = HashMap::new();
        let mut frames = self
            .history_frames(session, identifier, request, &mut replayed)
            .await;
        // A replay the client could not take (queued with what already waits, it would
        // pass ANYCABLE_MAX_PENDING_BYTES) is refused, not sent and cut short with
        // `too_slow`: the client would reconnect and ask for the same, for ever. After
        // `reject_history` it refetches instead.
        let size: usize = frames.iter().map(|f| f.len()).sum();
        let room = session.room_for_replay();
        if size > room {
            log::info!(
                "session {}: a history replay of {size} bytes is over the {room} the client \
                 may still have waiting (ANYCABLE_MAX_PENDING_BYTES); reject_history",
                session.log_id()
            );
            frames = vec![protocol::history_reply(identifier, false).into()];
            replayed.clear();
        }
        let lagging_live = self.broker.live_may_lag_replays();
        session.release(identifier, frames, &replayed, lagging_live);
    }

    /// The replay and its reply for [`Self::send_history`]; `replayed` gets, per
    /// stream, the offset the client has everything up to once the replay is in.
    async fn history_frames(
        &self,
        session: &Session,
        identifier: &str,
        request: &HistoryRequest,
        replayed: &mut HashMap<Arc<str>, u64>,
    ) -> Vec<Utf8Bytes> {
        if request.is_empty() || session.is_closing() {
            return Vec::new();
        }
        let broker_on = self.broker.is_on();
        let streams = session.streams_of(identifier);
        if streams.is_empty() {
            // A subscription with no stream here has nothing to miss: confirmed, as
            // AnyCable does; an unknown one gets no reply.
            return if session.has_subscription(identifier) {
                vec![protocol::history_reply(identifier, broker_on).into()]
            } else {
                Vec::new()
            };
        }
        let Some(store) = self.broker.history().await else {
            // No broker: nothing is kept, as AnyCable's legacy broker. The NATS broker
            // with JetStream still away: the client refetches.
            if broker_on {
                crate::logging::once_a_second(&REFUSED_LOG, |more| {
                    log::info!(
                        "session {}: history refused: the NATS broker's stream is not reachable yet ({more} more since the last line)",
                        session.log_id()
                    );
                });
            }
            return vec![protocol::history_reply(identifier, false).into()];
        };
        let epoch = store.epoch();
        let mut frames = Vec::new();
        for stream in &streams {
            let (result, from) = match request.position(stream) {
                Some(p) => (store.from(stream, &p.epoch, p.offset).await, p.offset),
                None if request.since > 0 => (store.since(stream, request.since).await, 0),
                None => continue,
            };
            let entries = match result {
                Ok(entries) => entries,
                Err(why) => {
                    // Logged (once a second at most): a client refetches, and an
                    // operator wants to know why (a client's bad position, or the store).
                    crate::logging::once_a_second(&REFUSED_LOG, |more| {
                        log::info!(
                            "session {}: history refused: {why} ({more} more since the last line)",
                            session.log_id()
                        );
                    });
                    return vec![protocol::history_reply(identifier, false).into()];
                }
            };
            let last = entries.last().map_or(from, |e| e.offset.max(from));
            replayed.insert(stream.clone(), last);
            frames.extend(entries.iter().map(|e| {
                protocol::broadcast_frame_at(
                    identifier,
                    &e.data,
                    Some(Position {
                        stream,
                        epoch: &epoch,
                        offset: e.offset,
                    }),
                )
            }));
        }
        frames.push(protocol::history_reply(identifier, true).into());
        frames
    }
}

static REFUSED_LOG: crate::logging::Throttle = crate::logging::Throttle::new();
