//! The HTTP proxy: its settings and state, listeners and connections (hyper's server for
//! HTTP/2 and what `downstream` hands over), statistics and log sinks. The request pipeline
//! itself is `pipeline`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::balancer::Load;
use crate::error::{ProxyError, SetupError};
use crate::health::Health;
use crate::plugins::{Shared, BODY_LIMIT};
use crate::pool::{Pool, UpBody};
use crate::snapshot::{Snapshot, SnapshotError};

/// Why a body stopped: hyper's, an upstream's ([`crate::h1::H1Error`]), or a plugin's.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BodyError>;

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
    pub(crate) fn count(&self, status: u16, took: Duration) {
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

impl<'a> RequestLog<'a> {
    /// An entry for `method` and `uri` of a local client, with nothing else known yet: no
    /// route, service or consumer, status 200, nothing sent, no time taken. The fields are
    /// public: set what is known.
    pub fn new(
        method: &'a hyper::Method,
        uri: &'a Uri,
        state: &'a hyper::http::Extensions,
    ) -> RequestLog<'a> {
        RequestLog {
            request_id: "",
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            method,
            uri,
            service: None,
            route: None,
            consumer: None,
            status: 200,
            started: Instant::now(),
            total: Duration::ZERO,
            upstream: None,
            response_size: 0,
            route_entity: None,
            service_entity: None,
            consumer_entity: None,
            request_size: 0,
            response_head_size: 0,
            details: None,
            state,
        }
    }
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
pub(crate) struct Answering<'a> {
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
    pub(crate) requests: std::sync::atomic::AtomicU64,
    /// The client's address and the listener's port, as header values.
    peer_ip: HeaderValue,
    pub(crate) port_value: HeaderValue,
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
    pub(crate) headers: std::sync::OnceLock<Headers>,
    trust: std::sync::OnceLock<crate::trust::Trust>,
    pub(crate) log_sinks: std::sync::OnceLock<Arc<[Arc<dyn LogSink>]>>,
    /// Request ids: this process's random prefix and a counter.
    pub(crate) id_prefix: u32,
    pub(crate) id_counter: std::sync::atomic::AtomicU64,
    pub(crate) metrics: std::sync::Mutex<Vec<Arc<dyn MetricsSource>>>,
    node_id: std::sync::OnceLock<String>,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) pool: Arc<Pool>,
    /// State plugins keep across configurations.
    shared: crate::plugins::Shared,
    /// `tracing_instrumentations` and `tracing_sampling_rate`.
    pub(crate) tracing: Arc<crate::spans::Tracing>,
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

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
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

    pub(crate) fn headers(&self) -> &Headers {
        self.headers.get_or_init(Headers::default)
    }

    /// Which peers' forwarding headers to believe (Kong's `trusted_ips`, `real_ip_header`,
    /// `real_ip_recursive`); set once, before serving.
    pub fn set_trust(&self, trust: crate::trust::Trust) {
        let _ = self.trust.set(trust);
    }

    /// Whether nothing on a request's way reads its header map, so that its lines may be kept
    /// as they came ([`crate::raw::RawRequest`]): no plugin runs, no proxy is trusted (whose
    /// `X-Forwarded-*` would be read), and no route matches on headers. Log sinks read no
    /// header ([`RequestLog`] counts the head's bytes).
    pub(crate) fn raw_requests(&self, snap: &crate::snapshot::Snapshot) -> bool {
        snap.plugins.is_empty()
            && !snap.router.reads_headers()
            && self.trust.get().is_none_or(|t| t.is_empty())
    }

    pub(crate) fn client(&self, conn: &ConnInfo, headers: &HeaderMap) -> Client {
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
        raw: &mut Option<crate::raw::RawRequest>,
        conn: &ConnInfo,
        cancels: &Cancels,
    ) -> (Response<ProxyBody>, crate::forward::ResponseAdded) {
        let answering = self.answering(cancels);
        let http1 = req.version() <= hyper::Version::HTTP_11;
        let (mut res, added) = self.handle(req, raw, conn).await;
        self.answered(answering, &mut res, http1);
        (res, added)
    }

    /// A request of a client connection starts being answered: counted in flight until the
    /// guard is dropped, as cancelled unless [`Proxy::answered`] took it. (The HTTP/1.1 layer
    /// calls these two around [`Proxy::handle`] itself, so that the request's future is not
    /// moved once more inside another's.)
    pub(crate) fn answering<'a>(&'a self, cancels: &'a Cancels) -> Answering<'a> {
        if !cancels.started.swap(true, Ordering::Relaxed) {
            self.stats.conns_fresh.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Answering {
            cancels,
            stats: &self.stats,
            answered: false,
        }
    }

    /// A request answered with `res`: a draining proxy closes HTTP/1 connections after it.
    pub(crate) fn answered(
        &self,
        mut answering: Answering<'_>,
        res: &mut Response<ProxyBody>,
        http1: bool,
    ) {
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
                let (mut res, mut added) =
                    me.answer(req.map(Some), &mut None, &conn, &cancels).await;
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
    use super::Headers;

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
}
