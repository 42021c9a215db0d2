//! response-transformer: changes the response's headers and the top-level keys of a JSON
//! object body on its way to the client, as Kong's: remove, rename, replace, add, append, in
//! that order; an operation with an empty value, or a number that does not parse, is skipped.
//! JSON bodies are buffered whole (the body phase), up to [`MAX_BODY`]: a larger body is sent
//! as it came. Other bodies pass untouched.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::{BodyFilter, Descriptor, Instance, Plugin, Shared};

/// `name:value` pairs of one operation.
type Pairs = Vec<(String, String)>;

/// The largest JSON body transformed; past it, the body goes through unchanged.
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Default, Clone)]
struct Ops {
    remove: Vec<String>,
    rename: Pairs,
    replace: Pairs,
    add: Pairs,
    append: Pairs,
}

#[derive(Clone)]
struct Json {
    ops: Ops,
    /// The type of each `replace`, `add` and `append` value, by position (string when absent).
    replace_types: Vec<String>,
    add_types: Vec<String>,
    append_types: Vec<String>,
}

struct ResponseTransformer {
    headers: Vec<HeaderOp>,
    /// `None` when no JSON operation is configured.
    json: Option<Arc<Json>>,
}

enum HeaderOp {
    Remove(HeaderName),
    Rename(HeaderName, HeaderName),
    /// Only a header that is present.
    Replace(HeaderName, HeaderValue),
    /// Only a header that is absent.
    Add(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
}

fn list(c: &Value, group: &str, k: &str) -> Vec<String> {
    gantry_model::document::strings(c.get(group).and_then(|g| g.get(k)))
}

/// `name:value` at the first colon (the schema has checked there is one); as Kong, an entry
/// with an empty value does nothing.
fn pairs(items: Vec<String>) -> Pairs {
    items
        .into_iter()
        .filter_map(|i| {
            i.split_once(':')
                .map(|(n, v)| (n.to_string(), v.to_string()))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "response-transformer",
        800,
        vec![
            Field::new("remove", transform_group(&["json", "headers"])),
            Field::new("rename", transform_group(&["json", "headers"])),
            Field::new(
                "replace",
                transform_group(&["json", "json_types", "headers"]),
            ),
            Field::new("add", transform_group(&["json", "json_types", "headers"])),
            Field::new(
                "append",
                transform_group(&["json", "json_types", "headers"]),
            ),
        ],
    )
    .checks(|c, e| {
        // `name:value` entries (rename: `old:new`), header names and values that HTTP
        // allows, and the types of `json` values.
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let field_value = |s: &str| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        let removed = c.get("remove").and_then(|g| g.get("headers"));
        for name in gantry_model::document::strings(removed) {
            if !token(name.trim()) {
                e.add("remove.headers", format!("invalid header name: '{name}'"));
            }
        }
        for group in ["rename", "replace", "add", "append"] {
            for list in ["headers", "json"] {
                let items = c.get(group).and_then(|g| g.get(list));
                for item in gantry_model::document::strings(items) {
                    let path = format!("{group}.{list}");
                    let Some((n, v)) = item.split_once(':').filter(|(n, _)| !n.is_empty()) else {
                        e.add(
                            &path,
                            format!("invalid value: '{item}' (expected 'name:value')"),
                        );
                        continue;
                    };
                    if list == "headers" {
                        let (n, v) = (n.trim(), v.trim());
                        let value_ok = if group == "rename" {
                            token(v)
                        } else {
                            field_value(v)
                        };
                        if !token(n) {
                            e.add(&path, format!("invalid header name: '{n}'"));
                        } else if !value_ok {
                            e.add(&path, format!("invalid header value in '{item}'"));
                        }
                    }
                }
            }
            let types = c.get(group).and_then(|g| g.get("json_types"));
            for t in gantry_model::document::strings(types) {
                if !matches!(t.as_str(), "string" | "boolean" | "number") {
                    e.add(
                        &format!("{group}.json_types"),
                        format!("expected one of: string, boolean, number (got '{t}')"),
                    );
                }
            }
        }
    })
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let header_name = |n: &str| {
        HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("invalid header name '{n}'"))
    };
    let header_value = |v: &str| {
        HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid header value '{v}'"))
    };
    let mut headers = Vec::new();
    for n in list(c, "remove", "headers") {
        headers.push(HeaderOp::Remove(header_name(&n)?));
    }
    for (n, to) in pairs(list(c, "rename", "headers")) {
        headers.push(HeaderOp::Rename(header_name(&n)?, header_name(&to)?));
    }
    for (group, op) in [
        (
            "replace",
            HeaderOp::Replace as fn(HeaderName, HeaderValue) -> HeaderOp,
        ),
        ("add", HeaderOp::Add),
        ("append", HeaderOp::Append),
    ] {
        for (n, v) in pairs(list(c, group, "headers")) {
            headers.push(op(header_name(&n)?, header_value(&v)?));
        }
    }
    let ops = Ops {
        remove: list(c, "remove", "json"),
        rename: pairs(list(c, "rename", "json")),
        replace: pairs(list(c, "replace", "json")),
        add: pairs(list(c, "add", "json")),
        append: pairs(list(c, "append", "json")),
    };
    let any_json = !(ops.remove.is_empty()
        && ops.rename.is_empty()
        && ops.replace.is_empty()
        && ops.add.is_empty()
        && ops.append.is_empty());
    let json = any_json.then(|| {
        Arc::new(Json {
            ops,
            replace_types: list(c, "replace", "json_types"),
            add_types: list(c, "add", "json_types"),
            append_types: list(c, "append", "json_types"),
        })
    });
    Ok(Arc::new(ResponseTransformer { headers, json }))
}

/// Whether a response's content type is JSON: `application/json`, or a `+json` type such as
/// `application/problem+json`, parameters aside.
fn is_json(parts: &hyper::http::response::Parts) -> bool {
    parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let media = t
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                media == "application/json"
                    || (media.starts_with("application/") && media.ends_with("+json"))
            })
        })
}

impl Plugin for ResponseTransformer {
    fn header_filter(&self, response: &mut hyper::http::response::Parts) {
        let h = &mut response.headers;
        for op in &self.headers {
            match op {
                HeaderOp::Remove(name) => {
                    h.remove(name);
                }
                HeaderOp::Rename(from, to) => {
                    let values: Vec<HeaderValue> = h.get_all(from).iter().cloned().collect();
                    if !values.is_empty() {
                        // The renamed header takes the place of one of the new name.
                        h.remove(from);
                        h.remove(to);
                        for v in values {
                            h.append(to.clone(), v);
                        }
                    }
                }
                HeaderOp::Replace(name, v) => {
                    if h.contains_key(name) {
                        h.insert(name.clone(), v.clone());
                    }
                }
                HeaderOp::Add(name, v) => {
                    if !h.contains_key(name) {
                        h.insert(name.clone(), v.clone());
                    }
                }
                HeaderOp::Append(name, v) => {
                    h.append(name.clone(), v.clone());
                }
            }
        }
    }

    fn body_filter(&self, response: &hyper::http::response::Parts) -> Option<Box<dyn BodyFilter>> {
        let json = self.json.as_ref()?;
        if !is_json(response) {
            return None;
        }
        Some(Box::new(Buffered {
            json: json.clone(),
            body: BytesMut::new(),
            passing: false,
        }))
    }
}

/// Buffers the whole body, then transforms it on the last call.
struct Buffered {
    json: Arc<Json>,
    body: BytesMut,
    /// Past [`MAX_BODY`]: chunks go through unchanged.
    passing: bool,
}

impl BodyFilter for Buffered {
    fn filter(&mut self, chunk: Bytes, last: bool) -> Bytes {
        if self.passing {
            return chunk;
        }
        self.body.extend_from_slice(&chunk);
        if self.body.len() > MAX_BODY {
            // Too large to hold: what is held goes now, and the rest as it comes.
            self.passing = true;
            return std::mem::take(&mut self.body).freeze();
        }
        if !last {
            return Bytes::new();
        }
        let body = std::mem::take(&mut self.body).freeze();
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut object)) => {
                transform(&self.json, &mut object);
                Bytes::from(Value::Object(object).to_string())
            }
            // Not a JSON object: sent as it came.
            _ => body,
        }
    }
}

/// A configured value as its `json_types` entry says: a number or boolean, or else a string.
/// `None` for a number that does not parse (the operation is skipped, as Kong's `tonumber`).
fn typed(value: &str, ty: Option<&String>) -> Option<Value> {
    match ty.map(String::as_str) {
        Some("number") => value.trim().parse::<f64>().ok().and_then(|n| {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Some(Value::from(n as i64))
            } else {
                serde_json::Number::from_f64(n).map(Value::Number)
            }
        }),
        Some("boolean") => Some(Value::Bool(value == "true")),
        _ => Some(Value::String(value.to_string())),
    }
}

fn transform(json: &Json, object: &mut Map<String, Value>) {
    let ops = &json.ops;
    for k in &ops.remove {
        object.remove(k);
    }
    for (from, to) in &ops.rename {
        if let Some(v) = object.remove(from) {
            object.insert(to.clone(), v);
        }
    }
    for (i, (k, v)) in ops.replace.iter().enumerate() {
        if object.contains_key(k) {
            if let Some(v) = typed(v, json.replace_types.get(i)) {
                object.insert(k.clone(), v);
            }
        }
    }
    for (i, (k, v)) in ops.add.iter().enumerate() {
        if !object.contains_key(k) {
            if let Some(v) = typed(v, json.add_types.get(i)) {
                object.insert(k.clone(), v);
            }
        }
    }
    for (i, (k, v)) in ops.append.iter().enumerate() {
        let Some(v) = typed(v, json.append_types.get(i)) else {
            continue;
        };
        // As Kong: a string becomes a list of it and the value, a list gets the value, and
        // anything else is replaced by a list of the value.
        let next = match object.remove(k) {
            Some(Value::String(s)) => Value::Array(vec![Value::String(s), v]),
            Some(Value::Array(mut a)) => {
                a.push(v);
                Value::Array(a)
            }
            _ => Value::Array(vec![v]),
        };
        object.insert(k.clone(), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(config: Value, content_type: &str, chunks: &[&str]) -> (hyper::HeaderMap, String) {
        let p = build(&Instance::new("p"), &config, &Shared::default()).expect("builds");
        let mut parts = hyper::Response::new(()).into_parts().0;
        parts
            .headers
            .insert("content-type", content_type.parse().unwrap());
        parts.headers.insert("x-old", "1".parse().unwrap());
        parts.headers.insert("x-gone", "1".parse().unwrap());
        parts.headers.insert("x-target", "old".parse().unwrap());
        p.header_filter(&mut parts);
        let mut out = String::new();
        match p.body_filter(&parts) {
            None => chunks.iter().for_each(|c| out.push_str(c)),
            Some(mut f) => {
                for c in chunks {
                    out.push_str(
                        std::str::from_utf8(&f.filter(Bytes::from(c.to_string()), false)).unwrap(),
                    );
                }
                out.push_str(std::str::from_utf8(&f.filter(Bytes::new(), true)).unwrap());
            }
        }
        (parts.headers, out)
    }

    #[test]
    fn headers_in_kong_order() {
        let (h, _) = run(
            json!({
                "remove": {"headers": ["x-gone"]},
                "rename": {"headers": ["x-old:x-new", "x-gone:x-never", "x-new:x-target"]},
                "replace": {"headers": ["x-target:2", "x-absent:3", "x-target:"]},
                "add": {"headers": ["x-added:a", "content-type:text/plain"]},
                "append": {"headers": ["x-added:b"]},
            }),
            "text/html",
            &[],
        );
        assert!(!h.contains_key("x-gone") && !h.contains_key("x-old"));
        assert!(
            !h.contains_key("x-never"),
            "an absent header is not renamed"
        );
        let target: Vec<_> = h.get_all("x-target").iter().collect();
        assert_eq!(
            target,
            ["2"],
            "renamed over x-target, then replaced; empty value skipped"
        );
        assert!(
            !h.contains_key("x-absent"),
            "replace only sets present headers"
        );
        assert_eq!(h["content-type"], "text/html", "add never overwrites");
        let added: Vec<_> = h.get_all("x-added").iter().collect();
        assert_eq!(added, ["a", "b"]);
    }

    #[test]
    fn json_body_across_chunks() {
        let config = json!({
            "remove": {"json": ["secret"]},
            "rename": {"json": ["old:new"]},
            "replace": {"json": ["count:7", "missing:x", "name:"], "json_types": ["number"]},
            "add": {"json": ["flag:true", "old:back"], "json_types": ["boolean"]},
            "append": {"json": ["tags:b", "name:x", "n:1", "bad:1x"], "json_types": ["string", "string", "string", "number"]},
        });
        let (_, body) = run(
            config.clone(),
            "application/json; charset=utf-8",
            &[
                r#"{"secret":1,"old":"v","count":"3","#,
                r#""tags":["a"],"name":"s","n":5}"#,
            ],
        );
        let got: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            got,
            json!({
                "new": "v", "count": 7, "flag": true, "old": "back",
                "tags": ["a", "b"], "name": ["s", "x"], "n": ["1"],
            })
        );
        // Not JSON by its type, or not an object: untouched.
        assert_eq!(
            run(config.clone(), "text/plain", &[r#"{"secret":1}"#]).1,
            r#"{"secret":1}"#
        );
        assert_eq!(
            run(config.clone(), "application/json", &["[1,2]"]).1,
            "[1,2]"
        );
        assert_eq!(
            run(config.clone(), "application/json", &["not json"]).1,
            "not json"
        );
        // +json media types are JSON, parameters and case aside.
        let (_, body) = run(
            config.clone(),
            "Application/Problem+JSON; charset=utf-8",
            &[r#"{"secret":1}"#],
        );
        assert_eq!(
            body,
            r#"{"flag":true,"old":"back","tags":["b"],"name":["x"],"n":["1"]}"#
        );
        // A body past the limit goes through as it came.
        let big = format!(r#"{{"secret":"{}"}}"#, "x".repeat(MAX_BODY));
        let half = big.len() / 2;
        assert_eq!(
            run(config, "application/json", &[&big[..half], &big[half..]]).1,
            big
        );
    }
}
