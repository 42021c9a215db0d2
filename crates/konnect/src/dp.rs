//! A control plane's data planes in the v2 API: `/nodes` (the registry, in Konnect's node
//! records with their compatibility) and `/dp-client-certificates` (the certificates it pins).
//! Both answer errors in the shape the spec gives them: `{"message": ...}`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_store::DpCertRow;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::KonnectError;
use crate::tokens::Role;
use crate::{Konnect, PlaneEvent};

type K = State<Arc<Konnect>>;

/// An error in this family's shape.
pub(crate) fn legacy(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

/// A store error in this family's shape: a certificate pinned twice is a conflict.
fn store_failed(e: gantry_store::StoreError) -> Response {
    match e {
        gantry_store::StoreError::Unique { .. } => legacy(
            StatusCode::CONFLICT,
            "this certificate is pinned for this control plane already",
        ),
        e => legacy(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn from_konnect(e: KonnectError) -> Response {
    let (status, m) = crate::api::status_of(&e);
    legacy(status, m)
}

/// The control plane and the caller's role on it, or the answer to give.
async fn scope(
    k: &Konnect,
    ext: &axum::http::Extensions,
    id: &str,
    write: bool,
) -> Result<gantry_store::ControlPlaneRow, Response> {
    let p = crate::api::principal(ext).map_err(from_konnect)?;
    let (row, role) = crate::api::visible(k, p, id).await.map_err(|e| match e {
        KonnectError::NotFound(_) => legacy(StatusCode::NOT_FOUND, "Not Found"),
        other => from_konnect(other),
    })?;
    if write && role != Role::Admin {
        return Err(legacy(StatusCode::FORBIDDEN, "Forbidden"));
    }
    Ok(row)
}

/// A registry entry as Konnect's node record.
fn node(d: &Map<String, Value>) -> Value {
    let sync = d
        .get("sync_status")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let reason = d.get("reason").and_then(Value::as_str);
    let (state, issues) = match sync {
        "normal" => ("COMPATIBILITY_STATE_FULLY_COMPATIBLE", vec![]),
        "kong_version_incompatible" | "plugin_set_incompatible" => {
            let (code, resolution, kind) = if sync == "kong_version_incompatible" {
                (
                    "KONG_VERSION_INCOMPATIBLE",
                    "Run a data plane of the control plane's major version, not newer than the control plane.",
                    "data_plane",
                )
            } else {
                (
                    "PLUGIN_SET_INCOMPATIBLE",
                    "Enable the plugins on the data plane (its plugins setting), or remove them from the control plane's configuration.",
                    "plugin",
                )
            };
            (
                "COMPATIBILITY_STATE_INCOMPATIBLE",
                vec![json!({
                    "code": code,
                    "severity": "error",
                    "description": reason.unwrap_or("incompatible with this control plane"),
                    "resolution": resolution,
                    "affected_resources": [{
                        "id": d.get("id"),
                        "type": kind,
                        "parent_code": code,
                        "details": reason.map(|r| vec![r]).unwrap_or_default(),
                    }],
                })],
            )
        }
        _ => ("COMPATIBILITY_STATE_UNKNOWN", vec![]),
    };
    json!({
        "id": d.get("id"),
        "version": d.get("version"),
        "hostname": d.get("hostname"),
        "last_ping": d.get("last_seen"),
        "type": "kong-proxy",
        "created_at": d.get("created_at"),
        "updated_at": d.get("updated_at"),
        "config_hash": d.get("config_hash"),
        "compatibility_status": {"state": state, "issues": issues},
    })
}

/// A request this family refuses with 400, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl IntoResponse for BadInput {
    fn into_response(self) -> Response {
        legacy(StatusCode::BAD_REQUEST, self.0)
    }
}

async fn entries(k: &Konnect, key: i64) -> Result<Vec<Map<String, Value>>, Response> {
    let plane = k.plane(key);
    gantry_admin::clustering::entries(&plane.state)
        .await
        .map_err(|e| legacy(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /v2/control-planes/{id}/nodes`
pub async fn list_nodes(State(k): K, Path(id): Path<String>, req: Request) -> Response {
    let row = match scope(&k, req.extensions(), &id, false).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (size, after) = match crate::api::cursor_page(req.uri()) {
        Ok(p) => p,
        Err(e) => return BadInput(e.detail.into()).into_response(),
    };
    let all = match entries(&k, row.key).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let items: Vec<Value> = all.iter().skip(after).take(size).map(node).collect();
    let next = (after + size < all.len()).then(|| {
        format!(
            "/v2/control-planes/{id}/nodes?page[size]={size}&page[after]={}",
            after + size
        )
    });
    let mut page = json!({ "total_count": all.len() });
    // The spec types `next` as a string: it is left out on the last page.
    if let Some(n) = next {
        page["next"] = json!(n);
    }
    Json(json!({"items": items, "page": page})).into_response()
}

/// `GET /v2/control-planes/{id}/nodes/eol`: data planes whose version this control plane no
/// longer configures.
pub async fn eol_nodes(State(k): K, Path(id): Path<String>, req: Request) -> Response {
    let row = match scope(&k, req.extensions(), &id, false).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let all = match entries(&k, row.key).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let items: Vec<Value> = all
        .iter()
        .filter(|d| {
            d.get("sync_status").and_then(Value::as_str) == Some("kong_version_incompatible")
        })
        .map(|d| {
            json!({
                "node_id": d.get("id"),
                "node_version": d.get("version"),
                "message": d.get("reason"),
            })
        })
        .collect();
    Json(json!({"page": {"total_count": items.len()}, "items": items})).into_response()
}

/// `GET /v2/control-planes/{id}/nodes/{node}`
pub async fn get_node(
    State(k): K,
    Path((id, node_id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let row = match scope(&k, req.extensions(), &id, false).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let all = match entries(&k, row.key).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    match all
        .iter()
        .find(|d| d.get("id").and_then(Value::as_str) == Some(node_id.as_str()))
    {
        Some(d) => Json(json!({ "item": node(d) })).into_response(),
        None => legacy(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `DELETE /v2/control-planes/{id}/nodes/{node}`: forget a node (one still connected is
/// listed again at its next ping).
pub async fn delete_node(
    State(k): K,
    Path((id, node_id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let row = match scope(&k, req.extensions(), &id, true).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match k.store.scoped(row.key).delete_data_plane(&node_id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => legacy(StatusCode::NOT_FOUND, "Not Found"),
        Err(e) => store_failed(e),
    }
}

fn cert_item(c: &DpCertRow) -> Value {
    json!({
        "id": c.id,
        "cert": c.doc.get("cert"),
        "title": c.doc.get("title"),
        "created_at": c.created_at,
        "updated_at": c.doc.get("updated_at").cloned().unwrap_or(json!(c.created_at)),
    })
}

/// The PEM certificate of a request body and the SHA-256 of its DER, or why not.
pub fn read_cert(body: &[u8]) -> Result<(String, Option<String>, String), BadInput> {
    let bad = |m: String| BadInput(m);
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("the body must be a JSON object with cert (PEM)".into()));
    };
    if let Some(extra) = b.keys().find(|k| !["cert", "title"].contains(&k.as_str())) {
        return Err(bad(format!("property {extra} should not exist")));
    }
    let Some(pem) = b.get("cert").and_then(Value::as_str) else {
        return Err(bad("cert: required, a PEM certificate".into()));
    };
    let title = match b.get("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(bad("title: must be a string".into())),
    };
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("cert: not a PEM certificate: {e}")))?;
    if parsed.label != "CERTIFICATE" {
        return Err(bad(format!(
            "cert: a PEM CERTIFICATE is expected, not {}",
            parsed.label
        )));
    }
    x509_parser::parse_x509_certificate(&parsed.contents)
        .map_err(|e| bad(format!("cert: not an X.509 certificate: {e}")))?;
    Ok((
        pem.to_string(),
        title,
        hex::encode(Sha256::digest(&parsed.contents)),
    ))
}

/// `GET /v2/control-planes/{id}/dp-client-certificates`
pub async fn list_certs(State(k): K, Path(id): Path<String>, req: Request) -> Response {
    let row = match scope(&k, req.extensions(), &id, false).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match k.store.scoped(row.key).dp_certs().await {
        Ok(c) => Json(json!({
            "items": c.iter().map(cert_item).collect::<Vec<_>>(),
            "page": {"total_count": c.len()},
        }))
        .into_response(),
        Err(e) => store_failed(e),
    }
}

/// `POST /v2/control-planes/{id}/dp-client-certificates`
pub async fn create_cert(State(k): K, Path(id): Path<String>, req: Request) -> Response {
    let row = match scope(&k, req.extensions(), &id, true).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return legacy(
                StatusCode::BAD_REQUEST,
                "the body could not be read (limit 1 MiB)",
            )
        }
    };
    let (pem, title, digest) = match read_cert(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match pin(&k, row.key, pem, title, digest).await {
        Ok(c) => (StatusCode::CREATED, Json(json!({ "item": cert_item(&c) }))).into_response(),
        Err(e) => store_failed(e),
    }
}

/// Pin a certificate for control plane `key`; its data planes are told.
async fn pin(
    k: &Konnect,
    key: i64,
    pem: String,
    title: Option<String>,
    digest: String,
) -> Result<DpCertRow, gantry_store::StoreError> {
    let now = gantry_model::unix_now();
    let mut doc = Map::new();
    doc.insert("cert".into(), json!(pem));
    doc.insert("title".into(), json!(title));
    doc.insert("updated_at".into(), json!(now));
    let c = DpCertRow {
        id: uuid::Uuid::new_v4().to_string(),
        cp: key,
        digest,
        doc,
        created_at: now,
    };
    k.store.scoped(key).add_dp_cert(&c).await?;
    k.announce(PlaneEvent::CertsChanged(key));
    Ok(c)
}

impl Konnect {
    /// Pin PEM certificate `pem` for control plane `key` (as `POST dp-client-certificates`
    /// does); returns its id.
    pub async fn pin_cert(&self, key: i64, pem: &str, title: &str) -> Result<String, KonnectError> {
        let (pem, _, digest) = read_cert(json!({"cert": pem}).to_string().as_bytes())
            .map_err(|e| KonnectError::Internal(e.0))?;
        pin(self, key, pem, Some(title.to_string()), digest)
            .await
            .map(|c| c.id)
            .map_err(KonnectError::from)
    }
}

/// `GET /v2/control-planes/{id}/dp-client-certificates/{cert}`
pub async fn get_cert(
    State(k): K,
    Path((id, cert)): Path<(String, String)>,
    req: Request,
) -> Response {
    let row = match scope(&k, req.extensions(), &id, false).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match k.store.scoped(row.key).dp_certs().await {
        Ok(all) => match all.iter().find(|c| c.id == cert) {
            Some(c) => Json(json!({ "item": cert_item(c) })).into_response(),
            None => legacy(StatusCode::NOT_FOUND, "Not Found"),
        },
        Err(e) => store_failed(e),
    }
}

/// `PUT /v2/control-planes/{id}/dp-client-certificates/{cert}`: replace the certificate (and
/// title); data planes connected with the old one are disconnected.
pub async fn put_cert(
    State(k): K,
    Path((id, cert)): Path<(String, String)>,
    req: Request,
) -> Response {
    let row = match scope(&k, req.extensions(), &id, true).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return legacy(
                StatusCode::BAD_REQUEST,
                "the body could not be read (limit 1 MiB)",
            )
        }
    };
    let (pem, title, digest) = match read_cert(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let store = k.store.scoped(row.key);
    let old = match store.dp_certs().await {
        Ok(all) => all.into_iter().find(|c| c.id == cert),
        Err(e) => return store_failed(e),
    };
    let Some(mut c) = old else {
        return legacy(StatusCode::NOT_FOUND, "Not Found");
    };
    c.digest = digest;
    c.doc.insert("cert".into(), json!(pem));
    c.doc.insert("title".into(), json!(title));
    c.doc
        .insert("updated_at".into(), json!(gantry_model::unix_now()));
    match store.update_dp_cert(&c).await {
        Ok(true) => {
            k.announce(PlaneEvent::CertsChanged(row.key));
            Json(json!({ "item": cert_item(&c) })).into_response()
        }
        Ok(false) => legacy(StatusCode::NOT_FOUND, "Not Found"),
        Err(e) => store_failed(e),
    }
}

/// `DELETE /v2/control-planes/{id}/dp-client-certificates/{cert}`: the data planes connected
/// with it are disconnected, and refused from then on.
pub async fn delete_cert(
    State(k): K,
    Path((id, cert)): Path<(String, String)>,
    req: Request,
) -> Response {
    let row = match scope(&k, req.extensions(), &id, true).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match k.store.scoped(row.key).delete_dp_cert(&cert).await {
        Ok(Some(_)) => {
            k.announce(PlaneEvent::CertsChanged(row.key));
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => legacy(StatusCode::NOT_FOUND, "Not Found"),
        Err(e) => store_failed(e),
    }
}
