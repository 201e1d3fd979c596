//! The hub's TLS, reloaded without a restart: its certificate, key and client CA are read again when their files
//! change (a cert-manager renewal, a rotated CA), and new handshakes use them; connections already open keep theirs.
//! Each accepted connection's handshake runs in its own task with a timeout, so a client that never finishes one
//! holds nothing but its socket, and not for long.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::tickets::{self, TicketKey, TicketSource};
use super::{TLS_HANDSHAKE_TIMEOUT, TlsFiles};

/// How often the files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What the listener serves with, as last read from the files.
struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Seals and opens session tickets while this client CA is the one served.
    tickets: Arc<TicketKey>,
    /// The files' modification times when read.
    stamps: Vec<Option<SystemTime>>,
}

/// The hub's TLS files and what was last read from them.
pub struct ReloadingTls {
    files: TlsFiles,
    /// With a signer: the hub presents the CA that signed its certificate after it (join tokens pin it).
    present_ca: bool,
    /// With a signer: a handshake without a client certificate is let through (for `Membership.Join` only).
    optional_client_auth: bool,
    provider: Arc<CryptoProvider>,
    metrics: Arc<crate::server::metrics::Metrics>,
    tickets: TicketSource,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn stamps(files: &TlsFiles, tickets: &TicketSource) -> Vec<Option<SystemTime>> {
    crate::certs::modification_times(
        [&files.cert, &files.key, &files.client_ca]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(tickets.path()),
    )
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl ReloadingTls {
    /// Reads the files once; an error here stops the hub from starting.
    pub fn load(
        files: TlsFiles,
        present_ca: bool,
        optional_client_auth: bool,
        tickets: TicketSource,
        metrics: Arc<crate::server::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(provider());
        let loaded = Self::read(&files, present_ca, optional_client_auth, &provider, &tickets, &metrics)?;
        Ok(Arc::new(Self {
            files,
            present_ca,
            optional_client_auth,
            provider,
            metrics,
            tickets,
            loaded: RwLock::new(loaded),
        }))
    }

    fn read(
        files: &TlsFiles,
        present_ca: bool,
        optional_client_auth: bool,
        provider: &Arc<CryptoProvider>,
        tickets: &TicketSource,
        metrics: &crate::server::metrics::Metrics,
    ) -> anyhow::Result<Loaded> {
        // Stamped before reading: a write during the read is seen at the next check.
        let stamps = stamps(files, tickets);
        let (cert_pem, key_pem, ca_pem) = (read(&files.cert)?, read(&files.key)?, read(&files.client_ca)?);
        let chain_pem = if present_ca {
            crate::server::membership::served_chain(
                &String::from_utf8_lossy(&cert_pem),
                &String::from_utf8_lossy(&ca_pem),
            )?
            .0
            .into_bytes()
        } else {
            cert_pem.clone()
        };
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", files.cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{}: no certificate", files.cert.display());
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| format!("parsing {}", files.key.display()))?;
        let key = CertifiedKey::from_der(chain, key, provider).with_context(|| {
            format!(
                "{} and {} do not form a key pair",
                files.cert.display(),
                files.key.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            roots
                .add(ca.with_context(|| format!("parsing {}", files.client_ca.display()))?)
                .with_context(|| format!("{}: not a usable CA", files.client_ca.display()))?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if optional_client_auth {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder
            .build()
            .with_context(|| format!("{}: no client CA", files.client_ca.display()))?;
        metrics.record_certificate("serving", &cert_pem);
        metrics.record_certificate("client-ca", &ca_pem);
        Ok(Loaded {
            key: Arc::new(key),
            verifier,
            tickets: Arc::new(tickets.key(&ca_pem)),
            stamps,
        })
    }

    /// Reads the files again if one changed since the last read; a file that cannot be used leaves the served ones
    /// in place (and is logged). Whether a change was taken.
    pub fn reload_if_changed(&self) -> bool {
        if stamps(&self.files, &self.tickets) == self.loaded.read().expect("tls lock").stamps {
            return false;
        }
        match Self::read(
            &self.files,
            self.present_ca,
            self.optional_client_auth,
            &self.provider,
            &self.tickets,
            &self.metrics,
        ) {
            Ok(loaded) => {
                *self.loaded.write().expect("tls lock") = loaded;
                tracing::info!(cert = %self.files.cert.display(), "Reloaded the hub's TLS files: new handshakes use them");
                true
            }
            Err(error) => {
                // Marked as seen, so the error is logged once per change, not once a second.
                self.loaded.write().expect("tls lock").stamps = stamps(&self.files, &self.tickets);
                tracing::error!(
                    error = format!("{error:#}"),
                    "The hub's TLS files changed but cannot be used; serving with the previous ones"
                );
                false
            }
        }
    }

    /// Checks the files once per [`RELOAD_CHECK`] until the task is dropped, and those of `signer` with them (the
    /// client CA and its key change together).
    pub async fn watch(self: Arc<Self>, signer: Option<Arc<crate::server::membership::ReloadingSigner>>) {
        let mut ticker = tokio::time::interval(RELOAD_CHECK);
        loop {
            ticker.tick().await;
            self.reload_if_changed();
            if let Some(signer) = &signer {
                signer.reload_if_changed();
            }
        }
    }

    /// The rustls configuration: certificate and client verification looked up at every handshake.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        // TLS 1.3 only: a TLS 1.2 session ticket would travel in the clear with the session's master secret, so a
        // leaked ticket secret would open recorded sessions; every Tollgate client speaks TLS 1.3.
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // The hub's order of cipher suites decides (see `provider`).
        config.ignore_client_order = true;
        // One ticket per handshake: a spoke holds one connection, and resumes it once after losing it.
        config.ticketer = Arc::new(Tickets(self.clone()));
        config.send_tls13_tickets = 1;
        Ok(config)
    }
}

impl ReloadingTls {
    /// Why the client certificate of a resumed session would not be accepted by a full handshake now (rustls does
    /// not verify it again; the client CA may have been rotated, the certificate may have expired); `None` when it
    /// would be, or when the session has no client certificate.
    fn refuse_resumed(&self, chain: Option<&[CertificateDer<'static>]>) -> Option<String> {
        let (leaf, intermediates) = chain?.split_first()?;
        let verifier = self.loaded.read().expect("tls lock").verifier.clone();
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .err()
            .map(|error| error.to_string())
    }
}

/// Session tickets sealed with the ticket secret, for the client CA served now.
#[derive(Debug)]
struct Tickets(Arc<ReloadingTls>);

impl Tickets {
    fn key(&self) -> Arc<TicketKey> {
        self.0.loaded.read().expect("tls lock").tickets.clone()
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(tickets::LIFETIME.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, state: &[u8]) -> Option<Vec<u8>> {
        self.key().seal(state, now_secs())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.key().open(ticket, now_secs())
    }
}

fn now_secs() -> u64 {
    u64::try_from(tollgate_process::unix_secs()).unwrap_or(0)
}

/// rustls's ring provider with the TLS 1.3 suites in the hub's order: AES-128-GCM with SHA-256 first, whose key
/// schedule runs on the CPU's SHA extensions where SHA-384 (AES-256-GCM's) does not — the largest single cost of a
/// resumed handshake in a reconnect storm. All three are TLS 1.3's standard suites.
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

impl ResolvesServerCert for ReloadingTls {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded.read().expect("tls lock").key.clone())
    }
}

/// Client certificates checked against the client CA last read.
#[derive(Debug)]
struct Verifier(Arc<ReloadingTls>);

impl Verifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.loaded.read().expect("tls lock").verifier.clone()
    }
}

impl ClientCertVerifier for Verifier {
    fn client_auth_mandatory(&self) -> bool {
        !self.0.optional_client_auth
    }

    // The CA names are only a hint to clients; the configured clients send their one certificate without it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// What a request knows of its TLS connection: the client's certificate chain, if it sent one, and why it is
/// refused when a resumed session carries a certificate that does not verify any more.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates {
    pub chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    pub refused: Option<Arc<str>>,
}

/// An accepted TLS connection.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>, Option<Arc<str>>);

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TlsConnection")
            .field(&self.0.get_ref().0.peer_addr().ok())
            .finish()
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerCertificates;

    fn connect_info(&self) -> PeerCertificates {
        PeerCertificates {
            chain: self.0.get_ref().1.peer_certificates().map(|c| Arc::new(c.to_vec())),
            refused: self.1.clone(),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The TLS connections of `listener`: each handshake in its own task, given up after [`TLS_HANDSHAKE_TIMEOUT`].
/// Small responses must not wait for Nagle's algorithm and a delayed ACK, so every socket has `TCP_NODELAY`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    metrics: Arc<crate::server::metrics::Metrics>,
) -> anyhow::Result<ReceiverStream<Result<TlsConnection, std::io::Error>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config()?));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                // The server stopped: stop accepting (and free the port) at once.
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "Could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, metrics, reloading) = (acceptor.clone(), tx.clone(), metrics.clone(), tls.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let kind = tls.get_ref().1.handshake_kind();
                        metrics.record_handshake(kind);
                        // The connection stays open, its requests refused with the reason: a client told why
                        // forgets the session, where one simply disconnected would resume it again.
                        let refused = (kind == Some(rustls::HandshakeKind::Resumed))
                            .then(|| reloading.refuse_resumed(tls.get_ref().1.peer_certificates()))
                            .flatten();
                        if let Some(reason) = &refused {
                            tracing::info!(%peer, reason, "A resumed TLS session's client certificate does not verify any more");
                        }
                        let _ = tx.send(Ok(TlsConnection(tls, refused.map(Arc::from)))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Leaf, init_ca, issue, issue_valid};

    fn chain(dir: &std::path::Path, stem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(dir.join(format!("{stem}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// rustls does not verify a resumed session's client certificate again: the listener does, against the client
    /// CA served now, so neither a rotation (a handshake that straddled it included) nor an expiry lets a session
    /// outlive what a full handshake would accept.
    #[test]
    fn a_resumed_sessions_certificate_is_verified_against_the_client_ca_served_now() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let hub = Leaf::Hub {
            dns_names: vec!["localhost".into()],
            addresses: vec![],
        };
        issue(dir.path(), dir.path(), &hub).unwrap();
        let spoke = Leaf::Spoke { cluster_id: "a".into() };
        issue(dir.path(), dir.path(), &spoke).unwrap();
        let expired = dir.path().join("expired");
        std::fs::create_dir(&expired).unwrap();
        let now = time::OffsetDateTime::now_utc();
        issue_valid(
            dir.path(),
            &expired,
            &spoke,
            now - time::Duration::days(2),
            now - time::Duration::days(1),
        )
        .unwrap();
        let files = TlsFiles {
            cert: dir.path().join("hub.pem"),
            key: dir.path().join("hub-key.pem"),
            client_ca: dir.path().join("ca.pem"),
        };
        let tickets = TicketSource::process().unwrap();
        let tls = ReloadingTls::load(files, false, false, tickets, Arc::default()).unwrap();

        let current = chain(dir.path(), "spoke-a");
        assert_eq!(tls.refuse_resumed(Some(&current)), None);
        assert_eq!(tls.refuse_resumed(None), None, "a session without a certificate");
        let reason = tls.refuse_resumed(Some(&chain(&expired, "spoke-a"))).unwrap();
        assert!(reason.contains("expired"), "{reason}");

        let rotated = tempfile::tempdir().unwrap();
        init_ca(rotated.path()).unwrap();
        std::fs::copy(rotated.path().join("ca.pem"), dir.path().join("ca.pem")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("ca.pem"))
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert!(tls.reload_if_changed());
        assert!(
            tls.refuse_resumed(Some(&current)).is_some(),
            "a certificate of the old client CA"
        );
    }
}
