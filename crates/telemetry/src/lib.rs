//! Request analytics, data plane to control plane.
//!
//! - [`Collector`] (data plane): the proxy's log sink. Aggregates requests per minute, service,
//!   route, consumer and status, with latency histograms, in a buffer bounded by
//!   `analytics_buffer_size_limit` requests; requests past it are dropped and counted.
//! - [`send`] (data plane): every `analytics_flush_interval`, moves the collected rows into a
//!   numbered batch and sends batches in order over mTLS to `cluster_telemetry_endpoint`; a batch
//!   leaves the buffer only when the control plane acknowledged it. No sending with an expired
//!   certificate.
//! - [`receive`] (control plane): `cluster_telemetry_listen`; each batch is merged into the
//!   store once (a batch sent again after a lost ack is not counted twice).

mod collect;
pub mod receive;
pub mod send;

pub use collect::Collector;

use gantry_model::analytics::Row;
use serde::{Deserialize, Serialize};

/// The WebSocket path on `cluster_telemetry_listen`.
pub const PATH: &str = "/v1/gantry/telemetry";

/// Telemetry messages; encoded as the cluster protocol's (JSON, gzip when large).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Data plane, first message.
    Hello { node_id: String },
    /// Data plane: rows of batch `seq` (increasing per node, across restarts).
    Batch { seq: i64, rows: Vec<Row> },
    /// Control plane: batch `seq` is stored.
    Ack { seq: i64 },
}
