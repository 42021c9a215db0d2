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

/// wrk (`-t1 -c4`) against `url` for `secs` seconds, running in the background; `None` where wrk
/// is not installed outside CI (in CI it must be).
pub struct Wrk(std::process::Child);

impl Wrk {
    pub fn start(url: &str, secs: u64) -> Option<Wrk> {
        let spawned = std::process::Command::new("wrk")
            .args(["-t1", "-c4", &format!("-d{secs}s"), url])
            .stdout(std::process::Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => Some(Wrk(child)),
            Err(e) => {
                assert!(!crate::ci(), ".ci/run installs wrk: {e}");
                eprintln!("note: wrk cannot run ({e}); the test's own clients load alone");
                None
            }
        }
    }

    /// Wait for wrk's report; it must show neither socket errors nor non-2xx answers.
    pub fn no_failures(self) -> String {
        let out = self.0.wait_with_output().expect("wrk's report");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("requests in"), "{text}");
        assert!(
            !text.contains("Socket errors") && !text.contains("Non-2xx"),
            "wrk saw failures:\n{text}"
        );
        text
    }
}
