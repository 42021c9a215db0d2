//! Entities a plugin writes on the request path (oauth2's tokens and authorization codes), and
//! where they go: a node's own store, or, on a data plane, its control plane's (which then
//! sends them to every data plane as any change).

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::Doc;

/// The entities a plugin may write, from a node or through a data plane.
pub const WRITABLE: &[&str] = &["oauth2_tokens", "oauth2_authorization_codes"];

/// One write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Create the entity (complete: its id and generated fields made by the writer).
    Insert { entity: String, doc: Doc },
    /// Delete it; the whole write fails when it is gone already (a code used twice).
    Delete { entity: String, id: String },
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum WriteError {
    /// Refused: what it deletes is gone, or it is not valid.
    #[error("write refused: {0}")]
    Refused(String),
    /// Nowhere to write now: no database, or the control plane is not reachable.
    #[error("cannot write: {0}")]
    Unavailable(String),
}

/// The configuration version that holds the write, once done.
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<i64, WriteError>> + Send + 'a>>;

/// Where a node's plugins write entities.
pub trait EntityWriter: Send + Sync {
    /// Apply `ops`, all or none; the version of the configuration that then holds them.
    fn write(&self, ops: Vec<WriteOp>) -> WriteFuture<'_>;
}
