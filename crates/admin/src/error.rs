//! Every Admin API error becomes a response here, in Kong's shapes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_model::declarative::DeclarativeError;
use gantry_model::schema::FieldErrors;
use gantry_store::StoreError;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("schema violation")]
    Schema(FieldErrors),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Declarative(#[from] DeclarativeError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("Not found")]
    NotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    ReadOnly(String),
    #[error("request body too large (limit is {0} bytes)")]
    TooLarge(usize),
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("{0}")]
    Forbidden(String),
    /// A 404 with its own message (Kong's `No plugin named 'x'`).
    #[error("{0}")]
    Missing(String),
    /// A 409 with its own message.
    #[error("{0}")]
    Conflict(String),
}

/// Kong's error codes (kong/db/errors.lua).
const SCHEMA_VIOLATION: u32 = 2;
const PRIMARY_KEY_VIOLATION: u32 = 3;
const FOREIGN_KEY_VIOLATION: u32 = 4;
const UNIQUE_VIOLATION: u32 = 5;
const INVALID_OFFSET: u32 = 7;
const INVALID_SIZE: u32 = 9;
const DECLARATIVE_CONFIG: u32 = 14;

fn kong(status: StatusCode, code: u32, name: &str, fields: Value, message: String) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "name": name, "fields": fields, "message": message})),
    )
        .into_response()
}

fn message(status: StatusCode, m: impl Into<String>) -> Response {
    (status, axum::Json(json!({"message": m.into()}))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Schema(e) => kong(
                StatusCode::BAD_REQUEST,
                SCHEMA_VIOLATION,
                "schema violation",
                Value::Object(e.0.clone()),
                e.message(),
            ),
            ApiError::Declarative(e) => {
                let mut body = json!({
                    "code": DECLARATIVE_CONFIG,
                    "name": "invalid declarative configuration",
                    "fields": e.fields(),
                    "flattened_errors": e.flattened(),
                    "message": e.to_string(),
                });
                body["message"] = json!(e.to_string());
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            ApiError::Store(e) => store_error(e),
            ApiError::BadRequest(m) => message(StatusCode::BAD_REQUEST, m),
            ApiError::Invalid("size", m) => kong(StatusCode::BAD_REQUEST, INVALID_SIZE, "invalid size", json!({}), m),
            ApiError::Invalid(name, m) => kong(StatusCode::BAD_REQUEST, 11, name, json!({}), m),
            ApiError::NotFound => message(StatusCode::NOT_FOUND, "Not found"),
            ApiError::MethodNotAllowed => message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            ApiError::ReadOnly(m) => message(StatusCode::METHOD_NOT_ALLOWED, m),
            ApiError::TooLarge(n) => message(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large (limit is {n} bytes; see nginx_admin_client_max_body_size)"),
            ),
            ApiError::UnsupportedMedia(m) => message(StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::Forbidden(m) => message(StatusCode::FORBIDDEN, m),
            ApiError::Missing(m) => message(StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => message(StatusCode::CONFLICT, m),
        }
    }
}

fn store_error(e: StoreError) -> Response {
    let text = e.to_string();
    match e {
        StoreError::NotFound | StoreError::NoControlPlane(_) => {
            message(StatusCode::NOT_FOUND, "Not found")
        }
        StoreError::PrimaryKey { id } => kong(
            StatusCode::CONFLICT,
            PRIMARY_KEY_VIOLATION,
            "primary key violation",
            json!({"id": id}),
            text,
        ),
        StoreError::Unique { field, value, .. } => kong(
            StatusCode::CONFLICT,
            UNIQUE_VIOLATION,
            "unique constraint violation",
            json!({ field: value }),
            text,
        ),
        StoreError::ForeignKey { field, id, .. } => kong(
            StatusCode::BAD_REQUEST,
            FOREIGN_KEY_VIOLATION,
            "foreign key violation",
            json!({ field: {"id": id} }),
            text,
        ),
        StoreError::ReferencedBy { by, .. } => kong(
            StatusCode::BAD_REQUEST,
            FOREIGN_KEY_VIOLATION,
            "foreign key violation",
            json!({"@referenced_by": by}),
            text,
        ),
        StoreError::InvalidOffset => kong(
            StatusCode::BAD_REQUEST,
            INVALID_OFFSET,
            "invalid offset",
            json!({}),
            "invalid offset: not a value this API returned".into(),
        ),
        StoreError::Declarative(d) => ApiError::Declarative(d).into_response(),
        other => {
            tracing::error!(error = %other, "admin API request failed");
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred",
            )
        }
    }
}
