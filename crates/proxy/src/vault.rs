//! Vault references read where the configuration runs: a plugin's configuration or a
//! certificate holding `{vault://...}` is built from a copy with the secrets in place, which
//! only the running snapshot holds (the stored and sent configuration keeps the references).
//! A reference that cannot be read fails the configuration, and the running one stays.

use std::collections::HashMap;

use gantry_model::vault::{self, Reference};
use gantry_model::{Config, Entity};
use serde_json::Value;

/// Why a reference was not read.
#[derive(Debug, thiserror::Error)]
#[error("{entity} {id}: {reason}")]
pub struct VaultError {
    entity: &'static str,
    id: String,
    reason: String,
}

/// The vaults of a configuration: prefix to the env vault's `config.prefix`.
fn vaults(config: &Config) -> HashMap<String, Option<String>> {
    config
        .docs("vaults")
        .iter()
        .map(|e| {
            let d = e.doc();
            let prefix = d.get("prefix").and_then(Value::as_str).unwrap_or_default();
            let env = d
                .get("config")
                .and_then(|c| c.get("prefix"))
                .and_then(Value::as_str)
                .map(str::to_string);
            (prefix.to_string(), env)
        })
        .collect()
}

fn read(
    r: &Reference,
    raw: &str,
    vaults: &HashMap<String, Option<String>>,
) -> Result<String, String> {
    let config_prefix = match vaults.get(&r.prefix) {
        Some(p) => p.as_deref(),
        None if vault::VAULTS.contains(&r.prefix.as_str()) => None,
        None => return Err(format!("{raw}: no vault with prefix '{}'", r.prefix)),
    };
    let name = vault::env_name(r, config_prefix);
    let value = std::env::var(&name)
        .map_err(|_| format!("{raw}: environment variable {name} is not set"))?;
    match &r.key {
        None => Ok(value),
        Some(k) => {
            let v: Value = serde_json::from_str(&value)
                .map_err(|_| format!("{raw}: {name} does not hold a JSON object"))?;
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{raw}: {name} has no string member '{k}'"))
        }
    }
}

/// Replace every reference in `v` by its secret.
fn resolve_value(v: &mut Value, vaults: &HashMap<String, Option<String>>) -> Result<(), String> {
    match v {
        Value::String(s) if vault::is_reference(s) => {
            let r = vault::parse(s)?;
            *s = read(&r, s, vaults)?;
        }
        Value::Array(a) => {
            for x in a {
                resolve_value(x, vaults)?;
            }
        }
        Value::Object(m) => {
            for x in m.values_mut() {
                resolve_value(x, vaults)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `config` with the references of `types` (`plugins`, `certificates`) read, when any of their
/// entities holds one; `None` when none does.
pub fn resolve(config: &Config, types: &[&'static str]) -> Result<Option<Config>, VaultError> {
    let holds = |e: &Entity| e.json().contains("{vault://");
    if !types.iter().any(|t| config.docs(t).iter().any(holds)) {
        return Ok(None);
    }
    let vaults = vaults(config);
    let mut out = config.clone();
    for t in types {
        let Some(list) = out.entities.get_mut(*t) else {
            continue;
        };
        for e in list.iter_mut().filter(|e| holds(e)) {
            let mut v = Value::Object(e.doc());
            resolve_value(&mut v, &vaults).map_err(|reason| VaultError {
                entity: t,
                id: e.id().to_string(),
                reason,
            })?;
            if let Value::Object(d) = v {
                *e = Entity::from(d);
            }
        }
    }
    Ok(Some(out))
}
