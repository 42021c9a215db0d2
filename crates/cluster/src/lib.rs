//! Hybrid mode: control planes push configuration to data planes over mutual TLS.
//!
//! - [`proto`]: the messages and their encoding (docs/protocol.md).
//! - [`tls`]: cluster certificates, `shared` and `pki` verification, `hybrid gen_cert`.
//! - [`cp`]: the control plane: follows the store, publishes versions with their deltas, one
//!   session per data plane, the registry.
//! - [`dp`]: the data plane: connection with backoff, delta application.
//! - [`cache`]: the data plane's configuration cache: a snapshot and a log of deltas.
//! - [`dial`]: reaching the control plane directly or through a forward proxy.

pub mod cache;
pub mod cp;
pub mod dial;
pub mod dp;
pub mod proto;
pub mod tls;

pub use cp::ControlPlane;
pub use dp::{ApplyError, ConfigSink, DataPlane, DpOptions, DpState, SinkError};

/// Why the cluster service cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("store: {0}")]
    Store(String),
}

impl From<gantry_store::StoreError> for ClusterError {
    fn from(e: gantry_store::StoreError) -> Self {
        ClusterError::Store(e.to_string())
    }
}

/// Resolves once `rx` says stop (or its sender is gone): the shutdown arm of a `select!`.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
