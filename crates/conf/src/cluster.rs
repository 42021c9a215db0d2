//! Hybrid-mode settings: roles, cluster certificates, labels, forward proxy.

use std::time::Duration;

use crate::ConfError;

/// How control and data planes authenticate each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    /// Both sides hold the same certificate; each pins it.
    Shared,
    /// Data plane certificates are signed by `cluster_ca_cert`.
    Pki,
}

/// A forward proxy to reach the control plane through (`proxy_server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    /// `https` proxies are spoken to over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `user:password` for `Proxy-Authorization: Basic`.
    pub auth: Option<(String, String)>,
    pub verify: bool,
}

/// The settings of a node in hybrid mode.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub mtls: Mtls,
    /// Certificate and key: a path, PEM text or base64-encoded PEM; empty when unset.
    pub cert: String,
    pub cert_key: String,
    pub ca_cert: String,
    /// `lua_ssl_trusted_certificate`: a comma-separated list of PEM paths or `system`.
    pub trusted: Vec<String>,
    /// The name a data plane sends (SNI) and expects the control plane's certificate to carry.
    pub server_name: String,
    /// `host:port` of control planes, tried in turn.
    pub control_planes: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub proxy: Option<ForwardProxy>,
    pub purge_delay: Duration,
    pub max_payload: usize,
    pub ping_interval: Duration,
    /// Where a data plane sends analytics (`cluster_telemetry_endpoint`); none: not sent.
    pub telemetry_endpoint: Option<String>,
    /// Whether a data plane collects analytics: `vitals = on` or `konnect_mode = on` (Kong's
    /// meaning: on a proxying node, vitals decides whether to collect request metrics; a
    /// Konnect data plane always reports them).
    pub analytics: bool,
    /// The name a data plane expects on the telemetry endpoint (default `cluster_server_name`).
    pub telemetry_server_name: String,
    pub analytics_flush: Duration,
    /// Requests buffered at most while the telemetry endpoint is unreachable.
    pub analytics_buffer: u64,
    /// How long a control plane keeps analytics.
    pub analytics_retention: Duration,
    /// `reported_version`: the version this node reports to its peers in the cluster instead
    /// of its build's (for canary tests); none by default.
    pub reported_version: Option<String>,
}

/// Prefixes of label keys kept for the products' own use.
pub const RESERVED_LABEL_PREFIXES: &[&str] =
    &["kong", "konnect", "insomnia", "mesh", "kic", "gantry", "_"];

/// At most this many labels.
pub const MAX_LABELS: usize = 10;

fn label_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~'))
}

/// Parse `cluster_dp_labels`: `key:value,key:value`.
pub fn parse_labels(v: &str) -> Result<Vec<(String, String)>, crate::InvalidValue> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, val)) = item.split_once(':') else {
            return Err(crate::InvalidValue(format!(
                "label '{item}' is not key:value"
            )));
        };
        let (k, val) = (k.trim(), val.trim());
        if !label_part_ok(k) {
            return Err(crate::InvalidValue(format!("label key '{k}' must be 1 to 63 characters of letters, digits, '.', '-', '_' or '~', beginning and ending with a letter or digit")));
        }
        if !label_part_ok(val) {
            return Err(crate::InvalidValue(format!("label value '{val}' of '{k}' must be 1 to 63 characters of letters, digits, '.', '-', '_' or '~', beginning and ending with a letter or digit")));
        }
        let lower = k.to_ascii_lowercase();
        if let Some(p) = RESERVED_LABEL_PREFIXES
            .iter()
            .find(|p| lower.starts_with(*p))
        {
            return Err(crate::InvalidValue(format!(
                "label key '{k}' uses the reserved prefix '{p}'"
            )));
        }
        if out.iter().any(|(e, _)| e == k) {
            return Err(crate::InvalidValue(format!(
                "label key '{k}' appears twice"
            )));
        }
        out.push((k.to_string(), val.to_string()));
    }
    if out.len() > MAX_LABELS {
        return Err(crate::InvalidValue(format!(
            "{} labels given, at most {MAX_LABELS} are allowed",
            out.len()
        )));
    }
    Ok(out)
}

/// Parse `proxy_server`: `http://[user:password@]host:port` or `https://...`.
pub fn parse_proxy_server(v: &str, verify: bool) -> Result<ForwardProxy, crate::InvalidValue> {
    let (tls, rest) = if let Some(r) = v.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = v.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("expected http://[user:password@]host:port or https://...".into());
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => {
            let (u, p) = a.split_once(':').unwrap_or((a, ""));
            (Some((pct_decode(u)?, pct_decode(p)?)), h)
        }
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("invalid port '{p}' in proxy_server"))?,
        ),
        _ if !hostport.is_empty() && !hostport.contains(':') => {
            (hostport, if tls { 443 } else { 80 })
        }
        _ => return Err("proxy_server has no host".into()),
    };
    Ok(ForwardProxy {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        auth,
        verify,
    })
}

fn pct_decode(s: &str) -> Result<String, crate::InvalidValue> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid %-escape in proxy_server credentials".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy_server credentials are not UTF-8".into())
}

pub(crate) fn from_values(
    get: &dyn Fn(&str) -> String,
    role: crate::Role,
) -> Result<ClusterSettings, ConfError> {
    let invalid = |key: &str, reason: String| ConfError::Invalid {
        key: key.into(),
        value: if crate::table::SECRET_KEYS.contains(&key) {
            "******".into()
        } else {
            get(key)
        },
        reason,
    };
    let list = |k: &str| -> Vec<String> {
        get(k)
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let labels =
        parse_labels(&get("cluster_dp_labels")).map_err(|r| invalid("cluster_dp_labels", r.0))?;
    let verify = matches!(get("proxy_server_ssl_verify").as_str(), "on" | "true");
    let use_proxy = matches!(get("cluster_use_proxy").as_str(), "on" | "true");
    let proxy = if use_proxy {
        let v = get("proxy_server");
        if v.is_empty() {
            return Err(invalid(
                "proxy_server",
                "cluster_use_proxy = on needs proxy_server".into(),
            ));
        }
        Some(parse_proxy_server(&v, verify).map_err(|r| invalid("proxy_server", r.0))?)
    } else {
        None
    };
    let control_planes = list("cluster_control_plane");
    for cp in &control_planes {
        match cp.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => {
                return Err(invalid(
                    "cluster_control_plane",
                    format!("'{cp}' is not host:port"),
                ))
            }
        }
    }
    let mtls = if get("cluster_mtls") == "pki" {
        Mtls::Pki
    } else {
        Mtls::Shared
    };
    if matches!(role, crate::Role::DataPlane | crate::Role::ControlPlane) {
        for key in ["cluster_cert", "cluster_cert_key"] {
            if get(key).is_empty() {
                return Err(invalid(
                    key,
                    "hybrid mode needs a cluster certificate and key (see `gantry hybrid gen_cert`)".into(),
                ));
            }
        }
    }
    if role == crate::Role::DataPlane && control_planes.is_empty() {
        return Err(invalid(
            "cluster_control_plane",
            "a data plane needs the control plane's host:port".into(),
        ));
    }
    if role == crate::Role::ControlPlane && mtls == Mtls::Pki && get("cluster_ca_cert").is_empty() {
        return Err(invalid(
            "cluster_ca_cert",
            "cluster_mtls = pki needs the CA that signs data plane certificates".into(),
        ));
    }
    let server_name = match get("cluster_server_name") {
        s if s.is_empty() => "kong_clustering".to_string(),
        s => s,
    };
    let telemetry_endpoint = match get("cluster_telemetry_endpoint") {
        s if s.is_empty() => None,
        s => match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Some(s),
            _ => {
                return Err(invalid(
                    "cluster_telemetry_endpoint",
                    format!("'{s}' is not host:port"),
                ))
            }
        },
    };
    let telemetry_server_name = match get("cluster_telemetry_server_name") {
        s if s.is_empty() => server_name.clone(),
        s => s,
    };
    Ok(ClusterSettings {
        mtls,
        cert: get("cluster_cert"),
        cert_key: get("cluster_cert_key"),
        ca_cert: get("cluster_ca_cert"),
        trusted: list("lua_ssl_trusted_certificate"),
        server_name,
        telemetry_endpoint,
        analytics: ["vitals", "konnect_mode"]
            .iter()
            .any(|k| matches!(get(k).as_str(), "on" | "true")),
        telemetry_server_name,
        analytics_flush: Duration::from_secs(get("analytics_flush_interval").parse().unwrap_or(1)),
        analytics_buffer: get("analytics_buffer_size_limit")
            .parse()
            .unwrap_or(100_000),
        analytics_retention: Duration::from_secs(
            get("analytics_retention").parse().unwrap_or(604_800),
        ),
        reported_version: Some(get("reported_version")).filter(|v| !v.is_empty()),
        control_planes,
        labels,
        proxy,
        purge_delay: Duration::from_secs(
            get("cluster_data_plane_purge_delay")
                .parse()
                .unwrap_or(1_209_600),
        ),
        max_payload: get("cluster_max_payload").parse().unwrap_or(16 << 20),
        ping_interval: crate::table::parse_duration(&get("cluster_ping_interval"))
            .unwrap_or(Duration::from_secs(30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(
            parse_labels("region:eu-west, tier : gold").unwrap(),
            [
                ("region".to_string(), "eu-west".to_string()),
                ("tier".into(), "gold".into())
            ]
        );
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("novalue")
            .unwrap_err()
            .0
            .contains("not key:value"));
        assert!(parse_labels("kong_x:1")
            .unwrap_err()
            .0
            .contains("reserved prefix 'kong'"));
        assert!(parse_labels("_x:1").is_err());
        assert!(parse_labels("Gantry.io:1")
            .unwrap_err()
            .0
            .contains("reserved"));
        assert!(parse_labels("a:-b")
            .unwrap_err()
            .0
            .contains("label value '-b'"));
        assert!(parse_labels(&format!("{}:v", "k".repeat(64)))
            .unwrap_err()
            .0
            .contains("1 to 63"));
        assert!(parse_labels("a:1,a:2").unwrap_err().0.contains("twice"));
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}:v")).collect();
        assert!(parse_labels(&eleven.join(","))
            .unwrap_err()
            .0
            .contains("at most 10"));
    }

    #[test]
    fn proxy_server() {
        let p = parse_proxy_server("http://us%40er:p%3Ass@127.0.0.1:3128", true).unwrap();
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 3128);
        assert_eq!(p.auth, Some(("us@er".into(), "p:ss".into())));
        assert!(!p.tls);
        let p = parse_proxy_server("https://proxy.internal", false).unwrap();
        assert_eq!((p.tls, p.port, p.verify), (true, 443, false));
        assert!(parse_proxy_server("socks5://x:1", true).is_err());
        assert!(parse_proxy_server("http://x:notaport", true).is_err());
    }
}
