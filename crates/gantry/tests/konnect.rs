//! Konnect in a box: control planes through the v2 API, each with its own configuration, and
//! access tokens on every management endpoint; through real `gantry` processes.

use std::time::Duration;

use gantry_testkit::process::{self, cmd, succeed, Node};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    http: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let res = r.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn cp_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let cert = process::gen_cert(dir, "cluster");
    process::cp_env(&cert, &[])
}

#[tokio::test]
async fn control_planes_through_the_v2_api_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("cp");
    let env = cp_env(dir.path());
    let admin = process::token(&prefix, &env, "ops", &["--role", "admin"]);
    let node = Node::start(&prefix, &env);
    let http = Client::new();
    let v2 = format!("{}/v2/control-planes", node.admin);

    // No token, a malformed one, a well-formed unknown one: 401 in Konnect's shape.
    let (s, body) = call(&http, Method::GET, &v2, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 401);
    assert_eq!(body["title"], "Unauthorized");
    assert!(body["instance"]
        .as_str()
        .unwrap()
        .starts_with("gantry:trace:"));
    let forged = format!("kpat_{}", "A".repeat(48));
    for t in ["nope", forged.as_str()] {
        let (s, _) = call(&http, Method::GET, &v2, Some(t), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{t}");
    }

    // The default control plane is listed.
    let (s, list) = call(&http, Method::GET, &v2, Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["meta"]["page"]["total"], 1);
    assert_eq!(list["data"][0]["name"], "default");

    // Create A and B; a name taken is 409; a bad label, an unknown field, a missing name: 400
    // naming the field.
    let mut ids = Vec::new();
    for name in ["team-a", "team-b"] {
        let (s, cp) = call(
            &http,
            Method::POST,
            &v2,
            Some(&admin),
            Some(json!({"name": name, "labels": {"env": "test"}, "description": "d"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{cp}");
        assert_eq!(cp["config"]["cluster_type"], "CLUSTER_TYPE_CONTROL_PLANE");
        assert_eq!(cp["config"]["auth_type"], "pinned_client_certs");
        assert!(cp["config"]["control_plane_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://"));
        assert!(cp["created_at"].as_str().unwrap().ends_with('Z'));
        ids.push(cp["id"].as_str().unwrap().to_string());
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let (s, e) = call(
        &http,
        Method::POST,
        &v2,
        Some(&admin),
        Some(json!({"name": "team-a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    for (bad, field) in [
        (
            json!({"name": "x", "labels": {"kong-x": "y"}}),
            "labels.kong-x",
        ),
        (json!({"name": "x", "colour": "red"}), "colour"),
        (json!({"description": "no name"}), "name"),
        (json!({"name": "x", "auth_type": "password"}), "auth_type"),
        (json!({"name": "x", "cloud_gateway": true}), "cloud_gateway"),
    ] {
        let (s, e) = call(&http, Method::POST, &v2, Some(&admin), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["invalid_parameters"][0]["field"], field, "{e}");
    }
    // Filters and pages.
    let (_, f) = call(
        &http,
        Method::GET,
        &format!("{v2}?filter[name][contains]=team&page[size]=1&page[number]=2"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(f["meta"]["page"]["total"], 2, "{f}");
    assert_eq!(f["data"][0]["name"], "team-b", "{f}");
    let (_, f) = call(
        &http,
        Method::GET,
        &format!("{v2}?labels=env:test"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(f["meta"]["page"]["total"], 2, "{f}");
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{v2}?page[size]=0"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Patch: rename, drop a label.
    let (s, p) = call(
        &http,
        Method::PATCH,
        &format!("{v2}/{b}"),
        Some(&admin),
        Some(json!({"name": "team-b2", "labels": {"env": null, "tier": "gold"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["name"], "team-b2");
    assert_eq!(p["labels"], json!({"tier": "gold"}));

    // The same service and route names in A and B, each in its own configuration.
    for id in [&a, &b] {
        let ce = format!("{v2}/{id}/core-entities");
        let (s, svc) = call(
            &http,
            Method::POST,
            &format!("{ce}/services"),
            Some(&admin),
            Some(json!({"name": "billing", "url": "http://127.0.0.1:9"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{svc}");
        let (s, r) = call(
            &http,
            Method::POST,
            &format!("{ce}/services/billing/routes"),
            Some(&admin),
            Some(json!({"name": "bills", "paths": [format!("/{id}")]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
    }
    let (_, ra) = call(
        &http,
        Method::GET,
        &format!("{v2}/{a}/core-entities/routes"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(ra["data"].as_array().unwrap().len(), 1, "{ra}");
    assert_eq!(ra["data"][0]["paths"], json!([format!("/{a}")]));
    // Kong's Admin API at / is the default control plane's: it sees neither.
    let (_, def) = call(
        &http,
        Method::GET,
        &format!("{}/routes", node.admin),
        None,
        None,
    )
    .await;
    assert_eq!(def["data"], json!([]), "{def}");
    // A control plane's Admin API serves entities, not the node's endpoints.
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{v2}/{a}/core-entities/config"),
        Some(&admin),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, h) = call(
        &http,
        Method::GET,
        &format!("{v2}/{a}/expected-config-hash"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_eq!(h["expected_hash"].as_str().unwrap().len(), 32, "{h}");
    let (_, v) = call(
        &http,
        Method::GET,
        &format!("{v2}/{a}/expected-config-version"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(v["expected_config_version"], "2", "{v}");

    // A viewer of A: reads A, may not write it, does not see B.
    let viewer = process::token(
        &prefix,
        &env,
        "reader",
        &["--role", "viewer", "--control-plane", "team-a"],
    );
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{v2}/{a}/core-entities/services"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = call(
        &http,
        Method::POST,
        &format!("{v2}/{a}/core-entities/services"),
        Some(&viewer),
        Some(json!({"name": "x", "host": "example.com"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["status"], 403);
    let (s, _) = call(
        &http,
        Method::PATCH,
        &format!("{v2}/{a}"),
        Some(&viewer),
        Some(json!({"description": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for url in [
        format!("{v2}/{b}"),
        format!("{v2}/{b}/core-entities/services"),
    ] {
        let (s, _) = call(&http, Method::GET, &url, Some(&viewer), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{url}");
    }
    let (_, l) = call(&http, Method::GET, &v2, Some(&viewer), None).await;
    assert_eq!(l["meta"]["page"]["total"], 1, "{l}");
    let (s, _) = call(
        &http,
        Method::POST,
        &v2,
        Some(&viewer),
        Some(json!({"name": "c"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Revoked and expired tokens: 401.
    let list = succeed(cmd(&env).args(["tokens", "list", "-p"]).arg(&prefix));
    let listing = String::from_utf8_lossy(&list.stdout).to_string();
    let reader_id = listing
        .lines()
        .find(|l| l.contains("\treader\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_string();
    assert!(
        !listing.contains(&viewer) && !listing.contains(&admin),
        "{listing}"
    );
    succeed(
        cmd(&env)
            .args(["tokens", "revoke", &reader_id, "-p"])
            .arg(&prefix),
    );
    let (s, e) = call(
        &http,
        Method::GET,
        &format!("{v2}/{a}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    let short = process::token(&prefix, &env, "short", &["--expires-in", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, e) = call(&http, Method::GET, &v2, Some(&short), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");

    // Deleting B removes its configuration; the default cannot be deleted.
    let (s, _) = call(
        &http,
        Method::DELETE,
        &format!("{v2}/{b}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{v2}/{b}/core-entities/routes"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let default_id = list_ids(&http, &v2, &admin, "default").await;
    let (s, _) = call(
        &http,
        Method::DELETE,
        &format!("{v2}/{default_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The CLI sees the same control planes.
    let out = succeed(
        cmd(&env)
            .args(["control-planes", "list", "-p"])
            .arg(&prefix),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("team-a") && !text.contains("team-b2"),
        "{text}"
    );

    // Failed attempts from one client are cut off.
    let mut last = StatusCode::OK;
    for _ in 0..12 {
        last = call(&http, Method::GET, &v2, Some(&forged), None).await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);

    // No token is in clear in the store or the logs.
    drop(node);
    let db = std::fs::read(prefix.join("gantry.db")).unwrap_or_default();
    let wal = std::fs::read(prefix.join("gantry.db-wal")).unwrap_or_default();
    let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
    for t in [&admin, &viewer, &short] {
        let needle = t.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
        assert!(!log.contains(t.as_str()));
        // Nor its secret part alone.
        assert!(!log.contains(&t[17..]));
    }
    assert!(log.contains("access token refused"), "failures are logged");
}

async fn list_ids(http: &Client, v2: &str, token: &str, name: &str) -> String {
    let (_, l) = call(
        http,
        Method::GET,
        &format!("{v2}?filter[name][eq]={name}"),
        Some(token),
        None,
    )
    .await;
    l["data"][0]["id"].as_str().unwrap().to_string()
}

/// Kong's Admin API needs a token when it listens beyond loopback; a node refuses to start so
/// without one.
#[tokio::test]
async fn the_admin_api_beyond_loopback_requires_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("n");
    let mut env = process::env(&[("KONG_ADMIN_LISTEN", "0.0.0.0:0")]);
    let out = cmd(&env)
        .args(["start", "-p"])
        .arg(&prefix)
        .env("KONG_PROXY_LISTEN", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_listen"), "{err}");

    let admin = process::token(&prefix, &env, "ops", &[]);
    let cps = succeed(
        cmd(&env)
            .args(["control-planes", "create", "other", "-p"])
            .arg(&prefix),
    );
    let other = String::from_utf8_lossy(&cps.stdout).trim().to_string();
    let on_other = process::token(&prefix, &env, "other-admin", &["--control-plane", &other]);
    let viewer_default = process::token(
        &prefix,
        &env,
        "default-viewer",
        &["--role", "viewer", "--control-plane", "default"],
    );
    env.push(("KONG_PROXY_LISTEN".into(), "off".into()));
    let node = Node::start(&prefix, &env);
    let base = node.admin.replace("0.0.0.0", "127.0.0.1");
    let http = Client::new();
    let (s, e) = call(&http, Method::GET, &format!("{base}/services"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("Invalid credentials"));
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{base}/services"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Kong Manager's header works too.
    let res = http
        .get(format!("{base}/services"))
        .header("Kong-Admin-Token", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{base}/services"),
        Some(&on_other),
        None,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a token for another control plane"
    );
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{base}/services"),
        Some(&viewer_default),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{base}/services"),
        Some(&viewer_default),
        Some(json!({"name": "s", "host": "example.com"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{base}/services"),
        Some(&admin),
        Some(json!({"name": "s", "host": "example.com"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
}

/// Data planes attach to the control plane their certificate proves: each gets its own
/// control plane's configuration only; an SNI naming another control plane than the one that
/// pins the certificate is refused; unpinning a certificate disconnects exactly the data planes
/// that used it.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_attach_to_their_own_control_plane() {
    use gantry_testkit::pki::Pki;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let http = Client::new();
    let up = gantry_testkit::upstream::echo().await;
    // The control plane's certificate names every control plane's endpoint, as Konnect's do.
    let cp_cert = pki.leaf_for("cp", &["kong_clustering", "*.cp.gantry.test"], 2020, 2090);
    let prefix = dir.path().join("cp");
    let cp_env = process::cp_env(
        &cp_cert,
        &[
            ("KONG_CLUSTER_MTLS", "pki"),
            ("KONG_CLUSTER_CA_CERT", &pki.ca),
            ("KONG_CLUSTER_ENDPOINT_DOMAIN", "gantry.test"),
        ],
    );
    let token = process::token(&prefix, &cp_env, "ops", &[]);
    let cp = Node::start(&prefix, &cp_env);
    let v2 = format!("{}/v2/control-planes", cp.admin);
    let cluster = cp.cluster.clone().unwrap();

    // Two control planes, each with a route of the same name to its own path, and each
    // pinning its own data plane certificate.
    let mut planes = Vec::new();
    for name in ["a", "b"] {
        let (_, c) = call(
            &http,
            Method::POST,
            &v2,
            Some(&token),
            Some(json!({"name": name})),
        )
        .await;
        let id = c["id"].as_str().unwrap().to_string();
        let endpoint = c["config"]["control_plane_endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let sni = endpoint
            .trim_start_matches("https://")
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string();
        assert!(sni.ends_with(".cp.gantry.test"), "{sni}");
        let ce = format!("{v2}/{id}/core-entities");
        let (s, svc) = call(
            &http,
            Method::POST,
            &format!("{ce}/services"),
            Some(&token),
            Some(json!({"name": "s", "url": format!("http://{up}")})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{svc}");
        let (s, r) = call(
            &http,
            Method::POST,
            &format!("{ce}/services/s/routes"),
            Some(&token),
            Some(json!({"name": "r", "paths": [format!("/{name}")]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        let cert = process::gen_cert(dir.path(), &format!("dp-{name}"));
        let pem = std::fs::read_to_string(&cert.0).unwrap();
        let (s, c) = call(
            &http,
            Method::POST,
            &format!("{v2}/{id}/dp-client-certificates"),
            Some(&token),
            Some(json!({"cert": pem, "title": name})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        planes.push((id, sni, cert, c["item"]["id"].as_str().unwrap().to_string()));
    }
    let telemetry = cp.telemetry.clone().unwrap();
    let dp_with = |name: &str, cert: &(String, String), sni: &str, analytics: bool| {
        let mut extra = vec![
            ("KONG_CLUSTER_MTLS", "pki"),
            ("KONG_CLUSTER_CA_CERT", pki.ca.as_str()),
            ("KONG_CLUSTER_SERVER_NAME", sni),
        ];
        if analytics {
            extra.extend([
                ("KONG_CLUSTER_TELEMETRY_ENDPOINT", telemetry.as_str()),
                ("KONG_CLUSTER_TELEMETRY_SERVER_NAME", sni),
                ("KONG_VITALS", "on"),
            ]);
        }
        Node::start(
            &dir.path().join(name),
            &process::dp_env(&cluster, cert, &extra),
        )
    };
    let dp = |name: &str, cert: &(String, String), sni: &str| dp_with(name, cert, sni, false);
    let (a_id, a_sni, a_cert, _) = planes[0].clone();
    let (b_id, b_sni, b_cert, b_cert_id) = planes[1].clone();
    let dp_a = dp("dp-a", &a_cert, &a_sni);
    // Its pinned certificate alone finds its control plane (no endpoint name).
    let dp_a2 = dp("dp-a2", &a_cert, "kong_clustering");
    // B's data plane sends analytics.
    let dp_b = dp_with("dp-b", &b_cert, &b_sni, true);
    // B's certificate dialling A's endpoint: refused.
    let intruder = dp("intruder", &b_cert, &a_sni);
    cp.wait_log(
        "is not accepted by the control plane it dialled",
        Duration::from_secs(15),
    );
    intruder.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(15),
    );

    // A control plane with pki_client_certs: the CA it holds signs its data planes'
    // certificates; one signed by another CA is refused.
    let (_, c) = call(
        &http,
        Method::POST,
        &v2,
        Some(&token),
        Some(json!({"name": "c", "auth_type": "pki_client_certs"})),
    )
    .await;
    let c_id = c["id"].as_str().unwrap().to_string();
    let c_sni = format!("{}.cp.gantry.test", gantry_model::endpoint_prefix(&c_id));
    let c_ca_dir = dir.path().join("c-ca");
    std::fs::create_dir_all(&c_ca_dir).unwrap();
    let c_ca = Pki::new(&c_ca_dir);
    let ce = format!("{v2}/{c_id}/core-entities");
    call(
        &http,
        Method::POST,
        &format!("{ce}/services"),
        Some(&token),
        Some(json!({"name": "s", "url": format!("http://{up}")})),
    )
    .await;
    let (s, r) = call(
        &http,
        Method::POST,
        &format!("{ce}/services/s/routes"),
        Some(&token),
        Some(json!({"name": "r", "paths": ["/c"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (s, e) = call(
        &http,
        Method::POST,
        &format!("{v2}/{c_id}/dp-client-certificates"),
        Some(&token),
        Some(json!({"cert": std::fs::read_to_string(&c_ca.ca).unwrap(), "title": "c's CA"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let dp_c = dp("dp-c", &c_ca.leaf("dp-c", "dp-c", 2090), &c_sni);
    let stranger_dir = dir.path().join("stranger-ca");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = dp(
        "stranger",
        &Pki::new(&stranger_dir).leaf("dp-s", "dp-s", 2090),
        &c_sni,
    );
    stranger.wait_log(
        "failed to connect to the control plane",
        Duration::from_secs(15),
    );

    let url = |n: &Node, path: &str| format!("{}{path}", n.dp_proxy());
    for (n, mine, theirs) in [
        (&dp_a, "/a", "/b"),
        (&dp_a2, "/a", "/b"),
        (&dp_b, "/b", "/a"),
        (&dp_c, "/c", "/a"),
    ] {
        gantry_testkit::http::until(&http, &url(n, mine), 200, Duration::from_secs(15)).await;
        let res = http.get(url(n, theirs)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{theirs}");
    }
    // Each control plane lists its own data planes.
    let nodes = |id: String| {
        let (http, v2, token) = (http.clone(), v2.clone(), token.clone());
        async move {
            let (_, n) = call(
                &http,
                Method::GET,
                &format!("{v2}/{id}/nodes"),
                Some(&token),
                None,
            )
            .await;
            n["items"].as_array().cloned().unwrap_or_default()
        }
    };
    gantry_testkit::http::eventually(
        Duration::from_secs(10),
        "A lists two data planes",
        || async { nodes(a_id.clone()).await.len() == 2 },
    )
    .await;
    let b_nodes = nodes(b_id.clone()).await;
    assert_eq!(b_nodes.len(), 1, "{b_nodes:?}");
    assert_eq!(
        b_nodes[0]["compatibility_status"]["state"],
        "COMPATIBILITY_STATE_FULLY_COMPATIBLE"
    );
    // Its analytics land in B, and nowhere else.
    for _ in 0..3 {
        http.get(url(&dp_b, "/b")).send().await.unwrap();
    }
    let store = gantry_store::Store::open(&gantry_store::Backend::Sqlite(Some(
        prefix.join("gantry.db"),
    )))
    .await
    .unwrap();
    let key = |id: String| {
        let store = store.clone();
        async move { store.control_plane(&id).await.unwrap().unwrap().key }
    };
    let (a_key, b_key) = (key(a_id.clone()).await, key(b_id.clone()).await);
    let now = gantry_model::unix_now();
    let q = gantry_store::AnalyticsQuery {
        start: now - 3600,
        end: now + 3600,
        node: None,
        service: None,
        route: None,
        consumer: None,
    };
    let count = |k: i64| {
        let (store, q) = (store.scoped(k), q.clone());
        async move {
            store
                .analytics(&q)
                .await
                .unwrap()
                .iter()
                .map(|(_, r)| r.count)
                .sum::<u64>()
        }
    };
    gantry_testkit::http::eventually(Duration::from_secs(15), "B's analytics arrive", || {
        let c = count(b_key);
        async move { c.await >= 3 }
    })
    .await;
    assert_eq!(count(a_key).await, 0, "nothing in A");
    assert_eq!(
        count(gantry_store::DEFAULT_CP).await,
        0,
        "nothing in the default"
    );
    store.close().await;

    // Unpinning B's certificate disconnects B's data plane, and only it.
    let (s, _) = call(
        &http,
        Method::DELETE,
        &format!("{v2}/{b_id}/dp-client-certificates/{b_cert_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    cp.wait_log(
        "no longer accepted by its control plane",
        Duration::from_secs(10),
    );
    // A change in A still reaches A's data planes.
    call(
        &http,
        Method::POST,
        &format!("{v2}/{a_id}/core-entities/services/s/routes"),
        Some(&token),
        Some(json!({"name": "r2", "paths": ["/a2"]})),
    )
    .await;
    gantry_testkit::http::until(&http, &url(&dp_a, "/a2"), 200, Duration::from_secs(10)).await;
    gantry_testkit::http::until(&http, &url(&dp_a2, "/a2"), 200, Duration::from_secs(10)).await;
    drop((dp_a, dp_a2, dp_b, dp_c, intruder, stranger));
}

/// A control plane group serves the union of its members' configurations to its data planes;
/// a conflict between members (the same route name) is reported and not pushed, and the data
/// planes keep the last good union until it is resolved.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_serves_its_members_union_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let up = gantry_testkit::upstream::echo().await;
    let cert = process::gen_cert(dir.path(), "cluster");
    let prefix = dir.path().join("cp");
    let env = process::cp_env(&cert, &[]);
    let token = process::token(&prefix, &env, "ops", &[]);
    let cp = Node::start(&prefix, &env);
    let v2 = format!("{}/v2/control-planes", cp.admin);
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let (_, c) = call(
            &http,
            Method::POST,
            &v2,
            Some(&token),
            Some(json!({"name": name})),
        )
        .await;
        let id = c["id"].as_str().unwrap().to_string();
        let ce = format!("{v2}/{id}/core-entities");
        call(
            &http,
            Method::POST,
            &format!("{ce}/services"),
            Some(&token),
            Some(json!({"name": format!("s-{name}"), "url": format!("http://{up}")})),
        )
        .await;
        let (s, r) = call(
            &http,
            Method::POST,
            &format!("{ce}/services/s-{name}/routes"),
            Some(&token),
            Some(json!({"name": format!("r-{name}"), "paths": [format!("/{name}")]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        ids.push(id);
    }
    let (s, g) = call(
        &http,
        Method::POST,
        &v2,
        Some(&token),
        Some(json!({"name": "both", "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE_GROUP"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_string();
    // Members: a group is not a member; then A and B.
    let (s, e) = call(
        &http,
        Method::PUT,
        &format!("{v2}/{gid}/group-memberships"),
        Some(&token),
        Some(json!({"members": [{"id": gid}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, _) = call(
        &http,
        Method::PUT,
        &format!("{v2}/{gid}/group-memberships"),
        Some(&token),
        Some(json!({"members": [{"id": ids[0]}]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{v2}/{gid}/group-memberships/add"),
        Some(&token),
        Some(json!({"members": [{"id": ids[1]}]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, m) = call(
        &http,
        Method::GET,
        &format!("{v2}/{gid}/group-memberships"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(m["meta"]["page"]["total"], 2, "{m}");
    let (_, st) = call(
        &http,
        Method::GET,
        &format!("{v2}/{}/group-member-status", ids[0]),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(st["is_member"], true);
    // A group has no entities of its own.
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{v2}/{gid}/core-entities/services"),
        Some(&token),
        Some(json!({"name": "x", "host": "example.com"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A data plane pinned by the group gets both members' routes.
    let dp_cert = process::gen_cert(dir.path(), "dp-group");
    let pem = std::fs::read_to_string(&dp_cert.0).unwrap();
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{v2}/{gid}/dp-client-certificates"),
        Some(&token),
        Some(json!({"cert": pem})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let cluster = cp.cluster.clone().unwrap();
    let dp = Node::start(
        &dir.path().join("dp"),
        &process::dp_env(
            &cluster,
            &dp_cert,
            &[
                ("KONG_CLUSTER_MTLS", "pki"),
                ("KONG_CLUSTER_CA_CERT", &cert.0),
            ],
        ),
    );
    let proxy = dp.dp_proxy();
    for path in ["/a", "/b"] {
        gantry_testkit::http::until(
            &http,
            &format!("{proxy}{path}"),
            200,
            Duration::from_secs(15),
        )
        .await;
    }
    let (_, st) = call(
        &http,
        Method::GET,
        &format!("{v2}/{gid}/group-status"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(st["item"]["state"], "OK", "{st}");

    // The same route name in B as in A: a conflict, reported, and not pushed.
    let (s, r) = call(
        &http,
        Method::POST,
        &format!("{v2}/{}/core-entities/services/s-b/routes", ids[1]),
        Some(&token),
        Some(json!({"name": "r-a", "paths": ["/conflict"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let conflict_route = r["id"].as_str().unwrap().to_string();
    let status_url = format!("{v2}/{gid}/group-status");
    gantry_testkit::http::eventually(
        Duration::from_secs(10),
        "the group reports the conflict",
        || {
            let (http, url, token) = (http.clone(), status_url.clone(), token.clone());
            async move {
                let (_, st) = call(&http, Method::GET, &url, Some(&token), None).await;
                st["item"]["state"] == "CONFLICT"
            }
        },
    )
    .await;
    let (_, last) = call(&http, Method::GET, &status_url, Some(&token), None).await;
    assert_eq!(
        last["item"]["conflicts"][0]["cluster_id"],
        ids[1].as_str(),
        "{last}"
    );
    assert_eq!(
        last["item"]["conflicts"][0]["resource"]["id"],
        conflict_route.as_str(),
        "{last}"
    );
    assert_eq!(
        last["item"]["conflicts"][0]["resource"]["type"], "route",
        "{last}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = http.get(format!("{proxy}/conflict")).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "a conflicting union is not pushed"
    );
    let res = http.get(format!("{proxy}/a")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the last good union stays");
    // Resolved: the union goes out again.
    let (s, _) = call(
        &http,
        Method::PATCH,
        &format!("{v2}/{}/core-entities/routes/{conflict_route}", ids[1]),
        Some(&token),
        Some(json!({"name": "r-b2"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    gantry_testkit::http::until(
        &http,
        &format!("{proxy}/conflict"),
        200,
        Duration::from_secs(15),
    )
    .await;
    let (_, st) = call(
        &http,
        Method::GET,
        &format!("{v2}/{gid}/group-status"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(st["item"]["state"], "OK", "{st}");
    // Removing B takes its routes away from the group's data planes.
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{v2}/{gid}/group-memberships/remove"),
        Some(&token),
        Some(json!({"members": [{"id": ids[1]}]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    gantry_testkit::http::until(&http, &format!("{proxy}/b"), 404, Duration::from_secs(15)).await;
}

/// An independent check: Schemathesis (PyPI) drives the operations Gantry implements of both
/// Konnect specs, with examples, coverage, fuzzing and stateful sequences: no 5xx, and every
/// response conforms to its spec's schema.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_errors_or_nonconforming_responses() {
    if !gantry_testkit::have_tool("schemathesis") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("cp");
    let env = cp_env(dir.path());
    let token = process::token(&prefix, &env, "schemathesis", &[]);
    let node = Node::start(&prefix, &env);
    let http = Client::new();
    let v2 = format!("{}/v2", node.admin);
    let (_, cp) = call(
        &http,
        Method::POST,
        &format!("{v2}/control-planes"),
        Some(&token),
        Some(json!({"name": "under-test"})),
    )
    .await;
    let id = cp["id"].as_str().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.controlPlaneId\" = \"{id}\"\n"),
    )
    .unwrap();
    // Konnect's specs, as kept beside the project (GANTRY_KONNECT_SPECS names another place).
    let specs = [
        std::env::var("GANTRY_KONNECT_SPECS").unwrap_or_default(),
        format!(
            "{}/../../../shared/reference/kong-specs",
            env!("CARGO_MANIFEST_DIR")
        ),
        "/work/shared/reference/kong-specs".to_string(),
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.join("konnect-control-planes.yaml").is_file());
    let Some(specs) = specs else {
        assert!(
            !gantry_testkit::ci(),
            "Konnect's OpenAPI specs are required in CI: set GANTRY_KONNECT_SPECS"
        );
        eprintln!("skipped: Konnect's OpenAPI specs are not beside the project (set GANTRY_KONNECT_SPECS)");
        return;
    };
    let runs = [
        ("konnect-control-planes.yaml", ".*", "30"),
        (
            "konnect-control-planes-config.yaml",
            "/(nodes|dp-client-certificates|expected-config)",
            "20",
        ),
        (
            "konnect-control-planes-config.yaml",
            "/core-entities/(services|routes|consumers|plugins|upstreams|targets|certificates|snis|ca_certificates|key-auths|basic-auths|acls|jwts|hmac-auths|schemas|tags)",
            "5",
        ),
    ];
    for (spec, paths, examples) in runs {
        let out = std::process::Command::new("schemathesis")
            .current_dir(dir.path())
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(specs.join(spec))
            .args(["--url", &v2])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--max-examples", examples])
            .args(["--seed", "20261206"])
            .args(["--include-path-regex", paths])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis on {spec} ({paths}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("passed"), "{text}");
    }
}

/// Two control plane processes on one PostgreSQL serve the same control planes: one made
/// through either is hosted by both, a data plane of it may connect to either and gets what
/// was written through the other, and unpinning its certificate through one disconnects it
/// from the other.
#[tokio::test(flavor = "multi_thread")]
async fn two_control_plane_processes_on_postgres_serve_the_same_control_planes() {
    let Some(pg) = gantry_testkit::PgSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let up = gantry_testkit::upstream::echo().await;
    let cert = process::gen_cert(dir.path(), "cluster");
    let mut env = process::cp_env(&cert, &[]);
    env.extend(process::db_env(Some(&pg)));
    let token = process::token(&dir.path().join("one"), &env, "ops", &[]);
    let one = Node::start(&dir.path().join("one"), &env);
    let two = Node::start(&dir.path().join("two"), &env);
    let (v2_one, v2_two) = (
        format!("{}/v2/control-planes", one.admin),
        format!("{}/v2/control-planes", two.admin),
    );
    let (s, c) = call(
        &http,
        Method::POST,
        &v2_one,
        Some(&token),
        Some(json!({"name": "shared"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let (_, l) = call(
        &http,
        Method::GET,
        &format!("{v2_two}?filter[name][eq]=shared"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(l["data"][0]["id"], id.as_str(), "{l}");
    let ce = format!("{v2_one}/{id}/core-entities");
    call(
        &http,
        Method::POST,
        &format!("{ce}/services"),
        Some(&token),
        Some(json!({"name": "s", "url": format!("http://{up}")})),
    )
    .await;
    let (s, r) = call(
        &http,
        Method::POST,
        &format!("{ce}/services/s/routes"),
        Some(&token),
        Some(json!({"name": "r", "paths": ["/shared"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let dp_cert = process::gen_cert(dir.path(), "dp");
    let pem = std::fs::read_to_string(&dp_cert.0).unwrap();
    let (s, pinned) = call(
        &http,
        Method::POST,
        &format!("{v2_one}/{id}/dp-client-certificates"),
        Some(&token),
        Some(json!({"cert": pem})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // Process two learns of the control plane and its pin within its polling interval.
    let dp = Node::start(
        &dir.path().join("dp"),
        &process::dp_env(
            two.cluster.as_ref().unwrap(),
            &dp_cert,
            &[
                ("KONG_CLUSTER_MTLS", "pki"),
                ("KONG_CLUSTER_CA_CERT", &cert.0),
            ],
        ),
    );
    let proxy = dp.dp_proxy();
    gantry_testkit::http::until(
        &http,
        &format!("{proxy}/shared"),
        200,
        Duration::from_secs(20),
    )
    .await;
    // A change through process one reaches the data plane of process two.
    call(
        &http,
        Method::POST,
        &format!("{ce}/services/s/routes"),
        Some(&token),
        Some(json!({"name": "r2", "paths": ["/shared2"]})),
    )
    .await;
    gantry_testkit::http::until(
        &http,
        &format!("{proxy}/shared2"),
        200,
        Duration::from_secs(10),
    )
    .await;
    let (_, nodes) = call(
        &http,
        Method::GET,
        &format!("{v2_one}/{id}/nodes"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
    // Unpinned through process one: process two disconnects it.
    let cert_id = pinned["item"]["id"].as_str().unwrap();
    let (s, _) = call(
        &http,
        Method::DELETE,
        &format!("{v2_one}/{id}/dp-client-certificates/{cert_id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    two.wait_log(
        "no longer accepted by its control plane",
        Duration::from_secs(15),
    );
}

/// `/clustering/data-planes` pages as every Kong list does: `size`, an opaque `offset`, `next`.
#[tokio::test]
async fn the_data_plane_registry_lists_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("cp");
    let node = Node::start(&prefix, &cp_env(dir.path()));
    let store = gantry_store::Store::open(&gantry_store::Backend::Sqlite(Some(
        prefix.join("gantry.db"),
    )))
    .await
    .unwrap();
    let now = gantry_model::unix_now();
    let batch: Vec<gantry_store::RegistryWrite> = (0..5)
        .map(|i| {
            let id = format!("00000000-0000-4000-8000-00000000000{i}");
            gantry_store::RegistryWrite {
                doc: json!({"id": id, "hostname": format!("dp{i}"), "status": "connected", "labels": {}})
                    .as_object()
                    .cloned()
                    .unwrap(),
                id,
                session: "s".into(),
                last_seen: now + i,
                insert: true,
            }
        })
        .collect();
    store.write_data_planes(&batch).await.unwrap();
    store.close().await;
    let http = Client::new();
    let mut url = format!("{}/clustering/data-planes?size=2", node.admin);
    let mut seen = Vec::new();
    for page in 0..3 {
        let (s, body) = call(&http, Method::GET, &url, None, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        for d in body["data"].as_array().unwrap() {
            seen.push(d["hostname"].as_str().unwrap().to_string());
        }
        if page < 2 {
            let next = body["next"].as_str().unwrap();
            assert!(body["offset"].is_string(), "{body}");
            url = format!("{}{next}", node.admin);
        } else {
            assert!(body["next"].is_null(), "{body}");
        }
    }
    assert_eq!(
        seen,
        ["dp4", "dp3", "dp2", "dp1", "dp0"],
        "most recently seen first"
    );
    let (s, e) = call(
        &http,
        Method::GET,
        &format!("{}/clustering/data-planes?offset=nonsense", node.admin),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, _) = call(
        &http,
        Method::GET,
        &format!("{}/clustering/data-planes?size=0", node.admin),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
