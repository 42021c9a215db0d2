//! Connections to Redis for the plugins that keep state there (rate-limiting's `redis`
//! policy): one multiplexed connection per server and credentials, shared by every plugin
//! that names them and kept across configurations. The driver is redis-rs; TCP and TLS are
//! set up here, so that Kong's `ssl`, `ssl_verify` and `server_name` mean what they say.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::Value;

use gantry_model::plugins::CompileError;

use crate::upstream_tls::Connectors;

/// A Redis server and how to talk to it: Kong's `config.redis` record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: i64,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub server_name: Option<String>,
    /// Connect, send and read timeout.
    pub timeout: Duration,
}

impl Target {
    /// The target a validated `config.redis` record names.
    pub fn from_config(redis: &Value) -> Result<Target, CompileError> {
        let s = |k: &str| {
            redis
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let n = |k: &str, d: i64| redis.get(k).and_then(Value::as_i64).unwrap_or(d);
        let b = |k: &str| redis.get(k).and_then(Value::as_bool).unwrap_or(false);
        let host = s("host").ok_or_else(|| CompileError::field("redis.host", "required"))?;
        Ok(Target {
            host,
            port: u16::try_from(n("port", 6379))
                .map_err(|_| CompileError::field("redis.port", "not a port"))?,
            username: s("username"),
            password: s("password"),
            database: n("database", 0),
            ssl: b("ssl"),
            ssl_verify: b("ssl_verify"),
            server_name: s("server_name"),
            timeout: Duration::from_millis(n("timeout", 2000).max(1) as u64),
        })
    }

    /// How logs name the server: `host:port;database` (Kong's key of a Redis database).
    pub fn label(&self) -> String {
        format!("{}:{};{}", self.host, self.port, self.database)
    }
}

/// Why a Redis command did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("failed to connect to Redis {0}: {1}")]
    Connect(String, String),
    #[error("Redis {0} did not answer within {1} ms")]
    Timeout(String, u128),
    #[error("Redis {0}: {1}")]
    Command(String, String),
}

/// A connection, or the last failure to make one (and when), so that a server that is down
/// is not dialled again by every request.
enum Slot {
    Up(MultiplexedConnection),
    Down(Instant, RedisError),
}

/// After a failed connection, how long requests fail at once before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The connections of a node, by target.
#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<Target, Arc<tokio::sync::Mutex<Option<Slot>>>>>,
    tls: std::sync::OnceLock<Connectors>,
}

impl Pool {
    fn slot(&self, t: &Target) -> Arc<tokio::sync::Mutex<Option<Slot>>> {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(t.clone()).or_default().clone()
    }

    /// A connection to `t`: the shared one, or a new one.
    async fn conn(&self, t: &Target) -> Result<MultiplexedConnection, RedisError> {
        let slot = self.slot(t);
        let mut g = slot.lock().await;
        match &*g {
            Some(Slot::Up(c)) => return Ok(c.clone()),
            Some(Slot::Down(at, e)) if at.elapsed() < RETRY_AFTER => return Err(e.clone()),
            _ => {}
        }
        match tokio::time::timeout(t.timeout, self.dial(t)).await {
            Ok(Ok(c)) => {
                *g = Some(Slot::Up(c.clone()));
                Ok(c)
            }
            Ok(Err(e)) => {
                *g = Some(Slot::Down(Instant::now(), e.clone()));
                Err(e)
            }
            Err(_) => {
                let e = RedisError::Timeout(t.label(), t.timeout.as_millis());
                *g = Some(Slot::Down(Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn dial(&self, t: &Target) -> Result<MultiplexedConnection, RedisError> {
        let fail = |e: &dyn std::fmt::Display| RedisError::Connect(t.label(), e.to_string());
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| fail(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut info = redis::RedisConnectionInfo::default()
            .set_db(t.database)
            .set_skip_set_lib_name();
        if let Some(p) = &t.password {
            info = info.set_password(p);
            if let Some(u) = &t.username {
                info = info.set_username(u);
            }
        }
        if t.ssl {
            let sni = t.server_name.as_deref().unwrap_or(&t.host);
            let tls = self
                .tls
                .get_or_init(Connectors::new)
                .connect_bare(tcp, sni, t.ssl_verify)
                .await
                .map_err(|e| fail(&e))?;
            let (c, driver) = MultiplexedConnection::new_with_config(
                &info,
                tls,
                redis::AsyncConnectionConfig::new().set_response_timeout(Some(t.timeout)),
            )
            .await
            .map_err(|e| fail(&e))?;
            tokio::spawn(driver);
            Ok(c)
        } else {
            let (c, driver) = MultiplexedConnection::new_with_config(
                &info,
                tcp,
                redis::AsyncConnectionConfig::new().set_response_timeout(Some(t.timeout)),
            )
            .await
            .map_err(|e| fail(&e))?;
            tokio::spawn(driver);
            Ok(c)
        }
    }

    /// Forget the connection to `t` after it failed, so the next command dials again.
    async fn broken(&self, t: &Target, e: &RedisError) {
        let slot = self.slot(t);
        let mut g = slot.lock().await;
        *g = Some(Slot::Down(Instant::now(), e.clone()));
    }

    /// Run a pipeline on `t` within its timeout; a failed connection is dropped.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        t: &Target,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut c = self.conn(t).await?;
        match tokio::time::timeout(t.timeout, pipe.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = RedisError::Command(t.label(), e.to_string());
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.broken(t, &err).await;
                }
                Err(err)
            }
            Err(_) => {
                let err = RedisError::Timeout(t.label(), t.timeout.as_millis());
                self.broken(t, &err).await;
                Err(err)
            }
        }
    }
}
