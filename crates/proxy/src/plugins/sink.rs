//! Where plugins send what they log over HTTP (http-log's entries, opentelemetry's spans): an
//! endpoint URL and a sender that keeps one connection alive between batches.
//!
//! A sender connects (TCP, then TLS for `https`, then the HTTP/1.1 handshake) within its
//! connect timeout, and sends a batch and reads the answer within its send and read timeouts
//! together. As in Kong, an `https` endpoint's certificate is not verified. A status of 300 or
//! more is a failure, which the plugin's queue retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::queue::SendFailed;
use crate::upstream_tls::Connectors;

/// Where entries go: an `http(s)://[user:password@]host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path and query string, `/` at least.
    pub target: String,
    /// As written, for `Authorization: Basic`.
    pub userinfo: Option<String>,
}

/// Why `http_endpoint` is not a URL Gantry can send to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EndpointError {
    #[error("scheme must be http or https")]
    Scheme,
    #[error("missing host")]
    Host,
    #[error("invalid port '{0}'")]
    Port(String),
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(EndpointError::Scheme);
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(cut);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(EndpointError::Host)?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(EndpointError::Host);
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| EndpointError::Port(p.to_string()))?,
            None if tls => 443,
            None => 80,
        };
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            target,
            userinfo,
        })
    }

    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// Sends request bodies to one endpoint.
pub struct Sender {
    pub endpoint: Endpoint,
    pub method: hyper::Method,
    /// Sent with every request (`Content-Type`, `Authorization`, the configured ones).
    pub headers: hyper::HeaderMap,
    pub connect_timeout: Duration,
    /// For sending a body and reading the answer, together.
    pub io_timeout: Duration,
    /// How long an idle connection is kept (zero: not kept).
    pub keepalive: Duration,
    pub tls: Arc<Connectors>,
    /// The connection kept alive between sends, with when it went idle.
    pub idle: Arc<Mutex<Option<Idle>>>,
}

/// A connection to the endpoint and when it went idle.
pub type Idle = (SendRequest<Full<Bytes>>, Instant);

impl Sender {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendFailed> {
        let ep = &self.endpoint;
        let fail =
            |e: String| SendFailed(format!("failed request to {}:{}: {e}", ep.host, ep.port));
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| fail("timeout".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        macro_rules! handshake {
            ($io:expr) => {{
                let (send, conn) = tokio::time::timeout(
                    self.connect_timeout,
                    hyper::client::conn::http1::handshake(TokioIo::new($io)),
                )
                .await
                .map_err(|_| fail("timeout".into()))?
                .map_err(|e| fail(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                send
            }};
        }
        Ok(if ep.tls {
            let tls = tokio::time::timeout(
                self.connect_timeout,
                self.tls.connect(tcp, &ep.host, false, false),
            )
            .await
            .map_err(|_| fail("timeout".into()))?
            .map_err(|e| fail(e.to_string()))?;
            handshake!(tls)
        } else {
            handshake!(tcp)
        })
    }

    pub async fn post(&self, body: Bytes) -> Result<(), SendFailed> {
        let ep = &self.endpoint;
        let kept = self.idle.lock().ok().and_then(|mut i| i.take());
        let mut conn = match kept {
            Some((c, since)) if since.elapsed() < self.keepalive && !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let mut req = hyper::Request::new(Full::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = ep
            .target
            .parse()
            .map_err(|_| SendFailed(format!("invalid path {}", ep.target)))?;
        *req.headers_mut() = self.headers.clone();
        if let Ok(host) = hyper::header::HeaderValue::from_str(&ep.authority()) {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        let fail =
            |e: String| SendFailed(format!("failed request to {}:{}: {e}", ep.host, ep.port));
        let exchange = async {
            conn.ready().await.map_err(|e| fail(e.to_string()))?;
            let res = conn
                .send_request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = res.status().as_u16();
            // Always read the answer, so the connection can serve the next batch.
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, SendFailed>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.io_timeout, exchange)
            .await
            .map_err(|_| fail("timeout".into()))??;
        if !self.keepalive.is_zero() && !conn.is_closed() {
            if let Ok(mut i) = self.idle.lock() {
                *i = Some((conn, Instant::now()));
            }
        }
        if status < 300 {
            Ok(())
        } else {
            let shown = &body[..body.len().min(1024)];
            Err(SendFailed(format!(
                "request to {}:{} returned status code {status} and body {}",
                ep.host,
                ep.port,
                String::from_utf8_lossy(shown)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://u:p%40ss@logs.example/in?k=1").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.target.as_str()),
            (true, "logs.example", 443, "/in?k=1")
        );
        assert_eq!(e.userinfo.as_deref(), Some("u:p%40ss"));
        assert_eq!(e.authority(), "logs.example");
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.target.as_str()),
            ("::1", 9000, "/")
        );
        assert_eq!(e.authority(), "[::1]:9000");
        assert_eq!(
            Endpoint::parse("http://h:0/"),
            Err(EndpointError::Port("0".into()))
        );
        assert_eq!(Endpoint::parse("ftp://h/"), Err(EndpointError::Scheme));
        assert_eq!(Endpoint::parse("http:///x"), Err(EndpointError::Host));
    }
}
