//! proxy-cache's endpoints, as Kong 3.9's plugin API: `DELETE /proxy-cache` (flush),
//! `GET|DELETE /proxy-cache/{cache_key}` and `GET|DELETE /proxy-cache/{plugin_id}/caches/{cache_key}`.
//!
//! The memory strategy keeps every instance's entries in the node's one cache, which the
//! proxy reaches through [`ProxyCaches`]. As Kong, `/proxy-cache/{cache_key}` looks through
//! the configured proxy-cache plugins (none configured: 404, and the flush does nothing), and
//! `/proxy-cache/{plugin_id}/...` needs `plugin_id` to be a plugin. A node without a proxy (a
//! control plane) has no cache: it answers as for an empty one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::error::ApiError;
use crate::AdminState;

/// What the Admin API reads and purges of a proxying node's proxy-cache entries.
pub trait ProxyCaches: Send + Sync {
    /// The entry under `key`, as Kong's strategy stores it (`status`, `headers`, `body`,
    /// `body_len`, `timestamp`, `ttl`, `version`, `req_body`); `None` when there is none.
    fn get(&self, key: &str) -> Option<Value>;
    /// Take the entry under `key` out; whether there was one.
    fn purge(&self, key: &str) -> bool;
    /// Take every entry out.
    fn flush(&self);
}

/// Whether a proxy-cache plugin is configured (Kong's `each_proxy_cache` finds one).
async fn any_configured(st: &AdminState) -> Result<bool, ApiError> {
    Ok(st
        .store
        .all_of("plugins")
        .await?
        .iter()
        .any(|p| p.get("name").and_then(Value::as_str) == Some("proxy-cache")))
}

fn entry(st: &AdminState, key: &str) -> Option<Value> {
    st.proxy_caches.get()?.get(key)
}

fn purge(st: &AdminState, key: &str) -> bool {
    st.proxy_caches.get().is_some_and(|c| c.purge(key))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// `DELETE /proxy-cache`
pub async fn flush(
    State(st): State<Arc<AdminState>>,
    method: Method,
) -> Result<Response, ApiError> {
    if method != Method::DELETE {
        return Err(ApiError::MethodNotAllowed);
    }
    if any_configured(&st).await? {
        if let Some(c) = st.proxy_caches.get() {
            c.flush();
        }
    }
    Ok(no_content())
}

/// `GET|DELETE /proxy-cache/{cache_key}`
pub async fn by_key(
    State(st): State<Arc<AdminState>>,
    Path(key): Path<String>,
    method: Method,
) -> Result<Response, ApiError> {
    if !matches!(method, Method::GET | Method::HEAD | Method::DELETE) {
        return Err(ApiError::MethodNotAllowed);
    }
    if !any_configured(&st).await? {
        return Ok(not_found());
    }
    Ok(read_or_purge(&st, &key, &method))
}

/// The entry under `key` (GET, HEAD) or its purge (DELETE): 404 when there is none.
fn read_or_purge(st: &AdminState, key: &str, method: &Method) -> Response {
    if *method == Method::DELETE {
        if purge(st, key) {
            no_content()
        } else {
            not_found()
        }
    } else {
        match entry(st, key) {
            Some(v) => Json(v).into_response(),
            None => not_found(),
        }
    }
}

/// `GET|DELETE /proxy-cache/{plugin_id}/caches/{cache_key}`
pub async fn by_plugin(
    State(st): State<Arc<AdminState>>,
    Path((plugin, key)): Path<(String, String)>,
    method: Method,
) -> Result<Response, ApiError> {
    if !matches!(method, Method::GET | Method::HEAD | Method::DELETE) {
        return Err(ApiError::MethodNotAllowed);
    }
    if st.store.get("plugins", &plugin).await?.is_none() {
        return Ok(not_found());
    }
    Ok(read_or_purge(&st, &key, &method))
}
