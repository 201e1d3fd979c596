//! The spoke's TLS to the hub, configured here rather than by tonic so that a reconnect offers the session ticket the
//! hub gave the connection before it: a hub that restarted (or another replica holding the same ticket secret)
//! resumes the session without signing and verifying certificates again, which is what a fleet's reconnect storm
//! costs. A session is only resumed with the certificate it began with; a renewed or replaced certificate, or a
//! refusal by the hub, starts afresh with a full handshake. rustls resumes a session only through the configuration
//! that began it, so the configuration is kept as long as the files it was made from are unchanged.

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint};

/// Sessions kept per hub replica (by its TLS name).
const SESSIONS_KEPT: usize = 8;

/// The TLS of the connections to the hub, and the sessions the hub issued tickets for, kept as long as the CA,
/// certificate and key they were made from.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<Option<(Vec<u8>, Arc<ClientConfig>)>>);

impl Sessions {
    /// The configuration of a connection with these files' contents: the last one while they are unchanged (its
    /// sessions are resumed), a new one without sessions otherwise.
    pub fn config(&self, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>, String> {
        let made_from = [ca_pem, cert_pem, key_pem].join(&0u8);
        let mut current = self.0.lock().expect("sessions lock");
        if let Some((from, config)) = &*current
            && *from == made_from
        {
            return Ok(config.clone());
        }
        let mut config = client_config(ca_pem, cert_pem, key_pem)?;
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(SESSIONS_KEPT)));
        let config = Arc::new(config);
        *current = Some((made_from, config.clone()));
        Ok(config)
    }

    /// Forgets every session: the next connection makes a full handshake.
    pub fn forget(&self) {
        *self.0.lock().expect("sessions lock") = None;
    }
}

/// The TLS of a connection to the hub that resumes no session: the hub verified against `ca_pem`, this spoke's
/// certificate and key.
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.map_err(|e| format!("the hub's CA: {e}"))?)
            .map_err(|e| format!("the hub's CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the hub's CA: no certificate".to_string());
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the client key: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate and key: {e}"))?;
    config.resumption = Resumption::disabled();
    Ok(with_h2(config))
}

/// HTTP/2 negotiated by ALPN, as gRPC servers expect.
pub fn with_h2(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A channel to `url` (`https://host:port`) whose TLS is `config`, verified for `server_name` (default: the URL's
/// host); `configure` sets the endpoint's timeouts. An error names the whole chain of causes.
pub async fn channel(
    url: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, String> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("--hub {url:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("--hub {url:?}: no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(server_name.unwrap_or(&host).to_string())
        .map_err(|e| format!("the hub's TLS name: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    // The TLS is this connector's, so the endpoint itself is plain HTTP/2 to the same authority.
    let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
    configure(endpoint)
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| tollgate_process::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster: &str) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(
            format!("tollgate://cluster/{cluster}").try_into().unwrap(),
        )];
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let cert_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
        (ca_pem, cert_pem, key.serialize_pem())
    }

    /// rustls resumes a session only through the configuration that began it: the same files give the same
    /// configuration; other files (a renewed or replaced identity), or a refusal, a new one without the old
    /// sessions.
    #[test]
    fn the_configuration_is_kept_while_its_files_are_unchanged() {
        let sessions = Sessions::default();
        let (ca, cert, key) = identity("a");
        let first = sessions.config(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        let again = sessions.config(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.alpn_protocols, [b"h2".to_vec()]);
        let (ca2, cert2, key2) = identity("a");
        let replaced = sessions
            .config(ca2.as_bytes(), cert2.as_bytes(), key2.as_bytes())
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &replaced));
        let kept = sessions
            .config(ca2.as_bytes(), cert2.as_bytes(), key2.as_bytes())
            .unwrap();
        assert!(Arc::ptr_eq(&kept, &replaced));
        sessions.forget();
        let fresh = sessions
            .config(ca2.as_bytes(), cert2.as_bytes(), key2.as_bytes())
            .unwrap();
        assert!(!Arc::ptr_eq(&kept, &fresh), "forgotten");
    }
}
