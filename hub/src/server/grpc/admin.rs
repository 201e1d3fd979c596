//! The admin service used by the CLI. Every call requires an admin certificate (or plaintext dev mode).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tollgate_common::planner::Mode;

use futures::Stream;
use tollgate_common::document::{DocumentSet, Source};
use tollgate_common::wire::documents_to_wire;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Sessions, caller, status};
use crate::certs::PeerIdentity;
use crate::server::state::{ApplyOutcome, Hub};
use crate::server::store::Store;

/// How often `WatchFleetStatus` sends a fresh status.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct AdminService<S> {
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
    plaintext: bool,
    metrics: Arc<crate::server::metrics::Metrics>,
    admins: Arc<BTreeSet<String>>,
    signer: Option<Arc<crate::server::membership::ReloadingSigner>>,
}

/// The author recorded for changes made in plaintext development mode (no certificate names anyone).
pub const PLAINTEXT_AUTHOR: &str = "(plaintext)";

impl<S: Store> AdminService<S> {
    pub fn new(
        hub: Arc<Hub<S>>,
        sessions: Arc<Sessions>,
        plaintext: bool,
        metrics: Arc<crate::server::metrics::Metrics>,
        admins: Arc<BTreeSet<String>>,
        signer: Option<Arc<crate::server::membership::ReloadingSigner>>,
    ) -> Self {
        Self {
            hub,
            sessions,
            plaintext,
            metrics,
            admins,
            signer,
        }
    }

    /// A new join token for registered cluster `id`, valid for `ttl_seconds` (0: the default); `None` when the hub
    /// signs no certificates.
    async fn join_token(&self, id: &str, ttl_seconds: i64) -> Result<Option<pb::JoinToken>, Status> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let ttl = match ttl_seconds {
            0 => crate::server::membership::DEFAULT_TOKEN_TTL,
            ttl if ttl > 0 => std::time::Duration::from_secs(ttl.unsigned_abs()),
            ttl => {
                return Err(Status::invalid_argument(format!(
                    "tokenTtlSeconds {ttl}: must be positive"
                )));
            }
        };
        let token = signer
            .current()
            .token(id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let expires =
            tollgate_process::unix_millis().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        if !self
            .hub
            .store()
            .put_join_token(id, &token.secret_digest(), expires)
            .await?
        {
            return Err(Status::not_found(format!("cluster {id:?} is not registered")));
        }
        Ok(Some(pb::JoinToken {
            cluster_id: id.to_string(),
            token: token.to_string(),
            expires_unix_millis: expires,
        }))
    }

    /// The admin's name ([`PLAINTEXT_AUTHOR`] in plaintext development mode): an admin certificate whose name is on
    /// the hub's admin list. Any other caller is refused.
    fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let Some(certificate) = caller(request, self.plaintext)? else {
            return Ok(PLAINTEXT_AUTHOR.to_string());
        };
        match certificate.identity {
            PeerIdentity::Admin(name) if self.admins.contains(&name) => Ok(name),
            PeerIdentity::Admin(name) => {
                tracing::warn!(admin = %name, "Refused an admin certificate that is not on the admin list");
                Err(Status::permission_denied(format!(
                    "admin {name:?} is not on this hub's admin list (`tollgate-hub serve --admin {name}` or \
                     TOLLGATE_HUB_ADMINS)"
                )))
            }
            PeerIdentity::Cluster(id) => Err(Status::permission_denied(format!(
                "the certificate of cluster {id:?} cannot call the admin API: use an admin certificate"
            ))),
        }
    }
}

/// A cluster id as the registry takes it: what a spoke certificate can name.
fn check_cluster_id(id: &str) -> Result<(), Status> {
    if super::spoke_sync::valid_id(id) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "clusterId {id:?}: lowercase letters, digits, '-' and '.', at most 63 characters"
        )))
    }
}

/// Registry labels, checked with Kubernetes' rules (they are matched by `clusterSelector`s).
fn check_labels(labels: &BTreeMap<String, String>, path: &str) -> Result<(), Status> {
    let errors = tollgate_common::label_selector::validate_labels(labels, path);
    if errors.is_empty() {
        Ok(())
    } else {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Err(Status::invalid_argument(lines.join("\n")))
    }
}

fn sources(sources: Vec<pb::Source>) -> Vec<Source> {
    sources.into_iter().map(|s| Source::new(s.name, s.yaml)).collect()
}

fn apply_response(outcome: ApplyOutcome) -> pb::ApplyResponse {
    pb::ApplyResponse {
        revision: outcome.revision.unwrap_or(0),
        changes: outcome
            .changes
            .into_iter()
            .map(|c| pb::DocumentChange {
                kind: c.kind,
                name: c.name,
                action: c.action.as_str().to_string(),
                diff: c.diff,
            })
            .collect(),
    }
}

/// Fleet status from the store and the live sessions: one row per cluster, or one row per agent of a cluster.
pub async fn fleet_status<S: Store>(
    hub: &Hub<S>,
    sessions: &Sessions,
    cluster_id: &str,
) -> Result<pb::FleetStatusResponse, Status> {
    let store = hub.store();
    let connected = sessions.connected();
    let now = tollgate_process::unix_millis();
    let latest_revision = hub.snapshot().revision;
    if !cluster_id.is_empty() {
        let clusters = store.clusters().await?;
        if !clusters.iter().any(|c| c.id == cluster_id) {
            return Err(Status::not_found(format!("cluster {cluster_id:?} is not registered")));
        }
        let agents = store.agents(cluster_id).await?;
        return Ok(pb::FleetStatusResponse {
            latest_revision,
            store_id: store.store_id().to_string(),
            hub_version: env!("CARGO_PKG_VERSION").to_string(),
            clusters: Vec::new(),
            agents: agents
                .into_iter()
                .map(|a| pb::AgentStatus {
                    // What the hub plans with stays inside the hub.
                    plan_inputs: None,
                    ..a.into()
                })
                .collect(),
            resolved_names: clusters
                .iter()
                .find(|c| c.id == cluster_id)
                .and_then(|c| c.facts_json.as_deref())
                .and_then(|json| crate::server::store::facts::facts_from_json(json).ok())
                .map(|facts| facts.resolved_names)
                .unwrap_or_default(),
        });
    }
    let mut rows = Vec::new();
    for cluster in store.clusters().await? {
        let agents = store.agents(&cluster.id).await?;
        let count = |mode: Mode| agents.iter().filter(|a| a.mode == mode).count() as u32;
        let conditions = cluster
            .conditions
            .iter()
            .map(|c| pb::Condition {
                r#type: tollgate_common::wire::condition_type(&c.type_),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
        rows.push(pb::ClusterStatus {
            conditions,
            connected: connected.contains_key(&cluster.id) || sessions.held_elsewhere(&cluster, now),
            spoke_version: spoke_version(&cluster),
            labels: cluster.labels.into_iter().collect(),
            last_seen_unix_millis: cluster.last_seen_unix_millis,
            applied_revision: cluster.applied_revision,
            agents_total: agents.len() as u32,
            agents_scoped: count(Mode::Scoped),
            agents_allow_all: count(Mode::AllowAll),
            agents_baseline_only: count(Mode::BaselineOnly),
            agents_restricted: count(Mode::Restricted),
            errors: agents.iter().filter(|a| !a.errors.is_empty()).count() as u32,
            agents_widened: agents.iter().filter(|a| !a.widened_by.is_empty()).count() as u32,
            cluster_id: cluster.id,
        });
    }
    Ok(pb::FleetStatusResponse {
        latest_revision,
        store_id: store.store_id().to_string(),
        clusters: rows,
        agents: Vec::new(),
        hub_version: env!("CARGO_PKG_VERSION").to_string(),
        resolved_names: Vec::new(),
    })
}

/// The version the cluster's spoke reported with its facts (empty: not reported yet).
fn spoke_version(cluster: &crate::server::store::ClusterRecord) -> String {
    cluster
        .facts_json
        .as_deref()
        .and_then(|json| crate::server::store::facts::facts_from_json(json).ok())
        .map(|facts| facts.spoke_version)
        .unwrap_or_default()
}

/// What an apply or plan prunes: nothing, everything (no selector), or the documents a selector matches.
fn prune_scope(prune: bool, selector: &str) -> Result<Option<tollgate_common::LabelSelector>, Status> {
    match (prune, selector.is_empty()) {
        (false, true) => Ok(None),
        (false, false) => Err(Status::invalid_argument("prune_selector: set only with prune")),
        (true, true) => Ok(Some(tollgate_common::LabelSelector::default())),
        (true, false) => tollgate_common::LabelSelector::parse(selector)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("prune_selector: {e}"))),
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::FleetStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> pb::admin_server::Admin for AdminService<S> {
    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = self.authorize(&request)?;
        let pb::ApplyRequest {
            sources: raw,
            dry_run,
            prune,
            prune_selector,
        } = request.into_inner();
        let prune = prune_scope(prune, &prune_selector)?;
        let result = self
            .hub
            .apply(
                &sources(raw),
                dry_run,
                prune.as_ref(),
                &author,
                tollgate_process::unix_millis(),
            )
            .await;
        let label = match &result {
            Ok(_) if dry_run => "dry-run",
            Ok(outcome) if outcome.revision.is_some() => "committed",
            Ok(_) => "unchanged",
            Err(crate::server::state::HubError::Invalid(_)) => "invalid",
            Err(_) => "error",
        };
        self.metrics
            .applies
            .get_or_create(&crate::server::metrics::ResultLabel { result: label })
            .inc();
        Ok(Response::new(apply_response(result.map_err(status)?)))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let author = self.authorize(&request)?;
        let pb::DeleteRequest { kind, name } = request.into_inner();
        let revision = self
            .hub
            .delete(&kind, &name, &author, tollgate_process::unix_millis())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse { revision }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.authorize(&request)?;
        let pb::GetRequest { kind, name, revision } = request.into_inner();
        let (revision, documents) = if revision == 0 {
            let snapshot = self.hub.snapshot();
            (snapshot.revision, snapshot.documents.clone())
        } else {
            let stored = self.hub.store().revision(revision).await?;
            (stored.info.number, stored.documents)
        };
        let mut selected = DocumentSet::default();
        for document in documents.documents() {
            if (kind.is_empty() || document.kind() == kind) && (name.is_empty() || document.name() == name) {
                selected.insert(document);
            }
        }
        if !name.is_empty() && selected.is_empty() {
            return Err(Status::not_found(format!(
                "{kind}/{name} does not exist at revision {revision}"
            )));
        }
        Ok(Response::new(pb::GetResponse {
            revision,
            documents: documents_to_wire(&selected),
        }))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        self.authorize(&request)?;
        let history = self.hub.store().history().await?;
        Ok(Response::new(pb::HistoryResponse {
            revisions: history
                .into_iter()
                .map(|entry| pb::RevisionInfo {
                    revision: entry.info.number,
                    created_unix_millis: entry.info.created_unix_millis,
                    operation: entry.info.operation.as_str().to_string(),
                    summary: entry.info.summary,
                    document_count: entry.info.document_count,
                    unreadable: entry.unreadable.unwrap_or_default(),
                    author: entry.info.author,
                })
                .collect(),
            serving_revision: self.hub.snapshot().revision,
        }))
    }

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Result<Response<pb::RollbackResponse>, Status> {
        let author = self.authorize(&request)?;
        let to = request.into_inner().to_revision;
        let outcome = self
            .hub
            .rollback(to, &author, tollgate_process::unix_millis())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RollbackResponse {
            revision: outcome.revision.unwrap_or_else(|| self.hub.snapshot().revision),
        }))
    }

    async fn plan(&self, request: Request<pb::PlanRequest>) -> Result<Response<pb::PlanResponse>, Status> {
        self.authorize(&request)?;
        let pb::PlanRequest {
            sources: raw,
            prune,
            prune_selector,
        } = request.into_inner();
        let prune = prune_scope(prune, &prune_selector)?;
        let applied =
            DocumentSet::from_sources(&sources(raw)).map_err(|e| status(crate::server::state::HubError::Invalid(e)))?;
        let current = self.hub.snapshot();
        let proposed = current.documents.applied(&applied, prune.as_ref());
        let clusters = crate::server::plan::preview(self.hub.store(), &current.documents, &proposed).await?;
        Ok(Response::new(pb::PlanResponse { clusters }))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        self.authorize(&request)?;
        let cluster = request.into_inner().cluster_id;
        Ok(Response::new(fleet_status(&self.hub, &self.sessions, &cluster).await?))
    }

    async fn adopt_cluster(
        &self,
        request: Request<pb::AdoptClusterRequest>,
    ) -> Result<Response<pb::AdoptClusterResponse>, Status> {
        let admin = self.authorize(&request)?;
        let cluster = request.into_inner().cluster_id;
        let store = self.hub.store();
        if !store.request_adopt(&cluster).await.map_err(|e| status(e.into()))? {
            return Err(Status::not_found(format!("cluster {cluster:?} is not registered")));
        }
        let snapshot = self.hub.snapshot();
        tracing::warn!(
            cluster = %cluster,
            admin = %admin,
            revision = snapshot.revision,
            store = store.store_id(),
            "Adoption requested: the cluster takes this hub's intent"
        );
        let connected = self.sessions.poke(&cluster);
        Ok(Response::new(pb::AdoptClusterResponse {
            revision: snapshot.revision,
            store_id: store.store_id().to_string(),
            connected,
        }))
    }

    async fn add_cluster(
        &self,
        request: Request<pb::AddClusterRequest>,
    ) -> Result<Response<pb::AddClusterResponse>, Status> {
        let admin = self.authorize(&request)?;
        let pb::AddClusterRequest {
            cluster_ids,
            labels,
            token_ttl_seconds,
        } = request.into_inner();
        if token_ttl_seconds < 0 {
            return Err(Status::invalid_argument(format!(
                "tokenTtlSeconds {token_ttl_seconds}: must be positive"
            )));
        }
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if cluster_ids.is_empty() {
            return Err(Status::invalid_argument("clusterIds: at least one cluster id"));
        }
        let mut unique = BTreeSet::new();
        for id in &cluster_ids {
            check_cluster_id(id)?;
            if !unique.insert(id) {
                return Err(Status::invalid_argument(format!("clusterIds: {id:?} is listed twice")));
            }
        }
        check_labels(&labels, "labels")?;
        // Every id gets the same labels: one check covers them all.
        self.hub.check_labels(&cluster_ids[0], &labels).map_err(status)?;
        let existing = self
            .hub
            .store()
            .register_clusters(&cluster_ids, &labels, tollgate_process::unix_millis())
            .await?;
        if !existing.is_empty() {
            return Err(Status::already_exists(format!(
                "{} registered already, so none was registered (`tollgate-hub clusters label` changes labels)",
                existing
                    .iter()
                    .map(|id| format!("cluster {id:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        tracing::info!(clusters = ?cluster_ids, %admin, ?labels, "Clusters registered");
        let mut tokens = Vec::new();
        for id in &cluster_ids {
            tokens.extend(self.join_token(id, token_ttl_seconds).await?);
        }
        Ok(Response::new(pb::AddClusterResponse { tokens }))
    }

    async fn label_cluster(
        &self,
        request: Request<pb::LabelClusterRequest>,
    ) -> Result<Response<pb::LabelClusterResponse>, Status> {
        let admin = self.authorize(&request)?;
        let pb::LabelClusterRequest {
            cluster_id,
            set,
            remove,
        } = request.into_inner();
        let set: BTreeMap<String, String> = set.into_iter().collect();
        check_labels(&set, "set")?;
        if let Some(key) = remove.iter().find(|key| set.contains_key(*key)) {
            return Err(Status::invalid_argument(format!(
                "remove: label {key:?} is also set in the same call"
            )));
        }
        let store = self.hub.store();
        let Some(current) = store.registrations().await?.into_iter().find(|c| c.id == cluster_id) else {
            return Err(Status::not_found(format!("cluster {cluster_id:?} is not registered")));
        };
        let proposed = crate::server::store::relabelled(current.labels, &set, &remove);
        self.hub.check_labels(&cluster_id, &proposed).map_err(status)?;
        let Some(labels) = store.label_cluster(&cluster_id, &set, &remove).await? else {
            return Err(Status::not_found(format!("cluster {cluster_id:?} is not registered")));
        };
        tracing::info!(cluster = %cluster_id, %admin, ?labels, "Cluster labels changed");
        self.sessions.relabel(&cluster_id, &labels);
        Ok(Response::new(pb::LabelClusterResponse {
            labels: labels.into_iter().collect(),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        self.authorize(&request)?;
        let connected = self.sessions.connected();
        let now = tollgate_process::unix_millis();
        let clusters = self
            .hub
            .store()
            .clusters()
            .await?
            .into_iter()
            .map(|cluster| pb::RegisteredCluster {
                connected: connected.contains_key(&cluster.id) || self.sessions.held_elsewhere(&cluster, now),
                spoke_version: spoke_version(&cluster),
                labels: cluster.labels.into_iter().collect(),
                reported_labels: cluster.reported_labels.into_iter().collect(),
                registered_unix_millis: cluster.registered_unix_millis,
                last_seen_unix_millis: cluster.last_seen_unix_millis,
                certificate_not_after_unix_millis: cluster.certificate_not_after_unix_millis,
                cluster_id: cluster.id,
            })
            .collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn remove_cluster(
        &self,
        request: Request<pb::RemoveClusterRequest>,
    ) -> Result<Response<pb::RemoveClusterResponse>, Status> {
        let admin = self.authorize(&request)?;
        let cluster_id = request.into_inner().cluster_id;
        if !self
            .hub
            .store()
            .remove_cluster(&cluster_id, tollgate_process::unix_millis())
            .await?
        {
            return Err(Status::not_found(format!("cluster {cluster_id:?} is not registered")));
        }
        let disconnected = self.sessions.revoke(&cluster_id);
        tracing::warn!(cluster = %cluster_id, %admin, disconnected, "Cluster removed: its stream is closed and its certificates are refused");
        Ok(Response::new(pb::RemoveClusterResponse { disconnected }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let admin = self.authorize(&request)?;
        let pb::CreateJoinTokenRequest {
            cluster_id,
            ttl_seconds,
        } = request.into_inner();
        let token = self.join_token(&cluster_id, ttl_seconds).await?.ok_or_else(|| {
            Status::failed_precondition(
                "this hub signs no spoke certificates (it runs without --client-ca-key), so it has no join tokens: \
                 give the spoke a certificate from `tollgate-hub certs spoke`",
            )
        })?;
        tracing::info!(cluster = %cluster_id, %admin, "Join token created");
        Ok(Response::new(token))
    }

    type WatchFleetStatusStream = StatusStream;

    async fn watch_fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        self.authorize(&request)?;
        let cluster = request.into_inner().cluster_id;
        let hub = self.hub.clone();
        let sessions = self.sessions.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(WATCH_PERIOD);
            loop {
                ticker.tick().await;
                let status = fleet_status(&hub, &sessions, &cluster).await;
                let failed = status.is_err();
                if tx.send(status).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
