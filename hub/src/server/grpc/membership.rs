//! The `Membership` service: a spoke's certificate from a one-time join token, and its renewal with the current
//! certificate. Both take a certificate signing request; the spoke's private key never leaves its cluster.

use std::sync::Arc;

use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::caller;
use crate::certs::PeerIdentity;
use crate::server::membership::{ReloadingSigner, Signer};
use crate::server::state::Hub;
use crate::server::store::{Store, TokenUse};

/// Joins served at once; more are told to come back (anyone may call `Join`, and each one is a store write).
const CONCURRENT_JOINS: usize = 8;

#[derive(Debug)]
pub struct MembershipService<S> {
    hub: Arc<Hub<S>>,
    /// `None`: the hub signs no certificate (no `--client-ca-key`).
    signer: Option<Arc<ReloadingSigner>>,
    plaintext: bool,
    joins: tokio::sync::Semaphore,
}

impl<S: Store> MembershipService<S> {
    pub fn new(hub: Arc<Hub<S>>, signer: Option<Arc<ReloadingSigner>>, plaintext: bool) -> Self {
        Self {
            hub,
            signer,
            plaintext,
            joins: tokio::sync::Semaphore::new(CONCURRENT_JOINS),
        }
    }

    fn signer(&self) -> Result<Arc<Signer>, Status> {
        self.signer.as_ref().map(|s| s.current()).ok_or_else(|| {
            Status::failed_precondition(
                "this hub signs no spoke certificates (it runs without --client-ca-key): give the spoke a \
                 certificate from `tollgate-hub certs spoke`",
            )
        })
    }
}

#[tonic::async_trait]
impl<S: Store> pb::membership_server::Membership for MembershipService<S> {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::IssuedCertificate>, Status> {
        let signer = self.signer()?;
        let _permit = self
            .joins
            .try_acquire()
            .map_err(|_| Status::resource_exhausted("too many joins at once: retry shortly"))?;
        let pb::JoinRequest {
            cluster_id,
            token_secret,
            csr_pem,
        } = request.into_inner();
        let now = tollgate_process::unix_millis();
        let digest = tollgate_common::join::secret_digest(&token_secret);
        match self.hub.store().take_join_token(&cluster_id, &digest, now).await? {
            TokenUse::Accepted => {}
            TokenUse::Unknown => {
                tracing::warn!(cluster = %cluster_id, "Refused a join with an unknown or used token");
                return Err(Status::permission_denied(format!(
                    "the join token of cluster {cluster_id:?} is unknown or was used already (a token works once): \
                     `tollgate-hub clusters token {cluster_id}` makes a new one"
                )));
            }
            TokenUse::Expired => {
                tracing::warn!(cluster = %cluster_id, "Refused a join with an expired token");
                return Err(Status::permission_denied(format!(
                    "the join token of cluster {cluster_id:?} has expired: `tollgate-hub clusters token {cluster_id}` \
                     makes a new one"
                )));
            }
        }
        // The token is used up even when the request is bad: a new one is one command away, a retried secret is not.
        let issued = signer
            .issue(&cluster_id, &csr_pem, now)
            .map_err(Status::invalid_argument)?;
        tracing::info!(cluster = %cluster_id, not_after = issued.not_after_unix_millis, "Cluster joined: signed its certificate");
        Ok(Response::new(issued))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::IssuedCertificate>, Status> {
        let signer = self.signer()?;
        let certificate = caller(&request, self.plaintext)?
            .ok_or_else(|| Status::unauthenticated("renewing needs the cluster's current certificate (mTLS)"))?;
        let PeerIdentity::Cluster(cluster_id) = certificate.identity else {
            return Err(Status::permission_denied("only a cluster's certificate can be renewed"));
        };
        // Read before the registration: a removal committed after the check revokes what is signed below, whose
        // validity starts at this time.
        let now = tollgate_process::unix_millis();
        let registration = self
            .hub
            .store()
            .registrations()
            .await?
            .into_iter()
            .find(|r| r.id == cluster_id)
            .ok_or_else(|| {
                Status::permission_denied(format!("cluster {cluster_id:?} is not registered on this hub"))
            })?;
        if certificate.not_before_unix_millis <= registration.refuse_certificates_before_unix_millis {
            return Err(Status::permission_denied(format!(
                "this certificate of cluster {cluster_id:?} was revoked when the cluster was removed"
            )));
        }
        let issued = signer
            .issue(&cluster_id, &request.into_inner().csr_pem, now)
            .map_err(Status::invalid_argument)?;
        tracing::info!(cluster = %cluster_id, not_after = issued.not_after_unix_millis, "Renewed a cluster's certificate");
        Ok(Response::new(issued))
    }
}
