//! The entity endpoints, for every entity at once: collections, items, nested collections
//! (`/services/{s}/routes`) and nested items (`/consumers/{c}/key-auth/{k}`).

use gantry_model::plugins::Catalog;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_model::document::{prepare, Secrets};
use gantry_model::entities::{by_admin_path, entity, EntitySchema, ENTITIES};
use gantry_model::schema::{coerce, merge_patch, FieldErrors};
use gantry_model::Doc;
use gantry_store::{ListQuery, Op, TagFilter};
use serde_json::{json, Value};

use crate::body::{self, Origin};
use crate::error::ApiError;
use crate::AdminState;

type Q = Query<HashMap<String, String>>;

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn collection_schema(path: &str) -> Result<&'static EntitySchema, ApiError> {
    by_admin_path(path).ok_or(ApiError::NotFound)
}

/// The child schema mounted under a parent at `child_path`, with the field that points up.
pub(crate) fn nested_schema(
    parent: &EntitySchema,
    child_path: &str,
) -> Option<(&'static EntitySchema, &'static str)> {
    ENTITIES.iter().find_map(|e| {
        e.nested
            .iter()
            .any(|(p, c)| *p == parent.name && *c == child_path)
            .then(|| {
                e.foreign_fields()
                    .find(|(_, t, _)| *t == parent.name)
                    .map(|(f, _, _)| (e, f))
            })
            .flatten()
    })
}

/// Find an entity by id or by its endpoint key; under a parent, it must belong to it.
pub(crate) async fn resolve(
    st: &AdminState,
    schema: &EntitySchema,
    key: &str,
    parent: Option<(&str, &str)>,
) -> Result<Option<Doc>, ApiError> {
    let mut found = if is_uuid(key) {
        st.store.get(schema.name, key).await?
    } else {
        None
    };
    if found.is_none() {
        found = match (schema.name, parent, schema.endpoint_key) {
            ("targets", Some((_, up)), _) => {
                let t = if key.contains(':') {
                    key.to_string()
                } else {
                    format!("{key}:8000")
                };
                st.store
                    .find_by_key(schema.name, "cache_key", &format!("{up}:{t}"))
                    .await?
            }
            // An ACL under its consumer, by its group (Kong: `/consumers/{c}/acls/{group}`).
            ("acls", Some((_, consumer)), _) => {
                st.store
                    .find_by_key(schema.name, "cache_key", &format!("{consumer}:{key}"))
                    .await?
            }
            (_, _, Some(k)) => st.store.find_by_key(schema.name, k, key).await?,
            _ => None,
        };
    }
    if found.as_ref().is_some_and(expired) {
        return Ok(None);
    }
    if let (Some(d), Some((field, pid))) = (&found, parent) {
        if d.get(field)
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            != Some(pid)
        {
            return Ok(None);
        }
    }
    Ok(found)
}

/// Whether an entity's `ttl` has run out: it is gone, though not yet swept from the store.
pub(crate) fn expired(d: &Doc) -> bool {
    gantry_model::entities::expires_at(d).is_some_and(|at| at <= gantry_model::unix_now())
}

/// Turn foreign references given by name (`"service": "my-svc"`, `{"name": "my-svc"}`) or as
/// a whole entity (`{"id": ..., "name": ..., ...}`) into `{"id": ...}`.
async fn resolve_foreign_inputs(
    st: &AdminState,
    schema: &EntitySchema,
    input: &mut Doc,
) -> Result<(), ApiError> {
    for (field, target, _) in schema.foreign_fields() {
        let Some(v) = input.get(field) else { continue };
        let Some(tschema) = entity(target) else {
            continue;
        };
        let key = match v {
            Value::String(s) => s.clone(),
            // A whole entity, as client libraries send the value they hold: its id is the
            // reference, the rest is theirs.
            Value::Object(m) if m.len() > 1 && m.get("id").is_some_and(Value::is_string) => {
                let id = m["id"].clone();
                input.insert(field.to_string(), json!({ "id": id }));
                continue;
            }
            Value::Object(m) if !m.contains_key("id") => {
                let by_key = tschema.endpoint_key.and_then(|k| m.get(k));
                match by_key.or_else(|| m.values().next().filter(|_| m.len() == 1)) {
                    Some(Value::String(s)) => s.clone(),
                    _ => continue,
                }
            }
            _ => continue,
        };
        match resolve(st, tschema, &key, None).await? {
            Some(d) => {
                input.insert(field.to_string(), json!({ "id": d["id"] }));
            }
            None => {
                return Err(ApiError::Store(gantry_store::StoreError::ForeignKey {
                    field: field.to_string(),
                    target: target.to_string(),
                    id: key,
                }))
            }
        }
    }
    Ok(())
}

/// Form bodies carry strings: convert them to what the schema wants, plugin configs included.
fn coerce_form(schema: &EntitySchema, input: &mut Doc, existing: Option<&Doc>, plugins: &Catalog) {
    coerce(&schema.fields, input);
    let kind = |k: &str| {
        input
            .get(k)
            .and_then(Value::as_str)
            .or_else(|| existing.and_then(|e| e.get(k)).and_then(Value::as_str))
            .map(str::to_string)
    };
    let fields = match schema.name {
        "plugins" => kind("name")
            .and_then(|n| plugins.schema(&n))
            .map(|p| p.config.clone()),
        "partials" => kind("type").and_then(|t| gantry_model::plugins::partial_config(&t)),
        _ => None,
    };
    if let (Some(fields), Some(Value::Object(c))) = (fields, input.get_mut("config")) {
        coerce(&fields, c);
    }
}

async fn read_input(
    st: &AdminState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Doc, Origin), ApiError> {
    let bytes = body::read(body, st.settings.admin_body_max).await?;
    body::decode(headers, &bytes)
}

enum Write {
    Create,
    /// PUT: create or replace; `key` is the id or endpoint key from the path.
    Upsert {
        key: String,
    },
    /// PATCH an existing entity.
    Patch(Doc),
}

/// Validate and store one entity; answers with the stored document.
async fn write_one(
    st: &AdminState,
    schema: &'static EntitySchema,
    mut input: Doc,
    origin: Origin,
    how: Write,
    parent: Option<(&'static str, String)>,
    existing: Option<Doc>,
) -> Result<Doc, ApiError> {
    if st.db_off {
        return Err(read_only());
    }
    // Kong's certificates take a `snis` pseudo-field: the names of their SNIs.
    let snis = if schema.name == "certificates" {
        match take_snis(&mut input)? {
            // A PUT replaces the whole certificate, its names too (Kong: `snis = null`).
            None if matches!(how, Write::Upsert { .. }) => Some(Vec::new()),
            other => other,
        }
    } else {
        None
    };
    if origin == Origin::Form {
        coerce_form(schema, &mut input, existing.as_ref(), &st.plugins);
    }
    if let Some((field, pid)) = &parent {
        input.insert(field.to_string(), json!({ "id": pid }));
    }
    resolve_foreign_inputs(st, schema, &mut input).await?;
    let now = gantry_model::unix_now();
    let secrets = if input.contains_key("password") {
        Secrets::Clear
    } else {
        Secrets::MaybeHashed
    };
    let create = matches!(how, Write::Create);
    let doc = match how {
        Write::Create => {
            input.remove("updated_at");
            input.remove("created_at");
            input
        }
        Write::Upsert { key } => {
            let mut d = input;
            // `PUT /services/my-name` names the entity, whether it exists or not: the key in
            // the path wins over one in the body (Kong's `upsert_by_<field>`).
            if !is_uuid(&key) {
                if let Some(k) = schema.endpoint_key {
                    d.insert(k.to_string(), json!(key));
                }
            }
            match &existing {
                Some(e) => {
                    if let Some(id) = d.get("id").and_then(Value::as_str) {
                        if Some(id) != e.get("id").and_then(Value::as_str) {
                            return Err(id_changed());
                        }
                    }
                    d.insert("id".into(), e["id"].clone());
                    d.insert(
                        "created_at".into(),
                        e.get("created_at").cloned().unwrap_or(Value::Null),
                    );
                }
                None if is_uuid(&key) => {
                    d.insert("id".into(), json!(key));
                    d.remove("created_at");
                }
                None => {
                    d.remove("created_at");
                }
            }
            stamp(schema, &mut d, now);
            d
        }
        Write::Patch(mut base) => {
            if let Some(id) = input.get("id") {
                if Some(id) != base.get("id") {
                    return Err(id_changed());
                }
            }
            input.remove("created_at");
            // A `ttl` given counts from now; it is kept counting from `created_at`.
            if let (Some(ttl), Some(created)) = (
                input.get("ttl").and_then(Value::as_i64),
                base.get("created_at").and_then(Value::as_i64),
            ) {
                input.insert("ttl".into(), json!(ttl + (now - created).max(0)));
            }
            if schema.name == "plugins" {
                // A patch's shorthands stand for their fields before it is merged, as in
                // Kong: `redis_host` replaces the stored `redis.host`.
                let p = input
                    .get("name")
                    .or_else(|| base.get("name"))
                    .and_then(Value::as_str)
                    .and_then(|n| st.plugins.schema(n));
                if let (Some(p), Some(Value::Object(c))) = (p, input.get_mut("config")) {
                    p.expand_shorthands(c, &mut FieldErrors::default());
                    // The configuration merges as its plugin's record, nested records
                    // (`config.redis`) field by field.
                    if let Some(Value::Object(b)) = base.get_mut("config") {
                        if let Some(Value::Object(patch)) = input.get_mut("config") {
                            merge_patch(&p.config, b, std::mem::take(patch));
                            input.remove("config");
                        }
                    }
                }
            }
            merge_patch(&schema.fields, &mut base, input);
            stamp(schema, &mut base, now);
            base
        }
    };
    // A plugin's partials fill their fields while it is validated (the plugin's own values of
    // those fields are kept, and the partials' stand in for them where it runs).
    let (doc, kept) = match schema.name {
        "plugins" => with_partials(st, doc).await?,
        _ => (doc, Vec::new()),
    };
    let mut doc = prepare(schema, doc, secrets, now, &st.plugins).map_err(ApiError::Schema)?;
    if schema.name == "plugins" {
        compile_with_partials(st, &doc)?;
        if let Some(Value::Object(c)) = doc.get_mut("config") {
            for (field, own) in kept {
                c.insert(field, own);
            }
        }
    }
    let op = if create {
        Op::Insert(schema, doc.clone())
    } else {
        Op::Upsert(schema, doc.clone())
    };
    let mut ops = vec![op];
    if let Some(names) = &snis {
        let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        ops.extend(sni_ops(st, id, names, now).await?);
    }
    let version = st.store.write(ops).await?;
    st.notify(version);
    Ok(doc)
}

/// A plugin input with its partials' configurations in the fields they fill, and the plugin's
/// own values of those fields, to put back once validated ([`gantry_model::plugins::fill_partials`]).
async fn with_partials(
    st: &AdminState,
    mut doc: Doc,
) -> Result<(Doc, Vec<(String, Value)>), ApiError> {
    let refs = gantry_model::plugins::partial_ids(&doc);
    let name = doc.get("name").and_then(Value::as_str).unwrap_or_default();
    let Some(enabled) = st.plugins.get(name).filter(|_| !refs.is_empty()) else {
        return Ok((doc, Vec::new()));
    };
    let mut found = HashMap::new();
    for id in &refs {
        if let Some(p) = st.store.get("partials", id).await? {
            let kind = p.get("type").and_then(Value::as_str).unwrap_or_default();
            let config = p.get("config").cloned().unwrap_or(json!({}));
            found.insert(id.clone(), (kind.to_string(), config));
        }
    }
    let mut config = match doc.remove("config") {
        Some(Value::Object(c)) => c,
        _ => serde_json::Map::new(),
    };
    let kept = gantry_model::plugins::fill_partials(enabled.schema, &mut config, &refs, &|id| {
        found.get(id).cloned()
    })
    .map_err(|m| {
        let mut e = FieldErrors::default();
        e.add("partials", m);
        ApiError::Schema(e)
    })?;
    doc.insert("config".into(), Value::Object(config));
    Ok((doc, kept))
}

/// A plugin with partials, its configuration validated with them in place: it compiles as the
/// runtime will build it (vault references aside, which only a running node reads).
fn compile_with_partials(st: &AdminState, doc: &Doc) -> Result<(), ApiError> {
    let partials = !gantry_model::plugins::partial_ids(doc).is_empty();
    let name = doc.get("name").and_then(Value::as_str).unwrap_or_default();
    let (Some(enabled), Some(config), true) = (st.plugins.get(name), doc.get("config"), partials)
    else {
        return Ok(());
    };
    if config.to_string().contains("{vault://") {
        return Ok(());
    }
    let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
    (enabled.compile)(id, config).map_err(|e| {
        let mut errs = FieldErrors::default();
        e.record(&mut errs);
        let mut top = FieldErrors::default();
        top.0.insert("config".into(), Value::Object(errs.0));
        ApiError::Schema(top)
    })
}

/// The `snis` of a certificate write: `None` when absent (the names stay), a sorted list of
/// names otherwise (`null` is none); a name given twice is refused, as Kong does.
fn take_snis(input: &mut Doc) -> Result<Option<Vec<String>>, ApiError> {
    let mut names: Vec<String> = match input.remove("snis") {
        None => return Ok(None),
        Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                match v {
                    Value::String(s) => out.push(s),
                    _ => {
                        let mut e = FieldErrors::default();
                        e.add("snis", "expected a string");
                        return Err(ApiError::Schema(e));
                    }
                }
            }
            out
        }
        Some(_) => {
            let mut e = FieldErrors::default();
            e.add("snis", "expected an array");
            return Err(ApiError::Schema(e));
        }
    };
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if !seen.insert(n.clone()) {
            let mut e = FieldErrors::default();
            e.add("snis", format!("{n} is duplicated"));
            return Err(ApiError::Schema(e));
        }
    }
    names.sort();
    Ok(Some(names))
}

/// The SNIs of certificate `cert`, as stored.
async fn snis_of(st: &AdminState, cert: &str) -> Result<Vec<Doc>, ApiError> {
    let reference = Some(("certificate".to_string(), cert.to_string()));
    Ok(st.store.all("snis", reference).await?)
}

/// The writes that make certificate `cert`'s SNIs exactly `names`: a name another certificate
/// holds is refused as Kong refuses it; names gone are deleted, new ones created.
async fn sni_ops(
    st: &AdminState,
    cert: &str,
    names: &[String],
    now: i64,
) -> Result<Vec<Op>, ApiError> {
    let sni_schema = entity("snis").ok_or(ApiError::NotFound)?;
    for name in names {
        if let Some(other) = st.store.find_by_key("snis", "name", name).await? {
            let holder = other
                .get("certificate")
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if holder != cert {
                let mut e = FieldErrors::default();
                e.add(
                    "snis",
                    format!("{name} already associated with existing certificate '{holder}'"),
                );
                return Err(ApiError::Schema(e));
            }
        }
    }
    let current = snis_of(st, cert).await?;
    let name_of = |d: &Doc| {
        d.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut ops = Vec::new();
    for d in &current {
        if !names.contains(&name_of(d)) {
            let id = d.get("id").and_then(Value::as_str).unwrap_or_default();
            ops.push(Op::Delete(sni_schema, id.to_string()));
        }
    }
    for name in names {
        if current.iter().any(|d| name_of(d) == *name) {
            continue;
        }
        let input = json!({"name": name, "certificate": {"id": cert}});
        let doc = prepare(
            sni_schema,
            input.as_object().cloned().unwrap_or_default(),
            Secrets::Clear,
            now,
            &st.plugins,
        )
        .map_err(|errs| {
            let mut e = FieldErrors::default();
            e.add("snis", format!("{name}: {}", errs.message()));
            ApiError::Schema(e)
        })?;
        ops.push(Op::Insert(sni_schema, doc));
    }
    Ok(ops)
}

/// [`shown`], with what Kong adds from other entities: a certificate's `snis` (its SNIs'
/// names, sorted).
async fn shown_full(st: &AdminState, schema: &EntitySchema, d: Doc) -> Result<Value, ApiError> {
    let id = d.get("id").and_then(Value::as_str).map(str::to_string);
    let mut v = shown(&st.plugins, schema, d);
    if let (true, Some(id)) = (schema.name == "certificates", id) {
        let mut names: Vec<Value> = snis_of(st, &id)
            .await?
            .iter()
            .filter_map(|s| s.get("name").cloned())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        v["snis"] = Value::Array(names);
    }
    Ok(v)
}

/// An entity as the Admin API shows it: a plugin's deprecated shorthand fields are added,
/// mirrored from the fields they stand for, as Kong 3.9 returns them.
fn shown(plugins: &Catalog, schema: &EntitySchema, mut d: Doc) -> Value {
    // Kong shows an entity's `ttl` as the seconds it has left.
    if let Some(at) = gantry_model::entities::expires_at(&d) {
        let left = (at - gantry_model::unix_now()).max(0);
        d.insert("ttl".into(), json!(left));
    }
    if schema.name == "plugins" {
        // Kong 3.9 OSS has no `consumer_group` (Enterprise's): it shows only once a plugin is
        // scoped to a group, so that OSS clients see Kong 3.9's fields and no more.
        if d.get("consumer_group").is_some_and(Value::is_null) {
            d.remove("consumer_group");
        }
        let p = d
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| plugins.schema(n));
        if let (Some(p), Some(Value::Object(c))) = (p, d.get_mut("config")) {
            p.mirror_shorthands(c);
        }
    }
    Value::Object(d)
}

/// Set `updated_at` on entities that have one.
fn stamp(schema: &EntitySchema, d: &mut Doc, now: i64) {
    if schema.field("updated_at").is_some() {
        d.insert("updated_at".into(), json!(now));
    }
}

fn id_changed() -> ApiError {
    let mut e = FieldErrors::default();
    e.add("id", "cannot be changed");
    ApiError::Schema(e)
}

fn read_only() -> ApiError {
    ApiError::ReadOnly(
        "cannot create, update or delete entities when database = off: send the whole configuration to POST /config"
            .into(),
    )
}

async fn list(
    st: &AdminState,
    schema: &EntitySchema,
    path: &str,
    q: &HashMap<String, String>,
    reference: Option<(String, String)>,
) -> Result<Response, ApiError> {
    let size = page_size(q)?;
    let tags = q
        .get("tags")
        .map(|t| TagFilter::parse(t))
        .transpose()
        .map_err(|m| ApiError::Invalid("invalid options", m.to_string()))?;
    // A filter on a unique field answers at most one entity.
    for field in schema.unique_fields() {
        if let Some(v) = q.get(field) {
            let found = st.store.find_by_key(schema.name, field, v).await?;
            let mut data: Vec<Value> = Vec::new();
            for d in found.into_iter().filter(|d| !expired(d)).filter(|d| {
                reference.as_ref().is_none_or(|(f, id)| {
                    d.get(f).and_then(|r| r.get("id")).and_then(Value::as_str) == Some(id)
                })
            }) {
                data.push(shown_full(st, schema, d).await?);
            }
            return Ok(Json(json!({"data": data, "next": null})).into_response());
        }
    }
    let page = st
        .store
        .list(
            schema.name,
            &ListQuery {
                reference,
                tags,
                size,
                offset: q.get("offset").cloned(),
            },
        )
        .await?;
    let mut data: Vec<Value> = Vec::with_capacity(page.data.len());
    for d in page.data.into_iter().filter(|d| !expired(d)) {
        data.push(shown_full(st, schema, d).await?);
    }
    let mut body = json!({ "data": data, "next": null });
    if let Some(o) = page.next_offset {
        let mut next = format!("/{path}?offset={o}");
        if q.contains_key("size") {
            next.push_str(&format!("&size={size}"));
        }
        if let Some(t) = q.get("tags") {
            next.push_str(&format!(
                "&tags={}",
                form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
            ));
        }
        body["next"] = json!(next);
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
}

/// `/{collection}`
pub async fn collection(
    State(st): State<Arc<AdminState>>,
    Path(coll): Path<String>,
    method: Method,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = collection_schema(&coll)?;
    match method {
        Method::GET | Method::HEAD => list(&st, schema, &coll, &q, None).await,
        Method::POST => {
            let (input, origin) = read_input(&st, &headers, body).await?;
            let d = write_one(&st, schema, input, origin, Write::Create, None, None).await?;
            Ok((StatusCode::CREATED, Json(shown_full(&st, schema, d).await?)).into_response())
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// A list's `size`: 100 by default, 1 to 1000, or Kong's `invalid size` error.
pub(crate) fn page_size(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("size") {
        None => Ok(100),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(
                "size",
                format!("size must be an integer between 1 and 1000 (got '{s}')"),
            )),
        },
    }
}

/// `/{collection}/{id or key}`
pub async fn item(
    State(st): State<Arc<AdminState>>,
    Path((coll, key)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let schema = collection_schema(&coll)?;
    if schema.name == "certificates" && !is_uuid(&key) {
        return certificate_by_sni(&st, schema, &key, method, headers, body).await;
    }
    one(&st, schema, &key, None, method, headers, body).await
}

/// `/certificates/{sni}`: Kong finds a certificate by one of its SNI names; a PUT to a name
/// no certificate holds creates one, holding that name when it gives `snis`.
async fn certificate_by_sni(
    st: &AdminState,
    schema: &'static EntitySchema,
    name: &str,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let held = st.store.find_by_key("snis", "name", name).await?;
    let cert = held
        .as_ref()
        .and_then(|s| s.get("certificate"))
        .and_then(|c| c.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if method != Method::PUT {
        let Some(cert) = cert else {
            return Err(ApiError::Missing("SNI not found".into()));
        };
        return one(st, schema, &cert, None, method, headers, body).await;
    }
    let cert = cert.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (mut input, origin) = read_input(st, &headers, body).await?;
    match input.get_mut("snis") {
        Some(Value::Array(a)) if !a.iter().any(|v| v.as_str() == Some(name)) => {
            a.push(json!(name));
        }
        Some(v @ Value::String(_)) if v.as_str() != Some(name) => {
            *v = json!([v.clone(), name]);
        }
        _ => {}
    }
    let existing = st.store.get(schema.name, &cert).await?;
    let how = Write::Upsert { key: cert };
    let d = write_one(st, schema, input, origin, how, None, existing).await?;
    Ok(Json(shown_full(st, schema, d).await?).into_response())
}

async fn one(
    st: &AdminState,
    schema: &'static EntitySchema,
    key: &str,
    parent: Option<(&'static str, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let existing = resolve(
        st,
        schema,
        key,
        parent.as_ref().map(|(f, id)| (*f, id.as_str())),
    )
    .await?;
    match method {
        Method::GET | Method::HEAD => match existing {
            Some(d) => Ok(Json(shown_full(st, schema, d).await?).into_response()),
            None => Err(ApiError::NotFound),
        },
        Method::PATCH => {
            let Some(base) = existing.clone() else {
                return Err(ApiError::NotFound);
            };
            let (input, origin) = read_input(st, &headers, body).await?;
            let d = write_one(
                st,
                schema,
                input,
                origin,
                Write::Patch(base),
                parent,
                existing,
            )
            .await?;
            Ok(Json(shown_full(st, schema, d).await?).into_response())
        }
        Method::PUT => {
            let (input, origin) = read_input(st, &headers, body).await?;
            let how = || Write::Upsert {
                key: key.to_string(),
            };
            let first = write_one(
                st,
                schema,
                input.clone(),
                origin,
                how(),
                parent.clone(),
                existing,
            )
            .await;
            let d = match first {
                // Another PUT to this key created it meanwhile: this one updates it, as
                // Kong's single-statement upsert does, rather than answering 409.
                Err(ApiError::Store(gantry_store::StoreError::Unique { .. }))
                    if !is_uuid(key) && schema.endpoint_key.is_some() =>
                {
                    let now = resolve(
                        st,
                        schema,
                        key,
                        parent.as_ref().map(|(f, id)| (*f, id.as_str())),
                    )
                    .await?;
                    write_one(st, schema, input, origin, how(), parent, now).await?
                }
                other => other?,
            };
            Ok(Json(shown_full(st, schema, d).await?).into_response())
        }
        Method::DELETE => {
            if st.db_off {
                return Err(read_only());
            }
            if let Some(d) = existing {
                let id = d["id"].as_str().unwrap_or_default().to_string();
                let version = st.store.write(vec![Op::Delete(schema, id)]).await?;
                st.notify(version);
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `/{parent}/{id}/{child}`: a nested collection, or a parent's foreign entity (`/routes/{r}/service`).
pub async fn nested(
    State(st): State<Arc<AdminState>>,
    Path((pcoll, pkey, child)): Path<(String, String, String)>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pschema = collection_schema(&pcoll)?;
    let parent = resolve(&st, pschema, &pkey, None)
        .await?
        .ok_or(ApiError::NotFound)?;
    let pid = parent["id"].as_str().unwrap_or_default().to_string();
    if let Some((schema, field)) = nested_schema(pschema, &child) {
        return match method {
            Method::GET | Method::HEAD => {
                let path = format!("{pcoll}/{pkey}/{child}");
                list(&st, schema, &path, &q, Some((field.to_string(), pid))).await
            }
            Method::POST => {
                let (input, origin) = read_input(&st, &headers, body).await?;
                let d = write_one(
                    &st,
                    schema,
                    input,
                    origin,
                    Write::Create,
                    Some((field, pid)),
                    None,
                )
                .await?;
                Ok((StatusCode::CREATED, Json(shown_full(&st, schema, d).await?)).into_response())
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    // `/routes/{r}/service`, `/snis/{s}/certificate`, ...
    if let Some((field, target, _)) = pschema.foreign_fields().find(|(f, _, _)| *f == child) {
        if method != Method::GET && method != Method::HEAD {
            return Err(ApiError::MethodNotAllowed);
        }
        let id = parent
            .get(field)
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str);
        let found = match id {
            Some(id) => st.store.get(target, id).await?,
            None => None,
        };
        return found
            .map(|d| Json(Value::Object(d)).into_response())
            .ok_or(ApiError::NotFound);
    }
    Err(ApiError::NotFound)
}

/// `/{parent}/{id}/{child}/{child id or key}`
pub async fn nested_item(
    State(st): State<Arc<AdminState>>,
    Path((pcoll, pkey, child, ckey)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pschema = collection_schema(&pcoll)?;
    let (schema, field) = nested_schema(pschema, &child).ok_or(ApiError::NotFound)?;
    let parent = resolve(&st, pschema, &pkey, None)
        .await?
        .ok_or(ApiError::NotFound)?;
    let pid = parent["id"].as_str().unwrap_or_default().to_string();
    one(
        &st,
        schema,
        &ckey,
        Some((field, pid)),
        method,
        headers,
        body,
    )
    .await
}

/// Validate a body against an entity schema without storing it.
pub fn validate_only(
    schema: &EntitySchema,
    mut input: Doc,
    origin: Origin,
    plugins: &Catalog,
) -> Result<Doc, ApiError> {
    if origin == Origin::Form {
        coerce_form(schema, &mut input, None, plugins);
    }
    prepare(
        schema,
        input,
        Secrets::Clear,
        gantry_model::unix_now(),
        plugins,
    )
    .map_err(ApiError::Schema)
}
