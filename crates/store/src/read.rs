//! Reads: by id, by unique key, paginated lists with reference and tag filters, tags,
//! whole-config export, version and change log.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gantry_model::{Config, Doc};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// Kong's `tags` filter: `a,b` all of them, `a/b` any of them.
#[derive(Debug, Clone, PartialEq)]
pub enum TagFilter {
    All(Vec<String>),
    Any(Vec<String>),
}

/// A `tags` filter that cannot be read (Kong's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagFilterError {
    /// Neither `a,b,...` nor `a/b/...` (both separators, or an empty tag between them).
    #[error("invalid option (tags: invalid filter syntax)")]
    Mixed,
    #[error("invalid option (tags: cannot be null)")]
    Empty,
    #[error("invalid option (tags: cannot query more than 5 tags)")]
    TooMany,
    #[error("invalid option (tags: must only contain printable ascii (except `,` and `/`) or valid utf-8)")]
    Characters,
}

impl TagFilter {
    /// Parse `a,b` (all of them) or `a/b` (any of them), as Kong's Admin API reads `tags`: at
    /// most five, none empty, one separator kind.
    pub fn parse(s: &str) -> Result<TagFilter, TagFilterError> {
        if s.is_empty() {
            return Err(TagFilterError::Empty);
        }
        let any = s.contains('/');
        if any && s.contains(',') {
            return Err(TagFilterError::Mixed);
        }
        let split: Vec<String> = s.split([',', '/']).map(str::to_string).collect();
        if split.iter().any(String::is_empty) {
            return Err(TagFilterError::Mixed);
        }
        if split.len() > 5 {
            return Err(TagFilterError::TooMany);
        }
        if s.chars().any(|c| c.is_ascii() && (c < ' ' || c == '\x7f')) {
            return Err(TagFilterError::Characters);
        }
        Ok(if any {
            TagFilter::Any(split)
        } else {
            TagFilter::All(split)
        })
    }
}

/// A page request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only entities whose `field` references `id`: `(field, id)`.
    pub reference: Option<(String, String)>,
    pub tags: Option<TagFilter>,
    pub size: usize,
    /// The opaque offset of a previous page.
    pub offset: Option<String>,
}

/// A page of results with the offset of the next one.
#[derive(Debug, Clone)]
pub struct Page {
    pub data: Vec<Doc>,
    pub next_offset: Option<String>,
}

/// A row of `/tags`.
#[derive(Debug, Clone, PartialEq)]
pub struct TagRow {
    pub entity_name: String,
    pub entity_id: String,
    pub tag: String,
}

/// One change-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub version: i64,
    pub entity_type: String,
    pub id: String,
    /// `upsert`, `delete` or `reset` (the whole config was replaced).
    pub op: String,
}

/// An opaque page offset for `key` (what lists hand back as `offset`).
pub fn encode_offset(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// The key behind an offset [`encode_offset`] made; [`StoreError::InvalidOffset`] otherwise.
pub fn decode_offset(o: &str) -> Result<String, StoreError> {
    let b = URL_SAFE_NO_PAD
        .decode(o)
        .map_err(|_| StoreError::InvalidOffset)?;
    String::from_utf8(b).map_err(|_| StoreError::InvalidOffset)
}

fn parse_doc(entity: &str, id: &str, text: &str) -> Result<Doc, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        entity: entity.to_string(),
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn row_doc(entity: &str, row: &AnyRow) -> Result<Doc, StoreError> {
    let id: String = row.try_get(0)?;
    let text: String = row.try_get(1)?;
    parse_doc(entity, &id, &text)
}

impl Store {
    /// An entity by id.
    pub async fn get(&self, entity: &str, id: &str) -> Result<Option<Doc>, StoreError> {
        let row = sqlx::query(
            "SELECT id, doc FROM entities WHERE cp = $1 AND entity_type = $2 AND id = $3",
        )
        .bind(self.cp)
        .bind(entity.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| row_doc(entity, &r)).transpose()
    }

    /// An entity by one of its unique keys (`name`, `username`, `cache_key`, ...).
    pub async fn find_by_key(
        &self,
        entity: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError> {
        let row = sqlx::query(
            "SELECT e.id, e.doc FROM entity_keys k JOIN entities e ON e.cp = k.cp AND e.entity_type = k.entity_type AND e.id = k.id
             WHERE k.cp = $1 AND k.entity_type = $2 AND k.key_name = $3 AND k.key_value = $4",
        )
        .bind(self.cp)
        .bind(entity.to_string())
        .bind(key.to_string())
        .bind(value.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| row_doc(entity, &r)).transpose()
    }

    /// A page of entities in id order.
    /// Every entity of a type (those referencing `(field, id)`, when given), page by page.
    pub async fn all(
        &self,
        entity: &str,
        reference: Option<(String, String)>,
    ) -> Result<Vec<Doc>, StoreError> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let page = self
                .list(
                    entity,
                    &ListQuery {
                        reference: reference.clone(),
                        tags: None,
                        size: 1000,
                        offset,
                    },
                )
                .await?;
            out.extend(page.data);
            match page.next_offset {
                Some(o) => offset = Some(o),
                None => return Ok(out),
            }
        }
    }

    pub async fn list(&self, entity: &str, q: &ListQuery) -> Result<Page, StoreError> {
        let after = q
            .offset
            .as_deref()
            .map(decode_offset)
            .transpose()?
            .unwrap_or_default();
        let mut sql = String::from(
            "SELECT e.id, e.doc FROM entities e WHERE e.cp = $1 AND e.entity_type = $2 AND e.id > $3",
        );
        let mut params: Vec<String> = vec![entity.to_string(), after];
        // `$1` is the control plane; the text parameters follow it.
        let n = |params: &Vec<String>| params.len() + 1;
        if let Some((field, id)) = &q.reference {
            params.push(field.clone());
            params.push(id.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM entity_refs r WHERE r.cp = e.cp AND r.entity_type = e.entity_type AND r.id = e.id AND r.field = ${} AND r.ref_id = ${})",
                n(&params) - 1,
                n(&params)
            ));
        }
        match &q.tags {
            Some(TagFilter::All(tags)) => {
                for t in tags {
                    params.push(t.clone());
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM entity_tags t WHERE t.cp = e.cp AND t.entity_type = e.entity_type AND t.id = e.id AND t.tag = ${})",
                        n(&params)
                    ));
                }
            }
            Some(TagFilter::Any(tags)) => {
                let mut marks = Vec::new();
                for t in tags {
                    params.push(t.clone());
                    marks.push(format!("${}", n(&params)));
                }
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM entity_tags t WHERE t.cp = e.cp AND t.entity_type = e.entity_type AND t.id = e.id AND t.tag IN ({}))",
                    marks.join(", ")
                ));
            }
            None => {}
        }
        sql.push_str(&format!(" ORDER BY e.id LIMIT {}", q.size + 1));
        let mut query = sqlx::query(&sql).bind(self.cp);
        for p in params {
            query = query.bind(p);
        }
        let rows = query.fetch_all(self.pool()).await?;
        let more = rows.len() > q.size;
        let mut data = Vec::with_capacity(rows.len().min(q.size));
        for r in rows.iter().take(q.size) {
            data.push(row_doc(entity, r)?);
        }
        let next_offset = if more {
            data.last()
                .and_then(|d| d.get("id"))
                .and_then(|v| v.as_str())
                .map(encode_offset)
        } else {
            None
        };
        Ok(Page { data, next_offset })
    }

    /// Rows of `/tags` (or `/tags/{tag}`), in a stable order.
    pub async fn tags(
        &self,
        tag: Option<&str>,
        size: usize,
        offset: Option<&str>,
    ) -> Result<(Vec<TagRow>, Option<String>), StoreError> {
        let after = offset.map(decode_offset).transpose()?.unwrap_or_default();
        let (a_tag, a_type, a_id) = {
            let mut it = after.splitn(3, '\u{1f}');
            (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            )
        };
        let mut sql = String::from(
            "SELECT tag, entity_type, id FROM entity_tags WHERE cp = $4 AND (tag > $1 OR (tag = $1 AND (entity_type > $2 OR (entity_type = $2 AND id > $3))))",
        );
        if tag.is_some() {
            sql.push_str(" AND tag = $5");
        }
        sql.push_str(&format!(
            " ORDER BY tag, entity_type, id LIMIT {}",
            size + 1
        ));
        let mut query = sqlx::query(&sql)
            .bind(a_tag)
            .bind(a_type)
            .bind(a_id)
            .bind(self.cp);
        if let Some(t) = tag {
            query = query.bind(t.to_string());
        }
        let rows = query.fetch_all(self.pool()).await?;
        let more = rows.len() > size;
        let mut out = Vec::new();
        for r in rows.iter().take(size) {
            out.push(TagRow {
                tag: r.try_get(0)?,
                entity_name: r.try_get(1)?,
                entity_id: r.try_get(2)?,
            });
        }
        let next = if more {
            out.last().map(|l| {
                encode_offset(&format!(
                    "{}\u{1f}{}\u{1f}{}",
                    l.tag, l.entity_name, l.entity_id
                ))
            })
        } else {
            None
        };
        Ok((out, next))
    }

    /// The whole configuration and the version it is at, read in one transaction.
    pub async fn export(&self) -> Result<(Config, i64), StoreError> {
        let mut tx = self.pool().begin().await?;
        let result = async {
            let version: i64 = sqlx::query("SELECT version FROM config_version WHERE id = $1")
                .bind(self.cp)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NoControlPlane(self.cp))?
                .try_get(0)?;
            let rows = sqlx::query(
                "SELECT entity_type, id, doc FROM entities WHERE cp = $1 ORDER BY entity_type, id",
            )
            .bind(self.cp)
            .fetch_all(&mut *tx)
            .await?;
            Ok((version, rows))
        }
        .await;
        let (version, rows) = crate::finish(tx, result).await?;
        let mut config = Config::default();
        for r in rows {
            let t: String = r.try_get(0)?;
            let id: String = r.try_get(1)?;
            let text: String = r.try_get(2)?;
            let d = parse_doc(&t, &id, &text)?;
            config.push(&t, d);
        }
        Ok((config, version))
    }

    /// Every entity of one type, in id order.
    pub async fn all_of(&self, entity: &str) -> Result<Vec<Doc>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM entities WHERE cp = $1 AND entity_type = $2 ORDER BY id",
        )
        .bind(self.cp)
        .bind(entity.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| row_doc(entity, r)).collect()
    }

    /// The current config version (0 for a store never written).
    pub async fn version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT version FROM config_version WHERE id = $1")
                .bind(self.cp)
                .fetch_optional(self.pool())
                .await?
                .ok_or(StoreError::NoControlPlane(self.cp))?
                .try_get(0)?,
        )
    }

    /// The log level set for every node of `scope` (`nodes`, or `control_planes`) that shares
    /// this store: `(seq, level, until)`, the latest change.
    pub async fn cluster_log_level(
        &self,
        scope: &str,
    ) -> Result<Option<(i64, String, i64)>, StoreError> {
        let row = sqlx::query("SELECT seq, level, until FROM cluster_log_level WHERE scope = $1")
            .bind(scope)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    /// Set the log level of every node of `scope` sharing this store (see
    /// [`Store::cluster_log_level`]); returns the change's number.
    pub async fn set_cluster_log_level(
        &self,
        scope: &str,
        level: &str,
        until: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO cluster_log_level (scope, seq, level, until) VALUES ($1, 1, $2, $3)
             ON CONFLICT (scope) DO UPDATE SET seq = cluster_log_level.seq + 1, level = $2, until = $3
             RETURNING seq",
        )
        .bind(scope)
        .bind(level)
        .bind(until)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Every control plane's configuration version, `(key, version)`: one statement.
    pub async fn all_versions(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, version FROM config_version")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Changes after `version`, oldest first, at most `limit`.
    pub async fn changes_since(
        &self,
        version: i64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT version, entity_type, id, op FROM changes WHERE cp = $1 AND version > $2 ORDER BY version, seq LIMIT {limit}"
        ))
        .bind(self.cp)
        .bind(version)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Change {
                    version: r.try_get(0)?,
                    entity_type: r.try_get(1)?,
                    id: r.try_get(2)?,
                    op: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The number of entities of a type.
    pub async fn count(&self, entity: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM entities WHERE cp = $1 AND entity_type = $2")
                .bind(self.cp)
                .bind(entity.to_string())
                .fetch_one(self.pool())
                .await?
                .try_get(0)?,
        )
    }
}
