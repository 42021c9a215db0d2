//! The hybrid-mode protocol, shared by control and data planes (see docs/protocol.md); no
//! store and no SQL here.
//!
//! - this module: the messages and their framing. One WebSocket per data plane, over mutual
//!   TLS, at [`PATH`]. Every message is one JSON object with a `type`; a text frame carries it
//!   as is, a binary frame carries it gzip-compressed. Senders compress messages larger than
//!   [`COMPRESS_ABOVE`].
//! - [`status`]: a data plane's status in the registry, and why it is incompatible.
//! - [`telemetry`]: the analytics messages on `cluster_telemetry_listen`.
//! - [`tls`]: cluster certificates, `shared` and `pki` verification, `hybrid gen_cert`.
//! - [`dial`]: reaching the control plane directly or through a forward proxy.
//!
//! The compatibility rules between versions (which fields an older data plane loses) are
//! `gantry_model::compat`'s, which the Admin API also applies.
//!
//! Evolution rules: fields are only ever added, with `#[serde(default)]`, and readers ignore
//! fields they do not know; a message type a peer does not know is ignored; a change that
//! cannot follow these rules takes a new [`PROTOCOL`] number.

pub mod dial;
pub mod status;
pub mod telemetry;
pub mod tls;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use gantry_model::delta::Change;
use gantry_model::Entity;
use serde::{Deserialize, Serialize};

/// The WebSocket path on `cluster_listen`.
pub const PATH: &str = "/v1/gantry/cluster";

/// This build's protocol number. 2: configuration hashes are combined from per-entity
/// digests (`gantry_model::hash`), which a protocol 1 peer computes otherwise.
pub const PROTOCOL: u32 = 2;

/// The oldest protocol a control plane accepts: a protocol 1 data plane would refuse every
/// configuration on its hash.
pub const MIN_PROTOCOL: u32 = 2;

/// Messages larger than this are sent compressed.
pub const COMPRESS_ABOVE: usize = 4096;

/// A data plane's message to its control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromDp {
    /// First message on a connection.
    Hello {
        protocol: u32,
        node_id: String,
        hostname: String,
        version: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// The plugins this data plane can run.
        #[serde(default)]
        plugins: Vec<String>,
        /// The configuration it runs (0 and the empty hash when none).
        #[serde(default)]
        config_version: i64,
        #[serde(default)]
        config_hash: String,
    },
    /// A configuration was applied: the version and hash it now runs.
    Ack { version: i64, hash: String },
    /// A configuration was refused; the data plane keeps running `running_version`.
    Error {
        version: i64,
        error: String,
        #[serde(default)]
        running_version: i64,
    },
    /// Liveness, with what the data plane runs.
    Ping { version: i64, hash: String },
    /// A plugin's writes (oauth2's tokens and codes) for the control plane to store, all or
    /// none; answered by [`ToDp::Written`] with the same `seq`. The entities then come back to
    /// every data plane as any change does.
    Write {
        seq: u64,
        ops: Vec<gantry_model::writes::WriteOp>,
    },
}

/// A control plane's message to a data plane.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToDp {
    /// The answer to a hello.
    Welcome {
        protocol: u32,
        control_plane: String,
        version: String,
    },
    /// The whole configuration.
    Snapshot {
        version: i64,
        hash: String,
        entities: BTreeMap<String, Vec<Entity>>,
    },
    /// The changes from `from` to `version`.
    Delta {
        from: i64,
        version: i64,
        hash: String,
        changes: Vec<Change>,
    },
    /// The data plane cannot take this control plane's configuration; no more is sent until
    /// that changes.
    Incompatible { reason: String },
    /// The answer to a ping.
    Pong { version: i64 },
    /// The answer to [`FromDp::Write`]: stored when there is no error.
    Written {
        seq: u64,
        /// The configuration version that holds the write.
        version: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<gantry_model::writes::WriteError>,
    },
}

/// [`ToDp`] as read: one flat record, so that entities' texts are taken as they are (serde's
/// tagged enums buffer their content, which loses them).
#[derive(Deserialize)]
struct ToDpRecord {
    #[serde(rename = "type")]
    kind: String,
    protocol: Option<u32>,
    control_plane: Option<String>,
    version: Option<VersionField>,
    hash: Option<String>,
    entities: Option<BTreeMap<String, Vec<Entity>>>,
    from: Option<i64>,
    changes: Option<Vec<Change>>,
    reason: Option<String>,
    seq: Option<u64>,
    error: Option<gantry_model::writes::WriteError>,
}

/// `version` is Gantry's version in a welcome and a configuration version elsewhere.
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionField {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for ToDp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = ToDpRecord::deserialize(d)?;
        fn need<T, E: Error>(v: Option<T>, field: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(field))
        }
        let number = |v: Option<VersionField>| match need(v, "version")? {
            VersionField::Number(n) => Ok(n),
            VersionField::Text(_) => Err(D::Error::custom("version: expected a number")),
        };
        Ok(match r.kind.as_str() {
            "welcome" => ToDp::Welcome {
                protocol: need(r.protocol, "protocol")?,
                control_plane: need(r.control_plane, "control_plane")?,
                version: match need(r.version, "version")? {
                    VersionField::Text(s) => s,
                    VersionField::Number(_) => {
                        return Err(D::Error::custom("version: expected a string"))
                    }
                },
            },
            "snapshot" => ToDp::Snapshot {
                version: number(r.version)?,
                hash: need(r.hash, "hash")?,
                entities: need(r.entities, "entities")?,
            },
            "delta" => ToDp::Delta {
                from: need(r.from, "from")?,
                version: number(r.version)?,
                hash: need(r.hash, "hash")?,
                changes: need(r.changes, "changes")?,
            },
            "incompatible" => ToDp::Incompatible {
                reason: need(r.reason, "reason")?,
            },
            "pong" => ToDp::Pong {
                version: number(r.version)?,
            },
            "written" => ToDp::Written {
                seq: need(r.seq, "seq")?,
                version: number(r.version)?,
                error: r.error,
            },
            other => {
                return Err(D::Error::unknown_variant(
                    other,
                    &[
                        "welcome",
                        "snapshot",
                        "delta",
                        "incompatible",
                        "pong",
                        "written",
                    ],
                ))
            }
        })
    }
}

/// A message that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("invalid message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid compressed message: {0}")]
    Gzip(std::io::Error),
    #[error("message of more than {limit} bytes once decompressed (cluster_max_payload)")]
    TooLarge { limit: usize },
}

/// Why a link between the planes (the cluster or the telemetry connection) failed or ended:
/// logged, and for a data plane's configuration, reported.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// What went wrong, as the side that saw it says it: the peer broke the protocol, a
    /// timeout passed, a connection could not be made.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for LinkError {
    fn from(s: String) -> LinkError {
        LinkError::Failed(s)
    }
}

impl From<&str> for LinkError {
    fn from(s: &str) -> LinkError {
        LinkError::Failed(s.to_string())
    }
}

/// An encoded message: `(compressed, bytes)`.
pub struct Frame {
    pub compressed: bool,
    pub bytes: bytes::Bytes,
    /// The message's size uncompressed: what the receiver's `cluster_max_payload` bounds too.
    pub plain_len: usize,
}

/// Encode a message, compressing it when large.
pub fn encode<T: Serialize>(msg: &T) -> Frame {
    let json = serde_json::to_vec(msg).unwrap_or_default();
    if json.len() <= COMPRESS_ABOVE {
        return Frame {
            plain_len: json.len(),
            compressed: false,
            bytes: json.into(),
        };
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 4),
        flate2::Compression::fast(),
    );
    let _ = gz.write_all(&json);
    Frame {
        plain_len: json.len(),
        compressed: true,
        bytes: gz.finish().unwrap_or_default().into(),
    }
}

/// Decode a message from a text (`compressed = false`) or binary frame; a compressed message
/// may not expand past `limit` bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(
    compressed: bool,
    bytes: &[u8],
    limit: usize,
) -> Result<T, ProtoError> {
    if !compressed {
        return Ok(serde_json::from_slice(bytes)?);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(ProtoError::Gzip)?;
    if out.len() > limit {
        return Err(ProtoError::TooLarge { limit });
    }
    Ok(serde_json::from_slice(&out)?)
}

/// A message as a WebSocket message: text when small, gzip-compressed binary when large.
pub fn to_ws<T: Serialize>(msg: &T) -> tokio_tungstenite::tungstenite::Message {
    encode(msg).message()
}

impl Frame {
    /// The WebSocket message carrying this frame (the bytes are shared, not copied).
    pub fn message(&self) -> tokio_tungstenite::tungstenite::Message {
        use tokio_tungstenite::tungstenite::Message;
        if self.compressed {
            Message::Binary(self.bytes.clone())
        } else {
            match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(self.bytes.clone()) {
                Ok(t) => Message::Text(t),
                Err(_) => Message::Binary(self.bytes.clone()),
            }
        }
    }
}

/// What a received WebSocket message holds.
pub enum Received<T> {
    Msg(T),
    /// The peer closed, with its reason when it gave one.
    Closed(Option<String>),
    /// A ping, pong or raw frame: nothing for the protocol.
    Nothing,
}

/// How far a compressed message may expand, as a multiple of `cluster_max_payload` (which,
/// as in Kong, bounds what travels: the compressed size): a guard against decompression bombs.
pub const EXPANSION: usize = 16;

/// The largest message once decompressed, for a `cluster_max_payload`.
pub fn expanded_limit(max_payload: usize) -> usize {
    max_payload.saturating_mul(EXPANSION)
}

/// Decode a received WebSocket message; the frame itself was bounded by `max_payload`
/// (tungstenite's limits), the message decompressed by [`expanded_limit`].
pub fn from_ws<T: for<'de> Deserialize<'de>>(
    m: tokio_tungstenite::tungstenite::Message,
    max_payload: usize,
) -> Result<Received<T>, ProtoError> {
    use tokio_tungstenite::tungstenite::Message;
    let limit = expanded_limit(max_payload);
    Ok(match m {
        Message::Text(t) => Received::Msg(decode(false, t.as_bytes(), limit)?),
        Message::Binary(b) => Received::Msg(decode(true, &b, limit)?),
        Message::Close(f) => Received::Closed(f.map(|f| f.reason.to_string())),
        _ => Received::Nothing,
    })
}

/// Resolves once `rx` says stop (or its sender is gone): the shutdown arm of a `select!`.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Exponential backoff with jitter: 250 ms doubling to 10 s, each delay between half and all
/// of its step, so data planes cut off together do not come back together.
pub fn backoff(attempt: u32) -> std::time::Duration {
    let step = (250u64 << attempt.min(6).saturating_sub(1)).min(10_000);
    let ms = step / 2 + rand::random::<u64>() % (step / 2 + 1);
    std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling_with_jitter() {
        for a in 1..20 {
            let d = backoff(a).as_millis() as u64;
            let step = (250u64 << (a.min(6) - 1)).min(10_000);
            assert!(d >= step / 2 && d <= step, "{a}: {d}");
        }
        assert!(backoff(30) <= std::time::Duration::from_secs(10));
    }
    use serde_json::json;

    /// Payloads as version 1 of the protocol writes them: these must keep decoding.
    #[test]
    fn pinned_version_1_payloads_decode() {
        let hello: FromDp = serde_json::from_value(json!({
            "type": "hello", "protocol": 1, "node_id": "n", "hostname": "h", "version": "0.2.0",
            "labels": {"region": "eu"}, "plugins": ["cors"], "config_version": 3,
            "config_hash": "00000000000000000000000000000000"
        }))
        .unwrap();
        assert!(matches!(
            hello,
            FromDp::Hello {
                config_version: 3,
                ..
            }
        ));
        // The smallest hello: optional fields may be absent; unknown ones are ignored.
        let hello: FromDp = serde_json::from_value(json!({
            "type": "hello", "protocol": 1, "node_id": "n", "hostname": "h", "version": "0.1.0",
            "future_field": true
        }))
        .unwrap();
        assert!(matches!(
            hello,
            FromDp::Hello {
                config_version: 0,
                ..
            }
        ));
        let delta: ToDp = serde_json::from_value(json!({
            "type": "delta", "from": 3, "version": 5, "hash": "h",
            "changes": [
                {"op": "upsert", "entity": "services", "doc": {"id": "s", "host": "a"}},
                {"op": "delete", "entity": "routes", "id": "r"}
            ]
        }))
        .unwrap();
        let ToDp::Delta { changes, .. } = delta else {
            panic!()
        };
        assert_eq!(changes.len(), 2);
        for m in [
            json!({"type": "ack", "version": 5, "hash": "h"}),
            json!({"type": "error", "version": 5, "error": "e"}),
            json!({"type": "ping", "version": 5, "hash": "h"}),
        ] {
            serde_json::from_value::<FromDp>(m).unwrap();
        }
        for m in [
            json!({"type": "welcome", "protocol": 1, "control_plane": "c", "version": "0.2.0"}),
            json!({"type": "snapshot", "version": 1, "hash": "h", "entities": {}}),
            json!({"type": "incompatible", "reason": "r"}),
            json!({"type": "pong", "version": 1}),
        ] {
            serde_json::from_value::<ToDp>(m).unwrap();
        }
    }

    #[test]
    fn large_messages_are_compressed_and_bounded() {
        let mut entities = BTreeMap::new();
        let docs: Vec<Entity> = (0..500)
            .map(|i| {
                Entity::new(
                    json!({"id": format!("{i:08}"), "host": "example.com"})
                        .as_object()
                        .unwrap(),
                )
            })
            .collect();
        entities.insert("services".to_string(), docs);
        let msg = ToDp::Snapshot {
            version: 1,
            hash: "h".into(),
            entities,
        };
        let f = encode(&msg);
        assert!(f.compressed);
        let plain = serde_json::to_vec(&msg).unwrap().len();
        assert!(f.bytes.len() * 5 < plain, "{} vs {plain}", f.bytes.len());
        assert_eq!(decode::<ToDp>(true, &f.bytes, plain).unwrap(), msg);
        assert!(matches!(
            decode::<ToDp>(true, &f.bytes, plain - 1),
            Err(ProtoError::TooLarge { .. })
        ));
        let small = encode(&ToDp::Pong { version: 1 });
        assert!(!small.compressed);
    }
}
