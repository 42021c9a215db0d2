//! The request the upstream receives: hop-by-hop headers removed, `Host`, and the headers
//! Kong adds (`X-Forwarded-*`, `X-Real-IP`, `Via`, `X-Kong-Request-Id`).

use std::borrow::Cow;
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
    pub request_id: Option<&'a [u8]>,
}

/// The headers the proxy sets upstream, in the order they are written: before the client's,
/// as nginx writes its `proxy_set_header` lines (so `Host` comes first, as RFC 9112 asks).
static ADDED: [HeaderName; 12] = [
    header::HOST,
    header::CONNECTION,
    header::UPGRADE,
    names::X_FORWARDED_FOR,
    names::X_FORWARDED_PROTO,
    names::X_FORWARDED_HOST,
    names::X_FORWARDED_PORT,
    names::X_FORWARDED_PATH,
    names::X_FORWARDED_PREFIX,
    names::X_REAL_IP,
    header::VIA,
    names::X_KONG_REQUEST_ID,
];
/// The start of each `ADDED` line, written with one copy (a test checks them against the names).
static ADDED_LINES: [names::LineStart; 12] = [
    names::LineStart::new(b"host: "),
    names::LineStart::new(b"connection: "),
    names::LineStart::new(b"upgrade: "),
    names::LineStart::new(b"x-forwarded-for: "),
    names::LineStart::new(b"x-forwarded-proto: "),
    names::LineStart::new(b"x-forwarded-host: "),
    names::LineStart::new(b"x-forwarded-port: "),
    names::LineStart::new(b"x-forwarded-path: "),
    names::LineStart::new(b"x-forwarded-prefix: "),
    names::LineStart::new(b"x-real-ip: "),
    names::LineStart::new(b"via: "),
    names::LineStart::new(b"x-kong-request-id: "),
];
pub(crate) const HOST: usize = 0;
pub(crate) const CONNECTION: usize = 1;
const UPGRADE: usize = 2;
const XFF: usize = 3;
const PROTO: usize = 4;
const FWD_HOST: usize = 5;
const PORT: usize = 6;
const PATH: usize = 7;
const PREFIX: usize = 8;
const REAL_IP: usize = 9;
const VIA_: usize = 10;
const REQUEST_ID: usize = 11;
/// The client's headers that keep a request's lines from being written as they came
/// ([`crate::raw::RawRequest`]): those the proxy extends (`X-Forwarded-For`, `Via`), and
/// `Upgrade`.
pub(crate) const NOT_RAW: u16 = 1 << UPGRADE | 1 << XFF | 1 << VIA_;

/// Which of the proxy's upstream headers `name` is (any case).
pub(crate) fn added_index(name: &[u8]) -> Option<usize> {
    // The candidates of the name's length only (a test checks them against `ADDED`).
    let candidates: &[usize] = match name.len() {
        3 => &[VIA_],
        4 => &[HOST],
        7 => &[UPGRADE],
        9 => &[REAL_IP],
        10 => &[CONNECTION],
        15 => &[XFF],
        16 => &[FWD_HOST, PORT, PATH],
        17 => &[PROTO, REQUEST_ID],
        18 => &[PREFIX],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|&i| name.eq_ignore_ascii_case(&ADDED_LINES[i].as_bytes()[..name.len()]))
}

/// Whether `name` (any case) is a hop-by-hop header's (a test checks them against
/// `HOP_BY_HOP`).
pub(crate) fn hop_by_hop(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"trailer", b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// The headers the proxy sets on an upstream request, and which of the client's headers they
/// replace (or remove). They are not put into the request's header map: the HTTP/1.1 writer
/// writes them beside it, so that the map is not grown and searched for them per request;
/// hyper's clients get them [put into the map](Added::apply).
pub struct Added<'a> {
    values: [Option<Cow<'a, [u8]>>; 12],
    /// Bits of `ADDED`: the client's headers of these names are not forwarded.
    skip: u16,
    /// The client's header lines as they came, when its map has none of them.
    pub raw: Option<&'a crate::raw::RawRequest>,
}

impl<'a> Added<'a> {
    /// None: the client's headers go as they are.
    pub fn none() -> Added<'a> {
        Added {
            values: Default::default(),
            skip: 0,
            raw: None,
        }
    }

    /// Set header `i` (replacing the client's), from bytes known to be a header value.
    fn put(&mut self, i: usize, value: &'a [u8]) {
        self.values[i] = Some(Cow::Borrowed(value));
        self.skip |= 1 << i;
    }

    /// Set header `i` from text that may not be a header value: when it is not, the header
    /// is not set (and the client's, if any, goes as it came).
    fn put_text(&mut self, i: usize, value: Cow<'a, [u8]>) {
        if value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
        {
            self.values[i] = Some(value);
            self.skip |= 1 << i;
        }
    }

    /// The client's `Host` is not sent, nor one of the proxy's (HTTP/2 to gRPC upstreams: the
    /// authority travels in the URI).
    pub fn without_host(&mut self) {
        self.values[HOST] = None;
        self.skip |= 1 << HOST;
    }

    /// Whether the client's header `name` is left out: one the proxy sets or removes.
    pub fn skips(&self, name: &HeaderName) -> bool {
        // Only names of these lengths can be one of them: most are passed over at once.
        self.skip != 0
            && matches!(name.as_str().len(), 3 | 4 | 7 | 9 | 10 | 15..=18)
            && ADDED
                .iter()
                .enumerate()
                .any(|(i, n)| self.skip & (1 << i) != 0 && n == name)
    }

    /// The headers the proxy sets, in the order they are written.
    pub fn lines(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> + '_ {
        ADDED
            .iter()
            .zip(&self.values)
            .filter_map(|(n, v)| Some((n, &**v.as_ref()?)))
    }

    /// Their lines, into a head being written, then the client's lines as they came (if they
    /// were kept so) but those left out.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (start, value) in ADDED_LINES.iter().zip(&self.values) {
            if let Some(v) = value {
                start.push(out);
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(raw) = self.raw {
            raw.write(out, self.skip);
        }
    }

    /// Into `headers` itself, for a client that writes the map (hyper's): the client's lines
    /// kept as they came put into it (but this hop's), the client's headers of the names left
    /// out removed, the proxy's appended.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(raw) = self.raw {
            raw.put_upstream(headers);
        }
        for (i, n) in ADDED.iter().enumerate() {
            if self.skip & (1 << i) != 0 {
                headers.remove(n);
            }
        }
        for (n, v) in self.lines() {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(n.clone(), v);
            }
        }
    }
}

/// The headers the proxy sets upstream, made from the client's (as the plugins left them),
/// whose hop-by-hop headers are removed here.
pub fn upstream_headers<'a>(headers: &mut HeaderMap, f: &Forwarding<'a>) -> Added<'a> {
    strip_hop_by_hop(headers);
    // Which of the proxy's headers the client sent, in one pass over the names.
    let mut present = 0u16;
    for k in headers.keys() {
        if matches!(k.as_str().len(), 3 | 15..=18) {
            if let Some(i) = ADDED.iter().position(|n| n == k) {
                present |= 1 << i;
            }
        }
    }
    let mut added = Added::none();
    if let Some(proto) = f.upgrade {
        added.put(CONNECTION, b"upgrade");
        added.put(UPGRADE, proto.as_bytes());
    }
    added.put(HOST, f.upstream_host.as_bytes());
    // As Kong: X-Forwarded-For as received (every line) with the connecting peer
    // appended, or the client alone when there was none.
    let mut xff = String::new();
    if present & (1 << XFF) != 0 {
        for v in headers.get_all(names::X_FORWARDED_FOR) {
            if let Ok(v) = v.to_str() {
                xff.push_str(v);
                xff.push_str(", ");
            }
        }
    }
    if xff.is_empty() {
        added.put(XFF, f.client.value.as_bytes());
    } else {
        use std::fmt::Write as _;
        let _ = write!(xff, "{}", f.peer_ip);
        added.put_text(XFF, Cow::Owned(xff.into_bytes()));
        if added.values[XFF].is_none() {
            added.put(XFF, f.client.value.as_bytes());
        }
    }
    // The other X-Forwarded-* a trusted peer sent are kept; anyone else's are replaced.
    let ours = |i: usize| !(f.client.trusted && present & (1 << i) != 0);
    if ours(PROTO) {
        added.put(PROTO, if f.https { b"https" } else { b"http" });
    }
    if ours(FWD_HOST) {
        let host = f.host.as_bytes();
        let host = if host.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        added.put_text(FWD_HOST, host);
    }
    if ours(PORT) {
        added.put(PORT, f.port.as_bytes());
    }
    if ours(PATH) {
        added.put_text(PATH, Cow::Borrowed(f.raw_path.as_bytes()));
    }
    if ours(PREFIX) {
        match f.prefix {
            Some(p) => added.put_text(PREFIX, Cow::Borrowed(p.as_bytes())),
            // Not forwarded.
            None => added.skip |= 1 << PREFIX,
        }
    }
    added.put(REAL_IP, f.client.value.as_bytes());
    let prev_via = (present & (1 << VIA_) != 0)
        .then(|| headers.get(header::VIA)?.to_str().ok())
        .flatten();
    match prev_via {
        Some(prev) => added.put_text(VIA_, Cow::Owned(format!("{prev}, {VIA}").into_bytes())),
        None => added.put(VIA_, VIA.as_bytes()),
    }
    if let Some(id) = f.request_id {
        added.put(REQUEST_ID, id);
    }
    added
}

/// Gantry's `Via` line on a response.
const VIA_LINE: &str = concat!("via: 1.1 gantry/", env!("CARGO_PKG_VERSION"), "\r\n");

/// The headers the proxy adds to a response (Kong's `headers` setting), kept beside its header
/// map while nothing reads the map: the HTTP/1.1 writer writes them after the map's lines,
/// leaving out the map's lines of the names they replace. Where the map is read (the plugins'
/// response phases, the log phase) or written by hyper's server, they are
/// [put into it](ResponseAdded::apply), as they always were.
#[derive(Debug, Default)]
pub struct ResponseAdded {
    /// `X-Kong-Upstream-Latency`, milliseconds.
    pub upstream_latency: Option<u64>,
    /// `X-Kong-Proxy-Latency`, milliseconds.
    pub proxy_latency: Option<u64>,
    /// `X-Kong-Upstream-Status`.
    pub upstream_status: Option<u16>,
    /// Gantry's `Via`, after any the upstream sent.
    pub via: bool,
    /// `X-Kong-Request-Id`.
    pub request_id: Option<names::RequestId>,
    /// `X-Kong-Response-Latency`, milliseconds (responses the proxy answers itself).
    pub response_latency: Option<u64>,
    /// The upstream's header lines, when they stayed as they came (the map then has none of
    /// them): written before the map's lines.
    pub raw: Option<crate::raw::RawHead>,
}

/// The starts of the `X-Kong-Request-Id` and `X-Kong-Response-Latency` lines to the client.
const REQUEST_ID_START: &[u8] = b"x-kong-request-id: ";
const RESPONSE_LATENCY_START: &[u8] = b"x-kong-response-latency: ";

impl ResponseAdded {
    /// The numeric headers, in the order they are written: name, the start of its line (a test
    /// checks them against each other), value.
    fn numbers(
        &self,
    ) -> impl Iterator<Item = (&'static HeaderName, &'static names::LineStart, Option<u64>)> {
        static NUMBERED: [(HeaderName, names::LineStart); 3] = [
            (
                names::X_KONG_UPSTREAM_LATENCY,
                names::LineStart::new(b"x-kong-upstream-latency: "),
            ),
            (
                names::X_KONG_PROXY_LATENCY,
                names::LineStart::new(b"x-kong-proxy-latency: "),
            ),
            (
                names::X_KONG_UPSTREAM_STATUS,
                names::LineStart::new(b"x-kong-upstream-status: "),
            ),
        ];
        NUMBERED
            .iter()
            .zip([
                self.upstream_latency,
                self.proxy_latency,
                self.upstream_status.map(u64::from),
            ])
            .map(|((name, start), n)| (name, start, n))
    }

    /// Whether the map's header `name` is left out: one these replace (`Via` is added to, not
    /// replaced).
    pub fn skips(&self, name: &HeaderName) -> bool {
        // Only `x-kong-` names of these lengths can be one of them.
        let n = name.as_str();
        matches!(n.len(), 17 | 20 | 22 | 23)
            && n.starts_with("x-kong-")
            && (self.numbers().any(|(h, _, v)| v.is_some() && h == name)
                || (self.request_id.is_some() && name == names::X_KONG_REQUEST_ID)
                || (self.response_latency.is_some() && name == names::X_KONG_RESPONSE_LATENCY))
    }

    /// Their lines, into a head being written.
    pub fn write(&self, out: &mut Vec<u8>) {
        let line = |out: &mut Vec<u8>, start: &[u8], value: &[u8]| {
            out.extend_from_slice(start);
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        for (_, start, n) in self.numbers() {
            if let Some(n) = n {
                let (digits, len) = names::itoa_buf(n);
                start.push(out);
                out.extend_from_slice(&digits[20 - len..]);
                out.extend_from_slice(b"\r\n");
            }
        }
        if self.via {
            out.extend_from_slice(VIA_LINE.as_bytes());
        }
        if let Some(id) = &self.request_id {
            line(out, REQUEST_ID_START, id.as_bytes());
        }
        if let Some(n) = self.response_latency {
            let (digits, len) = names::itoa_buf(n);
            line(out, RESPONSE_LATENCY_START, &digits[20 - len..]);
        }
    }

    /// The bytes of the lines beside the map: the upstream's kept lines and the lines
    /// [`write`](Self::write) writes.
    pub fn size(&self) -> usize {
        let digits = |n: u64| names::itoa_buf(n).1;
        let numbers: usize = self
            .numbers()
            .filter_map(|(_, start, n)| Some(start.as_bytes().len() + digits(n?) + 2))
            .sum();
        numbers
            + self.raw.as_ref().map_or(0, crate::raw::RawHead::size)
            + if self.via { VIA_LINE.len() } else { 0 }
            + self
                .request_id
                .as_ref()
                .map_or(0, |id| REQUEST_ID_START.len() + id.as_bytes().len() + 2)
            + self
                .response_latency
                .map_or(0, |n| RESPONSE_LATENCY_START.len() + digits(n) + 2)
    }

    /// Into the response's map (and none left beside it), the upstream's lines first.
    pub fn apply(&mut self, headers: &mut HeaderMap) {
        let mut me = std::mem::take(self);
        if let Some(raw) = me.raw.take() {
            raw.into_map(headers);
        }
        for (name, _, n) in me.numbers() {
            if let Some(n) = n {
                headers.insert(name.clone(), names::number(n));
            }
        }
        if me.via {
            headers.append(header::VIA, HeaderValue::from_static(VIA));
        }
        if let Some(id) = me.request_id {
            headers.insert(names::X_KONG_REQUEST_ID, id.value());
        }
        if let Some(n) = me.response_latency {
            headers.insert(names::X_KONG_RESPONSE_LATENCY, names::number(n));
        }
    }
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
    if h.is_empty() {
        return;
    }
    // One pass over the names (compared as known names, not hashed) notes which are present:
    // most heads have none, and a response mostly has `Connection` alone.
    let mut present = 0u16;
    for k in h.keys() {
        let name = k.as_str();
        // Only names of these lengths can be one of them: most are passed over at once.
        if !matches!(name.len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
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

    /// The upstream head's headers as the HTTP/1.1 writer writes them.
    fn written(headers: &HeaderMap, added: &Added<'_>) -> Vec<(String, String)> {
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        added
            .lines()
            .map(|(n, v)| (n.to_string(), text(v)))
            .chain(
                headers
                    .iter()
                    .filter(|(n, _)| !added.skips(n))
                    .map(|(n, v)| (n.to_string(), text(v.as_bytes()))),
            )
            .collect()
    }

    #[test]
    fn the_names_are_found_in_any_case() {
        for (i, n) in ADDED.iter().enumerate() {
            assert_eq!(added_index(n.as_str().as_bytes()), Some(i), "{n}");
            let upper = n.as_str().to_ascii_uppercase();
            assert_eq!(added_index(upper.as_bytes()), Some(i), "{n}");
        }
        for n in &HOP_BY_HOP {
            assert!(hop_by_hop(n.as_str().as_bytes()), "{n}");
            assert!(
                hop_by_hop(n.as_str().to_ascii_uppercase().as_bytes()),
                "{n}"
            );
        }
        for other in [
            "accept",
            "x-forwarded-fox",
            "vie",
            "hosts",
            "te2",
            "keep-alivf",
        ] {
            assert_eq!(added_index(other.as_bytes()), None, "{other}");
            assert!(!hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn the_proxys_headers_replace_the_clients() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let port = HeaderValue::from_static("8000");
        let upstream_host = HeaderValue::from_static("up.internal:8080");
        let id = HeaderValue::from_static("abc123");
        let forwarding = |client: &'static Client, prefix| Forwarding {
            client,
            peer_ip: peer,
            https: false,
            host: "Example.COM",
            port: &port,
            raw_path: "/a/b",
            prefix,
            upgrade: None,
            upstream_host: &upstream_host,
            request_id: Some(id.as_bytes()),
        };
        let untrusted: &'static Client = Box::leak(Box::new(Client {
            ip: peer,
            value: HeaderValue::from_static("10.0.0.9"),
            trusted: false,
        }));
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("accept", "*/*"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/p"),
            ("via", "1.0 edge"),
            ("connection", "close"),
            ("x-kong-request-id", "forged"),
        ]);
        let added = upstream_headers(&mut h, &forwarding(untrusted, None));
        let expect = [
            ("host", "up.internal:8080"),
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-port", "8000"),
            ("x-forwarded-path", "/a/b"),
            ("x-real-ip", "10.0.0.9"),
            ("via", &format!("1.0 edge, {VIA}")),
            ("x-kong-request-id", "abc123"),
            ("accept", "*/*"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(written(&h, &added), expect);
        // hyper's clients get the same headers in the map.
        added.apply(&mut h);
        let mut in_map: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        in_map.sort();
        let mut sorted = expect.clone();
        sorted.sort();
        assert_eq!(in_map, sorted);

        // A trusted peer's X-Forwarded-* are kept; the prefix a route strips is sent.
        let trusted: &'static Client = Box::leak(Box::new(Client {
            ip: peer,
            value: HeaderValue::from_static("10.0.0.9"),
            trusted: true,
        }));
        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-port", "443")]);
        let added = upstream_headers(&mut h, &forwarding(trusted, Some("/api")));
        let got = written(&h, &added);
        let value = |name: &str| -> Vec<&str> {
            got.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(value("x-forwarded-proto"), ["https"]);
        assert_eq!(value("x-forwarded-port"), ["443"]);
        assert_eq!(value("x-forwarded-prefix"), ["/api"]);
        assert_eq!(value("x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(value("via"), [VIA]);
        assert!(!added.skips(&header::ACCEPT));
        assert!(added.skips(&header::HOST));

        // gRPC: no Host at all.
        let mut h = map(&[("host", "example.com")]);
        let mut added = upstream_headers(&mut h, &forwarding(trusted, None));
        added.without_host();
        assert!(written(&h, &added).iter().all(|(n, _)| n != "host"));
    }

    #[test]
    fn the_line_starts_are_the_names() {
        for (start, name) in ADDED_LINES.iter().zip(&ADDED) {
            assert_eq!(start.as_bytes(), format!("{name}: ").as_bytes());
        }
        for (name, start, _) in ResponseAdded::default().numbers() {
            assert_eq!(start.as_bytes(), format!("{name}: ").as_bytes());
        }
        assert_eq!(VIA_LINE, format!("via: {VIA}\r\n"));
        let mut out = Vec::new();
        ResponseAdded {
            request_id: Some(names::RequestId::new(0, 10)),
            response_latency: Some(5),
            ..ResponseAdded::default()
        }
        .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "{}: 00000000000000000000000a\r\n{}: 5\r\n",
                names::X_KONG_REQUEST_ID,
                names::X_KONG_RESPONSE_LATENCY
            )
        );
        // What the log counts of them is what is written.
        for n in [0, 9, 10, 99, 100, 12_345, u64::MAX] {
            for all in [false, true] {
                let added = ResponseAdded {
                    upstream_latency: Some(n),
                    proxy_latency: all.then_some(n / 3),
                    upstream_status: all.then_some(200),
                    via: all,
                    request_id: Some(names::RequestId::new(7, n)),
                    response_latency: all.then_some(n),
                    raw: None,
                };
                let mut out = Vec::new();
                added.write(&mut out);
                assert_eq!(added.size(), out.len(), "{n} {all}");
            }
        }
        assert_eq!(ResponseAdded::default().size(), 0);
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
