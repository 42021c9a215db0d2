//! Control plane groups in the v2 API: `group-memberships` (list, put, add, remove),
//! `group-member-status` and `group-status`. A group's members are kept in its description
//! document (`members`: ids); the cluster service publishes their union to the group's data
//! planes and reports conflicts (see `gantry_cp::group`).
//!
//! A member is a plain control plane (not a group), a member of one group at most; the caller
//! needs admin on the group and a role on each member it names.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_store::ControlPlaneRow;
use serde_json::{json, Value};

use crate::api::{principal, visible};
use crate::error::{Invalid, KonnectError};
use crate::tokens::Role;
use crate::{Konnect, PlaneEvent};

type K = State<Arc<Konnect>>;
type Result<T> = std::result::Result<T, KonnectError>;

const GROUP: &str = "CLUSTER_TYPE_CONTROL_PLANE_GROUP";

pub(crate) fn is_group(row: &ControlPlaneRow) -> bool {
    row.doc.get("cluster_type").and_then(Value::as_str) == Some(GROUP)
}

fn members(row: &ControlPlaneRow) -> Vec<String> {
    row.doc
        .get("members")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The group `id` names, with the caller's role on it; 400 when it is not a group.
async fn group(
    k: &Konnect,
    req: &axum::http::Extensions,
    id: &str,
) -> Result<(ControlPlaneRow, Role)> {
    let p = principal(req)?;
    let (row, role) = visible(k, p, id).await?;
    if !is_group(&row) {
        return Err(KonnectError::invalid(
            format!("control plane {id} is not a control plane group (cluster_type {GROUP})"),
            Invalid {
                source: "path",
                ..Invalid::body("controlPlaneId", "invalid", "not a control plane group")
            },
        ));
    }
    Ok((row, role))
}

/// `GET /v2/control-planes/{id}/group-memberships`
pub async fn list(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let (row, _) = group(&k, req.extensions(), &id).await?;
    let (size, after) = crate::api::cursor_page(req.uri())
        .map_err(|e| KonnectError::invalid(e.detail, Invalid::query(e.field, e.rule, e.reason)))?;
    let all = k.store.control_planes().await?;
    let ids = members(&row);
    let rows: Vec<&ControlPlaneRow> = ids
        .iter()
        .filter_map(|m| all.iter().find(|r| &r.id == m))
        .collect();
    let data: Vec<Value> = rows
        .iter()
        .skip(after)
        .take(size)
        .map(|r| crate::api::shown(&k, r))
        .collect();
    let next = (after + size < rows.len()).then(|| {
        format!(
            "/v2/control-planes/{id}/group-memberships?page[size]={size}&page[after]={}",
            after + size
        )
    });
    Ok(Json(json!({
        "meta": {"page": {"total": rows.len(), "size": size, "next": next}},
        "data": data,
    }))
    .into_response())
}

/// The `members` of a membership body: ids of control planes the caller can see, none a group.
async fn read_members(
    k: &Konnect,
    ext: &axum::http::Extensions,
    body: &[u8],
) -> Result<Vec<ControlPlaneRow>> {
    let bad = |field: &str, reason: &str| {
        KonnectError::invalid(
            format!("{field}: {reason}"),
            Invalid::body(field.to_string(), "invalid", reason.to_string()),
        )
    };
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad(
            "body",
            "request format is invalid: a JSON object with members is expected",
        ));
    };
    if let Some(extra) = b.keys().find(|k| *k != "members") {
        return Err(KonnectError::invalid(
            "Request contains unknown property",
            Invalid::body(
                extra.clone(),
                "unknown_property",
                format!("property {extra} should not exist"),
            ),
        ));
    }
    let Some(Value::Array(items)) = b.get("members") else {
        return Err(bad("members", "is required: an array of {\"id\": ...}"));
    };
    let p = principal(ext)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(id) = item.get("id").and_then(Value::as_str) else {
            return Err(bad(&format!("members[{i}].id"), "is required"));
        };
        let (row, _) = visible(k, p, id).await.map_err(|e| match e {
            KonnectError::NotFound(_) => bad(&format!("members[{i}].id"), "no such control plane"),
            other => other,
        })?;
        if is_group(&row) {
            return Err(bad(
                &format!("members[{i}].id"),
                "a control plane group cannot be a member of a group",
            ));
        }
        if !out.iter().any(|r: &ControlPlaneRow| r.key == row.key) {
            out.push(row);
        }
    }
    Ok(out)
}

enum Change {
    Put,
    Add,
    Remove,
}

async fn change(k: &Konnect, id: &str, req: Request, how: Change) -> Result<Response> {
    let ext = req.extensions().clone();
    let (row, role) = group(k, &ext, id).await?;
    if role != Role::Admin {
        return Err(KonnectError::Forbidden(
            "Insufficient role-set to change this group's members".into(),
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| {
            KonnectError::invalid(
                "Invalid request format",
                Invalid::body("body", "invalid", "the body could not be read"),
            )
        })?;
    let given = read_members(k, &ext, &body).await?;
    let mut now = members(&row);
    match how {
        Change::Put => now = given.iter().map(|r| r.id.clone()).collect(),
        Change::Add => {
            for r in &given {
                if !now.contains(&r.id) {
                    now.push(r.id.clone());
                }
            }
        }
        Change::Remove => now.retain(|m| !given.iter().any(|r| &r.id == m)),
    }
    // A control plane belongs to one group at most.
    for other in k.store.control_planes().await? {
        if other.key != row.key && is_group(&other) {
            if let Some(taken) = members(&other).iter().find(|m| now.contains(m)) {
                return Err(KonnectError::Conflict(format!(
                    "control plane {taken} is a member of group {} already: a control plane belongs to one group at most",
                    other.id
                )));
            }
        }
    }
    let mut doc = row.doc.clone();
    doc.insert("members".into(), json!(now));
    k.store
        .update_control_plane(row.key, &row.name, &doc)
        .await?;
    k.announce(PlaneEvent::MembersChanged(row.key));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v2/control-planes/{id}/group-memberships`: the members become exactly these.
pub async fn put(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    change(&k, &id, req, Change::Put).await
}

/// `POST /v2/control-planes/{id}/group-memberships/add`
pub async fn add(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    change(&k, &id, req, Change::Add).await
}

/// `POST /v2/control-planes/{id}/group-memberships/remove`
pub async fn remove(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    change(&k, &id, req, Change::Remove).await
}

/// `GET /v2/control-planes/{id}/group-member-status`
pub async fn member_status(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?;
    let (row, _) = visible(&k, p, &id).await?;
    let is_member = k
        .store
        .control_planes()
        .await?
        .iter()
        .any(|g| is_group(g) && members(g).contains(&row.id));
    Ok(Json(json!({ "is_member": is_member })).into_response())
}

/// `GET /v2/control-planes/{id}/group-status`
pub async fn status(State(k): K, Path(id): Path<String>, req: Request) -> Result<Response> {
    let (row, _) = group(&k, req.extensions(), &id).await?;
    let (state, conflicts, updated) = k
        .group_status
        .get()
        .and_then(|f| f(row.key))
        .unwrap_or_else(|| ("UNKNOWN".into(), Vec::new(), row.updated_at / 1000));
    Ok(Json(json!({
        "item": {
            "id": row.id,
            "created_at": crate::api::iso(row.created_at),
            "updated_at": crate::api::iso(updated * 1000),
            "conflicts": conflicts,
            "state": state,
        }
    }))
    .into_response())
}

/// Take a control plane about to be deleted out of every group.
pub(crate) async fn forget_member(k: &Konnect, id: &str) -> Result<()> {
    for g in k.store.control_planes().await? {
        if is_group(&g) && members(&g).iter().any(|m| m == id) {
            let mut doc = g.doc.clone();
            let rest: Vec<String> = members(&g).into_iter().filter(|m| m != id).collect();
            doc.insert("members".into(), json!(rest));
            k.store.update_control_plane(g.key, &g.name, &doc).await?;
            k.announce(PlaneEvent::MembersChanged(g.key));
        }
    }
    Ok(())
}
