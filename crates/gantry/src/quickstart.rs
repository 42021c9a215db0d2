//! `gantry quickstart`: a local node with an example configuration, ready to explore.

use std::path::PathBuf;

use anyhow::Context;
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

/// Start a traditional node with SQLite under `prefix`, a local echo upstream, and an example
/// service and route to it.
pub fn run(prefix: Option<PathBuf>, admin_port: u16, proxy_port: u16) -> anyhow::Result<()> {
    let prefix = prefix.unwrap_or_else(|| std::env::temp_dir().join("gantry-quickstart"));
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    let loaded = Settings::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![
            ("prefix".into(), prefix.display().to_string()),
            ("admin_listen".into(), format!("127.0.0.1:{admin_port}")),
            ("proxy_listen".into(), format!("127.0.0.1:{proxy_port}")),
            ("role".into(), "traditional".into()),
            ("database".into(), "sqlite".into()),
        ],
    })?;
    let settings = loaded.settings;
    init_logging(&settings)?;
    let rt = runtime(2)?;
    rt.block_on(async {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?;
        tokio::spawn(gantry_proxy::echo::serve(echo));
        let store = gantry_store::Store::open(&crate::node::backend(&settings)).await?;
        {
            // Every run: the example points at this run's echo upstream.
            let text = EXAMPLE.replace("{echo}", &echo_addr.to_string());
            let value = gantry_model::declarative::parse_text(&text)?;
            let config = gantry_model::declarative::load(value, gantry_model::declarative::LoadOptions { now: gantry_model::unix_now() })?;
            store.import(&config).await?;
        }
        store.close().await;
        println!("gantry quickstart");
        println!("  prefix:     {}", prefix.display());
        println!("  database:   SQLite, {}", settings.prefixed("gantry.db").display());
        println!("  proxy:      http://127.0.0.1:{proxy_port}  (try: curl http://localhost:{proxy_port}/mock)");
        println!("  Admin API:  http://127.0.0.1:{admin_port}  (try: curl http://127.0.0.1:{admin_port}/services)");
        println!("  upstream:   echo server on http://{echo_addr}, behind service 'mock' and route 'mock' (/mock)");
        println!("  node:       traditional role (control plane and proxy in one process); hybrid CP/DP is not built yet");
        println!("Stop with Ctrl-C.");
        crate::node::run(settings, shutdown_signal()).await
    })
}
