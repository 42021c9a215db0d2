//! Incremental changes between two configuration versions, as the control plane sends them and
//! both planes apply them: a keyed set of upserts and deletes that turns the configuration at
//! `from` into the one at `to`.

use serde::{Deserialize, Serialize};

use crate::hash::Digests;
use crate::{Config, Entity};

/// A configuration to run, as the planes hand it on: the whole configuration, its digests,
/// its version and, when it was reached by a delta, the version the delta started from and
/// its changes (so that a proxy running that version patches what they touched instead of
/// rebuilding).
pub struct Update<'a> {
    pub config: &'a Config,
    pub digests: &'a Digests,
    pub version: i64,
    pub changes: Option<(i64, &'a [Change])>,
}

/// Where a configuration goes to run: the proxy (on a traditional node, following the store; on
/// a data plane, following its control plane), or a test's recorder.
pub trait ConfigSink: Send + Sync + 'static {
    /// Run the configuration of `update`; an error (the sink's own, the reason logged or
    /// reported to the control plane) leaves the running one in place.
    fn apply(&self, update: &Update<'_>) -> Result<(), SinkError>;
}

/// Why a sink refused a configuration.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One entity changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// The entity as it now is (created or replaced).
    Upsert { entity: String, doc: Entity },
    /// The entity is gone.
    Delete { entity: String, id: String },
}

/// A change as read: a plain record, so that the entity's text is taken as it is (serde's
/// tagged enums buffer their content, which loses it).
#[derive(Deserialize)]
struct ChangeRecord {
    op: Op,
    entity: String,
    #[serde(default)]
    doc: Option<Entity>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Upsert,
    Delete,
}

impl<'de> Deserialize<'de> for Change {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = ChangeRecord::deserialize(d)?;
        match r.op {
            Op::Upsert => Ok(Change::Upsert {
                entity: r.entity,
                doc: r.doc.ok_or_else(|| D::Error::missing_field("doc"))?,
            }),
            Op::Delete => Ok(Change::Delete {
                entity: r.entity,
                id: r.id.ok_or_else(|| D::Error::missing_field("id"))?,
            }),
        }
    }
}

impl Change {
    pub fn entity(&self) -> &str {
        match self {
            Change::Upsert { entity, .. } | Change::Delete { entity, .. } => entity,
        }
    }
}

/// Why a change cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeltaError {
    #[error("change {index}: unknown entity type '{entity}'")]
    UnknownEntity { index: usize, entity: String },
    #[error("change {index}: {entity} document has no string 'id'")]
    MissingId { index: usize, entity: String },
}

impl Config {
    /// Keep every entity list sorted by id, the order [`Config::apply`] relies on. Exports from
    /// the store are already in that order.
    pub fn sort(&mut self) {
        for docs in self.entities.values_mut() {
            docs.sort_by(|a, b| a.id().cmp(b.id()));
        }
    }

    /// Apply `changes` in order, all or none: on error the configuration is left unchanged.
    /// Each change costs a binary search in its entity's list (kept sorted by id).
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), DeltaError> {
        self.apply_inner(changes, None)
    }

    /// [`Config::apply`], keeping `digests` (this configuration's) up to date: each change
    /// digests the document it replaces or removes and the one it brings, nothing else.
    pub fn apply_tracked(
        &mut self,
        changes: &[Change],
        digests: &mut Digests,
    ) -> Result<(), DeltaError> {
        self.apply_inner(changes, Some(digests))
    }

    fn apply_inner(
        &mut self,
        changes: &[Change],
        mut digests: Option<&mut Digests>,
    ) -> Result<(), DeltaError> {
        for (index, c) in changes.iter().enumerate() {
            let entity = c.entity();
            if crate::entities::entity(entity).is_none() {
                return Err(DeltaError::UnknownEntity {
                    index,
                    entity: entity.to_string(),
                });
            }
            if let Change::Upsert { doc, .. } = c {
                if doc.id().is_empty() {
                    return Err(DeltaError::MissingId {
                        index,
                        entity: entity.to_string(),
                    });
                }
            }
        }
        for c in changes {
            match c {
                Change::Upsert { entity, doc } => {
                    let docs = self.entities.entry(entity.clone()).or_default();
                    let old = match docs.binary_search_by(|d| d.id().cmp(doc.id())) {
                        Ok(i) => Some(std::mem::replace(&mut docs[i], doc.clone())),
                        Err(i) => {
                            docs.insert(i, doc.clone());
                            None
                        }
                    };
                    if let Some(d) = digests.as_deref_mut() {
                        if let Some(old) = old {
                            d.remove(entity, &old);
                        }
                        d.add(entity, doc);
                    }
                }
                Change::Delete { entity, id } => {
                    if let Some(docs) = self.entities.get_mut(entity) {
                        if let Ok(i) = docs.binary_search_by(|d| d.id().cmp(id.as_str())) {
                            let old = docs.remove(i);
                            if let Some(d) = digests.as_deref_mut() {
                                d.remove(entity, &old);
                            }
                        }
                        if docs.is_empty() {
                            self.entities.remove(entity);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Collapse a change log into one change per entity, the last one winning, in first-seen order.
pub fn collapse(changes: Vec<Change>) -> Vec<Change> {
    let mut last: std::collections::HashMap<(String, String), usize> = Default::default();
    let key = |c: &Change| match c {
        Change::Upsert { entity, doc } => (entity.clone(), doc.id().to_string()),
        Change::Delete { entity, id } => (entity.clone(), id.clone()),
    };
    let mut out: Vec<Option<Change>> = Vec::with_capacity(changes.len());
    for c in changes {
        let k = key(&c);
        if let Some(&i) = last.get(&k) {
            out[i] = None;
        }
        last.insert(k, out.len());
        out.push(Some(c));
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use serde_json::Value;

    fn doc(v: Value) -> Entity {
        Entity::new(v.as_object().unwrap())
    }

    #[test]
    fn upserts_and_deletes_keep_order_and_match_a_full_build() {
        let mut c = Config::default();
        let mut digests = Digests::default();
        c.apply_tracked(
            &[
                Change::Upsert {
                    entity: "services".into(),
                    doc: doc(json!({"id": "b", "host": "b"})),
                },
                Change::Upsert {
                    entity: "services".into(),
                    doc: doc(json!({"id": "a", "host": "a"})),
                },
                Change::Upsert {
                    entity: "services".into(),
                    doc: doc(json!({"id": "b", "host": "b2"})),
                },
            ],
            &mut digests,
        )
        .unwrap();
        assert_eq!(digests, Digests::of(&c));
        let hosts: Vec<_> = c.entities["services"]
            .iter()
            .map(|d| d.doc()["host"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(hosts, ["a", "b2"]);
        c.apply_tracked(
            &[Change::Delete {
                entity: "services".into(),
                id: "a".into(),
            }],
            &mut digests,
        )
        .unwrap();
        assert_eq!(digests, Digests::of(&c));
        c.apply(&[Change::Delete {
            entity: "services".into(),
            id: "b".into(),
        }])
        .unwrap();
        assert!(c.entities.is_empty());
        assert_eq!(crate::hash::hash_config(&c).config, crate::hash::EMPTY_HASH);
    }

    /// Documents read back lose their nulls, and no capacity is left over; hashes agree.
    #[test]
    fn documents_are_read_back_compacted() {
        let c: Change = serde_json::from_str(
            &json!({"op": "upsert", "entity": "routes", "doc": {"id": "r", "name": null, "paths": ["/"], "headers": null, "service": {"id": "s", "x": null}}}).to_string(),
        )
        .unwrap();
        let d: Change =
            serde_json::from_str(r#"{"op":"delete","entity":"routes","id":"r"}"#).unwrap();
        assert!(matches!(d, Change::Delete { id, .. } if id == "r"));
        assert!(serde_json::from_str::<Change>(r#"{"op":"upsert","entity":"routes"}"#).is_err());
        let Change::Upsert { doc: d, .. } = &c else {
            panic!("an upsert");
        };
        let d = d.doc();
        assert_eq!(d.len(), 3);
        assert!(d.get("name").is_none());
        assert_eq!(
            d["service"],
            json!({"id": "s", "x": null}),
            "nested values stay"
        );
        let full = doc(
            json!({"id": "r", "name": null, "paths": ["/"], "headers": null, "service": {"id": "s", "x": null}}),
        );
        assert_eq!(
            crate::hash::entity_digest("routes", &d),
            full.digest("routes")
        );
    }

    #[test]
    fn a_bad_change_applies_nothing() {
        let mut c = Config::default();
        let err = c
            .apply(&[
                Change::Upsert {
                    entity: "services".into(),
                    doc: doc(json!({"id": "a"})),
                },
                Change::Upsert {
                    entity: "gizmos".into(),
                    doc: doc(json!({"id": "x"})),
                },
            ])
            .unwrap_err();
        assert_eq!(err.to_string(), "change 1: unknown entity type 'gizmos'");
        assert!(c.entities.is_empty());
    }

    #[test]
    fn collapse_keeps_the_last_change_per_entity() {
        let out = collapse(vec![
            Change::Upsert {
                entity: "routes".into(),
                doc: doc(json!({"id": "r"})),
            },
            Change::Upsert {
                entity: "services".into(),
                doc: doc(json!({"id": "s"})),
            },
            Change::Delete {
                entity: "routes".into(),
                id: "r".into(),
            },
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].entity(), "services");
        assert!(matches!(&out[1], Change::Delete { id, .. } if id == "r"));
    }
}
