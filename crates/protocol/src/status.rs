//! A data plane's status as the control plane's registry shows it (`/clustering/data-planes`,
//! `/clustering/status`), as types: what the registry stores is their text.

use serde::{Deserialize, Serialize};

/// Where a data plane stands with its control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Connected and running the control plane's configuration.
    Connected,
    /// Connected, and running another configuration than the latest (refused, or not yet
    /// acknowledged).
    OutOfSync,
    /// Connected, and sent no configuration: see its [`Incompatible`] reason.
    Incompatible,
    /// Not connected.
    Disconnected,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 4] = [
        NodeStatus::Connected,
        NodeStatus::OutOfSync,
        NodeStatus::Incompatible,
        NodeStatus::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Connected => "connected",
            NodeStatus::OutOfSync => "out_of_sync",
            NodeStatus::Incompatible => "incompatible",
            NodeStatus::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        NodeStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a data plane is sent no configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incompatible {
    /// Its protocol or version cannot take this control plane's configuration; this lasts
    /// for the session.
    Version(String),
    /// The configuration names plugins it does not have; this ends when the configuration
    /// no longer does.
    Plugins(String),
}

impl Incompatible {
    /// The reason as told to the data plane and shown in the registry.
    pub fn reason(&self) -> &str {
        match self {
            Incompatible::Version(r) | Incompatible::Plugins(r) => r,
        }
    }

    /// Kong's `sync_status` for it.
    pub fn sync_status(&self) -> SyncStatus {
        match self {
            Incompatible::Version(_) => SyncStatus::KongVersionIncompatible,
            Incompatible::Plugins(_) => SyncStatus::PluginSetIncompatible,
        }
    }

    /// The reason for a configuration naming `missing` plugins that a data plane lacks.
    pub fn plugins(missing: &[&str]) -> Incompatible {
        Incompatible::Plugins(format!(
            "plugin{} {} configured on the control plane but not available on the data plane",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|m| format!("'{m}'"))
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

/// Kong's `sync_status` of a data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    Normal,
    Unknown,
    KongVersionIncompatible,
    PluginSetIncompatible,
}

impl SyncStatus {
    /// The sync status of a data plane of `status`, incompatible for `why` if it is.
    pub fn of(status: NodeStatus, why: Option<&Incompatible>) -> SyncStatus {
        match (status, why) {
            (NodeStatus::Incompatible, Some(i)) => i.sync_status(),
            (NodeStatus::Incompatible, None) => SyncStatus::KongVersionIncompatible,
            (NodeStatus::Connected, _) => SyncStatus::Normal,
            _ => SyncStatus::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Normal => "normal",
            SyncStatus::Unknown => "unknown",
            SyncStatus::KongVersionIncompatible => "kong_version_incompatible",
            SyncStatus::PluginSetIncompatible => "plugin_set_incompatible",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_from_their_text() {
        for s in NodeStatus::ALL {
            assert_eq!(NodeStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(NodeStatus::parse("normal"), None);
    }

    #[test]
    fn sync_status_follows_the_reason() {
        let p = Incompatible::plugins(&["acl", "jwt"]);
        assert_eq!(
            p.reason(),
            "plugins 'acl', 'jwt' configured on the control plane but not available on the data plane"
        );
        assert_eq!(
            SyncStatus::of(NodeStatus::Incompatible, Some(&p)).as_str(),
            "plugin_set_incompatible"
        );
        let v = Incompatible::Version("too old".into());
        assert_eq!(
            SyncStatus::of(NodeStatus::Incompatible, Some(&v)),
            SyncStatus::KongVersionIncompatible
        );
        assert_eq!(
            SyncStatus::of(NodeStatus::Connected, None),
            SyncStatus::Normal
        );
        assert_eq!(
            SyncStatus::of(NodeStatus::OutOfSync, None),
            SyncStatus::Unknown
        );
    }
}
