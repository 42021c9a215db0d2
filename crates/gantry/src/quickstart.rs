//! `gantry quickstart`: a whole hybrid cluster on one machine. A control plane (SQLite) and a
//! data plane run as two child processes of this one, with generated cluster certificates, a
//! local echo upstream and an example `/mock` route.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_conf::{Settings, Sources};

use crate::node::{init_logging, runtime, shutdown_signal};

/// The example configuration; `{echo}` is the local echo upstream's address.
const EXAMPLE: &str = r#"_format_version: "3.0"
services:
- name: mock
  url: http://{echo}/anything
  routes:
  - name: mock
    paths: ["/mock"]
"#;

/// The ports the quickstart uses.
pub struct Ports {
    pub admin: u16,
    pub proxy: u16,
    pub cluster: u16,
    pub status: u16,
    pub telemetry: u16,
    pub console: u16,
}

/// Settings for a child node: only what is given here, none of the caller's `KONG_*`.
fn child(exe: &Path, prefix: &Path, role: &str, env: &[(&str, String)]) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("start").arg("-p").arg(prefix);
    for (k, _) in std::env::vars() {
        if k.starts_with("KONG_") || (k.starts_with("GANTRY_") && k != "GANTRY_LOG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KONG_ROLE", role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start the {role}"))
}

/// Wait until the data plane proxies `/mock`.
async fn wait_for_mock(proxy_port: u16, children: &mut [Child]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("a quickstart node exited ({status}); see the messages above");
            }
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port)).await {
            let _ = s
                .write_all(b"GET /mock HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the data plane did not serve /mock within 30s; see the messages above");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where installed versions live: `GANTRY_VERSIONS_DIR`; else, for a binary that install.sh
/// put in `<prefix>/lib/gantry/versions/<version>/gantry`, that `versions` directory; else
/// `<the binary's directory>/../lib/gantry/versions`.
pub(crate) fn versions_dir(exe: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("GANTRY_VERSIONS_DIR") {
        return PathBuf::from(d);
    }
    let parent = exe.parent().unwrap_or(Path::new("."));
    match parent.parent() {
        Some(v) if v.file_name().is_some_and(|n| n == "versions") => v.to_path_buf(),
        _ => parent.join("../lib/gantry/versions"),
    }
}

/// The binary of `version` (this one when none is asked for).
fn binary_of(version: Option<&str>) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .context("cannot find the gantry executable")?;
    let Some(v) = version else {
        return Ok(exe);
    };
    let dir = versions_dir(&exe);
    let bin = dir.join(v).join("gantry");
    if !bin.is_file() {
        bail!(
            "gantry {v} is not installed (no {}); install it with: install.sh --version {v}",
            bin.display()
        );
    }
    Ok(bin)
}

/// A port nothing listens on now, for the printed second data plane.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(8100)
}

pub fn run(prefix: Option<PathBuf>, ports: Ports, version: Option<String>) -> anyhow::Result<()> {
    let cp_exe = binary_of(None)?;
    let dp_exe = binary_of(version.as_deref())?;
    let prefix = prefix.unwrap_or_else(|| std::env::temp_dir().join("gantry-quickstart"));
    let (cp_dir, dp_dir) = (prefix.join("cp"), prefix.join("dp"));
    for d in [&prefix, &cp_dir, &dp_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let (cert, key) = (prefix.join("cluster.crt"), prefix.join("cluster.key"));
    if !cert.exists() || !key.exists() {
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        gantry_protocol::tls::gen_cert(&cert, &key, 3650)?;
    }
    // The quickstart's own log (the echo upstream, the import) goes under the prefix.
    let loaded = Settings::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![("prefix".into(), prefix.display().to_string())],
    })?;
    init_logging(&loaded.settings)?;
    let cp_settings = Settings::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![
            ("prefix".into(), cp_dir.display().to_string()),
            ("database".into(), "sqlite".into()),
        ],
    })?
    .settings;
    // The proxy's address: loopback, unless GANTRY_QUICKSTART_HOST says otherwise (the
    // container image sets 0.0.0.0, for a published port to reach it).
    let proxy_host = std::env::var("GANTRY_QUICKSTART_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let rt = runtime(2)?;
    rt.block_on(async {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?;
        tokio::spawn(gantry_proxy::echo::serve(echo));
        let store = gantry_store::Store::open(&crate::node::backend(&cp_settings)).await?;
        {
            // Every run: the example points at this run's echo upstream.
            let text = EXAMPLE.replace("{echo}", &echo_addr.to_string());
            let value = gantry_model::declarative::parse_text(&text)?;
            let config = gantry_model::declarative::load(
                value,
                gantry_model::declarative::LoadOptions {
                    now: gantry_model::unix_now(),
                    plugins: crate::node::plugin_registry(&cp_settings)?.catalog(),
                },
            )?;
            store.import(&config).await?;
        }
        // A token to log in to the console with, for this run (12 hours).
        let token = gantry_konnect::tokens::create(
            &store,
            "quickstart console",
            gantry_konnect::tokens::TokenKind::Personal,
            vec![gantry_konnect::tokens::Grant {
                control_plane: "*".into(),
                role: gantry_konnect::Role::Admin,
            }],
            Some(Duration::from_secs(12 * 3600)),
        )
        .await?
        .token;
        store.close().await;
        let certs = [
            ("KONG_CLUSTER_CERT", cert.display().to_string()),
            ("KONG_CLUSTER_CERT_KEY", key.display().to_string()),
        ];
        let cluster = format!("127.0.0.1:{}", ports.cluster);
        let mut cp_env = vec![
            ("KONG_DATABASE", "sqlite".to_string()),
            ("KONG_ADMIN_LISTEN", format!("127.0.0.1:{}", ports.admin)),
            ("KONG_ADMIN_GUI_LISTEN", format!("127.0.0.1:{}", ports.console)),
            ("KONG_CLUSTER_LISTEN", cluster.clone()),
            (
                "KONG_CLUSTER_TELEMETRY_LISTEN",
                format!("127.0.0.1:{}", ports.telemetry),
            ),
            ("KONG_STATUS_LISTEN", "off".into()),
        ];
        cp_env.extend(certs.iter().cloned());
        let mut dp_env = vec![
            ("KONG_DATABASE", "off".to_string()),
            ("KONG_PROXY_LISTEN", format!("{proxy_host}:{} reuseport", ports.proxy)),
            ("KONG_STATUS_LISTEN", format!("127.0.0.1:{}", ports.status)),
            ("KONG_CLUSTER_CONTROL_PLANE", cluster.clone()),
            (
                "KONG_CLUSTER_TELEMETRY_ENDPOINT",
                format!("127.0.0.1:{}", ports.telemetry),
            ),
            ("KONG_VITALS", "on".into()),
        ];
        dp_env.extend(certs.iter().cloned());
        let mut children = vec![child(&cp_exe, &cp_dir, "control_plane", &cp_env)?];
        children.push(child(&dp_exe, &dp_dir, "data_plane", &dp_env)?);
        let ready = wait_for_mock(ports.proxy, &mut children).await;
        if let Err(e) = ready {
            stop(&mut children);
            return Err(e);
        }
        println!("gantry quickstart: a control plane and a data plane are running");
        println!("  prefix:        {}", prefix.display());
        println!("  certificates:  {} and {} (shared mTLS)", cert.display(), key.display());
        println!("  control plane: Admin API http://127.0.0.1:{}  cluster 127.0.0.1:{}  SQLite {}", ports.admin, ports.cluster, cp_settings.prefixed("gantry.db").display());
        println!("  data plane:    proxy http://127.0.0.1:{}  status http://127.0.0.1:{}/status", ports.proxy, ports.status);
        println!("  console:       http://127.0.0.1:{}  (log in with the token {token}, valid 12 hours)", ports.console);
        println!("  upstream:      echo server http://{echo_addr}, behind service 'mock' and route 'mock'");
        println!();
        println!("  try:  curl http://localhost:{}/mock", ports.proxy);
        println!("        curl http://127.0.0.1:{}/clustering/data-planes", ports.admin);
        println!("        curl 'http://127.0.0.1:{}/analytics/requests?group_by=route,status'", ports.admin);
        println!();
        println!("  a second data plane{}:", version.as_deref().map(|v| format!(" (gantry {v})")).unwrap_or_default());
        println!("    KONG_ROLE=data_plane KONG_DATABASE=off KONG_CLUSTER_CONTROL_PLANE={cluster} \\");
        println!("    KONG_CLUSTER_TELEMETRY_ENDPOINT=127.0.0.1:{} KONG_VITALS=on \\", ports.telemetry);
        println!("    KONG_CLUSTER_DP_LABELS=quickstart:second \\");
        println!("    KONG_CLUSTER_CERT={} KONG_CLUSTER_CERT_KEY={} \\", cert.display(), key.display());
        println!("    KONG_PROXY_LISTEN=127.0.0.1:{} KONG_STATUS_LISTEN=off \\", free_port());
        println!("    {} start -p {}", dp_exe.display(), prefix.join("dp2").display());
        println!("Stop with Ctrl-C.");
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                _ = watch.tick() => {
                    if children.iter_mut().any(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                        stop(&mut children);
                        bail!("a quickstart node exited; see the messages above");
                    }
                }
            }
        }
        stop(&mut children);
        Ok(())
    })
}

/// SIGTERM each child and wait for it.
fn stop(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}
