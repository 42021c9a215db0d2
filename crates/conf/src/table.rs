//! Every known setting with its default and the check of its value.

/// How a setting's value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    OneOf(&'static [&'static str]),
    Bool,
    Port,
    /// A non-negative integer with a minimum.
    Int(u64),
    Listen,
    /// `10m`, `512k`, `1024`.
    Size,
    /// A positive integer or `auto`.
    Threads,
    /// nginx time: `60s`, `500ms`, `2m`, or seconds.
    Duration,
}

impl Kind {
    pub fn check(self, v: &str) -> Result<(), crate::InvalidValue> {
        match self {
            Kind::Str => Ok(()),
            Kind::OneOf(set) => {
                if set.contains(&v) {
                    Ok(())
                } else {
                    Err(crate::InvalidValue(format!(
                        "expected one of: {}",
                        set.join(", ")
                    )))
                }
            }
            Kind::Bool => match v {
                "on" | "off" | "true" | "false" => Ok(()),
                _ => Err("expected on or off".into()),
            },
            Kind::Port => match v.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(()),
                _ => Err("expected a port number between 1 and 65535".into()),
            },
            Kind::Int(min) => match v.parse::<u64>() {
                Ok(n) if n >= min => Ok(()),
                _ => Err(crate::InvalidValue(format!(
                    "expected an integer of at least {min}"
                ))),
            },
            Kind::Listen => super::Listen::parse_list(v).map(|_| ()),
            Kind::Size => parse_size(v)
                .map(|_| ())
                .ok_or_else(|| "expected a size such as 10m, 512k or 1024".into()),
            Kind::Duration => parse_duration(v)
                .map(|_| ())
                .ok_or_else(|| "expected a duration such as 60s, 500ms or 2m".into()),
            Kind::Threads => match v {
                "auto" => Ok(()),
                n => match n.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(()),
                    _ => Err("expected a positive integer or auto".into()),
                },
            },
        }
    }
}

/// A size in bytes from nginx notation.
pub fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (&v[..], 1),
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

/// A duration in nginx notation (`ms`, `s`, `m`, `h`; a bare number is seconds).
pub fn parse_duration(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    let (num, unit_ms) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (v, 1000)
    };
    let n: u64 = num.trim().parse().ok()?;
    (n > 0).then(|| std::time::Duration::from_millis(n * unit_ms))
}

pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: Kind,
}

const fn k(name: &'static str, default: &'static str, kind: Kind) -> Key {
    Key {
        name,
        default,
        kind,
    }
}

/// Settings whose values are never shown.
pub const SECRET_KEYS: &[&str] = &[
    "pg_password",
    "cluster_cert_key",
    "proxy_server",
    "admin_ssl_cert_key",
    "admin_gui_ssl_cert_key",
];

pub static KEYS: &[Key] = &[
    k(
        "role",
        "traditional",
        Kind::OneOf(&["traditional", "control_plane", "data_plane"]),
    ),
    k(
        "database",
        "sqlite",
        Kind::OneOf(&["sqlite", "postgres", "off"]),
    ),
    k("prefix", "/usr/local/gantry", Kind::Str),
    k(
        "proxy_listen",
        "0.0.0.0:8000, 0.0.0.0:8443 ssl",
        Kind::Listen,
    ),
    k("admin_listen", "127.0.0.1:8001", Kind::Listen),
    k("admin_gui_listen", "0.0.0.0:8002", Kind::Listen),
    k("admin_gui_origin", "", Kind::Str),
    k("admin_gui_ssl_cert", "", Kind::Str),
    k("admin_gui_ssl_cert_key", "", Kind::Str),
    // Kong's: the Admin API's certificate and key on `ssl` admin_listen entries (a path or
    // PEM); none: a generated self-signed certificate.
    k("admin_ssl_cert", "", Kind::Str),
    k("admin_ssl_cert_key", "", Kind::Str),
    k("status_listen", "127.0.0.1:8007", Kind::Listen),
    k("cluster_listen", "0.0.0.0:8005", Kind::Listen),
    k("cluster_telemetry_listen", "0.0.0.0:8006", Kind::Listen),
    k("pg_host", "127.0.0.1", Kind::Str),
    k("pg_port", "5432", Kind::Port),
    k("pg_user", "kong", Kind::Str),
    k("pg_password", "", Kind::Str),
    k("pg_database", "kong", Kind::Str),
    k("pg_schema", "", Kind::Str),
    k("pg_timeout", "5000", Kind::Int(1)),
    k(
        "log_level",
        "notice",
        Kind::OneOf(&[
            "debug", "info", "notice", "warn", "error", "crit", "alert", "emerg",
        ]),
    ),
    k("declarative_config", "", Kind::Str),
    k("worker_threads", "auto", Kind::Threads),
    k("nginx_admin_client_max_body_size", "10m", Kind::Size),
    // The size of Kong's `kong_db_cache` shared dict: here, proxy-cache's memory strategy.
    k("mem_cache_size", "128m", Kind::Size),
    k("nginx_http_client_header_timeout", "60s", Kind::Duration),
    // nginx's worker_shutdown_timeout: once a node is told to stop, requests in flight have this
    // long to finish; then the node exits whatever is still running.
    k("nginx_main_worker_shutdown_timeout", "30s", Kind::Duration),
    k("cluster_mtls", "shared", Kind::OneOf(&["shared", "pki"])),
    k("cluster_control_plane", "", Kind::Str),
    k("cluster_server_name", "", Kind::Str),
    // Gantry's own: the domain of each control plane's endpoints (`<id>.cp.<domain>`).
    k("cluster_endpoint_domain", "", Kind::Str),
    k("cluster_telemetry_endpoint", "", Kind::Str),
    k("cluster_telemetry_server_name", "", Kind::Str),
    k("cluster_cert", "", Kind::Str),
    k("cluster_cert_key", "", Kind::Str),
    k("cluster_ca_cert", "", Kind::Str),
    k("lua_ssl_trusted_certificate", "", Kind::Str),
    k("konnect_mode", "off", Kind::Bool),
    k("vitals", "off", Kind::Bool),
    k("cluster_dp_labels", "", Kind::Str),
    k("cluster_use_proxy", "off", Kind::Bool),
    k("proxy_server", "", Kind::Str),
    k("proxy_server_ssl_verify", "on", Kind::Bool),
    k("cluster_data_plane_purge_delay", "1209600", Kind::Int(60)),
    k("cluster_max_payload", "16777216", Kind::Int(4_194_304)),
    k("proxy_access_log", "logs/access.log", Kind::Str),
    k("dns_resolver", "", Kind::Str),
    k(
        "headers",
        "server_tokens, latency_tokens, X-Kong-Request-Id",
        Kind::Str,
    ),
    k("headers_upstream", "X-Kong-Request-Id", Kind::Str),
    k("trusted_ips", "", Kind::Str),
    k("real_ip_header", "X-Real-IP", Kind::Str),
    k("real_ip_recursive", "off", Kind::Bool),
    k("upstream_keepalive_pool_size", "60", Kind::Int(0)),
    k("upstream_keepalive_max_requests", "100", Kind::Int(0)),
    k("upstream_keepalive_idle_timeout", "60", Kind::Int(0)),
    // Gantry's own: `human` or `json` lines in error.log and access.log, and their rotation.
    k("log_format", "human", Kind::OneOf(&["human", "json"])),
    k("log_rotate_size", "100m", Kind::Size),
    k("log_rotate_keep", "5", Kind::Int(1)),
    k("analytics_flush_interval", "1", Kind::Int(1)),
    k("analytics_buffer_size_limit", "100000", Kind::Int(1)),
    // Gantry's own: how long a control plane keeps analytics, in seconds (7 days).
    k("analytics_retention", "604800", Kind::Int(3600)),
    // Gantry's own: how often a data plane pings its control plane.
    k("cluster_ping_interval", "30s", Kind::Duration),
    // Kong's: this node's id, a UUID (empty: generated once and kept under the prefix).
    k("node_id", "", Kind::Str),
    k("plugins", "bundled", Kind::Str),
    // Gantry's own: managed data plane groups (docs/managed-groups.md). Where installed
    // versions are (empty: beside this binary, as install.sh lays them out), the requests per
    // second autopilot counts one node to serve, and how long a load must stay low before a
    // group shrinks.
    k("managed_versions_dir", "", Kind::Str),
    k("managed_instance_rps", "2000", Kind::Int(1)),
    k("managed_scale_in_delay", "60s", Kind::Duration),
    // Gantry's own, for canary tests: the version a data plane reports to its control plane
    // (empty: its build's). One build can so stand in for two versions in a rolling upgrade.
    k("reported_version", "", Kind::Str),
    // Kong's tracing: what the request path records, and how much of it is sampled.
    k("tracing_instrumentations", "off", Kind::Str),
    k("tracing_sampling_rate", "0.01", Kind::Str),
];

/// Names Kong also accepts for a setting.
pub fn canonical_name(k: &str) -> &str {
    match k {
        "nginx_worker_processes" => "worker_threads",
        other => other,
    }
}

pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}
