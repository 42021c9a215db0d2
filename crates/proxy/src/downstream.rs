//! HTTP/1.1 from clients, served by the proxy itself in the connection's own task: the request
//! head parsed with `httparse` (the parser hyper uses) into a request whose header values are
//! slices of the bytes read, and the response head and body written together, in one write when
//! the body is at hand.
//!
//! This layer takes the requests a proxy mostly sees: HTTP/1.0 and 1.1 requests without a body
//! (no `Transfer-Encoding`, no `Content-Length` but `0`), without `Upgrade` or `Expect`, and not
//! `CONNECT`. At the first request it does not take (a body, a protocol switch, HTTP/2's
//! preface, a head the parser refuses or one over the limits), the connection goes to hyper's
//! server with the bytes read so far, and stays there: hyper then answers it exactly as it
//! answered every request before (its 400, 431 and framing rules, upgrades, 100-continue).
//!
//! The response is framed as hyper's server frames it, so that a client sees the same bytes
//! whichever of the two answered:
//! - a `Content-Length` of the response is kept (the first of equal values); a body of known
//!   length without one gets it, one of unknown length is chunked (HTTP/1.1) or runs to the
//!   connection's end (HTTP/1.0);
//! - HEAD, 204 and 304 responses carry no body; a `Transfer-Encoding` whose last coding is not
//!   `chunked` gets `chunked` appended; trailers go out when the `Trailer` header names them;
//! - `Date` is added when absent; `Connection: close` is added when the connection will close
//!   (the client asked, the listener is closing, the proxy is draining), and
//!   `Connection: keep-alive` to an HTTP/1.0 client that asked to keep it;
//! - a 1xx status as a final response is answered 500, as hyper does.
//!
//! The header read timeout holds for every head, as hyper's `header_read_timeout`: a client
//! that sends no whole head in time is counted and logged as 408, and its connection closed.

use std::io::{IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::forward::ResponseAdded;
use crate::pool::Inbound;
use crate::server::{Cancels, ConnInfo, Proxy, ProxyBody, MAX_HEAD, MAX_HEADER_LINES};

/// What a read asks room for in the buffer.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes gathered behind the head (or earlier chunks) into one write; a larger chunk is
/// written beside them (a vectored write), not copied.
const GATHER: usize = 16 * 1024;

use crate::raw::{RawRequest, Span};

/// A whole request head this layer takes.
struct Head {
    /// Its length in the buffer.
    len: usize,
    method: (usize, usize),
    target: (usize, usize),
    http10: bool,
    /// The client lets the connection be kept after this request.
    keep_alive: bool,
    /// The client takes trailers (`TE: trailers`); hyper sends none otherwise.
    trailers: bool,
}

enum Parsed {
    Partial,
    Complete(Head),
    /// Not a request this layer takes: hyper's.
    Hyper,
}

/// Parse the request head at the start of `buf`, the headers' places going to `spans`.
fn parse(buf: &[u8], spans: &mut Vec<Span>) -> Parsed {
    spans.clear();
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_LINES];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    if method == "CONNECT" {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let (mut close, mut keep, mut length, mut trailers) = (false, false, false, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // A body (or a second length) is hyper's.
            if length || h.value != b"0" {
                return Parsed::Hyper;
            }
            length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Hyper;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(h.value, b"close");
            keep |= has_token(h.value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= has_token(h.value, b"trailers");
        }
        let (n, nl) = at(name);
        let (v, vl) = at(h.value);
        spans.push((n, nl, v, vl));
    }
    let http10 = minor == 0;
    Parsed::Complete(Head {
        len,
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
        http10,
        // A `close` anywhere wins over `keep-alive`, as in hyper.
        keep_alive: !close && (keep || !http10),
        trailers,
    })
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a `Connection` header of `headers` holds `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), token))
}

/// Room left in a request's header map for the headers the proxy adds upstream
/// (`X-Forwarded-*`, `X-Real-IP`, `Via`, `X-Kong-Request-Id`), so that it does not grow.
const ADDED_UPSTREAM: usize = 10;
/// A map kept for the next request holds at most this many headers.
const KEPT_MAP: usize = 64;

/// The request of a parsed head, its headers in `spare` (a map the connection used before)
/// when there is one; `None` when a part of it is not valid as `http` takes it. With `raw`,
/// its header lines are kept as they came when they can be ([`RawRequest`]), the map left
/// empty.
fn request(
    head: &Bytes,
    h: &Head,
    spans: &[Span],
    spare: Option<HeaderMap>,
    raw: bool,
) -> Option<(Request<Inbound>, Option<RawRequest>)> {
    let method = Method::from_bytes(&head[h.method.0..h.method.0 + h.method.1]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(h.target.0..h.target.0 + h.target.1)).ok()?;
    let mut headers = spare.unwrap_or_default();
    let lines = if raw {
        RawRequest::of(head, spans)
    } else {
        None
    };
    if lines.is_none() {
        headers.reserve(spans.len() + ADDED_UPSTREAM);
        for &(n, nl, v, vl) in spans {
            let name = HeaderName::from_bytes(&head[n..n + nl]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl)).ok()?;
            headers.append(name, value);
        }
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Some((req, lines))
}

/// Whether `bytes` hold the empty line that ends a head: `\n\r\n` (in `\r\n\r\n`) or `\n\n`.
fn ends_head(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// Room in the read buffer for the next read.
fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// A connection's byte stream with what was read of it already put back in front, for hyper.
struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Proxy {
    /// Serve an HTTP/1.x client connection (see the module's documentation).
    pub(crate) async fn serve_http1<S>(
        self: Arc<Self>,
        mut io: S,
        conn: ConnInfo,
        cancels: Arc<Cancels>,
        closing: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Whether the listener is closing: one wait for the connection's life (a wait made
        // per request would take the channel's lock twice each time); `closing` itself goes to
        // hyper with a connection handed over.
        let mut shut = closing.clone();
        let shutting = async move {
            let _ = shut.wait_for(|v| *v).await;
        };
        tokio::pin!(shutting);
        let mut closed = false;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut spans = Vec::new();
        let mut out = Vec::with_capacity(1024);
        // The last response's header map, emptied, for the next request's headers (hyper's
        // server keeps one too).
        let mut spare = None;
        // The header read timeout: each head's deadline is kept here, and the timer, armed
        // once, is moved to it only when it fires early, so that a request does not re-arm it.
        let mut deadline = tokio::time::Instant::now() + self.header_timeout;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        // A request has been answered here: what is handed to hyper afterwards is HTTP/1 (an
        // HTTP/2 preface now is not a protocol switch hyper would have made).
        let mut served = false;
        loop {
            let mut waiting = false;
            // How far the buffer has been searched for the head's end: a head is parsed once it
            // has one (hyper's `is_complete_fast`), not again at every byte of a slow one.
            let mut searched = 0;
            let head = loop {
                if buf.len() > searched {
                    // The end is an empty line: `\n\r\n` (in `\r\n\r\n`) or `\n\n`.
                    let ended = ends_head(&buf[searched.saturating_sub(2)..]);
                    searched = buf.len();
                    if ended || buf.len() >= MAX_HEAD {
                        match parse(&buf, &mut spans) {
                            // Over the limit, hyper answers 431.
                            Parsed::Complete(h) if h.len < MAX_HEAD => break h,
                            Parsed::Partial if buf.len() < MAX_HEAD => {}
                            _ => {
                                return self
                                    .hand_over(io, buf, conn, cancels, closing, served)
                                    .await
                            }
                        }
                    }
                }
                if !waiting {
                    if buf.is_empty() && closed {
                        let _ = io.shutdown().await;
                        return;
                    }
                    deadline = tokio::time::Instant::now() + self.header_timeout;
                    waiting = true;
                }
                room(&mut buf);
                tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => match r {
                        Ok(0) => {
                            let _ = io.shutdown().await;
                            return;
                        }
                        Err(_) => return,
                        Ok(_) => {}
                    },
                    () = &mut timer => {
                        if tokio::time::Instant::now() < deadline {
                            timer.as_mut().reset(deadline);
                            continue;
                        }
                        self.refused(conn.peer, 408, "read header from client timeout");
                        let _ = io.shutdown().await;
                        return;
                    }
                    () = &mut shutting, if !closed => {
                        closed = true;
                        if buf.is_empty() {
                            let _ = io.shutdown().await;
                            return;
                        }
                    }
                }
            };
            let bytes = buf.split_to(head.len).freeze();
            // Kept as they came where nothing will read the request's map.
            let raw = self.raw_requests(&self.snapshot.load());
            let Some((req, mut lines)) = request(&bytes, &head, &spans, spare.take(), raw) else {
                // hyper answers it (400) as it always has.
                let mut again = BytesMut::from(&bytes[..]);
                again.extend_from_slice(&buf);
                return self
                    .hand_over(io, again, conn, cancels, closing, served)
                    .await;
            };
            let to_head = req.method() == Method::HEAD;
            // While the request is answered, the connection is read: a client that leaves
            // drops its request (counted as cancelled), as with hyper's server; bytes that come
            // are the next request's.
            let counted = self.answering(&cancels);
            let answering = self.handle(req, &mut lines, &conn);
            tokio::pin!(answering);
            let mut res = loop {
                room(&mut buf);
                tokio::select! {
                    biased;
                    res = &mut answering => break res,
                    r = io.read_buf(&mut buf), if buf.len() < MAX_HEAD => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                }
            };
            self.answered(counted, &mut res.0, true);
            served = true;
            if !closed {
                closed = std::future::poll_fn(|cx| {
                    Poll::Ready(std::future::Future::poll(shutting.as_mut(), cx))
                })
                .await
                .is_ready();
            }
            let keep = head.keep_alive && !closed;
            let written = write_response(&mut io, &mut out, &mut spare, res, to_head, &head, keep);
            let written = written.await;
            // A large body gathered once does not keep its buffer for the connection's life.
            out.shrink_to(GATHER);
            match written {
                Ok(true) => {}
                Ok(false) => {
                    let _ = io.shutdown().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(client = %conn.peer, error = %e, "client connection ended with an error");
                    return;
                }
            }
        }
    }

    /// Hand the connection to hyper, with what was read of it (HTTP/1 only once a request has
    /// been answered here).
    async fn hand_over<S>(
        self: Arc<Self>,
        io: S,
        read: BytesMut,
        conn: ConnInfo,
        cancels: Arc<Cancels>,
        closing: watch::Receiver<bool>,
        http1_only: bool,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = Prefixed {
            prefix: read.freeze(),
            io,
        };
        self.serve_conn(TokioIo::new(io), conn, cancels, closing, http1_only)
            .await
    }
}

/// How the response body is framed.
enum Framing {
    Length(u64),
    /// With the trailer fields the `Trailer` header announced.
    Chunked(Option<Vec<HeaderName>>),
    /// To the connection's end.
    Close,
}

/// Why a response could not be written as it was given.
fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Write the response to the request of `head`; whether the connection may carry another
/// request after it.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    spare: &mut Option<HeaderMap>,
    (res, added): (Response<ProxyBody>, ResponseAdded),
    to_head: bool,
    head: &Head,
    keep: bool,
) -> std::io::Result<bool> {
    let http10 = head.http10;
    out.clear();
    let (mut parts, mut body) = res.into_parts();
    if parts.status.is_informational() {
        // As hyper: a bare 500, and the connection closed.
        tracing::warn!("response with 1xx status code not supported");
        drop(body);
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\ndate: ");
        push_date(out);
        out.extend_from_slice(b"\r\n\r\n");
        return finish(io, out, false).await;
    }
    let (framing, keep) = encode_head(out, &mut parts, &added, &body, to_head, http10, keep)?;
    if parts.headers.capacity() <= KEPT_MAP {
        *spare = Some(std::mem::take(&mut parts.headers));
    }
    let mut left = match framing {
        Framing::Length(0) => {
            io.write_all(out).await?;
            io.flush().await?;
            return Ok(keep);
        }
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // What the body has at hand goes behind the head; it is written before waiting for
        // more.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut body).poll_frame(cx)))
                .await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                // Whatever was written goes out before the wait (TLS buffers records until
                // flushed).
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                body.frame().await
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    continue;
                };
                if let (Framing::Chunked(Some(allowed)), true) = (&framing, head.trailers) {
                    let start = out.len();
                    out.extend_from_slice(b"0\r\n");
                    let mut any = false;
                    for (name, value) in &trailers {
                        if allowed.contains(name) && trailer_allowed(name) {
                            push_header(out, name.as_str(), value.as_bytes());
                            any = true;
                        }
                    }
                    if any {
                        out.extend_from_slice(b"\r\n");
                        return finish(io, out, keep).await;
                    }
                    out.truncate(start);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                // Past the announced length, the rest is not sent (as hyper does).
                let n = (data.len() as u64).min(left) as usize;
                left -= n as u64;
                stage(io, out, &data[..n]).await?;
                if left == 0 {
                    return finish(io, out, keep).await;
                }
            }
            Framing::Chunked(_) => {
                let _ = write!(out, "{:X}\r\n", data.len());
                stage(io, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Framing::Close => stage(io, out, &data).await?,
        }
    }
    match framing {
        Framing::Length(_) if left > 0 => {
            // Shorter than its length: the client must not take it for whole.
            io.write_all(out).await?;
            Err(invalid("the response body ended before its Content-Length"))
        }
        Framing::Chunked(_) => {
            out.extend_from_slice(b"0\r\n\r\n");
            finish(io, out, keep).await
        }
        Framing::Close => {
            finish(io, out, false).await?;
            Ok(false)
        }
        Framing::Length(_) => finish(io, out, keep).await,
    }
}

/// Write what waits in `out`, and flush: the response is whole.
async fn finish<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &[u8],
    keep: bool,
) -> std::io::Result<bool> {
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    Ok(keep)
}

/// Put body bytes behind what waits in `out`: copied when small, else written beside it.
async fn stage<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    data: &[u8],
) -> std::io::Result<()> {
    if data.len() <= GATHER && out.len() + data.len() <= 4 * GATHER {
        out.extend_from_slice(data);
        return Ok(());
    }
    let (mut a, mut b) = (&out[..], data);
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            io.write(b).await?
        } else {
            io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    out.clear();
    Ok(())
}

/// Fields that may not be sent as trailers (RFC 9110 section 6.5.1), as hyper's list.
fn trailer_allowed(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The length of a body as the response head states it.
enum Length {
    /// No body at all.
    Empty,
    Known(u64),
    Unknown,
}

/// Write the status line and the headers into `out`, framed as hyper's server frames them;
/// the body's framing, and whether the connection is kept after it.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &mut hyper::http::response::Parts,
    added: &ResponseAdded,
    body: &ProxyBody,
    to_head: bool,
    http10: bool,
    mut keep: bool,
) -> std::io::Result<(Framing, bool)> {
    let mut version = parts.version;
    // A `Connection` token this layer adds: to the response's own `Connection` line, or on a
    // line after the map's and the proxy's headers (where hyper's server writes it, the
    // proxy's headers being in the map it is given).
    let mut token: Option<&'static str> = None;
    if http10 {
        // An HTTP/1.0 client gets HTTP/1.0, kept only when it asked and the response agrees.
        if !connection_has(&parts.headers, b"keep-alive") {
            if version == Version::HTTP_10 {
                keep = false;
            } else if keep {
                token = Some("keep-alive");
            }
        }
        version = Version::HTTP_10;
    } else if !keep && !connection_has(&parts.headers, b"close") {
        token = Some("close");
    }
    if let Some(t) = token {
        if parts.headers.contains_key(header::CONNECTION) {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static(t));
            token = None;
        }
    }
    let v10 = version == Version::HTTP_10;
    let status = parts.status;
    let no_length = status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let chunkable = !to_head && !no_length;
    let length = if body.is_end_stream() {
        Length::Empty
    } else {
        match SizeHint::exact(&body.size_hint()) {
            Some(n) => Length::Known(n),
            None => Length::Unknown,
        }
    };
    let mut last = !keep;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if !v10 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut trailers: Option<Vec<HeaderName>> = None;
    // A header whose values are joined on one line (Content-Length, Transfer-Encoding,
    // Connection, Trailer) is open until the next name.
    let mut open_line = false;
    let mut add_chunked = false;
    let mut first_length: Option<u64> = None;
    let mut current: Option<HeaderName> = None;
    let end_line = |out: &mut Vec<u8>, open: &mut bool, chunked: bool| {
        if *open {
            out.extend_from_slice(if chunked { b", chunked\r\n" } else { b"\r\n" });
            *open = false;
        }
    };
    // The upstream's lines as they came, when nothing read them: before the map's (which
    // has none of them), framed as the map's would be.
    if let Some(raw) = &added.raw {
        raw.write(out);
        wrote_date = raw.has_date();
        if let Some((line, n)) = raw.length() {
            match length {
                // No body: the header stays on a response to HEAD only.
                Length::Empty if !to_head => {}
                Length::Empty => {
                    out.extend_from_slice(line);
                    wrote_len = true;
                }
                Length::Known(_) | Length::Unknown => {
                    framing = Framing::Length(match length {
                        Length::Known(k) => k,
                        _ => n,
                    });
                    out.extend_from_slice(line);
                    wrote_len = true;
                }
            }
        }
    }
    // The map's lines of a name the proxy's own headers replace are left out.
    let mut skipping = false;
    for (name, value) in parts.headers.drain() {
        if let Some(n) = name {
            skipping = added.skips(&n);
            current = Some(n);
            end_line(out, &mut open_line, add_chunked);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if skipping {
            continue;
        }
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !open_line {
                    return Err(invalid("a Content-Length beside another framing"));
                }
                match length {
                    Length::Known(n) => {
                        if !open_line {
                            framing = Framing::Length(n);
                            out.extend_from_slice(b"content-length: ");
                            out.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            open_line = true;
                        }
                        continue;
                    }
                    Length::Unknown => {
                        let n = std::str::from_utf8(value.as_bytes())
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .ok_or_else(|| invalid("an invalid Content-Length"))?;
                        match first_length {
                            Some(first) if first != n => {
                                return Err(invalid("Content-Length values differ"))
                            }
                            Some(_) => {}
                            None => {
                                framing = Framing::Length(n);
                                out.extend_from_slice(b"content-length: ");
                                out.extend_from_slice(value.as_bytes());
                                wrote_len = true;
                                open_line = true;
                                first_length = Some(n);
                            }
                        }
                        continue;
                    }
                    // No body: the header stays on a response to HEAD only (a length of 0
                    // goes out below).
                    Length::Empty if !to_head => continue,
                    Length::Empty => wrote_len = true,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !open_line {
                    return Err(invalid("a Transfer-Encoding beside another framing"));
                }
                if v10 || !chunkable {
                    continue;
                }
                wrote_len = true;
                add_chunked = !value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if open_line {
                    out.extend_from_slice(b", ");
                } else {
                    framing = Framing::Chunked(None);
                    out.extend_from_slice(b"transfer-encoding: ");
                    open_line = true;
                }
                out.extend_from_slice(value.as_bytes());
                continue;
            }
            header::CONNECTION => {
                if has_token(value.as_bytes(), b"close") {
                    last = true;
                }
                if open_line {
                    out.extend_from_slice(b", ");
                } else {
                    out.extend_from_slice(b"connection: ");
                    open_line = true;
                }
                out.extend_from_slice(value.as_bytes());
                continue;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if v10 || !chunkable {
                    continue;
                }
                if open_line {
                    out.extend_from_slice(b", ");
                } else {
                    out.extend_from_slice(b"trailer: ");
                    open_line = true;
                }
                out.extend_from_slice(value.as_bytes());
                if let Ok(v) = value.to_str() {
                    trailers.get_or_insert_with(Vec::new).extend(
                        v.split(',')
                            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok()),
                    );
                }
                continue;
            }
            _ => {}
        }
        push_header(out, name.as_str(), value.as_bytes());
    }
    end_line(out, &mut open_line, add_chunked);
    added.write(out);
    if let Some(t) = token {
        push_header(out, "connection", t.as_bytes());
        last |= t == "close";
    }
    if !wrote_len {
        framing = match length {
            Length::Unknown if v10 || !chunkable => Framing::Close,
            Length::Unknown => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked(None)
            }
            Length::Empty | Length::Known(0) => {
                if !no_length && !to_head {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Length::Known(_) if no_length => Framing::Length(0),
            Length::Known(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
                Framing::Length(n)
            }
        };
    }
    if !chunkable {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let (Framing::Chunked(allowed), Some(t)) = (&mut framing, trailers) {
        *allowed = Some(t);
    }
    let keep = !last && !matches!(framing, Framing::Close);
    Ok((framing, keep))
}

/// The `Date` value of this second (RFC 9110's IMF-fixdate), formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests;
