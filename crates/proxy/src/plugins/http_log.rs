//! http-log, as Kong 3.9's: each request's log entry (Kong's serializer) queued by the log
//! phase and sent to `http_endpoint` by a [`queue`](super::queue), one entry per request body
//! with `queue.max_batch_size` 1, otherwise a JSON array of up to that many.
//!
//! The request: `method` (POST, PUT or PATCH) to the endpoint's path and query, `Content-Type`
//! from `content_type`, `Authorization: Basic` from the endpoint's user info, then the
//! configured `headers` (which never replace those); connect, send and read each within
//! `timeout` milliseconds; an idle connection kept `keepalive` milliseconds. A status of 300 or
//! more is a failure, retried by the queue. As Kong, an `https` endpoint's certificate is not
//! verified. Kong's deprecated `queue_size` and `flush_timeout` still set the batch size and
//! the coalescing delay when they differ from their old defaults; `retry_count` does nothing
//! (Kong says so too) and is logged as such once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::queue::{self, Handler, Queues, SendFailed};
use super::{BoxFuture, Descriptor, Instance, Plugin, Shared};
use crate::server::RequestLog;
use crate::upstream_tls::Connectors;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "http-log",
        12,
        vec![
            Field::new("http_endpoint", str_of(StrKind::Url)).req(),
            Field::new("method", one_of(&["POST", "PUT", "PATCH"]))
                .req()
                .def(json!("POST")),
            Field::new(
                "content_type",
                one_of(&["application/json", "application/json; charset=utf-8"]),
            )
            .req()
            .def(json!("application/json")),
            Field::new("timeout", number()).req().def(json!(10000)),
            Field::new("keepalive", number()).req().def(json!(60000)),
            Field::new("retry_count", integer()),
            Field::new("queue_size", integer()),
            Field::new("flush_timeout", number()),
            Field::new("headers", map(string())),
            queue::schema(),
            Field::new("custom_fields_by_lua", map(string())),
        ],
    )
    .any_protocol()
    .no_consumer_group()
    .checks(|c, e| {
        if let Some(h) = c.get("headers").and_then(Value::as_object) {
            for name in h.keys() {
                let lower = name.to_ascii_lowercase();
                let err = match lower.as_str() {
                    "host" => Some("cannot contain 'Host' header".to_string()),
                    "content-length" => Some("cannot contain 'Content-Length' header".into()),
                    "content-type" => Some("cannot contain 'Content-Type' header".into()),
                    _ if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                        Some(format!("bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"))
                    }
                    _ => None,
                };
                if let Some(err) = err {
                    e.add("headers", err);
                }
            }
            let url = c
                .get("http_endpoint")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if Endpoint::parse(url).is_ok_and(|p| p.userinfo.is_some())
                && h.keys().any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                e.add_record(
                    "specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed",
                );
            }
        }
        refuse_lua_fields(c, e);
    })
}

/// Where entries go: an `http(s)://[user:password@]host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// The path and query string, `/` at least.
    target: String,
    /// As written, for `Authorization: Basic`.
    userinfo: Option<String>,
}

/// Why `http_endpoint` is not a URL Gantry can send to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum EndpointError {
    #[error("scheme must be http or https")]
    Scheme,
    #[error("missing host")]
    Host,
    #[error("invalid port '{0}'")]
    Port(String),
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, EndpointError> {
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

    fn authority(&self) -> String {
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

/// What sends batches for one configuration.
struct Sender {
    endpoint: Endpoint,
    method: hyper::Method,
    headers: hyper::HeaderMap,
    timeout: Duration,
    keepalive: Duration,
    /// A batch of one is sent as the entry itself, else as a JSON array.
    array: bool,
    tls: Arc<Connectors>,
    /// The connection kept alive between sends, with when it went idle.
    idle: Arc<Mutex<Option<Idle>>>,
}

/// A connection to the endpoint and when it went idle.
type Idle = (SendRequest<Full<Bytes>>, Instant);

struct HttpLog {
    queue_name: String,
    params: queue::Params,
    sender: Arc<dyn Handler>,
    queues: Arc<Queues>,
}

fn build(_: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let url = c
        .get("http_endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| CompileError::field("http_endpoint", "required field missing"))?;
    let endpoint = Endpoint::parse(url)
        .map_err(|e| CompileError::field("http_endpoint", format!("invalid url '{url}': {e}")))?;
    let s = |k: &str, d: &str| c.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
    let n = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d);
    let method = s("method", "POST");
    let content_type = s("content_type", "application/json");
    let ms = |k: &str, d: f64| -> Result<Duration, CompileError> {
        let v = n(k, d);
        if !(0.0..=u32::MAX as f64).contains(&v) {
            return Err(CompileError::field(k, "must be between 0 and 4294967295"));
        }
        Ok(Duration::from_millis(v as u64))
    };
    let (timeout, keepalive) = (ms("timeout", 10000.0)?, ms("keepalive", 60000.0)?);
    let mut params = queue::Params::from_config(c.get("queue"))?;
    // Kong's legacy parameters, where they differ from their old defaults.
    if let Some(size) = c.get("queue_size").and_then(Value::as_i64) {
        if size != 1 {
            if size < 1 {
                return Err(CompileError::field("queue_size", "must be at least 1"));
            }
            params.max_batch_size = size as usize;
        }
    }
    if let Some(flush) = c.get("flush_timeout").and_then(Value::as_f64) {
        if flush != 2.0 {
            params.max_coalescing_delay = Duration::try_from_secs_f64(flush)
                .map_err(|_| CompileError::field("flush_timeout", "not a duration"))?;
        }
    }
    let mut headers = hyper::HeaderMap::new();
    let hv = |v: &str, field: &str| {
        hyper::header::HeaderValue::from_str(v)
            .map_err(|_| CompileError::field(field, format!("not a valid header value: {v}")))
    };
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hv(&content_type, "content_type")?,
    );
    if let Some(u) = &endpoint.userinfo {
        let basic = base64::engine::general_purpose::STANDARD.encode(u);
        headers.insert(
            hyper::header::AUTHORIZATION,
            hv(&format!("Basic {basic}"), "http_endpoint")?,
        );
    }
    if let Some(extra) = c.get("headers").and_then(Value::as_object) {
        for (k, v) in extra {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| CompileError::field("headers", format!("bad header name '{k}'")))?;
            if !headers.contains_key(&name) {
                headers.insert(name, hv(v.as_str().unwrap_or_default(), "headers")?);
            }
        }
    }
    // Kong's queue name: its six first legacy parameters, as Lua prints them.
    let lua = |k: &str| match c.get(k) {
        None | Some(Value::Null) => "nil".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let queue_name = [
        "http_endpoint",
        "method",
        "content_type",
        "timeout",
        "keepalive",
        "retry_count",
    ]
    .map(lua)
    .join(":");
    let sender = Sender {
        method: hyper::Method::from_bytes(method.as_bytes())
            .map_err(|_| CompileError::field("method", format!("invalid value: {method}")))?,
        endpoint,
        headers,
        timeout,
        keepalive,
        array: params.max_batch_size > 1,
        tls: shared.get::<Connectors>(),
        idle: Arc::default(),
    };
    Ok(Arc::new(HttpLog {
        queue_name,
        params,
        sender: Arc::new(sender),
        queues: shared.get::<Queues>(),
    }))
}

impl Plugin for HttpLog {
    fn logs(&self) -> bool {
        true
    }

    fn log(&self, r: &RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let entry = Bytes::from(super::serialize::entry(r));
        self.queues.enqueue(
            "http-log",
            &self.queue_name,
            &self.params,
            &self.sender,
            entry,
        );
        None
    }
}

/// The body of a batch: the entry itself, or the entries as a JSON array.
fn payload(batch: &[Bytes], array: bool) -> Bytes {
    if !array && batch.len() == 1 {
        return batch[0].clone();
    }
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    Bytes::from(out)
}

impl Sender {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendFailed> {
        let ep = &self.endpoint;
        let fail =
            |e: String| SendFailed(format!("failed request to {}:{}: {e}", ep.host, ep.port));
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| fail("timeout".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        macro_rules! handshake {
            ($io:expr) => {{
                let (send, conn) = tokio::time::timeout(
                    self.timeout,
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
            let tls =
                tokio::time::timeout(self.timeout, self.tls.connect(tcp, &ep.host, false, false))
                    .await
                    .map_err(|_| fail("timeout".into()))?
                    .map_err(|e| fail(e.to_string()))?;
            handshake!(tls)
        } else {
            handshake!(tcp)
        })
    }

    async fn post(&self, body: Bytes) -> Result<(), SendFailed> {
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
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
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

impl Handler for Sender {
    fn send(self: Arc<Self>, batch: Arc<[Bytes]>) -> BoxFuture<'static, Result<(), SendFailed>> {
        Box::pin(async move { self.post(payload(&batch, self.array)).await })
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

    #[test]
    fn payloads() {
        let one = [Bytes::from("{\"a\":1}")];
        assert_eq!(payload(&one, false), "{\"a\":1}");
        assert_eq!(payload(&one, true), "[{\"a\":1}]");
        let two = [Bytes::from("1"), Bytes::from("2")];
        assert_eq!(payload(&two, true), "[1,2]");
    }
}
