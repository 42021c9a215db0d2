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
    (
        "003_control_planes",
        &[
            // Many control planes in one store: each entity, index row, change, registry entry
            // and analytics row belongs to one, by its key; `config_version` holds one row per
            // control plane (its `id` is the key). What was stored before belongs to the
            // default control plane, key 1. Tables whose primary key gains the key are rebuilt.
            "CREATE TABLE control_planes (
                key BIGINT PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL UNIQUE,
                doc TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)",
            "CREATE TABLE entities_cp (
                cp BIGINT NOT NULL,
                entity_type TEXT NOT NULL,
                id TEXT NOT NULL,
                doc TEXT NOT NULL,
                version BIGINT NOT NULL,
                PRIMARY KEY (cp, entity_type, id))",
            "INSERT INTO entities_cp (cp, entity_type, id, doc, version)
                SELECT 1, entity_type, id, doc, version FROM entities",
            "DROP TABLE entities",
            "ALTER TABLE entities_cp RENAME TO entities",
            "CREATE TABLE entity_keys_cp (
                cp BIGINT NOT NULL,
                entity_type TEXT NOT NULL,
                key_name TEXT NOT NULL,
                key_value TEXT NOT NULL,
                id TEXT NOT NULL,
                PRIMARY KEY (cp, entity_type, key_name, key_value))",
            "INSERT INTO entity_keys_cp (cp, entity_type, key_name, key_value, id)
                SELECT 1, entity_type, key_name, key_value, id FROM entity_keys",
            "DROP TABLE entity_keys",
            "ALTER TABLE entity_keys_cp RENAME TO entity_keys",
            "CREATE INDEX entity_keys_by_id ON entity_keys (cp, entity_type, id)",
            "CREATE TABLE entity_refs_cp (
                cp BIGINT NOT NULL,
                entity_type TEXT NOT NULL,
                id TEXT NOT NULL,
                field TEXT NOT NULL,
                ref_type TEXT NOT NULL,
                ref_id TEXT NOT NULL,
                PRIMARY KEY (cp, entity_type, id, field, ref_id))",
            "INSERT INTO entity_refs_cp (cp, entity_type, id, field, ref_type, ref_id)
                SELECT 1, entity_type, id, field, ref_type, ref_id FROM entity_refs",
            "DROP TABLE entity_refs",
            "ALTER TABLE entity_refs_cp RENAME TO entity_refs",
            "CREATE INDEX entity_refs_by_target ON entity_refs (cp, ref_type, ref_id)",
            "CREATE INDEX entity_refs_by_field ON entity_refs (cp, entity_type, field, ref_id)",
            "CREATE TABLE entity_tags_cp (
                cp BIGINT NOT NULL,
                entity_type TEXT NOT NULL,
                id TEXT NOT NULL,
                tag TEXT NOT NULL,
                PRIMARY KEY (cp, entity_type, id, tag))",
            "INSERT INTO entity_tags_cp (cp, entity_type, id, tag)
                SELECT 1, entity_type, id, tag FROM entity_tags",
            "DROP TABLE entity_tags",
            "ALTER TABLE entity_tags_cp RENAME TO entity_tags",
            "CREATE INDEX entity_tags_by_tag ON entity_tags (cp, tag, entity_type, id)",
            "CREATE TABLE changes_cp (
                cp BIGINT NOT NULL,
                version BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                entity_type TEXT NOT NULL,
                id TEXT NOT NULL,
                op TEXT NOT NULL,
                PRIMARY KEY (cp, version, seq))",
            "INSERT INTO changes_cp (cp, version, seq, entity_type, id, op)
                SELECT 1, version, seq, entity_type, id, op FROM changes",
            "DROP TABLE changes",
            "ALTER TABLE changes_cp RENAME TO changes",
            "ALTER TABLE clustering_data_planes ADD COLUMN cp BIGINT NOT NULL DEFAULT 1",
            "CREATE INDEX clustering_data_planes_by_cp ON clustering_data_planes (cp, last_seen)",
            "CREATE TABLE analytics_minutes_cp (
                cp BIGINT NOT NULL,
                minute BIGINT NOT NULL,
                node_id TEXT NOT NULL,
                service TEXT NOT NULL,
                route TEXT NOT NULL,
                consumer TEXT NOT NULL,
                status BIGINT NOT NULL,
                count BIGINT NOT NULL,
                hist TEXT NOT NULL,
                PRIMARY KEY (cp, minute, node_id, service, route, consumer, status))",
            "INSERT INTO analytics_minutes_cp (cp, minute, node_id, service, route, consumer, status, count, hist)
                SELECT 1, minute, node_id, service, route, consumer, status, count, hist FROM analytics_minutes",
            "DROP TABLE analytics_minutes",
            "ALTER TABLE analytics_minutes_cp RENAME TO analytics_minutes",
            // Access tokens: the secret is never stored, only its Argon2id hash (PHC string);
            // `lookup` (not secret) finds the row.
            "CREATE TABLE access_tokens (
                id TEXT PRIMARY KEY,
                lookup TEXT NOT NULL UNIQUE,
                hash TEXT NOT NULL,
                doc TEXT NOT NULL,
                expires_at BIGINT,
                revoked_at BIGINT,
                created_at BIGINT NOT NULL)",
            // Data plane client certificates a control plane pins (Konnect's
            // dp-client-certificates); `digest` is the SHA-256 of the certificate's DER.
            "CREATE TABLE dp_client_certificates (
                id TEXT PRIMARY KEY,
                cp BIGINT NOT NULL,
                digest TEXT NOT NULL,
                doc TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                UNIQUE (cp, digest))",
            "CREATE INDEX dp_client_certificates_by_digest ON dp_client_certificates (digest)",
        ],
    ),
    (
        "004_cluster_log_level",
        &[
            // Kong's `/debug/cluster/log-level`: the level every node sharing this store takes,
            // until `until` (Unix seconds; 0: until changed), numbered so that each node applies
            // each change once.
            "CREATE TABLE cluster_log_level (
                scope TEXT PRIMARY KEY,
                seq BIGINT NOT NULL,
                level TEXT NOT NULL,
                until BIGINT NOT NULL)",
        ],
    ),
    (
        "005_managed_groups",
        &[
            // Konnect's cloud-gateways configurations: one per control plane (a PUT replaces
            // it), with the state of its data plane groups as the reconciler last wrote it.
            // `secret` is the key of the client certificate the managed data planes present.
            "CREATE TABLE managed_configurations (
                id TEXT PRIMARY KEY,
                cp BIGINT NOT NULL UNIQUE,
                doc TEXT NOT NULL,
                secret TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)",
        ],
    ),
];

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS gantry_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    let rows = sqlx::query("SELECT name FROM gantry_migrations")
        .fetch_all(store.pool())
        .await?;
    let applied: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    for (name, statements) in MIGRATIONS {
        if applied.iter().any(|a| a == name) {
            continue;
        }
        let mut tx = store.pool().begin().await?;
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
