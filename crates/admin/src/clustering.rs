//! `/clustering/data-planes` and `/clustering/status`: the control plane's registry of data
//! planes, read from the store (so every control plane on one database shows every node).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_conf::Role;
use gantry_model::{unix_now, Doc};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AdminState;

const STATUSES: &[&str] = &["connected", "out_of_sync", "incompatible", "disconnected"];

fn only_on_control_planes(st: &AdminState) -> Result<(), ApiError> {
    if st.settings.role != Role::ControlPlane {
        return Err(ApiError::BadRequest(
            "this endpoint is only available when Gantry runs as a control plane (role = control_plane)".into(),
        ));
    }
    Ok(())
}

/// The registry entries with what is known only at read time: whether a node still pings
/// (an entry whose control plane died is not updated any more) and how far behind it is.
async fn entries(st: &AdminState) -> Result<Vec<Doc>, ApiError> {
    let version = st.store.version().await?;
    let stale = unix_now() - 3 * st.settings.cluster.ping_interval.as_secs().max(1) as i64 - 5;
    let mut out = st.store.data_planes().await?;
    for d in out.iter_mut() {
        let last_seen = d.get("last_seen").and_then(Value::as_i64).unwrap_or(0);
        if last_seen < stale {
            d.insert("status".into(), json!("disconnected"));
        }
        let cv = d.get("config_version").and_then(Value::as_i64).unwrap_or(0);
        d.insert("behind".into(), json!((version - cv).max(0)));
    }
    Ok(out)
}

/// `GET /clustering/data-planes[?status=...][&labels=key:value,...]`
pub async fn data_planes(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_on_control_planes(&st)?;
    let status = q.get("status").map(String::as_str);
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(ApiError::Invalid(
                "status",
                format!(
                    "unknown status '{s}': expected one of {}",
                    STATUSES.join(", ")
                ),
            ));
        }
    }
    let mut wanted = Vec::new();
    if let Some(l) = q.get("labels") {
        for item in l.split(',').filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once(':') else {
                return Err(ApiError::Invalid(
                    "labels",
                    format!("label filter '{item}' is not key:value"),
                ));
            };
            wanted.push((k.to_string(), v.to_string()));
        }
    }
    let data: Vec<Doc> = entries(&st)
        .await?
        .into_iter()
        .filter(|d| status.is_none_or(|s| d.get("status").and_then(Value::as_str) == Some(s)))
        .filter(|d| {
            wanted.iter().all(|(k, v)| {
                d.get("labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    == Some(v)
            })
        })
        .collect();
    Ok(Json(json!({"data": data, "next": null})).into_response())
}

/// `GET /clustering/status`: Kong's older map of node id to its state.
pub async fn status(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    only_on_control_planes(&st)?;
    let mut out = serde_json::Map::new();
    for d in entries(&st).await? {
        let id = d
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        out.insert(
            id,
            json!({
                "config_hash": d.get("config_hash"),
                "hostname": d.get("hostname"),
                "ip": d.get("ip"),
                "last_seen": d.get("last_seen"),
                "status": d.get("status"),
            }),
        );
    }
    Ok(Json(Value::Object(out)).into_response())
}
