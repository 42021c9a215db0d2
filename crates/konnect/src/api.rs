//! Konnect's v2 API: `/v2/control-planes` and what hangs under each control plane.
//!
//! Every request carries an access token (see [`crate::tokens`]); a token needs a role on the
//! control plane it touches (viewer to read, admin to write) and admin on `*` to create or
//! delete control planes. A control plane the token has no role on is answered 404, as one
//! that does not exist, so that a token learns nothing of other control planes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use gantry_store::{ControlPlaneRow, DEFAULT_CP};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use crate::error::{Invalid, KonnectError};
use crate::tokens::{Principal, Role};
use crate::{Konnect, PlaneEvent};

type K = State<Arc<Konnect>>;
type Result<T> = std::result::Result<T, KonnectError>;

/// The v2 routes, to merge into the Admin API's.
pub fn router(k: Arc<Konnect>) -> Router {
    router_with(k, Router::new())
}

/// The v2 routes with `extra` ones (other v2 families, e.g. cloud gateways) behind the same
/// token check.
pub fn router_with(k: Arc<Konnect>, extra: Router) -> Router {
    Router::new()
        .route("/v2/control-planes", get(list).post(create))
        .route(
            "/v2/control-planes/{id}",
            get(read).patch(update).delete(remove),
        )
        .route(
            "/v2/control-planes/{id}/core-entities",
            any(core_entities_root),
        )
        .route(
            "/v2/control-planes/{id}/core-entities/{*rest}",
            any(core_entities),
        )
        .route(
            "/v2/control-planes/{id}/expected-config-hash",
            get(expected_hash),
        )
        .route(
            "/v2/control-planes/{id}/expected-config-version",
            get(expected_version),
        )
        .route("/v2/control-planes/{id}/nodes", get(crate::dp::list_nodes))
        .route(
            "/v2/control-planes/{id}/nodes/eol",
            get(crate::dp::eol_nodes),
        )
        .route(
            "/v2/control-planes/{id}/nodes/{node}",
            get(crate::dp::get_node).delete(crate::dp::delete_node),
        )
        .route(
            "/v2/control-planes/{id}/dp-client-certificates",
            get(crate::dp::list_certs).post(crate::dp::create_cert),
        )
        .route(
            "/v2/control-planes/{id}/dp-client-certificates/{cert}",
            get(crate::dp::get_cert)
                .put(crate::dp::put_cert)
                .delete(crate::dp::delete_cert),
        )
        .route(
            "/v2/control-planes/{id}/group-memberships",
            get(crate::groups::list).put(crate::groups::put),
        )
        .route(
            "/v2/control-planes/{id}/group-memberships/add",
            axum::routing::post(crate::groups::add),
        )
        .route(
            "/v2/control-planes/{id}/group-memberships/remove",
            axum::routing::post(crate::groups::remove),
        )
        .route(
            "/v2/control-planes/{id}/group-member-status",
            get(crate::groups::member_status),
        )
        .route(
            "/v2/control-planes/{id}/group-status",
            get(crate::groups::status),
        )
        .route("/v2", any(unknown))
        .route("/v2/{*rest}", any(unknown))
        .with_state(k.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(k, authenticate))
}

async fn unknown() -> Response {
    KonnectError::NotFound("No route matches this path.".into()).into_response()
}

/// Check the token of every v2 request; the holder goes on as a request extension.
async fn authenticate(State(k): K, mut req: Request, next: Next) -> Response {
    let client: IpAddr = gantry_admin::client_ip(&req);
    match k.principal(req.headers(), client).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            // Each family of endpoints answers in its spec's shape.
            let path = req.uri().path();
            if path.contains("/core-entities") {
                let (status, m) = status_of(&e);
                (
                    status,
                    Json(json!({"message": m, "status": status.as_u16()})),
                )
                    .into_response()
            } else if path.contains("/dp-client-certificates") || path.contains("/nodes") {
                let (status, m) = status_of(&e);
                crate::dp::legacy(status, m)
            } else {
                e.into_response()
            }
        }
    }
}

pub fn status_of(e: &KonnectError) -> (StatusCode, String) {
    let r = match e {
        KonnectError::Unauthorized(crate::tokens::Denied::TooManyFailures) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        KonnectError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        KonnectError::Forbidden(_) => StatusCode::FORBIDDEN,
        KonnectError::NotFound(_) => StatusCode::NOT_FOUND,
        KonnectError::Conflict(_) => StatusCode::CONFLICT,
        KonnectError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        KonnectError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (r, e.to_string())
}

pub fn principal(req_ext: &axum::http::Extensions) -> Result<&Principal> {
    req_ext
        .get::<Principal>()
        .ok_or(KonnectError::Unauthorized(crate::tokens::Denied::Missing))
}

fn not_found() -> KonnectError {
    KonnectError::NotFound("The requested control plane was not found.".into())
}

/// The control plane `id` names, if the token may see it, and the token's role on it.
pub async fn visible(k: &Konnect, p: &Principal, id: &str) -> Result<(ControlPlaneRow, Role)> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(KonnectError::invalid(
            "Request contains invalid ID format",
            Invalid {
                source: "path",
                ..Invalid::body("id", "is_uuid", "invalid ID format")
            },
        ));
    }
    let row = k.store.control_plane(id).await?.ok_or_else(not_found)?;
    let role = p.role_on(&row.id).ok_or_else(not_found)?;
    Ok((row, role))
}

fn require_admin(role: Role, what: &str) -> Result<()> {
    if role == Role::Admin {
        Ok(())
    } else {
        Err(KonnectError::Forbidden(format!(
            "Insufficient role-set to {what}: this token may read this control plane, not change it."
        )))
    }
}

/// RFC 3339 of Unix milliseconds.
pub fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A control plane as the API shows it.
pub fn shown(k: &Konnect, row: &ControlPlaneRow) -> Value {
    let (cp, tp) = k.endpoints(row);
    let d = &row.doc;
    let get = |key: &str, default: Value| d.get(key).cloned().unwrap_or(default);
    json!({
        "id": row.id,
        "name": row.name,
        "description": get("description", json!("")),
        "labels": get("labels", json!({})),
        "config": {
            "control_plane_endpoint": cp,
            "telemetry_endpoint": tp,
            "cluster_type": get("cluster_type", json!("CLUSTER_TYPE_CONTROL_PLANE")),
            "auth_type": get("auth_type", json!("pinned_client_certs")),
            "cloud_gateway": false,
            "proxy_urls": get("proxy_urls", json!([])),
        },
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    })
}

/// The query string as pairs, in order.
pub fn pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(a, b)| (a.into_owned(), b.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn positive(name: &str, v: &str, max: Option<u64>) -> Result<u64> {
    let n: u64 = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
        KonnectError::invalid(
            format!("{name} must be a positive integer"),
            Invalid::query(name, "is_integer", "must be a positive integer"),
        )
    })?;
    if let Some(m) = max.filter(|m| n > *m) {
        return Err(KonnectError::invalid(
            format!("{name} must not be greater than {m}"),
            Invalid::query(name, "max", format!("must not be greater than {m}"))
                .with("maximum", json!(m)),
        ));
    }
    Ok(n)
}

/// Why a cursor page request (`page[size]`, `page[after]`) is refused: the parameter, its
/// rule, the reason, and the whole sentence.
pub(crate) struct PageError {
    pub field: &'static str,
    pub rule: &'static str,
    pub reason: &'static str,
    pub detail: &'static str,
}

/// A cursor page request: `page[size]` (1 to 1000, default 100) and `page[after]` (a position
/// this API handed out, default the start).
pub(crate) fn cursor_page(uri: &Uri) -> std::result::Result<(usize, usize), PageError> {
    let mut size = 100usize;
    let mut after = 0usize;
    for (key, v) in pairs(uri) {
        match key.as_str() {
            "page[size]" => {
                size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or(PageError {
                        field: "page[size]",
                        rule: "is_integer",
                        reason: "must be an integer from 1 to 1000",
                        detail: "page[size] must be an integer from 1 to 1000",
                    })?
            }
            "page[after]" if !v.is_empty() => {
                after = v.parse().map_err(|_| PageError {
                    field: "page[after]",
                    rule: "invalid",
                    reason: "not a value this API returned",
                    detail: "page[after]: not a value this API returned",
                })?
            }
            _ => {}
        }
    }
    Ok((size, after))
}

/// `labels=key:value,key2` on the list: each `key:value` must match, each bare `key` exist.
fn label_filter(spec: &str) -> Vec<(String, Option<String>)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once(':') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (item.to_string(), None),
        })
        .collect()
}

/// `GET /v2/control-planes`
async fn list(State(k): K, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let (mut size, mut number) = (10u64, 1u64);
    let mut name: Vec<(String, String)> = Vec::new();
    let mut ids: Option<Vec<String>> = None;
    let mut cluster: Vec<(String, String)> = Vec::new();
    let mut cloud: Option<bool> = None;
    let mut labels = Vec::new();
    let mut descending = false;
    for (key, v) in pairs(req.uri()) {
        match key.as_str() {
            "page[size]" => size = positive(&key, &v, Some(100))?,
            "page[number]" => number = positive(&key, &v, None)?,
            "filter[name]" | "filter[name][eq]" => name.push(("eq".into(), v)),
            "filter[name][neq]" => name.push(("neq".into(), v)),
            "filter[name][contains]" => name.push(("contains".into(), v)),
            "filter[id]" | "filter[id][eq]" => ids = Some(vec![v]),
            "filter[id][oeq]" => ids = Some(v.split(',').map(|s| s.trim().to_string()).collect()),
            "filter[cluster_type]" | "filter[cluster_type][eq]" => cluster.push(("eq".into(), v)),
            "filter[cluster_type][neq]" => cluster.push(("neq".into(), v)),
            "filter[cluster_type][oeq]" => cluster.push(("oeq".into(), v)),
            "filter[cloud_gateway]" | "filter[cloud_gateway][eq]" => {
                cloud = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(KonnectError::invalid(
                            "filter[cloud_gateway] must be true or false",
                            Invalid::query(&key, "is_boolean", "must be true or false"),
                        ))
                    }
                })
            }
            "labels" => labels = label_filter(&v),
            "sort" => {
                let (field, order) = v.trim().split_once(' ').unwrap_or((v.trim(), "asc"));
                if field != "created_at" || !matches!(order.trim(), "asc" | "desc") {
                    return Err(KonnectError::invalid(
                        format!(
                            "cannot sort by '{v}': the supported sort is created_at [asc|desc]"
                        ),
                        Invalid::query("sort", "enum", "unsupported sort attribute")
                            .with("choices", json!(["created_at", "created_at desc"])),
                    ));
                }
                descending = order.trim() == "desc";
            }
            other => {
                return Err(KonnectError::invalid(
                    format!("unknown query parameter '{other}'"),
                    Invalid::query(
                        other,
                        "unknown_property",
                        format!("property {other} should not exist"),
                    ),
                ))
            }
        }
    }
    let mut rows: Vec<ControlPlaneRow> = k
        .store
        .control_planes()
        .await?
        .into_iter()
        .filter(|r| p.role_on(&r.id).is_some())
        .filter(|r| {
            name.iter().all(|(op, v)| match op.as_str() {
                "eq" => r.name == *v,
                "neq" => r.name != *v,
                _ => r.name.contains(v.as_str()),
            })
        })
        .filter(|r| ids.as_ref().is_none_or(|ids| ids.contains(&r.id)))
        .filter(|r| {
            let t = r
                .doc
                .get("cluster_type")
                .and_then(Value::as_str)
                .unwrap_or("CLUSTER_TYPE_CONTROL_PLANE");
            cluster.iter().all(|(op, v)| match op.as_str() {
                "eq" => t == v,
                "neq" => t != v,
                _ => v.split(',').any(|x| x.trim() == t),
            })
        })
        .filter(|_| cloud != Some(true))
        .filter(|r| {
            labels.iter().all(|(lk, lv)| {
                let got = r.doc.get("labels").and_then(|l| l.get(lk));
                match lv {
                    None => got.is_some(),
                    Some(v) => got.and_then(Value::as_str) == Some(v.as_str()),
                }
            })
        })
        .collect();
    if descending {
        rows.reverse();
    }
    let total = rows.len();
    let data: Vec<Value> = rows
        .iter()
        .skip(((number - 1) * size) as usize)
        .take(size as usize)
        .map(|r| shown(&k, r))
        .collect();
    Ok(Json(json!({
        "data": data,
        "meta": {"page": {"number": number, "size": size, "total": total}},
    }))
    .into_response())
}

const CLUSTER_TYPES: [&str; 6] = [
    "CLUSTER_TYPE_CONTROL_PLANE",
    "CLUSTER_TYPE_K8S_INGRESS_CONTROLLER",
    "CLUSTER_TYPE_CONTROL_PLANE_GROUP",
    "CLUSTER_TYPE_SERVERLESS",
    "CLUSTER_TYPE_KAFKA_NATIVE_EVENT_PROXY",
    "CLUSTER_TYPE_SERVERLESS_V1",
];
const AUTH_TYPES: [&str; 2] = ["pinned_client_certs", "pki_client_certs"];

fn string_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<Option<&'a str>> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min {
                return Err(KonnectError::invalid(
                    format!("{field} must have at least {min} characters"),
                    Invalid::body(
                        field,
                        "min_length",
                        format!("must have at least {min} characters"),
                    )
                    .with("minimum", json!(min)),
                ));
            }
            if n > max {
                return Err(KonnectError::invalid(
                    format!("{field} must not have more than {max} characters"),
                    Invalid::body(
                        field,
                        "max_length",
                        format!("must not have more than {max} characters"),
                    )
                    .with("maximum", json!(max)),
                ));
            }
            Ok(Some(s))
        }
        Some(_) => Err(KonnectError::invalid(
            format!("{field} must be a string"),
            Invalid::body(field, "is_string", "must be a string"),
        )),
    }
}

fn check_labels(v: &Value) -> Result<Map<String, Value>> {
    let Value::Object(m) = v else {
        return Err(KonnectError::invalid(
            "labels must be an object",
            Invalid::body("labels", "is_object", "must be an object"),
        ));
    };
    let ok = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    };
    for (key, value) in m {
        let field = format!("labels.{key}");
        let reserved = ["kong", "konnect", "mesh", "kic", "_"]
            .iter()
            .any(|p| key.to_ascii_lowercase().starts_with(p));
        if !ok(key) || reserved {
            return Err(KonnectError::invalid(
                format!("label key '{key}' is not allowed: 1 to 63 letters, digits, '-', '.' or '_', starting and ending with a letter or digit, and not starting with kong, konnect, mesh, kic or _"),
                Invalid::body(field, "is_label", "invalid label key"),
            ));
        }
        match value {
            Value::String(s) if ok(s) => {}
            Value::Null => {}
            _ => {
                return Err(KonnectError::invalid(
                    format!("label '{key}' has a value that is not allowed: 1 to 63 letters, digits, '-', '.' or '_', starting and ending with a letter or digit"),
                    Invalid::body(field, "is_label", "invalid label value"),
                ))
            }
        }
    }
    Ok(m.clone())
}

fn check_proxy_urls(v: &Value) -> Result<Value> {
    let bad = |reason: &str| {
        KonnectError::invalid(
            format!("proxy_urls: {reason}"),
            Invalid::body("proxy_urls", "invalid", reason),
        )
    };
    let Value::Array(items) = v else {
        return Err(bad("must be an array"));
    };
    if items.len() > 5 {
        return Err(bad("must not have more than 5 items"));
    }
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(bad(&format!("item {i} must be an object")));
        };
        if let Some(extra) = o
            .keys()
            .find(|k| !["host", "port", "protocol"].contains(&k.as_str()))
        {
            return Err(bad(&format!("item {i}: property {extra} should not exist")));
        }
        let host = o.get("host").and_then(Value::as_str).unwrap_or("");
        let protocol = o.get("protocol").and_then(Value::as_str).unwrap_or("");
        let port = o.get("port").and_then(Value::as_u64).unwrap_or(0);
        if host.is_empty() || host.len() > 120 {
            return Err(bad(&format!(
                "item {i}: host must have 1 to 120 characters"
            )));
        }
        if protocol.is_empty() || protocol.len() > 32 {
            return Err(bad(&format!(
                "item {i}: protocol must have 1 to 32 characters"
            )));
        }
        if !(1..=65535).contains(&port) {
            return Err(bad(&format!(
                "item {i}: port must be an integer from 1 to 65535"
            )));
        }
    }
    Ok(v.clone())
}

fn read_body(bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(KonnectError::invalid(
            "Invalid request format",
            Invalid::body(
                "body",
                "invalid",
                "request format is invalid: a JSON object is expected",
            ),
        )),
    }
}

fn unknown_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    if let Some(extra) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(KonnectError::invalid(
            "Request contains unknown property",
            Invalid::body(
                extra.clone(),
                "unknown_property",
                format!("property {extra} should not exist"),
            ),
        ));
    }
    Ok(())
}

fn one_of(body: &Map<String, Value>, field: &str, choices: &[&str]) -> Result<Option<String>> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::String(s)) if choices.contains(&s.as_str()) => Ok(Some(s.clone())),
        Some(_) => Err(KonnectError::invalid(
            format!("{field} must be one of {}", choices.join(", ")),
            Invalid::body(
                field,
                "enum",
                format!("must be one of {}", choices.join(", ")),
            )
            .with("choices", json!(choices)),
        )),
    }
}

/// The fields both create and update accept, checked and written into `doc`.
fn apply_common(body: &Map<String, Value>, doc: &mut Map<String, Value>) -> Result<()> {
    if let Some(d) = string_field(body, "description", 0, 2048)? {
        doc.insert("description".into(), json!(d));
    }
    if let Some(a) = one_of(body, "auth_type", &AUTH_TYPES)? {
        doc.insert("auth_type".into(), json!(a));
    }
    if let Some(v) = body.get("proxy_urls") {
        doc.insert("proxy_urls".into(), check_proxy_urls(v)?);
    }
    if let Some(v) = body.get("labels") {
        let given = check_labels(v)?;
        // Merge: a label set to null is removed.
        let mut labels = doc
            .get("labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (key, value) in given {
            if value.is_null() {
                labels.remove(&key);
            } else {
                labels.insert(key, value);
            }
        }
        if labels.len() > 50 {
            return Err(KonnectError::invalid(
                "labels must not have more than 50 keys",
                Invalid::body("labels", "max_items", "must not have more than 50 keys")
                    .with("maximum", json!(50)),
            ));
        }
        doc.insert("labels".into(), Value::Object(labels));
    }
    Ok(())
}

fn required_name(body: &Map<String, Value>) -> Result<String> {
    match string_field(body, "name", 1, 256)? {
        Some(n) if !n.trim().is_empty() => Ok(n.to_string()),
        _ => Err(KonnectError::invalid(
            "Request cannot be empty",
            Invalid::body("name", "required", "cannot be blank"),
        )),
    }
}

/// `POST /v2/control-planes`
async fn create(State(k): K, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    if !p.org_admin() {
        return Err(KonnectError::Forbidden(
            "Insufficient role-set to create control planes: an admin role on every control plane (*) is needed."
                .into(),
        ));
    }
    let body = read_body(&body_bytes(req).await?)?;
    unknown_fields(
        &body,
        &[
            "name",
            "description",
            "cluster_type",
            "auth_type",
            "cloud_gateway",
            "proxy_urls",
            "labels",
        ],
    )?;
    let name = required_name(&body)?;
    let cluster_type = one_of(&body, "cluster_type", &CLUSTER_TYPES)?
        .unwrap_or_else(|| "CLUSTER_TYPE_CONTROL_PLANE".into());
    const AVAILABLE: [&str; 3] = [
        "CLUSTER_TYPE_CONTROL_PLANE",
        "CLUSTER_TYPE_K8S_INGRESS_CONTROLLER",
        "CLUSTER_TYPE_CONTROL_PLANE_GROUP",
    ];
    if !AVAILABLE.contains(&cluster_type.as_str()) {
        return Err(KonnectError::invalid(
            format!(
                "cluster_type {cluster_type} is not available in Gantry: {}",
                AVAILABLE.join(", ")
            ),
            Invalid::body("cluster_type", "enum", "not available in Gantry")
                .with("choices", json!(AVAILABLE)),
        ));
    }
    match body.get("cloud_gateway") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(KonnectError::invalid(
                "cloud_gateway: Gantry has no cloud gateways; only false is accepted",
                Invalid::body(
                    "cloud_gateway",
                    "invalid",
                    "only false is accepted: Gantry has no cloud gateways",
                ),
            ))
        }
    }
    let mut doc = Map::new();
    doc.insert("description".into(), json!(""));
    doc.insert("labels".into(), json!({}));
    doc.insert("cluster_type".into(), json!(cluster_type));
    doc.insert("auth_type".into(), json!("pinned_client_certs"));
    doc.insert("proxy_urls".into(), json!([]));
    if cluster_type == "CLUSTER_TYPE_CONTROL_PLANE_GROUP" {
        doc.insert("members".into(), json!([]));
    }
    apply_common(&body, &mut doc)?;
    let row = k
        .store
        .create_control_plane(&uuid::Uuid::new_v4().to_string(), &name, &doc)
        .await?;
    tracing::info!(control_plane = %row.id, name = %row.name, by = %p.name, "control plane created");
    k.announce(PlaneEvent::Created(row.key));
    Ok((StatusCode::CREATED, Json(shown(&k, &row))).into_response())
}

async fn body_bytes(req: Request) -> Result<axum::body::Bytes> {
    axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| {
            KonnectError::invalid(
                "Invalid request format",
                Invalid::body(
                    "body",
                    "invalid",
                    "the body could not be read (limit 1 MiB)",
                ),
            )
        })
}

/// `GET /v2/control-planes/{id}`
async fn read(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?;
    let (row, _) = visible(&k, p, &id).await?;
    Ok(Json(shown(&k, &row)).into_response())
}

/// `PATCH /v2/control-planes/{id}`
async fn update(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let (row, role) = visible(&k, &p, &id).await?;
    require_admin(role, "update control planes")?;
    let body = read_body(&body_bytes(req).await?)?;
    unknown_fields(
        &body,
        &["name", "description", "auth_type", "proxy_urls", "labels"],
    )?;
    let name = match body.get("name") {
        Some(_) => required_name(&body)?,
        None => row.name.clone(),
    };
    let mut doc = row.doc.clone();
    apply_common(&body, &mut doc)?;
    let row = k.store.update_control_plane(row.key, &name, &doc).await?;
    Ok(Json(shown(&k, &row)).into_response())
}

/// `DELETE /v2/control-planes/{id}`
async fn remove(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let (row, _) = visible(&k, &p, &id).await?;
    if !p.org_admin() {
        return Err(KonnectError::Forbidden(
            "Insufficient role-set to delete control planes: an admin role on every control plane (*) is needed."
                .into(),
        ));
    }
    if row.key == DEFAULT_CP {
        return Err(KonnectError::invalid(
            "The default control plane cannot be deleted: Kong's Admin API at / configures it.",
            Invalid {
                source: "path",
                ..Invalid::body(
                    "id",
                    "invalid",
                    "the default control plane cannot be deleted",
                )
            },
        ));
    }
    crate::groups::forget_member(&k, &row.id).await?;
    k.store.delete_control_plane(row.key).await?;
    tracing::info!(control_plane = %row.id, name = %row.name, by = %p.name, "control plane deleted");
    k.announce(PlaneEvent::Deleted(row.key));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What of a control plane's Admin API the v2 API serves: its entities, their schemas and
/// tags; not `/config`, `/status`, the cluster's or the node's endpoints.
fn core_path_allowed(rest: &str) -> bool {
    let first = rest.split('/').next().unwrap_or("");
    gantry_model::entities::by_admin_path(first).is_some() || matches!(first, "schemas" | "tags")
}

async fn core_entities_root(State(k): K, Path(id): Path<String>, req: Request) -> Response {
    let p = match principal(req.extensions()) {
        Ok(p) => p.clone(),
        Err(e) => return e.into_response(),
    };
    match visible(&k, &p, &id).await {
        Ok(_) => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not found", "status": 404})),
        )
            .into_response(),
        Err(e) => core_error(e),
    }
}

/// A v2 error on a core-entities path, in that family's shape: `{message, status}`.
fn core_error(e: KonnectError) -> Response {
    let (status, m) = status_of(&e);
    (
        status,
        Json(json!({"message": m, "status": status.as_u16()})),
    )
        .into_response()
}

/// `/v2/control-planes/{id}/core-entities/{rest}`: the control plane's own Kong Admin API.
async fn core_entities(
    State(k): K,
    Path((id, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    let p = match principal(req.extensions()) {
        Ok(p) => p.clone(),
        Err(e) => return core_error(e),
    };
    let (row, role) = match visible(&k, &p, &id).await {
        Ok(v) => v,
        Err(e) => return core_error(e),
    };
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Validation reads (`/schemas/.../validate`) change nothing.
    let validation = rest.starts_with("schemas/") && rest.ends_with("/validate");
    if write && !validation && role != Role::Admin {
        return core_error(KonnectError::Forbidden(
            "Forbidden: this token may read this control plane, not change it".into(),
        ));
    }
    if write && !validation && crate::groups::is_group(&row) {
        return core_error(KonnectError::invalid(
            "A control plane group's configuration is its members': change the members' entities",
            Invalid::body(
                "id",
                "invalid",
                "a control plane group has no entities of its own",
            ),
        ));
    }
    if !core_path_allowed(&rest) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not found", "status": 404})),
        )
            .into_response();
    }
    let plane = k.plane(row.key);
    let (parts, body) = req.into_parts();
    let conn = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .copied();
    let pairs = pairs(&parts.uri);
    let name_filter: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k.starts_with("filter["))
        .cloned()
        .collect();
    let res = if name_filter.is_empty() {
        let target = match parts.uri.query() {
            Some(q) => format!("/{rest}?{q}"),
            None => format!("/{rest}"),
        };
        forward(
            &plane,
            parts.method.clone(),
            &target,
            parts.headers,
            body,
            conn,
        )
        .await
    } else if parts.method != Method::GET {
        return core_error(KonnectError::invalid(
            "filter[...] applies to lists",
            Invalid::query("filter", "invalid", "filters apply to GET of a collection"),
        ));
    } else {
        let rest_query: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(k, _)| !k.starts_with("filter["))
            .collect();
        match filtered_list(
            &plane,
            &rest,
            &rest_query,
            &name_filter,
            parts.headers,
            conn,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return core_error(e),
        }
    };
    if write && res.status().is_success() {
        // The control plane's cluster service follows its store; this wakes it now.
        if let Ok(v) = plane.state.store.version().await {
            plane.state.notify(v);
        }
    }
    konnect_shape(res).await
}

/// Send a request to a control plane's Admin API.
async fn forward(
    plane: &crate::Plane,
    method: Method,
    target: &str,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
    conn: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
) -> Response {
    let Ok(uri) = target.parse::<Uri>() else {
        return core_error(KonnectError::NotFound("Not found".into()));
    };
    // A new request, not the v2 one's parts: those carry the v2 route's path parameters,
    // which the inner router's would be added to.
    let mut inner = Request::new(body);
    *inner.method_mut() = method;
    *inner.uri_mut() = uri;
    *inner.headers_mut() = headers;
    inner.extensions_mut().insert(gantry_admin::Authorized);
    if let Some(c) = conn {
        inner.extensions_mut().insert(c);
    }
    match plane.router.clone().oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Entities a filtered list walks at most.
const FILTER_WALK_MAX: usize = 100_000;

/// `GET` of a collection with Konnect's `filter[name][eq]` / `filter[name][contains]`: the
/// collection is walked page by page and the matches returned, `size` at most, on one page.
async fn filtered_list(
    plane: &crate::Plane,
    rest: &str,
    query: &[(String, String)],
    filters: &[(String, String)],
    headers: axum::http::HeaderMap,
    conn: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
) -> Result<Response> {
    let mut eq = None;
    let mut contains = None;
    for (k, v) in filters {
        match k.as_str() {
            "filter[name][eq]" | "filter[name]" => eq = Some(v.clone()),
            "filter[name][contains]" => contains = Some(v.clone()),
            other => {
                return Err(KonnectError::invalid(
                    format!("unknown filter '{other}': filter[name][eq] and filter[name][contains] are supported"),
                    Invalid::query(other, "unknown_property", "unsupported filter"),
                ))
            }
        }
    }
    let mut size = 100usize;
    let mut keep: Vec<(String, String)> = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "size" => size = positive("size", v, Some(1000))? as usize,
            "offset" => {}
            _ => keep.push((k.clone(), v.clone())),
        }
    }
    let mut found = Vec::new();
    let mut offset: Option<String> = None;
    let mut walked = 0usize;
    loop {
        let target = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("size", "1000");
            for (k, v) in &keep {
                q.append_pair(k, v);
            }
            if let Some(o) = &offset {
                q.append_pair("offset", o);
            }
            format!("/{rest}?{}", q.finish())
        };
        let res = forward(
            plane,
            Method::GET,
            &target,
            headers.clone(),
            axum::body::Body::empty(),
            conn,
        )
        .await;
        if !res.status().is_success() {
            return Ok(res);
        }
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .map_err(|e| KonnectError::Internal(e.to_string()))?;
        let page: Value =
            serde_json::from_slice(&bytes).map_err(|e| KonnectError::Internal(e.to_string()))?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        walked += data.len();
        for item in data {
            let name = item.get("name").and_then(Value::as_str).unwrap_or("");
            let ok = eq.as_deref().is_none_or(|e| name == e)
                && contains.as_deref().is_none_or(|c| name.contains(c));
            if ok && found.len() < size {
                found.push(item);
            }
        }
        offset = page["offset"].as_str().map(str::to_string);
        if offset.is_none() || found.len() >= size {
            break;
        }
        if walked >= FILTER_WALK_MAX {
            return Err(KonnectError::invalid(
                format!("filter[name] walks {FILTER_WALK_MAX} entities at most: narrow the list with tags"),
                Invalid::query("filter[name]", "invalid", "too many entities to filter"),
            ));
        }
    }
    Ok(Json(json!({ "data": found })).into_response())
}

/// A control plane's Admin API answer in the v2 API's shape: Kong's `"next": null` and
/// `"offset": null` are left out, and so are the null values nested inside an entity's
/// fields (a health check's `headers`, a source's `ip`), which Konnect's schemas type as
/// present-or-absent. Top-level fields stay as Kong shows them.
async fn konnect_shape(res: Response) -> Response {
    let json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json || !res.status().is_success() {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return core_error(KonnectError::Internal("response too large".into()));
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    fn strip_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    fn entity(e: &mut Value) {
        if let Value::Object(m) = e {
            m.values_mut().for_each(strip_nulls);
        }
    }
    if let Some(m) = v.as_object_mut() {
        if let Some(Value::Array(items)) = m.get_mut("data") {
            items.iter_mut().for_each(entity);
            for k in ["next", "offset"] {
                if m.get(k).is_some_and(Value::is_null) {
                    m.remove(k);
                }
            }
        } else {
            entity(&mut v);
        }
    }
    let out = serde_json::to_vec(&v).unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// `GET /v2/control-planes/{id}/expected-config-hash`
async fn expected_hash(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let (row, _) = visible(&k, &p, &id).await?;
    let plane = k.plane(row.key);
    let (_, hashes) = plane
        .state
        .config_hash()
        .await
        .map_err(|e| KonnectError::Internal(e.to_string()))?;
    Ok(Json(json!({
        "expected_hash": hashes.config,
        "created_at": row.created_at / 1000,
        "updated_at": row.updated_at / 1000,
    }))
    .into_response())
}

/// `GET /v2/control-planes/{id}/expected-config-version`
async fn expected_version(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let (row, _) = visible(&k, &p, &id).await?;
    let v = k.store.scoped(row.key).version().await?;
    Ok(Json(json!({
        "expected_config_version": v.to_string(),
        "created_at": row.created_at / 1000,
    }))
    .into_response())
}
