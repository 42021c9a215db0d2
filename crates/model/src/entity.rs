//! One stored entity as the planes hold it: its JSON text, not a parsed tree.
//!
//! A configuration of 10,000 entities held as `serde_json` maps costs about 2 KB an entity (a
//! hash index, a key string and a 80-byte value per field); as text it costs what it serialises
//! to, about a fifth. A node reads an entity whole when it builds what runs from it (a typed
//! value through [`Entity::parse`], or a map through [`Entity::doc`]) and otherwise only needs
//! its id, its digest and its text (to send, to cache), so the text is what is kept.

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::Doc;

/// One entity: shared, immutable, its top-level nulls left out (an absent optional field and
/// a null one mean the same to every reader, and hash the same).
#[derive(Clone)]
pub struct Entity(Arc<Inner>);

struct Inner {
    id: Box<str>,
    json: Box<RawValue>,
    /// [`crate::hash::entity_digest`] under the type the entity is filed under (an entity is
    /// only ever filed under one), computed once when first asked.
    digest: OnceLock<u128>,
}

/// Why a text is not an entity.
#[derive(Debug, thiserror::Error)]
#[error("not an entity document: {0}")]
pub struct EntityError(#[from] serde_json::Error);

impl Entity {
    /// The entity of a document; its nulls at the top level are left out.
    pub fn new(doc: &Doc) -> Entity {
        let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        let mut text = String::with_capacity(256);
        text.push('{');
        for (k, v) in doc.iter().filter(|(_, v)| !v.is_null()) {
            if text.len() > 1 {
                text.push(',');
            }
            // Writing strings and values to a String cannot fail.
            text.push_str(&serde_json::to_string(k).unwrap_or_default());
            text.push(':');
            text.push_str(&serde_json::to_string(v).unwrap_or_default());
        }
        text.push('}');
        Entity(Arc::new(Inner {
            id: id.into(),
            // Text serialised from a map is a JSON object.
            json: RawValue::from_string(text).unwrap_or_else(|_| empty_object()),
            digest: OnceLock::new(),
        }))
    }

    /// The entity of an object's JSON text, as read from the wire or a cache.
    pub fn from_json(json: Box<RawValue>) -> Result<Entity, EntityError> {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow, default)]
            id: Option<std::borrow::Cow<'a, str>>,
        }
        let id: Id<'_> = serde_json::from_str(json.get())?;
        let id: Box<str> = id.id.as_deref().unwrap_or_default().into();
        let e = Entity(Arc::new(Inner {
            id,
            json,
            digest: OnceLock::new(),
        }));
        if e.json().contains(":null") {
            // Text from elsewhere may carry nulls: leave them out, as every entity does.
            return Ok(Entity::new(&e.doc()));
        }
        Ok(e)
    }

    /// The entity's `id` (empty when it has none).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The entity's JSON text.
    pub fn json(&self) -> &str {
        self.0.json.get()
    }

    /// The entity as a document, parsed from its text: for readers that need every field.
    pub fn doc(&self) -> Doc {
        serde_json::from_str(self.json()).unwrap_or_default()
    }

    /// The entity as a typed value, parsed from its text.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, EntityError> {
        Ok(serde_json::from_str(self.json())?)
    }

    /// One field, parsed from the text: for readers that need one or two.
    pub fn get(&self, field: &str) -> Option<Value> {
        self.doc().remove(field)
    }

    /// The entity's digest as an entity of type `kind` ([`crate::hash::entity_digest`]).
    pub fn digest(&self, kind: &str) -> u128 {
        *self
            .0
            .digest
            .get_or_init(|| crate::hash::entity_digest(kind, &self.doc()))
    }

    /// Record a digest known already (a cache that stored it), so that it is not computed.
    pub fn with_digest(self, digest: u128) -> Entity {
        let _ = self.0.digest.set(digest);
        self
    }

    /// Whether this is the same shared entity as `other` (not merely equal).
    pub fn ptr_eq(&self, other: &Entity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

impl From<Doc> for Entity {
    fn from(doc: Doc) -> Entity {
        Entity::new(&doc)
    }
}

impl From<&Doc> for Entity {
    fn from(doc: &Doc) -> Entity {
        Entity::new(doc)
    }
}

impl PartialEq for Entity {
    fn eq(&self, other: &Entity) -> bool {
        self.ptr_eq(other) || self.json() == other.json()
    }
}

impl std::fmt::Debug for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json())
    }
}

impl serde::Serialize for Entity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.json.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Entity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(d)?;
        Entity::from_json(json).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Doc {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn text_round_trips_without_top_level_nulls() {
        let d = doc(
            json!({"id": "r", "name": null, "paths": ["/"], "service": {"id": "s", "x": null}}),
        );
        let e = Entity::new(&d);
        assert_eq!(e.id(), "r");
        assert_eq!(
            e.doc(),
            doc(json!({"id": "r", "paths": ["/"], "service": {"id": "s", "x": null}}))
        );
        assert_eq!(e.digest("routes"), crate::hash::entity_digest("routes", &d));
        let read: Entity = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(read, e);
        assert_eq!(read.digest("routes"), e.digest("routes"));
        // Text with nulls from elsewhere loses them too.
        let read: Entity = serde_json::from_value(json!({"id": "r", "name": null})).unwrap();
        assert_eq!(read.json(), r#"{"id":"r"}"#);
        assert!(serde_json::from_value::<Entity>(json!([1])).is_err());
    }
}
