//! A request's arguments as Kong's `kong.request.get_query()` and `get_body()` give them: a map
//! of names to a string, or to a list of strings for a name given more than once; bodies by
//! their content type (`application/x-www-form-urlencoded`, `application/json` objects,
//! `multipart/form-data` fields). And the same body without one argument, for plugins that hide
//! a credential they read from it.

use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::{Map, Value};

/// The arguments of a form-encoded text (a query string or a form body).
pub(crate) fn form(text: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(text) {
        let v = Value::String(v.into_owned());
        match m.get_mut(k.as_ref()) {
            None => {
                m.insert(k.into_owned(), v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
        }
    }
    m
}

/// Kong's `ngx.escape_uri`: letters, digits and `-._~` kept, every other byte `%XX`.
pub(crate) fn escape_uri(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Take the argument `name` (every occurrence) out of the request's query string, and out of
/// its body when the body was read (`hide_credentials`).
pub(crate) fn hide(ctx: &mut super::Ctx<'_>, name: &str, from_body: bool) {
    if let Some(pq) = ctx.req.uri.path_and_query() {
        if let Some(q) = pq.query() {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|p| {
                    !p.is_empty()
                        && form_urlencoded::parse(p.as_bytes())
                            .next()
                            .is_none_or(|(k, _)| k != name)
                })
                .collect();
            let new = if kept.is_empty() {
                pq.path().to_string()
            } else {
                format!("{}?{}", pq.path(), kept.join("&"))
            };
            let mut parts = ctx.req.uri.clone().into_parts();
            if let Ok(pq) = new.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(u) = hyper::Uri::from_parts(parts) {
                    ctx.req.uri = u;
                }
            }
        }
    }
    if from_body {
        let headers = ctx.req.headers.clone();
        ctx.body
            .edit(|body| without(&headers, body, name).unwrap_or_else(|| body.clone()));
    }
}

/// The query string's arguments.
pub(crate) fn query(uri: &hyper::Uri) -> Map<String, Value> {
    uri.query().map(|q| form(q.as_bytes())).unwrap_or_default()
}

enum Encoding {
    Form,
    Json,
    Multipart(String),
}

fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let given = headers.get(hyper::header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = given.to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        Some(Encoding::Form)
    } else if ct.starts_with("application/json") || ct.contains("+json") {
        Some(Encoding::Json)
    } else if ct.starts_with("multipart/form-data") {
        // The boundary as given: it is case-sensitive.
        super::request_transformer::multipart_boundary(given).map(Encoding::Multipart)
    } else {
        None
    }
}

/// The body's arguments (none for another content type, or a body that does not parse).
pub(crate) fn body(headers: &HeaderMap, body: &[u8]) -> Map<String, Value> {
    match encoding(headers) {
        Some(Encoding::Form) => form(body),
        Some(Encoding::Json) => match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        Some(Encoding::Multipart(b)) => {
            let mut m = Map::new();
            for (name, value) in super::request_transformer::multipart_fields(body, &b) {
                m.entry(name).or_insert(Value::String(value));
            }
            m
        }
        None => Map::new(),
    }
}

/// The body without the argument `name`, in its own encoding; `None` when it has none.
pub(crate) fn without(headers: &HeaderMap, body: &[u8], name: &str) -> Option<Bytes> {
    match encoding(headers)? {
        Encoding::Form => {
            let mut out = form_urlencoded::Serializer::new(String::new());
            let mut found = false;
            for (k, v) in form_urlencoded::parse(body) {
                if k == name {
                    found = true;
                } else {
                    out.append_pair(&k, &v);
                }
            }
            found.then(|| Bytes::from(out.finish()))
        }
        Encoding::Json => {
            let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else {
                return None;
            };
            m.remove(name)?;
            serde_json::to_vec(&m).ok().map(Bytes::from)
        }
        Encoding::Multipart(b) => super::request_transformer::multipart_without(body, &b, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(hyper::header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn arguments_by_content_type() {
        let f = form(b"a=1&b=2&a=3");
        assert_eq!(
            Value::Object(f),
            serde_json::json!({"a": ["1", "3"], "b": "2"})
        );
        let h = headers("application/json");
        assert_eq!(body(&h, br#"{"k": "v"}"#)["k"], "v");
        assert_eq!(
            without(&h, br#"{"k":"v","x":1}"#, "k").as_deref(),
            Some(&br#"{"x":1}"#[..])
        );
        let h = headers("application/x-www-form-urlencoded");
        assert_eq!(without(&h, b"k=v&x=1", "k").as_deref(), Some(&b"x=1"[..]));
        assert_eq!(without(&h, b"x=1", "k"), None);
        let h = headers("multipart/form-data; boundary=XX");
        let mp = b"--XX\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv\r\n--XX\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XX--\r\n";
        assert_eq!(body(&h, mp)["k"], "v");
        let rest = without(&h, mp, "k").unwrap();
        assert_eq!(
            body(&h, &rest),
            serde_json::json!({"x": "1"}).as_object().unwrap().clone()
        );
        assert!(body(&headers("text/plain"), b"k=v").is_empty());
    }
}
