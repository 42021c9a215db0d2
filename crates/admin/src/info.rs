//! Node information, schemas, tags and the declarative `/config` endpoint.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_model::declarative::{self, LoadOptions};
use gantry_model::entities::{entity, ENTITIES};
use serde_json::{json, Map, Value};

use crate::body;
use crate::entities::validate_only;
use crate::error::ApiError;
use crate::AdminState;

/// `GET /`
pub async fn root(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let available: Map<String, Value> = st
        .plugins
        .schemas()
        .map(|p| {
            (
                p.name.to_string(),
                json!({"version": p.version, "priority": p.priority}),
            )
        })
        .collect();
    let enabled: BTreeSet<String> = st
        .store
        .all_of("plugins")
        .await?
        .iter()
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    Ok(Json(json!({
        "version": gantry_model::KONG_VERSION,
        "gantry_version": gantry_model::GANTRY_VERSION,
        "edition": "community",
        "tagline": "Welcome to gantry",
        "hostname": st.hostname,
        "node_id": st.node_id,
        "plugins": {
            "available_on_server": available,
            "enabled_in_cluster": enabled,
        },
        "configuration": st.settings.masked(),
        "pids": { "master": std::process::id() },
    }))
    .into_response())
}

/// `GET /status`
pub async fn status(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let reachable = st.store.version().await.is_ok();
    let hash = if reachable {
        Some(st.config_hash().await?)
    } else {
        None
    };
    let c = &st.counters;
    let body = json!({
        "database": { "reachable": reachable },
        "configuration_hash": hash.map(|(_, h)| h.config),
        "config_version": st.store.version().await.ok(),
        "server": {
            "total_requests": c.requests.load(std::sync::atomic::Ordering::Relaxed),
            "connections_handled": c.requests.load(std::sync::atomic::Ordering::Relaxed),
        },
        "memory": { "rss_bytes": crate::rss_bytes() },
    });
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

/// `GET /schemas/{entity}`
pub async fn entity_schema(Path(name): Path<String>) -> Result<Response, ApiError> {
    let schema =
        entity(&name).ok_or_else(|| ApiError::Missing(format!("No entity named '{name}'")))?;
    Ok(Json(schema.describe()).into_response())
}

/// `GET /schemas/partials/{type}`: the partial entity with its type's `config`.
pub async fn partial_schema(Path(kind): Path<String>) -> Result<Response, ApiError> {
    let config = gantry_model::plugins::partial_config(&kind)
        .ok_or_else(|| ApiError::Missing(format!("No partial of type '{kind}'")))?;
    let schema = entity("partials").ok_or(ApiError::NotFound)?;
    let mut v = schema.describe();
    let config = gantry_model::schema::describe(&[gantry_model::schema::Field::new(
        "config",
        gantry_model::schema::record(config),
    )
    .req()]);
    if let (Some(fields), Some(c)) = (v["fields"].as_array_mut(), config.get(0)) {
        for f in fields.iter_mut().filter(|f| f.get("config").is_some()) {
            *f = c.clone();
        }
    }
    Ok(Json(v).into_response())
}

/// `GET /partials/{p}/links`: the plugins that use a partial.
pub async fn partial_links(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let schema = entity("partials").ok_or(ApiError::NotFound)?;
    let partial = crate::entities::resolve(&st, schema, &key, None)
        .await?
        .ok_or(ApiError::NotFound)?;
    let id = partial
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut data = Vec::new();
    for p in st.store.all("plugins", None).await? {
        let uses = p
            .get("partials")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|r| r.get("id").and_then(Value::as_str) == Some(id))
            });
        if uses {
            data.push(json!({
                "id": p.get("id"),
                "name": p.get("name"),
                "instance_name": p.get("instance_name").cloned().unwrap_or(Value::Null),
            }));
        }
    }
    Ok(Json(json!({"data": data, "count": data.len(), "next": null})).into_response())
}

/// `POST /schemas/{entity}/validate`
pub async fn validate_entity(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_body(&st, &name, headers, body).await
}

/// Validate a body as an entity of `name` without storing it.
async fn validate_body(
    st: &AdminState,
    name: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let schema =
        entity(name).ok_or_else(|| ApiError::Missing(format!("No entity named '{name}'")))?;
    let bytes = body::read(body, st.settings.admin_body_max).await?;
    let (input, origin) = body::decode(&headers, &bytes)?;
    validate_only(schema, input, origin, &st.plugins)?;
    Ok(Json(json!({"message": "schema validation successful"})).into_response())
}

/// `GET /schemas/plugins/{name}`
pub async fn plugin_schema(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let p = st
        .plugins
        .schema(&name)
        .ok_or_else(|| ApiError::Missing(format!("No plugin named '{name}'")))?;
    Ok(Json(p.describe()).into_response())
}

/// `POST /schemas/plugins/validate`
pub async fn validate_plugin(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_body(&st, "plugins", headers, body).await
}

/// `GET /plugins/enabled`
pub async fn enabled_plugins(State(st): State<Arc<AdminState>>) -> Response {
    let names: Vec<&str> = st.plugins.schemas().map(|p| p.name).collect();
    Json(json!({ "enabled_plugins": names })).into_response()
}

/// `GET /tags` and `GET /tags/{tag}`
pub async fn tags(
    State(st): State<Arc<AdminState>>,
    tag: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let size = match q.get("size").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::Invalid(
                "size",
                "size must be an integer between 1 and 1000".into(),
            ))
        }
    };
    let tag = tag.map(|Path(t)| t);
    let (rows, next) = st
        .store
        .tags(tag.as_deref(), size, q.get("offset").map(String::as_str))
        .await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|r| json!({"entity_name": r.entity_name, "entity_id": r.entity_id, "tag": r.tag}))
        .collect();
    let mut body = json!({"data": data, "next": null});
    if let Some(o) = next {
        let base = tag
            .map(|t| format!("/tags/{t}"))
            .unwrap_or_else(|| "/tags".into());
        body["next"] = json!(format!("{base}?offset={o}"));
        body["offset"] = json!(o);
    }
    Ok(Json(body).into_response())
}

/// `GET /config`: the running configuration as a declarative document.
pub async fn get_config(
    State(st): State<Arc<AdminState>>,
    forwarded: Option<axum::Extension<crate::Authorized>>,
) -> Result<Response, ApiError> {
    // Kong serves it on a node without a database only. The v2 API, which reads a control
    // plane's configuration through this endpoint, is Gantry's own.
    if !st.db_off && forwarded.is_none() {
        return Err(ApiError::BadRequest(
            "this endpoint is only available when Kong is configured to not use a database".into(),
        ));
    }
    let (config, _) = st.store.export().await?;
    let doc = declarative::export(&config);
    let yaml = serde_yaml_ng::to_string(&doc).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(json!({ "config": yaml })).into_response())
}

/// `POST /config`: replace the whole configuration (only with `database = off`). A bad document
/// is refused whole and the running configuration stays.
pub async fn post_config(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !st.db_off {
        return Err(ApiError::BadRequest(
            "this endpoint is only available when Kong is configured to not use a database".into(),
        ));
    }
    let bytes = body::read(body, st.settings.admin_body_max).await?;
    let mt = body::media_type(&headers);
    let doc: Value = match mt.as_str() {
        "application/x-www-form-urlencoded" | "multipart/form-data" => {
            let form = if mt == "multipart/form-data" {
                body::parse_multipart(&headers, &bytes)?
            } else {
                body::parse_form(&bytes)?
            };
            match form.get("config") {
                Some(Value::String(text)) => declarative::parse_text(text)?,
                _ => return Err(ApiError::BadRequest("missing form field 'config'".into())),
            }
        }
        _ => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
            let v = declarative::parse_text(text)?;
            // `{"config": "<yaml or json text>"}` is accepted as well as the document itself.
            match v.get("config") {
                Some(Value::String(inner)) if v.as_object().is_some_and(|m| m.len() == 1) => {
                    declarative::parse_text(inner)?
                }
                _ => v,
            }
        }
    };
    let config = declarative::load(
        doc,
        LoadOptions {
            now: gantry_model::unix_now(),
            plugins: st.plugins.clone(),
        },
    )?;
    let version = st.store.replace(&config).await?;
    st.notify(version);
    let (_, hashes) = st.config_hash().await?;
    let counts: Map<String, Value> = ENTITIES
        .iter()
        .filter_map(|e| {
            config
                .entities
                .get(e.name)
                .map(|v| (e.name.to_string(), json!(v.len())))
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({"configuration_hash": hashes.config, "config_version": version, "entities": counts})),
    )
        .into_response())
}

/// Kong's log levels, most verbose first.
const LOG_LEVELS: [&str; 8] = [
    "debug", "info", "notice", "warn", "error", "crit", "alert", "emerg",
];

/// `GET /timers`: the node's background timers, as Kong's lua-resty-timer-ng statistics
/// (see `gantry_model::timers`).
pub async fn timers() -> Response {
    Json(gantry_model::timers::report()).into_response()
}

/// `GET /status/dns`: the proxy resolver's statistics by name, as Kong's new DNS client
/// reports them; a node without a proxy (a control plane) resolves no upstream names.
pub async fn dns_status(State(st): State<Arc<AdminState>>) -> Response {
    let body = match st.balancers.get() {
        Some(b) => b.dns_status(),
        None => json!({"worker": {"id": 0, "count": 1}, "stats": {}}),
    };
    Json(body).into_response()
}

/// `GET /cache/{key}`: Kong's entity cache holds what the database answered, for a while.
/// Gantry keeps no such cache: every change rebuilds the configuration the proxy runs, so no
/// key is ever found (Kong's 404), and a purge has nothing stale to remove.
pub async fn cache_get(Path(_key): Path<String>) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"message": "Not found"}))).into_response()
}

/// `DELETE /cache/{key}` (see [`cache_get`]): 204, as Kong's.
pub async fn cache_delete(Path(_key): Path<String>) -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /cache` (see [`cache_get`]): 204, as Kong's.
pub async fn cache_purge() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /debug/node/log-level`
pub async fn log_level(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let log = st.log_level.get().ok_or(ApiError::NotFound)?;
    Ok(Json(json!({ "message": format!("log level: {}", log.get()) })).into_response())
}

/// `PUT /debug/node/log-level/{level}[?timeout=seconds]`: the level for `timeout` seconds
/// (60 by default; 0: until changed again), as Kong's.
pub async fn set_log_level(
    State(st): State<Arc<AdminState>>,
    Path(level): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    put_log_level(&st, level, &q, false).await
}

/// `PUT /debug/cluster/log-level/{level}` (on a control plane,
/// `/debug/cluster/control-planes-nodes/log-level/{level}`): this node's level, and that of
/// every node of its kind sharing its database, which follow within seconds (Kong's cluster
/// broadcast).
pub async fn set_cluster_log_level(
    State(st): State<Arc<AdminState>>,
    Path(level): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if st.settings.role == gantry_conf::Role::ControlPlane {
        return Err(ApiError::NotFound);
    }
    put_log_level(&st, level, &q, true).await
}

/// `PUT /debug/cluster/control-planes-nodes/log-level/{level}`: a control plane's
/// [`set_cluster_log_level`].
pub async fn set_control_planes_log_level(
    State(st): State<Arc<AdminState>>,
    Path(level): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if st.settings.role != gantry_conf::Role::ControlPlane {
        return Err(ApiError::NotFound);
    }
    put_log_level(&st, level, &q, true).await
}

async fn put_log_level(
    st: &AdminState,
    level: String,
    q: &HashMap<String, String>,
    cluster: bool,
) -> Result<Response, ApiError> {
    let log = st.log_level.get().ok_or(ApiError::NotFound)?.clone();
    let message = |status: axum::http::StatusCode, m: String| {
        Ok((status, Json(json!({ "message": m }))).into_response())
    };
    if st.db_off {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "cannot change log level when not using a database".into(),
        );
    }
    if !LOG_LEVELS.contains(&level.as_str()) {
        return message(
            StatusCode::BAD_REQUEST,
            format!("unknown log level: {level}"),
        );
    }
    let timeout = match q.get("timeout") {
        None => 60.0,
        Some(t) => match t.parse::<f64>() {
            Ok(v) if v.is_finite() => v.ceil(),
            _ => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "timeout must be greater than or equal to 0".into(),
                )
            }
        },
    };
    if timeout < 0.0 {
        return message(
            StatusCode::BAD_REQUEST,
            "timeout must be greater than or equal to 0".into(),
        );
    }
    if log.get() == level {
        return message(StatusCode::OK, format!("log level is already {level}"));
    }
    let secs = timeout as i64;
    let timeout = (timeout > 0.0).then(|| std::time::Duration::from_secs(timeout as u64));
    log.set(&level, timeout);
    if cluster {
        let scope = crate::cluster_log_scope(st.settings.role == gantry_conf::Role::ControlPlane);
        let until = if secs > 0 {
            gantry_model::unix_now() + secs
        } else {
            0
        };
        if let Err(e) = st.store.set_cluster_log_level(scope, &level, until).await {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed broadcasting to cluster: {e}"),
            );
        }
    }
    message(StatusCode::OK, "log level changed".into())
}

/// `GET /endpoints`: every path this Admin API serves, with `{param}` placeholders named as
/// Kong names them (the entity's name), sorted segment by segment, as Kong's.
pub async fn endpoints(State(st): State<Arc<AdminState>>) -> Response {
    let mut paths: BTreeSet<String> = [
        "/",
        "/config",
        "/debug/node/log-level",
        "/debug/node/log-level/{log_level}",
        "/cache",
        "/cache/{key}",
        "/endpoints",
        "/metrics",
        "/plugins/enabled",
        "/schemas/plugins/validate",
        "/schemas/plugins/{name}",
        "/schemas/{db_entity_name}/validate",
        "/schemas/{name}",
        "/status",
        "/status/dns",
        "/tags",
        "/timers",
        "/tags/{tags}",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    paths.insert(
        if st.settings.role == gantry_conf::Role::ControlPlane {
            "/debug/cluster/control-planes-nodes/log-level/{log_level}"
        } else {
            "/debug/cluster/log-level/{log_level}"
        }
        .to_string(),
    );
    if st.settings.role == gantry_conf::Role::ControlPlane {
        for p in [
            "/clustering/data-planes",
            "/clustering/status",
            "/analytics/requests",
        ] {
            paths.insert(p.to_string());
        }
    }
    for p in [
        "/consumer_groups/{consumer_groups}/consumers",
        "/consumer_groups/{consumer_groups}/consumers/{consumers}",
        "/consumers/{consumers}/consumer_groups",
        "/consumers/{consumers}/consumer_groups/{consumer_groups}",
        "/upstreams/{upstreams}/health",
        "/upstreams/{upstreams}/targets/all",
        "/upstreams/{upstreams}/targets/{targets}/healthy",
        "/upstreams/{upstreams}/targets/{targets}/unhealthy",
        "/upstreams/{upstreams}/targets/{targets}/{address}/healthy",
        "/upstreams/{upstreams}/targets/{targets}/{address}/unhealthy",
    ] {
        paths.insert(p.to_string());
    }
    for e in ENTITIES.iter().filter(|e| !e.admin_path.is_empty()) {
        paths.insert(format!("/{}", e.admin_path));
        paths.insert(format!("/{}/{{{}}}", e.admin_path, e.name));
        for (field, _, _) in e.foreign_fields() {
            paths.insert(format!("/{}/{{{}}}/{field}", e.admin_path, e.name));
        }
        for (parent, child) in e.nested {
            if let Some(p) = entity(parent) {
                paths.insert(format!("/{}/{{{}}}/{child}", p.admin_path, p.name));
                paths.insert(format!(
                    "/{}/{{{}}}/{child}/{{{}}}",
                    p.admin_path, p.name, e.name
                ));
            }
        }
    }
    let mut data: Vec<String> = paths.into_iter().collect();
    // Segment by segment: `/` sorts before every other character.
    data.sort_by_cached_key(|p| p.replace('/', "\u{0}"));
    Json(json!({ "data": data })).into_response()
}
