//! TLS towards upstreams (`https` services). As Kong (`proxy_ssl_verify off` by default), the
//! upstream's certificate is verified only when the service sets `tls_verify`; then against the
//! Mozilla root store. Signatures of the handshake are always checked.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate chain, still checking the handshake's signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connectors by (verify the certificate, offer HTTP/2 by ALPN), then two without ALPN (for
/// protocols other than HTTP, such as Redis), without and with verification.
pub struct Connectors {
    by_kind: [Option<TlsConnector>; 6],
}

impl Connectors {
    pub fn new() -> Connectors {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |verify: bool, alpn: Option<bool>| -> Option<TlsConnector> {
            let b = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .ok()?;
            let mut cfg = if verify {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                b.with_root_certificates(roots).with_no_client_auth()
            } else {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
                    .with_no_client_auth()
            };
            cfg.alpn_protocols = match alpn {
                Some(true) => vec![b"h2".to_vec()],
                Some(false) => vec![b"http/1.1".to_vec()],
                None => vec![],
            };
            Some(TlsConnector::from(Arc::new(cfg)))
        };
        Connectors {
            by_kind: [
                build(false, Some(false)),
                build(false, Some(true)),
                build(true, Some(false)),
                build(true, Some(true)),
                build(false, None),
                build(true, None),
            ],
        }
    }

    /// TLS on a connected stream, with `sni` as the server name.
    pub async fn connect<S>(
        &self,
        stream: S,
        sni: &str,
        verify: bool,
        h2: bool,
    ) -> std::io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.connect_with(stream, sni, usize::from(verify) * 2 + usize::from(h2))
            .await
    }

    /// TLS without ALPN, for a protocol other than HTTP.
    pub async fn connect_bare<S>(
        &self,
        stream: S,
        sni: &str,
        verify: bool,
    ) -> std::io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.connect_with(stream, sni, 4 + usize::from(verify))
            .await
    }

    async fn connect_with<S>(
        &self,
        stream: S,
        sni: &str,
        kind: usize,
    ) -> std::io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let connector = &self.by_kind[kind];
        let connector = connector
            .as_ref()
            .ok_or_else(|| std::io::Error::other("TLS client set-up failed"))?;
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        connector.connect(name, stream).await
    }
}

impl Default for Connectors {
    fn default() -> Self {
        Connectors::new()
    }
}
