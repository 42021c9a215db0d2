//! The web console (admin_gui_listen) through real `gantry` processes: its files, sessions and
//! CSRF protection, the v2 API through a session, roles, the New Data Plane Node wizard (whose
//! command starts a real data plane), the nodes view and analytics; then the browser flows of
//! `console/tests/flows.mjs` in Debian's Chromium.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_testkit::http::eventually;
use gantry_testkit::process::{self, Node};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// A control plane with its console, and an admin and a viewer token.
struct Setup {
    cp: Node,
    admin: String,
    viewer: String,
}

fn control_plane(dir: &Path) -> Setup {
    let cert = process::gen_cert(dir, "cluster");
    let env = process::cp_env(&cert, &[]);
    let prefix = dir.join("cp");
    let admin = process::token(&prefix, &env, "ops", &[]);
    let viewer = process::token(
        &prefix,
        &env,
        "auditor",
        &["--kind", "system", "--role", "viewer"],
    );
    let cp = Node::start(&prefix, &env);
    Setup { cp, admin, viewer }
}

/// A browser's side of the console: its cookie and CSRF token.
struct Session {
    http: Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Session {
    async fn login(http: &Client, base: &str, token: &str) -> Session {
        let r = http
            .post(format!("{base}/api/session"))
            .header("origin", base)
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        Session {
            http: http.clone(),
            base: base.to_string(),
            cookie,
            csrf: body["csrf_token"].as_str().unwrap().to_string(),
        }
    }

    /// A call from the console's page: cookie, CSRF token and the console's origin.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .header("x-csrf-token", &self.csrf);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }
}

/// The directory holding the `gantry` binary the tests run.
fn bin_dir() -> PathBuf {
    process::bin().parent().unwrap().to_path_buf()
}

#[tokio::test]
async fn files_sessions_and_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path());
    let base = s.cp.console.clone().expect("the console listens");
    let http = Client::new();

    // The page and its files: embedded, with a strict CSP; any other path is the page.
    let page = http
        .get(format!("{base}/control-planes/x/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let js = http
        .get(format!("{base}/assets/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["content-encoding"], "gzip");
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = http
        .get(format!("{base}/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // No anonymous access.
    let (st, me) = gantry_testkit::http::get_json(&http, &format!("{base}/api/session")).await;
    assert_eq!((st, me), (200, json!({"authenticated": false})));
    let (st, _) =
        gantry_testkit::http::get_json(&http, &format!("{base}/api/v2/control-planes")).await;
    assert_eq!(st, 401);
    let wrong = http
        .post(format!("{base}/api/session"))
        .json(&json!({"token": "kpat_wrongwrongwrongwrongwrongwrongwrongwrongwrongwr"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    // Login CSRF: a login posted by another site is refused.
    let cross = http
        .post(format!("{base}/api/session"))
        .header("origin", "http://evil.example")
        .json(&json!({"token": s.admin}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);

    // The session cookie: HttpOnly, SameSite=Strict, Secure and __Host- (loopback listener).
    let r = http
        .post(format!("{base}/api/session"))
        .json(&json!({"token": s.admin}))
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in [
        "__Host-gantry_console=",
        "; Path=/",
        "; HttpOnly",
        "; SameSite=Strict",
        "; Secure",
    ] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    let admin = Session::login(&http, &base, &s.admin).await;
    assert_ne!(
        admin.cookie,
        set.split(';').next().unwrap(),
        "each login gets a new session id"
    );
    let me = admin.get("/api/session").await;
    assert_eq!(me["org_admin"], true);
    assert_eq!(me["csrf_token"], admin.csrf.as_str());

    // Changes need the CSRF token and the console's origin.
    let body = json!({"name": "team-a", "labels": {"env": "test"}});
    for (header, value) in [
        ("x-csrf-token", "0".repeat(64)),
        ("origin", "http://evil.example".into()),
    ] {
        let r = http
            .post(format!("{base}/api/v2/control-planes"))
            .header("cookie", &admin.cookie)
            .header(
                "origin",
                if header == "origin" {
                    value.as_str()
                } else {
                    base.as_str()
                },
            )
            .header(
                "x-csrf-token",
                if header == "x-csrf-token" {
                    value.as_str()
                } else {
                    admin.csrf.as_str()
                },
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{header}: {value}");
    }
    let (st, cp) = admin
        .call(Method::POST, "/api/v2/control-planes", Some(body.clone()))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{cp}");
    let id = cp["id"].as_str().unwrap().to_string();
    // The v2 API's own errors come through as they are.
    let (st, err) = admin
        .call(Method::POST, "/api/v2/control-planes", Some(body))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    let (st, err) = admin
        .call(
            Method::POST,
            "/api/v2/control-planes",
            Some(json!({"name": "x", "bogus": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("bogus"), "{err}");

    // A viewer sees everything and changes nothing.
    let viewer = Session::login(&http, &base, &s.viewer).await;
    assert_eq!(viewer.get("/api/session").await["org_admin"], false);
    let listed = viewer.get("/api/v2/control-planes?page[size]=100").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str()));
    assert_eq!(
        viewer
            .get(&format!("/api/console/control-planes/{id}"))
            .await["role"],
        "viewer"
    );
    let (st, _) = viewer
        .call(
            Method::POST,
            &format!("/api/v2/control-planes/{id}/core-entities/services"),
            Some(json!({"name": "s", "url": "http://x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = viewer
        .call(
            Method::POST,
            &format!("/api/console/control-planes/{id}/data-plane-certificates"),
            Some(json!({"version": gantry_model::GANTRY_VERSION, "platform": "linux"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = viewer
        .call(
            Method::DELETE,
            &format!("/api/v2/control-planes/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Logout ends the session here, not only in the browser.
    let (st, _) = viewer.call(Method::DELETE, "/api/session", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, me) = viewer.call(Method::GET, "/api/session", None).await;
    assert_eq!((st, me), (StatusCode::OK, json!({"authenticated": false})));
    let (st, _) = viewer
        .call(Method::GET, "/api/v2/control-planes", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // A revoked token ends its sessions at their next request.
    let env = process::cp_env(&process::gen_cert(dir.path(), "unused"), &[]);
    let listed = process::succeed(
        process::cmd(&env)
            .args(["tokens", "list", "-p"])
            .arg(dir.path().join("cp")),
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let ops_id = listed
        .lines()
        .find(|l| l.contains("ops"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| uuid::Uuid::parse_str(w).is_ok())
        })
        .unwrap_or_else(|| panic!("no token id in: {listed}"))
        .to_string();
    process::succeed(
        process::cmd(&env)
            .args(["tokens", "revoke", &ops_id, "-p"])
            .arg(dir.path().join("cp")),
    );
    eventually(
        Duration::from_secs(10),
        "the revoked token's session ends",
        || async {
            admin
                .call(Method::GET, "/api/v2/control-planes", None)
                .await
                .0
                == StatusCode::UNAUTHORIZED
        },
    )
    .await;
}

#[tokio::test]
async fn the_wizard_starts_a_data_plane_that_the_nodes_view_follows() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path());
    let base = s.cp.console.clone().unwrap();
    let http = Client::new();
    let admin = Session::login(&http, &base, &s.admin).await;
    let (_, cp) = admin
        .call(
            Method::POST,
            "/api/v2/control-planes",
            Some(json!({"name": "wizard"})),
        )
        .await;
    let id = cp["id"].as_str().unwrap().to_string();
    let console = format!("/api/console/control-planes/{id}");

    let versions = admin.get(&format!("{console}/versions")).await;
    assert_eq!(versions["versions"][0], gantry_model::GANTRY_VERSION);
    // Refusals name what is wrong, and pin nothing.
    for (body, named) in [
        (json!({"version": "9.9.9", "platform": "linux"}), "version"),
        (
            json!({"version": gantry_model::GANTRY_VERSION, "platform": "windows"}),
            "platform",
        ),
        (
            json!({"version": gantry_model::GANTRY_VERSION, "platform": "linux", "labels": {"bad key": "x"}}),
            "labels",
        ),
        (
            json!({"version": gantry_model::GANTRY_VERSION, "platform": "linux", "colour": "red"}),
            "colour",
        ),
    ] {
        let (st, err) = admin
            .call(
                Method::POST,
                &format!("{console}/data-plane-certificates"),
                Some(body),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
        assert!(err["message"].as_str().unwrap().contains(named), "{err}");
    }
    let pinned = admin
        .get(&format!(
            "/api/v2/control-planes/{id}/dp-client-certificates"
        ))
        .await;
    assert_eq!(
        pinned["items"].as_array().map(Vec::len),
        Some(0),
        "{pinned}"
    );

    let (st, made) = admin
        .call(
            Method::POST,
            &format!("{console}/data-plane-certificates"),
            Some(json!({"version": gantry_model::GANTRY_VERSION, "platform": "linux", "labels": {"env": "test"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    let command = made["command"].as_str().unwrap();
    for setting in [
        "KONG_ROLE='data_plane'",
        "KONG_DATABASE='off'",
        "KONG_CLUSTER_MTLS='pki'",
        "KONG_CLUSTER_CONTROL_PLANE=",
        "KONG_CLUSTER_SERVER_NAME=",
        "KONG_CLUSTER_TELEMETRY_ENDPOINT=",
        "KONG_CLUSTER_TELEMETRY_SERVER_NAME=",
        "KONG_LUA_SSL_TRUSTED_CERTIFICATE=",
        "KONG_KONNECT_MODE='on'",
        "KONG_CLUSTER_DP_LABELS='env:test'",
    ] {
        assert!(
            command.contains(setting),
            "the command lacks {setting}:\n{command}"
        );
    }
    assert!(command.contains(made["key"].as_str().unwrap().trim()));
    // The certificate is Konnect's: 10 years, pinned as a dp-client-certificate.
    let pem = made["cert"].as_str().unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let c = p.parse_x509().unwrap();
    let years =
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / (365 * 86_400);
    assert_eq!(years, 10);
    let pinned = admin
        .get(&format!(
            "/api/v2/control-planes/{id}/dp-client-certificates"
        ))
        .await;
    assert_eq!(pinned["items"][0]["id"], made["certificate_id"], "{pinned}");
    for platform in ["docker", "kubernetes"] {
        let (st, other) = admin
            .call(
                Method::POST,
                &format!("{console}/data-plane-certificates"),
                Some(json!({"version": gantry_model::GANTRY_VERSION, "platform": platform})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{other}");
        assert!(!other["command"].as_str().unwrap().is_empty());
    }

    // Run exactly that command, with only the machine's own settings around it.
    let script = dir.path().join("run.sh");
    std::fs::write(&script, command).unwrap();
    let proxy = format!("127.0.0.1:{}", gantry_testkit::free_port());
    let mut node = std::process::Command::new("bash");
    for (k, _) in std::env::vars() {
        if k.starts_with("KONG_") || k.starts_with("GANTRY_") {
            node.env_remove(k);
        }
    }
    let mut node = KillOnDrop(
        node.arg(&script)
            .env(
                "PATH",
                format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap()),
            )
            .env("KONG_PREFIX", dir.path().join("dp"))
            .env("KONG_PROXY_LISTEN", &proxy)
            .env("KONG_STATUS_LISTEN", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The new node shows as connected, with its version, labels and certificate.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let node_id = loop {
        let nodes = admin.get(&format!("{console}/nodes")).await;
        if let Some(n) = nodes["items"].as_array().and_then(|a| a.first()) {
            if n["status"] == "connected" && n["config_hash"] == nodes["expected_config_hash"] {
                assert_eq!(n["version"], gantry_model::GANTRY_VERSION);
                assert_eq!(n["labels"], json!({"env": "test"}));
                assert!(
                    n["cert_expiry"].as_i64().unwrap()
                        > gantry_model::unix_now() + 9 * 365 * 86_400
                );
                break n["id"].as_str().unwrap().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new node never connected: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let overview = admin.get(&console).await;
    assert_eq!(overview["nodes"]["connected"], 1, "{overview}");
    // The endpoints shown are where the listeners listen (ports chosen by the kernel here).
    let cluster = s.cp.cluster.clone().unwrap();
    assert_eq!(
        overview["control_plane"]["config"]["control_plane_endpoint"],
        format!("https://{cluster}").as_str(),
        "{overview}"
    );

    // Traffic through it shows in the analytics, per control plane and per node.
    let upstream = gantry_testkit::upstream::echo().await;
    let core = format!("/api/v2/control-planes/{id}/core-entities");
    let (st, _) = admin
        .call(
            Method::POST,
            &format!("{core}/services"),
            Some(json!({"name": "echo", "url": format!("http://{upstream}")})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = admin
        .call(
            Method::POST,
            &format!("{core}/services/echo/routes"),
            Some(json!({"name": "echo", "paths": ["/echo"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    gantry_testkit::http::until(
        &http,
        &format!("http://{proxy}/echo"),
        200,
        Duration::from_secs(20),
    )
    .await;
    for _ in 0..20 {
        http.get(format!("http://{proxy}/echo"))
            .send()
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "the analytics count the requests",
        || async {
            let a = admin
                .get(&format!("{console}/analytics?window=15m&node={node_id}"))
                .await;
            a["totals"]["requests"].as_u64().unwrap_or(0) >= 20
                && a["top"]["routes"][0]["name"] == "echo"
                && a["top"]["services"][0]["name"] == "echo"
                && a["minutes"][0]["status_classes"]["2xx"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
        },
    )
    .await;
    let (st, err) = admin
        .call(Method::GET, &format!("{console}/analytics?window=2d"), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["message"].as_str().unwrap().contains("window"));

    // Stopped, it shows as disconnected.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(node.0.id().to_string())
        .status();
    let _ = node.0.wait();
    eventually(
        Duration::from_secs(30),
        "the stopped node shows as disconnected",
        || async {
            admin.get(&format!("{console}/nodes")).await["items"][0]["status"] == "disconnected"
        },
    )
    .await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why the browser flows cannot run here, if they cannot: Node.js, the console's npm
/// packages (`npm ci` in console/) and Debian's Chromium.
fn browser_missing(console: &Path) -> Option<String> {
    let has = |c: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("node") {
        return Some("node is not installed".into());
    }
    if !console.join("node_modules/playwright-core").is_dir() {
        return Some("console/node_modules lacks playwright-core (run npm ci in console/)".into());
    }
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("Debian's chromium is not installed".into());
    }
    None
}

/// The browser flows of console/tests/flows.mjs (login, control plane, the wizard's command
/// run as shown, entities, key-auth, analytics, disconnection, a viewer's read-only console,
/// no console errors), with a screenshot per page in target/console-screenshots.
#[tokio::test]
async fn browser_flows_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let console_dir = root.join("console");
    if let Some(why) = browser_missing(&console_dir) {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the browser flows: {why}"
        );
        eprintln!("skipping the browser flows: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path());
    let upstream = gantry_testkit::upstream::echo().await;
    let shots = root.join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(console_dir.join("tests/flows.mjs"))
        .current_dir(&console_dir)
        .env("CONSOLE_URL", s.cp.console.clone().unwrap())
        .env("ADMIN_TOKEN", &s.admin)
        .env("VIEWER_TOKEN", &s.viewer)
        .env("GANTRY_BIN_DIR", bin_dir())
        .env("WORK_DIR", &work)
        .env("DP_PROXY_PORT", gantry_testkit::free_port().to_string())
        .env("DP_STATUS_PORT", gantry_testkit::free_port().to_string())
        .env("UPSTREAM_URL", format!("http://{upstream}"))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", "/usr/bin/chromium")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "the browser flows failed:\n{said}");
}
