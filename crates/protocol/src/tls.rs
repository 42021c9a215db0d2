//! Cluster certificates and the mTLS both ways.
//!
//! - `shared`: control and data planes hold the same certificate; each side accepts exactly
//!   that certificate from the other (pinned), within its validity period.
//! - `pki`: the control plane accepts data plane certificates signed by `cluster_ca_cert`; the
//!   data plane checks the control plane's certificate against `cluster_ca_cert` (or
//!   `lua_ssl_trusted_certificate`, e.g. `system`) for the name `cluster_server_name`.
//!
//! A certificate setting holds a path, PEM text, or base64-encoded PEM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use gantry_conf::{ClusterSettings, Mtls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// A certificate or key setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn setting(key: &'static str, reason: impl Into<String>) -> TlsError {
    TlsError::Setting {
        key,
        reason: reason.into(),
    }
}

/// Where a PEM setting's value comes from, so a file can be watched for rotation.
pub fn setting_path(value: &str) -> Option<PathBuf> {
    (!value.contains("-----BEGIN") && Path::new(value).is_file()).then(|| PathBuf::from(value))
}

/// The PEM text of a setting: the value itself, the file it names, or its base64 decoding.
pub fn read_pem(key: &'static str, value: &str) -> Result<Vec<u8>, TlsError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(setting(key, "not set"));
    }
    if value.contains("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    if let Some(path) = setting_path(value) {
        return std::fs::read(&path)
            .map_err(|e| setting(key, format!("cannot read {}: {e}", path.display())));
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value) {
        if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            return Ok(bytes);
        }
    }
    // A private key's value is a secret: never echoed, whatever it holds.
    let shown = if key.ends_with("_key") {
        format!(
            "the value ({} characters, not shown)",
            value.chars().count()
        )
    } else {
        format!("'{value}'")
    };
    Err(setting(
        key,
        format!("{shown} is neither a readable file, PEM text, nor base64-encoded PEM"),
    ))
}

/// The certificates of a PEM setting (at least one).
pub fn certs(key: &'static str, value: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(key, value)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| setting(key, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(setting(key, "no certificate in it"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| setting(key, format!("invalid certificate: {e}")))?;
    }
    Ok(certs)
}

/// The private key of a PEM setting.
pub fn key(key: &'static str, value: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(key, value)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| setting(key, format!("no usable private key: {e}")))
}

/// A certificate's validity period, Unix seconds.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Where a moment stands against a certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// Not valid before this (Unix seconds): a clock behind, or a certificate from the future.
    NotYet {
        not_before: i64,
    },
    Expired {
        not_after: i64,
    },
}

/// Where `now` (Unix seconds) stands against the validity of `cert` (DER).
pub fn validity_at(cert: &[u8], now: i64) -> Option<Validity> {
    let (not_before, not_after) = validity(cert)?;
    Some(if now > not_after {
        Validity::Expired { not_after }
    } else if now < not_before {
        Validity::NotYet { not_before }
    } else {
        Validity::Valid
    })
}

/// Where this node's `cluster_cert` stands now. TLS peers report a certificate that is not yet
/// valid with the same alert as an expired one (`CertificateExpired`), so a node checks its own
/// and says which.
pub fn own_validity(s: &ClusterSettings) -> Option<Validity> {
    let chain = certs("cluster_cert", &s.cert).ok()?;
    validity_at(&chain[0], gantry_model::unix_now())
}

/// When this node's `cluster_cert` expires (Unix seconds), read from its setting now, so that
/// a rotated certificate is the one reported.
pub fn own_not_after(s: &ClusterSettings) -> Option<i64> {
    let chain = certs("cluster_cert", &s.cert).ok()?;
    validity(&chain[0]).map(|(_, not_after)| not_after)
}

/// When this node's `cluster_cert` has expired, its expiry (Unix seconds).
pub fn expired(s: &ClusterSettings) -> Option<i64> {
    match own_validity(s)? {
        Validity::Expired { not_after } => Some(not_after),
        _ => None,
    }
}

/// When this node's `cluster_cert` is not valid yet, the time it becomes so (Unix seconds).
pub fn not_yet_valid(s: &ClusterSettings) -> Option<i64> {
    match own_validity(s)? {
        Validity::NotYet { not_before } => Some(not_before),
        _ => None,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The reason, readable by an operator, for a rustls error carrying ours.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

fn refuse(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refusal(msg)),
    )))
}

/// Accept exactly one certificate, within its validity period.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    who: &'static str,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        if presented.as_ref() != self.cert.as_ref() {
            return Err(refuse(format!(
                "the {} presented a certificate that is not the pinned cluster_cert (cluster_mtls = shared)",
                self.who
            )));
        }
        let now = now.as_secs() as i64;
        match validity(presented) {
            Some((_, not_after)) if now > not_after => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            )),
            Some((not_before, _)) if now < not_before => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet,
            )),
            Some(_) => Ok(()),
            None => Err(refuse(format!(
                "the {}'s certificate does not parse",
                self.who
            ))),
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|_| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|_| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn roots(
    key: &'static str,
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store
            .add(c)
            .map_err(|e| setting(key, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The data plane certificates the control planes other than the default accept: pinned ones
/// (`pinned_client_certs`, by the SHA-256 of their DER) and CAs (`pki_client_certs`), each
/// owned by one control plane (its key). Swapped whole when one changes.
#[derive(Default)]
pub struct PinSet {
    pinned: std::collections::HashMap<[u8; 32], Vec<i64>>,
    cas: Vec<(i64, Arc<dyn ClientCertVerifier>)>,
}

impl std::fmt::Debug for PinSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinSet")
            .field("pinned", &self.pinned.len())
            .field("cas", &self.cas.len())
            .finish()
    }
}

/// SHA-256 of a certificate's DER: how a pinned certificate is known.
pub fn digest(cert: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(cert).into()
}

impl PinSet {
    /// `certs`: (control plane key, PEM certificate, whether it is a CA for `pki_client_certs`).
    /// A certificate that does not parse is left out, and logged.
    pub fn build<'a>(certs: impl IntoIterator<Item = (i64, &'a str, bool)>) -> PinSet {
        let mut set = PinSet::default();
        for (cp, pem, ca) in certs {
            let der = match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
                Some(Ok(d)) => d,
                _ => {
                    tracing::warn!(
                        control_plane = cp,
                        "a pinned data plane certificate does not parse; left out"
                    );
                    continue;
                }
            };
            if ca {
                let mut store = rustls::RootCertStore::empty();
                let built = store.add(der).ok().and_then(|_| {
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(store),
                        provider(),
                    )
                    .build()
                    .ok()
                });
                match built {
                    Some(v) => set.cas.push((cp, v)),
                    None => tracing::warn!(
                        control_plane = cp,
                        "a data plane CA certificate is not usable; left out"
                    ),
                }
            } else {
                set.pinned.entry(digest(der.as_ref())).or_default().push(cp);
            }
        }
        set
    }

    /// The control planes that accept `cert` (with `intermediates`) at `now`, by pin or by CA.
    pub fn owners(
        &self,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .pinned
            .get(&digest(cert.as_ref()))
            .cloned()
            .unwrap_or_default();
        if !out.is_empty() && !within_validity(cert, now) {
            out.clear();
        }
        for (cp, v) in &self.cas {
            if v.verify_client_cert(cert, intermediates, now).is_ok() && !out.contains(cp) {
                out.push(*cp);
            }
        }
        out
    }
}

fn within_validity(cert: &CertificateDer<'_>, now: UnixTime) -> bool {
    let now = now.as_secs() as i64;
    validity(cert).is_some_and(|(nb, na)| now >= nb && now <= na)
}

/// The pin set a control plane hosting several shares with its TLS listener.
pub type Pins = Arc<arc_swap::ArcSwap<PinSet>>;

/// Accepts what `cluster_mtls` accepts (the default control plane's data planes), or a
/// certificate some other control plane pins or whose CA it holds. Which control plane a data
/// plane belongs to is decided after the handshake, from the certificate and the SNI.
#[derive(Debug)]
struct Hosted {
    base: Arc<dyn ClientCertVerifier>,
    pins: Pins,
}

impl ClientCertVerifier for Hosted {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.base.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.base.verify_client_cert(end_entity, intermediates, now) {
            Ok(v) => Ok(v),
            Err(e) => {
                if self
                    .pins
                    .load()
                    .owners(end_entity, intermediates, now)
                    .is_empty()
                {
                    Err(e)
                } else {
                    Ok(ClientCertVerified::assertion())
                }
            }
        }
    }
    // A handshake signature is checked alike whatever the trust: as the base verifier does.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.base.supported_verify_schemes()
    }
}

/// Whether the default control plane (by `cluster_mtls`) accepts this data plane certificate.
pub fn default_accepts(
    s: &ClusterSettings,
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> bool {
    base_verifier(s, provider())
        .is_ok_and(|v| v.verify_client_cert(cert, intermediates, now).is_ok())
}

fn base_verifier(
    s: &ClusterSettings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(match s.mtls {
        Mtls::Shared => Arc::new(Pinned {
            cert: certs("cluster_cert", &s.cert)?[0].clone(),
            provider,
            who: "data plane",
        }),
        Mtls::Pki => {
            let ca = certs("cluster_ca_cert", &s.ca_cert)?;
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots("cluster_ca_cert", ca)?,
                provider,
            )
            .build()
            .map_err(|e| setting("cluster_ca_cert", e.to_string()))?
        }
    })
}

/// The TLS of a control plane hosting several: [`server_config`]'s, also accepting what the
/// other control planes pin (`pins`, which may change while it runs).
pub fn hosted_server_config(
    s: &ClusterSettings,
    pins: Pins,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = Arc::new(Hosted {
        base: base_verifier(s, provider())?,
        pins,
    });
    finish_server_config(s, verifier)
}

/// The control plane's TLS: its certificate, and data plane certificates checked as
/// `cluster_mtls` says.
pub fn server_config(s: &ClusterSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = base_verifier(s, provider())?;
    finish_server_config(s, verifier)
}

fn finish_server_config(
    s: &ClusterSettings,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs("cluster_cert", &s.cert)?;
    let key = key("cluster_cert_key", &s.cert_key)?;
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            setting(
                "cluster_cert_key",
                format!("does not match cluster_cert: {e}"),
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The data plane's TLS: its certificate, and the control plane's checked as `cluster_mtls`
/// says. Read afresh on each connection, so rotated files take effect on the next one.
pub fn client_config(s: &ClusterSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let chain = certs("cluster_cert", &s.cert)?;
    let key = key("cluster_cert_key", &s.cert_key)?;
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match s.mtls {
        Mtls::Shared => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                cert: chain[0].clone(),
                provider,
                who: "control plane",
            })),
        Mtls::Pki => builder.with_root_certificates(trust_roots(s)?),
    };
    let mut cfg = builder.with_client_auth_cert(chain, key).map_err(|e| {
        setting(
            "cluster_cert_key",
            format!("does not match cluster_cert: {e}"),
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The CAs a data plane trusts for the control plane in `pki` mode.
fn trust_roots(s: &ClusterSettings) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    if !s.ca_cert.is_empty() {
        return roots("cluster_ca_cert", certs("cluster_ca_cert", &s.ca_cert)?);
    }
    let mut all = Vec::new();
    for t in &s.trusted {
        if t == "system" {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(setting(
                    "lua_ssl_trusted_certificate",
                    "'system' found no CA certificates on this machine",
                ));
            }
            all.extend(found.certs);
        } else {
            all.extend(certs("lua_ssl_trusted_certificate", t)?);
        }
    }
    if all.is_empty() {
        return Err(setting(
            "cluster_ca_cert",
            "cluster_mtls = pki needs cluster_ca_cert or lua_ssl_trusted_certificate on a data plane",
        ));
    }
    let mut store = rustls::RootCertStore::empty();
    // `system` bundles may hold certificates webpki cannot use; skip those.
    store.add_parsable_certificates(all);
    Ok(Arc::new(store))
}

/// The name a data plane asks for (SNI).
pub fn server_name(s: &ClusterSettings) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(s.server_name.clone())
        .map_err(|e| setting("cluster_server_name", e.to_string()))
}

/// `gantry hybrid gen_cert`: a self-signed P-384 certificate for `kong_clustering`, valid for
/// `days` days, written to `cert` and `key` (mode 0600). Refuses to overwrite either file.
pub fn gen_cert(cert: &Path, key: &Path, days: u32) -> Result<(), TlsError> {
    for p in [cert, key] {
        if p.exists() {
            return Err(TlsError::File {
                path: p.display().to_string(),
                reason: "already exists; remove it first or choose other paths".into(),
            });
        }
    }
    let (cert_pem, key_pem) = self_signed("kong_clustering", days as i64 * 86_400)?;
    write_new(cert, cert_pem.as_bytes(), 0o644)?;
    write_new(key, key_pem.as_bytes(), 0o600)?;
    Ok(())
}

/// A self-signed P-384 certificate for `name`, valid from a minute ago for `valid_secs`
/// (negative: already expired). Returns PEM certificate and key.
pub fn self_signed(name: &str, valid_secs: i64) -> Result<(String, String), TlsError> {
    let gen = |e: rcgen::Error| setting("cluster_cert", format!("cannot generate: {e}"));
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(gen)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(gen)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = if valid_secs < 0 {
        now + time::Duration::seconds(valid_secs * 2)
    } else {
        now - time::Duration::minutes(1)
    };
    params.not_after = now + time::Duration::seconds(valid_secs);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&kp).map_err(gen)?;
    Ok((cert.pem(), kp.serialize_pem()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key setting that is not a key is refused without its value in the message (issue
    /// 17's item 5); other settings name what they were given.
    /// A certificate's period: not yet valid, valid, expired.
    #[test]
    fn validity_says_which_side_of_the_period() {
        let mut p = rcgen::CertificateParams::new(vec!["dp".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        p.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let ymd = |y| rcgen::date_time_ymd(y, 6, 1).unix_timestamp();
        let nb = rcgen::date_time_ymd(2030, 1, 1).unix_timestamp();
        let na = rcgen::date_time_ymd(2031, 1, 1).unix_timestamp();
        assert_eq!(
            validity_at(&der, ymd(2029)),
            Some(Validity::NotYet { not_before: nb })
        );
        assert_eq!(validity_at(&der, ymd(2030)), Some(Validity::Valid));
        assert_eq!(
            validity_at(&der, ymd(2031)),
            Some(Validity::Expired { not_after: na })
        );
    }

    #[test]
    fn a_bad_key_setting_is_not_echoed() {
        let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC-not-really";
        let e = key("cluster_cert_key", secret).unwrap_err().to_string();
        assert!(!e.contains(secret) && !e.contains("MIIE"), "{e}");
        assert!(e.starts_with("cluster_cert_key: the value ("), "{e}");
        let e = certs("cluster_cert", "nope").unwrap_err().to_string();
        assert!(e.contains("'nope'"), "{e}");
    }
}
