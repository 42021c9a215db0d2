//! Kong's tracing instrumentations (`tracing_instrumentations`, `tracing_sampling_rate`): what
//! the request path records of a request's work, for the opentelemetry plugin to export.
//!
//! Recording costs nothing until the setting names an instrumentation: then each request
//! carries a [`Trace`] in its per-request state, and the proxy notes in it when routing, each
//! plugin's phases and each upstream try began and ended ([`Instant`]s, turned into wall-clock
//! times only when spans are made, in the log phase). The spans take Kong's names: `kong`
//! (the request, kind server), `kong.router`, `kong.rewrite.plugin.NAME`,
//! `kong.access.plugin.NAME`, `kong.header_filter.plugin.NAME` and `kong.balancer` (one per
//! upstream try, kind client).
//!
//! Of Kong's instrumentations, `dns_query` and `http_client` are refused: Gantry's resolver
//! and plugins' HTTP calls are not instrumented, and a setting that is accepted must do what
//! it says. `db_query` is accepted and records nothing, truthfully: Gantry's request path never
//! queries a database.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The request span (`kong`); without it, the opentelemetry plugin only propagates headers.
pub const REQUEST: u8 = 1;
pub const ROUTER: u8 = 1 << 1;
pub const BALANCER: u8 = 1 << 2;
pub const PLUGIN_REWRITE: u8 = 1 << 3;
pub const PLUGIN_ACCESS: u8 = 1 << 4;
pub const PLUGIN_HEADER_FILTER: u8 = 1 << 5;
pub const DB_QUERY: u8 = 1 << 6;
const ALL: u8 = REQUEST | ROUTER | BALANCER | PLUGIN_REWRITE | PLUGIN_ACCESS | PLUGIN_HEADER_FILTER;

/// Why a tracing setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TracingError {
    #[error("'{0}' is not instrumented by Gantry (its resolver and plugins' HTTP calls record no spans)")]
    NotInstrumented(String),
    #[error("invalid value '{0}' (expected off, all, or some of request, router, balancer, db_query, plugin_rewrite, plugin_access, plugin_header_filter)")]
    Unknown(String),
    #[error("'off' and 'all' cannot be combined with other values")]
    Combined,
    #[error("expected a number between 0 and 1")]
    Rate,
}

/// The node's tracing settings, shared by the proxy and the plugins that export spans.
#[derive(Debug)]
pub struct Tracing {
    bits: AtomicU8,
    /// `tracing_sampling_rate`, as `f64` bits.
    rate: AtomicU64,
    /// The node's id: the spans' `service.instance.id`.
    node_id: OnceLock<String>,
}

impl Default for Tracing {
    fn default() -> Tracing {
        Tracing {
            bits: AtomicU8::new(0),
            rate: AtomicU64::new(0.01f64.to_bits()),
            node_id: OnceLock::new(),
        }
    }
}

impl Tracing {
    /// Kong's `tracing_instrumentations`: `off`, `all`, or a comma-separated list.
    pub fn parse_instrumentations(v: &str) -> Result<u8, TracingError> {
        let items: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.len() > 1 && items.iter().any(|i| matches!(*i, "off" | "all")) {
            return Err(TracingError::Combined);
        }
        let mut bits = 0;
        for i in items {
            bits |= match i {
                "off" => 0,
                "all" => ALL,
                "request" => REQUEST,
                "router" => ROUTER,
                "balancer" => BALANCER,
                "plugin_rewrite" => PLUGIN_REWRITE,
                "plugin_access" => PLUGIN_ACCESS,
                "plugin_header_filter" => PLUGIN_HEADER_FILTER,
                "db_query" => DB_QUERY,
                "dns_query" | "http_client" => {
                    return Err(TracingError::NotInstrumented(i.to_string()))
                }
                other => return Err(TracingError::Unknown(other.to_string())),
            };
        }
        Ok(bits)
    }

    /// Kong's `tracing_sampling_rate`, between 0 and 1.
    pub fn parse_rate(v: &str) -> Result<f64, TracingError> {
        match v.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(TracingError::Rate),
        }
    }

    pub fn set(&self, bits: u8, rate: f64) {
        self.bits.store(bits, Ordering::Relaxed);
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn set_node_id(&self, id: &str) {
        let _ = self.node_id.set(id.to_string());
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node_id.get().map(String::as_str)
    }

    /// The instrumentations in effect.
    pub fn bits(&self) -> u8 {
        self.bits.load(Ordering::Relaxed)
    }

    /// `tracing_sampling_rate`.
    pub fn sampling_rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}

/// The trace id as each format that carried it upstream writes it, for log entries
/// (`"trace_id": {"w3c": "...", "datadog": "..."}`).
#[derive(Debug, Clone, Default)]
pub struct TraceIds(pub Vec<(&'static str, String)>);

impl serde::Serialize for TraceIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A plugin phase's span: `kong.PHASE.plugin.NAME`.
#[derive(Debug, Clone)]
pub struct PhaseSpan {
    pub phase: &'static str,
    pub plugin: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// One upstream try.
#[derive(Debug, Clone)]
pub struct Try {
    /// `host:port`.
    pub target: String,
    pub start: Instant,
    /// When a failed try gave up (none for the try that was answered: it lasts until the
    /// response body has gone).
    pub failed_at: Option<Instant>,
}

/// What one request recorded, kept in its per-request state while tracing is on.
#[derive(Debug, Default)]
pub struct Trace {
    pub bits: u8,
    pub router: Option<(Instant, Instant)>,
    pub phases: Vec<PhaseSpan>,
    /// The upstream tries, in order (written by the upstream exchange).
    pub tries: Mutex<Vec<Try>>,
    /// The names of the plugins that run the response phases, in their order.
    pub ran: Vec<&'static str>,
    /// The route's first path, for the request span's `http.route`.
    pub route_path: Option<String>,
}

impl Clone for Trace {
    fn clone(&self) -> Trace {
        Trace {
            bits: self.bits,
            router: self.router,
            phases: self.phases.clone(),
            tries: Mutex::new(self.tries.lock().map(|t| t.clone()).unwrap_or_default()),
            ran: self.ran.clone(),
            route_path: self.route_path.clone(),
        }
    }
}

impl Trace {
    pub fn new(bits: u8) -> Trace {
        Trace {
            bits,
            router: None,
            phases: Vec::new(),
            tries: Mutex::new(Vec::new()),
            ran: Vec::new(),
            route_path: None,
        }
    }

    /// Whether `instrumentation` is on.
    pub fn has(&self, instrumentation: u8) -> bool {
        self.bits & instrumentation != 0
    }

    /// Record a plugin phase that ran from `start` until now, when that phase is instrumented.
    pub fn phase(&mut self, bit: u8, phase: &'static str, plugin: &'static str, start: Instant) {
        if self.has(bit) {
            self.phases.push(PhaseSpan {
                phase,
                plugin,
                start,
                end: Instant::now(),
            });
        }
    }

    /// Record the start of an upstream try.
    pub fn try_started(&self, target: &str) {
        if self.has(BALANCER) {
            if let Ok(mut t) = self.tries.lock() {
                t.push(Try {
                    target: target.to_string(),
                    start: Instant::now(),
                    failed_at: None,
                });
            }
        }
    }

    /// The last try failed.
    pub fn try_failed(&self) {
        if let Ok(mut t) = self.tries.lock() {
            if let Some(last) = t.last_mut() {
                last.failed_at = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instrumentations_as_kong_names_them() {
        let p = Tracing::parse_instrumentations;
        assert_eq!(p("off"), Ok(0));
        assert_eq!(p("all"), Ok(ALL));
        assert_eq!(p("request, balancer"), Ok(REQUEST | BALANCER));
        assert_eq!(p("db_query"), Ok(DB_QUERY));
        assert_eq!(p("all,router"), Err(TracingError::Combined));
        assert_eq!(
            p("dns_query"),
            Err(TracingError::NotInstrumented("dns_query".into()))
        );
        assert_eq!(p("routr"), Err(TracingError::Unknown("routr".into())));
        assert_eq!(Tracing::parse_rate("0.25"), Ok(0.25));
        assert_eq!(Tracing::parse_rate("1.5"), Err(TracingError::Rate));
    }
}
