//! The spokes connected to one hub replica: each stream's session, the control channel admin calls use to act on
//! it, and the reports its spokes send, waiting to be written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::server::reports::ReportBuffer;
use crate::server::state::Hub;
use crate::server::store::{Registration, Store};

/// The spokes connected to this hub replica, by cluster id. Every stream task touches it (register, acknowledge,
/// unregister) and admin calls act on one cluster's entry (remove, relabel, adopt), so it is a sharded concurrent
/// map rather than one lock: no stream waits on another cluster's.
#[derive(Debug)]
pub struct Sessions {
    inner: DashMap<String, Session>,
    /// Their reports, waiting to be written.
    reports: Arc<ReportBuffer>,
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

/// What an admin call (or the registry check) tells one stream's task. Dropping the sender (a newer stream of the
/// same cluster took its place) ends the stream too.
#[derive(Debug)]
pub(crate) enum Control {
    /// The cluster was removed from the registry: close the stream with PermissionDenied.
    Removed,
    /// The registry's labels changed: select the cluster's documents again.
    Relabel(BTreeMap<String, String>),
    /// Look for an adoption request now.
    Adopt,
}

#[derive(Debug)]
struct Session {
    id: u64,
    labels: BTreeMap<String, String>,
    /// When the client certificate of the stream became valid (`None`: plaintext): a removal revokes it.
    certificate_not_before_unix_millis: Option<i64>,
    connected_unix_millis: i64,
    applied_revision: u64,
    control: mpsc::UnboundedSender<Control>,
}

/// A connected spoke, as the status commands and metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The registry's labels it is served with.
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
            inner: DashMap::new(),
            reports: Arc::default(),
            next_id: AtomicU64::new(0),
            replica: replica.into(),
            stale_after: heartbeat * 3,
            shared_store,
        }
    }

    /// Whether other replicas share the store.
    pub fn shared_store(&self) -> bool {
        self.shared_store
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The reports of this replica's spokes, waiting to be written.
    pub fn reports(&self) -> Arc<ReportBuffer> {
        self.reports.clone()
    }

    fn send(&self, id: &str, control: Control) -> bool {
        self.inner
            .get(id)
            .is_some_and(|session| session.control.send(control).is_ok())
    }

    /// Wakes the stream of cluster `id` on this replica to take an adoption request at once; `false` when this
    /// replica holds no stream of it (the replica that does finds the request within a heartbeat).
    pub fn poke(&self, id: &str) -> bool {
        self.send(id, Control::Adopt)
    }

    /// Closes the stream of cluster `id` on this replica (the cluster was removed from the registry); whether this
    /// replica held one.
    pub fn revoke(&self, id: &str) -> bool {
        match self.inner.remove(id) {
            Some((_, session)) => {
                let _ = session.control.send(Control::Removed);
                true
            }
            None => false,
        }
    }

    /// Serves cluster `id`'s stream on this replica with new registry labels at once; whether this replica holds
    /// one.
    pub fn relabel(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        match self.inner.get_mut(id) {
            Some(mut session) if session.labels != *labels => {
                session.labels = labels.clone();
                session.control.send(Control::Relabel(labels.clone())).is_ok()
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Brings this replica's streams in line with the registry: streams of clusters no longer registered, or whose
    /// certificate a removal revoked (the cluster since registered again), are closed; streams whose labels changed
    /// select their documents again (changes made through another replica, or a hello that raced a removal).
    pub fn reconcile_registry(&self, registrations: &[Registration]) {
        let registered: HashMap<&str, &Registration> = registrations.iter().map(|r| (r.id.as_str(), r)).collect();
        let streams: Vec<(String, Option<i64>)> = self
            .inner
            .iter()
            .map(|entry| (entry.key().clone(), entry.certificate_not_before_unix_millis))
            .collect();
        for (id, not_before) in streams {
            match registered.get(id.as_str()) {
                None => {
                    if self.revoke(&id) {
                        tracing::warn!(cluster = %id, "Closed the stream of a cluster that is no longer registered");
                    }
                }
                Some(registration)
                    if not_before.is_some_and(|t| t <= registration.refuse_certificates_before_unix_millis) =>
                {
                    if self.revoke(&id) {
                        tracing::warn!(cluster = %id, "Closed a stream whose certificate a removal revoked");
                    }
                }
                Some(registration) => {
                    self.relabel(&id, &registration.labels);
                }
            }
        }
    }

    /// Compares this replica's streams with the registry once per `period`, until the task is dropped.
    pub async fn watch_registry<S: Store>(self: Arc<Self>, hub: Arc<Hub<S>>, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            if self.inner.is_empty() {
                continue;
            }
            match hub.store().registrations().await {
                Ok(registrations) => self.reconcile_registry(&registrations),
                Err(error) => {
                    tracing::warn!(error = %tollgate_process::error_chain(&error), "Could not read the cluster registry")
                }
            }
        }
    }

    /// Whether the store says another replica holds the cluster's stream (renewed recently enough).
    pub fn held_elsewhere(&self, record: &crate::server::store::ClusterRecord, now_unix_millis: i64) -> bool {
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
            let ids: Vec<String> = self.inner.iter().map(|entry| entry.key().clone()).collect();
            if let Err(error) = hub
                .store()
                .record_connections(&self.replica, &ids, tollgate_process::unix_millis())
                .await
            {
                tracing::warn!(error = %tollgate_process::error_chain(&error), "Could not renew the connected spokes in the store");
            }
        }
    }

    /// Registers a stream for a cluster; an older stream of the same cluster ends (its control channel closes).
    pub(crate) fn register(
        &self,
        cluster: &str,
        labels: BTreeMap<String, String>,
        certificate_not_before_unix_millis: Option<i64>,
        applied_revision: u64,
        now: i64,
    ) -> (u64, mpsc::UnboundedReceiver<Control>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (control, controlled) = mpsc::unbounded_channel();
        // The replaced session is dropped here, outside the map's shard lock.
        let _replaced = self.inner.insert(
            cluster.to_string(),
            Session {
                id,
                labels,
                certificate_not_before_unix_millis,
                connected_unix_millis: now,
                applied_revision,
                control,
            },
        );
        (id, controlled)
    }

    pub(crate) fn acknowledged(&self, cluster: &str, id: u64, revision: u64) {
        if let Some(mut session) = self.inner.get_mut(cluster)
            && session.id == id
        {
            session.applied_revision = revision;
        }
    }

    /// Removes the session if it is still the cluster's current one; whether it was.
    pub(crate) fn unregister(&self, cluster: &str, id: u64) -> bool {
        self.inner.remove_if(cluster, |_, session| session.id == id).is_some()
    }

    /// Connected clusters by id.
    pub fn connected(&self) -> BTreeMap<String, Connected> {
        self.inner
            .iter()
            .map(|entry| {
                let (id, s) = entry.pair();
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
