//! hmac-auth: a consumer identified by an HMAC signature of the request's headers, as Kong
//! 3.9's plugin does.
//!
//! `Authorization` (or `Proxy-Authorization`): `hmac username="u", algorithm="hmac-sha256",
//! headers="date @request-target", signature="<base64>"`. The signing string is each listed
//! header as `name: value` (`@request-target` is `<method> <path?query>`, `request-line` the
//! request line), joined by newlines. A `Date` or `X-Date` within `clock_skew` seconds is
//! required; `enforce_headers` must all be signed; `algorithms` limits the algorithms; with
//! `validate_request_body` the body's `Digest: SHA-256=<base64>` must match it. Refusals are
//! 401 with Kong's messages and `WWW-Authenticate: hmac` (with `realm`).

use std::sync::{Arc, LazyLock};

use base64::Engine;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::server::ProxyBody;

pub static DESCRIPTOR: Descriptor =
    Descriptor::new(schema, build).with_credentials(&[HMACAUTH_CREDENTIALS]);

/// hmac-auth's credentials, found by their username; the secret is kept for each request.
const HMACAUTH_CREDENTIALS: super::CredentialKind = super::CredentialKind {
    entity: "hmacauth_credentials",
    key: "username",
    owner: "consumer",
    prepare: Some(|d| {
        let secret = d.get("secret")?.as_str()?.to_string();
        Some(Arc::new(HmacSecret(secret)))
    }),
};

struct HmacSecret(String);

const ALGORITHMS: [&str; 4] = ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"];

fn schema() -> PluginSchema {
    PluginSchema::new(
        "hmac-auth",
        1030,
        vec![
            Field::new("hide_credentials", boolean())
                .req()
                .def(json!(false)),
            Field::new("clock_skew", number_gt(0.0)).def(json!(300)),
            anonymous(),
            Field::new("validate_request_body", boolean())
                .req()
                .def(json!(false)),
            Field::new("enforce_headers", array(string())).def(json!([])),
            Field::new("algorithms", array(one_of(&ALGORITHMS))).def(json!(ALGORITHMS)),
            Field::new("realm", string()),
        ],
    )
    .auth()
}

struct HmacAuth {
    hide_credentials: bool,
    clock_skew: f64,
    anonymous: Option<String>,
    validate_request_body: bool,
    enforce_headers: Vec<String>,
    algorithms: Vec<String>,
    challenge: HeaderValue,
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let challenge = match c.get("realm").and_then(Value::as_str) {
        Some(r) => format!("hmac realm=\"{r}\""),
        None => "hmac".to_string(),
    };
    Ok(Arc::new(HmacAuth {
        hide_credentials: super::conf_bool(c, "hide_credentials", false),
        clock_skew: c.get("clock_skew").and_then(Value::as_f64).unwrap_or(300.0),
        anonymous: super::conf_anonymous(c),
        validate_request_body: super::conf_bool(c, "validate_request_body", false),
        enforce_headers: super::conf_strings(c, "enforce_headers"),
        algorithms: super::conf_strings(c, "algorithms"),
        challenge: HeaderValue::from_str(&challenge).map_err(|_| {
            CompileError::field("realm", "must be usable in a WWW-Authenticate header")
        })?,
    }))
}

const NOT_VALID: &str = "HMAC signature cannot be verified";
const NOT_SAME: &str = "HMAC signature does not match";

/// The parameters of an `hmac` authorization value.
struct Params {
    username: String,
    algorithm: String,
    headers: Vec<String>,
    signature: String,
}

/// Kong's reading of the header value.
fn params(v: &HeaderValue) -> Option<Params> {
    static HMAC: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r#"\s*[Hh]mac\s*username="(.+)",\s*algorithm="(.+)",\s*headers="(.+)",\s*signature="(.+)""#,
        )
        .expect("a valid regex")
    });
    let c = HMAC.captures(v.to_str().ok()?)?;
    Some(Params {
        username: c[1].to_string(),
        algorithm: c[2].to_string(),
        headers: c[3].split(' ').map(str::to_string).collect(),
        signature: c[4].to_string(),
    })
}

/// The request's body digest still to check, kept from access for the request body phase.
#[derive(Clone)]
struct PendingDigest(Option<String>);

fn ring_hmac(algorithm: &str) -> Option<ring::hmac::Algorithm> {
    Some(match algorithm {
        "hmac-sha1" => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "hmac-sha256" => ring::hmac::HMAC_SHA256,
        "hmac-sha384" => ring::hmac::HMAC_SHA384,
        "hmac-sha512" => ring::hmac::HMAC_SHA512,
        _ => return None,
    })
}

impl HmacAuth {
    fn unauthorized(&self, message: &str) -> Response<ProxyBody> {
        let mut r = error(401, message);
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, self.challenge.clone());
        r
    }

    /// Whether `Date` or `X-Date` is within the clock skew.
    fn fresh(&self, ctx: &Ctx<'_>) -> bool {
        let now = std::time::SystemTime::now();
        ["x-date", "date"].iter().any(|h| {
            let Some(t) = ctx
                .req
                .headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
            else {
                return false;
            };
            let skew = match now.duration_since(t) {
                Ok(d) => d,
                Err(e) => e.duration(),
            };
            skew.as_secs_f64() <= self.clock_skew
        })
    }

    /// The string the client signed.
    fn signing_string(ctx: &Ctx<'_>, headers: &[String]) -> String {
        let target = ctx
            .req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut out = String::new();
        for (i, h) in headers.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            match ctx
                .req
                .headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
            {
                Some(v) => {
                    out.push_str(h);
                    out.push_str(": ");
                    out.push_str(v);
                }
                None if h == "@request-target" => {
                    out.push_str(h);
                    out.push_str(": ");
                    out.push_str(&ctx.req.method.as_str().to_ascii_lowercase());
                    out.push(' ');
                    out.push_str(target);
                }
                None if h == "request-line" => {
                    let version = match ctx.req.version {
                        hyper::Version::HTTP_10 => "1.0",
                        hyper::Version::HTTP_2 => "2.0",
                        hyper::Version::HTTP_3 => "3.0",
                        _ => "1.1",
                    };
                    out.push_str(&format!("{} {target} HTTP/{version}", ctx.req.method));
                }
                None => {
                    out.push_str(h);
                    out.push(':');
                }
            }
        }
        out
    }

    fn authenticate(&self, ctx: &mut Ctx<'_>) -> Result<(), &'static str> {
        let (auth, proxy_auth) = (
            hyper::header::AUTHORIZATION,
            hyper::header::PROXY_AUTHORIZATION,
        );
        if !ctx.req.headers.contains_key(&auth) && !ctx.req.headers.contains_key(&proxy_auth) {
            return Err("Unauthorized");
        }
        if !self.fresh(ctx) {
            return Err("HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication");
        }
        let from = |ctx: &Ctx<'_>, h: &HeaderName| ctx.req.headers.get(h).and_then(params);
        let (p, used) = match from(ctx, &proxy_auth) {
            Some(p) => (Some(p), proxy_auth),
            None => (from(ctx, &auth), auth),
        };
        if self.hide_credentials {
            ctx.req.headers.remove(used);
        }
        let p = p.ok_or(NOT_VALID)?;
        if self
            .enforce_headers
            .iter()
            .any(|e| !p.headers.iter().any(|h| h == e))
        {
            return Err(NOT_VALID);
        }
        if !self.algorithms.contains(&p.algorithm) {
            return Err(NOT_VALID);
        }
        let alg = ring_hmac(&p.algorithm).ok_or(NOT_VALID)?;
        let found = ctx
            .identities
            .credential(&HMACAUTH_CREDENTIALS, &p.username)
            .ok_or(NOT_VALID)?;
        let (consumer, credential) = (found.consumer.clone(), found.credential.clone());
        let secret = credential.prepared::<HmacSecret>().ok_or(NOT_VALID)?;
        let signing = Self::signing_string(ctx, &p.headers);
        let given = super::NGINX_BASE64
            .decode(&p.signature)
            .map_err(|_| NOT_SAME)?;
        let key = ring::hmac::Key::new(alg, secret.0.as_bytes());
        ring::hmac::verify(&key, signing.as_bytes(), &given).map_err(|_| NOT_SAME)?;
        if self.validate_request_body {
            let digest = ctx
                .req
                .headers
                .get("digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            ctx.state.insert(PendingDigest(digest));
        }
        ctx.authenticate(consumer, Some(p.username), false);
        Ok(())
    }

    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return None;
        }
        let message = match self.authenticate(ctx) {
            Ok(()) => return None,
            Err(m) => m,
        };
        super::fall_back(ctx, self.anonymous.as_deref(), || {
            self.unauthorized(message)
        })
    }
}

/// Whether `body` is what the `Digest` header (if any) says: `SHA-256=<base64 of its SHA-256>`;
/// without one, the body must be empty.
fn digest_matches(digest: Option<&str>, body: &[u8]) -> bool {
    match digest {
        None => body.is_empty(),
        Some(d) => {
            let sum = ring::digest::digest(&ring::digest::SHA256, body);
            let want = format!(
                "SHA-256={}",
                base64::engine::general_purpose::STANDARD.encode(sum.as_ref())
            );
            d == want
        }
    }
}

impl Plugin for HmacAuth {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }

    fn reads_body(&self) -> bool {
        self.validate_request_body
    }

    fn request_body<'a>(&'a self, ctx: &'a mut Ctx<'_>, body: &'a mut Bytes) -> Flow<'a> {
        // Only a request this plugin authenticated has a digest to check.
        let Some(PendingDigest(digest)) = ctx.state.remove::<PendingDigest>() else {
            return Flow::Next;
        };
        if digest_matches(digest.as_deref(), body) {
            return Flow::Next;
        }
        super::fall_back(ctx, self.anonymous.as_deref(), || {
            self.unauthorized(NOT_SAME)
        })
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_values_and_digests() {
        let v = HeaderValue::from_static(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="date @request-target", signature="c2ln""#,
        );
        let p = params(&v).unwrap();
        assert_eq!(p.username, "alice");
        assert_eq!(p.algorithm, "hmac-sha256");
        assert_eq!(p.headers, ["date", "@request-target"]);
        assert_eq!(p.signature, "c2ln");
        assert!(params(&HeaderValue::from_static("Basic abc")).is_none());
        assert!(digest_matches(None, b""));
        assert!(!digest_matches(None, b"x"));
        assert!(digest_matches(
            Some("SHA-256=LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564="),
            b"foo"
        ));
        assert!(!digest_matches(Some("SHA-256=nope"), b"foo"));
    }
}
