//! key-auth: a consumer identified by an API key in a header or the query string.

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::server::ProxyBody;

struct KeyAuth {
    key_names: Vec<String>,
    /// The same names as header names (a name that cannot be one is looked for in the query
    /// string only).
    header_names: Vec<Option<hyper::header::HeaderName>>,
    hide_credentials: bool,
    anonymous: Option<String>,
    in_header: bool,
    in_query: bool,
    run_on_preflight: bool,
    realm: String,
}

pub static DESCRIPTOR: Descriptor =
    Descriptor::new(schema, build).with_credentials(&[KEYAUTH_CREDENTIALS]);

/// key-auth's credentials, found by their key.
const KEYAUTH_CREDENTIALS: super::CredentialKind = super::CredentialKind {
    entity: "keyauth_credentials",
    key: "key",
    owner: "consumer",
    prepare: None,
};

fn schema() -> PluginSchema {
    PluginSchema::new(
        "key-auth",
        1250,
        vec![
            Field::new("key_names", array(str_of(StrKind::HeaderName)))
                .req()
                .def(json!(["apikey"])),
            Field::new("hide_credentials", boolean())
                .req()
                .def(json!(false)),
            anonymous(),
            Field::new("key_in_header", boolean())
                .req()
                .def(json!(true)),
            Field::new("key_in_query", boolean()).req().def(json!(true)),
            Field::new("key_in_body", boolean()).req().def(json!(false)),
            Field::new("run_on_preflight", boolean())
                .req()
                .def(json!(true)),
            Field::new("realm", string()),
        ],
    )
    .auth()
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let b = |k: &str, d: bool| c.get(k).and_then(Value::as_bool).unwrap_or(d);
    let key_names: Vec<String> = c
        .get("key_names")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| vec!["apikey".into()]);
    Ok(Arc::new(KeyAuth {
        header_names: key_names
            .iter()
            .map(|n| hyper::header::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect(),
        key_names,
        hide_credentials: b("hide_credentials", false),
        anonymous: super::conf_anonymous(c),
        in_header: b("key_in_header", true),
        in_query: b("key_in_query", true),
        run_on_preflight: b("run_on_preflight", true),
        realm: c
            .get("realm")
            .and_then(Value::as_str)
            .unwrap_or("kong")
            .to_string(),
    }))
}

impl KeyAuth {
    /// The key and where it was: `(key, Some(header name))` or `(key, None)` for the query.
    fn find_key(&self, ctx: &Ctx<'_>) -> Option<(String, Option<&str>)> {
        for (name, header) in self.key_names.iter().zip(&self.header_names) {
            if let (true, Some(header)) = (self.in_header, header) {
                if let Some(v) = ctx.req.headers.get(header).and_then(|v| v.to_str().ok()) {
                    return Some((v.to_string(), Some(name.as_str())));
                }
            }
            if self.in_query {
                if let Some(q) = ctx.req.uri.query() {
                    if let Some((_, v)) =
                        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name.as_str())
                    {
                        return Some((v.into_owned(), None));
                    }
                }
            }
        }
        None
    }

    fn unauthorized(&self, message: &str) -> Response<ProxyBody> {
        let mut r = error(401, message);
        if let Ok(v) = HeaderValue::from_str(&format!("Key realm=\"{}\"", self.realm)) {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        r
    }

    fn hide(&self, ctx: &mut Ctx<'_>, name: &str, from_header: bool) {
        if from_header {
            ctx.req.headers.remove(name);
            return;
        }
        let Some(pq) = ctx.req.uri.path_and_query() else {
            return;
        };
        let path = pq.path().to_string();
        let kept: Vec<&str> = pq
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
            .collect();
        let new = if kept.is_empty() {
            path
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        if let Ok(uri) = new.parse() {
            ctx.req.uri = uri;
        }
    }
}

impl Plugin for KeyAuth {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl KeyAuth {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        if !self.run_on_preflight && ctx.req.method == hyper::Method::OPTIONS {
            return None;
        }
        // Another authentication plugin already identified a real consumer.
        if ctx.credential.is_some() {
            return None;
        }
        let found = self.find_key(ctx);
        let outcome = match &found {
            None => Err("No API key found in request"),
            Some((key, _)) => match ctx.identities.credential(&KEYAUTH_CREDENTIALS, key) {
                Some(c) => Ok((c.consumer.clone(), c.credential.id.clone())),
                None => Err("Invalid authentication credentials"),
            },
        };
        match outcome {
            Ok((consumer, cred)) => {
                if self.hide_credentials {
                    if let Some((_, place)) = &found {
                        match place {
                            Some(h) => self.hide(ctx, h, true),
                            None => {
                                for n in &self.key_names {
                                    self.hide(ctx, n, false);
                                }
                            }
                        }
                    }
                }
                ctx.authenticate(consumer, Some(cred), false);
                None
            }
            Err(msg) => super::fall_back(ctx, self.anonymous.as_deref(), || self.unauthorized(msg)),
        }
    }
}
