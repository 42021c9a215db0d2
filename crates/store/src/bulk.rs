//! Whole-configuration writes: `db_import` (merge) and `POST /config` (replace), with
//! multi-row statements so that tens of thousands of entities load in seconds.

use std::collections::{HashMap, HashSet};

use gantry_model::document::{references, tags, unique_keys};
use gantry_model::Config;
use sqlx::{Any, Row, Transaction};

use crate::write::{bump_version, log_change, schema_of, TxState};
use crate::{Store, StoreError};

enum P {
    S(String),
    I(i64),
}

/// Rows per statement on PostgreSQL: well under its parameter limit.
const CHUNK: usize = 400;

/// Parameters per statement on SQLite: sqlx looks each parameter up by name, a cost that grows
/// with the number of parameters in the statement, so SQLite gets small statements.
const SQLITE_PARAMS: usize = 120;

async fn insert_rows(
    tx: &mut Transaction<'static, Any>,
    postgres: bool,
    table: &str,
    cols: &[&str],
    rows: Vec<Vec<P>>,
    tail: &str,
) -> Result<(), StoreError> {
    let per = if postgres {
        CHUNK
    } else {
        (SQLITE_PARAMS / cols.len()).max(1)
    };
    for chunk in rows.chunks(per) {
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..cols.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for p in row {
                q = match p {
                    P::S(s) => q.bind(s.clone()),
                    P::I(i) => q.bind(*i),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Add or update every entity of `config` in one transaction (`gantry config db_import`).
    /// Entities already stored and absent from `config` stay. Constraints are checked against
    /// the file and the store together; on any violation nothing is written.
    pub async fn import(&self, config: &Config) -> Result<i64, StoreError> {
        self.bulk(config, false).await
    }

    /// Replace the whole configuration with `config` in one transaction (`POST /config`).
    pub async fn replace(&self, config: &Config) -> Result<i64, StoreError> {
        self.bulk(config, true).await
    }

    async fn bulk(&self, config: &Config, replace: bool) -> Result<i64, StoreError> {
        let _guard = self.db.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let result = self.bulk_in(&mut tx, config, replace).await;
        crate::finish(tx, result).await
    }

    async fn bulk_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        config: &Config,
        replace: bool,
    ) -> Result<i64, StoreError> {
        let cp = self.cp;
        let mut st = TxState {
            cp,
            version: bump_version(tx, cp).await?,
            seq: 0,
        };
        let stored: i64 = sqlx::query("SELECT COUNT(*) FROM entities WHERE cp = $1")
            .bind(cp)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
        if replace {
            for table in ["entities", "entity_keys", "entity_refs", "entity_tags"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE cp = $1"))
                    .bind(cp)
                    .execute(&mut **tx)
                    .await?;
            }
            log_change(tx, &mut st, "*", "*", "reset").await?;
        } else if stored > 0 {
            check_against_store(tx, cp, config).await?;
            clear_indexes_of(tx, cp, config).await?;
        }
        let (mut ents, mut keys, mut refs, mut tag_rows, mut changes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (name, docs) in &config.entities {
            let schema = schema_of(name)
                .ok_or_else(|| StoreError::Migration(format!("unknown entity type {name}")))?;
            for e in docs {
                let id = e.id().to_string();
                let d = &e.doc();
                for (k, v) in unique_keys(schema, d) {
                    keys.push(vec![
                        P::I(cp),
                        P::S(name.clone()),
                        P::S(k.to_string()),
                        P::S(v),
                        P::S(id.clone()),
                    ]);
                }
                for r in references(schema, d) {
                    refs.push(vec![
                        P::I(cp),
                        P::S(name.clone()),
                        P::S(id.clone()),
                        P::S(r.field.to_string()),
                        P::S(r.target.to_string()),
                        P::S(r.id),
                    ]);
                }
                for t in tags(d) {
                    tag_rows.push(vec![
                        P::I(cp),
                        P::S(name.clone()),
                        P::S(id.clone()),
                        P::S(t),
                    ]);
                }
                if !replace {
                    st.seq += 1;
                    changes.push(vec![
                        P::I(cp),
                        P::I(st.version),
                        P::I(st.seq),
                        P::S(name.clone()),
                        P::S(id.clone()),
                        P::S("upsert".into()),
                    ]);
                }
                ents.push(vec![
                    P::I(cp),
                    P::S(name.clone()),
                    P::S(id),
                    P::S(e.json().to_string()),
                    P::I(st.version),
                ]);
            }
        }
        insert_rows(
            tx,
            self.db.postgres,
            "entities",
            &["cp", "entity_type", "id", "doc", "version"],
            ents,
            "ON CONFLICT (cp, entity_type, id) DO UPDATE SET doc = excluded.doc, version = excluded.version",
        )
        .await?;
        insert_rows(
            tx,
            self.db.postgres,
            "entity_keys",
            &["cp", "entity_type", "key_name", "key_value", "id"],
            keys,
            "",
        )
        .await?;
        insert_rows(
            tx,
            self.db.postgres,
            "entity_refs",
            &["cp", "entity_type", "id", "field", "ref_type", "ref_id"],
            refs,
            "ON CONFLICT DO NOTHING",
        )
        .await?;
        insert_rows(
            tx,
            self.db.postgres,
            "entity_tags",
            &["cp", "entity_type", "id", "tag"],
            tag_rows,
            "ON CONFLICT DO NOTHING",
        )
        .await?;
        insert_rows(
            tx,
            self.db.postgres,
            "changes",
            &["cp", "version", "seq", "entity_type", "id", "op"],
            changes,
            "",
        )
        .await?;
        Ok(st.version)
    }
}

/// Unique keys held by other stored entities, and references to entities in neither the file
/// nor the store, are refused before anything is written.
async fn check_against_store(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
    config: &Config,
) -> Result<(), StoreError> {
    let mut in_file: HashSet<(&str, &str)> = HashSet::new();
    for (name, docs) in &config.entities {
        for d in docs {
            in_file.insert((name.as_str(), d.id()));
        }
    }
    for (name, docs) in &config.entities {
        let Some(schema) = schema_of(name) else {
            continue;
        };
        let rows = sqlx::query(
            "SELECT key_name, key_value, id FROM entity_keys WHERE cp = $1 AND entity_type = $2",
        )
        .bind(cp)
        .bind(name.clone())
        .fetch_all(&mut **tx)
        .await?;
        let mut held: HashMap<(String, String), String> = HashMap::with_capacity(rows.len());
        for r in rows {
            held.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
        }
        for e in docs {
            let id = e.id();
            let d = &e.doc();
            for (k, v) in unique_keys(schema, d) {
                if let Some(other) = held.get(&(k.to_string(), v.clone())) {
                    if other != id && !in_file.contains(&(name.as_str(), other.as_str())) {
                        return Err(StoreError::Unique {
                            entity: name.clone(),
                            field: k.to_string(),
                            value: v,
                        });
                    }
                }
            }
            for r in references(schema, d) {
                if in_file.contains(&(r.target, r.id.as_str())) {
                    continue;
                }
                let found = sqlx::query(
                    "SELECT 1 FROM entities WHERE cp = $1 AND entity_type = $2 AND id = $3",
                )
                .bind(cp)
                .bind(r.target.to_string())
                .bind(r.id.clone())
                .fetch_optional(&mut **tx)
                .await?;
                if found.is_none() {
                    return Err(StoreError::ForeignKey {
                        field: r.field.to_string(),
                        target: r.target.to_string(),
                        id: r.id,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Drop the index rows of the entities about to be rewritten.
async fn clear_indexes_of(
    tx: &mut Transaction<'static, Any>,
    cp: i64,
    config: &Config,
) -> Result<(), StoreError> {
    for (name, docs) in &config.entities {
        let ids: Vec<String> = docs.iter().map(|d| d.id().to_string()).collect();
        for chunk in ids.chunks(100) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            for table in ["entity_keys", "entity_refs", "entity_tags"] {
                let sql = format!(
                    "DELETE FROM {table} WHERE cp = $1 AND entity_type = $2 AND id IN ({})",
                    marks.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(cp).bind(name.clone());
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q.execute(&mut **tx).await?;
            }
        }
    }
    Ok(())
}
