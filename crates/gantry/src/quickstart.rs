//! `gantry quickstart`: a local node with an example configuration, ready to explore.

use std::path::PathBuf;

use anyhow::Context;
use gantry_conf::{Settings, Sources};

use crate::node::{init_logging, runtime, shutdown_signal};

const EXAMPLE: &str = r#"_format_version: "3.0"
services:
- name: mock
  url: http://127.0.0.1:8080/anything
  routes:
  - name: mock
    paths: ["/mock"]
"#;

/// Start a traditional node with SQLite under `prefix` and an example service and route.
pub fn run(prefix: Option<PathBuf>, admin_port: u16) -> anyhow::Result<()> {
    let prefix = prefix.unwrap_or_else(|| std::env::temp_dir().join("gantry-quickstart"));
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    let loaded = Settings::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![
            ("prefix".into(), prefix.display().to_string()),
            ("admin_listen".into(), format!("127.0.0.1:{admin_port}")),
            ("role".into(), "traditional".into()),
            ("database".into(), "sqlite".into()),
        ],
    })?;
    let settings = loaded.settings;
    init_logging(&settings)?;
    let rt = runtime(2)?;
    rt.block_on(async {
        let store = gantry_store::Store::open(&crate::node::backend(&settings)).await?;
        if store.count("services").await? == 0 {
            let value = gantry_model::declarative::parse_text(EXAMPLE)?;
            let config = gantry_model::declarative::load(value, gantry_model::declarative::LoadOptions { now: crate::config_cmd::now() })?;
            store.import(&config).await?;
        }
        store.close().await;
        println!("gantry quickstart");
        println!("  prefix:     {}", prefix.display());
        println!("  database:   SQLite, {}", settings.prefixed("gantry.db").display());
        println!("  Admin API:  http://127.0.0.1:{admin_port}  (try: curl http://127.0.0.1:{admin_port}/services)");
        println!("  example:    service 'mock' with route 'mock' on /mock");
        println!("  note:       this build runs the control plane only; proxying and data planes are not built yet");
        println!("Stop with Ctrl-C.");
        crate::node::run(settings, shutdown_signal()).await
    })
}
