//! Turning an input object into a stored entity document: shorthands, validation,
//! defaults, generated fields, and the keys and references the store indexes.

use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::entities::{expand_service_url, EntitySchema};
use crate::plugins::Catalog;
use crate::schema::{validate_record, FieldErrors, OnDelete};
use crate::Doc;

/// How a write treats secrets given in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Secrets in the input are clear text: hash them (Admin API writes that carry one).
    Clear,
    /// Secrets may be stored hashes already (declarative files, exports): hash only what is not.
    MaybeHashed,
}

/// Validate `input` as an entity of `schema` and complete it: defaults, id, timestamps,
/// generated keys, hashed passwords. `now` is Unix seconds.
pub fn prepare(
    schema: &EntitySchema,
    mut input: Doc,
    secrets: Secrets,
    now: i64,
    plugins: &Catalog,
) -> Result<Doc, FieldErrors> {
    let mut errs = FieldErrors::default();
    if schema.name == "services" {
        expand_service_url(&mut input, &mut errs);
    }
    // Fields whose schema depends on another field are checked apart.
    let config = match schema.name {
        "plugins" | "partials" => {
            let c = input
                .insert("config".into(), json!({}))
                .unwrap_or(Value::Null);
            Some(c)
        }
        _ => None,
    };
    let mut doc = match validate_record(&schema.fields, &input) {
        Ok(d) => d,
        Err(e) => {
            errs.0.extend(e.0);
            Map::new()
        }
    };
    if schema.name == "plugins" {
        // The plugin's own protocols: its default where none are given, and only those it
        // takes (most take the HTTP ones alone).
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(p) = plugins.get(name) {
            match input.get("protocols").filter(|v| !v.is_null()) {
                None => {
                    doc.insert("protocols".into(), json!(p.schema.protocols));
                }
                Some(given) => {
                    let field = [crate::schema::Field::new(
                        "protocols",
                        crate::schema::set(crate::schema::one_of(p.schema.allowed_protocols())),
                    )];
                    let mut one = Map::new();
                    one.insert("protocols".into(), given.clone());
                    if let Err(e) = validate_record(&field, &one) {
                        errs.0.extend(e.0);
                    }
                }
            }
        }
    }
    if let Some(config) = config {
        match check_dependent_config(schema.name, &input, &doc, config, plugins) {
            Ok(c) => {
                doc.insert("config".into(), c);
            }
            Err(e) => {
                errs.0.extend(e.0);
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    (schema.checks)(&doc, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    complete(schema, &mut doc, secrets, now);
    // Compiled as a node will run it: what it could not is refused here, not on every node.
    if let Err(e) = plugins.compile_entity(schema.name, &doc) {
        e.record(&mut errs);
        return Err(errs);
    }
    Ok(doc)
}

fn check_dependent_config(
    kind: &str,
    input: &Doc,
    doc: &Doc,
    config: Value,
    plugins: &Catalog,
) -> Result<Value, FieldErrors> {
    let mut errs = FieldErrors::default();
    let mut config = match config {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        _ => {
            errs.add("config", "expected a record");
            return Err(errs);
        }
    };
    if kind == "partials" {
        let Some(t) = input.get("type").and_then(Value::as_str) else {
            return Err(errs);
        };
        let Some(fields) = crate::plugins::partial_config(t) else {
            return Err(errs);
        };
        return validate_record(&fields, &config)
            .map(Value::Object)
            .map_err(|e| nest("config", e));
    }
    let Some(name) = input.get("name").and_then(Value::as_str) else {
        return Err(errs);
    };
    let Some(enabled) = plugins.get(name) else {
        errs.add("name", crate::plugins::not_enabled(name));
        return Err(errs);
    };
    let p = enabled.schema;
    for (scoped, forbidden) in [
        ("consumer", p.no_consumer),
        ("consumer_group", p.no_consumer_group),
        ("route", p.no_route),
        ("service", p.no_service),
    ] {
        if forbidden && doc.get(scoped).is_some_and(|v| !v.is_null()) {
            errs.add(scoped, "value must be null");
        }
    }
    let set = |k: &str| doc.get(k).is_some_and(|v| !v.is_null());
    if set("consumer") && set("consumer_group") {
        errs.add_entity(
            "only one or none of these fields must be set: 'consumer', 'consumer_group'",
        );
    }
    let mut shorthand_errs = FieldErrors::default();
    p.expand_shorthands(&mut config, &mut shorthand_errs);
    if !shorthand_errs.is_empty() {
        errs.0.extend(nest("config", shorthand_errs).0);
        return Err(errs);
    }
    match validate_record(&p.config, &config) {
        Ok(mut c) => {
            // Kong fills a plugin's `auto` strings (oauth2's `provision_key`) when absent.
            for f in p.config.iter().filter(|f| f.auto) {
                if c.get(f.name).is_none_or(Value::is_null) {
                    c.insert(f.name.to_string(), json!(random_token()));
                }
            }
            let mut ce = FieldErrors::default();
            (p.checks)(&c, &mut ce);
            // A check across fields is the plugin entity's, as Kong reports it (`@entity`).
            match ce.0.remove("@entity") {
                Some(Value::Array(whole)) => {
                    for m in whole {
                        errs.add_entity(m.as_str().unwrap_or_default());
                    }
                }
                Some(Value::String(m)) => errs.add_entity(m),
                _ => {}
            }
            if let Some(inner) = ce.0.remove("@record_entity") {
                ce.0.insert("@entity".into(), inner);
            }
            // A configuration holding vault references is compiled where it runs, once they
            // are read (a node refuses it then, keeping what it runs); one with partials once
            // they are in place (the Admin API, which reads them, and every node).
            let partials = !crate::plugins::partial_ids(input).is_empty();
            let references = partials || Value::Object(c.clone()).to_string().contains("{vault://");
            if ce.is_empty() && errs.is_empty() && references {
                return Ok(Value::Object(c));
            }
            if ce.is_empty() && errs.is_empty() {
                // Compiled as the runtime will: what it cannot run is refused here.
                let id = input.get("id").and_then(Value::as_str).unwrap_or_default();
                let c = Value::Object(c);
                match (enabled.compile)(id, &c) {
                    Ok(()) => return Ok(c),
                    Err(e) => e.record(&mut ce),
                }
            }
            if let Some(whole) = ce.0.remove("@record") {
                errs.0.insert("config".into(), whole);
            } else if !ce.is_empty() {
                errs.0.extend(nest("config", ce).0);
            }
        }
        Err(e) => errs.0.extend(nest("config", e).0),
    }
    Err(errs)
}

fn nest(field: &str, e: FieldErrors) -> FieldErrors {
    let mut out = FieldErrors::default();
    out.0.insert(field.to_string(), Value::Object(e.0));
    out
}

fn complete(schema: &EntitySchema, doc: &mut Doc, secrets: Secrets, now: i64) {
    if doc.get("id").is_none_or(Value::is_null) {
        doc.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    if schema.field("created_at").is_some() && doc.get("created_at").is_none_or(Value::is_null) {
        doc.insert("created_at".into(), json!(now));
    }
    if schema.field("updated_at").is_some() && doc.get("updated_at").is_none_or(Value::is_null) {
        doc.insert("updated_at".into(), json!(now));
    }
    match schema.name {
        "keyauth_credentials" | "jwt_secrets" | "hmacauth_credentials" => {
            for k in ["key", "secret"] {
                if schema.field(k).is_some() && doc.get(k).is_none_or(Value::is_null) {
                    doc.insert(k.into(), json!(random_token()));
                }
            }
        }
        "oauth2_credentials" => {
            for k in ["client_id", "client_secret"] {
                if doc.get(k).is_none_or(Value::is_null) {
                    doc.insert(k.into(), json!(random_token()));
                }
            }
            // Kong's `hash_secret`: the secret is kept as a PBKDF2 hash (PHC string).
            let hashed = doc.get("hash_secret").and_then(Value::as_bool) == Some(true);
            if let (true, Some(Value::String(secret))) = (hashed, doc.get("client_secret")) {
                if !crate::secret::is_phc(secret) {
                    let h = crate::secret::hash(secret);
                    doc.insert("client_secret".into(), json!(h));
                }
            }
        }
        "oauth2_tokens" | "oauth2_authorization_codes" => {
            let k = if schema.name == "oauth2_tokens" {
                "access_token"
            } else {
                "code"
            };
            if doc.get(k).is_none_or(Value::is_null) {
                doc.insert(k.into(), json!(random_token()));
            }
        }
        "targets" => {
            if let Some(Value::String(t)) = doc.get_mut("target") {
                if !has_port(t) {
                    t.push_str(":8000");
                }
            }
        }
        "ca_certificates" => {
            if let Some(pem) = doc.get("cert").and_then(Value::as_str) {
                if let Ok(info) = crate::pem::parse_cert_chain(pem) {
                    doc.insert("cert_digest".into(), json!(info.digest));
                }
            }
        }
        "basicauth_credentials" => {
            if let Some(Value::String(pw)) = doc.get("password") {
                if secrets == Secrets::Clear || !is_password_hash(pw) {
                    let consumer = doc
                        .get("consumer")
                        .and_then(|c| c.get("id"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let h = hash_password(pw, consumer);
                    doc.insert("password".into(), json!(h));
                }
            }
        }
        _ => {}
    }
}

fn has_port(t: &str) -> bool {
    if let Some(rest) = t.strip_prefix('[') {
        return rest.contains("]:");
    }
    t.matches(':').count() == 1
}

/// 32 random hex characters, Kong's generated credential format.
pub fn random_token() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    hex::encode(b)
}

/// A basic-auth password as Kong 3.9 stores it: the hex SHA-1 of the password followed by
/// the credential's consumer id (Kong's `basic-auth/crypto.lua`). Kong's format, so that a
/// store or a declarative export moves between Kong and Gantry with its credentials working.
pub fn hash_password(pw: &str, consumer_id: &str) -> String {
    use sha1::Sha1;
    hex::encode(Sha1::digest(format!("{pw}{consumer_id}")))
}

/// A stored hash: 40 hex characters.
pub fn is_password_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Check a clear password against a stored hash, in constant time.
pub fn verify_password(stored: &str, pw: &str, consumer_id: &str) -> bool {
    let given = hash_password(pw, consumer_id);
    given.len() == stored.len()
        && given
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
            == 0
}

/// A reference from one entity to another, as the store indexes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub field: &'static str,
    pub target: &'static str,
    pub id: String,
    pub on_delete: OnDelete,
}

/// Every reference a document holds: foreign fields, and the partials of a plugin.
pub fn references(schema: &EntitySchema, doc: &Doc) -> Vec<Reference> {
    let mut out: Vec<Reference> = schema
        .foreign_fields()
        .filter_map(|(field, target, on_delete)| {
            let id = doc.get(field)?.get("id")?.as_str()?;
            Some(Reference {
                field,
                target,
                id: id.to_string(),
                on_delete,
            })
        })
        .collect();
    if schema.name == "plugins" {
        out.extend(
            crate::plugins::partial_ids(doc)
                .into_iter()
                .map(|id| Reference {
                    field: "partials",
                    target: "partials",
                    id,
                    on_delete: OnDelete::Restrict,
                }),
        );
    }
    out
}

/// The unique keys of a document: `(key name, value)`; composite keys are named `cache_key`.
pub fn unique_keys(schema: &EntitySchema, doc: &Doc) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = schema
        .unique_fields()
        .filter_map(|f| {
            let v = doc.get(f)?;
            match v {
                Value::String(s) => Some((f, s.clone())),
                Value::Null => None,
                other => Some((f, other.to_string())),
            }
        })
        .collect();
    if let Some(k) = cache_key(schema, doc) {
        out.push(("cache_key", k));
    }
    out
}

/// The composite key value, e.g. `rate-limiting:<route id>::` for a plugin.
pub fn cache_key(schema: &EntitySchema, doc: &Doc) -> Option<String> {
    let fields = schema.cache_key?;
    let parts: Vec<String> = fields
        .iter()
        .filter(|f| **f != "consumer_group" || doc.get(**f).is_some_and(|v| !v.is_null()))
        .map(|f| match doc.get(*f) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(m)) => m
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        })
        .collect();
    Some(parts.join(":"))
}

/// The strings of a JSON array (other elements and non-arrays give nothing).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The tags of a document.
pub fn tags(doc: &Doc) -> Vec<String> {
    strings(doc.get("tags"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::entity;

    fn obj(v: Value) -> Doc {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn service_defaults_and_url() {
        let s = entity("services").unwrap();
        let d = prepare(
            s,
            obj(json!({"name": "a", "url": "https://example.com:8443/p"})),
            Secrets::Clear,
            7,
            &none(),
        )
        .unwrap();
        assert_eq!(d["protocol"], "https");
        assert_eq!(d["host"], "example.com");
        assert_eq!(d["port"], 8443);
        assert_eq!(d["path"], "/p");
        assert_eq!(d["retries"], 5);
        assert_eq!(d["connect_timeout"], 60000);
        assert_eq!(d["created_at"], 7);
        assert!(d["id"].is_string());
        let d = prepare(
            s,
            obj(json!({"url": "http://example.com"})),
            Secrets::Clear,
            7,
            &none(),
        )
        .unwrap();
        assert_eq!(d["port"], 80);
        assert_eq!(d["path"], Value::Null);
    }

    #[test]
    fn route_needs_a_matching_field() {
        let r = entity("routes").unwrap();
        let e = prepare(r, obj(json!({})), Secrets::Clear, 0, &none()).unwrap_err();
        assert!(
            e.message()
                .contains("must set one of 'methods', 'hosts', 'headers', 'paths', 'snis'"),
            "{}",
            e.message()
        );
        let d = prepare(r, obj(json!({"paths": ["/x"]})), Secrets::Clear, 0, &none()).unwrap();
        assert_eq!(d["protocols"], json!(["http", "https"]));
        assert_eq!(d["strip_path"], true);
        assert_eq!(d["https_redirect_status_code"], 426);
        assert_eq!(d["path_handling"], "v0");
    }

    /// No plugin enabled.
    fn none() -> Catalog {
        Catalog::default()
    }

    fn limits() -> Catalog {
        crate::plugins::testing::catalog()
    }

    #[test]
    fn plugin_config_is_checked_by_its_schema_and_compiled() {
        let p = entity("plugins").unwrap();
        let cat = limits();
        let d = prepare(
            p,
            obj(json!({"name": "limits", "config": {"minute": 5}})),
            Secrets::Clear,
            0,
            &cat,
        )
        .unwrap();
        assert_eq!(d["config"]["policy"], "local");
        let e = prepare(
            p,
            obj(json!({"name": "limits", "config": {"minute": "x"}})),
            Secrets::Clear,
            0,
            &cat,
        )
        .unwrap_err();
        assert_eq!(e.0["config"]["minute"], "expected a number");
        let e = prepare(
            p,
            obj(json!({"name": "limits", "config": {"policy": "redis"}})),
            Secrets::Clear,
            0,
            &cat,
        )
        .unwrap_err();
        assert_eq!(e.0["config"]["policy"], "not in this build");
        // A plugin the node does not enable: Kong's message, whatever the configuration.
        for cat in [none(), limits()] {
            let e = prepare(p, obj(json!({"name": "nope"})), Secrets::Clear, 0, &cat).unwrap_err();
            assert_eq!(
                e.0["name"],
                "plugin 'nope' not enabled; add it to the 'plugins' configuration property"
            );
        }
        let e = prepare(
            p,
            obj(json!({"name": "key-auth", "consumer": {"id": uuid::Uuid::new_v4().to_string()}})),
            Secrets::Clear,
            0,
            &cat,
        )
        .unwrap_err();
        assert_eq!(e.0["consumer"], "value must be null");
    }

    #[test]
    fn passwords_are_hashed_and_verify() {
        let b = entity("basicauth_credentials").unwrap();
        let cid = uuid::Uuid::new_v4().to_string();
        let d = prepare(
            b,
            obj(json!({"username": "u", "password": "secret", "consumer": {"id": cid}})),
            Secrets::Clear,
            0,
            &none(),
        )
        .unwrap();
        let stored = d["password"].as_str().unwrap();
        // Kong's own: SHA-1 of the password and the consumer id.
        assert_eq!(stored, hash_password("secret", &cid));
        assert!(is_password_hash(stored));
        assert!(verify_password(stored, "secret", &cid));
        assert!(!verify_password(stored, "other", &cid));
        // Re-importing an exported hash keeps it.
        let again = prepare(b, d.clone(), Secrets::MaybeHashed, 0, &none()).unwrap();
        assert_eq!(again["password"], d["password"]);
    }

    #[test]
    fn keys_and_references() {
        let t = entity("targets").unwrap();
        let up = uuid::Uuid::new_v4().to_string();
        let d = prepare(
            t,
            obj(json!({"target": "10.0.0.1", "upstream": {"id": up}})),
            Secrets::Clear,
            0,
            &none(),
        )
        .unwrap();
        assert_eq!(d["target"], "10.0.0.1:8000");
        assert_eq!(
            unique_keys(t, &d),
            vec![("cache_key", format!("{up}:10.0.0.1:8000"))]
        );
        let refs = references(t, &d);
        assert_eq!(refs[0].target, "upstreams");
        assert_eq!(refs[0].on_delete, OnDelete::Cascade);
    }
}
