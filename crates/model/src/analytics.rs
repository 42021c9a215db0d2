//! Request analytics shared by data planes (which aggregate), control planes (which store and
//! merge) and the Admin API (which answers queries): per-minute rows and mergeable latency
//! histograms.

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in milliseconds; a last bucket holds the rest.
pub const BOUNDS_MS: [f64; 27] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0,
    200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, 30000.0,
];

/// A latency histogram: counts per bucket of [`BOUNDS_MS`] (and one past the last bound).
/// Histograms merge by adding counts, so minutes, nodes and routes combine exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram(pub Vec<u64>);

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        let i = BOUNDS_MS.partition_point(|b| *b < ms);
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0..=1), interpolated within its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).max(1.0);
        let mut seen = 0.0;
        for (i, c) in self.0.iter().enumerate() {
            let c = *c as f64;
            if c > 0.0 && seen + c >= rank {
                let lo = if i == 0 { 0.0 } else { BOUNDS_MS[i - 1] };
                let hi = BOUNDS_MS.get(i).copied().unwrap_or(lo * 2.0);
                return Some(lo + (hi - lo) * ((rank - seen) / c));
            }
            seen += c;
        }
        BOUNDS_MS.last().copied()
    }
}

/// One minute of one node's requests for one (service, route, consumer, status). Empty
/// strings stand for "none" (no route matched, no consumer identified).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Unix seconds at the start of the minute.
    pub minute: i64,
    pub service: String,
    pub route: String,
    pub consumer: String,
    pub status: u16,
    pub count: u64,
    /// Client to last response header byte.
    pub total: Histogram,
    /// Request sent upstream to response head received.
    pub upstream: Histogram,
    /// The gateway's own share: total minus upstream.
    pub gateway: Histogram,
}

impl Row {
    /// Add another row of the same key.
    pub fn merge(&mut self, o: &Row) {
        self.count += o.count;
        self.total.merge(&o.total);
        self.upstream.merge(&o.upstream);
        self.gateway.merge(&o.gateway);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_record_merge_and_estimate_quantiles() {
        let mut a = Histogram::default();
        for ms in [0.3, 0.9, 1.5, 4.0, 40.0] {
            a.record(ms);
        }
        assert_eq!(a.count(), 5);
        assert_eq!((a.0[2], a.0[3]), (1, 1));
        let mut b = Histogram::default();
        b.record(100_000.0);
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert_eq!(a.0.len(), BOUNDS_MS.len() + 1);
        let p50 = a.quantile(0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        assert!(a.quantile(1.0).unwrap() >= 30_000.0);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
