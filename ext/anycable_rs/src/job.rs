//! `AnyCableRs::Native::Job`: one bridge job as Ruby sees it — a named object with
//! readers, not a positional array.
//!
//! Why an object: converting a job eagerly meant building several Ruby values (the
//! reply, the session, strings) and keeping them in a heap `Vec` until the array held
//! them. The GC cannot see a Rust heap, so a collection triggered by the next
//! allocation could free the earlier values, and Ruby later called a method on a
//! freed object (a segfault in `next_jobs`). Here a job becomes exactly one Ruby
//! object, returned straight to Ruby; each reader builds one value when Ruby asks,
//! and hands it to Ruby at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anycable_core::{ConnectReply, DisconnectReason, Hub};
use magnus::{Error, Ruby, StaticSymbol, Symbol};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::bridge::Job;
use crate::session::RbSession;

/// The reply slot of a request job. Dropping it unanswered (an exception in the
/// dispatcher, a thread killed, the job object collected) wakes the waiting task with
/// an error instead of leaving it hanging.
enum Pending {
    Connect(oneshot::Sender<ConnectReply>),
    Done(oneshot::Sender<()>),
}

#[magnus::wrap(class = "AnyCableRs::Native::Job", free_immediately, size)]
pub struct RubyJob {
    job: Job,
    reply: Mutex<Option<Pending>>,
    hub: Arc<Hub>,
}

fn sym(ruby: &Ruby, name: &str) -> StaticSymbol {
    // Static symbols are never collected, and interning allocates no Ruby object.
    ruby.sym_new(name)
}

fn wrong_kind(ruby: &Ruby, job: &RubyJob, what: &str) -> Error {
    Error::new(
        ruby.exception_no_method_error(),
        format!("a {} job has no {what}", job.job.kind()),
    )
}

impl RubyJob {
    /// Takes the reply sender out of `job` (it lives in the slot from now on).
    pub fn new(mut job: Job, hub: Arc<Hub>) -> Self {
        let reply = match &mut job {
            Job::Connect { reply, .. } => reply.take().map(Pending::Connect),
            Job::Command { reply, .. } | Job::Disconnect { reply, .. } => {
                reply.take().map(Pending::Done)
            }
            Job::Timer { pending, .. } => {
                // Taken: a tick that fires from now on queues a new job.
                pending.store(false, Ordering::Release);
                None
            }
            Job::Callback { .. } | Job::ReleaseEnv { .. } => None,
        };
        RubyJob {
            job,
            reply: Mutex::new(reply),
            hub,
        }
    }

    /// `:connect`, `:command`, `:disconnect`, `:callback`, `:timer` or `:release_env`.
    pub fn kind(ruby: &Ruby, rb_self: &Self) -> StaticSymbol {
        sym(ruby, rb_self.job.kind())
    }

    /// The connection (process-unique number) a connect, command or disconnect is for.
    pub fn session_id(ruby: &Ruby, rb_self: &Self) -> Result<u64, Error> {
        match &rb_self.job {
            Job::Connect { session, .. } => Ok(session.id),
            Job::Command { session_id, .. } | Job::Disconnect { session_id, .. } => Ok(*session_id),
            _ => Err(wrong_kind(ruby, rb_self, "session_id")),
        }
    }

    /// A connect's session: a new `Native::Session` on each call.
    pub fn session(ruby: &Ruby, rb_self: &Self) -> Result<RbSession, Error> {
        match &rb_self.job {
            Job::Connect { session, .. } => Ok(RbSession {
                session: session.clone(),
                hub: rb_self.hub.clone(),
            }),
            _ => Err(wrong_kind(ruby, rb_self, "session")),
        }
    }

    /// The token of the Rack env kept for a hijacked socket (0: none).
    pub fn env_token(ruby: &Ruby, rb_self: &Self) -> Result<u64, Error> {
        match &rb_self.job {
            Job::Connect { env_token, .. } | Job::ReleaseEnv { env_token } => Ok(*env_token),
            _ => Err(wrong_kind(ruby, rb_self, "env_token")),
        }
    }

    pub fn request_method(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        match &rb_self.job {
            Job::Connect { head, .. } => Ok(head.method.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "request_method")),
        }
    }

    /// A JWT-identified connect's identifiers JSON (the token's `ext`), else nil.
    pub fn identifiers(ruby: &Ruby, rb_self: &Self) -> Result<Option<String>, Error> {
        match &rb_self.job {
            Job::Connect { identifiers, .. } => Ok(identifiers.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "identifiers")),
        }
    }

    /// A restored session, as JSON: `{"state":{name: json text},
    /// "subscriptions":[{"identifier":…,"streams":[…],"whisper":…,"state":{…}}]}`
    /// (state values are the JSON texts `set_state` was given); nil for a new session.
    pub fn restored(ruby: &Ruby, rb_self: &Self) -> Result<Option<String>, Error> {
        let state = |values: &[(String, String)]| -> serde_json::Map<String, serde_json::Value> {
            values
                .iter()
                .map(|(name, json)| (name.clone(), json.clone().into()))
                .collect()
        };
        match &rb_self.job {
            Job::Connect { restored, .. } => Ok(restored.as_ref().map(|cached| {
                let subscriptions: Vec<serde_json::Value> = cached
                    .subscriptions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "identifier": s.identifier,
                            "streams": s.streams,
                            "whisper": s.whisper,
                            "state": state(&s.state),
                        })
                    })
                    .collect();
                serde_json::json!({"state": state(&cached.state), "subscriptions": subscriptions})
                    .to_string()
            })),
            _ => Err(wrong_kind(ruby, rb_self, "restored")),
        }
    }

    /// The request target (path and query).
    pub fn target(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        match &rb_self.job {
            Job::Connect { head, .. } => Ok(head.target.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "target")),
        }
    }

    /// The handshake headers as `[[lowercase name, value], …]`.
    pub fn headers(ruby: &Ruby, rb_self: &Self) -> Result<Vec<(String, String)>, Error> {
        match &rb_self.job {
            Job::Connect { head, .. } => Ok(head.headers.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "headers")),
        }
    }

    pub fn remote_ip(ruby: &Ruby, rb_self: &Self) -> Result<Option<String>, Error> {
        match &rb_self.job {
            Job::Connect { remote_addr, .. } => Ok(remote_addr.map(|a| a.ip().to_string())),
            _ => Err(wrong_kind(ruby, rb_self, "remote_ip")),
        }
    }

    /// A command's name: `:subscribe`, `:unsubscribe` or `:message`.
    pub fn command(ruby: &Ruby, rb_self: &Self) -> Result<StaticSymbol, Error> {
        match &rb_self.job {
            Job::Command { command, .. } => Ok(sym(ruby, command.as_str())),
            _ => Err(wrong_kind(ruby, rb_self, "command")),
        }
    }

    pub fn identifier(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        match &rb_self.job {
            Job::Command { identifier, .. } => Ok(identifier.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "identifier")),
        }
    }

    /// A message command's data (a JSON string), a `join`'s `{"id":…,"info":…}`, `nil`
    /// for others.
    pub fn data(ruby: &Ruby, rb_self: &Self) -> Result<Option<String>, Error> {
        match &rb_self.job {
            Job::Command { data, .. } => Ok(data.clone()),
            _ => Err(wrong_kind(ruby, rb_self, "data")),
        }
    }

    /// The stream callback or timer this job is for.
    pub fn target_id(ruby: &Ruby, rb_self: &Self) -> Result<u64, Error> {
        match &rb_self.job {
            Job::Callback { id, .. } | Job::Timer { id, .. } => Ok(*id),
            _ => Err(wrong_kind(ruby, rb_self, "target_id")),
        }
    }

    /// A stream callback's broadcast payload.
    pub fn payload(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        match &rb_self.job {
            Job::Callback { payload, .. } => Ok(payload.to_string()),
            _ => Err(wrong_kind(ruby, rb_self, "payload")),
        }
    }

    /// The app did what the job asked: a connect accepted the client; a command or
    /// disconnect ran. Only the first answer counts; jobs that wait for none return
    /// false.
    pub fn ok(&self) -> bool {
        self.answer(ConnectReply::Accepted)
    }

    /// A connect refused the client: `reason` is `:unauthorized` (Action Cable's
    /// `reject_unauthorized_connection`) or `:invalid_request`. For other jobs, as
    /// [`RubyJob::ok`].
    pub fn reject(ruby: &Ruby, rb_self: &Self, reason: Symbol) -> Result<bool, Error> {
        let reason = match reason.name()?.as_ref() {
            "unauthorized" => DisconnectReason::UNAUTHORIZED,
            "invalid_request" => DisconnectReason::INVALID_REQUEST,
            other => {
                rb_self.answer(ConnectReply::Failed(format!("bad rejection {other:?}")));
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!("unknown rejection :{other} (:unauthorized or :invalid_request)"),
                ));
            }
        };
        Ok(rb_self.answer(ConnectReply::Rejected(reason)))
    }

    /// A connect raised: the client gets `server_error`, and `message` is logged. For
    /// other jobs, as [`RubyJob::ok`].
    pub fn fail(&self, message: String) -> bool {
        self.answer(ConnectReply::Failed(message))
    }

    fn answer(&self, reply: ConnectReply) -> bool {
        match self.reply.lock().take() {
            None => false,
            Some(Pending::Done(tx)) => tx.send(()).is_ok(),
            Some(Pending::Connect(tx)) => tx.send(reply).is_ok(),
        }
    }
}

pub fn init(ruby: &Ruby, native: magnus::RClass) -> Result<(), Error> {
    use magnus::{method, Module};
    let class = native.define_class("Job", ruby.class_object())?;
    class.define_method("kind", method!(RubyJob::kind, 0))?;
    class.define_method("session_id", method!(RubyJob::session_id, 0))?;
    class.define_method("session", method!(RubyJob::session, 0))?;
    class.define_method("env_token", method!(RubyJob::env_token, 0))?;
    class.define_method("request_method", method!(RubyJob::request_method, 0))?;
    class.define_method("target", method!(RubyJob::target, 0))?;
    class.define_method("identifiers", method!(RubyJob::identifiers, 0))?;
    class.define_method("restored", method!(RubyJob::restored, 0))?;
    class.define_method("headers", method!(RubyJob::headers, 0))?;
    class.define_method("remote_ip", method!(RubyJob::remote_ip, 0))?;
    class.define_method("command", method!(RubyJob::command, 0))?;
    class.define_method("identifier", method!(RubyJob::identifier, 0))?;
    class.define_method("data", method!(RubyJob::data, 0))?;
    class.define_method("target_id", method!(RubyJob::target_id, 0))?;
    class.define_method("payload", method!(RubyJob::payload, 0))?;
    class.define_method("ok", method!(RubyJob::ok, 0))?;
    class.define_method("reject", method!(RubyJob::reject, 1))?;
    class.define_method("fail", method!(RubyJob::fail, 1))?;
    Ok(())
}
