//! Node settings, kong.conf compatible.
//!
//! Sources, later wins: built-in defaults, the conf file (`key = value` lines, `#` comments),
//! `KONG_<KEY>` then `GANTRY_<KEY>` environment variables, then command-line overrides.
//! An unknown key is a warning; a bad value is an error that names the key.
//!
//! These are settings that need a restart; configuration that changes live (entities) is
//! the model's business, never this crate's.

pub mod cluster;
mod listen;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use cluster::{ClusterSettings, ForwardProxy, Mtls};
pub use listen::{Keepalive, Listen};
pub use table::{key, parse_duration, parse_size, KEYS, SECRET_KEYS};

/// A setting that could not be read; every variant names the key or the line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfError {
    #[error("cannot read configuration file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: expected 'key = value', found '{text}'")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
    #[error("invalid value for '{key}': {reason} (got '{value}')")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Why a value is not what its setting takes (the key is named by [`ConfError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<String> for InvalidValue {
    fn from(s: String) -> InvalidValue {
        InvalidValue(s)
    }
}

impl From<&str> for InvalidValue {
    fn from(s: &str) -> InvalidValue {
        InvalidValue(s.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Traditional,
    ControlPlane,
    DataPlane,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
    Off,
}

/// PostgreSQL connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// A schema to use instead of `public` (created when missing).
    pub schema: Option<String>,
    pub timeout_ms: u64,
}

/// The effective settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    pub database: Database,
    pub prefix: PathBuf,
    pub proxy_listen: Vec<Listen>,
    pub admin_listen: Vec<Listen>,
    pub admin_gui_listen: Vec<Listen>,
    /// The browser origins (`scheme://host[:port]`, comma-separated) that may change the
    /// gateway through the Admin API: the console's. Other origins are refused.
    pub admin_gui_origin: Vec<String>,
    pub status_listen: Vec<Listen>,
    pub cluster_listen: Vec<Listen>,
    pub cluster_telemetry_listen: Vec<Listen>,
    /// Gantry's own: the domain under which each control plane's endpoints are named
    /// (`https://<id prefix>.cp.<domain>`, `https://<id prefix>.tp.<domain>`), as Konnect names
    /// them; empty: every control plane shows this node's host name.
    pub cluster_endpoint_domain: Option<String>,
    pub pg: PgSettings,
    pub log_level: String,
    pub declarative_config: Option<PathBuf>,
    pub worker_threads: usize,
    /// Largest Admin API request body, in bytes.
    pub admin_body_max: usize,
    /// How long a client may take to send a request head to the proxy.
    pub client_header_timeout: std::time::Duration,
    /// How long a stopping node lets requests in flight finish before it exits regardless.
    pub shutdown_timeout: std::time::Duration,
    /// Hybrid mode: certificates, control planes, labels, forward proxy.
    pub cluster: ClusterSettings,
    /// Every key with its effective value, for display and for settings later crates read.
    pub values: BTreeMap<String, String>,
}

/// Where settings come from, apart from the defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// Environment variables (all of them; only `KONG_*` and `GANTRY_*` are read).
    pub env: Vec<(String, String)>,
    /// Command-line overrides, e.g. `-p PREFIX`.
    pub overrides: Vec<(String, String)>,
}

/// The settings and the warnings met while reading them.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

impl Settings {
    /// Read and check settings from every source.
    pub fn load(src: &Sources) -> Result<Loaded, ConfError> {
        let mut values: BTreeMap<String, String> = KEYS
            .iter()
            .map(|k| (k.name.to_string(), k.default.to_string()))
            .collect();
        let mut warnings = Vec::new();
        let mut set = |key: &str, value: &str, origin: &str, warnings: &mut Vec<String>| {
            let key = key.trim().to_ascii_lowercase();
            let key = table::canonical_name(&key);
            if table::key(key).is_some() {
                values.insert(key.to_string(), value.trim().to_string());
            } else {
                warnings.push(format!("unknown setting '{key}' in {origin}, ignored"));
            }
        };
        if let Some(path) = &src.file {
            for (k, v) in parse_file(path)? {
                set(&k, &v, &path.display().to_string(), &mut warnings);
            }
        }
        for prefix in ["KONG_", "GANTRY_"] {
            for (k, v) in &src.env {
                if let Some(name) = k.strip_prefix(prefix) {
                    // Variables of the tooling around us, not settings.
                    if name.is_empty()
                        || matches!(
                            name,
                            "ADMIN_URL"
                                | "URL"
                                | "ADMIN_SSL"
                                | "LOG"
                                | "QUICKSTART_HOST"
                                | "VERSIONS_DIR"
                        )
                    {
                        continue;
                    }
                    set(name, v, &format!("environment variable {k}"), &mut warnings);
                }
            }
        }
        for (k, v) in &src.overrides {
            set(k, v, "the command line", &mut warnings);
        }
        for k in KEYS.iter() {
            let v = &values[k.name];
            k.kind.check(v).map_err(|reason| ConfError::Invalid {
                key: k.name.to_string(),
                value: v.clone(),
                reason: reason.0,
            })?;
        }
        let settings = Settings::from_values(values)?;
        Ok(Loaded { settings, warnings })
    }

    fn from_values(values: BTreeMap<String, String>) -> Result<Settings, ConfError> {
        let get = |k: &str| values.get(k).cloned().unwrap_or_default();
        let listen = |k: &str| {
            let refuse = |reason: String| ConfError::Invalid {
                key: k.to_string(),
                value: get(k),
                reason,
            };
            let all = Listen::parse_list(&get(k)).map_err(|r| refuse(r.0))?;
            for l in &all {
                // Flags Gantry cannot honour are refused, never ignored.
                if l.proxy_protocol && k != "proxy_listen" {
                    return Err(refuse(format!(
                        "'{}': proxy_protocol (the PROXY protocol) is taken on proxy_listen only",
                        l.addr
                    )));
                }
                if l.ssl && k == "status_listen" {
                    return Err(refuse(format!(
                        "'{}': TLS on status_listen is not supported; serve it on loopback, or behind a TLS proxy",
                        l.addr
                    )));
                }
            }
            Ok(all)
        };
        let opt = |k: &str| {
            let v = get(k);
            (!v.is_empty()).then_some(v)
        };
        let role = match get("role").as_str() {
            "control_plane" => Role::ControlPlane,
            "data_plane" => Role::DataPlane,
            _ => Role::Traditional,
        };
        let database = match get("database").as_str() {
            "postgres" => Database::Postgres,
            "off" => Database::Off,
            _ => Database::Sqlite,
        };
        let invalid = |key: &str, reason: &str| ConfError::Invalid {
            key: key.into(),
            value: get(key),
            reason: reason.into(),
        };
        if role == Role::DataPlane && database != Database::Off {
            return Err(invalid(
                "database",
                "a data plane has no database: set database = off",
            ));
        }
        if role == Role::ControlPlane && database == Database::Off {
            return Err(invalid(
                "database",
                "a control plane needs a database (sqlite or postgres)",
            ));
        }
        let cluster = cluster::from_values(&get, role)?;
        let worker_threads = match get("worker_threads").as_str() {
            "auto" => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n.parse().unwrap_or(1),
        };
        Ok(Settings {
            role,
            database,
            prefix: PathBuf::from(get("prefix")),
            proxy_listen: listen("proxy_listen")?,
            admin_listen: listen("admin_listen")?,
            admin_gui_listen: listen("admin_gui_listen")?,
            admin_gui_origin: get("admin_gui_origin")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            status_listen: listen("status_listen")?,
            cluster_listen: listen("cluster_listen")?,
            cluster_telemetry_listen: listen("cluster_telemetry_listen")?,
            cluster_endpoint_domain: Some(
                get("cluster_endpoint_domain").trim().to_ascii_lowercase(),
            )
            .filter(|d| !d.is_empty()),
            pg: PgSettings {
                host: get("pg_host"),
                port: get("pg_port").parse().unwrap_or(5432),
                user: get("pg_user"),
                password: opt("pg_password"),
                database: get("pg_database"),
                schema: opt("pg_schema"),
                timeout_ms: get("pg_timeout").parse().unwrap_or(5000),
            },
            log_level: get("log_level"),
            declarative_config: opt("declarative_config").map(PathBuf::from),
            worker_threads,
            admin_body_max: table::parse_size(&get("nginx_admin_client_max_body_size"))
                .unwrap_or(10 << 20),
            client_header_timeout: table::parse_duration(&get("nginx_http_client_header_timeout"))
                .unwrap_or(std::time::Duration::from_secs(60)),
            shutdown_timeout: table::parse_duration(&get("nginx_main_worker_shutdown_timeout"))
                .unwrap_or(std::time::Duration::from_secs(30)),
            cluster,
            values,
        })
    }

    /// Every setting with secrets masked, for `GET /` and logs.
    pub fn masked(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| {
                let v = if SECRET_KEYS.contains(&k.as_str()) && !v.is_empty() {
                    "******".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// The value of a setting by name.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A path under the prefix.
    pub fn prefixed(&self, rel: &str) -> PathBuf {
        self.prefix.join(rel)
    }
}

/// Parse a kong.conf-style file into `(key, value)` pairs, keeping order.
pub fn parse_file(path: &Path) -> Result<Vec<(String, String)>, ConfError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_text(&text, &path.display().to_string())
}

/// Parse kong.conf text. `#` starts a comment unless escaped as `\#`.
pub fn parse_text(text: &str, origin: &str) -> Result<Vec<(String, String)>, ConfError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut line = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'#') => {
                    line.push('#');
                    chars.next();
                }
                '#' => break,
                c => line.push(c),
            }
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfError::Syntax {
                path: origin.to_string(),
                line: i + 1,
                text: raw.trim().to_string(),
            });
        };
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfError> {
        let dir = std::env::temp_dir().join(format!("gantry-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{}.conf", file.len()));
        std::fs::write(&p, file).unwrap();
        Settings::load(&Sources {
            file: Some(p),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            overrides: vec![],
        })
    }

    #[test]
    fn defaults_file_env_order() {
        let l = load(
            "admin_listen = 127.0.0.1:9001 # comment\nlog_level = debug\nbogus = 1\n",
            &[("KONG_LOG_LEVEL", "warn"), ("GANTRY_LOG_LEVEL", "error")],
        )
        .unwrap();
        let s = l.settings;
        assert_eq!(s.role, Role::Traditional);
        assert_eq!(s.database, Database::Sqlite);
        assert_eq!(s.admin_listen[0].addr, "127.0.0.1:9001");
        assert_eq!(s.log_level, "error");
        assert_eq!(s.proxy_listen.len(), 2);
        assert!(s.proxy_listen[1].ssl);
        assert!(l.warnings.iter().any(|w| w.contains("'bogus'")));
        assert_eq!(s.admin_body_max, 10 << 20);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("role = boss\n", &[]).unwrap_err();
        assert!(e.to_string().contains("'role'"), "{e}");
        let e = load("pg_port = 99999\n", &[]).unwrap_err();
        assert!(e.to_string().contains("'pg_port'"), "{e}");
        let e = load("admin_listen = nowhere\n", &[]).unwrap_err();
        assert!(e.to_string().contains("'admin_listen'"), "{e}");
        let e = load("role = data_plane\n", &[]).unwrap_err();
        assert!(e.to_string().contains("'database'"), "{e}");
        let e = load("just words\n", &[]).unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");
    }

    #[test]
    fn aliases_and_masking() {
        let l = load("nginx_worker_processes = 3\npg_password = hunter2\n", &[]).unwrap();
        assert_eq!(l.settings.worker_threads, 3);
        assert_eq!(l.settings.masked()["pg_password"], "******");
    }
}
