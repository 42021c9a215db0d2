//! http-log, as Kong 3.9's: each request's log entry (Kong's serializer) queued by the log
//! phase and sent to `http_endpoint` by a [`queue`](super::queue), one entry per request body
//! with `queue.max_batch_size` 1, otherwise a JSON array of up to that many.
//!
//! The request: `method` (POST, PUT or PATCH) to the endpoint's path and query, `Content-Type`
//! from `content_type`, `Authorization: Basic` from the endpoint's user info, then the
//! configured `headers` (which never replace those); connect, send and read each within
//! `timeout` milliseconds; an idle connection kept `keepalive` milliseconds. A status of 300 or
//! more is a failure, retried by the queue. As Kong, an `https` endpoint's certificate is not
//! verified. Kong's deprecated `queue_size` and `flush_timeout` still set the batch size and
//! the coalescing delay when they differ from their old defaults; `retry_count` does nothing
//! (Kong says so too) and is logged as such once.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::queue::{self, Handler, Queues, SendFailed};
use super::sink::{Endpoint, Sender};
use super::{BoxFuture, Descriptor, Instance, Plugin, Shared};
use crate::server::RequestLog;
use crate::upstream_tls::Connectors;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "http-log",
        12,
        vec![
            Field::new("http_endpoint", str_of(StrKind::Url)).req(),
            Field::new("method", one_of(&["POST", "PUT", "PATCH"]))
                .req()
                .def(json!("POST")),
            Field::new(
                "content_type",
                one_of(&["application/json", "application/json; charset=utf-8"]),
            )
            .req()
            .def(json!("application/json")),
            Field::new("timeout", number()).req().def(json!(10000)),
            Field::new("keepalive", number()).req().def(json!(60000)),
            Field::new("retry_count", integer()),
            Field::new("queue_size", integer()),
            Field::new("flush_timeout", number()),
            Field::new("headers", map(string())),
            queue::schema(),
            Field::new("custom_fields_by_lua", map(string())),
        ],
    )
    .any_protocol()
    .no_consumer_group()
    .checks(|c, e| {
        if let Some(h) = c.get("headers").and_then(Value::as_object) {
            for name in h.keys() {
                let lower = name.to_ascii_lowercase();
                let err = match lower.as_str() {
                    "host" => Some("cannot contain 'Host' header".to_string()),
                    "content-length" => Some("cannot contain 'Content-Length' header".into()),
                    "content-type" => Some("cannot contain 'Content-Type' header".into()),
                    _ if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                        Some(format!("bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"))
                    }
                    _ => None,
                };
                if let Some(err) = err {
                    e.add("headers", err);
                }
            }
            let url = c
                .get("http_endpoint")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if Endpoint::parse(url).is_ok_and(|p| p.userinfo.is_some())
                && h.keys().any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                e.add_record(
                    "specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed",
                );
            }
        }
        refuse_lua_fields(c, e);
    })
}

struct HttpLog {
    queue_name: String,
    params: queue::Params,
    sender: Arc<dyn Handler>,
    queues: Arc<Queues>,
}

fn build(_: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let url = c
        .get("http_endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| CompileError::field("http_endpoint", "required field missing"))?;
    let endpoint = Endpoint::parse(url)
        .map_err(|e| CompileError::field("http_endpoint", format!("invalid url '{url}': {e}")))?;
    let s = |k: &str, d: &str| c.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
    let n = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d);
    let method = s("method", "POST");
    let content_type = s("content_type", "application/json");
    let ms = |k: &str, d: f64| -> Result<Duration, CompileError> {
        let v = n(k, d);
        if !(0.0..=u32::MAX as f64).contains(&v) {
            return Err(CompileError::field(k, "must be between 0 and 4294967295"));
        }
        Ok(Duration::from_millis(v as u64))
    };
    let (timeout, keepalive) = (ms("timeout", 10000.0)?, ms("keepalive", 60000.0)?);
    let mut params = queue::Params::from_config(c.get("queue"))?;
    // Kong's legacy parameters, where they differ from their old defaults.
    if let Some(size) = c.get("queue_size").and_then(Value::as_i64) {
        if size != 1 {
            if size < 1 {
                return Err(CompileError::field("queue_size", "must be at least 1"));
            }
            params.max_batch_size = size as usize;
        }
    }
    if let Some(flush) = c.get("flush_timeout").and_then(Value::as_f64) {
        if flush != 2.0 {
            params.max_coalescing_delay = Duration::try_from_secs_f64(flush)
                .map_err(|_| CompileError::field("flush_timeout", "not a duration"))?;
        }
    }
    let mut headers = hyper::HeaderMap::new();
    let hv = |v: &str, field: &str| {
        hyper::header::HeaderValue::from_str(v)
            .map_err(|_| CompileError::field(field, format!("not a valid header value: {v}")))
    };
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hv(&content_type, "content_type")?,
    );
    if let Some(u) = &endpoint.userinfo {
        let basic = base64::engine::general_purpose::STANDARD.encode(u);
        headers.insert(
            hyper::header::AUTHORIZATION,
            hv(&format!("Basic {basic}"), "http_endpoint")?,
        );
    }
    if let Some(extra) = c.get("headers").and_then(Value::as_object) {
        for (k, v) in extra {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| CompileError::field("headers", format!("bad header name '{k}'")))?;
            if !headers.contains_key(&name) {
                headers.insert(name, hv(v.as_str().unwrap_or_default(), "headers")?);
            }
        }
    }
    // Kong's queue name: its six first legacy parameters, as Lua prints them.
    let lua = |k: &str| match c.get(k) {
        None | Some(Value::Null) => "nil".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let queue_name = [
        "http_endpoint",
        "method",
        "content_type",
        "timeout",
        "keepalive",
        "retry_count",
    ]
    .map(lua)
    .join(":");
    let sender = Batches {
        array: params.max_batch_size > 1,
        sender: Sender {
            method: hyper::Method::from_bytes(method.as_bytes())
                .map_err(|_| CompileError::field("method", format!("invalid value: {method}")))?,
            endpoint,
            headers,
            connect_timeout: timeout,
            io_timeout: timeout,
            keepalive,
            tls: shared.get::<Connectors>(),
            idle: Arc::default(),
        },
    };
    Ok(Arc::new(HttpLog {
        queue_name,
        params,
        sender: Arc::new(sender),
        queues: shared.get::<Queues>(),
    }))
}

impl Plugin for HttpLog {
    fn logs(&self) -> bool {
        true
    }

    fn log(&self, r: &RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let entry = Bytes::from(super::serialize::entry(r));
        self.queues.enqueue(
            "http-log",
            &self.queue_name,
            &self.params,
            &self.sender,
            entry,
        );
        None
    }
}

/// The body of a batch: the entry itself, or the entries as a JSON array.
fn payload(batch: &[Bytes], array: bool) -> Bytes {
    if !array && batch.len() == 1 {
        return batch[0].clone();
    }
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    Bytes::from(out)
}

/// http-log's batches: the entries, sent as one body.
struct Batches {
    sender: Sender,
    /// A batch of one is sent as the entry itself, else as a JSON array.
    array: bool,
}

impl Handler for Batches {
    fn send(self: Arc<Self>, batch: Arc<[Bytes]>) -> BoxFuture<'static, Result<(), SendFailed>> {
        Box::pin(async move { self.sender.post(payload(&batch, self.array)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let one = [Bytes::from("{\"a\":1}")];
        assert_eq!(payload(&one, false), "{\"a\":1}");
        assert_eq!(payload(&one, true), "[{\"a\":1}]");
        let two = [Bytes::from("1"), Bytes::from("2")];
        assert_eq!(payload(&two, true), "[1,2]");
    }
}
