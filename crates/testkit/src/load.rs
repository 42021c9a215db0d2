//! Load for tests that must lose no request: workers sending requests until stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests against `url` from `workers` tasks until stopped: (ok, failed, first failure).
pub struct Load {
    pub ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, workers: usize, fresh_connections: bool) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::Mutex::new(None));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
            if fresh_connections {
                b = b.pool_max_idle_per_host(0);
            }
            let http = b.build().unwrap();
            let (url, ok, failed, first, rx) = (
                url.clone(),
                ok.clone(),
                failed.clone(),
                first.clone(),
                rx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Bounded: at most 60 s of requests.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !*rx.borrow() && Instant::now() < deadline {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = first.lock().unwrap();
                            if f.is_none() {
                                *f = Some(format!("{:?}", other.map(|r| r.status())));
                            }
                        }
                    }
                }
            }));
        }
        Load {
            ok,
            failed,
            first,
            stop,
            tasks,
        }
    }

    pub async fn finish(self) -> (u64, u64, Option<String>) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let first = self.first.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            first,
        )
    }
}
