//! Proxying through a real `gantry` process to real upstream servers on loopback.

use std::time::{Duration, Instant};

use gantry_testkit::http::{exchange, not_enabled};
use gantry_testkit::process::{admin, proxy_until as until, service_and_route, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};

#[tokio::test]
async fn routes_apply_live_with_kong_headers_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    // Nothing configured: Kong's 404.
    let r = until(&http, &node, "/anything", 404).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "no Route matched with those values"})
    );

    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "echo", "url": format!("http://{up}/base")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/echo/routes",
        json!({"name": "r", "paths": ["/api"]}),
    )
    .await;
    let r = until(&http, &node, "/api/users?id=7", 200).await;
    assert!(r.headers().contains_key("x-kong-upstream-latency"));
    assert!(r.headers().contains_key("x-kong-proxy-latency"));
    assert!(r.headers()["via"].to_str().unwrap().contains("gantry"));
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/base/users?id=7");
    let h = &seen["headers"];
    assert_eq!(h["host"], json!(up));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    assert_eq!(h["x-forwarded-path"], "/api/users");
    assert_eq!(h["x-forwarded-prefix"], "/api");
    assert_eq!(h["x-real-ip"], "127.0.0.1");

    // A change of the route applies without a restart; the old path is gone.
    admin(
        &http,
        &node,
        "PATCH",
        "/routes/r",
        json!({"paths": ["~/v(?<n>\\d+)/"], "strip_path": false, "preserve_host": true}),
    )
    .await;
    let seen: Value = until(&http, &node, "/v2/x", 200)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["uri"], "/base/v2/x");
    assert!(
        seen["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{seen}"
    );
    assert!(seen["headers"].get("x-forwarded-prefix").is_none());
    until(&http, &node, "/api/users", 404).await;

    // The status listener reports the running configuration.
    let status = node.status.clone().unwrap();
    let st: Value = http
        .get(format!("{status}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin_status = admin(&http, &node, "GET", "/status", json!({})).await;
    assert_eq!(st["configuration_hash"], admin_status["configuration_hash"]);
    assert_eq!(st["ready"], true);
    assert_eq!(
        http.get(format!("{status}/status/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await;
    assert!(
        metrics.contains("gantry_http_requests_total{class=\"2xx\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "gantry_config_hash_info{{hash=\"{}\"}} 1",
        st["configuration_hash"].as_str().unwrap()
    )));

    // Bodies go both ways.
    let proxy = node.proxy.clone().unwrap();
    let r = http
        .post(format!("{proxy}/v1/post"))
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body"], "hello upstream");
}

#[tokio::test]
async fn upstream_errors_redirects_and_balancing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "down", "url": format!("http://{closed}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/down/routes",
        json!({"paths": ["/down"]}),
    )
    .await;
    admin(&http, &node, "POST", "/services", json!({"name": "slow", "url": format!("http://{up}"), "read_timeout": 300, "connect_timeout": 300})).await;
    admin(
        &http,
        &node,
        "POST",
        "/services/slow/routes",
        json!({"paths": ["/slow"], "strip_path": false}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "tls-only", "url": format!("http://{up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/tls-only/routes",
        json!({"paths": ["/secure"], "protocols": ["https"]}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/tls-only/routes",
        json!({"paths": ["/moved"], "protocols": ["https"], "https_redirect_status_code": 301}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/routes",
        json!({"paths": ["/orphan"]}),
    )
    .await;

    let r = until(&http, &node, "/down", 502).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "An invalid response was received from the upstream server"
    );
    let r = until(&http, &node, "/slow/delay/2000", 504).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "The upstream server is timing out"
    );
    until(&http, &node, "/slow/delay/10", 200).await;
    let r = until(&http, &node, "/secure", 426).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Please use HTTPS protocol"
    );
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = until(&no_redirect, &node, "/moved?a=1", 301).await;
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://127.0.0.1/moved?a=1"));
    until(&http, &node, "/orphan", 503).await;

    // An upstream with two weighted targets.
    let (a, b) = (echo().await, echo().await);
    admin(
        &http,
        &node,
        "POST",
        "/upstreams",
        json!({"name": "pool.internal"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/pool.internal/targets",
        json!({"target": a, "weight": 300}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/pool.internal/targets",
        json!({"target": b, "weight": 100}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "pool", "host": "pool.internal"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/pool/routes",
        json!({"paths": ["/pool"]}),
    )
    .await;
    until(&http, &node, "/pool", 200).await;
    let proxy = node.proxy.clone().unwrap();
    let mut hits = std::collections::HashMap::new();
    for _ in 0..40 {
        let v: Value = http
            .get(format!("{proxy}/pool"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The echo sees the Host the proxy sent: the upstream's name.
        assert_eq!(v["headers"]["host"], "pool.internal");
        *hits
            .entry(v["server"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    // Weighted round-robin: 3 to 1.
    assert_eq!((hits[&a], hits[&b]), (30, 10), "{hits:?}");
}

/// Routes change while requests flow: none fails.
#[tokio::test]
async fn route_changes_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
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
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"name": "main", "paths": ["/live"]}),
    )
    .await;
    until(&http, &node, "/live", 200).await;
    let proxy = node.proxy.clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, proxy, stop) = (http.clone(), proxy.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(format!("{proxy}/live/x")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    for i in 0..30 {
        admin(
            &http,
            &node,
            "POST",
            "/services/s/routes",
            json!({"paths": [format!("/other/{i}")]}),
        )
        .await;
        admin(
            &http,
            &node,
            "PATCH",
            "/routes/main",
            json!({"strip_path": i % 2 == 0}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during route changes: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 100, "only {total} requests went through");
}

#[tokio::test]
async fn dbless_node_proxies_its_declarative_file() {
    let dir = tempfile::tempdir().unwrap();
    let up = echo().await;
    let file = dir.path().join("kong.yml");
    std::fs::write(
        &file,
        format!("_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://{up}/in\n  routes:\n  - paths: [/d]\n"),
    )
    .unwrap();
    let env = vec![
        ("KONG_DATABASE".to_string(), "off".to_string()),
        (
            "KONG_DECLARATIVE_CONFIG".to_string(),
            file.display().to_string(),
        ),
    ];
    let node = Node::start(dir.path(), &env);
    let http = reqwest::Client::new();
    let v: Value = until(&http, &node, "/d/x", 200).await.json().await.unwrap();
    assert_eq!(v["uri"], "/in/x");
    // A new configuration through POST /config replaces it.
    let text = format!("_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://{up}/new\n  routes:\n  - paths: [/n]\n");
    let r = http
        .post(format!("{}/config", node.admin))
        .header("content-type", "text/yaml")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = until(&http, &node, "/n/y", 200).await.json().await.unwrap();
    assert_eq!(v["uri"], "/new/y");
    until(&http, &node, "/d/x", 404).await;
}

/// key-auth, rate-limiting (with a consumer-scoped override), request-termination and cors.
#[tokio::test]
async fn plugins_authenticate_limit_terminate_and_cors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
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
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"name": "p", "paths": ["/p"]}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"name": "t", "paths": ["/t"]}),
    )
    .await;
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
        "/consumers",
        json!({"username": "bob", "custom_id": "b-1"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers/alice/key-auth",
        json!({"key": "alice-key"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers/bob/key-auth",
        json!({"key": "bob-key"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/routes/p/plugins",
        json!({"name": "key-auth"}),
    )
    .await;
    // Hour windows: a test never straddles one in practice, unlike minutes.
    admin(
        &http,
        &node,
        "POST",
        "/routes/p/plugins",
        json!({"name": "rate-limiting", "config": {"hour": 3}}),
    )
    .await;
    let bob = admin(&http, &node, "GET", "/consumers/bob", json!({})).await;
    admin(
        &http,
        &node,
        "POST",
        "/plugins",
        json!({"name": "rate-limiting", "route": {"id": admin(&http, &node, "GET", "/routes/p", json!({})).await["id"]}, "consumer": {"id": bob["id"]}, "config": {"hour": 100}}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/routes/t/plugins",
        json!({"name": "request-termination", "config": {"status_code": 418, "message": "teapot"}}),
    )
    .await;
    admin(&http, &node, "POST", "/plugins", json!({"name": "cors", "config": {"origins": ["https://app.example"], "exposed_headers": ["x-total"], "max_age": 600}})).await;

    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let r = until(&http, &node, "/p", 401).await;
    assert_eq!(r.headers()["www-authenticate"], "Key realm=\"kong\"");
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "No API key found in request"
    );
    let r = http
        .get(format!("{proxy}/p"))
        .header("apikey", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Invalid authentication credentials"
    );

    for i in 0..3 {
        let r = http
            .get(format!("{proxy}/p/x"))
            .header("apikey", "alice-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-ratelimit-limit-hour"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-hour"],
            (2 - i).to_string().as_str()
        );
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-consumer-username"], "alice");
        assert_eq!(
            seen["headers"]["x-credential-identifier"]
                .as_str()
                .map(|s| s.len()),
            Some(36)
        );
    }
    let r = http
        .get(format!("{proxy}/p/x?apikey=alice-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "API rate limit exceeded"
    );
    // Bob's own configuration on this route wins over the route's.
    for _ in 0..5 {
        let r = http
            .get(format!("{proxy}/p"))
            .header("apikey", "bob-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-hour"], "100");
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-consumer-custom-id"], "b-1");
    }

    let r = until(&http, &node, "/t", 418).await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "teapot");

    // CORS: a preflight is answered here; a simple request gets the headers on the way back.
    let r = http
        .request(reqwest::Method::OPTIONS, format!("{proxy}/t"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-max-age"], "600");
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("GET"));
    let r = http
        .get(format!("{proxy}/p"))
        .header("apikey", "bob-key")
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-total");
    let r = http
        .get(format!("{proxy}/p"))
        .header("apikey", "bob-key")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

fn curl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// TLS with the certificate chosen by SNI, HTTP/2 over TLS (ALPN) and in clear (prior knowledge).
/// curl runs blocking on one thread while the echo upstream is served on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_and_http2() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!gantry_testkit::ci(), "curl is required in CI");
        eprintln!("SKIPPED: curl not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = vec![(
        "KONG_PROXY_LISTEN".to_string(),
        "127.0.0.1:0, 127.0.0.1:0 ssl".to_string(),
    )];
    let node = Node::start(dir.path(), &env);
    let http = reqwest::Client::new();
    let up = echo().await;
    let ck = rcgen::generate_simple_self_signed(vec!["secure.example".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert = admin(
        &http,
        &node,
        "POST",
        "/certificates",
        json!({"cert": cert_pem, "key": ck.signing_key.serialize_pem()}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        &format!("/certificates/{}/snis", cert["id"].as_str().unwrap()),
        json!({"name": "secure.example"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/tls"]}),
    )
    .await;
    until(&http, &node, "/tls", 200).await;

    let tls = node.proxy_tls.clone().unwrap();
    let port = tls.rsplit(':').next().unwrap().to_string();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let resolve = format!("secure.example:{port}:127.0.0.1");
    let url = format!("https://secure.example:{port}/tls");
    // The SNI's certificate verifies against itself: it is the one presented.
    let (ok, out, err) = curl(&[
        "-s",
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    assert!(ok, "{err}");
    let (body, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "HTTP/2 over TLS by ALPN");
    let seen: Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    // Another name gets the default certificate, which that CA does not verify.
    let other = format!("other.example:{port}:127.0.0.1");
    let (ok, _, _) = curl(&[
        "-s",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &other,
        &format!("https://other.example:{port}/tls"),
    ]);
    assert!(!ok, "the default certificate must not be the SNI's");
    let (ok, _, _) = curl(&[
        "-sk",
        "--resolve",
        &other,
        &format!("https://other.example:{port}/tls"),
    ]);
    assert!(ok);
    // HTTP/2 in clear with prior knowledge, and HTTP/1.1 on the same listener.
    let plain = node.proxy.clone().unwrap();
    let (ok, out, err) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("{plain}/tls"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "2 200");
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("{plain}/tls"),
    ]);
    assert_eq!(out, "1.1 200");
}

/// Requests whose framing or Host is ambiguous are refused and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_refuses_ambiguous_requests() {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (up, hits) = gantry_testkit::upstream::counting().await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/h"]}),
    )
    .await;
    let echo_up = echo().await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "e", "url": format!("http://{echo_up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/e/routes",
        json!({"paths": ["/ok"]}),
    )
    .await;
    until(&http, &node, "/ok", 200).await;
    let proxy = node.proxy.clone().unwrap();
    let addr = proxy.trim_start_matches("http://").to_string();
    let send = |raw: Vec<u8>| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&raw).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two CLs",
            b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_vec(),
            "400",
        ),
        (
            "two Hosts",
            b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            "400",
        ),
        ("no Host", b"GET /h HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            "a coding other than chunked",
            b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            "501",
        ),
        (
            "a coding on a line of its own",
            b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "501",
        ),
        (
            "chunked twice",
            b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "400",
        ),
        (
            "bad Host",
            b"GET /h HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "huge head",
            [
                b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec(),
                vec![b'a'; 70_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "431",
        ),
    ];
    let refused_4xx = || async {
        let status = node.status.clone().unwrap();
        let m = gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await;
        m.lines()
            .find_map(|l| l.strip_prefix("gantry_http_requests_total{class=\"4xx\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = refused_4xx().await;
    let mut want_4xx = 0;
    for (name, raw, want) in cases {
        let line = send(raw);
        assert!(line.contains(want), "{name}: {line}");
        want_4xx += u64::from(want.starts_with('4'));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the upstream"
    );
    // Every refusal is counted, those of the HTTP parser (two Content-Lengths, a huge head)
    // as well as the proxy's own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused_4xx().await - before < want_4xx {
        assert!(
            Instant::now() < deadline,
            "refusals not counted: {} of {want_4xx}",
            refused_4xx().await - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And logged in the access log, as nginx logs a request it could not parse (issue 17's
    // item 11).
    let access = dir.path().join("logs/access.log");
    gantry_testkit::http::eventually(
        Duration::from_secs(5),
        "the parser's refusals are not in the access log",
        || async {
            let log = std::fs::read_to_string(&access).unwrap_or_default();
            log.contains("\"-\" 400 refused=") && log.contains("\"-\" 431 refused=")
        },
    )
    .await;

    // Content-Length with Transfer-Encoding: RFC 9112 section 6.3 lets a server process the
    // message by Transfer-Encoding alone, and then requires it to close the connection. The
    // upstream gets the chunked body re-framed, without the conflicting Content-Length.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    // Ok only when the server closed the connection (else the read times out).
    assert!(
        s.read_to_end(&mut all).is_ok(),
        "the connection stayed open"
    );
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // A chunked response: take the JSON object inside.
        serde_json::from_str(&body[body.find('{').unwrap()..=body.rfind('}').unwrap()]).unwrap()
    });
    assert_eq!(seen["body"], "hello");
    assert!(
        seen["headers"]
            .get("content-length")
            .is_none_or(|v| v != "50"),
        "{seen}"
    );
}

/// A WebSocket connection through the proxy to an echoing WebSocket upstream.
#[tokio::test]
async fn websocket_upgrade_is_proxied() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "ws", "url": format!("http://{up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/ws/routes",
        json!({"paths": ["/ws"]}),
    )
    .await;
    // A plain route written after the WebSocket one: once it answers, both are live.
    let echo_up = echo().await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "e", "url": format!("http://{echo_up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/e/routes",
        json!({"paths": ["/ok"]}),
    )
    .await;
    until(&http, &node, "/ok", 200).await;
    let url = format!(
        "{}/ws",
        node.proxy.clone().unwrap().replace("http://", "ws://")
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
}

/// A dead target is retried around and ejected (passive checks); a target that fails probes is
/// ejected and comes back when it answers again (active checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_health_checks_eject_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let alive = echo().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    admin(&http, &node, "POST", "/upstreams", json!({"name": "passive.internal", "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}})).await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/passive.internal/targets",
        json!({"target": alive}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/passive.internal/targets",
        json!({"target": dead}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "p", "host": "passive.internal"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/p/routes",
        json!({"paths": ["/passive"]}),
    )
    .await;
    until(&http, &node, "/passive", 200).await;
    let proxy = node.proxy.clone().unwrap();
    for _ in 0..20 {
        let r = http.get(format!("{proxy}/passive")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a request failed although a target was up");
        assert_eq!(r.json::<Value>().await.unwrap()["server"], json!(alive));
    }

    // Active checks: a target that drops connections goes down, then comes back.
    let flaky = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flaky_addr = flaky.local_addr().unwrap();
    flaky.set_nonblocking(true).unwrap();
    let flaky = tokio::net::TcpListener::from_std(flaky).unwrap();
    let dropper = tokio::spawn(async move {
        while let Ok((s, _)) = flaky.accept().await {
            drop(s);
        }
    });
    let good = echo().await;
    let checks = json!({"active": {"timeout": 1, "http_path": "/health", "healthy": {"interval": 0.1, "successes": 1}, "unhealthy": {"interval": 0.1, "tcp_failures": 1, "http_failures": 1}}});
    upstream_with(&http, &node, "active.internal", checks, &[&good]).await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/active.internal/targets",
        json!({"target": flaky_addr.to_string()}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "a", "host": "active.internal", "retries": 0}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/a/routes",
        json!({"paths": ["/active"]}),
    )
    .await;
    until(&http, &node, "/active", 200).await;
    // Once probed down, every request goes to the good target, with no retries needed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all_good = true;
        for _ in 0..10 {
            let r = http.get(format!("{proxy}/active")).send().await.unwrap();
            all_good &=
                r.status() == 200 && r.json::<Value>().await.unwrap()["server"] == json!(good);
        }
        if all_good {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing target was never ejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The target recovers: an echo on the same address; probes see it healthy again.
    dropper.abort();
    let _ = dropper.await;
    let back = tokio::net::TcpListener::bind(flaky_addr).await.unwrap();
    tokio::spawn(gantry_proxy::echo::serve(back));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{proxy}/active")).send().await.unwrap();
        if r.json::<Value>().await.unwrap()["server"] == json!(flaky_addr.to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recovered target never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Consistent hashing on a header: one key, one target; many keys, several targets.
#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_target() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    admin(&http, &node, "POST", "/upstreams", json!({"name": "ch.internal", "algorithm": "consistent-hashing", "hash_on": "header", "hash_on_header": "x-user"})).await;
    for _ in 0..3 {
        let t = echo().await;
        admin(
            &http,
            &node,
            "POST",
            "/upstreams/ch.internal/targets",
            json!({"target": t}),
        )
        .await;
    }
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "ch", "host": "ch.internal"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/ch/routes",
        json!({"paths": ["/ch"]}),
    )
    .await;
    until(&http, &node, "/ch", 200).await;
    let proxy = node.proxy.clone().unwrap();
    let server = |user: String| {
        let (http, proxy) = (http.clone(), proxy.clone());
        async move {
            let v: Value = http
                .get(format!("{proxy}/ch"))
                .header("x-user", user)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["server"].as_str().unwrap().to_string()
        }
    };
    let first = server("alice".into()).await;
    for _ in 0..10 {
        assert_eq!(server("alice".into()).await, first);
    }
    let mut seen = std::collections::HashSet::new();
    for i in 0..30 {
        seen.insert(server(format!("user-{i}")).await);
    }
    assert!(seen.len() > 1, "30 keys all went to one target");
}

/// https services: TLS to the upstream; its certificate is checked only with `tls_verify`.
#[tokio::test]
async fn https_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(gantry_proxy::echo::serve_tls(l));
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "tls", "url": format!("https://{up}/in")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/tls/routes",
        json!({"paths": ["/tls"]}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "strict", "url": format!("https://{up}"), "tls_verify": true, "retries": 0}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/strict/routes",
        json!({"paths": ["/strict"]}),
    )
    .await;
    let v: Value = until(&http, &node, "/tls/x", 200)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["uri"], "/in/x");
    // A self-signed upstream certificate fails verification: 502, never a silent success.
    until(&http, &node, "/strict", 502).await;
}

/// A gRPC call over HTTP/2 through the proxy to an HTTP/2 upstream, trailers included; a
/// gRPC route answers others as Kong does.
#[tokio::test]
async fn grpc_calls_keep_their_trailers() {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    // A gRPC-like upstream: HTTP/2 in clear, a body frame, then trailers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let got = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", format!("echo {path}").parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(got)),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = StreamBody::new(futures_util::stream::iter(frames));
                        let mut r = hyper::Response::new(body);
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "g", "url": format!("grpc://{up}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/g/routes",
        json!({"name": "g", "protocols": ["grpc"], "paths": ["/helloworld.Greeter"], "strip_path": false}),
    )
    .await;
    let proxy = node.proxy.clone().unwrap();
    let addr = proxy.trim_start_matches("http://").to_string();
    // Not gRPC on a gRPC route: 415, as Kong.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("{proxy}/helloworld.Greeter/SayHello"))
            .send()
            .await
            .unwrap();
        if r.status() == 415 {
            break;
        }
        assert!(Instant::now() < deadline, "route not live: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An HTTP/2 client in clear (prior knowledge), as gRPC clients are.
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{addr}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["grpc-message"],
        "echo /helloworld.Greeter/SayHello"
    );
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
}

/// A client that does not finish its request head in `nginx_http_client_header_timeout` is
/// disconnected, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let env = vec![(
        "KONG_NGINX_HTTP_CLIENT_HEADER_TIMEOUT".to_string(),
        "1s".to_string(),
    )];
    let node = Node::start(dir.path(), &env);
    let addr = node
        .proxy
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Part: ")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the connection stayed open {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// `write_timeout`: an upstream that stops reading the request body gets the request cut off
/// after the service's write timeout, and the client a 504, long before `read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_write_times_out() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // An upstream that accepts connections and never reads from them.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = stall.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stall.incoming().take(8) {
            held.push(s);
        }
    });
    let node = Node::start(dir.path(), &[]);
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "w", "url": format!("http://{up}"), "write_timeout": 300, "read_timeout": 60000}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/w/routes",
        json!({"paths": ["/w"]}),
    )
    .await;
    synced(&http, &node).await;
    let addr = node
        .proxy
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let size = 256usize << 20;
    s.write_all(
        format!("POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..(size >> 16) {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 504", "{}", String::from_utf8_lossy(&head));
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A DNS server on loopback for `*.gantry.test`: `api` answers 127.0.0.1 with a TTL of one
/// second, anything else NXDOMAIN. Returns its address and the count of A queries for `api`.
fn dns_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Bounded: the test process ends long before.
        for _ in 0..10_000 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let q = &buf[..n];
            // The question: labels from byte 12 to a zero byte, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let l = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_ascii_lowercase());
                i += 1 + l;
            }
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let name = labels.join(".");
            let known = name == "api.gantry.test";
            let a = known && qtype == 1;
            if a {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let mut r = Vec::new();
            r.extend_from_slice(&q[0..2]);
            r.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
            r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..qend]);
            if a {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    (addr, count)
}

/// A service host that is a name is resolved by DNS (`dns_resolver`), cached while its TTL
/// lasts and asked again after; a name that does not resolve gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_names_are_resolved_and_cached_for_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (dns, queries) = dns_server();
    // An upstream that closes every connection, so that each request connects anew.
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = up.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in up.incoming().take(100) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    let env = vec![("KONG_DNS_RESOLVER".to_string(), dns.to_string())];
    let node = Node::start(dir.path(), &env);
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "d", "host": "api.gantry.test", "port": port}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/d/routes",
        json!({"paths": ["/d"]}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "m", "host": "missing.gantry.test", "port": port}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/m/routes",
        json!({"paths": ["/m"]}),
    )
    .await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    for _ in 0..5 {
        assert_eq!(
            http.get(format!("{proxy}/d"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let first = queries.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(first, 1, "five requests within the TTL: one query");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        http.get(format!("{proxy}/d"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        queries.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the TTL ran out: asked again"
    );
    let r = http.get(format!("{proxy}/m")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("name resolution failed"));
    // Kong's /status/dns, on the Admin API and the status listener: per name, as Kong's new
    // DNS client counts (six lookups of the name, four from the cache, two questions asked).
    let on_admin = admin(&http, &node, "GET", "/status/dns", json!({})).await;
    let status = node.status.clone().unwrap();
    let on_status: Value = http
        .get(format!("{status}/status/dns"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for body in [&on_admin, &on_status] {
        assert_eq!(body["worker"], json!({"id": 0, "count": 1}), "{body}");
        let d = &body["stats"]["api.gantry.test|A/AAAA"];
        assert_eq!(
            (
                &d["runs"],
                &d["hit_lru"],
                &d["miss"],
                &d["query"],
                &d["query_succ"]
            ),
            (&json!(6), &json!(4), &json!(2), &json!(2), &json!(2)),
            "{body}"
        );
        assert!(d["query_last_time"].is_u64(), "{body}");
        // The name that does not exist, tried on each of the service's six tries: asked once,
        // the failure remembered for the others (Kong's error_ttl).
        let m = &body["stats"]["missing.gantry.test|A/AAAA"];
        assert_eq!(
            (
                &m["runs"],
                &m["miss"],
                &m["hit_lru"],
                &m["query"],
                &m["query_fail:name error"]
            ),
            (&json!(6), &json!(1), &json!(5), &json!(1), &json!(1)),
            "{body}"
        );
        assert!(m["query_succ"].is_null(), "{body}");
    }
}

/// The response phases: response-transformer rewrites headers and a JSON body (header and
/// body filters), cors adds its headers to a 401 another plugin answered with, and file-log
/// (log phase) writes one line per request, those answered by plugins included.
#[tokio::test]
async fn response_phases_transform_bodies_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let log = dir.path().join("requests.log");
    let post = |path: &'static str, body: Value| {
        let (http, node) = (&http, &node);
        async move { admin(http, node, "POST", path, body).await }
    };
    post(
        "/services",
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    let rt = post(
        "/services/s/routes",
        json!({"name": "rt", "paths": ["/rt"]}),
    )
    .await;
    post("/services/s/routes", json!({"name": "k", "paths": ["/k"]})).await;
    post(
        "/routes/rt/plugins",
        json!({"name": "response-transformer", "config": {
            "remove": {"json": ["client", "server"], "headers": ["via"]},
            "rename": {"json": ["path:upstream_path"]},
            "add": {"json": ["gateway:gantry", "version:2"], "json_types": ["string", "number"],
                    "headers": ["x-transformed:yes"]},
        }}),
    )
    .await;
    post("/routes/k/plugins", json!({"name": "key-auth"})).await;
    post("/services/s/routes", json!({"name": "h", "paths": ["/h"]})).await;
    post(
        "/routes/h/plugins",
        json!({"name": "key-auth", "config": {"hide_credentials": true}}),
    )
    .await;
    post("/consumers", json!({"username": "carol"})).await;
    post("/consumers/carol/key-auth", json!({"key": "carol-key"})).await;
    post("/routes/k/plugins", json!({"name": "cors"})).await;
    post(
        "/plugins",
        json!({"name": "file-log", "config": {"path": log.to_str().unwrap()}}),
    )
    .await;
    // A bad pair is refused when written, naming the field.
    let r = http
        .post(format!("{}/routes/rt/plugins", node.admin))
        .json(&json!({"name": "response-transformer", "config": {"add": {"headers": ["novalue"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("add.headers") && body.contains("novalue"),
        "{body}"
    );
    // So is a header name HTTP does not allow (it would fail only when applied).
    let r = http
        .post(format!("{}/routes/rt/plugins", node.admin))
        .json(&json!({"name": "response-transformer", "config": {"add": {"headers": ["x a:b"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("invalid header name"), "{body}");
    synced(&http, &node).await;

    let r = until(&http, &node, "/rt/x", 200).await;
    assert_eq!(r.headers()["x-transformed"], "yes");
    assert!(r.headers().get("via").is_none());
    let id = r.headers()["x-kong-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["upstream_path"], "/x");
    assert_eq!(got["gateway"], "gantry");
    assert_eq!(got["version"], 2);
    assert!(
        got.get("client").is_none() && got.get("path").is_none(),
        "{got}"
    );

    let r = http
        .get(format!("{}/k", node.proxy.as_ref().unwrap()))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let denied = r.headers()["x-kong-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    // hide_credentials: a key in the query string does not reach the upstream.
    let r = until(&http, &node, "/h/q?apikey=carol-key&keep=1", 200).await;
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["uri"], "/q?keep=1", "{got}");

    // No route: the global plugins still run the log phase.
    let r = http
        .get(format!("{}/nowhere", node.proxy.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let missing = r.headers()["x-kong-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    // Both requests are in the file, with what the proxy knew of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has = |id: &str| lines.iter().any(|l| l["request"]["id"] == id);
        if has(&id) && has(&denied) && has(&missing) {
            break lines;
        }
        assert!(Instant::now() < deadline, "file-log lines missing: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = |id: &str| lines.iter().find(|l| l["request"]["id"] == id).unwrap();
    let ok = line(&id);
    assert_eq!(ok["request"]["uri"], "/rt/x");
    assert_eq!(ok["response"]["status"], 200);
    assert_eq!(ok["route"]["id"], rt["id"]);
    assert_eq!(ok["source"], "upstream");
    assert_eq!(ok["upstream_uri"], "/x");
    assert!(ok["request"]["headers"]["host"].is_string(), "{ok}");
    assert_eq!(ok["response"]["headers"]["x-transformed"], "yes");
    assert!(ok["response"]["size"].as_u64().unwrap() > 0, "{ok}");
    assert_eq!(line(&denied)["response"]["status"], 401);
    assert_eq!(line(&denied)["source"], "kong");
    assert_eq!(line(&missing)["response"]["status"], 404);
    assert_eq!(line(&missing)["route"], Value::Null);
}

/// The log phase runs once the body has been sent: a body that comes 300 ms after its head
/// is in the request latency, not in the upstream's (time to the response head).
#[tokio::test]
async fn the_log_phase_waits_for_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let slow_addr = gantry_testkit::upstream::raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        Duration::from_millis(300),
        b"hello",
    )
    .await;
    let log = dir.path().join("slow.log");
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "slow", "url": format!("http://{slow_addr}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/slow/routes",
        json!({"paths": ["/slow"]}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/plugins",
        json!({"name": "file-log", "config": {"path": log.to_str().unwrap(), "reuse": true}}),
    )
    .await;
    synced(&http, &node).await;
    let r = until(&http, &node, "/slow", 200).await;
    assert_eq!(r.text().await.unwrap(), "hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line: Value = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["response"]["status"] == 200);
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no file-log line for the 200: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (request, proxy) = (
        line["latencies"]["request"].as_u64().unwrap(),
        line["latencies"]["proxy"].as_i64().unwrap(),
    );
    assert!(request >= 300, "{line}");
    assert!(proxy < 300, "{line}");
}

/// `headers` and `headers_upstream` choose the headers the proxy adds, as Kong's; an unknown
/// value stops the node, naming it.
#[tokio::test]
async fn headers_settings_choose_what_is_added() {
    let http = reqwest::Client::new();
    let up = echo().await;
    let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let env = set(&[("KONG_HEADERS", "off"), ("KONG_HEADERS_UPSTREAM", "off")]);
    let node = Node::start(dir.path(), &env);
    service_and_route(&http, &node, &up, "/a").await;
    let r = until(&http, &node, "/a", 200).await;
    for h in [
        "via",
        "x-kong-request-id",
        "x-kong-proxy-latency",
        "x-kong-upstream-latency",
    ] {
        assert!(!r.headers().contains_key(h), "{h}: {:?}", r.headers());
    }
    let got: Value = r.json().await.unwrap();
    assert!(got["headers"].get("x-kong-request-id").is_none(), "{got}");
    let r = http
        .get(format!("{}/none", node.proxy.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for h in ["server", "x-kong-request-id", "x-kong-response-latency"] {
        assert!(!r.headers().contains_key(h), "{h}: {:?}", r.headers());
    }

    let dir = tempfile::tempdir().unwrap();
    let env = set(&[(
        "KONG_HEADERS",
        "X-Kong-Upstream-Status, Server, latency_tokens",
    )]);
    let node = Node::start(dir.path(), &env);
    service_and_route(&http, &node, &up, "/a").await;
    let r = until(&http, &node, "/a", 200).await;
    assert_eq!(r.headers()["x-kong-upstream-status"], "200");
    assert!(r.headers().contains_key("x-kong-upstream-latency"));
    assert!(!r.headers().contains_key("via") && !r.headers().contains_key("x-kong-request-id"));
    let got: Value = r.json().await.unwrap();
    assert!(
        got["headers"].get("x-kong-request-id").is_some(),
        "the default upstream"
    );
    let r = http
        .get(format!("{}/none", node.proxy.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["server"]
        .to_str()
        .unwrap()
        .starts_with("gantry/"));
    assert!(r.headers().contains_key("x-kong-response-latency"));

    let err = failed_start(&[("KONG_HEADERS", "server_tokens, X-Bogus")]);
    assert!(err.contains("headers") && err.contains("x-bogus"), "{err}");
    let err = failed_start(&[("KONG_TRUSTED_IPS", "10.0.0.0/8, lb.internal")]);
    assert!(
        err.contains("trusted_ips") && err.contains("lb.internal"),
        "{err}"
    );
}

/// trusted_ips: a trusted peer's client address (real_ip_header) and X-Forwarded-* reach the
/// upstream; the same headers from an untrusted peer are replaced.
#[tokio::test]
async fn trusted_proxies_forward_the_client() {
    let http = reqwest::Client::new();
    let up = echo().await;
    let start = |trusted: &str| {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("KONG_TRUSTED_IPS".to_string(), trusted.to_string()),
            (
                "KONG_REAL_IP_HEADER".to_string(),
                "X-Forwarded-For".to_string(),
            ),
            ("KONG_REAL_IP_RECURSIVE".to_string(), "on".to_string()),
        ];
        let node = Node::start(dir.path(), &env);
        (dir, node)
    };
    let send = |node: &Node| {
        let url = format!("{}/a", node.proxy.as_ref().unwrap());
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .header("x-forwarded-for", "203.0.113.7, 127.0.0.2")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "shop.example")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["headers"].clone()
        }
    };
    for (trusted, want_ip, want_proto, want_host) in [
        ("127.0.0.0/8", "203.0.113.7", "https", "shop.example"),
        ("10.0.0.0/8", "127.0.0.1", "http", "127.0.0.1"),
    ] {
        let (_dir, node) = start(trusted);
        service_and_route(&http, &node, &up, "/a").await;
        until(&http, &node, "/a", 200).await;
        let h = send(&node).await;
        assert_eq!(h["x-real-ip"], want_ip, "trusted {trusted}: {h}");
        assert_eq!(h["x-forwarded-proto"], want_proto, "trusted {trusted}: {h}");
        assert_eq!(h["x-forwarded-host"], want_host, "trusted {trusted}: {h}");
        assert_eq!(
            h["x-forwarded-for"], "203.0.113.7, 127.0.0.2, 127.0.0.1",
            "the connecting peer appended, as Kong: {h}"
        );
        // An https-only route: a trusted proxy that ended TLS says so in X-Forwarded-Proto.
        let route = json!({"paths": ["/secure"], "protocols": ["https"]});
        admin(&http, &node, "POST", "/services/s/routes", route).await;
        let url = format!("{}/secure", node.proxy.as_ref().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let r = http
                .get(&url)
                .header("x-forwarded-proto", "https")
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            if s != 404 || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let want = if want_proto == "https" { 200 } else { 426 };
        assert_eq!(status, want, "trusted {trusted}");
    }
}

/// upstream_keepalive_*: a connection carries at most `max_requests`, and one kept past
/// `idle_timeout` is not reused (the echo upstream names the connection a request came on).
#[tokio::test]
async fn upstream_keepalive_settings_bound_connections() {
    let http = reqwest::Client::new();
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS".to_string(),
            "2".to_string(),
        ),
        (
            "KONG_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT".to_string(),
            "1".to_string(),
        ),
    ];
    let node = Node::start(dir.path(), &env);
    service_and_route(&http, &node, &up, "/a").await;
    until(&http, &node, "/a", 200).await;
    // Whatever the warm-up left, start on a fresh connection: wait out the idle timeout.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let got: Value = until(&http, &node, "/a", 200).await.json().await.unwrap();
        seen.push(got["client"].as_str().unwrap().to_string());
    }
    // Connections are reused, two requests each at most (a connection not yet ready again
    // when the next request comes only means one more connection).
    let mut uses = std::collections::HashMap::new();
    for c in &seen {
        *uses.entry(c).or_insert(0) += 1;
    }
    assert!(uses.values().all(|n| *n <= 2), "{seen:?}");
    assert!(
        uses.values().any(|n| *n == 2),
        "no connection was reused: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got: Value = until(&http, &node, "/a", 200).await.json().await.unwrap();
    let after = got["client"].as_str().unwrap().to_string();
    assert!(
        !seen.contains(&after),
        "an idle connection past the timeout is not reused: {after} in {seen:?}"
    );
}

/// An upstream that closes each connection right after answering, without saying so (no
/// `Connection: close`): requests that meet a kept connection it has just closed are sent
/// again on a new one, never answered 502.
#[tokio::test]
async fn connections_the_upstream_closed_are_replaced() {
    let http = reqwest::Client::new();
    // Closed at once: the proxy may already have the connection back in its pool.
    let addr = gantry_testkit::upstream::raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Duration::ZERO,
        b"",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let service = json!({"name": "s", "url": format!("http://{addr}"), "retries": 0});
    admin(&http, &node, "POST", "/services", service).await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/a"]}),
    )
    .await;
    until(&http, &node, "/a", 200).await;
    let url = format!("{}/a", node.proxy.as_ref().unwrap());
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let s = http.get(&url).send().await.unwrap().status().as_u16();
        *statuses.entry(s).or_insert(0) += 1;
    }
    // Without the resend about 8 in 200 failed. A request already written when the close
    // arrives is lost for real (as with nginx); that window is far narrower: one at most.
    assert!(
        statuses.get(&502).copied().unwrap_or(0) <= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
}

/// `gantry start` with these settings must fail; its standard error.
fn failed_start(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    failed_start_in(dir.path(), env)
}

/// `gantry start -p PREFIX` with these settings must fail; its standard error.
fn failed_start_in(prefix: &std::path::Path, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["start", "-p"])
        .arg(prefix)
        .envs(env.iter().copied())
        .env("KONG_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KONG_PROXY_LISTEN", "127.0.0.1:0")
        .env("KONG_STATUS_LISTEN", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started: {err}");
    err
}

/// An upstream closes a kept connection as a request arrives on it (its keep-alive timeout
/// racing ours): a bodiless GET on a connection kept a second or more is sent again on a new
/// connection; a POST with a body is not (it may have been acted on), and gets 502.
#[tokio::test]
async fn idempotent_requests_survive_an_upstream_closing_kept_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http = reqwest::Client::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Each connection: the first request is answered, the second is read and not answered.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                for answered in [true, false] {
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    if answered {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    service_and_route(&http, &node, &addr.to_string(), "/a").await;
    until(&http, &node, "/a", 200).await;
    let url = format!("{}/a", node.proxy.as_ref().unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the GET was sent again on a new connection"
    );
    assert_eq!(r.text().await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http.post(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 502, "a request with a body is never sent twice");
}

/// `gantry` with these settings and arguments: whether it succeeded, and its standard error.
fn gantry(env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fail closed: a node never proxies a route whose configuration names a plugin it does not
/// run. A declarative file with one is refused by `config parse` and `db_import`; a store
/// written while the plugin was enabled does not start a node that no longer enables it; a
/// node that runs it guards the route.
#[tokio::test]
async fn a_node_never_runs_a_route_with_a_plugin_it_does_not_enable() {
    let err = failed_start(&[("KONG_PLUGINS", "key-auth, nope")]);
    assert!(
        err.contains("'plugins'") && err.contains("plugin 'nope' is not bundled"),
        "{err}"
    );
    let err = failed_start(&[("KONG_PLUGINS", "off, cors")]);
    assert!(err.contains("'plugins'") && err.contains("'off'"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let file = |plugin: &str| {
        let path = dir.path().join(format!("{plugin}.yml"));
        let text = format!(
            "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://{upstream}\n  routes:\n  - name: guarded\n    paths: [/guarded]\n    plugins:\n    - name: {plugin}\nconsumers:\n- username: alice\n  keyauth_credentials: [{{ key: alice-key }}]\n"
        );
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    for plugin in ["zipkin", "aws-lambda"] {
        let f = file(plugin);
        let (ok, err) = gantry(&[], &["config", "parse", &f]);
        assert!(!ok && err.contains(&not_enabled(plugin)), "{plugin}: {err}");
        assert!(
            err.contains("services[0].routes[0].plugins[0].name"),
            "{err}"
        );
    }
    // What a node does not enable, by its `plugins` setting (-c or the environment).
    let key_auth = file("key-auth");
    let (ok, err) = gantry(&[("KONG_PLUGINS", "cors")], &["config", "parse", &key_auth]);
    assert!(!ok && err.contains(&not_enabled("key-auth")), "{err}");
    let (ok, err) = gantry(
        &[("KONG_PLUGINS", "key-auth, cors")],
        &["config", "parse", &key_auth],
    );
    assert!(ok, "{err}");

    // A store written while key-auth was enabled.
    let prefix = dir.path().join("node");
    let p = prefix.to_str().unwrap();
    let (ok, err) = gantry(
        &[("KONG_PLUGINS", "cors")],
        &["config", "db_import", &key_auth, "-p", p],
    );
    assert!(!ok && err.contains(&not_enabled("key-auth")), "{err}");
    let (ok, err) = gantry(&[], &["config", "db_import", &key_auth, "-p", p]);
    assert!(ok, "{err}");
    // Started without key-auth, the node does not run the stored configuration: nothing
    // serves the route unauthenticated, the proxy is not ready, and the log names why. Its
    // Admin API is up to repair it.
    let http = reqwest::Client::new();
    {
        let node = Node::start(&prefix, &[("KONG_PLUGINS".into(), "cors, file-log".into())]);
        let err = node.wait_log(
            "the stored configuration does not load",
            Duration::from_secs(5),
        );
        assert!(err.contains(&not_enabled("key-auth")), "{err}");
        let proxy = node.proxy.clone().unwrap();
        let r = http.get(format!("{proxy}/guarded")).send().await.unwrap();
        assert_eq!(r.status(), 404, "no part of the configuration is served");
        let status = node.status.clone().unwrap();
        let r = http
            .get(format!("{status}/status/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let plugins = admin(&http, &node, "GET", "/plugins", json!({})).await;
        assert_eq!(plugins["data"][0]["name"], "key-auth");
    }
    // With key-auth enabled, the route is guarded.
    let node = Node::start(&prefix, &[("KONG_PLUGINS".into(), "key-auth".into())]);
    let proxy = node.proxy.clone().unwrap();
    let get = |key: Option<&'static str>| {
        let mut r = http.get(format!("{proxy}/guarded"));
        if let Some(k) = key {
            r = r.header("apikey", k);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(get(Some("alice-key")).await.unwrap().status(), 200);
    // And the Admin API of that node refuses what it does not run.
    let (s, b) = {
        let r = http
            .post(format!("{}/plugins", node.admin))
            .json(&json!({"name": "cors"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["fields"]["name"], not_enabled("cors"));
}

/// An absolute-form request routes by its target's authority, not by Host (RFC 9112 section
/// 3.2.2), and the upstream sees that authority as Host (issue 17's item 8).
#[tokio::test]
async fn an_absolute_form_target_wins_over_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "e", "url": format!("http://{up}")}),
    )
    .await;
    for (name, host) in [("secret", "secret.example"), ("open", "open.example")] {
        admin(
            &http,
            &node,
            "POST",
            "/services/e/routes",
            json!({"name": name, "hosts": [host], "preserve_host": true}),
        )
        .await;
    }
    synced(&http, &node).await;
    let addr = node
        .proxy
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    // Async: the echo upstream runs on this test's runtime.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"GET http://secret.example/x HTTP/1.1\r\nHost: open.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // Read until the whole JSON body has come.
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let body: Value = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all);
        if let Some(at) = text.find("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            if let Ok(v) = serde_json::from_str(&text[at + 4..]) {
                break v;
            }
        }
    };
    assert_eq!(body["headers"]["host"], "secret.example", "{body}");
}

/// A client cannot take an upstream down: bodies it aborts or frames badly are its own fault
/// (400 where it is still there to hear it), and never count as the target's failures, however
/// many (issue 17's item 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_broken_body_is_not_the_upstreams_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let checks =
        json!({"passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1, "http_failures": 1}}});
    admin(
        &http,
        &node,
        "POST",
        "/upstreams",
        json!({"name": "one.internal", "healthchecks": checks}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/one.internal/targets",
        json!({"target": up}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "one", "host": "one.internal"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/one/routes",
        json!({"paths": ["/b"]}),
    )
    .await;
    until(&http, &node, "/b", 200).await;
    let addr = node
        .proxy
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let head = "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for _ in 0..3 {
        // Aborted mid-body.
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("{head}a\r\nhel").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        // A chunk size that is not one.
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("{head}5\r\nhello\r\nzz\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
    // The only target is still up.
    for _ in 0..3 {
        let r = http
            .get(format!("{}/b", node.proxy.as_ref().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Only WebSocket upgrades are tunnelled, as Kong: `Upgrade: h2c` (or any other token) goes
/// upstream as an ordinary request without its Upgrade, so no tunnel can carry requests past
/// the routes and plugins they would meet (issue 17's item 4).
#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    // An upstream willing to switch to whatever it is asked for.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Request after request on the connection (the proxy keeps it alive).
                let mut buf = [0u8; 1024];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let asked = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if asked.contains("\r\nupgrade:") {
                        let _ = s
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    service_and_route(&http, &node, &up, "/u").await;
    until(&http, &node, "/u", 200).await;
    let addr = node
        .proxy
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("plain"), "{text}");
}

/// correlation-id: an id generated per request (`uuid#counter`: this process's UUID and a
/// counter; `uuid`; `tracker`: Kong's `server_addr-server_port-pid-connection-
/// connection_requests-time`), sent upstream, echoed downstream when asked; a client's own id
/// is kept.
#[tokio::test]
async fn correlation_id_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    for (route, config) in [
        ("counter", json!({"echo_downstream": true})),
        (
            "uuid",
            json!({"generator": "uuid", "header_name": "X-Trace"}),
        ),
        ("tracker", json!({"generator": "tracker"})),
    ] {
        let plugin = json!({"name": "correlation-id", "config": config});
        let p = gantry_testkit::process::route_with(&http, &node, route, &[plugin]).await;
        assert!(p[0]["config"]["header_name"].is_string(), "{}", p[0]);
    }
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();

    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = http.get(format!("{proxy}/counter")).send().await.unwrap();
        let echoed = r.headers()["kong-request-id"].to_str().unwrap().to_string();
        let got: Value = r.json().await.unwrap();
        let sent = got["headers"]["kong-request-id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(sent, echoed);
        let (id, n) = sent.split_once('#').unwrap();
        assert_eq!(id.len(), 36, "{sent}");
        seen.push((id.to_string(), n.parse::<u64>().unwrap()));
    }
    assert_eq!(seen[0].0, seen[1].0, "one UUID per process");
    assert!(seen[1].1 > seen[0].1, "{seen:?}");
    // A client's own id is kept.
    let r = http
        .get(format!("{proxy}/counter"))
        .header("kong-request-id", "mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["kong-request-id"], "mine");
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["headers"]["kong-request-id"], "mine");
    // uuid, in another header, not echoed.
    let r = http.get(format!("{proxy}/uuid")).send().await.unwrap();
    assert!(r.headers().get("x-trace").is_none());
    let got: Value = r.json().await.unwrap();
    let id = got["headers"]["x-trace"].as_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert!(!id.contains('#'));
    // tracker: two requests on one kept-alive connection have its serial number and count
    // one after the other.
    let one = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let got: Value = one
            .get(format!("{proxy}/tracker"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(
            got["headers"]["kong-request-id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let port = proxy.rsplit(':').next().unwrap().to_string();
    let pid = node.child.id().to_string();
    let parts: Vec<Vec<&str>> = ids.iter().map(|i| i.split('-').collect()).collect();
    for p in &parts {
        assert_eq!(p.len(), 6, "{ids:?}");
        assert_eq!(
            (p[0], p[1], p[2]),
            ("127.0.0.1", port.as_str(), pid.as_str()),
            "{ids:?}"
        );
        let (secs, millis) = p[5].split_once('.').unwrap();
        assert!(secs.parse::<u64>().is_ok() && millis.len() == 3, "{ids:?}");
    }
    assert_eq!(parts[0][3], parts[1][3], "one connection: {ids:?}");
    let n = |p: &[&str]| p[4].parse::<u64>().unwrap();
    assert_eq!(n(&parts[1]), n(&parts[0]) + 1, "{ids:?}");
}

/// An upstream `name` with these `healthchecks` and `targets`, through the Admin API.
async fn upstream_with(
    http: &reqwest::Client,
    node: &Node,
    name: &str,
    checks: Value,
    targets: &[&str],
) {
    let upstream = json!({"name": name, "healthchecks": checks});
    admin(http, node, "POST", "/upstreams", upstream).await;
    for t in targets {
        let path = format!("/upstreams/{name}/targets");
        admin(http, node, "POST", &path, json!({"target": t})).await;
    }
}

/// Kong's `/timers` (the node's background timers: an upstream's active health checks, the
/// database check, the ttl sweep, each with its runs and times) and `/cache` (Gantry keeps no
/// entity cache: nothing is found, a purge has nothing to do), as Kong answers them.
#[tokio::test]
async fn timers_and_cache_endpoints_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    let checks = json!({"active": {"timeout": 1, "http_path": "/", "healthy": {"interval": 0.1, "successes": 1}, "unhealthy": {"interval": 0.1, "tcp_failures": 1}}});
    upstream_with(&http, &node, "probed", checks, &[&up]).await;
    synced(&http, &node).await;
    let runs = |t: &Value| {
        t["stats"]["timers"]["healthcheck:probed"]["stats"]["runs"]
            .as_u64()
            .unwrap_or(0)
    };
    let first = admin(&http, &node, "GET", "/timers", json!({})).await;
    assert_eq!(first["worker"], json!({"id": 0, "count": 1}), "{first}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = admin(&http, &node, "GET", "/timers", json!({})).await;
        if runs(&t) >= 3 {
            let h = &t["stats"]["timers"]["healthcheck:probed"];
            assert_eq!(h["name"], "healthcheck:probed");
            assert!(h["is_running"].is_boolean(), "{h}");
            assert!(h["stats"]["finish"].as_u64().unwrap() >= 2, "{h}");
            let e = &h["stats"]["elapsed_time"];
            assert!(
                e["max"].as_f64().unwrap() >= e["min"].as_f64().unwrap(),
                "{h}"
            );
            for name in ["datastore:reachable", "ttl:sweep"] {
                assert!(t["stats"]["timers"][name].is_object(), "{name}: {t}");
            }
            let sys = &t["stats"]["sys"];
            assert!(sys["total"].as_u64().unwrap() >= 3, "{sys}");
            assert!(sys["runs"].as_u64().unwrap() >= runs(&t), "{sys}");
            for k in ["running", "pending", "waiting"] {
                assert!(sys[k].is_u64(), "{k}: {sys}");
            }
            for k in ["running", "pending", "elapsed_time"] {
                assert!(t["stats"]["flamegraph"][k].is_string(), "{k}: {t}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the health checks never ran: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // /cache: Kong's answers, with nothing cached.
    let r = http
        .get(format!("{}/cache/keyauth_credentials:k", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Not found"})
    );
    for path in ["/cache/keyauth_credentials:k", "/cache"] {
        let r = http
            .delete(format!("{}{path}", node.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
    }
    let r = http
        .request(reqwest::Method::OPTIONS, format!("{}/cache", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["allow"], "DELETE, OPTIONS");
    let r = http
        .post(format!("{}/cache", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

/// Kong's upstream health endpoints: each target's health (`HEALTHY`, `UNHEALTHY`,
/// `HEALTHCHECKS_OFF`) with its address, the balancer's, every target, and a target marked
/// unhealthy by hand taking no traffic until marked healthy again.
#[tokio::test]
async fn target_health_endpoints_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (a, b) = (echo().await, echo().await);
    let checks = json!({"passive": {"unhealthy": {"tcp_failures": 3}}});
    admin(
        &http,
        &node,
        "POST",
        "/upstreams",
        json!({"name": "u", "healthchecks": checks}),
    )
    .await;
    admin(&http, &node, "POST", "/upstreams", json!({"name": "plain"})).await;
    for t in [&a, &b] {
        admin(
            &http,
            &node,
            "POST",
            "/upstreams/u/targets",
            json!({"target": t}),
        )
        .await;
    }
    admin(
        &http,
        &node,
        "POST",
        "/upstreams/plain/targets",
        json!({"target": a}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "s", "host": "u"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"paths": ["/h"]}),
    )
    .await;
    until(&http, &node, "/h", 200).await;
    let get = |path: String| {
        let http = &http;
        let url = format!("{}{path}", node.admin);
        async move {
            let r = http.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let post = |path: String| {
        let http = &http;
        let url = format!("{}{path}", node.admin);
        async move { http.post(url).send().await.unwrap().status().as_u16() }
    };
    let health_of = |body: &Value, target: &str| -> Value {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .map(|t| t["health"].clone())
            .unwrap_or(Value::Null)
    };
    let (s, h) = get("/upstreams/u/health".into()).await;
    assert_eq!(s, 200);
    assert!(h["node_id"].is_string(), "{h}");
    assert_eq!(health_of(&h, &a), "HEALTHY", "{h}");
    let t = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == a.as_str())
        .unwrap();
    let (ip, port) = a.rsplit_once(':').unwrap();
    assert_eq!(
        t["data"]["addresses"][0],
        json!({"ip": ip, "port": port.parse::<u16>().unwrap(), "health": "HEALTHY", "weight": 100})
    );
    let (_, h) = get("/upstreams/plain/health".into()).await;
    assert_eq!(health_of(&h, &a), "HEALTHCHECKS_OFF", "{h}");
    let (_, h) = get("/upstreams/u/health?balancer_health=1".into()).await;
    assert_eq!(h["data"]["health"], "HEALTHY", "{h}");
    let (_, all) = get("/upstreams/u/targets/all".into()).await;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2), "{all}");

    // Marked unhealthy by hand: no traffic, until marked healthy.
    assert_eq!(
        post(format!("/upstreams/u/targets/{a}/unhealthy")).await,
        204
    );
    let (_, h) = get("/upstreams/u/health".into()).await;
    assert_eq!(health_of(&h, &a), "UNHEALTHY", "{h}");
    let proxy = node.proxy.clone().unwrap();
    for _ in 0..6 {
        let seen: Value = http
            .get(format!("{proxy}/h"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["server"], b.as_str(), "{seen}");
    }
    let (_, h) = get("/upstreams/u/health?balancer_health=1".into()).await;
    assert_eq!(
        h["data"]["health"], "HEALTHY",
        "one target of two is up: {h}"
    );
    assert_eq!(
        post(format!("/upstreams/u/targets/{a}/{a}/healthy")).await,
        204
    );
    let (_, h) = get("/upstreams/u/health".into()).await;
    assert_eq!(health_of(&h, &a), "HEALTHY", "{h}");
    // What is not there.
    assert_eq!(
        post("/upstreams/u/targets/10.9.9.9:1/healthy".into()).await,
        404
    );
    assert_eq!(get("/upstreams/nope/health".into()).await.0, 404);
    let r = http
        .get(format!("{}/upstreams/u/targets/{a}/healthy", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

/// The PROXY protocol on `proxy_listen`: v1 from curl (`--haproxy-protocol`) and v1 and v2
/// written by hand name the client, which `real_ip_header = proxy_protocol` makes the
/// client address for a trusted load balancer; a connection without a header is closed.
#[tokio::test]
async fn proxy_protocol_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let env = gantry_testkit::process::env(&[
        ("KONG_PROXY_LISTEN", "127.0.0.1:0 proxy_protocol"),
        ("KONG_TRUSTED_IPS", "127.0.0.1"),
        ("KONG_REAL_IP_HEADER", "proxy_protocol"),
    ]);
    let node = Node::start(dir.path(), &env);
    let http = reqwest::Client::new();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/pp").await;
    let deny = json!({"name": "ip-restriction", "config": {"deny": ["198.51.100.0/24"]}});
    admin(&http, &node, "POST", "/routes/r/plugins", deny).await;
    synced(&http, &node).await;
    let addr = node.proxy.clone().unwrap();
    let addr = addr.trim_start_matches("http://").to_string();
    let request = "GET /pp HTTP/1.1\r\nHost: pp.example\r\nConnection: close\r\n\r\n";
    let seen = |out: &str| -> Value {
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(body).unwrap_or(Value::Null)
    };
    let v1 = format!("PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n{request}");
    let out = exchange(&addr, v1.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = seen(&out);
    assert_eq!(got["headers"]["x-real-ip"], "192.0.2.7", "{got}");
    assert_eq!(got["headers"]["x-forwarded-for"], "192.0.2.7", "{got}");
    // v2, PROXY over TCP/IPv4.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1]);
    v2.extend_from_slice(&40000u16.to_be_bytes());
    v2.extend_from_slice(&80u16.to_be_bytes());
    v2.extend_from_slice(request.as_bytes());
    let out = exchange(&addr, &v2).await;
    assert_eq!(seen(&out)["headers"]["x-real-ip"], "203.0.113.9", "{out}");
    // The named client is the one ip-restriction judges.
    let denied = format!("PROXY TCP4 198.51.100.4 127.0.0.1 5555 80\r\n{request}");
    let out = exchange(&addr, denied.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // Without a header: closed, nothing answered.
    assert_eq!(exchange(&addr, request.as_bytes()).await, "");
    // curl's own v1 header: the real connection's address.
    // curl blocks: off this runtime, which runs the upstream too.
    let url = format!("http://{addr}/pp");
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || curl(&["-s", "--haproxy-protocol", &url]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["headers"]["x-real-ip"], "127.0.0.1", "{got}");
}

/// Vault references (Kong's `env` vault, and a vault entity with its own prefix): read by the
/// node that runs the configuration, never written out; one that cannot be read fails the
/// configuration, and the running one stays.
#[tokio::test]
async fn vault_references_are_read_where_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let env = gantry_testkit::process::env(&[
        ("GANTRY_TEST_MSG", "from the vault"),
        ("APP_GREETING", "hello"),
        ("GANTRY_TEST_JSON", r#"{"who": "a member"}"#),
    ]);
    let node = Node::start(dir.path(), &env);
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
    let v = admin(
        &http,
        &node,
        "POST",
        "/vaults",
        json!({"prefix": "my-env", "name": "env", "config": {"prefix": "APP_"}}),
    )
    .await;
    assert_eq!(v["prefix"], "my-env");
    for (bad, field, message) in [
        (
            json!({"prefix": "env", "name": "env"}),
            "prefix",
            "must not be one of: env",
        ),
        (
            json!({"prefix": "aws-1", "name": "aws"}),
            "name",
            "vault 'aws' is not installed",
        ),
        (
            json!({"prefix": "Bad_Prefix", "name": "env"}),
            "prefix",
            "invalid value: Bad_Prefix",
        ),
    ] {
        let r = http
            .post(format!("{}/vaults", node.admin))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["fields"][field], message, "{b}");
    }
    let mut ids = Vec::new();
    for (path, message) in [
        ("/v1", "{vault://env/gantry-test-msg}"),
        ("/v2", "{vault://my-env/greeting}"),
        ("/v3", "{vault://env/gantry-test-json/who}"),
    ] {
        let route = json!({"name": &path[1..], "paths": [path]});
        admin(&http, &node, "POST", "/services/s/routes", route).await;
        let p = json!({"name": "request-termination", "config": {"status_code": 200, "message": message}});
        let p = admin(
            &http,
            &node,
            "POST",
            &format!("/routes/{}/plugins", &path[1..]),
            p,
        )
        .await;
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let said = |path: &'static str| {
        let (http, proxy) = (&http, &proxy);
        async move {
            let r = http.get(format!("{proxy}{path}")).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(said("/v1").await.1["message"], "from the vault");
    assert_eq!(said("/v2").await.1["message"], "hello");
    assert_eq!(said("/v3").await.1["message"], "a member");
    // The configuration keeps the reference.
    let p = admin(
        &http,
        &node,
        "GET",
        &format!("/plugins/{}", ids[0]),
        json!(null),
    )
    .await;
    assert_eq!(p["config"]["message"], "{vault://env/gantry-test-msg}");
    // A reference that cannot be read: the configuration is refused, the running one stays.
    admin(
        &http,
        &node,
        "POST",
        "/services/s/routes",
        json!({"name": "v4", "paths": ["/v4"]}),
    )
    .await;
    synced(&http, &node).await;
    let (s, _) = said("/v4").await;
    assert_eq!(s, 200, "proxied to the echo upstream");
    let bad = json!({"name": "request-termination", "config": {"status_code": 503, "message": "{vault://env/gantry-not-set-anywhere}"}});
    admin(&http, &node, "POST", "/routes/v4/plugins", bad).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (s, b) = said("/v4").await;
    assert_eq!(s, 200, "{b}");
    assert!(b["headers"].is_object(), "still the upstream's answer: {b}");
    assert_eq!(said("/v1").await.1["message"], "from the vault");
}

/// One client connection through both HTTP/1.1 layers (issue 18): pipelined bodiless requests
/// answered in order by the proxy's own layer, then a request with a body, which hands the
/// connection to hyper with what was read, then more requests on it; the connection is kept
/// throughout, and closed after the request that asks it.
#[tokio::test]
async fn one_connection_passes_from_the_proxys_http1_layer_to_hypers() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/e").await;
    synced(&http, &node).await;
    let addr = node.proxy.clone().unwrap();
    let s = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    // One response: its status line, headers (lower-cased names) and body.
    async fn response(
        r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> (String, Vec<(String, String)>, Value) {
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a content-length");
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.unwrap();
        (
            status.trim_end().to_string(),
            headers,
            serde_json::from_slice(&body).unwrap(),
        )
    }
    // Two requests in one write: both answered, in order.
    w.write_all(b"GET /e/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /e/2?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for path in ["/1", "/2?q=1"] {
        let (status, headers, body) = response(&mut r).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body["uri"], path, "{body}");
        assert!(headers.iter().any(|(n, _)| n == "date"), "{headers:?}");
        assert!(
            !headers.iter().any(|(n, _)| n == "connection"),
            "{headers:?}"
        );
    }
    // A body: hyper's from here on, with the bytes already read (the body's first part came
    // in the same write as the head).
    w.write_all(b"POST /e/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    w.write_all(b" world").await.unwrap();
    let (status, _, body) = response(&mut r).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        (body["method"].as_str(), body["body"].as_str()),
        (Some("POST"), Some("hello world")),
        "{body}"
    );
    w.write_all(b"GET /e/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = response(&mut r).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["path"], "/4", "{body}");
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "connection" && v == "close"),
        "{headers:?}"
    );
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // HTTP/1.0 without keep-alive: answered in HTTP/1.0 and closed.
    let got = exchange(
        addr.trim_start_matches("http://"),
        b"GET /e/5 HTTP/1.0\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
}

/// A client that leaves while its request is with the upstream cancels it: the upstream
/// connection is closed at once, not kept until the read timeout (60 s), as hyper's server
/// did before the proxy's own HTTP/1.1 layer (issue 18).
#[tokio::test]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    // An upstream that reads the request and never answers, then reports when the proxy
    // closes the connection.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap().to_string();
    let (seen, mut closed) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = seen.send("closed");
                            return;
                        }
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = seen.send("request");
                            }
                        }
                    }
                }
            });
        }
    });
    service_and_route(&http, &node, &slow_addr, "/slow").await;
    synced(&http, &node).await;
    let addr = node.proxy.clone().unwrap();
    let mut c = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ten = Duration::from_secs(10);
    let got = tokio::time::timeout(ten, closed.recv()).await;
    assert_eq!(got.expect("no request within 10 s"), Some("request"));
    drop(c);
    let got = tokio::time::timeout(ten, closed.recv()).await;
    assert_eq!(got.expect("not closed within 10 s"), Some("closed"));
}
