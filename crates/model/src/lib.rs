//! Gantry's configuration model, shared by the control plane and the data plane.
//!
//! - [`schema`]: the schema language (fields, types, validation, defaults, coercion).
//! - [`entities`] and [`plugins`]: Kong's entities and plugin configurations in that language.
//! - [`document`]: turning input into stored documents (generated fields, keys, references).
//! - [`declarative`]: the `_format_version` 3.0 file format.
//! - [`hash`]: configuration hashes.

pub use entity::Entity;
use std::collections::BTreeMap;

pub mod analytics;
pub mod compat;
pub mod declarative;
pub mod delta;
pub mod document;
pub mod entities;
pub mod entity;
pub mod hash;
pub mod healthchecks;
pub mod multipart;
pub mod pem;
pub mod plugins;
pub mod schema;
pub mod secret;
pub mod timers;
pub mod typed;
pub mod typedefs;
pub mod vault;
pub mod writes;

/// One entity as stored and sent: a JSON object.
pub type Doc = serde_json::Map<String, serde_json::Value>;

/// Gantry's own version, used for control plane / data plane compatibility.
pub const GANTRY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Kong version whose Admin API and declarative format Gantry implements.
pub const KONG_VERSION: &str = "3.9.0";

/// The first ten hexadecimal digits of a control plane's id: the first label of its
/// endpoints' names (`<prefix>.cp.<domain>`), as Konnect names them.
pub fn endpoint_prefix(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(10).collect()
}

/// Unix seconds now: the clock of `created_at` / `updated_at` and of time windows.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A whole configuration: entity type name to its documents.
///
/// Entities are shared ([`Entity`] is a pointer to its text): a new version made by applying a
/// delta to a copy of this one copies pointers, not documents, and the proxy, the cache writer
/// and the control plane's published versions hold the same entities.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Config {
    pub entities: BTreeMap<String, Vec<Entity>>,
}

impl Config {
    /// The number of entities of all types.
    pub fn len(&self) -> usize {
        self.entities.values().map(Vec::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The documents of one entity type (none when it has none).
    pub fn docs(&self, entity: &str) -> &[Entity] {
        self.entities.get(entity).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Add a document at the end of its type's list (call [`Config::sort`] before applying
    /// deltas).
    pub fn push(&mut self, entity: &str, doc: impl Into<Entity>) {
        self.entities
            .entry(entity.to_string())
            .or_default()
            .push(doc.into());
    }
}

/// Append one Prometheus metric (text exposition format): its `# HELP` and `# TYPE` lines, then
/// one sample per `(labels, value)`; `labels` is empty or `{k="v",...}`.
pub fn prometheus(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}
