//! What the two ceiling servers share: `<binary> [ADDR]` (default 127.0.0.1:4000) and a
//! tokio runtime with `WORKERS` worker threads (default 2, as the embedded server).
//! Included by path from each binary, so neither depends on the other.

pub fn addr_and_runtime() -> (String, tokio::runtime::Runtime) {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4000".into());
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    (addr, rt)
}
