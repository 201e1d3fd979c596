//! The spoke's identity when it joins with a token: it makes its key pair here, in the cluster, checks the hub's CA
//! against the token's pin before sending anything, sends a certificate signing request, and keeps the key and the
//! certificate the hub signed in a Secret of its namespace, so that it survives its own restarts without the
//! token. It renews over mTLS at two thirds of the certificate's lifetime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tollgate_common::join::{JoinToken, sha256_hex};
use tollgate_proto::v1::membership_client::MembershipClient;
use tollgate_proto::v1::{self as pb};
use tonic::Status;
use tonic::transport::Channel;

use crate::reconcile::FIELD_MANAGER;

/// The keys of the identity Secret, as in a `kubernetes.io/tls` Secret plus the hub's CA.
const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// Renewal retries at most this often while the certificate is still valid.
const RETRY_CAP: Duration = Duration::from_secs(30);
/// How soon an identity that could not be written to its Secret is written again.
const UNSAVED_RETRY: Duration = Duration::from_secs(5);

/// A client identity the hub signed: key, certificate, and the CA to verify the hub with.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before_unix_millis: i64,
    pub not_after_unix_millis: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("not_before_unix_millis", &self.not_before_unix_millis)
            .field("not_after_unix_millis", &self.not_after_unix_millis)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the validity and checks that the certificate names `cluster_id`.
    fn new(cluster_id: &str, ca_pem: String, cert_pem: String, key_pem: String) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| format!("tls.crt: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).map_err(|e| format!("tls.crt: {e}"))?;
        let expected = format!("tollgate://cluster/{cluster_id}");
        let names_cluster = cert.subject_alternative_name().ok().flatten().is_some_and(|sans| {
            sans.value
                .general_names
                .iter()
                .any(|name| matches!(name, x509_parser::extensions::GeneralName::URI(uri) if *uri == expected))
        });
        if !names_cluster {
            return Err(format!("tls.crt is not a certificate of cluster {cluster_id:?}"));
        }
        let validity = cert.validity();
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            not_before_unix_millis: validity.not_before.timestamp() * 1000,
            not_after_unix_millis: validity.not_after.timestamp() * 1000,
        })
    }

    /// When to renew: two thirds into the certificate's lifetime.
    pub fn renew_at_unix_millis(&self) -> i64 {
        self.not_before_unix_millis + (self.not_after_unix_millis - self.not_before_unix_millis) * 2 / 3
    }

    /// The TLS of connections to the hub with this identity, from `sessions` (the sessions begun with it resumed).
    pub fn client_config(&self, sessions: &crate::hub_tls::Sessions) -> Result<Arc<rustls::ClientConfig>, String> {
        sessions.config(
            self.ca_pem.as_bytes(),
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )
    }
}

/// A new key pair and a certificate signing request for `cluster_id`, PEM: (key, request).
fn request(cluster_id: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        format!("tollgate://cluster/{cluster_id}")
            .try_into()
            .map_err(|e| format!("cluster id {cluster_id:?}: {e}"))?,
    )];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("making the certificate request: {e}"))?;
    Ok((key.serialize_pem(), csr))
}

/// Accepts the hub's certificate only when it chains to the CA whose SHA-256 the join token pins (the hub presents
/// that CA after its certificate); the usual checks (signature, validity, name) then run against that CA alone.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|ca| sha256_hex(ca) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the hub presents no CA with the join token's pin sha256:{}: refusing to send the join request",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel to `url` whose TLS accepts only a hub presenting the pinned CA, and no client certificate.
async fn pinned_channel(url: &str, pin: &str, server_name: Option<&str>) -> Result<Channel, Status> {
    let unavailable = |e: &dyn std::fmt::Display| Status::unavailable(format!("joining through {url}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    crate::hub_tls::channel(
        url,
        server_name,
        Arc::new(crate::hub_tls::with_h2(config)),
        |endpoint| endpoint.connect_timeout(Duration::from_secs(5)),
    )
    .await
    .map_err(|e| unavailable(&e))
}

/// The spoke's joined identity: in memory for every connection, in a Secret across restarts.
#[derive(Debug)]
pub struct Membership {
    cluster_id: String,
    secrets: Api<Secret>,
    secret_name: String,
    token_file: PathBuf,
    server_name: Option<String>,
    current: RwLock<Option<Identity>>,
    /// The identity in memory is not in the Secret yet (writing it failed): written again shortly.
    unsaved: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Membership {
    pub fn new(
        cluster_id: String,
        secrets: Api<Secret>,
        secret_name: String,
        token_file: PathBuf,
        server_name: Option<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            cluster_id,
            secrets,
            secret_name,
            token_file,
            server_name,
            current: RwLock::default(),
            unsaved: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// The TLS name to verify the hub with, when not the URL's host.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The identity in memory.
    pub fn current(&self) -> Option<Identity> {
        self.current.read().expect("identity lock").clone()
    }

    fn set(&self, identity: Identity) {
        self.metrics.record_certificate("client", identity.cert_pem.as_bytes());
        *self.current.write().expect("identity lock") = Some(identity);
    }

    /// The identity to connect with: the one in memory while valid, else the Secret's, else a new one from a join
    /// through `url` with the token file. Errors are statuses like a hub's: PermissionDenied when the hub refused
    /// the token, Unavailable for what may pass (a Secret or token file not there yet, the hub unreachable).
    pub async fn ensure(&self, url: &str) -> Result<Identity, Status> {
        let now = tollgate_process::unix_millis();
        if let Some(identity) = self.current().filter(|i| i.not_after_unix_millis > now) {
            if self.unsaved.load(std::sync::atomic::Ordering::Relaxed) {
                self.keep(&identity).await;
            }
            return Ok(identity);
        }
        match self.load().await {
            Ok(Some(identity)) if identity.not_after_unix_millis > now => {
                tracing::info!(secret = %self.secret_name, not_after = identity.not_after_unix_millis, "Using the identity kept in the Secret");
                self.set(identity.clone());
                return Ok(identity);
            }
            Ok(Some(_)) => {
                tracing::warn!(secret = %self.secret_name, "The certificate kept in the Secret has expired: joining again")
            }
            Ok(None) => {}
            Err(error) => return Err(Status::unavailable(error)),
        }
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            Status::unavailable(format!(
                "no valid certificate in Secret {} and the join token file {} cannot be read ({e}): make a token with \
                 `tollgate-hub clusters token {}`",
                self.secret_name,
                self.token_file.display(),
                self.cluster_id
            ))
        })?;
        let token = JoinToken::parse(&text)
            .map_err(|e| Status::invalid_argument(format!("{}: {e}", self.token_file.display())))?;
        if token.cluster_id != self.cluster_id {
            return Err(Status::invalid_argument(format!(
                "{}: the token is for cluster {:?}, this spoke is {:?}",
                self.token_file.display(),
                token.cluster_id,
                self.cluster_id
            )));
        }
        let (key_pem, csr_pem) = request(&self.cluster_id).map_err(Status::internal)?;
        let channel = pinned_channel(url, &token.ca_sha256, self.server_name.as_deref()).await?;
        let issued = MembershipClient::new(channel)
            .join(pb::JoinRequest {
                cluster_id: self.cluster_id.clone(),
                token_secret: token.secret.clone(),
                csr_pem,
            })
            .await?
            .into_inner();
        let identity = Identity::new(&self.cluster_id, issued.ca_pem, issued.certificate_pem, key_pem)
            .map_err(|e| Status::internal(format!("the hub's certificate: {e}")))?;
        // In memory first: the token is used up, so the identity must not be lost to a failed Secret write.
        self.set(identity.clone());
        self.keep(&identity).await;
        tracing::info!(hub = %url, not_after = identity.not_after_unix_millis, "Joined the hub: a certificate for this cluster, its key made here");
        Ok(identity)
    }

    /// Renews the certificate through `url` with the current one; the new key is made here.
    async fn renew(&self, url: &str, current: &Identity) -> Result<Identity, Status> {
        // A connection of its own, once in a while: no session to resume.
        let config = crate::hub_tls::client_config(
            current.ca_pem.as_bytes(),
            current.cert_pem.as_bytes(),
            current.key_pem.as_bytes(),
        )
        .map(Arc::new)
        .map_err(|e| Status::internal(format!("this cluster's identity: {e}")))?;
        let channel = crate::hub_tls::channel(url, self.server_name.as_deref(), config, |endpoint| {
            endpoint.connect_timeout(Duration::from_secs(5))
        })
        .await
        .map_err(|e| Status::unavailable(format!("connecting to {url}: {e}")))?;
        let (key_pem, csr_pem) = request(&self.cluster_id).map_err(Status::internal)?;
        let issued = MembershipClient::new(channel)
            .renew(pb::RenewRequest { csr_pem })
            .await?
            .into_inner();
        Identity::new(&self.cluster_id, issued.ca_pem, issued.certificate_pem, key_pem)
            .map_err(|e| Status::internal(format!("the hub's certificate: {e}")))
    }

    /// Writes the identity to the Secret; on failure it stays in memory and is written again soon (the renewal task)
    /// and at the next connection.
    async fn keep(&self, identity: &Identity) {
        match self.save(identity).await {
            Ok(()) => self.unsaved.store(false, std::sync::atomic::Ordering::Relaxed),
            Err(error) => {
                self.unsaved.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%error, "Could not keep this cluster's identity in its Secret: it is used from memory and written again shortly");
            }
        }
    }

    /// Renews at two thirds of each certificate's lifetime, through each hub address in turn, for as long as the
    /// spoke runs; retries (at most every 30 s) until it succeeds. New connections use the new certificate.
    pub async fn renew_forever(self: Arc<Self>, urls: Vec<String>) {
        let mut attempt = 0usize;
        loop {
            let Some(current) = self.current() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if self.unsaved.load(std::sync::atomic::Ordering::Relaxed) {
                self.keep(&current).await;
            }
            let now = tollgate_process::unix_millis();
            let due = current.renew_at_unix_millis();
            if due > now {
                let mut wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                if self.unsaved.load(std::sync::atomic::Ordering::Relaxed) {
                    // The Secret write failed: try again soon, not only at the next renewal.
                    wait = wait.min(UNSAVED_RETRY);
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            let url = &urls[attempt % urls.len()];
            match self.renew(url, &current).await {
                Ok(identity) => {
                    self.set(identity.clone());
                    self.keep(&identity).await;
                    tracing::info!(hub = %url, not_after = identity.not_after_unix_millis, "Renewed this cluster's certificate");
                    attempt = 0;
                }
                Err(status) => {
                    attempt += 1;
                    let lifetime = current.not_after_unix_millis - current.not_before_unix_millis;
                    let wait =
                        Duration::from_millis(u64::try_from(lifetime / 20).unwrap_or(1000).max(1000)).min(RETRY_CAP);
                    tracing::warn!(hub = %url, code = ?status.code(), message = status.message(), retry_ms = wait.as_millis() as u64, not_after = current.not_after_unix_millis, "Could not renew this cluster's certificate");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The identity kept in the Secret, if it holds one of this cluster.
    async fn load(&self) -> Result<Option<Identity>, String> {
        let secret = match self.secrets.get_opt(&self.secret_name).await {
            Ok(secret) => secret,
            Err(e) => return Err(format!("reading Secret {}: {e}", self.secret_name)),
        };
        let Some(data) = secret.and_then(|s| s.data) else {
            return Ok(None);
        };
        let text = |key: &str| {
            data.get(key)
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .filter(|t| !t.trim().is_empty())
        };
        let (Some(ca), Some(cert), Some(key)) = (text(CA_KEY), text(CERT_KEY), text(KEY_KEY)) else {
            return Ok(None);
        };
        match Identity::new(&self.cluster_id, ca, cert, key) {
            Ok(identity) => Ok(Some(identity)),
            Err(error) => {
                tracing::warn!(secret = %self.secret_name, %error, "The Secret holds no usable identity: joining again");
                Ok(None)
            }
        }
    }

    async fn save(&self, identity: &Identity) -> Result<(), String> {
        let data: BTreeMap<String, ByteString> = [
            (CA_KEY, &identity.ca_pem),
            (CERT_KEY, &identity.cert_pem),
            (KEY_KEY, &identity.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.secret_name.clone()),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_string()),
            ..Default::default()
        };
        self.secrets
            .patch(
                &self.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(drop)
            .map_err(|e| format!("writing Secret {}: {e}", self.secret_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_only_the_cluster() {
        let (key, csr) = request("prod-eu").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents).unwrap();
        let sans: Vec<String> = parsed
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    Some(san.general_names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans, ["URI(tollgate://cluster/prod-eu)"]);
    }

    /// The pin may name the root of a longer chain: the hub's certificate is verified through the intermediates it
    /// presents, up to the pinned CA alone.
    #[test]
    fn the_pinned_ca_anchors_a_chain_through_intermediates_and_nothing_else() {
        use rcgen::{BasicConstraints, IsCa, Issuer};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca("root").self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(ca("root"), root_key);
        let middle_key = KeyPair::generate().unwrap();
        let middle = ca("middle").signed_by(&middle_key, &root_issuer).unwrap();
        let middle_issuer = Issuer::new(ca("middle"), middle_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &middle_issuer)
            .unwrap();
        let verify = |pin: &str, intermediates: &[CertificateDer<'_>]| {
            PinnedCa {
                pin: pin.to_string(),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }
            .verify_server_cert(
                leaf.der(),
                intermediates,
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        let chain = [middle.der().clone(), root.der().clone()];
        assert!(verify(&sha256_hex(root.der()), &chain).is_ok());
        assert!(
            verify(&sha256_hex(middle.der()), &chain).is_ok(),
            "an intermediate may be pinned too"
        );
        let refused = verify(&"0".repeat(64), &chain).unwrap_err();
        assert!(
            refused.to_string().contains("presents no CA with the join token's pin"),
            "{refused}"
        );
        // The pinned root without the intermediate that links it to the leaf is no path.
        assert!(verify(&sha256_hex(root.der()), &[root.der().clone()]).is_err());
        // A leaf for another name, under the pinned CA, is refused by name.
        let other = CertificateParams::new(vec!["elsewhere.example".to_string()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &middle_issuer)
            .unwrap();
        let wrong_name = PinnedCa {
            pin: sha256_hex(root.der()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
        .verify_server_cert(
            other.der(),
            &chain,
            &ServerName::try_from("localhost").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(wrong_name.is_err());
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let identity = Identity {
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            not_before_unix_millis: 1_000,
            not_after_unix_millis: 61_000,
        };
        assert_eq!(identity.renew_at_unix_millis(), 41_000);
        assert!(!format!("{identity:?}").contains("key_pem"), "{identity:?}");
    }
}
