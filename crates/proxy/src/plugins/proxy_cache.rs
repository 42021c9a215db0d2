//! proxy-cache, as Kong 3.9's with its `memory` strategy: responses to cacheable requests are
//! kept in the node's cache (Kong's `kong_db_cache` shared dict: one [`CacheStore`] shared by
//! every instance, bounded by `mem_cache_size`, least recently used entries evicted first) and
//! served from it until `cache_ttl` (or, with `cache_control`, the response's own TTL) passes.
//!
//! The cache key is Kong's: the sha256 (hex) of `prefix|METHOD|request|params|headers`, where
//! the prefix is `consumer_id:route_id`, `route_id` or `default`; `request` is nginx's
//! `$request` (the request line) cut at its first `?`, so `GET /a HTTP/1.1` without a query and
//! `GET /a` with one; params are every query argument sorted by name (or the
//! `vary_query_params`, in their order) and headers the `vary_headers`, as `name=value` joined
//! by `:` (a name given more than once: its values sorted, joined by `,`; an argument without a
//! value: its name alone).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use serde_json::{json, Map, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::{BodyFilter, Ctx, Descriptor, Flow, Instance, Plugin, Shared};
use crate::server::ProxyBody;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

/// The only shared dict a Gantry node has for the memory strategy.
const DICTIONARY: &str = "kong_db_cache";
/// The format of stored entries (Kong's `CACHE_VERSION`).
const CACHE_VERSION: i64 = 1;
/// Kong's `client_body_buffer_size` (8k): a larger request body is not kept with the entry
/// (`kong.request.get_raw_body()` gives none for a body nginx wrote to a file).
const REQ_BODY_KEPT: u64 = 8192;

fn schema() -> PluginSchema {
    PluginSchema::new(
        "proxy-cache",
        100,
        vec![
            Field::new(
                "response_code",
                Ty::Array {
                    elem: Box::new(int(100, 900)),
                    set: false,
                    len_min: Some(1),
                    len_max: None,
                },
            )
            .req()
            .def(json!([200, 301, 404])),
            Field::new(
                "request_method",
                array(one_of(&["HEAD", "GET", "POST", "PATCH", "PUT"])),
            )
            .req()
            .def(json!(["GET", "HEAD"])),
            Field::new("content_type", array(string()))
                .req()
                .def(json!(["text/plain", "application/json"])),
            Field::new("cache_ttl", integer()).def(json!(300)),
            Field::new("strategy", one_of(&["memory"])).req(),
            Field::new("cache_control", boolean())
                .req()
                .def(json!(false)),
            Field::new("ignore_uri_case", boolean()).def(json!(false)),
            Field::new("storage_ttl", integer()),
            Field::new(
                "memory",
                record(vec![Field::new("dictionary_name", string())
                    .req()
                    .def(json!(DICTIONARY))]),
            ),
            Field::new("vary_query_params", array(string())),
            Field::new("vary_headers", array(string())),
            Field::new(
                "response_headers",
                record(vec![
                    Field::new("age", boolean()).def(json!(true)),
                    Field::new("X-Cache-Status", boolean()).def(json!(true)),
                    Field::new("X-Cache-Key", boolean()).def(json!(true)),
                ]),
            ),
        ],
    )
    .any_protocol()
    .checks(|c, e| {
        // Kong's `gt = 0` on an integer.
        if c.get("cache_ttl")
            .and_then(Value::as_i64)
            .is_some_and(|t| t <= 0)
        {
            e.add("cache_ttl", "value must be greater than 0");
        }
        // Kong's custom entity check: the memory strategy needs a shared dict of that name.
        if c.get("strategy").and_then(Value::as_str) == Some("memory") {
            let name = c
                .get("memory")
                .and_then(|m| m.get("dictionary_name"))
                .and_then(Value::as_str)
                .unwrap_or(DICTIONARY);
            if name != DICTIONARY {
                e.add_entity(format!("missing shared dict '{name}'"));
            }
        }
    })
}

struct ProxyCache {
    response_code: Vec<i64>,
    request_method: Vec<String>,
    /// Each configured content type, parsed (one that does not parse matches nothing).
    content_type: Vec<Option<Mime>>,
    cache_ttl: i64,
    cache_control: bool,
    ignore_uri_case: bool,
    storage_ttl: Option<i64>,
    /// `None` (unset or empty): every query argument.
    vary_query_params: Option<Vec<String>>,
    /// `None` (unset or empty): no header.
    vary_headers: Option<Vec<String>>,
    age: bool,
    status_header: bool,
    key_header: bool,
    store: Arc<CacheStore>,
}

fn build(_: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let strings = |k: &str| super::conf_strings(c, k);
    let nonempty = |k: &str| Some(strings(k)).filter(|v| !v.is_empty());
    let flag = |k: &str| {
        c.get("response_headers")
            .and_then(|r| r.get(k))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    Ok(Arc::new(ProxyCache {
        response_code: c
            .get("response_code")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_else(|| vec![200, 301, 404]),
        request_method: strings("request_method"),
        content_type: strings("content_type")
            .iter()
            .map(|t| Mime::parse(t))
            .collect(),
        cache_ttl: c.get("cache_ttl").and_then(Value::as_i64).unwrap_or(300),
        cache_control: super::conf_bool(c, "cache_control", false),
        ignore_uri_case: super::conf_bool(c, "ignore_uri_case", false),
        storage_ttl: c.get("storage_ttl").and_then(Value::as_i64),
        vary_query_params: nonempty("vary_query_params"),
        vary_headers: nonempty("vary_headers"),
        age: flag("age"),
        status_header: flag("X-Cache-Status"),
        key_header: flag("X-Cache-Key"),
        store: shared.get::<CacheStore>(),
    }))
}

/// What access left for the response phases of a request whose response may be stored.
#[derive(Clone)]
struct Marked {
    key: String,
    /// The request had `Kong-Debug`: the diagnostic headers are set whatever the flags say.
    debug: bool,
    /// A HEAD request: its response has no body to wait for (nginx still runs the body
    /// filters once, so Kong stores it with an empty body).
    head: bool,
    req_body: Option<String>,
}

/// What header_filter hands the body filter: a cacheable response, its head as stored.
struct Pending {
    key: String,
    status: u16,
    headers: HeaderMap,
    res_ttl: f64,
    storage_ttl: f64,
    req_body: Option<String>,
}

static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
static X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");

impl ProxyCache {
    fn shows(&self, debug: bool, flag: bool) -> bool {
        debug || flag
    }

    fn cacheable_request(&self, method: &str, cc: &Directives) -> bool {
        if !self.request_method.iter().any(|m| m == method) {
            return false;
        }
        // Kong also tests `ngx.var.authorization`, a variable nginx does not have: it is never
        // set, so a request with `Authorization` is not refused for it (nor here).
        !(self.cache_control && (cc.has("no-store") || cc.has("no-cache")))
    }

    /// The response's TTL when it may be stored: `None` when it may not.
    fn cacheable_response(&self, response: &hyper::http::response::Parts) -> Option<f64> {
        if !self
            .response_code
            .contains(&i64::from(response.status.as_u16()))
        {
            return None;
        }
        let ct = response
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())?;
        let actual = Mime::parse(ct)?;
        if !self
            .content_type
            .iter()
            .flatten()
            .any(|expected| expected.matches(&actual))
        {
            return None;
        }
        if !self.cache_control {
            return Some(self.cache_ttl as f64);
        }
        let cc = Directives::parse(&joined(&response.headers, hyper::header::CACHE_CONTROL));
        if cc.has("private") || cc.has("no-store") || cc.has("no-cache") {
            return None;
        }
        let expires = response
            .headers
            .get_all(hyper::header::EXPIRES)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok());
        let ttl = resource_ttl(&cc, expires, std::time::SystemTime::now());
        (ttl > 0.0).then_some(ttl)
    }

    fn key(&self, ctx: &Ctx<'_>) -> String {
        let consumer = ctx.consumer.as_ref().map(|c| c.id.as_str());
        let mut uri = request_line(ctx.req);
        if self.ignore_uri_case {
            uri = uri.to_lowercase();
        }
        let query = query_args(ctx.req.uri.query().unwrap_or_default());
        let params = match &self.vary_query_params {
            None => {
                let names: Vec<&str> = query.keys().map(String::as_str).collect();
                vary_part(&query, &names)
            }
            Some(v) => vary_part(&query, &v.iter().map(String::as_str).collect::<Vec<_>>()),
        };
        let headers = match &self.vary_headers {
            None => String::new(),
            Some(v) => {
                let mut found = BTreeMap::new();
                for name in v {
                    let values: Vec<Option<String>> = ctx
                        .req
                        .headers
                        .get_all(name.replace('_', "-").to_ascii_lowercase().as_str())
                        .iter()
                        .map(|v| Some(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                        .collect();
                    if !values.is_empty() {
                        found.insert(name.clone(), values);
                    }
                }
                vary_part(&found, &v.iter().map(String::as_str).collect::<Vec<_>>())
            }
        };
        cache_key(
            consumer,
            ctx.route_id,
            ctx.req.method.as_str(),
            &uri,
            &params,
            &headers,
        )
    }

    fn hit(&self, cached: &Cached, key: &str, debug: bool) -> Response<ProxyBody> {
        let mut r = Response::new(
            Full::new(cached.body.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::from_u16(cached.status).unwrap_or(StatusCode::OK);
        let h = r.headers_mut();
        for (name, value) in &cached.headers {
            if overwritable(name) {
                h.append(name.clone(), value.clone());
            }
        }
        h.remove(hyper::header::AGE);
        h.remove(&X_CACHE_STATUS);
        h.remove(&X_CACHE_KEY);
        if self.shows(debug, self.age) {
            let age = (gantry_model::unix_now() - cached.timestamp).max(0);
            h.insert(hyper::header::AGE, HeaderValue::from(age));
        }
        if self.shows(debug, self.status_header) {
            h.insert(X_CACHE_STATUS.clone(), HeaderValue::from_static("Hit"));
        }
        if self.shows(debug, self.key_header) {
            if let Ok(v) = HeaderValue::from_str(key) {
                h.insert(X_CACHE_KEY.clone(), v);
            }
        }
        r
    }

    /// Mark the request for storing, with the `X-Cache-Status` given.
    /// Mark the request to be stored once answered, saying `status` (Miss, Refresh).
    fn mark(
        &self,
        ctx: &mut Ctx<'_>,
        key: String,
        debug: bool,
        req_body: Option<String>,
        status: &'static str,
    ) {
        if self.shows(debug, self.status_header) {
            ctx.response_headers
                .push((X_CACHE_STATUS.clone(), HeaderValue::from_static(status)));
        }
        let marked = Marked {
            key,
            debug,
            head: ctx.req.method == hyper::Method::HEAD,
            req_body,
        };
        ctx.state.insert(marked);
    }

    async fn access_async(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        let debug = ctx.req.headers.contains_key("kong-debug");
        let cc = Directives::parse(&joined(&ctx.req.headers, hyper::header::CACHE_CONTROL));
        if !self.cacheable_request(ctx.req.method.as_str(), &cc) {
            if self.shows(debug, self.status_header) {
                ctx.response_headers
                    .push((X_CACHE_STATUS.clone(), HeaderValue::from_static("Bypass")));
            }
            return None;
        }
        let key = self.key(ctx);
        if self.shows(debug, self.key_header) {
            if let Ok(v) = HeaderValue::from_str(&key) {
                ctx.response_headers.push((X_CACHE_KEY.clone(), v));
            }
        }
        let Some(cached) = self.store.get(&key) else {
            if self.cache_control && cc.has("only-if-cached") {
                // Kong exits with a bare 504, which its error handler answers as for any 504.
                return Some(super::error(504, "The upstream server is timing out"));
            }
            let req_body = request_body(ctx).await;
            self.mark(ctx, key, debug, req_body, "Miss");
            return None;
        };
        let age = (gantry_model::unix_now() - cached.timestamp) as f64;
        let refresh = if self.cache_control {
            cc.num("max-age").is_some_and(|m| age > m)
                || cc.num("max-stale").is_some_and(|m| age - cached.ttl > m)
                || cc.num("min-fresh").is_some_and(|m| cached.ttl - age < m)
        } else {
            // Entries may stay up to `storage_ttl`: none older than `cache_ttl` is served.
            age > self.cache_ttl as f64
        };
        if refresh {
            let req_body = cached.req_body.clone();
            self.mark(ctx, key, debug, req_body, "Refresh");
            return None;
        }
        // Kong's `kong.response.exit` replaces the headers access set with the entry's.
        ctx.response_headers
            .retain(|(n, _)| *n != X_CACHE_KEY && *n != X_CACHE_STATUS);
        Some(self.hit(&cached, &key, debug))
    }
}

/// The request body Kong keeps with an entry (`kong.request.get_raw_body()`): empty without
/// one, the body when it is small enough for nginx's buffer, else none.
async fn request_body(ctx: &mut Ctx<'_>) -> Option<String> {
    let h = &ctx.req.headers;
    let length = h
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = h.contains_key(hyper::header::TRANSFER_ENCODING);
    match (length, chunked) {
        (None | Some(0), false) => Some(String::new()),
        (Some(n), false) if n <= REQ_BODY_KEPT => ctx
            .body()
            .await
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

impl Plugin for ProxyCache {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::later(self.access_async(ctx))
    }

    fn header_filter_with(
        &self,
        response: &mut hyper::http::response::Parts,
        state: &mut hyper::http::Extensions,
    ) {
        // Not marked: not cacheable, or served from the cache.
        let Some(marked) = state.remove::<Marked>() else {
            return;
        };
        match self.cacheable_response(response) {
            Some(res_ttl) => {
                let storage_ttl = match self.storage_ttl {
                    Some(t) => t as f64,
                    None => res_ttl,
                };
                let pending = Pending {
                    key: marked.key,
                    status: response.status.as_u16(),
                    headers: detached(&response.headers),
                    res_ttl,
                    storage_ttl,
                    req_body: marked.req_body,
                };
                let status = response.status;
                if marked.head || status.is_informational() || matches!(status.as_u16(), 204 | 304)
                {
                    // No body follows (the proxy runs no body filter): stored as it is.
                    pending.store(&self.store, Bytes::new());
                } else {
                    response.extensions.insert(Arc::new(pending));
                }
            }
            None => {
                if self.shows(marked.debug, self.status_header) {
                    response
                        .headers
                        .insert(X_CACHE_STATUS.clone(), HeaderValue::from_static("Bypass"));
                }
            }
        }
    }

    fn body_filter(&self, response: &hyper::http::response::Parts) -> Option<Box<dyn BodyFilter>> {
        let pending = response.extensions.get::<Arc<Pending>>()?.clone();
        Some(Box::new(Collect {
            pending,
            store: self.store.clone(),
            chunks: Vec::new(),
            len: 0,
            dropped: false,
        }))
    }
}

/// Collects a cacheable response's body as it goes to the client, unchanged, and stores the
/// entry once it has all gone; a body larger than the cache can hold is let go, not stored.
struct Collect {
    pending: Arc<Pending>,
    store: Arc<CacheStore>,
    chunks: Vec<Bytes>,
    len: usize,
    dropped: bool,
}

impl BodyFilter for Collect {
    fn filter(&mut self, chunk: Bytes, last: bool) -> Bytes {
        if !self.dropped {
            self.len += chunk.len();
            if self.len > self.store.capacity() {
                self.dropped = true;
                self.chunks = Vec::new();
            } else if !chunk.is_empty() {
                self.chunks.push(chunk.clone());
            }
        }
        if last && !self.dropped {
            let mut body = Vec::with_capacity(self.len);
            for c in self.chunks.drain(..) {
                body.extend_from_slice(&c);
            }
            self.pending.store(&self.store, Bytes::from(body));
        }
        chunk
    }

    fn keeps_body(&self) -> bool {
        true
    }
}

impl Pending {
    /// Keep the response, with this body, for its storage TTL.
    fn store(&self, store: &CacheStore, body: Bytes) -> bool {
        let cached = Cached {
            status: self.status,
            headers: self.headers.clone(),
            body,
            timestamp: gantry_model::unix_now(),
            ttl: self.res_ttl,
            req_body: self.req_body.clone(),
        };
        store.put(&self.key, Arc::new(cached), self.storage_ttl)
    }
}

/// Headers Kong does not replay from an entry: hop-by-hop ones, `Content-Length`, and
/// `*ratelimit-remaining*`.
fn overwritable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailers"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) && !name.as_str().contains("ratelimit-remaining")
}

/// Every value of a header, joined by `, ` (as nginx gives a repeated `Cache-Control`).
fn joined(headers: &HeaderMap, name: HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// nginx's `$request` without its query: the method, the target up to its first `?`, and, when
/// there was no `?`, the protocol.
fn request_line(req: &hyper::http::request::Parts) -> String {
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string());
    let version = match req.version {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    match target.split_once('?') {
        Some((path, _)) => format!("{} {path}", req.method),
        None => format!("{} {target} {version}", req.method),
    }
}

/// A query string's arguments as nginx's `get_uri_args` gives them: decoded, by name, in
/// order; `None` for an argument without `=` (a flag).
fn query_args(q: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let mut m: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let decode = |s: &str| {
            form_urlencoded::parse(s.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default()
        };
        let (k, v) = match piece.split_once('=') {
            Some((k, v)) => (decode(k), Some(decode(v))),
            None => (decode(piece), None),
        };
        if k.is_empty() {
            continue;
        }
        m.entry(k).or_default().push(v);
    }
    m
}

/// Kong's `generate_key_from`: `name=value` for each of `names` present, `:`-joined; a name
/// given more than once has its values sorted and `,`-joined; a flag is its name alone.
fn vary_part(args: &BTreeMap<String, Vec<Option<String>>>, names: &[&str]) -> String {
    let mut out = Vec::new();
    for name in names {
        let Some(values) = args.get(*name) else {
            continue;
        };
        match values.as_slice() {
            [] => {}
            [None] => out.push((*name).to_string()),
            [Some(v)] => out.push(format!("{name}={v}")),
            many => {
                let mut v: Vec<&str> = many.iter().map(|v| v.as_deref().unwrap_or("")).collect();
                v.sort_unstable();
                out.push(format!("{name}={}", v.join(",")));
            }
        }
    }
    out.join(":")
}

/// Kong's cache key.
fn cache_key(
    consumer: Option<&str>,
    route: Option<&str>,
    method: &str,
    uri: &str,
    params: &str,
    headers: &str,
) -> String {
    let prefix = match (consumer, route) {
        (Some(c), Some(r)) => format!("{c}:{r}"),
        (_, Some(r)) => r.to_string(),
        _ => "default".to_string(),
    };
    let text = format!("{prefix}|{method}|{uri}|{params}|{headers}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A value of a directive header (`Cache-Control`), as Kong's `parse_directive_header` keeps
/// it: a number when it reads as one, else the text; `true` without a value.
#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Flag,
    Num(f64),
    Text(String),
}

#[derive(Debug, Default)]
struct Directives(HashMap<String, Directive>);

impl Directives {
    /// Each `,`-separated part: its name (lowercased, up to `=`, leading space dropped) and
    /// what follows `=`.
    fn parse(h: &str) -> Directives {
        let mut m = HashMap::new();
        for part in h.split(',').filter(|p| !p.is_empty()) {
            let part = part.trim_start_matches([' ', '\t', '\r', '\n', '\x0b', '\x0c']);
            let part = if part.is_empty() { " " } else { part };
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (part, None),
            };
            if name.is_empty() {
                continue;
            }
            let d = match value.filter(|v| !v.is_empty()) {
                None => Directive::Flag,
                Some(v) => match lua_number(v) {
                    Some(n) => Directive::Num(n),
                    None => Directive::Text(v.to_string()),
                },
            };
            m.insert(name.to_lowercase(), d);
        }
        Directives(m)
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn num(&self, name: &str) -> Option<f64> {
        match self.0.get(name)? {
            Directive::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// Lua's `tonumber` of a decimal text (surrounding space allowed).
fn lua_number(v: &str) -> Option<f64> {
    let t = v.trim();
    if t.is_empty() || t.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Kong's `calculate_resource_ttl`: `s-maxage`, else `max-age`, else what `Expires` leaves;
/// never below 0.
fn resource_ttl(cc: &Directives, expires: Option<&str>, now: std::time::SystemTime) -> f64 {
    let max_age = match cc.0.get("s-maxage").or_else(|| cc.0.get("max-age")) {
        Some(Directive::Num(n)) => Some(*n),
        // A value that is no number gives no TTL.
        Some(_) => Some(0.0),
        None => expires
            .and_then(|e| httpdate::parse_http_date(e.trim()).ok())
            .map(|at| match at.duration_since(now) {
                Ok(d) => d.as_secs() as f64,
                Err(_) => 0.0,
            }),
    };
    max_age.map_or(0.0, |m| m.max(0.0))
}

/// A media type as Kong's `parse_mime_type` reads it: type and subtype lowercased (`*` alone
/// is `*/*`), parameter names lowercased, values as written (quotes taken off).
#[derive(Debug, Clone, PartialEq)]
struct Mime {
    ty: String,
    subtype: String,
    params: HashMap<String, String>,
}

/// The headers with values of their own: a value sliced from a connection's read buffer, or
/// made in the request path's shared arena (`names::value_of`), would keep that whole buffer
/// alive for as long as the cache keeps the entry, unseen by its size accounting.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut own = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        own.set_sensitive(value.is_sensitive());
        out.append(name.clone(), own);
    }
    out
}

fn is_token(c: u8) -> bool {
    c > 31 && c < 127 && !b"()<>@,;:\\\"/[]?={} \t".contains(&c)
}

impl Mime {
    fn parse(s: &str) -> Option<Mime> {
        let b = s.as_bytes();
        let mut i = 0;
        let token = |i: &mut usize| {
            let start = *i;
            while *i < b.len() && is_token(b[*i]) {
                *i += 1;
            }
            (*i > start).then(|| s[start..*i].to_string())
        };
        let (ty, subtype) = if b.first() == Some(&b'*') && b.get(1) != Some(&b'/') {
            i = 1;
            ("*".to_string(), "*".to_string())
        } else {
            let t = token(&mut i)?;
            if b.get(i) != Some(&b'/') {
                return None;
            }
            i += 1;
            let st = token(&mut i)?;
            (t.to_lowercase(), st.to_lowercase())
        };
        let mut params = HashMap::new();
        loop {
            let save = i;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if b.get(i) != Some(&b';') {
                i = save;
                break;
            }
            i += 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let Some(name) = token(&mut i) else {
                i = save;
                break;
            };
            if b.get(i) != Some(&b'=') {
                i = save;
                break;
            }
            i += 1;
            let value = if b.get(i) == Some(&b'"') {
                i += 1;
                let start = i;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') => break,
                        Some(b'\\') if i + 1 < b.len() => i += 2,
                        Some(c) if *c < 32 || *c == 127 => return None,
                        Some(_) => i += 1,
                    }
                }
                let v = s[start..i].to_string();
                i += 1;
                v
            } else {
                match token(&mut i) {
                    Some(v) => v,
                    None => {
                        i = save;
                        break;
                    }
                }
            };
            params.insert(name.to_lowercase(), value);
        }
        (i == b.len()).then_some(Mime {
            ty,
            subtype,
            params,
        })
    }

    /// Whether a response of type `actual` matches this configured type: type and subtype
    /// equal or `*`, and exactly the same parameters.
    fn matches(&self, actual: &Mime) -> bool {
        (self.ty == "*" || self.ty == actual.ty)
            && (self.subtype == "*" || self.subtype == actual.subtype)
            && self.params.len() == actual.params.len()
            && self
                .params
                .iter()
                .all(|(k, v)| actual.params.get(k) == Some(v))
    }
}

/// A stored response.
#[derive(Debug)]
pub struct Cached {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    /// When it was stored (Unix seconds).
    timestamp: i64,
    /// Its TTL: the resource's under `cache_control`, else `cache_ttl`.
    ttl: f64,
    req_body: Option<String>,
}

impl Cached {
    /// The entry as Kong stores it, and as `GET /proxy-cache/{key}` returns it.
    pub fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for name in self.headers.keys() {
            let values: Vec<Value> = self
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let v = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            headers.insert(name.as_str().to_string(), v);
        }
        let ttl = if self.ttl.fract() == 0.0 {
            json!(self.ttl as i64)
        } else {
            json!(self.ttl)
        };
        let mut v = json!({
            "status": self.status,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
            "body_len": self.body.len(),
            "timestamp": self.timestamp,
            "ttl": ttl,
            "version": CACHE_VERSION,
        });
        if let Some(b) = &self.req_body {
            v["req_body"] = json!(b);
        }
        v
    }

    /// What it takes of the cache's bytes.
    fn size(&self, key: &str) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 8)
            .sum();
        key.len()
            + self.body.len()
            + headers
            + self.req_body.as_ref().map_or(0, String::len)
            + ENTRY_OVERHEAD
    }
}

/// What an entry costs beyond its key, body and headers (its JSON's other fields, the index).
const ENTRY_OVERHEAD: usize = 160;

/// The size of the cache when `mem_cache_size` is not set (Kong's default, `128m`).
pub const DEFAULT_CAPACITY: usize = 128 << 20;

/// The node's proxy-cache entries (Kong's `kong_db_cache` shared dict): shared by every
/// proxy-cache instance and every configuration, at most `capacity` bytes, the least recently
/// used entry evicted to make room, each gone at its storage TTL. Each operation holds its
/// lock for one map operation, no I/O.
pub struct CacheStore {
    capacity: AtomicUsize,
    inner: Mutex<Lru>,
}

impl Default for CacheStore {
    fn default() -> CacheStore {
        CacheStore {
            capacity: AtomicUsize::new(DEFAULT_CAPACITY),
            inner: Mutex::new(Lru::default()),
        }
    }
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, Slot>,
    /// Use order: the tick of each entry's last use to its key, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

struct Slot {
    value: Arc<Cached>,
    /// `None`: kept until evicted or purged (a storage TTL of 0).
    expires: Option<Instant>,
    used: u64,
    size: usize,
}

impl Lru {
    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.used);
        self.bytes -= slot.size;
        Some(slot)
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.entries.get_mut(key) {
            self.order.remove(&slot.used);
            slot.used = tick;
            self.order.insert(tick, key.to_string());
        }
    }
}

impl CacheStore {
    /// The most bytes kept (Kong's `mem_cache_size`); set when the node starts.
    pub fn set_capacity(&self, bytes: usize) {
        self.capacity.store(bytes, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry under `key`, now the most recently used.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        let mut lru = self.lock();
        let slot = lru.entries.get(key)?;
        if slot.expires.is_some_and(|at| at <= Instant::now()) {
            lru.remove(key);
            return None;
        }
        let value = slot.value.clone();
        lru.touch(key);
        Some(value)
    }

    /// Keep `value` under `key` for `ttl` seconds (0: until evicted), evicting the least
    /// recently used entries to make room; false when it cannot be kept (larger than the
    /// cache, or a negative TTL).
    pub fn put(&self, key: &str, value: Arc<Cached>, ttl: f64) -> bool {
        if ttl < 0.0 || !ttl.is_finite() {
            return false;
        }
        let size = value.size(key);
        let capacity = self.capacity();
        if size > capacity {
            return false;
        }
        let expires = (ttl > 0.0).then(|| Instant::now() + Duration::from_secs_f64(ttl));
        let mut lru = self.lock();
        lru.remove(key);
        while lru.bytes + size > capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(slot) = lru.entries.remove(&oldest) {
                lru.bytes -= slot.size;
            }
        }
        lru.tick += 1;
        let used = lru.tick;
        lru.order.insert(used, key.to_string());
        lru.bytes += size;
        lru.entries.insert(
            key.to_string(),
            Slot {
                value,
                expires,
                used,
                size,
            },
        );
        true
    }

    /// Take the entry under `key` out; whether there was a live one.
    pub fn purge(&self, key: &str) -> bool {
        let mut lru = self.lock();
        lru.remove(key)
            .is_some_and(|s| s.expires.is_none_or(|at| at > Instant::now()))
    }

    /// Take every entry out.
    pub fn flush(&self) {
        let mut lru = self.lock();
        *lru = Lru::default();
    }

    /// The bytes the entries take.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(s: &str) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_key_is_kongs() {
        assert_eq!(
            cache_key(None, None, "GET", "GET /a HTTP/1.1", "", ""),
            sha256_hex("default|GET|GET /a HTTP/1.1||")
        );
        assert_eq!(
            cache_key(Some("c"), Some("r"), "GET", "GET /a", "x=1", "h=v"),
            sha256_hex("c:r|GET|GET /a|x=1|h=v")
        );
        assert_eq!(
            cache_key(Some("c"), None, "HEAD", "u", "", ""),
            sha256_hex("default|HEAD|u||")
        );
        let q = query_args("b=2&a=1&flag&b=1&e=&c=%20x+y");
        let names: Vec<&str> = q.keys().map(String::as_str).collect();
        assert_eq!(vary_part(&q, &names), "a=1:b=1,2:c= x y:e=:flag");
        assert_eq!(vary_part(&q, &["c", "zz", "a"]), "c= x y:a=1");
    }

    #[test]
    fn the_request_line_is_cut_at_the_query() {
        let req = |uri: &str| {
            hyper::Request::builder()
                .uri(uri)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(request_line(&req("/a/B")), "GET /a/B HTTP/1.1");
        assert_eq!(request_line(&req("/a?x=1")), "GET /a");
    }

    #[test]
    fn mime_types_match_as_kong_matches_them() {
        let m = |s: &str| Mime::parse(s);
        let ok = |exp: &str, act: &str| m(exp).unwrap().matches(&m(act).unwrap());
        assert!(ok("application/json", "Application/JSON"));
        assert!(ok("text/*", "text/html"));
        assert!(ok("*/*", "image/png"));
        assert!(ok("*", "image/png"));
        assert!(ok("text/plain; charset=utf-8", "text/plain;Charset=utf-8"));
        assert!(!ok("text/plain", "text/plain; charset=utf-8"));
        assert!(!ok("text/plain; charset=utf-8", "text/plain"));
        assert!(!ok(
            "text/plain; charset=UTF-8",
            "text/plain; charset=utf-8"
        ));
        assert!(ok("text/plain; a=\"b c\"", "text/plain; a=\"b c\""));
        assert!(!ok("application/json", "application/problem+json"));
        assert_eq!(m("text/plain "), None);
        assert_eq!(m("text"), None);
        assert_eq!(m(""), None);
    }

    #[test]
    fn directives_parse_as_kong_parses_them() {
        let d = Directives::parse("No-Store, max-age=60 ,s-maxage=\"x\", private");
        assert!(d.has("no-store"));
        assert!(d.has("private"));
        assert_eq!(d.num("max-age"), Some(60.0));
        assert_eq!(d.0.get("s-maxage"), Some(&Directive::Text("\"x\"".into())));
        assert!(!d.has("no-cache"));
        let now = std::time::SystemTime::now();
        assert_eq!(
            resource_ttl(&Directives::parse("max-age=30"), None, now),
            30.0
        );
        assert_eq!(
            resource_ttl(&Directives::parse("max-age=30, s-maxage=5"), None, now),
            5.0
        );
        assert_eq!(
            resource_ttl(&Directives::parse("max-age=-3"), None, now),
            0.0
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let ttl = resource_ttl(&Directives::parse("public"), Some(&later), now);
        assert!((98.0..=100.0).contains(&ttl), "{ttl}");
        assert_eq!(resource_ttl(&Directives::parse(""), None, now), 0.0);
    }

    fn entry(body: usize) -> Arc<Cached> {
        Arc::new(Cached {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            timestamp: 0,
            ttl: 10.0,
            req_body: None,
        })
    }

    #[test]
    fn the_store_is_bounded_in_bytes_and_evicts_the_least_recently_used() {
        let s = CacheStore::default();
        let one = entry(1000).size("k1");
        s.set_capacity(one * 3);
        assert!(s.put("k1", entry(1000), 60.0));
        assert!(s.put("k2", entry(1000), 60.0));
        assert!(s.put("k3", entry(1000), 60.0));
        assert_eq!(s.bytes(), one * 3);
        // k1 used: k2 is now the least recently used, and goes for k4.
        assert!(s.get("k1").is_some());
        assert!(s.put("k4", entry(1000), 60.0));
        assert!(s.get("k2").is_none());
        assert!(s.get("k1").is_some() && s.get("k3").is_some() && s.get("k4").is_some());
        assert!(s.bytes() <= s.capacity());
        // Larger than the whole cache: not kept, nothing evicted.
        assert!(!s.put("big", entry(one * 3), 60.0));
        assert!(s.get("k1").is_some());
        // Replacing an entry counts its bytes once.
        assert!(s.put("k1", entry(1000), 60.0));
        assert_eq!(s.bytes(), one * 3);
        assert!(s.purge("k1"));
        assert!(!s.purge("k1"));
        s.flush();
        assert_eq!(s.bytes(), 0);
        assert!(s.get("k3").is_none());
    }

    #[test]
    fn entries_expire_at_their_storage_ttl() {
        let s = CacheStore::default();
        assert!(s.put("a", entry(1), 0.05));
        assert!(s.put("b", entry(1), 0.0));
        assert!(!s.put("c", entry(1), -1.0));
        assert!(s.get("a").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get("a").is_none());
        assert!(s.get("b").is_some(), "a TTL of 0 never expires");
    }

    #[test]
    fn the_stored_json_is_kongs() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let c = Cached {
            status: 200,
            headers,
            body: Bytes::from_static(b"hi"),
            timestamp: 7,
            ttl: 300.0,
            req_body: Some(String::new()),
        };
        assert_eq!(
            c.to_json(),
            json!({"status": 200, "headers": {"content-type": "text/plain", "x-a": ["1", "2"]},
                   "body": "hi", "body_len": 2, "timestamp": 7, "ttl": 300, "version": 1,
                   "req_body": ""})
        );
    }
}
