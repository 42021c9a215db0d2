//! Control plane / data plane version compatibility.
//!
//! - The major versions must be equal.
//! - A data plane newer than its control plane is refused: it may rely on configuration the
//!   control plane cannot give it.
//! - An older data plane is served, with the fields it does not know removed from what it is
//!   sent. [`FIELDS_SINCE`] records, for every field added after the first release that speaks
//!   the cluster protocol, the version that added it. Adding a field to a schema means adding a
//!   line here.

use crate::Doc;

/// A `major.minor.patch` version; a pre-release or build suffix is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// A field and the version that added it. `entity` is an entity type, or `plugins/NAME` for a
/// field of one plugin's configuration; `path` is dotted from the document's top level.
#[derive(Debug)]
pub struct Since {
    pub entity: &'static str,
    pub path: &'static str,
    pub version: Version,
}

/// Every field added since the first release of the cluster protocol (0.1.0).
pub const FIELDS_SINCE: &[Since] = &[Since {
    entity: "plugins/cors",
    path: "config.allow_origin_absent",
    version: Version(0, 2, 0),
}];

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

/// The fields a data plane of version `dp` does not know, for one entity type.
pub fn unknown_fields(entity: &str, dp: Version) -> impl Iterator<Item = &'static Since> + '_ {
    FIELDS_SINCE.iter().filter(move |s| {
        dp < s.version
            && (s.entity == entity || (entity == "plugins" && s.entity.starts_with("plugins/")))
    })
}

/// Remove from `doc` (an entity of type `entity`) the fields that `dp` does not know.
/// Returns the paths removed.
pub fn strip(entity: &str, doc: &mut Doc, dp: Version) -> Vec<&'static str> {
    let mut removed = Vec::new();
    for s in unknown_fields(entity, dp) {
        if let Some(plugin) = s.entity.strip_prefix("plugins/") {
            if doc.get("name").and_then(|v| v.as_str()) != Some(plugin) {
                continue;
            }
        }
        if remove_path(doc, s.path) {
            removed.push(s.path);
        }
    }
    removed
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
pub fn needs_stripping(dp: Version) -> bool {
    FIELDS_SINCE.iter().any(|s| dp < s.version)
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
        let mut cors = json!({"id": "p", "name": "cors", "config": {"origins": ["*"], "allow_origin_absent": false}})
            .as_object()
            .cloned()
            .unwrap();
        let mut other =
            json!({"id": "q", "name": "key-auth", "config": {"allow_origin_absent": 1}})
                .as_object()
                .cloned()
                .unwrap();
        assert!(strip("plugins", &mut cors.clone(), Version(0, 2, 0)).is_empty());
        assert_eq!(
            strip("plugins", &mut cors, Version(0, 1, 0)),
            ["config.allow_origin_absent"]
        );
        assert_eq!(cors["config"], json!({"origins": ["*"]}));
        assert!(strip("plugins", &mut other, Version(0, 1, 0)).is_empty());
        assert!(needs_stripping(Version(0, 1, 9)));
        assert!(!needs_stripping(Version(0, 2, 0)));
    }

    /// Every field in the table exists in today's schemas: a typo would strip nothing.
    #[test]
    fn the_table_names_real_fields() {
        for s in FIELDS_SINCE {
            let (entity, plugin) = match s.entity.split_once('/') {
                Some((e, p)) => (e, Some(p)),
                None => (s.entity, None),
            };
            assert!(crate::entities::entity(entity).is_some(), "{}", s.entity);
            if let Some(p) = plugin {
                let schema = crate::plugins::plugin(p).unwrap_or_else(|| panic!("{p}"));
                let field = s.path.strip_prefix("config.").unwrap();
                assert!(
                    schema.config.iter().any(|f| f.name == field),
                    "{}: {}",
                    s.entity,
                    s.path
                );
            }
        }
    }
}
