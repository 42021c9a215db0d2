//! cors: answers preflight requests and adds the CORS headers to responses.

use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Response};
use regex::Regex;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{raw, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::names;
use crate::server::ProxyBody;

struct Cors {
    any_origin: bool,
    origins: Vec<(String, Option<Regex>)>,
    headers: Option<String>,
    exposed: Option<String>,
    methods: String,
    max_age: Option<u64>,
    credentials: bool,
    private_network: bool,
    preflight_continue: bool,
}

fn list(c: &Value, k: &str) -> Vec<String> {
    gantry_model::document::strings(c.get(k))
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "cors",
        2000,
        vec![
            Field::new("origins", s_arr()),
            Field::new("headers", s_arr()),
            Field::new("exposed_headers", s_arr()),
            Field::new(
                "methods",
                array(one_of(&[
                    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                ])),
            )
            .def(json!([
                "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"
            ])),
            Field::new("max_age", number()),
            Field::new("credentials", boolean()).req().def(json!(false)),
            Field::new("private_network", boolean())
                .req()
                .def(json!(false)),
            Field::new("preflight_continue", boolean())
                .req()
                .def(json!(false)),
        ],
    )
    .auth()
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let origins = list(c, "origins");
    let any_origin = origins.is_empty() || origins.iter().any(|o| o == "*");
    let mut compiled = Vec::new();
    for o in origins.into_iter().filter(|o| o != "*") {
        // An entry is an exact origin, or else a regular expression over the whole origin.
        let re = Regex::new(&format!("^(?:{o})$")).ok();
        compiled.push((o, re));
    }
    let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
    Ok(Arc::new(Cors {
        any_origin,
        origins: compiled,
        headers: join(list(c, "headers")),
        exposed: join(list(c, "exposed_headers")),
        methods: {
            let m = list(c, "methods");
            if m.is_empty() {
                "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT".into()
            } else {
                m.join(",")
            }
        },
        max_age: c.get("max_age").and_then(Value::as_f64).map(|v| v as u64),
        credentials: c
            .get("credentials")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        private_network: c
            .get("private_network")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        preflight_continue: c
            .get("preflight_continue")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        if self.any_origin {
            return Some(match (self.credentials, origin) {
                (true, Some(o)) => o.to_string(),
                _ => "*".to_string(),
            });
        }
        let origin = origin?;
        self.origins
            .iter()
            .any(|(exact, re)| exact == origin || re.as_ref().is_some_and(|r| r.is_match(origin)))
            .then(|| origin.to_string())
    }

    fn common(&self, origin: Option<&str>, out: &mut Vec<(HeaderName, HeaderValue)>) {
        if let Some(v) = self
            .allow_origin(origin)
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            let echoes = v != "*";
            out.push((hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, v));
            if echoes {
                out.push((hyper::header::VARY, HeaderValue::from_static("Origin")));
            }
            if self.credentials {
                out.push((
                    hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
        }
    }
}

impl Plugin for Cors {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl Cors {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        let origin = ctx
            .req
            .headers
            .get(hyper::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let preflight = ctx.req.method == Method::OPTIONS
            && ctx
                .req
                .headers
                .contains_key(hyper::header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut h = Vec::new();
        self.common(origin.as_deref(), &mut h);
        if preflight && !self.preflight_continue {
            let allow_headers = self.headers.clone().or_else(|| {
                ctx.req
                    .headers
                    .get(hyper::header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
            if let Ok(v) = HeaderValue::from_str(&self.methods) {
                h.push((hyper::header::ACCESS_CONTROL_ALLOW_METHODS, v));
            }
            if let Some(v) = allow_headers.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.push((hyper::header::ACCESS_CONTROL_ALLOW_HEADERS, v));
            }
            if let Some(v) = self
                .max_age
                .and_then(|m| HeaderValue::from_str(&m.to_string()).ok())
            {
                h.push((hyper::header::ACCESS_CONTROL_MAX_AGE, v));
            }
            if self.private_network
                && ctx
                    .req
                    .headers
                    .contains_key("access-control-request-private-network")
            {
                h.push((
                    names::ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK,
                    HeaderValue::from_static("true"),
                ));
            }
            let mut r = raw(200, "text/plain", bytes::Bytes::new());
            r.headers_mut().remove(hyper::header::CONTENT_TYPE);
            for (n, v) in h {
                r.headers_mut().append(n, v);
            }
            return Some(r);
        }
        if let Some(v) = self
            .exposed
            .as_ref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            if origin.is_some() {
                h.push((hyper::header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
            }
        }
        ctx.response_headers.extend(h);
        None
    }
}
