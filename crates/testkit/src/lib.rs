//! Support for the project's tests: isolated databases and backends, real processes, upstreams.
//!
//! - this module: PostgreSQL schemas and stores per test, free ports, the bundled plugins.
//! - [`process`]: `gantry` processes on ephemeral ports, their environments and certificates.
//! - [`admin`]: an in-process Admin API over a test store, and its client.
//! - [`http`]: calls that must succeed, waiting for an answer, Kong's messages tests expect.
//! - [`upstream`]: echo and raw upstreams.
//! - [`redis`]: the shared Redis server (keys under a prefix per test) and private ones.
//!
//! Tests that need PostgreSQL get a fresh schema each, dropped afterwards. Where PostgreSQL is
//! absent they skip with a printed reason, except in CI (`CI=true`), where that is a failure.

use std::time::Duration;

pub mod admin;
pub mod http;
pub mod load;
pub mod pki;
pub mod process;
pub mod redis;
pub mod upstream;

use gantry_conf::PgSettings;
use gantry_store::{Backend, Store};
use sqlx::Executor;

/// Whether we run in CI, where nothing may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the command `tool` is installed. Absent, a test skips (it prints why and returns
/// early) on a user's machine; in CI that is a failure.
pub fn have_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!ci(), "{tool} is required in CI (.ci/run installs it)");
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

fn base_pg() -> PgSettings {
    PgSettings {
        host: std::env::var("GANTRY_TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
        port: std::env::var("GANTRY_TEST_PG_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432),
        user: std::env::var("GANTRY_TEST_PG_USER").unwrap_or_else(|_| "postgres".into()),
        password: std::env::var("GANTRY_TEST_PG_PASSWORD").ok(),
        database: std::env::var("GANTRY_TEST_PG_DATABASE").unwrap_or_else(|_| "test".into()),
        schema: None,
        timeout_ms: 3000,
    }
}

fn url(pg: &PgSettings) -> String {
    match &pg.password {
        Some(p) => format!(
            "postgres://{}:{}@{}:{}/{}",
            pg.user, p, pg.host, pg.port, pg.database
        ),
        None => format!(
            "postgres://{}@{}:{}/{}",
            pg.user, pg.host, pg.port, pg.database
        ),
    }
}

/// A PostgreSQL schema of one test; dropped when this goes out of scope.
pub struct PgSchema {
    pub settings: PgSettings,
}

impl PgSchema {
    /// A fresh schema, or `None` (with the reason printed) where PostgreSQL is not reachable
    /// outside CI. In CI an unreachable PostgreSQL panics.
    pub async fn create() -> Option<PgSchema> {
        sqlx::any::install_default_drivers();
        let base = base_pg();
        let conn =
            tokio::time::timeout(Duration::from_secs(5), sqlx::AnyPool::connect(&url(&base))).await;
        let pool = match conn {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return skip(&format!(
                    "cannot connect to PostgreSQL at {}:{}: {e}",
                    base.host, base.port
                ))
            }
            Err(_) => {
                return skip(&format!(
                    "PostgreSQL at {}:{} did not answer in 5 s",
                    base.host, base.port
                ))
            }
        };
        let name = format!(
            "gantry_t{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        pool.execute(format!("CREATE SCHEMA \"{name}\"").as_str())
            .await
            .expect("create test schema");
        pool.close().await;
        let mut settings = base;
        settings.schema = Some(name);
        Some(PgSchema { settings })
    }
}

fn skip<T>(reason: &str) -> Option<T> {
    if ci() {
        panic!("PostgreSQL is required in CI: {reason}");
    }
    eprintln!("SKIPPED (PostgreSQL part): {reason}");
    None
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let Some(schema) = self.settings.schema.clone() else {
            return;
        };
        let u = url(&self.settings);
        // Drop may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let pool = sqlx::AnyPool::connect(&u).await.ok()?;
                pool.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
                    .await
                    .ok()?;
                pool.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// A store under test and what keeps its database alive.
pub struct TestStore {
    pub store: Store,
    pub name: &'static str,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgSchema>,
}

/// A fresh SQLite store in a temporary directory.
pub async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::Sqlite(Some(dir.path().join("gantry.db")));
    TestStore {
        store: Store::open(&backend).await.expect("open sqlite"),
        name: "sqlite",
        backend,
        _dir: Some(dir),
        _pg: None,
    }
}

/// A fresh PostgreSQL store, or `None` where PostgreSQL is absent (outside CI).
pub async fn postgres_store() -> Option<TestStore> {
    let pg = PgSchema::create().await?;
    let backend = Backend::Postgres(pg.settings.clone());
    Some(TestStore {
        store: Store::open(&backend).await.expect("open postgres"),
        name: "postgres",
        backend,
        _dir: None,
        _pg: Some(pg),
    })
}

/// Every backend available: SQLite always, PostgreSQL where it runs.
pub async fn all_stores() -> Vec<TestStore> {
    let mut v = vec![sqlite_store().await];
    if let Some(p) = postgres_store().await {
        v.push(p);
    }
    v
}

/// The plugins every bundled node runs (`plugins = bundled`), as validation sees them.
pub fn bundled_plugins() -> gantry_model::plugins::Catalog {
    gantry_proxy::plugins::Registry::default().catalog()
}

/// Whether connections queued on a closing `reuseport` listener move to the others
/// (`net.ipv4.tcp_migrate_req = 1`), which zero-loss replacement tests need. Where not, a test
/// skips, saying so; in CI (which sets it) it fails instead.
pub fn migrates_connections() -> bool {
    let on = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    if !on {
        assert!(!ci(), ".ci/run sets net.ipv4.tcp_migrate_req = 1");
        eprintln!(
            "skipped: net.ipv4.tcp_migrate_req is not 1 (sysctl -w net.ipv4.tcp_migrate_req=1)"
        );
    }
    on
}

/// A free loopback port: bound, then released, for a child process to take (or for a node
/// that must come back on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
