//! Log lines about bad client input, bounded: a client that sends garbage in a loop
//! must not turn every frame into a log line (0.8 MB in was 11 MB of log). Per
//! connection, one line per [`PER_CONNECTION`] interval; overall, at most
//! [`OVERALL_PER_SECOND`] lines a second. What is not logged is counted, and the count
//! is told with the next line that is.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const PER_CONNECTION: Duration = Duration::from_secs(10);
pub const OVERALL_PER_SECOND: u32 = 20;

/// Bad client messages seen since the process started.
pub static BAD_INPUT_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Of those, how many got no log line of their own.
pub static BAD_INPUT_UNLOGGED: AtomicU64 = AtomicU64::new(0);

/// Lines allowed per one-second window.
struct Budget(Mutex<Option<(Instant, u32)>>);

impl Budget {
    const fn new() -> Self {
        Budget(Mutex::new(None))
    }

    fn allows(&self, now: Instant) -> bool {
        let mut window = self.0.lock();
        match window.as_mut() {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *count += 1;
                *count <= OVERALL_PER_SECOND
            }
            _ => {
                *window = Some((now, 1));
                true
            }
        }
    }
}

static OVERALL: Budget = Budget::new();

/// The longest piece of client-made text a log line carries.
pub const MAX_LINE_TEXT: usize = 512;

/// `text` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

/// A line about a request refused before the upgrade (a bad Origin, a broken
/// handshake): each comes on a new connection, so only the overall budget bounds them.
pub fn refused(what: fmt::Arguments<'_>) {
    BAD_INPUT_TOTAL.fetch_add(1, Ordering::Relaxed);
    if OVERALL.allows(Instant::now()) {
        log::error!("{}", clip(&what.to_string(), MAX_LINE_TEXT));
    } else {
        BAD_INPUT_UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

/// At most one line a second for an event that may come in floods; the count of
/// events without a line of their own goes with the next line.
pub struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    pub const fn new() -> Self {
        Throttle(Mutex::new((None, 0)))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `line(unlogged)` if a second has passed since the last line, else counts.
pub fn once_a_second(throttle: &Throttle, line: impl FnOnce(u64)) {
    let now = Instant::now();
    let mut state = throttle.0.lock();
    if state
        .0
        .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
    {
        state.1 += 1;
        return;
    }
    let unlogged = std::mem::take(&mut state.1);
    state.0 = Some(now);
    drop(state);
    line(unlogged);
}

/// One connection's budget of log lines about its bad input.
#[derive(Default)]
pub struct BadInputLog {
    last: Option<Instant>,
    unlogged: u32,
}

impl BadInputLog {
    pub fn warn(&mut self, sid: &str, what: fmt::Arguments<'_>) {
        BAD_INPUT_TOTAL.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= PER_CONNECTION);
        if due && OVERALL.allows(now) {
            let what = what.to_string();
            let what = clip(&what, MAX_LINE_TEXT);
            if self.unlogged > 0 {
                log::warn!(
                    "session {sid}: {what} (and {} more bad messages since the last line)",
                    self.unlogged
                );
            } else {
                log::warn!("session {sid}: {what}");
            }
            self.last = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
            BAD_INPUT_UNLOGGED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At the end of the connection: says how many bad messages went unlogged.
    pub fn finish(&self, sid: &str) {
        if self.unlogged > 0 {
            log::info!(
                "session {sid}: {} more bad messages were ignored without a line each",
                self.unlogged
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_long_text_on_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééé", 3), "é… (6 bytes)");
        assert!(clip(&"x".repeat(70_000), MAX_LINE_TEXT).len() < MAX_LINE_TEXT + 20);
    }

    #[test]
    fn one_line_per_interval_per_connection_the_rest_counted() {
        let mut log = BadInputLog::default();
        let before = BAD_INPUT_UNLOGGED.load(Ordering::Relaxed);
        for _ in 0..100 {
            log.warn("s", format_args!("bad"));
        }
        assert_eq!(log.unlogged, 99);
        assert!(BAD_INPUT_UNLOGGED.load(Ordering::Relaxed) - before >= 99);
    }

    #[test]
    fn overall_lines_per_second_are_capped() {
        let budget = Budget::new();
        let now = Instant::now();
        let allowed = (0..100).filter(|_| budget.allows(now)).count();
        assert_eq!(allowed, OVERALL_PER_SECOND as usize);
        assert!(budget.allows(now + Duration::from_secs(2)));
    }
}
