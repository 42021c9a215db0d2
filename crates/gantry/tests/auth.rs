//! Kong's authentication and access plugins through a real `gantry` process: the status codes,
//! bodies and headers Kong 3.9 answers with, and what reaches the upstream.

use base64::Engine;
use gantry_testkit::http::eventually;
use gantry_testkit::process::{admin, proxy_until, route_with, service, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};
use sha1::Digest;

/// How long a change may take to reach a data plane.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

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
    service(&http, &node, &up).await;
    let mut plugins = Vec::new();
    for (route, config) in [
        ("ba", json!({})),
        ("hide", json!({"hide_credentials": true, "realm": "gantry"})),
        ("anon", json!({"anonymous": "guest"})),
    ] {
        let p = route_with(
            &http,
            &node,
            route,
            &[json!({"name": "basic-auth", "config": config})],
        )
        .await;
        plugins.extend(p);
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
    let dir = tempfile::tempdir().unwrap();
    let (cp, dp) = gantry_testkit::process::hybrid_pair(dir.path());
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service_and_route(&http, &cp, &up, "/a").await;
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
    eventually(WITHIN, "the credential authenticates", || async {
        with("alice", "pw").await.status() == 200
    })
    .await;
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
    eventually(WITHIN, "the deletion never arrived", || async {
        with("alice", "pw").await.status() == 401
    })
    .await;
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
    service(&http, &node, &up).await;
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
        let p = route_with(
            &http,
            &node,
            route,
            &[json!({"name": "ip-restriction", "config": config})],
        )
        .await;
        ids.extend(p);
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
    // Protocols: ip-restriction takes stream ones; an HTTP-only plugin does not.
    let (s, b) = post(
        json!({"name": "ip-restriction", "protocols": ["tcp"], "config": {"deny": ["10.0.0.1"]}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(json!({"name": "basic-auth", "protocols": ["http", "tcp"]})).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["fields"]["protocols"]
            .to_string()
            .contains("expected one of: grpc, grpcs, http, https"),
        "{b}"
    );
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
    service(&http, &node, &up).await;
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
        let plugins = [
            json!({"name": "key-auth", "config": auth}),
            json!({"name": "acl", "config": acl}),
        ];
        route_with(&http, &node, route, &plugins).await;
    }
    let acl = json!({"name": "acl", "config": {"allow": ["admins"]}});
    route_with(&http, &node, "bare", &[acl]).await;
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

/// Consumer groups as Kong Enterprise 3.9 serves them: the entity, memberships from both
/// sides with Kong's bodies and errors, plugins scoped to a group with Kong's precedence
/// (the first group by name wins), acl counting consumer groups, and plugins that refuse
/// a group scope.
#[tokio::test]
async fn consumer_groups_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let raw = |method: &'static str, path: String, body: Option<Value>| {
        let (http, node) = (&http, &node);
        async move {
            let mut r = http.request(method.parse().unwrap(), format!("{}{path}", node.admin));
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    service(&http, &node, &up).await;
    for g in ["gold", "bronze", "silver"] {
        let (s, b) = raw("POST", "/consumer_groups".into(), Some(json!({"name": g}))).await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["name"], g);
    }
    for who in ["alice", "bob", "carol"] {
        admin(&http, &node, "POST", "/consumers", json!({"username": who})).await;
        let key = json!({"key": format!("{who}-key")});
        admin(
            &http,
            &node,
            "POST",
            &format!("/consumers/{who}/key-auth"),
            key,
        )
        .await;
    }
    // Memberships from the group's side: one or a list, Kong's 201 body.
    let (s, b) = raw(
        "POST",
        "/consumer_groups/gold/consumers".into(),
        Some(json!({"consumer": ["alice", "bob"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["consumer_group"]["name"], "gold");
    let names: Vec<&str> = b["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let gold = b["consumer_group"]["id"].as_str().unwrap().to_string();
    // ... and from the consumer's side.
    let (s, b) = raw(
        "POST",
        "/consumers/alice/consumer_groups".into(),
        Some(json!({"group": "bronze"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["consumer"]["username"], "alice");
    assert_eq!(b["consumer_groups"][0]["name"], "bronze");
    // Kong's errors.
    let (s, b) = raw(
        "POST",
        "/consumer_groups/gold/consumers".into(),
        Some(json!({"consumer": "alice"})),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            409,
            json!({"message": format!("Consumer 'alice' already in group '{gold}'")})
        )
    );
    let (s, b) = raw(
        "POST",
        "/consumer_groups/gold/consumers".into(),
        Some(json!({})),
    )
    .await;
    assert_eq!((s, b), (400, json!({"message": "must provide consumer"})));
    let (s, b) = raw(
        "POST",
        "/consumer_groups/gold/consumers".into(),
        Some(json!({"consumer": "nobody"})),
    )
    .await;
    assert_eq!(
        (s, b),
        (404, json!({"message": "Consumer 'nobody' not found"}))
    );
    let (s, b) = raw("GET", "/consumer_groups/tin".into(), None).await;
    assert_eq!((s, b), (404, json!({"message": "Group 'tin' not found"})));
    let (s, b) = raw(
        "GET",
        "/consumer_groups/silver/consumers/alice".into(),
        None,
    )
    .await;
    assert_eq!(
        (s, b),
        (
            404,
            json!({"message": "Consumer 'alice' not found in Group 'silver'"})
        )
    );
    // Reads: the group with its consumers, a consumer's groups with their sizes.
    let (s, b) = raw("GET", "/consumer_groups/gold".into(), None).await;
    assert_eq!(s, 200);
    assert_eq!(b["consumer_group"]["id"], gold.as_str());
    assert_eq!(b["consumers"].as_array().map(Vec::len), Some(2), "{b}");
    let (_, b) = raw("GET", "/consumer_groups/silver".into(), None).await;
    assert!(b.get("consumers").is_none(), "{b}");
    let (_, b) = raw("GET", "/consumers/alice/consumer_groups".into(), None).await;
    let mut sizes: Vec<(String, u64)> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let n = g["consumers_count"].as_u64().unwrap();
            (g["name"].as_str().unwrap().to_string(), n)
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes, [("bronze".into(), 1), ("gold".into(), 2)]);
    let (s, b) = raw("GET", "/consumer_groups/gold/consumers/bob".into(), None).await;
    assert_eq!((s, &b["consumer"]["username"]), (200, &json!("bob")));
    let (_, b) = raw("GET", "/consumer_groups/gold/consumers".into(), None).await;
    assert_eq!(b["data"].as_array().map(Vec::len), Some(2), "{b}");

    // Plugins by group: request-transformer tags the tier; the route's instance is below a
    // group's on the same route. alice is in bronze and gold: bronze comes first by name.
    let tier = |t: &str| json!({"name": "request-transformer", "config": {"add": {"headers": [format!("x-tier:{t}")]}}});
    route_with(
        &http,
        &node,
        "tiers",
        &[json!({"name": "key-auth"}), tier("route")],
    )
    .await;
    for g in ["gold", "bronze"] {
        let mut p = tier(g);
        p["route"] = json!({"name": "tiers"});
        let (s, b) = raw("POST", format!("/consumer_groups/{g}/plugins"), Some(p)).await;
        assert_eq!(s, 201, "{b}");
        assert!(b["consumer_group"]["id"].as_str().is_some(), "{b}");
    }
    // acl counting consumer groups.
    let acl = json!({"name": "acl", "config": {"allow": ["gold"]}});
    route_with(&http, &node, "golden", &[json!({"name": "key-auth"}), acl]).await;
    // Plugins that cannot follow a group, and a plugin naming both a consumer and a group.
    for (p, field) in [
        (
            json!({"name": "key-auth", "consumer_group": {"id": gold}}),
            "consumer_group",
        ),
        (
            json!({"name": "cors", "consumer_group": {"id": gold}}),
            "consumer_group",
        ),
        (
            json!({"name": "http-log", "consumer_group": {"id": gold}, "config": {"http_endpoint": "http://127.0.0.1:9/"}}),
            "consumer_group",
        ),
    ] {
        let (s, b) = raw("POST", "/plugins".into(), Some(p)).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["fields"][field], "value must be null", "{b}");
    }
    let both = json!({"name": "request-termination", "consumer": {"username": "alice"}, "consumer_group": {"id": gold}});
    let (s, b) = raw("POST", "/plugins".into(), Some(both)).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["@entity"],
        json!(["only one or none of these fields must be set: 'consumer', 'consumer_group'"])
    );
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let get = |path: &'static str, who: &'static str| {
        let (http, proxy) = (&http, &proxy);
        async move {
            let r = http
                .get(format!("{proxy}{path}"))
                .header("apikey", format!("{who}-key"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, b) = get("/tiers", "alice").await;
    assert_eq!((s, &b["headers"]["x-tier"]), (200, &json!("bronze")), "{b}");
    let (_, b) = get("/tiers", "bob").await;
    assert_eq!(b["headers"]["x-tier"], "gold", "{b}");
    let (_, b) = get("/tiers", "carol").await;
    assert_eq!(b["headers"]["x-tier"], "route", "{b}");
    let (s, b) = get("/golden", "bob").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["headers"]["x-consumer-groups"], "gold", "{b}");
    let (s, b) = get("/golden", "alice").await;
    assert_eq!(s, 200);
    assert_eq!(
        groups_of(&b["headers"]["x-consumer-groups"]),
        ["bronze", "gold"]
    );
    assert_eq!(get("/golden", "carol").await.0, 403);
    // Kong 3.9's acl configuration, field for field: no Enterprise field is added, and a
    // plugin not scoped to a group has no `consumer_group` at all.
    let (_, b) = raw("GET", "/plugins?size=1000".into(), None).await;
    let acl = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "acl")
        .unwrap();
    assert!(acl.get("consumer_group").is_none(), "{acl}");
    let mut fields: Vec<&String> = acl["config"].as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "allow",
            "always_use_authenticated_groups",
            "deny",
            "hide_groups_header"
        ]
    );

    // A membership removed, from either side, applies at once; a group renamed keeps
    // its members; a group deleted takes its memberships and plugins with it.
    let (s, _) = raw(
        "DELETE",
        "/consumers/alice/consumer_groups/bronze".into(),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = raw("DELETE", "/consumer_groups/gold/consumers/bob".into(), None).await;
    assert_eq!(s, 204);
    synced(&http, &node).await;
    assert_eq!(get("/tiers", "alice").await.1["headers"]["x-tier"], "gold");
    assert_eq!(get("/tiers", "bob").await.1["headers"]["x-tier"], "route");
    assert_eq!(get("/golden", "bob").await.0, 403);
    let (s, b) = raw(
        "PATCH",
        "/consumer_groups/gold".into(),
        Some(json!({"name": "platinum"})),
    )
    .await;
    assert_eq!((s, &b["name"]), (200, &json!("platinum")), "{b}");
    synced(&http, &node).await;
    assert_eq!(get("/tiers", "alice").await.1["headers"]["x-tier"], "gold");
    let (s, _) = raw("DELETE", "/consumer_groups/platinum".into(), None).await;
    assert_eq!(s, 204);
    synced(&http, &node).await;
    assert_eq!(get("/tiers", "alice").await.1["headers"]["x-tier"], "route");
    let (_, b) = raw("GET", "/consumers/alice/consumer_groups".into(), None).await;
    assert_eq!(b["data"], json!([]), "{b}");
    let (s, b) = raw("DELETE", "/consumers/alice/consumer_groups".into(), None).await;
    assert_eq!(s, 404, "{b}");
    let (_, b) = raw("GET", "/plugins?size=1000".into(), None).await;
    let scoped: Vec<&Value> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["consumer_group"]["id"]
                .as_str()
                .map(|_| &p["config"]["add"])
        })
        .collect();
    assert_eq!(
        scoped,
        [&json!({"body": [], "headers": ["x-tier:bronze"], "querystring": []})]
    );
}

/// key-auth's `key_in_body` (form, JSON and multipart bodies, hidden from the upstream with
/// `hide_credentials`), Kong's 401 for a key given twice, and a key's `ttl`: shown as what is
/// left, refused once it ran out, then gone from the Admin API.
#[tokio::test]
async fn key_auth_in_bodies_and_with_a_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    service(&http, &node, &up).await;
    let body_key =
        json!({"name": "key-auth", "config": {"key_in_body": true, "hide_credentials": true}});
    route_with(&http, &node, "body", &[body_key]).await;
    route_with(&http, &node, "plain", &[json!({"name": "key-auth"})]).await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers",
        json!({"username": "alice"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers/alice/key-auth",
        json!({"key": "k1"}),
    )
    .await;
    let short = admin(
        &http,
        &node,
        "POST",
        "/consumers/alice/key-auth",
        json!({"key": "k2", "ttl": 2}),
    )
    .await;
    assert!(matches!(short["ttl"].as_i64(), Some(1..=2)), "{short}");
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let post = |ct: &'static str, body: &'static str| {
        let (http, proxy) = (&http, &proxy);
        async move {
            let r = http
                .post(format!("{proxy}/body"))
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, seen) = post("application/x-www-form-urlencoded", "apikey=k1&other=1").await;
    assert_eq!(s, 200, "{seen}");
    assert_eq!(seen["body"], "other=1", "the key is hidden: {seen}");
    assert_eq!(seen["headers"]["x-consumer-username"], "alice");
    let (s, seen) = post("application/json", r#"{"apikey":"k1","x":2}"#).await;
    assert_eq!(s, 200, "{seen}");
    assert_eq!(
        serde_json::from_str::<Value>(seen["body"].as_str().unwrap()).unwrap(),
        json!({"x": 2})
    );
    let mp = "--B\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nk1\r\n--B--\r\n";
    let (s, seen) = post("multipart/form-data; boundary=B", mp).await;
    assert_eq!(s, 200, "{seen}");
    assert!(!seen["body"].as_str().unwrap().contains("k1"), "{seen}");
    let (s, b) = post("application/x-www-form-urlencoded", "apikey=nope").await;
    assert_eq!(
        (s, b),
        (
            401,
            json!({"message": "Invalid authentication credentials"})
        )
    );
    // Without key_in_body, a key in the body is not looked for.
    let r = http
        .post(format!("{proxy}/plain"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("apikey=k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A key given twice.
    let r = http
        .get(format!("{proxy}/plain?apikey=k1&apikey=k1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Duplicate API key found"})
    );
    // ttl: works, then does not, then is gone.
    let get = |key: &'static str| {
        let (http, proxy) = (&http, &proxy);
        async move {
            http.get(format!("{proxy}/plain"))
                .header("apikey", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("k2").await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(get("k2").await, 401);
    let r = http
        .get(format!("{}/consumers/alice/key-auth/k2", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = admin(&http, &node, "GET", "/key-auths", json!(null)).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(get("k1").await, 200);
}

/// acl in hybrid mode: groups written on the control plane decide on a data plane.
#[tokio::test]
async fn acl_on_a_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, dp) = gantry_testkit::process::hybrid_pair(dir.path());
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service_and_route(&http, &cp, &up, "/a").await;
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
    eventually(WITHIN, "alice never got in", || async {
        status("alice").await == 200
    })
    .await;
    assert_eq!(status("bob").await, 403);
    admin(
        &http,
        &cp,
        "POST",
        "/consumers/bob/acls",
        json!({"group": "gold"}),
    )
    .await;
    eventually(WITHIN, "bob's group never arrived", || async {
        status("bob").await == 200
    })
    .await;
    // A consumer group on the control plane, counted by acl on the data plane.
    let acl = json!({"name": "acl", "config": {"allow": ["vip"]}});
    let route = json!({"name": "v", "paths": ["/v"]});
    admin(&http, &cp, "POST", "/services/s/routes", route).await;
    admin(
        &http,
        &cp,
        "POST",
        "/routes/v/plugins",
        json!({"name": "key-auth"}),
    )
    .await;
    admin(&http, &cp, "POST", "/routes/v/plugins", acl).await;
    admin(
        &http,
        &cp,
        "POST",
        "/consumer_groups",
        json!({"name": "vip"}),
    )
    .await;
    let url = format!("{}/v", dp.dp_proxy());
    let vip = |who: &'static str| {
        let (http, url) = (&http, &url);
        async move {
            let r = http
                .get(url)
                .header("apikey", format!("{who}-key"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    eventually(WITHIN, "the vip route never arrived", || async {
        vip("bob").await == 403
    })
    .await;
    let member = json!({"consumer": "bob"});
    admin(&http, &cp, "POST", "/consumer_groups/vip/consumers", member).await;
    eventually(WITHIN, "bob's consumer group never arrived", || async {
        vip("bob").await == 200
    })
    .await;
    assert_eq!(vip("alice").await, 403);
}

/// A JWT of `header` and `claims`, signed by `sign` over `header.claims` (base64url).
fn jwt(header: Value, claims: Value, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(signed.as_bytes());
    format!("{signed}.{}", b64(&sig))
}

fn hmac(alg: ring::hmac::Algorithm, secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(alg, secret);
    move |data| ring::hmac::sign(&key, data).as_ref().to_vec()
}

/// An RSA key pair made by openssl: the private key (PKCS#1 DER) and the public key (PEM).
fn rsa_pair(dir: &std::path::Path) -> (Vec<u8>, String) {
    let key = dir.join("rsa.der");
    gantry_testkit::process::succeed(std::process::Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-outform",
        "DER",
        "-out",
        key.to_str().unwrap(),
    ]));
    let out = std::process::Command::new("openssl")
        .args([
            "pkey",
            "-inform",
            "DER",
            "-pubout",
            "-in",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        std::fs::read(&key).unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// jwt: one token per algorithm family signed with keys made here; where the token comes from;
/// Kong's 401s and bodies for each failure (no token, several, a bad one, an unknown or missing
/// key claim, another algorithm, a wrong key, expired, not yet valid, past the maximum
/// expiration); `secret_is_base64`, `realm`, `anonymous`; credentials this node cannot check
/// refused when written.
#[tokio::test]
async fn jwt_as_kong() {
    if !gantry_testkit::have_tool("openssl") {
        return;
    }
    use ring::signature;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let call = |method: &'static str, path: String, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, method, &path, body).await }
    };
    service(&http, &node, &up).await;
    for (route, config) in [
        (
            "jwt",
            json!({"claims_to_verify": ["exp", "nbf"], "cookie_names": ["tok"]}),
        ),
        (
            "max",
            json!({"claims_to_verify": ["exp"], "maximum_expiration": 60}),
        ),
        ("b64", json!({"secret_is_base64": true, "realm": "api"})),
        ("anon", json!({"anonymous": "guest"})),
    ] {
        route_with(
            &http,
            &node,
            route,
            &[json!({"name": "jwt", "config": config})],
        )
        .await;
    }
    call("POST", "/consumers".into(), json!({"username": "alice"})).await;
    call("POST", "/consumers".into(), json!({"username": "guest"})).await;

    // Keys: RSA from openssl; ECDSA and Ed25519 from rcgen; all signed with ring.
    let rng = ring::rand::SystemRandom::new();
    let (rsa_der, rsa_pub) = rsa_pair(dir.path());
    let rsa = signature::RsaKeyPair::from_der(&rsa_der).unwrap();
    let rsa_sign = |pad: &'static dyn signature::RsaEncoding| {
        let (rsa, rng) = (&rsa, &rng);
        move |data: &[u8]| {
            let mut sig = vec![0; rsa.public().modulus_len()];
            rsa.sign(pad, rng, data, &mut sig).unwrap();
            sig
        }
    };
    let ec = |alg: &'static rcgen::SignatureAlgorithm,
              signing: &'static signature::EcdsaSigningAlgorithm| {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(signing, &kp.serialize_der(), &rng).unwrap();
        (pair, kp.public_key_pem())
    };
    let (p256, p256_pub) = ec(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    );
    let (p384, p384_pub) = ec(
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    );
    let ed_kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&ed_kp.serialize_der()).unwrap();
    let mut ids = std::collections::HashMap::new();
    let raw_secret = b"raw secret \x00\x01 bytes";
    let b64_secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw_secret);
    for (key, alg, material) in [
        ("hs-key", "HS256", json!({"secret": "hs-secret"})),
        ("hs512-key", "HS512", json!({"secret": b64_secret})),
        ("rs-key", "RS256", json!({"rsa_public_key": rsa_pub})),
        ("ps-key", "PS384", json!({"rsa_public_key": rsa_pub})),
        ("es256-key", "ES256", json!({"rsa_public_key": p256_pub})),
        ("es384-key", "ES384", json!({"rsa_public_key": p384_pub})),
        (
            "ed-key",
            "EdDSA",
            json!({"rsa_public_key": ed_kp.public_key_pem()}),
        ),
    ] {
        let mut body = json!({"key": key, "algorithm": alg});
        body.as_object_mut()
            .unwrap()
            .extend(material.as_object().unwrap().clone());
        let c = call("POST", "/consumers/alice/jwt".into(), body).await;
        ids.insert(key, c["id"].as_str().unwrap().to_string());
    }
    // Keys this node cannot check are refused when written, naming the field.
    for (body, field, says) in [
        (
            json!({"algorithm": "ES512", "rsa_public_key": p256_pub}),
            "algorithm",
            "not supported",
        ),
        (
            json!({"algorithm": "RS256", "rsa_public_key": "not a key"}),
            "rsa_public_key",
            "invalid key",
        ),
        (
            json!({"algorithm": "RS256", "rsa_public_key": p256_pub}),
            "rsa_public_key",
            "invalid key",
        ),
    ] {
        let r = http
            .post(format!("{}/consumers/alice/jwt", node.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let b: Value = r.json().await.unwrap();
        let msg = b["fields"][field].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{b}");
    }
    synced(&http, &node).await;

    let now = gantry_model::unix_now();
    let hs = hmac(ring::hmac::HMAC_SHA256, b"hs-secret");
    let good = |iss: &str| json!({"iss": iss, "exp": now + 30, "nbf": now - 10});
    let proxy = node.proxy.clone().unwrap();
    let get = |path: String, token: Option<String>| {
        let mut r = http.get(format!("{proxy}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };

    // One token per algorithm family: the consumer and its credential upstream.
    let tokens = [
        (
            "hs-key",
            jwt(json!({"alg": "HS256", "typ": "JWT"}), good("hs-key"), &hs),
        ),
        (
            "rs-key",
            jwt(
                json!({"alg": "RS256"}),
                good("rs-key"),
                &rsa_sign(&signature::RSA_PKCS1_SHA256),
            ),
        ),
        (
            "ps-key",
            jwt(
                json!({"alg": "PS384"}),
                good("ps-key"),
                &rsa_sign(&signature::RSA_PSS_SHA384),
            ),
        ),
        (
            "es256-key",
            jwt(json!({"alg": "ES256"}), good("es256-key"), &|d| {
                p256.sign(&rng, d).unwrap().as_ref().to_vec()
            }),
        ),
        (
            "es384-key",
            jwt(json!({"alg": "ES384"}), good("es384-key"), &|d| {
                p384.sign(&rng, d).unwrap().as_ref().to_vec()
            }),
        ),
        (
            "ed-key",
            jwt(json!({"alg": "EdDSA"}), good("ed-key"), &|d| {
                ed.sign(d).as_ref().to_vec()
            }),
        ),
    ];
    for (key, token) in &tokens {
        let r = get("/jwt".into(), Some(token.clone())).await.unwrap();
        assert_eq!(r.status(), 200, "{key}");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["headers"]["x-consumer-username"], "alice", "{key}");
        assert_eq!(got["headers"]["x-credential-identifier"], *key);
    }
    let hs_token = tokens[0].1.clone();
    // From the query and from a cookie too.
    let r = get(format!("/jwt?jwt={hs_token}"), None).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{proxy}/jwt"))
        .header("cookie", format!("other=1; tok={hs_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The same token twice is one token; two different ones are refused.
    let r = get(format!("/jwt?jwt={hs_token}"), Some(hs_token.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Refusals: Kong's message, and its challenge.
    let expect = |r: reqwest::Response, body: Value, challenge: &'static str| async move {
        assert_eq!(r.status(), 401, "{body}");
        assert_eq!(r.headers()["www-authenticate"], challenge, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap(), body);
    };
    let invalid = "Bearer error=\"invalid_token\"";
    let msg = |m: &str| json!({"message": m});
    expect(
        get("/jwt".into(), None).await.unwrap(),
        msg("Unauthorized"),
        "Bearer",
    )
    .await;
    let other = jwt(
        json!({"alg": "HS256"}),
        json!({"iss": "hs-key", "x": 1}),
        &hs,
    );
    expect(
        get(format!("/jwt?jwt={other}"), Some(hs_token.clone()))
            .await
            .unwrap(),
        msg("Multiple tokens provided"),
        invalid,
    )
    .await;
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other_der, _) = rsa_pair(&other_dir);
    let other_rsa = signature::RsaKeyPair::from_der(&other_der).unwrap();
    let forged = jwt(json!({"alg": "RS256"}), good("rs-key"), &|d| {
        let mut sig = vec![0; other_rsa.public().modulus_len()];
        other_rsa
            .sign(&signature::RSA_PKCS1_SHA256, &rng, d, &mut sig)
            .unwrap();
        sig
    });
    let hs256 = json!({"alg": "HS256"});
    let claims = |c: Value| jwt(hs256.clone(), c, &hs);
    let refusals = [
        ("garbage".to_string(), msg("Bad token; invalid JSON")),
        (
            jwt(json!({"alg": "none"}), good("hs-key"), &|_| Vec::new()),
            msg("Bad token; invalid alg"),
        ),
        (
            claims(json!({"exp": now + 30})),
            msg("No mandatory 'iss' in claims"),
        ),
        (claims(json!({"iss": ""})), msg("Invalid 'iss' in claims")),
        (
            claims(good("nobody")),
            msg("No credentials found for given 'iss'"),
        ),
        (
            jwt(
                json!({"alg": "HS384"}),
                good("hs-key"),
                &hmac(ring::hmac::HMAC_SHA384, b"hs-secret"),
            ),
            msg("Invalid algorithm"),
        ),
        (
            jwt(
                hs256.clone(),
                good("hs-key"),
                &hmac(ring::hmac::HMAC_SHA256, b"guess"),
            ),
            msg("Invalid signature"),
        ),
        // An RS256 token signed by another key.
        (forged, msg("Invalid signature")),
        (
            claims(json!({"iss": "hs-key", "exp": now - 5, "nbf": now - 10})),
            json!({"exp": "token expired"}),
        ),
        (
            claims(json!({"iss": "hs-key", "exp": now + 60, "nbf": now + 30})),
            json!({"nbf": "token not valid yet"}),
        ),
        (
            claims(json!({"iss": "hs-key", "exp": "soon"})),
            json!({"exp": "must be a number", "nbf": "must be a number"}),
        ),
    ];
    for (token, body) in refusals {
        expect(
            get("/jwt".into(), Some(token)).await.unwrap(),
            body,
            invalid,
        )
        .await;
    }
    // maximum_expiration.
    let far = jwt(
        json!({"alg": "HS256"}),
        json!({"iss": "hs-key", "exp": now + 3600}),
        &hs,
    );
    expect(
        get("/max".into(), Some(far)).await.unwrap(),
        json!({"exp": "exceeds maximum allowed expiration"}),
        invalid,
    )
    .await;
    let near = jwt(
        json!({"alg": "HS256"}),
        json!({"iss": "hs-key", "exp": now + 30}),
        &hs,
    );
    assert_eq!(get("/max".into(), Some(near)).await.unwrap().status(), 200);
    // secret_is_base64: the secret decoded is the key; the realm in the challenge.
    let b64 = jwt(
        json!({"alg": "HS512"}),
        json!({"iss": "hs512-key"}),
        &hmac(ring::hmac::HMAC_SHA512, raw_secret),
    );
    assert_eq!(get("/b64".into(), Some(b64)).await.unwrap().status(), 200);
    let r = get("/b64".into(), None).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");
    // anonymous.
    let r = get("/anon".into(), Some("garbage".into())).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["x-consumer-username"], "guest");
    assert_eq!(got["headers"]["x-anonymous-consumer"], "true");

    // A token checked before no longer passes once its credential changes, or is gone.
    assert_eq!(
        get("/jwt".into(), Some(hs_token.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    call(
        "PATCH",
        format!("/consumers/alice/jwt/{}", ids["hs-key"]),
        json!({"secret": "another-secret"}),
    )
    .await;
    synced(&http, &node).await;
    expect(
        get("/jwt".into(), Some(hs_token.clone())).await.unwrap(),
        msg("Invalid signature"),
        invalid,
    )
    .await;
    let r = http
        .delete(format!(
            "{}/consumers/alice/jwt/{}",
            node.admin, ids["rs-key"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    synced(&http, &node).await;
    expect(
        get("/jwt".into(), Some(tokens[1].1.clone())).await.unwrap(),
        msg("No credentials found for given 'iss'"),
        invalid,
    )
    .await;
}

/// jwt in hybrid mode: a credential written on the control plane checks tokens on a data
/// plane.
#[tokio::test]
async fn jwt_on_a_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, dp) = gantry_testkit::process::hybrid_pair(dir.path());
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service_and_route(&http, &cp, &up, "/a").await;
    admin(
        &http,
        &cp,
        "POST",
        "/routes/r/plugins",
        json!({"name": "jwt"}),
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
    admin(
        &http,
        &cp,
        "POST",
        "/consumers/alice/jwt",
        json!({"key": "k", "secret": "s3cret"}),
    )
    .await;
    let token = jwt(
        json!({"alg": "HS256"}),
        json!({"iss": "k"}),
        &hmac(ring::hmac::HMAC_SHA256, b"s3cret"),
    );
    let url = format!("{}/a", dp.dp_proxy());
    let send = || http.get(&url).bearer_auth(&token).send();
    eventually(WITHIN, "the token authenticates", || async {
        send().await.unwrap().status() == 200
    })
    .await;
    let got: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(got["headers"]["x-consumer-username"], "alice");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// An `hmac` authorization value: `headers` signed as Kong's plugin reads them.
fn hmac_auth_value(
    user: &str,
    algorithm: &str,
    secret: &[u8],
    headers: &[&str],
    signing: &str,
) -> String {
    let alg = match algorithm {
        "hmac-sha1" => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "hmac-sha384" => ring::hmac::HMAC_SHA384,
        "hmac-sha512" => ring::hmac::HMAC_SHA512,
        _ => ring::hmac::HMAC_SHA256,
    };
    let sig = hmac(alg, secret)(signing.as_bytes());
    format!(
        "hmac username=\"{user}\", algorithm=\"{algorithm}\", headers=\"{}\", signature=\"{}\"",
        headers.join(" "),
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// hmac-auth: every algorithm, `@request-target` and `request-line`, the date window,
/// `enforce_headers`, `algorithms`, `validate_request_body` with `Digest`, `hide_credentials`
/// and `realm`, and Kong's messages for each failure.
#[tokio::test]
async fn hmac_auth_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let call = |method: &'static str, path: String, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, method, &path, body).await }
    };
    service(&http, &node, &up).await;
    for (route, config) in [
        ("h", json!({})),
        ("enf", json!({"enforce_headers": ["date", "x-custom"]})),
        ("algo", json!({"algorithms": ["hmac-sha512"]})),
        ("body", json!({"validate_request_body": true})),
        ("hide", json!({"hide_credentials": true, "realm": "api"})),
    ] {
        route_with(
            &http,
            &node,
            route,
            &[json!({"name": "hmac-auth", "config": config})],
        )
        .await;
    }
    call("POST", "/consumers".into(), json!({"username": "alice"})).await;
    call(
        "POST",
        "/consumers/alice/hmac-auth".into(),
        json!({"username": "alice", "secret": "s3cret"}),
    )
    .await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let signed = |path: &str, alg: &str, secret: &[u8]| {
        hmac_auth_value(
            "alice",
            alg,
            secret,
            &["date", "@request-target"],
            &format!("date: {date}\n@request-target: get {path}"),
        )
    };
    let send = |path: &str, auth: Option<String>, extra: &[(&str, String)]| {
        let mut r = http.get(format!("{proxy}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        for (k, v) in extra {
            r = r.header(*k, v.clone());
        }
        r.send()
    };
    let with_date = [("date", date.clone())];
    let expect = |r: reqwest::Response, message: &'static str, challenge: &'static str| async move {
        assert_eq!(r.status(), 401, "{message}");
        assert_eq!(r.headers()["www-authenticate"], challenge);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({ "message": message })
        );
    };

    // Each algorithm, signing the date and the request target.
    for alg in ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"] {
        let r = send("/h?x=1", Some(signed("/h?x=1", alg, b"s3cret")), &with_date)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{alg}");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["headers"]["x-consumer-username"], "alice");
        assert_eq!(got["headers"]["x-credential-identifier"], "alice");
        assert!(got["headers"]["authorization"].is_string());
    }
    // request-line, and X-Date in place of Date.
    let line = hmac_auth_value(
        "alice",
        "hmac-sha256",
        b"s3cret",
        &["x-date", "request-line"],
        &format!("x-date: {date}\nGET /h HTTP/1.1"),
    );
    let r = send("/h", Some(line), &[("x-date", date.clone())])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let no_date = "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication";
    let not_valid = "HMAC signature cannot be verified";
    let old =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(600));
    let stranger = hmac_auth_value(
        "bob",
        "hmac-sha256",
        b"s3cret",
        &["date"],
        &format!("date: {date}"),
    );
    let good = signed("/h", "hmac-sha256", b"s3cret");
    type Headers<'a> = Vec<(&'a str, String)>;
    let refusals: Vec<(&str, Option<String>, Headers<'_>, &str)> = vec![
        ("/h", None, with_date.to_vec(), "Unauthorized"),
        ("/h", Some(good.clone()), vec![], no_date),
        ("/h", Some(good), vec![("date", old)], no_date),
        (
            "/h",
            Some(signed("/h", "hmac-sha256", b"guess")),
            with_date.to_vec(),
            "HMAC signature does not match",
        ),
        ("/h", Some(stranger), with_date.to_vec(), not_valid),
        (
            "/h",
            Some("hmac nonsense".into()),
            with_date.to_vec(),
            not_valid,
        ),
        // enforce_headers: every enforced header signed.
        (
            "/enf",
            Some(signed("/enf", "hmac-sha256", b"s3cret")),
            with_date.to_vec(),
            not_valid,
        ),
    ];
    for (path, auth, headers, message) in refusals {
        expect(send(path, auth, &headers).await.unwrap(), message, "hmac").await;
    }
    let both = hmac_auth_value(
        "alice",
        "hmac-sha256",
        b"s3cret",
        &["date", "x-custom"],
        &format!("date: {date}\nx-custom: v"),
    );
    let r = send(
        "/enf",
        Some(both),
        &[("date", date.clone()), ("x-custom", "v".into())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // algorithms: another one is refused.
    expect(
        send(
            "/algo",
            Some(signed("/algo", "hmac-sha256", b"s3cret")),
            &with_date,
        )
        .await
        .unwrap(),
        "HMAC signature cannot be verified",
        "hmac",
    )
    .await;
    let r = send(
        "/algo",
        Some(signed("/algo", "hmac-sha512", b"s3cret")),
        &with_date,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // validate_request_body: the Digest must be the body's.
    let post = |body: &'static str, digest: Option<&str>| {
        let mut r = http
            .post(format!("{proxy}/body"))
            .header("date", date.clone())
            .header(
                "authorization",
                hmac_auth_value(
                    "alice",
                    "hmac-sha256",
                    b"s3cret",
                    &["date"],
                    &format!("date: {date}"),
                ),
            )
            .body(body);
        if let Some(d) = digest {
            r = r.header("digest", d);
        }
        r.send()
    };
    let sum = ring::digest::digest(&ring::digest::SHA256, b"hello");
    let digest = format!(
        "SHA-256={}",
        base64::engine::general_purpose::STANDARD.encode(sum.as_ref())
    );
    let r = post("hello", Some(&digest)).await.unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["body"], "hello");
    expect(
        post("hullo", Some(&digest)).await.unwrap(),
        "HMAC signature does not match",
        "hmac",
    )
    .await;
    expect(
        post("hello", None).await.unwrap(),
        "HMAC signature does not match",
        "hmac",
    )
    .await;
    // hide_credentials and realm.
    let r = send(
        "/hide",
        Some(signed("/hide", "hmac-sha256", b"s3cret")),
        &with_date,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert!(got["headers"].get("authorization").is_none(), "{got}");
    expect(
        send("/hide", None, &with_date).await.unwrap(),
        "Unauthorized",
        "hmac realm=\"api\"",
    )
    .await;
}

/// Kong's documented "logical OR" of auth plugins: key-auth and basic-auth on one route, each
/// with the same `anonymous` consumer, and request-termination on that consumer: either
/// credential gets in as its own consumer, neither gets request-termination's 401.
#[tokio::test]
async fn auth_plugins_as_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let call = |path: String, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, "POST", &path, body).await }
    };
    service(&http, &node, &up).await;
    for who in ["alice", "bob", "anonymous"] {
        call("/consumers".into(), json!({"username": who})).await;
    }
    call(
        "/consumers/alice/key-auth".into(),
        json!({"key": "alice-key"}),
    )
    .await;
    call(
        "/consumers/bob/basic-auth".into(),
        json!({"username": "bob", "password": "pw"}),
    )
    .await;
    let either = [
        json!({"name": "key-auth", "config": {"anonymous": "anonymous"}}),
        json!({"name": "basic-auth", "config": {"anonymous": "anonymous"}}),
    ];
    route_with(&http, &node, "either", &either).await;
    // An anonymous consumer that does not exist fails closed.
    let ghost = [json!({"name": "basic-auth", "config": {"anonymous": "nobody"}})];
    route_with(&http, &node, "ghost", &ghost).await;
    call(
        "/consumers/anonymous/plugins".into(),
        json!({"name": "request-termination", "config": {"status_code": 401, "message": "log in first"}}),
    )
    .await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let get = |h: Option<(&str, String)>| {
        let mut r = http.get(format!("{proxy}/either"));
        if let Some((k, v)) = h {
            r = r.header(k, v);
        }
        r.send()
    };
    let who = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        let got: Value = r.json().await.unwrap();
        got["headers"]["x-consumer-username"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        who(get(Some(("apikey", "alice-key".into()))).await.unwrap()).await,
        "alice"
    );
    assert_eq!(
        who(get(Some(("authorization", basic("bob", "pw"))))
            .await
            .unwrap())
        .await,
        "bob"
    );
    let r = get(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "log in first"})
    );
    let r = get(Some(("authorization", basic("bob", "wrong"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{proxy}/ghost")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "An unexpected error occurred: anonymous consumer not found"})
    );
}
