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
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Incoming>>>>,
    max_idle: usize,
    tls: crate::upstream_tls::Connectors,
}

/// How to reach an upstream: its address, and TLS settings when it speaks https.
#[derive(Debug, Clone)]
pub struct Dest {
    pub addr: String,
    /// `Some((server name, verify))` for TLS.
    pub tls: Option<(String, bool)>,
}

impl Dest {
    /// The pool key: connections are shared only between identical destinations.
    fn key(&self) -> String {
        match &self.tls {
            None => self.addr.clone(),
            Some((sni, verify)) => format!("tls|{sni}|{verify}|{}", self.addr),
        }
    }
}

impl Pool {
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            tls: crate::upstream_tls::Connectors::new(),
        }
    }

    /// An idle connection to `dest` that is ready, or a new one. Failing here, nothing of the
    /// request has been sent: another target may be tried.
    pub async fn checkout(
        &self,
        dest: &Dest,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        match self.take(&dest.key()) {
            Some(s) => Ok(s),
            None => self.connect(dest, connect_timeout).await,
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
        dest: &Dest,
        timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        let addr = dest.addr.as_str();
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
        match &dest.tls {
            None => handshake(stream).await,
            Some((sni, verify)) => {
                let tls = tokio::time::timeout(timeout, self.tls.connect(stream, sni, *verify))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout {
                        addr: addr.to_string(),
                    })?
                    .map_err(|source| UpstreamError::Tls {
                        addr: addr.to_string(),
                        source,
                    })?;
                handshake(tls).await
            }
        }
    }

    /// A connection of its own, that never returns to the pool (protocol switches).
    pub async fn connect_dedicated(
        &self,
        dest: &Dest,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        self.connect(dest, connect_timeout).await
    }

    /// Send a request on a checked-out connection; the connection goes back to the pool.
    pub async fn send_on(
        &self,
        dest: &Dest,
        mut sender: SendRequest<Incoming>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let fut = sender.send_request(req);
        self.put(&dest.key(), sender);
        Ok(fut.await?)
    }
}

/// HTTP/1.1 on a connected stream; `with_upgrades`, so that a connection that switches
/// protocols (WebSocket) is handed over to the caller instead of being closed.
async fn handshake<S>(stream: S) -> Result<SendRequest<Incoming>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
