//! Reaching a control plane: a TCP connection, directly or through a forward proxy (HTTP
//! CONNECT, with basic authentication, over TLS for an `https` proxy).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gantry_conf::ForwardProxy;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to the control plane.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Open a stream to `target` (`host:port`), through `proxy` when given.
pub async fn dial(
    target: &str,
    proxy: Option<&ForwardProxy>,
    timeout: Duration,
) -> Result<BoxIo, crate::LinkError> {
    tokio::time::timeout(timeout, async {
        match proxy {
            None => TcpStream::connect(target)
                .await
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    Box::new(s) as BoxIo
                })
                .map_err(|e| crate::LinkError::Failed(format!("cannot connect to {target}: {e}"))),
            Some(p) => through_proxy(target, p).await,
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(crate::LinkError::Failed(format!(
            "timed out after {timeout:?} connecting to {target}"
        )))
    })
}

async fn through_proxy(target: &str, p: &ForwardProxy) -> Result<BoxIo, crate::LinkError> {
    let addr = format!("{}:{}", p.host, p.port);
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect to the forward proxy {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = if p.tls {
        let cfg = proxy_tls(p.verify)?;
        let name = rustls_pki_types::ServerName::try_from(p.host.clone())
            .map_err(|e| format!("forward proxy host '{}': {e}", p.host))?;
        Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with the forward proxy {addr} failed: {e}"))?,
        )
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("forward proxy {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(target)
        .header(hyper::header::HOST, target);
    if let Some((user, pass)) = &p.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req = req.header(hyper::header::PROXY_AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("CONNECT request: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("forward proxy {addr}: {e}"))?;
    match res.status() {
        s if s.is_success() => {}
        s
        @ (hyper::StatusCode::PROXY_AUTHENTICATION_REQUIRED | hyper::StatusCode::UNAUTHORIZED) => {
            return Err(crate::LinkError::Failed(format!(
                "the forward proxy {addr} refused the credentials in proxy_server ({s})"
            )))
        }
        s => {
            return Err(crate::LinkError::Failed(format!(
                "the forward proxy {addr} refused CONNECT {target}: {s}"
            )))
        }
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| format!("forward proxy {addr}: {e}"))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

fn proxy_tls(verify: bool) -> Result<Arc<rustls::ClientConfig>, crate::LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = if verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        b.with_root_certificates(roots).with_no_client_auth()
    } else {
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// `proxy_server_ssl_verify = off`: any certificate from the forward proxy is accepted (the
/// cluster connection inside is still mutually authenticated end to end).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
