//! A test certificate authority for `cluster_mtls = pki` and pinned data plane certificates.

use std::path::Path;

/// A test CA for `cluster_mtls = pki`.
pub struct Pki {
    dir: std::path::PathBuf,
    /// The CA certificate's path.
    pub ca: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Gantry test cluster CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&kp).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca: ca.display().to_string(),
            issuer: rcgen::Issuer::new(p, kp),
        }
    }

    /// A certificate for `name` signed by the CA, valid until `not_after` (year), or expired.
    pub fn leaf(&self, file: &str, name: &str, not_after_year: i32) -> (String, String) {
        self.leaf_between(file, name, 2020, not_after_year)
    }

    /// A certificate for `name` signed by the CA, valid between two years.
    pub fn leaf_between(
        &self,
        file: &str,
        name: &str,
        not_before_year: i32,
        not_after_year: i32,
    ) -> (String, String) {
        self.leaf_for(file, &[name], not_before_year, not_after_year)
    }

    /// A certificate for several names (the first is its common name) signed by the CA.
    pub fn leaf_for(
        &self,
        file: &str,
        names: &[&str],
        not_before_year: i32,
        not_after_year: i32,
    ) -> (String, String) {
        let name = names[0];
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.not_before = rcgen::date_time_ymd(not_before_year, 1, 1);
        p.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&kp, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        write_atomically(&c, cert.pem().as_bytes());
        write_atomically(&k, kp.serialize_pem().as_bytes());
        (c.display().to_string(), k.display().to_string())
    }
}

/// Write a file whole (a reader never sees half of it).
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A self-signed P-521 certificate and its key, as PEM (from openssl, under `dir`): a pair
/// rustls' ring provider cannot sign with, so a node cannot serve it.
pub fn p521_pair(dir: &Path) -> (String, String) {
    let (key, cert) = (dir.join("p521.key"), dir.join("p521.crt"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-521", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=p521.example", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(cert).expect("the certificate"),
        std::fs::read_to_string(key).expect("the key"),
    )
}
