//! `/v2/cloud-gateways/configurations`: Konnect's configurations API over the managed groups.
//!
//! A token needs admin on a control plane to `PUT` its configuration, and any role to read it;
//! configurations of control planes it has no role on are not shown (and answer 404).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gantry_konnect::api::{iso, pairs, principal, visible};
use gantry_konnect::error::Invalid;
use gantry_konnect::{KonnectError, Role};
use gantry_store::{now_ms, ManagedRow};
use serde_json::{json, Map, Value};

use crate::Fleet;

type F = State<Arc<Fleet>>;
type Result<T> = std::result::Result<T, KonnectError>;

/// The routes, to merge into the v2 API (inside its token check).
pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/v2/cloud-gateways/configurations", get(list).put(put))
        .route("/v2/cloud-gateways/configurations/{id}", get(read))
        .with_state(fleet)
}

/// The managed nodes' certificate and key, from the stored secret.
pub fn credentials(secret: &str) -> (String, String) {
    let v: Value = serde_json::from_str(secret).unwrap_or(Value::Null);
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (get("cert"), get("key"))
}

fn invalid(list: Vec<Invalid>) -> KonnectError {
    KonnectError::BadRequest {
        detail: "Invalid Parameters".into(),
        invalid: list,
    }
}

/// `PUT /v2/cloud-gateways/configurations`
async fn put(State(fleet): F, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| {
            invalid(vec![Invalid::body(
                "body",
                "size",
                "the body could not be read (limit 1 MiB)",
            )])
        })?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        invalid(vec![Invalid::body(
            "body",
            "json",
            format!("the body is not JSON: {e}"),
        )])
    })?;
    // Regions are the providers' to judge (they may ask a daemon), reported with the rest.
    let mut faults = region_faults(&fleet, &body).await;
    let r = match crate::spec::check(&body, fleet.providers()) {
        Ok(r) if faults.is_empty() => r,
        Ok(_) => return Err(invalid(faults)),
        Err(mut e) => {
            e.append(&mut faults);
            return Err(invalid(e));
        }
    };
    let k = fleet.konnect();
    let (cp, role) = visible(k, &p, &r.control_plane_id).await?;
    if role != Role::Admin {
        return Err(KonnectError::Forbidden(
            "Insufficient role-set to change this control plane's cloud gateways: this token may read it, not change it.".into(),
        ));
    }
    // Every group's provider must be able to run the version.
    let mut bad = Vec::new();
    for (i, g) in r.groups.iter().enumerate() {
        if let Some(prov) = fleet.providers().get(&g.provider) {
            if let Err(e) = prov.check_version(&r.version).await {
                bad.push(Invalid::body(
                    "version",
                    "invalid",
                    format!("dataplane_groups.{i} ({}): {e}", g.provider),
                ));
            }
        }
    }
    if !bad.is_empty() {
        return Err(invalid(bad));
    }
    let store = k.store();
    let old = store
        .managed_configurations()
        .await?
        .into_iter()
        .find(|row| row.cp == cp.key);
    let now = now_ms();
    let stamp = iso(now);
    let group_config: Vec<Value> = r.group_json.clone();
    let mut groups: Vec<Value> = Vec::new();
    let old_groups: Vec<Map<String, Value>> = old
        .as_ref()
        .and_then(|o| o.doc.get("dataplane_groups"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|g| g.as_object().cloned()).collect())
        .unwrap_or_default();
    for (g, given) in r.groups.iter().zip(&r.group_json) {
        let same = old_groups.iter().find(|o| {
            o.get("provider").and_then(Value::as_str) == Some(&g.provider)
                && o.get("region").and_then(Value::as_str) == Some(&g.region)
                && o.get("state").and_then(Value::as_str) != Some("terminated")
                && o.get("state").and_then(Value::as_str) != Some("terminating")
        });
        let mut shown = Map::new();
        shown.insert(
            "id".into(),
            same.and_then(|o| o.get("id").cloned())
                .unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string())),
        );
        for key in ["provider", "region", "autoscale", "environment"] {
            if let Some(v) = given.get(key).filter(|v| !v.is_null()) {
                shown.insert(key.into(), v.clone());
            }
        }
        if let Some(Value::Object(a)) = shown.get_mut("autoscale") {
            if a.get("kind").and_then(Value::as_str) == Some("autopilot")
                && !a.contains_key("max_rps")
            {
                if let crate::spec::Autoscale::Autopilot { max_rps, .. } = g.autoscale {
                    a.insert("max_rps".into(), json!(max_rps));
                }
            }
        }
        let keep =
            |k: &str, default: Value| same.and_then(|o| o.get(k).cloned()).unwrap_or(default);
        shown.insert("state".into(), keep("state", json!("created")));
        shown.insert("state_metadata".into(), keep("state_metadata", json!({})));
        shown.insert(
            "private_ip_addresses".into(),
            keep("private_ip_addresses", json!([])),
        );
        shown.insert("created_at".into(), keep("created_at", json!(stamp)));
        shown.insert("updated_at".into(), json!(stamp));
        groups.push(Value::Object(shown));
    }
    // Groups the new configuration drops are drained, then shown as terminated until the next
    // change.
    for o in &old_groups {
        let id = o.get("id");
        if groups.iter().any(|g| g.get("id") == id) {
            continue;
        }
        match o.get("state").and_then(Value::as_str) {
            Some("terminated") => {}
            _ => {
                let mut o = o.clone();
                o.insert("state".into(), json!("terminating"));
                o.insert("updated_at".into(), json!(stamp));
                groups.push(Value::Object(o));
            }
        }
    }
    let desired = |d: &Map<String, Value>| {
        (
            d.get("version").cloned(),
            d.get("api_access").cloned(),
            d.get("control_plane_geo").cloned(),
            d.get("dataplane_group_config").cloned(),
        )
    };
    let mut doc = Map::new();
    let id = old
        .as_ref()
        .map(|o| o.id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    doc.insert("id".into(), json!(id));
    doc.insert("version".into(), json!(r.version));
    doc.insert("api_access".into(), json!(r.api_access));
    doc.insert("kind".into(), json!("dedicated.v0"));
    doc.insert("dataplane_group_config".into(), Value::Array(group_config));
    doc.insert("dataplane_groups".into(), Value::Array(groups));
    doc.insert("control_plane_id".into(), json!(cp.id));
    doc.insert("control_plane_geo".into(), json!(r.control_plane_geo));
    let generation = old
        .as_ref()
        .and_then(|o| o.doc.get("entity_version"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if let Some(o) = &old {
        if desired(&o.doc) == desired(&doc) {
            return Err(KonnectError::Conflict(
                "Proposed cloud gateway configuration and current cloud gateway configuration are identical.".into(),
            ));
        }
    }
    doc.insert("entity_version".into(), json!(generation + 1));
    let created = old.as_ref().map(|o| o.created_at).unwrap_or(now);
    doc.insert("created_at".into(), json!(iso(created)));
    doc.insert("updated_at".into(), json!(stamp));
    let secret = match &old {
        Some(o) => o.secret.clone(),
        None => {
            // The managed nodes' client certificate, valid 10 years, pinned on the control
            // plane as any data plane certificate.
            let (cert, key) =
                gantry_protocol::tls::self_signed("kong_clustering", 10 * 365 * 86_400)
                    .map_err(|e| KonnectError::Internal(e.to_string()))?;
            k.pin_cert(cp.key, &cert, &format!("managed data planes ({id})"))
                .await?;
            json!({"cert": cert, "key": key}).to_string()
        }
    };
    let row = ManagedRow {
        id,
        cp: cp.key,
        doc: doc.clone(),
        secret,
        created_at: created,
        updated_at: now,
    };
    store.put_managed_configuration(&row).await?;
    fleet.poke();
    Ok(Json(Value::Object(doc)).into_response())
}

/// What the providers say of the regions the body's groups name.
async fn region_faults(fleet: &Fleet, body: &Value) -> Vec<Invalid> {
    let access = body
        .get("api_access")
        .and_then(Value::as_str)
        .unwrap_or("private+public");
    let mut out = Vec::new();
    let groups = body.get("dataplane_groups").and_then(Value::as_array);
    for (i, g) in groups.into_iter().flatten().enumerate() {
        let provider = g.get("provider").and_then(Value::as_str);
        let region = g.get("region").and_then(Value::as_str);
        let (Some(p), Some(region)) = (provider.and_then(|p| fleet.providers().get(p)), region)
        else {
            continue;
        };
        if let Err(e) = p.check_region(region, access).await {
            out.push(Invalid::body(
                format!("dataplane_groups.{i}.region"),
                "invalid",
                e.to_string(),
            ));
        }
    }
    out
}

/// The configurations the caller may see.
async fn seen(fleet: &Fleet, p: &gantry_konnect::Principal) -> Result<Vec<ManagedRow>> {
    let k = fleet.konnect();
    let cps = k.store().control_planes().await?;
    Ok(k.store()
        .managed_configurations()
        .await?
        .into_iter()
        .filter(|row| {
            cps.iter()
                .any(|c| c.key == row.cp && p.role_on(&c.id).is_some())
        })
        .collect())
}

fn number(name: &str, v: &str, max: Option<u64>) -> Result<u64> {
    let n: u64 = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
        invalid(vec![Invalid::query(
            name,
            "is_integer",
            format!("{name} must be a positive integer"),
        )])
    })?;
    if let Some(m) = max.filter(|m| n > *m) {
        return Err(invalid(vec![Invalid::query(
            name,
            "max",
            format!("{name} must not be greater than {m}"),
        )
        .with("maximum", json!(m))]));
    }
    Ok(n)
}

/// `GET /v2/cloud-gateways/configurations`: `page[size]`, `page[number]`,
/// `filter[control_plane_id]` and `filter[control_plane_geo]` (`eq`, `neq`, `oeq`).
async fn list(State(fleet): F, req: Request) -> Result<Response> {
    let (mut size, mut page) = (10u64, 1u64);
    let mut filters: Vec<(&'static str, &'static str, String)> = Vec::new();
    for (key, v) in pairs(req.uri()) {
        let field = |f: &str| -> Option<(&'static str, &'static str)> {
            let field: &'static str = if f.starts_with("filter[control_plane_id]") {
                "control_plane_id"
            } else if f.starts_with("filter[control_plane_geo]") {
                "control_plane_geo"
            } else {
                return None;
            };
            let rest = &f[format!("filter[{field}]").len()..];
            let op = match rest {
                "" | "[eq]" => "eq",
                "[neq]" => "neq",
                "[oeq]" => "oeq",
                _ => return None,
            };
            Some((field, op))
        };
        match key.as_str() {
            "page[size]" => size = number(&key, &v, Some(100))?,
            "page[number]" => page = number(&key, &v, None)?,
            other => match field(other) {
                Some((f, op)) => filters.push((f, op, v)),
                None => {
                    return Err(invalid(vec![Invalid::query(
                        other,
                        "unknown_property",
                        format!("property {other} should not exist"),
                    )]))
                }
            },
        }
    }
    let p = principal(req.extensions())?.clone();
    let rows: Vec<ManagedRow> = seen(&fleet, &p)
        .await?
        .into_iter()
        .filter(|row| {
            filters.iter().all(|(f, op, v)| {
                let got = row.doc.get(*f).and_then(Value::as_str).unwrap_or_default();
                match *op {
                    "eq" => got == v,
                    "neq" => got != v,
                    _ => v.split(',').any(|x| x.trim() == got),
                }
            })
        })
        .collect();
    let total = rows.len();
    let data: Vec<Value> = rows
        .iter()
        .skip(((page - 1) * size) as usize)
        .take(size as usize)
        .map(|r| Value::Object(r.doc.clone()))
        .collect();
    Ok(Json(json!({
        "meta": {"page": {"number": page, "size": size, "total": total}},
        "data": data,
    }))
    .into_response())
}

/// `GET /v2/cloud-gateways/configurations/{id}`
async fn read(State(fleet): F, Path(id): Path<String>, req: Request) -> Result<Response> {
    let p = principal(req.extensions())?.clone();
    seen(&fleet, &p)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| Json(Value::Object(r.doc)).into_response())
        .ok_or_else(|| KonnectError::NotFound(format!("Configuration {id} not found.")))
}
