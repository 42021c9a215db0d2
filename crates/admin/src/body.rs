//! Request bodies as Kong accepts them: JSON, or form-encoded with `a.b=1`, `a[]=x`, `a[2]=y`.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The body's media type, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Read the whole body, refusing more than `limit` bytes.
pub async fn read(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| ApiError::TooLarge(limit))
}

/// Whether a body came from a form, whose values are strings to coerce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Json,
    Form,
}

/// Decode an entity body into an object.
pub fn decode(headers: &HeaderMap, bytes: &[u8]) -> Result<(Map<String, Value>, Origin), ApiError> {
    let mt = media_type(headers);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok((Map::new(), Origin::Json));
    }
    match mt.as_str() {
        "application/x-www-form-urlencoded" => Ok((parse_form(bytes)?, Origin::Form)),
        "" | "application/json" => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok((m, Origin::Json)),
            Ok(_) => Err(ApiError::BadRequest("Cannot parse JSON body: expected an object".into())),
            Err(e) => Err(ApiError::BadRequest(format!("Cannot parse JSON body: {e}"))),
        },
        "multipart/form-data" => Ok((parse_multipart(headers, bytes)?, Origin::Form)),
        other => Err(ApiError::UnsupportedMedia(format!(
            "unsupported content type '{other}'; send application/json, application/x-www-form-urlencoded or multipart/form-data"
        ))),
    }
}

/// `a.b=1&a.c[]=x&a.c[]=y&d=1&d=2` into `{"a": {"b": "1", "c": ["x", "y"]}, "d": ["1", "2"]}`.
pub fn parse_form(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    pairs_to_map(form_pairs(bytes)?)
}

/// A `multipart/form-data` body's fields (a file part's content is its value), with the keys
/// of a form body (`a.b`, `a[]`, `a[1]`).
pub fn parse_multipart(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let b = gantry_model::multipart::boundary(ct).ok_or_else(|| {
        ApiError::BadRequest("multipart/form-data body without a boundary".into())
    })?;
    let fields = gantry_model::multipart::fields(bytes, &b)
        .ok_or_else(|| ApiError::BadRequest("Cannot parse multipart/form-data body".into()))?;
    pairs_to_map(fields)
}

fn pairs_to_map(pairs: Vec<(String, String)>) -> Result<Map<String, Value>, ApiError> {
    let mut root = Map::new();
    // An index past the number of fields could only leave holes: refused, so that a short
    // key (`a[99999999]=x`) cannot make the decoder fill millions of slots.
    let most = pairs.len();
    for (k, v) in pairs {
        let mut path: Vec<Seg> = Vec::new();
        for part in k.split('.') {
            let (name, idx) = match part.find('[') {
                Some(i) if part.ends_with(']') => (&part[..i], Some(&part[i + 1..part.len() - 1])),
                _ => (part, None),
            };
            if name.is_empty() {
                return Err(ApiError::BadRequest(format!("invalid form key '{k}'")));
            }
            path.push(Seg::Key(name.to_string()));
            if let Some(idx) = idx {
                path.push(if idx.is_empty() {
                    Seg::Push
                } else {
                    let n: usize = idx.parse().ok().filter(|n| *n <= most).ok_or_else(|| {
                        ApiError::BadRequest(format!("invalid array index in form key '{k}'"))
                    })?;
                    Seg::Index(n)
                });
            }
        }
        insert(&mut root, &path, Value::String(v))
            .map_err(|_| ApiError::BadRequest(format!("conflicting form keys at '{k}'")))?;
    }
    Ok(root)
}

/// The `key=value` pairs of a form body, decoded (`+` is a space, `%XX` a byte), refusing
/// what is not UTF-8 once decoded, naming the key: nothing is stored with replacement
/// characters in place of what the client sent.
fn form_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &[u8]| -> Result<String, Vec<u8>> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        let raw: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        String::from_utf8(raw).map_err(|e| e.into_bytes())
    };
    let mut out = Vec::new();
    for pair in bytes.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = decode(k).map_err(|raw| {
            ApiError::BadRequest(format!(
                "invalid form key '{}': not UTF-8",
                String::from_utf8_lossy(&raw)
            ))
        })?;
        let value = decode(v).map_err(|_| {
            ApiError::BadRequest(format!("invalid form value for '{key}': not UTF-8"))
        })?;
        out.push((key, value));
    }
    Ok(out)
}

enum Seg {
    Key(String),
    Push,
    /// 1-based, as Kong's form arrays.
    Index(usize),
}

fn insert(map: &mut Map<String, Value>, path: &[Seg], v: Value) -> Result<(), ()> {
    let Some(Seg::Key(k)) = path.first() else {
        return Err(());
    };
    let rest = &path[1..];
    match rest.first() {
        None => {
            match map.get_mut(k) {
                // A repeated plain key becomes an array.
                Some(Value::Array(a)) => a.push(v),
                Some(old @ Value::String(_)) => {
                    let prev = old.take();
                    *old = Value::Array(vec![prev, v]);
                }
                Some(_) => return Err(()),
                None => {
                    map.insert(k.clone(), v);
                }
            }
            Ok(())
        }
        Some(Seg::Key(_)) => {
            let e = map
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match e {
                Value::Object(m) => insert(m, rest, v),
                _ => Err(()),
            }
        }
        Some(Seg::Push) | Some(Seg::Index(_)) => {
            let e = map.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
            let Value::Array(a) = e else { return Err(()) };
            let pos = match rest[0] {
                Seg::Index(n) if n >= 1 => n - 1,
                Seg::Index(_) => return Err(()),
                _ => a.len(),
            };
            while a.len() <= pos {
                a.push(Value::Null);
            }
            if rest.len() == 1 {
                a[pos] = v;
                Ok(())
            } else {
                if !a[pos].is_object() {
                    a[pos] = Value::Object(Map::new());
                }
                match &mut a[pos] {
                    Value::Object(m) => insert(m, &rest[1..], v),
                    _ => Err(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_keys() {
        let m = parse_form(b"name=a&paths[]=/x&paths[]=/y&config.minute=5&hosts=h1&hosts=h2&methods[2]=POST&methods[1]=GET&service.id=abc")
            .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"name": "a", "paths": ["/x", "/y"], "config": {"minute": "5"}, "hosts": ["h1", "h2"], "methods": ["GET", "POST"], "service": {"id": "abc"}})
        );
        assert!(parse_form(b"a=1&a.b=2").is_err());
    }

    /// What is not UTF-8 once decoded is refused, naming the key; nothing is stored with
    /// replacement characters (issue 17's item 10).
    #[test]
    fn form_bodies_that_are_not_utf8_are_refused() {
        let m = parse_form(b"name=caf%C3%A9+bar&x=a%2Bb").unwrap();
        assert_eq!(Value::Object(m), json!({"name": "café bar", "x": "a+b"}));
        let e = parse_form(b"name=%FF%FE").unwrap_err().to_string();
        assert!(e.contains("invalid form value for 'name'"), "{e}");
        let e = parse_form(b"na%C3me=x").unwrap_err().to_string();
        assert!(e.contains("invalid form key"), "{e}");
        assert!(parse_form(b"name=\xff").is_err());
    }

    /// A form's array index is bounded by its number of fields: `a[99999999]=x` once filled
    /// 99,999,999 slots (3 GB) from a body of 15 bytes (issue 17's item 3).
    #[test]
    fn form_array_indexes_cannot_outgrow_the_body() {
        let e = parse_form(b"a[99999999]=x").unwrap_err().to_string();
        assert!(
            e.contains("invalid array index in form key 'a[99999999]'"),
            "{e}"
        );
        assert!(parse_form(b"a[18446744073709551615]=x").is_err());
        let m = parse_form(b"a[2]=y&a[1]=x").unwrap();
        assert_eq!(Value::Object(m), json!({"a": ["x", "y"]}));
    }
}
