//! Real `gantry` processes on ephemeral ports, killed when dropped, and what tests ask of them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::PgSchema;

/// The `gantry` binary under test: `GANTRY_BIN`, or the one Cargo built beside the test
/// (a test binary runs from `target/<profile>/deps/`, the binary is in `target/<profile>/`).
pub fn bin() -> PathBuf {
    if let Some(b) = std::env::var_os("GANTRY_BIN") {
        return PathBuf::from(b);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary under target/<profile>/deps");
    let bin = profile.join("gantry");
    assert!(
        bin.exists(),
        "no gantry binary at {} (run the tests of the gantry package, or set GANTRY_BIN)",
        bin.display()
    );
    bin
}

/// A `gantry` command with no inherited Kong or Gantry settings.
pub fn cmd(env: &[(String, String)]) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("KONG_") || k.starts_with("GANTRY_") {
            c.env_remove(k);
        }
    }
    // Never Kong's default console port (0.0.0.0:8002), which parallel tests would share.
    if !env.iter().any(|(k, _)| k == "KONG_ADMIN_GUI_LISTEN") {
        c.env("KONG_ADMIN_GUI_LISTEN", "127.0.0.1:0");
    }
    c.envs(env.iter().map(|(a, b)| (a.clone(), b.clone())));
    c
}

/// The environment for a store backend: SQLite under the prefix, or a PostgreSQL schema.
pub fn db_env(pg: Option<&PgSchema>) -> Vec<(String, String)> {
    match pg {
        None => vec![],
        Some(pg) => {
            let s = &pg.settings;
            vec![
                ("KONG_DATABASE".into(), "postgres".into()),
                ("KONG_PG_HOST".into(), s.host.clone()),
                ("KONG_PG_PORT".into(), s.port.to_string()),
                ("KONG_PG_USER".into(), s.user.clone()),
                ("KONG_PG_DATABASE".into(), s.database.clone()),
                (
                    "KONG_PG_SCHEMA".into(),
                    s.schema.clone().unwrap_or_default(),
                ),
            ]
        }
    }
}

pub struct Node {
    pub child: Child,
    /// The Admin API ("" on a data plane, which has none).
    pub admin: String,
    /// The cluster listener's `host:port`, on a control plane.
    pub cluster: Option<String>,
    /// The telemetry listener's `host:port`, on a control plane.
    pub telemetry: Option<String>,
    /// The console's URL (`admin_gui_listen`), on a node with an Admin API.
    pub console: Option<String>,
    /// The plain-HTTP proxy listener, when the node proxies.
    pub proxy: Option<String>,
    /// The status listener, when the node proxies.
    pub status: Option<String>,
    /// The TLS proxy listener, when one is configured.
    pub proxy_tls: Option<String>,
    pub prefix: PathBuf,
    early: std::sync::Mutex<Vec<String>>,
    lines: mpsc::Receiver<String>,
}

impl Node {
    /// `gantry start -p PREFIX` with every listener on 127.0.0.1:0 unless `env` says otherwise;
    /// waits until the listeners of its role listen.
    pub fn start(prefix: &Path, env: &[(String, String)]) -> Node {
        let mut env = env.to_vec();
        let role = env
            .iter()
            .find(|(k, _)| k == "KONG_ROLE")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "traditional".into());
        if !env.iter().any(|(k, _)| k == "KONG_ADMIN_LISTEN") {
            env.push(("KONG_ADMIN_LISTEN".into(), "127.0.0.1:0".into()));
        }
        for k in ["KONG_CLUSTER_LISTEN", "KONG_CLUSTER_TELEMETRY_LISTEN"] {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.into(), "127.0.0.1:0".into()));
            }
        }
        if !env.iter().any(|(k, _)| k == "KONG_STATUS_LISTEN") {
            env.push(("KONG_STATUS_LISTEN".into(), "127.0.0.1:0".into()));
        }
        if !env.iter().any(|(k, _)| k == "KONG_PROXY_LISTEN") {
            env.push(("KONG_PROXY_LISTEN".into(), "127.0.0.1:0".into()));
        }
        // A data plane opens its proxy port only once it has a configuration: see
        // `Node::dp_proxy`.
        let proxies = env
            .iter()
            .any(|(k, v)| k == "KONG_PROXY_LISTEN" && v != "off")
            && role == "traditional";
        let needs_status = role != "traditional"
            && env
                .iter()
                .any(|(k, v)| k == "KONG_STATUS_LISTEN" && v != "off");
        let needs_admin = role != "data_plane";
        // `cmd` puts the console on 127.0.0.1:0 unless `env` says otherwise.
        let needs_console = needs_admin
            && !env
                .iter()
                .any(|(k, v)| k == "KONG_ADMIN_GUI_LISTEN" && v == "off");
        let needs_cluster = role == "control_plane";
        let mut child = cmd(&env)
            .args(["start", "-p"])
            .arg(prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gantry");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let (mut admin, mut proxy, mut status): (Option<String>, Option<String>, Option<String>) =
            (None, None, None);
        let mut cluster: Option<String> = None;
        let mut telemetry: Option<String> = None;
        let mut console: Option<String> = None;
        let mut proxy_tls: Option<String> = None;
        let wants_tls = env
            .iter()
            .any(|(k, v)| k == "KONG_PROXY_LISTEN" && v.contains("ssl"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let admin = loop {
            let all = proxy.is_some() && status.is_some() && (proxy_tls.is_some() || !wants_tls);
            if (admin.is_some() || !needs_admin)
                && (console.is_some() || !needs_console)
                && (all || !proxies)
                && (cluster.is_some() || !needs_cluster)
                && (telemetry.is_some() || !needs_cluster)
                && (status.is_some() || !needs_status)
            {
                break admin.clone().unwrap_or_default();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("gantry: admin API listening on ") {
                        admin = Some(url.trim().to_string());
                    }
                    if let Some(url) = line.strip_prefix("gantry: proxy listening on ") {
                        let url = url.trim().to_string();
                        if url.starts_with("https://") {
                            proxy_tls = Some(url);
                        } else {
                            proxy = Some(url);
                        }
                    }
                    if let Some(url) = line.strip_prefix("gantry: console listening on ") {
                        console = Some(url.trim().to_string());
                    }
                    if let Some(a) = line.strip_prefix("gantry: cluster listening on ") {
                        cluster = Some(a.trim().to_string());
                    }
                    if let Some(a) = line.strip_prefix("gantry: telemetry listening on ") {
                        telemetry = Some(a.trim().to_string());
                    }
                    if let Some(url) = line.strip_prefix("gantry: status listening on ") {
                        status = Some(url.trim().to_string());
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("gantry did not start; it said:\n{}", seen.join("\n"));
                }
            }
        };
        Node {
            child,
            admin,
            cluster,
            telemetry,
            console,
            proxy,
            status,
            proxy_tls,
            prefix: prefix.to_path_buf(),
            early: std::sync::Mutex::new(seen),
            lines: rx,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gantry did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn output(&self) -> Vec<String> {
        let mut all = self.early.lock().unwrap();
        all.extend(self.lines.try_iter());
        all.clone()
    }

    /// A data plane's proxy URL, once it listens (it does once it has a configuration).
    pub fn dp_proxy(&self) -> String {
        let line = self.wait_log(
            "gantry: proxy listening on http://",
            Duration::from_secs(30),
        );
        line.trim_start_matches("gantry: proxy listening on ")
            .trim()
            .to_string()
    }

    /// Wait until a line of stderr contains `needle`; panics with the output after `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(l) = self.output().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with '{needle}' within {within:?}; the node said:\n{}",
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each backend to run a process test on: `None` for SQLite, a schema for PostgreSQL where it runs.
pub async fn backends() -> Vec<Option<PgSchema>> {
    let mut v = vec![None];
    if let Some(pg) = PgSchema::create().await {
        v.push(Some(pg));
    }
    v
}

/// Run `c` to its end; it must succeed (else the test fails with its stderr).
pub fn succeed(c: &mut Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `c` with `input` on its standard input, to its end: its output (stdout and stderr piped).
pub fn feed(c: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// `gantry tokens create --name NAME ARGS... -p PREFIX`: the token it printed.
pub fn token(prefix: &Path, env: &[(String, String)], name: &str, args: &[&str]) -> String {
    let out = succeed(
        cmd(env)
            .args(["tokens", "create", "--name", name])
            .args(args)
            .arg("-p")
            .arg(prefix),
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("kpat_") || token.starts_with("spat_"),
        "{token}"
    );
    token
}

/// `(key, value)` pairs as an environment.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A cluster certificate and key from `gantry hybrid gen_cert`, under `dir` as `NAME.crt` and
/// `NAME.key`; returns their paths.
pub fn gen_cert(dir: &Path, name: &str) -> (String, String) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    succeed(cmd(&[]).args(["hybrid", "gen_cert"]).arg(&c).arg(&k));
    (c.display().to_string(), k.display().to_string())
}

/// A control plane's environment with the cluster certificate `cert`, and `extra`.
pub fn cp_env(cert: &(String, String), extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env(&[
        ("KONG_ROLE", "control_plane"),
        ("KONG_CLUSTER_CERT", &cert.0),
        ("KONG_CLUSTER_CERT_KEY", &cert.1),
    ]);
    e.extend(env(extra));
    e
}

/// A data plane's environment, of control plane `cp` and certificate `cert`, and `extra`.
pub fn dp_env(cp: &str, cert: &(String, String), extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env(&[
        ("KONG_ROLE", "data_plane"),
        ("KONG_DATABASE", "off"),
        ("KONG_CLUSTER_CONTROL_PLANE", cp),
        ("KONG_CLUSTER_CERT", &cert.0),
        ("KONG_CLUSTER_CERT_KEY", &cert.1),
    ]);
    e.extend(env(extra));
    e
}

/// An Admin API call on `node` that must succeed; returns the body.
pub async fn admin(
    http: &reqwest::Client,
    node: &Node,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    crate::http::call_ok(http, method, &format!("{}{path}", node.admin), body).await
}

/// A POST to `node`'s Admin API that must be refused with 400; returns Kong's error body.
pub async fn refused(
    http: &reqwest::Client,
    node: &Node,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let r = http
        .post(format!("{}{path}", node.admin))
        .json(body)
        .send()
        .await
        .expect("the Admin API answers");
    assert_eq!(r.status(), 400, "POST {path} {body}");
    r.json().await.expect("a JSON error body")
}

/// Wait until `node`'s proxy runs the configuration its Admin API holds (the same hash on the
/// status listener as on the Admin API).
pub async fn synced(http: &reqwest::Client, node: &Node) {
    use std::time::{Duration, Instant};
    let status = node.status.clone().expect("a node with a status listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let want = admin(http, node, "GET", "/status", serde_json::json!({})).await
            ["configuration_hash"]
            .clone();
        let (_, got) = crate::http::get_json(http, &format!("{status}/status")).await;
        if got["configuration_hash"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never caught up with the Admin API"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the control plane `cp` sees `count` connected data planes, each running the
/// configuration its Admin API holds (the hash a data plane reports equals the control
/// plane's).
pub async fn dps_synced(http: &reqwest::Client, cp: &Node, count: usize) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let want = admin(http, cp, "GET", "/status", serde_json::json!({})).await
            ["configuration_hash"]
            .clone();
        let nodes = admin(
            http,
            cp,
            "GET",
            "/clustering/data-planes",
            serde_json::json!({}),
        )
        .await;
        let nodes = nodes["data"].as_array().cloned().unwrap_or_default();
        if nodes.len() == count
            && nodes
                .iter()
                .all(|n| n["config_hash"] == want && n["status"] == "connected")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the data planes never caught up with the control plane: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `GET path` through `node`'s proxy answers `want` (changes apply within a second
/// or so). On a traditional node it first waits until the proxy runs every change the Admin
/// API made (`synced`): one route answering says nothing of the changes made after it.
pub async fn proxy_until(
    http: &reqwest::Client,
    node: &Node,
    path: &str,
    want: u16,
) -> reqwest::Response {
    if !node.admin.is_empty() && node.status.is_some() {
        synced(http, node).await;
    }
    let url = format!(
        "{}{path}",
        node.proxy.as_ref().expect("a node with a proxy")
    );
    crate::http::until(http, &url, want, std::time::Duration::from_secs(10)).await
}

/// A control plane and one data plane of it, under `dir`, sharing a generated cluster
/// certificate.
pub fn hybrid_pair(dir: &Path) -> (Node, Node) {
    let cert = gen_cert(dir, "cluster");
    let cp = Node::start(&dir.join("cp"), &cp_env(&cert, &[]));
    let dp = Node::start(
        &dir.join("dp"),
        &dp_env(cp.cluster.as_ref().expect("a control plane"), &cert, &[]),
    );
    (cp, dp)
}

/// A service `s` of `upstream`, through `node`'s Admin API.
pub async fn service(http: &reqwest::Client, node: &Node, upstream: &str) {
    let s = serde_json::json!({"name": "s", "url": format!("http://{upstream}")});
    admin(http, node, "POST", "/services", s).await;
}

/// A route `/<name>` on the service `s`, with these plugins; returns the plugins as created.
pub async fn route_with(
    http: &reqwest::Client,
    node: &Node,
    name: &str,
    plugins: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    let route = serde_json::json!({"name": name, "paths": [format!("/{name}")]});
    admin(http, node, "POST", "/services/s/routes", route).await;
    let mut created = Vec::new();
    for p in plugins {
        let path = format!("/routes/{name}/plugins");
        created.push(admin(http, node, "POST", &path, p.clone()).await);
    }
    created
}

/// A service `s` of `upstream` with a route `r` of `path`, through `node`'s Admin API.
pub async fn service_and_route(http: &reqwest::Client, node: &Node, upstream: &str, path: &str) {
    service(http, node, upstream).await;
    let r = serde_json::json!({"name": "r", "paths": [path]});
    admin(http, node, "POST", "/services/s/routes", r).await;
}
