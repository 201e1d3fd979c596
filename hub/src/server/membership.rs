//! The hub's side of joining: one-time join tokens, and short-lived client certificates signed for a cluster id
//! from the certificate signing request its spoke made in its own cluster (the hub never sees a spoke's key).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use tollgate_common::join::JoinToken;
use tollgate_proto::v1 as pb;

use crate::certs::{CLUSTER_PREFIX, check_id};

/// How long a join token works unless `--token-ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long a certificate signed for a spoke is valid unless `serve --spoke-cert-ttl` says otherwise.
pub const DEFAULT_SPOKE_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest certificate lifetime the hub signs: renewal at two thirds of it must still leave time to retry.
pub const MIN_SPOKE_CERT_TTL: Duration = Duration::from_secs(30);

/// Signs spoke client certificates with the client CA's key, and makes join tokens that pin the CA that signed the
/// hub's serving certificate.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The CA spokes verify the hub with: PEM, and its DER (whose SHA-256 tokens pin).
    serving_ca_pem: String,
    serving_ca_der: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// A PEM file's certificates, DER, in order.
fn certificates(pem: &str, what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.with_context(|| format!("{what}: not PEM"))?;
        if block.label == "CERTIFICATE" {
            ders.push(block.contents);
        }
    }
    if ders.is_empty() {
        bail!("{what}: no certificate");
    }
    Ok(ders)
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The chain a signing hub serves, and the CA in it that join tokens pin: `serving_chain` itself when it holds more
/// than one certificate (its last is the CA), else the certificate followed by the client CA when that CA signed it.
pub fn served_chain(serving_chain: &str, client_ca_pem: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let chain = certificates(serving_chain, "--tls-cert")?;
    if chain.len() > 1 {
        return Ok((serving_chain.to_string(), chain.last().cloned().expect("more than one")));
    }
    let client_ca_der = certificates(client_ca_pem, "--client-ca")?.remove(0);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).context("parsing --tls-cert")?;
    let (_, ca) = x509_parser::parse_x509_certificate(&client_ca_der).context("parsing --client-ca")?;
    if leaf.issuer().as_raw() != ca.subject().as_raw() || leaf.verify_signature(Some(ca.public_key())).is_err() {
        bail!(
            "join tokens pin the CA that signed the hub's certificate, which the hub must present: put that CA after \
             the certificate in --tls-cert (it is not --client-ca)"
        );
    }
    let mut served = serving_chain.trim_end().to_string();
    served.push('\n');
    served.push_str(&pem_of(&client_ca_der));
    Ok((served, client_ca_der))
}

impl Signer {
    /// Loads the client CA and its key, and the CA that signed the hub's serving certificate ([`served_chain`]),
    /// which join tokens pin.
    pub fn load(client_ca: &Path, client_ca_key: &Path, serving_chain: &str, ttl: Duration) -> anyhow::Result<Self> {
        if ttl < MIN_SPOKE_CERT_TTL {
            bail!(
                "--spoke-cert-ttl {}s: at least {}s",
                ttl.as_secs(),
                MIN_SPOKE_CERT_TTL.as_secs()
            );
        }
        let ca_pem = std::fs::read_to_string(client_ca).with_context(|| format!("reading {}", client_ca.display()))?;
        let key_pem =
            std::fs::read_to_string(client_ca_key).with_context(|| format!("reading {}", client_ca_key.display()))?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| format!("parsing {}", client_ca_key.display()))?;
        let client_ca_der = certificates(&ca_pem, "--client-ca")?.remove(0);
        {
            let (_, ca) = x509_parser::parse_x509_certificate(&client_ca_der).context("parsing --client-ca")?;
            if ca.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                bail!(
                    "--client-ca-key is not the key of --client-ca: the hub would sign certificates its own CA \
                     does not verify"
                );
            }
        }
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).with_context(|| format!("parsing {}", client_ca.display()))?;
        let (_, serving_ca_der) = served_chain(serving_chain, &ca_pem)?;
        Ok(Self {
            issuer,
            serving_ca_pem: pem_of(&serving_ca_der),
            serving_ca_der,
            ttl,
        })
    }

    /// A new join token for `cluster_id`.
    pub fn token(&self, cluster_id: &str) -> anyhow::Result<JoinToken> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
        Ok(JoinToken::new(cluster_id, random, &self.serving_ca_der))
    }

    /// A client certificate for `cluster_id` from the CSR (PEM): the CSR's signature is verified and only its public
    /// key is used; the identity and validity are the hub's. A CSR naming another identity is refused.
    pub fn issue(
        &self,
        cluster_id: &str,
        csr_pem: &str,
        now_unix_millis: i64,
    ) -> Result<pb::IssuedCertificate, String> {
        check_id(cluster_id, "cluster id").map_err(|e| e.to_string())?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("csrPem: not a valid signed certificate request ({e})"))?;
        let identity = format!("{CLUSTER_PREFIX}{cluster_id}");
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.iter().any(|san| *san != identity) {
            return Err(format!(
                "csrPem: it asks for {requested:?}; a certificate for cluster {cluster_id:?} names only {identity}"
            ));
        }
        let now = time::OffsetDateTime::from_unix_timestamp(now_unix_millis / 1000)
            .map_err(|e| format!("the hub's clock: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tollgate-spoke {cluster_id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![SanType::URI(
            identity
                .try_into()
                .map_err(|e| format!("cluster id {cluster_id:?}: {e}"))?,
        )];
        // Valid from this second: a certificate signed after a removal is never older than it.
        params.not_before = now;
        params.not_after = now + self.ttl;
        let certificate = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| format!("signing: {e}"))?;
        Ok(pb::IssuedCertificate {
            certificate_pem: certificate.pem(),
            ca_pem: self.serving_ca_pem.clone(),
            not_after_unix_millis: (now + self.ttl).unix_timestamp() * 1000,
        })
    }
}

/// The signer as last read from its files (the client CA, its key, the hub's certificate), read again when one of
/// them changes: a rotated client CA signs the certificates of joins and renewals from then on, as the listener
/// verifies with it. Files that cannot be used together (a CA written before its key) keep the previous signer.
#[derive(Debug)]
pub struct ReloadingSigner {
    files: SignerFiles,
    current: RwLock<SignerRead>,
}

#[derive(Debug)]
struct SignerFiles {
    client_ca: PathBuf,
    client_ca_key: PathBuf,
    serving_chain: PathBuf,
    ttl: Duration,
}

/// A signer, and its files' modification times when they were read.
#[derive(Debug)]
struct SignerRead {
    stamps: Vec<Option<SystemTime>>,
    signer: Arc<Signer>,
}

impl SignerFiles {
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        crate::certs::modification_times(
            [&self.client_ca, &self.client_ca_key, &self.serving_chain].map(PathBuf::as_path),
        )
    }

    fn read(&self) -> anyhow::Result<SignerRead> {
        // Stamped before reading: a write during the read is seen at the next check.
        let stamps = self.stamps();
        let chain = std::fs::read_to_string(&self.serving_chain)
            .with_context(|| format!("reading {}", self.serving_chain.display()))?;
        let signer = Signer::load(&self.client_ca, &self.client_ca_key, &chain, self.ttl)?;
        Ok(SignerRead {
            stamps,
            signer: Arc::new(signer),
        })
    }
}

impl ReloadingSigner {
    /// Reads the files once ([`Signer::load`], the serving chain from the file `serving_chain`); an error here stops
    /// the hub from starting.
    pub fn load(client_ca: &Path, client_ca_key: &Path, serving_chain: &Path, ttl: Duration) -> anyhow::Result<Self> {
        let files = SignerFiles {
            client_ca: client_ca.to_path_buf(),
            client_ca_key: client_ca_key.to_path_buf(),
            serving_chain: serving_chain.to_path_buf(),
            ttl,
        };
        let current = RwLock::new(files.read()?);
        Ok(Self { files, current })
    }

    /// The signer to use now.
    pub fn current(&self) -> Arc<Signer> {
        self.current.read().expect("signer lock").signer.clone()
    }

    /// Reads the files again if one changed since the last read; whether a change was taken.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = self.files.stamps();
        if stamps == self.current.read().expect("signer lock").stamps {
            return false;
        }
        match self.files.read() {
            Ok(read) => {
                *self.current.write().expect("signer lock") = read;
                tracing::info!(ca = %self.files.client_ca.display(), "Reloaded the client CA and its key: joins and renewals are signed with them");
                true
            }
            Err(error) => {
                // Marked as seen, so the error is logged once per change, not once a second.
                self.current.write().expect("signer lock").stamps = stamps;
                tracing::error!(
                    error = format!("{error:#}"),
                    "The client CA, its key or the hub's certificate changed but cannot be used together; signing \
                     with the previous ones"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Leaf, PeerIdentity, init_ca, issue, peer_certificate};

    fn csr_for(uri: &str) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, csr)
    }

    fn signer(dir: &Path, ttl: Duration) -> (Signer, String) {
        let (signer, chain) = signer_and_chain(dir, ttl);
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        (signer, served_chain(&chain, &ca).unwrap().0)
    }

    /// A client CA written before its key leaves the signer as it was; with its key (and the hub's certificate
    /// still served with the CA that signed it), the new CA signs.
    #[test]
    fn a_client_ca_written_before_its_key_keeps_the_previous_signer() {
        let dir = tempfile::tempdir().unwrap();
        let (_, chain) = signer_and_chain(dir.path(), Duration::from_secs(3600));
        let old_ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        std::fs::write(dir.path().join("hub.pem"), format!("{}\n{old_ca}", chain.trim_end())).unwrap();
        let reloading = ReloadingSigner::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca-key.pem"),
            &dir.path().join("hub.pem"),
            Duration::from_secs(3600),
        )
        .unwrap();
        let before = reloading.current();
        let rotated = tempfile::tempdir().unwrap();
        init_ca(rotated.path()).unwrap();
        let touch = |name: &str, seconds: u64| {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .unwrap()
                .set_modified(SystemTime::now() + Duration::from_secs(seconds))
                .unwrap();
        };
        std::fs::copy(rotated.path().join("ca.pem"), dir.path().join("ca.pem")).unwrap();
        touch("ca.pem", 5);
        assert!(!reloading.reload_if_changed(), "the new CA without its key");
        assert!(Arc::ptr_eq(&before, &reloading.current()));
        std::fs::copy(rotated.path().join("ca-key.pem"), dir.path().join("ca-key.pem")).unwrap();
        touch("ca-key.pem", 10);
        assert!(reloading.reload_if_changed());
        let (_, csr) = csr_for("tollgate://cluster/a");
        let issued = reloading
            .current()
            .issue("a", &csr, tollgate_process::unix_millis())
            .unwrap();
        let new_ca = std::fs::read_to_string(rotated.path().join("ca.pem")).unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(issued.certificate_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(new_ca.as_bytes()).unwrap();
        assert!(
            leaf.parse_x509()
                .unwrap()
                .verify_signature(Some(ca.parse_x509().unwrap().public_key()))
                .is_ok(),
            "signed by the new CA"
        );
        assert_eq!(
            issued.ca_pem.trim(),
            old_ca.trim(),
            "the hub is still verified with the old CA"
        );
    }

    fn signer_and_chain(dir: &Path, ttl: Duration) -> (Signer, String) {
        init_ca(dir).unwrap();
        let (hub, _) = issue(
            dir,
            dir,
            &Leaf::Hub {
                dns_names: vec!["localhost".into()],
                addresses: vec![],
            },
        )
        .unwrap();
        let chain = std::fs::read_to_string(hub).unwrap();
        let signer = Signer::load(&dir.join("ca.pem"), &dir.join("ca-key.pem"), &chain, ttl).unwrap();
        (signer, chain)
    }

    #[test]
    fn a_csr_becomes_a_short_lived_certificate_for_its_cluster_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, served) = signer(dir.path(), Duration::from_secs(60));
        assert_eq!(
            served.matches("BEGIN CERTIFICATE").count(),
            2,
            "the hub serves its CA after its certificate"
        );
        let (key, csr) = csr_for("tollgate://cluster/prod-eu");
        let issued = signer.issue("prod-eu", &csr, 1_700_000_000_123).unwrap();
        let der = certificates(&issued.certificate_pem, "issued").unwrap().remove(0);
        let certificate = peer_certificate(&der).unwrap();
        assert_eq!(certificate.identity, PeerIdentity::Cluster("prod-eu".into()));
        assert_eq!(certificate.not_before_unix_millis, 1_700_000_000_000);
        assert_eq!(certificate.not_after_unix_millis, 1_700_000_060_000);
        assert_eq!(issued.not_after_unix_millis, 1_700_000_060_000);
        // The certificate carries the CSR's public key: the spoke's key, which the hub never saw.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.public_key().subject_public_key.data.as_ref(), key.der_bytes());
        assert_eq!(
            issued.ca_pem,
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap()
        );

        // Another identity, a tampered or foreign request: refused with the field.
        let (_, other) = csr_for("tollgate://cluster/dev");
        let refused = signer.issue("prod-eu", &other, 0).unwrap_err();
        assert!(
            refused.contains("csrPem: it asks for [\"tollgate://cluster/dev\"]"),
            "{refused}"
        );
        let (_, admin) = csr_for("tollgate://admin/alice");
        assert!(signer.issue("prod-eu", &admin, 0).is_err());
        let tampered = csr.replacen("MI", "MJ", 1);
        assert!(
            signer
                .issue("prod-eu", &tampered, 0)
                .unwrap_err()
                .starts_with("csrPem:")
        );
        assert!(
            signer
                .issue("Bad_Id", &csr, 0)
                .unwrap_err()
                .contains("invalid cluster id")
        );
    }

    #[test]
    fn tokens_pin_the_ca_that_signed_the_hubs_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = signer(dir.path(), DEFAULT_SPOKE_CERT_TTL);
        let token = signer.token("c1").unwrap();
        let ca = certificates(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(), "ca")
            .unwrap()
            .remove(0);
        assert_eq!(token.ca_sha256, tollgate_common::join::sha256_hex(&ca));
        assert_ne!(signer.token("c1").unwrap().secret, token.secret, "random");
    }

    #[test]
    fn a_key_of_another_ca_or_a_serving_certificate_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = signer(dir.path(), DEFAULT_SPOKE_CERT_TTL);
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path()).unwrap();
        let chain = std::fs::read_to_string(dir.path().join("hub.pem")).unwrap();
        let wrong_key = Signer::load(
            &dir.path().join("ca.pem"),
            &other.path().join("ca-key.pem"),
            &chain,
            DEFAULT_SPOKE_CERT_TTL,
        )
        .unwrap_err();
        assert!(
            wrong_key.to_string().contains("is not the key of --client-ca"),
            "{wrong_key}"
        );
        let foreign = Signer::load(
            &other.path().join("ca.pem"),
            &other.path().join("ca-key.pem"),
            &chain,
            DEFAULT_SPOKE_CERT_TTL,
        )
        .unwrap_err();
        assert!(
            foreign.to_string().contains("put that CA after the certificate"),
            "{foreign}"
        );
        let short = Signer::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca-key.pem"),
            &chain,
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(short.to_string().contains("at least 30s"), "{short}");
    }
}
