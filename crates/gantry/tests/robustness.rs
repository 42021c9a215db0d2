//! Issue 17's defects, each with a test named after what it proves, through a real `gantry`
//! process.

use std::time::Duration;

use gantry_testkit::process::{admin, service_and_route, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};

/// Send `raw` on a new connection to `addr` and read the answer until the server closes.
async fn exchange(addr: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer, then the connection closed")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Heads are bounded by their size, as nginx's and Kong's, not by a count of 100 header lines
/// (item 7): a request with 150 small headers is proxied whole, and so is an upstream's
/// response with 120 `Set-Cookie` lines; a request head over 64 KiB is still a 431.
#[tokio::test]
async fn heads_are_bounded_by_size_not_by_header_count() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/e").await;
    let mut head = String::new();
    for i in 0..120 {
        head.push_str(&format!("Set-Cookie: c{i}=v{i}; Path=/\r\n"));
    }
    let response: &'static [u8] = format!("HTTP/1.1 200 OK\r\n{head}Content-Length: 2\r\n\r\nok")
        .into_bytes()
        .leak();
    let cookies = gantry_testkit::upstream::raw(response, Duration::ZERO, b"").await;
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "cookies", "url": format!("http://{cookies}")}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/cookies/routes",
        json!({"name": "cookies", "paths": ["/cookies"]}),
    )
    .await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();

    let mut req = http.get(format!("{proxy}/e"));
    for i in 0..150 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for i in [0, 99, 100, 149] {
        assert_eq!(
            body["headers"][format!("x-h{i}")],
            "v",
            "header {i}: {body}"
        );
    }

    // Raw: reqwest itself takes no more than 100 header lines.
    let text = exchange(
        proxy.trim_start_matches("http://"),
        b"GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let cookies = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie: c"))
        .count();
    assert_eq!(cookies, 120, "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");

    // The size bound holds: 70 headers of 1 KiB are a head over 64 KiB.
    let big = "v".repeat(1024);
    let mut req = http.get(format!("{proxy}/e"));
    for i in 0..70 {
        req = req.header(format!("x-big{i}"), &big);
    }
    assert_eq!(req.send().await.unwrap().status(), 431);
}

/// A node whose stored configuration no longer compiles (here: written while key-auth was
/// enabled, started without it) still starts, names what does not load, serves none of it, and
/// is repaired through its Admin API: the first version that compiles is served whole (item 1).
#[tokio::test]
async fn a_stored_configuration_that_does_not_compile_is_repaired_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let up = echo().await;
    let file = dir.path().join("kong.yml");
    std::fs::write(
        &file,
        format!(
            "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://{up}\n  routes:\n  - name: guarded\n    paths: [/guarded]\n    plugins:\n    - name: key-auth\n  - name: open\n    paths: [/open]\n"
        ),
    )
    .unwrap();
    let prefix = dir.path().join("node");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["config", "db_import"])
        .arg(&file)
        .arg("-p")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let node = Node::start(&prefix, &[("KONG_PLUGINS".into(), "cors".into())]);
    let log = node.wait_log(
        "the stored configuration does not load",
        Duration::from_secs(5),
    );
    assert!(log.contains("key-auth"), "{log}");
    let http = reqwest::Client::new();
    let proxy = node.proxy.clone().unwrap();
    let status = node.status.clone().unwrap();
    for path in ["/guarded", "/open"] {
        let r = http.get(format!("{proxy}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}: none of it is served");
    }
    let r = http
        .get(format!("{status}/status/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    // The operator removes what this node cannot run; the rest is served whole.
    let plugins = admin(&http, &node, "GET", "/plugins", json!({})).await;
    let id = plugins["data"][0]["id"].as_str().unwrap().to_string();
    let r = http
        .delete(format!("{}/plugins/{id}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    synced(&http, &node).await;
    for path in ["/guarded", "/open"] {
        let r = http.get(format!("{proxy}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http
        .get(format!("{status}/status/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// One Admin API request cannot hold the proxy or the node's stop (item 3): a body of 500,000
/// tags is validated in O(n) and stored while the proxy keeps answering, and a node told to
/// stop while requests never end (an Admin API body that never comes, a proxied request whose
/// upstream never answers) exits within `nginx_main_worker_shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_work_never_holds_the_proxy_or_the_stop() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        dir.path(),
        &[(
            "KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT".into(),
            "2s".into(),
        )],
    );
    let http = reqwest::Client::new();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/e").await;
    // An upstream that takes connections and never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    admin(
        &http,
        &node,
        "POST",
        "/services",
        json!({"name": "mute", "url": format!("http://{mute_addr}"), "read_timeout": 600_000}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/services/mute/routes",
        json!({"name": "mute", "paths": ["/mute"]}),
    )
    .await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();

    let tags: Vec<String> = (0..500_000).map(|i| format!("t{i}")).collect();
    let big = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/services", node.admin));
        async move {
            let r = http
                .post(url)
                .json(&json!({"name": "big", "url": "http://x.example", "tags": tags}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    });
    let mut served = 0;
    while !big.is_finished() {
        let r = http.get(format!("{proxy}/e")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        served += 1;
    }
    let (status, body) = big.await.unwrap();
    assert_eq!(status, 201, "{}", body["message"]);
    assert_eq!(body["tags"].as_array().unwrap().len(), 500_000);
    println!("proxy requests answered while the Admin API validated 500,000 tags: {served}");

    // Requests that never end, on both sides.
    let admin_addr = node.admin.trim_start_matches("http://").to_string();
    let mut stuck_admin = tokio::net::TcpStream::connect(&admin_addr).await.unwrap();
    stuck_admin
        .write_all(b"POST /services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let stuck_proxy = tokio::spawn({
        let (http, url) = (http.clone(), format!("{proxy}/mute"));
        async move { http.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("TERM");
    let status = tokio::task::spawn_blocking(move || node.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(stuck_admin);
    stuck_proxy.abort();
}
