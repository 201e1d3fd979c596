//! The spoke's connection to the hub: one long-lived mTLS stream, resumed by store, revision and digest, with
//! heartbeats and capped exponential backoff with jitter. The last intent received is persisted in a ConfigMap and
//! enforced across hub outages and spoke restarts; nothing here ever blocks enforcement. An intent from another
//! hub store, or older than the one enforced, is refused (the cluster is Diverged) until an admin adopts it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_common::Intent;
use tollgate_common::document::DocumentSet;
use tollgate_common::wire::intent_from_wire;
use tollgate_proto::v1::spoke_sync_client::SpokeSyncClient;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::conditions::{Conditions, Kind};
use crate::metrics::ReasonLabel;
use crate::reconcile::FIELD_MANAGER;

/// Heartbeat period of the spoke; the hub is considered gone after three periods of silence.
const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The intent the spoke enforces.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentState {
    /// The documents, with the revision at which they last changed (it stamps the policies, so a hub revision
    /// that changes nothing for this cluster rewrites nothing).
    pub intent: Intent,
    /// The latest hub revision received (acknowledged after the pass that applies it). The spoke refuses an intent
    /// of its store at a lower revision.
    pub latest_revision: u64,
    /// The hub store the intent comes from; `None` before the first intent (or from a cache written before stores
    /// had ids): then an intent of any store is accepted, at a revision not below `latest_revision`.
    pub store_id: Option<String>,
    /// The digest of `intent`'s documents (`tollgate_common::intent::digest`).
    pub digest: String,
    /// Why the NetworkPolicies in force are kept exactly as they are until the hub answers (the cache cannot be
    /// read, or is missing while policies name a hub revision); `None`: the intent is enforced.
    pub hold: Option<String>,
}

impl Default for IntentState {
    fn default() -> Self {
        Self {
            intent: Intent::default(),
            latest_revision: 0,
            store_id: None,
            digest: DocumentSet::default().digest(),
            hold: None,
        }
    }
}

impl IntentState {
    /// No intent to enforce: keep the policies in force until the hub answers, and take nothing below `floor`.
    pub fn held(floor: u64, reason: String) -> Self {
        Self {
            latest_revision: floor,
            hold: Some(reason),
            ..Self::default()
        }
    }
}

/// Why an intent from the hub was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It comes from another store than the one this cluster enforces.
    OtherStore {
        own: String,
        own_revision: u64,
        offered: String,
        revision: u64,
    },
    /// It is older than what this cluster enforces (same store, or none known).
    OlderRevision { own: u64, offered: u64 },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OtherStore { .. } => "OtherStore",
            Self::OlderRevision { .. } => "OlderRevision",
        }
    }

    /// One sentence for people: what was refused, why, and what ends it.
    pub fn message(&self, cluster: &str) -> String {
        match self {
            Self::OtherStore {
                own,
                own_revision,
                offered,
                revision,
            } => format!(
                "Refused revision {revision} of hub store {offered}: this cluster enforces revision {own_revision} of \
                 store {own}, so the hub came back on another store (a lost volume, a new database); the policies in \
                 force are kept. If the hub's intent is the one to enforce, run `tollgate-hub clusters adopt {cluster}`."
            ),
            Self::OlderRevision { own, offered } => format!(
                "Refused revision {offered}: this cluster enforces revision {own}, so the hub's store is older than \
                 what this cluster received (restored from a backup?); the policies in force are kept. A new revision \
                 past {own}, or `tollgate-hub clusters adopt {cluster}`, ends this."
            ),
        }
    }
}

/// Whether the spoke takes an intent (docs/design.md, "Failing closed"): one an admin adopted for this cluster; else only from
/// the store it enforces (any store when it has none yet) and at a revision not below its own.
pub fn admit(current: &IntentState, store_id: &str, revision: u64, adopt: bool) -> Result<(), Refusal> {
    if adopt {
        return Ok(());
    }
    if let Some(own) = &current.store_id
        && own != store_id
    {
        return Err(Refusal::OtherStore {
            own: own.clone(),
            own_revision: current.latest_revision,
            offered: store_id.to_string(),
            revision,
        });
    }
    if revision < current.latest_revision {
        return Err(Refusal::OlderRevision {
            own: current.latest_revision,
            offered: revision,
        });
    }
    Ok(())
}

/// How to reach the hub.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// One address per hub replica (at least one); the spoke moves to the next whenever a session ends.
    pub urls: Vec<String>,
    /// `None`: plaintext (development, loopback).
    pub tls: Option<HubTls>,
    pub cluster_id: String,
    pub labels: BTreeMap<String, String>,
}

/// The spoke's TLS identity towards the hub.
#[derive(Clone, Debug)]
pub enum HubTls {
    /// Certificate, key and the hub's CA in files, read at every connection (a mounted Secret, cert-manager).
    Files(TlsFiles),
    /// Made here and signed by the hub from a join token, kept in a Secret and renewed (`--join-token-file`).
    Joined(Arc<crate::membership::Membership>),
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: Option<String>,
}

/// What the spoke reports; the latest of each is (re)sent on every connection.
#[derive(Debug)]
pub struct Reports {
    pub facts: watch::Receiver<Option<pb::ClusterFacts>>,
    pub inventory: watch::Receiver<Option<pb::AgentInventory>>,
    pub ack: watch::Receiver<Option<pb::Ack>>,
    pub conditions: watch::Receiver<crate::conditions::ConditionSet>,
}

/// The annotations of the cache ConfigMap: everything but the documents lives in its metadata, so that the data
/// (limited to 1 MiB in all) holds the documents alone.
const ANNOTATION_REVISION: &str = "tollgate.dev/revision";
const ANNOTATION_CONTENT_REVISION: &str = "tollgate.dev/content-revision";
const ANNOTATION_STORE: &str = "tollgate.dev/store-id";
const ANNOTATION_DIGEST: &str = "tollgate.dev/digest";
const DOCUMENTS_KEY: &str = "documents.yaml";

/// The ConfigMap holding the last intent received.
#[derive(Clone, Debug)]
pub struct PersistedIntent {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl PersistedIntent {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `namespace/name`.
    pub fn location(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The object Events about the cache regard.
    pub fn reference(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("ConfigMap".to_string()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            ..Default::default()
        }
    }

    /// The persisted intent: `Ok(None)` when there is none; an error when it exists but cannot be read, is
    /// invalid, or its documents do not match their digest (edited by hand) — the caller then keeps the policies
    /// in force rather than trust it.
    pub async fn load(&self) -> anyhow::Result<Option<IntentState>> {
        let Some(map) = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("reading ConfigMap {}", self.location()))?
        else {
            return Ok(None);
        };
        let annotations = map.metadata.annotations.unwrap_or_default();
        let data = map.data.unwrap_or_default();
        let number = |text: Option<&String>| text.and_then(|v| v.parse::<u64>().ok());
        let (latest, content, store_id, digest) = if annotations.contains_key(ANNOTATION_REVISION) {
            (
                number(annotations.get(ANNOTATION_REVISION)),
                number(annotations.get(ANNOTATION_CONTENT_REVISION)),
                annotations.get(ANNOTATION_STORE).cloned(),
                annotations.get(ANNOTATION_DIGEST).cloned(),
            )
        } else {
            // Written before stores had ids: the revisions were data keys, and there is no digest.
            (
                number(data.get("revision")),
                number(data.get("contentRevision")),
                None,
                None,
            )
        };
        let (Some(latest), Some(content)) = (latest, content) else {
            bail!("ConfigMap {} has no readable revision", self.location());
        };
        let yaml = data.get(DOCUMENTS_KEY).cloned().unwrap_or_default();
        let set = DocumentSet::from_yaml(&format!("configmap/{}", self.name), &yaml).map_err(|errors| {
            anyhow::anyhow!("ConfigMap {} holds invalid documents: {}", self.location(), errors[0])
        })?;
        let computed = set.digest();
        if let Some(digest) = &digest
            && *digest != computed
        {
            bail!(
                "the documents of ConfigMap {} do not match their digest (edited by hand?)",
                self.location()
            );
        }
        Ok(Some(IntentState {
            intent: Intent {
                revision: Some(content),
                policies: set.policies.into_values().collect(),
                guardrails: set.guardrails.into_values().collect(),
            },
            latest_revision: latest,
            store_id: store_id.filter(|s| !s.is_empty()),
            digest: computed,
            hold: None,
        }))
    }

    pub async fn save(&self, state: &IntentState) -> Result<(), kube::Error> {
        let map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke"},
                "annotations": {
                    ANNOTATION_REVISION: state.latest_revision.to_string(),
                    ANNOTATION_CONTENT_REVISION: state.intent.revision.unwrap_or(0).to_string(),
                    ANNOTATION_STORE: state.store_id.clone().unwrap_or_default(),
                    ANNOTATION_DIGEST: state.digest,
                },
            },
            "data": {DOCUMENTS_KEY: state.intent.document_set().to_yaml()},
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&map),
            )
            .await?;
        Ok(())
    }

    /// Saves the state and keeps the `IntentNotPersisted` condition true to the outcome.
    pub async fn save_reporting(&self, state: &IntentState, conditions: &Conditions) {
        match self.save(state).await {
            Ok(()) => conditions.clear(Kind::IntentNotPersisted),
            Err(error) => {
                let why = match &error {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                conditions.set(
                    Kind::IntentNotPersisted,
                    "CacheWriteFailed",
                    format!(
                        "The hub's intent is enforced but could not be cached in ConfigMap {} ({why}): if the spoke \
                         restarts while the hub is unreachable it can only hold the policies in force. Create namespace \
                         {} (or set --spoke-namespace to the spoke's namespace) and let the spoke get, create and patch \
                         that ConfigMap.",
                        self.location(),
                        self.namespace
                    ),
                );
            }
        }
    }
}

/// What the hub connection works with.
#[derive(Debug)]
pub struct HubConnection {
    pub settings: HubSettings,
    pub state: watch::Sender<Arc<IntentState>>,
    pub persisted: PersistedIntent,
    pub reports: Reports,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub conditions: Conditions,
    /// The TLS sessions the hub gave tickets for, resumed at the next connection.
    pub sessions: crate::hub_tls::Sessions,
}

/// Runs the hub connection for as long as the spoke runs: reconnects with backoff after any failure. A refusal by
/// every hub replica (an unregistered or removed cluster, a certificate for another cluster) makes the spoke not
/// ready until a stream is accepted: it keeps enforcing the last intent and keeps trying, so that an admin's fix
/// (`clusters add`, a new certificate) takes effect without restarting the spoke.
pub async fn run(mut connection: HubConnection) {
    let settings = connection.settings.clone();
    let mut rotation = Rotation::new(settings.urls.len());
    loop {
        let started = Instant::now();
        let url = &settings.urls[rotation.current()];
        let result = session(&mut connection, url).await;
        connection.metrics.hub_connected.set(0);
        let status = match result {
            Ok(()) => tonic::Status::unavailable("the stream ended"),
            Err(status) => status,
        };
        let refused = matches!(
            status.code(),
            Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
        );
        // A refused identity is presented afresh, never through a session that began with it.
        if refused || status.code() == Code::Unauthenticated {
            connection.sessions.forget();
        }
        let retry = rotation.after_session(refused, started.elapsed(), jitter_seed());
        let delay = retry.delay;
        if retry.refused_by_every_replica {
            tracing::error!(code = ?status.code(), message = status.message(), retry_ms = delay.as_millis() as u64, "The hub refused this spoke; enforcing the last intent and retrying with backoff");
            connection
                .metrics
                .set_refused(&format!("{:?}: {}", status.code(), status.message()));
        } else if refused {
            tracing::error!(hub = %url, code = ?status.code(), message = status.message(), "This hub replica refused the spoke; trying the next");
        }
        let next = &settings.urls[rotation.current()];
        tracing::warn!(hub = %url, code = ?status.code(), message = status.message(), next = %next, retry_ms = delay.as_millis() as u64, "Hub connection lost; enforcing the last intent");
        tokio::time::sleep(delay).await;
    }
}

/// Which hub replica to try next, and after how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    replicas: usize,
    /// Sessions started so far; the current replica is `sessions mod replicas`.
    sessions: usize,
    /// Backoff step, advanced once per full round of failures.
    attempt: u32,
    /// Refusals in a row (InvalidArgument / PermissionDenied / FailedPrecondition).
    refused: usize,
}

impl Rotation {
    pub fn new(replicas: usize) -> Self {
        Self {
            replicas: replicas.max(1),
            sessions: 0,
            attempt: 0,
            refused: 0,
        }
    }

    /// The index of the replica to connect to.
    pub fn current(&self) -> usize {
        self.sessions % self.replicas
    }

    /// After a session that lasted `lasted` ended (`refused`: with a refusing status code): the delay before the
    /// next replica, and whether every replica has now refused in turn. The next replica is tried after a short
    /// pause; the capped exponential backoff applies once a whole round failed, and restarts after a session that
    /// lasted longer than the cap.
    pub fn after_session(&mut self, refused: bool, lasted: Duration, seed: u64) -> Retry {
        self.refused = if refused { self.refused + 1 } else { 0 };
        let refused_by_every_replica = self.refused >= self.replicas;
        if refused_by_every_replica {
            // The next round is counted afresh.
            self.refused = 0;
        }
        if lasted > BACKOFF_CAP {
            self.attempt = 0;
        }
        self.sessions += 1;
        let delay = if self.current() != 0 {
            BACKOFF_FIRST / 5
        } else {
            let delay = backoff(self.attempt, seed);
            self.attempt = self.attempt.saturating_add(1);
            delay
        };
        Retry {
            delay,
            refused_by_every_replica,
        }
    }
}

/// What to do after a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub delay: Duration,
    /// Every replica refused in turn: the spoke is not ready until one accepts it.
    pub refused_by_every_replica: bool,
}

/// Capped exponential backoff with full jitter in [delay/2, delay].
pub fn backoff(attempt: u32, seed: u64) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    let half = base / 2;
    let spread = half.as_millis().max(1) as u64;
    half + Duration::from_millis(seed % spread)
}

/// A random seed per spoke process (the standard library's randomly keyed hasher): spokes that lost the hub
/// together do not retry in step.
fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A channel to the hub at `url`; with TLS, a session the hub gave a ticket for is resumed (`sessions`).
async fn connect(
    settings: &HubSettings,
    url: &str,
    metrics: &crate::metrics::Metrics,
    sessions: &crate::hub_tls::Sessions,
) -> Result<Channel, tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(format!("connecting to {url}: {e}"));
    let configure = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(HEARTBEAT)
    };
    let (config, server_name) = match &settings.tls {
        None => {
            let endpoint = Channel::from_shared(url.to_string())
                .map_err(|e| tonic::Status::invalid_argument(format!("--hub {url:?}: {e}")))?;
            return configure(endpoint).connect().await.map_err(|e| unavailable(&e));
        }
        Some(HubTls::Joined(membership)) => {
            let identity = membership.ensure(url).await?;
            let config = identity.client_config(sessions).map_err(|e| unavailable(&e))?;
            (config, membership.server_name())
        }
        Some(HubTls::Files(tls)) => {
            // A missing or unreadable file is not final: a Secret mounted late, or a certificate being renewed, is
            // read again at the next attempt.
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    tonic::Status::unavailable(format!("reading {}: {e} (read again at the next attempt)", p.display()))
                })
            };
            let cert = read(&tls.cert)?;
            metrics.record_certificate("client", &cert);
            let config = sessions
                .config(&read(&tls.ca)?, &cert, &read(&tls.key)?)
                .map_err(|e| unavailable(&e))?;
            (config, tls.server_name.as_deref())
        }
    };
    crate::hub_tls::channel(url, server_name, config, configure)
        .await
        .map_err(|e| unavailable(&e))
}

async fn session(connection: &mut HubConnection, url: &str) -> Result<(), tonic::Status> {
    let HubConnection {
        settings,
        state,
        persisted,
        reports,
        metrics,
        conditions,
        sessions,
    } = connection;
    let channel = connect(settings, url, metrics, sessions).await?;
    let (tx, rx) = mpsc::channel(16);
    let send = |msg: spoke_message::Msg| {
        let tx = tx.clone();
        async move {
            tx.send(pb::SpokeMessage { msg: Some(msg) })
                .await
                .map_err(|_| tonic::Status::unavailable("stream closed"))
        }
    };
    let held = state.borrow().clone();
    reports.conditions.borrow_and_update();
    send(spoke_message::Msg::Hello(pb::Hello {
        cluster_id: settings.cluster_id.clone(),
        labels: settings.labels.clone().into_iter().collect(),
        spoke_version: env!("CARGO_PKG_VERSION").to_string(),
        last_applied_revision: held.latest_revision,
        store_id: held.store_id.clone().unwrap_or_default(),
        digest: held.digest.clone(),
        conditions: conditions.to_wire(),
    }))
    .await?;
    let mut inbound = SpokeSyncClient::new(channel)
        .max_decoding_message_size(tollgate_proto::MAX_INTENT_MESSAGE_BYTES)
        .max_encoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    metrics.hub_connected.set(1);
    metrics.set_refused("");
    tracing::info!(hub = %url, last_applied = held.latest_revision, store = held.store_id.as_deref().unwrap_or("none"), "Connected to the hub");
    // Whatever was reported while away.
    let facts = reports.facts.borrow_and_update().clone();
    if let Some(facts) = facts {
        send(spoke_message::Msg::Facts(facts)).await?;
    }
    let inventory = reports.inventory.borrow_and_update().clone();
    if let Some(inventory) = inventory {
        send(spoke_message::Msg::Inventory(inventory)).await?;
    }
    let ack = reports.ack.borrow_and_update().clone();
    if let Some(ack) = ack {
        send(spoke_message::Msg::Ack(ack)).await?;
    }
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.tick().await;
    let mut last_heard = Instant::now();
    let receiver = Receiver {
        cluster: &settings.cluster_id,
        state,
        persisted,
        metrics,
        conditions,
    };
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(()) };
                last_heard = Instant::now();
                match message.msg {
                    Some(hub_message::Msg::Intent(intent)) => {
                        metrics.hub_updated();
                        if let Some(ack) = receiver.receive(intent).await? {
                            send(spoke_message::Msg::Ack(ack)).await?;
                        }
                    }
                    // Answer the hub's heartbeats, so the hub hears from this spoke once per its own period,
                    // whatever period it was started with.
                    Some(hub_message::Msg::Heartbeat(_)) => {
                        send(spoke_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_millis: tollgate_process::unix_millis() })).await?;
                    }
                    None => {}
                }
            }
            Ok(()) = reports.facts.changed() => {
                let facts = reports.facts.borrow_and_update().clone();
                if let Some(facts) = facts { send(spoke_message::Msg::Facts(facts)).await?; }
            }
            Ok(()) = reports.inventory.changed() => {
                let inventory = reports.inventory.borrow_and_update().clone();
                if let Some(inventory) = inventory { send(spoke_message::Msg::Inventory(inventory)).await?; }
            }
            Ok(()) = reports.ack.changed() => {
                let ack = reports.ack.borrow_and_update().clone();
                if let Some(ack) = ack { send(spoke_message::Msg::Ack(ack)).await?; }
            }
            Ok(()) = reports.conditions.changed() => {
                let conditions = crate::conditions::to_wire(&reports.conditions.borrow_and_update());
                send(spoke_message::Msg::Conditions(pb::SpokeConditions { conditions })).await?;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > HEARTBEAT * 3 {
                    return Err(tonic::Status::unavailable("heartbeat timeout: nothing heard from the hub"));
                }
                send(spoke_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_millis: tollgate_process::unix_millis() })).await?;
                // A cache that could not be written is tried again (a namespace created since, a grant fixed).
                if conditions.get(Kind::IntentNotPersisted).is_some() {
                    let current = state.borrow().clone();
                    persisted.save_reporting(&current, conditions).await;
                }
            }
        }
    }
}

/// Takes intents from the hub: refuses those of another store or an older revision (Diverged), refuses invalid
/// ones (answered with an Ack that carries the errors), persists and publishes the rest.
struct Receiver<'a> {
    cluster: &'a str,
    state: &'a watch::Sender<Arc<IntentState>>,
    persisted: &'a PersistedIntent,
    metrics: &'a crate::metrics::Metrics,
    conditions: &'a Conditions,
}

impl Receiver<'_> {
    /// Handles one intent; returns the Ack to send at once (an invalid intent), if any.
    async fn receive(&self, message: pb::IntentRevision) -> Result<Option<pb::Ack>, tonic::Status> {
        let current = self.state.borrow().clone();
        if let Err(refusal) = admit(&current, &message.store_id, message.revision, message.adopt) {
            self.metrics
                .intents_refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.reason(),
                })
                .inc();
            self.conditions
                .set(Kind::Diverged, refusal.reason(), refusal.message(self.cluster));
            return Ok(None);
        }
        let next = if message.unchanged {
            if message.digest != current.digest {
                return Err(tonic::Status::aborted(
                    "the hub's `unchanged` answer does not match this spoke's documents; reconnecting",
                ));
            }
            IntentState {
                latest_revision: message.revision,
                store_id: Some(message.store_id.clone()),
                hold: None,
                ..(*current).clone()
            }
        } else {
            let checked = intent_from_wire(&message)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())
                .and_then(|intent| {
                    let digest = intent.document_set().digest();
                    if message.digest.is_empty() || digest == message.digest {
                        Ok((intent, digest))
                    } else {
                        Err(vec![format!(
                            "the documents do not match the digest the hub sent ({} != {})",
                            digest, message.digest
                        )])
                    }
                });
            match checked {
                Ok((intent, digest)) => IntentState {
                    intent,
                    latest_revision: message.revision,
                    store_id: Some(message.store_id.clone()),
                    digest,
                    hold: None,
                },
                Err(errors) => {
                    self.metrics
                        .intents_refused
                        .get_or_create(&ReasonLabel { reason: "Invalid" })
                        .inc();
                    tracing::error!(
                        revision = message.revision,
                        ?errors,
                        "Refused an invalid intent; keeping the last one"
                    );
                    return Ok(Some(pb::Ack {
                        revision: message.revision,
                        errors,
                        store_id: message.store_id,
                    }));
                }
            }
        };
        tracing::info!(
            revision = message.revision,
            unchanged = message.unchanged,
            adopt = message.adopt,
            store = %message.store_id,
            "Intent received"
        );
        if message.adopt && current.store_id.as_deref() != Some(message.store_id.as_str()) {
            tracing::warn!(
                previous_store = current.store_id.as_deref().unwrap_or("none"),
                previous_revision = current.latest_revision,
                store = %message.store_id,
                revision = message.revision,
                "Adopted the hub's intent (an admin ran `tollgate-hub clusters adopt`)"
            );
        }
        self.conditions.clear(Kind::Diverged);
        self.conditions.clear(Kind::PoliciesHeld);
        self.persisted.save_reporting(&next, self.conditions).await;
        self.state.send_replace(Arc::new(next));
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spoke's side of integrity: what it takes from a hub, as a table.
    #[test]
    fn an_intent_is_taken_only_from_the_own_store_at_a_revision_not_below_its_own() {
        let enforcing = IntentState {
            store_id: Some("s1".into()),
            latest_revision: 5,
            ..IntentState::default()
        };
        let none_yet = IntentState::default();
        let held = IntentState::held(4, "no cache".into());
        // (what the spoke enforces, the hub's store and revision, adopt, the refusal expected, the case)
        type Case<'a> = (&'a IntentState, &'a str, u64, bool, Option<&'a str>, &'a str);
        let cases: [Case; 10] = [
            (&enforcing, "s1", 5, false, None, "the same revision (resumption)"),
            (&enforcing, "s1", 6, false, None, "a newer revision"),
            (
                &enforcing,
                "s1",
                4,
                false,
                Some("OlderRevision"),
                "an older revision of the same store",
            ),
            (
                &enforcing,
                "s2",
                9,
                false,
                Some("OtherStore"),
                "another store, even at a higher revision",
            ),
            (
                &enforcing,
                "s2",
                0,
                false,
                Some("OtherStore"),
                "a hub on a new, empty store",
            ),
            (&enforcing, "s2", 0, true, None, "adopted by an admin"),
            (&enforcing, "s1", 2, true, None, "an older revision, adopted"),
            (&none_yet, "s9", 0, false, None, "nothing enforced yet: any store"),
            (
                &held,
                "s9",
                3,
                false,
                Some("OlderRevision"),
                "policies name revision 4: nothing older",
            ),
            (
                &held,
                "s9",
                4,
                false,
                None,
                "policies name revision 4: revision 4 of any store",
            ),
        ];
        for (state, store, revision, adopt, expected, case) in cases {
            let result = admit(state, store, revision, adopt);
            assert_eq!(
                result.as_ref().err().map(Refusal::reason),
                expected,
                "{case}: {result:?}"
            );
        }
        let message = admit(&enforcing, "s2", 0, false).unwrap_err().message("prod-east");
        assert!(
            message.contains("revision 0 of hub store s2")
                && message.contains("revision 5 of store s1")
                && message.contains("tollgate-hub clusters adopt prod-east"),
            "{message}"
        );
    }

    fn retry(delay_millis: u64, refused_by_every_replica: bool) -> Retry {
        Retry {
            delay: Duration::from_millis(delay_millis),
            refused_by_every_replica,
        }
    }

    #[test]
    fn one_hub_backs_off_and_a_refusal_keeps_trying_with_backoff() {
        let mut one = Rotation::new(1);
        let short = Duration::from_secs(1);
        assert_eq!(one.after_session(false, short, 0), retry(125, false));
        assert_eq!(one.after_session(false, short, 0), retry(250, false));
        assert_eq!(one.current(), 0);
        // A session that lasted past the cap starts the backoff again.
        assert_eq!(one.after_session(false, BACKOFF_CAP * 2, 0), retry(125, false));
        assert_eq!(one.after_session(true, short, 0), retry(250, true));
        assert_eq!(
            one.after_session(true, short, 0),
            retry(500, true),
            "still refused, backing off"
        );
    }

    #[test]
    fn replicas_are_tried_in_turn_and_only_a_refusal_by_every_one_counts() {
        let short = Duration::from_secs(1);
        let mut three = Rotation::new(3);
        assert_eq!(three.current(), 0);
        assert_eq!(three.after_session(false, short, 0), retry(50, false));
        assert_eq!(three.current(), 1);
        assert_eq!(three.after_session(false, short, 0), retry(50, false));
        // A full round failed: back to the first, after the backoff.
        assert_eq!(three.after_session(false, short, 0), retry(125, false));
        assert_eq!(three.current(), 0);
        // Two refusals, then a replica that is only unavailable: the count starts again.
        assert!(!three.after_session(true, short, 0).refused_by_every_replica);
        assert!(!three.after_session(true, short, 0).refused_by_every_replica);
        assert!(!three.after_session(false, short, 0).refused_by_every_replica);
        assert!(!three.after_session(true, short, 0).refused_by_every_replica);
        assert!(!three.after_session(true, short, 0).refused_by_every_replica);
        assert!(
            three.after_session(true, short, 0).refused_by_every_replica,
            "every replica refused in turn"
        );
        // The next round is counted afresh.
        assert!(!three.after_session(true, short, 0).refused_by_every_replica);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff(0, 0), Duration::from_millis(125));
        assert!(backoff(0, u64::MAX) < Duration::from_millis(250));
        assert_eq!(backoff(3, 0), Duration::from_secs(1));
        for attempt in 0..40 {
            let delay = backoff(attempt, jitter_seed());
            assert!(delay <= BACKOFF_CAP, "{attempt}: {delay:?}");
        }
        assert!(backoff(40, 0) >= BACKOFF_CAP / 2);
    }
}
