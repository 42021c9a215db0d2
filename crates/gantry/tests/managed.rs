//! Managed data plane groups (Konnect's cloud-gateways configurations API) with the local
//! provider: real control plane, real data plane processes it starts and stops.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_testkit::free_port;
use gantry_testkit::http::{get_json, until};
use gantry_testkit::load::{Load, Wrk};
use gantry_testkit::process::{self, cp_env, gen_cert, service_and_route, Node};
use gantry_testkit::upstream::echo;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const THIS: &str = gantry_model::GANTRY_VERSION;

async fn call(
    http: &Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let res = r.send().await.unwrap();
    let status = res.status();
    (
        status,
        serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// A versions directory as install.sh lays it out: `0.2.1` is this build reporting another
/// version (the `reported_version` setting, for canary tests), `0.2.2` a build that cannot
/// start.
fn versions(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("versions");
    let scripts = [
        (
            "0.2.1",
            format!(
                "#!/bin/sh\nKONG_REPORTED_VERSION=0.2.1 exec {} \"$@\"\n",
                process::bin().display()
            ),
        ),
        (
            "0.2.2",
            "#!/bin/sh\necho 'gantry 0.2.2: this build is broken' >&2\nexit 3\n".to_string(),
        ),
    ];
    for (v, text) in scripts {
        let d = root.join(v);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("gantry");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// Kills whatever processes still run under `dir` (the managed nodes of a control plane that
/// died with the test), however the test ends.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

struct Api<'a> {
    http: &'a Client,
    base: String,
    token: String,
    cp: &'a Node,
}

impl Api<'_> {
    async fn put(&self, body: Value) -> (StatusCode, Value) {
        call(
            self.http,
            Method::PUT,
            &format!("{}/v2/cloud-gateways/configurations", self.base),
            &self.token,
            Some(body),
        )
        .await
    }

    async fn group(&self, config: &str) -> Value {
        let (s, v) = call(
            self.http,
            Method::GET,
            &format!("{}/v2/cloud-gateways/configurations/{config}", self.base),
            &self.token,
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Wait until the configuration's first live group satisfies `pred`, and its connected
    /// nodes number `nodes`; returns those nodes.
    async fn until(
        &self,
        config: &str,
        what: &str,
        nodes: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let c = self.group(config).await;
            let g = c["dataplane_groups"][0].clone();
            let id = g["id"].as_str().unwrap().to_string();
            let (_, reg) = get_json(
                self.http,
                &format!(
                    "{}/clustering/data-planes?status=connected&labels=managed-group:{id}",
                    self.cp.admin
                ),
            )
            .await;
            let live = reg["data"].as_array().cloned().unwrap_or_default();
            if pred(&g) && live.len() == nodes {
                return live;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never; group {g:#}, connected nodes {}",
                live.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn group(region: &str, autoscale: Value) -> Value {
    json!({"provider": "local", "region": region, "autoscale": autoscale,
           "environment": [{"name": "KONG_CLUSTER_PING_INTERVAL", "value": "2s"}]})
}

fn config(cp_id: &str, version: &str, groups: Value) -> Value {
    json!({"control_plane_id": cp_id, "control_plane_geo": "eu", "version": version, "dataplane_groups": groups})
}

fn fixed(n: u64) -> Value {
    json!({"kind": "static", "instance_type": "small", "requested_instances": n})
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_groups_scale_upgrade_and_fail_safe() {
    if !gantry_testkit::migrates_connections() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let cert = gen_cert(dir.path(), "cluster");
    let http = Client::new();
    let up = echo().await;
    let versions = versions(dir.path());
    let env = cp_env(
        &cert,
        &[
            ("KONG_MANAGED_VERSIONS_DIR", versions.to_str().unwrap()),
            ("KONG_MANAGED_INSTANCE_RPS", "30"),
            ("KONG_MANAGED_SCALE_IN_DELAY", "3s"),
            ("KONG_CLUSTER_PING_INTERVAL", "2s"),
            // The control plane is ahead of every data plane version used here.
            ("KONG_REPORTED_VERSION", "0.2.9"),
        ],
    );
    let prefix = dir.path().join("cp");
    let token = process::token(&prefix, &env, "ops", &[]);
    let mut cp = Node::start(&prefix, &env);
    service_and_route(&http, &cp, &up, "/a").await;
    let api = Api {
        http: &http,
        base: cp.admin.clone(),
        token: token.clone(),
        cp: &cp,
    };
    let (_, planes) = call(
        &http,
        Method::GET,
        &format!("{}/v2/control-planes", cp.admin),
        &token,
        None,
    )
    .await;
    let cp_id = planes["data"][0]["id"].as_str().unwrap().to_string();

    // Refused, every field at fault named, nothing stored.
    let (s, e) = api
        .put(json!({
            "control_plane_id": cp_id, "control_plane_geo": "mars", "version": THIS,
            "dataplane_groups": [
                {"provider": "aws", "region": "us-east-2",
                 "autoscale": {"kind": "static", "instance_type": "small", "requested_instances": "2"}},
                {"provider": "local", "region": "us-east-2", "autoscale": {"kind": "autopilot", "base_rps": "x"},
                 "environment": [{"name": "KONG_ROLE", "value": "x"}, {"name": "KONG_NOPE", "value": "1"}]},
            ]}))
        .await;
    assert_eq!(s, 400, "{e}");
    let fields: Vec<&str> = e["invalid_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    for f in [
        "control_plane_geo",
        "dataplane_groups.0.provider",
        "dataplane_groups.0.autoscale.requested_instances",
        "dataplane_groups.1.region",
        "dataplane_groups.1.autoscale.base_rps",
        "dataplane_groups.1.environment.0.name",
        "dataplane_groups.1.environment.1.name",
    ] {
        assert!(fields.contains(&f), "{f} not in {e:#}");
    }
    let port = free_port();
    let region = format!("127.0.0.1:{port}");
    let (s, e) = api
        .put(config(&cp_id, "7.7.7", json!([group(&region, fixed(2))])))
        .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["invalid_parameters"][0]["field"], "version", "{e}");
    assert!(e.to_string().contains("install.sh --version 7.7.7"), "{e}");
    let (_, list) = call(
        &http,
        Method::GET,
        &format!("{}/v2/cloud-gateways/configurations", cp.admin),
        &token,
        None,
    )
    .await;
    assert_eq!(list["data"], json!([]), "{list}");

    // Two nodes, both connected and serving on the group's address.
    let body = config(&cp_id, THIS, json!([group(&region, fixed(2))]));
    let (s, c) = api.put(body.clone()).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["entity_version"], 1);
    assert_eq!(c["dataplane_groups"][0]["state"], "created");
    assert_eq!(c["api_access"], "private+public");
    let id = c["id"].as_str().unwrap().to_string();
    let nodes = api
        .until(&id, "2 nodes ready", 2, |g| g["state"] == "ready")
        .await;
    assert!(nodes.iter().all(|n| n["version"] == THIS), "{nodes:?}");
    let url = format!("http://{region}/a");
    until(&http, &url, 200, Duration::from_secs(10)).await;
    assert_eq!(
        api.group(&id).await["dataplane_groups"][0]["private_ip_addresses"],
        json!([region])
    );
    let (s, e) = api.put(body).await;
    assert_eq!(s, 409, "{e}");
    let (_, list) = call(
        &http,
        Method::GET,
        &format!(
            "{}/v2/cloud-gateways/configurations?filter[control_plane_id]={cp_id}",
            cp.admin
        ),
        &token,
        None,
    )
    .await;
    assert_eq!(list["meta"]["page"]["total"], 1, "{list}");

    // 3, then 1: the nodes follow, and scale-in loses no request.
    let (s, c) = api
        .put(config(&cp_id, THIS, json!([group(&region, fixed(3))])))
        .await;
    assert_eq!(s, 200, "{c}");
    api.until(&id, "3 nodes", 3, |g| g["state"] == "ready")
        .await;
    let load = Load::start(url.clone(), 4, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, c) = api
        .put(config(&cp_id, THIS, json!([group(&region, fixed(1))])))
        .await;
    assert_eq!(s, 200, "{c}");
    api.until(&id, "1 node", 1, |g| g["state"] == "ready").await;
    let (ok, failed, first) = load.finish().await;
    assert_eq!(failed, 0, "scale-in lost requests; first: {first:?}");
    assert!(ok > 0);

    // A rolling upgrade to 0.2.1 (and to 2 nodes) under load loses nothing.
    let wrk = Wrk::start(&url, 12);
    let load = Load::start(url.clone(), 2, true);
    let (s, c) = api
        .put(config(&cp_id, "0.2.1", json!([group(&region, fixed(2))])))
        .await;
    assert_eq!(s, 200, "{c}");
    let nodes = api
        .until(&id, "2 nodes of 0.2.1", 2, |g| {
            g["state"] == "ready"
                && g["state_metadata"] == json!({})
                && g["updated_at"] != c["updated_at"]
        })
        .await;
    assert!(nodes.iter().all(|n| n["version"] == "0.2.1"), "{nodes:?}");
    let (ok, failed, first) = load.finish().await;
    assert_eq!(failed, 0, "the rollout lost requests; first: {first:?}");
    assert!(ok > 0);
    if let Some(w) = wrk {
        w.no_failures();
    }
    // The v2 nodes page shows the new version.
    let (_, v2nodes) = call(
        &http,
        Method::GET,
        &format!("{}/v2/control-planes/{cp_id}/nodes", cp.admin),
        &token,
        None,
    )
    .await;
    let shown: Vec<&str> = v2nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["version"].as_str())
        .collect();
    assert!(shown.contains(&"0.2.1"), "{v2nodes}");

    // A version that cannot start stops the rollout; the old nodes keep serving.
    let (s, c) = api
        .put(config(&cp_id, "0.2.2", json!([group(&region, fixed(2))])))
        .await;
    assert_eq!(s, 200, "{c}");
    let nodes = api
        .until(&id, "a failed rollout reported", 2, |g| {
            g["state_metadata"]["reported_status"] == "ERROR"
                && g["state_metadata"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("this build is broken"))
        })
        .await;
    assert!(nodes.iter().all(|n| n["version"] == "0.2.1"), "{nodes:?}");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    // Autopilot: a second group grows under load above one node's capacity (30 rps), and
    // shrinks back to its floor when the load is gone.
    let port2 = free_port();
    let region2 = format!("127.0.0.1:{port2}");
    let (s, c) = api
        .put(config(
            &cp_id,
            "0.2.1",
            json!([group(
                &region2,
                json!({"kind": "autopilot", "base_rps": 10})
            )]),
        ))
        .await;
    assert_eq!(s, 200, "{c}");
    let g = &c["dataplane_groups"];
    assert_eq!(g.as_array().unwrap().len(), 2, "{c}");
    assert_eq!(g[0]["autoscale"]["max_rps"], 100, "{c}");
    assert_eq!(
        g[1]["state"], "terminating",
        "the dropped group drains: {c}"
    );
    api.until(&id, "autopilot at its floor", 1, |g| g["state"] == "ready")
        .await;
    let url2 = format!("http://{region2}/a");
    until(&http, &url2, 200, Duration::from_secs(10)).await;
    // The first group is gone: nothing listens on its address any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(&url).send().await.is_ok() {
        assert!(Instant::now() < deadline, "the dropped group still serves");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load = Load::start(url2.clone(), 3, true);
    let grown = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = api.group(&id).await;
            let gid = c["dataplane_groups"][0]["id"].as_str().unwrap().to_string();
            let (_, reg) = get_json(
                &http,
                &format!(
                    "{}/clustering/data-planes?status=connected&labels=managed-group:{gid}",
                    cp.admin
                ),
            )
            .await;
            let n = reg["data"].as_array().map(Vec::len).unwrap_or(0);
            if n >= 2 {
                break n;
            }
            assert!(Instant::now() < deadline, "autopilot never grew: {c:#}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (ok, failed, first) = load.finish().await;
    assert!(grown >= 2 && ok > 0);
    assert_eq!(failed, 0, "first: {first:?}");
    api.until(&id, "autopilot back at its floor", 1, |g| {
        g["state"] == "ready"
    })
    .await;
    let c = api.group(&id).await;
    assert_eq!(c["dataplane_groups"][1]["state"], "terminated", "{c:#}");
    drop(api);

    // A control plane that stops drains and stops the nodes it runs.
    cp.signal("TERM");
    assert!(cp.wait_exit(Duration::from_secs(40)).success());
    assert!(
        http.get(&url2).send().await.is_err(),
        "a managed node outlived its control plane"
    );
}
