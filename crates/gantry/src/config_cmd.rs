//! `gantry config parse | db_import | db_export`.

use std::path::Path;

use anyhow::{bail, Context};
use gantry_model::declarative::{self, DeclarativeError, LoadOptions};
use gantry_model::hash::hash_config;
use gantry_model::plugins::Catalog;
use gantry_model::Config;
use gantry_store::Store;

use crate::node::{backend, load_settings, plugin_registry, runtime};
use crate::NodeOpts;

fn report(file: &Path, e: &DeclarativeError) -> anyhow::Error {
    let mut msg = format!("{} is invalid ({} errors):", file.display(), e.errors.len());
    for line in e.flattened() {
        msg.push_str("\n  - ");
        msg.push_str(&line);
    }
    anyhow::anyhow!(msg)
}

/// Read and validate a declarative file.
pub fn load_file(file: &Path, plugins: &Catalog) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value = declarative::parse_text(&text).map_err(|e| report(file, &e))?;
    declarative::load(
        value,
        LoadOptions {
            now: gantry_model::unix_now(),
            plugins: plugins.clone(),
        },
    )
    .map_err(|e| report(file, &e))
}

fn summary(config: &Config) -> String {
    declarative::counts(config)
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `gantry config parse FILE`
pub fn parse(file: &Path, opts: &NodeOpts) -> anyhow::Result<()> {
    // The plugins a file may configure: those of the node's `plugins` setting.
    let config = load_file(file, &plugin_registry(&load_settings(opts)?)?.catalog())?;
    println!(
        "parse successful: {}",
        if config.is_empty() {
            "empty configuration".into()
        } else {
            summary(&config)
        }
    );
    println!("configuration hash: {}", hash_config(&config).config);
    Ok(())
}

pub async fn open(settings: &gantry_conf::Settings) -> anyhow::Result<Store> {
    if settings.database == gantry_conf::Database::Off {
        bail!("database = off: there is no store to import into or export from");
    }
    std::fs::create_dir_all(&settings.prefix)
        .with_context(|| format!("cannot create prefix {}", settings.prefix.display()))?;
    Ok(Store::open(&backend(settings)).await?)
}

/// The store's handle on a control plane named by id or name (the default one when none is).
async fn scoped(store: Store, control_plane: Option<&str>) -> anyhow::Result<Store> {
    let Some(which) = control_plane else {
        return Ok(store);
    };
    let row = crate::manage::find_cp(&store, which)
        .await
        .context("--control-plane")?;
    Ok(store.scoped(row.key))
}

/// `gantry config db_import FILE`
pub fn db_import(file: &Path, control_plane: Option<&str>, opts: &NodeOpts) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    let config = load_file(file, &plugin_registry(&settings)?.catalog())?;
    runtime(2)?.block_on(async {
        let store = scoped(open(&settings).await?, control_plane).await?;
        let version = store
            .import(&config)
            .await
            .context("import refused, nothing was written")?;
        let (all, _) = store.export().await?;
        store.close().await;
        println!(
            "imported {} into the store (config version {version})",
            summary(&config)
        );
        println!("configuration hash: {}", hash_config(&all).config);
        Ok(())
    })
}

/// `gantry config db_export [FILE]`
pub fn db_export(
    file: Option<&Path>,
    control_plane: Option<&str>,
    opts: &NodeOpts,
) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = scoped(open(&settings).await?, control_plane).await?;
        let (config, version) = store.export().await?;
        store.close().await;
        let doc = declarative::export(&config);
        let text = serde_yaml_ng::to_string(&doc)?;
        match file {
            Some(f) => {
                if f.exists() {
                    bail!("{} exists: refusing to overwrite it", f.display());
                }
                let tmp = f.with_extension("tmp");
                std::fs::write(&tmp, &text)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, f)?;
                eprintln!(
                    "exported {} (config version {version}, hash {}) to {}",
                    summary(&config),
                    hash_config(&config).config,
                    f.display()
                );
            }
            None => print!("{text}"),
        }
        Ok(())
    })
}
