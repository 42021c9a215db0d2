//! Upstream load balancing with Kong's algorithms: round-robin (weighted, smooth),
//! least-connections, latency, and consistent-hashing (weighted rendezvous hashing, so that a
//! target change moves only the keys of that target).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use gantry_model::delta::Change;
use gantry_model::typed::{Target, TypedError};
use gantry_model::{Config, Doc, Entity};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::health::{Checks, Health};
use crate::server::ProxyBody;
use crate::{FastMap, PMap};

/// Where a consistent-hashing key comes from (`hash_on` / `hash_fallback`).
#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    None,
    Consumer,
    Ip,
    Header(String),
    Cookie(String),
    Path,
    QueryArg(String),
    UriCapture(String),
}

impl HashOn {
    fn from(doc: &Doc, which: &str, prefix: &str) -> HashOn {
        let s = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match doc.get(which).and_then(Value::as_str).unwrap_or("none") {
            "consumer" => HashOn::Consumer,
            "ip" => HashOn::Ip,
            "header" => HashOn::Header(s(&format!("hash_{prefix}_header")).to_ascii_lowercase()),
            "cookie" => HashOn::Cookie(s("hash_on_cookie")),
            "path" => HashOn::Path,
            "query_arg" => HashOn::QueryArg(s(&format!("hash_{prefix}_query_arg"))),
            "uri_capture" => HashOn::UriCapture(s(&format!("hash_{prefix}_uri_capture"))),
            _ => HashOn::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    Latency,
    ConsistentHashing { on: HashOn, fallback: HashOn },
}

/// Per target of one upstream: (requests in flight, latency average in ms).
type TargetLoads = HashMap<String, (i64, f64)>;

/// In-flight requests and latency per target, shared across snapshots.
#[derive(Default)]
pub struct Load {
    /// Upstream name, then target: (in flight, latency average in ms).
    map: Mutex<HashMap<String, TargetLoads>>,
}

impl Load {
    fn get(&self, upstream: &str, target: &str) -> (i64, f64) {
        let Ok(m) = self.map.lock() else {
            return (0, 0.0);
        };
        m.get(upstream)
            .and_then(|t| t.get(target))
            .copied()
            .unwrap_or((0, 0.0))
    }

    fn update(&self, upstream: &str, target: &str, f: impl FnOnce(&mut (i64, f64))) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(v) = m.get_mut(upstream).and_then(|t| t.get_mut(target)) {
                return f(v);
            }
            f(m.entry(upstream.to_string())
                .or_default()
                .entry(target.to_string())
                .or_default());
        }
    }

    /// Count a request in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, upstream: &str, target: &str) -> InFlight {
        self.update(upstream, target, |v| v.0 += 1);
        InFlight {
            load: self.clone(),
            upstream: upstream.to_string(),
            target: target.to_string(),
            started: Instant::now(),
        }
    }
}

/// A request in flight to a target.
pub struct InFlight {
    load: Arc<Load>,
    upstream: String,
    target: String,
    started: Instant,
}

impl InFlight {
    /// Record the time to the response head in the target's latency average.
    pub fn answered(&self) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.load.update(&self.upstream, &self.target, |v| {
            v.1 = if v.1 == 0.0 { ms } else { v.1 * 0.8 + ms * 0.2 };
        });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.update(&self.upstream, &self.target, |v| v.0 -= 1);
    }
}

/// A response body that keeps its request counted in flight until it is fully sent or dropped.
pub struct Tracked {
    pub inner: ProxyBody,
    pub guard: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::server::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::server::BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's targets and how to choose among them.
#[derive(Debug)]
pub struct Balancer {
    pub name: String,
    /// `host:port` of each target with a weight above zero.
    pub targets: Vec<String>,
    weights: Vec<u64>,
    /// A smooth weighted round-robin schedule of indexes into `targets`.
    schedule: Vec<usize>,
    next: AtomicUsize,
    pub checks: Checks,
    pub algorithm: Algorithm,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn hrw_score(key: &str, target: &str, weight: u64) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, target).hash(&mut h);
    // A uniform number in (0, 1]; weighted rendezvous: w / -ln(u).
    let u = ((h.finish() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    weight as f64 / -u.ln().min(-f64::MIN_POSITIVE)
}

impl Balancer {
    pub fn new(
        name: String,
        mut targets: Vec<(String, u64)>,
        checks: Checks,
        algorithm: Algorithm,
    ) -> Balancer {
        targets.retain(|(_, w)| *w > 0);
        targets.sort();
        let g = targets.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
        let weights: Vec<i64> = targets.iter().map(|(_, w)| (*w / g) as i64).collect();
        let total: i64 = weights.iter().sum();
        // Smooth weighted round-robin (as nginx), precomputed; long schedules are cut, which
        // keeps proportions to within one part in 4096.
        let len = total.clamp(0, 4096) as usize;
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(len);
        for _ in 0..len {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, usize::MAX - i))
            else {
                break;
            };
            current[best] -= total;
            schedule.push(best);
        }
        Balancer {
            name,
            weights: targets.iter().map(|(_, w)| *w).collect(),
            targets: targets.into_iter().map(|(t, _)| t).collect(),
            schedule,
            next: AtomicUsize::new(0),
            checks,
            algorithm,
        }
    }

    /// The balancer an upstream document describes.
    pub fn from_doc(u: &Doc, targets: Vec<(String, u64)>) -> Option<Balancer> {
        let name = u.get("name").and_then(Value::as_str)?.to_string();
        let algorithm = match u
            .get("algorithm")
            .and_then(Value::as_str)
            .unwrap_or("round-robin")
        {
            "least-connections" => Algorithm::LeastConnections,
            "latency" => Algorithm::Latency,
            "consistent-hashing" => Algorithm::ConsistentHashing {
                on: HashOn::from(u, "hash_on", "on"),
                fallback: HashOn::from(u, "hash_fallback", "fallback"),
            },
            _ => Algorithm::RoundRobin,
        };
        Some(Balancer::new(name, targets, Checks::from_doc(u), algorithm))
    }

    fn usable(&self, i: usize, health: &Health, tried: &[String]) -> bool {
        let t = &self.targets[i];
        !tried.contains(t) && health.is_up(&self.name, t)
    }

    fn round_robin(&self, health: &Health, tried: &[String]) -> Option<usize> {
        for _ in 0..self.schedule.len() {
            let i = self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len()];
            if self.usable(i, health, tried) {
                return Some(i);
            }
        }
        None
    }

    /// Choose a target that is up and not in `tried`. `key` is the consistent-hashing key.
    pub fn pick(
        &self,
        health: &Health,
        load: &Load,
        tried: &[String],
        key: Option<&str>,
    ) -> Option<&str> {
        if self.targets.is_empty() {
            return None;
        }
        let hashing =
            matches!(self.algorithm, Algorithm::ConsistentHashing { .. }) && key.is_some();
        if self.algorithm == Algorithm::RoundRobin
            || (!hashing && matches!(self.algorithm, Algorithm::ConsistentHashing { .. }))
        {
            return self
                .round_robin(health, tried)
                .map(|i| self.targets[i].as_str());
        }
        let n = self.targets.len();
        // Start the scans at a rotating offset, so that ties are spread.
        let offset = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|k| (k + offset) % n)
            .filter(|&i| self.usable(i, health, tried));
        let chosen = match (&self.algorithm, key) {
            (Algorithm::LeastConnections, _) => candidates.min_by(|&a, &b| {
                let la = self.load_of(load, a).0 as f64 / self.weights[a] as f64;
                let lb = self.load_of(load, b).0 as f64 / self.weights[b] as f64;
                la.total_cmp(&lb)
            }),
            (Algorithm::Latency, _) => candidates
                .min_by(|&a, &b| self.load_of(load, a).1.total_cmp(&self.load_of(load, b).1)),
            (_, Some(key)) => candidates.max_by(|&a, &b| {
                hrw_score(key, &self.targets[a], self.weights[a]).total_cmp(&hrw_score(
                    key,
                    &self.targets[b],
                    self.weights[b],
                ))
            }),
            _ => None,
        };
        chosen.map(|i| self.targets[i].as_str())
    }

    fn load_of(&self, load: &Load, i: usize) -> (i64, f64) {
        load.get(&self.name, &self.targets[i])
    }
}

/// The balancers of a configuration and what they are built from, so that a change rebuilds
/// the balancers of the upstreams it touches, and no other.
#[derive(Clone, Default)]
pub struct Upstreams {
    /// Balancers by upstream name: what requests read. A change copies this map's pointers
    /// (upstreams are few) and builds the balancers it touches.
    pub by_name: Arc<FastMap<String, Arc<Balancer>>>,
    /// Upstream id to its entity and name.
    upstreams: PMap<String, (Entity, Option<String>)>,
    /// Upstream id to its targets: target id to `(host:port, weight)`.
    targets: PMap<String, PMap<String, (String, u64)>>,
    /// Target id to its upstream's id.
    target_upstream: PMap<String, String>,
}

impl Upstreams {
    /// The balancers of a whole configuration.
    pub fn build(config: &Config) -> Result<Upstreams, TypedError> {
        let mut u = Upstreams::default();
        let mut touched = Vec::new();
        for e in config.docs("upstreams") {
            touched.extend(u.put_upstream(e));
        }
        for e in config.docs("targets") {
            touched.extend(u.put_target(e)?);
        }
        u.rebuild(touched);
        Ok(u)
    }

    /// These balancers with `changes` applied: the upstreams and targets changed are read, and
    /// the balancers of the upstreams they belong to rebuilt.
    pub fn patch(&self, changes: &[Change]) -> Result<Upstreams, TypedError> {
        let mut u = self.clone();
        let mut touched = Vec::new();
        for c in changes {
            match (c.entity(), c) {
                ("upstreams", Change::Upsert { doc, .. }) => touched.extend(u.put_upstream(doc)),
                ("upstreams", Change::Delete { id, .. }) => touched.extend(u.remove_upstream(id)),
                ("targets", Change::Upsert { doc, .. }) => touched.extend(u.put_target(doc)?),
                ("targets", Change::Delete { id, .. }) => touched.extend(u.remove_target(id)),
                _ => {}
            }
        }
        u.rebuild(touched);
        Ok(u)
    }

    /// Returns the names whose balancers change: the old name and the new.
    fn put_upstream(&mut self, e: &Entity) -> Vec<(String, Option<String>)> {
        let name = e.get("name").and_then(|v| v.as_str().map(str::to_string));
        let old = self
            .upstreams
            .insert(e.id().to_string(), (e.clone(), name))
            .and_then(|(_, n)| n);
        vec![(e.id().to_string(), old)]
    }

    fn remove_upstream(&mut self, id: &str) -> Vec<(String, Option<String>)> {
        let old = self.upstreams.remove(id).and_then(|(_, n)| n);
        vec![(id.to_string(), old)]
    }

    fn put_target(&mut self, e: &Entity) -> Result<Vec<(String, Option<String>)>, TypedError> {
        let t = Target::try_from(e)?;
        let mut touched = self.remove_target(&t.id);
        self.target_upstream
            .insert(t.id.clone(), t.upstream.id.clone());
        self.targets
            .entry(t.upstream.id.clone())
            .or_default()
            .insert(t.id, (t.target, t.weight));
        touched.push((t.upstream.id, None));
        Ok(touched)
    }

    fn remove_target(&mut self, id: &str) -> Vec<(String, Option<String>)> {
        let Some(up) = self.target_upstream.remove(id) else {
            return Vec::new();
        };
        if let Some(ts) = self.targets.get_mut(&up) {
            ts.remove(id);
            if ts.is_empty() {
                self.targets.remove(&up);
            }
        }
        vec![(up, None)]
    }

    /// Rebuild the balancers of the upstreams `touched` (id, and a name it no longer has).
    fn rebuild(&mut self, touched: Vec<(String, Option<String>)>) {
        if touched.is_empty() {
            return;
        }
        let by_name = Arc::make_mut(&mut self.by_name);
        let mut ids = Vec::with_capacity(touched.len());
        for (id, old_name) in touched {
            if let Some(old) = old_name {
                by_name.remove(&old);
            }
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some((e, Some(name))) = self.upstreams.get(&id) else {
                continue;
            };
            let targets = self
                .targets
                .get(&id)
                .map(|ts| ts.values().cloned().collect())
                .unwrap_or_default();
            match Balancer::from_doc(&e.doc(), targets) {
                Some(b) => by_name.insert(name.clone(), Arc::new(b)),
                None => by_name.remove(name),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(alg: Algorithm, targets: &[(&str, u64)]) -> Balancer {
        Balancer::new(
            "u".into(),
            targets.iter().map(|(t, w)| (t.to_string(), *w)).collect(),
            Checks::default(),
            alg,
        )
    }

    #[test]
    fn weighted_round_robin() {
        let b = b(
            Algorithm::RoundRobin,
            &[("a:1", 300), ("b:1", 100), ("c:1", 0)],
        );
        let (h, l) = (Health::default(), Load::default());
        let picks: Vec<&str> = (0..8).map(|_| b.pick(&h, &l, &[], None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| **p == "a:1").count(), 6);
        assert_eq!(picks.iter().filter(|p| **p == "b:1").count(), 2);
        assert!(!picks.contains(&"c:1"));
        assert!(picks.windows(2).all(|w| !(w[0] == "b:1" && w[1] == "b:1")));
        assert!(b
            .pick(&h, &l, &["a:1".into(), "b:1".into()], None)
            .is_none());
    }

    #[test]
    fn consistent_hashing_is_stable_and_moves_little() {
        let alg = Algorithm::ConsistentHashing {
            on: HashOn::Ip,
            fallback: HashOn::None,
        };
        let three = b(alg.clone(), &[("a:1", 100), ("b:1", 100), ("c:1", 100)]);
        let two = b(alg, &[("a:1", 100), ("b:1", 100)]);
        let (h, l) = (Health::default(), Load::default());
        let mut moved = 0;
        for i in 0..300 {
            let key = format!("10.0.0.{i}");
            let first = three.pick(&h, &l, &[], Some(&key)).unwrap();
            assert_eq!(
                first,
                three.pick(&h, &l, &[], Some(&key)).unwrap(),
                "same key, same target"
            );
            let after = two.pick(&h, &l, &[], Some(&key)).unwrap();
            if first != "c:1" && after != first {
                moved += 1;
            }
        }
        assert_eq!(
            moved, 0,
            "keys of the remaining targets stay where they were"
        );
    }

    #[test]
    fn least_connections_prefers_the_idle_target() {
        let b = b(Algorithm::LeastConnections, &[("a:1", 100), ("b:1", 100)]);
        let (h, l) = (Health::default(), Arc::new(Load::default()));
        let _busy = l.start("u", "a:1");
        for _ in 0..5 {
            assert_eq!(b.pick(&h, &l, &[], None), Some("b:1"));
        }
    }
}
