//! Managed data plane groups (Konnect's cloud-gateways configurations): one configuration per
//! control plane, as a JSON document the v2 API and the reconciler both write, and the private
//! key of the client certificate the group's data planes present.

use gantry_model::Doc;
use sqlx::Row;

use crate::{Store, StoreError};

/// A stored configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedRow {
    pub id: String,
    /// The control plane's key.
    pub cp: i64,
    /// The manifest as the API shows it, group states included.
    pub doc: Doc,
    /// The managed data planes' client key (PEM); never shown.
    pub secret: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Every control plane's configuration.
    pub async fn managed_configurations(&self) -> Result<Vec<ManagedRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, cp, doc, secret, created_at, updated_at FROM managed_configurations ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let text: String = r.try_get(2)?;
                let doc = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    entity: "managed_configurations".into(),
                    id: id.clone(),
                    reason: e.to_string(),
                })?;
                Ok(ManagedRow {
                    id,
                    cp: r.try_get(1)?,
                    doc,
                    secret: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    updated_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Store `row` as its control plane's configuration, replacing the one it had.
    pub async fn put_managed_configuration(&self, row: &ManagedRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO managed_configurations (id, cp, doc, secret, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (cp) DO UPDATE SET id = $1, doc = $3, secret = $4, updated_at = $6",
        )
        .bind(row.id.clone())
        .bind(row.cp)
        .bind(serde_json::Value::Object(row.doc.clone()).to_string())
        .bind(row.secret.clone())
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Replace the document of configuration `id` if its stored one is still `expected` (the
    /// reconciler's write of group states loses to a PUT made meanwhile). Returns whether it did.
    pub async fn update_managed_doc(
        &self,
        id: &str,
        expected: &Doc,
        doc: &Doc,
    ) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE managed_configurations SET doc = $1 WHERE id = $2 AND doc = $3")
                .bind(serde_json::Value::Object(doc.clone()).to_string())
                .bind(id.to_string())
                .bind(serde_json::Value::Object(expected.clone()).to_string())
                .execute(self.pool())
                .await?
                .rows_affected();
        Ok(n > 0)
    }
}
