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

impl Store {
    /// The changes after `version`, with the documents as they now are; [`StoreDelta::Reset`]
    /// when the log holds more than `limit` entries after it or a replace happened.
    pub async fn delta_since(&self, version: i64, limit: usize) -> Result<StoreDelta, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT (SELECT version FROM config_version WHERE id = 1), c.entity_type, c.id, c.op, e.doc
             FROM changes c LEFT JOIN entities e ON e.entity_type = c.entity_type AND e.id = c.id
             WHERE c.version > $1 ORDER BY c.version, c.seq LIMIT {}",
            limit + 1
        ))
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            let now = self.version().await?;
            return Ok(if now > version {
                // Versions taken by writes that changed nothing.
                StoreDelta::Changes {
                    to: now,
                    changes: Vec::new(),
                }
            } else {
                StoreDelta::Unchanged
            });
        }
        if rows.len() > limit {
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

    /// Record (create or replace) a data plane's registry entry for the connection `session`.
    pub async fn put_data_plane(
        &self,
        id: &str,
        session: &str,
        doc: &Doc,
        last_seen: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clustering_data_planes (id, doc, session, last_seen) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, session = excluded.session, last_seen = excluded.last_seen",
        )
        .bind(id.to_string())
        .bind(serde_json::Value::Object(doc.clone()).to_string())
        .bind(session.to_string())
        .bind(last_seen)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Update a data plane's entry only while `session` is still its latest connection (a
    /// newer one, on this control plane or another, wins). Returns whether it was updated.
    pub async fn update_data_plane(
        &self,
        id: &str,
        session: &str,
        doc: &Doc,
        last_seen: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE clustering_data_planes SET doc = $2, last_seen = $4 WHERE id = $1 AND session = $3",
        )
        .bind(id.to_string())
        .bind(serde_json::Value::Object(doc.clone()).to_string())
        .bind(session.to_string())
        .bind(last_seen)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// Every data plane in the registry, most recently seen first.
    pub async fn data_planes(&self) -> Result<Vec<Doc>, StoreError> {
        let rows =
            sqlx::query("SELECT id, doc FROM clustering_data_planes ORDER BY last_seen DESC, id")
                .fetch_all(&self.pool)
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

    /// Remove the data planes last seen before `before` (Unix seconds); returns how many.
    pub async fn purge_data_planes(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM clustering_data_planes WHERE last_seen < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
