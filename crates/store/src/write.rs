//! Versioned writes: constraints checked inside the transaction, indexes kept, changes logged.

use gantry_model::document::{references, tags, unique_keys};
use gantry_model::entities::{entity, EntitySchema, ENTITIES};
use gantry_model::schema::OnDelete;
use gantry_model::Doc;
use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError};

/// One change in a write.
pub enum Op {
    /// Create; fails if the id exists.
    Insert(&'static EntitySchema, Doc),
    /// Create or replace by id.
    Upsert(&'static EntitySchema, Doc),
    /// Delete by id, cascading where the model says so; fails if the entity does not exist.
    Delete(&'static EntitySchema, String),
}

pub(crate) struct TxState {
    /// The control plane written.
    pub cp: i64,
    pub version: i64,
    pub seq: i64,
}

impl Store {
    /// Apply the operations atomically: all or none. Returns the new config version.
    pub async fn write(&self, ops: Vec<Op>) -> Result<i64, StoreError> {
        let _guard = self.db.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let result = write_in(&mut tx, self.cp, ops).await;
        crate::finish(tx, result).await
    }
}

impl Store {
    /// A plugin's writes ([`gantry_model::writes`]): only the entities it may write, each
    /// checked against its schema, all or none. Returns the new version.
    pub async fn write_entities(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
        plugins: &gantry_model::plugins::Catalog,
    ) -> Result<i64, gantry_model::writes::WriteError> {
        use gantry_model::writes::{WriteError, WriteOp, WRITABLE};
        let now = gantry_model::unix_now();
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let name = match &op {
                WriteOp::Insert { entity, .. } | WriteOp::Delete { entity, .. } => entity.clone(),
            };
            let schema = entity(&name)
                .filter(|s| WRITABLE.contains(&s.name))
                .ok_or_else(|| WriteError::Refused(format!("'{name}' cannot be written here")))?;
            out.push(match op {
                WriteOp::Insert { doc, .. } => {
                    let doc = gantry_model::document::prepare(
                        schema,
                        doc,
                        gantry_model::document::Secrets::MaybeHashed,
                        now,
                        plugins,
                    )
                    .map_err(|e| WriteError::Refused(format!("{name}: {}", e.message())))?;
                    Op::Insert(schema, doc)
                }
                WriteOp::Delete { id, .. } => Op::Delete(schema, id),
            });
        }
        self.write(out).await.map_err(|e| match e {
            StoreError::NotFound => WriteError::Refused("gone already".into()),
            e @ (StoreError::Unique { .. }
            | StoreError::ForeignKey { .. }
            | StoreError::PrimaryKey { .. }) => WriteError::Refused(e.to_string()),
            e => WriteError::Unavailable(e.to_string()),
        })
    }

    /// Delete the entities whose `ttl` has run out (Kong's periodic cleanup): one write for
    /// all of them, so data planes get one change. Returns how many went.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        let now = gantry_model::unix_now();
        let mut ops = Vec::new();
        for schema in ENTITIES.iter().filter(|s| s.field("ttl").is_some()) {
            for d in self.all(schema.name, None).await? {
                if gantry_model::entities::expires_at(&d).is_some_and(|at| at <= now) {
                    let id = d.get("id").and_then(serde_json::Value::as_str);
                    ops.push(Op::Delete(schema, id.unwrap_or_default().to_string()));
                }
            }
        }
        let n = ops.len();
        if n > 0 {
            // Gone meanwhile (a cascade, an Admin API delete): the next sweep takes the rest.
            if let Err(e) = self.write(ops).await {
                if !matches!(e, StoreError::NotFound) {
                    return Err(e);
                }
                return Ok(0);
            }
        }
        Ok(n)
    }
}

async fn write_in(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
    ops: Vec<Op>,
) -> Result<i64, StoreError> {
    let mut st = TxState {
        cp,
        version: bump_version(tx, cp).await?,
        seq: 0,
    };
    for op in ops {
        match op {
            Op::Insert(schema, doc) => put(tx, &mut st, schema, doc, true).await?,
            Op::Upsert(schema, doc) => put(tx, &mut st, schema, doc, false).await?,
            Op::Delete(schema, id) => delete(tx, &mut st, schema, &id).await?,
        }
    }
    Ok(st.version)
}

/// Take the next version. On PostgreSQL the row lock taken here orders concurrent writers.
pub(crate) async fn bump_version(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "UPDATE config_version SET version = version + 1 WHERE id = $1 RETURNING version",
    )
    .bind(cp)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NoControlPlane(cp))?;
    Ok(row.try_get::<i64, _>(0)?)
}

pub(crate) async fn log_change(
    tx: &mut Transaction<'static, Any>,
    st: &mut TxState,
    entity: &str,
    id: &str,
    op: &str,
) -> Result<(), StoreError> {
    st.seq += 1;
    sqlx::query(
        "INSERT INTO changes (cp, version, seq, entity_type, id, op) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(st.cp)
    .bind(st.version)
    .bind(st.seq)
    .bind(entity.to_string())
    .bind(id.to_string())
    .bind(op.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn doc_id(doc: &Doc) -> String {
    doc.get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

async fn exists(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
    entity: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM entities WHERE cp = $1 AND entity_type = $2 AND id = $3")
        .bind(cp)
        .bind(entity.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

async fn put(
    tx: &mut Transaction<'static, Any>,
    st: &mut TxState,
    schema: &'static EntitySchema,
    doc: Doc,
    insert_only: bool,
) -> Result<(), StoreError> {
    let id = doc_id(&doc);
    if insert_only && exists(tx, st.cp, schema.name, &id).await? {
        return Err(StoreError::PrimaryKey { id });
    }
    for r in references(schema, &doc) {
        if !exists(tx, st.cp, r.target, &r.id).await? {
            return Err(StoreError::ForeignKey {
                field: r.field.to_string(),
                target: r.target.to_string(),
                id: r.id,
            });
        }
    }
    let keys = unique_keys(schema, &doc);
    for (k, v) in &keys {
        let row = sqlx::query("SELECT id FROM entity_keys WHERE cp = $1 AND entity_type = $2 AND key_name = $3 AND key_value = $4")
            .bind(st.cp)
            .bind(schema.name.to_string())
            .bind(k.to_string())
            .bind(v.clone())
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            let other: String = row.try_get(0)?;
            if other != id {
                return Err(StoreError::Unique {
                    entity: schema.name.to_string(),
                    field: k.to_string(),
                    value: v.clone(),
                });
            }
        }
    }
    clear_indexes(tx, st.cp, schema.name, &id).await?;
    for (k, v) in keys {
        sqlx::query("INSERT INTO entity_keys (cp, entity_type, key_name, key_value, id) VALUES ($1, $2, $3, $4, $5)")
            .bind(st.cp)
            .bind(schema.name.to_string())
            .bind(k.to_string())
            .bind(v)
            .bind(id.clone())
            .execute(&mut **tx)
            .await?;
    }
    for r in references(schema, &doc) {
        sqlx::query(
            "INSERT INTO entity_refs (cp, entity_type, id, field, ref_type, ref_id) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (cp, entity_type, id, field, ref_id) DO NOTHING",
        )
        .bind(st.cp)
        .bind(schema.name.to_string())
        .bind(id.clone())
        .bind(r.field.to_string())
        .bind(r.target.to_string())
        .bind(r.id)
        .execute(&mut **tx)
        .await?;
    }
    for t in tags(&doc) {
        sqlx::query("INSERT INTO entity_tags (cp, entity_type, id, tag) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(st.cp)
            .bind(schema.name.to_string())
            .bind(id.clone())
            .bind(t)
            .execute(&mut **tx)
            .await?;
    }
    let text = serde_json::Value::Object(doc).to_string();
    sqlx::query(
        "INSERT INTO entities (cp, entity_type, id, doc, version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (cp, entity_type, id) DO UPDATE SET doc = excluded.doc, version = excluded.version",
    )
    .bind(st.cp)
    .bind(schema.name.to_string())
    .bind(id.clone())
    .bind(text)
    .bind(st.version)
    .execute(&mut **tx)
    .await?;
    log_change(tx, st, schema.name, &id, "upsert").await
}

async fn clear_indexes(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
    entity: &str,
    id: &str,
) -> Result<(), StoreError> {
    for table in ["entity_keys", "entity_refs", "entity_tags"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE cp = $1 AND entity_type = $2 AND id = $3"
        ))
        .bind(cp)
        .bind(entity.to_string())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn delete(
    tx: &mut Transaction<'static, Any>,
    st: &mut TxState,
    schema: &'static EntitySchema,
    id: &str,
) -> Result<(), StoreError> {
    if !exists(tx, st.cp, schema.name, id).await? {
        return Err(StoreError::NotFound);
    }
    // Walk the entities that reference this one, breadth first: refuse if any restricts,
    // else delete the whole set.
    let mut queue = vec![(schema.name, id.to_string())];
    let mut doomed: Vec<(&'static str, String)> = Vec::new();
    while let Some((etype, eid)) = queue.pop() {
        if doomed.iter().any(|(t, i)| *t == etype && *i == eid) {
            continue;
        }
        let rows = sqlx::query(
            "SELECT entity_type, id, field FROM entity_refs WHERE cp = $1 AND ref_type = $2 AND ref_id = $3",
        )
        .bind(st.cp)
        .bind(etype.to_string())
        .bind(eid.clone())
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let by: String = row.try_get(0)?;
            let by_id: String = row.try_get(1)?;
            let field: String = row.try_get(2)?;
            let Some(by_schema) = entity(&by) else {
                continue;
            };
            let on_delete = by_schema
                .foreign_fields()
                .find(|(f, _, _)| *f == field)
                .map(|(_, _, o)| o)
                .unwrap_or(OnDelete::Restrict);
            if on_delete == OnDelete::Restrict {
                return Err(StoreError::ReferencedBy {
                    entity: etype.to_string(),
                    by,
                });
            }
            queue.push((by_schema.name, by_id));
        }
        doomed.push((etype, eid));
    }
    for (etype, eid) in doomed {
        clear_indexes(tx, st.cp, etype, &eid).await?;
        sqlx::query("DELETE FROM entities WHERE cp = $1 AND entity_type = $2 AND id = $3")
            .bind(st.cp)
            .bind(etype.to_string())
            .bind(eid.clone())
            .execute(&mut **tx)
            .await?;
        log_change(tx, st, etype, &eid, "delete").await?;
    }
    Ok(())
}

/// The static schema for a stored entity type name.
pub(crate) fn schema_of(name: &str) -> Option<&'static EntitySchema> {
    ENTITIES.iter().find(|e| e.name == name)
}
