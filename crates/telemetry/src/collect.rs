//! The data plane's aggregation of requests, bounded.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use gantry_model::analytics::Row;
use gantry_proxy::{LogSink, RequestLog};

#[derive(Default)]
struct Inner {
    /// Rows by a hash of their key; a hash collision keeps several rows in one slot.
    rows: HashMap<u64, Vec<Row>>,
    /// Requests in `rows`.
    collected: u64,
    /// Requests in batches taken but not yet acknowledged.
    in_flight: u64,
}

/// Aggregates requests in memory; see the crate documentation.
pub struct Collector {
    inner: Mutex<Inner>,
    limit: u64,
    dropped: AtomicU64,
}

fn minute_now() -> i64 {
    gantry_model::unix_now() / 60 * 60
}

impl Collector {
    /// A collector holding at most `limit` requests not yet acknowledged.
    pub fn new(limit: u64) -> Collector {
        Collector {
            inner: Mutex::new(Inner::default()),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// Requests dropped because the buffer was full.
    /// Its Prometheus metrics: requests dropped from analytics, and those held.
    pub fn write_metrics(&self, m: &mut String) {
        gantry_model::prometheus(
            m,
            "gantry_telemetry_dropped_total",
            "counter",
            "Requests left out of analytics because the buffer was full.",
            &[("", self.dropped() as f64)],
        );
        gantry_model::prometheus(
            m,
            "gantry_telemetry_buffered_requests",
            "gauge",
            "Requests held for analytics, not yet acknowledged.",
            &[("", self.buffered() as f64)],
        );
    }

    /// Its `analytics` object on the status API.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({"buffered_requests": self.buffered(), "dropped_requests": self.dropped()})
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Requests held: collected plus sent and not yet acknowledged.
    pub fn buffered(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.collected + i.in_flight)
            .unwrap_or(0)
    }

    /// Take the rows collected so far (and how many requests they hold) for a batch; they stay
    /// counted against the limit until [`Collector::acknowledged`].
    pub fn take(&self) -> (Vec<Row>, u64) {
        let Ok(mut i) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        let n = std::mem::take(&mut i.collected);
        i.in_flight += n;
        let rows = std::mem::take(&mut i.rows)
            .into_values()
            .flatten()
            .collect();
        (rows, n)
    }

    /// A batch of `n` requests is stored by the control plane.
    pub fn acknowledged(&self, n: u64) {
        if let Ok(mut i) = self.inner.lock() {
            i.in_flight = i.in_flight.saturating_sub(n);
        }
    }

    /// Record one request.
    pub fn record(&self, r: &RequestLog<'_>) {
        let minute = minute_now();
        let (service, route, consumer) = (
            r.service.unwrap_or(""),
            r.route.unwrap_or(""),
            r.consumer.unwrap_or(""),
        );
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (minute, service, route, consumer, r.status).hash(&mut h);
        let key = h.finish();
        let total = r.total.as_secs_f64() * 1000.0;
        let upstream = r.upstream.map(|u| u.as_secs_f64() * 1000.0);
        let Ok(mut i) = self.inner.lock() else {
            return;
        };
        if i.collected + i.in_flight >= self.limit {
            drop(i);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        i.collected += 1;
        let slot = i.rows.entry(key).or_default();
        let row = match slot.iter_mut().position(|x| {
            x.minute == minute
                && x.status == r.status
                && x.service == service
                && x.route == route
                && x.consumer == consumer
        }) {
            Some(p) => &mut slot[p],
            None => {
                slot.push(Row {
                    minute,
                    service: service.to_string(),
                    route: route.to_string(),
                    consumer: consumer.to_string(),
                    status: r.status,
                    ..Row::default()
                });
                let last = slot.len() - 1;
                &mut slot[last]
            }
        };
        row.count += 1;
        row.total.record(total);
        if let Some(u) = upstream {
            row.upstream.record(u);
            row.gateway.record((total - u).max(0.0));
        } else {
            row.gateway.record(total);
        }
    }
}

impl LogSink for Collector {
    fn log(&self, r: &RequestLog<'_>) {
        self.record(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn aggregates_and_bounds_what_it_holds() {
        let (method, uri) = (Default::default(), Default::default());
        let state = Default::default();
        let req = |route, status| RequestLog {
            request_id: "r",
            service: Some("s"),
            route: Some(route),
            status,
            total: Duration::from_millis(12),
            upstream: Some(Duration::from_millis(10)),
            ..RequestLog::new(&method, &uri, &state)
        };
        let c = Collector::new(5);
        for _ in 0..3 {
            c.record(&req("a", 200));
        }
        c.record(&req("b", 404));
        let (rows, n) = c.take();
        assert_eq!((rows.len(), n), (2, 4));
        let a = rows.iter().find(|r| r.route == "a").unwrap();
        assert_eq!((a.count, a.upstream.count(), a.gateway.count()), (3, 3, 3));
        // Four requests wait for an ack: one more fits, the rest are dropped and counted.
        for _ in 0..3 {
            c.record(&req("a", 200));
        }
        assert_eq!((c.buffered(), c.dropped()), (5, 2));
        c.acknowledged(4);
        assert_eq!(c.buffered(), 1);
        c.record(&req("a", 200));
        assert_eq!((c.buffered(), c.dropped()), (2, 2));
    }
}
