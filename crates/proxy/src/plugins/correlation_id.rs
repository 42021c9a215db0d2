//! correlation-id: a request id in a header, sent upstream and, with `echo_downstream`, back to
//! the client, as Kong 3.9's plugin does. An id the client sent is kept.
//!
//! Generators: `uuid` (a random UUID per request), `uuid#counter` (one UUID per process and a
//! counter, Kong's default) and `tracker`, Kong's `server_addr-server_port-pid-connection-
//! connection_requests-time`: the address and port the request came to, this process's id, the
//! connection's serial number in this process, the requests made on it so far (this one
//! included) and the time in seconds with milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use hyper::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{Ctx, Descriptor, Instance, Plugin, Shared};

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "correlation-id",
        100_001,
        vec![
            Field::new("header_name", string()).def(json!("Kong-Request-ID")),
            Field::new("generator", one_of(&["uuid", "uuid#counter", "tracker"]))
                .req()
                .def(json!("uuid#counter")),
            Field::new("echo_downstream", boolean())
                .req()
                .def(json!(false)),
        ],
    )
}

#[derive(Clone, Copy)]
enum Generator {
    Uuid,
    UuidCounter,
    Tracker,
}

struct CorrelationId {
    header: HeaderName,
    generator: Generator,
    echo_downstream: bool,
}

/// This process's UUID and counter for `uuid#counter` (Kong keeps one per worker).
static PROCESS: LazyLock<(String, AtomicU64)> =
    LazyLock::new(|| (uuid::Uuid::new_v4().to_string(), AtomicU64::new(0)));

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let name = c
        .get("header_name")
        .and_then(Value::as_str)
        .unwrap_or("Kong-Request-ID");
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        CompileError::field("header_name", format!("'{name}' is not a header name"))
    })?;
    let generator = match c.get("generator").and_then(Value::as_str) {
        Some("uuid") => Generator::Uuid,
        Some("tracker") => Generator::Tracker,
        _ => Generator::UuidCounter,
    };
    Ok(Arc::new(CorrelationId {
        header,
        generator,
        echo_downstream: super::conf_bool(c, "echo_downstream", false),
    }))
}

impl CorrelationId {
    fn generate(&self, c: &super::Connection) -> String {
        match self.generator {
            Generator::Tracker => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let addr = c.local_ip.map(|ip| ip.to_string()).unwrap_or_default();
                format!(
                    "{addr}-{}-{}-{}-{}-{}.{:03}",
                    c.local_port,
                    std::process::id(),
                    c.serial,
                    c.requests,
                    now.as_secs(),
                    now.subsec_millis()
                )
            }
            Generator::Uuid => uuid::Uuid::new_v4().to_string(),
            Generator::UuidCounter => {
                let (id, counter) = &*PROCESS;
                format!("{id}#{}", counter.fetch_add(1, Ordering::Relaxed) + 1)
            }
        }
    }
}

impl Plugin for CorrelationId {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let given = ctx
            .req
            .headers
            .get(&self.header)
            .filter(|v| !v.is_empty())
            .cloned();
        let id = match given {
            Some(v) => v,
            None => match HeaderValue::from_str(&self.generate(&ctx.connection)) {
                Ok(v) => {
                    ctx.req.headers.insert(self.header.clone(), v.clone());
                    v
                }
                Err(_) => return Flow::Next,
            },
        };
        if self.echo_downstream {
            ctx.response_headers.push((self.header.clone(), id));
        }
        Flow::Next
    }
}
