//! The console's own endpoints under `/api/console/`: what Konnect's public v2 API does not
//! give in one call. Each checks the session's token on the control plane as the v2 API does
//! (`gantry_konnect::api::visible`: a control plane the token has no role on is not found).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gantry_konnect::Role;
use gantry_store::ControlPlaneRow;
use serde_json::{json, Map, Value};

use crate::{Current, Refusal, Served};

type Answer = Result<Response, Refusal>;

async fn control_plane(
    s: &Served,
    cur: &Current,
    id: &str,
) -> Result<(ControlPlaneRow, Role), Refusal> {
    Ok(gantry_konnect::api::visible(&s.console.konnect, &cur.principal, id).await?)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

/// The registry's entries of a control plane.
async fn registry(s: &Served, row: &ControlPlaneRow) -> Result<Vec<Map<String, Value>>, Refusal> {
    let plane = s.console.konnect.plane(row.key);
    gantry_admin::clustering::entries(&plane.state)
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn expected_hash(s: &Served, row: &ControlPlaneRow) -> Result<(i64, String), Refusal> {
    let plane = s.console.konnect.plane(row.key);
    let (version, hashes) = plane
        .state
        .config_hash()
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((version, hashes.config))
}

const STATUSES: [&str; 4] = ["connected", "out_of_sync", "incompatible", "disconnected"];

/// `GET /api/console/control-planes/{id}`: the overview.
pub async fn overview(
    State(s): State<Served>,
    Extension(cur): Extension<Current>,
    Path(id): Path<String>,
) -> Answer {
    let (row, role) = control_plane(&s, &cur, &id).await?;
    let (version, hash) = expected_hash(&s, &row).await?;
    let mut counts: BTreeMap<&str, u64> = STATUSES.iter().map(|s| (*s, 0)).collect();
    for e in registry(&s, &row).await? {
        if let Some(n) = e
            .get("status")
            .and_then(Value::as_str)
            .and_then(|st| counts.get_mut(st))
        {
            *n += 1;
        }
    }
    Ok(Json(json!({
        "role": role_name(role),
        "control_plane": gantry_konnect::api::shown(&s.console.konnect, &row),
        "config_version": version,
        "expected_config_hash": hash,
        "nodes": counts,
    }))
    .into_response())
}

/// One registry entry as the nodes page shows it.
fn node(e: &Map<String, Value>) -> Value {
    let status = e
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("disconnected");
    // Why it is not in sync, in words: its incompatibility, else the error it reported.
    let reason = match status {
        "incompatible" | "out_of_sync" => e
            .get("reason")
            .filter(|v| !v.is_null())
            .or_else(|| e.get("last_error").filter(|v| !v.is_null()))
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    json!({
        "id": e.get("id"),
        "hostname": e.get("hostname"),
        "ip": e.get("ip"),
        "version": e.get("version"),
        "labels": e.get("labels").cloned().unwrap_or(json!({})),
        "status": status,
        "config_hash": e.get("config_hash"),
        "config_version": e.get("config_version"),
        "last_seen": e.get("last_seen"),
        "cert_expiry": e.get("cert_details").and_then(|c| c.get("expiry_timestamp")).cloned().unwrap_or(Value::Null),
        "reason": reason,
    })
}

/// `GET /api/console/control-planes/{id}/nodes`: every data plane the registry knows.
pub async fn nodes(
    State(s): State<Served>,
    Extension(cur): Extension<Current>,
    Path(id): Path<String>,
) -> Answer {
    let (row, _) = control_plane(&s, &cur, &id).await?;
    let (_, hash) = expected_hash(&s, &row).await?;
    let items: Vec<Value> = registry(&s, &row).await?.iter().map(node).collect();
    Ok(Json(json!({"expected_config_hash": hash, "items": items})).into_response())
}

fn wizard(s: &Served) -> Result<&crate::wizard::Wizard, Refusal> {
    s.console.wizard.as_ref().ok_or_else(|| {
        Refusal(
            StatusCode::CONFLICT,
            "this node is not a control plane with cluster listeners (role = control_plane, cluster_listen): it connects no data plane".into(),
        )
    })
}

/// `GET /api/console/control-planes/{id}/versions`: what a new node may run.
pub async fn versions(
    State(s): State<Served>,
    Extension(cur): Extension<Current>,
    Path(id): Path<String>,
) -> Answer {
    control_plane(&s, &cur, &id).await?;
    let w = wizard(&s)?;
    Ok(Json(json!({"control_plane_version": w.version, "versions": w.versions()})).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    version: String,
    platform: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `POST /api/console/control-planes/{id}/data-plane-certificates`: a client certificate
/// (10 years, as Konnect's), pinned on the control plane as a dp-client-certificate, and the
/// command that starts a node with it. The key is in this answer only.
pub async fn new_node(
    State(s): State<Served>,
    Extension(cur): Extension<Current>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let (row, role) = control_plane(&s, &cur, &id).await?;
    if role != Role::Admin {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "this token may read this control plane, not add data planes to it".into(),
        ));
    }
    let w = wizard(&s)?;
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    let req: NewNode = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "expected {{\"version\", \"platform\", \"labels\"}}: {e}"
        ))
    })?;
    let offered = w.versions();
    if !offered.contains(&req.version) {
        return Err(bad(format!(
            "version: '{}' is not one this control plane offers ({})",
            req.version,
            offered.join(", ")
        )));
    }
    let Some(platform) = crate::wizard::Platform::parse(&req.platform) else {
        return Err(bad(format!(
            "platform: '{}' is not one of {}",
            req.platform,
            crate::wizard::Platform::NAMES.join(", ")
        )));
    };
    let labels = req
        .labels
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    gantry_conf::cluster::parse_labels(&labels).map_err(|e| bad(format!("labels: {e}")))?;
    let (cert, key) = gantry_protocol::tls::self_signed("kong_clustering", 10 * 365 * 86_400)
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let cert_id = s
        .console
        .konnect
        .pin_cert(
            row.key,
            &cert,
            &format!("console: {} data plane {}", req.platform, req.version),
        )
        .await?;
    tracing::info!(control_plane = %row.id, certificate = %cert_id, token = %cur.principal.name, "console: data plane certificate pinned");
    let env = w.settings(&row.id, &cert, &key, &labels);
    let r = crate::wizard::render(platform, &req.version, &env);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "certificate_id": cert_id,
            "cert": cert,
            "key": key,
            "install": r.install,
            "command": r.command,
            "file_name": r.file_name,
        })),
    )
        .into_response())
}

/// `GET /api/console/control-planes/{id}/analytics?window=15m|1h|6h|24h[&node=ID]`: requests
/// and latencies per minute, and the busiest routes, services and consumers.
pub async fn analytics(
    State(s): State<Served>,
    Extension(cur): Extension<Current>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let (row, _) = control_plane(&s, &cur, &id).await?;
    let window = q.get("window").map(String::as_str).unwrap_or("1h");
    let secs = match window {
        "15m" => 15 * 60,
        "1h" => 3600,
        "6h" => 6 * 3600,
        "24h" => 24 * 3600,
        other => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("window: '{other}' is not one of 15m, 1h, 6h, 24h"),
            ))
        }
    };
    let now = gantry_model::unix_now();
    let end = now - now % 60 + 60;
    let start = end - secs;
    let plane = s.console.konnect.plane(row.key);
    let store = &plane.state.store;
    let rows = store
        .analytics(&gantry_store::AnalyticsQuery {
            start,
            end,
            node: q.get("node").filter(|n| !n.is_empty()).cloned(),
            ..Default::default()
        })
        .await?;
    let total: u64 = rows.iter().map(|(_, r)| r.count).sum();
    let summarize = gantry_admin::clustering::summarize;
    let minutes = summarize(&rows, &["minute"]);
    let mut top = Map::new();
    for (group, entity, name_fields) in [
        ("route", "routes", &["name"][..]),
        ("service", "services", &["name"][..]),
        ("consumer", "consumers", &["username", "custom_id"][..]),
    ] {
        let mut list = summarize(&rows, &[group]);
        list.sort_by_key(|v| std::cmp::Reverse(v["requests"].as_u64().unwrap_or(0)));
        list.truncate(10);
        let mut out = Vec::new();
        for v in list {
            let id = v[group].as_str().unwrap_or("").to_string();
            let name = if id.is_empty() {
                Value::Null
            } else {
                store
                    .get(entity, &id)
                    .await?
                    .and_then(|d| {
                        name_fields
                            .iter()
                            .find_map(|f| d.get(*f).filter(|v| v.is_string()).cloned())
                    })
                    .unwrap_or(Value::Null)
            };
            out.push(json!({"id": id, "name": name, "requests": v["requests"], "latency_ms": v["latency_ms"]}));
        }
        top.insert(format!("{group}s"), Value::Array(out));
    }
    Ok(Json(json!({
        "start": start,
        "end": end,
        "step": 60,
        "window": window,
        "minutes": minutes,
        "top": top,
        "totals": {"requests": total},
    }))
    .into_response())
}
