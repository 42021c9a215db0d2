//! The request pipeline, Kong's phases over one request: the checks on its head, rewrite,
//! routing, access, the request body, the upstream request and its exchange, then the
//! response phases (Kong's response headers, header_filter, body_filter) and the log phase,
//! which runs once the response body has gone to the client.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use crate::balancer::{Algorithm, HashOn, Tracked};
use crate::error::ProxyError;
use crate::forward::strip_hop_by_hop;
use crate::names;
use crate::plugins::{Ctx, UpstreamRequest};
use crate::pool::UpBody;
use crate::router::RequestInfo;
use crate::server::{
    json_error, read_body, split_host, BodyError, Client, ConnInfo, LogDetails, LogSink, Proxy,
    ProxyBody, RequestLog, MAX_HEAD,
};
use crate::snapshot::Snapshot;
use crate::uri::{normalize, upstream_path_v0};

/// The bytes of an HTTP/1.1 head: its first line (`line` bytes without CRLF), the fields of
/// `headers` that `keep` keeps, and `more` bytes of lines beside them.
fn head_size(
    line: usize,
    headers: &HeaderMap,
    keep: impl Fn(&HeaderName) -> bool,
    more: usize,
) -> u64 {
    let fields: usize = headers
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| field_size(k, v))
        .sum();
    (line + 2 + fields + more + 2) as u64
}

/// The bytes of a request's head, as Kong's `$request_length` counts them (without the body):
/// the head as it came where its lines were kept ([`crate::raw::RawRequest`]), else the
/// request line and the map's lines.
pub(crate) fn request_head_size<B>(req: &Request<B>, raw: Option<&crate::raw::RawRequest>) -> u64 {
    if let Some(raw) = raw {
        return raw.head_len() as u64;
    }
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len() + 3)
        + req.uri().scheme_str().map_or(0, str::len);
    let line = req.method().as_str().len() + target + 10;
    head_size(line, req.headers(), |_| true, 0)
}

/// The bytes of a response head as the client gets it: the status line, the map's lines and
/// the proxy's headers (`added`), whether these are in the map already or beside it (the
/// upstream's lines as they came, the lines the proxy writes after the map's).
pub(crate) fn response_head_size(
    status: StatusCode,
    headers: &HeaderMap,
    added: &crate::forward::ResponseAdded,
) -> u64 {
    let line = 13 + status.canonical_reason().map_or(0, str::len);
    head_size(line, headers, |k| !added.skips(k), added.size())
}

/// The bytes of a header line: name, `: `, value, CRLF.
fn field_size(name: &HeaderName, value: &HeaderValue) -> usize {
    name.as_str().len() + value.len() + 4
}

/// What `route_and_forward` learned of a request: the plugins that ran and the headers they
/// add to the response, and (only when a log phase listens) who handled it.
struct Seen {
    on: bool,
    request_id: names::RequestId,
    service: Option<Arc<crate::snapshot::Service>>,
    route: Option<Arc<crate::router::Route>>,
    consumer: Option<Arc<crate::plugins::Consumer>>,
    upstream: Option<Duration>,
    ran: Vec<Arc<dyn crate::plugins::Plugin>>,
    /// Kept for log plugins only.
    details: Option<Box<LogDetails>>,
    /// Whether the access phase ran (else the global plugins run the response phases).
    accessed: bool,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The plugins' per-request state, for the log phase.
    state: hyper::http::Extensions,
    /// The headers the proxy adds to the response.
    added: crate::forward::ResponseAdded,
}

/// A request's log entry, waiting for the end of its response body.
struct Pending {
    request_id: names::RequestId,
    client: std::net::IpAddr,
    method: hyper::Method,
    uri: Uri,
    service: Option<Arc<crate::snapshot::Service>>,
    route: Option<Arc<crate::router::Route>>,
    consumer: Option<Arc<crate::plugins::Consumer>>,
    status: u16,
    request_size: u64,
    response_head_size: u64,
    started: Instant,
    upstream: Option<Duration>,
    sinks: Option<Arc<[Arc<dyn LogSink>]>>,
    plugins: Vec<Arc<dyn crate::plugins::Plugin>>,
    details: Option<Box<LogDetails>>,
    state: hyper::http::Extensions,
    /// Body bytes sent so far.
    size: u64,
}

impl Pending {
    fn emit(self) {
        let r = RequestLog {
            request_id: self.request_id.as_str(),
            client: self.client,
            method: &self.method,
            uri: &self.uri,
            service: self.service.as_ref().map(|s| s.id.as_str()),
            route: self.route.as_ref().map(|r| r.id.as_str()),
            consumer: self.consumer.as_ref().map(|c| c.id.as_str()),
            route_entity: self.route.as_deref(),
            service_entity: self.service.as_deref(),
            consumer_entity: self.consumer.as_deref(),
            request_size: self.request_size,
            response_head_size: self.response_head_size,
            status: self.status,
            started: self.started,
            total: self.started.elapsed(),
            upstream: self.upstream,
            response_size: self.size,
            details: self.details.as_deref(),
            state: &self.state,
        };
        for s in self.sinks.iter().flat_map(|s| s.iter()) {
            s.log(&r);
        }
        for p in &self.plugins {
            if let Some(work) = p.log(&r) {
                // Log work that waits on I/O runs on its own, after the response.
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(work);
                    }
                    Err(_) => tracing::warn!("a plugin's log work was dropped: no runtime"),
                }
            }
        }
    }
}

/// A response body that runs the log phase when it ends, or when it is dropped unfinished
/// (the client went away).
struct LogOnEnd {
    inner: ProxyBody,
    entry: Option<Box<Pending>>,
}

impl hyper::body::Body for LogOnEnd {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(e), Some(data)) = (self.entry.as_mut(), frame.data_ref()) {
                    e.size += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(e) = self.entry.take() {
                    e.emit();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            e.emit();
        }
    }
}

impl Proxy {
    /// Route and forward one request: its response, and the headers the proxy adds to it that
    /// are not in its map (to be written after the map's lines, or
    /// [put into it](crate::forward::ResponseAdded::apply)).
    ///
    /// `raw`: the request's header lines as they came, its map then empty (they are put into
    /// it unless nothing reads it). Borrowed, not moved: the futures of the request's way
    /// stay smaller, and each is moved once per request.
    pub async fn handle(
        &self,
        mut req: Request<crate::pool::Inbound>,
        raw: &mut Option<crate::raw::RawRequest>,
        conn: &ConnInfo,
    ) -> (Response<ProxyBody>, crate::forward::ResponseAdded) {
        let started = Instant::now();
        let connection = crate::plugins::Connection {
            local_ip: conn.local_ip,
            local_port: conn.local_port,
            serial: conn.serial,
            requests: conn.requests.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let sinks = self.log_sinks.get().filter(|s| !s.is_empty());
        let n = self
            .id_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request_id = names::RequestId::new(self.id_prefix, n);
        let snap = self.snapshot.load_full();
        let logs = sinks.is_some() || snap.plugins.logs();
        // The configuration may have changed since the lines were kept: now read, they are
        // mapped.
        if raw.is_some() && !self.raw_requests(&snap) {
            if let Some(lines) = raw.take() {
                lines.into_map(req.headers_mut());
            }
        }
        let mut seen = Seen {
            on: logs,
            request_id,
            service: None,
            route: None,
            consumer: None,
            upstream: None,
            ran: Vec::new(),
            details: None,
            accessed: false,
            response_headers: Vec::new(),
            state: hyper::http::Extensions::new(),
            added: crate::forward::ResponseAdded::default(),
        };
        let traced = self.tracing.bits();
        if traced != 0 {
            seen.state.insert(crate::spans::Trace::new(traced));
        }
        let logged = logs.then(|| (req.method().clone(), req.uri().clone()));
        // What the client sent, as Kong's `$request_length`: the head, and the body it announced.
        let request_size = if logs {
            // Kept lines are the request's whole head: a body comes with a mapped one.
            let announced = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            request_head_size(&req, raw.as_ref()) + announced
        } else {
            0
        };
        let head = req.method() == hyper::Method::HEAD;
        let client = self.client(conn, req.headers());
        if logs && snap.plugins.logs() {
            seen.details = Some(Box::new(LogDetails {
                request_headers: req.headers().clone(),
                ..LogDetails::default()
            }));
        }
        // Every way the proxy ends a request itself becomes Kong's response here.
        let res = self
            .route_and_forward(
                req, raw, conn, connection, &client, &snap, started, &mut seen,
            )
            .await
            .unwrap_or_else(|e| e.response());
        // The response phases, over every response: the upstream's, a plugin's, or an error.
        if !seen.accessed {
            seen.ran = snap.plugins.globals();
            if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
                t.ran = snap.plugins.global_names().to_vec();
            }
        }
        let (mut rparts, mut body) = res.into_parts();
        let added = self.headers();
        if added.request_id {
            seen.added.request_id = Some(request_id);
        }
        if seen.upstream.is_none() {
            // Answered here: a plugin, an error, a redirect.
            if !added.server {
                rparts.headers.remove(header::SERVER);
            }
            if added.response_latency {
                seen.added.response_latency = Some(started.elapsed().as_millis() as u64);
            }
        }
        // The plugins' response phases and log phases read the map: the proxy's headers go
        // into it. Else they are written beside it (a log sink reads no header).
        if !seen.ran.is_empty() || seen.details.is_some() {
            seen.added.apply(&mut rparts.headers);
        }
        for (n, v) in seen.response_headers.drain(..) {
            rparts.headers.append(n, v);
        }
        let traced = seen
            .state
            .get_mut::<crate::spans::Trace>()
            .filter(|t| t.has(crate::spans::PLUGIN_HEADER_FILTER))
            .map(|t| std::mem::take(&mut t.ran));
        match traced {
            None => {
                for p in &seen.ran {
                    p.header_filter_with(&mut rparts, &mut seen.state);
                }
            }
            Some(names) => {
                for (p, name) in seen.ran.iter().zip(&names) {
                    let t0 = Instant::now();
                    p.header_filter_with(&mut rparts, &mut seen.state);
                    if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
                        t.phase(
                            crate::spans::PLUGIN_HEADER_FILTER,
                            "header_filter",
                            name,
                            t0,
                        );
                    }
                }
            }
        }
        // Responses without a body (HEAD, 1xx, 204, 304) have nothing to filter.
        let bodiless =
            head || rparts.status.is_informational() || matches!(rparts.status.as_u16(), 204 | 304);
        let filters: Vec<_> = if bodiless {
            Vec::new()
        } else {
            seen.ran
                .iter()
                .filter_map(|p| p.body_filter(&rparts))
                .collect()
        };
        if !filters.is_empty() {
            // A filtered body's length is known only once it has been sent (unless every
            // filter only observes it).
            if !filters.iter().all(|f| f.keeps_body()) {
                rparts.headers.remove(header::CONTENT_LENGTH);
            }
            body = crate::plugins::Filtered::new(body, filters).boxed();
        }
        let status = rparts.status.as_u16();
        self.stats.count(status, started.elapsed());
        if let Some(d) = seen.details.as_mut() {
            d.response_headers = rparts.headers.clone();
        }
        if let Some((method, uri)) = logged {
            // The log phase runs once the body has gone to the client (or the client left).
            body = LogOnEnd {
                inner: body,
                entry: Some(Box::new(Pending {
                    request_id,
                    client: client.ip,
                    method,
                    uri,
                    service: seen.service,
                    route: seen.route,
                    consumer: seen.consumer,
                    status,
                    request_size,
                    response_head_size: response_head_size(
                        rparts.status,
                        &rparts.headers,
                        &seen.added,
                    ),
                    started,
                    upstream: seen.upstream,
                    sinks: sinks.cloned(),
                    plugins: seen.ran,
                    details: seen.details,
                    state: std::mem::take(&mut seen.state),
                    size: 0,
                })),
            }
            .boxed();
        }
        (Response::from_parts(rparts, body), seen.added)
    }

    #[allow(clippy::too_many_arguments)]
    async fn route_and_forward(
        &self,
        req: Request<crate::pool::Inbound>,
        raw: &mut Option<crate::raw::RawRequest>,
        conn: &ConnInfo,
        connection: crate::plugins::Connection,
        client: &Client,
        snap: &Snapshot,
        started: Instant,
        seen: &mut Seen,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (local_port, https, sni) = (conn.local_port, conn.https, conn.sni.as_deref());
        let peer_ip = conn.peer.ip();
        let (upgrade, client_upgrade, mut parts, body) = {
            let mut req = req;
            let upgrade = upgrade_protocol(&req);
            let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
            let (parts, body) = req.into_parts();
            (upgrade, client_upgrade, parts, body)
        };
        let body: UpBody = Either::Left(crate::pool::ClientBody::new(body));
        let mut slot = crate::plugins::BodySlot::new(body);
        check_framing(&parts)?;
        // The rewrite phase, before routing (global plugins, as in Kong): routing reads the
        // request as they leave it.
        if !snap.plugins.is_empty() {
            let mut ctx = Ctx {
                req: &mut parts,
                body: &mut slot,
                https,
                trusted: client.trusted,
                config_version: snap.version,
                client_ip: client.ip,
                peer_ip,
                connection,
                route_id: None,
                service_id: None,
                consumer: None,
                credential: None,
                identities: &snap.identities,
                captures: &[],
                response_headers: Vec::new(),
                state: &mut seen.state,
            };
            let exit = snap.plugins.run_rewrite(&mut ctx).await;
            seen.response_headers = ctx.response_headers;
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
        // Owned copies (reference-counted, not copied) of what routing reads, so that plugins
        // may change the request afterwards.
        // The target's authority, when it has one, is the host (RFC 9112 section 3.2.2: an
        // absolute-form target wins over Host, which is replaced with it; RFC 9113 section
        // 8.3.1: a Host that names another host than :authority is malformed).
        let authority = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let raw_host = raw.as_ref().and_then(crate::raw::RawRequest::host);
        let host_value = match (
            authority,
            parts.headers.get(header::HOST).or(raw_host.as_ref()),
        ) {
            (Some(a), Some(h)) if parts.version >= hyper::Version::HTTP_2 && a != h => {
                return Err(ProxyError::BadRequest(
                    "Bad request: Host and :authority differ",
                ))
            }
            (Some(a), h) => {
                if h != Some(&a) {
                    parts.headers.insert(header::HOST, a.clone());
                }
                a
            }
            (None, Some(h)) => h.clone(),
            (None, None) => return Err(ProxyError::BadRequest("Bad request: missing Host header")),
        };
        let Some((host, port)) = host_value.to_str().ok().and_then(host_and_port) else {
            return Err(ProxyError::BadRequest("Bad request: invalid Host header"));
        };
        let request_uri = parts.uri.clone();
        let raw_path = request_uri.path();
        let path = normalize(raw_path);
        let info = RequestInfo {
            method: parts.method.as_str(),
            host,
            port: port.unwrap_or(local_port),
            path: &path,
            headers: &parts.headers,
            sni,
            https,
        };
        let routing = seen
            .state
            .get::<crate::spans::Trace>()
            .is_some_and(|t| t.has(crate::spans::ROUTER))
            .then(Instant::now);
        let found = snap.router.find(&info);
        if let Some(t) = seen.state.get_mut::<crate::spans::Trace>() {
            if let Some(t0) = routing {
                t.router = Some((t0, Instant::now()));
            }
            t.route_path = found.as_ref().and_then(|m| m.route.first_path.clone());
        }
        let Some(m) = found else {
            return Err(ProxyError::NoRoute);
        };
        let route = m.route;
        if seen.on {
            seen.route = Some(route.clone());
        }
        // The route's protocols, in one pass.
        let (mut http, mut https_route, mut grpc_route) = (false, false, false);
        for p in route.protocols.iter() {
            match p.as_str() {
                "http" => http = true,
                "https" => https_route = true,
                "grpc" | "grpcs" => grpc_route = true,
                _ => {}
            }
        }
        // Behind a trusted proxy that ended TLS, its X-Forwarded-Proto and -Host say what the
        // client used (Kong's forwarded scheme and host).
        let forwarded = |name: &HeaderName| {
            client
                .trusted
                .then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .map(|v| v.split(',').next().unwrap_or("").trim())
                .filter(|v| !v.is_empty())
        };
        let forwarded_https = match forwarded(&names::X_FORWARDED_PROTO) {
            Some(p) => p.eq_ignore_ascii_case("https"),
            None => https,
        };
        if !forwarded_https && https_route && !http {
            let to = forwarded(&names::X_FORWARDED_HOST).unwrap_or(host);
            return Ok(https_redirect(
                route.https_redirect_status_code,
                to,
                &request_uri,
            ));
        }
        if grpc_route && !http && !https_route {
            if let Some(lines) = raw.take() {
                lines.into_map(&mut parts.headers);
            }
            let is_grpc = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if !is_grpc {
                return Err(ProxyError::NotGrpc);
            }
            if parts.version != hyper::Version::HTTP_2 {
                return Err(ProxyError::Http2Required);
            }
        }
        let service = route
            .service_id
            .as_ref()
            .and_then(|id| snap.services.get(id));
        if seen.on {
            seen.service = service.cloned();
        }
        // Plugins: rewrite and access, in priority order; one may answer instead of the upstream.
        let mut consumer_id: Option<String> = None;
        if !snap.plugins.is_empty() {
            let mut ctx = Ctx {
                req: &mut parts,
                body: &mut slot,
                https,
                trusted: client.trusted,
                config_version: snap.version,
                client_ip: client.ip,
                peer_ip,
                connection,
                route_id: Some(&route.id),
                service_id: service.map(|s| s.id.as_str()),
                consumer: None,
                credential: None,
                identities: &snap.identities,
                captures: &m.captures,
                response_headers: std::mem::take(&mut seen.response_headers),
                state: &mut seen.state,
            };
            let access = snap.plugins.run_access(&mut ctx).await;
            let mut exit = access.exit;
            let mut body = match exit {
                // Answered: the body is not read (nor sent anywhere).
                Some(_) => Either::Right(Full::default()),
                None => ctx.body.take(&mut ctx.req.headers)?,
            };
            // A limit on the body's size (request-size-limiting) cuts it as it streams.
            if let (Either::Left(b), Some(n)) = (
                &mut body,
                access.ran.iter().filter_map(|p| p.body_limit()).min(),
            ) {
                b.limit(n);
            }
            // The request body phase, for the plugins that read it.
            if exit.is_none() && access.ran.iter().any(|p| p.reads_body()) {
                let client_body = std::mem::replace(&mut body, Either::Right(Full::default()));
                let mut bytes = read_body(client_body, &ctx.req.headers).await?;
                for p in access.ran.iter().filter(|p| p.reads_body()) {
                    exit = p.request_body(&mut ctx, &mut bytes).decided().await;
                    if exit.is_some() {
                        break;
                    }
                }
                ctx.req.headers.remove(header::TRANSFER_ENCODING);
                ctx.req
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                body = Either::Right(Full::new(bytes));
            }
            *ctx.body = crate::plugins::BodySlot::new(body);
            seen.ran = access.ran;
            seen.accessed = true;
            seen.response_headers = ctx.response_headers;
            consumer_id = ctx.consumer.as_ref().map(|c| c.id.clone());
            if seen.on {
                seen.consumer = ctx.consumer;
            }
            if let Some(d) = seen.details.as_mut() {
                // As the plugins left them: key-auth's hide_credentials removed the key.
                d.request_headers = parts.headers.clone();
            }
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
        let body = slot.take(&mut parts.headers)?;
        let Some(service) = service else {
            return Err(ProxyError::NoService);
        };
        if !service.enabled {
            return Err(ProxyError::ServiceDisabled);
        }
        let grpc = matches!(service.protocol.as_str(), "grpc" | "grpcs");
        if !matches!(service.protocol.as_str(), "http" | "https") && !grpc {
            return Err(ProxyError::UnsupportedProtocol);
        }
        let balancer = snap.balancers.get(&service.host);
        let key = match balancer.map(|b| &b.algorithm) {
            Some(Algorithm::ConsistentHashing { on, fallback }) => {
                if let Some(lines) = raw.take() {
                    lines.into_map(&mut parts.headers);
                }
                let key_of = |on: &HashOn| {
                    hash_key(on, &parts, client.ip, consumer_id.as_deref(), &m.captures)
                };
                key_of(on).or_else(|| key_of(fallback))
            }
            _ => None,
        };
        let target: std::borrow::Cow<'_, str> = match balancer {
            Some(b) => match b.pick(&self.health, &self.load, &[], key.as_deref()) {
                Some(t) => std::borrow::Cow::Owned(t.to_string()),
                None => return Err(ProxyError::NoPeer),
            },
            None => std::borrow::Cow::Borrowed(service.addr.as_str()),
        };
        let prefix = route.strip_path.then_some(&*m.prefix);
        let upath: std::borrow::Cow<'_, str> =
            match seen.state.get::<crate::plugins::UpstreamPath>() {
                Some(p) => std::borrow::Cow::Owned(p.0.clone()),
                None => upstream_path_v0(service.path.as_deref().unwrap_or("/"), prefix, &path),
            };
        // With the query as the plugins left it (key-auth's hide_credentials removes a key from
        // it). A path forwarded as it came keeps the request's own target (nothing is copied).
        let uri = match parts.uri.path_and_query() {
            Some(pq) if pq.path() == upath => {
                let mut target = hyper::http::uri::Parts::default();
                target.path_and_query = Some(pq.clone());
                Uri::from_parts(target).map_err(|_| ProxyError::InvalidUpstreamAddress)?
            }
            _ => {
                let mut target = upath.to_string();
                if let Some(q) = parts.uri.query() {
                    target.push('?');
                    target.push_str(q);
                }
                target
                    .parse::<Uri>()
                    .map_err(|_| ProxyError::InvalidUpstreamAddress)?
            }
        };
        if let Some(d) = seen.details.as_mut() {
            d.upstream_uri = Some(
                uri.path_and_query()
                    .map_or_else(|| upath.to_string(), |pq| pq.as_str().to_string()),
            );
        }
        let upstream_host = if let Some(h) = seen.state.get::<crate::plugins::UpstreamHost>() {
            h.0.clone()
        } else if route.preserve_host {
            host_value.clone()
        } else if balancer.is_some() || service.port == 80 {
            // An upstream's name, or a host on the default port: no port in Host.
            service.host_only.clone()
        } else {
            service.host_port.clone()
        };
        let mut headers = std::mem::take(&mut parts.headers);
        let mut added = crate::forward::upstream_headers(
            &mut headers,
            &crate::forward::Forwarding {
                client,
                peer_ip,
                https,
                host,
                port: &conn.port_value,
                raw_path,
                prefix: (route.strip_path && m.prefix != "/").then_some(&*m.prefix),
                upgrade: upgrade.as_ref(),
                upstream_host: &upstream_host,
                request_id: self
                    .headers()
                    .upstream_request_id
                    .then_some(seen.request_id.as_bytes()),
            },
        );
        added.raw = raw.as_ref();
        let upstream_host = upstream_host.to_str().unwrap_or_default();
        // Made in a block of its own: a borrowed local would keep its room in this future's
        // state across the exchange (which moves it), and the state is moved per request.
        let up = {
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = headers;
            if grpc {
                // HTTP/2 to gRPC upstreams: the authority travels in the URI, not in Host.
                let scheme = if service.protocol == "grpcs" {
                    "https"
                } else {
                    "http"
                };
                match format!("{scheme}://{upstream_host}{}", up.uri()).parse() {
                    Ok(u) => *up.uri_mut() = u,
                    Err(_) => return Err(ProxyError::InvalidUpstreamAddress),
                }
                added.without_host();
                *up.version_mut() = hyper::Version::HTTP_2;
            } else {
                // Whatever the client spoke, other upstreams get HTTP/1.1.
                *up.version_mut() = hyper::Version::HTTP_11;
            }
            if !seen.ran.is_empty() {
                let (mut head, b) = up.into_parts();
                for p in &seen.ran {
                    p.upstream_request(&mut UpstreamRequest {
                        method: &mut head.method,
                        uri: &mut head.uri,
                        headers: &mut head.headers,
                        target: &target,
                        state: &mut seen.state,
                    });
                }
                up = Request::from_parts(head, b);
            }
            up
        };
        let sent = Instant::now();
        let answer = self
            .exchange(
                up,
                target,
                &crate::exchange::Exchange {
                    service,
                    balancer: balancer.map(|b| &**b),
                    key: key.as_deref(),
                    upgrade: upgrade.is_some(),
                    grpc,
                    upstream_host,
                    plugins: &seen.ran,
                    trace: seen.state.get::<crate::spans::Trace>(),
                    added: &added,
                    // Nothing reads the response's map: no plugin runs (a log sink reads
                    // no header).
                    raw: snap.plugins.is_empty(),
                },
            )
            .await?;
        let upstream_took = sent.elapsed();
        seen.upstream = Some(upstream_took);
        let upstream_ms = upstream_took.as_millis();
        let proxy_ms = sent.duration_since(started).as_millis();
        let mut res = answer.res;
        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, res.status()) {
            // Both sides switched: splice the two connections.
            let upstream = hyper::upgrade::on(&mut res);
            tokio::spawn(async move {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "protocol switch failed"),
                }
            });
            let (mut rparts, _) = res.into_parts();
            let proto = rparts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut rparts.headers);
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = proto {
                rparts.headers.insert(header::UPGRADE, p);
            }
            let empty = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed();
            return Ok(Response::from_parts(rparts, empty));
        }
        let (mut rparts, rbody) = res.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let added = self.headers();
        let ours = &mut seen.added;
        ours.upstream_latency = added.upstream_latency.then_some(upstream_ms as u64);
        ours.proxy_latency = added.proxy_latency.then_some(proxy_ms as u64);
        ours.upstream_status = added.upstream_status.then_some(rparts.status.as_u16());
        ours.via = added.via;
        ours.raw = answer.raw;
        let body = match answer.in_flight {
            // Counted in flight until the body has gone to the client (least-connections).
            Some(guard) => Tracked {
                inner: rbody,
                guard,
            }
            .boxed(),
            None => rbody,
        };
        Ok(Response::from_parts(rparts, body))
    }
}

/// The consistent-hashing key of a request, per `hash_on` (`None`: absent, use the fallback).
fn hash_key(
    on: &HashOn,
    parts: &hyper::http::request::Parts,
    client: std::net::IpAddr,
    consumer: Option<&str>,
    captures: &[(String, String)],
) -> Option<String> {
    match on {
        HashOn::None => None,
        HashOn::Consumer => consumer.map(str::to_string),
        HashOn::Ip => Some(client.to_string()),
        HashOn::Header(h) => parts
            .headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        HashOn::Path => Some(parts.uri.path().to_string()),
        HashOn::QueryArg(arg) => parts
            .uri
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == arg.as_str()))
            .map(|(_, v)| v.into_owned()),
        HashOn::UriCapture(name) => captures
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != hyper::Version::HTTP_11 {
        return None;
    }
    // Only WebSocket is tunnelled, as Kong (its `$upstream_upgrade` is `websocket` or
    // nothing): any other token (`h2c`, ...) would open a tunnel past the routes and plugins of
    // the requests sent through it. The request then goes on as an ordinary one, its Upgrade
    // and Connection headers removed as hop-by-hop.
    let upgrade = req.headers().get(header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// Requests whose framing could be read two ways are refused (RFC 9112 section 6.3): a proxy
/// and its upstream must never disagree on where a request ends.
fn check_framing(parts: &hyper::http::request::Parts) -> Result<(), ProxyError> {
    if parts.version >= hyper::Version::HTTP_2 {
        return Ok(());
    }
    // The parser bounds what it buffers while a head is incomplete; a head that arrives whole
    // in one read is measured here, so that the bound is the same however the bytes came.
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    // One pass over the lines: the head's size, and the framing headers it has.
    let (mut fields, mut hosts, mut coded) = (0, 0, false);
    for (name, value) in &parts.headers {
        fields += field_size(name, value);
        match *name {
            header::HOST => hosts += 1,
            header::TRANSFER_ENCODING => coded = true,
            _ => {}
        }
    }
    if target + 2 + fields + 2 > MAX_HEAD {
        return Err(ProxyError::HeadTooLarge);
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest(
            "Bad request: more than one Host header",
        ));
    }
    if !coded {
        return Ok(());
    }
    let mut codings = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    if parts.headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "Bad request: both Content-Length and Transfer-Encoding",
        ));
    }
    let mut chunked = 0;
    for c in codings {
        if !c.eq_ignore_ascii_case("chunked") {
            return Err(ProxyError::UnknownCoding);
        }
        chunked += 1;
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest(
            "Bad request: chunked applied more than once",
        ));
    }
    Ok(())
}

// RFC 3986's reg-name characters (unreserved, sub-delims, `%`), as a table.
const ALLOWED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let extra = b"-._~!$&'()*+,;=%";
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

/// A `Host` value checked as [`valid_host`] checks it and split as [`split_host`] splits
/// it, in one pass for a name or an IPv4 address (an IPv6 literal takes the two).
fn host_and_port(h: &str) -> Option<(&str, Option<u16>)> {
    if h.starts_with('[') {
        return valid_host(h).then(|| split_host(h));
    }
    let b = h.as_bytes();
    let (host, port) = match memchr::memrchr(b':', b) {
        Some(i) => (&h[..i], Some(&b[i + 1..])),
        None => (h, None),
    };
    if host.is_empty() || !host.bytes().all(|c| ALLOWED[usize::from(c)]) {
        return None;
    }
    let Some(port) = port else {
        return Some((host, None));
    };
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    // Five digits past a port's range: the whole value is the host (as `split_host` has it).
    Some(match u16::try_from(n) {
        Ok(n) => (host, Some(n)),
        Err(_) => (h, None),
    })
}

/// A Host value as RFC 9110 allows: a registered name, IPv4 or bracketed IPv6, and an optional port.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (
                    "",
                    tail.strip_prefix(':')
                        .map(Some)
                        .unwrap_or(if tail.is_empty() { None } else { Some("x") }),
                )
            }
            None => return false,
        },
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    let host_ok = host.bytes().all(|b| ALLOWED[usize::from(b)]);
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok && (h.starts_with('[') || !host.is_empty())
}

/// All matched but the protocol: Kong answers 426, or redirects with the configured status.
fn https_redirect(status: u16, host: &str, uri: &Uri) -> Response<ProxyBody> {
    if status == 426 {
        let mut r = json_error(StatusCode::UPGRADE_REQUIRED, "Please use HTTPS protocol");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        r.headers_mut().insert(
            header::UPGRADE,
            HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
        );
        return r;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = json_error(code, "Moved");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::{host_and_port, split_host, valid_host};
    use crate::names::RequestId;

    #[test]
    fn request_ids() {
        assert_eq!(
            RequestId::new(0xdeadbeef, 0x1f).value().to_str().unwrap(),
            format!("{:08x}{:016x}", 0xdeadbeefu32, 0x1fu64)
        );
        assert_eq!(
            RequestId::new(1, u64::MAX).as_str(),
            "00000001ffffffffffffffff"
        );
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8000",
            "10.0.0.1:80",
            "[::1]:8000",
            "[::1]",
            "a_b.example",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "exa mple",
            "a/b",
            "example.com:",
            "example.com:80a",
            "[::1",
            "[zz]:80",
            "",
            ":80",
            "a@b",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    /// One pass gives what the check and the split give.
    #[test]
    fn host_and_port_is_the_check_and_the_split() {
        for h in [
            "example.com",
            "example.com:8000",
            "Example.COM:80",
            "10.0.0.1:80",
            "[::1]:8000",
            "[::1]",
            "a_b.example",
            "example.com:99999",
            "example.com:00080",
            "exa mple",
            "a/b",
            "example.com:",
            "example.com:80a",
            "example.com:+80",
            "example.com:123456",
            "a:b:80",
            "[::1",
            "[zz]:80",
            "",
            ":80",
            "a@b",
            "é.example",
        ] {
            assert_eq!(
                host_and_port(h),
                valid_host(h).then(|| split_host(h)),
                "{h}"
            );
        }
    }
}
