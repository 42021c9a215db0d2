//! Control plane / data plane version compatibility.
//!
//! - The major versions must be equal.
//! - A data plane newer than its control plane is refused: it may rely on configuration the
//!   control plane cannot give it.
//! - An older data plane is served, with the fields it does not know removed from what it is
//!   sent. [`FIELDS_SINCE`] records, for every entity field added after the first release that
//!   speaks the cluster protocol, the version that added it; a plugin's schema lists its own
//!   (`PluginSchema::since`). Adding a field means adding a line there.

use crate::plugins::Catalog;
use crate::Doc;

/// A `major.minor.patch` version; a pre-release or build suffix is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(
            it.next()??,
            it.next().unwrap_or(Some(0))?,
            it.next().unwrap_or(Some(0))?,
        );
        it.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// An entity field and the version that added it; `path` is dotted from the document's top
/// level. Plugin configuration fields are listed in each plugin's schema
/// (`PluginSchema::since`).
#[derive(Debug)]
pub struct Since {
    pub entity: &'static str,
    pub path: &'static str,
    pub version: Version,
}

/// Every entity field added since the first release of the cluster protocol (0.1.0).
pub const FIELDS_SINCE: &[Since] = &[];

/// Why a data plane of version `dp` cannot take configuration from a control plane of version
/// `cp`; `None` when it can.
pub fn incompatibility(cp: &str, dp: &str) -> Option<String> {
    let Some(c) = Version::parse(cp) else {
        return Some(format!("control plane version '{cp}' is not a version"));
    };
    let Some(d) = Version::parse(dp) else {
        return Some(format!("data plane version '{dp}' is not a version"));
    };
    if c.0 != d.0 {
        return Some(format!(
            "data plane version {d} and control plane version {c} have different major versions"
        ));
    }
    if (d.1, d.2) > (c.1, c.2) {
        return Some(format!(
            "data plane version {d} is newer than control plane version {c}"
        ));
    }
    None
}

/// Remove from `entity` (an entity of type `kind`) the fields that `dp` does not know; a
/// shared entity is replaced only when it holds one. Returns the paths removed.
pub fn strip(
    kind: &str,
    entity: &mut crate::Entity,
    dp: Version,
    plugins: &Catalog,
) -> Vec<&'static str> {
    let has_fields = FIELDS_SINCE
        .iter()
        .any(|s| s.entity == kind && dp < s.version);
    if !has_fields && kind != "plugins" {
        return Vec::new();
    }
    let mut doc = entity.doc();
    let removed = strip_doc(kind, &mut doc, dp, plugins);
    if !removed.is_empty() {
        *entity = crate::Entity::new(&doc);
    }
    removed
}

/// [`strip`] on a parsed document.
pub fn strip_doc(entity: &str, doc: &mut Doc, dp: Version, plugins: &Catalog) -> Vec<&'static str> {
    let mut removed = Vec::new();
    let entity_fields = FIELDS_SINCE
        .iter()
        .filter(|s| s.entity == entity)
        .map(|s| (s.path, s.version));
    let plugin = (entity == "plugins")
        .then(|| doc.get("name").and_then(|v| v.as_str()))
        .flatten()
        .and_then(|n| plugins.schema(n));
    let plugin_fields = plugin
        .map(|p| p.since)
        .unwrap_or_default()
        .iter()
        .map(|(path, v)| (*path, *v));
    let unknown: Vec<&'static str> = entity_fields
        .chain(plugin_fields)
        .filter(|(_, v)| dp < *v)
        .map(|(p, _)| p)
        .collect();
    for path in unknown {
        if has_path(doc, path) && remove_path(doc, path) {
            removed.push(path);
        }
    }
    removed
}

fn has_path(doc: &Doc, path: &str) -> bool {
    match path.split_once('.') {
        None => doc.contains_key(path),
        Some((head, rest)) => doc
            .get(head)
            .and_then(|v| v.as_object())
            .is_some_and(|inner| has_path(inner, rest)),
    }
}

fn remove_path(doc: &mut Doc, path: &str) -> bool {
    match path.split_once('.') {
        None => doc.remove(path).is_some(),
        Some((head, rest)) => match doc.get_mut(head).and_then(|v| v.as_object_mut()) {
            Some(inner) => remove_path(inner, rest),
            None => false,
        },
    }
}

/// True when `dp` needs some field removed from configuration: a data plane of the control
/// plane's own version never does.
pub fn needs_stripping(dp: Version, plugins: &Catalog) -> bool {
    FIELDS_SINCE.iter().any(|s| dp < s.version)
        || plugins
            .schemas()
            .any(|p| p.since.iter().any(|(_, v)| dp < *v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions() {
        assert_eq!(Version::parse("0.2.0"), Some(Version(0, 2, 0)));
        assert_eq!(Version::parse("1.4"), Some(Version(1, 4, 0)));
        assert_eq!(Version::parse("3.9.0-rc1"), Some(Version(3, 9, 0)));
        assert_eq!(Version::parse("x"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert!(Version(0, 10, 0) > Version(0, 9, 9));
    }

    #[test]
    fn compatibility_rules() {
        assert_eq!(incompatibility("0.2.0", "0.2.0"), None);
        assert_eq!(incompatibility("0.2.3", "0.1.0"), None);
        assert_eq!(
            incompatibility("0.2.0", "1.2.0").unwrap(),
            "data plane version 1.2.0 and control plane version 0.2.0 have different major versions"
        );
        assert_eq!(
            incompatibility("0.2.0", "0.3.0").unwrap(),
            "data plane version 0.3.0 is newer than control plane version 0.2.0"
        );
        assert_eq!(
            incompatibility("0.2.0", "0.2.1").unwrap(),
            "data plane version 0.2.1 is newer than control plane version 0.2.0"
        );
        assert!(incompatibility("0.2.0", "banana").is_some());
    }

    #[test]
    fn an_older_data_plane_loses_only_the_fields_it_does_not_know() {
        let cat = crate::plugins::testing::catalog();
        let doc = |v: serde_json::Value| crate::Entity::new(v.as_object().unwrap());
        let mut limits =
            doc(json!({"id": "p", "name": "limits", "config": {"minute": 1, "burst": 2}}));
        let mut other = doc(json!({"id": "q", "name": "key-auth", "config": {"burst": 1}}));
        let shared = other.clone();
        assert!(strip("plugins", &mut limits.clone(), Version(0, 2, 0), &cat).is_empty());
        assert_eq!(
            strip("plugins", &mut limits, Version(0, 1, 0), &cat),
            ["config.burst"]
        );
        assert_eq!(limits.doc()["config"], json!({"minute": 1}));
        assert!(strip("plugins", &mut other, Version(0, 1, 0), &cat).is_empty());
        assert!(
            other.ptr_eq(&shared),
            "a document with nothing to strip stays shared"
        );
        assert!(needs_stripping(Version(0, 1, 9), &cat));
        assert!(!needs_stripping(Version(0, 2, 0), &cat));
        assert!(!needs_stripping(Version(0, 1, 0), &Catalog::default()));
    }

    /// Every entity field in the table exists in today's schemas: a typo would strip nothing.
    #[test]
    fn the_table_names_real_fields() {
        for s in FIELDS_SINCE {
            let schema =
                crate::entities::entity(s.entity).unwrap_or_else(|| panic!("{}", s.entity));
            let top = s.path.split('.').next().unwrap_or_default();
            assert!(schema.field(top).is_some(), "{}: {}", s.entity, s.path);
        }
    }
}
