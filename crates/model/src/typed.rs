//! The entities a node runs, as typed values: what the proxy builds its routes, services,
//! targets, consumers, plugins and certificates from.
//!
//! A value comes from an [`Entity`] through `TryFrom`, once, with a [`TypedError`] naming the
//! entity and the field when its document is not what the schema says. Defaults live in the
//! entity schemas ([`crate::entities`]) alone: a field that has a default is required here, and
//! a document that lacks it (a hand-written file, a test) is completed from the schema before
//! it is read. Stored documents always carry their defaults, so they take the direct path: one
//! parse of the entity's text into the value, no tree in between.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::Entity;

/// Why an entity cannot be read as the typed value a node runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{entity} '{id}': {reason}")]
pub struct TypedError {
    pub entity: &'static str,
    pub id: String,
    pub reason: String,
}

/// A reference to another entity, as documents hold it: `{"id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ref {
    pub id: String,
}

/// A typed entity: its type's name, and the schema its defaults come from.
pub trait Typed: DeserializeOwned {
    const ENTITY: &'static str;

    /// Read `e` as this type.
    fn read(e: &Entity) -> Result<Self, TypedError> {
        let first = match e.parse::<Self>() {
            Ok(v) => return Ok(v),
            Err(err) => err,
        };
        let error = |reason: String| TypedError {
            entity: Self::ENTITY,
            id: e.id().to_string(),
            reason,
        };
        // A document without its defaults: complete it from the schema and read it again.
        let schema = crate::entities::entity(Self::ENTITY)
            .ok_or_else(|| error("no such entity type".into()))?;
        let mut doc = e.doc();
        let mut filled = false;
        for f in &schema.fields {
            if let Some(d) = &f.default {
                if doc.get(f.name).is_none_or(Value::is_null) {
                    doc.insert(f.name.to_string(), d.clone());
                    filled = true;
                }
            }
        }
        if !filled {
            return Err(error(first.to_string()));
        }
        serde_json::from_value(Value::Object(doc)).map_err(|e| error(e.to_string()))
    }
}

macro_rules! typed {
    ($t:ty, $entity:literal) => {
        impl Typed for $t {
            const ENTITY: &'static str = $entity;
        }
        impl TryFrom<&Entity> for $t {
            type Error = TypedError;
            fn try_from(e: &Entity) -> Result<Self, TypedError> {
                <$t as Typed>::read(e)
            }
        }
    };
}

/// A service: where requests go.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: Option<String>,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub connect_timeout: u64,
    pub write_timeout: u64,
    pub read_timeout: u64,
    pub retries: u32,
    pub enabled: bool,
    /// Verify an https upstream's certificate; unset means no (as Kong).
    pub tls_verify: Option<bool>,
}
typed!(Service, "services");

/// A route: which requests go to which service.
#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub id: String,
    pub name: Option<String>,
    pub service: Option<Ref>,
    pub protocols: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    /// Header name to the values that match (`~*` marks a regex).
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    pub snis: Option<Vec<String>>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub regex_priority: i64,
    pub https_redirect_status_code: u16,
}
typed!(Route, "routes");

/// A target of an upstream.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub id: String,
    pub upstream: Ref,
    pub target: String,
    pub weight: u64,
}
typed!(Target, "targets");

/// A consumer.
#[derive(Debug, Clone, Deserialize)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
}
typed!(Consumer, "consumers");

/// A plugin instance: its scope and its configuration (which the plugin's own builder reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Plugin {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub route: Option<Ref>,
    pub service: Option<Ref>,
    pub consumer: Option<Ref>,
    #[serde(default)]
    pub consumer_group: Option<Ref>,
    pub protocols: Vec<String>,
    #[serde(default)]
    pub config: Value,
}
typed!(Plugin, "plugins");

/// A certificate and its key (and the alternate pair).
#[derive(Debug, Clone, Deserialize)]
pub struct Certificate {
    pub id: String,
    pub cert: String,
    pub key: String,
    pub cert_alt: Option<String>,
    pub key_alt: Option<String>,
}
typed!(Certificate, "certificates");

/// A server name served with a certificate.
#[derive(Debug, Clone, Deserialize)]
pub struct Sni {
    pub id: String,
    pub name: String,
    pub certificate: Ref,
}
typed!(Sni, "snis");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(v: Value) -> Entity {
        Entity::new(v.as_object().unwrap())
    }

    #[test]
    fn defaults_come_from_the_schema_and_errors_name_the_entity() {
        // A hand-written document: the schema's defaults fill what it leaves out.
        let s = Service::try_from(&entity(json!({"id": "s", "host": "example.com"}))).unwrap();
        assert_eq!((s.port, s.protocol.as_str()), (80, "http"));
        assert_eq!((s.retries, s.connect_timeout, s.enabled), (5, 60_000, true));
        assert_eq!(s.tls_verify, None);
        let r = Route::try_from(&entity(json!({"id": "r", "paths": ["/a"]}))).unwrap();
        assert!(r.strip_path && !r.preserve_host);
        assert_eq!(r.https_redirect_status_code, 426);
        let e = Service::try_from(&entity(json!({"id": "s", "host": "h", "port": "eighty"})))
            .unwrap_err();
        assert_eq!((e.entity, e.id.as_str()), ("services", "s"));
        assert!(e.reason.contains("invalid type"), "{e}");
        let e = Target::try_from(&entity(json!({"id": "t", "target": "a:1"}))).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
    }
}
