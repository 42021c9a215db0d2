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

/// Whether a JWK (RFC 7517) holds a key of a type it names, with the members that type needs,
/// each decoding as base64url of a plausible size: RSA (`n`, `e`), EC (`crv` P-256/384/521 with
/// `x`, `y` of its size), OKP (`crv` Ed25519/Ed448/X25519/X448 with `x`) and oct (`k`).
pub fn jwk_is_key(j: &serde_json::Map<String, serde_json::Value>) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let bytes = |k: &str| {
        j.get(k)
            .and_then(|v| v.as_str())
            .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
    };
    let s = |k: &str| j.get(k).and_then(|v| v.as_str());
    match s("kty") {
        Some("RSA") => {
            bytes("n").is_some_and(|n| n.len() >= 64) && bytes("e").is_some_and(|e| !e.is_empty())
        }
        Some("EC") => {
            let size = match s("crv") {
                Some("P-256") => 32,
                Some("P-384") => 48,
                Some("P-521") => 66,
                _ => return false,
            };
            bytes("x").is_some_and(|x| x.len() == size)
                && bytes("y").is_some_and(|y| y.len() == size)
        }
        Some("OKP") => {
            let size = match s("crv") {
                Some("Ed25519") | Some("X25519") => 32,
                Some("Ed448") => 57,
                Some("X448") => 56,
                _ => return false,
            };
            bytes("x").is_some_and(|x| x.len() == size)
        }
        Some("oct") => bytes("k").is_some_and(|k| !k.is_empty()),
        _ => false,
    }
}

/// Kong's checks of a PEM key pair: each key given reads as one (a public key as a
/// SubjectPublicKeyInfo), and a public key given with a private key is the private key's.
pub fn check_key_pair(private: Option<&str>, public: Option<&str>) -> Result<(), Invalid> {
    use x509_parser::prelude::FromDer;
    let public_bits = match public {
        Some(p) => {
            let block = Pem::iter_from_buffer(p.as_bytes())
                .next()
                .and_then(Result::ok)
                .filter(|b| b.label == "PUBLIC KEY")
                .ok_or_else(|| Invalid::from("could not load public key"))?;
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents)
                .map_err(|_| Invalid::from("could not load public key"))?;
            Some(spki.subject_public_key.data.to_vec())
        }
        None => None,
    };
    if let Some(k) = private {
        check_key(k).map_err(|_| Invalid::from("could not load private key"))?;
        // PKCS#8 keys are read whole; a PKCS#1 or SEC1 key is taken as its TLS layer would.
        if let (Ok(pair), Some(bits)) = (rcgen::KeyPair::from_pem(k), &public_bits) {
            use rcgen::PublicKeyData;
            if pair.der_bytes() != bits.as_slice() {
                return Err(Invalid::from("public key does not match private key"));
            }
        }
    }
    Ok(())
}
