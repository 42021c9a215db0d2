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

use gantry_protocol::status::NodeStatus;

fn only_on_control_planes(st: &AdminState) -> Result<(), ApiError> {
    if st.settings.role != Role::ControlPlane {
        return Err(ApiError::BadRequest(
            "this endpoint is only available when Kong is configured to run as Control Plane for the cluster".into(),
        ));
    }
    Ok(())
}

/// The registry entries with what is known only at read time: whether a node still pings
/// (an entry whose control plane died is not updated any more) and how far behind it is.
/// The registry of this control plane's data planes, each with its status as of now
/// (disconnected when silent past three pings) and how many versions it is behind.
pub async fn entries(st: &AdminState) -> Result<Vec<Doc>, ApiError> {
    let version = st.store.version().await?;
    let stale = unix_now() - 3 * st.settings.cluster.ping_interval.as_secs().max(1) as i64 - 5;
    let mut out = st.store.data_planes().await?;
    for d in out.iter_mut() {
        let last_seen = d.get("last_seen").and_then(Value::as_i64).unwrap_or(0);
        if last_seen < stale {
            d.insert("status".into(), json!(NodeStatus::Disconnected.as_str()));
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
        if NodeStatus::parse(s).is_none() {
            return Err(ApiError::Invalid(
                "status",
                format!(
                    "unknown status '{s}': expected one of {}",
                    NodeStatus::ALL.map(NodeStatus::as_str).join(", ")
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
    let size = crate::entities::page_size(&q)?;
    // The offset is the position of the next entry, as the list is ordered (most recently
    // seen first); made opaque as every list's is.
    let from = match q.get("offset") {
        None => 0,
        Some(o) => gantry_store::decode_offset(o)?
            .parse::<usize>()
            .map_err(|_| ApiError::Store(gantry_store::StoreError::InvalidOffset))?,
    };
    let all: Vec<Doc> = entries(&st)
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
    let data: Vec<&Doc> = all.iter().skip(from).take(size).collect();
    let mut body = json!({"data": data, "next": null});
    if from + size < all.len() {
        let o = gantry_store::encode_offset(&(from + size).to_string());
        let mut next = format!("/clustering/data-planes?offset={o}&size={size}");
        for k in ["status", "labels"] {
            if let Some(v) = q.get(k) {
                next.push_str(&format!(
                    "&{k}={}",
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                ));
            }
        }
        body["next"] = json!(next);
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
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

pub const GROUPS: &[&str] = &[
    "minute",
    "node",
    "service",
    "route",
    "consumer",
    "status",
    "status_class",
];

/// `GET /analytics/requests`: data planes' requests per minute, merged over `group_by`
/// (`minute`, `node`, `service`, `route`, `consumer`, `status`, `status_class`, comma-separated;
/// none: one total), between `start` and `end` (Unix seconds; default the last hour), filtered by
/// `node`, `service`, `route`, `consumer`.
pub async fn analytics(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_on_control_planes(&st)?;
    let now = unix_now();
    let time = |k: &'static str, default: i64| -> Result<i64, ApiError> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::Invalid(k, format!("'{v}' is not a Unix time in seconds"))),
        }
    };
    let (start, end) = (time("start", now - 3600)?, time("end", now + 60)?);
    if end <= start {
        return Err(ApiError::Invalid("end", "end must be after start".into()));
    }
    let group: Vec<&str> = q
        .get("group_by")
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = group.iter().find(|g| !GROUPS.contains(g)) {
        return Err(ApiError::Invalid(
            "group_by",
            format!("cannot group by '{bad}': expected {}", GROUPS.join(", ")),
        ));
    }
    let rows = st
        .store
        .analytics(&gantry_store::AnalyticsQuery {
            start,
            end,
            node: q.get("node").cloned(),
            service: q.get("service").cloned(),
            route: q.get("route").cloned(),
            consumer: q.get("consumer").cloned(),
        })
        .await?;
    let data = summarize(&rows, &group);
    Ok(Json(json!({"start": start, "end": end, "group_by": group, "data": data})).into_response())
}

/// Stored analytics rows (each with the node it came from) merged over `group` (names of
/// [`GROUPS`]), in first-seen order: per group, its fields, `requests`, `status_classes`
/// (`1xx` to `5xx`) and `latency_ms` (`total`, `upstream`, `gateway`, each `p50`, `p95`,
/// `p99`).
pub fn summarize(rows: &[(String, gantry_model::analytics::Row)], group: &[&str]) -> Vec<Value> {
    use gantry_model::analytics::{Histogram, Row};
    let mut out: Vec<(Vec<Value>, Row, [u64; 5])> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for (node, r) in rows {
        let key: Vec<Value> = group
            .iter()
            .map(|g| match *g {
                "minute" => json!(r.minute),
                "node" => json!(node),
                "service" => json!(r.service),
                "route" => json!(r.route),
                "consumer" => json!(r.consumer),
                "status" => json!(r.status),
                _ => json!(format!("{}xx", r.status / 100)),
            })
            .collect();
        let class = (r.status / 100).clamp(1, 5) as usize - 1;
        match index.entry(Value::Array(key.clone()).to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let (_, acc, classes) = &mut out[*e.get()];
                acc.merge(r);
                classes[class] += r.count;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                let mut classes = [0; 5];
                classes[class] = r.count;
                out.push((key, r.clone(), classes));
            }
        }
    }
    let lat = |h: &Histogram| json!({"p50": h.quantile(0.5), "p95": h.quantile(0.95), "p99": h.quantile(0.99)});
    out.into_iter()
        .map(|(key, r, c)| {
            let mut o = serde_json::Map::new();
            for (g, v) in group.iter().zip(key) {
                o.insert(g.to_string(), v);
            }
            o.insert("requests".into(), json!(r.count));
            o.insert(
                "status_classes".into(),
                json!({"1xx": c[0], "2xx": c[1], "3xx": c[2], "4xx": c[3], "5xx": c[4]}),
            );
            o.insert(
                "latency_ms".into(),
                json!({"total": lat(&r.total), "upstream": lat(&r.upstream), "gateway": lat(&r.gateway)}),
            );
            Value::Object(o)
        })
        .collect()
}

/// `GET /metrics`: Prometheus text. The configuration version; on a control plane also data
/// planes by status, their sync lag, and the cluster service's counters.
pub async fn metrics(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let mut m = String::new();
    let kong = st.plugins.get("prometheus").is_some();
    let version = match st.store.version().await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "failed to reach the database while serving /metrics");
            None
        }
    };
    if kong {
        datastore_reachable(&mut m, version.is_some());
    }
    let Some(version) = version else {
        return Ok(metrics_text(m));
    };
    gantry_model::prometheus(
        &mut m,
        "gantry_config_version",
        "gauge",
        "The configuration version in the store.",
        &[("", version as f64)],
    );
    if st.settings.role == Role::ControlPlane {
        let dps = entries(&st).await?;
        if kong {
            data_plane_series(&mut m, &dps);
        }
        let labels: Vec<String> = NodeStatus::ALL
            .iter()
            .map(|s| format!("{{status=\"{s}\"}}"))
            .collect();
        let by_status: Vec<(&str, f64)> = NodeStatus::ALL
            .iter()
            .zip(&labels)
            .map(|(s, l)| {
                let n = dps
                    .iter()
                    .filter(|d| d.get("status").and_then(Value::as_str) == Some(s.as_str()))
                    .count();
                (l.as_str(), n as f64)
            })
            .collect();
        gantry_model::prometheus(
            &mut m,
            "gantry_data_planes",
            "gauge",
            "Data planes in the registry, by status.",
            &by_status,
        );
        let behind = |d: &Doc| d.get("behind").and_then(Value::as_i64).unwrap_or(0);
        let live = dps.iter().filter(|d| {
            d.get("status").and_then(Value::as_str) != Some(NodeStatus::Disconnected.as_str())
        });
        gantry_model::prometheus(
            &mut m,
            "gantry_data_planes_max_versions_behind",
            "gauge",
            "Sync lag: the most configuration versions a connected data plane is behind.",
            &[("", live.map(behind).max().unwrap_or(0) as f64)],
        );
        if let Some(extra) = st.extra_metrics.get() {
            extra(&mut m);
        }
    }
    Ok(metrics_text(m))
}

/// Kong's prometheus plugin's `kong_datastore_reachable`: whether the datastore answers, 0 when
/// it does not.
pub fn datastore_reachable(m: &mut String, up: bool) {
    gantry_model::prometheus(
        m,
        "kong_datastore_reachable",
        "gauge",
        "Datastore reachable from Kong, 0 is unreachable",
        &[("", f64::from(u8::from(up)))],
    );
}

fn metrics_text(m: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        m,
    )
        .into_response()
}

/// Kong's prometheus series of a control plane's data planes, labelled by node id, hostname
/// and address: when each was last seen, its configuration hash as a number (Kong reads the hex
/// digits as one number), and whether its version is compatible (0 when the control plane sends
/// it nothing for its version or its plugins).
fn data_plane_series(m: &mut String, dps: &[Doc]) {
    use std::fmt::Write;
    let text = |d: &Doc, k: &str| {
        d.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    let mut last_seen = String::new();
    let mut hash = String::new();
    let mut compatible = String::new();
    for d in dps {
        let labels = format!(
            "node_id=\"{}\",hostname=\"{}\",ip=\"{}\"",
            text(d, "id"),
            text(d, "hostname"),
            text(d, "ip")
        );
        let seen = d.get("last_seen").and_then(Value::as_i64).unwrap_or(0);
        let _ = writeln!(last_seen, "kong_data_plane_last_seen{{{labels}}} {seen}");
        let number = text(d, "config_hash")
            .chars()
            .filter_map(|c| c.to_digit(16))
            .fold(0f64, |n, d| n * 16.0 + f64::from(d));
        let _ = writeln!(hash, "kong_data_plane_config_hash{{{labels}}} {number}");
        let ok = d.get("status").and_then(Value::as_str) != Some(NodeStatus::Incompatible.as_str());
        let _ = writeln!(
            compatible,
            "kong_data_plane_version_compatible{{{labels},kong_version=\"{}\"}} {}",
            text(d, "version"),
            u8::from(ok)
        );
    }
    for (name, help, lines) in [
        (
            "kong_data_plane_config_hash",
            "Config hash numeric value of the data plane",
            hash,
        ),
        (
            "kong_data_plane_last_seen",
            "Last time data plane contacted control plane",
            last_seen,
        ),
        (
            "kong_data_plane_version_compatible",
            "Version compatible status of the data plane, 0 is incompatible",
            compatible,
        ),
    ] {
        let _ = write!(m, "# HELP {name} {help}\n# TYPE {name} gauge\n{lines}");
    }
}
