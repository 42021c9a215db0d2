//! Redis for tests: the machine's shared server (127.0.0.1:6379; a test keeps to keys under
//! its own prefix and deletes them), and private servers a test may stop and start again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared server's address: `GANTRY_TEST_REDIS` or 127.0.0.1:6379.
pub fn shared_addr() -> String {
    std::env::var("GANTRY_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// Whether the shared server answers. Absent, a test skips (it prints why) on a user's
/// machine; in CI that is a failure.
pub async fn shared_available() -> bool {
    let up = client(&shared_addr()).await.is_some();
    if !up {
        assert!(!crate::ci(), "Redis is required in CI at {}", shared_addr());
        eprintln!("skipped: no Redis at {}", shared_addr());
    }
    up
}

async fn client(addr: &str) -> Option<redis::aio::MultiplexedConnection> {
    let c = redis::Client::open(format!("redis://{addr}/")).ok()?;
    tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// The integer value of `key` on the server at `addr` (none when absent).
pub async fn get(addr: &str, key: &str) -> Option<i64> {
    let mut c = client(addr).await.expect("Redis answers");
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<i64>>(&mut c)
        .await
        .expect("GET")
}

/// The keys under `prefix` on the server at `addr`.
pub async fn keys(addr: &str, prefix: &str) -> Vec<String> {
    let mut c = client(addr).await.expect("Redis answers");
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async::<Vec<String>>(&mut c)
        .await
        .expect("KEYS")
}

/// Delete the keys under `prefix` on the server at `addr`.
pub async fn delete_prefix(addr: &str, prefix: &str) {
    let found = keys(addr, prefix).await;
    if found.is_empty() {
        return;
    }
    let mut c = client(addr).await.expect("Redis answers");
    let _: i64 = redis::cmd("DEL")
        .arg(found)
        .query_async(&mut c)
        .await
        .expect("DEL");
}

/// A `redis-server` of one test, on a port of its own, killed when dropped.
pub struct Private {
    pub port: u16,
    child: Option<Child>,
}

impl Private {
    /// A new server; `None` (after a printed reason) where `redis-server` is not installed,
    /// which fails in CI.
    pub async fn start() -> Option<Private> {
        if !crate::have_tool("redis-server") {
            return None;
        }
        let mut p = Private {
            port: crate::free_port(),
            child: None,
        };
        p.up().await;
        Some(p)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start the server (again), and wait until it answers.
    pub async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client(&self.addr()).await.is_none() {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the server.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.down();
    }
}
