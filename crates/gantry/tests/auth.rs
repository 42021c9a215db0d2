//! Kong's authentication and access plugins through a real `gantry` process: the status codes,
//! bodies and headers Kong 3.9 answers with, and what reaches the upstream.

use base64::Engine;
use gantry_testkit::process::{admin, proxy_until, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};
use sha1::Digest;

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// basic-auth: 401 with Kong's challenge for a missing, unknown or wrong credential; the
/// consumer's headers upstream; `Proxy-Authorization`; `hide_credentials`; `realm`; `anonymous`;
/// passwords stored as Kong stores them; a changed or deleted credential applies at once.
#[tokio::test]
async fn basic_auth_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let post = |path: String, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, "POST", &path, body).await }
    };
    post(
        "/services".into(),
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    let mut plugins = Vec::new();
    for (route, config) in [
        ("ba", json!({})),
        ("hide", json!({"hide_credentials": true, "realm": "gantry"})),
        ("anon", json!({"anonymous": "guest"})),
    ] {
        post(
            "/services/s/routes".into(),
            json!({"name": route, "paths": [format!("/{route}")]}),
        )
        .await;
        let p = post(
            format!("/routes/{route}/plugins"),
            json!({"name": "basic-auth", "config": config}),
        )
        .await;
        plugins.push(p);
    }
    // Kong's defaults.
    assert_eq!(
        plugins[0]["config"],
        json!({"anonymous": null, "hide_credentials": false, "realm": "service"})
    );
    let alice = post(
        "/consumers".into(),
        json!({"username": "alice", "custom_id": "a-1"}),
    )
    .await;
    post("/consumers".into(), json!({"username": "guest"})).await;
    let cred = post(
        "/consumers/alice/basic-auth".into(),
        json!({"username": "alice", "password": "wonderland"}),
    )
    .await;
    // Stored as Kong stores it: SHA-1 of the password and the consumer's id, never in clear.
    let alice_id = alice["id"].as_str().unwrap();
    let want = hex(&sha1::Sha1::digest(format!("wonderland{alice_id}")));
    assert_eq!(cred["password"], want.as_str());
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let get = |path: &str, auth: Option<(&str, String)>| {
        let mut r = http.get(format!("{proxy}{path}"));
        if let Some((h, v)) = auth {
            r = r.header(h, v);
        }
        r.send()
    };

    // Refusals: Kong's 401, body and challenge, whatever is wrong.
    for auth in [
        None,
        Some(("authorization", basic("alice", "wrong"))),
        Some(("authorization", basic("nobody", "wonderland"))),
        Some(("authorization", "Basic !!!".to_string())),
        Some(("authorization", "Bearer abc".to_string())),
    ] {
        let r = get("/ba", auth.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"service\"");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"message": "Unauthorized"})
        );
    }

    // The consumer's headers, and the credential kept upstream.
    let r = get("/ba", Some(("authorization", basic("alice", "wonderland"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    let h = &got["headers"];
    assert_eq!(h["x-consumer-id"], alice_id, "{got}");
    assert_eq!(h["x-consumer-username"], "alice");
    assert_eq!(h["x-consumer-custom-id"], "a-1");
    assert_eq!(h["x-credential-identifier"], "alice");
    assert!(h.get("x-anonymous-consumer").is_none(), "{got}");
    assert!(h["authorization"].is_string(), "{got}");
    // Proxy-Authorization is read first.
    let r = get(
        "/ba",
        Some(("proxy-authorization", basic("alice", "wonderland"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // hide_credentials, and the realm in the challenge.
    let r = get("/hide", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"gantry\"");
    let r = get(
        "/hide",
        Some(("authorization", basic("alice", "wonderland"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert!(got["headers"].get("authorization").is_none(), "{got}");
    assert_eq!(got["headers"]["x-consumer-username"], "alice");

    // anonymous: a failed or absent credential passes as the anonymous consumer; a good one
    // as its own consumer.
    let r = get("/anon", Some(("authorization", basic("alice", "wrong"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["x-anonymous-consumer"], "true", "{got}");
    assert_eq!(got["headers"]["x-consumer-username"], "guest");
    assert!(got["headers"].get("x-credential-identifier").is_none());
    let r = get(
        "/anon",
        Some(("authorization", basic("alice", "wonderland"))),
    )
    .await
    .unwrap();
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["x-consumer-username"], "alice", "{got}");
    assert!(got["headers"].get("x-anonymous-consumer").is_none());

    // A new password applies at once; the old one no longer does.
    let cid = cred["id"].as_str().unwrap();
    admin(
        &http,
        &node,
        "PATCH",
        &format!("/consumers/alice/basic-auth/{cid}"),
        json!({"password": "looking-glass"}),
    )
    .await;
    synced(&http, &node).await;
    let r = get("/ba", Some(("authorization", basic("alice", "wonderland"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get(
        "/ba",
        Some(("authorization", basic("alice", "looking-glass"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // A deleted credential authenticates no one.
    let r = http
        .delete(format!("{}/consumers/alice/basic-auth/{cid}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    synced(&http, &node).await;
    let r = get(
        "/ba",
        Some(("authorization", basic("alice", "looking-glass"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    proxy_until(&http, &node, "/anon", 200).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// basic-auth in hybrid mode: configured on the control plane, enforced by a data plane,
/// credentials changed there reach it.
#[tokio::test]
async fn basic_auth_on_a_data_plane() {
    use gantry_testkit::process::{cp_env, dp_env, gen_cert, service_and_route};
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(cp.cluster.as_ref().unwrap(), &cert, &[]),
    );
    service_and_route(&http, &cp, &up, "/a").await;
    admin(
        &http,
        &cp,
        "POST",
        "/routes/r/plugins",
        json!({"name": "basic-auth"}),
    )
    .await;
    admin(
        &http,
        &cp,
        "POST",
        "/consumers",
        json!({"username": "alice"}),
    )
    .await;
    let cred = admin(
        &http,
        &cp,
        "POST",
        "/consumers/alice/basic-auth",
        json!({"username": "alice", "password": "pw"}),
    )
    .await;
    let url = format!("{}/a", dp.dp_proxy());
    let with = |user: &'static str, pw: &'static str| {
        let (http, url) = (&http, &url);
        async move {
            http.get(url)
                .header("authorization", basic(user, pw))
                .send()
                .await
                .unwrap()
        }
    };
    // Once the credential has arrived, it authenticates; nothing else does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while with("alice", "pw").await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never authenticated");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = with("alice", "pw").await;
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["x-consumer-username"], "alice", "{got}");
    assert_eq!(with("alice", "nope").await.status(), 401);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"service\"");
    // The credential deleted on the control plane stops working on the data plane.
    let cid = cred["id"].as_str().unwrap();
    let r = http
        .delete(format!("{}/basic-auths/{cid}", cp.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while with("alice", "pw").await.status() != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deletion never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// ip-restriction: `deny` before `allow`, Kong's 403 and message or the configured ones, the
/// client's address as `trusted_ips` / `real_ip_header` give it, the plugin's own `protocols`
/// default, and Kong's validation errors.
#[tokio::test]
async fn ip_restriction_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &gantry_testkit::process::env(&[("KONG_TRUSTED_IPS", "127.0.0.1")]),
    );
    let http = reqwest::Client::new();
    let up = echo().await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    let mut ids = Vec::new();
    for (route, config) in [
        ("deny", json!({"deny": ["127.0.0.0/8", "203.0.113.7"]})),
        (
            "allow",
            json!({"allow": ["10.0.0.0/8"], "status": 401, "message": "go away"}),
        ),
        (
            "ok",
            json!({"allow": ["127.0.0.1", "::1", "198.51.100.0/24"]}),
        ),
        (
            "both",
            json!({"allow": ["0.0.0.0/0"], "deny": ["198.51.100.9"]}),
        ),
    ] {
        admin(
            &http,
            &node,
            "POST",
            "/services/s/routes",
            json!({"name": route, "paths": [format!("/{route}")]}),
        )
        .await;
        let p = admin(
            &http,
            &node,
            "POST",
            &format!("/routes/{route}/plugins"),
            json!({"name": "ip-restriction", "config": config}),
        )
        .await;
        ids.push(p);
    }
    // Its own protocols default, stream protocols included.
    assert_eq!(
        ids[0]["protocols"],
        json!(["http", "https", "tcp", "tls", "grpc", "grpcs"])
    );
    assert_eq!(ids[0]["config"]["status"], Value::Null);
    // Kong's validation: one of the lists, and addresses or blocks in them.
    let post = |body: Value| {
        let http = &http;
        let url = format!("{}/plugins", node.admin);
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = post(json!({"name": "ip-restriction"})).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["@entity"],
        json!(["at least one of these fields must be non-empty: 'config.allow', 'config.deny'"]),
        "{b}"
    );
    let (s, b) =
        post(json!({"name": "ip-restriction", "config": {"allow": ["10.0.0.0/33"]}})).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["fields"]["config"]["allow"].is_array(), "{b}");
    synced(&http, &node).await;

    let proxy = node.proxy.clone().unwrap();
    let get = |path: &str, real: Option<&str>| {
        let mut r = http.get(format!("{proxy}{path}"));
        if let Some(ip) = real {
            r = r.header("x-real-ip", ip);
        }
        r.send()
    };
    let r = get("/deny", None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "IP address not allowed: 127.0.0.1"})
    );
    let r = get("/allow", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "go away"})
    );
    assert_eq!(get("/ok", None).await.unwrap().status(), 200);
    // From a trusted peer, the address is the one X-Real-IP gives.
    let r = get("/deny", Some("198.51.100.9")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/deny", Some("203.0.113.7")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "IP address not allowed: 203.0.113.7"})
    );
    assert_eq!(
        get("/ok", Some("198.51.100.20")).await.unwrap().status(),
        200
    );
    assert_eq!(get("/ok", Some("203.0.113.1")).await.unwrap().status(), 403);
    // deny wins over allow.
    assert_eq!(
        get("/both", Some("198.51.100.8")).await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/both", Some("198.51.100.9")).await.unwrap().status(),
        403
    );
}

/// Sorted groups of an `X-Consumer-Groups` value (their order is the ACLs' ids').
fn groups_of(v: &Value) -> Vec<String> {
    let mut g: Vec<String> = v
        .as_str()
        .unwrap_or_default()
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    g.sort();
    g
}

/// acl: `allow` and `deny` by the groups of the consumer key-auth identified, Kong's 401 and
/// 403, `X-Consumer-Groups`, `hide_groups_header`, an anonymous consumer, validation, and group
/// changes applying at once.
#[tokio::test]
async fn acl_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let call = |method: &'static str, path: String, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, method, &path, body).await }
    };
    call(
        "POST",
        "/services".into(),
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    for (route, auth, acl) in [
        ("admins", json!({}), json!({"allow": ["admins"]})),
        ("nostaff", json!({}), json!({"deny": ["staff"]})),
        (
            "hidden",
            json!({}),
            json!({"allow": ["staff"], "hide_groups_header": true}),
        ),
        (
            "anon",
            json!({"anonymous": "guest"}),
            json!({"allow": ["admins"]}),
        ),
    ] {
        call(
            "POST",
            "/services/s/routes".into(),
            json!({"name": route, "paths": [format!("/{route}")]}),
        )
        .await;
        call(
            "POST",
            format!("/routes/{route}/plugins"),
            json!({"name": "key-auth", "config": auth}),
        )
        .await;
        call(
            "POST",
            format!("/routes/{route}/plugins"),
            json!({"name": "acl", "config": acl}),
        )
        .await;
    }
    call(
        "POST",
        "/services/s/routes".into(),
        json!({"name": "bare", "paths": ["/bare"]}),
    )
    .await;
    call(
        "POST",
        "/routes/bare/plugins".into(),
        json!({"name": "acl", "config": {"allow": ["admins"]}}),
    )
    .await;
    for (who, groups) in [
        ("alice", vec!["admins", "staff"]),
        ("bob", vec!["staff"]),
        ("carol", vec![]),
        ("guest", vec![]),
    ] {
        call("POST", "/consumers".into(), json!({"username": who})).await;
        call(
            "POST",
            format!("/consumers/{who}/key-auth"),
            json!({"key": format!("{who}-key")}),
        )
        .await;
        for g in groups {
            call(
                "POST",
                format!("/consumers/{who}/acls"),
                json!({"group": g}),
            )
            .await;
        }
    }
    // Kong's validation: exactly one of the lists.
    for (config, message) in [
        (
            json!({}),
            "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
        ),
        (
            json!({"allow": ["a"], "deny": ["b"]}),
            "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
        ),
    ] {
        let r = http
            .post(format!("{}/plugins", node.admin))
            .json(&json!({"name": "acl", "config": config}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["fields"]["@entity"], json!([message]), "{b}");
    }
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let get = |path: &str, key: Option<&str>| {
        let mut r = http
            .get(format!("{proxy}{path}"))
            .header("x-consumer-groups", "forged");
        if let Some(k) = key {
            r = r.header("apikey", format!("{k}-key"));
        }
        r.send()
    };
    let status = |path: &'static str, key: Option<&'static str>| {
        let get = &get;
        async move { get(path, key).await.unwrap().status().as_u16() }
    };
    let denied = json!({"message": "You cannot consume this service"});

    // allow: the consumer's groups upstream.
    let r = get("/admins", Some("alice")).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(
        groups_of(&got["headers"]["x-consumer-groups"]),
        ["admins", "staff"]
    );
    let r = get("/admins", Some("bob")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap(), denied);
    // In no group, with a credential: 403.
    assert_eq!(status("/admins", Some("carol")).await, 403);
    // deny: in the group refused; in no group allowed, with an empty groups header.
    assert_eq!(status("/nostaff", Some("bob")).await, 403);
    assert_eq!(status("/nostaff", Some("alice")).await, 403);
    let r = get("/nostaff", Some("carol")).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["x-consumer-groups"], "", "{got}");
    // hide_groups_header: no groups header, not even the client's own.
    let r = get("/hidden", Some("bob")).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert!(got["headers"].get("x-consumer-groups").is_none(), "{got}");
    // No consumer at all: 401; an anonymous consumer (no credential) in no group: 401.
    let r = get("/bare", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Unauthorized"})
    );
    assert_eq!(status("/anon", None).await, 401);
    assert_eq!(status("/anon", Some("alice")).await, 200);

    // A group given, then taken away, applies at once.
    let acl = call(
        "POST",
        "/consumers/bob/acls".into(),
        json!({"group": "admins"}),
    )
    .await;
    synced(&http, &node).await;
    assert_eq!(status("/admins", Some("bob")).await, 200);
    let aid = acl["id"].as_str().unwrap();
    let r = http
        .delete(format!("{}/consumers/bob/acls/{aid}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    synced(&http, &node).await;
    assert_eq!(status("/admins", Some("bob")).await, 403);
}

/// acl in hybrid mode: groups written on the control plane decide on a data plane.
#[tokio::test]
async fn acl_on_a_data_plane() {
    use gantry_testkit::process::{cp_env, dp_env, gen_cert, service_and_route};
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let http = reqwest::Client::new();
    let up = echo().await;
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let dp = Node::start(
        &dir.path().join("dp"),
        &dp_env(cp.cluster.as_ref().unwrap(), &cert, &[]),
    );
    service_and_route(&http, &cp, &up, "/a").await;
    for plugin in [
        json!({"name": "key-auth"}),
        json!({"name": "acl", "config": {"allow": ["gold"]}}),
    ] {
        admin(&http, &cp, "POST", "/routes/r/plugins", plugin).await;
    }
    for who in ["alice", "bob"] {
        admin(&http, &cp, "POST", "/consumers", json!({"username": who})).await;
        let key = json!({"key": format!("{who}-key")});
        admin(
            &http,
            &cp,
            "POST",
            &format!("/consumers/{who}/key-auth"),
            key,
        )
        .await;
    }
    admin(
        &http,
        &cp,
        "POST",
        "/consumers/alice/acls",
        json!({"group": "gold"}),
    )
    .await;
    let url = format!("{}/a", dp.dp_proxy());
    let status = |who: &'static str| {
        let (http, url) = (&http, &url);
        async move {
            http.get(url)
                .header("apikey", format!("{who}-key"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status("alice").await != 200 {
        assert!(std::time::Instant::now() < deadline, "alice never got in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status("bob").await, 403);
    admin(
        &http,
        &cp,
        "POST",
        "/consumers/bob/acls",
        json!({"group": "gold"}),
    )
    .await;
    while status("bob").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's group never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
