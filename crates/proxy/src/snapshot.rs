//! The running configuration of the proxy: one immutable snapshot, built aside from a
//! configuration and published with one atomic swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gantry_model::hash::{hash_config, ConfigHashes};
use gantry_model::{Config, Doc};
use serde_json::Value;

use crate::health::{Checks, Health};
use crate::plugins::{Counters, Identities, PluginSet};
use crate::router::{RouteError, Router};
use crate::tls::CertStore;

/// An upstream service, as the proxy uses it.
#[derive(Debug)]
pub struct Service {
    pub id: String,
    pub name: Option<String>,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub connect_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub retries: u32,
    pub enabled: bool,
}

impl Service {
    fn from_doc(d: &Doc) -> Service {
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str, def: u64| d.get(k).and_then(Value::as_u64).unwrap_or(def);
        Service {
            id: s("id").unwrap_or_default(),
            name: s("name"),
            protocol: s("protocol").unwrap_or_else(|| "http".into()),
            host: s("host").unwrap_or_default(),
            port: n("port", 80) as u16,
            path: s("path"),
            connect_timeout_ms: n("connect_timeout", 60_000),
            write_timeout_ms: n("write_timeout", 60_000),
            read_timeout_ms: n("read_timeout", 60_000),
            retries: n("retries", 5) as u32,
            enabled: d.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        }
    }
}

/// An upstream's targets with weighted round-robin.
#[derive(Debug)]
pub struct Balancer {
    pub name: String,
    /// `host:port` of each target with a weight above zero.
    pub targets: Vec<String>,
    /// A smooth weighted round-robin schedule of indexes into `targets`.
    schedule: Vec<usize>,
    next: AtomicUsize,
    pub checks: Checks,
}

impl Balancer {
    fn new(name: String, mut targets: Vec<(String, u64)>, checks: Checks) -> Balancer {
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
            targets: targets.into_iter().map(|(t, _)| t).collect(),
            schedule,
            next: AtomicUsize::new(0),
            checks,
        }
    }

    /// The next target, or `None` when the upstream has none.
    pub fn pick(&self) -> Option<&str> {
        self.pick_healthy(&Health::default(), &[])
    }

    /// The next target that is up and not in `tried`, or `None` when there is none.
    pub fn pick_healthy(&self, health: &Health, tried: &[String]) -> Option<&str> {
        for _ in 0..self.schedule.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
            let t = self.targets.get(self.schedule[i])?;
            if !tried.contains(t) && health.is_up(&self.name, t) {
                return Some(t);
            }
        }
        None
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Everything a request reads, immutable once published.
pub struct Snapshot {
    pub version: i64,
    pub hashes: ConfigHashes,
    pub router: Arc<Router>,
    pub services: HashMap<String, Arc<Service>>,
    /// Upstreams by name.
    pub balancers: HashMap<String, Arc<Balancer>>,
    pub plugins: Arc<PluginSet>,
    pub identities: Arc<Identities>,
    pub certs: Arc<CertStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid route: {0}")]
    Route(#[from] RouteError),
    #[error("invalid plugin configuration: {0}")]
    Plugin(String),
}

fn docs<'a>(c: &'a Config, k: &str) -> &'a [Doc] {
    c.entities.get(k).map(Vec::as_slice).unwrap_or(&[])
}

impl Snapshot {
    /// An empty snapshot: every request gets 404.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            hashes: hash_config(&Config::default()),
            router: Arc::new(Router::empty()),
            services: HashMap::new(),
            balancers: HashMap::new(),
            plugins: Arc::new(PluginSet::default()),
            identities: Arc::new(Identities::default()),
            certs: Arc::new(CertStore::default()),
        }
    }

    /// Build a snapshot aside. Parts whose hash did not change are taken from `previous`
    /// (the router is kept when only plugins or consumers changed).
    pub fn build(
        config: &Config,
        version: i64,
        previous: Option<&Snapshot>,
        counters: &Counters,
    ) -> Result<Snapshot, SnapshotError> {
        let hashes = hash_config(config);
        let router = match previous {
            Some(p) if p.hashes.routes == hashes.routes => p.router.clone(),
            _ => Arc::new(Router::build(docs(config, "routes"))?),
        };
        let services = match previous {
            Some(p) if p.hashes.services == hashes.services => p.services.clone(),
            _ => docs(config, "services")
                .iter()
                .map(|d| {
                    let s = Service::from_doc(d);
                    (s.id.clone(), Arc::new(s))
                })
                .collect(),
        };
        let balancers = match previous {
            Some(p)
                if p.hashes.upstreams == hashes.upstreams && p.hashes.targets == hashes.targets =>
            {
                p.balancers.clone()
            }
            _ => {
                let mut by_upstream: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
                for t in docs(config, "targets") {
                    if let (Some(up), Some(target)) = (
                        t.get("upstream")
                            .and_then(|u| u.get("id"))
                            .and_then(Value::as_str),
                        t.get("target").and_then(Value::as_str),
                    ) {
                        let w = t.get("weight").and_then(Value::as_u64).unwrap_or(100);
                        by_upstream
                            .entry(up)
                            .or_default()
                            .push((target.to_string(), w));
                    }
                }
                docs(config, "upstreams")
                    .iter()
                    .filter_map(|u| {
                        let id = u.get("id").and_then(Value::as_str)?;
                        let name = u.get("name").and_then(Value::as_str)?.to_string();
                        let targets = by_upstream.remove(id).unwrap_or_default();
                        let checks = Checks::from_doc(u);
                        Some((name.clone(), Arc::new(Balancer::new(name, targets, checks))))
                    })
                    .collect()
            }
        };
        let same_plugins =
            previous.filter(|p| p.hashes.plugins == hashes.plugins && p.hashes.rest == hashes.rest);
        let (plugins, identities) = match same_plugins {
            Some(p) => (p.plugins.clone(), p.identities.clone()),
            None => {
                let set = PluginSet::build(config, counters).map_err(SnapshotError::Plugin)?;
                if !set.unsupported.is_empty() {
                    tracing::warn!(plugins = ?set.unsupported, "configured plugins this build cannot run yet are skipped");
                }
                (Arc::new(set), Arc::new(Identities::build(config)))
            }
        };
        let certs = match previous {
            Some(p) if p.hashes.rest == hashes.rest => p.certs.clone(),
            _ => Arc::new(CertStore::build(config)),
        };
        Ok(Snapshot {
            version,
            hashes,
            router,
            services,
            balancers,
            plugins,
            identities,
            certs,
        })
    }
}

#[cfg(test)]
impl Balancer {
    fn with_weights(name: String, targets: Vec<(String, u64)>) -> Balancer {
        Balancer::new(name, targets, Checks::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_round_robin() {
        let b = Balancer::with_weights(
            "u".into(),
            vec![("a:1".into(), 300), ("b:1".into(), 100), ("c:1".into(), 0)],
        );
        let picks: Vec<&str> = (0..8).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| **p == "a:1").count(), 6);
        assert_eq!(picks.iter().filter(|p| **p == "b:1").count(), 2);
        assert!(!picks.contains(&"c:1"));
        // Smooth: never b twice in a row.
        assert!(picks.windows(2).all(|w| !(w[0] == "b:1" && w[1] == "b:1")));
        let none = Balancer::with_weights("n".into(), vec![]);
        assert!(none.pick().is_none());
    }
}
