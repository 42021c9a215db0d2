//! Kong's traffic plugins through real `gantry` processes: rate-limiting's policies against a
//! real Redis (shared by two data planes, stopped mid-test, synced every `sync_rate`).

use gantry_testkit::http::eventually;
use gantry_testkit::process::{
    admin, cp_env, dp_env, gen_cert, proxy_until, refused, route_with, Node,
};
use gantry_testkit::redis as test_redis;
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};
use std::time::Duration;

const NIL: &str = "00000000-0000-0000-0000-000000000000";

/// Seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Kong's Redis key of a day's counter for the plugin of `route` (no service), by `ip`.
fn day_key(route: &str, ip: &str) -> String {
    let t = now();
    format!(
        "ratelimit:{route}:{NIL}:{ip}:{}:day",
        (t - t % 86_400) * 1000
    )
}

/// Tests count per day: one that would straddle UTC midnight waits for the new day.
async fn clear_of_midnight() {
    let left = 86_400 - now() % 86_400;
    if left < 20 {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
}

fn host_port(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_string(), p.parse().expect("a port"))
}

fn header<'r>(r: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Two data planes of one control plane share one limit through Redis: the counts of both
/// add up, under Kong's own keys, and the request past the limit gets Kong's 429.
#[tokio::test]
async fn redis_limits_are_shared_by_data_planes() {
    if !test_redis::shared_available().await {
        return;
    }
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let cluster = cp.cluster.clone().unwrap();
    let dps: Vec<Node> = ["dp1", "dp2"]
        .iter()
        .map(|n| Node::start(&dir.path().join(n), &dp_env(&cluster, &cert, &[])))
        .collect();
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &cp, &up).await;
    let (host, port) = host_port(&test_redis::shared_addr());
    let rl = json!({"name": "rate-limiting", "config": {
        "day": 4, "limit_by": "ip", "policy": "redis",
        "redis": {"host": host, "port": port},
    }});
    route_with(&http, &cp, "rl", &[rl]).await;
    route_with(&http, &cp, "ready", &[]).await;
    let route = admin(&http, &cp, "GET", "/routes/rl", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = format!("ratelimit:{route}:");
    let proxies: Vec<String> = dps.iter().map(|d| d.dp_proxy()).collect();
    for p in &proxies {
        gantry_testkit::http::until(&http, &format!("{p}/ready"), 200, Duration::from_secs(10))
            .await;
    }
    for (i, want) in [3, 2, 1, 0].into_iter().enumerate() {
        let r = http
            .get(format!("{}/rl", proxies[i % 2]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(header(&r, "x-ratelimit-limit-day"), Some("4"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining-day"),
            Some(want.to_string().as_str()),
            "request {i}"
        );
        assert_eq!(header(&r, "ratelimit-limit"), Some("4"));
        assert!(header(&r, "ratelimit-reset").is_some());
    }
    for p in &proxies {
        let r = http.get(format!("{p}/rl")).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-remaining-day"), Some("0"));
        assert!(header(&r, "retry-after").is_some_and(|s| s.parse::<i64>().unwrap() > 0));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"message": "API rate limit exceeded"}));
    }
    // Kong's key and count (a refused request counts too, as in Kong's Redis policy).
    let addr = test_redis::shared_addr();
    assert_eq!(
        test_redis::get(&addr, &day_key(&route, "127.0.0.1")).await,
        Some(6)
    );
    test_redis::delete_prefix(&addr, &prefix).await;
}

/// Redis stopped under a running node: with `fault_tolerant` requests go on without limits
/// (an error is logged); without it they get a 500. Redis back, limits are enforced again.
#[tokio::test]
async fn redis_down_fails_open_or_closed_as_configured() {
    let Some(mut redis) = test_redis::Private::start().await else {
        return;
    };
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    for (route, tolerant) in [("open", true), ("closed", false)] {
        let rl = json!({"name": "rate-limiting", "config": {
            "day": 100, "limit_by": "ip", "policy": "redis", "fault_tolerant": tolerant,
            "redis": {"host": "127.0.0.1", "port": redis.port, "timeout": 500},
        }});
        route_with(&http, &node, route, &[rl]).await;
    }
    for route in ["/open", "/closed"] {
        let r = proxy_until(&http, &node, route, 200).await;
        assert!(header(&r, "x-ratelimit-remaining-day").is_some());
    }
    redis.down();
    let proxy = node.proxy.clone().unwrap();
    let r = http.get(format!("{proxy}/open")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-remaining-day").is_none());
    let r = http.get(format!("{proxy}/closed")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"message": "An unexpected error occurred"}));
    node.wait_log("failed to get usage", Duration::from_secs(5));
    redis.up().await;
    eventually(Duration::from_secs(10), "limits are back", || async {
        let r = http.get(format!("{proxy}/closed")).send().await.unwrap();
        r.status() == 200 && header(&r, "x-ratelimit-remaining-day").is_some()
    })
    .await;
}

/// With a `sync_rate`, a node counts locally and adds its counts to Redis every `sync_rate`
/// seconds, under Kong's keys; the limit holds on the node meanwhile.
#[tokio::test]
async fn sync_rate_adds_local_counts_to_redis() {
    let Some(redis) = test_redis::Private::start().await else {
        return;
    };
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let rl = json!({"name": "rate-limiting", "config": {
        "day": 5, "limit_by": "ip", "policy": "redis", "sync_rate": 1,
        "redis": {"host": "127.0.0.1", "port": redis.port},
    }});
    route_with(&http, &node, "rl", &[rl]).await;
    route_with(&http, &node, "ready", &[]).await;
    proxy_until(&http, &node, "/ready", 200).await;
    let route = admin(&http, &node, "GET", "/routes/rl", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = node.proxy.clone().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = http.get(format!("{proxy}/rl")).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let key = day_key(&route, "127.0.0.1");
    eventually(Duration::from_secs(5), "the counts reach Redis", || async {
        test_redis::get(&redis.addr(), &key).await == Some(5)
    })
    .await;
}

/// Send `head` and then `chunks` chunks of `size` bytes each as a chunked body on a raw
/// connection to `proxy` (`http://host:port`); returns the response's status line and body.
async fn chunked(proxy: &str, path: &str, size: usize, chunks: usize) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = format!("{size:x}\r\n{}\r\n", "x".repeat(size));
        for _ in 0..chunks {
            // The proxy may answer and close before the whole body is sent.
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                return wr;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        // Kept open: a half-closed connection is closed by the server without an answer.
        wr
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    drop(writer.await);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// request-size-limiting: Kong's 413 (417 with `Expect: 100-continue`) for a body announced
/// too large; a chunked body cut with a 413 once past the limit; 411 under
/// `require_content_length`; bodies within the limit reach the upstream whole.
#[tokio::test]
async fn request_size_limiting_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let limit = json!({"name": "request-size-limiting", "config": {"allowed_payload_size": 16, "size_unit": "kilobytes"}});
    let p = route_with(&http, &node, "small", &[limit]).await;
    assert_eq!(
        p[0]["config"],
        json!({"allowed_payload_size": 16, "size_unit": "kilobytes", "require_content_length": false})
    );
    let strict =
        json!({"name": "request-size-limiting", "config": {"require_content_length": true}});
    route_with(&http, &node, "strict", &[strict]).await;
    // Every change applied, the last plugin included (a route that answers says only that
    // its own version is running).
    gantry_testkit::process::synced(&http, &node).await;
    proxy_until(&http, &node, "/small", 200).await;
    let proxy = node.proxy.clone().unwrap();
    let post = |path: &str, body: Vec<u8>| http.post(format!("{proxy}{path}")).body(body);
    let r = post("/small", vec![b'a'; 16 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/small", vec![b'a'; 16 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"message": "Request size limit exceeded"}));
    // As a client that asks to continue does: the head alone, and the answer awaited before
    // any of the body (reqwest sends the body at once, and the proxy closing on a 417 with
    // that body unread can reset the connection before the client reads the answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
            .await
            .unwrap();
        s.write_all(
            b"POST /small HTTP/1.1\r\nHost: test\r\nContent-Length: 20000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .expect("an answer to the head")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            out.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 417 "), "{text}");
    }
    // Chunked: within the limit it reaches the upstream; past it, it is cut (8 MiB sent, the
    // answer comes once 16 KiB went by).
    let (status, _) = chunked(&proxy, "/small", 4096, 4).await;
    assert!(status.contains(" 200 "), "{status}");
    let (status, body) = chunked(&proxy, "/small", 65_536, 128).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("Request size limit exceeded"), "{body}");
    // require_content_length: a body of no length that is not chunked is refused.
    let r = http.get(format!("{proxy}/strict")).send().await.unwrap();
    assert_eq!(r.status(), 411);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "A valid Content-Length header is required"})
    );
    let r = post("/strict", b"hello".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = chunked(&proxy, "/strict", 10, 1).await;
    assert!(status.contains(" 200 "), "{status}");
}

/// The echo upstream's account of a request sent through `proxy`.
async fn echoed(r: reqwest::RequestBuilder) -> Value {
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// request-transformer, as Kong 3.9's: headers and query string removed, renamed, replaced,
/// added and appended in that order, with templates read from the request as the client sent
/// it; JSON, form and multipart bodies; `http_method` moving a form body to the query string;
/// `replace.uri` from the route's named captures; templates Gantry cannot render refused
/// when written, naming the field.
#[tokio::test]
async fn request_transformer_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let head = json!({"name": "request-transformer", "config": {
        "remove": {"headers": ["x-remove"], "querystring": ["drop"]},
        "rename": {"headers": ["x-old:x-new"], "querystring": ["a:b"]},
        "replace": {"headers": ["x-rep:new", "x-absent:never"], "querystring": ["q:replaced"]},
        "add": {"headers": ["x-add:$(headers.x_user)", "x-rep:not-added"],
                "querystring": ["added:$(query_params.q)"]},
        "append": {"headers": ["x-app:one"], "querystring": ["multi:2"]},
    }});
    let created = route_with(&http, &node, "head", &[head]).await;
    // Kong's defaults fill every group.
    assert_eq!(
        created[0]["config"]["remove"],
        json!({"body": [], "headers": ["x-remove"], "querystring": ["drop"]})
    );
    assert_eq!(created[0]["config"]["http_method"], Value::Null);
    let body = json!({"name": "request-transformer", "config": {
        "remove": {"body": ["gone"]},
        "rename": {"body": ["old:new"]},
        "replace": {"body": ["r:x"]},
        "add": {"body": ["k:$(headers.x_user or 'nobody')"]},
        "append": {"body": ["list:3"]},
    }});
    route_with(&http, &node, "body", &[body]).await;
    let get = json!({"name": "request-transformer", "config": {"http_method": "GET"}});
    route_with(&http, &node, "form", &[get]).await;
    let route = json!({"name": "users", "paths": ["~/users/(?<id>\\d+)$"]});
    admin(&http, &node, "POST", "/services/s/routes", route).await;
    let uri = json!({"name": "request-transformer", "config": {
        "replace": {"uri": "/v2/people/$(uri_captures.id)"},
        "add": {"headers": ["x-whole:$(uri_captures[0])"]},
    }});
    admin(&http, &node, "POST", "/routes/users/plugins", uri).await;
    proxy_until(&http, &node, "/head", 200).await;
    let proxy = node.proxy.clone().unwrap();

    // Headers and query string.
    let e = echoed(
        http.get(format!("{proxy}/head?q=1&drop=x&a=5"))
            .header("x-remove", "r")
            .header("x-old", "v")
            .header("x-rep", "old")
            .header("x-user", "alice")
            .header("x-app", "zero"),
    )
    .await;
    let h = &e["headers"];
    assert_eq!(h.get("x-remove"), None, "{e}");
    assert_eq!(h.get("x-old"), None, "{e}");
    assert_eq!(h["x-new"], "v");
    assert_eq!(h["x-rep"], "new");
    assert_eq!(h.get("x-absent"), None, "{e}");
    assert_eq!(h["x-add"], "alice");
    assert_eq!(h["x-user"], "alice");
    let uri = e["uri"].as_str().unwrap();
    assert_eq!(uri, "/?added=1&b=5&multi=2&q=replaced", "{e}");

    // A JSON body; its Content-Length follows the new body.
    let e = echoed(
        http.post(format!("{proxy}/body"))
            .header("x-user", "bob")
            .json(&json!({"old": 1, "gone": true, "r": "y", "list": [1, 2]})),
    )
    .await;
    let sent: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"new": 1, "r": "x", "list": [1, 2, "3"], "k": "bob"})
    );
    assert_eq!(
        e["headers"]["content-length"],
        e["body"].as_str().unwrap().len().to_string()
    );
    // A form body, sorted and escaped as Kong encodes it.
    let e = echoed(
        http.post(format!("{proxy}/body"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("old=a%20b&gone=1&r=y&list=1"),
    )
    .await;
    assert_eq!(e["body"], "k=nobody&list=1&list=3&new=a%20b&r=x", "{e}");
    // A multipart body: parts kept, removed, replaced, added.
    let mp = "--XB\r\nContent-Disposition: form-data; name=\"keep\"\r\n\r\nk\r\n--XB\r\nContent-Disposition: form-data; name=\"gone\"\r\n\r\ng\r\n--XB\r\nContent-Disposition: form-data; name=\"r\"\r\n\r\nold\r\n--XB--\r\n";
    let e = echoed(
        http.post(format!("{proxy}/body"))
            .header("content-type", "multipart/form-data; boundary=XB")
            .body(mp),
    )
    .await;
    let b = e["body"].as_str().unwrap();
    assert!(b.contains("name=\"keep\"\r\n\r\nk\r\n"), "{b}");
    assert!(!b.contains("name=\"gone\""), "{b}");
    assert!(b.contains("name=\"r\"\r\n\r\nx\r\n"), "{b}");
    assert!(b.contains("name=\"k\"\r\n\r\nnobody\r\n"), "{b}");
    assert!(b.ends_with("--XB--\r\n"), "{b}");
    // A body of another type passes untouched.
    let e = echoed(
        http.post(format!("{proxy}/body"))
            .header("content-type", "text/plain")
            .body("old=1"),
    )
    .await;
    assert_eq!(e["body"], "old=1");

    // http_method GET: the method changes and a form body joins the query string.
    let e = echoed(
        http.post(format!("{proxy}/form?z=0"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1&b=two"),
    )
    .await;
    assert_eq!(e["method"], "GET");
    assert_eq!(e["uri"], "/?a=1&b=two&z=0", "{e}");

    // replace.uri from the route's captures.
    let e = echoed(http.get(format!("{proxy}/users/42?x=1"))).await;
    assert_eq!(e["path"], "/v2/people/42", "{e}");
    assert_eq!(e["uri"], "/v2/people/42?x=1", "{e}");
    assert_eq!(e["headers"]["x-whole"], "/users/42");

    // Refused when written, naming the field; nothing stored.
    for (config, field, message) in [
        (
            json!({"add": {"headers": ["no-colon"]}}),
            json!({"add": {"headers": ["invalid value: no-colon"]}}),
            "",
        ),
        (
            json!({"add": {"querystring": ["k"]}}),
            json!({"add": {"querystring": ["key 'k' has no value"]}}),
            "",
        ),
        (
            json!({"rename": {"headers": ["a:b c"]}}),
            json!({"rename": {"headers": ["'b c' is not a valid header"]}}),
            "",
        ),
        (
            json!({"http_method": "get"}),
            json!({"http_method": "invalid value: get"}),
            "",
        ),
        (
            json!({"add": {"body": ["k:$(10 * uri_captures.id)"]}}),
            Value::Null,
            "is not in supported format",
        ),
        (
            json!({"add": {"headers": ["x:$(shared.v)"]}}),
            Value::Null,
            "add.headers",
        ),
    ] {
        let p = json!({"name": "request-transformer", "config": config});
        let b = refused(&http, &node, "/plugins", &p).await;
        if field.is_null() {
            assert!(b.to_string().contains(message), "{config}: {b}");
        } else {
            assert_eq!(b["fields"]["config"], field, "{config}: {b}");
        }
    }
    let plugins = admin(&http, &node, "GET", "/plugins", json!({})).await;
    assert_eq!(plugins["data"].as_array().unwrap().len(), 4);
}

/// Partials: rate-limiting takes its Redis from a `redis-ce` partial, and a change to the
/// partial reaches the plugin; `/partials/{p}/links`, `/schemas/partials/{type}`; a partial in
/// use cannot be deleted; a missing or mistyped partial is refused, naming it.
#[tokio::test]
async fn partials_reach_the_plugins_that_use_them() {
    if !test_redis::shared_available().await {
        return;
    }
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let (host, port) = host_port(&test_redis::shared_addr());
    let partial = admin(
        &http,
        &node,
        "POST",
        "/partials",
        json!({
            "name": "redis-main", "type": "redis-ce", "config": {"host": host, "port": port},
        }),
    )
    .await;
    let pid = partial["id"].as_str().unwrap().to_string();
    let ee = admin(
        &http,
        &node,
        "POST",
        "/partials",
        json!({
            "name": "redis-other", "type": "redis-ee", "config": {"host": host, "port": port},
        }),
    )
    .await;
    let rl = |partial: &str| {
        json!({"name": "rate-limiting", "partials": [{"id": partial}], "config": {
            "day": 3, "limit_by": "ip", "policy": "redis", "fault_tolerant": false,
        }})
    };
    // Missing and mistyped partials are refused, naming them.
    let b = refused(
        &http,
        &node,
        "/plugins",
        &rl("7f6c1a3e-8c57-4c1e-9d55-2b9a6c1f0e11"),
    )
    .await;
    assert_eq!(
        b["fields"]["partials"], "partial '7f6c1a3e-8c57-4c1e-9d55-2b9a6c1f0e11' does not exist",
        "{b}"
    );
    let b = refused(&http, &node, "/plugins", &rl(ee["id"].as_str().unwrap())).await;
    let m = b["fields"]["partials"].as_str().unwrap_or_default();
    assert!(
        m.contains("of type 'redis-ee'") && m.contains("redis-ce"),
        "{b}"
    );
    let plugins = route_with(&http, &node, "rl", &[rl(&pid)]).await;
    route_with(&http, &node, "ready", &[]).await;
    proxy_until(&http, &node, "/ready", 200).await;
    let route = admin(&http, &node, "GET", "/routes/rl", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = node.proxy.clone().unwrap();
    for want in ["2", "1", "0"] {
        let r = http.get(format!("{proxy}/rl")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-remaining-day"), Some(want));
    }
    assert_eq!(
        http.get(format!("{proxy}/rl"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    // Counted in the partial's Redis.
    let addr = test_redis::shared_addr();
    assert_eq!(
        test_redis::get(&addr, &day_key(&route, "127.0.0.1")).await,
        Some(4)
    );
    test_redis::delete_prefix(&addr, &format!("ratelimit:{route}:")).await;
    // Links and the partial schema.
    let links = admin(
        &http,
        &node,
        "GET",
        "/partials/redis-main/links",
        json!(null),
    )
    .await;
    assert_eq!(links["count"], 1);
    assert_eq!(links["data"][0]["id"], plugins[0]["id"]);
    assert_eq!(links["data"][0]["name"], "rate-limiting");
    let schema = admin(
        &http,
        &node,
        "GET",
        "/schemas/partials/redis-ce",
        json!(null),
    )
    .await;
    let config = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f.get("config"))
        .unwrap();
    assert!(config.to_string().contains("\"host\""), "{schema}");
    // In use: not deleted.
    let r = http
        .delete(format!("{}/partials/redis-main", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A change to the partial reaches the plugin: Redis gone (and fault_tolerant off), 500.
    admin(
        &http,
        &node,
        "PATCH",
        "/partials/redis-main",
        json!({"config": {"port": 1}}),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the partial's change never reached the plugin",
        || async {
            http.get(format!("{proxy}/rl"))
                .send()
                .await
                .unwrap()
                .status()
                == 500
        },
    )
    .await;
}

/// rate-limiting's `limit_by = consumer-group`: the consumers of a group share one count; a
/// consumer in no group counts by its address.
#[tokio::test]
async fn rate_limiting_by_consumer_group() {
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    admin(
        &http,
        &node,
        "POST",
        "/consumer_groups",
        json!({"name": "team"}),
    )
    .await;
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
    let members = json!({"consumer": ["alice", "bob"]});
    admin(
        &http,
        &node,
        "POST",
        "/consumer_groups/team/consumers",
        members,
    )
    .await;
    let rl = json!({"name": "rate-limiting", "config": {"day": 2, "limit_by": "consumer-group", "policy": "local"}});
    route_with(&http, &node, "rl", &[json!({"name": "key-auth"}), rl]).await;
    // Both plugins running: the proxy runs the version the Admin API last wrote.
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let call = |who: &'static str| {
        let (http, proxy) = (&http, &proxy);
        async move {
            let r = http
                .get(format!("{proxy}/rl"))
                .header("apikey", format!("{who}-key"))
                .send()
                .await
                .unwrap();
            let left = header(&r, "x-ratelimit-remaining-day").map(str::to_string);
            (r.status().as_u16(), left)
        }
    };
    assert_eq!(call("alice").await, (200, Some("1".into())));
    assert_eq!(call("bob").await, (200, Some("0".into())));
    assert_eq!(call("alice").await.0, 429, "the group's count is spent");
    assert_eq!(
        call("carol").await,
        (200, Some("1".into())),
        "no group: her own count"
    );
}

/// A node with a service `s` in front of an upstream that answers every request with
/// `response` (away from UTC midnight, for counts by day).
async fn node_before(response: &'static [u8]) -> (tempfile::TempDir, Node, reqwest::Client) {
    clear_of_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = gantry_testkit::upstream::raw(response, Duration::ZERO, b"").await;
    gantry_testkit::process::service(&http, &node, &up.to_string()).await;
    (dir, node, http)
}

/// response-ratelimiting: the upstream's `X-Kong-Limit` counts against each named limit;
/// Kong's headers; a response that uses a spent limit becomes a 429 without a body; with
/// `block_on_first_violation` a request is refused at once; Kong's validation.
#[tokio::test]
async fn response_ratelimiting_as_kong() {
    let (_dir, node, http) = node_before(
        b"HTTP/1.1 200 OK\r\nX-Kong-Limit: videos=1, other=5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvideo",
    )
    .await;
    let rr = |block: bool| {
        json!({"name": "response-ratelimiting", "config": {
            "limits": {"videos": {"day": 2, "month": 10}}, "limit_by": "ip", "block_on_first_violation": block,
        }})
    };
    route_with(&http, &node, "rr", &[rr(false)]).await;
    route_with(&http, &node, "strict", &[rr(true)]).await;
    for (config, field) in [
        (json!({"limits": {}}), "limits"),
        (json!({"limits": {"v": {"day": 5, "month": 1}}}), "limits"),
        (
            json!({"limits": {"v": {"day": 5}}, "policy": "cluster"}),
            "policy",
        ),
    ] {
        let b = refused(
            &http,
            &node,
            "/plugins",
            &json!({"name": "response-ratelimiting", "config": config}),
        )
        .await;
        assert!(b["fields"]["config"][field].is_string(), "{b}");
    }
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let r = http.get(format!("{proxy}/rr")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-videos-day"), Some("1"));
    let r = http.get(format!("{proxy}/rr")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-videos-day"), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining-videos-day"), Some("0"));
    assert_eq!(header(&r, "x-ratelimit-remaining-videos-month"), Some("8"));
    assert_eq!(
        header(&r, "x-ratelimit-remaining-videos"),
        Some("1"),
        "left before this one"
    );
    assert!(
        header(&r, "x-kong-limit").is_none(),
        "the upstream's header is not passed on"
    );
    assert_eq!(r.text().await.unwrap(), "video");
    // Spent: the upstream's answer becomes a 429 without a body.
    let r = http.get(format!("{proxy}/rr")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.text().await.unwrap(), "");
    // block_on_first_violation: refused before the upstream once spent.
    for _ in 0..2 {
        assert_eq!(
            http.get(format!("{proxy}/strict"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = http.get(format!("{proxy}/strict")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"message": "API rate limit exceeded for 'videos'"})
    );
}

/// response-ratelimiting's `redis` policy: uses counted under Kong's keys in Redis, read back
/// by the next request.
#[tokio::test]
async fn response_ratelimiting_counts_in_redis() {
    if !test_redis::shared_available().await {
        return;
    }
    let (_dir, node, http) = node_before(
        b"HTTP/1.1 200 OK\r\nX-Kong-Limit: videos=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let (host, port) = host_port(&test_redis::shared_addr());
    let rr = json!({"name": "response-ratelimiting", "config": {
        "limits": {"videos": {"day": 2}}, "limit_by": "ip", "policy": "redis",
        "redis": {"host": host, "port": port}, "fault_tolerant": false,
    }});
    route_with(&http, &node, "rrr", &[rr]).await;
    gantry_testkit::process::synced(&http, &node).await;
    let route = admin(&http, &node, "GET", "/routes/rrr", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = format!("response-ratelimit:{route}:");
    let proxy = node.proxy.clone().unwrap();
    let addr = test_redis::shared_addr();
    for used in 1..=2 {
        let r = http.get(format!("{proxy}/rrr")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        eventually(
            Duration::from_secs(5),
            "the use never reached Redis",
            || {
                let (addr, prefix) = (addr.clone(), prefix.clone());
                async move {
                    let keys = test_redis::keys(&addr, &prefix).await;
                    match keys.first() {
                        Some(k) => test_redis::get(&addr, k).await == Some(used),
                        None => false,
                    }
                }
            },
        )
        .await;
    }
    let keys = test_redis::keys(&addr, &prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(":videos:day"), "{keys:?}");
    assert!(keys[0].contains(":127.0.0.1:"), "{keys:?}");
    assert_eq!(
        http.get(format!("{proxy}/rrr"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    test_redis::delete_prefix(&addr, &prefix).await;
}

/// response-ratelimiting with its Redis down: `fault_tolerant` lets requests through
/// uncounted, without it they get a 500.
#[tokio::test]
async fn response_ratelimiting_with_redis_down() {
    let Some(mut redis) = test_redis::Private::start().await else {
        return;
    };
    let (_dir, node, http) = node_before(
        b"HTTP/1.1 200 OK\r\nX-Kong-Limit: videos=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    for (route, tolerant) in [("open", true), ("closed", false)] {
        let rr = json!({"name": "response-ratelimiting", "config": {
            "limits": {"videos": {"day": 100}}, "limit_by": "ip", "policy": "redis",
            "fault_tolerant": tolerant,
            "redis": {"host": "127.0.0.1", "port": redis.port, "timeout": 500},
        }});
        route_with(&http, &node, route, &[rr]).await;
    }
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    for route in ["/open", "/closed"] {
        let r = http.get(format!("{proxy}{route}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(header(&r, "x-ratelimit-remaining-videos").is_some());
    }
    redis.down();
    let r = http.get(format!("{proxy}/open")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-remaining-videos").is_none());
    let r = http.get(format!("{proxy}/closed")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    node.wait_log(
        "response-ratelimiting cannot read its counters",
        Duration::from_secs(5),
    );
}

/// Kong's proxy-cache key: the sha256 (hex) of `prefix|METHOD|request|params|headers`, with
/// `request` nginx's request line cut at its first `?`.
fn kong_cache_key(
    prefix: &str,
    method: &str,
    request: &str,
    params: &str,
    headers: &str,
) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{prefix}|{method}|{request}|{params}|{headers}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A route's id.
async fn route_id(http: &reqwest::Client, node: &Node, name: &str) -> String {
    admin(http, node, "GET", &format!("/routes/{name}"), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A GET through the proxy with these headers: status, `X-Cache-Status`, `X-Cache-Key`,
/// `Age`, `Content-Length`, and the body.
async fn cached_get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (
    u16,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
) {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let h = |n: &str| header(&r, n).map(str::to_string);
    let out = (
        r.status().as_u16(),
        h("x-cache-status"),
        h("x-cache-key"),
        h("age"),
        h("content-length"),
    );
    let body = r.text().await.unwrap();
    (out.0, out.1, out.2, out.3, out.4, body)
}

/// proxy-cache (memory), as Kong 3.9's: a Miss then a Hit that never reaches the upstream,
/// under Kong's key; Bypass for a method, a status and a content type it does not cache;
/// Refresh once older than `cache_ttl` (kept `storage_ttl`); `vary_query_params` and
/// `vary_headers` in the key; the diagnostic headers off, and back with `Kong-Debug`.
#[tokio::test]
async fn proxy_cache_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let pc = |config: Value| {
        let mut c = json!({"strategy": "memory"});
        c.as_object_mut()
            .unwrap()
            .extend(config.as_object().unwrap().clone());
        json!({"name": "proxy-cache", "config": c})
    };
    route_with(&http, &node, "pc", &[pc(json!({}))]).await;
    route_with(
        &http,
        &node,
        "pct",
        &[pc(json!({"content_type": ["text/plain"]}))],
    )
    .await;
    route_with(
        &http,
        &node,
        "pcv",
        &[pc(
            json!({"vary_query_params": ["a"], "vary_headers": ["X-V"]}),
        )],
    )
    .await;
    route_with(
        &http,
        &node,
        "pcr",
        &[pc(json!({"cache_ttl": 1, "storage_ttl": 60}))],
    )
    .await;
    route_with(
        &http,
        &node,
        "pcq",
        &[pc(json!({"response_headers": {"age": false, "X-Cache-Status": false, "X-Cache-Key": false}}))],
    )
    .await;
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let rid = route_id(&http, &node, "pc").await;

    // Miss, then Hit: the same body (the upstream would echo x-n: 2), Kong's key, an Age.
    let (s, st, key, _, len, body1) =
        cached_get(&http, &format!("{proxy}/pc?b=2&a=1&b=1&f"), &[("x-n", "1")]).await;
    assert_eq!((s, st.as_deref()), (200, Some("Miss")));
    let want = kong_cache_key(&rid, "GET", "GET /pc", "a=1:b=1,2:f", "");
    assert_eq!(key.as_deref(), Some(want.as_str()));
    // The cache only observes the body: its length stays.
    assert_eq!(len, Some(body1.len().to_string()));
    let (s, st, key2, age, len, body2) =
        cached_get(&http, &format!("{proxy}/pc?f&a=1&b=1&b=2"), &[("x-n", "2")]).await;
    assert_eq!((s, st.as_deref()), (200, Some("Hit")));
    assert_eq!(key2.as_deref(), Some(want.as_str()));
    assert_eq!(body2, body1);
    assert!(body2.contains("\"x-n\":\"1\""), "{body2}");
    assert!(age.is_some_and(|a| a.parse::<u64>().unwrap() <= 2));
    assert_eq!(len, Some(body2.len().to_string()));
    // No query: nginx's whole request line.
    let (_, st, key, ..) = cached_get(&http, &format!("{proxy}/pc"), &[]).await;
    assert_eq!(st.as_deref(), Some("Miss"));
    let want = kong_cache_key(&rid, "GET", "GET /pc HTTP/1.1", "", "");
    assert_eq!(key.as_deref(), Some(want.as_str()));

    // Bypass: a method not cached, a status not cached, a content type not cached.
    let r = http.post(format!("{proxy}/pc")).send().await.unwrap();
    assert_eq!(header(&r, "x-cache-status"), Some("Bypass"));
    assert_eq!(header(&r, "x-cache-key"), None);
    for _ in 0..2 {
        let (s, st, ..) = cached_get(&http, &format!("{proxy}/pc/status/500"), &[]).await;
        assert_eq!((s, st.as_deref()), (500, Some("Bypass")));
        let (s, st, ..) = cached_get(&http, &format!("{proxy}/pct"), &[]).await;
        assert_eq!((s, st.as_deref()), (200, Some("Bypass")));
    }

    // HEAD: stored without a body (nginx runs the body filters once, with nothing).
    for want in ["Miss", "Hit"] {
        let r = http.head(format!("{proxy}/pc?head")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-cache-status"), Some(want));
    }

    // vary_query_params and vary_headers: only those, in the key.
    let vid = route_id(&http, &node, "pcv").await;
    let (_, st, k1, ..) = cached_get(&http, &format!("{proxy}/pcv?a=1&b=1"), &[("x-v", "x")]).await;
    assert_eq!(st.as_deref(), Some("Miss"));
    let want = kong_cache_key(&vid, "GET", "GET /pcv", "a=1", "X-V=x");
    assert_eq!(k1.as_deref(), Some(want.as_str()));
    let (_, st, k2, ..) = cached_get(&http, &format!("{proxy}/pcv?b=2&a=1"), &[("x-v", "x")]).await;
    assert_eq!((st.as_deref(), &k2), (Some("Hit"), &k1));
    let (_, st, k3, ..) = cached_get(&http, &format!("{proxy}/pcv?a=1&b=1"), &[("x-v", "y")]).await;
    assert_eq!(st.as_deref(), Some("Miss"));
    assert_ne!(k3, k1);
    let (_, st, k4, ..) = cached_get(&http, &format!("{proxy}/pcv?a=2"), &[("x-v", "x")]).await;
    assert_eq!(st.as_deref(), Some("Miss"));
    assert_ne!(k4, k1);

    // Older than cache_ttl (1 s) but kept storage_ttl: Refresh, then Hit again.
    let url = format!("{proxy}/pcr");
    assert_eq!(
        cached_get(&http, &url, &[]).await.1.as_deref(),
        Some("Miss")
    );
    assert_eq!(cached_get(&http, &url, &[]).await.1.as_deref(), Some("Hit"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        cached_get(&http, &url, &[]).await.1.as_deref(),
        Some("Refresh")
    );
    assert_eq!(cached_get(&http, &url, &[]).await.1.as_deref(), Some("Hit"));

    // The diagnostic headers off: none, until the request has Kong-Debug.
    let url = format!("{proxy}/pcq");
    let (_, st, key, age, ..) = cached_get(&http, &url, &[]).await;
    assert_eq!((st, key, age), (None, None, None));
    let (_, st, key, age, ..) = cached_get(&http, &url, &[]).await;
    assert_eq!((st, key, age), (None, None, None));
    let (_, st, key, age, ..) = cached_get(&http, &url, &[("kong-debug", "1")]).await;
    assert_eq!(st.as_deref(), Some("Hit"));
    assert!(key.is_some() && age.is_some());
}

/// proxy-cache with `cache_control`: the response's `max-age` is the entry's TTL; a request's
/// `no-store` bypasses; a `private` response and one without a TTL are not stored; an
/// `only-if-cached` request for what is not cached gets a 504.
#[tokio::test]
async fn proxy_cache_honours_cache_control() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    for (name, cc) in [
        ("fresh", "Cache-Control: max-age=60\r\n"),
        ("private", "Cache-Control: private, max-age=60\r\n"),
        ("nottl", ""),
    ] {
        let head: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{cc}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let up = gantry_testkit::upstream::raw(head, Duration::ZERO, b"").await;
        let s = json!({"name": name, "url": format!("http://{up}")});
        admin(&http, &node, "POST", "/services", s).await;
        let r = json!({"name": name, "paths": [format!("/{name}")]});
        admin(&http, &node, "POST", &format!("/services/{name}/routes"), r).await;
        let p =
            json!({"name": "proxy-cache", "config": {"strategy": "memory", "cache_control": true}});
        admin(&http, &node, "POST", &format!("/routes/{name}/plugins"), p).await;
    }
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let url = format!("{proxy}/fresh");
    let (_, st, key, ..) = cached_get(&http, &url, &[]).await;
    assert_eq!(st.as_deref(), Some("Miss"));
    let (_, st, _, _, _, body) = cached_get(&http, &url, &[]).await;
    assert_eq!((st.as_deref(), body.as_str()), (Some("Hit"), "hello"));
    let entry = admin(
        &http,
        &node,
        "GET",
        &format!("/proxy-cache/{}", key.unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(entry["ttl"], 60);
    // The client's no-store: not from the cache.
    let (_, st, key, ..) = cached_get(&http, &url, &[("cache-control", "no-store")]).await;
    assert_eq!((st.as_deref(), key), (Some("Bypass"), None));
    // The client's max-age: an entry older than that is refreshed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, st, ..) = cached_get(&http, &url, &[("cache-control", "max-age=0")]).await;
    assert_eq!(st.as_deref(), Some("Refresh"));
    for name in ["private", "nottl"] {
        for _ in 0..2 {
            let (s, st, ..) = cached_get(&http, &format!("{proxy}/{name}"), &[]).await;
            assert_eq!((s, st.as_deref()), (200, Some("Bypass")), "{name}");
        }
    }
    let (s, ..) = cached_get(
        &http,
        &format!("{proxy}/fresh?other"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(s, 504);
    let r = http
        .get(format!("{proxy}/fresh?other"))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b, json!({"message": "The upstream server is timing out"}));
}

/// proxy-cache's Admin API and schema, as Kong's: an entry by key and by plugin, purged one
/// at a time or all at once (the next request is a Miss); the configuration's defaults as
/// Kong returns them, and a dictionary that is not a shared dict refused.
#[tokio::test]
async fn proxy_cache_admin_api_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let adm = node.admin.clone();
    // No proxy-cache plugin yet: nothing to find, nothing to flush.
    let r = http
        .get(format!("{adm}/proxy-cache/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(format!("{adm}/proxy-cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let p = route_with(
        &http,
        &node,
        "pc",
        &[json!({"name": "proxy-cache", "config": {"strategy": "memory"}})],
    )
    .await;
    assert_eq!(
        p[0]["config"],
        json!({
            "response_code": [200, 301, 404], "request_method": ["GET", "HEAD"],
            "content_type": ["text/plain", "application/json"], "cache_ttl": 300,
            "strategy": "memory", "cache_control": false, "ignore_uri_case": false,
            "storage_ttl": null, "memory": {"dictionary_name": "kong_db_cache"},
            "vary_query_params": null, "vary_headers": null,
            "response_headers": {"age": true, "X-Cache-Status": true, "X-Cache-Key": true},
        })
    );
    assert_eq!(p[0]["protocols"], json!(["grpc", "grpcs", "http", "https"]));
    let plugin = p[0]["id"].as_str().unwrap().to_string();
    for (config, check) in [
        (
            json!({"strategy": "memory", "memory": {"dictionary_name": "kong"}}),
            json!({"@entity": ["missing shared dict 'kong'"]}),
        ),
        (
            json!({}),
            json!({"config": {"strategy": "required field missing"}}),
        ),
        (
            json!({"strategy": "memory", "request_method": ["DELETE"]}),
            json!({"config": {"request_method": ["expected one of: HEAD, GET, POST, PATCH, PUT"]}}),
        ),
    ] {
        let b = refused(
            &http,
            &node,
            "/plugins",
            &json!({"name": "proxy-cache", "config": config}),
        )
        .await;
        assert_eq!(b["fields"], check, "{b}");
    }
    let b = refused(
        &http,
        &node,
        "/plugins",
        &json!({"name": "proxy-cache", "config": {"strategy": "memory", "cache_ttl": 0}}),
    )
    .await;
    assert!(b["fields"]["config"]["cache_ttl"].is_string(), "{b}");
    gantry_testkit::process::synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let url = format!("{proxy}/pc");
    let miss = || async {
        let (_, st, key, _, _, body) = cached_get(&http, &url, &[]).await;
        assert_eq!(st.as_deref(), Some("Miss"));
        (key.unwrap(), body)
    };
    let (key, body) = miss().await;
    let entry = admin(
        &http,
        &node,
        "GET",
        &format!("/proxy-cache/{key}"),
        json!({}),
    )
    .await;
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["headers"]["content-type"], "application/json");
    assert_eq!(entry["body"], body.as_str());
    assert_eq!(entry["body_len"], body.len());
    assert!((entry["timestamp"].as_i64().unwrap() - now()).abs() <= 2);
    assert_eq!(entry["ttl"], 300);
    assert_eq!(entry["version"], 1);
    let by_plugin = format!("/proxy-cache/{plugin}/caches/{key}");
    assert_eq!(
        admin(&http, &node, "GET", &by_plugin, json!({})).await,
        entry
    );
    let status = |m: reqwest::Method, path: String| {
        let http = http.clone();
        let adm = adm.clone();
        async move {
            http.request(m, format!("{adm}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    use reqwest::Method;
    assert_eq!(
        status(Method::GET, format!("/proxy-cache/{NIL}/caches/{key}")).await,
        404
    );
    assert_eq!(
        status(Method::GET, format!("/proxy-cache/{plugin}/caches/nokey")).await,
        404
    );
    assert_eq!(status(Method::PUT, "/proxy-cache".into()).await, 405);
    // Purged by key: gone, and the next request is a Miss.
    assert_eq!(
        status(Method::DELETE, format!("/proxy-cache/{key}")).await,
        204
    );
    assert_eq!(
        status(Method::GET, format!("/proxy-cache/{key}")).await,
        404
    );
    assert_eq!(
        status(Method::DELETE, format!("/proxy-cache/{key}")).await,
        404
    );
    miss().await;
    // Purged through its plugin.
    assert_eq!(status(Method::DELETE, by_plugin.clone()).await, 204);
    assert_eq!(status(Method::DELETE, by_plugin.clone()).await, 404);
    miss().await;
    assert_eq!(cached_get(&http, &url, &[]).await.1.as_deref(), Some("Hit"));
    // Flushed.
    assert_eq!(status(Method::DELETE, "/proxy-cache".into()).await, 204);
    assert_eq!(
        status(Method::GET, format!("/proxy-cache/{key}")).await,
        404
    );
    miss().await;
}
