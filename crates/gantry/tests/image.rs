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

/// Removes what the test made, however it ends.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            let _ = docker(&args);
        }
    }
}

fn static_binary() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("GANTRY_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/x86_64-unknown-linux-gnu/release/gantry"));
    p.is_file().then_some(p)
}

/// GET `url` until it answers `want` (a status line's code), for up to `within`.
fn until(url: &str, want: &str, within: Duration) -> String {
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
            return code;
        }
        assert!(Instant::now() < deadline, "GET {url}: {code}, want {want}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn published(container: &str, port: &str) -> String {
    let out = must(&["port", container, port]);
    out.lines().next().unwrap_or_default().to_string()
}

#[test]
fn image_from_scratch_runs_quickstart_and_a_hybrid_pair() {
    let ci = gantry_testkit::ci();
    if !docker(&["info"]).0 {
        assert!(!ci, ".ci/run starts dockerd");
        eprintln!("skipped: no Docker daemon answers (start dockerd)");
        return;
    }
    let Some(bin) = static_binary() else {
        assert!(!ci, ".ci/run builds the static binary with dist/package.sh");
        eprintln!("skipped: no static binary (run dist/package.sh, or set GANTRY_STATIC_BIN)");
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cleanup = Cleanup(vec![vec!["rmi".into(), "-f".into(), image.clone()]]);
    let built = Command::new("bash")
        .arg(root.join("dist/image.sh"))
        .arg(&tag)
        .env("BIN", &bin)
        .output()
        .expect("run dist/image.sh");
    let out = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&built.stderr)
    );
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
