//! Upstream HTTP/1.1 connections, kept alive and reused per `host:port`.
//!
//! A small pool on hyper's connection API: a request takes an idle connection that is ready
//! (its previous response fully read), or opens one. Connections that closed are dropped when
//! met. Idle connections past `max_idle` per address are closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("upstream HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Incoming>>>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
        }
    }

    /// An idle connection to `addr` that is ready, or a new one. Failing here, nothing of the
    /// request has been sent: another target may be tried.
    pub async fn checkout(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        match self.take(addr) {
            Some(s) => Ok(s),
            None => self.connect(addr, connect_timeout).await,
        }
    }

    fn take(&self, addr: &str) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(addr)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    /// Give a connection back, to be reused once its current response has been read.
    pub fn put(&self, addr: &str, s: SendRequest<Incoming>) {
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(addr.to_string()).or_default();
            if list.len() < self.max_idle {
                list.push(s);
            }
        }
    }

    async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                })
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // `with_upgrades`: a connection that switches protocols (WebSocket) is handed over
        // to the caller instead of being closed.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A connection of its own, that never returns to the pool (protocol switches).
    pub async fn connect_dedicated(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        self.connect(addr, connect_timeout).await
    }

    /// Send a request on a checked-out connection; the connection goes back to the pool.
    pub async fn send_on(
        &self,
        addr: &str,
        mut sender: SendRequest<Incoming>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let fut = sender.send_request(req);
        self.put(addr, sender);
        Ok(fut.await?)
    }
}
