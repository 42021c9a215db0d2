//! Configuration propagation, control plane to data planes (bench/propagation/run.sh).
//!
//! 1. `DPS` (100) data planes speaking the real protocol in this process, on one control plane
//!    process: `CHANGES` (50) route changes through the Admin API, each timed from the Admin
//!    API's answer to every data plane having applied it. p50 / p99 over all (change, data plane)
//!    pairs and over "the last data plane" per change.
//! 2. One route changed among `ROUTES` (1,000, 10,000 and 100,000) routes, `BIG_CHANGES` (50)
//!    times, then one consumer added among `CONSUMERS` (50,000) with key-auth credentials: from
//!    the Admin API's answer until a data plane process (the real binary) serves it (p50, p99),
//!    its apply time (its `/status`), the bytes sent, and its RSS. Then `PLANES` (100) control
//!    planes of `PLANE_ROUTES` (1,000) routes each in one control plane process: one route
//!    changed, `BIG_CHANGES` times, in one of them through the v2 API, timed the same way
//!    (compare with 1,000 routes in one control plane).
//! 3. `HOLD` (1,000) connected data planes on one control plane: its RSS and CPU.
//! 4. Data plane processes: RSS and peak with `MEM_SERVICES` (5,000) services of one route
//!    (paths and hosts) and with `MEM_ROUTES` (100,000) routes; a restart with the control plane
//!    down, timed from exec until a `START_ROUTES` (10,000) route cache serves.

use gantry_testkit::free_port;
use std::sync::{Arc, Mutex};

/// The allocator the `gantry` binary runs with, so that the in-process data planes cost what
/// a real one does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use gantry_dp::{ConfigSink, DataPlane, DpOptions, DpState};
use gantry_model::delta::Update;
use serde_json::{json, Value};

/// The binary the processes run: `GANTRY=path` measures another build (an older one, for a
/// before and after; its data planes then report no apply time).
fn gantry_bin() -> std::ffi::OsString {
    std::env::var_os("GANTRY").unwrap_or_else(|| env!("CARGO_BIN_EXE_gantry").into())
}

fn envn(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Records when each version was applied.
struct Stamp(Mutex<Vec<(i64, Instant)>>);

impl ConfigSink for Stamp {
    fn apply(&self, u: &Update<'_>) -> Result<(), gantry_dp::SinkError> {
        self.0.lock().unwrap().push((u.version, Instant::now()));
        Ok(())
    }
}

struct Cp {
    child: std::process::Child,
    admin: String,
    cluster: String,
}

impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cp(prefix: &std::path::Path, cert: &(String, String)) -> Cp {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(gantry_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("KONG_") || k.starts_with("GANTRY_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["start", "-p"])
        .arg(prefix)
        .env("KONG_ROLE", "control_plane")
        .env("KONG_LOG_LEVEL", "warn")
        .env("KONG_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KONG_CLUSTER_LISTEN", "127.0.0.1:0")
        .env("KONG_CLUSTER_TELEMETRY_LISTEN", "127.0.0.1:0")
        .env("KONG_STATUS_LISTEN", "off")
        .env("KONG_CLUSTER_CERT", &cert.0)
        .env("KONG_CLUSTER_CERT_KEY", &cert.1)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the control plane");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let (mut admin, mut cluster) = (None, None);
    while admin.is_none() || cluster.is_none() {
        let l = lines.next().expect("control plane output").unwrap();
        if let Some(a) = l.strip_prefix("gantry: admin API listening on ") {
            admin = Some(a.trim().to_string());
        }
        if let Some(a) = l.strip_prefix("gantry: cluster listening on ") {
            cluster = Some(a.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Cp {
        child,
        admin: admin.unwrap(),
        cluster: cluster.unwrap(),
    }
}

type State = tokio::sync::watch::Receiver<DpState>;

fn dp(cp: &str, cert: &(String, String), sink: Arc<dyn ConfigSink>) -> (Arc<DataPlane>, State) {
    let settings = gantry_conf::Settings::load(&gantry_conf::Sources {
        file: None,
        env: vec![],
        overrides: vec![
            ("role".into(), "data_plane".into()),
            ("database".into(), "off".into()),
            ("cluster_control_plane".into(), cp.into()),
            ("cluster_cert".into(), cert.0.clone()),
            ("cluster_cert_key".into(), cert.1.clone()),
        ],
    })
    .unwrap()
    .settings;
    let d = DataPlane::new(
        DpOptions {
            settings: settings.cluster,
            node_id: uuid::Uuid::new_v4().to_string(),
            hostname: "bench".into(),
            version: gantry_model::GANTRY_VERSION.into(),
            plugins: gantry_proxy::plugins::Registry::default().names(),
            cache: None,
        },
        sink,
    );
    let st = d.state();
    (d, st)
}

fn spawn_dp(d: Arc<DataPlane>, stop: &tokio::sync::watch::Receiver<bool>) {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let stop = stop.clone();
    tokio::spawn(async move {
        let _keep = tx;
        d.run(rx, stop).await
    });
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// (RSS KiB, CPU seconds) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let rss = status_kib(pid, "VmRSS:") as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss, ticks / 100.0)
}

async fn wait_all(states: &[State], pred: impl Fn(&DpState) -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    while !states.iter().all(|s| pred(&s.borrow())) {
        let done = states.iter().filter(|s| pred(&s.borrow())).count();
        assert!(
            Instant::now() < deadline,
            "only {done} of {} data planes got there in {within:?}",
            states.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn send(http: &reqwest::Client, method: reqwest::Method, url: String, body: Value) {
    let r = http.request(method, &url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dps = envn("DPS", 100);
    let changes = envn("CHANGES", 50);
    let hold = envn("HOLD", 1000);
    let sizes: Vec<usize> = std::env::var("ROUTES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let consumers = envn("CONSUMERS", 50_000);
    let big_changes = envn("BIG_CHANGES", 50);
    let mem = envn("MEM_SERVICES", 5_000);
    let large = envn("MEM_ROUTES", 100_000);
    let start_routes = envn("START_ROUTES", 10_000);
    let planes = envn("PLANES", 100);
    let plane_routes = envn("PLANE_ROUTES", 1000);
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    gantry_protocol::tls::gen_cert(&c, &k, 30).unwrap();
    let cert = (c.display().to_string(), k.display().to_string());
    let http = reqwest::Client::new();

    if dps > 0 {
        propagation(&http, &cert, dir.path(), dps, changes).await;
    }
    for routes in sizes {
        big_config(&http, &cert, dir.path(), routes, big_changes).await;
    }
    if planes > 0 {
        many_control_planes(&http, &cert, dir.path(), planes, plane_routes, big_changes).await;
    }
    if consumers > 0 {
        many_consumers(&http, &cert, dir.path(), consumers, big_changes).await;
    }
    if mem + large + start_routes > 0 {
        dp_processes(&http, &cert, dir.path(), mem, large, start_routes).await;
    }
    if hold > 0 {
        many(&http, &cert, dir.path(), hold).await;
    }
}

/// 1. Propagation to `dps` data planes.
async fn propagation(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    dps: usize,
    changes: usize,
) {
    let (post, patch) = (reqwest::Method::POST, reqwest::Method::PATCH);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let cp = start_cp(&dir.join("cp"), cert);
    send(
        http,
        post.clone(),
        format!("{}/services", cp.admin),
        json!({"name": "s", "host": "example.com"}),
    )
    .await;
    send(
        http,
        post.clone(),
        format!("{}/services/s/routes", cp.admin),
        json!({"name": "r", "paths": ["/p0"]}),
    )
    .await;
    let mut sinks = Vec::new();
    let mut states = Vec::new();
    for _ in 0..dps {
        let s = Arc::new(Stamp(Mutex::new(Vec::new())));
        let (d, st) = dp(&cp.cluster, cert, s.clone());
        spawn_dp(d, &stop);
        sinks.push(s);
        states.push(st);
    }
    wait_all(
        &states,
        |s| s.loaded && s.version >= 2,
        Duration::from_secs(60),
    )
    .await;
    let mut all = Vec::new();
    let mut last = Vec::new();
    for i in 1..=changes {
        send(
            http,
            patch.clone(),
            format!("{}/routes/r", cp.admin),
            json!({"paths": [format!("/p{i}")]}),
        )
        .await;
        let answered = Instant::now();
        let want = 2 + i as i64;
        wait_all(&states, |s| s.version >= want, Duration::from_secs(30)).await;
        let mut worst: f64 = 0.0;
        for s in &sinks {
            let at =
                s.0.lock()
                    .unwrap()
                    .iter()
                    .find(|(v, _)| *v >= want)
                    .map(|(_, t)| *t)
                    .unwrap();
            let ms = at.saturating_duration_since(answered).as_secs_f64() * 1000.0;
            worst = worst.max(ms);
            all.push(ms);
        }
        last.push(worst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "propagation to {dps} data planes, {changes} changes: per data plane p50 {:.2} ms, p99 {:.2} ms; all {dps} served (slowest of each change) p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut all, 0.5),
        pct(&mut all, 0.99),
        pct(&mut last.clone(), 0.5),
        pct(&mut last, 0.99)
    );
    let _ = stop_tx.send(true);
    drop(cp);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Import `yaml` into a fresh SQLite store under `prefix`.
fn import(dir: &std::path::Path, prefix: &std::path::Path, yaml: &str) {
    std::fs::create_dir_all(prefix).unwrap();
    let file = dir.join(format!(
        "{}.yaml",
        prefix.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&file, yaml).unwrap();
    let st = std::process::Command::new(gantry_bin())
        .args(["config", "db_import"])
        .arg(&file)
        .arg("-p")
        .arg(prefix)
        .env("KONG_LOG_LEVEL", "warn")
        .status()
        .unwrap();
    assert!(st.success());
}

/// `services` services of `per` routes each, routes with paths (and hosts when `hosts`),
/// pointing at `upstream`.
fn routes_yaml(services: usize, per: usize, hosts: bool, upstream: &str) -> String {
    let mut yaml = String::from("_format_version: \"3.0\"\nservices:\n");
    for s in 0..services {
        yaml.push_str(&format!(
            "- name: svc{s}\n  url: {upstream}/{s}\n  routes:\n"
        ));
        for r in 0..per {
            yaml.push_str(&format!(
                "  - name: r{s}-{r}\n    paths: [\"/s{s}/r{r}\"]\n"
            ));
            if hosts {
                yaml.push_str(&format!("    hosts: [\"h{s}.example.com\"]\n"));
            }
        }
    }
    yaml
}

/// What one kind of change costs, repeated on a data plane process.
struct Costs {
    bytes: Vec<f64>,
    apply: Vec<f64>,
    end_to_end: Vec<f64>,
}

fn report(what: &str, mut c: Costs) {
    println!(
        "{what}: Admin API answer to the data plane serving it p50 {:.2} ms, p99 {:.2} ms; data plane apply p50 {:.2} ms, p99 {:.2} ms; {:.0} bytes on the wire (median), {} changes",
        pct(&mut c.end_to_end.clone(), 0.5),
        pct(&mut c.end_to_end, 0.99),
        pct(&mut c.apply.clone(), 0.5),
        pct(&mut c.apply, 0.99),
        pct(&mut c.bytes, 0.5),
        c.apply.len()
    );
}

/// The data plane process's status once it holds a configuration (started at `t`).
async fn first_load(
    http: &reqwest::Client,
    status: u16,
    t: Instant,
    within: Duration,
) -> (i64, f64, f64) {
    loop {
        if let Some(s) = dp_status(http, status).await.filter(|s| s.0 > 0) {
            return s;
        }
        assert!(t.elapsed() < within, "the data plane never loaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A data plane process's `cluster` status: (config version, last apply in ms, bytes received).
async fn dp_status(http: &reqwest::Client, status: u16) -> Option<(i64, f64, f64)> {
    let v: Value = http
        .get(format!("http://127.0.0.1:{status}/status"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let c = &v["cluster"];
    Some((
        c["config_version"].as_i64()?,
        c["last_apply_ms"].as_f64().unwrap_or(f64::NAN),
        c["bytes_received"].as_f64()?,
    ))
}

/// A control plane holding `yaml`, and one data plane process on it (the real binary: its
/// allocator, runtime and proxy); `changes` changes made through the Admin API, each timed
/// from the answer until the data plane reports the new version, then `check` (a request the
/// change makes answer, if any) passes.
#[allow(clippy::too_many_arguments)]
async fn big(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    (name, what): (&str, &str),
    yaml: &str,
    changes: usize,
    change: impl Fn(&str, usize) -> (reqwest::Method, String, Value),
    check: impl Fn(usize) -> Option<(String, String)>,
) {
    let prefix = dir.join(name);
    import(dir, &prefix, yaml);
    let cp = start_cp(&prefix, cert);
    let dp_prefix = dir.join(format!("{name}-dp"));
    std::fs::create_dir_all(&dp_prefix).unwrap();
    let (port, status) = (free_port(), free_port());
    let t = Instant::now();
    let child = start_dp_process(&dp_prefix, &cp.cluster, cert, port, Some(status));
    let first = first_load(http, status, t, Duration::from_secs(600)).await;
    println!(
        "{what}: first snapshot {:.1} KiB on the wire, applied in {:.1} ms, {:.0} ms from exec",
        first.2 / 1024.0,
        first.1,
        t.elapsed().as_secs_f64() * 1000.0
    );
    let c = measure(
        http,
        status,
        port,
        first,
        changes,
        |i| change(&cp.admin, i),
        None,
        &check,
    )
    .await;
    let (rss, peak) = memory(child.0.id());
    report(what, c);
    println!("{what}: data plane RSS {rss:.1} MiB, peak {peak:.1} MiB");
    drop(child);
    drop(cp);
}

/// Make `changes` changes and time each until the data plane (status port `status`, proxy
/// `port`) runs it, and serves it when `check` says what to probe.
#[allow(clippy::too_many_arguments)]
async fn measure(
    http: &reqwest::Client,
    status: u16,
    port: u16,
    first: (i64, f64, f64),
    changes: usize,
    change: impl Fn(usize) -> (reqwest::Method, String, Value),
    token: Option<&str>,
    check: &impl Fn(usize) -> Option<(String, String)>,
) -> Costs {
    let mut c = Costs {
        bytes: vec![],
        apply: vec![],
        end_to_end: vec![],
    };
    let mut at = first;
    for i in 0..changes {
        let (m, url, body) = change(i);
        let mut req = http.request(m, &url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        let answered = Instant::now();
        let now = loop {
            if let Some(s) = dp_status(http, status).await.filter(|s| s.0 > at.0) {
                break s;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(60),
                "change {i} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        if let Some((host, path)) = check(i) {
            while probe(http, port, &host, &path).await == Some(404) {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        c.end_to_end.push(answered.elapsed().as_secs_f64() * 1000.0);
        c.apply.push(now.1);
        c.bytes.push(now.2 - at.2);
        at = now;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c
}

/// 2c. `planes` control planes of `routes` routes each; one route changed in one of them.
async fn many_control_planes(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    planes: usize,
    routes: usize,
    changes: usize,
) {
    let prefix = dir.join("planes");
    std::fs::create_dir_all(&prefix).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(gantry_bin())
            .args(args)
            .arg("-p")
            .arg(&prefix)
            .env("KONG_LOG_LEVEL", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let yaml = dir.join("plane.yaml");
    std::fs::write(
        &yaml,
        routes_yaml(routes.div_ceil(10), 10, false, "http://127.0.0.1:9"),
    )
    .unwrap();
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..planes {
        let name = format!("cp{i}");
        ids.push(cli(&["control-planes", "create", &name]));
        cli(&[
            "config",
            "db_import",
            &yaml.display().to_string(),
            "--control-plane",
            &name,
        ]);
    }
    println!(
        "{planes} control planes of {routes} routes: stored in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let token = cli(&["tokens", "create", "--name", "bench"]);
    let cp = start_cp(&prefix, cert);
    // The data plane presents the cluster certificate, pinned by one control plane: it is
    // that control plane's.
    let target = &ids[planes / 2];
    let pem = std::fs::read_to_string(&cert.0).unwrap();
    let r = http
        .post(format!(
            "{}/v2/control-planes/{target}/dp-client-certificates",
            cp.admin
        ))
        .bearer_auth(&token)
        .json(&json!({ "cert": pem }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "pin: {}", r.status());
    // Hosted and pinned within the cluster service's polling interval.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dp_prefix = dir.join("planes-dp");
    std::fs::create_dir_all(&dp_prefix).unwrap();
    let (port, status) = (free_port(), free_port());
    let t = Instant::now();
    let child = start_dp_process(&dp_prefix, &cp.cluster, cert, port, Some(status));
    let first = first_load(http, status, t, Duration::from_secs(120)).await;
    let what = format!("{planes} control planes of {routes} routes, one route changed in one");
    println!(
        "{what}: first snapshot {:.1} KiB on the wire, applied in {:.1} ms",
        first.2 / 1024.0,
        first.1
    );
    let admin = cp.admin.clone();
    let c = measure(
        http,
        status,
        port,
        first,
        changes,
        |i| {
            (
                reqwest::Method::PATCH,
                format!("{admin}/v2/control-planes/{target}/core-entities/routes/r{i}-0"),
                json!({"paths": [format!("/changed{i}")]}),
            )
        },
        Some(&token),
        &|i| Some(("localhost".to_string(), format!("/changed{i}"))),
    )
    .await;
    let (rss, _) = memory(cp.child.id());
    report(&what, c);
    println!("{what}: control plane RSS {rss:.1} MiB");
    drop(child);
    drop(cp);
}

/// 2. One route changed among `routes`.
async fn big_config(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    routes: usize,
    changes: usize,
) {
    let yaml = routes_yaml(routes.div_ceil(10), 10, false, "http://127.0.0.1:9");
    // The proxy answers 502 for these routes (nothing listens upstream): not 404 means served.
    big(
        http,
        cert,
        dir,
        (
            &format!("routes{routes}"),
            &format!("{routes} routes, one route changed"),
        ),
        &yaml,
        changes,
        |admin, i| {
            (
                reqwest::Method::PATCH,
                format!("{admin}/routes/r{i}-0"),
                json!({"paths": [format!("/changed{i}")]}),
            )
        },
        |i| Some(("localhost".to_string(), format!("/changed{i}"))),
    )
    .await;
}

/// 2b. One consumer added among `consumers`, each with a key-auth credential.
async fn many_consumers(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    consumers: usize,
    changes: usize,
) {
    let mut yaml = routes_yaml(1, 1, false, "http://127.0.0.1:9");
    yaml.push_str("  plugins:\n  - name: key-auth\nconsumers:\n");
    for c in 0..consumers {
        yaml.push_str(&format!(
            "- username: u{c}\n  keyauth_credentials:\n  - key: key-{c}\n"
        ));
    }
    big(
        http,
        cert,
        dir,
        (
            &format!("consumers{consumers}"),
            &format!("{consumers} consumers, one consumer added"),
        ),
        &yaml,
        changes,
        |admin, i| {
            (
                reqwest::Method::POST,
                format!("{admin}/consumers"),
                json!({"username": format!("new{i}")}),
            )
        },
        |_| None,
    )
    .await;
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    (
        status_kib(pid, "VmRSS:") / 1024.0,
        status_kib(pid, "VmHWM:") / 1024.0,
    )
}

/// A `/proc/PID/status` line's value in KiB (0 when absent).
fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data plane process (the real binary) on `cp`, proxying on `port`, its cache in `prefix`.
fn start_dp_process(
    prefix: &std::path::Path,
    cp: &str,
    cert: &(String, String),
    port: u16,
    status: Option<u16>,
) -> Child {
    let mut cmd = std::process::Command::new(gantry_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("KONG_") || k.starts_with("GANTRY_") {
            cmd.env_remove(k);
        }
    }
    Child(
        cmd.args(["start", "-p"])
            .arg(prefix)
            .env("KONG_ROLE", "data_plane")
            .env("KONG_DATABASE", "off")
            .env("KONG_LOG_LEVEL", "error")
            .env("KONG_WORKER_THREADS", "1")
            .env("KONG_PROXY_ACCESS_LOG", "off")
            .env("KONG_CLUSTER_CONTROL_PLANE", cp)
            .env("KONG_PROXY_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "KONG_STATUS_LISTEN",
                status.map_or("off".into(), |s| format!("127.0.0.1:{s}")),
            )
            .env("KONG_CLUSTER_CERT", &cert.0)
            .env("KONG_CLUSTER_CERT_KEY", &cert.1)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the data plane"),
    )
}

/// The status of `GET path` on `port` with `host`, or `None` while nothing answers.
async fn probe(http: &reqwest::Client, port: u16, host: &str, path: &str) -> Option<u16> {
    http.get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// 4. Data plane processes: RSS (and peak) holding `services` services of one route each
///    (paths and hosts); the same at `large` routes; and a restart with the control plane down,
///    timed from exec until the cached `start_routes`-route configuration serves.
async fn dp_processes(
    http: &reqwest::Client,
    cert: &(String, String),
    dir: &std::path::Path,
    services: usize,
    large: usize,
    start_routes: usize,
) {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", up.local_addr().unwrap());
    tokio::spawn(gantry_proxy::echo::serve(up));
    let cases = [
        (services, 1, true, "services of one route (paths and hosts)"),
        (
            large.div_ceil(10),
            10,
            true,
            "routes, 10 per service (paths and hosts)",
        ),
        (
            start_routes.div_ceil(10),
            10,
            true,
            "routes, 10 per service, for the cached start",
        ),
    ];
    for (i, (svcs, per, hosts, what)) in cases.into_iter().enumerate() {
        if svcs == 0 {
            continue;
        }
        let n = if per == 1 { svcs } else { svcs * per };
        let prefix = dir.join(format!("dpmem{i}"));
        import(dir, &prefix, &routes_yaml(svcs, per, hosts, &upstream));
        let cp = start_cp(&prefix, cert);
        let dp_prefix = dir.join(format!("dpproc{i}"));
        std::fs::create_dir_all(&dp_prefix).unwrap();
        let port = free_port();
        let last = (svcs - 1, per - 1);
        let host = format!("h{}.example.com", last.0);
        let path = format!("/s{}/r{}", last.0, last.1);
        let child = start_dp_process(&dp_prefix, &cp.cluster, cert, port, None);
        let t = Instant::now();
        while probe(http, port, &host, &path).await != Some(200) {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the data plane never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let loaded = t.elapsed();
        // Let the cache write finish and the allocator settle, with some traffic.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..200 {
            probe(http, port, &host, &path).await;
        }
        let (rss, peak) = memory(child.0.id());
        if i < 2 {
            println!(
                "data plane process, {n} {what}: RSS {rss:.1} MiB, peak {peak:.1} MiB; served {:.0} ms after exec (control plane up, first snapshot)",
                loaded.as_secs_f64() * 1000.0
            );
            drop(child);
            drop(cp);
            continue;
        }
        // The cached start: the control plane down, the data plane restarted.
        drop(child);
        drop(cp);
        let dead_cp = format!("127.0.0.1:{}", free_port());
        let mut times = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let t = Instant::now();
            let child = start_dp_process(&dp_prefix, &dead_cp, cert, port, None);
            while probe(http, port, &host, &path).await != Some(200) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "the cached start never served"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(child);
        }
        println!(
            "data plane restarted with the control plane down, {n} {what}: served {:.0} ms after exec (median of 5), {:.0} ms max",
            pct(&mut times.clone(), 0.5),
            pct(&mut times, 1.0)
        );
    }
}

/// 3. `hold` connected data planes on one control plane.
async fn many(http: &reqwest::Client, cert: &(String, String), dir: &std::path::Path, hold: usize) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let cp = start_cp(&dir.join("hold"), cert);
    let pid = cp.child.id();
    let (rss0, _) = usage(pid);
    let mut states = Vec::new();
    let t = Instant::now();
    for i in 0..hold {
        let (d, st) = dp(&cp.cluster, cert, Arc::new(Stamp(Mutex::new(Vec::new()))));
        spawn_dp(d, &stop);
        states.push(st);
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_all(
        &states,
        |s| s.connected && s.loaded,
        Duration::from_secs(120),
    )
    .await;
    let connect = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, cpu1) = usage(pid);
    // Data planes ping every 30 s: a window of 31 s holds one round of pings.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (_, cpu2) = usage(pid);
    let t = Instant::now();
    send(
        http,
        reqwest::Method::POST,
        format!("{}/services", cp.admin),
        json!({"name": "late", "host": "example.com"}),
    )
    .await;
    let want = states[0].borrow().version + 1;
    wait_all(&states, |s| s.version >= want, Duration::from_secs(60)).await;
    let fanout = t.elapsed();
    let (rss2, cpu3) = usage(pid);
    println!(
        "{hold} data planes on one control plane: all connected in {:.1} s; control plane RSS {:.1} MiB alone, {:.1} MiB with them ({:.1} KiB each), {:.1} MiB after a change; CPU {:.2}% of a core idle-connected (31 s, one round of pings); one change pushed to all in {:.0} ms using {:.2} CPU s",
        connect.as_secs_f64(),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / hold as f64,
        rss2 as f64 / 1024.0,
        (cpu2 - cpu1) * 100.0 / 31.0,
        fanout.as_secs_f64() * 1000.0,
        cpu3 - cpu2
    );
    let _ = stop_tx.send(true);
}
