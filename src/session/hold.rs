//! The hold gate: live broadcasts to a subscription wait while its history is
//! replayed, then follow the replay, once and in order. The hub checks the `holding`
//! flag before it looks at the held frames, so sessions with nothing held pay one
//! relaxed load per broadcast.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Session;

/// A live broadcast frame kept back while its subscription's history is replayed.
type HeldFrame = (Arc<str>, Option<u64>, Utf8Bytes);

#[derive(Default)]
pub(super) struct Held {
    /// Live frames for held subscriptions, by identifier: (stream, offset, frame).
    frames: HashMap<String, Vec<HeldFrame>>,
    /// (identifier, stream, offset) a replay from the NATS broker reached: a live
    /// frame at or below it was in the replay (JetStream's consumer can lag its direct
    /// reads). The first live frame above it ends the entry (they come in offset
    /// order); so does the consumer's delivering past it
    /// ([`crate::broker::jetstream::consumed`]).
    replayed: Vec<(String, Arc<str>, u64)>,
    /// Restored subscriptions held until the client's `history` for them (see
    /// [`Session::hold_restored`]); a `history` command claims its identifier.
    unclaimed: Vec<String>,
    /// Bytes of `frames`: they count against the session's cap as queued ones do.
    bytes: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.replayed.is_empty()
    }

    /// Takes subscription `identifier`'s held frames out.
    fn take(&mut self, identifier: &str) -> Vec<HeldFrame> {
        let frames = self.frames.remove(identifier).unwrap_or_default();
        self.bytes -= frames.iter().map(|(_, _, f)| f.len()).sum::<usize>();
        frames
    }
}

impl Session {
    /// Lets the hub's fast path skip `held` again once nothing is held or remembered.
    fn settle_holding(&self, held: &Held) {
        if held.is_empty() {
            self.holding.store(false, Ordering::SeqCst);
        }
    }

    /// Keeps live broadcasts to subscription `identifier` back from now until
    /// [`Session::release`]: a subscribe with history joins its streams before the
    /// replay is read, and what arrives in between must follow the replay, once.
    pub fn hold(&self, identifier: &str) {
        let mut held = self.held.lock();
        held.unclaimed.retain(|i| i != identifier);
        held.frames.entry(identifier.to_owned()).or_default();
        self.holding.store(true, Ordering::SeqCst);
    }

    /// Holds restored subscriptions from before they join their streams again: the
    /// client asks each one's history right after the welcome (`restored_ids`), and
    /// what is broadcast in between must follow that replay, once and in order (AnyCable
    /// sends it first). A `history` command takes its subscription over
    /// ([`Session::hold`]); [`Session::release_unclaimed`] lets the others go.
    pub fn hold_restored<'a>(&self, identifiers: impl IntoIterator<Item = &'a str>) {
        let mut held = self.held.lock();
        for identifier in identifiers {
            held.frames.entry(identifier.to_owned()).or_default();
            held.unclaimed.push(identifier.to_owned());
        }
        if !held.is_empty() {
            self.holding.store(true, Ordering::SeqCst);
        }
    }

    /// Sends what restored subscriptions no `history` command claimed kept back (a
    /// client that asks no history): subscription by subscription, each in arrival
    /// order.
    pub fn release_unclaimed(&self) {
        let mut held = self.held.lock();
        for identifier in std::mem::take(&mut held.unclaimed) {
            for (_, _, frame) in held.take(&identifier) {
                self.send_frame(frame);
            }
        }
        self.settle_holding(&held);
    }

    /// Subscription `identifier` is gone (unsubscribed, rejected): what was held for
    /// it goes nowhere, and nothing is held for it any more.
    pub fn drop_held(&self, identifier: &str) {
        let mut held = self.held.lock();
        held.take(identifier);
        held.unclaimed.retain(|i| i != identifier);
        held.replayed.retain(|(i, _, _)| i != identifier);
        self.settle_holding(&held);
    }

    /// Queues a hub frame for subscription `identifier` on `stream`, or keeps it back
    /// when the subscription is held. Relaxed first check: `hold` runs before the
    /// hub subscription, whose lock orders it before any broadcast that sees it.
    pub(crate) fn send_live(
        &self,
        identifier: &str,
        stream: &Arc<str>,
        offset: Option<u64>,
        frame: Utf8Bytes,
    ) -> bool {
        if self.holding.load(Ordering::Relaxed) {
            let mut guard = self.held.lock();
            let held = &mut *guard;
            if let Some(frames) = held.frames.get_mut(identifier) {
                if self.is_closing() {
                    return false;
                }
                let waiting = self.pending.load(Ordering::Relaxed) + held.bytes + frame.len();
                if waiting <= self.max_pending {
                    held.bytes += frame.len();
                    frames.push((stream.clone(), offset, frame));
                    return true;
                }
                drop(guard);
                self.too_slow(format_args!(
                    "{waiting} bytes waiting to be written (held for a replay)"
                ));
                return false;
            }
            let mut held = guard;
            let consumed = crate::broker::jetstream::consumed();
            held.replayed.retain(|(_, _, upto)| *upto > consumed);
            if let (Some(offset), Some(at)) = (
                offset,
                held.replayed
                    .iter()
                    .position(|(i, s, _)| i == identifier && s == stream),
            ) {
                if offset <= held.replayed[at].2 {
                    return false; // sent with the replay
                }
                held.replayed.swap_remove(at);
            }
            self.settle_holding(&held);
        }
        self.send_frame(frame)
    }

    /// Bytes a replay may queue now: the pending-bytes cap less what waits to be written
    /// and what is held (which follows the replay).
    pub(crate) fn room_for_replay(&self) -> usize {
        let held = self.held.lock().bytes;
        self.max_pending
            .saturating_sub(self.pending.load(Ordering::Relaxed))
            .saturating_sub(held)
    }

    /// Ends [`Session::hold`]: queues `before` (the replay and its reply), then the
    /// frames kept back whose offset is above what `replayed` says the replay reached
    /// for their stream (frames without an offset all go), all before any later live
    /// frame for `identifier`.
    pub fn release(
        &self,
        identifier: &str,
        before: impl IntoIterator<Item = Utf8Bytes>,
        replayed: &HashMap<Arc<str>, u64>,
        lagging_live: bool,
    ) {
        let mut held = self.held.lock();
        for frame in before {
            self.send_frame(frame);
        }
        let consumed = crate::broker::jetstream::consumed();
        let mut reached: Vec<(Arc<str>, u64)> = replayed
            .iter()
            .filter(|(_, o)| lagging_live && **o > consumed)
            .map(|(s, o)| (s.clone(), *o))
            .collect();
        for (stream, offset, frame) in held.take(identifier) {
            let upto = replayed.get(&stream).copied().unwrap_or(0);
            if offset.is_none_or(|o| o > upto) {
                if offset.is_some() {
                    reached.retain(|(s, _)| *s != stream);
                }
                self.send_frame(frame);
            }
        }
        held.replayed.retain(|(i, _, _)| i != identifier);
        held.replayed.extend(
            reached
                .into_iter()
                .map(|(stream, o)| (identifier.to_owned(), stream, o)),
        );
        self.settle_holding(&held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Outbound, Outbox};

    fn frames(rx: &mut Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outbound::Frame(f)) = rx.try_recv() {
            out.push(f.as_str().to_owned());
        }
        out
    }

    #[test]
    fn a_live_copy_of_a_replayed_message_is_dropped_even_after_the_replay() {
        let (s, mut rx) = Session::new(1, "s".into(), 1 << 20);
        let stream: Arc<str> = Arc::from("st");
        s.hold("id");
        // Live 7 arrives while the replay (5, 6, 7) is read: held, then dropped.
        assert!(s.send_live("id", &stream, Some(7), "live7".into()));
        let replayed: HashMap<Arc<str>, u64> = [(stream.clone(), 7)].into();
        s.release(
            "id",
            ["r5".into(), "r6".into(), "r7".into()],
            &replayed,
            true,
        );
        assert_eq!(frames(&mut rx), ["r5", "r6", "r7"]);
        // JetStream's consumer lags: 6 and 7 come live after the replay; then 8.
        assert!(!s.send_live("id", &stream, Some(6), "live6".into()));
        assert!(!s.send_live("id", &stream, Some(7), "live7".into()));
        assert!(s.send_live("id", &stream, Some(8), "live8".into()));
        assert!(s.send_live("id", &stream, Some(9), "live9".into()));
        assert_eq!(frames(&mut rx), ["live8", "live9"]);
        assert!(!s.holding.load(Ordering::SeqCst));
        // The memory broker delivers under its lock: nothing to remember after a replay.
        s.hold("id");
        s.release("id", ["r10".into()], &[(stream.clone(), 10)].into(), false);
        assert!(s.send_live("id", &stream, Some(10), "live10".into()));
        assert!(!s.holding.load(Ordering::SeqCst));
    }

    #[test]
    fn restored_subscriptions_wait_for_their_history_then_go_without_it() {
        let (s, mut rx) = Session::new(1, "s".into(), 1 << 20);
        let stream: Arc<str> = Arc::from("st");
        s.hold_restored(["a", "b"]);
        assert!(s.send_live("a", &stream, Some(4), "a4".into()));
        assert!(s.send_live("b", &stream, Some(4), "b4".into()));
        assert!(frames(&mut rx).is_empty());
        // "a"'s history comes: its replay, then what was kept back past it.
        s.hold("a");
        s.release_unclaimed(); // the timer firing meanwhile leaves "a" alone
        assert_eq!(frames(&mut rx), ["b4"]);
        assert!(s.send_live("a", &stream, Some(5), "a5".into()));
        s.release(
            "a",
            ["r3".into(), "confirm".into()],
            &[(stream.clone(), 3)].into(),
            false,
        );
        assert_eq!(frames(&mut rx), ["r3", "confirm", "a4", "a5"]);
        assert!(s.send_live("b", &stream, Some(6), "b6".into()));
        assert_eq!(frames(&mut rx), ["b6"]);
        assert!(!s.holding.load(Ordering::SeqCst));
        // Unsubscribed (or rejected) before its history: what was held goes nowhere.
        s.hold_restored(["c"]);
        assert!(s.send_live("c", &stream, Some(7), "c7".into()));
        s.drop_held("c");
        s.release_unclaimed();
        assert!(frames(&mut rx).is_empty());
        assert!(!s.holding.load(Ordering::SeqCst));
    }

    #[test]
    fn held_frames_count_against_the_cap() {
        let (s, mut rx) = Session::new(1, "s".into(), 10);
        let stream: Arc<str> = Arc::from("st");
        s.hold("id");
        assert!(s.send_live("id", &stream, Some(1), "12345".into()));
        assert!(!s.send_live("id", &stream, Some(2), "123456".into()));
        assert!(s.is_closing());
        s.release("id", [], &HashMap::new(), false);
        assert!(frames(&mut rx).is_empty());
    }
}
