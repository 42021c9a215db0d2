//! The plugin runtime.
//!
//! A plugin is one file: a type implementing [`Plugin`] (hooks per phase, each with a default
//! that does nothing) and a `build` function from its configuration, registered in
//! [`REGISTRY`]. Configurations were validated by the model's plugin schemas when written.
//!
//! Scoping follows Kong: for each plugin name, the most specific configuration applies —
//! route+service+consumer, route+consumer, service+consumer, route+service, consumer, route,
//! service, global. Plugins run by priority, highest first; a plugin's configuration is chosen
//! when its turn comes, so the consumer an authentication plugin identified (higher priority)
//! selects the configuration of the plugins after it.

mod cors;
mod key_auth;
mod rate_limiting;
mod request_termination;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use gantry_model::{Config, Doc};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::server::ProxyBody;

pub use rate_limiting::Counters;

/// A consumer, as plugins and upstream headers need it.
#[derive(Debug)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
}

/// Consumers and their credentials, indexed for authentication plugins.
#[derive(Default)]
pub struct Identities {
    pub consumers: HashMap<String, Arc<Consumer>>,
    /// key-auth key to (credential id, consumer id).
    pub api_keys: HashMap<String, (String, String)>,
}

impl Identities {
    pub fn build(config: &Config) -> Identities {
        let docs = |k: &str| config.entities.get(k).map(Vec::as_slice).unwrap_or(&[]);
        let s = |d: &Doc, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let consumers = docs("consumers")
            .iter()
            .filter_map(|d| {
                let id = s(d, "id")?;
                Some((
                    id.clone(),
                    Arc::new(Consumer {
                        id,
                        username: s(d, "username"),
                        custom_id: s(d, "custom_id"),
                    }),
                ))
            })
            .collect();
        let api_keys = docs("keyauth_credentials")
            .iter()
            .filter_map(|d| {
                let consumer = d.get("consumer")?.get("id")?.as_str()?.to_string();
                Some((s(d, "key")?, (s(d, "id")?, consumer)))
            })
            .collect();
        Identities {
            consumers,
            api_keys,
        }
    }

    /// A consumer by id or username (the `anonymous` setting accepts both).
    pub fn find(&self, key: &str) -> Option<Arc<Consumer>> {
        self.consumers.get(key).cloned().or_else(|| {
            self.consumers
                .values()
                .find(|c| c.username.as_deref() == Some(key))
                .cloned()
        })
    }
}

/// What plugins see and change of a request.
pub struct Ctx<'a> {
    pub req: &'a mut hyper::http::request::Parts,
    pub client_ip: IpAddr,
    pub route_id: &'a str,
    pub service_id: Option<&'a str>,
    pub consumer: Option<Arc<Consumer>>,
    /// The credential that authenticated the consumer.
    pub credential: Option<String>,
    pub identities: &'a Identities,
    /// Headers to add to the response to the client.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Ctx<'_> {
    /// Set the consumer, and the upstream headers Kong sets for it.
    pub fn authenticate(
        &mut self,
        consumer: Arc<Consumer>,
        credential: Option<String>,
        anonymous: bool,
    ) {
        let h = &mut self.req.headers;
        let mut put = |name: &'static str, v: Option<&str>| match v
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            Some(v) => {
                h.insert(name, v);
            }
            None => {
                h.remove(name);
            }
        };
        put("x-consumer-id", Some(&consumer.id));
        put("x-consumer-username", consumer.username.as_deref());
        put("x-consumer-custom-id", consumer.custom_id.as_deref());
        put("x-credential-identifier", credential.as_deref());
        if anonymous {
            put("x-anonymous-consumer", Some("true"));
        } else {
            h.remove("x-anonymous-consumer");
        }
        self.consumer = Some(consumer);
        self.credential = credential;
    }
}

/// A Kong-style JSON error response.
pub fn error(status: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    raw(status, "application/json; charset=utf-8", Bytes::from(body))
}

/// A response the proxy answers itself, with a body of the given type.
pub fn raw(status: u16, content_type: &str, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::SERVER,
        HeaderValue::from_static(concat!("gantry/", env!("CARGO_PKG_VERSION"))),
    );
    r
}

/// One configured plugin instance. Every hook has a default that does nothing.
pub trait Plugin: Send + Sync {
    /// Before routing's result is used: may rewrite the request.
    fn rewrite(&self, _ctx: &mut Ctx<'_>) {}
    /// Authentication, authorisation, limits: may answer in place of the upstream.
    fn access(&self, _ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        None
    }
    /// The response head from the upstream, before it goes to the client.
    fn header_filter(&self, _response: &mut hyper::http::response::Parts) {}
}

type Build = fn(id: &str, config: &Value, counters: &Counters) -> Result<Arc<dyn Plugin>, String>;

/// The plugins this proxy runs: name and builder. The model holds their schemas and priorities.
pub static REGISTRY: &[(&str, Build)] = &[
    ("key-auth", key_auth::build),
    ("rate-limiting", rate_limiting::build),
    ("request-termination", request_termination::build),
    ("cors", cors::build),
];

type Scope = (Option<String>, Option<String>, Option<String>);

/// A hash of a scope, computed the same from owned and borrowed parts, so that the request
/// path looks configurations up without allocating.
fn scope_hash(route: Option<&str>, service: Option<&str>, consumer: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (route, service, consumer).hash(&mut h);
    h.finish()
}

/// The instances of one plugin, by scope hash.
type Scoped = HashMap<u64, Vec<(Scope, Arc<dyn Plugin>)>>;

/// Every enabled plugin of a configuration, by name and scope, with the run order.
#[derive(Default)]
pub struct PluginSet {
    /// Names in run order (priority, highest first).
    order: Vec<&'static str>,
    by_name: HashMap<&'static str, Scoped>,
    /// Configured plugins this proxy cannot run, for the reload log.
    pub unsupported: Vec<String>,
}

fn ref_id(d: &Doc, k: &str) -> Option<String> {
    d.get(k)?.get("id")?.as_str().map(str::to_string)
}

impl PluginSet {
    pub fn build(config: &Config, counters: &Counters) -> Result<PluginSet, String> {
        let mut set = PluginSet::default();
        for d in config
            .entities
            .get("plugins")
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if d.get("enabled").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let name = d.get("name").and_then(Value::as_str).unwrap_or_default();
            let id = d.get("id").and_then(Value::as_str).unwrap_or_default();
            let Some((reg_name, build)) = REGISTRY.iter().find(|(n, _)| *n == name) else {
                if !set.unsupported.iter().any(|u| u == name) {
                    set.unsupported.push(name.to_string());
                }
                continue;
            };
            let config = d.get("config").cloned().unwrap_or(Value::Null);
            let plugin =
                build(id, &config, counters).map_err(|e| format!("plugin {name} ({id}): {e}"))?;
            let scope = (
                ref_id(d, "route"),
                ref_id(d, "service"),
                ref_id(d, "consumer"),
            );
            let h = scope_hash(scope.0.as_deref(), scope.1.as_deref(), scope.2.as_deref());
            set.by_name
                .entry(reg_name)
                .or_default()
                .entry(h)
                .or_default()
                .push((scope, plugin));
        }
        let mut order: Vec<&'static str> = set.by_name.keys().copied().collect();
        let prio = |n: &str| {
            gantry_model::plugins::plugin(n)
                .map(|p| p.priority)
                .unwrap_or(0)
        };
        order.sort_by(|a, b| prio(b).cmp(&prio(a)).then(a.cmp(b)));
        set.order = order;
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The configuration of `name` that applies, by Kong's precedence.
    fn resolve(
        &self,
        name: &str,
        route: &str,
        service: Option<&str>,
        consumer: Option<&str>,
    ) -> Option<&Arc<dyn Plugin>> {
        let scopes = self.by_name.get(name)?;
        let r = Some(route);
        // Without a consumer or a service, the candidates that name them collapse onto the
        // less specific ones, which keeps Kong's order.
        let candidates = [
            (r, service, consumer),
            (r, None, consumer),
            (None, service, consumer),
            (r, service, None),
            (None, None, consumer),
            (r, None, None),
            (None, service, None),
            (None, None, None),
        ];
        candidates.iter().find_map(|&(r, s, c)| {
            scopes.get(&scope_hash(r, s, c))?.iter().find_map(|(k, p)| {
                (k.0.as_deref() == r && k.1.as_deref() == s && k.2.as_deref() == c).then_some(p)
            })
        })
    }

    /// Run the rewrite and access phases in order; the plugins that ran are returned for the
    /// response phase, or the response a plugin answered with.
    pub fn run_access(
        &self,
        ctx: &mut Ctx<'_>,
    ) -> Result<Vec<Arc<dyn Plugin>>, Box<Response<ProxyBody>>> {
        let mut ran = Vec::new();
        for name in &self.order {
            let consumer = ctx.consumer.as_ref().map(|c| c.id.clone());
            let Some(p) = self.resolve(name, ctx.route_id, ctx.service_id, consumer.as_deref())
            else {
                continue;
            };
            p.rewrite(ctx);
            if let Some(resp) = p.access(ctx) {
                return Err(Box::new(resp));
            }
            ran.push(p.clone());
        }
        Ok(ran)
    }
}
