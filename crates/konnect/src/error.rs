//! Every v2 API error becomes a response here, in Konnect's shape: `status`, `title`,
//! `type`, `instance` (a trace id), `detail`, and for a 400 `invalid_parameters` naming each
//! field at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_store::StoreError;
use serde_json::{json, Value};

use crate::tokens::{CheckError, Denied};

/// One field at fault in a request (Konnect's `invalid_parameters` item).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    /// Konnect's rule name (`required`, `unknown_property`, `enum`, `min_length`, ...).
    pub rule: Option<&'static str>,
    pub reason: String,
    /// What the rule allows: `choices`, `minimum` or `maximum`.
    pub extra: Option<(&'static str, Value)>,
    /// Where the field was: `body`, `query` or `path`.
    pub source: &'static str,
}

impl Invalid {
    pub fn body(field: impl Into<String>, rule: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            rule: Some(rule),
            reason: reason.into(),
            extra: None,
            source: "body",
        }
    }

    pub fn query(field: impl Into<String>, rule: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            source: "query",
            ..Invalid::body(field, rule, reason)
        }
    }

    pub fn with(mut self, key: &'static str, v: Value) -> Self {
        self.extra = Some((key, v));
        self
    }

    fn json(&self) -> Value {
        let mut o = json!({"field": self.field, "reason": self.reason, "source": self.source});
        if let Some(rule) = self.rule {
            o["rule"] = json!(rule);
        }
        if let Some((k, v)) = &self.extra {
            o[*k] = v.clone();
        }
        o
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KonnectError {
    #[error("{detail}")]
    BadRequest {
        detail: String,
        invalid: Vec<Invalid>,
    },
    #[error("{0}")]
    Unauthorized(Denied),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl KonnectError {
    /// A 400 for one field.
    pub fn invalid(detail: impl Into<String>, one: Invalid) -> KonnectError {
        KonnectError::BadRequest {
            detail: detail.into(),
            invalid: vec![one],
        }
    }
}

impl From<StoreError> for KonnectError {
    fn from(e: StoreError) -> KonnectError {
        match e {
            StoreError::Unique { entity, field, .. } if entity == "control_planes" => {
                KonnectError::Conflict(format!(
                    "Control Plane with provided {field} already exists."
                ))
            }
            StoreError::NotFound | StoreError::NoControlPlane(_) => {
                KonnectError::NotFound("The requested control plane was not found.".into())
            }
            other => KonnectError::Internal(other.to_string()),
        }
    }
}

impl From<CheckError> for KonnectError {
    fn from(e: CheckError) -> KonnectError {
        match e {
            CheckError::Denied(d) => KonnectError::Unauthorized(d),
            CheckError::Store(s) => KonnectError::Internal(s),
        }
    }
}

/// A fresh trace id for `instance`.
pub fn trace_id() -> String {
    format!("gantry:trace:{}", rand::random::<u64>())
}

/// Konnect's error body.
pub fn body(status: StatusCode, title: &str, detail: &str) -> Value {
    json!({
        "status": status.as_u16(),
        "title": title,
        "type": format!("https://httpstatuses.com/{}", status.as_u16()),
        "instance": trace_id(),
        "detail": detail,
    })
}

impl IntoResponse for KonnectError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let (status, title) = match &self {
            KonnectError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "Bad Request"),
            KonnectError::Unauthorized(Denied::TooManyFailures) => {
                (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            }
            KonnectError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            KonnectError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            KonnectError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            KonnectError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            KonnectError::Internal(e) => {
                tracing::error!(error = %e, "v2 API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        };
        let mut b = body(status, title, &detail);
        if let KonnectError::BadRequest { invalid, .. } = &self {
            b["invalid_parameters"] = Value::Array(invalid.iter().map(Invalid::json).collect());
        }
        let mut res = (status, axum::Json(b)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::tokens::FAILURE_WINDOW.as_secs()),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}
