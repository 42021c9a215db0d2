//! Names of upstream hosts, resolved by DNS (hickory) and cached for as long as their records'
//! TTL says; several addresses are used in turn. IP literals skip all of it. A failed lookup
//! is remembered for a second (Kong's `resolver_error_ttl`), so that a request's retries and
//! the requests right after it do not each ask the name server again.
//!
//! Each name keeps Kong's new DNS client's statistics, for `/status/dns` (keyed `NAME|A/AAAA`):
//! `runs` (lookups asked of the cache), `hit_lru` and `miss`, `query` (questions sent to a
//! name server), `query_succ`, `query_fail:name error` (NXDOMAIN), `query_fail:empty record
//! received`, `query_fail_nameserver` (no usable answer), and `query_last_time` (milliseconds).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

struct Entry {
    addrs: Arc<[IpAddr]>,
    until: Instant,
    next: AtomicUsize,
}

/// A name's cached addresses (none until found, or once they expired and failed to refresh)
/// and its statistics.
#[derive(Default)]
struct Slot {
    entry: Option<Arc<Entry>>,
    /// A failed lookup, answered again from here until it expires (Kong's `error_ttl`).
    failed: Option<(Instant, String)>,
    stats: BTreeMap<&'static str, u64>,
}

/// How long a failed lookup is remembered (Kong's `resolver_error_ttl`): the retries of one
/// request, and the requests of the next second, do not ask again.
const ERROR_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the cache holds for a name now.
enum Cached {
    Found(Arc<Entry>),
    Failed(String),
}

/// A caching resolver; see the module documentation.
pub struct Dns {
    resolver: TokioResolver,
    cache: Mutex<HashMap<String, Slot>>,
}

/// Why a name has no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("name resolution failed for {host}: {reason}")]
    Lookup { host: String, reason: String },
    #[error("name resolution failed for {0}: no address")]
    NoAddress(String),
}

impl Dns {
    /// The system's configuration (`/etc/resolv.conf`, `/etc/hosts`), or these name servers
    /// (Kong's `dns_resolver`) with `/etc/hosts` first.
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, crate::error::SetupError> {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| crate::error::SetupError::SystemDns(e.to_string()))?
        } else {
            let ns = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], ns),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        builder.options_mut().use_hosts_file = ResolveHosts::Always;
        let resolver = builder
            .build()
            .map_err(|e| crate::error::SetupError::Dns(e.to_string()))?;
        Ok(Dns {
            resolver,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// An address for `host`: from the cache while its TTL lasts, else asked again.
    pub async fn resolve(&self, host: &str) -> Result<IpAddr, ResolveError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(ip);
        }
        let now = Instant::now();
        let cached = self.cache.lock().ok().and_then(|mut c| {
            let slot = c.entry(bare.to_string()).or_default();
            let hit = match (&slot.entry, &slot.failed) {
                (Some(e), _) if e.until > now => Some(Cached::Found(e.clone())),
                (_, Some((until, why))) if *until > now => Some(Cached::Failed(why.clone())),
                _ => None,
            };
            *slot.stats.entry("runs").or_default() += 1;
            *slot
                .stats
                .entry(if hit.is_some() { "hit_lru" } else { "miss" })
                .or_default() += 1;
            hit
        });
        let entry = match cached {
            Some(Cached::Found(e)) => e,
            Some(Cached::Failed(reason)) => {
                return Err(ResolveError::Lookup {
                    host: bare.to_string(),
                    reason,
                })
            }
            None => {
                let asked = Instant::now();
                let found = self.resolver.lookup_ip(bare).await;
                let took = asked.elapsed().as_millis() as u64;
                let outcome = match &found {
                    // The name server answered that the name does not exist (Kong's
                    // `query_fail:<rcode name>`), or that it has no such record.
                    Err(e) if e.is_nx_domain() => "query_fail:name error",
                    Err(e) if e.is_no_records_found() => "query_fail:empty record received",
                    Err(_) => "query_fail_nameserver",
                    Ok(f) if f.iter().next().is_none() => "query_fail:empty record received",
                    Ok(_) => "query_succ",
                };
                let entry = found.as_ref().ok().map(|f| {
                    Arc::new(Entry {
                        addrs: f.iter().collect(),
                        until: f.valid_until(),
                        next: AtomicUsize::new(0),
                    })
                });
                if let Ok(mut c) = self.cache.lock() {
                    let slot = c.entry(bare.to_string()).or_default();
                    *slot.stats.entry("query").or_default() += 1;
                    *slot.stats.entry(outcome).or_default() += 1;
                    slot.stats.insert("query_last_time", took);
                    match (entry.as_ref().filter(|e| !e.addrs.is_empty()), &found) {
                        (Some(e), _) => {
                            slot.entry = Some(e.clone());
                            slot.failed = None;
                        }
                        (None, Err(e)) => slot.failed = Some((now + ERROR_TTL, e.to_string())),
                        (None, Ok(_)) => {
                            slot.failed = Some((now + ERROR_TTL, "no address".to_string()))
                        }
                    }
                }
                let found = found.map_err(|e| ResolveError::Lookup {
                    host: bare.to_string(),
                    reason: e.to_string(),
                })?;
                drop(found);
                match entry.filter(|e| !e.addrs.is_empty()) {
                    Some(e) => e,
                    None => return Err(ResolveError::NoAddress(bare.to_string())),
                }
            }
        };
        let i = entry.next.fetch_add(1, Ordering::Relaxed) % entry.addrs.len();
        Ok(entry.addrs[i])
    }

    /// Kong's `kong.dns.stats()`: each name looked up, `NAME|A/AAAA`, with its counters.
    pub fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let Ok(c) = self.cache.lock() else {
            return serde_json::Map::new();
        };
        c.iter()
            .map(|(name, slot)| (format!("{name}|A/AAAA"), serde_json::json!(slot.stats)))
            .collect()
    }
}
