//! Schema migrations, applied in order on start; the same SQL on SQLite and PostgreSQL.

use sqlx::Row;

use crate::{Store, StoreError};

/// `(name, statements)`; never edit a released migration, add one.
const MIGRATIONS: &[(&str, &[&str])] = &[
    (
    "000_base",
    &[
        "CREATE TABLE IF NOT EXISTS config_version (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO config_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
        "CREATE TABLE IF NOT EXISTS entities (
            entity_type TEXT NOT NULL,
            id TEXT NOT NULL,
            doc TEXT NOT NULL,
            version BIGINT NOT NULL,
            PRIMARY KEY (entity_type, id))",
        "CREATE TABLE IF NOT EXISTS entity_keys (
            entity_type TEXT NOT NULL,
            key_name TEXT NOT NULL,
            key_value TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (entity_type, key_name, key_value))",
        "CREATE INDEX IF NOT EXISTS entity_keys_by_id ON entity_keys (entity_type, id)",
        "CREATE TABLE IF NOT EXISTS entity_refs (
            entity_type TEXT NOT NULL,
            id TEXT NOT NULL,
            field TEXT NOT NULL,
            ref_type TEXT NOT NULL,
            ref_id TEXT NOT NULL,
            PRIMARY KEY (entity_type, id, field, ref_id))",
        "CREATE INDEX IF NOT EXISTS entity_refs_by_target ON entity_refs (ref_type, ref_id)",
        "CREATE INDEX IF NOT EXISTS entity_refs_by_field ON entity_refs (entity_type, field, ref_id)",
        "CREATE TABLE IF NOT EXISTS entity_tags (
            entity_type TEXT NOT NULL,
            id TEXT NOT NULL,
            tag TEXT NOT NULL,
            PRIMARY KEY (entity_type, id, tag))",
        "CREATE INDEX IF NOT EXISTS entity_tags_by_tag ON entity_tags (tag, entity_type, id)",
        "CREATE TABLE IF NOT EXISTS changes (
            version BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            entity_type TEXT NOT NULL,
            id TEXT NOT NULL,
            op TEXT NOT NULL,
            PRIMARY KEY (version, seq))",
    ],
    ),
    (
        "001_clustering",
        &[
            // The control planes' registry of data planes: every control plane on one
            // PostgreSQL sees every data plane, whichever control plane it is connected to.
            "CREATE TABLE IF NOT EXISTS clustering_data_planes (
                id TEXT PRIMARY KEY,
                doc TEXT NOT NULL,
                session TEXT NOT NULL,
                last_seen BIGINT NOT NULL)",
        ],
    ),
    (
        "002_analytics",
        &[
            // Request analytics per minute, node, service, route, consumer and status; the
            // histograms are JSON arrays of bucket counts (gantry_model::analytics).
            "CREATE TABLE IF NOT EXISTS analytics_minutes (
                minute BIGINT NOT NULL,
                node_id TEXT NOT NULL,
                service TEXT NOT NULL,
                route TEXT NOT NULL,
                consumer TEXT NOT NULL,
                status BIGINT NOT NULL,
                count BIGINT NOT NULL,
                hist TEXT NOT NULL,
                PRIMARY KEY (minute, node_id, service, route, consumer, status))",
            // Batches already counted, so a batch sent twice (its ack lost) counts once.
            "CREATE TABLE IF NOT EXISTS analytics_batches (
                node_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                received_at BIGINT NOT NULL,
                PRIMARY KEY (node_id, seq))",
        ],
    ),
];

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS gantry_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&store.pool)
        .await?;
    let rows = sqlx::query("SELECT name FROM gantry_migrations")
        .fetch_all(&store.pool)
        .await?;
    let applied: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    for (name, statements) in MIGRATIONS {
        if applied.iter().any(|a| a == name) {
            continue;
        }
        let mut tx = store.pool.begin().await?;
        for s in *statements {
            sqlx::query(s)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Migration(format!("{name}: {e}")))?;
        }
        sqlx::query("INSERT INTO gantry_migrations (name, applied_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name.to_string())
            .bind(gantry_model::unix_now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}
