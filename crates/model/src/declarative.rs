//! Kong's declarative format (`_format_version` "3.0"; "1.1" and "2.1" read and migrated):
//! parsing (JSON or YAML with anchors and merge keys), nested children, references by name
//! or id, whole-document validation with every error and its path, and export.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::document::{prepare, references, unique_keys, Secrets};
use crate::entities::{entity, EntitySchema, ENTITIES};
use crate::{Config, Doc};

/// Every error found in a declarative document, each with the path of what it concerns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("declarative config is invalid: {}", .errors.iter().map(|(p, m)| format!("{p}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct DeclarativeError {
    pub errors: Vec<(String, String)>,
}

impl DeclarativeError {
    fn one(path: &str, msg: impl Into<String>) -> DeclarativeError {
        DeclarativeError {
            errors: vec![(path.to_string(), msg.into())],
        }
    }
    /// `{path: message}`, Kong's `fields` in the error body.
    pub fn fields(&self) -> Value {
        let mut m = Map::new();
        for (p, msg) in &self.errors {
            m.insert(p.clone(), json!(msg));
        }
        Value::Object(m)
    }
    /// `["path: message", ...]`.
    pub fn flattened(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }
}

/// Parse a JSON or YAML text into a JSON value. YAML anchors, aliases and `<<` merge keys work.
pub fn parse_text(text: &str) -> Result<Value, DeclarativeError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| {
            DeclarativeError::one(
                &format!("line {} column {}", e.line(), e.column()),
                format!("invalid JSON: {e}"),
            )
        });
    }
    let yaml_err = |e: serde_yaml_ng::Error| {
        let at = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "document".into());
        DeclarativeError::one(&at, format!("invalid YAML: {e}"))
    };
    // Without merge keys, straight into JSON values (anchors and aliases still resolve).
    if !text.contains("<<") {
        return serde_yaml_ng::from_str::<Value>(text).map_err(yaml_err);
    }
    let mut y: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "document".into());
        DeclarativeError::one(&at, format!("invalid YAML: {e}"))
    })?;
    y.apply_merge()
        .map_err(|e| DeclarativeError::one("document", format!("invalid YAML merge key: {e}")))?;
    serde_json::to_value(y)
        .map_err(|e| DeclarativeError::one("document", format!("unsupported YAML value: {e}")))
}

/// Options of a load.
#[derive(Clone)]
pub struct LoadOptions {
    /// Unix seconds used for missing timestamps.
    pub now: i64,
    /// The plugins the node enables: any other is refused, with Kong's message.
    pub plugins: crate::plugins::Catalog,
}

const META_KEYS: &[&str] = &[
    "_format_version",
    "_transform",
    "_comment",
    "_workspace",
    "_info",
    "_plugin_levels",
];

/// Validate a whole declarative document and turn it into a configuration.
pub fn load(doc: Value, opts: LoadOptions) -> Result<Config, DeclarativeError> {
    let Value::Object(top) = doc else {
        return Err(DeclarativeError::one(
            "document",
            "expected an object at the top level",
        ));
    };
    let mut errors = Vec::new();
    let version = match top.get("_format_version") {
        Some(Value::String(v)) if ["1.1", "2.1", "3.0"].contains(&v.as_str()) => v.clone(),
        Some(Value::String(v)) => {
            return Err(DeclarativeError::one(
                "_format_version",
                format!("unsupported value '{v}': expected one of: 1.1, 2.1, 3.0"),
            ))
        }
        Some(_) => {
            return Err(DeclarativeError::one(
                "_format_version",
                "expected a string",
            ))
        }
        None => {
            return Err(DeclarativeError::one(
                "_format_version",
                "required field missing",
            ))
        }
    };
    // Passwords may arrive hashed (exports) or clear (hand-written files): hash what is not.
    let secrets = Secrets::MaybeHashed;
    let mut raw: Vec<Raw> = Vec::new();
    for (k, v) in top {
        // `x-` keys are a YAML convention for anchors; `_` keys are metadata.
        if META_KEYS.contains(&k.as_str()) || k.starts_with("x-") || k.starts_with('_') {
            continue;
        }
        match entity(&k) {
            Some(schema) => collect(schema, v, &k, None, &mut raw, &mut errors),
            None => errors.push((k, "unknown field".to_string())),
        }
    }
    if version != "3.0" {
        for r in raw.iter_mut().filter(|r| r.schema.name == "routes") {
            migrate_regex_paths(&mut r.input);
        }
    }
    resolve_references(&mut raw, &mut errors);
    // A membership's id is its pair's, however it was written.
    for r in raw
        .iter_mut()
        .filter(|r| r.schema.name == "consumer_group_consumers")
    {
        let side = |k: &str| {
            r.input
                .get(k)
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let (Some(g), Some(c)) = (side("consumer_group"), side("consumer")) {
            let id = crate::entities::membership_id(&g, &c);
            r.input.insert("id".into(), json!(id));
        }
    }
    let mut config = Config::default();
    let mut seen: HashMap<(&str, &str, String), String> = HashMap::new();
    let mut prepared: Vec<(&'static EntitySchema, String, Doc)> = Vec::with_capacity(raw.len());
    // Partials by id, for the plugins that name them to be validated with them in place.
    let partials: HashMap<String, (String, Value)> = raw
        .iter()
        .filter(|r| r.schema.name == "partials")
        .filter_map(|r| {
            let id = r.input.get("id")?.as_str()?.to_string();
            let kind = r.input.get("type")?.as_str()?.to_string();
            let config = r.input.get("config").cloned().unwrap_or(json!({}));
            Some((id, (kind, config)))
        })
        .collect();
    for Raw {
        schema,
        mut input,
        path,
    } in raw
    {
        let mut kept = Vec::new();
        if schema.name == "plugins" {
            let refs = crate::plugins::partial_ids(&input);
            let plugin = input
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| opts.plugins.schema(n));
            if let (Some(p), false) = (plugin, refs.is_empty()) {
                let mut config = match input.remove("config") {
                    Some(Value::Object(c)) => c,
                    _ => Map::new(),
                };
                match crate::plugins::fill_partials(p, &mut config, &refs, &|id| {
                    partials.get(id).cloned()
                }) {
                    Ok(k) => kept = k,
                    Err(m) => errors.push((format!("{path}.partials"), m)),
                }
                input.insert("config".into(), Value::Object(config));
            }
        }
        let r = RawRef {
            schema,
            path: &path,
        };
        match prepare(schema, input, secrets, opts.now, &opts.plugins) {
            Ok(mut d) => {
                if let Some(Value::Object(c)) = d.get_mut("config") {
                    for (field, own) in kept {
                        c.insert(field, own);
                    }
                }
                let id = ("id", d["id"].as_str().unwrap_or_default().to_string());
                for (key, val) in unique_keys(r.schema, &d)
                    .into_iter()
                    .chain(std::iter::once(id))
                {
                    if let Some(first) =
                        seen.insert((r.schema.name, key, val.clone()), r.path.to_string())
                    {
                        errors.push((
                            r.path.to_string(),
                            format!(
                                "uniqueness violation: '{}' entity with {key} set to '{val}' already declared at {first}",
                                r.schema.name
                            ),
                        ));
                    }
                }
                prepared.push((schema, path.clone(), d));
            }
            Err(e) => {
                for line in e.flatten() {
                    let (p, m) = line.split_once(": ").unwrap_or(("", &line));
                    let at = if p.is_empty() {
                        r.path.to_string()
                    } else {
                        format!("{}.{p}", r.path)
                    };
                    errors.push((at, m.to_string()));
                }
            }
        }
    }
    let ids: HashSet<(&str, String)> = prepared
        .iter()
        .map(|(s, _, d)| (s.name, d["id"].as_str().unwrap_or("").to_string()))
        .collect();
    for (schema, path, d) in &prepared {
        for rf in references(schema, d) {
            if !ids.contains(&(rf.target, rf.id.clone())) && rf.id != uuid::Uuid::nil().to_string()
            {
                errors.push((
                    format!("{path}.{}", rf.field),
                    format!(
                        "the foreign key '{}' does not reference an existing '{}' entity",
                        rf.id, rf.target
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(DeclarativeError { errors });
    }
    for (schema, _, d) in prepared {
        config.push(schema.name, d);
    }
    Ok(config)
}

struct Raw {
    schema: &'static EntitySchema,
    input: Doc,
    path: String,
}

struct RawRef<'a> {
    schema: &'static EntitySchema,
    path: &'a str,
}

/// Flatten a list of entities and their nested children into `out`.
fn collect(
    schema: &'static EntitySchema,
    v: Value,
    path: &str,
    parent: Option<(&'static str, Value)>,
    out: &mut Vec<Raw>,
    errors: &mut Vec<(String, String)>,
) {
    let list = match v {
        Value::Array(a) => a,
        Value::Null => return,
        // An empty object is how some tools write an empty list.
        Value::Object(m) if m.is_empty() => return,
        _ => {
            errors.push((path.to_string(), "expected an array".into()));
            return;
        }
    };
    for (i, item) in list.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Value::Object(mut m) = item else {
            errors.push((p, "expected an object".into()));
            continue;
        };
        if let Some((field, ref_value)) = &parent {
            if m.get(*field).is_some_and(|v| !v.is_null()) && m.get(*field) != Some(ref_value) {
                errors.push((
                    format!("{p}.{field}"),
                    "must not be set on a nested entity".into(),
                ));
                continue;
            }
            m.insert(field.to_string(), ref_value.clone());
        }
        // decK's memberships: a group's `consumers` and a consumer's `groups`, each item
        // naming the other side.
        for (parent, list, other) in [
            ("consumer_groups", "consumers", "consumer"),
            ("consumers", "groups", "consumer_group"),
        ] {
            if schema.name != parent {
                continue;
            }
            match m.remove(list) {
                Some(Value::Array(items)) => {
                    let mut joined: Vec<Value> = match m.remove("consumer_group_consumers") {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    joined.extend(items.into_iter().map(|i| json!({ other: i })));
                    m.insert("consumer_group_consumers".into(), Value::Array(joined));
                }
                Some(Value::Null) | None => {}
                Some(_) => errors.push((format!("{p}.{list}"), "expected an array".into())),
            }
        }
        // Children nested under this entity.
        let mut children = Vec::new();
        for child in ENTITIES.iter() {
            if let Some(fk) = child
                .foreign_fields()
                .find(|(_, t, _)| *t == schema.name)
                .map(|(f, _, _)| f)
            {
                if child.name == schema.name {
                    continue;
                }
                if let Some(cv) = m.remove(child.name) {
                    children.push((child, fk, cv));
                }
            }
        }
        // A certificate's `snis` may be a list of names.
        if schema.name == "certificates" {
            if let Some((_, _, Value::Array(a))) =
                children.iter_mut().find(|(c, _, _)| c.name == "snis")
            {
                for e in a.iter_mut() {
                    if let Value::String(s) = e {
                        *e = json!({ "name": s });
                    }
                }
            }
        }
        if m.get("id").is_none_or(Value::is_null) {
            m.insert("id".into(), json!(provisional_id(schema, &m, out.len())));
        }
        let id = m["id"].clone();
        out.push(Raw {
            schema,
            input: m,
            path: p.clone(),
        });
        for (child, fk, cv) in children {
            collect(
                child,
                cv,
                &format!("{p}.{}", child.name),
                Some((fk, json!({ "id": id }))),
                out,
                errors,
            );
        }
    }
}

/// A stable id for an entity that has none: from its natural key when it has one, else from its
/// content, so that loading the same file twice gives the same ids.
fn provisional_id(schema: &EntitySchema, m: &Doc, index: usize) -> String {
    let natural = schema
        .endpoint_key
        .and_then(|k| m.get(k))
        .and_then(Value::as_str)
        .map(|v| format!("{}|{v}", schema.name));
    let seed = natural.unwrap_or_else(|| {
        let mut s = String::new();
        crate::hash::canonical(&Value::Object(m.clone()), &mut s);
        format!("{}|{s}|{index}", schema.name)
    });
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string()
}

/// Resolve references given by name (`service: my-service`) or as objects with a natural key
/// into `{"id": ...}`.
fn resolve_references(raw: &mut [Raw], errors: &mut Vec<(String, String)>) {
    let mut by_key: HashMap<(&str, String), String> = HashMap::new();
    let mut ids: HashSet<(&str, String)> = HashSet::new();
    for r in raw.iter() {
        let Some(id) = r.input.get("id").and_then(Value::as_str) else {
            continue;
        };
        ids.insert((r.schema.name, id.to_string()));
        for k in r.schema.unique_fields() {
            if let Some(Value::String(v)) = r.input.get(k) {
                by_key.insert((r.schema.name, v.clone()), id.to_string());
            }
        }
    }
    for r in raw.iter_mut() {
        let fields: Vec<(&'static str, &'static str)> =
            r.schema.foreign_fields().map(|(f, t, _)| (f, t)).collect();
        for (field, target) in fields {
            let Some(v) = r.input.get(field).cloned() else {
                continue;
            };
            let key = match &v {
                Value::String(s) => Some(s.clone()),
                Value::Object(m) if !m.contains_key("id") => {
                    m.values().find_map(|x| x.as_str().map(str::to_string))
                }
                _ => None,
            };
            let Some(key) = key else { continue };
            let resolved = if ids.contains(&(target, key.clone())) {
                Some(key.clone())
            } else {
                by_key.get(&(target, key.clone())).cloned()
            };
            match resolved {
                Some(id) => {
                    r.input.insert(field.to_string(), json!({ "id": id }));
                }
                None => {
                    errors.push((
                        format!("{}.{field}", r.path),
                        format!("could not find '{target}' entity '{key}'"),
                    ));
                    // Reported once: the nil id is skipped by the foreign key check.
                    r.input.insert(
                        field.to_string(),
                        json!({ "id": uuid::Uuid::nil().to_string() }),
                    );
                }
            }
        }
    }
}

/// Before 3.0, a path with regex characters was a regex; 3.0 marks regexes with `~`.
fn migrate_regex_paths(route: &mut Doc) {
    if let Some(Value::Array(paths)) = route.get_mut("paths") {
        for p in paths.iter_mut() {
            if let Value::String(s) = p {
                let plain = s.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '/' | '%')
                });
                if !plain && !s.starts_with('~') {
                    *s = format!("~{s}");
                }
            }
        }
    }
}

/// Export a configuration as a `_format_version: "3.0"` document: one flat list per entity type,
/// parents first, entities in id order, null fields left out.
pub fn export(config: &Config) -> Value {
    let mut out = Map::new();
    out.insert("_format_version".into(), json!("3.0"));
    out.insert("_transform".into(), json!(false));
    let now = crate::unix_now();
    for schema in ENTITIES
        .iter()
        .filter(|s| !crate::entities::NOT_EXPORTED.contains(&s.name))
    {
        let Some(docs) = config.entities.get(schema.name) else {
            continue;
        };
        if docs.is_empty() {
            continue;
        }
        // What has run out is gone.
        let mut docs: Vec<&crate::Entity> = docs
            .iter()
            .filter(|e| {
                e.json()
                    .contains("\"ttl\"")
                    .then(|| crate::entities::expires_at(&e.doc()))
                    .flatten()
                    .is_none_or(|at| at > now)
            })
            .collect();
        docs.sort_by(|a, b| a.id().cmp(b.id()));
        // Entities hold no top-level nulls.
        let list: Vec<Value> = docs.into_iter().map(|d| Value::Object(d.doc())).collect();
        out.insert(schema.name.into(), Value::Array(list));
    }
    Value::Object(out)
}

/// Entity counts, for messages.
pub fn counts(config: &Config) -> BTreeMap<String, usize> {
    config
        .entities
        .iter()
        .map(|(k, v)| (k.clone(), v.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_config;

    fn opts(now: i64) -> LoadOptions {
        LoadOptions {
            now,
            plugins: crate::plugins::testing::catalog(),
        }
    }
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn nested_yaml_with_anchors_and_names() {
        let text = r#"
_format_version: "3.0"
x-timeouts: &timeouts
  connect_timeout: 1000
  read_timeout: 2000
services:
- name: a
  url: http://a.example:8080/base
  <<: *timeouts
  routes:
  - name: r1
    paths: ["/a"]
    plugins:
    - name: key-auth
consumers:
- username: alice
  keyauth_credentials:
  - key: k1
plugins:
- name: limits
  service: a
  config: { minute: 5 }
"#;
        let v = parse_text(text).unwrap();
        let c = load(v.clone(), opts(NOW)).unwrap();
        let svc = &c.entities["services"][0].doc();
        assert_eq!(svc["connect_timeout"], 1000);
        assert_eq!(svc["port"], 8080);
        let route = &c.entities["routes"][0].doc();
        assert_eq!(route["service"]["id"], svc["id"]);
        let plugins: Vec<_> = c.entities["plugins"]
            .iter()
            .map(|p| Value::Object(p.doc()))
            .collect();
        assert_eq!(plugins.len(), 2);
        assert!(plugins
            .iter()
            .any(|p| p["service"]["id"] == svc["id"] && p["name"] == "limits"));
        assert_eq!(c.entities["keyauth_credentials"][0].doc()["key"], "k1");
        // Same file, same ids, same hash.
        let again = load(v.clone(), opts(42)).unwrap();
        assert_eq!(hash_config(&c), hash_config(&again));
        // Export and load again: same hash.
        let exported = export(&c);
        let back = load(exported, opts(NOW)).unwrap();
        assert_eq!(hash_config(&c), hash_config(&back));
    }

    #[test]
    fn every_error_with_its_path() {
        let v = json!({
            "_format_version": "3.0",
            "services": [
                {"name": "a", "host": "a", "routes": [{"paths": ["nope"]}]},
                {"name": "a", "host": "b", "port": "x"},
                {"name": "a", "host": "c"}
            ],
            "routes": [{"paths": ["/x"], "service": "missing"}],
            "bogus": []
        });
        let e = load(v.clone(), opts(NOW)).unwrap_err();
        let flat = e.flattened().join("\n");
        assert!(
            flat.contains("services[1].port: expected an integer"),
            "{flat}"
        );
        assert!(
            flat.contains("services[0].routes[0].paths.1: should start with"),
            "{flat}"
        );
        assert!(flat.contains("uniqueness violation"), "{flat}");
        assert!(
            flat.contains("routes[0].service: could not find 'services' entity 'missing'"),
            "{flat}"
        );
        assert!(flat.contains("bogus: unknown field"), "{flat}");
    }

    /// Consumer groups as decK writes them (a group's `consumers`, a consumer's `groups`,
    /// plugins naming their group) and as Kong exports them (flat memberships).
    #[test]
    fn consumer_groups_in_every_form() {
        let text = r#"
_format_version: "3.0"
consumer_groups:
- name: gold
  consumers:
  - username: alice
  plugins:
  - name: limits
    config: { minute: 402 }
- name: silver
consumers:
- username: alice
- username: bob
  groups:
  - name: gold
  - silver
plugins:
- name: limits
  consumer_group: silver
  config: { minute: 403 }
"#;
        let c = load(parse_text(text).unwrap(), opts(NOW)).unwrap();
        let ids = |k: &str| -> HashMap<String, String> {
            c.entities[k]
                .iter()
                .map(|e| {
                    let d = e.doc();
                    let name = d.get("name").or(d.get("username")).unwrap();
                    (name.as_str().unwrap().to_string(), e.id().to_string())
                })
                .collect()
        };
        let (groups, consumers) = (ids("consumer_groups"), ids("consumers"));
        let mut pairs: Vec<(String, String)> = c.entities["consumer_group_consumers"]
            .iter()
            .map(|e| {
                let d = e.doc();
                let g = d["consumer_group"]["id"].as_str().unwrap().to_string();
                let u = d["consumer"]["id"].as_str().unwrap().to_string();
                assert_eq!(e.id(), crate::entities::membership_id(&g, &u));
                (g, u)
            })
            .collect();
        pairs.sort();
        let mut want = vec![
            (groups["gold"].clone(), consumers["alice"].clone()),
            (groups["gold"].clone(), consumers["bob"].clone()),
            (groups["silver"].clone(), consumers["bob"].clone()),
        ];
        want.sort();
        assert_eq!(pairs, want);
        for p in &c.entities["plugins"] {
            let d = p.doc();
            let g = d["consumer_group"]["id"].as_str().unwrap();
            let status = d["config"]["minute"].as_u64().unwrap();
            assert_eq!(g, groups[if status == 402 { "gold" } else { "silver" }]);
        }
        // Kong's export form loads back to the same configuration.
        let back = load(export(&c), opts(NOW)).unwrap();
        assert_eq!(hash_config(&c), hash_config(&back));
        let bad = json!({"_format_version": "3.0", "consumers": [
            {"username": "x", "groups": [{"name": "nope"}]}
        ]});
        let e = load(bad, opts(NOW)).unwrap_err().flattened().join("\n");
        assert!(
            e.contains("could not find 'consumer_groups' entity 'nope'"),
            "{e}"
        );
    }

    #[test]
    fn old_formats_migrate_regex_paths() {
        let v = json!({"_format_version": "2.1", "routes": [{"paths": ["/plain", "/users/\\d+"]}]});
        let c = load(v.clone(), opts(NOW)).unwrap();
        assert_eq!(
            c.entities["routes"][0].doc()["paths"],
            json!(["/plain", "~/users/\\d+"])
        );
        let e = load(json!({"_format_version": "9.9"}), opts(NOW)).unwrap_err();
        assert!(e.flattened()[0].starts_with("_format_version"));
        let e = parse_text("a: [1,\n b").unwrap_err();
        assert!(e.errors[0].0.starts_with("line"), "{e}");
    }
}
