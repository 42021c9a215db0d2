//! What the cluster layer reads and writes: deltas from the change log, and the registry of
//! data planes. Registry writes are bookkeeping: they do not bump the config version.

use gantry_model::delta::{collapse, Change as DeltaChange};
use gantry_model::Doc;
use sqlx::Row;

use crate::{Store, StoreError};

/// What changed after a version.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreDelta {
    /// Nothing: the store is at the version asked about.
    Unchanged,
    /// The changes that bring a configuration at the version asked about to version `to`, one
    /// per entity, read in one statement (so documents and versions agree).
    Changes { to: i64, changes: Vec<DeltaChange> },
    /// The configuration was replaced wholesale (or the log is longer than `limit`) after that
    /// version: only a full export can bring it up to date.
    Reset,
}

/// One registry entry to write (see [`Store::write_data_planes`]).
#[derive(Debug, Clone)]
pub struct RegistryWrite {
    pub id: String,
    pub session: String,
    pub doc: Doc,
    pub last_seen: i64,
    pub insert: bool,
}

impl Store {
    /// The changes after `version`, with the documents as they now are; [`StoreDelta::Reset`]
    /// when the log holds more than `limit` entries after it or a replace happened.
    pub async fn delta_since(&self, version: i64, limit: usize) -> Result<StoreDelta, StoreError> {
        // Read first: every change up to it is committed (writers are ordered by the version
        // row), so the query below sees them all.
        let before = self.version().await?;
        let rows = sqlx::query(&format!(
            "SELECT (SELECT version FROM config_version WHERE id = $1), c.entity_type, c.id, c.op, e.doc, c.version
             FROM changes c LEFT JOIN entities e ON e.cp = c.cp AND e.entity_type = c.entity_type AND e.id = c.id
             WHERE c.cp = $1 AND c.version > $2 ORDER BY c.version, c.seq LIMIT {}",
            limit + 1
        ))
        .bind(self.cp)
        .bind(version)
        .fetch_all(self.pool())
        .await?;
        if rows.is_empty() {
            // The log was pruned past `version`: only a whole export catches up.
            if before > version && self.oldest_change().await?.is_none_or(|o| o > version + 1) {
                return Ok(StoreDelta::Reset);
            }
            return Ok(if before > version {
                // Versions taken by writes that changed nothing.
                StoreDelta::Changes {
                    to: before,
                    changes: Vec::new(),
                }
            } else {
                StoreDelta::Unchanged
            });
        }
        if rows.len() > limit {
            return Ok(StoreDelta::Reset);
        }
        // A gap after `version`: the log may have been pruned there (see `prune_changes`); a
        // gap left by writes that changed nothing is not one.
        if rows[0].try_get::<i64, _>(5)? > version + 1
            && self.oldest_change().await?.is_none_or(|o| o > version + 1)
        {
            return Ok(StoreDelta::Reset);
        }
        let mut to = version;
        let mut changes = Vec::with_capacity(rows.len());
        for r in &rows {
            to = r.try_get(0)?;
            let entity: String = r.try_get(1)?;
            let id: String = r.try_get(2)?;
            let op: String = r.try_get(3)?;
            if op == "reset" {
                return Ok(StoreDelta::Reset);
            }
            let doc: Option<String> = r.try_get(4)?;
            changes.push(match doc {
                Some(text) => DeltaChange::Upsert {
                    doc: serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        entity: entity.clone(),
                        id: id.clone(),
                        reason: e.to_string(),
                    })?,
                    entity,
                },
                None => DeltaChange::Delete { entity, id },
            });
        }
        Ok(StoreDelta::Changes {
            to,
            changes: collapse(changes),
        })
    }

    async fn oldest_change(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT MIN(version) FROM changes WHERE cp = $1")
                .bind(self.cp)
                .fetch_one(self.pool())
                .await?
                .try_get::<Option<i64>, _>(0)?,
        )
    }

    /// Forget change-log entries more than `keep` versions old; returns how many. A reader
    /// further behind gets [`StoreDelta::Reset`] and reads the configuration whole.
    pub async fn prune_changes(&self, keep: i64) -> Result<u64, StoreError> {
        let now = self.version().await?;
        Ok(
            sqlx::query("DELETE FROM changes WHERE cp = $1 AND version < $2")
                .bind(self.cp)
                .bind(now - keep)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Write several registry entries in one transaction: `insert` entries create or replace
    /// (a new connection), the others update only while their session is the entry's latest.
    pub async fn write_data_planes(&self, batch: &[RegistryWrite]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let result = async {
        for w in batch {
            let doc = serde_json::Value::Object(w.doc.clone()).to_string();
            let q = if w.insert {
                "INSERT INTO clustering_data_planes (id, doc, session, last_seen, cp) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, session = excluded.session, last_seen = excluded.last_seen, cp = excluded.cp"
            } else {
                "UPDATE clustering_data_planes SET doc = $2, last_seen = $4 WHERE id = $1 AND session = $3 AND cp = $5"
            };
            sqlx::query(q)
                .bind(w.id.clone())
                .bind(doc)
                .bind(w.session.clone())
                .bind(w.last_seen)
                .bind(self.cp)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
        }
        .await;
        crate::finish(tx, result).await
    }

    /// Every data plane in the registry, most recently seen first.
    pub async fn data_planes(&self) -> Result<Vec<Doc>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM clustering_data_planes WHERE cp = $1 ORDER BY last_seen DESC, id",
        )
        .bind(self.cp)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let text: String = r.try_get(1)?;
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    entity: "clustering_data_planes".into(),
                    id,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Forget one of this control plane's data planes; false when it had none by that id.
    pub async fn delete_data_plane(&self, id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("DELETE FROM clustering_data_planes WHERE cp = $1 AND id = $2")
                .bind(self.cp)
                .bind(id.to_string())
                .execute(self.pool())
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// Remove the data planes, of every control plane, last seen before `before` (Unix
    /// seconds); returns how many.
    pub async fn purge_data_planes(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM clustering_data_planes WHERE last_seen < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
