//! jwt: a consumer identified by a signed JSON Web Token, as Kong 3.9's plugin does.
//!
//! The token comes from the query (`uri_param_names`), cookies (`cookie_names`) or headers
//! (`header_names`, `Bearer <token>`); more than one distinct token is refused. The claim
//! `key_claim_name` (in the claims, else the header) names the `jwt_secrets` credential; the
//! token's `alg` must be the credential's `algorithm`; the signature is checked with ring
//! (HMAC, RSA PKCS#1 and PSS, ECDSA P-256 / P-384, Ed25519), then `claims_to_verify` and
//! `maximum_expiration`. Every refusal is a 401 with Kong's message (or Kong's claim errors as
//! the body) and Kong's `WWW-Authenticate: Bearer ...`.
//!
//! ES512 (P-521) and Ed448 keys are not supported by ring: a credential that needs them is
//! refused when written ([`check_credential`]), so no node holds a key it cannot check.

use std::sync::Arc;

use base64::Engine;
use hyper::header::HeaderValue;
use hyper::Response;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{json, Map, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;
use gantry_model::Doc;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::server::ProxyBody;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build).with_credentials(&[JWT_SECRETS]);

/// jwt's credentials, found by their key; the key material is parsed when indexed.
const JWT_SECRETS: super::CredentialKind = super::CredentialKind {
    entity: "jwt_secrets",
    key: "key",
    owner: "consumer",
    prepare: Some(|d| prepare(d).map(|k| Arc::new(k) as _)),
};

fn schema() -> PluginSchema {
    PluginSchema::new(
        "jwt",
        1450,
        vec![
            Field::new("uri_param_names", set(string())).def(json!(["jwt"])),
            Field::new("cookie_names", set(string())).def(json!([])),
            Field::new("key_claim_name", string()).def(json!("iss")),
            Field::new("secret_is_base64", boolean())
                .req()
                .def(json!(false)),
            Field::new("claims_to_verify", set(one_of(&["exp", "nbf"]))),
            anonymous(),
            Field::new("run_on_preflight", boolean())
                .req()
                .def(json!(true)),
            Field::new(
                "maximum_expiration",
                Ty::Num {
                    min: Some(0.0),
                    max: Some(31_536_000.0),
                    gt: None,
                },
            )
            .def(json!(0)),
            Field::new("header_names", set(string())).def(json!(["authorization"])),
            Field::new("realm", string()),
        ],
    )
    .auth()
    .checks(|c, e| {
        let max = c
            .get("maximum_expiration")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let verifies_exp = c
            .get("claims_to_verify")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "exp"));
        if max > 0.0 && !verifies_exp {
            e.add("claims_to_verify", "expected to contain: exp");
            e.add_entity(
                "failed conditional validation given value of field 'config.maximum_expiration'",
            );
        }
    })
}

struct Jwt {
    uri_param_names: Vec<String>,
    cookie_names: Vec<String>,
    header_names: Vec<hyper::header::HeaderName>,
    key_claim_name: String,
    secret_is_base64: bool,
    verify_exp: bool,
    verify_nbf: bool,
    maximum_expiration: f64,
    anonymous: Option<String>,
    run_on_preflight: bool,
    /// `Bearer` or `Bearer realm="..."`, and the same with `error="invalid_token"`.
    challenge: HeaderValue,
    challenge_invalid: HeaderValue,
    verified: VerifiedCache,
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let mut header_names = Vec::new();
    for h in super::conf_strings(c, "header_names") {
        header_names.push(
            hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(
                |_| CompileError::field("header_names", format!("'{h}' is not a header name")),
            )?,
        );
    }
    let base = match c.get("realm").and_then(Value::as_str) {
        Some(r) => format!("Bearer realm=\"{r}\""),
        None => "Bearer".to_string(),
    };
    let header = |v: String| {
        HeaderValue::from_str(&v).map_err(|_| {
            CompileError::field("realm", "must be usable in a WWW-Authenticate header")
        })
    };
    let claims = super::conf_strings(c, "claims_to_verify");
    Ok(Arc::new(Jwt {
        uri_param_names: super::conf_strings(c, "uri_param_names"),
        cookie_names: super::conf_strings(c, "cookie_names"),
        header_names,
        key_claim_name: c
            .get("key_claim_name")
            .and_then(Value::as_str)
            .unwrap_or("iss")
            .to_string(),
        secret_is_base64: c
            .get("secret_is_base64")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        verify_exp: claims.iter().any(|c| c == "exp"),
        verify_nbf: claims.iter().any(|c| c == "nbf"),
        maximum_expiration: c
            .get("maximum_expiration")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        anonymous: super::conf_anonymous(c),
        run_on_preflight: super::conf_bool(c, "run_on_preflight", true),
        challenge_invalid: header(format!("{base} error=\"invalid_token\""))?,
        challenge: header(base)?,
        verified: VerifiedCache::default(),
    }))
}

/// The algorithms Kong verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

/// The algorithms by the names tokens and credentials give them.
const ALGS: [(&str, Alg); 13] = [
    ("HS256", Alg::Hs256),
    ("HS384", Alg::Hs384),
    ("HS512", Alg::Hs512),
    ("RS256", Alg::Rs256),
    ("RS384", Alg::Rs384),
    ("RS512", Alg::Rs512),
    ("ES256", Alg::Es256),
    ("ES384", Alg::Es384),
    ("ES512", Alg::Es512),
    ("PS256", Alg::Ps256),
    ("PS384", Alg::Ps384),
    ("PS512", Alg::Ps512),
    ("EdDSA", Alg::EdDsa),
];

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        ALGS.iter().find(|(n, _)| *n == s).map(|(_, a)| *a)
    }

    fn name(self) -> &'static str {
        ALGS.iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }

    fn hmac(self) -> Option<ring::hmac::Algorithm> {
        match self {
            Alg::Hs256 => Some(ring::hmac::HMAC_SHA256),
            Alg::Hs384 => Some(ring::hmac::HMAC_SHA384),
            Alg::Hs512 => Some(ring::hmac::HMAC_SHA512),
            _ => None,
        }
    }

    /// ring's verification algorithm for a public-key algorithm (none for HMAC and ES512).
    fn public(self) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Alg::EdDsa => &signature::ED25519,
            _ => return None,
        })
    }
}

/// A credential as the plugin checks tokens with it.
struct Secret {
    algorithm: Alg,
    /// The HMAC secret as stored (decoded per request when `secret_is_base64`).
    secret: Option<String>,
    /// The public key as ring reads it: PKCS#1 for RSA, the point for ECDSA, 32 bytes for
    /// Ed25519.
    public: Option<Vec<u8>>,
    /// The credential's key, for `X-Credential-Identifier`.
    key: String,
}

fn prepare(d: &Doc) -> Option<Secret> {
    let algorithm = Alg::parse(
        d.get("algorithm")
            .and_then(Value::as_str)
            .unwrap_or("HS256"),
    )?;
    let public = match (
        algorithm.hmac(),
        d.get("rsa_public_key").and_then(Value::as_str),
    ) {
        (None, Some(pem)) => public_key(algorithm, pem).ok(),
        _ => None,
    };
    Some(Secret {
        algorithm,
        secret: d.get("secret").and_then(Value::as_str).map(str::to_string),
        public,
        key: d.get("key").and_then(Value::as_str)?.to_string(),
    })
}

/// The public key of `pem` for `alg`, as ring reads it, or why it cannot be used.
fn public_key(alg: Alg, pem: &str) -> Result<Vec<u8>, String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let invalid = || "invalid key".to_string();
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| invalid())?;
    let rsa_bits = |pkcs1: &[u8]| -> Result<usize, String> {
        let (_, k) =
            x509_parser::public_key::RSAPublicKey::from_der(pkcs1).map_err(|_| invalid())?;
        let modulus = k.modulus.iter().skip_while(|b| **b == 0).count();
        Ok(modulus * 8)
    };
    let rsa = matches!(
        alg,
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
    );
    let (key, bits) = match block.label.as_str() {
        "RSA PUBLIC KEY" if rsa => {
            let bits = rsa_bits(&block.contents)?;
            (block.contents.clone(), bits)
        }
        "PUBLIC KEY" => {
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents)
                .map_err(|_| invalid())?;
            let oid = &spki.algorithm.algorithm;
            let data = spki.subject_public_key.data.to_vec();
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match alg {
                _ if rsa && *oid == OID_PKCS1_RSAENCRYPTION => {
                    let bits = rsa_bits(&data)?;
                    (data, bits)
                }
                Alg::Es256 if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) => {
                    (data, 256)
                }
                Alg::Es384
                    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_NIST_EC_P384) =>
                {
                    (data, 384)
                }
                Alg::EdDsa if *oid == OID_SIG_ED25519 => (data, 256),
                Alg::EdDsa => return Err("invalid key: only Ed25519 keys are supported".into()),
                _ => return Err(format!("invalid key: not a key for {}", alg.name())),
            }
        }
        _ => return Err(invalid()),
    };
    if rsa && bits < 2048 {
        return Err(format!(
            "invalid key: RSA keys of fewer than 2048 bits are not supported ({bits} bits)"
        ));
    }
    Ok(key)
}

/// What a write of a `jwt_secrets` credential is refused for: a key this node cannot check
/// tokens with. Kong's message for a key that does not parse is `invalid key`.
pub fn check_credential(doc: &Doc) -> Result<(), CompileError> {
    let alg = doc
        .get("algorithm")
        .and_then(Value::as_str)
        .unwrap_or("HS256");
    let Some(parsed) = Alg::parse(alg) else {
        return Ok(()); // the schema names the algorithms
    };
    if parsed == Alg::Es512 {
        return Err(CompileError::field(
            "algorithm",
            "ES512 (P-521) is not supported by this node; use ES256 or ES384",
        ));
    }
    if parsed.hmac().is_some() {
        return Ok(());
    }
    match doc.get("rsa_public_key").and_then(Value::as_str) {
        Some(pem) => public_key(parsed, pem)
            .map(drop)
            .map_err(|e| CompileError::field("rsa_public_key", e)),
        None => Ok(()), // the entity's checks require it
    }
}

/// A token as read: its parts, decoded.
struct Token<'a> {
    signed: &'a str,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signature: Vec<u8>,
    alg: Alg,
}

/// base64url as Kong decodes JWT parts: padding optional.
const B64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decode a token as Kong's parser does; the error is Kong's reason (`Bad token; <reason>`).
fn decode(token: &str) -> Result<Token<'_>, &'static str> {
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("invalid JSON");
    };
    let json = |p: &str| -> Result<Value, &'static str> {
        let bytes = B64URL.decode(p).map_err(|_| "invalid JSON")?;
        serde_json::from_slice(&bytes).map_err(|_| "invalid JSON")
    };
    let (header, claims) = (json(h)?, json(c)?);
    let Value::Object(header) = header else {
        return Err("invalid JSON");
    };
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .ok_or("invalid alg")?;
    let Value::Object(claims) = claims else {
        return Err("invalid claims");
    };
    let signature = B64URL.decode(s).map_err(|_| "invalid signature")?;
    Ok(Token {
        signed: &token[..h.len() + 1 + c.len()],
        header,
        claims,
        signature,
        alg,
    })
}

/// A token whose signature checked, with the credential it checked against and its claims.
struct Verified {
    key: String,
    credential: Arc<super::Credential>,
    claims: Map<String, Value>,
}

/// The tokens one plugin instance verified, so that a token sent again costs a lookup instead
/// of a signature check. An entry serves only while the credential it was verified with is
/// the one the index holds (a changed or deleted credential is checked again, or refused);
/// claims are checked on every request. At most [`VERIFIED_MAX`] entries: a full cache is
/// emptied.
#[derive(Default)]
struct VerifiedCache(std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<Verified>>>);

const VERIFIED_MAX: usize = 4096;

/// A consumer and the credential that authenticated it.
type Identified = (Arc<super::Consumer>, Arc<super::Credential>);

impl VerifiedCache {
    fn get(&self, token: &str, ids: &super::Identities) -> Option<(Arc<Verified>, Identified)> {
        let v = self.0.lock().ok()?.get(token).cloned()?;
        let found = ids.credential(&JWT_SECRETS, &v.key)?;
        Arc::ptr_eq(found.credential, &v.credential).then(|| {
            (
                v.clone(),
                (found.consumer.clone(), found.credential.clone()),
            )
        })
    }

    fn put(&self, token: &str, v: Arc<Verified>) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= VERIFIED_MAX {
                m.clear();
            }
            m.insert(token.into(), v);
        }
    }
}

/// Kong's 401 for a refusal.
enum Refusal {
    Message(String, bool),
    Claims(Map<String, Value>),
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

impl Jwt {
    /// The distinct tokens of the request: query parameters, then cookies, then headers.
    fn tokens(&self, ctx: &Ctx<'_>) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if !t.is_empty() && !found.iter().any(|f| f == t) {
                found.push(t.to_string());
            }
        };
        if let Some(q) = ctx.req.uri.query() {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if self.uri_param_names.iter().any(|n| *n == k) {
                    add(&v);
                }
            }
        }
        if !self.cookie_names.is_empty() {
            for line in ctx.req.headers.get_all(hyper::header::COOKIE) {
                for pair in line.to_str().unwrap_or_default().split(';') {
                    if let Some((k, v)) = pair.trim().split_once('=') {
                        if self.cookie_names.iter().any(|n| n == k) {
                            add(v);
                        }
                    }
                }
            }
        }
        for name in &self.header_names {
            let Some(v) = ctx.req.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(t) = bearer(v) {
                add(t);
            }
        }
        found
    }

    fn authenticate(&self, ctx: &mut Ctx<'_>) -> Result<(), Refusal> {
        let refuse = |m: &str| Refusal::Message(m.to_string(), true);
        let tokens = self.tokens(ctx);
        let token = match tokens.as_slice() {
            [] => return Err(Refusal::Message("Unauthorized".into(), false)),
            [one] => one,
            _ => return Err(refuse("Multiple tokens provided")),
        };
        // A token verified before against the credential still current skips the decoding
        // and the signature (an RSA check costs more than the rest of the request).
        let (verified, found) = match self.verified.get(token, ctx.identities) {
            Some(hit) => hit,
            None => {
                let (v, found) = self.verify(ctx, token)?;
                let v = Arc::new(v);
                self.verified.put(token, v.clone());
                (v, found)
            }
        };
        let (consumer, credential) = found;
        let Some(secret) = credential.prepared::<Secret>() else {
            return Err(refuse("Invalid key/secret"));
        };
        let now = now();
        let mut errors = Map::new();
        for (on, name) in [(self.verify_nbf, "nbf"), (self.verify_exp, "exp")] {
            if !on {
                continue;
            }
            match verified.claims.get(name).and_then(Value::as_f64) {
                None => {
                    errors.insert(name.into(), json!("must be a number"));
                }
                Some(v) if name == "exp" && v <= now => {
                    errors.insert(name.into(), json!("token expired"));
                }
                Some(v) if name == "nbf" && v > now => {
                    errors.insert(name.into(), json!("token not valid yet"));
                }
                Some(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(Refusal::Claims(errors));
        }
        if self.maximum_expiration > 0.0 {
            let exp = verified.claims.get("exp").and_then(Value::as_f64);
            if exp.is_none_or(|e| e - now > self.maximum_expiration) {
                let mut e = Map::new();
                e.insert("exp".into(), json!("exceeds maximum allowed expiration"));
                return Err(Refusal::Claims(e));
            }
        }
        ctx.authenticate(consumer, Some(secret.key.clone()), false);
        Ok(())
    }

    /// Decode `token` and check its signature with the credential its key claim names.
    fn verify(&self, ctx: &Ctx<'_>, token: &str) -> Result<(Verified, Identified), Refusal> {
        let refuse = |m: &str| Refusal::Message(m.to_string(), true);
        let jwt = decode(token).map_err(|e| refuse(&format!("Bad token; {e}")))?;
        let claim = &self.key_claim_name;
        let key = match jwt.claims.get(claim).or_else(|| jwt.header.get(claim)) {
            None | Some(Value::Null) => {
                return Err(refuse(&format!("No mandatory '{claim}' in claims")))
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(refuse(&format!("Invalid '{claim}' in claims")))
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let Some(found) = ctx.identities.credential(&JWT_SECRETS, &key) else {
            return Err(refuse(&format!("No credentials found for given '{claim}'")));
        };
        let (consumer, credential) = (found.consumer.clone(), found.credential.clone());
        let Some(secret) = credential.prepared::<Secret>() else {
            return Err(refuse("Invalid key/secret"));
        };
        if jwt.alg != secret.algorithm {
            return Err(refuse("Invalid algorithm"));
        }
        let valid = match secret.algorithm.hmac() {
            Some(h) => {
                let Some(s) = secret.secret.as_deref() else {
                    return Err(refuse("Invalid key/secret"));
                };
                let material = if self.secret_is_base64 {
                    match B64URL.decode(s) {
                        Ok(b) => b,
                        Err(_) => return Err(refuse("Invalid key/secret")),
                    }
                } else {
                    s.as_bytes().to_vec()
                };
                let k = ring::hmac::Key::new(h, &material);
                ring::hmac::verify(&k, jwt.signed.as_bytes(), &jwt.signature).is_ok()
            }
            None => {
                let (Some(public), Some(alg)) = (&secret.public, secret.algorithm.public()) else {
                    return Err(refuse("Invalid key/secret"));
                };
                UnparsedPublicKey::new(alg, public)
                    .verify(jwt.signed.as_bytes(), &jwt.signature)
                    .is_ok()
            }
        };
        if !valid {
            return Err(refuse("Invalid signature"));
        }
        let found = (consumer, credential.clone());
        Ok((
            Verified {
                key,
                credential,
                claims: jwt.claims,
            },
            found,
        ))
    }

    fn respond(&self, r: Refusal) -> Response<ProxyBody> {
        let (mut res, invalid) = match r {
            Refusal::Message(m, invalid) => (error(401, &m), invalid),
            Refusal::Claims(errors) => (
                super::raw(
                    401,
                    "application/json; charset=utf-8",
                    bytes::Bytes::from(Value::Object(errors).to_string()),
                ),
                true,
            ),
        };
        let challenge = if invalid {
            &self.challenge_invalid
        } else {
            &self.challenge
        };
        res.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, challenge.clone());
        res
    }
}

/// The token of an `Authorization: Bearer <token>` value (Kong's `\s*[Bb]earer\s+(.+)`).
fn bearer(v: &str) -> Option<&str> {
    super::after_scheme(v, "Bearer", 1)
}

impl Plugin for Jwt {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl Jwt {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        if !self.run_on_preflight && ctx.req.method == hyper::Method::OPTIONS {
            return None;
        }
        if self.anonymous.is_some() && ctx.credential.is_some() {
            return None;
        }
        let refusal = match self.authenticate(ctx) {
            Ok(()) => return None,
            Err(r) => r,
        };
        super::fall_back(ctx, self.anonymous.as_deref(), || self.respond(refusal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_as_kong_reads_them() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc.def"), Some("abc.def"));
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn tokens_decode_as_kong_decodes_them() {
        let enc = |v: Value| B64URL.encode(v.to_string());
        let t = format!(
            "{}.{}.{}",
            enc(json!({"alg": "HS256"})),
            enc(json!({"iss": "k"})),
            "c2ln"
        );
        let d = decode(&t).unwrap();
        assert_eq!(d.alg, Alg::Hs256);
        assert_eq!(d.claims["iss"], "k");
        assert_eq!(d.signature, b"sig");
        assert_eq!(decode("nope").err(), Some("invalid JSON"));
        let bad_alg = format!("{}.{}.x", enc(json!({"alg": "none"})), enc(json!({})));
        assert_eq!(decode(&bad_alg).err(), Some("invalid alg"));
        let bad_claims = format!("{}.{}.x", enc(json!({"alg": "HS256"})), enc(json!(5)));
        assert_eq!(decode(&bad_claims).err(), Some("invalid claims"));
    }
}
