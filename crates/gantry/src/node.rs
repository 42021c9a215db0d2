//! Running a node: settings, logging, store, listeners, graceful shutdown.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use gantry_admin::AdminState;
use gantry_conf::{Database, Role, Settings, Sources};
use gantry_store::{Backend, Store};
use tokio::net::TcpListener;

use crate::NodeOpts;

/// Settings from every source; warnings go to stderr.
pub fn load_settings(opts: &NodeOpts) -> anyhow::Result<Settings> {
    let (settings, warnings) = load_settings_quietly(opts)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(settings)
}

/// Settings from every source, and the warnings met.
pub fn load_settings_quietly(opts: &NodeOpts) -> anyhow::Result<(Settings, Vec<String>)> {
    let mut overrides = Vec::new();
    if let Some(p) = &opts.prefix {
        overrides.push(("prefix".to_string(), p.display().to_string()));
    }
    let loaded = Settings::load(&Sources {
        file: opts.conf.clone(),
        env: std::env::vars().collect(),
        overrides,
    })?;
    Ok((loaded.settings, loaded.warnings))
}

/// Log to stderr and to `<prefix>/logs/error.log`, at `log_level`.
/// The filter for one of Kong's log levels (`notice` is `info` here; `crit`, `alert` and
/// `emerg` are `error`).
fn level_filter(kong_level: &str) -> tracing_subscriber::EnvFilter {
    let level = match kong_level {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warn" => "warn",
        _ => "error",
    };
    tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn"))
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The node's log level as `/debug/node/log-level` reads and changes it.
pub struct NodeLog {
    handle: FilterHandle,
    configured: String,
    /// The level in effect, and a count of changes (a timed change reverts only if it is
    /// still the latest).
    current: std::sync::Mutex<(String, u64)>,
}

static NODE_LOG: std::sync::OnceLock<Arc<NodeLog>> = std::sync::OnceLock::new();

/// The node's log level control, once logging is set up.
pub fn node_log() -> Option<Arc<NodeLog>> {
    NODE_LOG.get().cloned()
}

impl NodeLog {
    fn apply(&self, level: &str) {
        if let Err(e) = self.handle.reload(level_filter(level)) {
            tracing::error!(error = %e, "cannot change the log level");
        }
    }
}

impl gantry_admin::LogLevel for NodeLog {
    fn get(&self) -> String {
        self.current
            .lock()
            .map(|c| c.0.clone())
            .unwrap_or_else(|_| self.configured.clone())
    }

    fn set(self: Arc<Self>, level: &str, timeout: Option<std::time::Duration>) {
        let generation = {
            let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
            c.0 = level.to_string();
            c.1 += 1;
            c.1
        };
        self.apply(level);
        tracing::warn!(
            level,
            timeout_s = timeout.map(|t| t.as_secs()),
            "log level changed through the Admin API"
        );
        if let Some(t) = timeout {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let revert = {
                    let mut c = me.current.lock().unwrap_or_else(|e| e.into_inner());
                    let still = c.1 == generation;
                    if still {
                        c.0 = me.configured.clone();
                    }
                    still
                };
                if revert {
                    me.apply(&me.configured.clone());
                    tracing::warn!(level = %me.configured, "log level back to log_level's");
                }
            });
        }
    }
}

pub fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| level_filter(&settings.log_level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let logs = settings.prefixed("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let (max, keep) = rotation(settings);
    let file = gantry_proxy::logfile::Rotating::open(&logs.join("error.log"), max, keep)
        .with_context(|| format!("cannot open {}", logs.join("error.log").display()))?;
    let file = std::sync::Mutex::new(file);
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let (console, to_file): (Boxed, Boxed) = if settings.get("log_format") == Some("json") {
        (
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(file)
                .boxed(),
        )
    } else {
        (
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .boxed(),
        )
    };
    let installed = tracing_subscriber::registry()
        .with(vec![console, to_file].with_filter(filter))
        .try_init()
        .is_ok();
    if installed {
        let _ = NODE_LOG.set(Arc::new(NodeLog {
            handle,
            configured: settings.log_level.clone(),
            current: std::sync::Mutex::new((settings.log_level.clone(), 0)),
        }));
    }
    Ok(())
}

/// `log_rotate_size` and `log_rotate_keep`.
fn rotation(settings: &Settings) -> (u64, usize) {
    let max = settings
        .get("log_rotate_size")
        .and_then(gantry_conf::parse_size)
        .unwrap_or(100 << 20) as u64;
    let keep = settings
        .get("log_rotate_keep")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    (max, keep)
}

/// `dns_resolver`: name servers as `ip[:port]`, comma-separated (port 53 by default).
pub fn dns_servers(settings: &Settings) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let v = settings.get("dns_resolver").unwrap_or("");
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| {
                    anyhow::anyhow!("invalid value for 'dns_resolver': '{s}' is not ip[:port]")
                })
        })
        .collect()
}

/// A proxy with the settings' header timeout, access log and name servers.
/// The plugins this node runs: Kong's `plugins` setting over the bundled ones.
pub fn plugin_registry(settings: &Settings) -> anyhow::Result<gantry_proxy::plugins::Registry> {
    let value = settings.get("plugins").unwrap_or("bundled");
    gantry_proxy::plugins::Registry::from_setting(value)
        .map_err(|e| anyhow::anyhow!("invalid value for 'plugins' ({value}): {e}"))
}

pub fn new_proxy(settings: &Settings) -> anyhow::Result<Arc<gantry_proxy::Proxy>> {
    let proxy = gantry_proxy::Proxy::with_header_timeout(settings.client_header_timeout);
    proxy.set_shutdown_timeout(settings.shutdown_timeout);
    proxy.set_registry(plugin_registry(settings)?);
    // proxy-cache's memory strategy keeps its entries in Kong's `kong_db_cache`, of this size.
    if let Some(bytes) = settings
        .get("mem_cache_size")
        .and_then(gantry_conf::parse_size)
    {
        proxy.proxy_cache().set_capacity(bytes);
    }
    // The node's id names it in Kong's metrics; a node that cannot keep one still proxies.
    if let Ok(id) = node_id(settings) {
        proxy.set_node_id(&id);
    }
    proxy.set_headers(
        gantry_proxy::Headers::parse(
            settings.get("headers").unwrap_or_default(),
            settings.get("headers_upstream").unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let tracing = |k: &str| match settings.get(k).filter(|v| !v.trim().is_empty()) {
        Some(v) => v,
        None if k == "tracing_sampling_rate" => "0.01",
        None => "off",
    };
    let instrumentations =
        gantry_proxy::spans::Tracing::parse_instrumentations(tracing("tracing_instrumentations"))
            .map_err(|e| {
            anyhow::anyhow!(
                "invalid value for 'tracing_instrumentations' ({}): {e}",
                tracing("tracing_instrumentations")
            )
        })?;
    let sampling_rate = gantry_proxy::spans::Tracing::parse_rate(tracing("tracing_sampling_rate"))
        .map_err(|e| {
            anyhow::anyhow!(
                "invalid value for 'tracing_sampling_rate' ({}): {e}",
                tracing("tracing_sampling_rate")
            )
        })?;
    proxy.set_tracing(instrumentations, sampling_rate);
    let number = |k: &str| settings.get(k).and_then(|v| v.parse::<u64>().ok());
    let default = gantry_proxy::pool::Keepalive::default();
    // Each worker keeps its own upstream connections, as each nginx worker does (Kong's
    // `upstream_keepalive_pool_size` is per worker).
    proxy.set_workers(settings.worker_threads);
    proxy.set_keepalive(gantry_proxy::pool::Keepalive {
        pool_size: number("upstream_keepalive_pool_size")
            .map(|n| n as usize)
            .unwrap_or(default.pool_size),
        max_requests: number("upstream_keepalive_max_requests").unwrap_or(default.max_requests),
        idle_timeout: number("upstream_keepalive_idle_timeout")
            .map(std::time::Duration::from_secs)
            .unwrap_or(default.idle_timeout),
    });
    proxy.set_trust(
        gantry_proxy::trust::Trust::parse(
            settings.get("trusted_ips").unwrap_or_default(),
            settings.get("real_ip_header").unwrap_or("X-Real-IP"),
            matches!(settings.get("real_ip_recursive"), Some("on" | "true")),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let servers = dns_servers(settings)?;
    if !servers.is_empty() {
        proxy.set_dns(&servers).map_err(anyhow::Error::msg)?;
    }
    Ok(proxy)
}

/// The proxy's log sinks from the settings: the access log unless `proxy_access_log = off`.
pub fn access_log(settings: &Settings) -> anyhow::Result<Vec<Arc<dyn gantry_proxy::LogSink>>> {
    let v = settings.get("proxy_access_log").unwrap_or("off");
    if v == "off" || v.is_empty() {
        return Ok(Vec::new());
    }
    let path = if Path::new(v).is_absolute() {
        std::path::PathBuf::from(v)
    } else {
        settings.prefix.join(v)
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (max, keep) = rotation(settings);
    let json = settings.get("log_format") == Some("json");
    let log = gantry_proxy::logfile::AccessLog::start(&path, max, keep, json)
        .with_context(|| format!("proxy_access_log: cannot open {}", path.display()))?;
    Ok(vec![log])
}

/// The store the settings describe.
pub fn backend(settings: &Settings) -> Backend {
    match settings.database {
        Database::Sqlite => Backend::Sqlite(Some(settings.prefixed("gantry.db"))),
        Database::Postgres => Backend::Postgres(settings.pg.clone()),
        Database::Off => Backend::Sqlite(None),
    }
}

/// This node's id: Kong's `node_id` setting when set (a UUID), else one kept under the prefix
/// so that it survives restarts.
pub fn node_id(settings: &Settings) -> anyhow::Result<String> {
    if let Some(v) = settings.get("node_id").filter(|v| !v.is_empty()) {
        return uuid::Uuid::parse_str(v)
            .map(|id| id.to_string())
            .map_err(|_| anyhow::anyhow!("node_id: '{v}' is not a UUID"));
    }
    let prefix = &settings.prefix;
    let path = prefix.join("node_id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if let Ok(id) = uuid::Uuid::parse_str(s.trim()) {
            return Ok(id.to_string());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = prefix.join("node_id.tmp");
    std::fs::write(&tmp, &id).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// A multi-threaded runtime of `worker_threads` threads.
/// One thread runs everything on a current-thread runtime (no cross-thread wake-ups, as an
/// nginx worker); more threads share a work-stealing one.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(b.enable_all().build()?)
}

/// Resolves on SIGTERM, SIGINT or SIGQUIT: listeners close, requests in flight finish.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down gracefully"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down gracefully"),
        _ = quit.recv() => tracing::info!("SIGQUIT received, draining and shutting down"),
    }
}

/// Bind a listener of `setting` and announce it, in the log and on stderr (which tests and
/// scripts read): `gantry: LABEL listening on [SCHEME://]ADDR`.
pub async fn listen(
    l: &gantry_conf::Listen,
    setting: &str,
    label: &str,
    scheme: Option<&str>,
) -> anyhow::Result<TcpListener> {
    let tcp = bind(l, setting).await?;
    let addr = tcp.local_addr()?;
    let url = match scheme {
        Some(s) => format!("{s}://{addr}"),
        None => addr.to_string(),
    };
    tracing::info!("{label} listening on {url}");
    eprintln!("gantry: {label} listening on {url}");
    record_listener(setting, addr, l.ssl);
    Ok(tcp)
}

/// What this process listens on, `setting address ssl` per line, kept in
/// `<prefix>/pids/listening` for `gantry health` (ports may have been chosen by the kernel).
static LISTENING: std::sync::Mutex<(Option<std::path::PathBuf>, String)> =
    std::sync::Mutex::new((None, String::new()));

fn record_listener(setting: &str, addr: std::net::SocketAddr, ssl: bool) {
    let mut l = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
    l.1.push_str(&format!("{setting} {addr} {ssl}\n"));
    if let Some(p) = &l.0 {
        let _ = std::fs::write(p, &l.1);
    }
}

/// Bind a listener with its flags: `reuseport` (several processes may hold the port at once:
/// a new node takes traffic while the old one drains), `backlog=`, `ipv6only=` and
/// `so_keepalive=` (set on the listening socket, inherited by the connections it accepts).
pub async fn bind(l: &gantry_conf::Listen, what: &str) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let err = || format!("cannot listen on {what} {}", l.addr);
    let addr: std::net::SocketAddr = tokio::net::lookup_host(&l.addr)
        .await
        .with_context(err)?
        .next()
        .with_context(err)?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(err)?;
    sock.set_reuse_address(true).with_context(err)?;
    if l.reuseport {
        sock.set_reuse_port(true).with_context(err)?;
    }
    if let Some(v6only) = l.ipv6only {
        sock.set_only_v6(v6only).with_context(err)?;
    }
    match l.so_keepalive {
        None => {}
        Some(gantry_conf::Keepalive::Off) => sock.set_keepalive(false).with_context(err)?,
        Some(gantry_conf::Keepalive::On {
            idle,
            interval,
            count,
        }) => {
            let mut ka = TcpKeepalive::new();
            if let Some(s) = idle {
                ka = ka.with_time(std::time::Duration::from_secs(s.into()));
            }
            if let Some(s) = interval {
                ka = ka.with_interval(std::time::Duration::from_secs(s.into()));
            }
            if let Some(n) = count {
                ka = ka.with_retries(n);
            }
            sock.set_tcp_keepalive(&ka).with_context(err)?;
        }
    }
    sock.set_nonblocking(true).with_context(err)?;
    sock.bind(&addr.into()).with_context(err)?;
    let backlog = l.backlog.unwrap_or(1024).min(i32::MAX as u32) as i32;
    sock.listen(backlog).with_context(err)?;
    TcpListener::from_std(std::net::TcpListener::from(sock)).with_context(err)
}

/// `gantry start`
pub fn start(opts: &NodeOpts) -> anyhow::Result<()> {
    let (settings, warnings) = load_settings_quietly(opts)?;
    std::fs::create_dir_all(&settings.prefix)
        .with_context(|| format!("cannot create prefix {}", settings.prefix.display()))?;
    init_logging(&settings)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    raise_open_files();
    // A node that proxies runs its workers' accept loops on threads of their own
    // (`serve_proxy_listeners`): its main runtime is worker 0, one thread. A control plane
    // shares work-stealing threads.
    let rt = runtime(if settings.role == Role::ControlPlane {
        settings.worker_threads
    } else {
        1
    })?;
    let (timeout, pid_file) = (settings.shutdown_timeout, pid_path(&settings));
    let stop = async move {
        shutdown_signal().await;
        // Whatever still runs when the shutdown timeout is out (a request that never ends,
        // work that never yields) does not keep the node up: a thread of its own, which no
        // busy worker can hold up, ends the process.
        std::thread::spawn(move || {
            std::thread::sleep(timeout + std::time::Duration::from_secs(1));
            tracing::warn!(
                timeout = ?timeout,
                "still stopping when nginx_main_worker_shutdown_timeout ran out: exiting now"
            );
            let _ = std::fs::remove_file(&pid_file);
            gantry_proxy::logfile::flush_all();
            std::process::exit(0);
        });
    };
    // The Admin API runs on a thread of its own: however much work a request brings (a body of
    // 500,000 tags, a declarative file), the proxy's workers never wait behind it.
    let admin = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gantry-admin")
        .enable_all()
        .build()?;
    let done = rt.block_on(run(settings, stop, admin.handle().clone()));
    admin.shutdown_background();
    done
}

/// Every connection is an open file: the soft limit (often 1,024) is raised to the hard one, as
/// nginx's `worker_rlimit_nofile` and Kong's start do, and a limit under 4,096 is reported.
fn raise_open_files() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 4096 => tracing::warn!(
            limit = n,
            "open files are limited to {n}: each client and upstream connection takes one; raise the hard limit (ulimit -Hn) to at least 4096"
        ),
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Run a node until `shutdown` resolves; its Admin API is served on the `admin` runtime.
pub async fn run<F>(
    settings: Settings,
    shutdown: F,
    admin: tokio::runtime::Handle,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let plugins = if settings.database == Database::Off && settings.role != Role::DataPlane {
        // Without a database, what needs one (oauth2) is refused when written.
        let shared = gantry_proxy::plugins::Shared::default();
        shared.get::<gantry_proxy::plugins::Writes>().set_none();
        plugin_registry(&settings)?.catalog_with(shared)
    } else {
        plugin_registry(&settings)?.catalog()
    };
    let node_id = node_id(&settings)?;
    if settings.role == Role::DataPlane {
        return crate::hybrid::run_data_plane(Arc::new(settings), node_id, shutdown).await;
    }
    let store = Arc::new(Store::open(&backend(&settings)).await?);
    if settings.database == Database::Off {
        if let Some(file) = &settings.declarative_config {
            let config = crate::config_cmd::load_file(file, &plugins)
                .with_context(|| format!("declarative_config {}", file.display()))?;
            store.replace(&config).await?;
            tracing::info!(file = %file.display(), entities = config.len(), "loaded declarative configuration");
        }
    }
    let settings = Arc::new(settings);
    let state = Arc::new(AdminState::new(
        store.clone(),
        settings.clone(),
        node_id.clone(),
        hostname(),
        plugins,
    ));
    state.notify(store.version().await?);
    if let Some(log) = node_log() {
        let _ = state.log_level.set(log);
    }
    // The Admin API needs access tokens wherever it can be reached from another host.
    let konnect = gantry_konnect::Konnect::new(state.clone());
    if !settings.admin_listen.is_empty() && !gantry_konnect::loopback_only(&settings.admin_listen) {
        if !store.has_live_token(gantry_model::unix_now()).await? {
            bail!(
                "admin_listen ({}) is reachable from other hosts, and no access token exists to guard it: create one first with `gantry tokens create --name NAME -c FILE -p PREFIX`, or listen on loopback only",
                settings
                    .admin_listen
                    .iter()
                    .map(|l| l.addr.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = state
            .authorizer
            .set(Arc::new(gantry_konnect::KongApiTokens {
                konnect: Arc::downgrade(&konnect),
            }));
        tracing::info!(
            "admin_listen is not loopback only: every Admin API request needs an access token"
        );
    }
    let mut listeners = Vec::new();
    let mut tls_listeners = Vec::new();
    for l in &settings.admin_listen {
        if l.ssl {
            let (chain, key) = admin_certificate(&settings)?;
            let acceptor = gantry_admin::tls_acceptor(chain, key, l.http2)
                .context("admin_ssl_cert / admin_ssl_cert_key")?;
            tls_listeners.push((
                listen(l, "admin_listen", "admin API", Some("https")).await?,
                acceptor,
            ));
        } else {
            listeners.push(listen(l, "admin_listen", "admin API", Some("http")).await?);
        }
    }
    let pid_file = write_pid(&settings)?;
    tracing::info!(
        role = ?settings.role,
        database = ?settings.database,
        node_id = %node_id,
        version = gantry_model::GANTRY_VERSION,
        "gantry started"
    );
    // One signal, shared by every server.
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    // Kong's cleanup of entities whose ttl ran out (oauth2 tokens and codes, credentials).
    let hosted: Arc<std::sync::OnceLock<std::sync::Weak<gantry_cp::ControlPlane>>> =
        Default::default();
    if settings.database != Database::Off {
        tokio::spawn(sweep(state.clone(), hosted.clone(), rx.clone()));
        if let Some(log) = node_log() {
            let scope = gantry_admin::cluster_log_scope(settings.role == Role::ControlPlane);
            // The changes already made are read before the node answers anything, so a
            // change made once it is up is never taken for an old one.
            let seen = match state.store.cluster_log_level(scope).await {
                Ok(c) => c.map_or(0, |(seq, _, _)| seq),
                Err(_) => 0,
            };
            tokio::spawn(follow_cluster_log_level(
                state.store.clone(),
                log,
                scope,
                seen,
                rx.clone(),
            ));
        }
    }
    let mut v2_extra = None;
    let mut fleet_task = None;
    let mut wizard = None;
    if settings.role == Role::ControlPlane {
        let (cp, bound) = crate::hybrid::start_control_plane(
            &settings,
            store.clone(),
            node_id.clone(),
            state.version_tx.subscribe(),
            rx.clone(),
            state.plugins.clone(),
        )
        .await?;
        // Managed data plane groups (docs/managed-groups.md).
        if let (Some(cluster), Some(telemetry)) = (bound.cluster, bound.telemetry) {
            konnect.set_listeners(cluster, telemetry);
            let versions = match settings
                .get("managed_versions_dir")
                .filter(|v| !v.is_empty())
            {
                Some(d) => std::path::PathBuf::from(d),
                None => crate::quickstart::versions_dir(
                    &std::env::current_exe().context("cannot find the gantry executable")?,
                ),
            };
            let fleet = gantry_fleet::Fleet::new(
                konnect.clone(),
                gantry_fleet::providers(versions.clone(), cluster, &settings.prefixed("managed"))?,
                gantry_fleet::FleetSettings::from_settings(&settings, cluster, telemetry)?,
            );
            v2_extra = Some(gantry_fleet::api::router(fleet.clone()));
            // The console's New Data Plane Node wizard connects nodes as managed ones do.
            wizard = Some(gantry_console::wizard::Wizard {
                fleet: gantry_fleet::FleetSettings::from_settings(&settings, cluster, telemetry)?,
                cluster_host: konnect.dial_host(cluster),
                versions_dir: versions,
                version: cp.version().to_string(),
            });
            fleet_task = Some(tokio::spawn(fleet.run(rx.clone())));
        }
        {
            let cp = Arc::downgrade(&cp);
            let _ = konnect.group_status.set(Arc::new(move |key| {
                let s = cp.upgrade()?.group_status(key)?;
                let conflicts = s
                    .conflicts
                    .iter()
                    .map(|(member, c)| {
                        serde_json::json!({
                            "cluster_id": member,
                            "description": c.description,
                            "resource": {"id": c.id, "type": c.entity.trim_end_matches('s')},
                        })
                    })
                    .collect();
                Some((s.state.to_string(), conflicts, s.updated_at))
            }));
        }
        let _ = hosted.set(Arc::downgrade(&cp));
        tokio::spawn(crate::hybrid::keep_hosting(
            cp.clone(),
            konnect.clone(),
            rx.clone(),
        ));
        let _ = state
            .extra_metrics
            .set(Arc::new(move |m: &mut String| cp.write_metrics(m)));
        let mut status = Vec::new();
        for l in &settings.status_listen {
            status.push(listen(l, "status_listen", "status", Some("http")).await?);
        }
        tokio::spawn(gantry_admin::serve_app(
            gantry_admin::status_router(state.clone()),
            status,
            rx.clone(),
        ));
    }
    let proxies = if settings.role == Role::Traditional {
        let writes: Option<Arc<dyn gantry_model::writes::EntityWriter>> =
            (settings.database != Database::Off).then(|| state.clone() as _);
        start_proxy(
            &settings,
            store.clone(),
            state.version_tx.subscribe(),
            rx.clone(),
            writes,
            &state.balancers,
            &state.proxy_caches,
        )
        .await?
    } else {
        Vec::new()
    };
    let v2 = gantry_konnect::api::router_with(konnect.clone(), v2_extra.unwrap_or_default());
    // The web console (admin_gui_listen), a client of the v2 API.
    if settings.role != Role::DataPlane {
        let console = gantry_console::Console::new(konnect, v2.clone(), wizard);
        for l in &settings.admin_gui_listen {
            let loopback = gantry_konnect::loopback_only(std::slice::from_ref(l));
            let app = gantry_console::router(console.clone(), l.ssl, loopback);
            let tcp = listen(
                l,
                "admin_gui_listen",
                "console",
                Some(if l.ssl { "https" } else { "http" }),
            )
            .await?
            .into_std()?;
            if !l.ssl && !loopback {
                tracing::warn!(listen = %l.addr, "the console listens on plain HTTP beyond loopback: its session cookie cannot be Secure; add `ssl` to admin_gui_listen, or put it behind a TLS proxy");
            }
            let acceptor = if l.ssl {
                let (chain, key) = gui_certificate(&settings)?;
                Some(
                    gantry_admin::tls_acceptor(chain, key, l.http2)
                        .context("admin_gui_ssl_cert / admin_gui_ssl_cert_key")?,
                )
            } else {
                None
            };
            let rx = rx.clone();
            admin.spawn(async move {
                let tcp = TcpListener::from_std(tcp)?;
                match acceptor {
                    Some(a) => gantry_admin::serve_tls(app, tcp, a, rx).await,
                    None => gantry_admin::serve_app(app, vec![tcp], rx).await,
                }
            });
        }
    }
    let app = gantry_admin::router(state).merge(v2);
    let mut tls_tasks = Vec::new();
    for (l, acceptor) in tls_listeners {
        let (app, rx, l) = (app.clone(), rx.clone(), l.into_std()?);
        tls_tasks.push(admin.spawn(async move {
            gantry_admin::serve_tls(app, TcpListener::from_std(l)?, acceptor, rx).await
        }));
    }
    let listeners = listeners
        .into_iter()
        .map(|l| l.into_std())
        .collect::<std::io::Result<Vec<_>>>()?;
    admin
        .spawn(async move {
            let listeners = listeners
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<std::io::Result<Vec<_>>>()?;
            gantry_admin::serve_app(app, listeners, rx).await
        })
        .await??;
    for t in tls_tasks {
        let _ = t.await;
    }
    for p in proxies {
        let _ = p.await;
    }
    // The managed data planes drain before the control plane goes.
    if let Some(f) = fleet_task {
        let _ = f.await;
    }
    store.close().await;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("gantry stopped");
    Ok(())
}

/// The Admin API's certificate for `ssl` listeners: `admin_ssl_cert` and `admin_ssl_cert_key`
/// (a path or PEM, both or neither), else a self-signed one for `localhost`, as Kong generates.
fn admin_certificate(settings: &Settings) -> anyhow::Result<Certificate> {
    certificate(settings, "admin_ssl_cert", "admin_ssl_cert_key")?
        .map_or_else(self_signed_localhost, Ok)
}

/// The console's certificate for `ssl` listeners: `admin_gui_ssl_cert` and
/// `admin_gui_ssl_cert_key` (Kong's), else the Admin API's.
fn gui_certificate(settings: &Settings) -> anyhow::Result<Certificate> {
    match certificate(settings, "admin_gui_ssl_cert", "admin_gui_ssl_cert_key")? {
        Some(c) => Ok(c),
        None => admin_certificate(settings),
    }
}

type Certificate = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// The certificate settings `cert` and `key` name (a path or PEM each), both or neither.
fn certificate(
    settings: &Settings,
    cert_key: &'static str,
    key_key: &'static str,
) -> anyhow::Result<Option<Certificate>> {
    let cert = settings.get(cert_key).filter(|v| !v.is_empty());
    let key = settings.get(key_key).filter(|v| !v.is_empty());
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((
            gantry_protocol::tls::certs(cert_key, c)?,
            gantry_protocol::tls::key(key_key, k)?,
        ))),
        (Some(_), None) => bail!("{cert_key} is set without {key_key}"),
        (None, Some(_)) => bail!("{key_key} is set without {cert_key}"),
        (None, None) => Ok(None),
    }
}

/// A self-signed certificate for `localhost`, as Kong generates for its `ssl` listeners.
fn self_signed_localhost() -> anyhow::Result<Certificate> {
    let (cert, key) = gantry_protocol::tls::self_signed("localhost", 10 * 365 * 86_400)?;
    Ok((
        gantry_protocol::tls::certs("admin_ssl_cert", &cert)?,
        gantry_protocol::tls::key("admin_ssl_cert_key", &key)?,
    ))
}

/// Bind the proxy listeners, load the configuration and keep it current: every new config
/// version (announced by the Admin API, or seen in the store, which another control plane may
/// have written) is built aside and swapped in; a configuration that does not build is refused
/// and the running one stays.
async fn start_proxy(
    settings: &Settings,
    store: Arc<Store>,
    versions: tokio::sync::watch::Receiver<i64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    writes: Option<Arc<dyn gantry_model::writes::EntityWriter>>,
    balancers: &std::sync::OnceLock<Arc<dyn gantry_admin::Balancers>>,
    proxy_caches: &std::sync::OnceLock<Arc<dyn gantry_admin::ProxyCaches>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let proxy = new_proxy(settings)?;
    let _ = balancers.set(Arc::new(ProxyBalancers(proxy.clone())));
    let _ = proxy_caches.set(Arc::new(ProxyCaches(proxy.proxy_cache())));
    match writes {
        Some(w) => proxy.writes().set(w),
        None => proxy.writes().set_none(),
    }
    proxy.set_log_sinks(access_log(settings)?);
    // The change feed: each write costs the proxy what it changed, not an export.
    let feed = gantry_store::feed::Feed::start(&store).await?;
    // A stored configuration that does not compile (written by another version, or under other
    // settings) leaves the proxy serving none of it, not a part: the node still starts, so its
    // Admin API can repair the entity named here, and the first version that compiles is built
    // whole and served. Until then `/status/ready` answers 503.
    if let Err(e) = proxy.apply_update(&feed.update(None)) {
        tracing::error!(
            "the stored configuration does not load, so the proxy serves none of it until it \
             is repaired through the Admin API: {e}"
        );
    }
    if settings.database != Database::Off && proxy.registry().get("prometheus").is_some() {
        let reachable = Arc::new(Datastore(std::sync::atomic::AtomicBool::new(true)));
        proxy.add_metrics(reachable.clone());
        tokio::spawn(reachable.watch(store.clone(), shutdown.clone()));
    }
    let tasks = serve_proxy(settings, &proxy, &shutdown).await?;
    tokio::spawn(gantry_store::feed::follow(
        feed, store, proxy, versions, shutdown,
    ));
    Ok(tasks)
}

/// Kong's `kong_datastore_reachable` on a node with a database, for its prometheus plugin:
/// whether the store answered when last asked (every 10 s), 0 when it did not.
struct Datastore(std::sync::atomic::AtomicBool);

impl Datastore {
    async fn watch(
        self: Arc<Self>,
        store: Arc<Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use std::sync::atomic::Ordering;
        let timer = gantry_model::timers::register("datastore:reachable");
        loop {
            let mut run = timer.run();
            let ok = match store.version().await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "the database is not reachable");
                    false
                }
            };
            self.0.store(ok, Ordering::Relaxed);
            if !ok {
                run.failed("the database is not reachable");
            }
            drop(run);
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                _ = gantry_protocol::stopped(&mut stop) => return,
            }
        }
    }
}

impl gantry_proxy::MetricsSource for Datastore {
    fn write(&self, m: &mut String) {
        let up = self.0.load(std::sync::atomic::Ordering::Relaxed);
        gantry_admin::clustering::datastore_reachable(m, up);
    }
}

/// The proxy's upstream health, as the Admin API reads and sets it.
struct ProxyBalancers(Arc<gantry_proxy::Proxy>);

impl gantry_admin::Balancers for ProxyBalancers {
    fn health(&self, name: &str) -> Option<Vec<(String, &'static str)>> {
        self.0.upstream_health(name)
    }
    fn set_health(&self, name: &str, target: &str, up: bool) -> bool {
        self.0.set_target_health(name, target, up)
    }
    fn dns_status(&self) -> serde_json::Value {
        self.0.dns_status()
    }
}

/// The proxy's proxy-cache entries, as the Admin API reads and purges them.
struct ProxyCaches(Arc<gantry_proxy::plugins::CacheStore>);

impl gantry_admin::ProxyCaches for ProxyCaches {
    fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.0.get(key).map(|c| c.to_json())
    }
    fn purge(&self, key: &str) -> bool {
        self.0.purge(key)
    }
    fn flush(&self) {
        self.0.flush()
    }
}

/// How often entities whose ttl ran out are deleted. Until then they are already gone to
/// readers: the Admin API hides them, plugins refuse them.
/// Kong's cluster-wide log level (`/debug/cluster/log-level`): every few seconds, the level
/// the nodes sharing this store were last given, applied once per change (Kong's cluster
/// events, which its nodes poll every `db_update_frequency`, 5 s). A node takes only the
/// changes made while it runs, as Kong's.
async fn follow_cluster_log_level(
    store: Arc<gantry_store::Store>,
    log: Arc<NodeLog>,
    scope: &'static str,
    mut seen: i64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use gantry_admin::LogLevel;
    let timer = gantry_model::timers::register("cluster:log-level");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
        let mut run = timer.run();
        match store.cluster_log_level(scope).await {
            Ok(Some((seq, level, until))) if seq > seen => {
                seen = seq;
                let now = gantry_model::unix_now();
                if until != 0 && until <= now {
                    continue;
                }
                let timeout =
                    (until != 0).then(|| std::time::Duration::from_secs((until - now) as u64));
                if log.get() != level {
                    log.clone().set(&level, timeout);
                }
            }
            Ok(_) => {}
            Err(e) => run.failed(format!("cannot read the cluster's log level: {e}")),
        }
    }
}

const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Delete what has run out, in the default control plane and in every hosted one.
async fn sweep(
    state: Arc<AdminState>,
    hosted: Arc<std::sync::OnceLock<std::sync::Weak<gantry_cp::ControlPlane>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let timer = gantry_model::timers::register("ttl:sweep");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.changed() => return,
        }
        let _run = timer.run();
        let mut stores = vec![state.store.clone()];
        if let Some(cp) = hosted.get().and_then(std::sync::Weak::upgrade) {
            stores.extend(
                cp.hosted()
                    .into_iter()
                    .filter(|k| *k != gantry_store::DEFAULT_CP)
                    .filter_map(|k| cp.tenant_store(k)),
            );
        }
        for store in stores {
            match store.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(entities = n, "deleted entities whose ttl ran out");
                    if store.cp() == gantry_store::DEFAULT_CP {
                        if let Ok(v) = store.version().await {
                            state.notify(v);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete entities whose ttl ran out"),
            }
        }
    }
}

/// Write `<prefix>/pids/gantry.pid`; returns its path.
pub fn write_pid(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    let pid_file = pid_path(settings);
    if let Some(dir) = pid_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let listening = settings.prefixed("pids").join("listening");
    let mut l = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::write(&listening, &l.1)?;
    l.0 = Some(listening);
    Ok(pid_file)
}

/// `<prefix>/pids/gantry.pid`
fn pid_path(settings: &Settings) -> std::path::PathBuf {
    settings.prefixed("pids").join("gantry.pid")
}

/// Bind `proxy_listen` and `status_listen` and serve them with `proxy` until shutdown.
pub async fn serve_proxy(
    settings: &Settings,
    proxy: &Arc<gantry_proxy::Proxy>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = serve_proxy_listeners(settings, proxy, shutdown).await?;
    tasks.extend(serve_status(settings, proxy, shutdown).await?);
    Ok(tasks)
}

/// Bind `proxy_listen` and serve it with `proxy` until shutdown. With `worker_threads = N`,
/// each of N workers has its own socket of every listener (`SO_REUSEPORT`: the kernel spreads
/// connections across them) and its own accept loop, as nginx's workers do: worker 0 is the
/// node's runtime, each other one a thread with a current-thread runtime of its own. A
/// connection stays on the worker that accepted it, with that worker's upstream connections,
/// so no request is handed between threads.
pub async fn serve_proxy_listeners(
    settings: &Settings,
    proxy: &Arc<gantry_proxy::Proxy>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let workers = settings.worker_threads.max(1);
    let mut tasks = Vec::new();
    let mut acceptor = None;
    let mut others: Vec<Vec<_>> = (1..workers).map(|_| Vec::new()).collect();
    for l in &settings.proxy_listen {
        let tls = if l.ssl {
            if acceptor.is_none() {
                acceptor = Some(
                    proxy
                        .tls_acceptor()
                        .map_err(|e| anyhow::anyhow!("TLS set-up failed: {e}"))?,
                );
            }
            acceptor.clone()
        } else {
            None
        };
        let scheme = if l.ssl { "https" } else { "http" };
        let mut shared = l.clone();
        shared.reuseport |= workers > 1;
        let tcp = listen(&shared, "proxy_listen", "proxy", Some(scheme)).await?;
        // The other workers' sockets, on the port the first one got.
        shared.addr = tcp.local_addr()?.to_string();
        for w in others.iter_mut() {
            let sock = bind(&shared, "proxy_listen").await?.into_std()?;
            w.push((sock, tls.clone(), l.proxy_protocol));
        }
        tasks.push(tokio::spawn(proxy.clone().serve(
            tcp,
            tls,
            l.proxy_protocol,
            shutdown.clone(),
        )));
    }
    for (i, sockets) in others.into_iter().enumerate() {
        if sockets.is_empty() {
            continue;
        }
        let worker = i + 1;
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("gantry-worker-{worker}"))
            .spawn(move || {
                gantry_proxy::pool::set_worker(worker);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker, error = %e, "a proxy worker could not start its runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut serving = Vec::new();
                    for (sock, tls, proxy_protocol) in sockets {
                        match TcpListener::from_std(sock) {
                            Ok(tcp) => serving.push(tokio::spawn(proxy.clone().serve(
                                tcp,
                                tls,
                                proxy_protocol,
                                shutdown.clone(),
                            ))),
                            Err(e) => {
                                tracing::error!(worker, error = %e, "a proxy worker could not use its listener")
                            }
                        }
                    }
                    for s in serving {
                        let _ = s.await;
                    }
                });
                let _ = done.send(());
            })
            .context("cannot start a proxy worker thread")?;
        tasks.push(tokio::spawn(async move {
            let _ = finished.await;
        }));
    }
    Ok(tasks)
}

/// Bind `status_listen` and serve it until shutdown.
pub async fn serve_status(
    settings: &Settings,
    proxy: &Arc<gantry_proxy::Proxy>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for l in &settings.status_listen {
        let tcp = listen(l, "status_listen", "status", Some("http")).await?;
        tasks.push(tokio::spawn(gantry_proxy::status::serve(
            proxy.clone(),
            tcp,
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

/// `gantry health`: the node under the prefix runs and its Admin API answers.
pub fn health(opts: &NodeOpts) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    let pid_file = settings.prefixed("pids/gantry.pid");
    let pid = std::fs::read_to_string(&pid_file).with_context(|| {
        format!(
            "gantry is not running under {} (no {})",
            settings.prefix.display(),
            pid_file.display()
        )
    })?;
    let pid = pid.trim();
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!(
            "gantry is not running: pid {pid} from {} is gone",
            pid_file.display()
        );
    }
    // A pid is not health: the node must answer over HTTP. A proxying node's status listener
    // says whether it serves (`/status/ready`: it has a configuration); else the Admin API's
    // (or a control plane's status listener's) `/status` whether its database answers.
    let proxies = settings.role != Role::ControlPlane;
    let listening =
        std::fs::read_to_string(settings.prefixed("pids").join("listening")).unwrap_or_default();
    let find = |setting: &str| {
        listening.lines().find_map(|line| {
            let mut w = line.split(' ');
            (w.next() == Some(setting)).then(|| {
                (
                    w.next().unwrap_or_default().to_string(),
                    w.next() == Some("true"),
                )
            })
        })
    };
    let ((addr, ssl), path) = match (find("status_listen"), find("admin_listen")) {
        (Some(l), _) if proxies => (l, "/status/ready"),
        (Some(l), _) => (l, "/status"),
        (None, Some(l)) => (l, "/status"),
        (None, None) => bail!(
            "gantry runs (pid {pid}) but listens for neither status_listen nor admin_listen: nothing to ask"
        ),
    };
    let addr = dial_addr(&addr);
    let status = http_status(&addr, path, ssl).with_context(|| {
        format!("gantry runs (pid {pid}) but http://{addr}{path} does not answer")
    })?;
    if status != 200 {
        bail!("gantry runs (pid {pid}) but http://{addr}{path} answers {status}");
    }
    println!(
        "gantry is healthy at {} (pid {pid}; {path} answers 200)",
        settings.prefix.display()
    );
    Ok(())
}

/// Where a local client reaches a listener: loopback for an any-address one.
fn dial_addr(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "*" | "", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    }
}

/// The status code of `GET path` on `addr` (plain HTTP/1.1, 3 s at most).
fn http_status(addr: &str, path: &str, tls: bool) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    if tls {
        bail!("its listener {addr} takes TLS only; give gantry health a plain status_listen");
    }
    let timeout = std::time::Duration::from_secs(3);
    let sock = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|c| c.trim().parse().ok())
        .with_context(|| format!("{addr} answered something other than HTTP: {line:?}"))
}
