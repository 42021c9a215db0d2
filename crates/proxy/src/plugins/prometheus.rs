//! prometheus, as Kong 3.9's: per-request metrics under Kong's names and labels, so Kong's
//! Grafana dashboards read Gantry unchanged, served on the status listener's `/metrics` beside
//! Gantry's own `gantry_*` metrics.
//!
//! The log phase of each request the plugin applies to (a route matched) counts, by the flags of
//! the instance that applies: `kong_http_requests_total` (`status_code_metrics`),
//! `kong_kong_latency_ms`, `kong_upstream_latency_ms` and `kong_request_latency_ms`
//! (`latency_metrics`, Kong's buckets), `kong_bandwidth_bytes` (`bandwidth_metrics`), the
//! consumer's username in the `consumer` label (`per_consumer`), and turns on
//! `kong_upstream_target_health` (`upstream_health_metrics`). The `service` label is the service's
//! name or else its host, `route` the route's name or else its id, `workspace` always `default`.
//! Node metrics (`kong_node_info`, `kong_nginx_requests_total`) are there whenever the plugin is
//! loaded; the per-request ones only while a prometheus instance is configured, as Kong.
//! `kong_upstream_target_health` reports each target as `healthy` or `unhealthy` by Gantry's
//! health checks, the target as configured standing for its address.
//!
//! Counting takes a read lock on the series map and a few atomic additions; a lock for writing
//! is taken only the first time a label set is seen. Series are kept across configurations.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::{BoxFuture, Descriptor, Instance, Plugin, Shared};
use crate::server::RequestLog;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

const FLAGS: [&str; 6] = [
    "per_consumer",
    "status_code_metrics",
    "ai_metrics",
    "latency_metrics",
    "bandwidth_metrics",
    "upstream_health_metrics",
];

fn schema() -> PluginSchema {
    PluginSchema::new(
        "prometheus",
        13,
        FLAGS
            .iter()
            .map(|f| Field::new(f, boolean()).req().def(json!(false)))
            .collect(),
    )
    .any_protocol()
    .no_consumer_group()
}

/// Kong's `KONG_LATENCY_BUCKETS`.
const KONG_BUCKETS: &[u64] = &[
    1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 3000, 6000,
];
/// Kong's `UPSTREAM_LATENCY_BUCKETS` (upstream and request latency).
const UPSTREAM_BUCKETS: &[u64] = &[
    25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000,
];

/// A histogram: a count per bucket (the last is `+Inf`), the sum and the count.
struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Kong's lines: a bucket appears once a value fell in it or below, `+Inf` last; then
    /// `_count` and `_sum`, each in its own group (`lines` gets them by kind).
    fn lines(&self, name: &str, labels: &str, out: &mut [String; 3]) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            if cumulative == 0 {
                continue;
            }
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), u64::to_string);
            let _ = writeln!(out[0], "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out[1], "{name}_count{{{labels}}} {cumulative}");
        let sum = self.sum.load(Ordering::Relaxed);
        let _ = writeln!(out[2], "{name}_sum{{{labels}}} {sum}");
    }
}

/// What one service and route saw.
struct RouteSeries {
    kong: Histogram,
    upstream: Histogram,
    request: Histogram,
    /// By consumer label: the status counts and the bandwidth.
    consumers: RwLock<HashMap<Box<str>, Arc<ConsumerSeries>>>,
}

#[derive(Default)]
struct ConsumerSeries {
    /// (status, answered by the service) to count.
    codes: Mutex<Vec<(u16, bool, u64)>>,
    ingress: AtomicU64,
    egress: AtomicU64,
}

/// A service's series, by route label.
type ByRoute = HashMap<Box<str>, Arc<RouteSeries>>;

/// Every series of the node, kept across configurations (in the proxy's `Shared`).
#[derive(Default)]
pub struct Metrics {
    /// By service label, then route label.
    routes: RwLock<HashMap<Box<str>, ByRoute>>,
    /// Whether a prometheus instance asked for `kong_upstream_target_health`.
    upstream_health: AtomicBool,
}

fn get_or_make<V>(
    map: &RwLock<HashMap<Box<str>, V>>,
    key: &str,
    make: impl FnOnce() -> V,
) -> Option<V>
where
    V: Clone,
{
    if let Some(v) = map.read().ok()?.get(key) {
        return Some(v.clone());
    }
    let mut w = map.write().ok()?;
    Some(w.entry(key.into()).or_insert_with(make).clone())
}

impl Metrics {
    fn route(&self, service: &str, route: &str) -> Option<Arc<RouteSeries>> {
        if let Some(r) = self
            .routes
            .read()
            .ok()?
            .get(service)
            .and_then(|m| m.get(route))
        {
            return Some(r.clone());
        }
        let mut w = self.routes.write().ok()?;
        Some(
            w.entry(service.into())
                .or_default()
                .entry(route.into())
                .or_insert_with(|| {
                    Arc::new(RouteSeries {
                        kong: Histogram::new(KONG_BUCKETS),
                        upstream: Histogram::new(UPSTREAM_BUCKETS),
                        request: Histogram::new(UPSTREAM_BUCKETS),
                        consumers: RwLock::default(),
                    })
                })
                .clone(),
        )
    }

    /// The per-request metrics in Kong's exposition: metrics in the order of their names
    /// without `kong_`, series sorted, HELP and TYPE once before each metric's first line.
    pub fn write(
        &self,
        out: &mut String,
        enabled: bool,
        node_id: &str,
        requests: u64,
        connections: &[(&str, u64)],
    ) {
        let Ok(routes) = self.routes.read() else {
            return;
        };
        let mut all: Vec<(&str, &str, &Arc<RouteSeries>)> = routes
            .iter()
            .filter(|_| enabled)
            .flat_map(|(s, m)| m.iter().map(move |(r, v)| (&**s, &**r, v)))
            .collect();
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut bandwidth = Vec::new();
        let mut codes = Vec::new();
        let mut hist: [[String; 3]; 3] = Default::default();
        for (service, route, series) in &all {
            let (s, r) = (esc(service), esc(route));
            let labels = format!("service=\"{s}\",route=\"{r}\",workspace=\"default\"");
            series
                .kong
                .lines("kong_kong_latency_ms", &labels, &mut hist[0]);
            series
                .request
                .lines("kong_request_latency_ms", &labels, &mut hist[1]);
            series
                .upstream
                .lines("kong_upstream_latency_ms", &labels, &mut hist[2]);
            let Ok(consumers) = series.consumers.read() else {
                continue;
            };
            let mut cs: Vec<_> = consumers.iter().collect();
            cs.sort_by(|a, b| a.0.cmp(b.0));
            for (consumer, c) in cs {
                let c_label = esc(consumer);
                for (dir, n) in [("egress", &c.egress), ("ingress", &c.ingress)] {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        bandwidth.push(format!("kong_bandwidth_bytes{{service=\"{s}\",route=\"{r}\",direction=\"{dir}\",workspace=\"default\",consumer=\"{c_label}\"}} {n}\n"));
                    }
                }
                if let Ok(list) = c.codes.lock() {
                    let mut list = list.clone();
                    list.sort_by_key(|(code, svc, _)| (code.to_string(), *svc));
                    for (code, by_service, n) in list {
                        let source = if by_service { "service" } else { "kong" };
                        codes.push(format!("kong_http_requests_total{{service=\"{s}\",route=\"{r}\",code=\"{code}\",source=\"{source}\",workspace=\"default\",consumer=\"{c_label}\"}} {n}\n"));
                    }
                }
            }
        }
        let head = |out: &mut String, name: &str, help: &str, kind: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        };
        if !bandwidth.is_empty() {
            head(
                out,
                "kong_bandwidth_bytes",
                "Total bandwidth (ingress/egress) throughput in bytes",
                "counter",
            );
            bandwidth.iter().for_each(|l| out.push_str(l));
        }
        if !codes.is_empty() {
            head(
                out,
                "kong_http_requests_total",
                "HTTP status codes per consumer/service/route in Kong",
                "counter",
            );
            codes.iter().for_each(|l| out.push_str(l));
        }
        let histogram = |out: &mut String, name: &str, help: &str, h: &[String; 3]| {
            if !h[0].is_empty() {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
                h.iter().for_each(|part| out.push_str(part));
            }
        };
        histogram(
            out,
            "kong_kong_latency_ms",
            "Latency added by Kong and enabled plugins for each service/route in Kong",
            &hist[0],
        );
        head(
            out,
            "kong_nginx_connections_total",
            "Number of connections by subsystem",
            "gauge",
        );
        for (state, n) in connections {
            let _ = writeln!(
                out,
                "kong_nginx_connections_total{{node_id=\"{node_id}\",subsystem=\"http\",state=\"{state}\"}} {n}"
            );
        }
        head(
            out,
            "kong_nginx_requests_total",
            "Number of requests total",
            "gauge",
        );
        let _ = writeln!(
            out,
            "kong_nginx_requests_total{{node_id=\"{node_id}\",subsystem=\"http\"}} {requests}"
        );
        head(
            out,
            "kong_node_info",
            "Kong Node metadata information",
            "gauge",
        );
        let _ = writeln!(
            out,
            "kong_node_info{{node_id=\"{node_id}\",version=\"{}\"}} 1",
            gantry_model::KONG_VERSION
        );
        histogram(
            out,
            "kong_request_latency_ms",
            "Total latency incurred during requests for each service/route in Kong",
            &hist[1],
        );
        histogram(
            out,
            "kong_upstream_latency_ms",
            "Latency added by upstream response for each service/route in Kong",
            &hist[2],
        );
    }

    /// Whether `kong_upstream_target_health` is asked for.
    pub fn upstream_health(&self) -> bool {
        self.upstream_health.load(Ordering::Relaxed)
    }
}

/// `kong_upstream_target_health`'s lines for one target address: four, one per state, 1 for
/// the state it is in.
pub fn target_health(out: &mut String, upstream: &str, target: &str, address: &str, state: &str) {
    for s in ["dns_error", "healthchecks_off", "healthy", "unhealthy"] {
        let _ = writeln!(
            out,
            "kong_upstream_target_health{{upstream=\"{upstream}\",target=\"{target}\",address=\"{address}\",state=\"{s}\",subsystem=\"http\"}} {}",
            u8::from(s == state)
        );
    }
}

/// The HELP and TYPE lines of `kong_upstream_target_health`.
pub const TARGET_HEALTH_HEAD: &str = "# HELP kong_upstream_target_health Health status of targets of upstream. States = healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.\n# TYPE kong_upstream_target_health gauge\n";

struct Prometheus {
    flags: [bool; 6],
    metrics: Arc<Metrics>,
}

fn build(_: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let mut flags = [false; 6];
    for (i, f) in FLAGS.iter().enumerate() {
        flags[i] = c.get(*f).and_then(Value::as_bool).unwrap_or(false);
    }
    if flags[2] {
        return Err(CompileError::field(
            "ai_metrics",
            "Gantry runs no AI plugins, so there are no AI metrics to collect: leave it false",
        ));
    }
    Ok(Arc::new(Prometheus {
        flags,
        metrics: shared.get::<Metrics>(),
    }))
}

/// Milliseconds, rounded as Kong's latencies are.
fn ms(d: std::time::Duration) -> u64 {
    (d.as_secs_f64() * 1000.0).round() as u64
}

impl Plugin for Prometheus {
    fn logs(&self) -> bool {
        true
    }

    fn log(&self, r: &RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let [per_consumer, status, _, latency, bandwidth, health] = self.flags;
        if health {
            self.metrics.upstream_health.store(true, Ordering::Relaxed);
        }
        // As Kong: nothing is recorded of a request no route matched.
        let route = r.route_entity?;
        let route_label = route.name.as_deref().unwrap_or(&route.id);
        let service_label = r
            .service_entity
            .map(|s| s.name.as_deref().unwrap_or(&s.host))
            .unwrap_or("");
        let series = self.metrics.route(service_label, route_label)?;
        if latency {
            let total = ms(r.total);
            let upstream = r.upstream.map(ms);
            series.request.observe(total);
            if let Some(u) = upstream {
                series.upstream.observe(u);
            }
            series
                .kong
                .observe(total.saturating_sub(upstream.unwrap_or(0)));
        }
        if status || bandwidth {
            let consumer = if per_consumer {
                r.consumer_entity
                    .and_then(|c| c.username.as_deref())
                    .unwrap_or("")
            } else {
                ""
            };
            let c = get_or_make(&series.consumers, consumer, Arc::default)?;
            if status {
                let by_service = r.upstream.is_some();
                if let Ok(mut codes) = c.codes.lock() {
                    match codes
                        .iter_mut()
                        .find(|(code, svc, _)| *code == r.status && *svc == by_service)
                    {
                        Some(e) => e.2 += 1,
                        None => codes.push((r.status, by_service, 1)),
                    }
                }
            }
            if bandwidth {
                c.ingress.fetch_add(r.request_size, Ordering::Relaxed);
                c.egress
                    .fetch_add(r.response_head_size + r.response_size, Ordering::Relaxed);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_as_kong_prints_them() {
        let h = Histogram::new(KONG_BUCKETS);
        h.observe(3);
        h.observe(6000);
        h.observe(7000);
        let mut out: [String; 3] = Default::default();
        h.lines("kong_kong_latency_ms", "a=\"b\"", &mut out);
        let buckets: Vec<&str> = out[0].lines().collect();
        // Buckets below the smallest value are not there yet.
        assert_eq!(
            buckets[0],
            "kong_kong_latency_ms_bucket{a=\"b\",le=\"5\"} 1"
        );
        assert_eq!(
            buckets[buckets.len() - 2],
            "kong_kong_latency_ms_bucket{a=\"b\",le=\"6000\"} 2"
        );
        assert_eq!(
            buckets[buckets.len() - 1],
            "kong_kong_latency_ms_bucket{a=\"b\",le=\"+Inf\"} 3"
        );
        assert_eq!(out[1], "kong_kong_latency_ms_count{a=\"b\"} 3\n");
        assert_eq!(out[2], "kong_kong_latency_ms_sum{a=\"b\"} 13003\n");
    }
}
