//! The server's timers: pings to every client, the broker's and presence's sweeps, and
//! the NATS broker's writer of open sessions. Each runs until shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Inner;
use crate::controller::Controller;
use crate::protocol;
use crate::session::SessionRef;

/// How often the NATS broker's session writer looks for changed sessions.
const SESSION_WRITE_EVERY: Duration = Duration::from_secs(1);

impl<C: Controller> Inner<C> {
    pub(super) fn start_tasks(self: &Arc<Self>) {
        self.start_session_writer();
        let inner = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(inner.config.ping_interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let frame = protocol::ping(now);
                for session in inner.sessions.read().values() {
                    session.send_frame(frame.clone());
                }
            }
        });
        self.tasks.lock().push(task);
        if self.broker.is_on() {
            let inner = self.clone();
            let sweep = tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(1));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut announced = std::time::Instant::now();
                loop {
                    ticker.tick().await;
                    inner.broker.sweep();
                    if let Some(presence) = inner.hub.presence() {
                        for (stream, event) in presence.sweep() {
                            inner.hub.presence_event(&stream, &event);
                        }
                        // Shared (the NATS broker): every record again, so the other
                        // nodes keep them; a node gone stops, and its records go.
                        if announced.elapsed() >= presence.announce_every() {
                            announced = std::time::Instant::now();
                            presence.announce_all();
                        }
                    }
                }
            });
            self.tasks.lock().push(sweep);
        }
    }

    /// With the NATS broker, extended-protocol sessions are written to its bucket
    /// when what a restore gets back changed (at most once a second each), and all
    /// again every half ttl, so a client restores on any node even after the node
    /// that served it died.
    fn start_session_writer(self: &Arc<Self>) {
        if !self.broker.writes_open_sessions() {
            return;
        }
        let ttl = self.config.sessions_ttl;
        let inner = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSION_WRITE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut touched = tokio::time::Instant::now();
            loop {
                ticker.tick().await;
                let Some(store) = inner.broker.open_sessions_store() else {
                    continue;
                };
                let touch = touched.elapsed() >= ttl / 2;
                if touch {
                    touched = tokio::time::Instant::now();
                }
                let due: Vec<SessionRef> = inner
                    .sessions
                    .read()
                    .values()
                    .filter(|s| s.is_resumable() && (s.take_changed() || touch))
                    .cloned()
                    .collect();
                for session in due {
                    if session.is_closing() {
                        continue; // its close writes (or forgets) it
                    }
                    let app = session.app_connected();
                    if let Some(entry) = session.to_cache(app) {
                        store.put(&session.sid, &entry).await;
                    }
                }
            }
        });
        self.tasks.lock().push(task);
    }
}
