//! The plugin runtime.
//!
//! A plugin is one file holding its [`Descriptor`]: its schema (name, priority, version,
//! configuration fields, fields by version) and its `build` function, which turns a validated
//! configuration into a type implementing [`Plugin`] (hooks per phase, each with a default that
//! does nothing). [`BUNDLED`] lists the descriptors; Kong's `plugins` setting chooses a
//! [`Registry`] among them, and its [`Registry::catalog`] is what the Admin API and the
//! declarative loaders validate with, compiling each configuration with the same `build`, so
//! that what is stored is what runs. A plugin outside the registry is refused everywhere: a
//! node never proxies a route whose plugins it cannot run.
//!
//! Scoping follows Kong: for each plugin name, the most specific configuration applies —
//! route+service+consumer, route+consumer, service+consumer, route+service, consumer, route,
//! service, global. Plugins run by priority, highest first; a plugin's configuration is chosen
//! when its turn comes, so the consumer an authentication plugin identified (higher priority)
//! selects the configuration of the plugins after it.

mod acl;
pub(crate) mod args;
mod basic_auth;
mod correlation_id;
mod cors;
mod file_log;
mod hmac_auth;
mod http_log;
mod identities;
mod ip_restriction;
pub mod jwt;
mod key_auth;
pub mod oauth2;
mod opentelemetry;
pub mod prometheus;
mod proxy_cache;
mod queue;
mod rate_limiting;
mod request_size_limiting;
mod request_termination;
mod request_transformer;
mod response_ratelimiting;
mod response_transformer;
mod serialize;
mod set;
mod sink;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::names;
use crate::server::ProxyBody;

pub use identities::{
    Consumer, ConsumerGroups, Credential, CredentialKind, Found, GroupRef, Identities, Prepare,
    ACLS, CONSUMER_GROUPS, CONSUMER_GROUP_CONSUMERS,
};
pub use proxy_cache::{CacheStore, Cached};
pub use queue::Queues;
pub use rate_limiting::Counters;
pub use set::{
    Access, Build, Descriptor, Instance, PluginSet, PluginSetError, Registry, RegistryError,
};

/// State that outlives configurations (rate-limiting's windows; a connection pool or a queue
/// a plugin keeps), owned by the proxy and handed to every `build`: one value per type, made
/// on first use and shared by every instance and every later configuration.
#[derive(Clone, Default)]
pub struct Shared(
    Arc<std::sync::Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>>,
);

impl Shared {
    /// The value of type `T`, made with `T::default()` the first time it is asked for.
    pub fn get<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        drop(map);
        v.downcast::<T>()
            .expect("the entry under a type's id holds a value of that type")
    }
}

/// Where plugins write entities on the request path (oauth2's tokens and codes): the node's
/// store, or on a data plane its control plane; set by the node when it starts. A node
/// without a database says so ([`Writes::set_none`]), and plugins that need one are refused.
#[derive(Default)]
pub struct Writes {
    writer: std::sync::OnceLock<Arc<dyn gantry_model::writes::EntityWriter>>,
    none: std::sync::atomic::AtomicBool,
}

impl Writes {
    pub fn set(&self, w: Arc<dyn gantry_model::writes::EntityWriter>) {
        let _ = self.writer.set(w);
    }
    pub fn set_none(&self) {
        self.none.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    /// Whether this node has nowhere to write.
    pub fn none(&self) -> bool {
        self.none.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub async fn write(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
    ) -> Result<i64, gantry_model::writes::WriteError> {
        match self.writer.get() {
            Some(w) => w.write(ops).await,
            None => Err(gantry_model::writes::WriteError::Unavailable(
                "this node has nowhere to write entities".into(),
            )),
        }
    }
}

/// Kept in [`Ctx::state`] by a plugin, the path the upstream gets instead of the one routing
/// made (Kong's `kong.service.request.set_path`): the service's path and `strip_path` no
/// longer apply; the query string stays.
#[derive(Clone, Debug)]
pub struct UpstreamPath(pub String);

/// Kept in [`Ctx::state`] by a plugin, the `Host` the upstream gets (Kong's
/// `kong.service.request.set_header("host", ...)`), in place of the one `preserve_host` and the
/// service choose.
#[derive(Clone, Debug)]
pub struct UpstreamHost(pub HeaderValue);

/// The request body as the rewrite and access phases see it: streaming until a plugin reads
/// it ([`Ctx::body`]), then whole (at most [`BODY_LIMIT`] bytes), and sent upstream as read.
pub struct BodySlot(Slot);

enum Slot {
    Stream(crate::pool::UpBody),
    Read(Bytes),
    Failed(bool),
}

impl BodySlot {
    pub fn new(body: crate::pool::UpBody) -> BodySlot {
        BodySlot(Slot::Stream(body))
    }

    /// A request without a body.
    pub fn empty() -> BodySlot {
        BodySlot(Slot::Read(Bytes::new()))
    }

    async fn read(&mut self, headers: &hyper::HeaderMap) -> Option<&Bytes> {
        if let Slot::Stream(_) = &self.0 {
            let Slot::Stream(b) = std::mem::replace(&mut self.0, Slot::Failed(false)) else {
                unreachable!("matched above")
            };
            self.0 = match crate::server::read_body(b, headers).await {
                Ok(bytes) => Slot::Read(bytes),
                Err(e) => Slot::Failed(matches!(e, crate::error::ProxyError::BodyTooLarge)),
            };
        }
        match &self.0 {
            Slot::Read(b) => Some(b),
            _ => None,
        }
    }

    /// Change the body read (nothing happens to a body no plugin read).
    pub fn edit(&mut self, f: impl FnOnce(&Bytes) -> Bytes) {
        if let Slot::Read(b) = &self.0 {
            self.0 = Slot::Read(f(b));
        }
    }

    /// The body to send upstream: the stream, or what was read (its `Content-Length` set);
    /// a body that could not be read fails the request.
    pub(crate) fn take(
        &mut self,
        headers: &mut hyper::HeaderMap,
    ) -> Result<crate::pool::UpBody, crate::error::ProxyError> {
        match std::mem::replace(&mut self.0, Slot::Failed(false)) {
            Slot::Stream(b) => Ok(b),
            Slot::Read(bytes) => {
                if headers.contains_key(hyper::header::TRANSFER_ENCODING)
                    || headers.contains_key(hyper::header::CONTENT_LENGTH)
                {
                    headers.remove(hyper::header::TRANSFER_ENCODING);
                    headers.insert(
                        hyper::header::CONTENT_LENGTH,
                        HeaderValue::from(bytes.len()),
                    );
                }
                Ok(http_body_util::Either::Right(Full::new(bytes)))
            }
            Slot::Failed(true) => Err(crate::error::ProxyError::BodyTooLarge),
            Slot::Failed(false) => Err(crate::error::ProxyError::BodyUnreadable),
        }
    }
}

/// The connection a request came on, as nginx's variables tell it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// Where it was accepted (`$server_addr`), when known.
    pub local_ip: Option<IpAddr>,
    /// The listener's port (`$server_port`).
    pub local_port: u16,
    /// This process's serial number of the connection (`$connection`).
    pub serial: u64,
    /// The requests received on it, this one included (`$connection_requests`).
    pub requests: u64,
}

/// What plugins see and change of a request.
pub struct Ctx<'a> {
    pub req: &'a mut hyper::http::request::Parts,
    /// The request body, read only when a plugin asks ([`Ctx::body`]).
    pub body: &'a mut BodySlot,
    /// Whether the request came over TLS to this node.
    pub https: bool,
    /// Whether the peer is trusted (`trusted_ips`): its `X-Forwarded-*` headers are believed.
    pub trusted: bool,
    /// The version of the configuration the request runs on.
    pub config_version: i64,
    pub client_ip: IpAddr,
    /// The address of the connection's other end (the client, or a proxy before it).
    pub peer_ip: IpAddr,
    /// The connection the request came on.
    pub connection: Connection,
    /// The route that matched: none in the rewrite phase, which runs before routing.
    pub route_id: Option<&'a str>,
    pub service_id: Option<&'a str>,
    pub consumer: Option<Arc<Consumer>>,
    /// The credential that authenticated the consumer.
    pub credential: Option<String>,
    pub identities: &'a Identities,
    /// The route's regex captures, by name and by number (`0` is the whole match): none in
    /// the rewrite phase.
    pub captures: &'a [(String, String)],
    /// Headers to add to the response to the client.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request state, by type: what a plugin keeps from one phase to a later one (the
    /// log phase reads it from [`crate::server::RequestLog::state`]). Nothing is allocated
    /// until a plugin stores something.
    pub state: &'a mut hyper::http::Extensions,
}

impl Ctx<'_> {
    /// The whole request body (at most [`BODY_LIMIT`] bytes), read from the client the first
    /// time a plugin asks; `None` when it could not be read (too large, or the client failed),
    /// and the request then fails as it would have upstream.
    pub async fn body(&mut self) -> Option<&Bytes> {
        self.body.read(&self.req.headers).await
    }

    /// Set the consumer, and the upstream headers Kong sets for it.
    pub fn authenticate(
        &mut self,
        consumer: Arc<Consumer>,
        credential: Option<String>,
        anonymous: bool,
    ) {
        let h = &mut self.req.headers;
        let mut put = |name: HeaderName, v: Option<HeaderValue>| match v {
            Some(v) => {
                h.insert(name, v);
            }
            None => {
                h.remove(name);
            }
        };
        let [id, username, custom_id] = consumer.headers.clone();
        put(names::X_CONSUMER_ID, id);
        put(names::X_CONSUMER_USERNAME, username);
        put(names::X_CONSUMER_CUSTOM_ID, custom_id);
        put(
            names::X_CREDENTIAL_IDENTIFIER,
            credential
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
        );
        put(
            names::X_ANONYMOUS_CONSUMER,
            anonymous.then_some(HeaderValue::from_static("true")),
        );
        self.consumer = Some(consumer);
        self.credential = credential;
    }
}

/// What follows an authorization scheme in a header value, as Kong's `\s*[Bb]earer\s+(.+)`
/// and `\s*[Bb]asic\s*(.+)` find it: the first `scheme` (its first letter in either case)
/// followed by at least `min_space` whitespace characters and then something. Written out
/// because a regex with a capture group costs microseconds on a long token.
pub(crate) fn after_scheme<'a>(value: &'a str, scheme: &str, min_space: usize) -> Option<&'a str> {
    let (first, tail) = scheme.split_at(1);
    let first = first.chars().next().unwrap_or_default();
    let mut from = 0;
    while let Some(at) = value[from..].find(tail) {
        let at = from + at;
        from = at + tail.len();
        if !value[..at].ends_with(|c: char| c.eq_ignore_ascii_case(&first)) {
            continue;
        }
        let after = &value[from..];
        let rest = after.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        let space = after.len() - rest.len();
        if space < min_space {
            continue;
        }
        if !rest.is_empty() {
            return Some(rest);
        }
        // `(.+)` takes the last whitespace character when nothing else is left.
        if space > min_space {
            return Some(&after[space - 1..]);
        }
    }
    None
}

/// A boolean of a validated plugin configuration (`default` where it is absent).
pub(crate) fn conf_bool(c: &Value, k: &str, default: bool) -> bool {
    c.get(k).and_then(Value::as_bool).unwrap_or(default)
}

/// The strings of an array of a validated plugin configuration (none where it is absent).
pub(crate) fn conf_strings(c: &Value, k: &str) -> Vec<String> {
    gantry_model::document::strings(c.get(k))
}

/// base64 as nginx decodes it (`ngx.decode_base64`): the standard alphabet, padding optional.
pub(crate) const NGINX_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// An auth plugin's `anonymous` consumer (an empty string is none, as in Kong).
pub(crate) fn conf_anonymous(c: &Value) -> Option<String> {
    c.get("anonymous")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An authentication plugin's answer once its own check failed: with `anonymous` (Kong's
/// "logical OR" between auth plugins) the request goes on as that consumer, id or username;
/// without, `refusal`. An anonymous consumer that does not exist is a 500, never a pass.
pub fn fall_back(
    ctx: &mut Ctx<'_>,
    anonymous: Option<&str>,
    refusal: impl FnOnce() -> Response<ProxyBody>,
) -> Option<Response<ProxyBody>> {
    let Some(a) = anonymous else {
        return Some(refusal());
    };
    match ctx.identities.find(a) {
        Some(anon) => {
            ctx.authenticate(anon, None, true);
            None
        }
        None => Some(error(
            500,
            "An unexpected error occurred: anonymous consumer not found",
        )),
    }
}

/// A Kong-style JSON error response.
pub fn error(status: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    raw(status, "application/json; charset=utf-8", Bytes::from(body))
}

/// A response the proxy answers itself, with a body of the given type.
pub fn raw(status: u16, content_type: &str, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::SERVER,
        HeaderValue::from_static(concat!("gantry/", env!("CARGO_PKG_VERSION"))),
    );
    r
}

/// What the certificate phase sees of a TLS handshake.
pub struct CertCtx<'a> {
    /// The server name the client asked for (SNI).
    pub server_name: Option<&'a str>,
    /// The certificate the handshake presents, chosen from the configuration's SNIs: a plugin
    /// may replace it, or take it away to refuse the handshake.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A response body rewritten on its way to the client (the response body phase).
pub trait BodyFilter: Send + Sync {
    /// The next chunk of the body, in order; `last` is set on the final call, which may carry
    /// an empty chunk. Returns what goes to the client now (empty: nothing yet).
    fn filter(&mut self, chunk: Bytes, last: bool) -> Bytes;
    /// Whether this filter gives every chunk back unchanged (it only observes the body, as
    /// proxy-cache's does): when every filter does, the response keeps its `Content-Length`.
    fn keeps_body(&self) -> bool {
        false
    }
}

/// A future a plugin's hook returns when it waits on I/O.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a request phase (rewrite, access) decided. A hook that decides at once costs
/// nothing more than a return value; one that waits on I/O (Redis, an HTTP sink, an
/// introspection endpoint) returns [`Flow::Later`], and the request waits for it without
/// blocking anything else.
pub enum Flow<'a> {
    /// Go on with the next plugin.
    Next,
    /// Answer the client with this instead of the upstream's response.
    Respond(Response<ProxyBody>),
    /// Decide once this completes: `None` goes on, `Some` answers.
    Later(BoxFuture<'a, Option<Response<ProxyBody>>>),
}

impl<'a> Flow<'a> {
    /// A decision that waits on `f`.
    pub fn later<F>(f: F) -> Flow<'a>
    where
        F: std::future::Future<Output = Option<Response<ProxyBody>>> + Send + 'a,
    {
        Flow::Later(Box::pin(f))
    }

    /// The decision: the response to answer with, if any.
    pub async fn decided(self) -> Option<Response<ProxyBody>> {
        match self {
            Flow::Next => None,
            Flow::Respond(r) => Some(r),
            Flow::Later(f) => f.await,
        }
    }
}

impl From<Option<Response<ProxyBody>>> for Flow<'_> {
    fn from(r: Option<Response<ProxyBody>>) -> Self {
        match r {
            None => Flow::Next,
            Some(r) => Flow::Respond(r),
        }
    }
}

/// One configured plugin instance. Every hook has a default that does nothing; phases run in
/// this order, each over the plugins by priority.
pub trait Plugin: Send + Sync {
    /// During a TLS handshake, before routing: global plugins only, as no route is known.
    /// Synchronous: it runs inside the TLS library's certificate resolver.
    fn certificate(&self, _ctx: &mut CertCtx<'_>) {}
    /// Before routing, global plugins only (no route is known yet, as in Kong): may rewrite
    /// the request that routing then reads, or answer it.
    fn rewrite<'a>(&'a self, _ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::Next
    }
    /// Authentication, authorisation, limits: may answer in place of the upstream.
    fn access<'a>(&'a self, _ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::Next
    }
    /// The most bytes of request body this plugin lets through, when it limits them: the
    /// body streams upstream and is cut (413) once past the least limit of the plugins that
    /// ran access.
    fn body_limit(&self) -> Option<u64> {
        None
    }
    /// Whether this plugin reads the request body ([`Plugin::request_body`]). When one that
    /// runs on a request does, the proxy reads the whole body (up to [`BODY_LIMIT`]) before
    /// any of it goes upstream.
    fn reads_body(&self) -> bool {
        false
    }
    /// After access, for plugins that [read the body](Plugin::reads_body), in priority order:
    /// the whole request body, which the plugin may replace (the upstream gets what the last
    /// one left, with its `Content-Length`); it may also change the request head, or answer.
    fn request_body<'a>(&'a self, _ctx: &'a mut Ctx<'_>, _body: &'a mut Bytes) -> Flow<'a> {
        Flow::Next
    }
    /// The request as it goes upstream, before it is sent: a last edit of its head. The
    /// headers the proxy sets (`Host`, Kong's `X-Forwarded-*`, `X-Real-IP`, `Via`,
    /// `X-Kong-Request-Id`) are not in this map: they are written with it, and replace any of
    /// those names it holds (as nginx's `proxy_set_header` lines replace the client's in Kong).
    fn upstream_request(&self, _req: &mut UpstreamRequest<'_>) {}
    /// A connection to an upstream target failed: whether the proxy may try again (another
    /// target, or the same host, within the service's `retries`). Any plugin that runs on the
    /// request may stop the retries; the client then gets the error of this failure.
    fn upstream_failed(&self, _failure: &UpstreamFailure<'_>) -> Retry {
        Retry::Allow
    }
    /// The response head, from the upstream or from a plugin that answered, before it goes to
    /// the client.
    fn header_filter(&self, _response: &mut hyper::http::response::Parts) {}
    /// [`Plugin::header_filter`], with the per-request state the earlier phases kept.
    fn header_filter_with(
        &self,
        response: &mut hyper::http::response::Parts,
        _state: &mut hyper::http::Extensions,
    ) {
        self.header_filter(response)
    }
    /// After `header_filter`: a filter for this response's body, when the plugin rewrites it.
    fn body_filter(&self, _response: &hyper::http::response::Parts) -> Option<Box<dyn BodyFilter>> {
        None
    }
    /// Once the response body has gone (or the client left): the request as the log phase
    /// sees it. It must not block: work that waits on I/O goes in the returned future, which
    /// the runtime runs on its own (it must own what it needs of the entry).
    fn log(&self, _entry: &crate::server::RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        None
    }
    /// Whether [`Plugin::log`] does anything (the proxy keeps what a log entry needs only then).
    fn logs(&self) -> bool {
        false
    }
}

/// The most of a request body the proxy reads for plugins that [read it](Plugin::reads_body):
/// a larger body is answered 413 (a plugin that must see the body is never skipped).
pub const BODY_LIMIT: usize = 8 << 20;

/// The upstream request's head, for [`Plugin::upstream_request`].
pub struct UpstreamRequest<'a> {
    pub method: &'a mut hyper::Method,
    pub uri: &'a mut hyper::Uri,
    pub headers: &'a mut hyper::HeaderMap,
    /// The target it goes to first (`host:port`).
    pub target: &'a str,
    /// The per-request state the earlier phases kept.
    pub state: &'a mut hyper::http::Extensions,
}

/// A failed connection to an upstream target, for [`Plugin::upstream_failed`].
pub struct UpstreamFailure<'a> {
    /// The target (`host:port`).
    pub target: &'a str,
    /// Connections tried for this request so far, this one included.
    pub attempt: usize,
    /// Whether it timed out (`connect_timeout`), rather than being refused or unresolved.
    pub timed_out: bool,
    /// What failed, as logged.
    pub error: &'a (dyn std::error::Error + Send + Sync),
}

/// Whether a failed upstream connection may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Within the service's `retries`.
    Allow,
    /// No more tries for this request.
    Stop,
}

/// A response body passed through the body filters of the plugins that ran, in order.
pub struct Filtered {
    inner: ProxyBody,
    filters: Vec<Box<dyn BodyFilter>>,
    /// The upstream body has ended (the filters had their last call).
    done: bool,
    /// Trailers, sent after what the filters gave on their last call.
    trailers: Option<hyper::HeaderMap>,
}

impl Filtered {
    pub fn new(inner: ProxyBody, filters: Vec<Box<dyn BodyFilter>>) -> Filtered {
        Filtered {
            inner,
            filters,
            done: false,
            trailers: None,
        }
    }

    fn run(&mut self, chunk: Bytes, last: bool) -> Bytes {
        self.filters
            .iter_mut()
            .fold(chunk, |chunk, f| f.filter(chunk, last))
    }
}

impl hyper::body::Body for Filtered {
    type Data = Bytes;
    type Error = crate::server::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, crate::server::BodyError>>> {
        use hyper::body::Frame;
        use std::task::Poll;
        let me = self.get_mut();
        loop {
            if me.done {
                return Poll::Ready(me.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let out = match std::pin::Pin::new(&mut me.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The upstream's last chunk is the filters' last call: a response that
                        // keeps its `Content-Length` is not polled past its last byte.
                        let last = me.inner.is_end_stream();
                        me.done = last;
                        me.run(data, last)
                    }
                    Err(frame) => {
                        me.trailers = frame.into_trailers().ok();
                        me.done = true;
                        me.run(Bytes::new(), true)
                    }
                },
                Poll::Ready(None) => {
                    me.done = true;
                    me.run(Bytes::new(), true)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

/// The plugins this build of Gantry ships, each runnable on every node.
pub static BUNDLED: &[&Descriptor] = &[
    &acl::DESCRIPTOR,
    &basic_auth::DESCRIPTOR,
    &correlation_id::DESCRIPTOR,
    &hmac_auth::DESCRIPTOR,
    &ip_restriction::DESCRIPTOR,
    &jwt::DESCRIPTOR,
    &key_auth::DESCRIPTOR,
    &oauth2::DESCRIPTOR,
    &rate_limiting::DESCRIPTOR,
    &request_size_limiting::DESCRIPTOR,
    &request_termination::DESCRIPTOR,
    &request_transformer::DESCRIPTOR,
    &cors::DESCRIPTOR,
    &response_transformer::DESCRIPTOR,
    &response_ratelimiting::DESCRIPTOR,
    &file_log::DESCRIPTOR,
    &http_log::DESCRIPTOR,
    &prometheus::DESCRIPTOR,
    &proxy_cache::DESCRIPTOR,
    &opentelemetry::DESCRIPTOR,
];
