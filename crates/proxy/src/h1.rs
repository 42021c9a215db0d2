//! HTTP/1.1 to upstreams, in the task of the request: the head written with one write, the
//! response head parsed with `httparse` (the parser hyper itself uses), the body read as the
//! client takes it, and the connection handed back to its worker's pool once its response has
//! been read to the end.
//!
//! hyper's client runs each connection as a task of its own, fed through a channel: every
//! request crossed two tasks and woke each of them. Here the downstream connection's task
//! writes and reads the upstream connection itself. Protocol switches (WebSocket) and HTTP/2
//! (gRPC) keep hyper's client.
//!
//! The framing rules are RFC 9112's:
//! - a request body goes with its `Content-Length`, or chunked when its length is unknown;
//! - a response to HEAD, and a 1xx, 204 or 304 response, has no body;
//! - `Transfer-Encoding` wins over `Content-Length` (which is then removed); when its last
//!   coding is not `chunked`, the body runs to the connection's end;
//! - several `Content-Length` values that differ, or one that is not a number, are an
//!   invalid response (502), as is a head larger than Kong's `proxy_buffer_size` (160k) or with
//!   more than [`crate::server::MAX_HEADER_LINES`] lines;
//! - informational responses other than 101 are passed over (hyper's client does the same);
//! - a connection is kept when the response is HTTP/1.1 without `Connection: close` (or
//!   HTTP/1.0 with `Connection: keep-alive`), its body was framed by length or chunks and was
//!   read to its end, and the whole request body was sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::AsyncWrite;

use crate::pool::{Dest, Pool, Stream, UpBody, UpstreamError, UPSTREAM_HEAD};
use crate::raw::RawHead;
use crate::server::{BodyError, ProxyBody, MAX_HEADER_LINES};

/// What a read asks room for in the buffer.
const READ_CHUNK: usize = 16 * 1024;
/// A request body is taken from the client while less than this waits to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// The longest chunk-size line (with extensions) and trailer section accepted.
const CHUNK_LINE: usize = 4 * 1024;
const TRAILERS: usize = 16 * 1024;

/// Why an HTTP/1.1 exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("invalid response from the upstream: {0}")]
    Invalid(&'static str),
    #[error("invalid response head from the upstream: {0}")]
    Parse(#[from] httparse::Error),
    #[error("the upstream's response head is larger than {UPSTREAM_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request body failed: {0}")]
    ClientBody(#[source] BodyError),
    #[error("the upstream did not answer within {0:?} (read_timeout)")]
    ReadTimeout(Duration),
}

/// A kept HTTP/1.1 connection to an upstream, between requests.
pub struct H1Conn {
    io: Stream,
    /// Bytes read and not yet used (always empty between requests on a kept connection).
    buf: BytesMut,
    /// What waits to be written: the head, then the request body's framing and data.
    out: Vec<u8>,
    /// Where the header lines of the response head being read lie in it.
    spans: Vec<(usize, usize, usize, usize)>,
    /// The requests it has carried.
    pub(crate) uses: u64,
    /// The last request's header map, emptied, for the next response's headers (the map then
    /// goes to the client's connection, whose next request brings one back): no map is
    /// allocated per exchange.
    spare: Option<HeaderMap>,
    /// The read timeout's timer: armed once for the connection, and moved only when it fires
    /// before the request's deadline, so that a request does not re-arm it.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How a failed send left the request.
pub(crate) enum SendError {
    /// Nothing of it reached the upstream: it may go on another connection as it is.
    NotSent(Box<Request<UpBody>>, UpstreamError),
    /// Written, and the connection closed before any byte of an answer.
    Unanswered(UpstreamError),
    Failed(UpstreamError),
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Out {
    Empty,
    Length(u64),
    Chunked,
}

/// How a response body is framed on the wire, and where its reading is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum In {
    Length(u64),
    /// In a chunk's data: this much of it left, then its CRLF.
    ChunkData(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// After the data of a chunk: its CRLF.
    ChunkEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// To the connection's end.
    Close,
    Done,
}

impl H1Conn {
    pub(crate) fn new(io: Stream) -> H1Conn {
        H1Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            spans: Vec::new(),
            uses: 0,
            spare: None,
            timer: None,
        }
    }

    /// Whether a kept connection may carry a request: the upstream has not closed it, nor
    /// sent anything unasked. Never waits.
    pub(crate) fn alive(&mut self) -> bool {
        use tokio::io::AsyncRead;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Send `req` and read its response head, which must come within `read_timeout`. The
    /// response's body reads from this connection, which goes back to `pool` once that body
    /// has been read to its end.
    pub(crate) async fn send(
        mut self: Box<Self>,
        req: Request<UpBody>,
        added: &crate::forward::Added<'_>,
        raw: bool,
        pool: &Arc<Pool>,
        dest: &Arc<Dest>,
        read_timeout: Duration,
    ) -> Result<(Response<ProxyBody>, Option<RawHead>), SendError> {
        let deadline = tokio::time::Instant::now() + read_timeout;
        let (mut parts, mut body) = req.into_parts();
        let framing = write_head(&mut self.out, &mut parts, added, &body);
        let head_len = self.out.len();
        let bodiless_method = parts.method == Method::HEAD;
        let mut sent = 0usize;
        // Bodiless: the head alone, and nothing of the request is lost if the connection
        // turns out to be closed.
        if framing == Out::Empty {
            while sent < head_len {
                match std::future::poll_fn(|cx| {
                    Pin::new(&mut self.io).poll_write(cx, &self.out[sent..])
                })
                .await
                {
                    Ok(0) => {
                        let e = H1Error::Closed;
                        return Err(if sent == 0 {
                            SendError::NotSent(Box::new(Request::from_parts(parts, body)), e.into())
                        } else {
                            SendError::Failed(e.into())
                        });
                    }
                    Ok(n) => sent += n,
                    Err(e) if sent == 0 => {
                        return Err(SendError::NotSent(
                            Box::new(Request::from_parts(parts, body)),
                            H1Error::Io(e).into(),
                        ))
                    }
                    Err(e) => return Err(SendError::Failed(H1Error::Io(e).into())),
                }
            }
            self.out.clear();
        }
        let mut spare = parts.headers;
        spare.clear();
        self.spare = Some(spare);
        // With a body: it is written while the answer is awaited, so that an upstream that
        // answers early (a 413, say) is heard; the connection is then not kept.
        let mut st = BodyOut {
            framing,
            left: match framing {
                Out::Length(n) => n,
                _ => 0,
            },
            written: 0,
            eof: framing == Out::Empty,
            terminated: framing == Out::Empty,
        };
        let mut body_done = framing == Out::Empty;
        let head = std::future::poll_fn(|cx| {
            let me = &mut *self;
            if !body_done {
                match me.poll_send_body(cx, &mut body, &mut st) {
                    Poll::Ready(Ok(())) => body_done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            match me.poll_head(cx, bodiless_method, raw) {
                Poll::Pending => me.poll_deadline(cx, deadline, read_timeout),
                done => done,
            }
        })
        .await;
        let (head, lines, framing_in, keep) = match head {
            Ok(h) => h,
            // Nothing of an answer came: the upstream closed (or reset) the connection as
            // the request arrived.
            Err(e @ (H1Error::Closed | H1Error::Io(_))) if body_done && self.buf.is_empty() => {
                return Err(SendError::Unanswered(e.into()))
            }
            Err(e) => return Err(SendError::Failed(e.into())),
        };
        self.uses += 1;
        let keep = keep && body_done && self.out.is_empty();
        drop(body);
        let mut rbody = H1Body {
            conn: Some(self),
            state: framing_in,
            keep,
            back: Some((pool.clone(), dest.clone())),
        };
        if rbody.state == In::Done {
            rbody.finish();
        }
        Ok((
            Response::from_parts(head, http_body_util::BodyExt::boxed(rbody)),
            lines,
        ))
    }

    /// `Ready(Err)` once `deadline` has passed; else the task wakes when it comes.
    fn poll_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        deadline: tokio::time::Instant,
        read_timeout: Duration,
    ) -> Poll<Result<T, H1Error>> {
        use std::future::Future;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Set after the deadline (a shorter timeout than the last request's): moved back.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        // Fired for an earlier request's deadline: moved to this one.
        while timer.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(Err(H1Error::ReadTimeout(read_timeout)));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Take the request body from the client and write it, until it has all gone
    /// (`Ready(Ok)`), or nothing more can be done now (the client's body or the upstream's
    /// socket will wake the task).
    fn poll_send_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut UpBody,
        st: &mut BodyOut,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            let mut body_pending = false;
            while !st.eof && self.out.len() - st.written < WRITE_HIGH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(None) => st.eof = true,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(H1Error::ClientBody(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not sent upstream (a proxy may drop them).
                        if let Ok(data) = frame.into_data() {
                            self.stage(st, &data)?;
                        }
                        st.eof = body.is_end_stream();
                    }
                }
            }
            if st.eof && !st.terminated {
                st.terminated = true;
                match st.framing {
                    Out::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                    Out::Length(_) if st.left > 0 => {
                        return Poll::Ready(Err(H1Error::ClientBody(
                            "the request body ended before its Content-Length".into(),
                        )))
                    }
                    _ => {}
                }
            }
            while st.written < self.out.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.out[st.written..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Closed)),
                    Poll::Ready(Ok(n)) => st.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Io(e))),
                }
            }
            self.out.clear();
            st.written = 0;
            if st.terminated {
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                return Poll::Pending;
            }
        }
    }

    /// One piece of the request body, framed, into `out`.
    fn stage(&mut self, st: &mut BodyOut, data: &[u8]) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match st.framing {
            Out::Length(_) => {
                if data.len() as u64 > st.left {
                    return Err(H1Error::ClientBody(
                        "the request body is longer than its Content-Length".into(),
                    ));
                }
                st.left -= data.len() as u64;
                self.out.extend_from_slice(data);
            }
            Out::Chunked => {
                use std::io::Write;
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
            Out::Empty => {}
        }
        Ok(())
    }

    /// Read until a final response head has come: its parts, how its body is framed, and
    /// whether the connection may carry another request afterwards.
    #[allow(clippy::type_complexity)]
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        to_head: bool,
        raw: bool,
    ) -> Poll<Result<(hyper::http::response::Parts, Option<RawHead>, In, bool), H1Error>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = self.parse_head(to_head, raw)? {
                    return Poll::Ready(Ok(head));
                }
                if self.buf.len() >= UPSTREAM_HEAD {
                    return Poll::Ready(Err(H1Error::HeadTooLarge));
                }
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.buf.is_empty() => {
                    return Poll::Ready(Err(H1Error::Closed))
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(H1Error::Invalid(
                        "the connection closed within the response head",
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Io(e))),
            }
        }
    }

    /// Read what the upstream sent into `buf`: how many bytes (0 at its end).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.spare_capacity_mut().len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// A final response head at the start of `buf`, taken out of it; informational ones
    /// (100, 102, 103) are passed over. `None`: not whole yet. With `raw`, its header lines
    /// are kept as they came when they can be ([`RawHead`]), and the map is left empty.
    #[allow(clippy::type_complexity)]
    fn parse_head(
        &mut self,
        to_head: bool,
        raw: bool,
    ) -> Result<Option<(hyper::http::response::Parts, Option<RawHead>, In, bool)>, H1Error> {
        loop {
            // Where each name and value lies in the head, so that the values can be
            // slices of it once it is taken out of the buffer (kept per connection: nothing
            // is allocated for them per response).
            let spans = &mut self.spans;
            spans.clear();
            let (len, code, minor, reason) = {
                // Left uninitialised: 160 empty lines written per response cost more than
                // parsing a short head.
                let mut lines = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
                    MAX_HEADER_LINES];
                let mut res = httparse::Response::new(&mut []);
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut res, &self.buf, &mut lines)?
                {
                    httparse::Status::Partial => return Ok(None),
                    httparse::Status::Complete(len) => len,
                };
                let base = self.buf.as_ptr() as usize;
                let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
                let reason = res.reason.map(|r| at(r.as_bytes()));
                for h in res.headers.iter() {
                    let (n, nl) = at(h.name.as_bytes());
                    let (v, vl) = at(h.value);
                    spans.push((n, nl, v, vl));
                }
                (len, res.code.unwrap_or(0), res.version.unwrap_or(1), reason)
            };
            if (100..200).contains(&code) && code != 101 {
                self.buf.advance(len);
                if self.buf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let head = self.buf.split_to(len).freeze();
            let status = StatusCode::from_u16(code)
                .map_err(|_| H1Error::Invalid("a status code out of range"))?;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::Invalid(
                    "101 to a request that asked no protocol switch",
                ));
            }
            // The framing headers, noted as they pass: the last `Transfer-Encoding` value,
            // and the `Content-Length` (or why it cannot be one). `Connection` and
            // `Keep-Alive` speak of this hop only: read here, and not kept.
            let mut seen = Hop::new();
            let lines = if raw {
                crate::raw::RawHead::of(&head, &self.spans, &mut seen)
            } else {
                None
            };
            let headers = match lines {
                // The map stays empty, and goes on to the client's connection as it would.
                Some(_) => self.spare.take().unwrap_or_default(),
                None => {
                    seen = Hop::new();
                    self.header_map(&head, &mut seen)?
                }
            };
            let Hop {
                close,
                keep_alive,
                coding,
                length,
            } = seen;
            let mut res = Response::new(());
            *res.status_mut() = status;
            *res.headers_mut() = headers;
            *res.version_mut() = if minor == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // A reason phrase of its own goes to the client as it came (as hyper does).
            if let Some((r, rl)) = reason {
                let phrase = &head[r..r + rl];
                if Some(phrase) != status.canonical_reason().map(str::as_bytes) {
                    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(head.slice(r..r + rl)) {
                        res.extensions_mut().insert(p);
                    }
                }
            }
            let (mut parts, ()) = res.into_parts();
            let mut keep = if minor == 0 { keep_alive } else { !close };
            let framing = if to_head || matches!(code, 204 | 304) {
                In::Done
            } else if let Some((v, vl)) = coding {
                let chunked = head[v..v + vl]
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if length != Ok(None) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                if chunked {
                    In::ChunkSize
                } else {
                    keep = false;
                    In::Close
                }
            } else {
                match length.map_err(H1Error::Invalid)? {
                    Some(0) => In::Done,
                    Some(n) => In::Length(n),
                    None => {
                        keep = false;
                        In::Close
                    }
                }
            };
            return Ok(Some((parts, lines, framing, keep)));
        }
    }

    /// The header map of the head whose lines `spans` locates, noting the framing and
    /// this hop's headers in `seen`. `Connection` and `Keep-Alive` are left out (the proxy
    /// would remove them), unless `Connection` names other headers, which the proxy then
    /// removes with it.
    fn header_map(&mut self, head: &Bytes, seen: &mut Hop) -> Result<HeaderMap, H1Error> {
        // With room for the headers the proxy adds to responses (latencies, `Via`,
        // `X-Kong-Request-Id`), so that the map does not grow.
        let room = self.spans.len() + 6;
        let mut headers = match self.spare.take() {
            Some(mut h) => {
                h.reserve(room);
                h
            }
            None => HeaderMap::with_capacity(room),
        };
        for &(n, nl, v, vl) in &self.spans {
            let name = HeaderName::from_bytes(&head[n..n + nl])
                .map_err(|_| H1Error::Invalid("a header name"))?;
            if name == header::TRANSFER_ENCODING {
                seen.coding = Some((v, vl));
            } else if name == header::CONTENT_LENGTH {
                seen.length(&head[v..v + vl]);
            } else if name == header::CONNECTION {
                if !seen.connection(&head[v..v + vl]) {
                    continue;
                }
            } else if name == crate::names::KEEP_ALIVE {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| H1Error::Invalid("a header value"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// The request head into `out`, with the framing its body takes: the headers the proxy sets,
/// then the client's (those the proxy sets or removes left out).
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    parts: &mut hyper::http::request::Parts,
    added: &crate::forward::Added<'_>,
    body: &UpBody,
) -> Out {
    out.clear();
    parts.headers.remove(header::TRANSFER_ENCODING);
    let framing = if body.is_end_stream() {
        Out::Empty
    } else if let Some(n) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Out::Length(n)
    } else {
        parts.headers.remove(header::CONTENT_LENGTH);
        Out::Chunked
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    added.write(out);
    for (name, value) in &parts.headers {
        if added.skips(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Out::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The length a `Content-Length` value (`value`) gives, after those of earlier lines
/// (`sofar`): every comma-separated part a number, and all of them equal.
fn content_length(value: &[u8], sofar: Option<u64>) -> Result<Option<u64>, &'static str> {
    let mut length = sofar;
    for part in value.split(|b| *b == b',') {
        let n = std::str::from_utf8(part.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("Content-Length is not a number")?;
        if length.is_some_and(|l| l != n) {
            return Err("Content-Length values differ");
        }
        length = Some(n);
    }
    Ok(length)
}

/// What a response head says of its framing and of this hop, noted as its lines pass.
pub(crate) struct Hop {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// Where the last `Transfer-Encoding` value lies in the head.
    coding: Option<(usize, usize)>,
    /// The `Content-Length` (or why there cannot be one).
    pub(crate) length: Result<Option<u64>, &'static str>,
}

impl Hop {
    fn new() -> Hop {
        Hop {
            close: false,
            keep_alive: false,
            coding: None,
            length: Ok(None),
        }
    }

    /// A `Content-Length` value.
    pub(crate) fn length(&mut self, value: &[u8]) {
        // The usual value, digits alone, read at once.
        if let (Ok(None), 1..=18) = (self.length, value.len()) {
            if value.iter().all(u8::is_ascii_digit) {
                let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                self.length = Ok(Some(n));
                return;
            }
        }
        if let Ok(sofar) = self.length {
            self.length = content_length(value, sofar);
        }
    }

    /// A `Connection` value's tokens: whether it names other headers than `close` and
    /// `keep-alive`.
    pub(crate) fn connection(&mut self, value: &[u8]) -> bool {
        let t = crate::raw::connection_tokens(value);
        self.close |= t.close;
        self.keep_alive |= t.keep_alive;
        t.others
    }
}

/// Where the request body's writing is.
struct BodyOut {
    framing: Out,
    /// Of a `Content-Length`, what the body has still to give.
    left: u64,
    /// How much of `out` is written.
    written: usize,
    /// The client's body has ended.
    eof: bool,
    /// The body's end is framed (the last chunk staged; a length checked).
    terminated: bool,
}

/// A response body read from its upstream connection as the client takes it.
struct H1Body {
    conn: Option<Box<H1Conn>>,
    state: In,
    /// The connection may carry another request once this body has been read.
    keep: bool,
    /// Where the connection goes back.
    back: Option<(Arc<Pool>, Arc<Dest>)>,
}

impl H1Body {
    /// The body has been read: the connection goes back to its pool, or is closed.
    fn finish(&mut self) {
        self.state = In::Done;
        let (Some(conn), Some((pool, dest))) = (self.conn.take(), self.back.take()) else {
            return;
        };
        if self.keep && conn.buf.is_empty() {
            pool.put(dest.key(), conn);
        }
    }

    /// The next frame from what is buffered; `None`: more must be read.
    fn next(&mut self) -> Result<Option<Frame<Bytes>>, H1Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            match self.state {
                In::Done => return Ok(None),
                In::Length(_) | In::ChunkData(_) | In::Close if buf.is_empty() => return Ok(None),
                In::Length(n) => {
                    let k = (n as usize).min(buf.len());
                    let data = buf.split_to(k).freeze();
                    self.state = In::Length(n - k as u64);
                    if n == k as u64 {
                        self.finish();
                    }
                    return Ok(Some(Frame::data(data)));
                }
                In::Close => return Ok(Some(Frame::data(buf.split().freeze()))),
                In::ChunkData(n) => {
                    let k = (n as usize).min(buf.len());
                    let data = buf.split_to(k).freeze();
                    self.state = if n == k as u64 {
                        In::ChunkEnd
                    } else {
                        In::ChunkData(n - k as u64)
                    };
                    return Ok(Some(Frame::data(data)));
                }
                In::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Invalid("a chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = In::ChunkSize;
                }
                In::ChunkSize => {
                    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > CHUNK_LINE {
                            return Err(H1Error::Invalid("a chunk-size line too long"));
                        }
                        return Ok(None);
                    };
                    let line = buf[..end]
                        .strip_suffix(b"\r")
                        .ok_or(H1Error::Invalid("a chunk-size line not ended by CRLF"))?;
                    let digits = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii_end();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(H1Error::Invalid("a chunk size"));
                    }
                    let mut size = 0u64;
                    for d in digits {
                        let v = (*d as char)
                            .to_digit(16)
                            .ok_or(H1Error::Invalid("a chunk size"))?;
                        size = size * 16 + u64::from(v);
                    }
                    buf.advance(end + 1);
                    self.state = if size == 0 {
                        In::Trailers
                    } else {
                        In::ChunkData(size)
                    };
                }
                In::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.finish();
                        return Ok(None);
                    }
                    let mut lines = [httparse::EMPTY_HEADER; 64];
                    match httparse::parse_headers(buf, &mut lines)? {
                        httparse::Status::Partial => {
                            if buf.len() > TRAILERS {
                                return Err(H1Error::Invalid("trailers too long"));
                            }
                            return Ok(None);
                        }
                        httparse::Status::Complete((len, found)) => {
                            let mut trailers = HeaderMap::with_capacity(found.len());
                            for h in found {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(h.name.as_bytes()),
                                    HeaderValue::from_bytes(h.value),
                                ) {
                                    trailers.append(n, v);
                                }
                            }
                            buf.advance(len);
                            self.finish();
                            return Ok(Some(Frame::trailers(trailers)));
                        }
                    }
                }
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        loop {
            match me.next() {
                Err(e) => {
                    me.conn = None;
                    me.state = In::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if me.state == In::Done => return Poll::Ready(None),
                Ok(None) => {}
            }
            let Some(conn) = me.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if me.state == In::Close => {
                    me.keep = false;
                    me.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    me.conn = None;
                    me.state = In::Done;
                    let e = H1Error::Invalid("the connection closed before the body's end");
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    me.conn = None;
                    me.state = In::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == In::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            In::Done => SizeHint::with_exact(0),
            In::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
