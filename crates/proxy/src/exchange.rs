//! The upstream exchange: connect (pooled; a connection of its own for an upgrade), trying
//! other targets, or the same host again, while nothing has been sent, up to the service's
//! `retries` (a plugin may stop the retries: `Plugin::upstream_failed`); then send, within the
//! read timeout. Every outcome of the upstream's feeds passive health checks; a failure of the
//! client's own body does not.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, Response};

use crate::balancer::{Balancer, InFlight};
use crate::error::ProxyError;
use crate::health::Outcome;
use crate::plugins::{Retry, UpstreamFailure};
use crate::pool::{Conn, Dest, UpBody, UpstreamError};
use crate::server::{split_host, Proxy};
use crate::snapshot::Service;

/// Where a request goes.
pub(crate) struct Exchange<'a> {
    pub service: &'a Service,
    pub balancer: Option<&'a Balancer>,
    /// The consistent-hashing key, when the upstream hashes.
    pub key: Option<&'a str>,
    /// The request asks for a protocol switch (WebSocket): a connection of its own.
    pub upgrade: bool,
    pub grpc: bool,
    /// The `Host` (and TLS server name) the upstream is sent.
    pub upstream_host: &'a str,
    /// The plugins that run on the request: each may stop the retries after a failure.
    pub plugins: &'a [Arc<dyn crate::plugins::Plugin>],
    /// The request's spans, when it is traced: each try is recorded.
    pub trace: Option<&'a crate::spans::Trace>,
    /// The headers the proxy sets on the request.
    pub added: &'a crate::forward::Added<'a>,
    /// Nothing reads the response's header map: its lines may stay as they came.
    pub raw: bool,
}

/// The upstream's answer: its response, its header lines when they stayed as they came, and
/// for an upstream's target, its in-flight guard (least-connections counts it until the body
/// has gone).
pub(crate) struct Answer {
    pub res: Response<crate::server::ProxyBody>,
    pub raw: Option<crate::raw::RawHead>,
    pub in_flight: Option<InFlight>,
}

impl Proxy {
    /// Send `up` to the first target that takes a connection.
    pub(crate) async fn exchange(
        &self,
        up: Request<UpBody>,
        target: Cow<'_, str>,
        x: &Exchange<'_>,
    ) -> Result<Answer, ProxyError> {
        let (service, balancer, grpc, upstream_host) =
            (x.service, x.balancer, x.grpc, x.upstream_host);
        let mut target = target;
        let connect_timeout = Duration::from_millis(service.connect_timeout_ms);
        let report = |target: &str, outcome: Outcome| {
            if let Some(b) = balancer {
                if let Some(up) = self
                    .health
                    .report(&b.name, target, outcome, &b.checks.passive)
                {
                    tracing::warn!(upstream = %b.name, target, healthy = up, "target health changed (passive check)");
                }
            }
        };
        // https services: TLS with the Host we send as the server name. A plain service's
        // destination was built with the snapshot.
        let dest_of = |target: &str| -> Arc<Dest> {
            match &service.direct {
                Some(d) if balancer.is_none() => d.clone(),
                _ => Arc::new(Dest::new(
                    target.to_string(),
                    matches!(service.protocol.as_str(), "https" | "grpcs")
                        .then(|| (split_host(upstream_host).0.to_string(), service.tls_verify)),
                    grpc,
                    Duration::from_millis(service.write_timeout_ms),
                )),
            }
        };
        let mut dest = dest_of(&target);
        // Connect, trying other targets (or the same host again) while nothing has been sent:
        // up to the service's `retries` more times.
        let mut tried: Vec<String> = Vec::new();
        let failed = || {
            if let Some(t) = x.trace {
                t.try_failed();
            }
        };
        let sender = loop {
            if let Some(t) = x.trace {
                t.try_started(&target);
            }
            let got = if x.upgrade {
                self.pool
                    .connect_dedicated(&dest, connect_timeout)
                    .await
                    .map(Conn::Dedicated)
            } else {
                self.pool.checkout(&dest, connect_timeout).await
            };
            match got {
                Ok(s) => break s,
                Err(e) => {
                    failed();
                    let timed_out = matches!(e, UpstreamError::ConnectTimeout { .. });
                    report(
                        &target,
                        if timed_out {
                            Outcome::Timeout
                        } else {
                            Outcome::TcpFailure
                        },
                    );
                    tracing::warn!(error = %e, upstream = %target, "upstream connection failed");
                    tried.push(target.to_string());
                    let failure = UpstreamFailure {
                        target: &target,
                        attempt: tried.len(),
                        timed_out,
                        error: &e,
                    };
                    let stopped = x
                        .plugins
                        .iter()
                        .any(|p| p.upstream_failed(&failure) == Retry::Stop);
                    let next = match balancer {
                        Some(b) => b
                            .pick(&self.health, &self.load, &tried, x.key)
                            .map(str::to_string),
                        None => Some(target.to_string()),
                    };
                    match next {
                        Some(t) if !stopped && tried.len() <= service.retries as usize => {
                            dest = dest_of(&t);
                            target = std::borrow::Cow::Owned(t);
                        }
                        _ if matches!(e, UpstreamError::Resolve(_)) => {
                            return Err(ProxyError::NameResolution)
                        }
                        _ if timed_out => return Err(ProxyError::UpstreamTimeout),
                        _ => return Err(ProxyError::BadUpstream),
                    }
                }
            }
        };
        let in_flight = balancer.map(|b| self.load.start(&b.name, &target));
        let read_timeout = Duration::from_millis(service.read_timeout_ms);
        // An HTTP/1.1 connection times its own wait (with one timer for its life); hyper's
        // clients are timed here.
        let own_timer = matches!(sender, Conn::H1(..));
        let sending = self.pool.send_on(
            &dest,
            sender,
            up,
            x.added,
            x.raw,
            connect_timeout,
            read_timeout,
        );
        let sent = if own_timer {
            sending.await
        } else {
            tokio::time::timeout(read_timeout, sending)
                .await
                .unwrap_or(Err(UpstreamError::H1(crate::h1::H1Error::ReadTimeout(
                    read_timeout,
                ))))
        };
        let res = match sent {
            Err(e) if crate::pool::is_read_timeout(&e) => {
                failed();
                report(&target, Outcome::Timeout);
                return Err(ProxyError::UpstreamTimeout);
            }
            Err(e) if crate::pool::is_body_too_large(&e) => {
                // The client's body went past its limit: cut, answered 413, the target's
                // health untouched.
                return Err(ProxyError::BodyTooLarge);
            }
            Err(e) if crate::pool::is_client_body_error(&e) => {
                // The client's body failed (aborted, malformed chunks): its fault, answered
                // 400, and the target's health is untouched.
                tracing::info!(error = %e, upstream = %target, "the client's request body failed");
                return Err(ProxyError::BodyUnreadable);
            }
            Err(e) if crate::pool::is_write_timeout(&e) => {
                failed();
                report(&target, Outcome::Timeout);
                tracing::warn!(error = %e, upstream = %target, "upstream write timed out (write_timeout)");
                return Err(ProxyError::UpstreamTimeout);
            }
            Err(e) => {
                failed();
                report(&target, Outcome::TcpFailure);
                tracing::warn!(error = %e, upstream = %target, "upstream request failed");
                return Err(ProxyError::BadUpstream);
            }
            Ok(r) => {
                report(&target, Outcome::Status(r.0.status().as_u16()));
                if let Some(f) = &in_flight {
                    f.answered();
                }
                r
            }
        };
        Ok(Answer {
            res: res.0,
            raw: res.1,
            in_flight,
        })
    }
}
