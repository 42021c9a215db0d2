//! basic-auth: a consumer identified by a username and password in the `Authorization` (or
//! `Proxy-Authorization`) header, as Kong 3.9's plugin does.
//!
//! Passwords are stored as Kong stores them (`gantry_model::document::hash_password`: SHA-1 of
//! the password and the consumer id); a request's password is hashed the same way and compared.
//! A missing header, an unreadable one, an unknown username and a wrong password all answer
//! 401 `Unauthorized` with `WWW-Authenticate: Basic realm="<realm>"`.

use std::sync::Arc;

use base64::Engine;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::server::ProxyBody;

struct BasicAuth {
    hide_credentials: bool,
    anonymous: Option<String>,
    /// `Basic realm="<realm>"`.
    challenge: HeaderValue,
}

pub static DESCRIPTOR: Descriptor =
    Descriptor::new(schema, build).with_credentials(&[BASICAUTH_CREDENTIALS]);

/// basic-auth's credentials, found by their username; the password hash is read per request.
const BASICAUTH_CREDENTIALS: super::CredentialKind = super::CredentialKind {
    entity: "basicauth_credentials",
    key: "username",
    owner: "consumer",
    prepare: Some(|d| {
        let hash = d.get("password")?.as_str()?.to_string();
        Some(Arc::new(PasswordHash(hash)))
    }),
};

/// A credential's stored password hash.
struct PasswordHash(String);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "basic-auth",
        1100,
        vec![
            anonymous(),
            Field::new("hide_credentials", boolean())
                .req()
                .def(json!(false)),
            Field::new("realm", string()).req().def(json!("service")),
        ],
    )
    .auth()
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let realm = c.get("realm").and_then(Value::as_str).unwrap_or("service");
    let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
        .map_err(|_| CompileError::field("realm", "must be usable in a WWW-Authenticate header"))?;
    Ok(Arc::new(BasicAuth {
        hide_credentials: super::conf_bool(c, "hide_credentials", false),
        anonymous: super::conf_anonymous(c),
        challenge,
    }))
}

/// The username and password of a header value, if it holds them.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    // Kong's reading: `Basic` (or `basic`) anywhere, then base64 of `user:password`.
    let encoded = super::after_scheme(text, "Basic", 0)?;
    let decoded = super::NGINX_BASE64.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    // `([^:]+):(.*)`: a username of at least one character, the rest of the line its password.
    let (user, rest) = decoded.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    let password = rest.split('\n').next().unwrap_or_default();
    Some((user.to_string(), password.to_string()))
}

const PROXY_AUTHORIZATION: HeaderName = hyper::header::PROXY_AUTHORIZATION;
const AUTHORIZATION: HeaderName = hyper::header::AUTHORIZATION;

impl BasicAuth {
    fn unauthorized(&self) -> Response<ProxyBody> {
        let mut r = error(401, "Unauthorized");
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, self.challenge.clone());
        r
    }

    /// The credentials in header `name` (cleared from the request when hiding them).
    fn read(&self, ctx: &mut Ctx<'_>, name: HeaderName) -> Option<(String, String)> {
        let found = ctx.req.headers.get(&name).and_then(credentials);
        if self.hide_credentials {
            ctx.req.headers.remove(name);
        }
        found
    }

    /// Authenticate the request: the consumer and the credential's username, or a refusal.
    fn authenticate(&self, ctx: &mut Ctx<'_>) -> Result<(), ()> {
        let headers = &ctx.req.headers;
        if !headers.contains_key(AUTHORIZATION) && !headers.contains_key(PROXY_AUTHORIZATION) {
            return Err(());
        }
        let check = |ctx: &Ctx<'_>, (user, password): &(String, String)| {
            let found = ctx.identities.credential(&BASICAUTH_CREDENTIALS, user)?;
            let c = (found.consumer.clone(), found.credential.clone());
            Some((c, user.clone(), password.clone()))
        };
        let mut found = self
            .read(ctx, PROXY_AUTHORIZATION)
            .and_then(|c| check(ctx, &c));
        if found.is_none() {
            let Some(given) = self.read(ctx, AUTHORIZATION) else {
                return Err(());
            };
            found = check(ctx, &given);
        }
        // The username found is the credential's: the index is by username.
        let Some(((consumer, credential), username, password)) = found else {
            return Err(());
        };
        let valid = credential.prepared::<PasswordHash>().is_some_and(|s| {
            gantry_model::document::verify_password(&s.0, &password, &credential.consumer_id)
        });
        if !valid {
            return Err(());
        }
        ctx.authenticate(consumer, Some(username), false);
        Ok(())
    }
}

impl Plugin for BasicAuth {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl BasicAuth {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        // With `anonymous`, auth plugins are alternatives: one that identified a consumer is
        // enough (Kong's "logical OR").
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return None;
        }
        if self.authenticate(ctx).is_ok() {
            return None;
        }
        super::fall_back(ctx, self.anonymous.as_deref(), || self.unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_as_kong_reads_them() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(
            credentials(&v(&format!("Basic {}", enc("alice:s3cr:et")))),
            pair("alice", "s3cr:et")
        );
        assert_eq!(
            credentials(&v(&format!("basic {}", enc("bob:")))),
            pair("bob", "")
        );
        // Padding is optional, as nginx decodes.
        let unpadded = enc("al:x").trim_end_matches('=').to_string();
        assert_eq!(
            credentials(&v(&format!("Basic {unpadded}"))),
            pair("al", "x")
        );
        assert_eq!(credentials(&v(&format!("Basic {}", enc(":nouser")))), None);
        assert_eq!(credentials(&v(&format!("Basic {}", enc("nocolon")))), None);
        assert_eq!(credentials(&v("Bearer abc")), None);
        assert_eq!(credentials(&v("Basic !!!")), None);
    }
}
