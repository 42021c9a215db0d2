//! The analytics messages between a data plane and `cluster_telemetry_listen`, framed as the
//! cluster protocol's (JSON, gzip when large).

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
