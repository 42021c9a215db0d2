//! TLS for the proxy listeners: the certificate is chosen by SNI from the configuration's
//! certificates and SNIs (exact names first, then `*.` wildcards), else a default certificate
//! generated at start. ALPN offers HTTP/2 and HTTP/1.1.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use gantry_model::delta::Change;
use gantry_model::typed::{Certificate, Sni};
use gantry_model::{Config, Entity};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::snapshot::Snapshot;
use crate::PMap;

/// Certificates by server name, from one configuration. A change parses the certificates it
/// brings and no other: the loaded ones and the SNIs are kept, and the name lookups remade from
/// them.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// The certificates that loaded, by id.
    loaded: PMap<String, Arc<CertifiedKey>>,
    /// SNI id to its name (lowercase) and its certificate's id.
    snis: PMap<String, (String, String)>,
}

/// Why a certificate and key do not make a signing certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate: {0}")]
    CertPem(rustls_pki_types::pem::Error),
    #[error("certificate: no PEM certificate")]
    NoCert,
    #[error("key: {0}")]
    KeyPem(rustls_pki_types::pem::Error),
    #[error("key: {0}")]
    Key(rustls::Error),
    #[error("key does not match the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot generate the default certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl CertError {
    /// Whether the key is at fault (else the certificate).
    pub fn is_key(&self) -> bool {
        matches!(
            self,
            CertError::KeyPem(_) | CertError::Key(_) | CertError::Mismatch(_)
        )
    }
}

/// Parse a PEM chain and key into a signing certificate.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(CertError::CertPem)?;
    if chain.is_empty() {
        return Err(CertError::NoCert);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CertError::KeyPem)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(CertError::Key)?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(CertError::Mismatch)?;
    Ok(ck)
}

impl CertStore {
    /// Build from the configuration's certificates and SNIs. A certificate that does not load
    /// is skipped with an error in the log (writes refuse such certificates, so this is a
    /// configuration made by hand); its names then get the default certificate.
    pub fn build(config: &Config) -> CertStore {
        let mut store = CertStore::default();
        for c in config.docs("certificates") {
            store.put_cert(c);
        }
        for s in config.docs("snis") {
            store.put_sni(s);
        }
        store.index();
        store
    }

    /// This store with `changes` applied.
    pub fn patch(&self, changes: &[Change]) -> CertStore {
        let mut store = CertStore {
            loaded: self.loaded.clone(),
            snis: self.snis.clone(),
            ..CertStore::default()
        };
        for c in changes {
            match (c.entity(), c) {
                ("certificates", Change::Upsert { doc, .. }) => store.put_cert(doc),
                ("certificates", Change::Delete { id, .. }) => {
                    store.loaded.remove(id);
                }
                ("snis", Change::Upsert { doc, .. }) => store.put_sni(doc),
                ("snis", Change::Delete { id, .. }) => {
                    store.snis.remove(id);
                }
                _ => {}
            }
        }
        store.index();
        store
    }

    fn put_cert(&mut self, e: &Entity) {
        let loaded = Certificate::try_from(e)
            .map_err(|e| e.to_string())
            .and_then(|c| certified_key(&c.cert, &c.key).map_err(|e| e.to_string()));
        match loaded {
            Ok(ck) => {
                self.loaded.insert(e.id().to_string(), Arc::new(ck));
            }
            Err(err) => {
                self.loaded.remove(e.id());
                tracing::error!(certificate = e.id(), error = %err, "certificate not loaded")
            }
        }
    }

    fn put_sni(&mut self, e: &Entity) {
        match Sni::try_from(e) {
            Ok(s) => {
                self.snis
                    .insert(s.id, (s.name.to_ascii_lowercase(), s.certificate.id));
            }
            Err(_) => {
                self.snis.remove(e.id());
            }
        }
    }

    /// Remake the name lookups from the SNIs and the loaded certificates.
    fn index(&mut self) {
        for (name, cert) in self.snis.values() {
            let Some(ck) = self.loaded.get(cert) else {
                continue;
            };
            match name.strip_prefix('*') {
                Some(suffix) => self.wildcard.push((suffix.to_string(), ck.clone())),
                None => {
                    self.exact.insert(name.clone(), ck.clone());
                }
            }
        }
        // Longest suffix first, so the most specific wildcard wins (then by name, so that the
        // order does not depend on the map's).
        self.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, c)| c.clone())
    }
}

/// Chooses the certificate of each TLS handshake from the current snapshot.
pub struct Resolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
    default: Arc<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .finish()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.snapshot.load();
        let chosen = hello
            .server_name()
            .and_then(|n| snap.certs.find(n))
            .unwrap_or_else(|| self.default.clone());
        if snap.plugins.is_empty() {
            return Some(chosen);
        }
        // The certificate phase: plugins may present another certificate, or refuse.
        let mut ctx = crate::plugins::CertCtx {
            server_name: hello.server_name(),
            certificate: Some(chosen),
        };
        snap.plugins.run_certificate(&mut ctx);
        ctx.certificate
    }
}

/// A self-signed certificate for names no configured certificate covers.
pub fn default_cert() -> Result<CertifiedKey, CertError> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    certified_key(&ck.cert.pem(), &ck.signing_key.serialize_pem())
}

/// The TLS acceptor of the proxy listeners.
pub fn acceptor(
    snapshot: Arc<ArcSwap<Snapshot>>,
) -> Result<tokio_rustls::TlsAcceptor, crate::error::SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver {
            snapshot,
            default: Arc::new(default_cert()?),
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{CertCtx, Plugin, PluginSet};

    /// Presents its own certificate for `plugin.test` and refuses `refused.test`.
    struct Swap(Arc<CertifiedKey>);

    impl Plugin for Swap {
        fn certificate(&self, ctx: &mut CertCtx<'_>) {
            match ctx.server_name {
                Some("plugin.test") => ctx.certificate = Some(self.0.clone()),
                Some("refused.test") => ctx.certificate = None,
                _ => {}
            }
        }
    }

    /// The certificate a client is shown for `sni`, or the handshake's error.
    async fn presented(acc: &tokio_rustls::TlsAcceptor, sni: &str) -> Result<Vec<u8>, String> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let acc = acc.clone();
        let server = tokio::spawn(async move { acc.accept(server).await.map(|_| ()) });
        let tls = crate::upstream_tls::Connectors::new()
            .connect(client, sni, false, false)
            .await
            .map_err(|e| e.to_string())?;
        let _ = server.await;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default())
    }

    #[tokio::test]
    async fn certificate_phase_replaces_or_refuses() {
        let own = rcgen::generate_simple_self_signed(vec!["plugin.test".to_string()]).unwrap();
        let key = certified_key(&own.cert.pem(), &own.signing_key.serialize_pem()).unwrap();
        let snap = Snapshot {
            plugins: Arc::new(PluginSet::global(vec![(
                "swap",
                Arc::new(Swap(Arc::new(key))),
            )])),
            ..Snapshot::empty()
        };
        let acc = acceptor(Arc::new(ArcSwap::from_pointee(snap))).unwrap();
        let der = own.cert.der().to_vec();
        assert_eq!(presented(&acc, "plugin.test").await.unwrap(), der);
        let other = presented(&acc, "other.test").await.unwrap();
        assert!(!other.is_empty() && other != der, "the default certificate");
        assert!(presented(&acc, "refused.test").await.is_err());
    }
}
