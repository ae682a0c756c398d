//! `AnyCableRs::Native`: one embedded server — the tokio runtime, the core `Server`, the
//! hub and the bridge queue — driven from Ruby.
//!
//! Creating it starts no thread: `start` does, and Ruby calls it in the process that
//! serves sockets (after Puma forks). Every method that waits releases the GVL.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anycable_core::http::endpoints::MAX_BROADCAST_BODY;
use anycable_core::http::RequestHead;
use anycable_core::hub::CallbackSink;
use anycable_core::metrics::COUNTERS;
use anycable_core::protocol::broadcast;
use anycable_core::server::Handoff;
use anycable_core::{Hub, Server};
use magnus::value::ReprValue;
use magnus::{Error, IntoValue, RHash, RString, Ruby, TryConvert, Value};
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::bridge::{Job, JobQueue, Pop, RubyController};
use crate::job::RubyJob;
use crate::nogvl::without_gvl;
use crate::settings::{check_origins, Settings};

/// How long a broadcast from Ruby waits to be stored (the NATS broker) before the
/// app goes on without it stored.
const STORE_WAIT: Duration = Duration::from_secs(5);
static STORE_WAIT_LOG: anycable_core::logging::Throttle = anycable_core::logging::Throttle::new();
/// How long it waits after a wait timed out, until one is stored in time again.
const STORE_WAIT_WHILE_SLOW: Duration = Duration::from_millis(200);
static STORE_SLOW: AtomicBool = AtomicBool::new(false);

#[magnus::wrap(class = "AnyCableRs::Native", free_immediately, size)]
pub struct Native {
    server: Server<RubyController>,
    queue: JobQueue,
    worker_threads: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runtime: Option<Runtime>,
    timers: HashMap<u64, JoinHandle<()>>,
}

fn runtime_error(ruby: &Ruby, msg: impl Into<String>) -> Error {
    Error::new(ruby.exception_runtime_error(), msg.into())
}

impl Native {
    /// `AnyCableRs::Native.new(opts)`; Ruby (`AnyCableRs::Config`) fills in defaults.
    pub fn new(ruby: &Ruby, opts: RHash) -> Result<Self, Error> {
        let settings = Settings::from_ruby(ruby, opts)?;
        crate::logger::init(&settings.log_level);
        let queue = JobQueue::new(settings.queue_size, settings.max_callback_jobs);
        let sink_queue = queue.clone();
        let sink: CallbackSink = Arc::new(move |id, payload| sink_queue.push_callback(id, payload));
        let hub = Arc::new(Hub::new(Some(sink)));
        let server = Server::new(settings.server, RubyController::new(queue.clone()), hub);
        let source = queue.clone();
        let pool_size = settings.rpc_pool_size;
        server.set_metrics_source(Arc::new(move || source.metric_families(pool_size)));
        Ok(Native {
            server,
            queue,
            worker_threads: settings.worker_threads,
            state: Mutex::new(State::default()),
        })
    }

    /// Starts the runtime and the ping timer; with a port, also listens on
    /// `host:port`. Returns the bound port. Idempotent.
    pub fn start(
        ruby: &Ruby,
        rb_self: &Self,
        host: String,
        port: Option<u16>,
    ) -> Result<Option<u16>, Error> {
        let mut state = rb_self.state.lock();
        if state.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(rb_self.worker_threads)
                .thread_name("anycable-rs")
                .enable_all()
                .build()
                .map_err(|e| runtime_error(ruby, format!("tokio runtime: {e}")))?;
            let _guard = runtime.enter();
            rb_self.server.start().map_err(|e| runtime_error(ruby, e))?;
            tokio::spawn(rb_self.queue.clone().watch());
            drop(_guard);
            state.runtime = Some(runtime);
        }
        let Some(port) = port else { return Ok(None) };
        let addr: SocketAddr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| runtime_error(ruby, format!("bad listen address {host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| runtime_error(ruby, format!("no address for {host}")))?;
        let handle = state.runtime.as_ref().expect("started").handle().clone();
        drop(state);
        let server = rb_self.server.clone();
        let bound = without_gvl(move || handle.block_on(server.listen(addr)))
            .map_err(|p| runtime_error(ruby, p))?
            .map_err(|e| runtime_error(ruby, format!("cannot listen on {addr}: {e}")))?;
        Ok(Some(bound.port()))
    }

    pub fn is_started(&self) -> bool {
        self.state.lock().runtime.is_some()
    }

    /// Takes over a hijacked socket: `io` (a Ruby IO) is duplicated, so Ruby closes it
    /// after. Only a connected TCP socket is taken: an IO is required, not a bare
    /// number, and its descriptor must have a TCP peer. `request`: `{method:, target:,
    /// headers: [[name, value], …], tls:, env_token:}`.
    pub fn handoff(ruby: &Ruby, rb_self: &Self, io: Value, request: RHash) -> Result<(), Error> {
        if !io.is_kind_of(ruby.class_io()) {
            return Err(Error::new(
                ruby.exception_type_error(),
                format!("handoff takes the hijacked IO, not {}", unsafe {
                    io.classname()
                }),
            ));
        }
        let field = |key: &str| request.aref::<_, Value>(ruby.to_symbol(key));
        let headers: Vec<(String, String)> = TryConvert::try_convert(field("headers")?)?;
        let head = RequestHead {
            method: TryConvert::try_convert(field("method")?)?,
            target: TryConvert::try_convert(field("target")?)?,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            tls: field("tls")?.to_bool(),
        };
        let env_token: u64 = TryConvert::try_convert(field("env_token")?)?;
        // Server-Sent Events or a poll, with the body Rack read; a stream read.
        let body = || -> Result<Vec<u8>, Error> {
            Ok(match Option::<RString>::try_convert(field("body")?)? {
                // SAFETY: the bytes are copied before any Ruby code runs again.
                Some(body) => unsafe { body.as_slice() }.to_vec(),
                None => Vec::new(),
            })
        };
        let transport = match Option::<String>::try_convert(field("transport")?)?.as_deref() {
            None | Some("websocket") => Handoff::WebSocket,
            Some("events") => Handoff::Events(body()?),
            Some("poll") => Handoff::Poll(body()?),
            Some("ds") => Handoff::Ds,
            Some(other) => {
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!("handoff: unknown transport {other:?}"),
                ))
            }
        };
        let fd: i32 = io.funcall("fileno", ())?;
        // SAFETY: Ruby's IO owns `fd` and keeps it open for the duration of this call.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| runtime_error(ruby, format!("dup({fd}): {e}")))?;
        let stream = std::net::TcpStream::from(owned);
        if let Err(e) = stream.peer_addr() {
            return Err(Error::new(
                ruby.exception_arg_error(),
                format!("handoff: descriptor {fd} is not a connected TCP socket ({e})"),
            ));
        }
        let state = rb_self.state.lock();
        let runtime = state
            .runtime
            .as_ref()
            .ok_or_else(|| runtime_error(ruby, "server not started"))?;
        let _guard = runtime.enter();
        rb_self.server.handoff(stream, head, transport, env_token);
        Ok(())
    }

    /// The next job (an `AnyCableRs::Native::Job`), `nil` after `timeout_ms` without
    /// one, `false` once the queue is closed.
    ///
    /// One job per call: a thread that took several would run them in order, and a
    /// slow action would hold other connections' jobs while idle threads wait. Taking
    /// the next job costs little: one already queued is taken while this thread still
    /// holds the GVL (giving it up and taking it back costs two context switches).
    pub fn next_job(ruby: &Ruby, rb_self: &Self, timeout_ms: u64) -> Result<Value, Error> {
        rb_self.queue.finished();
        let job = match rb_self.queue.try_take() {
            Some(job) => Ok(Some(job)),
            None => {
                let queue = rb_self.queue.clone();
                without_gvl(move || match queue.pop(Duration::from_millis(timeout_ms)) {
                    Pop::Empty => Ok(None),
                    Pop::Closed => Err(()),
                    Pop::Job(job) => Ok(Some(job)),
                })
                .map_err(|p| runtime_error(ruby, p))?
            }
        };
        Ok(match job {
            Ok(None) => ruby.qnil().as_value(),
            Err(()) => ruby.qfalse().as_value(),
            Ok(Some(job)) => RubyJob::new(job, rb_self.server.hub().clone()).into_value_with(ruby),
        })
    }

    /// `{jobs_queued:, jobs_waiting_for_room:, oldest_job_wait:, busy_threads:}`: the
    /// Ruby job queue's load (waits in seconds).
    pub fn stats(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let stats = rb_self.queue.stats();
        let h = ruby.hash_new();
        h.aset(ruby.to_symbol("jobs_queued"), stats.queued)?;
        h.aset(
            ruby.to_symbol("jobs_waiting_for_room"),
            stats.waiting_for_room,
        )?;
        h.aset(
            ruby.to_symbol("oldest_job_wait"),
            stats.oldest_wait.as_secs_f64(),
        )?;
        h.aset(ruby.to_symbol("busy_threads"), stats.busy_threads)?;
        Ok(h)
    }

    /// Every metric in Prometheus' text format (for `/metrics` on Puma's port).
    pub fn metrics_text(&self) -> String {
        self.server.metrics_text()
    }

    /// Whether a request with this `Authorization` header may read the metrics
    /// (`ANYCABLE_METRICS_TOKEN`; always, without one): the own port's rule.
    pub fn metrics_authorized(&self, authorization: Option<String>) -> bool {
        match &self.server.config().metrics_token {
            Some(token) => {
                anycable_core::http::endpoints::bearer_matches(authorization.as_deref(), token)
            }
            None => true,
        }
    }

    /// Delivers to this process's subscribers; returns how many sessions got it.
    /// ArgumentError when the data is too large for any client to receive.
    pub fn broadcast(
        ruby: &Ruby,
        rb_self: &Self,
        stream: String,
        data: String,
        exclude_sid: Option<String>,
    ) -> Result<usize, Error> {
        let server = &rb_self.server;
        let deliver = || server.broadcast(&stream, &data, exclude_sid.as_deref());
        let d = rb_self
            .off_gvl_with_history(ruby, deliver)?
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        COUNTERS.publications.inc();
        Ok(d.sessions + d.callbacks)
    }

    /// Runs a delivery. With the memory broker it stores the message under its
    /// stream's history lock, which tokio threads take too: the GVL is released
    /// meanwhile, so no Ruby thread waits on a lock behind this one.
    fn off_gvl_with_history<R: Send>(
        &self,
        ruby: &Ruby,
        deliver: impl FnOnce() -> R + Send,
    ) -> Result<R, Error> {
        if self.server.history().is_none() {
            return Ok(deliver());
        }
        without_gvl(deliver)
            .map_err(|panic| runtime_error(ruby, format!("broadcast failed: {panic}")))
    }

    /// `POST /_broadcast` on Puma's port (`AnyCableRs::BroadcastEndpoint`), first
    /// step: nil when the request may go on, else `[status, text]` refusing it.
    pub fn admit_broadcast(
        &self,
        method: String,
        authorization: Option<String>,
        peer: String,
    ) -> Option<(u16, String)> {
        self.server
            .admit_broadcast(&method, authorization.as_deref(), &peer)
    }

    /// An admitted `POST /_broadcast`'s body: `[status, text]`.
    pub fn take_broadcast(
        ruby: &Ruby,
        rb_self: &Self,
        body: RString,
        peer: String,
    ) -> Result<(u16, String), Error> {
        // SAFETY: copied before anything else runs Ruby code.
        let body = unsafe { body.as_slice() }.to_vec();
        let server = &rb_self.server;
        rb_self.off_gvl_with_history(ruby, || server.take_broadcast_request(&body, &peer))
    }

    /// Whether `POST /_broadcast` is served (a broadcast key is set).
    pub fn serves_broadcasts(&self) -> bool {
        self.server.config().broadcast_key.is_some()
    }

    /// `AnyCableRs::Native.check_broadcast_size(bytesize, max_pending_bytes)`: raises
    /// ArgumentError for data no client could receive, in any process.
    pub fn check_broadcast_size(
        ruby: &Ruby,
        bytesize: usize,
        max_pending_bytes: usize,
    ) -> Result<(), Error> {
        broadcast::check_size(bytesize, max_pending_bytes)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))
    }

    /// `AnyCableRs::Native.nkey_user(hex)`: the nkey user (seed `SU…`, public key `U…`)
    /// of 32 bytes given as hex.
    pub fn nkey_user(ruby: &Ruby, hex: String) -> Result<(String, String), Error> {
        let bytes: [u8; 32] = anycable_core::auth::streams::decode_hex(&hex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::new(ruby.exception_arg_error(), "32 bytes as hex"))?;
        anycable_core::pubsub::nats::nkey_user(bytes)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e))
    }

    /// `AnyCableRs::Native.nkey_public(seed)`: the public key (`U…`) of an nkey seed.
    pub fn nkey_public(ruby: &Ruby, seed: String) -> Result<String, Error> {
        anycable_core::pubsub::nats::nkey_public(&seed)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e))
    }

    /// `AnyCableRs::Native.nkey_sign(seed, nonce)`: a NATS server's nonce signed as
    /// CONNECT's `sig` carries it (the Ruby publisher's nkey login).
    pub fn nkey_sign(ruby: &Ruby, seed: String, nonce: String) -> Result<String, Error> {
        anycable_core::pubsub::nats::nkey_sign(&seed, &nonce)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e))
    }

    /// Applies an AnyCable broadcast payload here; ArgumentError says what is wrong.
    pub fn apply_broadcast(ruby: &Ruby, rb_self: &Self, payload: String) -> Result<usize, Error> {
        let server = &rb_self.server;
        let n = rb_self
            .off_gvl_with_history(ruby, || server.apply_broadcast(&payload))?
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        COUNTERS.publications.inc_by(n as u64);
        Ok(n)
    }

    /// With the NATS or Redis adapter in a started server: publishes an AnyCable
    /// payload built from (stream, data) and returns true; every node, this one
    /// included, delivers it when it comes back. False when there is no pub/sub here.
    pub fn publish(
        ruby: &Ruby,
        rb_self: &Self,
        stream: String,
        data: String,
        exclude_sid: Option<String>,
    ) -> Result<bool, Error> {
        // Built here from checked parts: no need to parse it again to check it.
        rb_self
            .server
            .check_data(&data)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        let mut message = serde_json::json!({"stream": stream, "data": data});
        if let Some(sid) = exclude_sid {
            message["meta"] = serde_json::json!({"exclude_socket": sid});
        }
        COUNTERS.publications.inc();
        Ok(rb_self.publish_unchecked(message.to_string()))
    }

    /// Publishes, and with the NATS broker returns once what it stores is stored (as
    /// Action Cable's Redis adapter returns once Redis has it), the GVL released
    /// meanwhile: a broadcast made after this one returned, here or on another
    /// machine, is never stored before it, even while JetStream elects a new leader.
    /// Past [`STORE_WAIT`] it returns anyway, the broadcast still on its way (said in
    /// the log, once a second at most).
    fn publish_unchecked(&self, payload: String) -> bool {
        let stored = match self.server.publish_stored(payload) {
            Err(()) => return false,
            Ok(None) => return true,
            Ok(Some(stored)) => stored,
        };
        let Some(handle) = self
            .state
            .lock()
            .runtime
            .as_ref()
            .map(|r| r.handle().clone())
        else {
            return true;
        };
        // After a wait that timed out, JetStream is slow or away: the next waits are
        // short (each one still keeps the order) until a broadcast is stored in time.
        let wait = if STORE_SLOW.load(Ordering::Acquire) {
            STORE_WAIT_WHILE_SLOW
        } else {
            STORE_WAIT
        };
        let waited = without_gvl(move || {
            handle.block_on(async { tokio::time::timeout(wait, stored).await })
        });
        match waited {
            Ok(Ok(true)) => STORE_SLOW.store(false, Ordering::Release),
            Ok(Ok(false)) => anycable_core::logging::once_a_second(&STORE_WAIT_LOG, |more| {
                log::error!("a broadcast was dropped before it was stored ({more} more since the last line)")
            }),
            Ok(Err(_)) => {
                STORE_SLOW.store(true, Ordering::Release);
                anycable_core::logging::once_a_second(&STORE_WAIT_LOG, |more| {
                    log::warn!(
                        "a broadcast is not stored after {wait:?} (NATS JetStream unavailable?): \
                         the app goes on, the broadcast stays queued and is stored when JetStream \
                         answers, maybe after later ones made on other machines; until one is \
                         stored in time, broadcasts wait {STORE_WAIT_WHILE_SLOW:?} at most \
                         ({more} more since the last line)"
                    )
                })
            }
            Err(panic) => log::error!("waiting for a broadcast to be stored panicked: {panic}"),
        }
        true
    }

    /// Publishes a raw AnyCable payload (checked first) through the pub/sub.
    pub fn publish_payload(ruby: &Ruby, rb_self: &Self, payload: String) -> Result<bool, Error> {
        let n = rb_self
            .server
            .check_broadcast(&payload)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        COUNTERS.publications.inc_by(n as u64);
        Ok(rb_self.publish_unchecked(payload))
    }

    pub fn subscribe_callback(&self, stream: String, id: u64) {
        self.server.hub().subscribe_callback(&stream, id);
    }

    pub fn unsubscribe_callback(&self, stream: String, id: u64) {
        self.server.hub().unsubscribe_callback(&stream, id);
    }

    /// Every `interval` seconds, queues a `[:timer, id]` job (skipping ticks while the
    /// previous one has not been taken).
    pub fn add_timer(ruby: &Ruby, rb_self: &Self, id: u64, interval: f64) -> Result<(), Error> {
        if !(interval.is_finite() && interval > 0.0) {
            return Err(Error::new(
                ruby.exception_arg_error(),
                "interval must be > 0",
            ));
        }
        let mut state = rb_self.state.lock();
        let runtime = state
            .runtime
            .as_ref()
            .ok_or_else(|| runtime_error(ruby, "server not started"))?;
        let queue = rb_self.queue.clone();
        let period = Duration::from_secs_f64(interval);
        let task = runtime.spawn(async move {
            let pending = Arc::new(AtomicBool::new(false));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticker.tick().await;
                if !pending.swap(true, Ordering::AcqRel) {
                    queue.push(Job::Timer {
                        id,
                        pending: pending.clone(),
                    });
                }
            }
        });
        if let Some(old) = state.timers.insert(id, task) {
            old.abort();
        }
        Ok(())
    }

    pub fn cancel_timer(&self, id: u64) {
        if let Some(task) = self.state.lock().timers.remove(&id) {
            task.abort();
        }
    }

    /// Tells clients `server_restart`, waits up to `timeout` seconds for their
    /// disconnect callbacks (which Ruby threads run meanwhile), then stops the runtime
    /// and lets the Ruby threads finish.
    pub fn shutdown(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<(), Error> {
        let runtime = {
            let mut state = rb_self.state.lock();
            for (_, task) in state.timers.drain() {
                task.abort();
            }
            state.runtime.take()
        };
        if let Some(runtime) = runtime {
            let server = rb_self.server.clone();
            let wait = Duration::from_secs_f64(timeout.max(0.0));
            without_gvl(move || {
                runtime.block_on(server.shutdown(wait));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|p| runtime_error(ruby, p))?;
        }
        rb_self.queue.close();
        Ok(())
    }

    /// In a forked child: the parent's runtime threads do not exist here, so the
    /// runtime must be leaked, never dropped (dropping would wait for them).
    pub fn abandon(&self) {
        let mut state = self.state.lock();
        for (_, task) in state.timers.drain() {
            std::mem::forget(task);
        }
        if let Some(runtime) = state.runtime.take() {
            std::mem::forget(runtime);
        }
        self.queue.close();
    }
}

pub fn init(ruby: &Ruby, module: magnus::RModule) -> Result<(), Error> {
    use magnus::{function, method, Module, Object};
    let class = module.define_class("Native", ruby.class_object())?;
    class.define_singleton_method("new", function!(Native::new, 1))?;
    class.define_singleton_method("check_origins", function!(check_origins, 1))?;
    class.define_singleton_method(
        "check_broadcast_size",
        function!(Native::check_broadcast_size, 2),
    )?;
    class.define_singleton_method("nkey_user", function!(Native::nkey_user, 1))?;
    class.define_singleton_method("nkey_sign", function!(Native::nkey_sign, 2))?;
    class.define_singleton_method("nkey_public", function!(Native::nkey_public, 1))?;
    class.const_set("MAX_BROADCAST_BODY", MAX_BROADCAST_BODY)?;
    class.define_method("admit_broadcast", method!(Native::admit_broadcast, 3))?;
    class.define_method("take_broadcast", method!(Native::take_broadcast, 2))?;
    class.define_method("serves_broadcasts?", method!(Native::serves_broadcasts, 0))?;
    class.define_method("start", method!(Native::start, 2))?;
    class.define_method("started?", method!(Native::is_started, 0))?;
    class.define_method("handoff", method!(Native::handoff, 2))?;
    class.define_method("next_job", method!(Native::next_job, 1))?;
    class.define_method("stats", method!(Native::stats, 0))?;
    class.define_method("metrics_text", method!(Native::metrics_text, 0))?;
    class.define_method(
        "metrics_authorized?",
        method!(Native::metrics_authorized, 1),
    )?;
    class.define_method("broadcast", method!(Native::broadcast, 3))?;
    class.define_method("apply_broadcast", method!(Native::apply_broadcast, 1))?;
    class.define_method("publish", method!(Native::publish, 3))?;
    class.define_method("publish_payload", method!(Native::publish_payload, 1))?;
    class.define_method("subscribe_callback", method!(Native::subscribe_callback, 2))?;
    class.define_method(
        "unsubscribe_callback",
        method!(Native::unsubscribe_callback, 2),
    )?;
    class.define_method("add_timer", method!(Native::add_timer, 2))?;
    class.define_method("cancel_timer", method!(Native::cancel_timer, 1))?;
    class.define_method("shutdown", method!(Native::shutdown, 1))?;
    class.define_method("abandon", method!(Native::abandon, 0))?;

    crate::session::init(ruby, class)?;
    crate::job::init(ruby, class)
}
