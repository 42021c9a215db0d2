//! The `gantry` binary as users run it: real processes, real sockets, SQLite and PostgreSQL.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_testkit::process::{backends, cmd, db_env, Node};
use serde_json::{json, Value};

fn hash_line(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("configuration hash: "))
        .unwrap_or_else(|| panic!("no hash in: {out}"))
        .trim()
        .to_string()
}

fn run(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let out = cmd(env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gantry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONFIG: &str = r#"
_format_version: "3.0"
x-defaults: &defaults
  retries: 3
  read_timeout: 5000
services:
- name: billing
  url: http://billing.internal:8080/v1
  <<: *defaults
  tags: [team-a]
  routes:
  - name: billing-api
    paths: ["/billing", "~/invoices/(?<id>\\d+)$"]
    methods: [GET, POST]
    plugins:
    - name: rate-limiting
      config: { minute: 100, policy: local }
- name: users
  host: users.internal
  <<: *defaults
  routes:
  - name: users-api
    paths: ["/users"]
    plugins:
    - name: basic-auth
      config: { hide_credentials: true }
    - name: jwt
      config: { claims_to_verify: [exp] }
    - name: hmac-auth
      config: { enforce_headers: [date] }
    - name: acl
      config: { allow: [admins] }
    - name: ip-restriction
      config: { allow: ["10.0.0.0/8"] }
    - name: oauth2
      config: { enable_client_credentials: true, provision_key: pk-users, scopes: [read] }
    - name: rate-limiting
      partials: [{ id: 9f5d2a4e-3c1b-4b8e-9a7d-6e2f1c0b5a11 }]
      config: { minute: 10, policy: redis }
partials:
- id: 9f5d2a4e-3c1b-4b8e-9a7d-6e2f1c0b5a11
  name: redis-shared
  type: redis-ce
  config: { host: redis.internal, port: 6379 }
consumer_groups:
- name: gold
  plugins:
  - name: request-termination
    config: { status_code: 402 }
consumers:
- username: alice
  keyauth_credentials: [{ key: alice-key }]
  basicauth_credentials: [{ username: alice, password: s3cret }]
  jwt_secrets: [{ key: alice-jwt, secret: jwt-s3cret }]
  hmacauth_credentials: [{ username: alice-hmac, secret: hmac-s3cret }]
  acls: [{ group: admins }, { group: staff }]
  oauth2_credentials:
  - { name: app, client_id: alice-app, client_secret: app-s3cret, redirect_uris: ["https://app.example/cb"] }
  groups: [{ name: gold }]
- username: bob
  keyauth_credentials: [{ key: bob-key }]
upstreams:
- name: billing.internal
  targets: [{ target: "10.0.0.1:8080" }, { target: "10.0.0.2:8080", weight: 50 }]
plugins:
- name: cors
  config: { origins: ["*"] }
"#;

#[tokio::test]
async fn config_parse_import_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.yml");
    std::fs::write(&file, CONFIG).unwrap();
    let f = file.to_str().unwrap();
    let (ok, out, err) = run(&[], &["config", "parse", f]);
    assert!(ok, "{err}");
    assert!(out.contains("parse successful"), "{out}");
    let parsed_hash = hash_line(&out);

    // A bad file: every error listed with its path, exit code 1.
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "_format_version: \"3.0\"\nservices:\n- name: a\n  port: eighty\n  routes:\n  - paths: [nope]\n").unwrap();
    let (ok, _, err) = run(&[], &["config", "parse", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("services[0].port: expected an integer"),
        "{err}"
    );
    assert!(
        err.contains("services[0].host: required field missing"),
        "{err}"
    );
    assert!(
        err.contains("services[0].routes[0].paths.1: should start with"),
        "{err}"
    );
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, "_format_version: \"3.0\"\nservices: [\n").unwrap();
    let (ok, _, err) = run(&[], &["config", "parse", broken.to_str().unwrap()]);
    assert!(!ok && err.contains("line "), "{err}");

    for pg in backends().await {
        let env = db_env(pg.as_ref());
        let a = dir.path().join(format!("a-{}", pg.is_some()));
        let (ok, out, err) = run(&env, &["config", "db_import", f, "-p", a.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert_eq!(hash_line(&out), parsed_hash);
        // A bad file changes nothing in the store.
        let (ok, _, err) = run(
            &env,
            &[
                "config",
                "db_import",
                bad.to_str().unwrap(),
                "-p",
                a.to_str().unwrap(),
            ],
        );
        assert!(!ok, "{err}");
        let exported = dir.path().join(format!("export-{}.yml", pg.is_some()));
        let (ok, _, err) = run(
            &env,
            &[
                "config",
                "db_export",
                exported.to_str().unwrap(),
                "-p",
                a.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        // Refuses to overwrite.
        let (ok, _, err) = run(
            &env,
            &[
                "config",
                "db_export",
                exported.to_str().unwrap(),
                "-p",
                a.to_str().unwrap(),
            ],
        );
        assert!(!ok && err.contains("refusing to overwrite"), "{err}");
        // Into an empty store: the same hash.
        let fresh_pg = match pg {
            Some(_) => gantry_testkit::PgSchema::create().await,
            None => None,
        };
        let env_b = db_env(fresh_pg.as_ref());
        let b = dir.path().join(format!("b-{}", pg.is_some()));
        let (ok, out, err) = run(
            &env_b,
            &[
                "config",
                "db_import",
                exported.to_str().unwrap(),
                "-p",
                b.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(
            hash_line(&out),
            parsed_hash,
            "round trip changed the config hash"
        );
    }
}

#[test]
fn settings_errors_name_the_key_and_unknown_keys_warn() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap();
    let (ok, _, err) = run(&[("KONG_ROLE".into(), "boss".into())], &["start", "-p", p]);
    assert!(!ok);
    assert!(
        err.contains("'role'") && err.contains("traditional"),
        "{err}"
    );
    let conf = dir.path().join("gantry.conf");
    std::fs::write(&conf, "pg_port = 70000\n").unwrap();
    let (ok, _, err) = run(&[], &["start", "-c", conf.to_str().unwrap(), "-p", p]);
    assert!(!ok && err.contains("'pg_port'"), "{err}");
    std::fs::write(&conf, "this is not a setting\n").unwrap();
    let (ok, _, err) = run(&[], &["start", "-c", conf.to_str().unwrap(), "-p", p]);
    assert!(!ok && err.contains(":1:"), "{err}");
    let (ok, out, _) = run(&[], &["version"]);
    assert!(ok && out.starts_with("gantry "), "{out}");
}

#[tokio::test]
async fn graceful_shutdown_on_sigterm_and_unknown_key_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[("KONG_NO_SUCH_SETTING".into(), "1".into())]);
    let http = reqwest::Client::new();
    let root: Value = http
        .get(&node.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(root["version"].as_str().unwrap().starts_with("3."));
    assert!(dir.path().join("pids/gantry.pid").exists());
    assert!(dir.path().join("logs/error.log").exists());
    let (ok, out, _) = run(&[], &["health", "-p", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("pids/gantry.pid").exists());
    let said = node.output().join("\n");
    let log = std::fs::read_to_string(dir.path().join("logs/error.log")).unwrap();
    assert!(said.contains("unknown setting 'no_such_setting'"), "{said}");
    assert!(log.contains("unknown setting 'no_such_setting'"), "{log}");
    let (ok, _, err) = run(&[], &["health", "-p", dir.path().to_str().unwrap()]);
    assert!(!ok, "{err}");
    // The node id survives restarts.
    let id1 = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
    let node = Node::start(dir.path(), &[]);
    let root: Value = http
        .get(&node.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["node_id"], json!(id1.trim()));
}

/// `kill -9` in the middle of 1,000 writes: every write answered 2xx is there after a restart.
#[tokio::test]
async fn durability_under_kill_9() {
    for pg in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let env = db_env(pg.as_ref());
        let mut node = Node::start(dir.path(), &env);
        let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::new();
        let mut writers = Vec::new();
        for w in 0..4 {
            let (http, admin, acked) = (http.clone(), node.admin.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..250 {
                    let name = format!("c-{w}-{i}");
                    let r = http
                        .post(format!("{admin}/consumers"))
                        .json(&json!({"username": name}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().push(name),
                        _ => break,
                    }
                }
            }));
        }
        // Kill at a point in the stream that is not a boundary.
        let kill_at = 300 + (rand_u32() % 400) as usize;
        loop {
            let n = acked.lock().unwrap().len();
            if n >= kill_at || writers.iter().all(|w| w.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        node.kill9();
        for w in writers {
            let _ = w.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= kill_at.min(1000) && acked.len() < 1000,
            "killed after {} acks",
            acked.len()
        );
        // Restart: the store opens, every acknowledged write is there.
        let node = Node::start(dir.path(), &env);
        let mut stored = std::collections::HashSet::new();
        let mut next = Some(format!("{}/consumers?size=1000", node.admin));
        while let Some(url) = next {
            let page: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
            for d in page["data"].as_array().unwrap() {
                stored.insert(d["username"].as_str().unwrap().to_string());
            }
            next = page["next"].as_str().map(|n| format!("{}{n}", node.admin));
        }
        let missing: Vec<&String> = acked.iter().filter(|a| !stored.contains(*a)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged writes lost after kill -9: {missing:?}"
        );
        // And it still takes writes.
        let r = http
            .post(format!("{}/consumers", node.admin))
            .json(&json!({"username": "after"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id()
}

/// The aio-kong client (PyPI) runs its CRUD against a real gantry, over every entity it knows:
/// services, routes, plugins, consumers with key-auth, basic-auth and jwt credentials and
/// ACLs, certificates and SNIs, its `apply_json` and its pagination.
#[tokio::test]
async fn aio_kong_client_works_unchanged() {
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import kong.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_client {
        if gantry_testkit::ci() {
            panic!("aio-kong is required in CI (pip install aio-kong)");
        }
        eprintln!("SKIPPED: python3 with aio-kong not found (pip install aio-kong)");
        return;
    }
    for pg in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path(), &db_env(pg.as_ref()));
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/aio_kong_client.py"
        );
        let pair = rcgen::generate_simple_self_signed(vec!["aio.example.test".into()]).unwrap();
        let out = std::process::Command::new("python3")
            .arg(script)
            .env("KONG_ADMIN_URL", &node.admin)
            .env("AIO_CERT", pair.cert.pem())
            .env("AIO_KEY", pair.signing_key.serialize_pem())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "aio-kong failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("aio-kong: ok"));
    }
}

/// Listen flags are built or refused: `backlog=`, `so_keepalive=` (connections the proxy
/// accepts carry TCP keepalive, as `ss` shows), `bind` and `reuseport` run; `deferred`,
/// `proxy_protocol` elsewhere than on `proxy_listen` and TLS on `status_listen` stop the
/// start, naming the setting.
#[tokio::test]
async fn listen_flags_are_built_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n");
    let p = p.to_str().unwrap();
    for (key, value, says) in [
        ("KONG_PROXY_LISTEN", "127.0.0.1:0 deferred", "deferred"),
        (
            "KONG_ADMIN_LISTEN",
            "127.0.0.1:0 proxy_protocol",
            "proxy_protocol",
        ),
        ("KONG_STATUS_LISTEN", "127.0.0.1:0 ssl", "status_listen"),
    ] {
        let (ok, _, err) = run(&[(key.into(), value.into())], &["start", "-p", p]);
        assert!(!ok, "{value}");
        assert!(err.contains(says), "{value}: {err}");
        let name = key.trim_start_matches("KONG_").to_ascii_lowercase();
        assert!(err.contains(&name), "{value}: {err}");
    }
    if !gantry_testkit::have_tool("ss") {
        return;
    }
    let node = Node::start(
        &dir.path().join("ok"),
        &gantry_testkit::process::env(&[(
            "KONG_PROXY_LISTEN",
            "127.0.0.1:0 reuseport bind backlog=64 so_keepalive=120s:30s:4",
        )]),
    );
    let proxy = node.proxy.clone().unwrap();
    let port = proxy.rsplit(':').next().unwrap().to_string();
    // A connection held open: the proxy's side carries a keepalive timer.
    let stream = std::net::TcpStream::connect(proxy.trim_start_matches("http://")).unwrap();
    let mut found = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("ss")
            .args([
                "-tnoH",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ])
            .output()
            .unwrap();
        found = String::from_utf8_lossy(&out.stdout).to_string();
        if found.contains("keepalive") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found.contains("timer:(keepalive"), "{found}");
    drop(stream);
}

/// `/debug/node/log-level` reads and changes the node's log level as Kong's: a level for a
/// while (`timeout`), then `log_level`'s again; unknown levels are refused.
#[tokio::test]
async fn the_log_level_changes_at_run_time() {
    use gantry_testkit::process::{cp_env, gen_cert};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("cp"),
        &cp_env(&gen_cert(dir.path(), "c"), &[]),
    );
    let http = reqwest::Client::new();
    let get = |http: reqwest::Client, url: String| async move {
        let r = http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let put = |http: reqwest::Client, url: String| async move {
        let r = http.put(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let level = format!("{}/debug/node/log-level", node.admin);
    assert_eq!(
        get(http.clone(), level.clone()).await,
        (200, json!({"message": "log level: notice"}))
    );
    let published = "configuration published to data planes";
    let service = |name: &str| {
        let (http, url) = (http.clone(), format!("{}/services", node.admin));
        let body = json!({"name": name, "host": "example.com"});
        async move {
            assert!(http
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .is_success());
        }
    };
    service("quiet").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !node.output().iter().any(|l| l.contains(published)),
        "no debug lines at notice"
    );
    assert_eq!(
        put(http.clone(), format!("{level}/debug?timeout=2")).await,
        (200, json!({"message": "log level changed"}))
    );
    assert_eq!(
        put(http.clone(), format!("{level}/debug")).await,
        (200, json!({"message": "log level is already debug"}))
    );
    assert_eq!(
        get(http.clone(), level.clone()).await.1,
        json!({"message": "log level: debug"})
    );
    service("loud").await;
    node.wait_log(published, Duration::from_secs(5));
    assert_eq!(
        put(http.clone(), format!("{level}/chatty")).await,
        (400, json!({"message": "unknown log level: chatty"}))
    );
    assert_eq!(
        put(http.clone(), format!("{level}/info?timeout=-1")).await,
        (
            400,
            json!({"message": "timeout must be greater than or equal to 0"})
        )
    );
    // The timeout brings log_level's back.
    gantry_testkit::http::eventually(Duration::from_secs(10), "the level reverts", || {
        let (http, level) = (http.clone(), level.clone());
        async move { get(http, level).await.1 == json!({"message": "log level: notice"}) }
    })
    .await;
}

/// Kong's `/debug/cluster/log-level`: two nodes on one PostgreSQL, the level set through
/// one reaches the other within seconds, and goes back at its timeout; a control plane's
/// endpoint is `/debug/cluster/control-planes-nodes/log-level`, and each answers 404 for the
/// other's.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_log_level_reaches_every_node_of_the_database() {
    use gantry_testkit::process::{cp_env, db_env, gen_cert};
    let Some(pg) = gantry_testkit::PgSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = db_env(Some(&pg));
    let a = Node::start(&dir.path().join("a"), &db);
    let b = Node::start(&dir.path().join("b"), &db);
    let http = reqwest::Client::new();
    let level = |node: &Node| {
        let (http, url) = (http.clone(), format!("{}/debug/node/log-level", node.admin));
        async move {
            let r: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            r["message"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(level(&b).await, "log level: notice");
    let r = http
        .put(format!(
            "{}/debug/cluster/log-level/debug?timeout=12",
            a.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "log level changed"})
    );
    assert_eq!(level(&a).await, "log level: debug");
    gantry_testkit::http::eventually(Duration::from_secs(15), "the other node follows", || {
        let l = level(&b);
        async move { l.await == "log level: debug" }
    })
    .await;
    // A control plane's own endpoint; the traditional one is not its.
    let r = http
        .put(format!(
            "{}/debug/cluster/control-planes-nodes/log-level/info",
            a.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let cert = gen_cert(dir.path(), "c");
    let mut env = cp_env(&cert, &[]);
    env.extend(db.iter().cloned());
    let cp = Node::start(&dir.path().join("cp"), &env);
    let r = http
        .put(format!("{}/debug/cluster/log-level/info", cp.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .put(format!(
            "{}/debug/cluster/control-planes-nodes/log-level/warn",
            cp.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(level(&cp).await, "log level: warn");
    // The traditional nodes' timeout runs out: both go back to log_level's.
    gantry_testkit::http::eventually(Duration::from_secs(25), "the level reverts", || {
        let (la, lb) = (level(&a), level(&b));
        async move { la.await == "log level: notice" && lb.await == "log level: notice" }
    })
    .await;
    let endpoints = |node: &Node| {
        let (http, url) = (http.clone(), format!("{}/endpoints", node.admin));
        async move {
            let r: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            r["data"].clone()
        }
    };
    assert!(endpoints(&a)
        .await
        .as_array()
        .unwrap()
        .contains(&json!("/debug/cluster/log-level/{log_level}")));
    assert!(endpoints(&cp).await.as_array().unwrap().contains(&json!(
        "/debug/cluster/control-planes-nodes/log-level/{log_level}"
    )));
}

/// The Admin API over TLS, as Kong's `ssl` admin_listen: a generated certificate, or
/// `admin_ssl_cert`/`admin_ssl_cert_key`; HTTP/2 where `http2` is given.
#[tokio::test]
async fn the_admin_api_answers_over_tls_and_http2() {
    if !gantry_testkit::have_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Generated certificate, HTTP/2 offered.
    let node = Node::start(
        &dir.path().join("a"),
        &gantry_testkit::process::env(&[
            ("KONG_ADMIN_LISTEN", "127.0.0.1:0 ssl http2"),
            ("KONG_PROXY_LISTEN", "off"),
        ]),
    );
    assert!(node.admin.starts_with("https://"), "{}", node.admin);
    let got = curl(&[
        "-sk",
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("{}/status", node.admin),
    ]);
    assert_eq!(got, "2 200");
    drop(node);
    // Without http2: HTTP/1.1 only.
    let node = Node::start(
        &dir.path().join("b"),
        &gantry_testkit::process::env(&[
            ("KONG_ADMIN_LISTEN", "127.0.0.1:0 ssl"),
            ("KONG_PROXY_LISTEN", "off"),
        ]),
    );
    let got = curl(&[
        "-sk",
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("{}/", node.admin),
    ]);
    assert_eq!(got, "1.1 200");
    drop(node);
    // A given certificate, checked by the client.
    let (cert, key, _) = gantry_testkit::admin::certs();
    let (c, k) = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    let node = Node::start(
        &dir.path().join("c"),
        &gantry_testkit::process::env(&[
            ("KONG_ADMIN_LISTEN", "127.0.0.1:0 ssl"),
            ("KONG_PROXY_LISTEN", "off"),
            ("KONG_ADMIN_SSL_CERT", c.to_str().unwrap()),
            ("KONG_ADMIN_SSL_CERT_KEY", k.to_str().unwrap()),
        ]),
    );
    let port = node.admin.rsplit(':').next().unwrap().to_string();
    let got = curl(&[
        "-s",
        "--cacert",
        c.to_str().unwrap(),
        "--resolve",
        &format!("example.com:{port}:127.0.0.1"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://example.com:{port}/status"),
    ]);
    assert_eq!(got, "200");
    drop(node);
    // Half a certificate setting stops the start, naming what is missing.
    let (ok, _, err) = run(
        &gantry_testkit::process::env(&[
            ("KONG_ADMIN_LISTEN", "127.0.0.1:0 ssl"),
            ("KONG_ADMIN_SSL_CERT", c.to_str().unwrap()),
        ]),
        &["start", "-p", dir.path().join("d").to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("admin_ssl_cert_key"), "{err}");
}

/// A node started with the common soft limit of 1,024 open files raises it to the hard limit:
/// every connection is an open file (500 slow clients and their upstreams would not fit).
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 1024 && exec \"$0\" start -p \"$1\"")
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .arg(dir.path())
        .env("KONG_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KONG_ADMIN_GUI_LISTEN", "off")
        .env("KONG_PROXY_LISTEN", "127.0.0.1:0")
        .env("KONG_STATUS_LISTEN", "off")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dir.path().join("pids/gantry.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
}

/// With `worker_threads = 2` a node has two proxy workers, as nginx has worker processes: each
/// its own socket of the listener (`SO_REUSEPORT`), its own accept loop on a thread of its own,
/// both serving; and the node still stops on SIGTERM.
#[tokio::test]
async fn each_worker_accepts_on_its_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = gantry_testkit::upstream::echo().await;
    let mut node = Node::start(
        &dir.path().join("n"),
        &gantry_testkit::process::env(&[("KONG_WORKER_THREADS", "2")]),
    );
    let http = reqwest::Client::new();
    gantry_testkit::process::service_and_route(&http, &node, &upstream, "/w").await;
    let proxy = node.proxy.clone().unwrap();
    gantry_testkit::process::proxy_until(&http, &node, "/w", 200).await;
    let port = proxy.rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("( sport = :{port} )")])
        .output()
        .unwrap();
    let sockets = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(sockets, 2, "one listening socket per worker on :{port}");
    let pid = node.child.id();
    let worker_cpu = || {
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == "gantry-worker-1" {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
                let f: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
                return Some(f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap());
            }
        }
        None
    };
    let before = worker_cpu().expect("a thread named gantry-worker-1");
    // 64 connections of 50 requests each: the kernel spreads them over both sockets.
    let mut clients = Vec::new();
    for _ in 0..64 {
        let url = format!("{proxy}/w");
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            for _ in 0..50 {
                assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let after = worker_cpu().unwrap();
    assert!(
        after > before,
        "worker 1 served none of 3,200 requests ({before} -> {after} ticks)"
    );
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(10)).success());
}
