//! The spoke `Sync` stream (docs/design.md, "Hub and spoke"): hello, the cluster's intent at the latest revision, then every newer
//! revision (coalesced), heartbeats both ways; facts, inventory and acks are recorded in the store.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::{Request, Response, Status, Streaming};

use super::{ServeOptions, caller};
use crate::certs::{PeerCertificate, PeerIdentity};
use crate::server::hellos::Hellos;
use crate::server::sessions::{Control, Sessions};
use crate::server::state::{Hub, Snapshot};
use crate::server::store::{AgentRecord, Hello, Store, StoredCondition};

/// Outbound messages buffered per stream; a spoke that falls further behind is dropped and resyncs.
const QUEUE: usize = 8;
/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `SpokeSync` service.
#[derive(Debug)]
pub struct SpokeSyncService<S> {
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
    hellos: Hellos,
    options: ServeOptions,
    plaintext: bool,
}

impl<S: Store> SpokeSyncService<S> {
    /// The service; starts the task that writes hellos (call inside the runtime).
    pub fn new(hub: Arc<Hub<S>>, sessions: Arc<Sessions>, options: ServeOptions, plaintext: bool) -> Self {
        Self {
            hellos: Hellos::start(hub.clone()),
            hub,
            sessions,
            options,
            plaintext,
        }
    }

    pub fn sessions(&self) -> Arc<Sessions> {
        self.sessions.clone()
    }
}

type HubStream = Pin<Box<dyn Stream<Item = Result<pb::HubMessage, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> pb::spoke_sync_server::SpokeSync for SpokeSyncService<S> {
    type SyncStream = HubStream;

    async fn sync(&self, request: Request<Streaming<pb::SpokeMessage>>) -> Result<Response<HubStream>, Status> {
        let (certificate, inbound, hello) = self.handshake(request).await?;
        let registered = self.register(&hello, certificate.as_ref()).await?;
        self.start(inbound, hello, certificate, registered).await
    }
}

/// A cluster allowed to open its stream, as the registry knows it.
struct Registered {
    /// The registry's labels: they select the cluster's documents (the reported ones are only shown).
    labels: BTreeMap<String, String>,
    /// An admin asked this cluster to adopt this hub's latest revision.
    adopt: bool,
    /// The spoke said it enforces another store's intent.
    diverged: bool,
    now: i64,
}

impl<S: Store> SpokeSyncService<S> {
    /// The caller's certificate and its hello: a spoke certificate (or plaintext), a hello within
    /// [`HELLO_TIMEOUT`], a valid cluster id, and the id the certificate was issued for.
    async fn handshake(
        &self,
        request: Request<Streaming<pb::SpokeMessage>>,
    ) -> Result<(Option<PeerCertificate>, Streaming<pb::SpokeMessage>, pb::Hello), Status> {
        let certificate = caller(&request, self.plaintext)?;
        if let Some(PeerIdentity::Admin(name)) = certificate.as_ref().map(|c| &c.identity) {
            return Err(Status::permission_denied(format!(
                "admin certificate {name:?} cannot open a spoke stream: use a spoke certificate"
            )));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::SpokeMessage {
                msg: Some(spoke_message::Msg::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message of a stream must be hello")),
        };
        let cluster = &hello.cluster_id;
        if !valid_id(cluster) {
            return Err(Status::invalid_argument(format!(
                "hello.clusterId {cluster:?}: lowercase letters, digits, '-' and '.', at most 63 characters"
            )));
        }
        if let Some(PeerIdentity::Cluster(certified)) = certificate.as_ref().map(|c| &c.identity)
            && certified != cluster
        {
            tracing::warn!(certified = %certified, claimed = %cluster, "Refused a hello for another cluster");
            return Err(Status::permission_denied(format!(
                "the client certificate is for cluster {certified:?}, not {cluster:?}"
            )));
        }
        Ok((certificate, inbound, hello))
    }

    /// Records the hello and checks the registry: the cluster must be registered, and its certificate issued after
    /// its last removal. Catches up with the store when the spoke is ahead of this replica.
    async fn register(&self, hello: &pb::Hello, certificate: Option<&PeerCertificate>) -> Result<Registered, Status> {
        let cluster = &hello.cluster_id;
        let recorded = Hello {
            id: cluster.clone(),
            reported: hello.labels.clone().into_iter().collect(),
            certificate_not_after_unix_millis: certificate.map_or(0, |c| c.not_after_unix_millis),
        };
        let Some(registration) = self.hellos.hello(recorded).await? else {
            tracing::warn!(cluster = %cluster, "Refused a hello of a cluster that is not registered");
            return Err(Status::permission_denied(format!(
                "cluster {cluster:?} is not registered on this hub: an admin registers it with `tollgate-hub clusters \
                 add {cluster}` (this spoke keeps trying)"
            )));
        };
        if let Some(certificate) = certificate
            && certificate.not_before_unix_millis <= registration.refuse_certificates_before_unix_millis
        {
            tracing::warn!(cluster = %cluster, "Refused a certificate issued before the cluster was removed");
            return Err(Status::permission_denied(format!(
                "this client certificate of cluster {cluster:?} was issued before the cluster was removed from the \
                 hub, which revoked it: issue a new one (`tollgate-hub certs spoke` dates certificates five minutes \
                 back: issue it at least five minutes after the removal)"
            )));
        }
        let now = tollgate_process::unix_millis();
        let store = self.hub.store();
        let adopt = registration.adopt_requested;
        let conditions = stored_conditions(&hello.conditions);
        let diverged = is_diverged(&conditions);
        self.sessions.reports().conditions(cluster, conditions, now);
        // A spoke ahead of this replica (it moved here from a replica that saw a newer revision first): catch up from
        // the store before answering, or it would be sent an older intent.
        if hello.last_applied_revision > self.hub.snapshot().revision
            && hello.store_id == store.store_id()
            && let Err(error) = self.hub.refresh().await
        {
            tracing::warn!(cluster = %cluster, error = %tollgate_process::error_chain(&error), "Could not catch up with the store");
        }
        Ok(Registered {
            labels: registration.labels,
            adopt,
            diverged,
            now,
        })
    }

    /// Sends the first intent (or `unchanged`), registers the session and spawns its task.
    async fn start(
        &self,
        inbound: Streaming<pb::SpokeMessage>,
        hello: pb::Hello,
        certificate: Option<PeerCertificate>,
        registered: Registered,
    ) -> Result<Response<HubStream>, Status> {
        let Registered {
            labels,
            adopt,
            diverged,
            now,
        } = registered;
        let cluster = hello.cluster_id;
        let mut snapshots = self.hub.subscribe();
        let snapshot = snapshots.borrow_and_update().clone();
        let selected = snapshot.select(&labels);
        let digest = snapshot.digest(&selected);
        let held = Held {
            store_id: &hello.store_id,
            revision: hello.last_applied_revision,
            digest: &hello.digest,
        };
        let first = Resume::decide(&held, adopt, &snapshot.store_id, snapshot.revision, &digest);
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.send(Ok(intent(
            &snapshot,
            &selected,
            &digest,
            first == Resume::Unchanged,
            first == Resume::Adopt,
        )))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
        // Other replicas learn who holds the stream from the store (the embedded store has no other replica).
        // Recorded before the session is registered: nothing awaits between registering it and spawning its task,
        // so a stream dropped meanwhile cannot leave a session that never ends (a record without a session expires
        // after three heartbeat periods).
        if self.sessions.shared_store()
            && let Err(error) = self
                .hub
                .store()
                .record_connections(self.sessions.replica(), std::slice::from_ref(&cluster), now)
                .await
        {
            tracing::warn!(cluster = %cluster, error = %tollgate_process::error_chain(&error), "Could not record the connection in the store");
        }
        let (id, control) = self.sessions.register(
            &cluster,
            labels.clone(),
            certificate.as_ref().map(|c| c.not_before_unix_millis),
            hello.last_applied_revision,
            now,
        );
        tracing::info!(
            cluster = %cluster,
            revision = snapshot.revision,
            resumed = first == Resume::Unchanged,
            adopt,
            spoke_store = %hello.store_id,
            spoke_revision = hello.last_applied_revision,
            "Spoke connected"
        );
        let session = SessionTask {
            hub: self.hub.clone(),
            metrics: self.options.metrics.clone(),
            sessions: self.sessions.clone(),
            options: self.options.clone(),
            cluster,
            labels,
            id,
            adopt_sent: adopt.then_some(snapshot.revision),
            diverged,
            sent: (snapshot, selected),
        };
        tokio::spawn(session.run(inbound, tx, snapshots, control));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The least time between two reports (facts or inventories) read from one spoke.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// The intent a spoke says it enforces, from its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held<'a> {
    /// The store it came from; empty when the spoke has none.
    pub store_id: &'a str,
    pub revision: u64,
    pub digest: &'a str,
}

/// What the first message of a stream tells the spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Keep what it enforces: `unchanged`, without documents.
    Unchanged,
    /// The cluster's documents at the hub's latest revision, which the spoke accepts or refuses itself.
    Full,
    /// The documents, to be taken even from another store: an admin asked this cluster to adopt them.
    Adopt,
}

impl Resume {
    /// The decision for a spoke holding `held`, against the hub's store, latest revision and the digest of the
    /// cluster's documents there. Pure: the table of cases is its test.
    pub fn decide(held: &Held<'_>, adopt: bool, store_id: &str, revision: u64, digest: &str) -> Self {
        if adopt {
            Self::Adopt
        } else if held.resumes(store_id, revision, digest) {
            Self::Unchanged
        } else {
            Self::Full
        }
    }
}

impl Held<'_> {
    /// Whether the spoke may keep what it enforces (the hub answers `unchanged`): the same store, a revision not
    /// ahead of the hub's, and the same documents as the hub's latest selection for it. Anything else gets the
    /// full documents, which the spoke then accepts or refuses (another store, an older revision) itself.
    pub fn resumes(&self, store_id: &str, revision: u64, digest: &str) -> bool {
        !self.store_id.is_empty()
            && self.store_id == store_id
            && self.revision > 0
            && self.revision <= revision
            && self.digest == digest
    }
}

/// The wire conditions as stored (unknown types keep their number).
fn stored_conditions(conditions: &[pb::Condition]) -> Vec<StoredCondition> {
    conditions
        .iter()
        .map(|c| StoredCondition {
            type_: tollgate_common::wire::condition_name(c.r#type),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

/// Whether the spoke reported that it enforces another store's intent.
fn is_diverged(conditions: &[StoredCondition]) -> bool {
    conditions.iter().any(|c| c.type_ == "Diverged")
}

/// Whether two selections hold the same documents (kind, name and canonical YAML), without copying any.
fn same_documents(a: &Snapshot, a_selected: &[usize], b: &Snapshot, b_selected: &[usize]) -> bool {
    a_selected.len() == b_selected.len()
        && a_selected
            .iter()
            .zip(b_selected)
            .all(|(i, j)| a.wire[*i].1 == b.wire[*j].1)
}

/// The intent message of a selection: the shared, pre-rendered documents, or the `unchanged` marker.
fn intent(snapshot: &Snapshot, selected: &[usize], digest: &str, unchanged: bool, adopt: bool) -> pb::HubMessage {
    pb::HubMessage {
        msg: Some(hub_message::Msg::Intent(pb::IntentRevision {
            revision: snapshot.revision,
            documents: if unchanged {
                Vec::new()
            } else {
                selected.iter().map(|i| snapshot.wire[*i].1.clone()).collect()
            },
            unchanged,
            store_id: snapshot.store_id.clone(),
            digest: digest.to_string(),
            adopt,
        })),
    }
}

fn heartbeat() -> pb::HubMessage {
    pb::HubMessage {
        msg: Some(hub_message::Msg::Heartbeat(pb::Heartbeat {
            sent_unix_millis: tollgate_process::unix_millis(),
        })),
    }
}

pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

struct SessionTask<S> {
    hub: Arc<Hub<S>>,
    metrics: Arc<crate::server::metrics::Metrics>,
    sessions: Arc<Sessions>,
    options: ServeOptions,
    cluster: String,
    labels: BTreeMap<String, String>,
    id: u64,
    /// The revision last offered with `adopt` while an adoption is pending (cleared when acknowledged).
    adopt_sent: Option<u64>,
    /// Whether the spoke last reported itself Diverged (it then waits for an adoption).
    diverged: bool,
    /// The snapshot and selection last sent (shared with every session; nothing is copied per spoke).
    sent: (Arc<Snapshot>, Vec<usize>),
}

impl<S: Store> SessionTask<S> {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::SpokeMessage>,
        tx: mpsc::Sender<Result<pb::HubMessage, Status>>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut ticker = tokio::time::interval(self.options.heartbeat);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        // After a report (facts, inventory), the next message of this spoke is read no sooner than
        // REPORT_INTERVAL later: a spoke sending reports as fast as it can is held back by HTTP/2 flow control
        // instead of taking the hub's CPU from every other spoke (a real spoke reports only changes).
        let mut paused_until: Option<tokio::time::Instant> = None;
        let reason = loop {
            tokio::select! {
                () = async { tokio::time::sleep_until(paused_until.expect("guarded")).await }, if paused_until.is_some() => {
                    paused_until = None;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break "hub shutting down";
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if let Err(reason) = self.offer(&tx, snapshot).await {
                        break reason;
                    }
                }
                message = inbound.message(), if paused_until.is_none() => match message {
                    Ok(Some(message)) => {
                        last_heard = Instant::now();
                        let report = matches!(
                            message.msg,
                            Some(spoke_message::Msg::Inventory(_) | spoke_message::Msg::Facts(_))
                        );
                        self.handle(message).await;
                        if report {
                            paused_until = Some(tokio::time::Instant::now() + REPORT_INTERVAL);
                        }
                    }
                    Ok(None) => break "spoke closed the stream",
                    Err(status) => {
                        tracing::debug!(cluster = %self.cluster, %status, "Inbound stream error");
                        break "inbound stream failed";
                    }
                },
                control = control.recv() => match control {
                    // The session's entry was replaced (and its sender dropped) by a newer stream of the cluster.
                    None => break "replaced by a newer stream of the same cluster",
                    Some(Control::Removed) => {
                        let _ = tx.try_send(Err(Status::permission_denied(format!(
                            "cluster {:?} was removed from the hub's registry", self.cluster
                        ))));
                        break "removed from the registry";
                    }
                    Some(Control::Relabel(labels)) => {
                        tracing::info!(cluster = %self.cluster, ?labels, "Cluster labels changed; selecting its documents again");
                        self.labels = labels;
                        let snapshot = snapshots.borrow_and_update().clone();
                        if let Err(reason) = self.offer(&tx, snapshot).await {
                            break reason;
                        }
                    }
                    Some(Control::Adopt) => {
                        if let Err(reason) = self.adopt_if_requested(&tx).await {
                            break reason;
                        }
                    }
                },
                _ = ticker.tick() => {
                    if last_heard.elapsed() > self.options.heartbeat * 3 {
                        let _ = tx.try_send(Err(Status::unavailable("heartbeat timeout: nothing heard from the spoke")));
                        break "heartbeat timeout";
                    }
                    let _ = tx.try_send(Ok(heartbeat()));
                    // An adoption requested on another replica reaches a diverged spoke within a heartbeat.
                    if self.diverged && self.adopt_sent.is_none()
                        && let Err(reason) = self.adopt_if_requested(&tx).await
                    {
                        break reason;
                    }
                }
            }
        };
        // A newer stream of the same cluster on this replica replaced this one: the store's record is its.
        if self.sessions.unregister(&self.cluster, self.id) {
            let _ = self
                .hub
                .store()
                .record_disconnect(&self.cluster, self.sessions.replica(), tollgate_process::unix_millis())
                .await;
        }
        tracing::info!(cluster = %self.cluster, reason, "Spoke disconnected");
    }

    /// Sends a new revision: the full documents when the spoke's selection changed or an adoption is pending, else
    /// the `unchanged` marker.
    async fn offer(
        &mut self,
        tx: &mpsc::Sender<Result<pb::HubMessage, Status>>,
        snapshot: Arc<Snapshot>,
    ) -> Result<(), &'static str> {
        let selected = snapshot.select(&self.labels);
        let adopt = self.adopt_sent.is_some();
        let unchanged = !adopt && same_documents(&self.sent.0, &self.sent.1, &snapshot, &selected);
        let digest = snapshot.digest(&selected);
        let message = intent(&snapshot, &selected, &digest, unchanged, adopt);
        if adopt {
            self.adopt_sent = Some(snapshot.revision);
        }
        self.sent = (snapshot, selected);
        match tokio::time::timeout(self.options.send_timeout, tx.send(Ok(message))).await {
            Ok(Ok(())) => {
                self.metrics.pushes.inc();
                Ok(())
            }
            Ok(Err(_)) => Err("stream closed"),
            Err(_) => Err("spoke fell behind; dropped so it reconnects and resyncs"),
        }
    }

    /// Offers the latest revision with `adopt` when an admin asked for it (`clusters adopt`).
    async fn adopt_if_requested(
        &mut self,
        tx: &mpsc::Sender<Result<pb::HubMessage, Status>>,
    ) -> Result<(), &'static str> {
        match self.hub.store().adopt_requested(&self.cluster).await {
            Ok(true) => {
                let snapshot = self.hub.snapshot();
                tracing::info!(cluster = %self.cluster, revision = snapshot.revision, "Offering the intent for adoption");
                self.adopt_sent = Some(snapshot.revision);
                self.offer(tx, snapshot).await
            }
            Ok(false) => Ok(()),
            Err(error) => {
                tracing::warn!(cluster = %self.cluster, error = %tollgate_process::error_chain(&error), "Could not read the adoption request");
                Ok(())
            }
        }
    }

    async fn handle(&mut self, message: pb::SpokeMessage) {
        let reports = self.sessions.reports();
        let now = tollgate_process::unix_millis();
        match message.msg {
            Some(spoke_message::Msg::Facts(facts)) => {
                reports.facts(&self.cluster, crate::server::store::facts::facts_to_json(&facts), now);
            }
            Some(spoke_message::Msg::Inventory(inventory)) => {
                // An agent without the fields the hub reads (a spoke of another version) refuses the whole
                // inventory: the last one stays.
                let agents: Result<Vec<AgentRecord>, String> = inventory
                    .agents
                    .into_iter()
                    .map(|status| {
                        let agent = format!("{}/{}", status.namespace, status.name);
                        AgentRecord::try_from(status).map_err(|error| format!("agent {agent}: {error}"))
                    })
                    .collect();
                let agents = match agents {
                    Ok(agents) => agents,
                    Err(error) => {
                        tracing::warn!(cluster = %self.cluster, %error, "Refused an inventory");
                        return;
                    }
                };
                if let Err(error) = crate::server::store::check_inventory(&self.cluster, &agents) {
                    tracing::warn!(cluster = %self.cluster, %error, "Refused an inventory");
                    return;
                }
                reports.inventory(&self.cluster, agents, now);
            }
            Some(spoke_message::Msg::Ack(ack)) => {
                let store_id = self.hub.store().store_id();
                if !ack.store_id.is_empty() && ack.store_id != store_id {
                    // The spoke enforces another store's revision (it is Diverged): nothing of this store is applied.
                    tracing::debug!(cluster = %self.cluster, store = %ack.store_id, "Ignored an acknowledgement of another store");
                    return;
                }
                if !ack.errors.is_empty() {
                    tracing::warn!(cluster = %self.cluster, revision = ack.revision, errors = ?ack.errors, "Spoke reported errors");
                }
                self.sessions.acknowledged(&self.cluster, self.id, ack.revision);
                reports.applied(&self.cluster, ack.revision, now);
                if let Some(offered) = self.adopt_sent
                    && ack.revision >= offered
                    && ack.store_id == store_id
                {
                    match self.hub.store().clear_adopt(&self.cluster).await {
                        Ok(()) => {
                            tracing::info!(cluster = %self.cluster, revision = ack.revision, "The cluster adopted this hub's intent");
                            self.adopt_sent = None;
                        }
                        Err(error) => {
                            tracing::warn!(cluster = %self.cluster, error = %tollgate_process::error_chain(&error), "Could not clear the adoption request")
                        }
                    }
                }
            }
            Some(spoke_message::Msg::Conditions(conditions)) => {
                let conditions = stored_conditions(&conditions.conditions);
                self.diverged = is_diverged(&conditions);
                reports.conditions(&self.cluster, conditions, now);
            }
            Some(spoke_message::Msg::Heartbeat(_)) => {}
            Some(spoke_message::Msg::Hello(_)) | None => {
                tracing::debug!(cluster = %self.cluster, "Ignored an unexpected message");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::ClusterRecord;

    fn record(replica: Option<&str>, last_seen: i64) -> ClusterRecord {
        ClusterRecord {
            id: "c1".to_string(),
            labels: BTreeMap::new(),
            first_seen_unix_millis: 0,
            last_seen_unix_millis: last_seen,
            facts_json: None,
            applied_revision: 0,
            connected_replica: replica.map(String::from),
            ..ClusterRecord::default()
        }
    }

    /// The resume decision: `unchanged` only for the same store, a revision not ahead of the hub's, and the same
    /// documents; everything else gets the full documents (which the spoke may still refuse).
    #[test]
    fn a_spoke_resumes_only_with_the_same_store_revision_and_documents() {
        let held = |store_id, revision, digest| Held {
            store_id,
            revision,
            digest,
        };
        let cases = [
            (held("s1", 5, "d"), true, "same store, revision and documents"),
            (held("s1", 3, "d"), true, "older revision, documents unchanged since"),
            (held("s1", 3, "e"), false, "older revision, documents changed since"),
            (
                held("s1", 5, "e"),
                false,
                "same revision, other documents (a cache edited by hand)",
            ),
            (
                held("s1", 6, "d"),
                false,
                "ahead of the hub (a store restored from an older backup)",
            ),
            (held("s2", 5, "d"), false, "another store (a hub on a new, empty store)"),
            (held("", 5, "d"), false, "no store: a spoke that never had an intent"),
            (held("s1", 0, "d"), false, "never applied a revision"),
        ];
        for (held, expected, case) in cases {
            assert_eq!(held.resumes("s1", 5, "d"), expected, "{case}");
            let decided = Resume::decide(&held, false, "s1", 5, "d");
            assert_eq!(decided == Resume::Unchanged, expected, "{case}");
            assert_eq!(decided == Resume::Full, !expected, "{case}");
            assert_eq!(
                Resume::decide(&held, true, "s1", 5, "d"),
                Resume::Adopt,
                "{case}, adoption asked: the documents, whatever it holds"
            );
        }
    }

    #[test]
    fn another_replicas_stream_counts_only_on_a_shared_store_and_while_renewed() {
        let shared = Sessions::new("hub-a", Duration::from_secs(1), true);
        let held = record(Some("hub-b"), 10_000);
        assert!(shared.held_elsewhere(&held, 10_000));
        assert!(shared.held_elsewhere(&held, 13_000), "three heartbeat periods");
        assert!(!shared.held_elsewhere(&held, 13_001), "no renewal for longer");
        assert!(
            !shared.held_elsewhere(&record(Some("hub-a"), 10_000), 10_000),
            "its own: the sessions decide"
        );
        assert!(!shared.held_elsewhere(&record(None, 10_000), 10_000));
        // The embedded store has one replica: a record of another is left over from an earlier run.
        let embedded = Sessions::new("hub-a", Duration::from_secs(1), false);
        assert!(!embedded.held_elsewhere(&held, 10_000));
    }
}
