//! The request the upstream receives: hop-by-hop headers removed, `Host`, and the headers
//! Kong adds (`X-Forwarded-*`, `X-Real-IP`, `Via`, `X-Kong-Request-Id`).

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::names;
use crate::server::Client;

/// The `Via` value Gantry adds, upstream and to responses.
pub const VIA: &str = concat!("1.1 gantry/", env!("CARGO_PKG_VERSION"));

/// What the upstream headers are made from.
pub struct Forwarding<'a> {
    pub client: &'a Client,
    /// The connecting peer, appended to `X-Forwarded-For`.
    pub peer_ip: IpAddr,
    pub https: bool,
    /// The host the client asked for, without its port.
    pub host: &'a str,
    /// The listener's port, as a header value.
    pub port: &'a HeaderValue,
    /// The request path as received.
    pub raw_path: &'a str,
    /// The prefix `strip_path` removed, when it removed one.
    pub prefix: Option<&'a str>,
    /// The protocol of a connection upgrade the request asks for.
    pub upgrade: Option<&'a HeaderValue>,
    pub upstream_host: &'a HeaderValue,
    /// `X-Kong-Request-Id`, when `headers_upstream` sends it.
    pub request_id: Option<&'a HeaderValue>,
}

/// The upstream request's headers, made from the client's (as the plugins left them).
pub fn upstream_headers(mut headers: HeaderMap, f: &Forwarding<'_>) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = f.upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    headers.insert(header::HOST, f.upstream_host.clone());
    // As Kong: X-Forwarded-For as received (every line) with the connecting peer
    // appended, or the client alone when there was none.
    let prev: Vec<&str> = headers
        .get_all(names::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if prev.is_empty() {
        f.client.value.clone()
    } else {
        HeaderValue::from_str(&format!("{}, {}", prev.join(", "), f.peer_ip))
            .unwrap_or_else(|_| f.client.value.clone())
    };
    headers.insert(names::X_FORWARDED_FOR, xff);
    // The other X-Forwarded-* a trusted peer sent are kept; anyone else's are replaced.
    let trusted = f.client.trusted;
    let ours = |h: &HeaderMap, name: &HeaderName| !(trusted && h.contains_key(name));
    if ours(&headers, &names::X_FORWARDED_PROTO) {
        headers.insert(
            names::X_FORWARDED_PROTO,
            HeaderValue::from_static(if f.https { "https" } else { "http" }),
        );
    }
    if ours(&headers, &names::X_FORWARDED_HOST) {
        let fwd_host = if f.host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(f.host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(f.host)
        };
        set(&mut headers, names::X_FORWARDED_HOST, &fwd_host);
    }
    if ours(&headers, &names::X_FORWARDED_PORT) {
        headers.insert(names::X_FORWARDED_PORT, f.port.clone());
    }
    if ours(&headers, &names::X_FORWARDED_PATH) {
        set(&mut headers, names::X_FORWARDED_PATH, f.raw_path);
    }
    if ours(&headers, &names::X_FORWARDED_PREFIX) {
        match f.prefix {
            Some(p) => set(&mut headers, names::X_FORWARDED_PREFIX, p),
            None => {
                headers.remove(names::X_FORWARDED_PREFIX);
            }
        }
    }
    headers.insert(names::X_REAL_IP, f.client.value.clone());
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let via = format!("{prev}, {VIA}");
            set(&mut headers, header::VIA, &via);
        }
        None => {
            headers.insert(header::VIA, HeaderValue::from_static(VIA));
        }
    }
    if let Some(id) = f.request_id {
        headers.insert(names::X_KONG_REQUEST_ID, id.clone());
    }
    headers
}

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1). A
/// static, not a constant: a constant array would be made and dropped at each use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    names::KEEP_ALIVE,
    names::PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names (compared as known names, not hashed) notes which are present:
    // most heads have none, and a response mostly has `Connection` alone.
    let mut present = 0u16;
    for k in h.keys() {
        let name = k.as_str();
        // Only names of these lengths can be one of them: most are passed over at once.
        if !matches!(name.len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n.as_str() == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // The names `Connection` lists go too, looked up by their text (no name is made for
    // them). The first value is the only one a head mostly has.
    if present & 1 != 0 {
        let mut values = h.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for v in first.iter().chain(&more) {
            for token in v.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                // `close` names no header (RFC 9110 section 18.4 reserves it), and the
                // hop-by-hop names go below anyway: the usual tokens cost no lookup.
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|n| token.eq_ignore_ascii_case(n.as_str().as_bytes()));
                if let (false, Ok(t)) = (known, std::str::from_utf8(token)) {
                    h.remove(t);
                }
            }
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

pub(crate) fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = names::value_of(value.as_bytes()) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo ,"),
            ("connection", "x-bar"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);

        // A name listed with no Connection header is an end-to-end header.
        let mut h = map(&[("x-foo", "1"), ("upgrade", "h2c"), ("host", "a")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-foo", "host"]);

        // None of them: the map is untouched.
        let mut h = map(&[("host", "a"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
