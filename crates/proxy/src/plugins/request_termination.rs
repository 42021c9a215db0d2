//! request-termination: answer with a fixed response instead of the upstream.

use std::sync::Arc;

use bytes::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, raw, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::server::ProxyBody;

struct RequestTermination {
    status: u16,
    message: Option<String>,
    body: Option<(String, String)>,
    echo: bool,
    trigger: Option<String>,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "request-termination",
        2,
        vec![
            Field::new("status_code", int(100, 599))
                .req()
                .def(json!(503)),
            Field::new("message", string()),
            Field::new("content_type", string()),
            Field::new("body", string()),
            Field::new("echo", boolean()).req().def(json!(false)),
            Field::new("trigger", str_of(StrKind::HeaderName)),
        ],
    )
    .checks(|c, e| {
        if set_nonempty(c, "message") && set_nonempty(c, "body") {
            e.add_entity("at most one of these fields may be set: 'config.message', 'config.body'");
        }
        if set_nonempty(c, "content_type") && !set_nonempty(c, "body") {
            e.add(
                "content_type",
                "value must be null when 'config.body' is not set",
            );
        }
    })
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(Arc::new(RequestTermination {
        status: c.get("status_code").and_then(Value::as_u64).unwrap_or(503) as u16,
        message: s("message"),
        body: s("body").map(|b| {
            (
                b,
                s("content_type").unwrap_or_else(|| "application/json; charset=utf-8".into()),
            )
        }),
        echo: c.get("echo").and_then(Value::as_bool).unwrap_or(false),
        trigger: s("trigger").map(|t| t.to_ascii_lowercase()),
    }))
}

impl Plugin for RequestTermination {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl RequestTermination {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        if let Some(t) = &self.trigger {
            let in_header = ctx.req.headers.contains_key(t.as_str());
            let in_query = ctx.req.uri.query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k.eq_ignore_ascii_case(t))
            });
            if !in_header && !in_query {
                return None;
            }
        }
        if self.echo {
            let headers: serde_json::Map<String, Value> = ctx
                .req
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        json!(String::from_utf8_lossy(v.as_bytes())),
                    )
                })
                .collect();
            let body = json!({
                "message": self.message,
                "request": {
                    "method": ctx.req.method.as_str(),
                    "uri": ctx.req.uri.to_string(),
                    "headers": headers,
                },
                "matched_route": ctx.route_id,
                "matched_service": ctx.service_id,
                "consumer": ctx.consumer.as_ref().map(|c| c.id.clone()),
            });
            return Some(raw(
                self.status,
                "application/json; charset=utf-8",
                Bytes::from(body.to_string()),
            ));
        }
        if let Some((body, ctype)) = &self.body {
            return Some(raw(self.status, ctype, Bytes::from(body.clone())));
        }
        let default = if self.status == 503 {
            "Service unavailable"
        } else {
            "Request terminated"
        };
        Some(error(
            self.status,
            self.message.as_deref().unwrap_or(default),
        ))
    }
}
