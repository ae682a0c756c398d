//! How a connection opens and ends. Opening: a restore by sid (extended protocol), else
//! a JWT, else the app's `connect` — the first two leave the app's connection object for
//! when a command first needs it. Ending: the session cached for a restore, the app's
//! disconnect callbacks run when they are owed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::Inner;
use crate::auth::JwtError;
use crate::broker::CachedSession;
use crate::controller::{ConnectReply, ConnectRequest, Controller};
use crate::http::RequestHead;
use crate::metrics::COUNTERS;
use crate::protocol;
use crate::session::{DisconnectReason, Outbox, Session, SessionRef};

/// A connection the server accepted, and what its end owes.
pub(super) struct Opened {
    pub(super) session: SessionRef,
    /// The app's `connect`, left for when a command first needs it (JWT, restore).
    /// While this holds it, the app has no connection object for the session (and is
    /// owed no disconnect callbacks).
    pub(super) lazy: Option<ConnectRequest>,
    /// A restored session whose first life had an app connection: its disconnect
    /// callbacks are owed even if no command rebuilds it here (AnyCable's Disconnect).
    pub(super) owes_disconnect: bool,
    /// Extended protocol: kept for a restore when the client goes.
    pub(super) extended: bool,
    /// It came back by sid: its subscriptions wait for the client's `history`.
    pub(super) restored: bool,
    /// The welcome frame to send.
    pub(super) welcome: String,
}

/// How a new connection is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenAs {
    /// By a JWT, else the app's `connect`.
    Plain,
    /// The extended protocol: by a restore first.
    Extended,
    /// Not at all (Durable Streams reads with `ANYCABLE_DS_SKIP_AUTH`): what it reads
    /// is authorized by the stream's signed name alone.
    Anonymous,
}

impl<C: Controller> Inner<C> {
    /// Identifies a new connection: by a restore, a JWT or the app's `connect`. `Err`:
    /// it was refused, for the reason the client is to be told.
    pub(super) async fn open(
        &self,
        head: RequestHead,
        peer: Option<SocketAddr>,
        env_token: u64,
        how: OpenAs,
    ) -> Result<(Opened, Outbox), DisconnectReason> {
        let extended = how == OpenAs::Extended;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Always ours: a client-chosen id (X-Request-ID) could collide with another
        // client's, and `exclude_socket` would then skip both.
        let sid = generate_sid(id);
        let (session, outbox) = Session::new(id, sid, self.config.max_pending_bytes);
        let mut refused = None;
        let restored = if extended {
            session.set_resumable();
            match self.restore(&head, &session).await {
                Ok(restored) => restored,
                Err(reason) => {
                    refused = Some(reason);
                    None
                }
            }
        } else {
            None
        };
        let identified = match (&restored, refused) {
            (_, Some(reason)) => Some(Err(reason)),
            (Some(cached), None) => Some(Ok(cached.identifiers.clone())),
            (None, None) if how == OpenAs::Anonymous => Some(Ok(None)),
            (None, None) => self.identify_by_jwt(&head, &session).map(|r| r.map(Some)),
        };
        let mut opened = Opened {
            session: session.clone(),
            lazy: None,
            owes_disconnect: false,
            extended,
            restored: restored.is_some(),
            welcome: match &restored {
                Some(cached) => protocol::welcome_restored(&session.sid, &cached.restored_ids()),
                None => protocol::welcome(&session.sid),
            },
        };
        let reply = match identified {
            Some(Ok(identifiers)) => {
                if env_token != 0 {
                    self.controller.handoff_abandoned(env_token);
                }
                opened.owes_disconnect = restored.as_ref().is_some_and(|c| c.app_connected);
                opened.lazy = Some(ConnectRequest {
                    session: session.clone(),
                    head,
                    remote_addr: peer,
                    env_token: 0,
                    // A restored session without identifiers still skips `connect`.
                    identifiers: Some(identifiers.unwrap_or_else(|| "{}".into())),
                    restored: restored.as_ref().map(|c| CachedSession {
                        subscriptions: c
                            .subscriptions
                            .iter()
                            .filter(|s| !s.server_side)
                            .cloned()
                            .collect(),
                        ..c.clone()
                    }),
                });
                ConnectReply::Accepted
            }
            Some(Err(reason)) => {
                if env_token != 0 {
                    self.controller.handoff_abandoned(env_token);
                }
                ConnectReply::Rejected(reason)
            }
            None => {
                self.controller
                    .connect(ConnectRequest {
                        session: session.clone(),
                        head,
                        remote_addr: peer,
                        env_token,
                        identifiers: None,
                        restored: None,
                    })
                    .await
            }
        };
        let refusal = match reply {
            ConnectReply::Accepted => {
                if opened.lazy.is_none() || opened.owes_disconnect {
                    session.set_app_connected();
                }
                return Ok((opened, outbox));
            }
            ConnectReply::Rejected(reason) => {
                if [
                    DisconnectReason::UNAUTHORIZED,
                    DisconnectReason::TOKEN_EXPIRED,
                ]
                .iter()
                .any(|r| r.reason == reason.reason)
                {
                    COUNTERS.failed_auths.inc();
                }
                reason
            }
            ConnectReply::Failed(error) => {
                log::error!("session {}: connect failed: {error}", session.log_id());
                DisconnectReason::SERVER_ERROR
            }
        };
        session.mark_closing();
        self.hub.remove_session(&session);
        Err(refusal)
    }

    /// Builds the app's connection (and a restored session's channel) objects that
    /// were left for later (JWT, restore): true when the app did. If it cannot (a
    /// record gone, an error), the client is told and the session is not kept for a
    /// restore.
    pub(super) async fn connect_lazily(
        &self,
        session: SessionRef,
        connect: ConnectRequest,
    ) -> bool {
        match self.controller.connect(connect).await {
            ConnectReply::Accepted => {
                session.set_app_connected();
                true
            }
            ConnectReply::Rejected(reason) => {
                session.close(reason);
                false
            }
            ConnectReply::Failed(error) => {
                log::error!("session {}: connect failed: {error}", session.log_id());
                session.close(DisconnectReason::SERVER_ERROR);
                false
            }
        }
    }

    /// The cached session the client asks back (`X-AnyCable-Restore-SID`, else
    /// `?sid=`), joined to its streams again; `None` when there is none to restore.
    /// `Err` when the session's credential has expired (`token_expired`): a session
    /// keeps the expiry of the token that opened it, so restores cannot outlive it.
    async fn restore(
        &self,
        head: &RequestHead,
        session: &SessionRef,
    ) -> Result<Option<CachedSession>, DisconnectReason> {
        let Some(old) = restore_sid(head) else {
            return Ok(None);
        };
        let Some(cached) = self.broker.take_session(old).await else {
            return Ok(None);
        };
        if cached
            .expires_at
            .is_some_and(|at| crate::broker::unix_now() >= at)
        {
            log::debug!(
                "session {}: the restored session's token has expired; token_expired",
                session.log_id()
            );
            return Err(DisconnectReason::TOKEN_EXPIRED);
        }
        session.restore_from(&cached);
        // Until the client's `history` for each (`run_session` lets them go after
        // RESTORED_HISTORY_WAIT without one).
        session.hold_restored(cached.restored_ids());
        for sub in &cached.subscriptions {
            for stream in &sub.streams {
                self.hub.subscribe(session, stream, &sub.identifier);
            }
        }
        COUNTERS.restored_sessions.inc();
        log::debug!(
            "session {}: restored from an earlier session",
            session.log_id()
        );
        Ok(Some(cached))
    }

    /// `None` when JWT is off or not used here; else the token's identifiers, or the
    /// reason to refuse the connection.
    fn identify_by_jwt(
        &self,
        head: &RequestHead,
        session: &Session,
    ) -> Option<Result<String, DisconnectReason>> {
        let jwt = self.config.jwt.as_ref()?;
        let Some(token) = jwt.token(head) else {
            return jwt.enforce.then_some(Err(DisconnectReason::UNAUTHORIZED));
        };
        Some(match jwt.verify_with_expiry(token) {
            Ok((identifiers, expires_at)) => {
                if let Ok(json) = serde_json::from_str(&identifiers) {
                    session.set_identifiers(json);
                }
                if let Some(at) = expires_at {
                    session.set_expires_at(at);
                }
                Ok(identifiers)
            }
            Err(JwtError::Expired) => Err(DisconnectReason::TOKEN_EXPIRED),
            Err(JwtError::Invalid(why)) => {
                // Never the token itself: it is a credential.
                crate::logging::refused(format_args!(
                    "session {}: JWT refused ({why}); unauthorized",
                    session.log_id()
                ));
                Err(DisconnectReason::UNAUTHORIZED)
            }
        })
    }

    /// Ends a session: caches it for a restore (extended protocol), leaves the hub,
    /// and runs the app's disconnect callbacks when they are owed: the app built a
    /// connection for it (`lazy` is taken), or it was restored from a session that had
    /// one — its objects are rebuilt first, as AnyCable's Disconnect call does. A JWT
    /// connection that never reached the app's code is owed none.
    pub(super) async fn finish(&self, opened: &mut Opened) {
        let session = &opened.session;
        session.mark_closing();
        self.sessions.write().remove(&session.id);
        let mut app_knows = opened.lazy.is_none();
        if opened.extended && self.broker.keeps_sessions() && !session.stored_before_close() {
            // Before the hub and the app's `unsubscribed` let go of its streams. The
            // NATS broker has had it since the welcome: the last word now, or gone if
            // the server or the app closed it.
            let entry = session.to_cache(app_knows || opened.owes_disconnect);
            self.broker.keep_session(&session.sid, entry).await;
        }
        self.hub.remove_session(session);
        if let Some(presence) = self.hub.presence() {
            // Kept for ANYCABLE_PRESENCE_TTL: a client back by then does not flicker.
            presence.disconnected(session.id);
        }
        if let (Some(connect), true) = (opened.lazy.take(), opened.owes_disconnect) {
            app_knows = matches!(
                self.controller.connect(connect).await,
                ConnectReply::Accepted
            );
        }
        if app_knows {
            self.controller.disconnect(session.clone()).await;
        }
    }
}

/// The sid a client asks to restore: the `X-AnyCable-Restore-SID` header wins over
/// the `sid` query parameter (as AnyCable reads them).
fn restore_sid(head: &RequestHead) -> Option<&str> {
    if let Some(sid) = head
        .header("x-anycable-restore-sid")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        return Some(sid);
    }
    head.target
        .split_once('?')?
        .1
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "sid")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A session id no client can choose or guess (it restores a session, so it is a
/// credential): 128 bits from the system's CSPRNG, plus the process-unique number so
/// two ids of one process never collide.
pub(super) fn generate_sid(id: u64) -> String {
    use ring::rand::SecureRandom;
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // getrandom failing is not something a server can carry on from quietly.
        panic!("the system's random number generator failed");
    }
    let mut sid = String::with_capacity(48);
    for b in bytes {
        let _ = write!(sid, "{b:02x}");
    }
    let _ = write!(sid, "{id:x}");
    sid
}
