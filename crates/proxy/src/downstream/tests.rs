//! The writer against hyper's server, byte for byte, and what this layer takes.

use super::*;
use hyper::body::Frame;
use std::collections::VecDeque;
use tokio::io::AsyncReadExt;

/// A body of unknown length giving these frames.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = crate::server::BodyError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[derive(Clone, Copy)]
enum B {
    Empty,
    Full(&'static str),
    Stream(&'static [&'static str]),
    Trailers(&'static str),
}

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: B,
    reason: Option<&str>,
) -> Response<ProxyBody> {
    let body: ProxyBody = match body {
        B::Empty => http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
        B::Full(s) => http_body_util::Full::new(Bytes::from(s))
            .map_err(|n| match n {})
            .boxed(),
        B::Stream(parts) => {
            Frames(parts.iter().map(|p| Frame::data(Bytes::from(*p))).collect()).boxed()
        }
        B::Trailers(name) => {
            let mut t = HeaderMap::new();
            t.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
            Frames([Frame::data(Bytes::from("abc")), Frame::trailers(t)].into()).boxed()
        }
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    for (n, v) in headers {
        res.headers_mut().append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    if let Some(r) = reason {
        res.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()).unwrap());
    }
    res
}

fn without_date(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .split("\r\n")
        .filter(|l| !l.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// What hyper's HTTP/1.1 server writes for `res` to the request `raw` (the client then
/// closes its side, so that hyper ends the connection after answering).
async fn hyper_writes(
    raw: &'static [u8],
    make: impl Fn() -> Response<ProxyBody> + Send + Sync + 'static,
) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let make = Arc::new(make);
    let svc = hyper::service::service_fn(move |_req| {
        let make = make.clone();
        async move { Ok::<_, std::convert::Infallible>(make()) }
    });
    let conn = tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), svc),
    );
    client.write_all(raw).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    let _ = conn.await;
    out
}

/// The same response written by this layer, and whether it keeps the connection.
async fn ours(
    raw: &'static [u8],
    res: Response<ProxyBody>,
    added: ResponseAdded,
) -> (Vec<u8>, std::io::Result<bool>) {
    let mut spans = Vec::new();
    let Parsed::Complete(head) = parse(raw, &mut spans) else {
        panic!("not taken: {}", String::from_utf8_lossy(raw));
    };
    let to_head = raw.starts_with(b"HEAD ");
    let mut written = Vec::new();
    let mut out = Vec::new();
    let keep = write_response(
        &mut written,
        &mut out,
        &mut None,
        (res, added),
        to_head,
        &head,
        head.keep_alive,
    )
    .await;
    (written, keep)
}

/// Every response shape is written byte for byte as hyper's server writes it (but the date),
/// and the connection is kept exactly when hyper would keep it.
#[tokio::test]
async fn responses_are_framed_as_hyper_frames_them() {
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n";
    const V10: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    const V10_KEEP: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
    const V10_BOTH: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n";
    const TE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n";
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        &'static [u8],
        u16,
        &'static [(&'static str, &'static str)],
        B,
        Option<&'static str>,
        bool,
    )> = vec![
        (
            "a known length",
            GET,
            200,
            &[("x-a", "1"), ("x-a", "2")],
            B::Full("hello"),
            None,
            true,
        ),
        (
            "a length header over a stream",
            GET,
            200,
            &[("content-length", "5")],
            B::Stream(&["he", "llo"]),
            None,
            true,
        ),
        (
            "an unknown length",
            GET,
            200,
            &[],
            B::Stream(&["he", "llo"]),
            None,
            true,
        ),
        (
            "a Content-Length header and a known length",
            GET,
            200,
            &[("content-length", "5")],
            B::Full("hello"),
            None,
            true,
        ),
        ("no body", GET, 200, &[], B::Empty, None, true),
        (
            "no body and a length header",
            GET,
            404,
            &[("content-length", "9")],
            B::Empty,
            None,
            true,
        ),
        (
            "HEAD",
            HEAD,
            200,
            &[("content-length", "42")],
            B::Empty,
            None,
            true,
        ),
        (
            "HEAD without a length",
            HEAD,
            200,
            &[],
            B::Empty,
            None,
            true,
        ),
        (
            "204",
            GET,
            204,
            &[("content-length", "0")],
            B::Empty,
            None,
            true,
        ),
        (
            "304",
            GET,
            304,
            &[("content-length", "12"), ("etag", "\"e\"")],
            B::Empty,
            None,
            true,
        ),
        (
            "a reason of its own",
            GET,
            200,
            &[],
            B::Full("x"),
            Some("Fine"),
            true,
        ),
        (
            "a status without a reason",
            GET,
            599,
            &[],
            B::Full("x"),
            None,
            true,
        ),
        (
            "the response closes",
            GET,
            503,
            &[("connection", "close")],
            B::Full("x"),
            None,
            false,
        ),
        (
            "the client closes",
            CLOSE,
            200,
            &[],
            B::Full("x"),
            None,
            false,
        ),
        (
            "the client closes, unknown length",
            CLOSE,
            200,
            &[],
            B::Stream(&["a", "b"]),
            None,
            false,
        ),
        ("HTTP/1.0", V10, 200, &[], B::Full("x"), None, false),
        (
            "HTTP/1.0, unknown length",
            V10,
            200,
            &[],
            B::Stream(&["a", "b"]),
            None,
            false,
        ),
        (
            "HTTP/1.0 kept",
            V10_KEEP,
            200,
            &[],
            B::Full("x"),
            None,
            true,
        ),
        (
            "a coding other than chunked",
            GET,
            200,
            &[("transfer-encoding", "gzip")],
            B::Stream(&["a"]),
            None,
            true,
        ),
        (
            "chunked and a length",
            GET,
            200,
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
            B::Stream(&["abc"]),
            None,
            true,
        ),
        (
            "announced trailers",
            GET,
            200,
            &[("trailer", "x-sum")],
            B::Trailers("x-sum"),
            None,
            true,
        ),
        (
            "unannounced trailers",
            GET,
            200,
            &[],
            B::Trailers("x-sum"),
            None,
            true,
        ),
        (
            "a 1xx status as the response",
            GET,
            103,
            &[("x-a", "1")],
            B::Full("x"),
            None,
            false,
        ),
        (
            "HTTP/1.0 asking to keep and to close",
            V10_BOTH,
            200,
            &[],
            B::Full("x"),
            None,
            false,
        ),
        (
            "announced trailers, taken",
            TE,
            200,
            &[("trailer", "x-sum")],
            B::Trailers("x-sum"),
            None,
            true,
        ),
        (
            "trailers not announced, taken",
            TE,
            200,
            &[],
            B::Trailers("x-sum"),
            None,
            true,
        ),
        (
            "trailers announced but not these",
            TE,
            200,
            &[("trailer", "x-other")],
            B::Trailers("x-sum"),
            None,
            true,
        ),
    ];
    // The headers the proxy adds: none, and some, which hyper gets in the map and this
    // layer writes beside it.
    let some = || ResponseAdded {
        upstream_latency: Some(12),
        proxy_latency: Some(0),
        upstream_status: None,
        via: true,
        request_id: Some(crate::names::RequestId::new(0, 0xf00d)),
        ..ResponseAdded::default()
    };
    let runs = cases
        .iter()
        .map(|c| (c, false))
        .chain(cases.iter().map(|c| (c, true)));
    for (&(name, raw, status, headers, body, reason, keep), with) in runs {
        let added = move || {
            if with {
                some()
            } else {
                ResponseAdded::default()
            }
        };
        let theirs = hyper_writes(raw, move || {
            let mut res = response(status, headers, body, reason);
            added().apply(res.headers_mut());
            res
        })
        .await;
        let (mine, kept) = ours(raw, response(status, headers, body, reason), added()).await;
        let name = format!(
            "{name}{}",
            if with {
                ", with the proxy's headers"
            } else {
                ""
            }
        );
        assert_eq!(without_date(&mine), without_date(&theirs), "{name}");
        let Ok(kept) = kept else {
            // A response hyper refuses to write: neither writes anything.
            assert!(theirs.is_empty(), "{name}");
            continue;
        };
        assert_eq!(kept, keep, "{name}: connection kept");
        assert!(
            String::from_utf8_lossy(&mine).contains("\r\ndate: "),
            "{name}: no date"
        );
    }
}

/// The proxy's response headers written beside the map replace the upstream's of their
/// names, but `Via`, which the proxy's is added to.
#[tokio::test]
async fn the_proxys_response_headers_replace_the_upstreams() {
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let res = response(
        200,
        &[
            ("x-kong-upstream-latency", "999"),
            ("via", "1.0 up"),
            ("x-kong-request-id", "theirs"),
            ("x-kong-upstream-status", "201"),
            ("x-other", "kept"),
        ],
        B::Full("x"),
        None,
    );
    let added = ResponseAdded {
        upstream_latency: Some(12),
        proxy_latency: None,
        upstream_status: None,
        via: true,
        request_id: Some(crate::names::RequestId::new(1, 2)),
        ..ResponseAdded::default()
    };
    let (mine, kept) = ours(GET, res, added).await;
    assert!(kept.unwrap());
    let text = without_date(&mine);
    let lines: Vec<&str> = text.split("\r\n").collect();
    for line in [
        "x-kong-upstream-latency: 12",
        "x-kong-request-id: 000000010000000000000002",
        // Not one the proxy sets here: the upstream's goes on.
        "x-kong-upstream-status: 201",
        "x-other: kept",
    ] {
        assert_eq!(
            lines.iter().filter(|l| **l == line).count(),
            1,
            "{line}: {text}"
        );
    }
    assert!(!text.contains("999") && !text.contains("theirs"), "{text}");
    let via = format!("via: {}", crate::forward::VIA);
    let vias: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("via: "))
        .collect();
    assert_eq!(vias, ["via: 1.0 up", via.as_str()], "{text}");
}

/// What this layer leaves to hyper, and what it takes.
#[test]
fn the_end_of_a_head_is_found() {
    for (bytes, end) in [
        (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], true),
        (b"GET / HTTP/1.1\nHost: a\n\n", true),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", false),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r", false),
        (b"\n\r\n", true),
        (b"\n\r", false),
        (b"\n", false),
        (b"", false),
    ] {
        assert_eq!(
            ends_head(bytes),
            end,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn requests_it_takes() {
    let mut spans = Vec::new();
    let mut taken = |raw: &[u8]| match parse(raw, &mut spans) {
        Parsed::Complete(_) => "taken",
        Parsed::Partial => "partial",
        Parsed::Hyper => "hyper",
    };
    assert_eq!(taken(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"), "taken");
    assert_eq!(
        taken(b"DELETE / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        "taken"
    );
    assert_eq!(taken(b"GET / HTTP/1.1\r\nHost: x\r\n"), "partial");
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        assert_eq!(taken(raw), "hyper", "{}", String::from_utf8_lossy(raw));
    }
}

/// The answer of a one-request upstream that sends `answer` to a `method` request, through
/// an HTTP/1.1 connection of the pool, its lines kept as they came when `raw` allows.
async fn from_upstream(
    answer: &'static [u8],
    method: Method,
    raw: bool,
) -> (Response<ProxyBody>, Option<crate::raw::RawHead>) {
    use crate::pool::{Conn, Dest, Pool};
    use std::time::Duration;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "the request was not sent");
            seen.extend_from_slice(&b[..n]);
        }
        s.write_all(answer).await.unwrap();
    });
    let pool = Arc::new(Pool::new());
    let dest = Arc::new(Dest::new(addr, None, false, Duration::from_secs(5)));
    let conn = pool.checkout(&dest, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(conn, Conn::H1(..)));
    let mut req = Request::new(http_body_util::Either::Right(
        http_body_util::Full::default(),
    ));
    *req.method_mut() = method;
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("up"));
    let added = crate::forward::Added::none();
    let t = Duration::from_secs(5);
    pool.send_on(&dest, conn, req, &added, raw, t, t)
        .await
        .unwrap()
}

/// A written response with its header lines in a form that does not depend on the names'
/// case nor on the order of different names (the order of one name's lines stays), nor on
/// the date.
fn normalized(written: &[u8]) -> String {
    let text = String::from_utf8_lossy(written);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let mut fields: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap_or((l, ""));
            let n = n.to_ascii_lowercase();
            let v = if n == "date" { "*" } else { v };
            (n, v.to_string())
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    format!("{status}\n{fields:?}\n{body}")
}

/// The sorted lines of a header map.
fn sorted(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An upstream's head whose lines are kept as they came is written as the same head mapped:
/// the same lines (but for the names' case and the order of different names), body, framing
/// and keeping of the connection, to each kind of request, with and without the proxy's
/// headers and a draining proxy's `Connection: close`. Put into a map (for plugins, logs and
/// hyper's server), they make the map the head makes. Heads that are not plain are mapped.
#[tokio::test]
async fn raw_heads_are_written_as_mapped_ones() {
    let answers: &[(&[u8], bool)] = &[
        (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 18:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", true),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n", true),
        (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 2\r\nSet-Cookie: b=2\r\nKeep-Alive: timeout=5\r\nVia: 1.1 other\r\ncontent-length: 3\r\n\r\nabc", true),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", true),
        (b"HTTP/1.1 200 OK\r\nX-Close: 1\r\n\r\nto the end", true),
        (b"HTTP/1.1 200 OK\r\n\r\n", true),
        (b"HTTP/1.1 404 Not Here\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", true),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", true),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\nX-Kong-Upstream-Latency: 9\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nX-Pad:  two spaces\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false),
        (b"HTTP/1.1 200 OK\r\nTrailer: x\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nB: 1\r\nKeep-Alive: x\r\nC: 1\r\nContent-Length: 2\r\nD: 1\r\nConnection: keep-alive\r\nE: 1\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nB: 1\r\nKeep-Alive: x\r\nC: 1\r\nContent-Length: 2\r\nD: 1\r\n\r\nok", true),
    ];
    let requests: [(&'static [u8], Method); 4] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Method::GET),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", Method::HEAD),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Method::GET,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Method::GET,
        ),
    ];
    let some = |raw: Option<crate::raw::RawHead>| ResponseAdded {
        upstream_latency: Some(3),
        proxy_latency: Some(1),
        upstream_status: Some(200),
        via: true,
        request_id: Some(crate::names::RequestId::new(0, 0xf00d)),
        raw,
        ..ResponseAdded::default()
    };
    for &(answer, plain) in answers {
        for (request, method) in &requests {
            for (with, draining) in [(false, false), (true, false), (true, true)] {
                let name = format!(
                    "{:?} to {:?}, the proxy's headers {with}, draining {draining}",
                    String::from_utf8_lossy(answer),
                    String::from_utf8_lossy(request)
                        .lines()
                        .next()
                        .unwrap_or_default(),
                );
                let (mut mapped, none) = from_upstream(answer, method.clone(), false).await;
                assert!(none.is_none(), "{name}");
                let (mut res, raw) = from_upstream(answer, method.clone(), true).await;
                assert_eq!(raw.is_some(), plain, "{name}: taken raw");
                if plain {
                    assert!(res.headers().is_empty(), "{name}");
                }
                // Into a map: the map the head makes, the proxy's headers after.
                let mut into = res.headers().clone();
                let mut expected = mapped.headers().clone();
                if with {
                    some(raw.clone()).apply(&mut into);
                    some(None).apply(&mut expected);
                } else {
                    ResponseAdded {
                        raw: raw.clone(),
                        ..ResponseAdded::default()
                    }
                    .apply(&mut into);
                }
                assert_eq!(sorted(&into), sorted(&expected), "{name}: into a map");
                // The log counts the same head, the lines beside the map or in it.
                let beside = if with {
                    some(raw.clone())
                } else {
                    ResponseAdded {
                        raw: raw.clone(),
                        ..ResponseAdded::default()
                    }
                };
                assert_eq!(
                    crate::pipeline::response_head_size(res.status(), res.headers(), &beside),
                    crate::pipeline::response_head_size(
                        res.status(),
                        &into,
                        &ResponseAdded::default()
                    ),
                    "{name}: head size"
                );
                if draining {
                    for r in [&mut mapped, &mut res] {
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                let (added_mapped, added_raw) = if with {
                    (some(None), some(raw))
                } else {
                    (
                        ResponseAdded::default(),
                        ResponseAdded {
                            raw,
                            ..ResponseAdded::default()
                        },
                    )
                };
                let (theirs, kept_mapped) = ours(request, mapped, added_mapped).await;
                let (mine, kept_raw) = ours(request, res, added_raw).await;
                assert_eq!(normalized(&mine), normalized(&theirs), "{name}");
                assert_eq!(
                    kept_raw.as_ref().ok(),
                    kept_mapped.as_ref().ok(),
                    "{name}: kept"
                );
                // (A response the writer refuses has no head.)
                assert!(
                    kept_mapped.is_err()
                        || String::from_utf8_lossy(&mine)
                            .to_ascii_lowercase()
                            .contains("\r\ndate: "),
                    "{name}: no date"
                );
            }
        }
    }
}

/// A client's head whose lines are kept as they came goes upstream as the same head mapped:
/// the same lines (but for the names' case and the order of different names), the proxy's
/// headers replacing the client's, this hop's left out; and into a map (for hyper's clients),
/// the same map. Heads that are not plain are mapped.
#[test]
fn raw_requests_go_upstream_as_mapped_ones() {
    use crate::forward::{upstream_headers, Forwarding};
    let heads: &[(&[u8], bool)] = &[
        (b"GET /a/b?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n", true),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nTE: trailers\r\nAccept: */*\r\n\r\n", true),
        (b"GET /a/b HTTP/1.1\r\nX-Forwarded-Proto: https\r\nHost: example.com\r\nX-Forwarded-Host: evil\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Prefix: /x\r\nX-Kong-Request-Id: forged\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Path: /y\r\n\r\n", true),
        (b"GET /a/b HTTP/1.1\r\nA: 1\r\nHost: example.com\r\nB: 2\r\nA: 3\r\nContent-Length: 0\r\n\r\n", true),
        (b"GET /a/b HTTP/1.1\r\nHOST: example.com\r\nx-forwarded-proto: y\r\nCONNECTION: Close\r\n\r\n", true),
        (b"GET /a/b HTTP/1.0\r\nAccept: */*\r\n\r\n", true),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nVia: 1.0 edge\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nHost: other\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nConnection: X-Custom\r\nX-Custom: 1\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\r\nX-Pad:  two\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: example.com\nAccept: */*\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: e\r\nTE: a\r\nTE: b\r\nTE: c\r\nTE: d\r\nTE: e\r\nTE: f\r\nTE: g\r\nTE: h\r\n\r\n", false),
        (b"GET /a/b HTTP/1.1\r\nHost: e\r\nTE: a\r\nTE: b\r\nTE: c\r\nTE: d\r\nTE: e\r\nTE: f\r\nTE: g\r\n\r\n", true),
    ];
    let peer: std::net::IpAddr = "10.0.0.9".parse().unwrap();
    let port = HeaderValue::from_static("8000");
    let upstream_host = HeaderValue::from_static("up.internal:8080");
    let id = HeaderValue::from_static("abc123");
    let client = crate::server::Client {
        ip: peer,
        value: HeaderValue::from_static("10.0.0.9"),
        trusted: false,
    };
    let upstream = |parts: &mut hyper::http::request::Parts,
                    raw: Option<RawRequest>,
                    prefix: Option<&str>,
                    with_id: bool| {
        let mut headers = std::mem::take(&mut parts.headers);
        let mut added = upstream_headers(
            &mut headers,
            &Forwarding {
                client: &client,
                peer_ip: peer,
                https: false,
                host: "example.com",
                port: &port,
                raw_path: "/a/b",
                prefix,
                upgrade: None,
                upstream_host: &upstream_host,
                request_id: with_id.then_some(id.as_bytes()),
            },
        );
        added.raw = raw.as_ref();
        parts.headers = headers;
        let body: crate::pool::UpBody =
            http_body_util::Either::Right(http_body_util::Full::default());
        let mut out = Vec::new();
        crate::h1::write_head(&mut out, parts, &added, &body);
        let mut map = parts.headers.clone();
        added.apply(&mut map);
        (out, sorted(&map))
    };
    for &(bytes, plain) in heads {
        for (prefix, with_id) in [(None, true), (Some("/a"), false)] {
            let name = format!("{:?}, prefix {prefix:?}", String::from_utf8_lossy(bytes));
            let mut spans = Vec::new();
            let Parsed::Complete(head) = parse(bytes, &mut spans) else {
                panic!("not taken: {name}");
            };
            let b = Bytes::from_static(bytes);
            let (mapped, none) = request(&b, &head, &spans, None, false).unwrap();
            assert!(none.is_none(), "{name}");
            let (kept, raw) = request(&b, &head, &spans, None, true).unwrap();
            assert_eq!(raw.is_some(), plain, "{name}: kept as it came");
            if plain {
                assert!(kept.headers().is_empty(), "{name}");
                assert_eq!(
                    raw.as_ref().and_then(RawRequest::host),
                    mapped.headers().get(header::HOST).cloned(),
                    "{name}: Host"
                );
                // Put into the request's map, the lines make the map the head makes.
                let mut into = HeaderMap::new();
                raw.clone().unwrap().into_map(&mut into);
                assert_eq!(
                    sorted(&into),
                    sorted(mapped.headers()),
                    "{name}: into a map"
                );
            }
            // The log counts the head the client sent, kept or mapped.
            assert_eq!(
                crate::pipeline::request_head_size(&kept, raw.as_ref()),
                crate::pipeline::request_head_size(&mapped, None),
                "{name}: head size"
            );
            if raw.is_some() {
                assert_eq!(
                    crate::pipeline::request_head_size(&kept, raw.as_ref()),
                    bytes.len() as u64,
                    "{name}: head size"
                );
            }
            let (mut a, _) = mapped.into_parts();
            let (mut b, _) = kept.into_parts();
            let (theirs, their_map) = upstream(&mut a, None, prefix, with_id);
            let (mine, my_map) = upstream(&mut b, raw, prefix, with_id);
            assert_eq!(normalized(&mine), normalized(&theirs), "{name}");
            assert_eq!(my_map, their_map, "{name}: for hyper's clients");
        }
    }
}
