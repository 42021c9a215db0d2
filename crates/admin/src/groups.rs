//! Consumer groups' memberships, as Kong Enterprise 3.9 serves them:
//! `/consumer_groups/{g}` (the group with its consumers), `/consumer_groups/{g}/consumers[/{c}]`
//! and `/consumers/{c}/consumer_groups[/{g}]`. The groups themselves, and the plugins scoped to
//! them (`/consumer_groups/{g}/plugins`), are ordinary entities.
//!
//! A membership is stored as a `consumer_group_consumers` entity whose id is derived from the
//! pair ([`membership_id`]; Kong's primary key is the pair itself).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_model::entities::{entity, membership_id, EntitySchema};
use gantry_model::Doc;
use gantry_store::{ListQuery, Op};
use serde_json::{json, Value};

use crate::entities::{page_size, resolve};
use crate::error::ApiError;
use crate::AdminState;

const GROUPS: &str = "consumer_groups";
const MEMBERS: &str = "consumer_group_consumers";

fn schema(name: &str) -> &'static EntitySchema {
    entity(name).unwrap_or_else(|| unreachable!("{name} is a model entity"))
}

fn id_of(d: &Doc) -> String {
    d.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn group(st: &AdminState, key: &str) -> Result<Doc, ApiError> {
    resolve(st, schema(GROUPS), key, None)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("Group '{key}' not found")))
}

async fn consumer(st: &AdminState, key: &str) -> Result<Doc, ApiError> {
    resolve(st, schema("consumers"), key, None)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("Consumer '{key}' not found")))
}

/// The strings of a body field given as one string or a list of them (Kong accepts both).
fn keys(body: &Doc, field: &str) -> Result<Vec<String>, ApiError> {
    let missing = || ApiError::BadRequest(format!("must provide {field}"));
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(missing))
            .collect(),
        _ => Err(missing()),
    }
}

async fn is_member(st: &AdminState, group: &str, consumer: &str) -> Result<bool, ApiError> {
    Ok(st
        .store
        .get(MEMBERS, &membership_id(group, consumer))
        .await?
        .is_some())
}

/// Every membership of one side (`consumer_group` or `consumer` = `id`), all pages.
async fn memberships(st: &AdminState, field: &str, id: &str) -> Result<Vec<Doc>, ApiError> {
    let reference = Some((field.to_string(), id.to_string()));
    Ok(st.store.all(MEMBERS, reference).await?)
}

fn other_side(m: &Doc, field: &str) -> String {
    m.get(field)
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn write(st: &AdminState, ops: Vec<Op>) -> Result<(), ApiError> {
    if st.db_off {
        return Err(ApiError::ReadOnly(
            "cannot create, update or delete entities when database = off".into(),
        ));
    }
    let version = st.store.write(ops).await?;
    st.notify(version);
    Ok(())
}

fn join(group: &str, consumer: &str) -> Op {
    let mut d = Doc::new();
    d.insert("id".into(), json!(membership_id(group, consumer)));
    d.insert("created_at".into(), json!(gantry_model::unix_now()));
    d.insert("consumer_group".into(), json!({ "id": group }));
    d.insert("consumer".into(), json!({ "id": consumer }));
    Op::Insert(schema(MEMBERS), d)
}

/// A page of one side's memberships, shown as the entities on the other side.
async fn page_of(
    st: &AdminState,
    field: &str,
    id: &str,
    other: &str,
    path: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let page = st
        .store
        .list(
            MEMBERS,
            &ListQuery {
                reference: Some((field.to_string(), id.to_string())),
                tags: None,
                size: page_size(q)?,
                offset: q.get("offset").cloned(),
            },
        )
        .await?;
    let target = if other == "consumer" {
        "consumers"
    } else {
        GROUPS
    };
    let mut data = Vec::with_capacity(page.data.len());
    for m in &page.data {
        let id = other_side(m, other);
        if let Some(mut d) = st.store.get(target, &id).await? {
            if target == GROUPS {
                // Kong lists a consumer's groups with their sizes.
                let n = memberships(st, "consumer_group", &id).await?.len();
                d.insert("consumers_count".into(), json!(n));
            }
            data.push(Value::Object(d));
        }
    }
    let mut body = json!({ "data": data, "next": null });
    if let Some(o) = page.next_offset {
        body["next"] = json!(format!("/{path}?offset={o}"));
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
}

async fn read_body(st: &AdminState, headers: &HeaderMap, body: Body) -> Result<Doc, ApiError> {
    let bytes = crate::body::read(body, st.settings.admin_body_max).await?;
    Ok(crate::body::decode(headers, &bytes)?.0)
}

/// `GET /consumer_groups/{g}`: `{"consumer_group": ..., "consumers": [...]}` (the consumers
/// left out when there are none, or with `list_consumers=false`). Other methods are the
/// entity's own.
pub async fn item(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return crate::entities::item(
            State(st),
            Path((GROUPS.to_string(), key)),
            method,
            headers,
            body,
        )
        .await;
    }
    let g = group(&st, &key).await?;
    let mut out = json!({ "consumer_group": g });
    if q.get("list_consumers").map(String::as_str) != Some("false") {
        let mut consumers = Vec::new();
        for m in memberships(&st, "consumer_group", &id_of(&g)).await? {
            if let Some(c) = st
                .store
                .get("consumers", &other_side(&m, "consumer"))
                .await?
            {
                consumers.push(Value::Object(c));
            }
        }
        if !consumers.is_empty() {
            out["consumers"] = Value::Array(consumers);
        }
    }
    Ok(Json(out).into_response())
}

/// `/consumer_groups/{g}/consumers`: list, add (`consumer`: one or a list), remove all.
pub async fn group_consumers(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let g = group(&st, &key).await?;
    let gid = id_of(&g);
    match method {
        Method::GET | Method::HEAD => {
            let path = format!("consumer_groups/{gid}/consumers");
            page_of(&st, "consumer_group", &gid, "consumer", &path, &q).await
        }
        Method::POST => {
            let body = read_body(&st, &headers, body).await?;
            let mut added = Vec::new();
            // Every consumer is checked before any is added.
            for k in keys(&body, "consumer")? {
                let c = consumer(&st, &k).await?;
                if is_member(&st, &gid, &id_of(&c)).await? {
                    return Err(ApiError::Conflict(format!(
                        "Consumer '{k}' already in group '{gid}'"
                    )));
                }
                if !added.iter().any(|a: &Doc| id_of(a) == id_of(&c)) {
                    added.push(c);
                }
            }
            write(&st, added.iter().map(|c| join(&gid, &id_of(c))).collect()).await?;
            let consumers: Vec<Value> = added.into_iter().map(Value::Object).collect();
            Ok((
                StatusCode::CREATED,
                Json(json!({ "consumer_group": g, "consumers": consumers })),
            )
                .into_response())
        }
        Method::DELETE => {
            let none = format!("Group '{gid}' has no consumers");
            leave_all(&st, "consumer_group", &gid, none).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `/consumers/{c}/consumer_groups`: list, add (`group`: one or a list), remove from all.
pub async fn consumer_groups(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let c = consumer(&st, &key).await?;
    let cid = id_of(&c);
    match method {
        Method::GET | Method::HEAD => {
            let path = format!("consumers/{cid}/consumer_groups");
            page_of(&st, "consumer", &cid, "consumer_group", &path, &q).await
        }
        Method::POST => {
            let body = read_body(&st, &headers, body).await?;
            let mut added = Vec::new();
            for k in keys(&body, "group")? {
                let g = group(&st, &k).await?;
                if is_member(&st, &id_of(&g), &cid).await? {
                    return Err(ApiError::Conflict(format!(
                        "Consumer '{key}' already in group '{k}'"
                    )));
                }
                if !added.iter().any(|a: &Doc| id_of(a) == id_of(&g)) {
                    added.push(g);
                }
            }
            write(&st, added.iter().map(|g| join(&id_of(g), &cid)).collect()).await?;
            let groups: Vec<Value> = added.into_iter().map(Value::Object).collect();
            Ok((
                StatusCode::CREATED,
                Json(json!({ "consumer": c, "consumer_groups": groups })),
            )
                .into_response())
        }
        Method::DELETE => {
            let none = format!("Consumer '{cid}' not in group");
            leave_all(&st, "consumer", &cid, none).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Remove every membership of one side (`consumer_group` or `consumer` = `id`); Kong's 404
/// `none` when there is none.
async fn leave_all(
    st: &AdminState,
    field: &str,
    id: &str,
    none: String,
) -> Result<Response, ApiError> {
    let all = memberships(st, field, id).await?;
    if all.is_empty() {
        return Err(ApiError::Missing(none));
    }
    let ops = all
        .iter()
        .map(|m| Op::Delete(schema(MEMBERS), id_of(m)))
        .collect();
    write(st, ops).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One membership, from either side: `GET` shows the entity on the far side, `DELETE`
/// removes the membership.
async fn membership(
    st: &AdminState,
    group_key: &str,
    consumer_key: &str,
    method: Method,
    consumer_side: bool,
) -> Result<Response, ApiError> {
    let c = consumer(st, consumer_key).await?;
    let g = group(st, group_key).await?;
    let (gid, cid) = (id_of(&g), id_of(&c));
    if !is_member(st, &gid, &cid).await? {
        return Err(ApiError::Missing(format!(
            "Consumer '{consumer_key}' not found in Group '{group_key}'"
        )));
    }
    match method {
        Method::GET | Method::HEAD => Ok(Json(if consumer_side {
            json!({ "consumer_group": g })
        } else {
            json!({ "consumer": c })
        })
        .into_response()),
        Method::DELETE => {
            write(
                st,
                vec![Op::Delete(schema(MEMBERS), membership_id(&gid, &cid))],
            )
            .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `/consumer_groups/{g}/consumers/{c}`
pub async fn group_consumer(
    State(st): State<Arc<AdminState>>,
    Path((g, c)): Path<(String, String)>,
    method: Method,
) -> Result<Response, ApiError> {
    membership(&st, &g, &c, method, false).await
}

/// `/consumers/{c}/consumer_groups/{g}`
pub async fn consumer_group(
    State(st): State<Arc<AdminState>>,
    Path((c, g)): Path<(String, String)>,
    method: Method,
) -> Result<Response, ApiError> {
    membership(&st, &g, &c, method, true).await
}
