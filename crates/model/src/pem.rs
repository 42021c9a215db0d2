//! PEM certificate and key checks, on x509-parser.

use sha2::{Digest, Sha256};
use x509_parser::pem::Pem;

use crate::typedefs::Invalid;

/// A parsed certificate's facts the model needs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// SHA-256 of the first certificate's DER, lowercase hex (Kong's `cert_digest`).
    pub digest: String,
    pub is_ca: bool,
    /// Expiry of the first certificate, Unix seconds.
    pub not_after: i64,
}

/// Parse a PEM chain: at least one certificate, each a valid X.509 structure.
pub fn parse_cert_chain(pem: &str) -> Result<CertInfo, Invalid> {
    let mut first: Option<CertInfo> = None;
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Invalid(format!("invalid certificate: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(Invalid::from(format!(
                "invalid certificate: unexpected PEM block '{}'",
                block.label
            )));
        }
        let x = block
            .parse_x509()
            .map_err(|e| Invalid(format!("invalid certificate: {e}")))?;
        if first.is_none() {
            let is_ca = x
                .basic_constraints()
                .ok()
                .flatten()
                .map(|b| b.value.ca)
                .unwrap_or(false);
            first = Some(CertInfo {
                digest: hex::encode(Sha256::digest(&block.contents)),
                is_ca,
                not_after: x.validity().not_after.timestamp(),
            });
        }
    }
    first.ok_or_else(|| Invalid::from("invalid certificate: no PEM certificate found"))
}

/// Check that a string holds one PEM private key.
pub fn check_key(pem: &str) -> Result<(), Invalid> {
    let mut it = Pem::iter_from_buffer(pem.as_bytes());
    match it.next() {
        Some(Ok(block)) if block.label.ends_with("PRIVATE KEY") && !block.contents.is_empty() => {
            Ok(())
        }
        Some(Ok(block)) => Err(Invalid::from(format!(
            "invalid key: unexpected PEM block '{}'",
            block.label
        ))),
        Some(Err(e)) => Err(Invalid::from(format!("invalid key: {e}"))),
        None => Err(Invalid::from("invalid key: no PEM private key found")),
    }
}

/// Whether a private key belongs to the first certificate of a chain: `Some(false)` when they
/// differ, `None` when the key's format cannot be read here (PKCS#1 / SEC1 keys), so the check
/// is left to the TLS layer that loads them.
pub fn key_matches_cert(cert_pem: &str, key_pem: &str) -> Option<bool> {
    use rcgen::PublicKeyData;
    let block = Pem::iter_from_buffer(cert_pem.as_bytes()).next()?.ok()?;
    let cert = block.parse_x509().ok()?;
    let key = rcgen::KeyPair::from_pem(key_pem).ok()?;
    Some(cert.public_key().subject_public_key.data.as_ref() == key.der_bytes())
}
