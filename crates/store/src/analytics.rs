//! Request analytics from data planes: per-minute rows, merged on ingestion, each batch counted
//! once.

use gantry_model::analytics::{Histogram, Row};
use sqlx::Row as _;

use crate::{Store, StoreError};

/// Which stored rows to read.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsQuery {
    /// Unix seconds, inclusive start and exclusive end.
    pub start: i64,
    pub end: i64,
    pub node: Option<String>,
    pub service: Option<String>,
    pub route: Option<String>,
    pub consumer: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Hists {
    total: Histogram,
    upstream: Histogram,
    gateway: Histogram,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        entity: "analytics_minutes".into(),
        id: String::new(),
        reason: e.to_string(),
    }
}

impl Store {
    /// Add a data plane's batch `seq` of rows. Returns false (and changes nothing) when that
    /// batch was counted already.
    pub async fn ingest_analytics(
        &self,
        node: &str,
        seq: i64,
        rows: &[Row],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let result = async {
        let fresh = sqlx::query(
            "INSERT INTO analytics_batches (node_id, seq, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (node_id, seq) DO NOTHING",
        )
        .bind(node.to_string())
        .bind(seq)
        .bind(gantry_model::unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !fresh {
            return Ok(false);
        }
        for r in rows {
            let existing = sqlx::query(
                "SELECT count, hist FROM analytics_minutes WHERE minute = $1 AND node_id = $2
                 AND service = $3 AND route = $4 AND consumer = $5 AND status = $6 AND cp = $7",
            )
            .bind(r.minute)
            .bind(node.to_string())
            .bind(r.service.clone())
            .bind(r.route.clone())
            .bind(r.consumer.clone())
            .bind(r.status as i64)
            .bind(self.cp)
            .fetch_optional(&mut *tx)
            .await?;
            let mut merged = r.clone();
            if let Some(e) = &existing {
                let count: i64 = e.try_get(0)?;
                let h: Hists =
                    serde_json::from_str(&e.try_get::<String, _>(1)?).map_err(corrupt)?;
                merged.merge(&Row {
                    count: count as u64,
                    total: h.total,
                    upstream: h.upstream,
                    gateway: h.gateway,
                    ..Row::default()
                });
            }
            let hist = serde_json::to_string(&Hists {
                total: merged.total,
                upstream: merged.upstream,
                gateway: merged.gateway,
            })
            .map_err(corrupt)?;
            let q = if existing.is_some() {
                "UPDATE analytics_minutes SET count = $7, hist = $8 WHERE minute = $1 AND node_id = $2
                 AND service = $3 AND route = $4 AND consumer = $5 AND status = $6 AND cp = $9"
            } else {
                "INSERT INTO analytics_minutes (minute, node_id, service, route, consumer, status, count, hist, cp)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            };
            sqlx::query(q)
                .bind(r.minute)
                .bind(node.to_string())
                .bind(r.service.clone())
                .bind(r.route.clone())
                .bind(r.consumer.clone())
                .bind(r.status as i64)
                .bind(merged.count as i64)
                .bind(hist)
                .bind(self.cp)
                .execute(&mut *tx)
                .await?;
        }
        Ok(true)
        }
        .await;
        // A batch counted already changes nothing: rolled back.
        match result {
            Ok(false) => {
                tx.rollback().await?;
                Ok(false)
            }
            other => crate::finish(tx, other).await,
        }
    }

    /// Stored rows in a time range, with the node each came from.
    pub async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<(String, Row)>, StoreError> {
        let mut sql = String::from(
            "SELECT minute, node_id, service, route, consumer, status, count, hist FROM analytics_minutes
             WHERE minute >= $1 AND minute < $2 AND cp = $3",
        );
        let filters = [
            ("node_id", &q.node),
            ("service", &q.service),
            ("route", &q.route),
            ("consumer", &q.consumer),
        ];
        let mut n = 3;
        for (col, v) in &filters {
            if v.is_some() {
                n += 1;
                sql.push_str(&format!(" AND {col} = ${n}"));
            }
        }
        sql.push_str(" ORDER BY minute");
        let mut query = sqlx::query(&sql).bind(q.start).bind(q.end).bind(self.cp);
        for (_, v) in filters {
            if let Some(v) = v {
                query = query.bind(v.clone());
            }
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let h: Hists =
                    serde_json::from_str(&r.try_get::<String, _>(7)?).map_err(corrupt)?;
                Ok((
                    r.try_get(1)?,
                    Row {
                        minute: r.try_get(0)?,
                        service: r.try_get(2)?,
                        route: r.try_get(3)?,
                        consumer: r.try_get(4)?,
                        status: r.try_get::<i64, _>(5)? as u16,
                        count: r.try_get::<i64, _>(6)? as u64,
                        total: h.total,
                        upstream: h.upstream,
                        gateway: h.gateway,
                    },
                ))
            })
            .collect()
    }

    /// Remove analytics, of every control plane, older than `before` (Unix seconds); returns
    /// the rows removed.
    pub async fn purge_analytics(&self, before: i64) -> Result<u64, StoreError> {
        let n = sqlx::query("DELETE FROM analytics_minutes WHERE minute < $1")
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM analytics_batches WHERE received_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(n)
    }
}
