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

use super::tickets::{self, TicketKey, TicketSecret};
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
    tickets: TicketSecret,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
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
        tickets: TicketSecret,
        metrics: Arc<crate::server::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        tickets: &TicketSecret,
        metrics: &crate::server::metrics::Metrics,
    ) -> anyhow::Result<Loaded> {
        // Stamped before reading: a write during the read is seen at the next check.
        let stamps = stamps(files);
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
        if stamps(&self.files) == self.loaded.read().expect("tls lock").stamps {
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
                self.loaded.write().expect("tls lock").stamps = stamps(&self.files);
                tracing::error!(
                    error = format!("{error:#}"),
                    "The hub's TLS files changed but cannot be used; serving with the previous ones"
                );
                false
            }
        }
    }

    /// Checks the files once per [`RELOAD_CHECK`] until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(RELOAD_CHECK);
        loop {
            ticker.tick().await;
            self.reload_if_changed();
        }
    }

    /// The rustls configuration: certificate and client verification looked up at every handshake.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // One ticket per handshake: a spoke holds one connection, and resumes it once after losing it.
        config.ticketer = Arc::new(Tickets(self.clone()));
        config.send_tls13_tickets = 1;
        Ok(config)
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

/// What a request knows of its TLS connection: the client's certificate chain, if it sent one.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// An accepted TLS connection.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

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
        PeerCertificates(self.0.get_ref().1.peer_certificates().map(|c| Arc::new(c.to_vec())))
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
    config: rustls::ServerConfig,
    metrics: Arc<crate::server::metrics::Metrics>,
) -> ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        metrics.record_handshake(tls.get_ref().1.handshake_kind());
                        let _ = tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
