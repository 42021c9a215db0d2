//! Kong's log entry (`kong.log.serialize`): what the log plugins (file-log, http-log) write
//! of a request, made from what the proxy knows of it.

use serde_json::{json, Value};

use crate::server::RequestLog;

/// Headers as a JSON object: one value, or a list for a repeated header. Credentials in
/// `Authorization` and `Proxy-Authorization` are not written, as Kong's serializer.
pub fn headers(h: &hyper::HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for name in h.keys() {
        let redacted =
            name == hyper::header::AUTHORIZATION || name == hyper::header::PROXY_AUTHORIZATION;
        let values: Vec<Value> = h
            .get_all(name)
            .iter()
            .map(|v| {
                if redacted {
                    json!("REDACTED")
                } else {
                    json!(String::from_utf8_lossy(v.as_bytes()))
                }
            })
            .collect();
        let v = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        out.insert(name.as_str().to_string(), v);
    }
    Value::Object(out)
}

/// Kong's log entry, of what the proxy knows of a request.
pub fn entry(r: &RequestLog<'_>) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let total = ms(r.total);
    let proxy = r.upstream.map(ms);
    let started_at = std::time::SystemTime::now()
        .checked_sub(r.total)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let id = |v: Option<&str>| v.map(|id| json!({ "id": id }));
    // As Kong: `k` is `true`, `k=` an empty string, a repeated key a list.
    let mut querystring = serde_json::Map::new();
    for piece in r
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let Some((k, v)) = form_urlencoded::parse(piece.as_bytes()).next() else {
            continue;
        };
        let v = if piece.contains('=') {
            json!(v)
        } else {
            json!(true)
        };
        match querystring.get_mut(k.as_ref()) {
            Some(Value::Array(list)) => list.push(v),
            Some(one) => *one = Value::Array(vec![one.take(), v]),
            None => {
                querystring.insert(k.into_owned(), v);
            }
        }
    }
    let d = r.details;
    json!({
        "request": {
            "id": r.request_id,
            "method": r.method.as_str(),
            "uri": r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "querystring": querystring,
            "headers": d.map(|d| headers(&d.request_headers)),
        },
        "response": {
            "status": r.status,
            "size": r.response_size,
            "headers": d.map(|d| headers(&d.response_headers)),
        },
        "upstream_uri": d.and_then(|d| d.upstream_uri.as_deref()),
        "latencies": {
            "request": total.round() as u64,
            "proxy": proxy.map(|p| p.round() as i64).unwrap_or(-1),
            "kong": (total - proxy.unwrap_or(0.0)).max(0.0).round() as u64,
        },
        "client_ip": r.client.to_string(),
        "started_at": started_at,
        "source": if r.upstream.is_some() { "upstream" } else { "kong" },
        "service": id(r.service),
        "route": id(r.route),
        "consumer": id(r.consumer),
    })
}
