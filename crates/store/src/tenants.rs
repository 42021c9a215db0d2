//! What sits above control planes: the control planes themselves, the access tokens that
//! reach them, and the data plane client certificates each pins. None of this is part of a
//! control plane's configuration, so none of it bumps a configuration version.

use gantry_model::Doc;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Store, StoreError, DEFAULT_CP};

/// A control plane as stored: its key (what every other table uses), its id and name, and the
/// rest of its description as a JSON document (description, labels, cluster and auth type...).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneRow {
    pub key: i64,
    pub id: String,
    pub name: String,
    pub doc: Doc,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// An access token as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub id: String,
    /// The token's public part, by which a presented token finds its row.
    pub lookup: String,
    /// A password hash of the whole token (PHC string).
    pub hash: String,
    /// Name, kind and roles.
    pub doc: Doc,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// A pinned data plane client certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct DpCertRow {
    pub id: String,
    /// The control plane's key.
    pub cp: i64,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub digest: String,
    /// `cert` (PEM) and whatever else the API shows.
    pub doc: Doc,
    /// Unix seconds.
    pub created_at: i64,
}

fn parse(table: &str, id: &str, text: &str) -> Result<Doc, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        entity: table.to_string(),
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn cp_row(r: &AnyRow) -> Result<ControlPlaneRow, StoreError> {
    let id: String = r.try_get(1)?;
    let doc = parse("control_planes", &id, &r.try_get::<String, _>(3)?)?;
    Ok(ControlPlaneRow {
        key: r.try_get(0)?,
        name: r.try_get(2)?,
        doc,
        created_at: r.try_get(4)?,
        updated_at: r.try_get(5)?,
        id,
    })
}

fn token_row(r: &AnyRow) -> Result<TokenRow, StoreError> {
    let id: String = r.try_get(0)?;
    let doc = parse("access_tokens", &id, &r.try_get::<String, _>(3)?)?;
    Ok(TokenRow {
        lookup: r.try_get(1)?,
        hash: r.try_get(2)?,
        doc,
        expires_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        created_at: r.try_get(6)?,
        id,
    })
}

fn cert_row(r: &AnyRow) -> Result<DpCertRow, StoreError> {
    let id: String = r.try_get(0)?;
    let doc = parse("dp_client_certificates", &id, &r.try_get::<String, _>(3)?)?;
    Ok(DpCertRow {
        cp: r.try_get(1)?,
        digest: r.try_get(2)?,
        doc,
        created_at: r.try_get(4)?,
        id,
    })
}

/// Now, in Unix milliseconds: the unit of control plane and managed configuration timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A unique-name violation on `control_planes`, as the Admin API reports unique keys.
fn name_taken(name: &str) -> StoreError {
    StoreError::Unique {
        entity: "control_planes".into(),
        field: "name".into(),
        value: name.to_string(),
    }
}

const CP_COLUMNS: &str = "key, id, name, doc, created_at, updated_at";

impl Store {
    /// Give the default control plane its row on a store that has none (a new store, or one
    /// made before control planes existed): `name` "default", a fresh id.
    pub(crate) async fn ensure_default_control_plane(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let doc = serde_json::json!({
            "description": "The default control plane: Kong's Admin API at / configures it.",
            "labels": {},
            "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE",
            "auth_type": "pinned_client_certs",
        });
        sqlx::query(
            "INSERT INTO control_planes (key, id, name, doc, created_at, updated_at)
             VALUES ($1, $2, 'default', $3, $4, $4) ON CONFLICT DO NOTHING",
        )
        .bind(DEFAULT_CP)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(doc.to_string())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every control plane, oldest first.
    pub async fn control_planes(&self) -> Result<Vec<ControlPlaneRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CP_COLUMNS} FROM control_planes ORDER BY created_at, key"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(cp_row).collect()
    }

    /// A control plane by id.
    pub async fn control_plane(&self, id: &str) -> Result<Option<ControlPlaneRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CP_COLUMNS} FROM control_planes WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(cp_row).transpose()
    }

    /// A control plane by name.
    pub async fn control_plane_by_name(
        &self,
        name: &str,
    ) -> Result<Option<ControlPlaneRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CP_COLUMNS} FROM control_planes WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(cp_row).transpose()
    }

    /// A control plane by key.
    pub async fn control_plane_by_key(
        &self,
        key: i64,
    ) -> Result<Option<ControlPlaneRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CP_COLUMNS} FROM control_planes WHERE key = $1"
        ))
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(cp_row).transpose()
    }

    /// Create a control plane with an empty configuration at version 0. Its key is the next
    /// free one; two processes creating at once on PostgreSQL are ordered by the unique key
    /// (the loser tries the next key).
    pub async fn create_control_plane(
        &self,
        id: &str,
        name: &str,
        doc: &Doc,
    ) -> Result<ControlPlaneRow, StoreError> {
        let _guard = self.db.write_lock.lock().await;
        for _ in 0..5 {
            let mut tx = self.pool().begin().await?;
            let result = async {
            if sqlx::query("SELECT 1 FROM control_planes WHERE name = $1")
                .bind(name.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
            {
                return Err(name_taken(name));
            }
            let key: i64 = sqlx::query("SELECT COALESCE(MAX(key), 0) + 1 FROM control_planes")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let now = now_ms();
            let inserted = sqlx::query(
                "INSERT INTO control_planes (key, id, name, doc, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(key)
            .bind(id.to_string())
            .bind(name.to_string())
            .bind(serde_json::Value::Object(doc.clone()).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Another process took the key: try the next.
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO config_version (id, version) VALUES ($1, 0) ON CONFLICT (id) DO UPDATE SET version = 0",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
            Ok(Some(ControlPlaneRow {
                key,
                id: id.to_string(),
                name: name.to_string(),
                doc: doc.clone(),
                created_at: now,
                updated_at: now,
            }))
            }
            .await;
            if let Some(row) = crate::finish(tx, result).await? {
                return Ok(row);
            }
        }
        Err(name_taken(name))
    }

    /// Rename a control plane and replace its description document.
    pub async fn update_control_plane(
        &self,
        key: i64,
        name: &str,
        doc: &Doc,
    ) -> Result<ControlPlaneRow, StoreError> {
        let clash = sqlx::query("SELECT 1 FROM control_planes WHERE name = $1 AND key <> $2")
            .bind(name.to_string())
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        if clash.is_some() {
            return Err(name_taken(name));
        }
        let n = sqlx::query(
            "UPDATE control_planes SET name = $1, doc = $2, updated_at = $3 WHERE key = $4",
        )
        .bind(name.to_string())
        .bind(serde_json::Value::Object(doc.clone()).to_string())
        .bind(now_ms())
        .bind(key)
        .execute(self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => name_taken(name),
            _ => StoreError::Db(e),
        })?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        self.control_plane_by_key(key)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Delete a control plane and everything it holds: configuration, change log, registry,
    /// analytics and pinned certificates. The default control plane cannot be deleted.
    pub async fn delete_control_plane(&self, key: i64) -> Result<(), StoreError> {
        if key == DEFAULT_CP {
            return Err(StoreError::DefaultControlPlane);
        }
        let _guard = self.db.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let result = async {
            let n = sqlx::query("DELETE FROM control_planes WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            for table in [
                "entities",
                "entity_keys",
                "entity_refs",
                "entity_tags",
                "changes",
                "clustering_data_planes",
                "analytics_minutes",
                "dp_client_certificates",
                "managed_configurations",
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE cp = $1"))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM config_version WHERE id = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        .await;
        crate::finish(tx, result).await
    }

    /// Store a new access token.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_tokens (id, lookup, hash, doc, expires_at, revoked_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id.clone())
        .bind(t.lookup.clone())
        .bind(t.hash.clone())
        .bind(serde_json::Value::Object(t.doc.clone()).to_string())
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(t.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The token whose public part is `lookup`.
    pub async fn token_by_lookup(&self, lookup: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, lookup, hash, doc, expires_at, revoked_at, created_at FROM access_tokens WHERE lookup = $1",
        )
        .bind(lookup.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(token_row).transpose()
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, lookup, hash, doc, expires_at, revoked_at, created_at FROM access_tokens ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Whether any token can still be used at `now` (Unix seconds).
    pub async fn has_live_token(&self, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 FROM access_tokens WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(self.pool())
        .await?
        .is_some())
    }

    /// Revoke a token by id; false when no token has that id or it was revoked already.
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE access_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    /// Pin a data plane client certificate for this handle's control plane.
    pub async fn add_dp_cert(&self, c: &DpCertRow) -> Result<(), StoreError> {
        let n = sqlx::query(
            "INSERT INTO dp_client_certificates (id, cp, digest, doc, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(c.id.clone())
        .bind(self.cp)
        .bind(c.digest.clone())
        .bind(serde_json::Value::Object(c.doc.clone()).to_string())
        .bind(c.created_at)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Unique {
                entity: "dp_client_certificates".into(),
                field: "cert".into(),
                value: c.digest.clone(),
            });
        }
        Ok(())
    }

    /// Replace one of this control plane's pinned certificates (by id); false when it has none
    /// by that id.
    pub async fn update_dp_cert(&self, c: &DpCertRow) -> Result<bool, StoreError> {
        let clash = sqlx::query(
            "SELECT 1 FROM dp_client_certificates WHERE cp = $1 AND digest = $2 AND id <> $3",
        )
        .bind(self.cp)
        .bind(c.digest.clone())
        .bind(c.id.clone())
        .fetch_optional(self.pool())
        .await?;
        if clash.is_some() {
            return Err(StoreError::Unique {
                entity: "dp_client_certificates".into(),
                field: "cert".into(),
                value: c.digest.clone(),
            });
        }
        Ok(sqlx::query(
            "UPDATE dp_client_certificates SET digest = $1, doc = $2 WHERE cp = $3 AND id = $4",
        )
        .bind(c.digest.clone())
        .bind(serde_json::Value::Object(c.doc.clone()).to_string())
        .bind(self.cp)
        .bind(c.id.clone())
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    /// This control plane's pinned certificates, oldest first.
    pub async fn dp_certs(&self) -> Result<Vec<DpCertRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, cp, digest, doc, created_at FROM dp_client_certificates WHERE cp = $1 ORDER BY created_at, id",
        )
        .bind(self.cp)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(cert_row).collect()
    }

    /// Every pinned certificate of every control plane.
    pub async fn all_dp_certs(&self) -> Result<Vec<DpCertRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, cp, digest, doc, created_at FROM dp_client_certificates ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(cert_row).collect()
    }

    /// Unpin one of this control plane's certificates; its row, or `None` when it had none.
    pub async fn delete_dp_cert(&self, id: &str) -> Result<Option<DpCertRow>, StoreError> {
        let found = sqlx::query(
            "SELECT id, cp, digest, doc, created_at FROM dp_client_certificates WHERE cp = $1 AND id = $2",
        )
        .bind(self.cp)
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = found.as_ref().map(cert_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM dp_client_certificates WHERE cp = $1 AND id = $2")
            .bind(self.cp)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(Some(row))
    }
}
