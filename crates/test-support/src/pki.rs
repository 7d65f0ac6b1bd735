//! A throwaway certificate authority for TLS tests (feature `pki`): a CA and the
//! certificates it signs, made with `rcgen` at test time and written as PEM files in
//! a fresh temp directory, so real clients (`curl --cacert`, `openssl s_client
//! -CAfile`, Python's `ssl`) and our own programs (`--tls-cert`, `--ca`) can use
//! them. Nothing here is meant to be secure; it is meant to be valid.

use std::path::PathBuf;

/// A CA and the certificates it signed, as PEM files in one temp dir.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, as PEM text (also written to files).
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// Where `cert_pem` was written.
    pub cert_path: PathBuf,
    /// Where `key_pem` was written.
    pub key_path: PathBuf,
}

impl Pki {
    /// A new CA; its certificate is `ca.pem` in a fresh directory named after
    /// `name` (and this process).
    pub fn new(name: &str) -> Pki {
        let dir = crate::tmpdir("tls", name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reactor test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca: rcgen::Issuer::new(ca_params, ca_key),
        }
    }

    /// A file in the CA's directory.
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path("ca.pem")).unwrap()
    }

    /// A certificate for `names` (DNS names or IP addresses; the first is also the
    /// common name) signed by the CA, written as `file.pem` and `file.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: self.path(&format!("{file}.pem")),
            key_path: self.path(&format!("{file}.key")),
        };
        std::fs::write(&issued.cert_path, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_path, &issued.key_pem).unwrap();
        issued
    }
}
