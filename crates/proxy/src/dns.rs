//! Names of upstream hosts, resolved by DNS (hickory) and cached for as long as their records'
//! TTL says; several addresses are used in turn. IP literals skip all of it.

use std::collections::HashMap;
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

/// A caching resolver; see the module documentation.
pub struct Dns {
    resolver: TokioResolver,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
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
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(bare).filter(|e| e.until > now).cloned());
        let entry = match cached {
            Some(e) => e,
            None => {
                let found =
                    self.resolver
                        .lookup_ip(bare)
                        .await
                        .map_err(|e| ResolveError::Lookup {
                            host: bare.to_string(),
                            reason: e.to_string(),
                        })?;
                let addrs: Arc<[IpAddr]> = found.iter().collect();
                if addrs.is_empty() {
                    return Err(ResolveError::NoAddress(bare.to_string()));
                }
                let e = Arc::new(Entry {
                    addrs,
                    until: found.valid_until(),
                    next: AtomicUsize::new(0),
                });
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(bare.to_string(), e.clone());
                }
                e
            }
        };
        let i = entry.next.fetch_add(1, Ordering::Relaxed) % entry.addrs.len();
        Ok(entry.addrs[i])
    }
}
