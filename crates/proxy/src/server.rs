//! The HTTP proxy: listeners, request routing and forwarding, Kong's error bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::balancer::{Algorithm, HashOn, Load, Tracked};
use crate::error::{ProxyError, SetupError};
use crate::health::Health;
use crate::names;
use crate::plugins::{Ctx, Shared, UpstreamRequest, BODY_LIMIT};
use crate::pool::{Pool, UpBody};
use crate::router::RequestInfo;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::uri::{normalize, upstream_path_v0};

/// Why a body stopped: hyper's, an upstream's ([`crate::h1::H1Error`]), or a plugin's.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BodyError>;

use crate::forward::strip_hop_by_hop;

/// A running active health probe of one upstream.
struct Probing {
    probe: crate::health::Probe,
    targets: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

/// Request counters and readiness, for the status listener.
#[derive(Default)]
pub struct Stats {
    /// Responses by status class: 1xx to 5xx.
    pub by_class: [AtomicU64; 5],
    /// Whether a configuration has been loaded.
    pub ready: AtomicBool,
    /// Request latency (request head to response head) per bucket of
    /// `gantry_model::analytics::BOUNDS_MS`, and the sum in microseconds.
    pub latency: [AtomicU64; gantry_model::analytics::BOUNDS_MS.len() + 1],
    pub latency_sum_us: AtomicU64,
    /// Client connections accepted since the start.
    pub conns_accepted: AtomicU64,
    /// Client connections open now (TLS handshakes included).
    pub conns_open: AtomicU64,
    /// Open connections that have not sent a whole request head yet.
    pub conns_fresh: AtomicU64,
    /// Requests waiting for their response head now.
    pub in_flight: AtomicU64,
}

impl Stats {
    /// Kong's `kong_nginx_connections_total` states as Gantry counts them: `accepted`,
    /// `handled` (every accepted connection is handled), `total` (requests), `active` (open),
    /// `reading` (open, no request yet), `writing` (requests being answered) and `waiting`
    /// (the rest of the open ones: idle between requests).
    pub fn connections(&self) -> [(&'static str, u64); 7] {
        let accepted = self.conns_accepted.load(Ordering::Relaxed);
        let active = self.conns_open.load(Ordering::Relaxed);
        let reading = self.conns_fresh.load(Ordering::Relaxed);
        let writing = self.in_flight.load(Ordering::Relaxed);
        [
            ("accepted", accepted),
            ("active", active),
            ("handled", accepted),
            ("reading", reading),
            ("total", self.total()),
            ("waiting", active.saturating_sub(reading + writing)),
            ("writing", writing),
        ]
    }
}

/// Counts one open client connection, until dropped.
struct Open(Arc<Proxy>);

impl Open {
    fn new(proxy: Arc<Proxy>) -> Open {
        proxy.stats.conns_accepted.fetch_add(1, Ordering::Relaxed);
        proxy.stats.conns_open.fetch_add(1, Ordering::Relaxed);
        Open(proxy)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.stats.conns_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    fn count(&self, status: u16, took: Duration) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].fetch_add(1, Ordering::Relaxed);
        let ms = took.as_secs_f64() * 1000.0;
        let b = gantry_model::analytics::BOUNDS_MS.partition_point(|x| *x < ms);
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The proxy engine: the current snapshot and the upstream connection pool.
/// One request as the log phase sees it, once its response has been sent: who handled it and
/// how long it took.
#[derive(Debug, Clone, Copy)]
pub struct RequestLog<'a> {
    /// Also sent upstream and to the client as `X-Kong-Request-Id`.
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    pub method: &'a hyper::Method,
    pub uri: &'a Uri,
    pub service: Option<&'a str>,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    /// When the request head came.
    pub started: Instant,
    /// From the request head to the end of the response body (or the client leaving).
    pub total: Duration,
    /// From sending upstream to the upstream's response head (none when not proxied).
    pub upstream: Option<Duration>,
    /// Bytes of response body sent to the client.
    pub response_size: u64,
    /// The route, service and consumer themselves, for log plugins that name them.
    pub route_entity: Option<&'a crate::router::Route>,
    pub service_entity: Option<&'a crate::snapshot::Service>,
    pub consumer_entity: Option<&'a crate::plugins::Consumer>,
    /// Bytes of the request as the client sent it: its head and its announced body (a body of
    /// no announced length is not counted).
    pub request_size: u64,
    /// Bytes of the response head sent to the client (status line and headers).
    pub response_head_size: u64,
    /// Headers and the upstream URI, kept only when a plugin's log phase runs.
    pub details: Option<&'a LogDetails>,
    /// What plugins kept of this request in earlier phases ([`crate::plugins::Ctx::state`]).
    pub state: &'a hyper::http::Extensions,
}

/// The bytes of an HTTP/1.1 head: its first line (`line` bytes without CRLF) and `headers`.
fn head_size(line: usize, headers: &HeaderMap) -> u64 {
    let fields: usize = headers.iter().map(|(k, v)| field_size(k, v)).sum();
    (line + 2 + fields + 2) as u64
}

/// The bytes of a header line: name, `: `, value, CRLF.
fn field_size(name: &HeaderName, value: &HeaderValue) -> usize {
    name.as_str().len() + value.len() + 4
}

/// What a request's log entry holds beyond [`RequestLog`]'s counters, for log plugins.
#[derive(Debug, Default)]
pub struct LogDetails {
    /// The request's headers as the plugins left them (before the proxy's forwarding headers).
    pub request_headers: HeaderMap,
    /// The response's headers as sent to the client.
    pub response_headers: HeaderMap,
    /// The path and query sent upstream (none when not proxied).
    pub upstream_uri: Option<String>,
}

/// Receives every request once its response has been sent (telemetry, access logs).
/// Called on the request path: it must not block.
pub trait LogSink: Send + Sync + 'static {
    fn log(&self, r: &RequestLog<'_>);

    /// A request the HTTP parser refused before it was one (`status` 400, 431 or 408): no
    /// method, target or route to tell, only who sent it and why. Nothing by default.
    fn refused(&self, _client: std::net::IpAddr, _status: u16, _reason: &str) {}
}

/// More for `status_listen`, from other parts of the node: Prometheus metrics for `/metrics` and
/// fields for `/status`.
pub trait MetricsSource: Send + Sync + 'static {
    /// Append metrics in the text exposition format.
    fn write(&self, out: &mut String);

    /// Add fields to `/status` (none by default).
    fn status(&self, _out: &mut serde_json::Map<String, serde_json::Value>) {}
}

/// What `route_and_forward` learned of a request: the plugins that ran and the headers they
/// add to the response, and (only when a log phase listens) who handled it.
struct Seen {
    on: bool,
    request_id: HeaderValue,
    service: Option<Arc<crate::snapshot::Service>>,
    route: Option<Arc<crate::router::Route>>,
    consumer: Option<Arc<crate::plugins::Consumer>>,
    upstream: Option<Duration>,
    ran: Vec<Arc<dyn crate::plugins::Plugin>>,
    /// Kept for log plugins only.
    details: Option<Box<LogDetails>>,
    /// Whether the access phase ran (else the global plugins run the response phases).
    accessed: bool,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The plugins' per-request state, for the log phase.
    state: hyper::http::Extensions,
    /// The headers the proxy adds to the response.
    added: crate::forward::ResponseAdded,
}

/// The headers the proxy adds to responses and upstream requests: Kong's `headers` and
/// `headers_upstream` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Headers {
    /// `Server` on responses the proxy answers itself.
    pub server: bool,
    /// `Via` on proxied responses.
    pub via: bool,
    pub proxy_latency: bool,
    pub upstream_latency: bool,
    /// `X-Kong-Response-Latency` on responses the proxy answers itself.
    pub response_latency: bool,
    pub upstream_status: bool,
    /// `X-Kong-Request-Id` on responses.
    pub request_id: bool,
    /// `X-Kong-Request-Id` on upstream requests (`headers_upstream`).
    pub upstream_request_id: bool,
}

impl Default for Headers {
    /// Kong's defaults: `server_tokens, latency_tokens, X-Kong-Request-Id`, and the request id
    /// upstream.
    fn default() -> Headers {
        Headers::parse(
            "server_tokens, latency_tokens, X-Kong-Request-Id",
            "X-Kong-Request-Id",
        )
        .expect("the defaults parse")
    }
}

impl Headers {
    /// From the comma-separated values of `headers` and `headers_upstream`; an unknown value
    /// is an error that names it.
    pub fn parse(headers: &str, upstream: &str) -> Result<Headers, SetupError> {
        let mut h = Headers {
            server: false,
            via: false,
            proxy_latency: false,
            upstream_latency: false,
            response_latency: false,
            upstream_status: false,
            request_id: false,
            upstream_request_id: false,
        };
        let tokens = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        };
        let list = tokens(headers);
        for t in &list {
            match t.as_str() {
                "off" if list.len() == 1 => {}
                "server_tokens" => (h.server, h.via) = (true, true),
                "latency_tokens" => {
                    (h.proxy_latency, h.upstream_latency, h.response_latency) = (true, true, true)
                }
                "server" => h.server = true,
                "via" => h.via = true,
                "x-kong-proxy-latency" => h.proxy_latency = true,
                "x-kong-upstream-latency" => h.upstream_latency = true,
                "x-kong-response-latency" => h.response_latency = true,
                "x-kong-upstream-status" => h.upstream_status = true,
                "x-kong-request-id" => h.request_id = true,
                // The Admin API has no latency header to add here.
                "x-kong-admin-latency" => {}
                "off" => return Err(SetupError::OffCombined { setting: "headers" }),
                other => return Err(SetupError::UnknownValue {
                    setting: "headers",
                    value: other.to_string(),
                    expected: "server_tokens, latency_tokens, Server, Via, X-Kong-Proxy-Latency, X-Kong-Upstream-Latency, X-Kong-Response-Latency, X-Kong-Admin-Latency, X-Kong-Upstream-Status, X-Kong-Request-Id or off",
                }),
            }
        }
        let list = tokens(upstream);
        for t in &list {
            match t.as_str() {
                "x-kong-request-id" => h.upstream_request_id = true,
                "off" if list.len() == 1 => {}
                other => {
                    return Err(SetupError::UnknownValue {
                        setting: "headers_upstream",
                        value: other.to_string(),
                        expected: "X-Kong-Request-Id or off",
                    })
                }
            }
        }
        Ok(h)
    }
}

/// A request's log entry, waiting for the end of its response body.
struct Pending {
    request_id: HeaderValue,
    client: std::net::IpAddr,
    method: hyper::Method,
    uri: Uri,
    service: Option<Arc<crate::snapshot::Service>>,
    route: Option<Arc<crate::router::Route>>,
    consumer: Option<Arc<crate::plugins::Consumer>>,
    status: u16,
    request_size: u64,
    response_head_size: u64,
    started: Instant,
    upstream: Option<Duration>,
    sinks: Option<Arc<[Arc<dyn LogSink>]>>,
    plugins: Vec<Arc<dyn crate::plugins::Plugin>>,
    details: Option<Box<LogDetails>>,
    state: hyper::http::Extensions,
    /// Body bytes sent so far.
    size: u64,
}

impl Pending {
    fn emit(self) {
        let r = RequestLog {
            request_id: self.request_id.to_str().unwrap_or(""),
            client: self.client,
            method: &self.method,
            uri: &self.uri,
            service: self.service.as_ref().map(|s| s.id.as_str()),
            route: self.route.as_ref().map(|r| r.id.as_str()),
            consumer: self.consumer.as_ref().map(|c| c.id.as_str()),
            route_entity: self.route.as_deref(),
            service_entity: self.service.as_deref(),
            consumer_entity: self.consumer.as_deref(),
            request_size: self.request_size,
            response_head_size: self.response_head_size,
            status: self.status,
            started: self.started,
            total: self.started.elapsed(),
            upstream: self.upstream,
            response_size: self.size,
            details: self.details.as_deref(),
            state: &self.state,
        };
        for s in self.sinks.iter().flat_map(|s| s.iter()) {
            s.log(&r);
        }
        for p in &self.plugins {
            if let Some(work) = p.log(&r) {
                // Log work that waits on I/O runs on its own, after the response.
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(work);
                    }
                    Err(_) => tracing::warn!("a plugin's log work was dropped: no runtime"),
                }
            }
        }
    }
}

/// A response body that runs the log phase when it ends, or when it is dropped unfinished
/// (the client went away).
struct LogOnEnd {
    inner: ProxyBody,
    entry: Option<Box<Pending>>,
}

impl hyper::body::Body for LogOnEnd {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(e), Some(data)) = (self.entry.as_mut(), frame.data_ref()) {
                    e.size += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(e) = self.entry.take() {
                    e.emit();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            e.emit();
        }
    }
}

/// The client of a request: the peer, or the address a trusted peer forwarded.
pub(crate) struct Client {
    pub(crate) ip: std::net::IpAddr,
    /// The same, as a header value.
    pub(crate) value: HeaderValue,
    /// Whether the peer is trusted (its `X-Forwarded-*` headers are kept).
    pub(crate) trusted: bool,
}

/// Requests a client cancelled before their answer (an HTTP/2 stream reset), against those
/// answered, on one connection. A client that cancels more than a hundred and more than it lets
/// be answered is making the proxy start work it ends at once, as the HTTP/2 rapid-reset attack
/// does (CVE-2023-44487): its connection is closed. Browsers and gRPC clients cancel a few
/// streams among many.
#[derive(Default)]
pub(crate) struct Cancels {
    answered: std::sync::atomic::AtomicU64,
    cancelled: std::sync::atomic::AtomicU64,
    abuse: tokio::sync::Notify,
    /// Whether a request has come on the connection.
    started: AtomicBool,
}

/// Takes a connection that never sent a request out of the `reading` count when it ends.
struct Fresh<'a> {
    cancels: Arc<Cancels>,
    stats: &'a Stats,
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        if !self.cancels.started.swap(true, Ordering::Relaxed) {
            self.stats.conns_fresh.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Marks a response to a request whose client failed it (its body broke off, or its stream
/// was reset while the body was read): it counts as cancelled, not answered, against the
/// connection's rapid-reset allowance, whichever of the proxy or the reset saw it first.
#[derive(Clone, Copy, Debug)]
pub struct ClientFailed;

/// Cancellations a connection may make before they are weighed against its answers.
const CANCELS_ALLOWED: u64 = 100;

/// Counts one request as answered, or as cancelled when its future is dropped first.
struct Answering<'a> {
    cancels: &'a Cancels,
    stats: &'a Stats,
    answered: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let c = self.cancels;
        if self.answered {
            c.answered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cancelled = c.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled > CANCELS_ALLOWED && cancelled > c.answered.load(Ordering::Relaxed) {
            c.abuse.notify_one();
        }
    }
}

/// What a request learns from its connection, computed once per connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub https: bool,
    /// The server name the client asked for in its TLS handshake.
    pub sni: Option<String>,
    /// The client a PROXY protocol header named (listeners with `proxy_protocol`).
    pub proxy_protocol: Option<SocketAddr>,
    /// The address the connection was accepted on (nginx's `$server_addr`), when known.
    pub local_ip: Option<std::net::IpAddr>,
    /// This process's serial number of the connection (nginx's `$connection`).
    pub serial: u64,
    /// Requests received on it so far (nginx's `$connection_requests`).
    requests: std::sync::atomic::AtomicU64,
    /// The client's address and the listener's port, as header values.
    peer_ip: HeaderValue,
    port_value: HeaderValue,
}

/// Connections accepted by this process, for [`ConnInfo::serial`].
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ConnInfo {
    pub fn new(peer: SocketAddr, local_port: u16, https: bool, sni: Option<String>) -> ConnInfo {
        ConnInfo {
            local_ip: None,
            serial: CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1,
            requests: std::sync::atomic::AtomicU64::new(0),
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("")),
            port_value: HeaderValue::from(local_port),
            peer,
            local_port,
            https,
            sni,
            proxy_protocol: None,
        }
    }
}

pub struct Proxy {
    headers: std::sync::OnceLock<Headers>,
    trust: std::sync::OnceLock<crate::trust::Trust>,
    log_sinks: std::sync::OnceLock<Arc<[Arc<dyn LogSink>]>>,
    /// Request ids: this process's random prefix and a counter.
    id_prefix: u32,
    id_counter: std::sync::atomic::AtomicU64,
    pub(crate) metrics: std::sync::Mutex<Vec<Arc<dyn MetricsSource>>>,
    node_id: std::sync::OnceLock<String>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) pool: Arc<Pool>,
    /// State plugins keep across configurations.
    shared: crate::plugins::Shared,
    /// `tracing_instrumentations` and `tracing_sampling_rate`.
    tracing: Arc<crate::spans::Tracing>,
    /// The plugins this node runs (Kong's `plugins` setting); all bundled ones unless set.
    registry: std::sync::OnceLock<crate::plugins::Registry>,
    pub stats: Stats,
    pub(crate) health: Arc<Health>,
    pub(crate) load: Arc<Load>,
    probes: std::sync::Mutex<HashMap<String, Probing>>,
    pub(crate) header_timeout: Duration,
    /// How long requests in flight may finish once the node stops (`set_shutdown_timeout`).
    shutdown_timeout: std::sync::atomic::AtomicU64,
    /// The node is stopping: every HTTP/1 answer says `Connection: close`, so that a
    /// keep-alive client learns to go elsewhere from an answer instead of from a connection
    /// closed under the request it was sending.
    draining: std::sync::atomic::AtomicBool,
}

fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    crate::plugins::error(status.as_u16(), message)
}

pub(crate) fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((host, p)) => match p.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (h, None),
        },
        None => (h, None),
    }
}

impl Proxy {
    pub fn new() -> Arc<Proxy> {
        Proxy::with_header_timeout(Duration::from_secs(60))
    }

    /// A proxy whose clients must send a request head within `header_timeout`.
    pub fn with_header_timeout(header_timeout: Duration) -> Arc<Proxy> {
        let shared = Shared::default();
        // The plugin queues' drops and backlog (http-log).
        let queues: Arc<dyn MetricsSource> = shared.get::<crate::plugins::Queues>();
        Arc::new(Proxy {
            headers: std::sync::OnceLock::new(),
            trust: std::sync::OnceLock::new(),
            log_sinks: std::sync::OnceLock::new(),
            id_prefix: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
                .unwrap_or(0))
                ^ std::process::id().rotate_left(8),
            id_counter: std::sync::atomic::AtomicU64::new(0),
            node_id: std::sync::OnceLock::new(),
            metrics: std::sync::Mutex::new(vec![queues]),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            pool: Arc::new(Pool::new()),
            tracing: shared.get::<crate::spans::Tracing>(),
            shared,
            registry: std::sync::OnceLock::new(),
            stats: Stats::default(),
            health: Arc::new(Health::default()),
            load: Arc::new(Load::default()),
            probes: std::sync::Mutex::new(HashMap::new()),
            header_timeout,
            shutdown_timeout: std::sync::atomic::AtomicU64::new(30_000),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The plugins this node runs; set once, before the first configuration.
    pub fn set_registry(&self, registry: crate::plugins::Registry) {
        let _ = self.registry.set(registry);
    }

    /// Kong's `tracing_instrumentations` (bits of [`crate::spans`]) and
    /// `tracing_sampling_rate`; set before serving.
    pub fn set_tracing(&self, instrumentations: u8, sampling_rate: f64) {
        self.tracing.set(instrumentations, sampling_rate);
    }

    /// Where plugins write entities (oauth2's tokens and codes); set before serving.
    pub fn writes(&self) -> Arc<crate::plugins::Writes> {
        self.shared.get::<crate::plugins::Writes>()
    }

    /// The proxy-cache entries of this node (Kong's `kong_db_cache`), for the Admin API.
    pub fn proxy_cache(&self) -> Arc<crate::plugins::CacheStore> {
        self.shared.get::<crate::plugins::CacheStore>()
    }

    /// The plugins this node runs.
    pub fn registry(&self) -> &crate::plugins::Registry {
        self.registry.get_or_init(crate::plugins::Registry::default)
    }

    /// The headers to add (Kong's `headers` and `headers_upstream`); set once, before serving.
    pub fn set_headers(&self, headers: Headers) {
        let _ = self.headers.set(headers);
    }

    fn headers(&self) -> &Headers {
        self.headers.get_or_init(Headers::default)
    }

    /// Which peers' forwarding headers to believe (Kong's `trusted_ips`, `real_ip_header`,
    /// `real_ip_recursive`); set once, before serving.
    pub fn set_trust(&self, trust: crate::trust::Trust) {
        let _ = self.trust.set(trust);
    }

    fn client(&self, conn: &ConnInfo, headers: &HeaderMap) -> Client {
        let peer = conn.peer.ip();
        let Some(trust) = self.trust.get().filter(|t| !t.is_empty()) else {
            return Client {
                ip: peer,
                value: conn.peer_ip.clone(),
                trusted: false,
            };
        };
        let ip = trust.client(peer, headers, conn.proxy_protocol.map(|a| a.ip()));
        Client {
            ip,
            value: if ip == peer {
                conn.peer_ip.clone()
            } else {
                HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| conn.peer_ip.clone())
            },
            trusted: trust.trusts(peer),
        }
    }

    /// Send every request to these sinks (set once; later calls are ignored).
    pub fn set_log_sinks(&self, sinks: Vec<Arc<dyn LogSink>>) {
        let _ = self.log_sinks.set(sinks.into());
    }

    /// `gantry_upstream_target_health`: 1 healthy, 0 down, for each upstream target running.
    /// Kong's prometheus plugin's exposition, when the plugin is loaded: node metrics always,
    /// the per-request ones while an instance is configured, `kong_upstream_target_health`
    /// once an instance asked for it.
    pub(crate) fn kong_metrics(&self, out: &mut String) {
        let loaded = self
            .registry
            .get()
            .is_some_and(|r| r.get("prometheus").is_some());
        if !loaded {
            return;
        }
        let snap = self.snapshot.load();
        let m = self.shared.get::<crate::plugins::prometheus::Metrics>();
        let node_id = self.node_id.get().map_or("", String::as_str);
        m.write(
            out,
            snap.plugins.has("prometheus"),
            node_id,
            self.stats.total(),
            &self.stats.connections(),
        );
        if m.upstream_health() {
            out.push_str(crate::plugins::prometheus::TARGET_HEALTH_HEAD);
            self.each_target(|upstream, target, up| {
                let state = if up { "healthy" } else { "unhealthy" };
                crate::plugins::prometheus::target_health(out, upstream, target, target, state);
            });
        }
    }

    /// The node's id, for Kong's metrics (`kong_node_info`); set once, before serving.
    pub fn set_node_id(&self, id: &str) {
        let _ = self.node_id.set(id.to_string());
        self.tracing.set_node_id(id);
    }

    pub(crate) fn target_health_metrics(&self) -> String {
        let mut m = String::from("# HELP gantry_upstream_target_health Whether an upstream target receives traffic (1) or is down by health checks (0).\n# TYPE gantry_upstream_target_health gauge\n");
        self.each_target(|upstream, target, up| {
            m.push_str(&format!(
                "gantry_upstream_target_health{{upstream=\"{upstream}\",target=\"{target}\"}} {}\n",
                u8::from(up)
            ));
        });
        m
    }

    /// Kong's health of each target of the upstream `name` in the running configuration
    /// (`HEALTHY`, `UNHEALTHY`, or `HEALTHCHECKS_OFF` when its checks can mark none down);
    /// `None` when it is not running.
    pub fn upstream_health(&self, name: &str) -> Option<Vec<(String, &'static str)>> {
        let snap = self.snapshot.load();
        let b = snap.balancers.get(name)?;
        let on = b.checks.passive.enabled()
            || b.checks
                .active
                .as_ref()
                .is_some_and(|p| p.thresholds.enabled());
        Some(
            b.targets
                .iter()
                .map(|t| {
                    let h = match (on, self.health.is_up(name, t)) {
                        (false, _) => "HEALTHCHECKS_OFF",
                        (true, true) => "HEALTHY",
                        (true, false) => "UNHEALTHY",
                    };
                    (t.clone(), h)
                })
                .collect(),
        )
    }

    /// Mark a target of the upstream `name` healthy or not, by hand; false when the running
    /// configuration has no such target.
    /// Kong's `/status/dns` body: the worker and the resolver's statistics by name.
    pub fn dns_status(&self) -> serde_json::Value {
        serde_json::json!({
            "worker": {"id": 0, "count": 1},
            "stats": self.pool.dns_stats(),
        })
    }

    pub fn set_target_health(&self, name: &str, target: &str, up: bool) -> bool {
        let snap = self.snapshot.load();
        let known = snap
            .balancers
            .get(name)
            .is_some_and(|b| b.targets.iter().any(|t| t == target));
        if known {
            self.health.set(name, target, up);
        }
        known
    }

    /// Every target of the running configuration, by upstream name in order, and whether
    /// health checks let it take traffic.
    fn each_target(&self, mut f: impl FnMut(&str, &str, bool)) {
        let snap = self.snapshot.load();
        let mut upstreams: Vec<_> = snap.balancers.iter().collect();
        upstreams.sort_by(|a, b| a.0.cmp(b.0));
        for (name, b) in upstreams {
            for target in b.targets.iter() {
                f(name, target, self.health.is_up(name, target));
            }
        }
    }

    /// Serve from `n` worker threads (`worker_threads`), each with its own upstream
    /// connections (`crate::pool::set_worker` marks each thread); call before serving.
    pub fn set_workers(&self, n: usize) {
        self.pool.set_workers(n);
    }

    /// Kong's `upstream_keepalive_*` settings; call before serving.
    pub fn set_keepalive(&self, k: crate::pool::Keepalive) {
        self.pool.set_keepalive(k);
    }

    /// Resolve upstream names with these name servers (`dns_resolver`); call before serving.
    pub fn set_dns(&self, servers: &[std::net::SocketAddr]) -> Result<(), SetupError> {
        self.pool.set_dns(servers)
    }

    /// Add metrics to `/metrics`.
    pub fn add_metrics(&self, source: Arc<dyn MetricsSource>) {
        if let Ok(mut m) = self.metrics.lock() {
            m.push(source);
        }
    }

    /// The snapshot requests read now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Build a snapshot from `config` aside and publish it. On error the running one stays.
    pub fn apply(&self, config: &gantry_model::Config, version: i64) -> Result<(), SnapshotError> {
        self.apply_update(&gantry_model::delta::Update {
            config,
            digests: &gantry_model::hash::Digests::of(config),
            version,
            changes: None,
        })
    }

    /// [`Proxy::apply`] for a configuration whose digests are known (a data plane keeps them
    /// change by change), and the changes that led to it when a delta did.
    pub fn apply_update(&self, u: &gantry_model::delta::Update<'_>) -> Result<(), SnapshotError> {
        let prev = self.snapshot.load();
        let next = Snapshot::build(u, Some(&prev), self.registry(), &self.shared)?;
        self.snapshot.store(Arc::new(next));
        self.stats.ready.store(true, Ordering::Relaxed);
        self.reconcile_probes();
        Ok(())
    }

    /// Start, restart or stop the active health probes to match the running snapshot.
    fn reconcile_probes(&self) {
        let snap = self.snapshot.load();
        let Ok(mut probes) = self.probes.lock() else {
            return;
        };
        probes.retain(|name, p| {
            let keep = snap.balancers.get(name).is_some_and(|b| {
                b.checks.active.as_ref() == Some(&p.probe) && b.targets == p.targets
            });
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (name, b) in snap.balancers.iter() {
            let Some(probe) = b.checks.active.clone() else {
                continue;
            };
            if probes.contains_key(name) {
                continue;
            }
            let task = tokio::spawn(crate::probe::run(
                name.clone(),
                b.targets.clone(),
                probe.clone(),
                self.health.clone(),
            ));
            probes.insert(
                name.clone(),
                Probing {
                    probe,
                    targets: b.targets.clone(),
                    task,
                },
            );
        }
    }

    /// How long requests in flight may finish once the node stops (30 s unless set).
    pub fn set_shutdown_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.shutdown_timeout.store(ms, Ordering::Relaxed);
    }

    /// The TLS acceptor for `ssl` listeners: certificates by SNI from the running snapshot.
    pub fn tls_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SetupError> {
        crate::tls::acceptor(self.snapshot.clone())
    }

    /// Serve one listener (TLS when `tls` is given, each connection opening with a PROXY
    /// protocol header when `proxy_protocol`) until `shutdown` turns true; connections in
    /// flight finish first. HTTP/1.1 ([`crate::downstream`]) and HTTP/2 (ALPN over TLS, prior
    /// knowledge in clear; hyper).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        proxy_protocol: bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let bound = listener.local_addr().ok();
        let local_port = bound.map(|a| a.port()).unwrap_or(0);
        // A listener on one address accepts there; on every address, each connection says
        // where it arrived.
        let bound_ip = bound.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
        // Turned true once the listener is closed: connections then end after the response
        // in flight (an idle one at once).
        let (closing, closing_rx) = watch::channel(false);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let local_ip = bound_ip.or_else(|| stream.local_addr().ok().map(|a| a.ip()));
                    let me = self.clone();
                    let closing = closing_rx.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _open = Open::new(me.clone());
                        let at = (local_ip, local_port);
                        if !proxy_protocol {
                            return me.accept(stream, peer, at, tls, None, closing).await;
                        }
                        match crate::proxy_protocol::accept(stream, me.header_timeout).await {
                            Ok((stream, client)) => {
                                me.accept(stream, peer, at, tls, client, closing).await
                            }
                            Err(e) => tracing::info!(client = %peer, error = %e, "connection closed: the listener takes the PROXY protocol"),
                        }
                    });
                }
                _ = async { let _ = shutdown.wait_for(|v| *v).await; } => break,
            }
        }
        // Stop accepting (with SO_REUSEPORT and net.ipv4.tcp_migrate_req, connections still
        // queued here move to the node that replaces this one). Connections accepted a moment
        // ago get a short grace to send their first request before idle ones are closed;
        // requests in flight then finish, for up to the shutdown timeout.
        drop(listener);
        self.draining.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Keep-alive connections get a moment to send one more request, answered with
        // `Connection: close` (see `draining`); only the ones still idle then are closed.
        let lame_duck = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.stats.conns_open.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < lame_duck
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = closing.send(true);
        let timeout = Duration::from_millis(self.shutdown_timeout.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + timeout;
        while self.stats.conns_open.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One accepted connection: its TLS handshake when the listener has TLS, then HTTP.
    async fn accept<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        (local_ip, local_port): (Option<std::net::IpAddr>, u16),
        tls: Option<tokio_rustls::TlsAcceptor>,
        proxy_protocol: Option<SocketAddr>,
        closing: watch::Receiver<bool>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = ConnInfo::new(peer, local_port, tls.is_some(), None);
        conn.proxy_protocol = proxy_protocol;
        conn.local_ip = local_ip;
        match tls {
            None => self.serve_client(stream, conn, closing).await,
            Some(acc) => {
                let hs = tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await;
                let Ok(Ok(tls_stream)) = hs else {
                    tracing::debug!(%peer, "TLS handshake failed or timed out");
                    return;
                };
                let session = tls_stream.get_ref().1;
                conn.sni = session.server_name().map(str::to_string);
                if session.alpn_protocol() == Some(b"h2") {
                    let cancels = self.fresh_connection();
                    let _fresh = Fresh {
                        cancels: cancels.clone(),
                        stats: &self.stats,
                    };
                    let me = self.clone();
                    me.serve_conn(TokioIo::new(tls_stream), conn, cancels, closing, false)
                        .await
                } else {
                    self.serve_client(tls_stream, conn, closing).await
                }
            }
        }
    }

    /// A client connection that has not said HTTP/2: HTTP/1.1 served by the proxy's own layer,
    /// which hands it to hyper when it is not HTTP/1.1 or asks what only hyper does.
    async fn serve_client<S>(self: Arc<Self>, io: S, conn: ConnInfo, closing: watch::Receiver<bool>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let cancels = self.fresh_connection();
        // However the connection ends, it is no longer waiting for its first request.
        let _fresh = Fresh {
            cancels: cancels.clone(),
            stats: &self.stats,
        };
        self.clone().serve_http1(io, conn, cancels, closing).await
    }

    /// Serve one plain HTTP connection over any byte stream, as one accepted from `peer` on
    /// port 80: the robustness suite feeds the proxy raw bytes this way, without a socket.
    pub async fn serve_stream<S>(self: Arc<Self>, io: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (_closing, closing_rx) = watch::channel(false);
        let conn = ConnInfo::new(peer, 80, false, None);
        self.serve_client(io, conn, closing_rx).await
    }

    /// A new connection, counted as waiting for its first request.
    fn fresh_connection(&self) -> Arc<Cancels> {
        self.stats.conns_fresh.fetch_add(1, Ordering::Relaxed);
        Arc::new(Cancels::default())
    }

    /// Answer one request of a client connection, counting it in flight, answered or
    /// cancelled (see [`Cancels`]).
    pub(crate) async fn answer(
        &self,
        req: Request<crate::pool::Inbound>,
        conn: &ConnInfo,
        cancels: &Cancels,
    ) -> (Response<ProxyBody>, crate::forward::ResponseAdded) {
        if !cancels.started.swap(true, Ordering::Relaxed) {
            self.stats.conns_fresh.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut answering = Answering {
            cancels,
            stats: &self.stats,
            answered: false,
        };
        let http1 = req.version() <= hyper::Version::HTTP_11;
        let (mut res, added) = self.handle(req, conn).await;
        if http1
            && self.draining.load(Ordering::Relaxed)
            && res.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
        {
            res.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        answering.answered = res.extensions().get::<ClientFailed>().is_none();
        (res, added)
    }

    /// A client connection served by hyper: HTTP/2, and HTTP/1.1 that [`crate::downstream`]
    /// handed over (with what it had read of it already in `io`; `http1_only` once requests
    /// were answered on it).
    pub(crate) async fn serve_conn<I>(
        self: Arc<Self>,
        io: I,
        conn: ConnInfo,
        cancels: Arc<Cancels>,
        mut closing: watch::Receiver<bool>,
        http1_only: bool,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = conn.peer;
        let conn = Arc::new(conn);
        let me = self.clone();
        let counted = cancels.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            let conn = conn.clone();
            let cancels = counted.clone();
            async move {
                // hyper's server writes the map: the proxy's headers go into it.
                let (mut res, mut added) = me.answer(req.map(Some), &conn, &cancels).await;
                added.apply(res.headers_mut());
                Ok::<_, Infallible>(res)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if http1_only {
            builder = builder.http1_only();
        }
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            // Request heads larger than this get 431, as nginx's large_client_header_buffers;
            // more header lines than hyper's default (see MAX_HEADER_LINES).
            .max_buf_size(MAX_HEAD)
            .max_headers(MAX_HEADER_LINES);
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let mut closed = false;
        let served = loop {
            tokio::select! {
                // The connection first: a connection handed over while the listener closes
                // reads its request before it is told to end after it.
                biased;
                r = conn.as_mut() => break r,
                _ = closing.wait_for(|v| *v), if !closed => {
                    // The listener closed: the connection ends after its requests in flight.
                    closed = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = cancels.abuse.notified() => {
                    // Dropped: the connection is closed, with the work its streams started.
                    self.stats.count(400, Duration::ZERO);
                    tracing::warn!(client = %peer, "connection closed: its HTTP/2 streams are reset faster than they are answered (rapid reset)");
                    return;
                }
            }
        };
        if let Err(e) = served {
            // A request head the HTTP parser refused was answered by hyper itself (400, or 431
            // for one too large, 408 for one too slow): count and log it, as the proxy's own
            // answers are, so that rejections leave a trace.
            let refused = e.downcast_ref::<hyper::Error>().and_then(|h| {
                if h.is_parse_too_large() {
                    Some(431)
                } else if h.is_parse() {
                    Some(400)
                } else if h.is_timeout() {
                    Some(408)
                } else {
                    None
                }
            });
            match refused {
                Some(status) => self.refused(peer, status, &e.to_string()),
                None => tracing::debug!(error = %e, "client connection ended with an error"),
            }
        }
    }

    /// A request head refused before it was a request (malformed, too large, too slow):
    /// counted, logged, and in the access logs.
    pub(crate) fn refused(&self, peer: SocketAddr, status: u16, reason: &str) {
        self.stats.count(status, Duration::ZERO);
        for sink in self.log_sinks.get().into_iter().flat_map(|s| s.iter()) {
            sink.refused(peer.ip(), status, reason);
        }
        tracing::info!(client = %peer, status, error = %reason, "request refused by the HTTP parser");
    }

    /// Route and forward one request.
    /// The response to `req`, and the headers the proxy adds to it that are not in its map
    /// (to be written after the map's lines, or [put into it](crate::forward::ResponseAdded::apply)).
    pub async fn handle(
        &self,
        req: Request<crate::pool::Inbound>,
        conn: &ConnInfo,
    ) -> (Response<ProxyBody>, crate::forward::ResponseAdded) {
        let started = Instant::now();
        let connection = crate::plugins::Connection {
            local_ip: conn.local_ip,
            local_port: conn.local_port,
            serial: conn.serial,
            requests: conn.requests.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let sinks = self.log_sinks.get().filter(|s| !s.is_empty());
        let n = self
            .id_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request_id = request_id(self.id_prefix, n);
        let snap = self.snapshot.load_full();
        let logs = sinks.is_some() || snap.plugins.logs();
        let mut seen = Seen {
            on: logs,
            request_id: request_id.clone(),
            service: None,
            route: None,
            consumer: None,
            upstream: None,
            ran: Vec::new(),
            details: None,
            accessed: false,
            response_headers: Vec::new(),
            state: hyper::http::Extensions::new(),
            added: crate::forward::ResponseAdded::default(),
        };
        let traced = self.tracing.bits();
        if traced != 0 {
            seen.state.insert(crate::spans::Trace::new(traced));
        }
        let logged = logs.then(|| (req.method().clone(), req.uri().clone()));
        // What the client sent, as Kong's `$request_length`: the head, and the body it announced.
        let request_size = if logs {
            let announced = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
                + req.uri().authority().map_or(0, |a| a.as_str().len() + 3)
                + req.uri().scheme_str().map_or(0, str::len);
            let line = req.method().as_str().len() + target + 10;
            head_size(line, req.headers()) + announced
        } else {
            0
        };
        let head = req.method() == hyper::Method::HEAD;
        let client = self.client(conn, req.headers());
        if logs && snap.plugins.logs() {
            seen.details = Some(Box::new(LogDetails {
                request_headers: req.headers().clone(),
                ..LogDetails::default()
            }));
        }
        // Every way the proxy ends a request itself becomes Kong's response here.
        let res = self
            .route_and_forward(req, conn, connection, &client, &snap, started, &mut seen)
            .await
            .unwrap_or_else(|e| e.response());
        // The response phases, over every response: the upstream's, a plugin's, or an error.
        if !seen.accessed {
            seen.ran = snap.plugins.globals();
            if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
                t.ran = snap.plugins.global_names().to_vec();
            }
        }
        let (mut rparts, mut body) = res.into_parts();
        let added = self.headers();
        if added.request_id {
            seen.added.request_id = Some(request_id.clone());
        }
        if seen.upstream.is_none() {
            // Answered here: a plugin, an error, a redirect.
            if !added.server {
                rparts.headers.remove(header::SERVER);
            }
            if added.response_latency {
                seen.added.response_latency = Some(started.elapsed().as_millis() as u64);
            }
        }
        // The plugins' response phases and the log phase read the map: the proxy's headers go
        // into it. Else they are written beside it.
        if !seen.ran.is_empty() || logged.is_some() {
            seen.added.apply(&mut rparts.headers);
        }
        for (n, v) in seen.response_headers.drain(..) {
            rparts.headers.append(n, v);
        }
        let traced = seen
            .state
            .get_mut::<crate::spans::Trace>()
            .filter(|t| t.has(crate::spans::PLUGIN_HEADER_FILTER))
            .map(|t| std::mem::take(&mut t.ran));
        match traced {
            None => {
                for p in &seen.ran {
                    p.header_filter_with(&mut rparts, &mut seen.state);
                }
            }
            Some(names) => {
                for (p, name) in seen.ran.iter().zip(&names) {
                    let t0 = Instant::now();
                    p.header_filter_with(&mut rparts, &mut seen.state);
                    if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
                        t.phase(
                            crate::spans::PLUGIN_HEADER_FILTER,
                            "header_filter",
                            name,
                            t0,
                        );
                    }
                }
            }
        }
        // Responses without a body (HEAD, 1xx, 204, 304) have nothing to filter.
        let bodiless =
            head || rparts.status.is_informational() || matches!(rparts.status.as_u16(), 204 | 304);
        let filters: Vec<_> = if bodiless {
            Vec::new()
        } else {
            seen.ran
                .iter()
                .filter_map(|p| p.body_filter(&rparts))
                .collect()
        };
        if !filters.is_empty() {
            // A filtered body's length is known only once it has been sent (unless every
            // filter only observes it).
            if !filters.iter().all(|f| f.keeps_body()) {
                rparts.headers.remove(header::CONTENT_LENGTH);
            }
            body = crate::plugins::Filtered::new(body, filters).boxed();
        }
        let status = rparts.status.as_u16();
        self.stats.count(status, started.elapsed());
        if let Some(d) = seen.details.as_mut() {
            d.response_headers = rparts.headers.clone();
        }
        if let Some((method, uri)) = logged {
            // The log phase runs once the body has gone to the client (or the client left).
            body = LogOnEnd {
                inner: body,
                entry: Some(Box::new(Pending {
                    request_id,
                    client: client.ip,
                    method,
                    uri,
                    service: seen.service,
                    route: seen.route,
                    consumer: seen.consumer,
                    status,
                    request_size,
                    response_head_size: head_size(
                        13 + rparts.status.canonical_reason().map_or(0, str::len),
                        &rparts.headers,
                    ),
                    started,
                    upstream: seen.upstream,
                    sinks: sinks.cloned(),
                    plugins: seen.ran,
                    details: seen.details,
                    state: std::mem::take(&mut seen.state),
                    size: 0,
                })),
            }
            .boxed();
        }
        (Response::from_parts(rparts, body), seen.added)
    }

    #[allow(clippy::too_many_arguments)]
    async fn route_and_forward(
        &self,
        req: Request<crate::pool::Inbound>,
        conn: &ConnInfo,
        connection: crate::plugins::Connection,
        client: &Client,
        snap: &Snapshot,
        started: Instant,
        seen: &mut Seen,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (local_port, https, sni) = (conn.local_port, conn.https, conn.sni.as_deref());
        let peer_ip = conn.peer.ip();
        let (upgrade, client_upgrade, mut parts, body) = {
            let mut req = req;
            let upgrade = upgrade_protocol(&req);
            let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
            let (parts, body) = req.into_parts();
            (upgrade, client_upgrade, parts, body)
        };
        let body: UpBody = Either::Left(crate::pool::ClientBody::new(body));
        let mut slot = crate::plugins::BodySlot::new(body);
        check_framing(&parts)?;
        // The rewrite phase, before routing (global plugins, as in Kong): routing reads the
        // request as they leave it.
        if !snap.plugins.is_empty() {
            let mut ctx = Ctx {
                req: &mut parts,
                body: &mut slot,
                https,
                trusted: client.trusted,
                config_version: snap.version,
                client_ip: client.ip,
                peer_ip,
                connection,
                route_id: None,
                service_id: None,
                consumer: None,
                credential: None,
                identities: &snap.identities,
                captures: &[],
                response_headers: Vec::new(),
                state: &mut seen.state,
            };
            let exit = snap.plugins.run_rewrite(&mut ctx).await;
            seen.response_headers = ctx.response_headers;
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
        // Owned copies (reference-counted, not copied) of what routing reads, so that plugins
        // may change the request afterwards.
        // The target's authority, when it has one, is the host (RFC 9112 section 3.2.2: an
        // absolute-form target wins over Host, which is replaced with it; RFC 9113 section
        // 8.3.1: a Host that names another host than :authority is malformed).
        let authority = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let host_value = match (authority, parts.headers.get(header::HOST)) {
            (Some(a), Some(h)) if parts.version >= hyper::Version::HTTP_2 && a != h => {
                return Err(ProxyError::BadRequest(
                    "Bad request: Host and :authority differ",
                ))
            }
            (Some(a), h) => {
                if h != Some(&a) {
                    parts.headers.insert(header::HOST, a.clone());
                }
                a
            }
            (None, Some(h)) => h.clone(),
            (None, None) => return Err(ProxyError::BadRequest("Bad request: missing Host header")),
        };
        let host_header = match host_value.to_str() {
            Ok(h) if valid_host(h) => h,
            _ => return Err(ProxyError::BadRequest("Bad request: invalid Host header")),
        };
        let (host, port) = split_host(host_header);
        let request_uri = parts.uri.clone();
        let raw_path = request_uri.path();
        let path = normalize(raw_path);
        let info = RequestInfo {
            method: parts.method.as_str(),
            host,
            port: port.unwrap_or(local_port),
            path: &path,
            headers: &parts.headers,
            sni,
            https,
        };
        let routing = seen
            .state
            .get::<crate::spans::Trace>()
            .is_some_and(|t| t.has(crate::spans::ROUTER))
            .then(Instant::now);
        let found = snap.router.find(&info);
        if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
            if let Some(t0) = routing {
                t.router = Some((t0, Instant::now()));
            }
            t.route_path = found.as_ref().and_then(|m| m.route.first_path.clone());
        }
        let Some(m) = found else {
            return Err(ProxyError::NoRoute);
        };
        let route = m.route;
        if seen.on {
            seen.route = Some(route.clone());
        }
        let has = |p: &str| route.protocols.iter().any(|x| x == p);
        // Behind a trusted proxy that ended TLS, its X-Forwarded-Proto and -Host say what the
        // client used (Kong's forwarded scheme and host).
        let forwarded = |name: &HeaderName| {
            client
                .trusted
                .then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .map(|v| v.split(',').next().unwrap_or("").trim())
                .filter(|v| !v.is_empty())
        };
        let forwarded_https = match forwarded(&names::X_FORWARDED_PROTO) {
            Some(p) => p.eq_ignore_ascii_case("https"),
            None => https,
        };
        if !forwarded_https && has("https") && !has("http") {
            let to = forwarded(&names::X_FORWARDED_HOST).unwrap_or(host);
            return Ok(https_redirect(
                route.https_redirect_status_code,
                to,
                &request_uri,
            ));
        }
        if (has("grpc") || has("grpcs")) && !has("http") && !has("https") {
            let is_grpc = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if !is_grpc {
                return Err(ProxyError::NotGrpc);
            }
            if parts.version != hyper::Version::HTTP_2 {
                return Err(ProxyError::Http2Required);
            }
        }
        let service = route
            .service_id
            .as_ref()
            .and_then(|id| snap.services.get(id));
        if seen.on {
            seen.service = service.cloned();
        }
        // Plugins: rewrite and access, in priority order; one may answer instead of the upstream.
        let mut consumer_id: Option<String> = None;
        if !snap.plugins.is_empty() {
            let mut ctx = Ctx {
                req: &mut parts,
                body: &mut slot,
                https,
                trusted: client.trusted,
                config_version: snap.version,
                client_ip: client.ip,
                peer_ip,
                connection,
                route_id: Some(&route.id),
                service_id: service.map(|s| s.id.as_str()),
                consumer: None,
                credential: None,
                identities: &snap.identities,
                captures: &m.captures,
                response_headers: std::mem::take(&mut seen.response_headers),
                state: &mut seen.state,
            };
            let access = snap.plugins.run_access(&mut ctx).await;
            let mut exit = access.exit;
            let mut body = match exit {
                // Answered: the body is not read (nor sent anywhere).
                Some(_) => Either::Right(Full::default()),
                None => ctx.body.take(&mut ctx.req.headers)?,
            };
            // A limit on the body's size (request-size-limiting) cuts it as it streams.
            if let (Either::Left(b), Some(n)) = (
                &mut body,
                access.ran.iter().filter_map(|p| p.body_limit()).min(),
            ) {
                b.limit(n);
            }
            // The request body phase, for the plugins that read it.
            if exit.is_none() && access.ran.iter().any(|p| p.reads_body()) {
                let client_body = std::mem::replace(&mut body, Either::Right(Full::default()));
                let mut bytes = read_body(client_body, &ctx.req.headers).await?;
                for p in access.ran.iter().filter(|p| p.reads_body()) {
                    exit = p.request_body(&mut ctx, &mut bytes).decided().await;
                    if exit.is_some() {
                        break;
                    }
                }
                ctx.req.headers.remove(header::TRANSFER_ENCODING);
                ctx.req
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                body = Either::Right(Full::new(bytes));
            }
            *ctx.body = crate::plugins::BodySlot::new(body);
            seen.ran = access.ran;
            seen.accessed = true;
            seen.response_headers = ctx.response_headers;
            consumer_id = ctx.consumer.as_ref().map(|c| c.id.clone());
            if seen.on {
                seen.consumer = ctx.consumer;
            }
            if let Some(d) = seen.details.as_mut() {
                // As the plugins left them: key-auth's hide_credentials removed the key.
                d.request_headers = parts.headers.clone();
            }
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
        let body = slot.take(&mut parts.headers)?;
        let Some(service) = service else {
            return Err(ProxyError::NoService);
        };
        if !service.enabled {
            return Err(ProxyError::ServiceDisabled);
        }
        let grpc = matches!(service.protocol.as_str(), "grpc" | "grpcs");
        if !matches!(service.protocol.as_str(), "http" | "https") && !grpc {
            return Err(ProxyError::UnsupportedProtocol);
        }
        let balancer = snap.balancers.get(&service.host);
        let key = match balancer.map(|b| &b.algorithm) {
            Some(Algorithm::ConsistentHashing { on, fallback }) => {
                let key_of = |on: &HashOn| {
                    hash_key(on, &parts, client.ip, consumer_id.as_deref(), &m.captures)
                };
                key_of(on).or_else(|| key_of(fallback))
            }
            _ => None,
        };
        let target: std::borrow::Cow<'_, str> = match balancer {
            Some(b) => match b.pick(&self.health, &self.load, &[], key.as_deref()) {
                Some(t) => std::borrow::Cow::Owned(t.to_string()),
                None => return Err(ProxyError::NoPeer),
            },
            None => std::borrow::Cow::Borrowed(service.addr.as_str()),
        };
        let prefix = route.strip_path.then_some(&*m.prefix);
        let upath: std::borrow::Cow<'_, str> =
            match seen.state.get::<crate::plugins::UpstreamPath>() {
                Some(p) => std::borrow::Cow::Owned(p.0.clone()),
                None => upstream_path_v0(service.path.as_deref().unwrap_or("/"), prefix, &path),
            };
        // With the query as the plugins left it (key-auth's hide_credentials removes a key from
        // it). A path forwarded as it came keeps the request's own target (nothing is copied).
        let uri = match parts.uri.path_and_query() {
            Some(pq) if pq.path() == upath => {
                let mut target = hyper::http::uri::Parts::default();
                target.path_and_query = Some(pq.clone());
                Uri::from_parts(target).map_err(|_| ProxyError::InvalidUpstreamAddress)?
            }
            _ => {
                let mut target = upath.to_string();
                if let Some(q) = parts.uri.query() {
                    target.push('?');
                    target.push_str(q);
                }
                target
                    .parse::<Uri>()
                    .map_err(|_| ProxyError::InvalidUpstreamAddress)?
            }
        };
        if let Some(d) = seen.details.as_mut() {
            d.upstream_uri = Some(
                uri.path_and_query()
                    .map_or_else(|| upath.to_string(), |pq| pq.as_str().to_string()),
            );
        }
        let upstream_host = if let Some(h) = seen.state.get::<crate::plugins::UpstreamHost>() {
            h.0.clone()
        } else if route.preserve_host {
            host_value.clone()
        } else if balancer.is_some() || service.port == 80 {
            // An upstream's name, or a host on the default port: no port in Host.
            service.host_only.clone()
        } else {
            service.host_port.clone()
        };
        let mut headers = std::mem::take(&mut parts.headers);
        let mut added = crate::forward::upstream_headers(
            &mut headers,
            &crate::forward::Forwarding {
                client,
                peer_ip,
                https,
                host,
                port: &conn.port_value,
                raw_path,
                prefix: (route.strip_path && m.prefix != "/").then_some(&*m.prefix),
                upgrade: upgrade.as_ref(),
                upstream_host: &upstream_host,
                request_id: self
                    .headers()
                    .upstream_request_id
                    .then_some(&seen.request_id),
            },
        );
        let upstream_host = upstream_host.to_str().unwrap_or_default();
        // Made in a block of its own: a borrowed local would keep its room in this future's
        // state across the exchange (which moves it), and the state is moved per request.
        let up = {
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = headers;
            if grpc {
                // HTTP/2 to gRPC upstreams: the authority travels in the URI, not in Host.
                let scheme = if service.protocol == "grpcs" {
                    "https"
                } else {
                    "http"
                };
                match format!("{scheme}://{upstream_host}{}", up.uri()).parse() {
                    Ok(u) => *up.uri_mut() = u,
                    Err(_) => return Err(ProxyError::InvalidUpstreamAddress),
                }
                added.without_host();
                *up.version_mut() = hyper::Version::HTTP_2;
            } else {
                // Whatever the client spoke, other upstreams get HTTP/1.1.
                *up.version_mut() = hyper::Version::HTTP_11;
            }
            if !seen.ran.is_empty() {
                let (mut head, b) = up.into_parts();
                for p in &seen.ran {
                    p.upstream_request(&mut UpstreamRequest {
                        method: &mut head.method,
                        uri: &mut head.uri,
                        headers: &mut head.headers,
                        target: &target,
                        state: &mut seen.state,
                    });
                }
                up = Request::from_parts(head, b);
            }
            up
        };
        let sent = Instant::now();
        let (res, in_flight) = self
            .exchange(
                up,
                target,
                &crate::exchange::Exchange {
                    service,
                    balancer: balancer.map(|b| &**b),
                    key: key.as_deref(),
                    upgrade: upgrade.is_some(),
                    grpc,
                    upstream_host,
                    plugins: &seen.ran,
                    trace: seen.state.get::<crate::spans::Trace>(),
                    added: &added,
                },
            )
            .await?;
        let upstream_took = sent.elapsed();
        seen.upstream = Some(upstream_took);
        let upstream_ms = upstream_took.as_millis();
        let proxy_ms = sent.duration_since(started).as_millis();
        let mut res = res;
        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, res.status()) {
            // Both sides switched: splice the two connections.
            let upstream = hyper::upgrade::on(&mut res);
            tokio::spawn(async move {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "protocol switch failed"),
                }
            });
            let (mut rparts, _) = res.into_parts();
            let proto = rparts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut rparts.headers);
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = proto {
                rparts.headers.insert(header::UPGRADE, p);
            }
            let empty = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed();
            return Ok(Response::from_parts(rparts, empty));
        }
        let (mut rparts, rbody) = res.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let added = self.headers();
        let ours = &mut seen.added;
        ours.upstream_latency = added.upstream_latency.then_some(upstream_ms as u64);
        ours.proxy_latency = added.proxy_latency.then_some(proxy_ms as u64);
        ours.upstream_status = added.upstream_status.then_some(rparts.status.as_u16());
        ours.via = added.via;
        let body = match in_flight {
            // Counted in flight until the body has gone to the client (least-connections).
            Some(guard) => Tracked {
                inner: rbody,
                guard,
            }
            .boxed(),
            None => rbody,
        };
        Ok(Response::from_parts(rparts, body))
    }
}

/// The consistent-hashing key of a request, per `hash_on` (`None`: absent, use the fallback).
fn hash_key(
    on: &HashOn,
    parts: &hyper::http::request::Parts,
    client: std::net::IpAddr,
    consumer: Option<&str>,
    captures: &[(String, String)],
) -> Option<String> {
    match on {
        HashOn::None => None,
        HashOn::Consumer => consumer.map(str::to_string),
        HashOn::Ip => Some(client.to_string()),
        HashOn::Header(h) => parts
            .headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        HashOn::Path => Some(parts.uri.path().to_string()),
        HashOn::QueryArg(arg) => parts
            .uri
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == arg.as_str()))
            .map(|(_, v)| v.into_owned()),
        HashOn::UriCapture(name) => captures
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != hyper::Version::HTTP_11 {
        return None;
    }
    // Only WebSocket is tunnelled, as Kong (its `$upstream_upgrade` is `websocket` or
    // nothing): any other token (`h2c`, ...) would open a tunnel past the routes and plugins of
    // the requests sent through it. The request then goes on as an ordinary one, its Upgrade
    // and Connection headers removed as hop-by-hop.
    let upgrade = req.headers().get(header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// The largest request head read from a client.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The header lines the HTTP/1 parser has room for, in a request or a response. Heads are
/// bounded by their size (64 KiB for a request, checked on every head; 160 KiB for a response);
/// hyper's own default of 100 lines refused (431, or 502 for a response) heads that nginx and
/// Kong take, such as a response with 100 `Set-Cookie` lines. hyper gives the parser this many
/// slots from the heap on every request, at a cost that grows with the number: measured with
/// `bench/ab` against hyper's default, 160 cost about 1% of throughput (0.995 and 0.986 in two
/// runs), 200 2.4-3%, 256 3.5% and 1,024 11%. A bound by size alone waits for the HTTP/1
/// layer of issue 18.
pub(crate) const MAX_HEADER_LINES: usize = 160;

/// Requests whose framing could be read two ways are refused (RFC 9112 section 6.3): a proxy
/// and its upstream must never disagree on where a request ends.
fn check_framing(parts: &hyper::http::request::Parts) -> Result<(), ProxyError> {
    if parts.version >= hyper::Version::HTTP_2 {
        return Ok(());
    }
    // The parser bounds what it buffers while a head is incomplete; a head that arrives whole
    // in one read is measured here, so that the bound is the same however the bytes came.
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    // One pass over the lines: the head's size, and the framing headers it has.
    let (mut fields, mut hosts, mut coded) = (0, 0, false);
    for (name, value) in &parts.headers {
        fields += field_size(name, value);
        match *name {
            header::HOST => hosts += 1,
            header::TRANSFER_ENCODING => coded = true,
            _ => {}
        }
    }
    if target + 2 + fields + 2 > MAX_HEAD {
        return Err(ProxyError::HeadTooLarge);
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest(
            "Bad request: more than one Host header",
        ));
    }
    if !coded {
        return Ok(());
    }
    let mut codings = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    if parts.headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "Bad request: both Content-Length and Transfer-Encoding",
        ));
    }
    let mut chunked = 0;
    for c in codings {
        if !c.eq_ignore_ascii_case("chunked") {
            return Err(ProxyError::UnknownCoding);
        }
        chunked += 1;
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest(
            "Bad request: chunked applied more than once",
        ));
    }
    Ok(())
}

/// A Host value as RFC 9110 allows: a registered name, IPv4 or bracketed IPv6, and an optional port.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (
                    "",
                    tail.strip_prefix(':')
                        .map(Some)
                        .unwrap_or(if tail.is_empty() { None } else { Some("x") }),
                )
            }
            None => return false,
        },
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok && (h.starts_with('[') || !host.is_empty())
}

/// `X-Kong-Request-Id`: this process's prefix and a counter, in hex.
fn request_id(prefix: u32, n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 24];
    let digits = (u128::from(prefix) << 64) | u128::from(n);
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = HEX[((digits >> (92 - 4 * i)) & 0xf) as usize];
    }
    names::value_of(&b).unwrap_or(HeaderValue::from_static("0"))
}

/// All matched but the protocol: Kong answers 426, or redirects with the configured status.
fn https_redirect(status: u16, host: &str, uri: &Uri) -> Response<ProxyBody> {
    if status == 426 {
        let mut r = json_error(StatusCode::UPGRADE_REQUIRED, "Please use HTTPS protocol");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        r.headers_mut().insert(
            header::UPGRADE,
            HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
        );
        return r;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = json_error(code, "Moved");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The proxy runs what the store's change feed (a traditional node) or the control plane (a
/// data plane) hands it.
impl gantry_model::delta::ConfigSink for Proxy {
    fn apply(
        &self,
        update: &gantry_model::delta::Update<'_>,
    ) -> Result<(), gantry_model::delta::SinkError> {
        Ok(self.apply_update(update)?)
    }
}

/// The whole request body, for plugins that read it: at most [`BODY_LIMIT`] bytes (a larger
/// one, announced or sent, is refused).
pub(crate) async fn read_body(
    body: UpBody,
    headers: &hyper::HeaderMap,
) -> Result<Bytes, ProxyError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ProxyError::BodyTooLarge);
    }
    match http_body_util::Limited::new(body, BODY_LIMIT)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.is::<http_body_util::LengthLimitError>()
                || crate::pool::is_body_too_large(e.as_ref()) =>
        {
            Err(ProxyError::BodyTooLarge)
        }
        Err(_) => Err(ProxyError::BodyUnreadable),
    }
}

#[cfg(test)]
mod tests {
    use super::{request_id, valid_host, Headers};

    #[test]
    fn headers_settings() {
        let d = Headers::default();
        assert!(d.server && d.via && d.proxy_latency && d.response_latency && d.request_id);
        assert!(!d.upstream_status && d.upstream_request_id);
        let off = Headers::parse("off", "off").unwrap();
        assert!(!(off.server || off.via || off.request_id || off.upstream_request_id));
        let some = Headers::parse("Via, X-Kong-Upstream-Status", "").unwrap();
        assert!(some.via && some.upstream_status && !some.server && !some.proxy_latency);
        let e = Headers::parse("server_tokens, bogus", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("headers") && e.contains("bogus"), "{e}");
        assert!(Headers::parse("off, Via", "").is_err());
        let e = Headers::parse("", "X-Other").unwrap_err().to_string();
        assert!(
            e.starts_with("headers_upstream") && e.contains("x-other"),
            "{e}"
        );
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id(0xdeadbeef, 0x1f).to_str().unwrap(),
            format!("{:08x}{:016x}", 0xdeadbeefu32, 0x1fu64)
        );
        assert_eq!(
            request_id(1, u64::MAX).to_str().unwrap(),
            "00000001ffffffffffffffff"
        );
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8000",
            "10.0.0.1:80",
            "[::1]:8000",
            "[::1]",
            "a_b.example",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "exa mple",
            "a/b",
            "example.com:",
            "example.com:80a",
            "[::1",
            "[zz]:80",
            "",
            ":80",
            "a@b",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
