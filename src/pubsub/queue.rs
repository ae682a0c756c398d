//! The bounded queue of publishes waiting for the pub/sub server (or JetStream).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Publishes waiting for the pub/sub server, bounded: while it is unreachable they
/// queue here (not without end: +50 MiB for 500 × 100 KiB before), at most
/// [`MAX_QUEUED_BYTES`] and [`MAX_QUEUED_AGE`]. Past either, the oldest go, and an
/// error line (at most one per [`DROP_REPORT_EVERY`]) says how many.
pub struct PublishQueue<T: Queued = String> {
    label: &'static str,
    state: parking_lot::Mutex<QueueState<T>>,
    notify: tokio::sync::Notify,
    max_bytes: usize,
    max_age: Duration,
}

pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_QUEUED_AGE: Duration = Duration::from_secs(30);
pub const DROP_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Broadcasts dropped by any publish queue since the process started.
pub static DROPPED_PUBLISHES: AtomicU64 = AtomicU64::new(0);

/// What a [`PublishQueue`] holds: its size counts against the byte cap.
pub trait Queued: Send + 'static {
    fn size(&self) -> usize;
}

impl Queued for String {
    fn size(&self) -> usize {
        self.len()
    }
}

struct QueueState<T> {
    items: VecDeque<(Instant, T)>,
    bytes: usize,
    unreported: u64,
    unreported_bytes: usize,
    last_report: Option<Instant>,
    /// Backlog bytes handed out in the current [`REPLAY_TICK`], and when it began.
    replay: Option<(Instant, usize)>,
}

impl<T> Default for QueueState<T> {
    fn default() -> Self {
        QueueState {
            items: VecDeque::new(),
            bytes: 0,
            unreported: 0,
            unreported_bytes: 0,
            last_report: None,
            replay: None,
        }
    }
}

/// Payloads older than this when taken are backlog (the pub/sub server was away).
pub const BACKLOG_AGE: Duration = Duration::from_millis(500);
/// Backlog goes out at most [`REPLAY_BYTES_PER_TICK`] per tick (2.5 MiB/s): replayed
/// at once, a 16 MiB backlog would reach subscribers faster than most can read, and
/// each would be dropped as too_slow past its pending-bytes cap (seen in
/// bench/outage_memory.rb: 28-44 of 164 arrived). Live broadcasts are not paced.
pub const REPLAY_TICK: Duration = Duration::from_millis(100);
pub const REPLAY_BYTES_PER_TICK: usize = 256 * 1024;

impl<T: Queued> PublishQueue<T> {
    pub fn new(label: &'static str) -> Self {
        Self::with_limits(label, MAX_QUEUED_BYTES, MAX_QUEUED_AGE)
    }

    pub fn with_limits(label: &'static str, max_bytes: usize, max_age: Duration) -> Self {
        PublishQueue {
            label,
            state: parking_lot::Mutex::new(QueueState::default()),
            notify: tokio::sync::Notify::new(),
            max_bytes,
            max_age,
        }
    }

    /// Queues a payload; never blocks.
    pub fn push(&self, payload: T) {
        {
            let mut state = self.state.lock();
            while state.bytes + payload.size() > self.max_bytes && !state.items.is_empty() {
                self.drop_front(&mut state);
            }
            state.bytes += payload.size();
            state.items.push_back((Instant::now(), payload));
            self.report(&mut state);
        }
        self.notify.notify_one();
    }

    /// Puts back a payload that could not be published, to go first next time.
    pub fn retry(&self, queued_at: Instant, payload: T) {
        let mut state = self.state.lock();
        state.bytes += payload.size();
        state.items.push_front((queued_at, payload));
    }

    /// The oldest payload still young enough, with when it was queued.
    pub async fn next(&self) -> (Instant, T) {
        loop {
            let notified = self.notify.notified();
            let pause = {
                let mut guard = self.state.lock();
                let state = &mut *guard;
                let now = Instant::now();
                while state
                    .items
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > self.max_age)
                {
                    self.drop_front(state);
                }
                self.report(state);
                let pause = match state.items.front() {
                    Some((at, payload)) if now.duration_since(*at) > BACKLOG_AGE => {
                        Self::replay_pause(&mut state.replay, now, payload.size())
                    }
                    _ => None,
                };
                if pause.is_none() {
                    if let Some((at, payload)) = state.items.pop_front() {
                        state.bytes -= payload.size();
                        return (at, payload);
                    }
                }
                pause
            };
            match pause {
                Some(pause) => tokio::time::sleep(pause).await,
                None => notified.await,
            }
        }
    }

    /// Counts `len` backlog bytes into the current tick; how long to wait first when
    /// the tick is full.
    fn replay_pause(
        replay: &mut Option<(Instant, usize)>,
        now: Instant,
        len: usize,
    ) -> Option<Duration> {
        match replay {
            Some((start, used)) if now.duration_since(*start) < REPLAY_TICK => {
                if *used > 0 && *used + len > REPLAY_BYTES_PER_TICK {
                    return Some(REPLAY_TICK - now.duration_since(*start));
                }
                *used += len;
            }
            _ => *replay = Some((now, len)),
        }
        None
    }

    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn drop_front(&self, state: &mut QueueState<T>) {
        if let Some((_, payload)) = state.items.pop_front() {
            state.bytes -= payload.size();
            state.unreported += 1;
            state.unreported_bytes += payload.size();
            DROPPED_PUBLISHES.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self, state: &mut QueueState<T>) {
        if state.unreported == 0 {
            return;
        }
        let now = Instant::now();
        if state
            .last_report
            .is_some_and(|last| now.duration_since(last) < DROP_REPORT_EVERY)
        {
            return;
        }
        log::error!(
            "{}: {} broadcasts ({} bytes) dropped: the pub/sub server was unreachable and \
             the publish queue went over {} bytes or {:?}",
            self.label,
            state.unreported,
            state.unreported_bytes,
            self.max_bytes,
            self.max_age
        );
        state.unreported = 0;
        state.unreported_bytes = 0;
        state.last_report = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_backlog_but_not_live_payloads() {
        let q: PublishQueue = PublishQueue::new("test");
        let chunk = "x".repeat(100 * 1024);
        for _ in 0..10 {
            q.push(chunk.clone());
        }
        tokio::time::sleep(BACKLOG_AGE + Duration::from_millis(50)).await;
        let started = Instant::now();
        for _ in 0..10 {
            q.next().await;
        }
        // 1000 KiB of backlog at 256 KiB per 100 ms tick: at least 4 ticks of waiting.
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        for _ in 0..10 {
            q.push(chunk.clone());
            q.next().await;
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn drops_the_oldest_past_the_byte_cap_and_expires_by_age() {
        let before = DROPPED_PUBLISHES.load(Ordering::Relaxed);
        let q: PublishQueue = PublishQueue::with_limits("test", 10, Duration::from_millis(50));
        q.push("aaaa".into());
        q.push("bbbb".into());
        q.push("cccc".into());
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await.1, "bbbb");
        q.push("dddd".into());
        tokio::time::sleep(Duration::from_millis(80)).await;
        q.push("eeee".into());
        assert_eq!(q.next().await.1, "eeee");
        assert!(q.is_empty());
        assert!(DROPPED_PUBLISHES.load(Ordering::Relaxed) - before >= 3);
    }
}
