//! `gantry tokens ...` and `gantry control-planes ...`: management on the control plane's host,
//! against its store, without the API (the first token of a new install is made this way).

use std::time::Duration;

use anyhow::{bail, Context};
use gantry_konnect::tokens::{self, Grant, Role, TokenKind};
use gantry_store::{ControlPlaneRow, Store};
use serde_json::json;

use crate::node::{load_settings, runtime};
use crate::NodeOpts;

/// A control plane named by id or name.
pub(crate) async fn find_cp(store: &Store, which: &str) -> anyhow::Result<ControlPlaneRow> {
    if let Some(row) = store.control_plane(which).await? {
        return Ok(row);
    }
    store
        .control_plane_by_name(which)
        .await?
        .with_context(|| format!("no control plane has the id or name '{which}'"))
}

fn when(t: Option<i64>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
}

/// `gantry tokens create`
pub fn tokens_create(
    opts: &NodeOpts,
    name: &str,
    role: &str,
    control_planes: &[String],
    kind: &str,
    expires_in: &str,
) -> anyhow::Result<()> {
    let role: Role = role.parse()?;
    let kind = match kind {
        "personal" => TokenKind::Personal,
        "system" => TokenKind::System,
        other => bail!("--kind '{other}': personal or system"),
    };
    let expires: Option<Duration> = tokens::parse_duration(expires_in).with_context(|| {
        format!("--expires-in '{expires_in}': a number followed by s, m, h or d (90d), or never")
    })?;
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let mut roles = Vec::new();
        if control_planes.is_empty() {
            roles.push(Grant {
                control_plane: "*".into(),
                role,
            });
        }
        for cp in control_planes {
            roles.push(Grant {
                control_plane: find_cp(&store, cp).await?.id,
                role,
            });
        }
        let made = tokens::create(&store, name, kind, roles, expires).await?;
        store.close().await;
        eprintln!(
            "token '{name}' created (id {}); it is shown once, here:",
            made.row.id
        );
        println!("{}", made.token);
        Ok(())
    })
}

/// `gantry tokens list`
pub fn tokens_list(opts: &NodeOpts) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let rows = store.tokens().await?;
        store.close().await;
        println!("id\tname\tkind\troles\tcreated_at\texpires_at\trevoked_at");
        for r in rows {
            let info = tokens::info(&r)?;
            let roles: Vec<String> = info
                .roles
                .iter()
                .map(|g| {
                    format!(
                        "{}:{}",
                        g.control_plane,
                        json!(g.role).as_str().unwrap_or("")
                    )
                })
                .collect();
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                r.id,
                info.name,
                json!(info.kind).as_str().unwrap_or(""),
                roles.join(","),
                r.created_at,
                when(r.expires_at),
                when(r.revoked_at),
            );
        }
        Ok(())
    })
}

/// `gantry tokens revoke ID`
pub fn tokens_revoke(opts: &NodeOpts, id: &str) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let done = store.revoke_token(id, gantry_model::unix_now()).await?;
        store.close().await;
        if !done {
            bail!("no token with id '{id}' that is not revoked already");
        }
        println!("token {id} revoked");
        Ok(())
    })
}

/// `gantry control-planes create NAME`
pub fn cp_create(opts: &NodeOpts, name: &str, description: &str) -> anyhow::Result<()> {
    if name.chars().count() < 1 || name.chars().count() > 256 {
        bail!("a control plane's name has 1 to 256 characters");
    }
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let doc = json!({
            "description": description,
            "labels": {},
            "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE",
            "auth_type": "pinned_client_certs",
            "proxy_urls": [],
        });
        let row = store
            .create_control_plane(
                &uuid::Uuid::new_v4().to_string(),
                name,
                doc.as_object().context("a control plane document")?,
            )
            .await
            .with_context(|| format!("cannot create control plane '{name}'"))?;
        store.close().await;
        println!("{}", row.id);
        Ok(())
    })
}

/// `gantry control-planes list`
pub fn cp_list(opts: &NodeOpts) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let rows = store.control_planes().await?;
        println!("id\tname\tconfig_version\tdescription");
        for r in rows {
            let v = store.scoped(r.key).version().await?;
            println!(
                "{}\t{}\t{}\t{}",
                r.id,
                r.name,
                v,
                r.doc
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
            );
        }
        store.close().await;
        Ok(())
    })
}

/// `gantry control-planes delete ID|NAME`
pub fn cp_delete(opts: &NodeOpts, which: &str) -> anyhow::Result<()> {
    let settings = load_settings(opts)?;
    runtime(2)?.block_on(async {
        let store = crate::config_cmd::open(&settings).await?;
        let row = find_cp(&store, which).await?;
        store
            .delete_control_plane(row.key)
            .await
            .with_context(|| format!("cannot delete control plane '{}'", row.name))?;
        store.close().await;
        println!("control plane {} ({}) deleted", row.name, row.id);
        Ok(())
    })
}
