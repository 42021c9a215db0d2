//! The configuration store.
//!
//! Entities are JSON documents in one table, with side tables that index what the model says
//! matters: unique keys, references between entities, and tags. The same SQL runs on SQLite
//! (the default, a file under the prefix, WAL, synchronous commits) and PostgreSQL.
//!
//! Every write runs in one transaction that first bumps the monotonic config version (which also
//! serialises writers, across processes on PostgreSQL) and records each changed entity in the
//! change log under that version: the cluster layer streams deltas from it.

mod analytics;
mod bulk;
mod cluster;
mod error;
pub mod feed;
mod managed;
mod migrate;
mod read;
mod tenants;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Executor};
use tokio::sync::Mutex;

pub use analytics::AnalyticsQuery;
pub use cluster::{RegistryWrite, StoreDelta};
pub use error::StoreError;
pub use managed::ManagedRow;
pub use read::{decode_offset, encode_offset, Change, ListQuery, Page, TagFilter, TagRow};
pub use tenants::{now_ms, ControlPlaneRow, DpCertRow, TokenRow};
pub use write::Op;

/// Which database a store runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file; `None` for an in-memory database (`database = off`).
    Sqlite(Option<PathBuf>),
    Postgres(gantry_conf::PgSettings),
}

/// A handle on one control plane's part of the store: its entities, configuration version and
/// change log, data plane registry and analytics. Cheap to clone; [`Store::scoped`] gives the
/// handle of another control plane on the same database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Db>,
    /// The control plane's key (`control_planes.key`, `config_version.id`); 1 is the default.
    cp: i64,
}

/// The database every control plane's handle shares.
struct Db {
    pool: AnyPool,
    postgres: bool,
    /// One writer at a time within this process; PostgreSQL's row lock on a control plane's
    /// version row orders writers across processes.
    write_lock: Mutex<()>,
}

/// The default control plane's key: the one Kong's Admin API at `/` serves.
pub const DEFAULT_CP: i64 = 1;

/// Make `path` readable by its owner alone (0600), creating it empty when absent: the database
/// holds certificate keys and credentials. SQLite gives its `-wal` and `-shm` files the
/// database's mode; ones left by an older Gantry are tightened too.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for p in [
        path.to_path_buf(),
        suffixed(path, "-wal"),
        suffixed(path, "-shm"),
    ] {
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn suffixed(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    std::path::PathBuf::from(s)
}

impl Store {
    /// Open (creating when needed) and migrate.
    pub async fn open(backend: &Backend) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, postgres, max) = match backend {
            Backend::Sqlite(Some(path)) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
                }
                private_file(path)
                    .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
                (format!("sqlite://{}?mode=rwc", path.display()), false, 4)
            }
            // One shared connection, or each would see its own empty database.
            Backend::Sqlite(None) => ("sqlite::memory:".to_string(), false, 1),
            Backend::Postgres(pg) => (pg_url(pg), true, 8),
        };
        let schema = match backend {
            Backend::Postgres(pg) => pg.schema.clone(),
            _ => None,
        };
        if let Some(s) = &schema {
            if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::Open(format!(
                    "invalid pg_schema '{s}': letters, digits and '_' only"
                )));
            }
        }
        let timeout = match backend {
            Backend::Postgres(pg) => Duration::from_millis(pg.timeout_ms),
            _ => Duration::from_secs(5),
        };
        let setup_schema = schema.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(if postgres { 0 } else { 1 })
            .idle_timeout(if max == 1 {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if max == 1 {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .acquire_timeout(timeout)
            .after_connect(move |conn: &mut AnyConnection, _| {
                let schema = setup_schema.clone();
                Box::pin(async move {
                    if postgres {
                        if let Some(s) = schema {
                            conn.execute(format!("SET search_path TO \"{s}\"").as_str())
                                .await?;
                        }
                    } else {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // Large transactions (imports) stay in memory instead of spilling.
                        conn.execute("PRAGMA cache_size = -32768").await?;
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| StoreError::Open(describe_connect_error(backend, &e)))?;
        if let Some(s) = &schema {
            pool.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"").as_str())
                .await?;
        }
        let store = Store {
            db: Arc::new(Db {
                pool,
                postgres,
                write_lock: Mutex::new(()),
            }),
            cp: DEFAULT_CP,
        };
        migrate::run(&store).await?;
        store.ensure_default_control_plane().await?;
        Ok(store)
    }

    /// The handle of the control plane with key `cp` on the same database.
    pub fn scoped(&self, cp: i64) -> Store {
        Store {
            db: self.db.clone(),
            cp,
        }
    }

    /// The key of the control plane this handle reads and writes.
    pub fn cp(&self) -> i64 {
        self.cp
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.db.pool
    }

    /// Whether this store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.db.postgres
    }

    /// Close the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.db.pool.close().await;
    }
}

/// End a transaction by its body's result: commit on success, roll back on error. Always
/// explicitly: sqlx defers the rollback of a transaction dropped open until its connection is
/// next used, so until then it would sit idle in its transaction, holding its locks (the
/// control plane's version row, on PostgreSQL, which every writer waits for).
pub(crate) async fn finish<T>(
    tx: sqlx::Transaction<'static, sqlx::Any>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            if let Err(r) = tx.rollback().await {
                tracing::warn!(error = %r, "cannot roll back a failed write");
            }
            Err(e)
        }
    }
}

fn describe_connect_error(backend: &Backend, e: &sqlx::Error) -> String {
    match backend {
        Backend::Sqlite(Some(p)) => format!("cannot open SQLite database {}: {e}", p.display()),
        Backend::Sqlite(None) => format!("cannot open in-memory database: {e}"),
        Backend::Postgres(pg) => format!(
            "cannot connect to PostgreSQL at {}:{} (database '{}', user '{}'): {e}",
            pg.host, pg.port, pg.database, pg.user
        ),
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn pg_url(pg: &gantry_conf::PgSettings) -> String {
    let auth = match &pg.password {
        Some(p) => format!("{}:{}", pct(&pg.user), pct(p)),
        None => pct(&pg.user),
    };
    format!(
        "postgres://{auth}@{}:{}/{}",
        pg.host,
        pg.port,
        pct(&pg.database)
    )
}
