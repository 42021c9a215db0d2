//! The running configuration of the proxy: one immutable snapshot, built aside from a
//! configuration and published with one atomic swap.

use std::sync::Arc;

use gantry_model::delta::{Change, Update};
use gantry_model::hash::{ConfigHashes, Digests};
use gantry_model::{typed, Doc};
use serde_json::Value;

use crate::balancer::{Balancer, Upstreams};
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
    fn new(d: gantry_model::typed::Service) -> Service {
        let addr = format!("{}:{}", d.host, d.port);
        let header = |v: &str| {
            hyper::header::HeaderValue::from_str(v)
                .unwrap_or(hyper::header::HeaderValue::from_static(""))
        };
        Service {
            direct: (d.protocol == "http").then(|| {
                Arc::new(crate::pool::Dest::new(
                    addr.clone(),
                    None,
                    false,
                    std::time::Duration::from_millis(d.write_timeout),
                ))
            }),
            host_only: header(&d.host),
            host_port: header(&addr),
            addr,
            id: d.id,
            name: d.name,
            protocol: d.protocol,
            host: d.host,
            port: d.port,
            path: d.path,
            connect_timeout_ms: d.connect_timeout,
            write_timeout_ms: d.write_timeout,
            read_timeout_ms: d.read_timeout,
            retries: d.retries,
            enabled: d.enabled,
            tls_verify: d.tls_verify.unwrap_or(false),
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
    /// Balancers by upstream name (`upstreams.by_name`, at hand for requests).
    pub balancers: Arc<crate::FastMap<String, Arc<Balancer>>>,
    /// The upstreams and targets the balancers are built from, to patch them.
    pub upstreams: Arc<Upstreams>,
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
    #[error("invalid entity: {0}")]
    Typed(#[from] typed::TypedError),
    #[error("vault reference: {0}")]
    Vault(#[from] crate::vault::VaultError),
}

/// The entity types each part of a snapshot is built from.
const ROUTER: &[&str] = &["routes"];
const SERVICES: &[&str] = &["services"];
const BALANCERS: &[&str] = &["upstreams", "targets"];
/// Vaults and partials too: what a plugin reads may change with them.
const PLUGINS: &[&str] = &["plugins", "vaults", "partials"];
const CERTS: &[&str] = &["certificates", "snis", "vaults"];

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
            upstreams: Default::default(),
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
            _ => Arc::new(Router::build(config.docs("routes"))?),
        };
        let services = match (unchanged(SERVICES), patch_from) {
            (Some(p), _) => p.services.clone(),
            (None, Some((p, changes))) => {
                let mut services = (*p.services).clone();
                for c in changes.iter().filter(|c| c.entity() == "services") {
                    match c {
                        Change::Upsert { doc, .. } => {
                            let s = Service::new(typed::Service::try_from(doc)?);
                            services.insert(s.id.clone(), Arc::new(s));
                        }
                        Change::Delete { id, .. } => {
                            services.remove(id);
                        }
                    }
                }
                Arc::new(services)
            }
            _ => {
                let mut services = crate::FastMap::default();
                for e in config.docs("services") {
                    let s = Service::new(typed::Service::try_from(e)?);
                    services.insert(s.id.clone(), Arc::new(s));
                }
                Arc::new(services)
            }
        };
        let upstreams = match (unchanged(BALANCERS), patch_from) {
            (Some(p), _) => p.upstreams.clone(),
            (None, Some((p, changes))) => Arc::new(p.upstreams.patch(changes)?),
            _ => Arc::new(Upstreams::build(config)?),
        };
        let plugins = match unchanged(PLUGINS) {
            Some(p) => p.plugins.clone(),
            None => {
                // Vault references are read into a copy only this snapshot holds.
                let resolved = crate::vault::resolve(config, &["plugins", "partials"])?;
                let config = resolved.as_ref().unwrap_or(config);
                Arc::new(PluginSet::build(config, registry, shared).map_err(SnapshotError::Plugin)?)
            }
        };
        let identity_types: Vec<&str> = std::iter::once("consumers")
            .chain(registry.credential_kinds().into_iter().map(|k| k.entity))
            .chain(registry.reads_groups().then_some(crate::plugins::ACLS))
            .chain([
                crate::plugins::CONSUMER_GROUPS,
                crate::plugins::CONSUMER_GROUP_CONSUMERS,
            ])
            .collect();
        let identities = match (unchanged(&identity_types), patch_from) {
            (Some(p), _) => p.identities.clone(),
            (None, Some((p, changes))) => Arc::new(p.identities.patch(changes, registry)),
            _ => Arc::new(Identities::build(config, registry)),
        };
        let certs = match (unchanged(CERTS), patch_from) {
            (Some(p), _) => p.certs.clone(),
            (None, from) => match crate::vault::resolve(config, &["certificates"])? {
                // Certificates with vault references are built whole from what they read.
                Some(resolved) => Arc::new(CertStore::build(&resolved)),
                None => match from {
                    Some((p, changes)) => Arc::new(p.certs.patch(changes)),
                    None => Arc::new(CertStore::build(config)),
                },
            },
        };
        Ok(Snapshot {
            version,
            hashes: digests.hashes(),
            digests: digests.clone(),
            router,
            services,
            balancers: upstreams.by_name.clone(),
            upstreams,
            plugins,
            identities,
            certs,
        })
    }
}

/// Compile one entity as a snapshot will: a route's matchers (header and path regexes), a
/// certificate's chain and key; every entity the proxy builds from is read as its typed value.
/// Writes run this before they store the entity, so that what a
/// node cannot load is refused at the Admin API, naming the field, instead of being skipped
/// or failing every later configuration.
pub fn compile_entity(entity: &str, doc: &Doc) -> Result<(), gantry_model::plugins::CompileError> {
    use gantry_model::plugins::CompileError;
    let e = || gantry_model::Entity::new(doc);
    let typed = |r: Result<(), typed::TypedError>| r.map_err(|t| CompileError::whole(t.reason));
    match entity {
        "services" => typed(typed::Service::try_from(&e()).map(drop)),
        "targets" => typed(typed::Target::try_from(&e()).map(drop)),
        "consumers" => typed(typed::Consumer::try_from(&e()).map(drop)),
        "snis" => typed(typed::Sni::try_from(&e()).map(drop)),
        "plugins" => typed(typed::Plugin::try_from(&e()).map(drop)),
        "jwt_secrets" => crate::plugins::jwt::check_credential(doc),
        "routes" => Router::build([&gantry_model::Entity::new(doc)])
            .map(drop)
            .map_err(|e| match e.field {
                Some(f) => CompileError::field(f, e.reason),
                None => CompileError::whole(e.reason),
            }),
        "certificates" => {
            typed(typed::Certificate::try_from(&e()).map(drop))?;
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

    /// A snapshot patched with changes to services, upstreams, targets, certificates and
    /// SNIs serves as one built from the configuration they lead to.
    #[test]
    fn patched_parts_match_built_ones() {
        use gantry_model::Entity;
        let registry = Registry::default();
        let shared = Shared::default();
        let ca = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let cb = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let cert = |id: &str, c: &rcgen::CertifiedKey<rcgen::KeyPair>| json!({"id": id, "cert": c.cert.pem(), "key": c.signing_key.serialize_pem()});
        let e = |v: serde_json::Value| Entity::new(v.as_object().unwrap());
        let up = |kind: &str, v: serde_json::Value| Change::Upsert {
            entity: kind.into(),
            doc: e(v),
        };
        let del = |kind: &str, id: &str| Change::Delete {
            entity: kind.into(),
            id: id.into(),
        };
        let mut config = gantry_model::Config::default();
        let first = vec![
            up("services", json!({"id": "s1", "host": "one.internal"})),
            up("services", json!({"id": "s2", "host": "two.internal"})),
            up("upstreams", json!({"id": "u1", "name": "pool-a"})),
            up("upstreams", json!({"id": "u2", "name": "pool-b"})),
            up(
                "targets",
                json!({"id": "t1", "upstream": {"id": "u1"}, "target": "10.0.0.1:80"}),
            ),
            up(
                "targets",
                json!({"id": "t2", "upstream": {"id": "u1"}, "target": "10.0.0.2:80"}),
            ),
            up(
                "targets",
                json!({"id": "t3", "upstream": {"id": "u2"}, "target": "10.0.0.3:80"}),
            ),
            up("certificates", cert("c1", &ca)),
            up(
                "snis",
                json!({"id": "n1", "name": "a.example", "certificate": {"id": "c1"}}),
            ),
            up(
                "snis",
                json!({"id": "n2", "name": "*.wild.example", "certificate": {"id": "c1"}}),
            ),
        ];
        let mut digests = Digests::default();
        config.apply_tracked(&first, &mut digests).unwrap();
        let u1 = Update {
            config: &config,
            digests: &digests,
            version: 1,
            changes: None,
        };
        let s1 = Snapshot::build(&u1, None, &registry, &shared).unwrap();
        let second = vec![
            up(
                "services",
                json!({"id": "s2", "host": "moved.internal", "port": 8080}),
            ),
            del("services", "s1"),
            up("upstreams", json!({"id": "u2", "name": "pool-renamed"})),
            del("targets", "t1"),
            up(
                "targets",
                json!({"id": "t4", "upstream": {"id": "u1"}, "target": "10.0.0.4:80", "weight": 50}),
            ),
            up("certificates", cert("c2", &cb)),
            up(
                "snis",
                json!({"id": "n1", "name": "a.example", "certificate": {"id": "c2"}}),
            ),
            del("snis", "n2"),
            up(
                "snis",
                json!({"id": "n3", "name": "*.example", "certificate": {"id": "c1"}}),
            ),
        ];
        let mut next = config.clone();
        let mut d2 = digests.clone();
        next.apply_tracked(&second, &mut d2).unwrap();
        let u2 = Update {
            config: &next,
            digests: &d2,
            version: 2,
            changes: Some((1, &second)),
        };
        let patched = Snapshot::build(&u2, Some(&s1), &registry, &shared).unwrap();
        let whole = Update {
            changes: None,
            ..u2
        };
        let built = Snapshot::build(&whole, None, &registry, &shared).unwrap();
        let services = |s: &Snapshot| {
            let mut v: Vec<_> = s
                .services
                .values()
                .map(|s| (s.id.clone(), s.addr.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(services(&patched), services(&built));
        assert_eq!(
            services(&patched),
            [("s2".to_string(), "moved.internal:8080".to_string())]
        );
        let balancers = |s: &Snapshot| {
            let mut v: Vec<_> = s
                .balancers
                .iter()
                .map(|(n, b)| (n.clone(), b.targets.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(balancers(&patched), balancers(&built));
        assert_eq!(
            balancers(&patched),
            [
                (
                    "pool-a".to_string(),
                    vec!["10.0.0.2:80".to_string(), "10.0.0.4:80".to_string()]
                ),
                ("pool-renamed".to_string(), vec!["10.0.0.3:80".to_string()]),
            ]
        );
        let served = |s: &Snapshot, name: &str| s.certs.find(name).map(|c| c.cert[0].to_vec());
        for name in [
            "a.example",
            "x.wild.example",
            "x.example",
            "b.example",
            "other.test",
        ] {
            assert_eq!(served(&patched, name), served(&built, name), "{name}");
        }
        assert_eq!(served(&patched, "a.example"), Some(cb.cert.der().to_vec()));
        assert_eq!(
            served(&patched, "x.wild.example"),
            Some(ca.cert.der().to_vec())
        );
        assert_eq!(served(&patched, "other.test"), None);
        // The snapshot patched from still serves its own configuration.
        assert_eq!(served(&s1, "a.example"), Some(ca.cert.der().to_vec()));
        assert_eq!(balancers(&s1)[0].1.len(), 2);
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
        // What the proxy reads as a typed value is read so at the write too.
        let e = compile_entity(
            "targets",
            &doc(json!({"id": "t", "target": "a:1", "weight": -1})),
        )
        .unwrap_err();
        assert!(e.message.contains("invalid value"), "{e:?}");
        assert!(compile_entity("services", &doc(json!({"id": "s", "host": "h"}))).is_ok());
    }
}
