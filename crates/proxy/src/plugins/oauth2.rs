//! oauth2: Kong 3.9's OAuth 2.0 provider. On the route's paths it serves `.../oauth2/authorize`
//! and `.../oauth2/token` (POST only) with the grants Kong has (authorization code with PKCE,
//! implicit, client credentials, password, refresh token); elsewhere it checks a bearer token
//! and identifies the consumer of its client application.
//!
//! Tokens and codes are entities (`oauth2_tokens`, `oauth2_authorization_codes`) written
//! through the node's [`Writes`]: a node's own store, or on a data plane its control plane's,
//! which sends them to every data plane like any change (Kong cannot run oauth2 in hybrid or
//! DB-less mode: its data planes have no database to write to). A node answers with what it
//! issued at once; until the change comes back to it, it finds what it issued in [`Recent`].
//! Checks read the indexed tokens, never a database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Response};
use serde_json::{json, Map, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;
use gantry_model::writes::{WriteError, WriteOp};
use gantry_model::Entity;

use super::{CredentialKind, Ctx, Descriptor, Flow, Instance, Plugin, Shared, Writes};
use crate::server::ProxyBody;

/// Client applications, by `client_id`.
const CREDENTIALS: CredentialKind = CredentialKind {
    entity: "oauth2_credentials",
    key: "client_id",
    owner: "consumer",
    prepare: None,
};
/// Tokens, by access token and by refresh token; codes, by code.
const TOKENS: CredentialKind = CredentialKind {
    entity: "oauth2_tokens",
    key: "access_token",
    owner: "credential",
    prepare: None,
};
const REFRESH: CredentialKind = CredentialKind {
    entity: "oauth2_tokens",
    key: "refresh_token",
    owner: "credential",
    prepare: None,
};
const CODES: CredentialKind = CredentialKind {
    entity: "oauth2_authorization_codes",
    key: "code",
    owner: "credential",
    prepare: None,
};

pub static DESCRIPTOR: Descriptor =
    Descriptor::new(schema, build).with_credentials(&[CREDENTIALS, TOKENS, REFRESH, CODES]);

/// How long an authorization code lives (Kong's `ttl = 300`).
const CODE_TTL: i64 = 300;

fn schema() -> PluginSchema {
    PluginSchema::new(
        "oauth2",
        1400,
        vec![
            Field::new("scopes", array(string())),
            Field::new("mandatory_scope", boolean())
                .req()
                .def(json!(false)),
            Field::new("provision_key", string())
                .req()
                .unique()
                .auto()
                .secret(),
            Field::new("token_expiration", number())
                .req()
                .def(json!(7200)),
            Field::new("enable_authorization_code", boolean())
                .req()
                .def(json!(false)),
            Field::new("enable_implicit_grant", boolean())
                .req()
                .def(json!(false)),
            Field::new("enable_client_credentials", boolean())
                .req()
                .def(json!(false)),
            Field::new("enable_password_grant", boolean())
                .req()
                .def(json!(false)),
            Field::new("hide_credentials", boolean())
                .req()
                .def(json!(false)),
            Field::new("accept_http_if_already_terminated", boolean())
                .req()
                .def(json!(false)),
            anonymous(),
            Field::new("global_credentials", boolean())
                .req()
                .def(json!(false)),
            Field::new("auth_header_name", string()).def(json!("authorization")),
            Field::new("refresh_token_ttl", number_between(0.0, 100_000_000.0))
                .req()
                .def(json!(1_209_600)),
            Field::new("reuse_refresh_token", boolean())
                .req()
                .def(json!(false)),
            Field::new("pkce", one_of(&["none", "lax", "strict"])).def(json!("lax")),
            Field::new("realm", string()),
        ],
    )
    .auth()
    .checks(|c, e| {
        let on = |k: &str| c.get(k).and_then(Value::as_bool) == Some(true);
        if !["enable_authorization_code", "enable_implicit_grant", "enable_client_credentials", "enable_password_grant"]
            .iter()
            .any(|k| on(k))
        {
            e.add_entity("at least one of these fields must be true: enable_authorization_code, enable_implicit_grant, enable_client_credentials, enable_password_grant");
        }
        let scopes = c.get("scopes").and_then(Value::as_array);
        if on("mandatory_scope") && scopes.is_none() {
            e.add("scopes", "required field missing");
        }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Pkce {
    None,
    Lax,
    Strict,
}

struct OAuth2 {
    plugin_id: String,
    scopes: Option<Vec<String>>,
    mandatory_scope: bool,
    provision_key: String,
    token_expiration: i64,
    authorization_code: bool,
    implicit: bool,
    client_credentials: bool,
    password: bool,
    hide_credentials: bool,
    accept_http_if_already_terminated: bool,
    anonymous: Option<String>,
    global_credentials: bool,
    auth_header: HeaderName,
    refresh_token_ttl: i64,
    reuse_refresh_token: bool,
    pkce: Pkce,
    /// ` realm="..."`, or nothing.
    realm: String,
    writes: Arc<Writes>,
    recent: Arc<Recent>,
}

fn build(at: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let writes = shared.get::<Writes>();
    if writes.none() {
        return Err(CompileError::whole(
            "oauth2 keeps its tokens in the database, and this node has none (database = off): Kong does not run it without one either",
        ));
    }
    let b = |k: &str| super::conf_bool(c, k, false);
    let n = |k: &str, d: i64| c.get(k).and_then(Value::as_f64).map_or(d, |f| f as i64);
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    let header = s("auth_header_name").unwrap_or_else(|| "authorization".into());
    Ok(Arc::new(OAuth2 {
        plugin_id: at.id.to_string(),
        scopes: c
            .get("scopes")
            .and_then(Value::as_array)
            .map(|_| super::conf_strings(c, "scopes")),
        mandatory_scope: b("mandatory_scope"),
        provision_key: s("provision_key").unwrap_or_default(),
        token_expiration: n("token_expiration", 7200),
        authorization_code: b("enable_authorization_code"),
        implicit: b("enable_implicit_grant"),
        client_credentials: b("enable_client_credentials"),
        password: b("enable_password_grant"),
        hide_credentials: b("hide_credentials"),
        accept_http_if_already_terminated: b("accept_http_if_already_terminated"),
        anonymous: super::conf_anonymous(c),
        global_credentials: b("global_credentials"),
        auth_header: HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map_err(|_| CompileError::field("auth_header_name", "not a header name"))?,
        refresh_token_ttl: n("refresh_token_ttl", 1_209_600),
        reuse_refresh_token: b("reuse_refresh_token"),
        pkce: match s("pkce").as_deref() {
            Some("none") => Pkce::None,
            Some("strict") => Pkce::Strict,
            _ => Pkce::Lax,
        },
        realm: s("realm")
            .map(|r| format!(" realm=\"{r}\""))
            .unwrap_or_default(),
        writes,
        recent: shared.get::<Recent>(),
    }))
}

/// What this node wrote lately and has not yet seen come back in a configuration: tokens and
/// codes it issued (usable at once), and ids it deleted (used up already).
#[derive(Default)]
pub struct Recent(Mutex<RecentInner>);

#[derive(Default)]
struct RecentInner {
    /// `(kind's key field, value)` to the entity, the configuration version that holds it,
    /// and when it was written.
    issued: HashMap<(&'static str, String), (Entity, i64, Instant)>,
    /// Codes, access tokens and refresh tokens used up here.
    gone: HashMap<String, Instant>,
}

/// Longer than any configuration takes to come back.
const RECENT_FOR: Duration = Duration::from_secs(120);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn issued(&self, kinds: &[&'static str], e: &Entity, version: i64) {
        let d = e.doc();
        let mut r = self.lock();
        let now = Instant::now();
        r.issued
            .retain(|_, (_, _, t)| now.duration_since(*t) < RECENT_FOR);
        r.gone.retain(|_, t| now.duration_since(*t) < RECENT_FOR);
        for k in kinds {
            if let Some(v) = d.get(*k).and_then(Value::as_str) {
                r.issued
                    .insert((k, v.to_string()), (e.clone(), version, now));
            }
        }
    }

    /// `values` (a code, an access token, a refresh token) are used up.
    fn gone(&self, values: &[&str]) {
        let mut r = self.lock();
        for v in values {
            r.gone.insert(v.to_string(), Instant::now());
        }
    }

    fn is_gone(&self, value: &str) -> bool {
        self.lock().gone.contains_key(value)
    }

    /// What was issued here under `value`, while the configuration running (`running`) is
    /// older than the one holding it: from then on the index says (it may have been deleted).
    fn find(&self, key: &'static str, value: &str, running: i64) -> Option<Entity> {
        let r = self.lock();
        r.issued
            .get(&(key, value.to_string()))
            .filter(|(_, v, _)| running < *v)
            .map(|(e, _, _)| e.clone())
    }
}

/// The parameters of a request: its query string, and for POST, PUT and PATCH its form or
/// JSON body, which wins (Kong's `retrieve_parameters`).
type Params = Map<String, Value>;

async fn params(ctx: &mut Ctx<'_>) -> Params {
    let mut p = super::args::query(&ctx.req.uri);
    if !matches!(ctx.req.method, Method::POST | Method::PUT | Method::PATCH) {
        return p;
    }
    let headers = ctx.req.headers.clone();
    if let Some(body) = ctx.body().await {
        p.extend(super::args::body(&headers, body));
    }
    p
}

fn param<'p>(p: &'p Params, k: &str) -> Option<&'p str> {
    p.get(k).and_then(Value::as_str)
}

/// An OAuth 2.0 error body.
fn err(code: &str, description: impl Into<String>) -> Params {
    let mut m = Params::new();
    m.insert("error".into(), json!(code));
    m.insert("error_description".into(), json!(description.into()));
    m
}

/// Kong's answers from these endpoints: JSON, never cached.
fn answer(status: u16, body: &Value, www_authenticate: Option<&str>) -> Response<ProxyBody> {
    let mut r = super::raw(
        status,
        "application/json; charset=utf-8",
        Bytes::from(body.to_string()),
    );
    let h = r.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(hyper::header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(v) = www_authenticate.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(hyper::header::WWW_AUTHENTICATE, v);
    }
    r
}

fn unexpected(e: &WriteError) -> Response<ProxyBody> {
    tracing::error!(error = %e, "oauth2 could not write");
    super::error(500, "An unexpected error occurred")
}

/// Kong's `check_https`: TLS to this node, or (with `accept_http_if_already_terminated`) a
/// trusted peer's single `X-Forwarded-Proto: https`.
fn https(ctx: &Ctx<'_>, accept_terminated: bool) -> Result<(), String> {
    if ctx.https {
        return Ok(());
    }
    if accept_terminated && ctx.trusted {
        let mut values = ctx
            .req
            .headers
            .get_all(crate::names::X_FORWARDED_PROTO)
            .iter();
        let first = values.next();
        if values.next().is_some() {
            return Err("Only one X-Forwarded-Proto header allowed".into());
        }
        if first
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        {
            return Ok(());
        }
    }
    Err("You must use HTTPS".into())
}

fn base64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A code challenge as Kong keeps it: base64url without padding when it decodes, else as
/// given.
fn normalise_challenge(c: &str) -> String {
    let std = c.replace('-', "+").replace('_', "/");
    let std = std.trim_end_matches('=');
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode(std) {
        Ok(b) => base64url(&b),
        Err(_) => c.to_string(),
    }
}

/// Kong's `encode_args`: keys sorted, values percent-encoded.
fn encode_args(m: &Params) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let enc = super::args::escape_uri;
    keys.into_iter()
        .filter_map(|k| {
            let v = match &m[k] {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                other => other.to_string(),
            };
            Some(format!("{}={}", enc(k), enc(&v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decode_args(s: &str) -> Params {
    let mut p = Params::new();
    for (k, v) in form_urlencoded::parse(s.as_bytes()) {
        p.entry(k.into_owned())
            .or_insert(Value::String(v.into_owned()));
    }
    p
}

/// `redirect_uri` with `params` merged into its query (or, for the implicit grant, its
/// fragment).
fn redirect_with(uri: &str, params: &Params, fragment: bool) -> String {
    let (before_fragment, old_fragment) = uri.split_once('#').unwrap_or((uri, ""));
    let (base, old_query) = before_fragment
        .split_once('?')
        .unwrap_or((before_fragment, ""));
    let merge = |old: &str| {
        let mut m = decode_args(old);
        for (k, v) in params {
            m.insert(k.clone(), v.clone());
        }
        encode_args(&m)
    };
    if fragment {
        let q = if old_query.is_empty() {
            String::new()
        } else {
            format!("?{old_query}")
        };
        format!("{base}{q}#{}", merge(old_fragment))
    } else {
        format!("{base}?{}", merge(old_query))
    }
}

impl Plugin for OAuth2 {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let path = ctx.req.uri.path();
        let path = path.strip_suffix('/').unwrap_or(path);
        let endpoint = if path.ends_with("/oauth2/token") {
            Some("token")
        } else if path.ends_with("/oauth2/authorize") {
            Some("authorization")
        } else {
            None
        };
        match endpoint {
            Some(name) if ctx.req.method != Method::POST => {
                let method = ctx.req.method.as_str();
                let description =
                    format!("The HTTP method {method} is invalid for the {name} endpoint");
                let www = format!(
                    "Bearer{} error=\"invalid_method\" error_description=\"{description}\"",
                    self.realm
                );
                let body = Value::Object(err("invalid_method", description));
                Flow::Respond(answer(405, &body, Some(&www)))
            }
            Some("token") => Flow::later(async move { Some(self.issue_token(ctx).await) }),
            Some(_) => Flow::later(async move { Some(self.authorize(ctx).await) }),
            None => Flow::later(self.check(ctx)),
        }
    }
}

/// What a token is issued with.
struct Issue<'a> {
    userid: Option<&'a str>,
    scope: Option<&'a str>,
    state: Option<&'a Value>,
    /// Whether it may come with a refresh token (not for client credentials or implicit).
    refresh: bool,
    /// The token a refresh replaces.
    existing: Option<&'a Entity>,
    /// A write that must succeed with it (an authorization code used up).
    first: Option<WriteOp>,
}

/// A client application as the endpoints read it.
struct Client {
    id: String,
    secret: String,
    hashed: bool,
    redirect_uris: Vec<String>,
    public: bool,
}

impl OAuth2 {
    fn client(&self, ctx: &Ctx<'_>, client_id: Option<&str>) -> Option<Client> {
        let c = ctx
            .identities
            .entry(&CREDENTIALS, client_id.filter(|c| !c.is_empty())?)?;
        let d = c.entity.doc();
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
        Some(Client {
            id: c.id.clone(),
            secret: s("client_secret").to_string(),
            hashed: d.get("hash_secret").and_then(Value::as_bool) == Some(true),
            redirect_uris: gantry_model::document::strings(d.get("redirect_uris")),
            public: s("client_type") == "public",
        })
    }

    /// An entity indexed under `kind`, or issued here lately; `None` when used up.
    fn lookup(&self, ctx: &Ctx<'_>, kind: &CredentialKind, value: &str) -> Option<Entity> {
        if self.recent.is_gone(value) {
            return None;
        }
        ctx.identities
            .entry(kind, value)
            .map(|c| c.entity.clone())
            .or_else(|| self.recent.find(kind.key, value, ctx.config_version))
    }

    fn scope(&self, p: &Params) -> Result<Option<String>, Params> {
        match (p.get("scope"), &self.scopes) {
            (Some(scope), Some(allowed)) => {
                let Some(scope) = scope.as_str() else {
                    return Err(err("invalid_scope", "scope must be a string"));
                };
                let mut out = Vec::new();
                for s in scope.split_whitespace() {
                    if !allowed.iter().any(|a| a == s) {
                        return Err(err("invalid_scope", format!("\"{s}\" is an invalid scope")));
                    }
                    out.push(s);
                }
                Ok((!out.is_empty()).then(|| out.join(" ")))
            }
            (None, _) if self.mandatory_scope => {
                Err(err("invalid_scope", "You must specify a scope"))
            }
            _ => Ok(None),
        }
    }

    fn requires_pkce(&self, client: &Client, used: bool) -> bool {
        used || (client.public && self.pkce != Pkce::None)
            || (!client.public && self.pkce == Pkce::Strict)
    }

    fn service_of(&self, ctx: &Ctx<'_>) -> Option<String> {
        (!self.global_credentials)
            .then(|| ctx.service_id.map(str::to_string))
            .flatten()
    }

    /// A token for `client`, written before it is answered (Kong's `generate_token`).
    async fn token(
        &self,
        ctx: &Ctx<'_>,
        client: &Client,
        issue: Issue<'_>,
    ) -> Result<Params, WriteError> {
        let Issue {
            userid,
            scope,
            state,
            refresh,
            existing,
            first,
        } = issue;
        let disable_refresh = !refresh;
        let now = gantry_model::unix_now();
        let ttl = (self.token_expiration > 0 && self.refresh_token_ttl > 0)
            .then_some(self.refresh_token_ttl);
        let mut ops: Vec<WriteOp> = first.into_iter().collect();
        let doc = match (existing, self.reuse_refresh_token) {
            (Some(old), true) => {
                // The same token (and refresh token) with a new access token and clock.
                let mut d = old.doc();
                d.insert(
                    "access_token".into(),
                    json!(gantry_model::document::random_token()),
                );
                d.insert("expires_in".into(), json!(self.token_expiration));
                d.insert("created_at".into(), json!(now));
                d.insert("ttl".into(), ttl.map_or(Value::Null, |t| json!(t)));
                ops.push(WriteOp::Delete {
                    entity: TOKENS.entity.into(),
                    id: old.id().to_string(),
                });
                d
            }
            _ => {
                let mut d = Map::new();
                d.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
                d.insert("created_at".into(), json!(now));
                if let Some(s) = self.service_of(ctx) {
                    d.insert("service".into(), json!({ "id": s }));
                }
                d.insert("credential".into(), json!({ "id": client.id }));
                d.insert("token_type".into(), json!("bearer"));
                d.insert("expires_in".into(), json!(self.token_expiration));
                d.insert(
                    "access_token".into(),
                    json!(gantry_model::document::random_token()),
                );
                if !disable_refresh && self.token_expiration > 0 {
                    let r = gantry_model::document::random_token();
                    d.insert("refresh_token".into(), json!(r));
                }
                if let Some(u) = userid {
                    d.insert("authenticated_userid".into(), json!(u));
                }
                if let Some(s) = scope {
                    d.insert("scope".into(), json!(s));
                }
                if let Some(t) = ttl {
                    d.insert("ttl".into(), json!(t));
                }
                d
            }
        };
        if let (Some(old), false) = (existing, self.reuse_refresh_token) {
            // The refresh token is used up with the token it came with.
            ops.push(WriteOp::Delete {
                entity: TOKENS.entity.into(),
                id: old.id().to_string(),
            });
        }
        ops.push(WriteOp::Insert {
            entity: TOKENS.entity.into(),
            doc: d_clean(&doc),
        });
        let version = self.writes.write(ops).await?;
        if let Some(old) = existing {
            let d = old.doc();
            let s = |k: &str| {
                d.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (access, refresh) = (s("access_token"), s("refresh_token"));
            if self.reuse_refresh_token {
                self.recent.gone(&[&access]);
            } else {
                self.recent.gone(&[&access, &refresh]);
            }
        }
        let entity = Entity::from(&doc);
        self.recent
            .issued(&["access_token", "refresh_token"], &entity, version);
        let mut out = Params::new();
        out.insert("access_token".into(), doc["access_token"].clone());
        out.insert("token_type".into(), json!("bearer"));
        if self.token_expiration > 0 {
            out.insert("expires_in".into(), json!(self.token_expiration));
        }
        if let Some(r) = doc.get("refresh_token").filter(|r| !r.is_null()) {
            out.insert("refresh_token".into(), r.clone());
        }
        if let Some(s) = state {
            out.insert("state".into(), s.clone());
        }
        Ok(out)
    }

    async fn authorize(&self, ctx: &mut Ctx<'_>) -> Response<ProxyBody> {
        let p = params(ctx).await;
        let state = p.get("state").cloned();
        let mut out = Params::new();
        let mut redirect: Option<String> = None;
        let mut implicit = false;
        if let Err(e) = https(ctx, self.accept_http_if_already_terminated) {
            out = err("access_denied", e);
        } else if param(&p, "provision_key") != Some(self.provision_key.as_str()) {
            out = err("invalid_provision_key", "Invalid provision_key");
        } else if param(&p, "authenticated_userid").is_none_or(|u| u.trim().is_empty()) {
            out = err(
                "invalid_authenticated_userid",
                "Missing authenticated_userid parameter",
            );
        } else {
            let response_type = param(&p, "response_type");
            if !((response_type == Some("code") && self.authorization_code)
                || (response_type == Some("token") && self.implicit))
            {
                out = err("unsupported_response_type", "Invalid response_type");
            }
            let scopes = match self.scope(&p) {
                Ok(s) => s,
                Err(e) => {
                    out = e;
                    None
                }
            };
            let client = self.client(ctx, param(&p, "client_id"));
            match &client {
                None => out = err("invalid_client", "Invalid client authentication"),
                Some(c) => {
                    let first = c.redirect_uris.first().cloned();
                    let asked = param(&p, "redirect_uri")
                        .map(str::to_string)
                        .or(first.clone());
                    if asked.as_ref().is_some_and(|a| c.redirect_uris.contains(a)) {
                        redirect = asked;
                    } else {
                        out = err(
                            "invalid_request",
                            "Invalid redirect_uri that does not match with any redirect_uri created with the application",
                        );
                        redirect = first;
                    }
                }
            }
            // PKCE: a challenge given is kept with the code; some clients must give one.
            let method = param(&p, "code_challenge_method");
            let challenge = param(&p, "code_challenge");
            let mut challenge_method = None;
            if method.is_some() && challenge.is_none() {
                out = err(
                    "invalid_request",
                    "code_challenge is required when code_method is present",
                );
            } else if method.is_some_and(|m| m != "S256" && m != "s256") {
                out = err(
                    "invalid_request",
                    "code_challenge_method is not supported, must be S256",
                );
            } else if let (Some(c), None) = (&client, challenge) {
                if self.requires_pkce(c, false) {
                    let kind = if c.public { "public" } else { "confidential" };
                    out = err(
                        "invalid_request",
                        format!("code_challenge is required for {kind} clients"),
                    );
                }
            } else if challenge.is_some() {
                challenge_method = Some("S256");
            }
            if !out.contains_key("error") {
                // Both checked above.
                let Some(client) = client else {
                    return super::error(500, "An unexpected error occurred");
                };
                let userid = param(&p, "authenticated_userid");
                if response_type == Some("code") {
                    let mut d = Map::new();
                    d.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
                    d.insert("created_at".into(), json!(gantry_model::unix_now()));
                    if let Some(s) = self.service_of(ctx) {
                        d.insert("service".into(), json!({ "id": s }));
                    }
                    d.insert("credential".into(), json!({ "id": client.id }));
                    let code = gantry_model::document::random_token();
                    d.insert("code".into(), json!(code));
                    d.insert("authenticated_userid".into(), json!(userid));
                    if let Some(s) = &scopes {
                        d.insert("scope".into(), json!(s));
                    }
                    if let Some(c) = challenge {
                        d.insert("challenge".into(), json!(normalise_challenge(c)));
                        d.insert("challenge_method".into(), json!(challenge_method));
                    }
                    d.insert("plugin".into(), json!({ "id": self.plugin_id }));
                    d.insert("ttl".into(), json!(CODE_TTL));
                    let op = WriteOp::Insert {
                        entity: CODES.entity.into(),
                        doc: d_clean(&d),
                    };
                    let version = match self.writes.write(vec![op]).await {
                        Ok(v) => v,
                        Err(e) => return unexpected(&e),
                    };
                    self.recent.issued(&["code"], &Entity::from(&d), version);
                    out.insert("code".into(), json!(code));
                } else {
                    match self
                        .token(
                            ctx,
                            &client,
                            Issue {
                                userid,
                                scope: scopes.as_deref(),
                                state: None,
                                refresh: false,
                                existing: None,
                                first: None,
                            },
                        )
                        .await
                    {
                        Ok(t) => {
                            out = t;
                            implicit = true;
                        }
                        Err(e) => return unexpected(&e),
                    }
                }
            }
        }
        if let Some(s) = state {
            out.insert("state".into(), s);
        }
        let status = if out.contains_key("error") { 400 } else { 200 };
        let body = match redirect {
            Some(uri) => json!({ "redirect_uri": redirect_with(&uri, &out, implicit) }),
            None => Value::Object(out),
        };
        answer(status, &body, None)
    }

    async fn issue_token(&self, ctx: &mut Ctx<'_>) -> Response<ProxyBody> {
        let p = params(ctx).await;
        let state = p.get("state").cloned();
        let mut out = Params::new();
        let mut www: Option<&str> = None;
        const BASIC: &str = "Basic realm=\"OAuth2.0\"";
        'grant: {
            if let Err(e) = https(ctx, self.accept_http_if_already_terminated) {
                out = err("access_denied", e);
                break 'grant;
            }
            let grant = param(&p, "grant_type");
            if !(matches!(grant, Some("authorization_code" | "refresh_token"))
                || (self.client_credentials && grant == Some("client_credentials"))
                || (self.password && grant == Some("password")))
            {
                out = err("unsupported_grant_type", "Invalid grant_type");
            }
            // The client: from the parameters, or HTTP Basic in the auth header.
            let (mut client_id, mut secret, mut from_header) = (None, None, false);
            if let (Some(id), Some(s)) = (param(&p, "client_id"), param(&p, "client_secret")) {
                (client_id, secret) = (Some(id.to_string()), Some(s.to_string()));
            } else if let Some(h) = ctx
                .req
                .headers
                .get(&self.auth_header)
                .and_then(|v| v.to_str().ok())
            {
                from_header = true;
                if let Some(b) = super::after_scheme(h, "basic", 0) {
                    if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                        let raw = String::from_utf8_lossy(&raw).to_string();
                        let mut parts = raw.split(':');
                        client_id = parts.next().map(str::to_string);
                        secret = parts.next().map(str::to_string);
                    }
                }
            } else if let Some(id) = param(&p, "client_id") {
                client_id = Some(id.to_string());
            }
            let client = self.client(ctx, client_id.as_deref());
            if grant != Some("client_credentials") {
                match &client {
                    Some(c) => {
                        let asked = param(&p, "redirect_uri")
                            .map(str::to_string)
                            .or_else(|| c.redirect_uris.first().cloned());
                        if !asked.is_some_and(|a| c.redirect_uris.contains(&a)) {
                            out = err(
                                "invalid_request",
                                "Invalid redirect_uri that does not match with any redirect_uri created with the application",
                            );
                        }
                    }
                    None => {
                        out = err("invalid_client", "Invalid client authentication");
                        if from_header {
                            www = Some(BASIC);
                        }
                    }
                }
            }
            if let Some(c) = &client {
                let given = secret.as_deref().unwrap_or_default();
                if !c.public {
                    let ok = if c.hashed {
                        gantry_model::secret::verify(given, &c.secret)
                    } else {
                        !c.secret.is_empty() && same(&c.secret, given)
                    };
                    if !ok {
                        out = err("invalid_client", "Invalid client authentication");
                        if from_header {
                            www = Some(BASIC);
                        }
                    }
                } else if !given.trim().is_empty() {
                    out = err(
                        "invalid_request",
                        "client_secret is disallowed for public clients",
                    );
                }
            }
            if out.contains_key("error") {
                break 'grant;
            }
            let service = self.service_of(ctx);
            let service_of = |e: &Entity| {
                e.get("service")
                    .and_then(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
            };
            let credential_of = |e: &Entity| {
                e.get("credential")
                    .and_then(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
            };
            let Some(client) = client else {
                out = err("invalid_client", "Invalid client authentication");
                break 'grant;
            };
            let userid = param(&p, "authenticated_userid");
            let issued = match grant {
                Some("authorization_code") => {
                    let code = param(&p, "code").and_then(|c| self.lookup(ctx, &CODES, c));
                    let invalid_code = || err("invalid_request", "Invalid code");
                    let Some(code) = code else {
                        out = invalid_code();
                        break 'grant;
                    };
                    let d = code.doc();
                    let expired = gantry_model::entities::expires_at(&d)
                        .is_some_and(|at| at <= gantry_model::unix_now());
                    if expired
                        || (service.is_some() && service != service_of(&code))
                        || credential_of(&code).as_deref() != Some(client.id.as_str())
                    {
                        out = invalid_code();
                        break 'grant;
                    }
                    let method = d.get("challenge_method").and_then(Value::as_str);
                    if self.requires_pkce(&client, method.is_some()) {
                        if let Some(e) = check_verifier(&p, d.get("challenge")) {
                            out = e;
                            break 'grant;
                        }
                    }
                    if self.global_credentials {
                        let plugin = d
                            .get("plugin")
                            .and_then(|x| x.get("id"))
                            .and_then(Value::as_str);
                        if plugin.is_some_and(|id| id != self.plugin_id) {
                            out = invalid_code();
                            break 'grant;
                        }
                    }
                    // The code is used up in the same write that makes the token: a code
                    // given twice, even to two nodes at once, makes one token.
                    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
                    let r = self
                        .token_with(
                            ctx,
                            &client,
                            s("authenticated_userid").as_deref(),
                            s("scope").as_deref(),
                            state.as_ref(),
                            &code,
                        )
                        .await;
                    match r {
                        Err(WriteError::Refused(_)) => {
                            out = invalid_code();
                            break 'grant;
                        }
                        other => other,
                    }
                }
                Some("client_credentials") | Some("password") => {
                    // The password grant always names a user, client credentials may: a user
                    // named takes the provision key. Only the password grant gets a refresh
                    // token.
                    let password = grant == Some("password");
                    if (password || userid.is_some())
                        && param(&p, "provision_key") != Some(self.provision_key.as_str())
                    {
                        out = err("invalid_provision_key", "Invalid provision_key");
                        break 'grant;
                    }
                    if password && userid.is_none_or(|u| u.trim().is_empty()) {
                        out = err(
                            "invalid_authenticated_userid",
                            "Missing authenticated_userid parameter",
                        );
                        break 'grant;
                    }
                    match self.scope(&p) {
                        Err(e) => {
                            out = e;
                            break 'grant;
                        }
                        Ok(scope) => {
                            self.token(
                                ctx,
                                &client,
                                Issue {
                                    userid,
                                    scope: scope.as_deref(),
                                    state: state.as_ref(),
                                    refresh: password,
                                    existing: None,
                                    first: None,
                                },
                            )
                            .await
                        }
                    }
                }
                _ => {
                    // refresh_token
                    let token =
                        param(&p, "refresh_token").and_then(|r| self.lookup(ctx, &REFRESH, r));
                    let Some(token) = token.filter(|t| {
                        // Its ttl is the refresh token's life.
                        gantry_model::entities::expires_at(&t.doc())
                            .is_none_or(|at| at > gantry_model::unix_now())
                            && (service.is_none() || service == service_of(t))
                    }) else {
                        out = err("invalid_request", "Invalid refresh_token");
                        break 'grant;
                    };
                    if credential_of(&token).as_deref() != Some(client.id.as_str()) {
                        out = err("invalid_client", "Invalid client authentication");
                        break 'grant;
                    }
                    let d = token.doc();
                    let scope = d.get("scope").and_then(Value::as_str);
                    if let Some(scope) = scope {
                        let allowed = self.scopes.as_deref().unwrap_or_default();
                        if scope
                            .split_whitespace()
                            .any(|s| !allowed.iter().any(|a| a == s))
                        {
                            out = err("invalid_scope", "Scope mismatch");
                            break 'grant;
                        }
                    }
                    let userid = d.get("authenticated_userid").and_then(Value::as_str);
                    let r = self
                        .token(
                            ctx,
                            &client,
                            Issue {
                                userid,
                                scope,
                                state: state.as_ref(),
                                refresh: true,
                                existing: Some(&token),
                                first: None,
                            },
                        )
                        .await;
                    match r {
                        Err(WriteError::Refused(_)) => {
                            out = err("invalid_request", "Invalid refresh_token");
                            break 'grant;
                        }
                        other => other,
                    }
                }
            };
            match issued {
                Ok(t) => out = t,
                Err(e) => return unexpected(&e),
            }
        }
        if let Some(s) = state {
            out.insert("state".into(), s);
        }
        let status = match (out.contains_key("error"), www) {
            (false, _) => 200,
            (true, Some(_)) => 401,
            (true, None) => 400,
        };
        answer(status, &Value::Object(out), www)
    }

    /// A token for an authorization code, the code deleted in the same write.
    async fn token_with(
        &self,
        ctx: &Ctx<'_>,
        client: &Client,
        userid: Option<&str>,
        scope: Option<&str>,
        state: Option<&Value>,
        code: &Entity,
    ) -> Result<Params, WriteError> {
        let delete = WriteOp::Delete {
            entity: CODES.entity.into(),
            id: code.id().to_string(),
        };
        let r = self
            .token(
                ctx,
                client,
                Issue {
                    userid,
                    scope,
                    state,
                    refresh: true,
                    existing: None,
                    first: Some(delete),
                },
            )
            .await;
        if r.is_ok() {
            if let Some(c) = code
                .get("code")
                .and_then(|c| c.as_str().map(str::to_string))
            {
                self.recent.gone(&[&c]);
            }
        }
        r
    }

    /// Check the token of a request, and identify its consumer (Kong's `do_authentication`,
    /// with `anonymous` its logical OR).
    async fn check(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        if self.anonymous.is_some() && ctx.credential.is_some() {
            ctx.req.headers.remove("x-authenticated-scope");
            ctx.req.headers.remove("x-authenticated-userid");
            return None;
        }
        match self.authenticate(ctx).await {
            Ok(()) => None,
            Err(refusal) => match &self.anonymous {
                None => Some(refusal),
                Some(a) => {
                    let r = super::fall_back(ctx, Some(a), || refusal);
                    ctx.req.headers.remove("x-authenticated-scope");
                    ctx.req.headers.remove("x-authenticated-userid");
                    r
                }
            },
        }
    }

    fn invalid_token(&self, description: &str) -> Response<ProxyBody> {
        let www = format!(
            "Bearer{} error=\"invalid_token\" error_description=\"The access token is invalid or has expired\"",
            self.realm
        );
        answer(
            401,
            &Value::Object(err("invalid_token", description)),
            Some(&www),
        )
    }

    async fn authenticate(&self, ctx: &mut Ctx<'_>) -> Result<(), Response<ProxyBody>> {
        const INVALID: &str = "The access token is invalid or has expired";
        let header = ctx
            .req
            .headers
            .get(&self.auth_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (token, in_header) = match header {
            Some(h) => {
                let parts: Vec<&str> = h.split_whitespace().collect();
                match parts[..] {
                    [scheme, t]
                        if scheme.eq_ignore_ascii_case("bearer")
                            || scheme.eq_ignore_ascii_case("token") =>
                    {
                        (Some(t.to_string()), true)
                    }
                    _ => (Some(h.clone()), false),
                }
            }
            None => {
                let p = params(ctx).await;
                (param(&p, "access_token").map(str::to_string), false)
            }
        };
        if self.hide_credentials {
            if in_header {
                ctx.req.headers.remove(&self.auth_header);
            } else {
                hide_parameter(ctx, "access_token");
            }
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            let www = format!("Bearer{}", self.realm);
            let body = Value::Object(err("invalid_request", "The access token is missing"));
            return Err(answer(401, &body, Some(&www)));
        };
        let Some(t) = self.lookup(ctx, &TOKENS, &token) else {
            return Err(self.invalid_token(INVALID));
        };
        let d = t.doc();
        let service = d
            .get("service")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str);
        if !self.global_credentials && service.is_none() {
            return Err(self.invalid_token(
                "The access token is global, but the current plugin is configured without 'global_credentials'",
            ));
        }
        if service.is_some_and(|s| Some(s) != ctx.service_id) {
            return Err(self.invalid_token(INVALID));
        }
        let expires_in = d.get("expires_in").and_then(Value::as_i64).unwrap_or(0);
        let created = d.get("created_at").and_then(Value::as_i64).unwrap_or(0);
        if expires_in > 0 && gantry_model::unix_now() - created > expires_in {
            return Err(self.invalid_token(INVALID));
        }
        let credential = d
            .get("credential")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(cred) = ctx.identities.entry_by_id(&CREDENTIALS, credential) else {
            return Err(self.invalid_token(INVALID));
        };
        let client_id = cred
            .entity
            .get("client_id")
            .and_then(|v| v.as_str().map(str::to_string));
        let Some(consumer) = ctx.identities.consumer(&cred.consumer_id).cloned() else {
            return Err(self.invalid_token(INVALID));
        };
        ctx.authenticate(consumer, client_id, false);
        let h = &mut ctx.req.headers;
        for (name, field) in [
            ("x-authenticated-scope", "scope"),
            ("x-authenticated-userid", "authenticated_userid"),
        ] {
            match d
                .get(field)
                .and_then(Value::as_str)
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                Some(v) => {
                    h.insert(name, v);
                }
                None => {
                    h.remove(name);
                }
            }
        }
        Ok(())
    }
}

/// A PKCE verifier against the code's challenge (Kong's `validate_pkce_verifier`).
fn check_verifier(p: &Params, challenge: Option<&Value>) -> Option<Params> {
    let Some(v) = p.get("code_verifier") else {
        return Some(err(
            "invalid_request",
            "code_verifier is required for PKCE authorization requests",
        ));
    };
    let Some(v) = v.as_str() else {
        return Some(err("invalid_request", "code_verifier is not a string"));
    };
    if !(43..=128).contains(&v.len()) {
        return Some(err(
            "invalid_request",
            "code_verifier must be between 43 and 128 characters",
        ));
    }
    let made = base64url(ring::digest::digest(&ring::digest::SHA256, v.as_bytes()).as_ref());
    if challenge.and_then(Value::as_str) != Some(made.as_str()) {
        return Some(err("invalid_grant", "Invalid code"));
    }
    None
}

/// Take a parameter out of the query string, and out of a form body (Kong's
/// `hide_credentials` for a token not given in the header).
fn hide_parameter(ctx: &mut Ctx<'_>, name: &str) {
    let form = ctx
        .req
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-www-form-urlencoded"));
    let from_body = ctx.req.method != Method::GET && form;
    super::args::hide(ctx, name, from_body);
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    let h = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let (a, b) = (h(a), h(b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A document without nulls, as written.
fn d_clean(d: &Map<String, Value>) -> Map<String, Value> {
    d.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
