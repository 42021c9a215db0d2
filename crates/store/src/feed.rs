//! The change feed: the store's configuration followed version by version, change by change.
//! A traditional node's proxy and a control plane's publisher both follow one, so neither
//! exports the store on a write: each step reads the change log after the version held (one
//! statement), applies it to a copy of the document pointers and updates the digests of the
//! entities it touched. A replace, or a log pruned past the version held, costs one export.
//! Pruning the change log is the feed's too.

use std::sync::Arc;

use gantry_model::delta::{Change, ConfigSink, Update};
use gantry_model::hash::Digests;
use gantry_model::Config;

use crate::{Store, StoreDelta, StoreError};

/// Changes read in one step at most; a longer log is read as a whole export.
pub const DELTA_LIMIT: usize = 20_000;

/// Versions of change log kept when pruning: a follower further behind reads the
/// configuration whole.
pub const CHANGE_LOG_KEEP: i64 = 100_000;

/// What a step of the feed brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing new.
    Unchanged,
    /// These changes (one per entity) lead from version `from` to the feed's version.
    Changes {
        from: i64,
        from_hash: String,
        changes: Arc<Vec<Change>>,
    },
    /// The configuration was read whole (a replace, or the log was pruned past `from`).
    Whole { from: i64 },
}

impl Step {
    /// The changes of this step and the version they lead from, for [`Feed::update`].
    pub fn changes(&self) -> Option<(i64, &[Change])> {
        match self {
            Step::Changes { from, changes, .. } => Some((*from, changes.as_slice())),
            _ => None,
        }
    }
}

/// A configuration kept at the store's latest version.
pub struct Feed {
    config: Arc<Config>,
    digests: Digests,
    version: i64,
}

impl Feed {
    /// Start from the store's configuration now (one export).
    pub async fn start(store: &Store) -> Result<Feed, StoreError> {
        let (config, version) = store.export().await?;
        Ok(Feed {
            digests: Digests::of(&config),
            config: Arc::new(config),
            version,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn digests(&self) -> &Digests {
        &self.digests
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    /// The feed's configuration for a proxy, reached by `changes` when a step brought them.
    pub fn update<'a>(&'a self, changes: Option<(i64, &'a [Change])>) -> Update<'a> {
        Update {
            config: &self.config,
            digests: &self.digests,
            version: self.version,
            changes,
        }
    }

    /// The configuration hash at [`Feed::version`].
    pub fn hash(&self) -> String {
        self.digests.hashes().config
    }

    /// Catch up with the store.
    pub async fn next(&mut self, store: &Store) -> Result<Step, StoreError> {
        let from = self.version;
        match store.delta_since(from, DELTA_LIMIT).await? {
            StoreDelta::Unchanged => Ok(Step::Unchanged),
            StoreDelta::Changes { to, changes } => {
                // A copy of the document pointers, not of the documents.
                let mut config = (*self.config).clone();
                let mut digests = self.digests.clone();
                config
                    .apply_tracked(&changes, &mut digests)
                    .map_err(|e| StoreError::Corrupt {
                        entity: "changes".into(),
                        id: to.to_string(),
                        reason: e.to_string(),
                    })?;
                let from_hash = self.hash();
                (self.config, self.digests, self.version) = (Arc::new(config), digests, to);
                Ok(Step::Changes {
                    from,
                    from_hash,
                    changes: Arc::new(changes),
                })
            }
            StoreDelta::Reset => {
                *self = Feed::start(store).await?;
                Ok(Step::Whole { from })
            }
        }
    }

    /// Drop the change log older than [`CHANGE_LOG_KEEP`] versions.
    pub async fn prune(store: &Store) -> Result<u64, StoreError> {
        store.prune_changes(CHANGE_LOG_KEEP).await
    }
}

/// Keep `sink` on the store's configuration until `stop`: each new version (announced on
/// `versions` by the Admin API, or found by polling every second, for writes made by another
/// node on the same database) is applied as the changes that led to it. A burst of writes is
/// applied once. A configuration the sink refuses is logged, and the running one stays. The
/// change log is pruned every ten minutes.
pub async fn follow(
    mut feed: Feed,
    store: Arc<Store>,
    sink: Arc<dyn ConfigSink>,
    mut versions: tokio::sync::watch::Receiver<i64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::time::{Duration, Instant};
    let mut pruned = Instant::now();
    loop {
        // Nothing reads a traditional node's change log but a control plane sharing its
        // database: keep what one would need.
        if pruned.elapsed() > Duration::from_secs(600) {
            pruned = Instant::now();
            if let Err(e) = Feed::prune(&store).await {
                tracing::warn!(error = %e, "cannot prune the change log");
            }
        }
        tokio::select! {
            _ = versions.changed() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = async { let _ = stop.wait_for(|v| *v).await; } => return,
        }
        let step = match feed.next(&store).await {
            Ok(Step::Unchanged) => continue,
            Ok(step) => step,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the configuration");
                continue;
            }
        };
        let v = feed.version();
        match sink.apply(&feed.update(step.changes())) {
            Ok(()) => tracing::info!(version = v, "proxy configuration updated"),
            Err(e) => {
                tracing::error!(version = v, error = %e, "configuration refused; the running one stays")
            }
        }
    }
}
