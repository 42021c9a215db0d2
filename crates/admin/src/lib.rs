//! The Admin API: Kong's endpoints and shapes, so that Kong clients work unchanged.
//!
//! Entity endpoints are generic over the model's schemas (`entities`); node endpoints live in
//! `info`; every error becomes a response in one place (`error`).

pub mod body;
pub mod clustering;
mod entities;
mod error;
mod groups;
mod health;
mod info;
mod proxy_cache;

use gantry_model::plugins::Catalog;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use gantry_conf::Settings;
use gantry_model::hash::{hash_config, ConfigHashes};
use gantry_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use proxy_cache::ProxyCaches;

/// Request counters for `/status`.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
}

/// What every handler shares.
pub struct AdminState {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    /// `database = off`: entities change only through `POST /config`.
    pub db_off: bool,
    pub node_id: String,
    pub hostname: String,
    /// The latest config version written through this API; the proxy and the cluster
    /// layer subscribe to it.
    pub version_tx: watch::Sender<i64>,
    pub counters: Counters,
    /// The plugins this node enables (Kong's `plugins` setting): what every write validates
    /// and compiles plugin configurations with.
    pub plugins: Catalog,
    hash_cache: Mutex<Option<(i64, ConfigHashes)>>,
    /// More metrics for `GET /metrics` (the cluster service's counters, on a control plane).
    pub extra_metrics: std::sync::OnceLock<MetricsFn>,
    /// Checks each request's access token, when this API requires one (see [`Authorize`]).
    pub authorizer: std::sync::OnceLock<Arc<dyn Authorize>>,
    /// The node's log level, for `/debug/node/log-level` (absent: those endpoints answer 404).
    pub log_level: std::sync::OnceLock<Arc<dyn LogLevel>>,
    /// The proxy's upstream health, on a node that proxies (`/upstreams/{u}/health`).
    pub balancers: std::sync::OnceLock<Arc<dyn Balancers>>,
    /// The proxy's proxy-cache entries, on a node that proxies (`/proxy-cache`); a node
    /// without answers as for an empty cache.
    pub proxy_caches: std::sync::OnceLock<Arc<dyn ProxyCaches>>,
}

/// What the Admin API reads and sets of a proxying node's upstream health.
pub trait Balancers: Send + Sync {
    /// Each running target of the upstream `name` with Kong's health (`HEALTHY`,
    /// `UNHEALTHY`, `HEALTHCHECKS_OFF`); `None` when the upstream is not running.
    fn health(&self, name: &str) -> Option<Vec<(String, &'static str)>>;
    /// Mark a running target healthy or not; false when it is not running.
    fn set_health(&self, name: &str, target: &str, up: bool) -> bool;
    /// Kong's `/status/dns` body: the resolver's statistics by name.
    fn dns_status(&self) -> serde_json::Value;
}

/// The node's log level, read and changed at run time by Kong's `/debug/node/log-level`.
pub trait LogLevel: Send + Sync {
    /// Kong's name of the level in effect.
    fn get(&self) -> String;
    /// Set `level` (one of Kong's names) for `timeout`, after which `log_level`'s comes back
    /// (none: until changed again).
    fn set(self: Arc<Self>, level: &str, timeout: Option<std::time::Duration>);
}

/// Decides whether a request may reach the Admin API: the access tokens of `gantry-konnect`.
/// `write` is whether the request may change the configuration. `None` lets it through;
/// `Some(response)` answers it instead.
pub trait Authorize: Send + Sync {
    fn authorize<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
        client: std::net::IpAddr,
        write: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Response>> + Send + 'a>>;
}

/// Marks a request whose token was checked already (the v2 API's, forwarded to a control
/// plane's Admin API), so that it is not checked twice.
#[derive(Debug, Clone, Copy)]
pub struct Authorized;

/// Appends Prometheus text to `GET /metrics`.
pub type MetricsFn = Arc<dyn Fn(&mut String) + Send + Sync>;

/// A node's own store takes its plugins' writes (oauth2's tokens and codes).
impl gantry_model::writes::EntityWriter for AdminState {
    fn write(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
    ) -> gantry_model::writes::WriteFuture<'_> {
        Box::pin(async move {
            let version = self.store.write_entities(ops, &self.plugins).await?;
            self.notify(version);
            Ok(version)
        })
    }
}

impl AdminState {
    pub fn new(
        store: Arc<Store>,
        settings: Arc<Settings>,
        node_id: String,
        hostname: String,
        plugins: Catalog,
    ) -> AdminState {
        let db_off = settings.database == gantry_conf::Database::Off;
        AdminState {
            store,
            settings,
            db_off,
            node_id,
            hostname,
            version_tx: watch::channel(0).0,
            counters: Counters::default(),
            plugins,
            hash_cache: Mutex::new(None),
            extra_metrics: std::sync::OnceLock::new(),
            authorizer: std::sync::OnceLock::new(),
            log_level: std::sync::OnceLock::new(),
            balancers: std::sync::OnceLock::new(),
            proxy_caches: std::sync::OnceLock::new(),
        }
    }

    /// Announce a new config version.
    pub fn notify(&self, version: i64) {
        self.version_tx.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }

    /// The current config's hashes, computed once per version.
    pub async fn config_hash(&self) -> Result<(i64, ConfigHashes), ApiError> {
        let version = self.store.version().await?;
        if let Ok(cache) = self.hash_cache.lock() {
            if let Some((v, h)) = cache.as_ref() {
                if *v == version {
                    return Ok((*v, h.clone()));
                }
            }
        }
        let (config, version) = self.store.export().await?;
        let h = hash_config(&config);
        if let Ok(mut cache) = self.hash_cache.lock() {
            *cache = Some((version, h.clone()));
        }
        Ok((version, h))
    }
}

/// Resident memory of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

async fn count_and_tag(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    st.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        axum::http::header::SERVER,
        axum::http::HeaderValue::from_static(concat!("gantry/", env!("CARGO_PKG_VERSION"))),
    );
    res
}

/// Refuse a request that would change the gateway when a browser sends it from another site:
/// its `Origin` is neither one of `admin_gui_origin` nor the Admin API's own (the `Host` it
/// was sent to). Clients that send no `Origin` (decK, go-kong, curl, scripts) are not
/// browsers and are unaffected; reads are unaffected too. Without this, any page a browser
/// opens could change a gateway listening on localhost with a form post.
async fn same_site_writes(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    use axum::http::{header, Method};
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let (false, Some(origin)) = (reads, req.headers().get(header::ORIGIN)) {
        let origin = origin
            .to_str()
            .unwrap_or("null")
            .trim_end_matches('/')
            .to_ascii_lowercase();
        let own = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
            });
        if !own && !st.settings.admin_gui_origin.contains(&origin) {
            return ApiError::Forbidden(format!(
                "cross-site request refused: origin '{origin}' is not allowed to change this gateway (see admin_gui_origin)"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// The client's address, as the listener saw it (unspecified when the request did not come
/// through one).
pub fn client_ip(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Require an access token when an authorizer is set (see [`Authorize`]).
async fn require_token(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    use axum::http::Method;
    if let Some(auth) = st.authorizer.get() {
        // A browser's preflight carries no credentials, and learns only the methods.
        if req.extensions().get::<Authorized>().is_none() && req.method() != Method::OPTIONS {
            let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if let Some(refused) = auth.authorize(req.headers(), client_ip(&req), write).await {
                return refused;
            }
        }
    }
    next.run(req).await
}

/// Where a node's cluster-wide log level is kept: control planes share one, the other nodes
/// of a database another (Kong's two `/debug/cluster/...` endpoints).
pub fn cluster_log_scope(control_plane: bool) -> &'static str {
    if control_plane {
        "control_planes"
    } else {
        "nodes"
    }
}

/// Whether the entity of the collection `coll` has children under `child`.
fn nests(coll: &str, child: &str) -> bool {
    gantry_model::entities::by_admin_path(coll)
        .is_some_and(|parent| entities::nested_schema(parent, child).is_some())
}

/// The methods Kong's Admin API answers on `path`, as its `OPTIONS` lists them (sorted, with
/// `HEAD` where `GET` is, and `OPTIONS`); `None` for a path it has no route for.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    use gantry_model::entities::by_admin_path;
    const READ: &str = "GET, HEAD, OPTIONS";
    const LIST: &str = "GET, HEAD, OPTIONS, POST";
    const ITEM: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, PUT";
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Some(match segs.as_slice() {
        [] | ["status"] | ["tags"] | ["tags", _] | ["metrics"] => READ,
        ["plugins", "enabled"] => READ,
        ["clustering", "data-planes" | "status"] | ["analytics", "requests"] => READ,
        ["config"] => LIST,
        ["endpoints"] | ["timers"] | ["status", "dns"] => READ,
        ["cache"] => "DELETE, OPTIONS",
        ["cache", _] => "DELETE, GET, HEAD, OPTIONS",
        ["debug", "node", "log-level"] => READ,
        ["debug", "node", "log-level", _]
        | ["debug", "cluster", "log-level", _]
        | ["debug", "cluster", "control-planes-nodes", "log-level", _] => "OPTIONS, PUT",
        ["schemas", "plugins", "validate"] | ["schemas", _, "validate"] => "OPTIONS, POST",
        ["schemas", "plugins" | "partials", _] | ["schemas", _] => READ,
        ["partials", _, "links"] => READ,
        ["proxy-cache"] => "DELETE, OPTIONS",
        ["proxy-cache", _] | ["proxy-cache", _, "caches", _] => "DELETE, GET, HEAD, OPTIONS",
        ["upstreams", _, "health"] | ["upstreams", _, "targets", "all"] => READ,
        ["upstreams", _, "targets", _, "healthy" | "unhealthy"]
        | ["upstreams", _, "targets", _, _, "healthy" | "unhealthy"] => "OPTIONS, POST",
        ["consumer_groups", _, "consumers"] | ["consumers", _, "consumer_groups"] => {
            "DELETE, GET, HEAD, OPTIONS, POST"
        }
        ["consumer_groups", _, "consumers", _] | ["consumers", _, "consumer_groups", _] => {
            "DELETE, GET, HEAD, OPTIONS"
        }
        [coll] if by_admin_path(coll).is_some() => LIST,
        [coll, _] if by_admin_path(coll).is_some() => ITEM,
        // A parent's single referenced entity (`/routes/{r}/service`): read here.
        [coll, _, "service" | "route" | "consumer" | "upstream" | "certificate"]
            if by_admin_path(coll).is_some() =>
        {
            READ
        }
        // A parent's collection of children (`/routes/{r}/plugins`), as the schemas nest them.
        [coll, _, child] if nests(coll, child) => LIST,
        [coll, _, child, _] if nests(coll, child) => ITEM,
        _ => return None,
    })
}

/// Kong answers `OPTIONS` on every path of its Admin API with 204 and the methods the path
/// takes (`Allow`, `Access-Control-Allow-Methods`), and the headers a preflight asked for.
async fn options(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue, Method, StatusCode};
    if req.method() == Method::TRACE {
        // nginx, in front of Kong's Admin API, refuses TRACE on every path.
        let mut res = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(serde_json::json!({"message": "Method not allowed"})),
        )
            .into_response();
        if let Some(methods) = allowed_methods(req.uri().path()) {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        return res;
    }
    if req.method() != Method::OPTIONS {
        // A 405 says which methods the path takes (RFC 9110's `Allow`).
        let path = req.uri().path().to_string();
        let mut res = next.run(req).await;
        if res.status() == StatusCode::METHOD_NOT_ALLOWED
            && !res.headers().contains_key(header::ALLOW)
        {
            if let Some(methods) = allowed_methods(&path) {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(methods));
            }
        }
        return res;
    }
    let Some(methods) = allowed_methods(req.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    let allow_headers = req
        .headers()
        .get("access-control-request-headers")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("Content-Type"));
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(methods));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    res
}

/// Every answer is Kong's JSON, also where the HTTP layer would answer plain text: a path that
/// is not UTF-8 once percent-decoded names nothing (every key is UTF-8), so it is Kong's 404,
/// and an extractor's plain-text refusal becomes `{"message": ...}` with its status.
async fn json_errors(req: Request, next: Next) -> Response {
    use axum::http::header;
    if percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8()
        .is_err()
    {
        return ApiError::NotFound.into_response();
    }
    let res = next.run(req).await;
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(plain && res.status().is_client_error()) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    (
        parts.status,
        axum::Json(serde_json::json!({ "message": text })),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

/// The Admin API's routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(info::root))
        .route("/status", get(info::status))
        .route("/config", get(info::get_config).post(info::post_config))
        .route("/tags", get(info::tags))
        .route("/tags/{tag}", get(info::tags))
        .route("/schemas/plugins/validate", post(info::validate_plugin))
        .route("/schemas/plugins/{name}", get(info::plugin_schema))
        .route("/schemas/partials/{kind}", get(info::partial_schema))
        .route("/partials/{p}/links", get(info::partial_links))
        .route("/schemas/{entity}", get(info::entity_schema))
        .route("/schemas/{entity}/validate", post(info::validate_entity))
        .route("/plugins/enabled", get(info::enabled_plugins))
        .route("/endpoints", get(info::endpoints))
        .route("/timers", get(info::timers))
        .route(
            "/debug/cluster/log-level/{level}",
            axum::routing::put(info::set_cluster_log_level),
        )
        .route(
            "/debug/cluster/control-planes-nodes/log-level/{level}",
            axum::routing::put(info::set_control_planes_log_level),
        )
        .route("/status/dns", get(info::dns_status))
        .route("/cache", delete(info::cache_purge))
        .route(
            "/cache/{key}",
            get(info::cache_get).delete(info::cache_delete),
        )
        .route("/debug/node/log-level", get(info::log_level))
        .route(
            "/debug/node/log-level/{level}",
            axum::routing::put(info::set_log_level),
        )
        .route("/clustering/data-planes", get(clustering::data_planes))
        .route("/clustering/status", get(clustering::status))
        .route("/analytics/requests", get(clustering::analytics))
        .route("/metrics", get(clustering::metrics))
        .route("/upstreams/{u}/health", any(health::health))
        .route("/upstreams/{u}/targets/all", any(health::all_targets))
        .route("/upstreams/{u}/targets/{t}/{state}", any(health::set))
        .route(
            "/upstreams/{u}/targets/{t}/{address}/{state}",
            any(health::set_address),
        )
        .route("/proxy-cache", any(proxy_cache::flush))
        .route("/proxy-cache/{key}", any(proxy_cache::by_key))
        .route(
            "/proxy-cache/{plugin}/caches/{key}",
            any(proxy_cache::by_plugin),
        )
        .route("/consumer_groups/{g}", any(groups::item))
        .route(
            "/consumer_groups/{g}/consumers",
            any(groups::group_consumers),
        )
        .route(
            "/consumer_groups/{g}/consumers/{c}",
            any(groups::group_consumer),
        )
        .route(
            "/consumers/{c}/consumer_groups",
            any(groups::consumer_groups),
        )
        .route(
            "/consumers/{c}/consumer_groups/{g}",
            any(groups::consumer_group),
        )
        .route("/{coll}", any(entities::collection))
        .route("/{coll}/{key}", any(entities::item))
        .route("/{coll}/{key}/{child}", any(entities::nested))
        .route("/{coll}/{key}/{child}/{ckey}", any(entities::nested_item))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            same_site_writes,
        ))
        .layer(axum::middleware::from_fn(options))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_and_tag,
        ))
        .with_state(state)
}

/// Serve the Admin API on already-bound listeners until `shutdown` turns true; requests in
/// flight finish first.
pub async fn serve(
    state: Arc<AdminState>,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_app(router(state), listeners, shutdown).await
}

/// What a control plane serves on `status_listen`: `/status` and Prometheus `/metrics`
/// (data planes by status, sync lag, pushes), without the rest of the Admin API.
pub fn status_router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(info::status))
        .route("/metrics", get(clustering::metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The Admin API's TLS on `ssl` listeners: `chain` and `key` (DER), HTTP/2 offered by ALPN
/// when `http2`.
pub fn tls_acceptor(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    http2: bool,
) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serve `app` over TLS on an already-bound listener until `shutdown` turns true; connections
/// in flight finish first.
pub async fn serve_tls(
    app: Router,
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let mut stop = Box::pin(async move {
        let _ = shutdown.wait_for(|v| *v).await;
    });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let stream =
            match tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin API TLS handshake failed");
                    continue;
                }
                Err(_) => continue,
            };
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(app);
        let conn = builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin API connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Serve `app` on already-bound listeners until `shutdown` turns true.
pub async fn serve_app(
    app: Router,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for l in listeners {
        let app = app.clone();
        let mut sd = shutdown.clone();
        let stop = async move {
            let _ = sd.wait_for(|v| *v).await;
        };
        tasks.push(tokio::spawn(async move {
            axum::serve(
                l,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
        }));
    }
    for t in tasks {
        t.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}
