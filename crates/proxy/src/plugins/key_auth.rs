//! key-auth: a consumer identified by an API key in a header, the query string or (with
//! `key_in_body`) the request body: form-encoded, JSON or multipart. For each of `key_names`
//! in turn, the header, then the query string, then the body; a key given twice is Kong's 401
//! `Duplicate API key found`.

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::compat::Version;
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
    in_body: bool,
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
    // Kong added `realm` in 3.8; a Gantry 0.1 data plane does not know it.
    .since(&[("config.realm", Version(0, 2, 0))])
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
        in_body: b("key_in_body", false),
        run_on_preflight: b("run_on_preflight", true),
        realm: c
            .get("realm")
            .and_then(Value::as_str)
            .unwrap_or("kong")
            .to_string(),
    }))
}

impl KeyAuth {
    /// The key and the name it was found under; `Err` for a key given twice.
    fn find_key(
        &self,
        ctx: &Ctx<'_>,
        body: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Option<(String, usize)>, ()> {
        let query = if self.in_query {
            super::args::query(&ctx.req.uri)
        } else {
            Default::default()
        };
        for (i, (name, header)) in self.key_names.iter().zip(&self.header_names).enumerate() {
            if let (true, Some(header)) = (self.in_header, header) {
                let mut values = ctx.req.headers.get_all(header).iter();
                if let Some(v) = values.next() {
                    if values.next().is_some() {
                        return Err(());
                    }
                    if let Ok(v) = v.to_str() {
                        return Ok(Some((v.to_string(), i)));
                    }
                }
            }
            let v = query
                .get(name.as_str())
                .or_else(|| body.and_then(|b| b.get(name.as_str())));
            match v {
                Some(Value::String(k)) => return Ok(Some((k.clone(), i))),
                Some(Value::Array(_)) => return Err(()),
                _ => {}
            }
        }
        Ok(None)
    }

    fn unauthorized(&self, message: &str) -> Response<ProxyBody> {
        let mut r = error(401, message);
        if let Ok(v) = HeaderValue::from_str(&format!("Key realm=\"{}\"", self.realm)) {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        r
    }

    /// Kong's `hide_credentials`: the name is taken out of the headers, the query string and
    /// (with `key_in_body`) the body, wherever the key was.
    fn hide(&self, ctx: &mut Ctx<'_>, name: &str) {
        ctx.req.headers.remove(name);
        super::args::hide(ctx, name, self.in_body);
    }
}

impl Plugin for KeyAuth {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        if !self.in_body {
            return self.decide(ctx, None).into();
        }
        Flow::later(async move {
            if self.skip(ctx) {
                return None;
            }
            let headers = ctx.req.headers.clone();
            let body = match ctx.body().await {
                Some(b) => super::args::body(&headers, b),
                None => Default::default(),
            };
            self.decide(ctx, Some(&body))
        })
    }
}

impl KeyAuth {
    fn skip(&self, ctx: &Ctx<'_>) -> bool {
        // A preflight, or another authentication plugin identified a real consumer already.
        (!self.run_on_preflight && ctx.req.method == hyper::Method::OPTIONS)
            || ctx.credential.is_some()
    }

    fn decide(
        &self,
        ctx: &mut Ctx<'_>,
        body: Option<&serde_json::Map<String, Value>>,
    ) -> Option<Response<ProxyBody>> {
        if self.skip(ctx) {
            return None;
        }
        let found = self.find_key(ctx, body);
        let outcome = match &found {
            Err(()) => Err("Duplicate API key found"),
            Ok(None) => Err("No API key found in request"),
            Ok(Some((key, _))) if key.is_empty() => Err("No API key found in request"),
            Ok(Some((key, _))) => match ctx.identities.credential(&KEYAUTH_CREDENTIALS, key) {
                Some(c) => Ok((c.consumer.clone(), c.credential.id.clone())),
                None => Err("Invalid authentication credentials"),
            },
        };
        match outcome {
            Ok((consumer, cred)) => {
                if let (true, Ok(Some((_, i)))) = (self.hide_credentials, &found) {
                    let name = self.key_names[*i].clone();
                    self.hide(ctx, &name);
                }
                ctx.authenticate(consumer, Some(cred), false);
                None
            }
            Err(msg) => super::fall_back(ctx, self.anonymous.as_deref(), || self.unauthorized(msg)),
        }
    }
}
