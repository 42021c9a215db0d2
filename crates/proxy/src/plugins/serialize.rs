//! Kong's log entry (`kong.log.serialize`): what the log plugins (file-log, http-log) write
//! of a request, made from what the proxy knows of it.

use serde_json::{json, Value};

use crate::server::RequestLog;

/// Headers as a JSON object: one value, or a list for a repeated header. Credentials in
/// `Authorization` and `Proxy-Authorization` are not written, as Kong's serializer. Written
/// straight from the header map, without a JSON tree in between.
struct Headers<'a>(&'a hyper::HeaderMap);

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Values<'a>(hyper::header::GetAll<'a, hyper::header::HeaderValue>, bool);
        struct One<'a>(&'a hyper::header::HeaderValue, bool);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if self.1 {
                    s.serialize_str("REDACTED")
                } else {
                    s.serialize_str(&String::from_utf8_lossy(self.0.as_bytes()))
                }
            }
        }
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(None)?;
                for v in self.0.iter() {
                    seq.serialize_element(&One(v, self.1))?;
                }
                seq.end()
            }
        }
        let h = self.0;
        let mut map = s.serialize_map(Some(h.keys_len()))?;
        for name in h.keys() {
            let redacted =
                name == hyper::header::AUTHORIZATION || name == hyper::header::PROXY_AUTHORIZATION;
            let all = h.get_all(name);
            let mut it = all.iter();
            match (it.next(), it.next()) {
                (Some(one), None) => map.serialize_entry(name.as_str(), &One(one, redacted))?,
                _ => map.serialize_entry(name.as_str(), &Values(all, redacted))?,
            }
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Entry<'a> {
    request: Request<'a>,
    response: Response<'a>,
    upstream_uri: Option<&'a str>,
    latencies: Latencies,
    client_ip: String,
    started_at: u64,
    source: &'static str,
    service: Option<Id<'a>>,
    route: Option<Id<'a>>,
    consumer: Option<Id<'a>>,
    /// The trace id in each format opentelemetry injected (Kong's `trace_id` serialize value).
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a crate::spans::TraceIds>,
}

#[derive(serde::Serialize)]
struct Request<'a> {
    id: &'a str,
    method: &'a str,
    uri: &'a str,
    querystring: serde_json::Map<String, Value>,
    headers: Option<Headers<'a>>,
}

#[derive(serde::Serialize)]
struct Response<'a> {
    status: u16,
    size: u64,
    headers: Option<Headers<'a>>,
}

#[derive(serde::Serialize)]
struct Latencies {
    request: u64,
    proxy: i64,
    kong: u64,
}

#[derive(serde::Serialize)]
struct Id<'a> {
    id: &'a str,
}

/// Kong's log entry, of what the proxy knows of a request, as JSON text.
pub fn entry(r: &RequestLog<'_>) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let total = ms(r.total);
    let proxy = r.upstream.map(ms);
    let started_at = std::time::SystemTime::now()
        .checked_sub(r.total)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
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
    let e = Entry {
        request: Request {
            id: r.request_id,
            method: r.method.as_str(),
            uri: r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            querystring,
            headers: d.map(|d| Headers(&d.request_headers)),
        },
        response: Response {
            status: r.status,
            size: r.response_size,
            headers: d.map(|d| Headers(&d.response_headers)),
        },
        upstream_uri: d.and_then(|d| d.upstream_uri.as_deref()),
        latencies: Latencies {
            request: total.round() as u64,
            proxy: proxy.map(|p| p.round() as i64).unwrap_or(-1),
            kong: (total - proxy.unwrap_or(0.0)).max(0.0).round() as u64,
        },
        client_ip: r.client.to_string(),
        started_at,
        source: if r.upstream.is_some() {
            "upstream"
        } else {
            "kong"
        },
        service: r.service.map(|id| Id { id }),
        route: r.route.map(|id| Id { id }),
        consumer: r.consumer.map(|id| Id { id }),
        trace_id: r.state.get::<crate::spans::TraceIds>(),
    };
    serde_json::to_string(&e).unwrap_or_default()
}
