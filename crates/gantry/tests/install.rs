//! The install channel: `dist/package.sh` packages a release (tarball and SHA-256) and
//! `install.sh --version X` installs it from a directory or from a URL served on loopback,
//! verifying the checksum, refusing a mismatch without changing anything, and changing
//! nothing when the version is there already.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Package release `version` into `releases`. The binary is a stand-in that answers
/// `version` as gantry does: the test binary of gantry is hundreds of megabytes unstripped,
/// and what is tested here is the packaging and the installing, not the binary.
fn package(version: &str, releases: &Path) {
    let stand_in = releases.join(format!("stand-in-{version}"));
    std::fs::write(
        &stand_in,
        format!("#!/bin/sh\necho \"gantry {version} (Kong Admin API 3.9.0)\"\n"),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(root().join("dist/package.sh"))
        .arg(version)
        .env("BIN", &stand_in)
        .env("OUT", releases)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "package.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(releases
        .join(format!("gantry-{version}-x86_64-linux.tar.gz.sha256"))
        .is_file());
}

fn install(args: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(root().join("install.sh"))
        .args(args)
        .env_remove("GANTRY_RELEASES")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Serve the files of `dir` over HTTP on loopback (GET only, 404 otherwise).
async fn serve(dir: PathBuf) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let path = dir.join(req.uri().path().trim_start_matches('/'));
                        async move {
                            let mut r = match std::fs::read(&path) {
                                Ok(b) if !req.uri().path().contains("..") => {
                                    hyper::Response::new(Full::new(Bytes::from(b)))
                                }
                                _ => hyper::Response::new(Full::new(Bytes::new())),
                            };
                            if !path.is_file() {
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn install_sh_installs_verified_versions() {
    for tool in ["tar", "sha256sum", "curl"] {
        if !gantry_testkit::have_tool(tool) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let releases = dir.path().join("releases");
    std::fs::create_dir_all(&releases).unwrap();
    // Distinct versions: the names are per test, so that parallel runs share no file.
    let (v1, v2, v3) = ("9.1.0-test", "9.2.0-test", "9.3.0-test");
    for v in [v1, v2, v3] {
        package(v, &releases);
    }
    let prefix = dir.path().join("prefix");
    let p = prefix.to_str().unwrap();
    let from = releases.to_str().unwrap();

    // From a directory.
    let (ok, text) = install(&["--version", v1, "--prefix", p, "--from", from]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("installed gantry {v1}")), "{text}");
    assert!(text.contains("verified"), "{text}");
    let bin = prefix.join("bin/gantry");
    let run = Command::new(&bin).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).starts_with(&format!("gantry {v1} ")));
    // Again: nothing to do.
    let (ok, text) = install(&["--version", v1, "--prefix", p, "--from", from]);
    assert!(ok, "{text}");
    assert!(text.contains("already installed"), "{text}");

    // From a URL on loopback: the new version becomes bin/gantry, the old one stays.
    let url = serve(releases.clone()).await;
    let (ok, text) = tokio::task::spawn_blocking({
        let (p, url) = (p.to_string(), url.clone());
        move || install(&["--version", v2, "--prefix", &p, "--from", &url])
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_link(&bin).unwrap(),
        prefix.join(format!("lib/gantry/versions/{v2}/gantry"))
    );
    assert!(prefix
        .join(format!("lib/gantry/versions/{v1}/gantry"))
        .is_file());

    // A tarball that is not what its checksum says: refused, nothing changed.
    let tarball = releases.join(format!("gantry-{v3}-x86_64-linux.tar.gz"));
    let mut bytes = std::fs::read(&tarball).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tarball, bytes).unwrap();
    let (ok, text) = tokio::task::spawn_blocking({
        let (p, url) = (p.to_string(), url.clone());
        move || install(&["--version", v3, "--prefix", &p, "--from", &url])
    })
    .await
    .unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains("nothing was installed"), "{text}");
    assert!(!prefix.join(format!("lib/gantry/versions/{v3}")).exists());
    assert_eq!(
        std::fs::read_link(&bin).unwrap(),
        prefix.join(format!("lib/gantry/versions/{v2}/gantry"))
    );

    // A version the location does not have, and a missing --version, each named.
    let (ok, text) = install(&["--version", "0.0.0-none", "--prefix", p, "--from", from]);
    assert!(
        !ok && text.contains("no gantry-0.0.0-none-x86_64-linux.tar.gz"),
        "{text}"
    );
    let (ok, text) = install(&["--prefix", p, "--from", from]);
    assert!(!ok && text.contains("--version is required"), "{text}");
}
