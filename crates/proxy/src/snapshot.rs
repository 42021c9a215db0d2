//! The running configuration of the proxy: one immutable snapshot, built aside from a
//! configuration and published with one atomic swap.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_model::delta::Update;
use gantry_model::hash::{ConfigHashes, Digests};
use gantry_model::Doc;
use serde_json::Value;

use crate::balancer::Balancer;
use crate::plugins::{Identities, PluginSet, Registry, Shared};
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
    /// Verify an https upstream's certificate (off unless set, as Kong).
    pub tls_verify: bool,
    /// `host:port`, where requests go when the host is not an upstream's name.
    pub addr: String,
    /// That destination, ready for the pool, for an `http` service.
    pub direct: Option<Arc<crate::pool::Dest>>,
    /// The `Host` header sent upstream: the host alone for the default port or an upstream's
    /// name, and with the port otherwise.
    pub host_only: hyper::header::HeaderValue,
    pub host_port: hyper::header::HeaderValue,
}

impl Service {
    fn from_doc(d: &Doc) -> Service {
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str, def: u64| d.get(k).and_then(Value::as_u64).unwrap_or(def);
        let host = s("host").unwrap_or_default();
        let port = n("port", 80) as u16;
        let protocol = s("protocol").unwrap_or_else(|| "http".into());
        let addr = format!("{host}:{port}");
        let write_timeout_ms = n("write_timeout", 60_000);
        let header = |v: &str| {
            hyper::header::HeaderValue::from_str(v)
                .unwrap_or(hyper::header::HeaderValue::from_static(""))
        };
        Service {
            id: s("id").unwrap_or_default(),
            name: s("name"),
            direct: (protocol == "http").then(|| {
                Arc::new(crate::pool::Dest::new(
                    addr.clone(),
                    None,
                    false,
                    std::time::Duration::from_millis(write_timeout_ms),
                ))
            }),
            host_only: header(&host),
            host_port: header(&addr),
            addr,
            protocol,
            host,
            port,
            path: s("path"),
            connect_timeout_ms: n("connect_timeout", 60_000),
            write_timeout_ms,
            read_timeout_ms: n("read_timeout", 60_000),
            retries: n("retries", 5) as u32,
            enabled: d.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            tls_verify: d
                .get("tls_verify")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// Everything a request reads, immutable once published.
pub struct Snapshot {
    pub version: i64,
    pub hashes: ConfigHashes,
    /// The digests by entity type: a part is rebuilt only when a type it reads changed.
    pub digests: Digests,
    pub router: Arc<Router>,
    pub services: Arc<crate::FastMap<String, Arc<Service>>>,
    /// Upstreams by name.
    pub balancers: Arc<crate::FastMap<String, Arc<Balancer>>>,
    pub plugins: Arc<PluginSet>,
    pub identities: Arc<Identities>,
    pub certs: Arc<CertStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid route: {0}")]
    Route(#[from] RouteError),
    #[error("invalid plugin configuration: {0}")]
    Plugin(#[from] crate::plugins::PluginSetError),
}

/// The entity types each part of a snapshot is built from.
const ROUTER: &[&str] = &["routes"];
const SERVICES: &[&str] = &["services"];
const BALANCERS: &[&str] = &["upstreams", "targets"];
const PLUGINS: &[&str] = &["plugins"];
const CERTS: &[&str] = &["certificates", "snis"];

impl Snapshot {
    /// An empty snapshot: every request gets 404.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            hashes: Digests::default().hashes(),
            digests: Digests::default(),
            router: Arc::new(Router::empty()),
            services: Default::default(),
            balancers: Default::default(),
            plugins: Arc::new(PluginSet::default()),
            identities: Arc::new(Identities::default()),
            certs: Arc::new(CertStore::default()),
        }
    }

    /// Build a snapshot aside. Parts built from entity types whose digests did not change
    /// are taken from `previous`: a consumer added rebuilds the consumer index alone, a route
    /// changed the router alone.
    pub fn build(
        u: &Update<'_>,
        previous: Option<&Snapshot>,
        registry: &Registry,
        shared: &Shared,
    ) -> Result<Snapshot, SnapshotError> {
        let (config, digests, version) = (u.config, u.digests, u.version);
        let unchanged = |types: &[&str]| previous.filter(|p| p.digests.same(digests, types));
        // Changes that lead from the version running patch what it has; otherwise (a
        // snapshot, or a version skipped) the part is built whole.
        let patch_from = previous.and_then(|p| {
            let (from, changes) = u.changes?;
            (from == p.version).then_some((p, changes))
        });
        let router = match (unchanged(ROUTER), patch_from) {
            (Some(p), _) => p.router.clone(),
            (None, Some((p, changes))) => Arc::new(p.router.patch(changes)?),
            _ => Arc::new(Router::build(config.docs("routes").iter().map(|d| &**d))?),
        };
        let services = match unchanged(SERVICES) {
            Some(p) => p.services.clone(),
            _ => Arc::new(
                config
                    .docs("services")
                    .iter()
                    .map(|d| {
                        let s = Service::from_doc(d);
                        (s.id.clone(), Arc::new(s))
                    })
                    .collect(),
            ),
        };
        let balancers = match unchanged(BALANCERS) {
            Some(p) => p.balancers.clone(),
            None => {
                let mut by_upstream: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
                for t in config.docs("targets") {
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
                Arc::new(
                    config
                        .docs("upstreams")
                        .iter()
                        .filter_map(|u| {
                            let id = u.get("id").and_then(Value::as_str)?;
                            let name = u.get("name").and_then(Value::as_str)?.to_string();
                            let targets = by_upstream.remove(id).unwrap_or_default();
                            Some((name, Arc::new(Balancer::from_doc(u, targets)?)))
                        })
                        .collect(),
                )
            }
        };
        let plugins = match unchanged(PLUGINS) {
            Some(p) => p.plugins.clone(),
            None => {
                Arc::new(PluginSet::build(config, registry, shared).map_err(SnapshotError::Plugin)?)
            }
        };
        let identity_types: Vec<&str> = std::iter::once("consumers")
            .chain(registry.credential_kinds().into_iter().map(|k| k.entity))
            .collect();
        let identities = match (unchanged(&identity_types), patch_from) {
            (Some(p), _) => p.identities.clone(),
            (None, Some((p, changes))) => Arc::new(p.identities.patch(changes, registry)),
            _ => Arc::new(Identities::build(config, registry)),
        };
        let certs = match unchanged(CERTS) {
            Some(p) => p.certs.clone(),
            None => Arc::new(CertStore::build(config)),
        };
        Ok(Snapshot {
            version,
            hashes: digests.hashes(),
            digests: digests.clone(),
            router,
            services,
            balancers,
            plugins,
            identities,
            certs,
        })
    }
}

/// Compile one entity as a snapshot will: a route's matchers (header and path regexes), a
/// certificate's chain and key. Writes run this before they store the entity, so that what a
/// node cannot load is refused at the Admin API, naming the field, instead of being skipped
/// or failing every later configuration.
pub fn compile_entity(entity: &str, doc: &Doc) -> Result<(), gantry_model::plugins::CompileError> {
    use gantry_model::plugins::CompileError;
    match entity {
        "routes" => Router::build([doc])
            .map(drop)
            .map_err(|e| CompileError::field(e.field, e.reason)),
        "certificates" => {
            let s = |k: &str| doc.get(k).and_then(Value::as_str);
            for (cert, key) in [("cert", "key"), ("cert_alt", "key_alt")] {
                if let (Some(c), Some(k)) = (s(cert), s(key)) {
                    crate::tls::certified_key(c, k).map_err(|e| {
                        let field = if e.is_key() { key } else { cert };
                        CompileError::field(field, e.to_string())
                    })?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Doc {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn entities_compile_as_snapshots_do() {
        let bad = doc(
            json!({"id": "r1", "protocols": ["http"], "paths": ["/a"], "headers": {"x": ["~*(("]}}),
        );
        let e = compile_entity("routes", &bad).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("headers"));
        let good = doc(
            json!({"id": "r1", "protocols": ["http"], "paths": ["/a"], "headers": {"x": ["~*a+"]}}),
        );
        assert!(compile_entity("routes", &good).is_ok());
        // A key that is not the certificate's.
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let mismatched =
            doc(json!({"id": "c1", "cert": a.cert.pem(), "key": b.signing_key.serialize_pem()}));
        let e = compile_entity("certificates", &mismatched).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("key"), "{e}");
        assert!(e.message.contains("does not match"), "{e}");
        let ok =
            doc(json!({"id": "c1", "cert": a.cert.pem(), "key": a.signing_key.serialize_pem()}));
        assert!(compile_entity("certificates", &ok).is_ok());
    }
}
