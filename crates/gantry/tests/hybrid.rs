//! Hybrid mode with real processes: control planes, data planes, certificates, failures.

use gantry_testkit::free_port;
use gantry_testkit::load::Load;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_testkit::http::{get_json, get_text, until};
use gantry_testkit::process::{admin, cmd, cp_env, dp_env, env, gen_cert, service_and_route, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};

/// Poll the registry until `pred` holds for it.
async fn until_registry(
    http: &reqwest::Client,
    cp: &Node,
    query: &str,
    within: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (s, v) = get_json(http, &format!("{}/clustering/data-planes{query}", cp.admin)).await;
        assert_eq!(s, 200, "{v}");
        let data = v["data"].as_array().cloned().unwrap_or_default();
        if pred(&data) {
            return data;
        }
        assert!(Instant::now() < deadline, "registry never matched: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The line of Kong's metric `name` for data plane `id` in a Prometheus exposition.
fn data_plane_series<'a>(text: &'a str, name: &str, id: &str) -> &'a str {
    let node = format!("node_id=\"{id}\"");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&node))
        .unwrap_or_else(|| panic!("no {name} for {id}: {text}"))
}

async fn cp_hash(http: &reqwest::Client, cp: &Node) -> String {
    get_json(http, &format!("{}/status", cp.admin)).await.1["configuration_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn gen_cert_writes_a_private_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = gen_cert(dir.path(), "cluster");
    let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&c).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer| d.to_vec())
        .unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let days = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400;
    assert!((3649..=3651).contains(&days), "{days}");
    assert!(x.public_key().algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1");
    let before = std::fs::read(&c).unwrap();
    let out = cmd(&[])
        .args(["hybrid", "gen_cert", &c, &k])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&c).unwrap(), before);
    let out = cmd(&[])
        .args(["hybrid", "gen_cert"])
        .arg(dir.path().join("short.crt"))
        .arg(dir.path().join("short.key"))
        .args(["--days", "30"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A control plane and two labelled data planes: configuration reaches both as a snapshot and
/// then as deltas; the registry shows each node with its labels, hash and certificate expiry,
/// filters by label and status, and marks a stopped node disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_sync_and_register() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let addr = cp.cluster.clone().unwrap();
    let dp1 = Node::start(
        &dir.path().join("dp1"),
        &dp_env(
            &addr,
            &cert,
            &[("KONG_CLUSTER_DP_LABELS", "region:eu,tier:gold")],
        ),
    );
    let mut dp2 = Node::start(
        &dir.path().join("dp2"),
        &dp_env(&addr, &cert, &[("KONG_CLUSTER_DP_LABELS", "region:us")]),
    );
    assert_eq!(dp1.admin, "", "a data plane serves no Admin API");
    service_and_route(&http, &cp, &up, "/a").await;
    for dp in [&dp1, &dp2] {
        until(
            &http,
            &format!("{}/a", dp.dp_proxy()),
            200,
            Duration::from_secs(10),
        )
        .await;
    }
    admin(&http, &cp, "PATCH", "/routes/r", json!({"paths": ["/b"]})).await;
    for dp in [&dp1, &dp2] {
        let p = dp.dp_proxy();
        until(&http, &format!("{p}/b"), 200, Duration::from_secs(10)).await;
        until(&http, &format!("{p}/a"), 404, Duration::from_secs(10)).await;
    }
    // After the first snapshot, changes travel as deltas.
    dp1.wait_log(
        "configuration from the control plane applied",
        Duration::from_secs(5),
    );
    let hash = cp_hash(&http, &cp).await;
    let all = until_registry(&http, &cp, "", Duration::from_secs(10), |d| {
        d.len() == 2
            && d.iter()
                .all(|n| n["config_hash"] == hash.as_str() && n["status"] == "connected")
    })
    .await;
    let now = gantry_model::unix_now();
    for n in &all {
        assert_eq!(n["version"], gantry_model::GANTRY_VERSION);
        assert_eq!(n["ip"], "127.0.0.1");
        assert_eq!(n["sync_status"], "normal");
        assert_eq!(n["behind"], 0);
        let exp = n["cert_details"]["expiry_timestamp"].as_i64().unwrap();
        assert!(exp > now + 3640 * 86_400, "{n}");
        assert!(n["last_seen"].as_i64().unwrap() >= now - 60);
    }
    // Kong's prometheus series: each data plane's on the control plane's status listener, and
    // the data plane's own certificate expiry on its own.
    let text = get_text(&http, &format!("{}/metrics", cp.status.clone().unwrap())).await;
    assert!(text.contains("\nkong_datastore_reachable 1\n"), "{text}");
    for n in &all {
        let id = n["id"].as_str().unwrap();
        let value = |name: &str| -> f64 {
            let line = data_plane_series(&text, name, id);
            assert!(
                line.contains("hostname=\"") && line.contains("ip=\"127.0.0.1\""),
                "{line}"
            );
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        // Seen since the registry was read, perhaps again.
        assert!(value("kong_data_plane_last_seen") >= n["last_seen"].as_f64().unwrap());
        assert_eq!(value("kong_data_plane_version_compatible"), 1.0);
        let hash = n["config_hash"]
            .as_str()
            .unwrap()
            .chars()
            .fold(0f64, |h, c| h * 16.0 + f64::from(c.to_digit(16).unwrap()));
        assert_eq!(value("kong_data_plane_config_hash"), hash);
    }
    let exp = all[0]["cert_details"]["expiry_timestamp"].as_i64().unwrap();
    let text = get_text(&http, &format!("{}/metrics", dp1.status.clone().unwrap())).await;
    assert!(
        text.contains(&format!(
            "\nkong_data_plane_cluster_cert_expiry_timestamp {exp}\n"
        )),
        "{text}"
    );
    let eu = until_registry(
        &http,
        &cp,
        "?labels=region:eu",
        Duration::from_secs(1),
        |d| d.len() == 1,
    )
    .await;
    assert_eq!(eu[0]["labels"], json!({"region": "eu", "tier": "gold"}));
    until_registry(
        &http,
        &cp,
        "?labels=region:eu,tier:silver",
        Duration::from_secs(1),
        |d| d.is_empty(),
    )
    .await;
    until_registry(
        &http,
        &cp,
        "?status=connected",
        Duration::from_secs(1),
        |d| d.len() == 2,
    )
    .await;
    let (s, v) = get_json(
        &http,
        &format!("{}/clustering/data-planes?status=sleepy", cp.admin),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("sleepy"), "{v}");
    let (_, st) = get_json(&http, &format!("{}/clustering/status", cp.admin)).await;
    assert_eq!(st.as_object().unwrap().len(), 2, "{st}");
    // The data plane's status listener shows the same configuration hash.
    let (_, s1) = get_json(&http, &format!("{}/status", dp1.status.as_ref().unwrap())).await;
    assert_eq!(s1["configuration_hash"], hash.as_str());
    assert_eq!(s1["cluster"]["connected"], true, "{s1}");
    assert_eq!(s1["cluster"]["control_plane"], addr.as_str(), "{s1}");
    // The control plane's /metrics on its status listener: data planes by status, lag, pushes.
    let status = cp.wait_log("gantry: status listening on ", Duration::from_secs(5));
    let status = status
        .trim_start_matches("gantry: status listening on ")
        .trim()
        .to_string();
    let m = gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await;
    assert!(
        m.contains("gantry_data_planes{status=\"connected\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("gantry_data_planes_max_versions_behind 0"),
        "{m}"
    );
    let deltas: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gantry_cluster_deltas_sent_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(deltas >= 2, "{m}");
    // A stopped data plane is shown disconnected, then stays listed.
    dp2.signal("TERM");
    dp2.wait_exit(Duration::from_secs(10));
    until_registry(
        &http,
        &cp,
        "?status=disconnected",
        Duration::from_secs(10),
        |d| d.len() == 1 && d[0]["labels"]["region"] == "us",
    )
    .await;
    cp.wait_log("data plane disconnected", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_hybrid_settings_stop_the_node_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (
            dp_env(
                "127.0.0.1:9",
                &cert,
                &[("KONG_CLUSTER_DP_LABELS", "kong-zone:a")],
            ),
            "cluster_dp_labels",
        ),
        (
            dp_env(
                "127.0.0.1:9",
                &cert,
                &[("KONG_CLUSTER_DP_LABELS", "a:b:c,d")],
            ),
            "cluster_dp_labels",
        ),
        (
            dp_env("127.0.0.1:9", &("".into(), "".into()), &[]),
            "cluster_cert",
        ),
        (dp_env("", &cert, &[]), "cluster_control_plane"),
        (
            dp_env("127.0.0.1:9", &cert, &[("KONG_DATABASE", "sqlite")]),
            "database",
        ),
        (
            dp_env(
                "127.0.0.1:9",
                &(cert.0.clone(), "/nonexistent/key.pem".into()),
                &[],
            ),
            "cluster_cert_key",
        ),
        (
            dp_env("127.0.0.1:9", &cert, &[("KONG_CLUSTER_USE_PROXY", "on")]),
            "proxy_server",
        ),
        (
            cp_env(&cert, &[("KONG_CLUSTER_MTLS", "pki")]),
            "cluster_ca_cert",
        ),
    ];
    for (i, (e, key)) in cases.into_iter().enumerate() {
        let out = cmd(&e)
            .args(["start", "-p"])
            .arg(dir.path().join(format!("n{i}")))
            .env("KONG_ADMIN_LISTEN", "127.0.0.1:0")
            .env("KONG_PROXY_LISTEN", "127.0.0.1:0")
            .env("KONG_STATUS_LISTEN", "off")
            .env("KONG_CLUSTER_LISTEN", "127.0.0.1:0")
            .env("KONG_CLUSTER_TELEMETRY_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started: {err}");
        assert!(err.contains(key), "case {i}: expected '{key}' in: {err}");
    }
}

/// The control plane dies under load: the data plane goes on serving with zero failed
/// requests, restarts from its cache while the control plane is still down, and catches up
/// when the control plane is back.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_outlive_their_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp_e = cp_env(&cert, &[("KONG_CLUSTER_LISTEN", &listen)]);
    let mut cp = Node::start(&dir.path().join("cp"), &cp_e);
    let dp_e = dp_env(&listen, &cert, &[]);
    let mut dp = Node::start(&dir.path().join("dp"), &dp_e);
    service_and_route(&http, &cp, &up, "/a").await;
    let url = format!("{}/a", dp.dp_proxy());
    until(&http, &url, 200, Duration::from_secs(10)).await;
    let load = Load::start(url.clone(), 4, false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.kill9();
    dp.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, first) = load.finish().await;
    assert!(ok > 50, "{ok}");
    assert_eq!(failed, 0, "first failure: {first:?}");
    // Restart the data plane with no control plane: it serves from its cache.
    dp.signal("TERM");
    dp.wait_exit(Duration::from_secs(10));
    assert!(dir.path().join("dp/config.cache.json.gz").exists());
    let dp = Node::start(&dir.path().join("dp"), &dp_e);
    let url = format!("{}/a", dp.dp_proxy());
    until(&http, &url, 200, Duration::from_secs(5)).await;
    dp.wait_log("serving the cached configuration", Duration::from_secs(5));
    dp.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(10),
    );
    let (s, _) = get_json(
        &http,
        &format!("{}/status/ready", dp.status.as_ref().unwrap()),
    )
    .await;
    assert_eq!(s, 200);
    // The control plane comes back on its address: the data plane reconnects and follows.
    let cp = Node::start(&dir.path().join("cp"), &cp_e);
    admin(
        &http,
        &cp,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/c"]}),
    )
    .await;
    until(
        &http,
        &format!("{}/c", dp.dp_proxy()),
        200,
        Duration::from_secs(20),
    )
    .await;
    until_registry(
        &http,
        &cp,
        "?status=connected",
        Duration::from_secs(10),
        |d| d.len() == 1,
    )
    .await;
}

fn year_ts(y: i32) -> i64 {
    rcgen::date_time_ymd(y, 1, 1).unix_timestamp()
}

/// `pki` mode: a data plane with a certificate from the cluster CA syncs; one with a
/// certificate of another CA, an expired one, or none, is refused and both sides say why.
/// A data plane's certificate is rotated by replacing the files (and on SIGHUP) without a
/// restart; rotated to an expired one, it gets no more configuration but goes on proxying.
#[tokio::test(flavor = "multi_thread")]
async fn pki_certificates_are_checked_and_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = gantry_testkit::pki::Pki::new(dir.path());
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp_cert = pki.leaf("cp", "kong_clustering", 2090);
    let cp = Node::start(
        &dir.path().join("cp"),
        &cp_env(
            &cp_cert,
            &[
                ("KONG_CLUSTER_MTLS", "pki"),
                ("KONG_CLUSTER_CA_CERT", &pki.ca),
            ],
        ),
    );
    let addr = cp.cluster.clone().unwrap();
    let tele = cp.telemetry.clone().unwrap();
    let pki_dp = |cert: &(String, String)| {
        dp_env(
            &addr,
            cert,
            &[
                ("KONG_CLUSTER_MTLS", "pki"),
                ("KONG_CLUSTER_CA_CERT", &pki.ca),
                ("KONG_CLUSTER_TELEMETRY_ENDPOINT", &tele),
                ("KONG_VITALS", "on"),
            ],
        )
    };
    service_and_route(&http, &cp, &up, "/a").await;

    // Signed by another CA: refused by the control plane.
    let other = gantry_testkit::pki::Pki::new(&dir.path().join("other").tap_mkdir());
    let stranger = Node::start(
        &dir.path().join("stranger"),
        &pki_dp(&other.leaf("dp", "dp-stranger", 2090)),
    );
    stranger.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(10),
    );
    cp.wait_log("not signed by cluster_ca_cert", Duration::from_secs(5));
    // Expired: refused, and the control plane says so.
    let expired = Node::start(
        &dir.path().join("expired"),
        &pki_dp(&pki.leaf("old", "dp-old", 2021)),
    );
    expired.wait_log("the cluster certificate expired", Duration::from_secs(10));
    expired.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(10),
    );
    cp.wait_log("certificate expired", Duration::from_secs(5));
    // Not valid yet: TLS calls it CertificateExpired; the data plane says which.
    let future = Node::start(
        &dir.path().join("future"),
        &pki_dp(&pki.leaf_between("future", "dp-future", 2080, 2090)),
    );
    future.wait_log(
        "the cluster certificate is not valid before",
        Duration::from_secs(10),
    );
    drop(future);
    // A control plane whose own certificate has expired says so when it starts.
    let old_cp = Node::start(
        &dir.path().join("old-cp"),
        &cp_env(
            &pki.leaf("old-cp", "kong_clustering", 2021),
            &[
                ("KONG_CLUSTER_MTLS", "pki"),
                ("KONG_CLUSTER_CA_CERT", &pki.ca),
            ],
        ),
    );
    old_cp.wait_log(
        "the cluster certificate (cluster_cert) expired",
        Duration::from_secs(10),
    );
    drop(old_cp);
    // No client certificate at all: a raw TLS client is refused in the handshake.
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = std::fs::read(&pki.ca).unwrap();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("kong_clustering").unwrap();
        let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await;
        if let Ok(mut s) = r {
            // TLS 1.3: the refusal arrives with the first read.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut buf = [0u8; 64];
            assert!(s.read(&mut buf).await.is_err() || buf == [0u8; 64]);
        }
        cp.wait_log("peer sent no certificates", Duration::from_secs(5));
    }
    until_registry(&http, &cp, "", Duration::from_secs(1), |d| d.is_empty()).await;

    // A good certificate: connected, with its expiry in the registry.
    let dp_cert = pki.leaf("dp", "dp-1", 2090);
    let dp = Node::start(&dir.path().join("dp"), &pki_dp(&dp_cert));
    let url = format!("{}/a", dp.dp_proxy());
    until(&http, &url, 200, Duration::from_secs(10)).await;
    until_registry(&http, &cp, "", Duration::from_secs(5), |d| {
        d.len() == 1 && d[0]["cert_details"]["expiry_timestamp"] == year_ts(2090)
    })
    .await;
    // Rotation by replacing the files: the data plane reconnects with the new pair.
    pki.leaf("dp", "dp-1", 2091);
    dp.wait_log("cluster certificate reloaded", Duration::from_secs(10));
    until_registry(&http, &cp, "", Duration::from_secs(10), |d| {
        d.len() == 1 && d[0]["cert_details"]["expiry_timestamp"] == year_ts(2091)
    })
    .await;
    // Rotated to an expired pair (applied on SIGHUP): refused; proxying goes on from what it
    // holds, and new configuration does not reach it.
    pki.leaf("dp", "dp-1", 2021);
    dp.signal("HUP");
    dp.wait_log("the cluster certificate expired", Duration::from_secs(10));
    dp.wait_log("analytics are not sent", Duration::from_secs(10));
    admin(
        &http,
        &cp,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/new"]}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    until(&http, &url, 200, Duration::from_secs(1)).await;
    until(
        &http,
        &format!("{}/new", dp.dp_proxy()),
        404,
        Duration::from_secs(1),
    )
    .await;
    // Back to a good one: it catches up.
    pki.leaf("dp", "dp-1", 2092);
    dp.signal("HUP");
    until(
        &http,
        &format!("{}/new", dp.dp_proxy()),
        200,
        Duration::from_secs(15),
    )
    .await;
}

/// `shared` mode: a data plane with a certificate other than the control plane's is refused.
#[tokio::test(flavor = "multi_thread")]
async fn shared_mode_refuses_a_different_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let other = gen_cert(dir.path(), "other");
    let http = reqwest::Client::new();
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(cp.cluster.as_ref().unwrap(), &other, &[]),
    );
    // Each side pins its own certificate: the data plane refuses the control plane's first.
    dp.wait_log("not the pinned cluster_cert", Duration::from_secs(10));
    cp.wait_log(
        "the data plane refused this control plane's certificate",
        Duration::from_secs(10),
    );
    until_registry(&http, &cp, "", Duration::from_secs(1), |d| d.is_empty()).await;
    // Certificate settings also take PEM text and base64-encoded PEM.
    use base64::Engine;
    let pem_cert = std::fs::read_to_string(&cert.0).unwrap();
    let b64_key = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&cert.1).unwrap());
    let dp = Node::start(
        &dir.path().join("dp2"),
        &dp_env(cp.cluster.as_ref().unwrap(), &(pem_cert, b64_key), &[]),
    );
    dp.wait_log("connected to the control plane", Duration::from_secs(10));
    // An empty configuration is a configuration: the proxy port opens and answers 404.
    until(
        &http,
        &format!("{}/x", dp.dp_proxy()),
        404,
        Duration::from_secs(10),
    )
    .await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// A data plane in this process speaking the real protocol, recording what it is given.
struct Recorder {
    got: std::sync::Mutex<Vec<(i64, gantry_model::Config)>>,
    refuse: bool,
}

impl gantry_dp::ConfigSink for Recorder {
    fn apply(&self, u: &gantry_model::delta::Update<'_>) -> Result<(), gantry_dp::SinkError> {
        if self.refuse {
            return Err("this test's data plane refuses every configuration".into());
        }
        self.got.lock().unwrap().push((u.version, u.config.clone()));
        Ok(())
    }
}

fn in_process_dp(
    cp: &str,
    cert: &(String, String),
    version: &str,
    plugins: &[&str],
    refuse: bool,
) -> (Arc<Recorder>, String, tokio::sync::watch::Sender<bool>) {
    let settings = gantry_conf::Settings::load(&gantry_conf::Sources {
        file: None,
        env: vec![],
        overrides: env(&[
            ("role", "data_plane"),
            ("database", "off"),
            ("cluster_control_plane", cp),
            ("cluster_cert", &cert.0),
            ("cluster_cert_key", &cert.1),
        ]),
    })
    .unwrap()
    .settings;
    let rec = Arc::new(Recorder {
        got: Default::default(),
        refuse,
    });
    let id = uuid::Uuid::new_v4().to_string();
    let dp = gantry_dp::DataPlane::new(
        gantry_dp::DpOptions {
            settings: settings.cluster,
            node_id: id.clone(),
            hostname: format!("test-{version}"),
            version: version.into(),
            plugins: plugins.iter().map(|p| p.to_string()).collect(),
            cache: None,
        },
        rec.clone(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (_rot_tx, rot_rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let _keep = _rot_tx;
        dp.run(rot_rx, rx).await
    });
    (rec, id, stop)
}

/// `field` is a string containing `needle`; `whole` is shown when it is not.
fn assert_text(field: &Value, needle: &str, whole: &Value) {
    let text = field
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {whole}"));
    assert!(text.contains(needle), "'{needle}' not in: {whole}");
}

fn node<'a>(d: &'a [Value], id: &str) -> Option<&'a Value> {
    d.iter().find(|n| n["id"] == id)
}

/// Same major version required, a newer data plane refused, an older one served without the
/// fields it does not know; a plugin the data plane lacks makes it incompatible, naming the
/// plugin, until the plugin is removed; a configuration a data plane refuses is reported in
/// the registry.
#[tokio::test(flavor = "multi_thread")]
async fn versions_plugins_and_refusals_show_in_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let addr = cp.cluster.clone().unwrap();
    admin(
        &http,
        &cp,
        "POST",
        "/services",
        json!({"name": "s", "host": "example.com"}),
    )
    .await;
    admin(
        &http,
        &cp,
        "POST",
        "/plugins",
        json!({"name": "cors", "config": {"origins": ["*"]}}),
    )
    .await;
    admin(
        &http,
        &cp,
        "POST",
        "/plugins",
        json!({"name": "key-auth", "config": {"realm": "here"}}),
    )
    .await;
    let all = ["cors", "key-auth", "rate-limiting", "request-termination"];
    let (major, major_id, _s1) = in_process_dp(&addr, &cert, "1.0.0", &all, false);
    let (newer, newer_id, _s2) = in_process_dp(&addr, &cert, "0.3.0", &all, false);
    let (older, older_id, _s3) = in_process_dp(&addr, &cert, "0.1.0", &all, false);
    let (lacking, lacking_id, _s4) = in_process_dp(
        &addr,
        &cert,
        gantry_model::GANTRY_VERSION,
        &["key-auth"],
        false,
    );
    let (_refusing, refusing_id, _s5) =
        in_process_dp(&addr, &cert, gantry_model::GANTRY_VERSION, &all, true);
    let d = until_registry(&http, &cp, "", Duration::from_secs(10), |d| {
        d.len() == 5
            && node(d, &older_id).is_some_and(|n| {
                n["status"] == "connected" && n["config_version"].as_i64() > Some(0)
            })
            && node(d, &refusing_id).is_some_and(|n| n["status"] == "out_of_sync")
            && node(d, &lacking_id).is_some_and(|n| n["status"] == "incompatible")
    })
    .await;
    let m = node(&d, &major_id).unwrap();
    assert_eq!(m["status"], "incompatible", "{m}");
    // Kong's prometheus series say which data planes the control plane cannot serve.
    let text = get_text(&http, &format!("{}/metrics", cp.status.clone().unwrap())).await;
    for (id, want) in [(&major_id, "0"), (&lacking_id, "0"), (&older_id, "1")] {
        let line = data_plane_series(&text, "kong_data_plane_version_compatible", id);
        assert!(line.ends_with(&format!(" {want}")), "{line}");
    }
    assert_eq!(m["sync_status"], "kong_version_incompatible");
    assert_text(&m["reason"], "different major versions", m);
    let n = node(&d, &newer_id).unwrap();
    assert_text(&n["reason"], "newer than control plane version", n);
    let l = node(&d, &lacking_id).unwrap();
    assert_eq!(l["sync_status"], "plugin_set_incompatible");
    assert_text(
        &l["reason"],
        "plugin 'cors' configured on the control plane",
        l,
    );
    let r = node(&d, &refusing_id).unwrap();
    assert_text(&r["last_error"], "refuses every configuration", r);
    assert!(r["behind"].as_i64().unwrap() > 0, "{r}");
    assert!(major.got.lock().unwrap().is_empty());
    assert!(newer.got.lock().unwrap().is_empty());
    assert!(lacking.got.lock().unwrap().is_empty());
    // The 0.1.0 data plane got key-auth without the 0.2.0 field.
    {
        let got = older.got.lock().unwrap();
        let (_, cfg) = got.last().unwrap();
        let key_auth = cfg.entities["plugins"]
            .iter()
            .map(|p| p.doc())
            .find(|p| p["name"] == "key-auth")
            .unwrap();
        let conf = &key_auth["config"];
        assert_eq!(conf["key_names"], json!(["apikey"]));
        assert!(conf.get("realm").is_none(), "{conf}");
    }
    // Removing the plugin makes the lacking data plane compatible: it gets configuration.
    let plugins = admin(&http, &cp, "GET", "/plugins", json!({})).await;
    let cors = plugins["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cors");
    let pid = cors.unwrap()["id"].as_str().unwrap().to_string();
    http.delete(format!("{}/plugins/{pid}", cp.admin))
        .send()
        .await
        .unwrap();
    until_registry(&http, &cp, "", Duration::from_secs(10), |d| {
        node(d, &lacking_id).is_some_and(|n| n["status"] == "connected")
    })
    .await;
    assert!(!lacking.got.lock().unwrap().is_empty());
}

/// tinyproxy (Debian's package) as the forward proxy, killed when dropped.
struct TinyProxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl TinyProxy {
    /// `None` (with the reason printed) when tinyproxy is not installed, outside CI.
    fn start(dir: &Path) -> Option<TinyProxy> {
        let found = std::process::Command::new("tinyproxy")
            .arg("-v")
            .output()
            .is_ok();
        if !found {
            assert!(
                !gantry_testkit::ci(),
                "tinyproxy is not installed (.ci/run installs it)"
            );
            eprintln!("skipped: tinyproxy is not installed (apt-get install tinyproxy)");
            return None;
        }
        let port = free_port();
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!("Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nLogLevel Connect\nBasicAuth gantry s3cret\nAllow 127.0.0.1\n"),
        )
        .unwrap();
        let log = dir.join("tinyproxy.out");
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TinyProxy { child, port, log })
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cluster_use_proxy`: the data plane reaches its control plane through a real forward
/// proxy with HTTP CONNECT and basic authentication; wrong credentials are named in the log.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_reach_the_control_plane_through_a_forward_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tp) = TinyProxy::start(dir.path()) else {
        return;
    };
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let addr = cp.cluster.clone().unwrap();
    service_and_route(&http, &cp, &up, "/a").await;
    let via = format!("http://gantry:s3cret@127.0.0.1:{}", tp.port);
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(
            &addr,
            &cert,
            &[
                ("KONG_CLUSTER_USE_PROXY", "on"),
                ("KONG_PROXY_SERVER", &via),
            ],
        ),
    );
    until(
        &http,
        &format!("{}/a", dp.dp_proxy()),
        200,
        Duration::from_secs(10),
    )
    .await;
    let said = tp.said();
    assert!(
        said.contains(&format!("CONNECT {addr}")),
        "tinyproxy said:\n{said}"
    );
    // The proxy_server setting's secret is masked wherever settings are shown.
    assert!(!dp.output().join("\n").contains("s3cret"));
    let bad = format!("http://gantry:wrong@127.0.0.1:{}", tp.port);
    let dp2 = Node::start(
        &dir.path().join("dp2"),
        &dp_env(
            &addr,
            &cert,
            &[
                ("KONG_CLUSTER_USE_PROXY", "on"),
                ("KONG_PROXY_SERVER", &bad),
            ],
        ),
    );
    dp2.wait_log(
        "refused the credentials in proxy_server",
        Duration::from_secs(10),
    );
}

/// Zero-downtime replacement: a new data plane binds the same proxy port (SO_REUSEPORT),
/// takes configuration, and the old one drains on SIGQUIT; no request fails meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_plane_is_replaced_under_load_without_failures() {
    if !gantry_testkit::migrates_connections() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let addr = cp.cluster.clone().unwrap();
    service_and_route(&http, &cp, &up, "/a").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port} reuseport");
    let e = dp_env(&addr, &cert, &[("KONG_PROXY_LISTEN", &listen)]);
    let mut old = Node::start(&dir.path().join("dp-old"), &e);
    let url = format!("http://127.0.0.1:{port}/a");
    until(&http, &url, 200, Duration::from_secs(10)).await;
    let load = Load::start(url.clone(), 4, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = Node::start(&dir.path().join("dp-new"), &e);
    until(
        &http,
        &format!("{}/status/ready", new.status.as_ref().unwrap()),
        200,
        Duration::from_secs(10),
    )
    .await;
    let served_before = load.ok.load(Ordering::Relaxed);
    old.signal("QUIT");
    old.wait_exit(Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, first) = load.finish().await;
    assert_eq!(failed, 0, "first failure: {first:?}");
    assert!(ok > served_before, "the new data plane served nothing");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
}

/// Two control planes on one PostgreSQL: a change made through either reaches data planes
/// connected to both; data planes that list both fail over when one dies.
#[tokio::test(flavor = "multi_thread")]
async fn two_control_planes_share_one_postgres() {
    let Some(pg) = gantry_testkit::PgSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let db = gantry_testkit::process::db_env(Some(&pg));
    let with_db = |mut e: Vec<(String, String)>| {
        e.extend(db.iter().cloned());
        e
    };
    let mut cp1 = Node::start(&dir.path().join("cp1"), &with_db(cp_env(&cert, &[])));
    let cp2 = Node::start(&dir.path().join("cp2"), &with_db(cp_env(&cert, &[])));
    let (a1, a2) = (cp1.cluster.clone().unwrap(), cp2.cluster.clone().unwrap());
    let both = format!("{a1},{a2}");
    let dp1 = Node::start(&dir.path().join("dp1"), &dp_env(&both, &cert, &[]));
    let dp2 = Node::start(&dir.path().join("dp2"), &dp_env(&a2, &cert, &[]));
    service_and_route(&http, &cp1, &up, "/one").await;
    admin(
        &http,
        &cp2,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/two"]}),
    )
    .await;
    for dp in [&dp1, &dp2] {
        for p in ["/one", "/two"] {
            until(
                &http,
                &format!("{}{p}", dp.dp_proxy()),
                200,
                Duration::from_secs(10),
            )
            .await;
        }
    }
    // Either control plane shows every data plane.
    for cp in [&cp1, &cp2] {
        until_registry(
            &http,
            cp,
            "?status=connected",
            Duration::from_secs(10),
            |d| d.len() == 2,
        )
        .await;
    }
    cp1.kill9();
    admin(
        &http,
        &cp2,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/three"]}),
    )
    .await;
    until(
        &http,
        &format!("{}/three", dp1.dp_proxy()),
        200,
        Duration::from_secs(15),
    )
    .await;
    let cp2_id = get_json(&http, &format!("{}/", cp2.admin)).await.1["node_id"].clone();
    until_registry(
        &http,
        &cp2,
        "?status=connected",
        Duration::from_secs(10),
        |d| d.len() == 2 && d.iter().all(|n| n["control_plane"] == cp2_id),
    )
    .await;
}

/// A control plane that stops answering (SIGSTOP) is noticed by the data plane's pings, which
/// then keeps serving and reconnects once the control plane runs again.
#[tokio::test(flavor = "multi_thread")]
async fn an_unresponsive_control_plane_is_noticed_by_pings() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(
            cp.cluster.as_ref().unwrap(),
            &cert,
            &[("KONG_CLUSTER_PING_INTERVAL", "200ms")],
        ),
    );
    service_and_route(&http, &cp, &up, "/a").await;
    let url = format!("{}/a", dp.dp_proxy());
    until(&http, &url, 200, Duration::from_secs(10)).await;
    cp.signal("STOP");
    dp.wait_log(
        "failed to receive a ping response from the control plane",
        Duration::from_secs(5),
    );
    until(&http, &url, 200, Duration::from_secs(1)).await;
    cp.signal("CONT");
    admin(
        &http,
        &cp,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/b"]}),
    )
    .await;
    until(
        &http,
        &format!("{}/b", dp.dp_proxy()),
        200,
        Duration::from_secs(20),
    )
    .await;
}

/// A configuration larger than `cluster_max_payload` is not sent; the registry says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_over_cluster_max_payload_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    // 4,000 consumers with 2,240 random hex characters each: about 4.5 MB once compressed.
    let mut yaml = String::from("_format_version: \"3.0\"\nconsumers:\n");
    for i in 0..4000 {
        let noise: String = (0..70)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        yaml.push_str(&format!("- username: u{i}\n  custom_id: \"{noise}\"\n"));
    }
    let file = dir.path().join("big.yaml");
    std::fs::write(&file, yaml).unwrap();
    gantry_testkit::process::succeed(
        cmd(&[])
            .args(["config", "db_import"])
            .arg(&file)
            .arg("-p")
            .arg(dir.path().join("cp")),
    );
    let cp = Node::start(
        &dir.path().join("cp"),
        &cp_env(&cert, &[("KONG_CLUSTER_MAX_PAYLOAD", "4194304")]),
    );
    let _dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(
            cp.cluster.as_ref().unwrap(),
            &cert,
            &[("KONG_CLUSTER_MAX_PAYLOAD", "4194304")],
        ),
    );
    let d = until_registry(&http, &cp, "", Duration::from_secs(20), |d| {
        d.len() == 1 && d[0]["status"] == "out_of_sync"
    })
    .await;
    let e = d[0]["last_error"].as_str().unwrap();
    assert!(
        e.contains("more than cluster_max_payload (4194304 bytes)"),
        "{e}"
    );
    cp.wait_log("more than cluster_max_payload", Duration::from_secs(5));
}

/// `gantry quickstart` with `args` and `env`, on free ports (the proxy's and the Admin API's
/// returned), read until it says it runs: the child and what it printed.
fn quickstart(
    args: &[&str],
    env: &[(String, String)],
) -> (std::process::Child, Vec<String>, u16, u16) {
    use std::io::BufRead;
    let (admin_port, proxy_port) = (free_port(), free_port());
    let mut child = cmd(env)
        .arg("quickstart")
        .args(args)
        .args(["--admin-port", &admin_port.to_string()])
        .args(["--proxy-port", &proxy_port.to_string()])
        .args(["--cluster-port", &free_port().to_string()])
        .args(["--status-port", &free_port().to_string()])
        .args(["--telemetry-port", &free_port().to_string()])
        .args(["--console-port", &free_port().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.starts_with("Stop with Ctrl-C"))
    {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => said.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("quickstart did not come up: {said:?}");
            }
        }
    }
    (child, said, proxy_port, admin_port)
}

/// Stop a quickstart with SIGTERM, and wait for it to end.
fn stop_quickstart(child: &mut std::process::Child) {
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "quickstart did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gantry quickstart`: a control plane, a data plane and `/mock`, all stopped on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_runs_a_control_plane_and_a_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().to_str().unwrap();
    let (mut child, said, proxy_port, admin_port) = quickstart(&["-p", prefix], &[]);
    let text = said.join("\n");
    assert!(text.contains("a second data plane"), "{text}");
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://127.0.0.1:{proxy_port}/mock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let registry = format!("http://127.0.0.1:{admin_port}/clustering/data-planes");
    let (_, reg) = get_json(&http, &registry).await;
    assert_eq!(reg["data"].as_array().unwrap().len(), 1, "{reg}");
    // The second data plane's command, as printed, is complete: run as it is, it joins with
    // its labels, sends analytics, and proxies on the port it names.
    let from = said
        .iter()
        .position(|l| l.contains("a second data plane"))
        .unwrap();
    let command: Vec<String> = said[from + 1..]
        .iter()
        .take_while(|l| !l.starts_with("Stop with"))
        .map(|l| l.trim().trim_end_matches('\\').trim().to_string())
        .collect();
    let command = command.join(" ");
    assert!(
        command.contains("KONG_CLUSTER_TELEMETRY_ENDPOINT="),
        "{command}"
    );
    let mut dp2 = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec env {command}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, reg) = get_json(&http, &registry).await;
        let dps = reg["data"].as_array().cloned().unwrap_or_default();
        if dps.len() == 2 {
            assert!(
                dps.iter()
                    .any(|d| d["labels"] == json!({"quickstart": "second"})),
                "{reg}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second data plane did not join: {reg}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = dp2.kill();
    let _ = dp2.wait();
    stop_quickstart(&mut child);
    // Its nodes are gone with it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err());
}

/// `(node, route, status) -> requests` from the control plane's analytics.
async fn analytics_counts(
    http: &reqwest::Client,
    cp: &Node,
) -> std::collections::BTreeMap<(String, String, u64), u64> {
    let (s, v) = get_json(
        http,
        &format!("{}/analytics/requests?group_by=node,route,status", cp.admin),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["node"].as_str().unwrap().to_string(),
                    r["route"].as_str().unwrap().to_string(),
                    r["status"].as_u64().unwrap(),
                ),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn until_analytics(
    http: &reqwest::Client,
    cp: &Node,
    within: Duration,
    want: &std::collections::BTreeMap<(String, String, u64), u64>,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = analytics_counts(http, cp).await;
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "analytics: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn hit(http: &reqwest::Client, url: &str, n: usize, want: u16) {
    for _ in 0..n {
        assert_eq!(
            http.get(url).send().await.unwrap().status().as_u16(),
            want,
            "{url}"
        );
    }
}

fn node_id(dp: &Node) -> String {
    std::fs::read_to_string(dp.prefix.join("node_id"))
        .unwrap()
        .trim()
        .to_string()
}

/// Traffic through two data planes appears in the control plane's analytics with exact counts
/// per node, route and status, with latency percentiles.
#[tokio::test(flavor = "multi_thread")]
async fn analytics_from_two_data_planes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    service_and_route(&http, &cp, &up, "/a").await;
    let route_id = admin(&http, &cp, "GET", "/routes/r", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tele = cp.telemetry.clone().unwrap();
    let e = dp_env(
        cp.cluster.as_ref().unwrap(),
        &cert,
        &[
            ("KONG_CLUSTER_TELEMETRY_ENDPOINT", &tele),
            ("KONG_VITALS", "on"),
        ],
    );
    let dp1 = Node::start(&dir.path().join("dp1"), &e);
    let dp2 = Node::start(&dir.path().join("dp2"), &e);
    // With neither vitals nor konnect_mode on, a data plane collects nothing.
    let quiet = Node::start(
        &dir.path().join("dp3"),
        &dp_env(
            cp.cluster.as_ref().unwrap(),
            &cert,
            &[("KONG_CLUSTER_TELEMETRY_ENDPOINT", &tele)],
        ),
    );
    quiet.wait_log(
        "neither vitals nor konnect_mode is on",
        Duration::from_secs(5),
    );
    let p3 = quiet.dp_proxy();
    until(&http, &format!("{p3}/a"), 200, Duration::from_secs(10)).await;
    let (p1, p2) = (dp1.dp_proxy(), dp2.dp_proxy());
    until(&http, &format!("{p1}/a"), 200, Duration::from_secs(10)).await;
    until(&http, &format!("{p2}/a"), 200, Duration::from_secs(10)).await;
    // `until` sent one request to each already.
    hit(&http, &format!("{p1}/a"), 6, 200).await;
    hit(&http, &format!("{p1}/nowhere"), 3, 404).await;
    hit(&http, &format!("{p2}/a"), 4, 200).await;
    let (n1, n2) = (node_id(&dp1), node_id(&dp2));
    let want = [
        ((n1.clone(), route_id.clone(), 200), 7),
        ((n1.clone(), String::new(), 404), 3),
        ((n2.clone(), route_id.clone(), 200), 5),
    ]
    .into_iter()
    .collect();
    until_analytics(&http, &cp, Duration::from_secs(15), &want).await;
    // Two flush intervals later, still nothing from the quiet data plane, nothing counted twice.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(analytics_counts(&http, &cp).await, want);
    let (_, v) = get_json(
        &http,
        &format!("{}/analytics/requests?group_by=status_class", cp.admin),
    )
    .await;
    let classes: Vec<(String, u64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status_class"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        classes.contains(&("2xx".into(), 12)) && classes.contains(&("4xx".into(), 3)),
        "{v}"
    );
    let (_, v) = get_json(
        &http,
        &format!("{}/analytics/requests?route={route_id}&node={n2}", cp.admin),
    )
    .await;
    let row = &v["data"][0];
    assert_eq!(row["requests"], 5, "{v}");
    assert!(
        row["latency_ms"]["total"]["p99"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(
        row["latency_ms"]["upstream"]["p50"].as_f64().is_some(),
        "{v}"
    );
    let (s, v) = get_json(
        &http,
        &format!("{}/analytics/requests?group_by=colour", cp.admin),
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

/// With the control plane down, requests within `analytics_buffer_size_limit` wait and arrive
/// exactly once it is back; those past the limit are dropped and counted in `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn analytics_survive_a_control_plane_outage_within_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let (cl, tl) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let cp_e = cp_env(
        &cert,
        &[
            ("KONG_CLUSTER_LISTEN", &cl),
            ("KONG_CLUSTER_TELEMETRY_LISTEN", &tl),
        ],
    );
    let mut cp = Node::start(&dir.path().join("cp"), &cp_e);
    service_and_route(&http, &cp, &up, "/a").await;
    let route_id = admin(&http, &cp, "GET", "/routes/r", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(
            &cl,
            &cert,
            &[
                ("KONG_CLUSTER_TELEMETRY_ENDPOINT", &tl),
                ("KONG_KONNECT_MODE", "on"),
                ("KONG_ANALYTICS_BUFFER_SIZE_LIMIT", "10"),
            ],
        ),
    );
    let p = dp.dp_proxy();
    until(&http, &format!("{p}/a"), 200, Duration::from_secs(10)).await;
    let n = node_id(&dp);
    let key = (n.clone(), route_id.clone(), 200u64);
    until_analytics(
        &http,
        &cp,
        Duration::from_secs(15),
        &[(key.clone(), 1)].into_iter().collect(),
    )
    .await;
    // Down: six requests wait in the buffer and arrive once it is back.
    cp.kill9();
    hit(&http, &format!("{p}/a"), 6, 200).await;
    dp.wait_log("failed to send analytics", Duration::from_secs(10));
    let mut cp = Node::start(&dir.path().join("cp"), &cp_e);
    until_analytics(
        &http,
        &cp,
        Duration::from_secs(30),
        &[(key.clone(), 7)].into_iter().collect(),
    )
    .await;
    // Down again: fifteen requests, ten fit, five are dropped and counted.
    cp.kill9();
    hit(&http, &format!("{p}/a"), 15, 200).await;
    let metrics = http
        .get(format!("{}/metrics", dp.status.as_ref().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gantry_telemetry_dropped_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_telemetry_buffered_requests 10"),
        "{metrics}"
    );
    let cp = Node::start(&dir.path().join("cp"), &cp_e);
    until_analytics(
        &http,
        &cp,
        Duration::from_secs(30),
        &[(key, 17)].into_iter().collect(),
    )
    .await;
}

/// Access log lines carry the request id the client and the upstream see; JSON when
/// `log_format = json`; the status listener exposes latency histograms and target health.
#[tokio::test(flavor = "multi_thread")]
async fn access_logs_request_ids_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let up = echo().await;
    let node = Node::start(&dir.path().join("n"), &env(&[("KONG_LOG_FORMAT", "json")]));
    admin(&http, &node, "POST", "/upstreams", json!({"name": "pool"})).await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/pool/targets",
        json!({"target": up}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "s", "host": "pool"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/a"]}),
    )
    .await;
    let proxy = node.proxy.clone().unwrap();
    until(&http, &format!("{proxy}/a"), 200, Duration::from_secs(10)).await;
    let r = http.get(format!("{proxy}/a?x=1")).send().await.unwrap();
    let id = r.headers()["x-kong-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-kong-request-id"], id.as_str(), "{body}");
    let log = dir.path().join("n/logs/access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&id)) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line with {id}: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["uri"], "/a?x=1");
    assert_eq!(entry["method"], "GET");
    assert!(
        entry["latencies"]["upstream_ms"].as_f64().is_some(),
        "{entry}"
    );
    // A 404 gets an id too.
    let r = http.get(format!("{proxy}/none")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-kong-request-id"));
    // The error log is JSON too.
    let err = std::fs::read_to_string(dir.path().join("n/logs/error.log")).unwrap();
    let first = err.lines().next().unwrap();
    assert!(serde_json::from_str::<Value>(first).is_ok(), "{first}");
    let metrics = http
        .get(format!("{}/metrics", node.status.as_ref().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gantry_http_request_duration_ms_bucket{le=\"+Inf\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gantry_upstream_target_health{{upstream=\"pool\",target=\"{up}\"}} 1"
        )),
        "{metrics}"
    );
}

/// An HTTPS forward proxy (TLS, then HTTP CONNECT with basic authentication) in this test
/// process, with a self-signed certificate. Returns its port and the count of tunnels opened.
async fn https_connect_proxy() -> (u16, Arc<AtomicU64>) {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let (pem, key) = gantry_protocol::tls::self_signed("localhost", 86_400).unwrap();
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let tunnels = Arc::new(AtomicU64::new(0));
    let t = tunnels.clone();
    tokio::spawn(async move {
        // Bounded: a handful of connections is all a test makes.
        for _ in 0..64 {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, t) = (acceptor.clone(), t.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        let t = t.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("proxy-authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            // gantry:s3cret
                            let ok = auth.as_deref() == Some("Basic Z2FudHJ5OnMzY3JldA==");
                            if req.method() != hyper::Method::CONNECT || !ok {
                                let mut r = hyper::Response::new(Empty::<bytes::Bytes>::new());
                                *r.status_mut() = hyper::StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                                return Ok::<_, std::convert::Infallible>(r);
                            }
                            let target = req.uri().to_string();
                            let up = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let (Ok(client), Ok(mut server)) =
                                    (up.await, tokio::net::TcpStream::connect(&target).await)
                                else {
                                    return;
                                };
                                t.fetch_add(1, Ordering::SeqCst);
                                let mut client = TokioIo::new(client);
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            });
                            Ok(hyper::Response::new(Empty::<bytes::Bytes>::new()))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, tunnels)
}

/// `proxy_server = https://...`: TLS to the forward proxy, then CONNECT inside it. With
/// `proxy_server_ssl_verify = off` the self-signed proxy is accepted; with `on` it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_reach_the_control_plane_through_an_https_forward_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let (port, tunnels) = https_connect_proxy().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    service_and_route(&http, &cp, &up, "/a").await;
    let via = format!("https://gantry:s3cret@localhost:{port}");
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(
            cp.cluster.as_ref().unwrap(),
            &cert,
            &[
                ("KONG_CLUSTER_USE_PROXY", "on"),
                ("KONG_PROXY_SERVER", &via),
                ("KONG_PROXY_SERVER_SSL_VERIFY", "off"),
            ],
        ),
    );
    until(
        &http,
        &format!("{}/a", dp.dp_proxy()),
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(tunnels.load(Ordering::SeqCst) >= 1);
    let strict = Node::start(
        &dir.path().join("dp2"),
        &dp_env(
            cp.cluster.as_ref().unwrap(),
            &cert,
            &[
                ("KONG_CLUSTER_USE_PROXY", "on"),
                ("KONG_PROXY_SERVER", &via),
            ],
        ),
    );
    strict.wait_log("TLS with the forward proxy", Duration::from_secs(10));
}

/// `gantry quickstart --version X`: the data plane, and the commands printed for more, run
/// the binary of version X that install.sh put in the versions directory; a version that is
/// not installed stops the quickstart, naming it and the way to install it.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_runs_the_data_plane_version_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let versions = dir.path().join("versions");
    std::fs::create_dir_all(versions.join("9.9.0-qs")).unwrap();
    let installed = versions.join("9.9.0-qs/gantry");
    std::os::unix::fs::symlink(gantry_testkit::process::bin(), &installed).unwrap();
    let out = cmd(&[("GANTRY_VERSIONS_DIR".into(), versions.display().to_string())])
        .args(["quickstart", "--version", "0.0.0-none", "-p"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gantry 0.0.0-none is not installed")
            && err.contains("install.sh --version 0.0.0-none"),
        "{err}"
    );
    let qs = dir.path().join("qs");
    let (mut child, said, proxy_port, _) = quickstart(
        &["--version", "9.9.0-qs", "-p", qs.to_str().unwrap()],
        &[("GANTRY_VERSIONS_DIR".into(), versions.display().to_string())],
    );
    let text = said.join("\n");
    assert!(
        text.contains("a second data plane (gantry 9.9.0-qs)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} start -p", installed.display())),
        "{text}"
    );
    // The running data plane is that binary.
    let procs = std::fs::read_dir("/proc").unwrap();
    let runs_it = procs.filter_map(Result::ok).any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&installed.display().to_string()))
            .unwrap_or(false)
    });
    assert!(runs_it, "no process runs {}", installed.display());
    let r = reqwest::get(format!("http://127.0.0.1:{proxy_port}/mock"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop_quickstart(&mut child);
}
