//! Certificates, the service-account key and bearer tokens, generated in pure Rust.
//!
//! One ECDSA P-256 CA per control plane signs a serving certificate per API server (SANs 127.0.0.1,
//! localhost and the in-cluster names), so clients verify TLS for real instead of skipping it. The
//! service-account key pair is ECDSA too (kube-apiserver v1.20 accepts RSA or ECDSA keys).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Names a serving certificate is valid for.
const SERVING_NAMES: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "10.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
];

/// Files written by [`Pki::generate`].
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_cert_path: PathBuf,
    pub(crate) sa_key_path: PathBuf,
    pub(crate) sa_pub_path: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

/// A serving certificate and its key, as files.
#[derive(Debug)]
pub(crate) struct ServingCert {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
}

impl Pki {
    /// Writes `ca.crt`, `sa.key` and `sa.pub` into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::new()).context("CA parameters")?;
        ca_params.distinguished_name.push(DnType::CommonName, "tollgate-e2e CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("self-signing the CA")?;
        let ca_cert_path = dir.join("ca.crt");
        write(&ca_cert_path, &ca_cert.pem())?;

        let sa_key = KeyPair::generate().context("generating the service-account key")?;
        let sa_key_path = dir.join("sa.key");
        let sa_pub_path = dir.join("sa.pub");
        write(&sa_key_path, &sa_key.serialize_pem())?;
        write(&sa_pub_path, &sa_key.public_key_pem())?;

        Ok(Self {
            ca_cert_path,
            sa_key_path,
            sa_pub_path,
            ca_params,
            ca_key,
        })
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir`: a serving certificate signed by the CA.
    pub(crate) fn serving_cert(&self, dir: &Path, stem: &str) -> Result<ServingCert> {
        let key = KeyPair::generate().context("generating a serving key")?;
        let names: Vec<String> = SERVING_NAMES.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).context("serving-cert parameters")?;
        params.distinguished_name.push(DnType::CommonName, stem);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).context("signing a serving cert")?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok(ServingCert { cert_path, key_path })
    }
}

/// A random 32-hex-digit bearer token.
pub(crate) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_files_and_distinct_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let serving = pki.serving_cert(dir.path(), "apiserver").unwrap();
        for path in [&pki.ca_cert_path, &serving.cert_path] {
            assert!(
                std::fs::read_to_string(path)
                    .unwrap()
                    .starts_with("-----BEGIN CERTIFICATE-----")
            );
        }
        for path in [&pki.sa_key_path, &serving.key_path] {
            assert!(
                std::fs::read_to_string(path)
                    .unwrap()
                    .starts_with("-----BEGIN PRIVATE KEY-----")
            );
        }
        assert!(
            std::fs::read_to_string(&pki.sa_pub_path)
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
