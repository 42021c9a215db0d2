//! Upstream connections, kept alive and reused per destination.
//!
//! HTTP/1.1 connections ([`crate::h1`]) are kept per worker: a request takes the one kept last
//! (after checking that the upstream has not closed it), or opens one, and the connection comes
//! back once its response has been read to the end. Idle connections past the pool size per
//! destination are closed, as are those kept past the idle timeout. HTTP/2 (gRPC) and
//! protocol switches use hyper's client.

use std::sync::{Arc, Mutex};

use crate::server::ProxyBody;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request body to an upstream: the client's, streamed; or one the proxy holds (empty, for a
/// request sent again; or what plugins that read the body left).
pub type UpBody = http_body_util::Either<ClientBody, http_body_util::Full<bytes::Bytes>>;

/// The client's request body as it streams upstream, cut with [`BodyTooLarge`] once it goes
/// past a limit (request-size-limiting's, for a body of no announced length): nothing is
/// buffered to count it.
pub struct ClientBody {
    inner: Inbound,
    left: u64,
}

/// The client's body went past the limit set on it.
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds the size allowed")]
pub struct BodyTooLarge;

/// The client's request body as it arrived: hyper's, or none at all (a request read by the
/// proxy's own HTTP/1.1 layer, [`crate::downstream`], which takes bodiless requests only).
pub type Inbound = Option<Incoming>;

impl ClientBody {
    pub fn new(inner: Inbound) -> ClientBody {
        ClientBody {
            inner,
            left: u64::MAX,
        }
    }

    /// Allow at most `bytes` more of the body.
    pub fn limit(&mut self, bytes: u64) {
        self.left = self.left.min(bytes);
    }
}

impl hyper::body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let me = self.get_mut();
        let Some(inner) = me.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match std::pin::Pin::new(inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > me.left {
                        return std::task::Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    me.left -= n;
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// Whether a request failed because the client's body went past its limit ([`BodyTooLarge`]).
pub fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<BodyTooLarge>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Kept connections idle this long may be closed by the upstream's own keep-alive timeout as
/// a request goes out: a bodiless idempotent request sent on one keeps its head, to be sent
/// again on a new connection if the upstream closes without answering.
const RISKY_IDLE: Duration = Duration::from_secs(1);

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("{0}")]
    Resolve(String),
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    H1(#[from] crate::h1::H1Error),
}

/// Kong's upstream keep-alive settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Keepalive {
    /// Connections kept per destination (`upstream_keepalive_pool_size`); 0 keeps none.
    pub pool_size: usize,
    /// Requests per connection before it is closed (`upstream_keepalive_max_requests`);
    /// 0: no limit.
    pub max_requests: u64,
    /// How long a connection is kept after its last request started
    /// (`upstream_keepalive_idle_timeout`); zero: no limit.
    pub idle_timeout: Duration,
}

impl Default for Keepalive {
    /// Kong's defaults: 60 connections, 100 requests each, 60 s.
    fn default() -> Keepalive {
        Keepalive {
            pool_size: 60,
            max_requests: 100,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A kept connection, and when it came back.
struct Idle {
    conn: Box<crate::h1::H1Conn>,
    since: std::time::Instant,
}

thread_local! {
    /// The proxy worker this thread is (0: the node's main runtime); see [`set_worker`].
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Mark this thread as proxy worker `i`: its upstream connections are its own (a connection's
/// task runs on the runtime that made it, so a connection used by another worker would hand
/// every request across threads).
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// What one worker keeps: its idle connections and its multiplexed ones, behind locks only it
/// takes.
#[derive(Default)]
struct Local {
    idle: Mutex<crate::FastMap<String, Vec<Idle>>>,
    /// One multiplexed HTTP/2 connection per destination (gRPC).
    h2: Mutex<crate::FastMap<String, http2::SendRequest<UpBody>>>,
    /// When idle connections of every destination were last checked, in milliseconds
    /// since `born`.
    swept: std::sync::atomic::AtomicU64,
}

pub struct Pool {
    /// One per worker (`set_workers`), by [`set_worker`]'s index.
    locals: std::sync::OnceLock<Box<[Local]>>,
    keepalive: std::sync::OnceLock<Keepalive>,
    born: std::time::Instant,
    tls: crate::upstream_tls::Connectors,
    /// Made on first use with the system's configuration unless [`Pool::set_dns`] came first.
    dns: std::sync::OnceLock<Result<crate::dns::Dns, crate::error::SetupError>>,
}

/// How to reach an upstream: its address, and TLS settings when it speaks https. Built once
/// per destination (services keep theirs in the snapshot), cheap to share.
#[derive(Debug, Clone)]
pub struct Dest {
    pub addr: String,
    /// `Some((server name, verify))` for TLS.
    pub tls: Option<(String, bool)>,
    /// HTTP/2 (gRPC) instead of HTTP/1.1.
    pub h2: bool,
    /// The longest a write to the upstream may wait (the service's `write_timeout`).
    pub write_timeout: Duration,
    /// The pool key: connections are shared only between identical destinations.
    pub(crate) key: String,
}

/// A connection ready for one request.
pub enum Conn {
    /// HTTP/1.1, and how long it was kept idle.
    H1(Box<crate::h1::H1Conn>, Duration),
    /// A connection of its own for a protocol switch (hyper's client, which hands the
    /// switched connection over).
    Dedicated(SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

impl Dest {
    /// The pool key: connections are shared only between identical destinations.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub fn new(
        addr: String,
        tls: Option<(String, bool)>,
        h2: bool,
        write_timeout: Duration,
    ) -> Dest {
        let w = write_timeout.as_millis();
        let key = match &tls {
            None => format!("{h2}|{w}|{addr}"),
            Some((sni, verify)) => format!("{h2}|{w}|tls|{sni}|{verify}|{addr}"),
        };
        Dest {
            addr,
            tls,
            h2,
            write_timeout,
            key,
        }
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

impl Pool {
    pub fn new() -> Pool {
        Pool {
            locals: std::sync::OnceLock::new(),
            keepalive: std::sync::OnceLock::new(),
            born: std::time::Instant::now(),
            tls: crate::upstream_tls::Connectors::new(),
            dns: std::sync::OnceLock::new(),
        }
    }

    /// Keep connections for `n` workers, each its own; call before serving (one otherwise).
    pub fn set_workers(&self, n: usize) {
        let _ = self
            .locals
            .set((0..n.max(1)).map(|_| Local::default()).collect());
    }

    /// This thread's worker's connections.
    fn local(&self) -> &Local {
        let all = self.locals.get_or_init(|| Box::new([Local::default()]));
        &all[WORKER.with(std::cell::Cell::get) % all.len()]
    }

    /// Keep connections as these settings say (Kong's `upstream_keepalive_*`); call before
    /// serving.
    pub fn set_keepalive(&self, k: Keepalive) {
        let _ = self.keepalive.set(k);
    }

    fn keepalive(&self) -> &Keepalive {
        self.keepalive.get_or_init(Keepalive::default)
    }

    /// Resolve names with these name servers (Kong's `dns_resolver`); empty: the system's.
    pub fn set_dns(
        &self,
        servers: &[std::net::SocketAddr],
    ) -> Result<(), crate::error::SetupError> {
        let dns = crate::dns::Dns::new(servers)?;
        self.dns
            .set(Ok(dns))
            .map_err(|_| crate::error::SetupError::DnsInUse)
    }

    /// The address to connect to for `host:port`.
    /// The resolver's statistics (Kong's `/status/dns`), empty before the first name.
    pub(crate) fn dns_stats(&self) -> serde_json::Map<String, serde_json::Value> {
        match self.dns.get() {
            Some(Ok(d)) => d.stats(),
            _ => serde_json::Map::new(),
        }
    }

    async fn resolve(&self, addr: &str) -> Result<std::net::SocketAddr, UpstreamError> {
        if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
            return Ok(sa);
        }
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| UpstreamError::Resolve(format!("'{addr}' is not host:port")))?;
        let dns = self
            .dns
            .get_or_init(|| crate::dns::Dns::new(&[]))
            .as_ref()
            .map_err(|e| UpstreamError::Resolve(e.to_string()))?;
        let ip = dns
            .resolve(host)
            .await
            .map_err(|e| UpstreamError::Resolve(e.to_string()))?;
        Ok(std::net::SocketAddr::new(ip, port))
    }

    /// An idle connection to `dest` that is ready, or a new one. Failing here, nothing of the
    /// request has been sent: another target may be tried.
    pub async fn checkout(
        &self,
        dest: &Dest,
        connect_timeout: Duration,
    ) -> Result<Conn, UpstreamError> {
        if !dest.h2 {
            if let Some((c, idle)) = self.take(&dest.key) {
                return Ok(Conn::H1(c, idle));
            }
        }
        // Boxed: a connection made (or gRPC's looked up) is the rare case, and its future is
        // large.
        Box::pin(self.connect_or_share(dest, connect_timeout)).await
    }

    /// A new HTTP/1.1 connection, or the destination's multiplexed HTTP/2 one.
    async fn connect_or_share(
        &self,
        dest: &Dest,
        connect_timeout: Duration,
    ) -> Result<Conn, UpstreamError> {
        if dest.h2 {
            let key = &dest.key;
            let live = self
                .local()
                .h2
                .lock()
                .ok()
                .and_then(|m| m.get(key).filter(|s| !s.is_closed()).cloned());
            if let Some(s) = live {
                return Ok(Conn::H2(s));
            }
            let stream = self.connect_stream(dest, connect_timeout).await?;
            let (sender, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            if let Ok(mut m) = self.local().h2.lock() {
                m.insert(key.clone(), sender.clone());
            }
            return Ok(Conn::H2(sender));
        }
        Ok(Conn::H1(
            self.connect_h1(dest, connect_timeout).await?,
            Duration::ZERO,
        ))
    }

    /// The connection to `key` kept last, if the upstream has not closed it, with how long
    /// it was idle. Those kept past the idle timeout, or closed, are dropped on the way.
    pub(crate) fn take(&self, key: &str) -> Option<(Box<crate::h1::H1Conn>, Duration)> {
        let timeout = self.keepalive().idle_timeout;
        let mut idle = self.local().idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let now = std::time::Instant::now();
        while let Some(mut c) = list.pop() {
            let kept = now.saturating_duration_since(c.since);
            if (timeout.is_zero() || kept < timeout) && c.conn.alive() {
                return Some((c.conn, kept));
            }
        }
        None
    }

    /// Give back a connection whose response has been read; one that has carried
    /// `max_requests` is closed instead.
    pub(crate) fn put(&self, key: &str, conn: Box<crate::h1::H1Conn>) {
        let k = self.keepalive();
        if k.max_requests > 0 && conn.uses >= k.max_requests {
            return;
        }
        let now = std::time::Instant::now();
        let c = Idle { conn, since: now };
        // Once a second, connections of every destination kept past the idle timeout are
        // closed, also where no request comes any more.
        let local = self.local();
        let ms = now.duration_since(self.born).as_millis() as u64;
        let sweep = !k.idle_timeout.is_zero()
            && ms.saturating_sub(local.swept.load(std::sync::atomic::Ordering::Relaxed)) >= 1000;
        if let Ok(mut idle) = local.idle.lock() {
            if sweep {
                local.swept.store(ms, std::sync::atomic::Ordering::Relaxed);
                if let Some(oldest) = now.checked_sub(k.idle_timeout) {
                    idle.retain(|_, list| {
                        list.retain(|c| c.since > oldest);
                        !list.is_empty()
                    });
                }
            }
            match idle.get_mut(key) {
                Some(list) if list.len() < k.pool_size => list.push(c),
                Some(_) => {}
                None if k.pool_size > 0 => {
                    idle.insert(key.to_string(), vec![c]);
                }
                None => {}
            }
        }
    }

    /// A new HTTP/1.1 connection to the destination.
    async fn connect_h1(
        &self,
        dest: &Dest,
        timeout: Duration,
    ) -> Result<Box<crate::h1::H1Conn>, UpstreamError> {
        Ok(Box::new(crate::h1::H1Conn::new(
            self.connect_stream(dest, timeout).await?,
        )))
    }

    /// A TCP connection to the destination, with TLS when it asks for it.
    async fn connect_stream(
        &self,
        dest: &Dest,
        timeout: Duration,
    ) -> Result<Stream, UpstreamError> {
        let addr = dest.addr.as_str();
        let to = self.resolve(addr).await?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                })
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let stream = Timed {
            inner: stream,
            write_timeout: dest.write_timeout,
            deadline: None,
        };
        match &dest.tls {
            None => Ok(Stream::Plain(stream)),
            Some((sni, verify)) => {
                let tls =
                    tokio::time::timeout(timeout, self.tls.connect(stream, sni, *verify, dest.h2))
                        .await
                        .map_err(|_| UpstreamError::ConnectTimeout {
                            addr: addr.to_string(),
                        })?
                        .map_err(|source| UpstreamError::Tls {
                            addr: addr.to_string(),
                            source,
                        })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }

    /// A connection of its own, that never returns to the pool (protocol switches).
    pub async fn connect_dedicated(
        &self,
        dest: &Dest,
        connect_timeout: Duration,
    ) -> Result<SendRequest<UpBody>, UpstreamError> {
        Box::pin(async { handshake(self.connect_stream(dest, connect_timeout).await?).await }).await
    }

    /// Send a request on a checked-out connection. An HTTP/1.1 connection goes back to
    /// the pool once the response's body has been read.
    ///
    /// A kept connection the upstream closed just before the request went out (its own
    /// keep-alive timeout racing ours) gives the request back untouched: it is sent again on
    /// a new connection, instead of failing with a 502.
    ///
    /// With `raw`, an HTTP/1.1 response's header lines may come back as they were read
    /// ([`crate::raw::RawHead`]), its map then empty.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_on(
        self: &Arc<Self>,
        dest: &Arc<Dest>,
        conn: Conn,
        mut req: Request<UpBody>,
        added: &crate::forward::Added<'_>,
        raw: bool,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<(Response<ProxyBody>, Option<crate::raw::RawHead>), UpstreamError> {
        use crate::h1::SendError;
        use http_body_util::BodyExt;
        if !matches!(conn, Conn::H1(..)) {
            // hyper's clients write the header map: it takes the proxy's headers.
            added.apply(req.headers_mut());
        }
        match conn {
            Conn::H1(c, idle) => {
                let head = (idle >= RISKY_IDLE && resendable(&req)).then(|| head_of(&req));
                let req = match c.send(req, added, raw, self, dest, read_timeout).await {
                    Ok(r) => return Ok(r),
                    Err(SendError::NotSent(req, e)) => {
                        tracing::debug!(upstream = %dest.addr, error = %e, "kept connection closed before the request was sent: sending on a new one");
                        *req
                    }
                    Err(SendError::Unanswered(e)) => match head {
                        Some(head) => {
                            tracing::debug!(upstream = %dest.addr, error = %e, "kept connection closed without answering: sending the request again on a new one");
                            Request::from_parts(
                                head,
                                http_body_util::Either::Right(http_body_util::Full::default()),
                            )
                        }
                        None => return Err(e),
                    },
                    Err(SendError::Failed(e)) => return Err(e),
                };
                // Boxed: the connect and second send are rare, and would otherwise make every
                // request's future larger (it is moved into place on each request).
                Box::pin(async move {
                    let fresh = self.connect_h1(dest, connect_timeout).await?;
                    match fresh.send(req, added, raw, self, dest, read_timeout).await {
                        Ok(r) => Ok(r),
                        Err(
                            SendError::NotSent(_, e)
                            | SendError::Unanswered(e)
                            | SendError::Failed(e),
                        ) => Err(e),
                    }
                })
                .await
            }
            // hyper's clients, boxed as the rare case.
            Conn::Dedicated(mut sender) => Ok((
                Box::pin(sender.send_request(req))
                    .await?
                    .map(|b| b.map_err(Into::into).boxed()),
                None,
            )),
            Conn::H2(mut sender) => Ok((
                Box::pin(sender.send_request(req))
                    .await?
                    .map(|b| b.map_err(Into::into).boxed()),
                None,
            )),
        }
    }
}

/// Whether a request may be sent twice: an idempotent method (as nginx's
/// `proxy_next_upstream`: not POST, PATCH or LOCK) and no body.
fn resendable(req: &Request<UpBody>) -> bool {
    use hyper::body::Body;
    use hyper::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) && req.body().is_end_stream()
}

/// A copy of a request's head.
fn head_of(req: &Request<UpBody>) -> hyper::http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy.into_parts().0
}

/// A connection to an upstream, in clear or TLS.
pub(crate) enum Stream {
    Plain(Timed),
    Tls(Box<tokio_rustls::client::TlsStream<Timed>>),
}

/// A TCP connection whose writes fail with `TimedOut` once one has waited `write_timeout`
/// (the upstream stopped reading): nginx's `proxy_send_timeout`, Kong's `write_timeout`.
pub(crate) struct Timed {
    inner: TcpStream,
    write_timeout: Duration,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Timed {
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        if r.is_ready() {
            self.deadline = None;
            return r;
        }
        let timeout = self.write_timeout;
        let d = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match d.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("upstream write timed out after {timeout:?}"),
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for Timed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Timed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = std::pin::Pin::new(&mut me.inner).poll_write(cx, buf);
        me.guard(cx, r)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = std::pin::Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.guard(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let r = std::pin::Pin::new(&mut me.inner).poll_flush(cx);
        me.guard(cx, r)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether an upstream error is a write timeout (see [`Timed`]).
/// Whether the request failed because of the client's body (it ended early, or its chunked
/// framing was malformed), not because of the upstream: hyper reports a request body's own
/// error as a user error. Such a failure is the client's, and never counts against a target.
pub fn is_client_body_error(e: &UpstreamError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
            || matches!(
                s.downcast_ref::<crate::h1::H1Error>(),
                Some(crate::h1::H1Error::ClientBody(_))
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The response head did not come within the read timeout (HTTP/1.1 upstreams; hyper's
/// clients are timed by the caller).
pub fn is_read_timeout(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::H1(crate::h1::H1Error::ReadTimeout(_)))
}

pub fn is_write_timeout(e: &UpstreamError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The largest response head read from an upstream: Kong's `proxy_buffer_size` (160k).
pub(crate) const UPSTREAM_HEAD: usize = 160 * 1024;

/// HTTP/1.1 on a connected stream; `with_upgrades`, so that a connection that switches
/// protocols (WebSocket) is handed over to the caller instead of being closed.
async fn handshake<S>(stream: S) -> Result<SendRequest<UpBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        // A response head is bounded by its size (Kong's proxy_buffer_size, 160k), not by
        // how many header lines it has: 100 Set-Cookie lines are an ordinary response.
        .max_buf_size(UPSTREAM_HEAD)
        .max_headers(crate::server::MAX_HEADER_LINES)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
