//! request-size-limiting, as Kong 3.9's: a body announced larger than `allowed_payload_size`
//! is refused before anything goes upstream (413, or 417 to a client waiting on
//! `Expect: 100-continue`); a body of no announced length (chunked) streams upstream and is cut
//! with a 413 once past the limit, never buffered to be measured. `require_content_length`
//! refuses a body of no length that is not chunked (411).

use std::sync::Arc;

use hyper::header;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

/// Kong's units, the default first, with their factors.
const UNITS: [(&str, u64); 3] = [("megabytes", 1_048_576), ("kilobytes", 1024), ("bytes", 1)];

fn schema() -> PluginSchema {
    PluginSchema::new(
        "request-size-limiting",
        951,
        vec![
            Field::new("allowed_payload_size", integer()).def(json!(128)),
            Field::new("size_unit", one_of(&UNITS.map(|(u, _)| u)))
                .req()
                .def(json!("megabytes")),
            Field::new("require_content_length", boolean())
                .req()
                .def(json!(false)),
        ],
    )
}

struct RequestSizeLimiting {
    /// The most bytes allowed.
    allowed: u64,
    require_content_length: bool,
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let size = c
        .get("allowed_payload_size")
        .and_then(Value::as_i64)
        .unwrap_or(128);
    let unit = c
        .get("size_unit")
        .and_then(Value::as_str)
        .unwrap_or("megabytes");
    let factor = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map_or(1_048_576, |(_, f)| *f);
    Ok(Arc::new(RequestSizeLimiting {
        // A negative size allows no body at all, as Kong's comparison does.
        allowed: u64::try_from(size).unwrap_or(0).saturating_mul(factor),
        require_content_length: c
            .get("require_content_length")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

impl Plugin for RequestSizeLimiting {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let h = &ctx.req.headers;
        let announced = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match announced {
            Some(n) if n > self.allowed => {
                let waits = h
                    .get(header::EXPECT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
                Flow::Respond(error(
                    if waits { 417 } else { 413 },
                    "Request size limit exceeded",
                ))
            }
            Some(_) => Flow::Next,
            None => {
                let chunked = h
                    .get(header::TRANSFER_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                if self.require_content_length && !chunked {
                    return Flow::Respond(error(411, "A valid Content-Length header is required"));
                }
                Flow::Next
            }
        }
    }

    fn body_limit(&self) -> Option<u64> {
        Some(self.allowed)
    }
}
