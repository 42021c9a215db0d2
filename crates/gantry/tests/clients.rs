//! Real Kong clients against a node. Schemathesis drives the OSS Admin API spec
//! (`gateway-admin-oss.yaml`) and finds no server error. decK, Kong's declarative client:
//! Debian's `deck` 1.4 (which `.ci/run`
//! installs) validates, syncs, diffs, dumps and resets a configuration that uses every entity
//! type it knows, and sees no difference between what it sent and what Gantry returns.
//!
//! The file (`fixtures/deck-kong39.yaml`) was written from Kong 3.9.0's own schemas, not from
//! Gantry's answers: every entity states every field Kong 3.9.0 returns (decK 1.4 fills few
//! defaults and compares plugin configurations key by key), so a diff of zero says that Gantry
//! answers each of them field for field as Kong 3.9.0 does. decK 1.4's own file schema leaves
//! out what it does not know (Kong 3.x's `enabled` on services, `use_srv_name` and the
//! `*_query_arg` / `*_uri_capture` fields on upstreams, `cert_alt`, `cert_digest`, `hash_secret`,
//! `client_type`, `instance_name`) and refuses nulls outside plugin configurations; it drops
//! the same fields when it reads them back, so they are compared by the Admin API tests.
//!
//! What a newer decK (3.x, `_format_version: "3.0"`) does otherwise, and what Gantry does
//! for it:
//! - it reads `GET /schemas/{entity}` and `GET /schemas/plugins/{name}` and fills every
//!   default into the file before it diffs, so files need not state defaults: Gantry answers
//!   those schemas with Kong 3.9's fields and defaults (`crates/admin/tests/api.rs`), and no
//!   field Kong 3.9 lacks is returned (cors' `allow_origin_absent` was one);
//! - regex route paths carry Kong 3.0's `~` prefix (the declarative loader migrates 1.1 and
//!   2.1 files; the Admin API takes `~` paths as Kong 3.x does);
//! - it writes with `PUT /{entity}/{id}` (create or replace) rather than `POST`, and sends
//!   references as `{"id": ...}` objects: both are the Admin API's;
//! - it knows consumer groups (`/consumer_groups`, `consumer_groups[].consumers`, a plugin's
//!   `consumer_group`): Gantry serves them as Kong Enterprise does (issue 11), and its
//!   declarative loader takes decK's form (`crates/model/src/declarative.rs`);
//! - it reads rate-limiting's `config.redis.*` and the deprecated `config.redis_*` shorthands
//!   both, as Kong 3.9 returns them mirrored: the file here states both, and they diff to
//!   nothing.

use gantry_testkit::process::Node;
use serde_json::{json, Value};

const FILE: &str = include_str!("fixtures/deck-kong39.yaml");

/// The file with freshly made certificates in place of its markers.
fn file() -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["secure.example.test".to_string()]).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let indent = |pem: String| pem.trim_end().replace('\n', "\n    ");
    FILE.replace("{PEM1}", &indent(ck.cert.pem()))
        .replace("{PEM2}", &indent(ck.signing_key.serialize_pem()))
        .replace("{PEM3}", &indent(ca.pem()))
}

fn deck(admin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("deck")
        .args(args)
        .arg(format!("--kong-addr={admin}"))
        .output()
        .expect("deck runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deck {args:?}: {text}");
    text
}

/// decK's summary: `(created, updated, deleted)`.
fn summary(out: &str) -> (u32, u32, u32) {
    let n = |what: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(what))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {out}"))
    };
    (n("Created:"), n("Updated:"), n("Deleted:"))
}

async fn get(http: &reqwest::Client, node: &Node, path: &str) -> Value {
    let r = http
        .get(format!("{}{path}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn deck_round_trips() {
    if !gantry_testkit::have_tool("deck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let path = dir.path().join("kong.yaml");
    let text = file();
    std::fs::write(&path, &text).unwrap();
    let f = path.to_str().unwrap();
    let admin = node.admin.clone();

    let out = deck(&admin, &["ping"]);
    assert!(out.contains("3.9.0"), "{out}");
    deck(&admin, &["validate", "-s", f]);
    let (created, updated, deleted) = summary(&deck(&admin, &["sync", "-s", f]));
    assert_eq!((created, updated, deleted), (26, 0, 0));
    // What decK sent is what it reads back, field for field.
    assert_eq!(summary(&deck(&admin, &["diff", "-s", f])), (0, 0, 0));
    // ... as the Admin API shows it.
    let svc = get(&http, &node, "/services/svc-a").await;
    assert_eq!(
        (&svc["path"], &svc["retries"]),
        (&json!("/anything"), &json!(5))
    );
    let creds = get(&http, &node, "/consumers/alice/oauth2").await;
    assert_eq!(creds["data"][0]["client_id"], "alice-client-id");
    let targets = get(&http, &node, "/upstreams/backend-upstream/targets").await;
    assert_eq!(targets["data"].as_array().map(Vec::len), Some(2));
    let snis = get(&http, &node, "/snis/secure.example.test").await;
    assert!(snis["certificate"]["id"].is_string(), "{snis}");

    // A dump diffs to nothing, and syncs to nothing.
    let dump = dir.path().join("dump.yaml");
    deck(&admin, &["dump", "-o", dump.to_str().unwrap()]);
    let d = dump.to_str().unwrap();
    assert_eq!(summary(&deck(&admin, &["diff", "-s", d])), (0, 0, 0));
    assert_eq!(summary(&deck(&admin, &["sync", "-s", d])), (0, 0, 0));

    // A change synced is visible through the Admin API.
    let changed = text.replace("    - /a\n", "    - /a-changed\n");
    assert_ne!(changed, text);
    std::fs::write(&path, &changed).unwrap();
    assert_eq!(summary(&deck(&admin, &["diff", "-s", f])), (0, 1, 0));
    assert_eq!(summary(&deck(&admin, &["sync", "-s", f])), (0, 1, 0));
    let routes = get(&http, &node, "/routes").await;
    let paths: Vec<&Value> = routes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["paths"])
        .collect();
    assert!(paths.contains(&&json!(["/a-changed"])), "{routes}");
    assert_eq!(summary(&deck(&admin, &["diff", "-s", f])), (0, 0, 0));

    // reset empties the node.
    deck(&admin, &["reset", "-f"]);
    for coll in [
        "services",
        "routes",
        "plugins",
        "consumers",
        "upstreams",
        "targets",
        "certificates",
        "snis",
        "ca_certificates",
        "key-auths",
        "basic-auths",
        "hmac-auths",
        "jwts",
        "oauth2",
        "acls",
    ] {
        let list = get(&http, &node, &format!("/{coll}")).await;
        assert_eq!(list["data"], json!([]), "{coll} after reset");
    }
}

/// Schemathesis against Kong's OSS Admin API spec (every operation, examples, coverage,
/// fuzzing and stateful phases) with all its checks: no answer is a server error, and every
/// other finding is one of the spec's own errors, each named by a rule of
/// `fixtures/schemathesis_triage.py` (undocumented 201/400/404/405/409, nulls the spec calls
/// non-nullable, values Kong refuses that the spec allows, nulls and `{}` Kong takes, the
/// username in the path of a PUT, the wasm and slash-less paths); anything else fails.
#[tokio::test]
async fn schemathesis_finds_no_server_errors_in_the_admin_api() {
    if !gantry_testkit::have_tool("schemathesis") {
        return;
    }
    let spec = [
        std::env::var("GANTRY_KONG_SPECS").unwrap_or_default(),
        format!(
            "{}/../../../shared/reference/kong-specs",
            env!("CARGO_MANIFEST_DIR")
        ),
        "/work/shared/reference/kong-specs".to_string(),
    ]
    .into_iter()
    .map(|d| std::path::PathBuf::from(d).join("gateway-admin-oss.yaml"))
    .find(|p| p.is_file());
    let Some(spec) = spec else {
        assert!(
            !gantry_testkit::ci(),
            "Kong's Admin API spec is required in CI: set GANTRY_KONG_SPECS"
        );
        eprintln!(
            "skipped: Kong's Admin API spec is not beside the project (set GANTRY_KONG_SPECS)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let admin = node.admin.clone();
    let reports = dir.path().join("schemathesis");
    let report_dir = reports.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("schemathesis")
            .arg("run")
            .arg(&spec)
            .args(["--url", &admin])
            .args(["--checks", "all"])
            .args(["--max-examples", "5"])
            .args(["--seed", "20261206"])
            .args(["--report", "ndjson", "--report-dir"])
            .arg(&report_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Server error"), "{text}");
    assert!(!text.contains("ST100"), "{text}");
    // Every other finding is sorted: the spec's own errors, each named by a rule of the
    // triage script, or Gantry's, which fail the test (see fixtures/schemathesis_triage.py).
    let report = std::fs::read_dir(&reports)
        .unwrap_or_else(|e| panic!("no schemathesis report ({e}):\n{text}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .unwrap_or_else(|| panic!("no NDJSON report:\n{text}"));
    let triage = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/schemathesis_triage.py"
        ))
        .arg(&report)
        .output()
        .unwrap();
    let sorted = String::from_utf8_lossy(&triage.stdout);
    eprintln!("{sorted}");
    assert!(
        triage.status.success(),
        "findings that are not the spec's errors:\n{sorted}\n{}",
        String::from_utf8_lossy(&triage.stderr)
    );
}
