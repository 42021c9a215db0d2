//! Issue 17's defects, each with a test named after what it proves, through a real `gantry`
//! process.

use std::time::Duration;

use gantry_testkit::http::exchange;
use gantry_testkit::process::{admin, service_and_route, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};

/// Heads are bounded by their size, as nginx's and Kong's, not by hyper's 100 header lines
/// (item 7): a request with 130 small headers is proxied whole, and so is an upstream's
/// response with 120 `Set-Cookie` lines; a request head over 64 KiB is a 431 however it
/// arrives, and one of more than 160 lines too (the parser's room, see `MAX_HEADER_LINES`).
#[tokio::test]
async fn heads_of_more_than_100_lines_pass_and_their_size_bounds_them() {
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
    for i in 0..130 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for i in [0, 99, 100, 129] {
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
    let mut req = http.get(format!("{proxy}/e"));
    for i in 0..250 {
        req = req.header(format!("x-h{i}"), "v");
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

/// Open `streams` HTTP/2 streams on one connection to `addr`, each reset as soon as it is sent,
/// `pause` between them; how many were sent before the connection ended, and how it ended.
async fn reset_burst(
    addr: &str,
    streams: usize,
    pause: Duration,
) -> (usize, Result<(), h2::Error>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let mut sent = 0;
    let mut next = Some(client);
    while let Some(ready) = next.take() {
        if sent == streams {
            break;
        }
        let Ok(mut client) = ready.ready().await else {
            break;
        };
        let req = http::Request::post(format!("http://{addr}/e"))
            .body(())
            .unwrap();
        match client.send_request(req, false) {
            Ok((_response, mut stream)) => {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        if !conn.is_finished() {
            next = Some(client);
        }
    }
    drop(next);
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut conn)
        .await
        .expect("the connection was not ended")
        .unwrap();
    (sent, ended)
}

/// A rapid-reset burst over HTTP/2 (CVE-2023-44487: streams opened and cancelled at once,
/// thousands of them) gets its connection closed, and the node goes on serving everyone else.
#[tokio::test]
async fn an_http2_rapid_reset_burst_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/e").await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    let addr = proxy.trim_start_matches("http://").to_string();

    // All at once: the burst is written before the node reads it.
    let (sent, ended) = reset_burst(&addr, 10_000, Duration::ZERO).await;
    println!("at once: {sent} streams opened and reset; the connection ended with {ended:?}");
    // Paced, so that each stream reaches the proxy before it is reset: the proxy closes the
    // connection once the cancelled outnumber the answered past a hundred.
    let (sent, ended) = reset_burst(&addr, 1_000, Duration::from_millis(5)).await;
    assert!(
        sent < 1_000,
        "all 1,000 paced resets were taken ({ended:?})"
    );
    if ended.is_ok() {
        // Closed by the proxy (h2's own limit on streams reset before they were taken ends
        // with a GOAWAY error instead, when the machine is slow enough for that).
        node.wait_log("(rapid reset)", Duration::from_secs(5));
    }
    println!("paced: {sent} streams opened and reset; the connection ended with {ended:?}");

    // Everyone else is served, over HTTP/1.1 and over HTTP/2.
    let r = http.get(format!("{proxy}/e")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{addr}/e"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

/// Slow clients from Debian's `slowhttptest` (500 connections of slowloris, and 500 sending
/// their bodies slowly) against the proxy and against the Admin API: a normal client's
/// requests are served all along. What is checked is that they are served, not how fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_keep_others_out() {
    if !gantry_testkit::have_tool("slowhttptest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let up = echo().await;
    service_and_route(&http, &node, &up, "/e").await;
    synced(&http, &node).await;
    let proxy = node.proxy.clone().unwrap();
    for (what, target, normal) in [
        ("proxy", format!("{proxy}/e"), format!("{proxy}/e")),
        (
            "admin API",
            format!("{}/services", node.admin),
            format!("{}/status", node.admin),
        ),
    ] {
        let attack = |mode: &str, method: &str| {
            tokio::process::Command::new("slowhttptest")
                .args([mode, "-c", "500", "-r", "250", "-i", "5", "-x", "16"])
                .args(["-l", "8", "-p", "3", "-s", "8192", "-t", method])
                .args(["-u", &target])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("slowhttptest")
        };
        let mut loris = attack("-H", "GET");
        let mut body = attack("-B", "POST");
        // Let the slow connections pile up, then ask as a normal client while they hold.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut served = 0;
        for _ in 0..8 {
            let r = http
                .get(&normal)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: a normal request failed: {e}"));
            assert_eq!(r.status(), 200, "{what}");
            served += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (a, b) = (loris.wait().await.unwrap(), body.wait().await.unwrap());
        println!(
            "{what}: {served} normal requests served during slowloris ({a}) and slow bodies ({b})"
        );
    }
}

/// A poison pill (an entity the schema takes but the proxy cannot run: a route whose header
/// regex does not compile, a certificate whose key no provider here signs with, a plugin the
/// node does not enable) is refused on every way in, naming it, and nothing of its file is
/// stored: `config parse`, `db_import`, a DB-less node's `POST /config` and
/// `declarative_config`, and the Admin API (item 1).
#[tokio::test]
async fn poison_pills_are_refused_on_every_path_in() {
    if !gantry_testkit::have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = gantry_testkit::pki::p521_pair(dir.path());
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    let pills = [
        (
            "route",
            "services:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/r]\n    headers:\n      x: [\"~*(unclosed\"]\n".to_string(),
            "unclosed",
            "/routes",
            json!({"name": "r", "paths": ["/r"], "headers": {"x": ["~*(unclosed"]}}),
        ),
        (
            "certificate",
            format!(
                "certificates:\n- cert: |\n    {}\n  key: |\n    {}\n",
                indent(&cert),
                indent(&key)
            ),
            "certificates[0]",
            "/certificates",
            json!({"cert": cert, "key": key}),
        ),
        (
            "plugin",
            "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: key-auth\n".to_string(),
            "key-auth",
            "/plugins",
            json!({"name": "key-auth"}),
        ),
    ];
    // The node enables cors only: key-auth is the plugin it cannot run.
    let env = [("KONG_PLUGINS", "cors")];
    let http = reqwest::Client::new();
    for (what, body, named, endpoint, entity) in pills {
        let file = dir.path().join(format!("{what}.yml"));
        std::fs::write(&file, format!("_format_version: \"3.0\"\n{body}")).unwrap();
        let gantry = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
                .args(args)
                .envs(env)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), said)
        };
        let path = file.to_str().unwrap();
        let (ok, said) = gantry(&["config", "parse", path]);
        assert!(!ok && said.contains(named), "{what}: config parse: {said}");
        let prefix = dir.path().join(format!("{what}-db"));
        let (ok, said) = gantry(&["config", "db_import", path, "-p", prefix.to_str().unwrap()]);
        assert!(!ok && said.contains(named), "{what}: db_import: {said}");

        // A DB-less node refuses it by POST /config, and does not start on it.
        let env_off = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            [("KONG_DATABASE", "off")]
                .iter()
                .chain(env.iter())
                .chain(extra.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let off = Node::start(&dir.path().join(format!("{what}-off")), &env_off(&[]));
        let r = http
            .post(format!("{}/config", off.admin))
            .header("content-type", "text/yaml")
            .body(std::fs::read(&file).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{what}: POST /config: {b}");
        assert!(b.to_string().contains(named), "{what}: POST /config: {b}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["start", "-p"])
            .arg(dir.path().join(format!("{what}-declarative")))
            .envs(env_off(&[
                ("KONG_DECLARATIVE_CONFIG", path),
                ("KONG_ADMIN_LISTEN", "127.0.0.1:0"),
                ("KONG_PROXY_LISTEN", "127.0.0.1:0"),
                ("KONG_STATUS_LISTEN", "off"),
            ]))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(named),
            "{what}: declarative_config: {said}"
        );

        // The Admin API of a node with a database refuses it when written.
        let db = Node::start(
            &dir.path().join(format!("{what}-admin")),
            &env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        );
        let r = http
            .post(format!("{}{endpoint}", db.admin))
            .json(&entity)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{what}: Admin API: {b}");
        let (_, all) =
            gantry_testkit::http::get_json(&http, &format!("{}{endpoint}", db.admin)).await;
        assert_eq!(all["data"], json!([]), "{what}: stored");
    }
}

/// A transfer coding other than `chunked` is answered 501 and reaches no upstream, where it
/// was once dropped silently and the body passed as if chunked alone (item 9); `chunked` twice
/// is a 400.
#[tokio::test]
async fn unknown_transfer_codings_are_refused_not_dropped() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (up, hits) = gantry_testkit::upstream::counting().await;
    service_and_route(&http, &node, &up.to_string(), "/h").await;
    synced(&http, &node).await;
    let addr = node.proxy.clone().unwrap();
    let addr = addr.trim_start_matches("http://");
    for (coding, want) in [
        ("gzip, chunked", "HTTP/1.1 501"),
        ("br, chunked", "HTTP/1.1 501"),
        ("chunked, chunked", "HTTP/1.1 400"),
    ] {
        let raw = format!(
            "POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let got = exchange(addr, raw.as_bytes()).await;
        assert!(got.starts_with(want), "{coding}: {got}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the upstream"
    );
}

/// Requests the HTTP parser refuses before they are requests (a malformed head: 400; a head
/// over the limit: 431) leave a trace: counted in the metrics, logged, and in the access log as
/// nginx writes them (item 11).
#[tokio::test]
async fn requests_the_parser_refuses_leave_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("KONG_LOG_LEVEL".into(), "info".into())]);
    let http = reqwest::Client::new();
    let addr = node.proxy.clone().unwrap();
    let addr = addr.trim_start_matches("http://").to_string();
    let status = node.status.clone().unwrap();
    let refused = || async {
        let m = gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await;
        m.lines()
            .filter(|l| l.starts_with("gantry_http_requests_total") && l.contains("4xx"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = refused().await;
    let got = exchange(
        &addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let got = exchange(&addr, huge.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let access = dir.path().join("logs/access.log");
    gantry_testkit::http::eventually(
        Duration::from_secs(5),
        "no trace of the refusals",
        || async {
            let log = std::fs::read_to_string(&access).unwrap_or_default();
            refused().await >= before + 2
                && log.contains("\"-\" 400 refused=")
                && log.contains("\"-\" 431 refused=")
        },
    )
    .await;
    node.wait_log("request refused by the HTTP parser", Duration::from_secs(5));
}
