//! Kong's upstream health endpoints: `GET /upstreams/{u}/health` (each target with its
//! health, or with `balancer_health=1` the upstream's), `GET /upstreams/{u}/targets/all`, and
//! `POST /upstreams/{u}/targets/{t}[/{address}]/healthy|unhealthy`. Health is the proxy's on
//! this node: a node that does not proxy (a control plane) lists the targets without it, as
//! Kong's control plane does, and refuses to set it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_model::entities::entity;
use gantry_model::Doc;
use gantry_store::ListQuery;
use serde_json::{json, Value};

use crate::entities::{page_size, resolve};
use crate::error::ApiError;
use crate::AdminState;

async fn upstream(st: &AdminState, key: &str) -> Result<Doc, ApiError> {
    let schema = entity("upstreams").ok_or(ApiError::NotFound)?;
    resolve(st, schema, key, None)
        .await?
        .ok_or(ApiError::NotFound)
}

fn id_of(d: &Doc) -> String {
    d.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A page of the upstream's targets: `(targets, next offset)`.
async fn targets(
    st: &AdminState,
    up: &Doc,
    q: &HashMap<String, String>,
) -> Result<(Vec<Doc>, Option<String>), ApiError> {
    let page = st
        .store
        .list(
            "targets",
            &ListQuery {
                reference: Some(("upstream".into(), id_of(up))),
                tags: None,
                size: page_size(q)?,
                offset: q.get("offset").cloned(),
            },
        )
        .await?;
    Ok((page.data, page.next_offset))
}

/// `host` and `port` of a target (`[v6]:port` included).
fn split(target: &str) -> (String, u16) {
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (h, p.parse().unwrap_or(8000)),
        _ => (target, 8000),
    };
    (host.trim_matches(['[', ']']).to_string(), port)
}

/// `GET /upstreams/{u}/health`
pub async fn health(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let up = upstream(&st, &key).await?;
    let name = up.get("name").and_then(Value::as_str).unwrap_or_default();
    let running = st.balancers.get().and_then(|b| b.health(name));
    if q.get("balancer_health").map(String::as_str) == Some("1") {
        let data = running.as_ref().map(|targets| {
            let threshold = up
                .get("healthchecks")
                .and_then(|h| h.get("threshold"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let off = targets.iter().all(|(_, h)| *h == "HEALTHCHECKS_OFF");
            let healthy = targets.iter().filter(|(_, h)| *h == "HEALTHY").count();
            let share = if targets.is_empty() {
                0.0
            } else {
                healthy as f64 * 100.0 / targets.len() as f64
            };
            let health = match (off, healthy > 0 && share >= threshold) {
                (true, _) => "HEALTHCHECKS_OFF",
                (false, true) => "HEALTHY",
                (false, false) => "UNHEALTHY",
            };
            json!({ "health": health, "id": id_of(&up) })
        });
        return Ok(Json(json!({
            "data": data,
            "next": null,
            "node_id": st.node_id,
        }))
        .into_response());
    }
    let (page, next) = targets(&st, &up, &q).await?;
    let mut data = Vec::with_capacity(page.len());
    for t in page {
        let mut v = Value::Object(t);
        if let Some(running) = &running {
            let target = v["target"].as_str().unwrap_or_default().to_string();
            let weight = v["weight"].as_u64().unwrap_or(100);
            let (host, port) = split(&target);
            match running.iter().find(|(t, _)| *t == target) {
                Some((_, h)) => {
                    v["health"] = json!(h);
                    v["data"] = json!({"addresses": [
                        {"ip": host, "port": port, "health": h, "weight": weight}
                    ]});
                }
                // A target of weight 0 takes no traffic and is not checked.
                None if weight == 0 => v["health"] = json!("HEALTHCHECKS_OFF"),
                // Kong's name for a target missing from the balancer.
                None => v["health"] = json!("DNS_ERROR"),
            }
        }
        data.push(v);
    }
    let mut body = json!({ "data": data, "next": null, "node_id": st.node_id });
    if let Some(o) = next {
        body["next"] = json!(format!("/upstreams/{key}/health?offset={o}"));
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
}

/// `GET /upstreams/{u}/targets/all`: every target of the upstream, in pages.
pub async fn all_targets(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let up = upstream(&st, &key).await?;
    let (page, next) = targets(&st, &up, &q).await?;
    let mut body = json!({ "data": page, "next": null });
    if let Some(o) = next {
        body["next"] = json!(format!("/upstreams/{key}/targets/all?offset={o}"));
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
}

async fn set_health(
    st: &AdminState,
    key: &str,
    target_key: &str,
    state: &str,
    method: Method,
) -> Result<Response, ApiError> {
    let up = match state {
        "healthy" | "unhealthy" => upstream(st, key).await?,
        _ => return Err(ApiError::NotFound),
    };
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let schema = entity("targets").ok_or(ApiError::NotFound)?;
    let parent = Some(("upstream", id_of(&up)));
    let target = resolve(
        st,
        schema,
        target_key,
        parent.as_ref().map(|(f, id)| (*f, id.as_str())),
    )
    .await?
    .ok_or(ApiError::NotFound)?;
    let name = up.get("name").and_then(Value::as_str).unwrap_or_default();
    let t = target
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(b) = st.balancers.get() else {
        return Err(ApiError::BadRequest(
            "this node does not proxy: target health is each data plane's own".into(),
        ));
    };
    if !b.set_health(name, t, state == "healthy") {
        return Err(ApiError::BadRequest(format!(
            "target {t} of upstream {name} is not in the running configuration"
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /upstreams/{u}/targets/{t}/healthy` and `.../unhealthy`
pub async fn set(
    State(st): State<Arc<AdminState>>,
    Path((key, target, state)): Path<(String, String, String)>,
    method: Method,
) -> Result<Response, ApiError> {
    set_health(&st, &key, &target, &state, method).await
}

/// `POST /upstreams/{u}/targets/{t}/{address}/healthy` and `.../unhealthy`: Gantry checks a
/// target as one address, so the address given must be the target's own.
pub async fn set_address(
    State(st): State<Arc<AdminState>>,
    Path((key, target, address, state)): Path<(String, String, String, String)>,
    method: Method,
) -> Result<Response, ApiError> {
    let t = if target.contains(':') {
        target.clone()
    } else {
        format!("{target}:8000")
    };
    let a = if address.contains(':') {
        address.clone()
    } else {
        format!("{address}:8000")
    };
    if split(&t) != split(&a) {
        return Err(ApiError::BadRequest(format!(
            "address {address} is not target {target}'s: Gantry checks each target as one address"
        )));
    }
    set_health(&st, &key, &target, &state, method).await
}
