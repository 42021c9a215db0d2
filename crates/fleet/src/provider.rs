//! Providers run a group's data planes. Each is registered by name, as plugins are: the
//! configurations API accepts a `provider` only when one of that name is registered, and asks it
//! to check the `region` and the `version` before anything is stored.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a provider cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The region does not name a target of this provider.
    #[error("{0}")]
    Region(String),
    /// The version is not installed where this provider runs nodes.
    #[error("{0}")]
    Version(String),
    /// What the configuration asks cannot be honoured by this provider.
    #[error("{0}")]
    Unsupported(String),
    /// A node could not be started or stopped.
    #[error("{0}")]
    Run(String),
}

/// One data plane to start.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique within the group; the node's directory or container name ends with it.
    pub name: String,
    /// The node id it registers with (`KONG_NODE_ID`).
    pub node_id: String,
    pub version: String,
    /// The group's instance type (`small`, `medium`, `large`), for the provider's sizing.
    pub instance_type: String,
    /// `KONG_*` settings: the cluster's, the group's labels and environment. The provider adds
    /// its listeners and the control plane's address.
    pub env: Vec<(String, String)>,
    /// The control plane's cluster and telemetry ports.
    pub cluster_port: u16,
    pub telemetry_port: u16,
}

/// A running data plane.
pub trait Node: Send + Sync {
    /// Where its `/status/ready` answers (`host:port`).
    fn status_addr(&self) -> String;
    /// The address its proxy serves on, as the group's `private_ip_addresses` shows it.
    fn address(&self) -> String;
    /// `Some(reason)` once it has exited.
    fn exited(&mut self) -> BoxFuture<'_, Option<String>>;
    /// Drain it (SIGQUIT: its listeners close, requests in flight finish) and wait until it has
    /// stopped; killed after `grace`.
    fn drain(&mut self, grace: std::time::Duration) -> BoxFuture<'_, ()>;
    /// The last lines it logged, to tell why it failed.
    fn last_words(&self) -> BoxFuture<'_, String>;
    /// Remove what an exited node leaves behind (a stopped container); nothing by default.
    fn reap(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Runs data planes somewhere.
pub trait Provider: Send + Sync {
    /// Whether `region` names one of its targets, and `api_access` can be honoured there.
    fn check_region<'a>(
        &'a self,
        region: &'a str,
        api_access: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Whether `version` can be run.
    fn check_version(&self, version: &str) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Start one node in `region`.
    fn start<'a>(
        &'a self,
        group: &'a str,
        region: &'a str,
        spec: NodeSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Node>, ProviderError>>;
    /// The nodes a previous run of this control plane left running, for `group` (so that a
    /// restarted control plane stops them instead of leaking them).
    fn leftovers<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<Box<dyn Node>>>;
}

/// The providers by name.
#[derive(Clone, Default)]
pub struct Providers(BTreeMap<&'static str, Arc<dyn Provider>>);

impl Providers {
    pub fn register(&mut self, name: &'static str, p: Arc<dyn Provider>) {
        self.0.insert(name, p);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.0.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.keys().copied().collect()
    }
}

/// The last three non-empty lines of a node's log, joined: what a failure reason quotes.
pub fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Node processes' worker threads by instance type.
pub fn workers(instance_type: &str) -> usize {
    match instance_type {
        "large" => 4,
        "medium" => 2,
        _ => 1,
    }
}
