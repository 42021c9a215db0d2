//! Configuration hashes: MD5 over a canonical serialisation, per entity group and combined,
//! as Kong computes them; the empty configuration hashes to 32 zeros. Timestamps are left out,
//! so equal content gives equal hashes across loads, stores and nodes.

use md5::{Digest, Md5};
use serde_json::Value;

use crate::Config;

/// The hash of an empty configuration (and of an empty group).
pub const EMPTY_HASH: &str = "00000000000000000000000000000000";

/// The groups a data plane compares to know what to rebuild.
pub const GROUPS: [&str; 6] = [
    "routes",
    "services",
    "plugins",
    "upstreams",
    "targets",
    "rest",
];

/// Per-group hashes and the combined one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigHashes {
    pub config: String,
    pub routes: String,
    pub services: String,
    pub plugins: String,
    pub upstreams: String,
    pub targets: String,
    pub rest: String,
}

fn group_of(entity: &str) -> &'static str {
    GROUPS
        .iter()
        .copied()
        .find(|g| *g == entity)
        .unwrap_or("rest")
}

/// Compute the hashes of a configuration. Entities are taken in id order within each type
/// and object keys are sorted, so the hash does not depend on storage order.
pub fn hash_config(config: &Config) -> ConfigHashes {
    let mut hashers: Vec<(Md5, bool)> = GROUPS.iter().map(|_| (Md5::new(), false)).collect();
    let mut buf = String::new();
    for (name, docs) in &config.entities {
        let gi = GROUPS
            .iter()
            .position(|g| *g == group_of(name))
            .unwrap_or(5);
        let mut sorted: Vec<(&str, &crate::Doc)> = docs.iter().map(|d| (id_of(d), d)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (_, d) in sorted {
            buf.clear();
            buf.push_str(name);
            buf.push(':');
            // Timestamps are bookkeeping, not configuration: the same content hashes the same
            // whether it was loaded today or last year.
            canonical_map(d, &["created_at", "updated_at"], &mut buf);
            buf.push('\n');
            hashers[gi].0.update(buf.as_bytes());
            hashers[gi].1 = true;
        }
    }
    let groups: Vec<String> = hashers
        .into_iter()
        .map(|(h, used)| {
            if used {
                hex::encode(h.finalize())
            } else {
                EMPTY_HASH.to_string()
            }
        })
        .collect();
    let config = if groups.iter().all(|g| g == EMPTY_HASH) {
        EMPTY_HASH.to_string()
    } else {
        hex::encode(Md5::digest(groups.concat().as_bytes()))
    };
    ConfigHashes {
        config,
        routes: groups[0].clone(),
        services: groups[1].clone(),
        plugins: groups[2].clone(),
        upstreams: groups[3].clone(),
        targets: groups[4].clone(),
        rest: groups[5].clone(),
    }
}

/// An object, keys sorted, nulls and the `skip` keys left out.
fn canonical_map(m: &crate::Doc, skip: &[&str], out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = m
        .iter()
        .filter(|(k, v)| !v.is_null() && !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Keys are schema field names; escape them as JSON all the same.
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        canonical(v, out);
    }
    out.push('}');
}

fn id_of(d: &crate::Doc) -> &str {
    d.get("id").and_then(Value::as_str).unwrap_or("")
}

/// Serialise with object keys sorted and no whitespace; nulls are left out of objects,
/// so an absent optional field and an explicit null hash the same.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(e, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_is_zeros_and_order_does_not_matter() {
        let empty = Config::default();
        assert_eq!(hash_config(&empty).config, EMPTY_HASH);
        let a = json!({"id": "a", "name": "x", "port": 80})
            .as_object()
            .unwrap()
            .clone();
        let b = json!({"port": 81, "id": "b", "name": null})
            .as_object()
            .unwrap()
            .clone();
        let mut c1 = Config::default();
        c1.entities
            .insert("services".into(), vec![a.clone(), b.clone()]);
        let mut c2 = Config::default();
        c2.entities.insert("services".into(), vec![b, a]);
        let (h1, h2) = (hash_config(&c1), hash_config(&c2));
        assert_eq!(h1, h2);
        assert_ne!(h1.config, EMPTY_HASH);
        assert_ne!(h1.services, EMPTY_HASH);
        assert_eq!(h1.routes, EMPTY_HASH);
    }
}
