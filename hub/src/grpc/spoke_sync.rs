//! The spoke `Sync` stream (DESIGN §3.6): hello, the cluster's intent at the latest revision, then every newer
//! revision (coalesced), heartbeats both ways; facts, inventory and acks are recorded in the store.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::{Request, Response, Status, Streaming};

use super::{ServeOptions, caller, now_millis};
use crate::certs::PeerIdentity;
use crate::state::{Hub, Snapshot};
use crate::store::{AgentRecord, Store};

/// Outbound messages buffered per stream; a spoke that falls further behind is dropped and resyncs.
const QUEUE: usize = 8;
/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The spokes connected to this hub replica.
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    /// This replica's name in the store's `connected_replica`.
    replica: String,
    /// A stream another replica holds counts as connected while it renewed `last_seen` within this long.
    stale_after: Duration,
    /// Whether other replicas share the store; with the embedded store a record naming another replica is a
    /// leftover of an earlier run of this hub, never a live stream.
    shared_store: bool,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new("hub", Duration::from_secs(30), false)
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    labels: BTreeMap<String, String>,
    connected_unix_millis: i64,
    applied_revision: u64,
    cancel: Option<oneshot::Sender<()>>,
}

/// A connected spoke, as the status commands and metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub labels: BTreeMap<String, String>,
    pub connected_unix_millis: i64,
    /// The last revision it acknowledged on this stream (or said it had applied in its hello).
    pub applied_revision: u64,
}

impl Sessions {
    /// Sessions of replica `replica`, whose heartbeat period is `heartbeat`. With a `shared_store`, other
    /// replicas' streams count as connected while renewed within three periods.
    pub fn new(replica: impl Into<String>, heartbeat: Duration, shared_store: bool) -> Self {
        Self {
            inner: Mutex::default(),
            next_id: AtomicU64::new(0),
            replica: replica.into(),
            stale_after: heartbeat * 3,
            shared_store,
        }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the store says another replica holds the cluster's stream (renewed recently enough).
    pub fn held_elsewhere(&self, record: &crate::store::ClusterRecord, now_unix_millis: i64) -> bool {
        if !self.shared_store {
            return false;
        }
        let fresh = now_unix_millis.saturating_sub(record.last_seen_unix_millis)
            <= i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX);
        fresh && record.connected_replica.as_deref().is_some_and(|r| r != self.replica)
    }

    /// Renews this replica's hold of its streams in the store, once per `period`, until the task is dropped. Only
    /// with a shared store: nobody else reads it from the embedded one.
    pub async fn renew<S: Store>(self: Arc<Self>, hub: Arc<Hub<S>>, period: Duration) {
        if !self.shared_store {
            return;
        }
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let ids: Vec<String> = self.inner.lock().expect("sessions lock").keys().cloned().collect();
            if let Err(error) = hub.store().record_connections(&self.replica, &ids, now_millis()).await {
                tracing::warn!(%error, "Could not renew the connected spokes in the store");
            }
        }
    }

    /// Registers a stream for a cluster; an older stream of the same cluster is cancelled.
    fn register(
        &self,
        cluster: &str,
        labels: BTreeMap<String, String>,
        applied_revision: u64,
        now: i64,
    ) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancelled) = oneshot::channel();
        let previous = self.inner.lock().expect("sessions lock").insert(
            cluster.to_string(),
            Session {
                id,
                labels,
                connected_unix_millis: now,
                applied_revision,
                cancel: Some(cancel),
            },
        );
        if let Some(mut previous) = previous
            && let Some(cancel) = previous.cancel.take()
        {
            let _ = cancel.send(());
        }
        (id, cancelled)
    }

    fn acknowledged(&self, cluster: &str, id: u64, revision: u64) {
        if let Some(session) = self.inner.lock().expect("sessions lock").get_mut(cluster)
            && session.id == id
        {
            session.applied_revision = revision;
        }
    }

    /// Removes the session if it is still the cluster's current one; whether it was.
    fn unregister(&self, cluster: &str, id: u64) -> bool {
        let mut inner = self.inner.lock().expect("sessions lock");
        let current = inner.get(cluster).is_some_and(|s| s.id == id);
        if current {
            inner.remove(cluster);
        }
        current
    }

    /// Connected clusters by id.
    pub fn connected(&self) -> BTreeMap<String, Connected> {
        self.inner
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    Connected {
                        labels: s.labels.clone(),
                        connected_unix_millis: s.connected_unix_millis,
                        applied_revision: s.applied_revision,
                    },
                )
            })
            .collect()
    }
}

/// The `SpokeSync` service.
#[derive(Debug)]
pub struct SpokeSyncService<S> {
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
    options: ServeOptions,
    plaintext: bool,
}

impl<S: Store> SpokeSyncService<S> {
    pub fn new(hub: Arc<Hub<S>>, sessions: Arc<Sessions>, options: ServeOptions, plaintext: bool) -> Self {
        Self {
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
        let identity = caller(&request, self.plaintext)?;
        if let Some(PeerIdentity::Admin(name)) = &identity {
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
        let cluster = hello.cluster_id.clone();
        if !valid_id(&cluster) {
            return Err(Status::invalid_argument(format!(
                "hello.clusterId {cluster:?}: lowercase letters, digits, '-' and '.', at most 63 characters"
            )));
        }
        if let Some(PeerIdentity::Cluster(certified)) = &identity
            && *certified != cluster
        {
            tracing::warn!(certified = %certified, claimed = %cluster, "Refused a hello for another cluster");
            return Err(Status::permission_denied(format!(
                "the client certificate is for cluster {certified:?}, not {cluster:?}"
            )));
        }
        let labels: BTreeMap<String, String> = hello.labels.clone().into_iter().collect();
        let now = now_millis();
        let store = self.hub.store();
        store
            .upsert_cluster(&cluster, &labels, now)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // A spoke ahead of this replica (it moved here from a replica that saw a newer revision first): catch up from
        // the store before answering, or it would be sent an older intent.
        if hello.last_applied_revision > self.hub.snapshot().revision
            && let Err(error) = self.hub.refresh().await
        {
            tracing::warn!(cluster = %cluster, %error, "Could not catch up with the store");
        }

        let mut snapshots = self.hub.subscribe();
        let snapshot = snapshots.borrow_and_update().clone();
        let selected = snapshot.select(&labels);
        let unchanged = match hello.last_applied_revision {
            0 => false,
            last if last > snapshot.revision => false,
            last if last == snapshot.revision => true,
            last => match store.revision(last).await {
                Ok(revision) => {
                    let then = Snapshot::new(revision.info.number, revision.documents);
                    same_documents(&then, &then.select(&labels), &snapshot, &selected)
                }
                Err(_) => false,
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.send(Ok(intent(&snapshot, &selected, unchanged)))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        // Other replicas learn who holds the stream from the store (the embedded store has no other replica).
        // Recorded before the session is registered: nothing awaits between registering it and spawning its task,
        // so a stream dropped meanwhile cannot leave a session that never ends (a record without a session expires
        // after three heartbeat periods).
        if self.sessions.shared_store
            && let Err(error) = store
                .record_connections(self.sessions.replica(), std::slice::from_ref(&cluster), now)
                .await
        {
            tracing::warn!(cluster = %cluster, %error, "Could not record the connection in the store");
        }
        let (id, cancelled) = self
            .sessions
            .register(&cluster, labels.clone(), hello.last_applied_revision, now);
        tracing::info!(cluster = %cluster, revision = snapshot.revision, resumed = unchanged, "Spoke connected");
        let session = SessionTask {
            hub: self.hub.clone(),
            metrics: self.options.metrics.clone(),
            sessions: self.sessions.clone(),
            options: self.options.clone(),
            cluster,
            labels,
            id,
            sent: (snapshot, selected),
        };
        tokio::spawn(session.run(inbound, tx, snapshots, cancelled));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
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
fn intent(snapshot: &Snapshot, selected: &[usize], unchanged: bool) -> pb::HubMessage {
    pb::HubMessage {
        msg: Some(hub_message::Msg::Intent(pb::IntentRevision {
            revision: snapshot.revision,
            documents: if unchanged {
                Vec::new()
            } else {
                selected.iter().map(|i| snapshot.wire[*i].1.clone()).collect()
            },
            unchanged,
        })),
    }
}

fn heartbeat() -> pb::HubMessage {
    pb::HubMessage {
        msg: Some(hub_message::Msg::Heartbeat(pb::Heartbeat {
            sent_unix_millis: now_millis(),
        })),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

struct SessionTask<S> {
    hub: Arc<Hub<S>>,
    metrics: Arc<crate::metrics::Metrics>,
    sessions: Arc<Sessions>,
    options: ServeOptions,
    cluster: String,
    labels: BTreeMap<String, String>,
    id: u64,
    /// The snapshot and selection last sent (shared with every session; nothing is copied per spoke).
    sent: (Arc<Snapshot>, Vec<usize>),
}

impl<S: Store> SessionTask<S> {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::SpokeMessage>,
        tx: mpsc::Sender<Result<pb::HubMessage, Status>>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut cancelled: oneshot::Receiver<()>,
    ) {
        let mut ticker = tokio::time::interval(self.options.heartbeat);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        let reason = loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break "hub shutting down";
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    let selected = snapshot.select(&self.labels);
                    let unchanged = same_documents(&self.sent.0, &self.sent.1, &snapshot, &selected);
                    let message = intent(&snapshot, &selected, unchanged);
                    self.sent = (snapshot, selected);
                    match tokio::time::timeout(self.options.send_timeout, tx.send(Ok(message))).await {
                        Ok(Ok(())) => {
                            self.metrics.pushes.inc();
                        }
                        Ok(Err(_)) => break "stream closed",
                        Err(_) => break "spoke fell behind; dropped so it reconnects and resyncs",
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        last_heard = Instant::now();
                        self.handle(message).await;
                    }
                    Ok(None) => break "spoke closed the stream",
                    Err(status) => {
                        tracing::debug!(cluster = %self.cluster, %status, "Inbound stream error");
                        break "inbound stream failed";
                    }
                },
                _ = ticker.tick() => {
                    if last_heard.elapsed() > self.options.heartbeat * 3 {
                        let _ = tx.try_send(Err(Status::unavailable("heartbeat timeout: nothing heard from the spoke")));
                        break "heartbeat timeout";
                    }
                    let _ = tx.try_send(Ok(heartbeat()));
                }
                _ = &mut cancelled => break "replaced by a newer stream of the same cluster",
            }
        };
        // A newer stream of the same cluster on this replica replaced this one: the store's record is its.
        if self.sessions.unregister(&self.cluster, self.id) {
            let _ = self
                .hub
                .store()
                .record_disconnect(&self.cluster, self.sessions.replica(), now_millis())
                .await;
        }
        tracing::info!(cluster = %self.cluster, reason, "Spoke disconnected");
    }

    async fn handle(&mut self, message: pb::SpokeMessage) {
        let store = self.hub.store();
        let now = now_millis();
        let result = match message.msg {
            Some(spoke_message::Msg::Facts(facts)) => {
                store
                    .record_facts(&self.cluster, &tollgate_common::wire::facts_to_json(&facts), now)
                    .await
            }
            Some(spoke_message::Msg::Inventory(inventory)) => {
                let agents: Vec<AgentRecord> = inventory.agents.into_iter().map(agent_record).collect();
                store.record_inventory(&self.cluster, &agents, now).await
            }
            Some(spoke_message::Msg::Ack(ack)) => {
                if !ack.errors.is_empty() {
                    tracing::warn!(cluster = %self.cluster, revision = ack.revision, errors = ?ack.errors, "Spoke reported errors");
                }
                self.sessions.acknowledged(&self.cluster, self.id, ack.revision);
                store.record_applied(&self.cluster, ack.revision, now).await
            }
            Some(spoke_message::Msg::Heartbeat(_)) => Ok(()),
            Some(spoke_message::Msg::Hello(_)) | None => {
                tracing::debug!(cluster = %self.cluster, "Ignored an unexpected message");
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::warn!(cluster = %self.cluster, %error, "Recording a spoke report failed");
        }
    }
}

fn agent_record(status: pb::AgentStatus) -> AgentRecord {
    AgentRecord {
        namespace: status.namespace,
        name: status.name,
        labels: status.labels.into_iter().collect(),
        verified: status.verified,
        verification_reason: status.verification_reason,
        mode: status.mode,
        rule_count: status.rule_count,
        rule_sources: status.rule_sources,
        applied_revision: status.applied_revision,
        errors: status.errors,
        dropped: status.dropped_rules,
        plan_inputs_json: status.plan_inputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClusterRecord;

    fn record(replica: Option<&str>, last_seen: i64) -> ClusterRecord {
        ClusterRecord {
            id: "c1".to_string(),
            labels: BTreeMap::new(),
            first_seen_unix_millis: 0,
            last_seen_unix_millis: last_seen,
            facts_json: None,
            applied_revision: 0,
            connected_replica: replica.map(String::from),
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
