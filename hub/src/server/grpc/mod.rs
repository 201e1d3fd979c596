//! The gRPC server: the spoke `Sync` stream and the admin service on one listener, mTLS by default.

mod admin;
mod membership;
mod spoke_sync;
mod tickets;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tollgate_proto::v1::admin_server::AdminServer;
use tollgate_proto::v1::membership_server::MembershipServer;
use tollgate_proto::v1::spoke_sync_server::SpokeSyncServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use crate::certs::{PeerCertificate, peer_certificate};
use crate::server::state::{Hub, HubError};
use crate::server::store::{Store, StoreError};

pub use admin::AdminService;
pub use membership::MembershipService;
pub use spoke_sync::{Held, SpokeSyncService};

use crate::server::sessions::Sessions;

/// How long a client may take to complete the TLS handshake before its connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection: a spoke needs one, the CLI a few.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// PEM files of the hub's server identity and the CA its clients' certificates must chain to.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// How the server talks.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `None`: plaintext, for development on loopback only.
    pub tls: Option<TlsFiles>,
    /// Heartbeat period of spoke streams; a peer silent for three periods is dropped.
    pub heartbeat: Duration,
    /// How long a spoke may take to accept one message before its stream is dropped (it reconnects and
    /// resyncs).
    pub send_timeout: Duration,
    /// Where pushes and apply results are counted.
    pub metrics: Arc<crate::server::metrics::Metrics>,
    /// The admin names (`tollgate://admin/NAME`) whose certificates may call the admin API; any other admin
    /// certificate signed by the client CA is refused.
    pub admins: Arc<std::collections::BTreeSet<String>>,
    /// Signs spoke certificates (joins, renewals) and makes join tokens; `None` without `--client-ca-key`.
    pub signer: Option<Arc<crate::server::membership::ReloadingSigner>>,
    /// The file of the secret that seals TLS session tickets (made when absent), so that spokes resume their
    /// sessions after a restart or on another replica; `None`: a secret of this process only.
    pub session_ticket_key: Option<std::path::PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            heartbeat: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            metrics: Arc::default(),
            admins: Arc::default(),
            signer: None,
            session_ticket_key: None,
        }
    }
}

/// Binds `addr`; refuses plaintext on a non-loopback address.
pub async fn bind(addr: SocketAddr, options: &ServeOptions) -> anyhow::Result<TcpListener> {
    if options.tls.is_none() && !addr.ip().is_loopback() {
        bail!("plaintext (--insecure-dev-plaintext) is only allowed on a loopback address, not {addr}");
    }
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// Serves both services on `listener` until `shutdown` completes.
pub async fn serve<S: Store>(
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(options.heartbeat))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let plaintext = options.tls.is_none();
    // With a signer the hub presents its CA (join tokens pin it) and lets a handshake without a client certificate
    // through, for `Membership.Join` only.
    let signing = options.signer.is_some();
    let tls = match options.tls.clone() {
        Some(files) => {
            let tickets = match &options.session_ticket_key {
                Some(path) => tickets::TicketSource::file(path)?,
                None => tickets::TicketSource::process()?,
            };
            Some(tls::ReloadingTls::load(
                files,
                signing,
                signing,
                tickets,
                options.metrics.clone(),
            )?)
        }
        None => None,
    };
    // Spoke reports are written for every spoke at once, one transaction per tick.
    let reports = sessions.reports();
    let flusher = tokio::spawn(reports.clone().run(hub.clone()));
    let spoke = SpokeSyncService::new(hub.clone(), sessions, options.clone(), plaintext);
    let admin = AdminService::new(
        hub.clone(),
        spoke.sessions(),
        plaintext,
        options.metrics.clone(),
        options.admins.clone(),
        options.signer.clone(),
    );
    let membership = MembershipService::new(hub.clone(), options.signer.clone(), plaintext);
    let router = builder
        // Spokes and admins must present a certificate: refused from the request's headers, before its body is read
        // (a hub that signs lets handshakes without one through, for `Membership.Join`).
        .add_service(InterceptedService::new(
            SpokeSyncServer::new(spoke)
                .max_decoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES)
                .max_encoding_message_size(tollgate_proto::MAX_INTENT_MESSAGE_BYTES),
            move |request| require_certificate(request, plaintext),
        ))
        .add_service(
            MembershipServer::new(membership)
                .max_decoding_message_size(MAX_MEMBERSHIP_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MEMBERSHIP_MESSAGE_BYTES),
        )
        .add_service(InterceptedService::new(
            AdminServer::new(admin)
                .max_decoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES)
                .max_encoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES),
            move |request| require_certificate(request, plaintext),
        ));
    let served = match tls {
        Some(tls) => {
            let incoming = tls::incoming(listener, tls.clone(), options.metrics.clone())?;
            let watcher = tokio::spawn(tls.watch(options.signer.clone()));
            let served = router.serve_with_incoming_shutdown(incoming, shutdown).await;
            watcher.abort();
            served
        }
        // Small responses must not wait for Nagle's algorithm and a delayed ACK (~40 ms per apply otherwise).
        None => {
            router
                .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
                .await
        }
    }
    .context("serving gRPC");
    flusher.abort();
    if let Err(error) = reports.flush(hub.store()).await {
        tracing::warn!(error = %tollgate_process::error_chain(&error), "Could not record the last spoke reports");
    }
    served
}

/// The largest `Membership` message either way: a join or renewal request (a token secret and a CSR of well under
/// 2 KiB) and its answer (two certificates). Anyone may call `Join` without a certificate, so it reads little.
pub const MAX_MEMBERSHIP_MESSAGE_BYTES: usize = 16 * 1024;

/// Lets a request through only with a client certificate (or in plaintext mode): decided on its headers, before
/// tonic reads and decodes its body.
#[allow(clippy::result_large_err)]
fn require_certificate(request: Request<()>, plaintext: bool) -> Result<Request<()>, Status> {
    if plaintext || presented(&request)?.is_some() {
        Ok(request)
    } else {
        Err(Status::unauthenticated("a client certificate is required"))
    }
}

/// The client certificate the request's connection presented, if any; refused, with the reason, when the connection
/// resumed a TLS session whose certificate would not be accepted by a full handshake now.
#[allow(clippy::result_large_err)]
fn presented<T>(request: &Request<T>) -> Result<Option<&rustls::pki_types::CertificateDer<'static>>, Status> {
    let Some(certs) = request.extensions().get::<tls::PeerCertificates>() else {
        return Ok(None);
    };
    if let Some(reason) = &certs.refused {
        return Err(Status::unauthenticated(format!(
            "the client certificate of this resumed TLS session does not verify any more ({reason}): connect again \
             with a current one"
        )));
    }
    Ok(certs.chain.as_ref().and_then(|chain| chain.first()))
}

/// The caller's client certificate: its Tollgate identity and validity. `Ok(None)` only in plaintext mode.
fn caller<T>(request: &Request<T>, plaintext: bool) -> Result<Option<PeerCertificate>, Status> {
    if plaintext {
        return Ok(None);
    }
    let leaf = presented(request)?.ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let certificate = peer_certificate(leaf.as_ref())
        .ok_or_else(|| Status::permission_denied("the client certificate carries no Tollgate identity"))?;
    // The handshake checked the validity when the connection opened; a connection outlives it.
    let now = tollgate_process::unix_millis();
    if now > certificate.not_after_unix_millis {
        return Err(Status::unauthenticated(format!(
            "the client certificate of this connection expired {}: connect again with a current one",
            crate::cli::render::ago(certificate.not_after_unix_millis, now)
        )));
    }
    if now < certificate.not_before_unix_millis {
        return Err(Status::unauthenticated("the client certificate is not valid yet"));
    }
    Ok(Some(certificate))
}

/// Maps hub errors to status codes: InvalidArgument / NotFound / FailedPrecondition are final for clients;
/// store trouble is Unavailable (retried).
fn status(error: HubError) -> Status {
    match error {
        HubError::Invalid(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Status::invalid_argument(lines.join("\n"))
        }
        HubError::TooLarge(message) => Status::invalid_argument(message),
        HubError::NotFound(message) => Status::not_found(message),
        HubError::Store(e) => e.into(),
    }
}

/// The one mapping of store errors to status codes: a lost race is Aborted (retry the whole change), something
/// that does not exist NotFound, stored data or settings an admin must fix FailedPrecondition, a failing database
/// Unavailable (retried). The message carries the whole chain, the database's own words included.
impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        let message = tollgate_process::error_chain(&error);
        match error {
            StoreError::Conflict { .. } => Status::aborted(message),
            StoreError::NoSuchRevision(_) | StoreError::NotRegistered(_) => Status::not_found(message),
            StoreError::Corrupt { revision, reason } => Status::failed_precondition(format!(
                "stored revision {revision} cannot be read ({reason}); `tollgate-hub history` marks the readable ones"
            )),
            StoreError::Unreadable { .. } | StoreError::Invalid(_) => Status::failed_precondition(message),
            StoreError::Backend { .. } => Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    /// Spokes' and admins' requests without a client certificate are refused on their headers (a signing hub lets
    /// certificate-less handshakes through for joins); plaintext development mode has no certificates at all.
    #[test]
    fn requests_without_a_certificate_are_refused_before_their_body() {
        let with = |certs: Option<Vec<rustls::pki_types::CertificateDer<'static>>>| {
            let mut request = Request::new(());
            request.extensions_mut().insert(tls::PeerCertificates {
                chain: certs.map(Arc::new),
                refused: None,
            });
            request
        };
        let refused = require_certificate(with(None), false).unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(
            require_certificate(with(Some(Vec::new())), false).is_err(),
            "an empty chain"
        );
        assert!(
            require_certificate(Request::new(()), false).is_err(),
            "no connection info at all"
        );
        let der = rustls::pki_types::CertificateDer::from(vec![1, 2, 3]);
        assert!(require_certificate(with(Some(vec![der])), false).is_ok());
        assert!(require_certificate(Request::new(()), true).is_ok(), "plaintext");
    }

    #[test]
    fn store_errors_map_to_one_status_code_each() {
        let conflict = Status::from(StoreError::Conflict { expected: 3, actual: 4 });
        assert_eq!(conflict.code(), Code::Aborted);
        assert!(
            conflict
                .message()
                .contains("revision 3 is no longer the latest (now 4)")
        );
        let corrupt = Status::from(StoreError::Corrupt {
            revision: 7,
            reason: "bad yaml".into(),
        });
        assert_eq!(corrupt.code(), Code::FailedPrecondition);
        assert!(
            corrupt
                .message()
                .contains("stored revision 7 cannot be read (bad yaml)")
        );
        assert_eq!(Status::from(StoreError::NoSuchRevision(9)).code(), Code::NotFound);
        assert_eq!(
            Status::from(StoreError::NotRegistered("x".into())).code(),
            Code::NotFound
        );
        let backend = Status::from(StoreError::backend("writing", std::io::Error::other("disk full")));
        assert_eq!(backend.code(), Code::Unavailable);
        assert_eq!(backend.message(), "writing: disk full", "the source is kept");
        assert_eq!(
            Status::from(StoreError::Invalid("too many documents".into())).code(),
            Code::FailedPrecondition
        );
        // Hub errors carrying a store error take the same mapping.
        assert_eq!(
            status(HubError::Store(StoreError::Conflict { expected: 1, actual: 2 })).code(),
            Code::Aborted
        );
    }
}
