//! The Helm chart (`charts/gantry`), tested by rendering: no Kubernetes API server runs where
//! Gantry is developed. For each role: `helm lint --strict` and `helm template` with values
//! that use secrets, labels and PostgreSQL; the rendered objects are read back and checked, and
//! the container's environment is loaded as `gantry start` loads its settings. The generated
//! cluster certificate goes through Gantry's own mutual TLS, and is kept across upgrades
//! (`lookup`) against a stand-in API server on loopback. Without helm these tests skip, saying
//! so; in CI (`CI=true`) they fail instead.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use gantry_conf::{Database, Mtls, Role, Settings, Sources};
use serde_json::json;
use serde_yaml_ng::Value;
use x509_parser::extensions::GeneralName;

/// The oldest Kubernetes the chart accepts (a preStop `sleep` is GA in 1.32).
const KUBE: &str = "1.32.0";

/// Run helm on the chart (never on the user's cluster: KUBECONFIG is empty): whether it
/// succeeded, its standard output and its standard error.
fn helm(head: &[&str], sets: &[&str], tail: &[&str]) -> (bool, String, String) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/gantry");
    let mut cmd = Command::new("helm");
    cmd.args(head).arg(chart).env("KUBECONFIG", "/dev/null");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.args(tail).output().expect("run helm");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `--set` values, written `key=value` separated by white space.
fn values(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// `helm lint --strict` with these values: clean, no warning.
fn lint(sets: &[&str]) {
    let (ok, out, err) = helm(&["lint"], sets, &["--strict", "--kube-version", KUBE]);
    let clean = !out.contains("[WARNING]") && !out.contains("[ERROR]");
    let ok = ok && clean && out.contains("0 chart(s) failed");
    assert!(ok, "helm lint {sets:?}:\n{out}{err}");
}

/// `helm template` of `release` in namespace `gw`: the objects rendered, or helm's error.
fn template(release: &str, sets: &[&str], tail: &[&str]) -> Result<Vec<Value>, String> {
    let (ok, out, err) = helm(&["template", release, "--namespace", "gw"], sets, tail);
    if !ok {
        return Err(err);
    }
    let content = |d: &str| d.lines().any(|l| !l.is_empty() && !l.starts_with('#'));
    let docs = out.split("\n---\n").filter(|d| content(d));
    Ok(docs
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}:\n{d}")))
        .collect())
}

fn render(release: &str, sets: &[&str]) -> Vec<Value> {
    let docs = template(release, sets, &["--kube-version", KUBE]);
    docs.unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"))
}

/// The value at `path`: keys and sequence indexes separated by `/` (Null where absent).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('/').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn text<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).as_str()
}

fn num(v: &Value, path: &str) -> Option<u64> {
    at(v, path).as_u64()
}

/// The entry of the sequence `list` whose `key` is `value`.
fn named<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    let list = list.as_sequence()?;
    list.iter().find(|e| e[key].as_str() == Some(value))
}

fn object<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind))
}

fn pod(docs: &[Value]) -> &Value {
    let deployment = object(docs, "Deployment").expect("a Deployment");
    at(deployment, "spec/template/spec")
}

/// The container's variable `name`, set once at most.
fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    let all = c["env"].as_sequence().expect("env");
    let same = |e: &&Value| e["name"].as_str() == Some(name);
    let count = all.iter().filter(same).count();
    assert!(count <= 1, "{name} is set {count} times");
    named(&c["env"], "name", name)
}

/// The container's variables hold these values (`NAME=value`, separated by white space).
fn vars(c: &Value, expected: &str) {
    let pairs = expected
        .split_whitespace()
        .filter_map(|v| v.split_once('='));
    for (name, value) in pairs {
        let found = env(c, name).and_then(|e| e["value"].as_str());
        assert_eq!(found, Some(value), "{name}");
    }
}

/// The Secret and key a variable is read from, as `secret/key`.
fn secret_ref(c: &Value, name: &str) -> String {
    let from = &env(c, name).expect(name)["valueFrom"]["secretKeyRef"];
    let part = |k: &str| from[k].as_str().expect(k).to_string();
    format!("{}/{}", part("name"), part("key"))
}

/// A port number by name, in a container's list or the Service's.
fn port(docs: &[Value], name: &str) -> Option<u64> {
    let service = object(docs, "Service").expect("a Service");
    let list = match name {
        "status" => &pod(docs)["containers"][0]["ports"],
        _ => &service["spec"]["ports"],
    };
    let p = named(list, "name", name)?;
    p["containerPort"].as_u64().or(p["port"].as_u64())
}

/// The container's environment loaded as `gantry start` loads it: no unknown setting, no bad
/// value. Cluster files are read from `files` instead of the Secret's mount; a variable taken
/// from a Secret reads `from-a-secret`.
fn settings(c: &Value, files: &Path) -> Settings {
    let files = files.display().to_string();
    let path = |v: &str| v.replace("/etc/gantry/cluster", &files);
    let vars = c["env"].as_sequence().expect("env").iter().map(|e| {
        let value = e["value"].as_str().map(&path);
        let name = e["name"].as_str().expect("a name").to_string();
        (name, value.unwrap_or_else(|| "from-a-secret".into()))
    });
    let env = vars.collect();
    let sources = Sources {
        env,
        ..Sources::default()
    };
    let loaded = Settings::load(&sources).expect("the chart's environment is valid settings");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.settings
}

/// What every role renders alike: the drain, the prefix, the status port, security, the PDB.
fn common(docs: &[Value], ready_path: &str) {
    let spec = pod(docs);
    let c = &spec["containers"][0];
    assert_eq!(text(c, "args/0"), Some("start"));
    assert_eq!(num(c, "lifecycle/preStop/sleep/seconds"), Some(15));
    assert_eq!(num(spec, "terminationGracePeriodSeconds"), Some(60));
    assert_eq!(port(docs, "status"), Some(8100));
    assert_eq!(text(c, "readinessProbe/httpGet/path"), Some(ready_path));
    assert_eq!(text(c, "readinessProbe/httpGet/port"), Some("status"));
    assert_eq!(num(c, "startupProbe/failureThreshold"), Some(60));
    let read_only = at(c, "securityContext/readOnlyRootFilesystem");
    assert_eq!(read_only.as_bool(), Some(true));
    let non_root = at(spec, "securityContext/runAsNonRoot");
    assert_eq!(non_root.as_bool(), Some(true));
    vars(
        c,
        "KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT=30s KONG_STATUS_LISTEN=0.0.0.0:8100 \
         KONG_PREFIX=/var/run/gantry",
    );
    // The prefix is an emptyDir, mounted where KONG_PREFIX points.
    let mount = named(&c["volumeMounts"], "mountPath", "/var/run/gantry").expect("mounted");
    let volume = named(&spec["volumes"], "name", text(mount, "name").expect("name"));
    assert!(volume.expect("the prefix's volume")["emptyDir"].is_mapping());
    // The PDB and the Service select the Deployment's pods.
    let deployment = object(docs, "Deployment").expect("Deployment");
    let selector = at(deployment, "spec/selector/matchLabels");
    let pdb = object(docs, "PodDisruptionBudget").expect("a PodDisruptionBudget");
    assert_eq!(num(pdb, "spec/maxUnavailable"), Some(1));
    assert_eq!(at(pdb, "spec/selector/matchLabels"), selector);
    let service = object(docs, "Service").expect("a Service");
    assert_eq!(at(service, "spec/selector"), selector);
}

/// The Secret the cluster certificate volume reads, mounted where KONG_CLUSTER_CERT points.
fn cert_volume(docs: &[Value]) -> Option<&str> {
    let volume = named(&pod(docs)["volumes"], "name", "cluster-cert")?;
    let mounts = &pod(docs)["containers"][0]["volumeMounts"];
    let mount = named(mounts, "name", "cluster-cert").expect("cert mount");
    assert_eq!(text(mount, "mountPath"), Some("/etc/gantry/cluster"));
    text(volume, "secret/secretName")
}

#[test]
fn data_plane() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let sets = values(
        "role=data_plane cluster.existingSecret=cp-certs \
         cluster.controlPlane=cp-gantry.gw.svc:8005 cluster.serverName=cp.gantry.test \
         cluster.telemetryEndpoint=cp-gantry.gw.svc:8006 \
         cluster.telemetryServerName=tp.gantry.test \
         cluster.dpLabels.region=eu cluster.dpLabels.tier=gold",
    );
    lint(&sets);
    let docs = render("dp", &sets);
    common(&docs, "/status/ready");
    let c = &pod(&docs)["containers"][0];
    assert_eq!(text(c, "livenessProbe/httpGet/path"), Some("/status"));
    vars(
        c,
        "KONG_ROLE=data_plane KONG_DATABASE=off KONG_ADMIN_LISTEN=off \
         KONG_CLUSTER_CONTROL_PLANE=cp-gantry.gw.svc:8005 \
         KONG_CLUSTER_SERVER_NAME=cp.gantry.test \
         KONG_CLUSTER_TELEMETRY_ENDPOINT=cp-gantry.gw.svc:8006 \
         KONG_CLUSTER_TELEMETRY_SERVER_NAME=tp.gantry.test \
         KONG_CLUSTER_DP_LABELS=region:eu,tier:gold \
         KONG_CLUSTER_CERT=/etc/gantry/cluster/tls.crt \
         KONG_CLUSTER_CERT_KEY=/etc/gantry/cluster/tls.key KONG_VITALS=on",
    );
    assert!(env(c, "KONG_PG_HOST").is_none());
    let s = settings(c, Path::new("/nowhere"));
    assert_eq!((s.role, s.database), (Role::DataPlane, Database::Off));
    assert_eq!(s.cluster.control_planes, ["cp-gantry.gw.svc:8005"]);
    let labels = s.cluster.labels.iter().map(|(k, v)| format!("{k}:{v}"));
    assert_eq!(labels.collect::<Vec<_>>(), ["region:eu", "tier:gold"]);
    assert_eq!(s.cluster.telemetry_server_name, "tp.gantry.test");
    assert!(s.cluster.analytics);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    // The given Secret is mounted; none is rendered.
    assert_eq!(cert_volume(&docs), Some("cp-certs"));
    assert!(object(&docs, "Secret").is_none());
    // The proxy is the Service.
    assert_eq!(port(&docs, "proxy"), Some(80));
    assert_eq!(port(&docs, "proxy-tls"), Some(443));
    assert_eq!(port(&docs, "cluster"), None);
    // The HPA scales the Deployment on CPU; the Deployment has no replicas of its own.
    let hpa = object(&docs, "HorizontalPodAutoscaler").expect("an HPA for a data plane");
    assert_eq!(text(hpa, "apiVersion"), Some("autoscaling/v2"));
    assert_eq!(text(hpa, "spec/scaleTargetRef/name"), Some("dp-gantry"));
    assert_eq!(text(hpa, "spec/metrics/0/resource/name"), Some("cpu"));
    let target = num(hpa, "spec/metrics/0/resource/target/averageUtilization");
    assert_eq!(target, Some(70));
    let deployment = object(&docs, "Deployment").expect("Deployment");
    assert!(at(deployment, "spec/replicas").is_null());
    // Autoscaling off: no HPA, replicas.
    let off = [sets, values("autoscaling.enabled=false replicaCount=3")].concat();
    let off = render("dp", &off);
    assert!(object(&off, "HorizontalPodAutoscaler").is_none());
    let deployment = object(&off, "Deployment").expect("Deployment");
    assert_eq!(num(deployment, "spec/replicas"), Some(3));
}

#[test]
fn control_plane_with_postgres_and_a_generated_certificate() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let sets = values(
        "role=control_plane postgres.host=pg.db.svc postgres.port=5433 postgres.user=gantry \
         postgres.database=cp_eu postgres.existingSecret=pg-auth postgres.passwordKey=pw \
         cluster.serverName=cp.gantry.test admin.expose=true",
    );
    lint(&sets);
    let docs = render("cp", &sets);
    // A control plane's status listener has /status, not /status/ready.
    common(&docs, "/status");
    let c = &pod(&docs)["containers"][0];
    assert!(at(c, "livenessProbe/tcpSocket").is_mapping());
    vars(
        c,
        "KONG_ROLE=control_plane KONG_DATABASE=postgres KONG_PG_HOST=pg.db.svc \
         KONG_PG_PORT=5433 KONG_PG_USER=gantry KONG_PG_DATABASE=cp_eu \
         KONG_ADMIN_LISTEN=0.0.0.0:8001 KONG_CLUSTER_LISTEN=0.0.0.0:8005 \
         KONG_CLUSTER_TELEMETRY_LISTEN=0.0.0.0:8006",
    );
    let password = env(c, "KONG_PG_PASSWORD").expect("KONG_PG_PASSWORD");
    assert!(password["value"].is_null(), "never written: {password:?}");
    assert_eq!(secret_ref(c, "KONG_PG_PASSWORD"), "pg-auth/pw");
    assert!(object(&docs, "HorizontalPodAutoscaler").is_none());
    assert_eq!(port(&docs, "admin"), Some(8001));
    assert_eq!(port(&docs, "cluster"), Some(8005));
    assert_eq!(port(&docs, "telemetry"), Some(8006));
    assert_eq!(port(&docs, "proxy"), None);

    // The generated certificate: a TLS Secret the volume reads, named for the server name and
    // the Service.
    let secret = object(&docs, "Secret").expect("a generated Secret");
    let name = text(secret, "metadata/name");
    assert_eq!(name, Some("cp-gantry-cluster-cert"));
    assert_eq!(text(secret, "type"), Some("kubernetes.io/tls"));
    assert_eq!(cert_volume(&docs), Some("cp-gantry-cluster-cert"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |k: &str| b64.decode(text(secret, k).expect(k)).expect("base64");
    let (crt, tls_key) = (decode("data/tls.crt"), decode("data/tls.key"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&crt).expect("PEM");
    let x = pem.parse_x509().expect("a certificate");
    let cn = x.subject().iter_common_name().next();
    assert_eq!(cn.and_then(|n| n.as_str().ok()), Some("cp.gantry.test"));
    let san = x.subject_alternative_name().expect("SAN").expect("SAN");
    let names = &san.value.general_names;
    let service = |n: &GeneralName| matches!(n, GeneralName::DNSName("cp-gantry.gw.svc"));
    assert!(names.iter().any(service), "{names:?}");

    // The environment loads as Gantry's settings; with the Secret's files, the control plane
    // and a data plane holding the same Secret complete Gantry's mutual TLS.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), crt).expect("write");
    std::fs::write(dir.path().join("tls.key"), tls_key).expect("write");
    let s = settings(c, dir.path());
    assert_eq!(s.role, Role::ControlPlane);
    assert_eq!(s.database, Database::Postgres);
    assert_eq!((s.pg.host.as_str(), s.pg.port), ("pg.db.svc", 5433));
    assert_eq!(s.pg.password.as_deref(), Some("from-a-secret"));
    assert!(s.proxy_listen.is_empty());
    assert_eq!(s.cluster.mtls, Mtls::Shared);
    handshake(&s.cluster);

    // With an existing Secret: none rendered, the volume reads it.
    let given = [sets, values("cluster.existingSecret=cp-certs")].concat();
    let given = render("cp", &given);
    assert!(object(&given, "Secret").is_none());
    assert_eq!(cert_volume(&given), Some("cp-certs"));
}

/// A TLS handshake between a control plane and a data plane with `cluster`'s certificate and
/// key, each side set up as Gantry sets up its cluster link.
fn handshake(cluster: &gantry_conf::ClusterSettings) {
    let tls = gantry_protocol::tls::server_config(cluster).expect("control plane TLS");
    let mut cp = rustls::ServerConnection::new(tls).expect("server");
    let tls = gantry_protocol::tls::client_config(cluster).expect("data plane TLS");
    let name = gantry_protocol::tls::server_name(cluster).expect("server name");
    let mut dp = rustls::ClientConnection::new(tls, name).expect("client");
    let (mut a, mut b) = UnixStream::pair().expect("socket pair");
    let server = std::thread::spawn(move || {
        let done = cp.complete_io(&mut b);
        done.map(|_| cp.peer_certificates().is_some_and(|p| !p.is_empty()))
    });
    dp.complete_io(&mut a)
        .expect("the data plane accepts the control plane");
    let seen = server.join().expect("control plane thread");
    assert!(seen.expect("the control plane accepts the data plane"));
}

#[test]
fn traditional_node() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let sets = values(
        "role=traditional postgres.host=pg.db.svc postgres.existingSecret=pg-auth \
         extraEnv[0].name=KONG_LOG_LEVEL extraEnv[0].value=debug",
    );
    lint(&sets);
    let docs = render("edge", &sets);
    common(&docs, "/status/ready");
    let c = &pod(&docs)["containers"][0];
    // extraEnv replaces the chart's KONG_LOG_LEVEL; the Admin API stays on loopback.
    vars(
        c,
        "KONG_ROLE=traditional KONG_DATABASE=postgres KONG_PG_HOST=pg.db.svc \
         KONG_LOG_LEVEL=debug KONG_ADMIN_LISTEN=127.0.0.1:8001",
    );
    assert_eq!(secret_ref(c, "KONG_PG_PASSWORD"), "pg-auth/password");
    assert!(env(c, "KONG_CLUSTER_CERT").is_none() && cert_volume(&docs).is_none());
    assert!(object(&docs, "Secret").is_none());
    assert!(object(&docs, "HorizontalPodAutoscaler").is_none());
    let s = settings(c, Path::new("/nowhere"));
    assert_eq!(s.role, Role::Traditional);
    assert_eq!(s.database, Database::Postgres);
    assert_eq!(s.log_level, "debug");
    let proxy = s.proxy_listen.iter().map(|l| (l.addr.as_str(), l.ssl));
    let proxy: Vec<_> = proxy.collect();
    assert_eq!(proxy, [("0.0.0.0:8000", false), ("0.0.0.0:8443", true)]);
    assert_eq!(port(&docs, "proxy"), Some(80));
    assert_eq!(port(&docs, "admin"), None);
}

#[test]
fn values_that_cannot_work_stop_rendering() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let cases = [
        r#"role=gateway => role "gateway" is not one of control_plane, data_plane, traditional"#,
        "role=data_plane cluster.controlPlane=cp:8005 => cluster.existingSecret is required",
        "role=control_plane => postgres.host is required for a control_plane",
        "postgres.host=pg terminationGracePeriodSeconds=40 => terminationGracePeriodSeconds 40",
    ];
    for case in cases {
        let (sets, message) = case.split_once(" => ").expect("values => message");
        let err = template("bad", &values(sets), &["--kube-version", KUBE]);
        let err = err.expect_err("rendering must fail");
        assert!(err.contains(message), "{sets}: {err}");
    }
}

/// A stand-in Kubernetes API server on loopback, enough for `helm template --dry-run=server`:
/// discovery of the chart's kinds, the Secret `name` (`secret`), 404 for anything else.
fn api_server(name: &str, secret: serde_json::Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let r = |name: &str, kind: &str| json!({"name": name, "kind": kind, "namespaced": true, "verbs": ["get", "list", "create"]});
    let list = |gv: &str, res: serde_json::Value| json!({"kind": "APIResourceList", "groupVersion": gv, "resources": [res]});
    let group = |gv: &str| {
        let (name, v) = gv.split_once('/').expect("group/version");
        let version = json!({"groupVersion": gv, "version": v});
        json!({"name": name, "versions": [version], "preferredVersion": version})
    };
    let groups = ["apps/v1", "policy/v1", "autoscaling/v2"].map(group);
    let mut routes = json!({
        "/version": {"major": "1", "minor": "35", "gitVersion": "v1.35.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups},
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1",
            "resources": [r("secrets", "Secret"), r("services", "Service")]},
        "/apis/apps/v1": list("apps/v1", r("deployments", "Deployment")),
        "/apis/policy/v1": list("policy/v1", r("poddisruptionbudgets", "PodDisruptionBudget")),
        "/apis/autoscaling/v2": list("autoscaling/v2", r("horizontalpodautoscalers", "HorizontalPodAutoscaler")),
    });
    routes[format!("/api/v1/namespaces/gw/secrets/{name}")] = secret;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (mut head, mut chunk) = (Vec::new(), [0u8; 4096]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split_whitespace().nth(1).unwrap_or("/");
            let found = routes.get(target.split('?').next().unwrap_or(target));
            let not_found = json!({"kind": "Status", "code": 404});
            let status = ["404 Not Found", "200 OK"][usize::from(found.is_some())];
            let body = found.unwrap_or(&not_found).to_string();
            let (len, kind) = (body.len(), "Content-Type: application/json");
            let head = format!("HTTP/1.1 {status}\r\n{kind}\r\nContent-Length: {len}\r\n");
            let _ = stream.write_all(format!("{head}Connection: close\r\n\r\n{body}").as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn generated_certificate_is_kept_across_upgrades() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let sets = values("role=control_plane postgres.host=pg");
    let pair = |docs: &[Value]| {
        let secret = object(docs, "Secret").expect("the cluster certificate Secret");
        let data = |k: &str| text(secret, k).expect("data").to_string();
        (data("data/tls.crt"), data("data/tls.key"))
    };
    // helm template cannot look up: each rendering makes a new certificate.
    let first = pair(&render("cp", &sets));
    assert_ne!(first, pair(&render("cp", &sets)));
    // On an upgrade the release's Secret exists: what it holds is rendered again.
    let name = "cp-gantry-cluster-cert";
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "gw",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "cp", "meta.helm.sh/release-namespace": "gw"}},
        "data": {"tls.crt": first.0, "tls.key": first.1},
    });
    let server = api_server(name, secret);
    let flags = format!("--dry-run=server --disable-openapi-validation --kube-apiserver {server}");
    let docs = template("cp", &sets, &values(&flags));
    assert_eq!(pair(&docs.unwrap_or_else(|e| panic!("{e}"))), first);
}

/// The Helm values the console's New Data Plane Node wizard gives (Kubernetes) render a data
/// plane whose settings load and point at its control plane, with the certificate, key and
/// trust of the Secret its install step makes.
#[test]
fn the_console_wizards_values_render_a_data_plane() {
    if !gantry_testkit::have_tool("helm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cp_cert, cp_key) =
        gantry_protocol::tls::self_signed("cp.gantry.test", 86_400).expect("a certificate");
    let (dp_cert, dp_key) =
        gantry_protocol::tls::self_signed("kong_clustering", 86_400).expect("a certificate");
    let cp = Settings::load(&Sources {
        env: vec![
            ("KONG_ROLE".into(), "control_plane".into()),
            ("KONG_CLUSTER_CERT".into(), cp_cert.clone()),
            ("KONG_CLUSTER_CERT_KEY".into(), cp_key),
        ],
        ..Sources::default()
    })
    .expect("control plane settings")
    .settings;
    let at = |p: u16| std::net::SocketAddr::from(([10, 0, 0, 5], p));
    let fleet = gantry_fleet::FleetSettings::from_settings(&cp, at(8005), at(8006)).unwrap();
    let wizard = gantry_console::wizard::Wizard {
        fleet,
        cluster_host: "cp-gantry.gw.svc".into(),
        versions_dir: dir.path().to_path_buf(),
        version: gantry_model::GANTRY_VERSION.into(),
    };
    let env = wizard.settings("cp-id", &dp_cert, &dp_key, "env:test");
    let r = gantry_console::wizard::render(
        gantry_console::wizard::Platform::Kubernetes,
        gantry_model::GANTRY_VERSION,
        &env,
    );
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, &r.command).unwrap();
    let docs = template(
        "dp",
        &[],
        &["-f", file.to_str().unwrap(), "--kube-version", KUBE],
    )
    .unwrap_or_else(|e| panic!("helm template with the wizard's values: {e}\n{}", r.command));
    let c = &pod(&docs)["containers"][0];
    vars(
        c,
        "KONG_ROLE=data_plane KONG_DATABASE=off KONG_CLUSTER_MTLS=pki \
         KONG_CLUSTER_CONTROL_PLANE=cp-gantry.gw.svc:8005 \
         KONG_CLUSTER_TELEMETRY_ENDPOINT=cp-gantry.gw.svc:8006 \
         KONG_CLUSTER_SERVER_NAME=cp.gantry.test KONG_CLUSTER_TELEMETRY_SERVER_NAME=cp.gantry.test \
         KONG_CLUSTER_DP_LABELS=env:test KONG_KONNECT_MODE=on KONG_VITALS=on \
         KONG_CLUSTER_CA_CERT=/etc/gantry/cluster/ca.crt",
    );
    assert_eq!(cert_volume(&docs), Some("gantry-data-plane-cluster"));
    // The Secret the install step makes, as the files it mounts.
    let ca = r
        .install
        .split_once("<<'EOF'\n")
        .and_then(|(_, rest)| rest.split_once("\nEOF\n"))
        .map(|(pem, _)| pem)
        .expect("the install step writes ca.crt");
    assert_eq!(
        ca.trim(),
        cp_cert.trim(),
        "the node trusts the control plane's certificate"
    );
    let files = dir.path().join("secret");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("tls.crt"), &dp_cert).unwrap();
    std::fs::write(files.join("tls.key"), &dp_key).unwrap();
    std::fs::write(files.join("ca.crt"), ca).unwrap();
    let s = settings(c, &files);
    assert_eq!((s.role, s.database), (Role::DataPlane, Database::Off));
    assert_eq!(s.cluster.control_planes, ["cp-gantry.gw.svc:8005"]);
    gantry_protocol::tls::client_config(&s.cluster).expect("the data plane's TLS settings hold");
}
