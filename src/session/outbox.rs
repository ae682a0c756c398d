//! A session's outbound queue: a `VecDeque` behind a lock plus a `Notify`, not a
//! channel: an idle connection then holds no queue allocation at all (a tokio channel
//! keeps a block of slots per connection, about 1.3 KiB). The byte count of what waits
//! is capped (`ANYCABLE_MAX_PENDING_BYTES`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{DisconnectReason, Session, SessionRef};

pub(crate) enum Outbound {
    Frame(Utf8Bytes),
    /// Close after what is queued.
    Close(Closing),
}

/// How a session's socket is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closing {
    /// A disconnect message first, then the close frame its reason calls for.
    Told(DisconnectReason),
    /// No message (the application already sent one, or wants none): 1000.
    Quiet,
    /// The server is going away and the session stays restorable: 1001 with no
    /// disconnect message, which would make AnyCable's JS client drop its sid (it
    /// keeps it across a bare close and asks to restore).
    Restorable,
}

impl Session {
    pub(super) fn push(&self, out: Outbound) -> bool {
        {
            let mut queue = self.outbox.lock();
            if self.receiver_gone.load(Ordering::Acquire) {
                return false;
            }
            queue.push_back(out);
        }
        self.notify.notify_one();
        true
    }

    /// Queues a text frame. Returns false when the session is closing or gone.
    pub fn send_frame(&self, frame: Utf8Bytes) -> bool {
        if self.is_closing() {
            return false;
        }
        let len = frame.len();
        let pending = self.pending.fetch_add(len, Ordering::Relaxed) + len;
        if pending > self.max_pending {
            self.too_slow(format_args!("{pending} bytes waiting to be written"));
            return false;
        }
        self.push(Outbound::Frame(frame))
    }

    /// Queues a text frame built by the application (e.g. Ruby's `transmit`).
    pub fn transmit(&self, text: String) -> bool {
        self.send_frame(text.into())
    }

    pub(crate) fn written(&self, bytes: usize) {
        self.pending.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The reading end of a session's outbound queue, owned by its connection task.
pub(crate) struct Outbox {
    pub(super) session: SessionRef,
}

impl Outbox {
    /// Waits for the next frame. Cancel-safe: nothing is taken until it returns.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Ok(out) = self.try_recv() {
                return Some(out);
            }
            // notify_one stores a permit when nobody waits, so a push between the
            // check above and this await is not missed.
            self.session.notify.notified().await;
        }
    }

    /// Whether nothing waits (a frame may still come at any time).
    pub(crate) fn is_empty(&self) -> bool {
        self.session.outbox.lock().is_empty()
    }

    pub(crate) fn try_recv(&mut self) -> Result<Outbound, ()> {
        let mut queue = self.session.outbox.lock();
        let out = queue.pop_front().ok_or(())?;
        if queue.is_empty() && queue.capacity() > 32 {
            // A burst is over: give its memory back.
            *queue = VecDeque::new();
        }
        Ok(out)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.session.receiver_gone.store(true, Ordering::Release);
        std::mem::take(&mut *self.session.outbox.lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pending_bytes_then_closes_once() {
        let (s, mut rx) = Session::new(1, "s".into(), 10);
        assert!(s.send_frame("12345".into()));
        assert!(!s.send_frame("123456".into()));
        assert!(!s.send_frame("1".into()));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        match rx.try_recv() {
            Ok(Outbound::Close(r)) => assert_eq!(r, Closing::Told(DisconnectReason::TOO_SLOW)),
            _ => panic!("expected close"),
        }
        assert!(rx.try_recv().is_err());
    }
}
