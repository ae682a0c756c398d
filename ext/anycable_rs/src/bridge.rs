//! The Ruby-call bridge: how tokio tasks get Ruby code run.
//!
//! tokio workers never touch Ruby. They put a [`Job`] on a queue and await a oneshot
//! reply; Ruby threads (created from Ruby, see `AnyCableRs::Runtime`) take jobs with the
//! GVL released, run the app's code and send the reply. Requests from connections
//! (connect, commands, disconnect) are bounded by a semaphore, so a flood of commands
//! makes tokio wait rather than queue without end; hub callbacks and timer ticks,
//! which start on threads that cannot wait, go on the queue directly — callbacks up
//! to `ANYCABLE_MAX_CALLBACK_JOBS` queued, past which they are dropped, counted and
//! told (a timer has at most one tick queued).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anycable_core::broker::CachedSession;
use anycable_core::http::RequestHead;
use anycable_core::protocol::Command;
use anycable_core::session::SessionRef;
use anycable_core::{CommandRequest, ConnectReply, ConnectRequest, Controller};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

/// What a Ruby thread is asked to do. The reply senders are `Option`s only so that
/// [`crate::job::RubyJob`] can move them into its reply slot; they are always set when
/// a job is queued.
pub enum Job {
    Connect {
        reply: Option<oneshot::Sender<ConnectReply>>,
        session: SessionRef,
        head: RequestHead,
        remote_addr: Option<std::net::SocketAddr>,
        env_token: u64,
        /// A JWT's (or a restored session's) identifiers: build the connection with
        /// them, without `connect`.
        identifiers: Option<String>,
        /// A restored session: rebuild its channels, without `subscribed`. Boxed:
        /// jobs are moved through the queue, and most connects have none.
        restored: Option<Box<CachedSession>>,
    },
    Command {
        reply: Option<oneshot::Sender<()>>,
        session_id: u64,
        command: Command,
        identifier: String,
        data: Option<String>,
    },
    Disconnect {
        reply: Option<oneshot::Sender<()>>,
        session_id: u64,
    },
    /// A socket handed over with a kept Rack env will never reach `connect` (refused
    /// handshake, client gone): Ruby drops the env now rather than on expiry.
    ReleaseEnv { env_token: u64 },
    /// A broadcast for a stream that Ruby code subscribed to with a callback.
    Callback { id: u64, payload: Arc<str> },
    /// A periodic timer fired; `pending` is cleared when Ruby takes the job, so a slow
    /// timer body never piles up ticks.
    Timer { id: u64, pending: Arc<AtomicBool> },
}

impl Job {
    /// The job's kind, as Ruby's `Job#kind` and the metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Connect { .. } => "connect",
            Job::Command { .. } => "command",
            Job::Disconnect { .. } => "disconnect",
            Job::ReleaseEnv { .. } => "release_env",
            Job::Callback { .. } => "callback",
            Job::Timer { .. } => "timer",
        }
    }

    fn is_request(&self) -> bool {
        matches!(
            self,
            Job::Connect { .. } | Job::Command { .. } | Job::Disconnect { .. }
        )
    }
}

const SPIN: Duration = Duration::from_micros(50);
static CALLBACKS_DROPPED_LOG: anycable_core::logging::Throttle =
    anycable_core::logging::Throttle::new();
/// A job that waits longer than this for a Ruby thread is worth a warning.
pub const SLOW_QUEUE: Duration = Duration::from_secs(1);
const SLOW_QUEUE_LOG_EVERY: Duration = Duration::from_secs(10);

pub enum Pop {
    Job(Job),
    Empty,
    Closed,
}

/// What the queue tells about itself: how long jobs wait for a Ruby thread, and how
/// many threads are busy. With every thread stuck in slow actions, commands and new
/// connections wait, as in Action Cable; this is how that shows.
struct Load {
    /// When each queued job was queued, oldest first (the channel is FIFO).
    queued_at: Mutex<VecDeque<Instant>>,
    /// Requests waiting for room in the queue (all permits taken).
    waiting_for_room: AtomicUsize,
    /// Ruby threads between taking a job and asking for the next one.
    busy: AtomicUsize,
    /// Callback jobs queued, and those dropped because the queue held the most.
    callbacks: AtomicUsize,
    callbacks_dropped: prometheus::IntCounter,
    /// Jobs run, and seconds spent running them in Ruby, by kind.
    jobs: prometheus::IntCounterVec,
    job_seconds: prometheus::CounterVec,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            queued_at: Mutex::default(),
            waiting_for_room: AtomicUsize::default(),
            busy: AtomicUsize::default(),
            callbacks: AtomicUsize::default(),
            callbacks_dropped: prometheus::IntCounter::new(
                "anycable_rs_callback_jobs_dropped_total",
                "Broadcasts for Ruby stream_from blocks/coders dropped: \
                 ANYCABLE_MAX_CALLBACK_JOBS were queued",
            )
            .expect("valid metric"),
            jobs: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "anycable_rs_jobs_total",
                    "Jobs run by the Ruby threads, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            job_seconds: prometheus::CounterVec::new(
                prometheus::Opts::new(
                    "anycable_rs_job_seconds_total",
                    "Seconds the Ruby threads spent running jobs, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        }
    }
}

/// A snapshot of [`Load`].
#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    pub queued: usize,
    pub waiting_for_room: usize,
    pub oldest_wait: Duration,
    pub busy_threads: usize,
}

thread_local! {
    /// Whether this (Ruby) thread took a job it has not finished: it has when it asks
    /// for the next one.
    static HOLDING_JOB: Cell<Option<(&'static str, Instant)>> = const { Cell::new(None) };
}

#[derive(Clone)]
pub struct JobQueue {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    permits: Arc<Semaphore>,
    /// `ANYCABLE_MAX_CALLBACK_JOBS`.
    max_callbacks: usize,
    closed: Arc<AtomicBool>,
    spinning: Arc<AtomicBool>,
    load: Arc<Load>,
}

impl JobQueue {
    pub fn new(capacity: usize, max_callbacks: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        JobQueue {
            tx,
            rx,
            permits: Arc::new(Semaphore::new(capacity.max(1))),
            // 0: no limit.
            max_callbacks: if max_callbacks == 0 {
                usize::MAX
            } else {
                max_callbacks
            },
            closed: Arc::new(AtomicBool::new(false)),
            spinning: Arc::new(AtomicBool::new(false)),
            load: Arc::new(Load::default()),
        }
    }

    fn send(&self, job: Job) -> bool {
        // Under the lock, so the times stay in the channel's order.
        let mut queued_at = self.load.queued_at.lock();
        let sent = self.tx.send(job).is_ok();
        if sent {
            queued_at.push_back(Instant::now());
        }
        sent
    }

    /// Bookkeeping for a job just taken by the calling (Ruby) thread.
    fn took(&self, job: Job) -> Job {
        if job.is_request() {
            self.permits.add_permits(1);
        } else if matches!(job, Job::Callback { .. }) {
            self.load.callbacks.fetch_sub(1, Ordering::AcqRel);
        }
        self.load.queued_at.lock().pop_front();
        let kind = job.kind();
        HOLDING_JOB.with(|h| {
            if h.replace(Some((kind, Instant::now()))).is_none() {
                self.load.busy.fetch_add(1, Ordering::Relaxed);
            }
        });
        job
    }

    /// The calling thread finished its job (it is asking for another).
    pub fn finished(&self) {
        HOLDING_JOB.with(|h| {
            if let Some((kind, started)) = h.take() {
                self.load.busy.fetch_sub(1, Ordering::Relaxed);
                self.load.jobs.with_label_values(&[kind]).inc();
                self.load
                    .job_seconds
                    .with_label_values(&[kind])
                    .inc_by(started.elapsed().as_secs_f64());
            }
        });
    }

    /// The queue's metrics: AnyCable's RPC names where they fit (a job is what
    /// AnyCable's RPC call is), ours beside them.
    pub fn metric_families(&self, pool_size: usize) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::core::Collector;
        let stats = self.stats();
        let gauge = |name: &str, help: &str, value: f64| {
            let g = prometheus::Gauge::new(name, help).expect("valid metric");
            g.set(value);
            g.collect()
        };
        let mut out = Vec::new();
        out.extend(gauge(
            "anycable_go_rpc_pending_num",
            "The number of pending RPC calls (Ruby jobs queued or waiting for room)",
            (stats.queued + stats.waiting_for_room) as f64,
        ));
        out.extend(gauge(
            "anycable_rs_job_oldest_wait_seconds",
            "How long the oldest queued Ruby job has waited",
            stats.oldest_wait.as_secs_f64(),
        ));
        out.extend(gauge(
            "anycable_rs_ruby_threads_busy",
            "Ruby threads running a job",
            stats.busy_threads as f64,
        ));
        out.extend(gauge(
            "anycable_rs_ruby_threads",
            "Ruby threads that run jobs (ANYCABLE_RPC_POOL_SIZE)",
            pool_size as f64,
        ));
        out.extend(self.load.callbacks_dropped.collect());
        out.extend(self.load.jobs.collect());
        out.extend(self.load.job_seconds.collect());
        out
    }

    pub fn stats(&self) -> QueueStats {
        let oldest = self.load.queued_at.lock().front().copied();
        QueueStats {
            queued: self.rx.len(),
            waiting_for_room: self.load.waiting_for_room.load(Ordering::Relaxed),
            oldest_wait: oldest.map(|t| t.elapsed()).unwrap_or_default(),
            busy_threads: self.load.busy.load(Ordering::Relaxed),
        }
    }

    /// Queues a request, waiting (asynchronously) while the queue is full.
    async fn request(&self, job: Job) -> bool {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                self.load.waiting_for_room.fetch_add(1, Ordering::Relaxed);
                let permit = self.permits.acquire().await;
                self.load.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
                permit.map_err(|_| ())
            }
        };
        match permit {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.send(job)
    }

    /// Queues a job without waiting.
    pub fn push(&self, job: Job) {
        if !self.closed.load(Ordering::Acquire) {
            self.send(job);
        }
    }

    /// Queues a broadcast for a Ruby callback without waiting, unless
    /// `ANYCABLE_MAX_CALLBACK_JOBS` are queued already: then it is dropped, counted
    /// (`anycable_rs_callback_jobs_dropped_total`) and told, once a second at most.
    /// Waiting is not an option (the hub delivers on the pub/sub's task), and without
    /// a bound a flood of broadcasts to streams with blocks grows the queue without end.
    pub fn push_callback(&self, id: u64, payload: Arc<str>) {
        let queued = self.load.callbacks.fetch_add(1, Ordering::AcqRel);
        if queued >= self.max_callbacks {
            self.load.callbacks.fetch_sub(1, Ordering::AcqRel);
            self.load.callbacks_dropped.inc();
            let max = self.max_callbacks;
            anycable_core::logging::once_a_second(&CALLBACKS_DROPPED_LOG, |more| {
                log::error!(
                    "a broadcast for a Ruby stream_from block or coder dropped: \
                     ANYCABLE_MAX_CALLBACK_JOBS ({max}) are queued for the Ruby threads \
                     ({more} more dropped since the last such line; slow blocks, or too \
                     few threads: ANYCABLE_RPC_POOL_SIZE)"
                )
            });
            return;
        }
        if self.closed.load(Ordering::Acquire) || !self.send(Job::Callback { id, payload }) {
            self.load.callbacks.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Blocks up to `timeout` for a job. Call without the GVL.
    pub fn pop(&self, timeout: Duration) -> Pop {
        if self.closed.load(Ordering::Acquire) && self.rx.is_empty() {
            return Pop::Closed;
        }
        // One thread at a time spins briefly first: under load the next job usually
        // arrives within microseconds, and sleeping on a futex costs a context switch
        // each way. More spinners would only steal the cores from tokio.
        if !self.spinning.swap(true, Ordering::AcqRel) {
            let spin_until = std::time::Instant::now() + SPIN;
            let mut found = None;
            while std::time::Instant::now() < spin_until {
                if let Ok(job) = self.rx.try_recv() {
                    found = Some(job);
                    break;
                }
                std::thread::yield_now();
            }
            self.spinning.store(false, Ordering::Release);
            if let Some(job) = found {
                return Pop::Job(self.took(job));
            }
        }
        match self.rx.recv_timeout(timeout) {
            Ok(job) => Pop::Job(self.took(job)),
            Err(RecvTimeoutError::Timeout) => Pop::Empty,
            Err(RecvTimeoutError::Disconnected) => Pop::Closed,
        }
    }

    /// A job that is already queued, without waiting. Safe to call with the GVL held:
    /// it never blocks.
    pub fn try_take(&self) -> Option<Job> {
        let job = self.rx.try_recv().ok()?;
        Some(self.took(job))
    }

    /// Every second until the queue closes: when the oldest queued job has waited over
    /// [`SLOW_QUEUE`], one warning line (at most one per [`SLOW_QUEUE_LOG_EVERY`]) with
    /// the queue's numbers. Commands and connects then wait for a Ruby thread, as they
    /// would for Action Cable's worker pool.
    pub async fn watch(self) {
        let mut last_line: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let stats = self.stats();
            let due = last_line.is_none_or(|t| t.elapsed() >= SLOW_QUEUE_LOG_EVERY);
            if stats.oldest_wait > SLOW_QUEUE && due {
                last_line = Some(Instant::now());
                log::warn!(
                    "Ruby jobs wait for a thread: the oldest for {:.1} s, {} queued, {} more waiting \
                     for room, {} threads busy (slow actions or callbacks hold them: move slow \
                     work to background jobs, or raise ANYCABLE_RPC_POOL_SIZE)",
                    stats.oldest_wait.as_secs_f64(),
                    stats.queued,
                    stats.waiting_for_room,
                    stats.busy_threads
                );
            }
        }
    }

    /// Ruby threads drain what is queued, then stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
    }
}

/// [`Controller`] that runs the app's Action Cable code on Ruby threads.
pub struct RubyController {
    queue: JobQueue,
}

impl RubyController {
    pub fn new(queue: JobQueue) -> Self {
        RubyController { queue }
    }
}

impl Controller for RubyController {
    fn handoff_abandoned(&self, env_token: u64) {
        self.queue.push(Job::ReleaseEnv { env_token });
    }

    async fn connect(&self, req: ConnectRequest) -> ConnectReply {
        let (reply, rx) = oneshot::channel();
        let job = Job::Connect {
            reply: Some(reply),
            session: req.session,
            head: req.head,
            remote_addr: req.remote_addr,
            env_token: req.env_token,
            identifiers: req.identifiers,
            restored: req.restored.map(Box::new),
        };
        if !self.queue.request(job).await {
            return ConnectReply::Failed("the Ruby worker pool is stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| ConnectReply::Failed("Ruby dropped the connect call".into()))
    }

    async fn command(&self, req: CommandRequest) {
        let (reply, rx) = oneshot::channel();
        let job = Job::Command {
            reply: Some(reply),
            session_id: req.session.id,
            command: req.command.command,
            identifier: req.command.identifier,
            data: req.command.data,
        };
        if self.queue.request(job).await {
            let _ = rx.await;
        }
    }

    async fn disconnect(&self, session: SessionRef) {
        let (reply, rx) = oneshot::channel();
        if self
            .queue
            .request(Job::Disconnect {
                reply: Some(reply),
                session_id: session.id,
            })
            .await
        {
            let _ = rx.await;
        }
    }
}
