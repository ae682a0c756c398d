//! Broadcasts among the Puma workers of one machine, for the `local` and `http`
//! adapters: each worker serves its own sockets, so a broadcast made in one worker (or
//! a `POST /_broadcast` that reached one worker) must reach the others' clients too.
//!
//! Each worker listens on a Unix socket `<dir>/<pid>.sock`; `dir` belongs to one Puma
//! master (the Ruby side makes it, mode 0700). A broadcast is delivered here and sent
//! to every other socket in `dir`, once: receivers only deliver, so each worker
//! delivers each broadcast exactly once. Frames are a 4-byte big-endian length and
//! the AnyCable payload. Per sibling, sends wait in a bounded [`PublishQueue`], so a
//! stalled worker costs memory only up to that bound and never blocks the sender.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::pubsub::{PubSub, PublishQueue};

/// Frames past this are refused (a broadcast is bounded by the clients' pending-bytes
/// cap long before).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

type Deliver = Arc<dyn Fn(&str) + Send + Sync>;

pub struct SiblingPubSub {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    own: PathBuf,
    deliver: Deliver,
    runtime: tokio::runtime::Handle,
    peers: Mutex<Peers>,
}

#[derive(Default)]
struct Peers {
    /// The directory's mtime when it was last listed: a worker that starts or stops
    /// adds or removes its socket, which changes it.
    listed_at: Option<SystemTime>,
    queues: HashMap<PathBuf, Arc<PublishQueue>>,
}

impl SiblingPubSub {
    /// Listens on `<dir>/<pid>.sock` (replacing a stale file of that name). Call inside
    /// the runtime.
    pub fn start(dir: &Path, deliver: impl Fn(&str) + Send + Sync + 'static) -> io::Result<Self> {
        let own = dir.join(format!("{}.sock", std::process::id()));
        match std::fs::remove_file(&own) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&own)?;
        let deliver: Deliver = Arc::new(deliver);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            own,
            deliver: deliver.clone(),
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(Peers::default()),
        });
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(receive(stream, deliver.clone()));
                    }
                    Err(e) => {
                        log::error!("workers relay: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        log::info!(
            "workers relay: broadcasts reach every Puma worker through {}",
            dir.display()
        );
        Ok(SiblingPubSub { shared })
    }

    /// How many other workers this one sends to.
    pub fn peer_count(&self) -> usize {
        self.shared.peer_queues().len()
    }
}

impl PubSub for SiblingPubSub {
    /// Delivers here, and queues the payload for every other worker (never blocks).
    fn publish(&self, payload: String) {
        (self.shared.deliver)(&payload);
        for queue in self.shared.peer_queues() {
            queue.push(payload.clone());
        }
    }

    fn is_connected(&self) -> bool {
        true
    }

    /// Removes this worker's socket, so the others stop sending at once.
    fn close(&self) {
        let _ = std::fs::remove_file(&self.shared.own);
    }
}

impl Shared {
    fn peer_queues(self: &Arc<Self>) -> Vec<Arc<PublishQueue>> {
        let mtime = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        let mut peers = self.peers.lock();
        if mtime.is_none() || peers.listed_at != mtime {
            peers.listed_at = mtime;
            let found: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "sock") && *p != self.own)
                        .collect()
                })
                .unwrap_or_default();
            peers.queues.retain(|path, _| found.contains(path));
            for path in found {
                if !peers.queues.contains_key(&path) {
                    let queue = Arc::new(PublishQueue::new("workers relay"));
                    peers.queues.insert(path.clone(), queue.clone());
                    self.runtime.spawn(send_loop(self.clone(), path, queue));
                }
            }
        }
        peers.queues.values().cloned().collect()
    }

    fn forget(&self, path: &Path, queue: &Arc<PublishQueue>) {
        let mut peers = self.peers.lock();
        if peers
            .queues
            .get(path)
            .is_some_and(|q| Arc::ptr_eq(q, queue))
        {
            peers.queues.remove(path);
        }
    }
}

/// Sends one sibling its queue, in order, reconnecting as needed. Ends when the
/// sibling is gone: its socket removed, or its process dead (the file is then removed
/// here too).
async fn send_loop(shared: Arc<Shared>, path: PathBuf, queue: Arc<PublishQueue>) {
    let mut stream: Option<UnixStream> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let (at, payload) = queue.next().await;
        if stream.is_none() {
            match UnixStream::connect(&path).await {
                Ok(s) => {
                    stream = Some(s);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    if !path.exists() || !owner_alive(&path) {
                        if path.exists() {
                            let _ = std::fs::remove_file(&path);
                        }
                        shared.forget(&path, &queue);
                        return;
                    }
                    log::warn!("workers relay: cannot reach {}: {e}", path.display());
                    queue.retry(at, payload);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected");
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload.as_bytes());
        match tokio::time::timeout(WRITE_TIMEOUT, s.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => {
                // A frame may be half-written: this connection is done. Send the
                // payload again on a new one (the receiver drops the torn frame).
                stream = None;
                queue.retry(at, payload);
            }
        }
    }
}

/// Whether the process named by `<pid>.sock` runs.
fn owner_alive(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

async fn receive(mut stream: UnixStream, deliver: Deliver) {
    let mut len = [0u8; 4];
    loop {
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            log::error!("workers relay: a {n}-byte frame is over the limit; closing that link");
            return;
        }
        let mut buf = vec![0u8; n];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        match String::from_utf8(buf) {
            Ok(payload) => deliver(&payload),
            Err(_) => log::error!("workers relay: a frame that is not UTF-8 was dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn delivers_here_and_at_each_sibling_once() {
        let dir =
            std::env::temp_dir().join(format!("anycable-siblings-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A sibling: another listener in the same directory, under another "pid".
        let peer_path = dir.join("1.sock");
        let peer = UnixListener::bind(&peer_path).unwrap();
        let got = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            let (stream, _) = peer.accept().await.unwrap();
            receive(
                stream,
                Arc::new(move |p: &str| sink.lock().push(p.to_string())),
            )
            .await;
        });
        let here = Arc::new(AtomicUsize::new(0));
        let count = here.clone();
        let link = SiblingPubSub::start(&dir, move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(link.peer_count(), 1);
        link.publish("one".into());
        link.publish("two".into());
        for _ in 0..100 {
            if got.lock().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*got.lock(), vec!["one".to_string(), "two".to_string()]);
        assert_eq!(here.load(Ordering::Relaxed), 2);
        link.close();
        assert!(!dir.join(format!("{}.sock", std::process::id())).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn forgets_a_sibling_whose_process_is_gone() {
        let dir =
            std::env::temp_dir().join(format!("anycable-siblings-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A socket file left by a process that no longer runs (pid far past pid_max).
        let stale = dir.join("999999999.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let link = SiblingPubSub::start(&dir, |_| {}).unwrap();
        link.publish("x".into());
        for _ in 0..100 {
            if !stale.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!stale.exists());
        assert_eq!(link.peer_count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
