//! The container image (dist/image.sh, dist/image/Dockerfile): built FROM scratch with the
//! static binary, then run for real under Docker: the quickstart answers /mock through a
//! published port, and a data plane container joins a control plane container on a network the
//! test creates, and is reported healthy by the image's `gantry health` check.
//!
//! Needs dockerd and the static binary (dist/package.sh, or GANTRY_STATIC_BIN); without them it
//! skips, saying so; in CI (`CI=true`) it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

fn must(args: &[&str]) -> String {
    let (ok, out) = docker(args);
    assert!(ok, "docker {args:?}: {out}");
    out
}

/// Removes what the test made, however it ends: containers on its networks first.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.0 {
            if let [verb, _, net] = c.as_slice() {
                if verb == "network" {
                    let (_, ids) = docker(&["ps", "-aq", "--filter", &format!("network={net}")]);
                    for id in ids.lines().filter(|l| !l.is_empty()) {
                        let _ = docker(&["rm", "-f", id]);
                    }
                }
            }
        }
        for c in self.0.iter().rev() {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            let _ = docker(&args);
        }
    }
}

/// The static binary to build images from, once dockerd answers; `None` (the test skips,
/// saying why) where either is missing outside CI; in CI both must be there.
fn prerequisites() -> Option<PathBuf> {
    let ci = gantry_testkit::ci();
    if !docker(&["info"]).0 {
        assert!(!ci, ".ci/run starts dockerd");
        eprintln!("skipped: no Docker daemon answers (start dockerd)");
        return None;
    }
    let bin = static_binary();
    if bin.is_none() {
        assert!(!ci, ".ci/run builds the static binary with dist/package.sh");
        eprintln!("skipped: no static binary (run dist/package.sh, or set GANTRY_STATIC_BIN)");
    }
    bin
}

/// `dist/image.sh TAG` with `bin`: the image `gantry:TAG`; returns what it printed.
fn build_image(tag: &str, bin: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new("bash")
        .arg(root.join("dist/image.sh"))
        .arg(tag)
        .env("BIN", bin)
        .output()
        .expect("run dist/image.sh");
    let out = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(
        built.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

fn static_binary() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("GANTRY_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/x86_64-unknown-linux-gnu/release/gantry"));
    p.is_file().then_some(p)
}

/// GET `url` until it answers `want` (a status line's code), for up to `within`; else the
/// last code it got.
fn wait_for(url: &str, want: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                url,
            ])
            .output()
            .expect("run curl");
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        if code == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(code);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn until(url: &str, want: &str, within: Duration) {
    if let Err(code) = wait_for(url, want, within) {
        panic!("GET {url}: {code}, want {want}");
    }
}

fn published(container: &str, port: &str) -> String {
    let out = must(&["port", container, port]);
    out.lines().next().unwrap_or_default().to_string()
}

#[test]
fn image_from_scratch_runs_quickstart_and_a_hybrid_pair() {
    let Some(bin) = prerequisites() else {
        return;
    };
    let ldd = Command::new("ldd").arg(&bin).output().expect("run ldd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(said.contains("not a dynamic executable"), "ldd: {said}");

    let tag = format!("0.0.0-test{}", std::process::id());
    let image = format!("gantry:{tag}");
    let mut cleanup = Cleanup(vec![vec!["rmi".into(), "-f".into(), image.clone()]]);
    let out = build_image(&tag, &bin);
    eprintln!("{} {out}", bin.display());
    // Nothing but the binary, the CA bundle and two small files.
    let size: u64 = must(&["image", "inspect", "-f", "{{.Size}}", &image])
        .parse()
        .unwrap();
    let bin_size = std::fs::metadata(&bin).unwrap().len();
    assert!(
        size < bin_size + 2_000_000,
        "image {size} bytes, binary {bin_size}"
    );
    assert_eq!(
        must(&["image", "inspect", "-f", "{{.Config.User}}", &image]),
        "65532:65532"
    );

    // The quickstart, as `docker run gantry:VERSION quickstart`, through a published port.
    let qs = must(&["run", "-d", "-p", "127.0.0.1::8000", &image, "quickstart"]);
    cleanup.0.push(vec!["rm".into(), "-f".into(), qs.clone()]);
    let port = published(&qs, "8000");
    until(
        &format!("http://{port}/mock"),
        "200",
        Duration::from_secs(60),
    );

    // A control plane container and a data plane container on a network of their own, the
    // data plane set up by KONG_* variables alone.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = gantry_testkit::process::gen_cert(dir.path(), "cluster");
    let (cert, key) = (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    );
    let net = format!("gantry-test-{}", std::process::id());
    must(&["network", "create", &net]);
    cleanup
        .0
        .push(vec!["network".into(), "rm".into(), net.clone()]);
    let cp_name = format!("gantry-cp-{}", std::process::id());
    let env = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
            .collect()
    };
    let mut args: Vec<String> = ["run", "-d", "--network", &net, "--name", &cp_name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(env(&[
        ("KONG_ROLE", "control_plane"),
        ("KONG_DATABASE", "sqlite"),
        ("KONG_CLUSTER_LISTEN", "0.0.0.0:8005"),
        ("KONG_CLUSTER_TELEMETRY_LISTEN", "0.0.0.0:8006"),
        ("KONG_CLUSTER_CERT", &cert),
        ("KONG_CLUSTER_CERT_KEY", &key),
    ]));
    args.push(image.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = must(&a);
    cleanup.0.push(vec!["rm".into(), "-f".into(), cp]);
    let control_plane = format!("{cp_name}:8005");
    let mut args: Vec<String> = ["run", "-d", "--network", &net, "-p", "127.0.0.1::8100"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(env(&[
        ("KONG_ROLE", "data_plane"),
        ("KONG_DATABASE", "off"),
        ("KONG_CLUSTER_CONTROL_PLANE", &control_plane),
        ("KONG_CLUSTER_CERT", &cert),
        ("KONG_CLUSTER_CERT_KEY", &key),
    ]));
    args.push(image.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let dp = must(&a);
    cleanup.0.push(vec!["rm".into(), "-f".into(), dp.clone()]);
    // Ready only once it has its configuration from the control plane.
    let status = published(&dp, "8100");
    until(
        &format!("http://{status}/status/ready"),
        "200",
        Duration::from_secs(60),
    );
    // The image's health check (`gantry health`, over HTTP) calls it healthy.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = must(&["inspect", "-f", "{{.State.Health.Status}}", &dp]);
        if h == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health: {h}; logs: {}",
            docker(&["logs", &dp]).1
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Build `gantry:TAG` FROM `base` with extra Dockerfile lines.
fn derive(base: &str, tag: &str, lines: &str) {
    let out = gantry_testkit::process::feed(
        Command::new("docker").args(["build", "-q", "-t", tag, "-"]),
        &format!("FROM {base}\n{lines}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Managed data plane groups with the `docker` provider: containers of `gantry:VERSION` on a
/// network the test creates, sized, upgraded one at a time, and a version that cannot start
/// stopping the rollout.
#[tokio::test(flavor = "multi_thread")]
async fn managed_groups_on_docker() {
    use gantry_testkit::process::{self, admin, cp_env, gen_cert, Node};
    use serde_json::{json, Value};
    let Some(bin) = prerequisites() else {
        return;
    };
    let id = std::process::id();
    let (a, b, c) = (
        format!("0.0.0-mg{id}"),
        format!("0.0.1-mg{id}"),
        format!("0.0.2-mg{id}"),
    );
    let net = format!("gantry-mg-{id}");
    let mut cleanup = Cleanup(Vec::new());
    for t in [&a, &b, &c] {
        cleanup
            .0
            .push(vec!["rmi".into(), "-f".into(), format!("gantry:{t}")]);
    }
    build_image(&a, &bin);
    // The second version: the same build reporting 0.2.1 (the reported_version setting); the
    // third: one that cannot start.
    derive(
        &format!("gantry:{a}"),
        &format!("gantry:{b}"),
        "ENV KONG_REPORTED_VERSION=0.2.1",
    );
    derive(
        &format!("gantry:{a}"),
        &format!("gantry:{c}"),
        "ENTRYPOINT [\"/gantry\", \"no-such-command\"]",
    );
    must(&["network", "create", &net]);
    cleanup
        .0
        .push(vec!["network".into(), "rm".into(), net.clone()]);

    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path(), "cluster");
    let (cl, tl) = (gantry_testkit::free_port(), gantry_testkit::free_port());
    let (cl, tl) = (format!("0.0.0.0:{cl}"), format!("0.0.0.0:{tl}"));
    let env = cp_env(
        &cert,
        &[
            ("KONG_CLUSTER_LISTEN", &cl),
            ("KONG_CLUSTER_TELEMETRY_LISTEN", &tl),
            ("KONG_REPORTED_VERSION", "0.2.9"),
            ("KONG_MANAGED_INSTANCE_RPS", "30"),
            ("KONG_MANAGED_SCALE_IN_DELAY", "3s"),
        ],
    );
    let prefix = dir.path().join("cp");
    let token = process::token(&prefix, &env, "ops", &[]);
    let mut cp = Node::start(&prefix, &env);
    let http = reqwest::Client::new();
    // A route that answers by itself: the containers cannot reach the host's loopback.
    admin(
        &http,
        &cp,
        "POST",
        "/services",
        json!({"name": "s", "url": "http://127.0.0.1:9"}),
    )
    .await;
    admin(
        &http,
        &cp,
        "POST",
        "/services/s/routes",
        json!({"name": "a", "paths": ["/a"]}),
    )
    .await;
    admin(&http, &cp, "POST", "/routes/a/plugins", json!({"name": "request-termination", "config": {"status_code": 200, "message": "managed"}})).await;
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let (http, token, base) = (http.clone(), token.clone(), cp.admin.clone());
        async move {
            let mut r = http
                .request(method, format!("{base}{path}"))
                .bearer_auth(token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let res = r.send().await.unwrap();
            let s = res.status().as_u16();
            (s, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, planes) = call(reqwest::Method::GET, "/v2/control-planes".into(), None).await;
    let cp_id = planes["data"][0]["id"].as_str().unwrap().to_string();
    let put = |version: &str, n: u64| {
        json!({"control_plane_id": cp_id, "control_plane_geo": "us", "version": version,
               "api_access": "private",
               "dataplane_groups": [{"provider": "docker", "region": net,
                   "autoscale": {"kind": "static", "instance_type": "small", "requested_instances": n},
                   "environment": [{"name": "KONG_CLUSTER_PING_INTERVAL", "value": "2s"}]}]})
    };
    let store = |body: Value| {
        call(
            reqwest::Method::PUT,
            "/v2/cloud-gateways/configurations".into(),
            Some(body),
        )
    };
    let refused = |body: Value, needle: &'static str| async move {
        let (s, e) = store(body).await;
        assert_eq!(s, 400, "{e}");
        assert!(e.to_string().contains(needle), "{needle} not in {e}");
    };
    // Refused: a network that does not exist, public access, an image not built.
    let mut bad = put(&a, 1);
    bad["api_access"] = json!("public");
    refused(bad, "api_access must be private").await;
    let mut bad = put(&a, 1);
    bad["dataplane_groups"][0]["region"] = json!("no-such-network");
    refused(bad, "docker network create no-such-network").await;
    refused(put("9.9.9", 1), "dist/image.sh 9.9.9").await;

    let (s, conf) = store(put(&a, 2)).await;
    assert_eq!(s, 200, "{conf}");
    let config = conf["id"].as_str().unwrap().to_string();
    let gid = conf["dataplane_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until_in = |gid: &str, what: &'static str, n: usize, pred: fn(&Value, &[Value]) -> bool| {
        let (call, config, gid, admin_url, http) = (
            call,
            config.clone(),
            gid.to_string(),
            cp.admin.clone(),
            http.clone(),
        );
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let (_, c) = call(
                    reqwest::Method::GET,
                    format!("/v2/cloud-gateways/configurations/{config}"),
                    None,
                )
                .await;
                let g = c["dataplane_groups"][0].clone();
                let (_, reg) = gantry_testkit::http::get_json(&http, &format!("{admin_url}/clustering/data-planes?status=connected&labels=managed-group:{gid}")).await;
                let live = reg["data"].as_array().cloned().unwrap_or_default();
                if pred(&g, &live) && live.len() == n {
                    return (g, live);
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: never; {g:#}; {} connected",
                    live.len()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let until = |what: &'static str, n: usize, pred: fn(&Value, &[Value]) -> bool| {
        until_in(&gid, what, n, pred)
    };

    let serves = |g: &Value| {
        for addr in g["private_ip_addresses"].as_array().unwrap() {
            let url = format!("http://{}/a", addr.as_str().unwrap());
            if let Err(code) = wait_for(&url, "200", Duration::from_secs(30)) {
                let ps = docker(&[
                    "ps",
                    "-a",
                    "--filter",
                    &format!("network={net}"),
                    "--format",
                    "{{.Names}} {{.Status}}",
                ])
                .1;
                let ips = docker(&[
                    "network",
                    "inspect",
                    &net,
                    "-f",
                    "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}",
                ])
                .1;
                panic!("GET {url}: {code}; group {g:#}; containers: {ps}; addresses: {ips}");
            }
        }
    };
    let (g, live) = until("2 containers ready", 2, |g, _| g["state"] == "ready").await;
    assert_eq!(
        g["private_ip_addresses"].as_array().unwrap().len(),
        2,
        "{g}"
    );
    assert!(live.iter().all(|n| n["version"] == "0.2.0"), "{live:?}");
    serves(&g);
    let (s, _) = store(put(&a, 1)).await;
    assert_eq!(s, 200);
    let (g, _) = until("1 container", 1, |g, _| {
        g["state"] == "ready"
            && g["private_ip_addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    serves(&g);
    // A rolling upgrade to the second image.
    let (s, _) = store(put(&b, 1)).await;
    assert_eq!(s, 200);
    let (g, live) = until("upgraded to 0.2.1", 1, |g, live| {
        g["state"] == "ready"
            && g["state_metadata"] == json!({})
            && live.iter().all(|n| n["version"] == "0.2.1")
            && g["private_ip_addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    let live_versions: Vec<&Value> = live.iter().map(|n| &n["version"]).collect();
    assert_eq!(live_versions, vec!["0.2.1"], "{live:?}");
    serves(&g);
    // A version that cannot start: the rollout stops, the 0.2.1 container keeps serving.
    let (s, _) = store(put(&c, 1)).await;
    assert_eq!(s, 200);
    let (g, live) = until("a failed rollout", 1, |g, _| {
        g["state_metadata"]["reported_status"] == "ERROR"
    })
    .await;
    assert!(
        g["state_metadata"]["reason"].as_str().unwrap().contains(&c),
        "{g}"
    );
    assert_eq!(live[0]["version"], "0.2.1", "{live:?}");
    serves(&g);
    // Emptied: every container goes.
    let mut empty = put(&a, 1);
    empty["dataplane_groups"] = json!([]);
    let (s, _) = store(empty).await;
    assert_eq!(s, 200);
    until("terminated", 0, |g, _| g["state"] == "terminated").await;
    let left = must(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=gantry.managed-group={gid}"),
    ]);
    assert_eq!(left, "", "containers left behind");

    // In the host's network namespace the group shares one address (reuseport), as the local
    // provider's do: a rolling upgrade under wrk loses no request.
    if gantry_testkit::migrates_connections() {
        let region = format!("host:127.0.0.1:{}", gantry_testkit::free_port());
        let host_group = |version: &str| {
            let mut b = put(version, 2);
            b["dataplane_groups"][0]["region"] = json!(region);
            b
        };
        let (s, conf) = store(host_group(&a)).await;
        assert_eq!(s, 200, "{conf}");
        let hid = conf["dataplane_groups"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        until_in(&hid, "2 containers on the host's network", 2, |g, _| {
            g["state"] == "ready"
        })
        .await;
        let url = format!("http://{}/a", &region["host:".len()..]);
        wait_for(&url, "200", Duration::from_secs(30)).expect("the host group serves");
        let wrk = gantry_testkit::load::Wrk::start(&url, 10);
        let load = gantry_testkit::load::Load::start(url.clone(), 2, true);
        let (s, _) = store(host_group(&b)).await;
        assert_eq!(s, 200);
        let (_, live) = until_in(&hid, "2 containers of 0.2.1", 2, |g, live| {
            g["state"] == "ready" && live.iter().all(|n| n["version"] == "0.2.1")
        })
        .await;
        assert_eq!(live.len(), 2);
        let (ok, failed, first) = load.finish().await;
        assert_eq!(failed, 0, "the rollout lost requests; first: {first:?}");
        assert!(ok > 0);
        if let Some(w) = wrk {
            let text = w.no_failures();
            eprintln!("rolling upgrade of docker containers under wrk:\n{text}");
        }
        // 3, then 1, under load: no request lost.
        let sized = |n: u64| {
            let mut body = host_group(&b);
            body["dataplane_groups"][0]["autoscale"]["requested_instances"] = json!(n);
            body
        };
        assert_eq!(store(sized(3)).await.0, 200);
        until_in(&hid, "3 containers", 3, |g, _| g["state"] == "ready").await;
        let load = gantry_testkit::load::Load::start(url.clone(), 4, true);
        assert_eq!(store(sized(1)).await.0, 200);
        until_in(&hid, "1 container", 1, |g, _| g["state"] == "ready").await;
        let (ok, failed, first) = load.finish().await;
        assert_eq!(failed, 0, "scale-in lost requests; first: {first:?}");
        assert!(ok > 0);
        // Autopilot: grows under load above one container's capacity (30 rps), back to its
        // floor once the load is gone.
        let mut pilot = host_group(&b);
        pilot["dataplane_groups"][0]["autoscale"] = json!({"kind": "autopilot", "base_rps": 10});
        assert_eq!(store(pilot).await.0, 200);
        let load = gantry_testkit::load::Load::start(url.clone(), 3, true);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, reg) = gantry_testkit::http::get_json(
                &http,
                &format!(
                    "{}/clustering/data-planes?status=connected&labels=managed-group:{hid}",
                    cp.admin
                ),
            )
            .await;
            if reg["data"].as_array().map_or(0, Vec::len) >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "autopilot never grew the docker group"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (_, failed, first) = load.finish().await;
        assert_eq!(failed, 0, "first: {first:?}");
        until_in(&hid, "autopilot back at its floor", 1, |g, _| {
            g["state"] == "ready"
        })
        .await;
        let mut empty = put(&a, 1);
        empty["dataplane_groups"] = json!([]);
        store(empty).await;
        until_in(&hid, "host group terminated", 0, |g, _| {
            g["state"] == "terminated"
        })
        .await;
    }
    cp.signal("TERM");
    assert!(cp.wait_exit(Duration::from_secs(40)).success());
}
