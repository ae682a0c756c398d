//! The Ruby-call bridge: how tokio tasks get Ruby code run.
//!
//! tokio workers never touch Ruby. They put a [`Job`] on a queue and await a oneshot
//! reply; Ruby threads (created from Ruby, see `AnyCableRs::Runtime`) take jobs with the
//! GVL released, run the app's code and send the reply. Requests from connections
//! (connect, commands, disconnect) are bounded by a semaphore, so a flood of commands
//! makes tokio wait rather than queue without end; hub callbacks and timer ticks,
//! which start on threads that cannot wait, go on the queue directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anycable_core::handshake::RequestHead;
use anycable_core::protocol::Command;
use anycable_core::session::SessionRef;
use anycable_core::{CommandRequest, ConnectReply, ConnectRequest, Controller};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
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
    fn is_request(&self) -> bool {
        matches!(
            self,
            Job::Connect { .. } | Job::Command { .. } | Job::Disconnect { .. }
        )
    }
}

const SPIN: Duration = Duration::from_micros(50);

pub enum Pop {
    Job(Job),
    Empty,
    Closed,
}

#[derive(Clone)]
pub struct JobQueue {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    permits: Arc<Semaphore>,
    closed: Arc<AtomicBool>,
    spinning: Arc<AtomicBool>,
}

impl JobQueue {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        JobQueue {
            tx,
            rx,
            permits: Arc::new(Semaphore::new(capacity.max(1))),
            closed: Arc::new(AtomicBool::new(false)),
            spinning: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queues a request, waiting (asynchronously) while the queue is full.
    async fn request(&self, job: Job) -> bool {
        match self.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.tx.send(job).is_ok()
    }

    /// Queues a job without waiting.
    pub fn push(&self, job: Job) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.tx.send(job);
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
                if job.is_request() {
                    self.permits.add_permits(1);
                }
                return Pop::Job(job);
            }
        }
        match self.rx.recv_timeout(timeout) {
            Ok(job) => {
                if job.is_request() {
                    self.permits.add_permits(1);
                }
                Pop::Job(job)
            }
            Err(RecvTimeoutError::Timeout) => Pop::Empty,
            Err(RecvTimeoutError::Disconnected) => Pop::Closed,
        }
    }

    /// A job that is already queued, without waiting. Safe to call with the GVL held:
    /// it never blocks.
    pub fn try_take(&self) -> Option<Job> {
        let job = self.rx.try_recv().ok()?;
        if job.is_request() {
            self.permits.add_permits(1);
        }
        Some(job)
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
