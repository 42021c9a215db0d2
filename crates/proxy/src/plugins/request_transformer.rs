//! request-transformer, as Kong 3.9's: the request's method, path, headers, query string and
//! body (JSON, form-encoded, multipart) changed on the way upstream by `remove`, `rename`,
//! `replace`, `add` and `append`, in that order; `http_method`; `replace.uri`.
//!
//! Values may hold Kong's templates, rendered against the request as the client sent it:
//! `$(headers.NAME)` (also `headers["NAME"]`; `_` stands for `-`), `$(query_params.NAME)`,
//! `$(uri_captures.NAME)` and `$(uri_captures[N])` (`0`: the whole match), alternatives joined
//! by `or`, and quoted literals (`$('$(not a template)')` escapes one, as in Kong). An absent
//! value renders empty; a header sent several times renders its values joined by `, `.
//! Kong evaluates templates as Lua; Gantry runs no Lua, so any other expression is refused when
//! the plugin is written, naming the field.
//!
//! The head (method, path, headers, query string) changes in the access phase. Body operations,
//! and a form body moved into the query string by `http_method` GET, HEAD or TRACE, read the
//! whole body (up to the proxy's body limit) after the access phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::args::escape_uri;
use super::{error, Ctx, Descriptor, Flow, Instance, Plugin, Shared, UpstreamHost, UpstreamPath};

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

// ---- templates ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Headers,
    Query,
    Captures,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Literal(String),
    Var(Source, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// Alternatives joined by `or`: the first present one.
    Expr(Vec<Term>),
}

/// A value, plain or with templates.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

/// Why a template is not one Gantry renders.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TemplateError {
    #[error("Gantry renders $(headers.NAME), $(headers[\"NAME\"]), $(query_params.NAME), $(uri_captures.NAME), $(uri_captures[N]) and quoted literals, joined by 'or'")]
    Unsupported,
    #[error("unfinished string")]
    Unfinished,
}

impl Template {
    fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("$(") {
            // Balanced parentheses, as Lua's `%b()`.
            let open = at + 1;
            let mut depth = 0usize;
            let mut close = None;
            for (i, b) in rest.bytes().enumerate().skip(open) {
                match b {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(close) = close else {
                break;
            };
            text.push_str(&rest[..at]);
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Expr(parse_expr(&rest[open + 1..close])?));
            rest = &rest[close + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    fn uses(&self, src: Source) -> bool {
        self.0.iter().any(|p| match p {
            Piece::Expr(terms) => terms
                .iter()
                .any(|t| matches!(t, Term::Var(s, _) if *s == src)),
            Piece::Text(_) => false,
        })
    }

    fn render(&self, env: &Env<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Expr(terms) => {
                    if let Some(v) = terms.iter().find_map(|t| env.value(t)) {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }
}

/// One expression: `term (or term)*`.
fn parse_expr(src: &str) -> Result<Vec<Term>, TemplateError> {
    let toks = tokens(src)?;
    let mut terms = Vec::new();
    let mut i = 0;
    loop {
        let (term, next) = parse_term(&toks, i)?;
        terms.push(term);
        i = next;
        match toks.get(i) {
            None => return Ok(terms),
            Some(Tok::Ident(w)) if w == "or" => i += 1,
            Some(_) => return Err(TemplateError::Unsupported),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(String),
    Dot,
    Open,
    Close,
}

fn tokens(src: &str) -> Result<Vec<Tok>, TemplateError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'.' => {
                out.push(Tok::Dot);
                i += 1;
            }
            b'[' => {
                out.push(Tok::Open);
                i += 1;
            }
            b']' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'\'' | b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(TemplateError::Unfinished),
                        Some(&q) if q == c => break,
                        Some(b'\\') => {
                            match b.get(i + 1) {
                                Some(b'n') => s.push(b'\n'),
                                Some(b't') => s.push(b'\t'),
                                Some(&e) => s.push(e),
                                None => return Err(TemplateError::Unfinished),
                            }
                            i += 1;
                        }
                        Some(&x) => s.push(x),
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Str(String::from_utf8_lossy(&s).into_owned()));
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Int(src[start..i].to_string()));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Ident(src[start..i].to_string()));
            }
            _ => return Err(TemplateError::Unsupported),
        }
    }
    Ok(out)
}

fn parse_term(toks: &[Tok], i: usize) -> Result<(Term, usize), TemplateError> {
    match toks.get(i) {
        Some(Tok::Str(s)) => Ok((Term::Literal(s.clone()), i + 1)),
        Some(Tok::Ident(w)) => {
            let src = match w.as_str() {
                "headers" => Source::Headers,
                "query_params" => Source::Query,
                "uri_captures" => Source::Captures,
                _ => return Err(TemplateError::Unsupported),
            };
            match (toks.get(i + 1), toks.get(i + 2), toks.get(i + 3)) {
                (Some(Tok::Dot), Some(Tok::Ident(n)), _) => Ok((Term::Var(src, n.clone()), i + 3)),
                (Some(Tok::Open), Some(Tok::Str(n) | Tok::Int(n)), Some(Tok::Close)) => {
                    Ok((Term::Var(src, n.clone()), i + 4))
                }
                _ => Err(TemplateError::Unsupported),
            }
        }
        _ => Err(TemplateError::Unsupported),
    }
}

/// What templates read: the request as the client sent it.
struct Env<'a> {
    headers: &'a HeaderMap,
    query: &'a [(String, Option<String>)],
    captures: &'a [(String, String)],
}

impl Env<'_> {
    fn value(&self, t: &Term) -> Option<String> {
        match t {
            Term::Literal(s) => Some(s.clone()),
            Term::Var(Source::Headers, n) => {
                // As OpenResty's header table: any case, `_` for `-`.
                let name = n.to_ascii_lowercase().replace('_', "-");
                let all: Vec<&str> = self
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!all.is_empty()).then(|| all.join(", "))
            }
            Term::Var(Source::Query, n) => self
                .query
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone().unwrap_or_else(|| "true".into())),
            Term::Var(Source::Captures, n) => self
                .captures
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone()),
        }
    }
}

// ---- configuration ----

/// An entry `name:value`, split as Kong does (`^([^:]+):*(.-)$`): the value, when not empty.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    value: Option<Template>,
}

fn split(item: &str) -> (&str, &str) {
    match item.find(':') {
        Some(i) => (&item[..i], item[i..].trim_start_matches(':')),
        None => (item, ""),
    }
}

#[derive(Default, Clone)]
struct Ops {
    remove: Vec<Entry>,
    rename: Vec<Entry>,
    replace: Vec<Entry>,
    add: Vec<Entry>,
    append: Vec<Entry>,
}

impl Ops {
    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
    fn all(&self) -> impl Iterator<Item = &Entry> {
        self.remove
            .iter()
            .chain(&self.rename)
            .chain(&self.replace)
            .chain(&self.add)
            .chain(&self.append)
    }
}

struct RequestTransformer {
    method: Option<hyper::Method>,
    uri: Option<Template>,
    headers: Ops,
    query: Ops,
    body: Ops,
    /// Whether templates read the client's headers (kept before they change).
    reads_headers: bool,
    /// Whether the client's query string and the route's captures are read: only then are
    /// they copied for the request.
    reads_query: bool,
    reads_captures: bool,
}

const GROUPS: [&str; 5] = ["remove", "rename", "replace", "add", "append"];

fn schema() -> PluginSchema {
    let group = |with_uri: bool| {
        let mut fields: Vec<Field> = ["body", "headers", "querystring"]
            .iter()
            .map(|f| Field::new(f, s_arr()).req().def(json!([])))
            .collect();
        if with_uri {
            fields.push(Field::new("uri", string()));
        }
        record(fields)
    };
    PluginSchema::new(
        "request-transformer",
        801,
        vec![
            Field::new("http_method", string()),
            Field::new("remove", group(false)),
            Field::new("rename", group(false)),
            Field::new("replace", group(true)),
            Field::new("add", group(false)),
            Field::new("append", group(false)),
        ],
    )
    .any_protocol()
    .checks(|c, e| {
        if let Some(m) = c.get("http_method").and_then(Value::as_str) {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                e.add("http_method", format!("invalid value: {m}"));
            }
        }
        for g in GROUPS {
            let mut group_errs = Map::new();
            for list in ["body", "headers", "querystring"] {
                let items = gantry_model::document::strings(c.get(g).and_then(|x| x.get(list)));
                let mut errs: Vec<Value> = Vec::new();
                for item in &items {
                    errs.push(match check_item(g, list, item) {
                        Some(m) => Value::String(m),
                        None => Value::Null,
                    });
                }
                if errs.iter().any(|v| !v.is_null()) {
                    while errs.last().is_some_and(Value::is_null) {
                        errs.pop();
                    }
                    group_errs.insert(list.to_string(), Value::Array(errs));
                }
            }
            if !group_errs.is_empty() {
                e.0.insert(g.to_string(), Value::Object(group_errs));
            }
        }
    })
}

/// Kong's header name rule (`kong.tools.http.validate_header_name`).
fn header_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Kong's check of one entry of a group's list, with its message.
fn check_item(group: &str, list: &str, item: &str) -> Option<String> {
    let (name, value) = split(item);
    if list == "headers" {
        if group != "remove" && !item.contains(':') {
            return Some(format!("invalid value: {item}"));
        }
        if !header_name_ok(name) {
            return Some(format!("'{name}' is not a valid header"));
        }
        if group == "rename" && !header_name_ok(value) {
            return Some(format!("'{value}' is not a valid header"));
        }
        return None;
    }
    if group == "remove" {
        return None;
    }
    if value.is_empty() {
        return Some(format!("key '{name}' has no value"));
    }
    Template::parse(value)
        .err()
        .map(|e| format!("value '{value}' is not in supported format, error:{e}"))
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let ops = |list: &str| -> Result<Ops, CompileError> {
        let mut o = Ops::default();
        for g in GROUPS {
            let items = gantry_model::document::strings(c.get(g).and_then(|x| x.get(list)));
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                let (name, value) = split(&item);
                let value = if value.is_empty() || g == "remove" {
                    None
                } else {
                    Some(Template::parse(value).map_err(|e| {
                        CompileError::field(
                            &format!("{g}.{list}"),
                            format!("value '{value}' is not in supported format, error:{e}"),
                        )
                    })?)
                };
                entries.push(Entry {
                    name: name.to_string(),
                    value,
                });
            }
            match g {
                "remove" => o.remove = entries,
                "rename" => o.rename = entries,
                "replace" => o.replace = entries,
                "add" => o.add = entries,
                _ => o.append = entries,
            }
        }
        Ok(o)
    };
    let headers = ops("headers")?;
    let query = ops("querystring")?;
    let body = ops("body")?;
    let uri = match c
        .get("replace")
        .and_then(|r| r.get("uri"))
        .and_then(Value::as_str)
    {
        Some(u) if !u.is_empty() => Some(Template::parse(u).map_err(|e| {
            CompileError::field(
                "replace.uri",
                format!("value '{u}' is not in supported format, error:{e}"),
            )
        })?),
        _ => None,
    };
    let method = match c.get("http_method").and_then(Value::as_str) {
        Some(m) => Some(
            hyper::Method::from_bytes(m.as_bytes())
                .map_err(|_| CompileError::field("http_method", format!("invalid value: {m}")))?,
        ),
        None => None,
    };
    let reads = |src: Source| {
        uri.iter().any(|t| t.uses(src))
            || [&headers, &query, &body]
                .iter()
                .flat_map(|o| o.all())
                .any(|e| e.value.as_ref().is_some_and(|t| t.uses(src)))
    };
    let (reads_headers, reads_captures) = (reads(Source::Headers), reads(Source::Captures));
    // The query string is read to change it, or by templates.
    let reads_query = !query.is_empty() || reads(Source::Query);
    Ok(Arc::new(RequestTransformer {
        method,
        uri,
        headers,
        query,
        body,
        reads_headers,
        reads_query,
        reads_captures,
    }))
}

// ---- the request ----

/// The client's request as templates read it, kept from the access phase for the body.
#[derive(Clone)]
struct Original {
    headers: HeaderMap,
    query: Vec<(String, Option<String>)>,
    captures: Vec<(String, String)>,
}

/// A query string or form body as Kong's tables hold it: values by name, in sorted order (as
/// Kong encodes them); `None` is a flag without `=`.
type Args = BTreeMap<String, Vec<Option<String>>>;

fn decode_pairs(s: &str, plus_is_space: bool) -> Vec<(String, Option<String>)> {
    let dec = |x: &str| {
        let x = if plus_is_space {
            std::borrow::Cow::Owned(x.replace('+', " "))
        } else {
            std::borrow::Cow::Borrowed(x)
        };
        percent_decode(&x)
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), Some(dec(v))),
            None => (dec(p), None),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ngx.escape_uri`: everything but letters, digits and `-._~` percent-encoded.
fn to_args(pairs: Vec<(String, Option<String>)>) -> Args {
    let mut a = Args::new();
    for (k, v) in pairs {
        a.entry(k).or_default().push(v);
    }
    a
}

fn encode_args(a: &Args) -> String {
    let mut parts = Vec::new();
    for (k, vs) in a {
        for v in vs {
            parts.push(match v {
                Some(v) => format!("{}={}", escape_uri(k), escape_uri(v)),
                None => escape_uri(k),
            });
        }
    }
    parts.join("&")
}

/// Kong's operations on a table of arguments; whether any changed it.
fn transform_args(ops: &Ops, a: &mut Args, env: &Env<'_>, has_body: bool) -> bool {
    let mut changed = false;
    if has_body {
        for e in &ops.remove {
            a.remove(&e.name);
            changed = true;
        }
        for e in &ops.rename {
            let Some(new) = e.value.as_ref().map(|t| t.render(env)) else {
                continue;
            };
            if new != e.name {
                if let Some(v) = a.remove(&e.name) {
                    a.insert(new, v);
                    changed = true;
                }
            }
        }
        for e in &ops.replace {
            if let (Some(t), Some(slot)) = (&e.value, a.get_mut(&e.name)) {
                *slot = vec![Some(t.render(env))];
                changed = true;
            }
        }
    }
    for e in &ops.add {
        if let Some(t) = &e.value {
            if !a.contains_key(&e.name) {
                a.insert(e.name.clone(), vec![Some(t.render(env))]);
                changed = true;
            }
        }
    }
    for e in &ops.append {
        if let Some(t) = &e.value {
            a.entry(e.name.clone())
                .or_default()
                .push(Some(t.render(env)));
            changed = true;
        }
    }
    changed
}

fn set_query(req: &mut hyper::http::request::Parts, query: &str) {
    let path = req.uri.path().to_string();
    let pq = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut p = req.uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        p.path_and_query = Some(pq);
        if let Ok(u) = hyper::Uri::from_parts(p) {
            req.uri = u;
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Json,
    Multipart,
    Form,
}

fn kind_of(headers: &HeaderMap) -> Option<Kind> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.to_ascii_lowercase();
    if ct.contains("application/json") {
        Some(Kind::Json)
    } else if ct.contains("multipart/form-data") {
        Some(Kind::Multipart)
    } else if ct.contains("application/x-www-form-urlencoded") {
        Some(Kind::Form)
    } else {
        None
    }
}

impl RequestTransformer {
    fn transform_headers(&self, ctx: &mut Ctx<'_>, env: &Env<'_>) {
        let h = &mut ctx.req.headers;
        let name = |n: &str| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
        let value = |t: &Template| HeaderValue::from_str(&t.render(env)).ok();
        for e in &self.headers.remove {
            if let Some(n) = name(&e.name).filter(|n| *n != header::HOST) {
                h.remove(n);
            }
        }
        for e in &self.headers.rename {
            let (Some(old), Some(new)) = (
                name(&e.name),
                e.value.as_ref().and_then(|t| name(&t.render(env))),
            ) else {
                continue;
            };
            if old == new || old == header::HOST || new == header::HOST {
                continue;
            }
            let vals: Vec<HeaderValue> = h.get_all(&old).iter().cloned().collect();
            if vals.is_empty() {
                continue;
            }
            h.remove(&old);
            h.remove(&new);
            for v in vals {
                h.append(new.clone(), v);
            }
        }
        for e in &self.headers.replace {
            let (Some(n), Some(v)) = (name(&e.name), e.value.as_ref().and_then(value)) else {
                continue;
            };
            if n == header::HOST {
                ctx.state.insert(UpstreamHost(v));
            } else if h.contains_key(&n) {
                h.insert(n, v);
            }
        }
        for e in &self.headers.add {
            let (Some(n), Some(v)) = (name(&e.name), e.value.as_ref().and_then(value)) else {
                continue;
            };
            if n != header::HOST && !h.contains_key(&n) {
                h.insert(n, v);
            }
        }
        for e in &self.headers.append {
            let (Some(n), Some(v)) = (name(&e.name), e.value.as_ref().and_then(value)) else {
                continue;
            };
            if n != header::HOST {
                h.append(n, v);
            }
        }
    }

    fn head(
        &self,
        ctx: &mut Ctx<'_>,
        orig: &Original,
    ) -> Option<hyper::Response<crate::server::ProxyBody>> {
        let env = Env {
            headers: &orig.headers,
            query: &orig.query,
            captures: &orig.captures,
        };
        if let Some(t) = &self.uri {
            let path = t.render(&env);
            if !path.starts_with('/') {
                tracing::error!(plugin = "request-transformer", path = %path, "replace.uri rendered a path that does not start with '/'");
                return Some(error(500, "An unexpected error occurred"));
            }
            ctx.state.insert(UpstreamPath(path));
        }
        if let Some(m) = &self.method {
            ctx.req.method = m.clone();
        }
        self.transform_headers(ctx, &env);
        if !self.query.is_empty() {
            let mut a = to_args(orig.query.clone());
            transform_args(&self.query, &mut a, &env, true);
            set_query(ctx.req, &encode_args(&a));
        }
        None
    }

    /// Whether the form body goes to the query string (`http_method` GET, HEAD or TRACE).
    fn form_to_query(&self) -> bool {
        self.method
            .as_ref()
            .is_some_and(|m| matches!(m.as_str(), "GET" | "HEAD" | "TRACE"))
    }

    fn transform_body(&self, ctx: &mut Ctx<'_>, body: &mut Bytes, orig: &Original) {
        let Some(kind) = kind_of(&ctx.req.headers) else {
            return;
        };
        let env = Env {
            headers: &orig.headers,
            query: &orig.query,
            captures: &orig.captures,
        };
        if kind == Kind::Form && self.form_to_query() {
            let params = decode_pairs(&String::from_utf8_lossy(body), true);
            if !params.is_empty() {
                let current = ctx.req.uri.query().unwrap_or_default().to_string();
                let mut a = to_args(decode_pairs(&current, false));
                for (k, v) in params {
                    a.entry(k).or_default().push(v);
                }
                set_query(ctx.req, &encode_args(&a));
            }
        }
        if self.body.is_empty() {
            return;
        }
        let has_body = !body.is_empty();
        let new = match kind {
            Kind::Json => self.json(body, has_body, &env),
            Kind::Form => {
                let mut a = to_args(decode_pairs(&String::from_utf8_lossy(body), true));
                transform_args(&self.body, &mut a, &env, has_body).then(|| encode_args(&a).into())
            }
            Kind::Multipart => {
                let ct = ctx
                    .req
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                multipart::transform(&self.body, body, &ct, &env, has_body)
            }
        };
        if let Some(b) = new {
            *body = b;
        }
    }

    fn json(&self, body: &Bytes, has_body: bool, env: &Env<'_>) -> Option<Bytes> {
        let mut p: Map<String, Value> = if has_body {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                _ => return None,
            }
        } else {
            Map::new()
        };
        let ops = &self.body;
        let mut changed = false;
        let render = |e: &Entry| e.value.as_ref().map(|t| t.render(env));
        if has_body {
            for e in &ops.remove {
                p.remove(&e.name);
                changed = true;
            }
            for e in &ops.rename {
                if let Some(new) = render(e).filter(|n| *n != e.name) {
                    if let Some(v) = p.remove(&e.name) {
                        p.insert(new, v);
                        changed = true;
                    }
                }
            }
            for e in &ops.replace {
                if let (Some(v), Some(slot)) = (render(e), p.get_mut(&e.name)) {
                    // Lua's truth: a null or false value is not replaced.
                    if !matches!(slot, Value::Null | Value::Bool(false)) {
                        *slot = Value::String(v);
                        changed = true;
                    }
                }
            }
        }
        for e in &ops.add {
            if let Some(v) = render(e) {
                if matches!(
                    p.get(&e.name),
                    None | Some(Value::Null | Value::Bool(false))
                ) {
                    p.insert(e.name.clone(), Value::String(v));
                    changed = true;
                }
            }
        }
        for e in &ops.append {
            if let Some(v) = render(e) {
                let slot = p.entry(e.name.clone()).or_insert(Value::Null);
                *slot = match std::mem::take(slot) {
                    Value::String(old) => json!([old, v]),
                    Value::Array(mut a) => {
                        a.push(Value::String(v));
                        Value::Array(a)
                    }
                    _ => json!([v]),
                };
                changed = true;
            }
        }
        changed.then(|| Bytes::from(Value::Object(p).to_string()))
    }
}

impl Plugin for RequestTransformer {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let orig = Original {
            headers: if self.reads_headers {
                ctx.req.headers.clone()
            } else {
                HeaderMap::new()
            },
            query: if self.reads_query {
                decode_pairs(ctx.req.uri.query().unwrap_or_default(), false)
            } else {
                Vec::new()
            },
            captures: if self.reads_captures {
                ctx.captures.to_vec()
            } else {
                Vec::new()
            },
        };
        if let Some(r) = self.head(ctx, &orig) {
            return Flow::Respond(r);
        }
        if self.reads_body() {
            ctx.state.insert(orig);
        }
        Flow::Next
    }

    fn reads_body(&self) -> bool {
        !self.body.is_empty() || self.form_to_query()
    }

    fn request_body<'a>(&'a self, ctx: &'a mut Ctx<'_>, body: &'a mut Bytes) -> Flow<'a> {
        let orig = ctx.state.remove::<Original>().unwrap_or(Original {
            headers: HeaderMap::new(),
            query: Vec::new(),
            captures: Vec::new(),
        });
        self.transform_body(ctx, body, &orig);
        Flow::Next
    }
}

/// multipart/form-data bodies, as Kong's `lua-multipart`: parts kept as they came, a part
/// set by name written as a simple `form-data` field.
mod multipart {
    use super::{Entry, Env, Ops};
    use bytes::Bytes;
    use gantry_model::multipart::{boundary, parse, Part};

    fn simple(name: &str, value: &str) -> Part {
        Part::simple(name, value)
    }

    /// Kong's rename, remove, replace and add on the fields (no append); the body written
    /// again when any changed.
    pub fn transform(
        ops: &Ops,
        body: &[u8],
        content_type: &str,
        env: &Env<'_>,
        has_body: bool,
    ) -> Option<Bytes> {
        let b = boundary(content_type)?;
        let mut parts = if has_body {
            parse(body, &b)?
        } else {
            Vec::new()
        };
        let render = |e: &Entry| e.value.as_ref().map(|t| t.render(env));
        let has = |parts: &Vec<Part>, n: &str| parts.iter().any(|p| p.name.as_deref() == Some(n));
        let mut changed = false;
        if has_body {
            for e in &ops.rename {
                let Some(new) = render(e).filter(|n| *n != e.name) else {
                    continue;
                };
                if let Some(i) = parts
                    .iter()
                    .position(|p| p.name.as_deref() == Some(&e.name))
                {
                    let value = value_of(&parts[i]);
                    parts.retain(|p| p.name.as_deref() != Some(&e.name));
                    parts.push(simple(&new, &value));
                    changed = true;
                }
            }
            for e in &ops.remove {
                parts.retain(|p| p.name.as_deref() != Some(&e.name));
                changed = true;
            }
            for e in &ops.replace {
                if let Some(v) = render(e) {
                    if has(&parts, &e.name) {
                        parts.retain(|p| p.name.as_deref() != Some(&e.name));
                        parts.push(simple(&e.name, &v));
                        changed = true;
                    }
                }
            }
        }
        for e in &ops.add {
            if let Some(v) = render(e) {
                if !has(&parts, &e.name) {
                    parts.push(simple(&e.name, &v));
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        Some(render_parts(&parts, &b))
    }

    fn render_parts(parts: &[Part], b: &str) -> Bytes {
        Bytes::from(gantry_model::multipart::render(parts, b))
    }

    fn value_of(p: &Part) -> String {
        String::from_utf8_lossy(p.content()).into_owned()
    }

    /// The named fields of a body, in order, with their values.
    pub fn fields(body: &[u8], b: &str) -> Vec<(String, String)> {
        gantry_model::multipart::fields(body, b).unwrap_or_default()
    }

    /// The body without the fields named `name`; `None` when it has none.
    pub fn without(body: &[u8], b: &str, name: &str) -> Option<Bytes> {
        let mut parts = parse(body, b)?;
        let before = parts.len();
        parts.retain(|p| p.name.as_deref() != Some(name));
        (parts.len() != before).then(|| render_parts(&parts, b))
    }

    pub fn boundary_of(content_type: &str) -> Option<String> {
        boundary(content_type)
    }
}

/// The boundary of a `multipart/form-data` content type.
pub(crate) fn multipart_boundary(content_type: &str) -> Option<String> {
    multipart::boundary_of(content_type)
}

/// The named fields of a multipart body.
pub(crate) fn multipart_fields(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    multipart::fields(body, boundary)
}

/// A multipart body without the fields named `name`.
pub(crate) fn multipart_without(body: &[u8], boundary: &str, name: &str) -> Option<Bytes> {
    multipart::without(body, boundary, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_render(t: &str) -> Result<String, TemplateError> {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.append("x-many", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("b"));
        let q = vec![
            ("q".to_string(), Some("1".to_string())),
            ("flag".to_string(), None),
        ];
        let c = vec![
            ("0".to_string(), "/u/7".to_string()),
            ("id".to_string(), "7".to_string()),
            ("1".to_string(), "7".to_string()),
        ];
        let env = Env {
            headers: &h,
            query: &q,
            captures: &c,
        };
        Template::parse(t).map(|t| t.render(&env))
    }

    #[test]
    fn templates_as_kong() {
        assert_eq!(env_render("plain").unwrap(), "plain");
        assert_eq!(env_render("u=$(headers.x_user)!").unwrap(), "u=alice!");
        assert_eq!(env_render("$(headers['X-User'])").unwrap(), "alice");
        assert_eq!(env_render("$(headers.x_many)").unwrap(), "a, b");
        assert_eq!(
            env_render("$(query_params.q)$(query_params.flag)").unwrap(),
            "1true"
        );
        assert_eq!(
            env_render("$(uri_captures.id)-$(uri_captures[1])-$(uri_captures[0])").unwrap(),
            "7-7-/u/7"
        );
        assert_eq!(
            env_render("$(headers.none or query_params.none or 'dflt')").unwrap(),
            "dflt"
        );
        assert_eq!(env_render("$(headers.none)").unwrap(), "");
        // Kong's escape: a template inside a literal.
        assert_eq!(
            env_render("$('$(uri_captures.id)')").unwrap(),
            "$(uri_captures.id)"
        );
        for bad in [
            "$(10 * uri_captures.id)",
            "$(foo(headers.x))",
            "$(shared.v)",
            "$(headers.x == 'a')",
        ] {
            assert!(env_render(bad).is_err(), "{bad}");
        }
        // An unbalanced one is text.
        assert_eq!(env_render("$(oops").unwrap(), "$(oops");
    }

    #[test]
    fn args_sorted_and_escaped_as_kong() {
        let a = to_args(decode_pairs("b=2&a=x%20y&flag&a=z", false));
        assert_eq!(encode_args(&a), "a=x%20y&a=z&b=2&flag");
        assert_eq!(split("a:b:c"), ("a", "b:c"));
        assert_eq!(split("a::b"), ("a", "b"));
        assert_eq!(split("a"), ("a", ""));
    }

    #[test]
    fn multipart_fields() {
        let ops = Ops {
            remove: vec![Entry {
                name: "gone".into(),
                value: None,
            }],
            add: vec![Entry {
                name: "new".into(),
                value: Template::parse("v").ok(),
            }],
            ..Ops::default()
        };
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"keep\"\r\n\r\nk\r\n--XX\r\nContent-Disposition: form-data; name=\"gone\"\r\n\r\ng\r\n--XX--\r\n";
        let h = HeaderMap::new();
        let env = Env {
            headers: &h,
            query: &[],
            captures: &[],
        };
        let out = multipart::transform(&ops, body, "multipart/form-data; boundary=XX", &env, true)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "--XX\r\nContent-Disposition: form-data; name=\"keep\"\r\n\r\nk\r\n--XX\r\nContent-Disposition: form-data; name=\"new\"\r\n\r\nv\r\n--XX--\r\n"
        );
    }
}
