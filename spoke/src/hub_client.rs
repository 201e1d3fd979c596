//! The spoke's connection to the hub (DESIGN §3.6–§3.8): one long-lived mTLS stream, resumed by revision,
//! with heartbeats and capped exponential backoff with jitter. The last intent received is persisted in a
//! ConfigMap and enforced across hub outages and spoke restarts; nothing here ever blocks enforcement.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_common::Intent;
use tollgate_common::document::{DocumentSet, EgressGuardrail, EgressGuardrailSpec, Metadata, VerifiedDefault};
use tollgate_common::wire::intent_from_wire;
use tollgate_proto::v1::spoke_sync_client::SpokeSyncClient;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::reconcile::FIELD_MANAGER;

/// Heartbeat period of the spoke; the hub is considered gone after three periods of silence.
const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The intent the spoke enforces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntentState {
    /// The documents, with the revision at which they last changed (it stamps the policies, so a hub revision
    /// that changes nothing for this cluster rewrites nothing).
    pub intent: Intent,
    /// The latest hub revision received (acknowledged after the pass that applies it).
    pub latest_revision: u64,
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

#[derive(Clone, Debug)]
pub struct HubTls {
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
}

/// The ConfigMap holding the last intent received.
#[derive(Clone, Debug)]
pub struct PersistedIntent {
    api: Api<ConfigMap>,
    name: String,
}

impl PersistedIntent {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
        }
    }

    /// The persisted intent; an unreadable one fails closed (every verified agent without rules gets the
    /// baseline only) rather than open.
    pub async fn load(&self) -> anyhow::Result<Option<IntentState>> {
        let Some(map) = self
            .api
            .get_opt(&self.name)
            .await
            .context("reading the persisted intent")?
        else {
            return Ok(None);
        };
        let data = map.data.unwrap_or_default();
        let number = |key: &str| data.get(key).and_then(|v| v.parse::<u64>().ok());
        let (Some(latest), Some(content)) = (number("revision"), number("contentRevision")) else {
            return Ok(Some(fail_closed("the persisted intent has no readable revision")));
        };
        let yaml = data.get("documents.yaml").cloned().unwrap_or_default();
        match DocumentSet::from_yaml(&format!("configmap/{}", self.name), &yaml) {
            Ok(set) => Ok(Some(IntentState {
                intent: Intent {
                    revision: Some(content),
                    policies: set.policies.into_values().collect(),
                    guardrails: set.guardrails.into_values().collect(),
                },
                latest_revision: latest,
            })),
            Err(errors) => Ok(Some(fail_closed(&format!(
                "the persisted intent is invalid: {}",
                errors[0]
            )))),
        }
    }

    pub async fn save(&self, state: &IntentState) -> anyhow::Result<()> {
        let mut set = DocumentSet::default();
        for policy in &state.intent.policies {
            set.insert(tollgate_common::Document::Policy(policy.clone()));
        }
        for guardrail in &state.intent.guardrails {
            set.insert(tollgate_common::Document::Guardrail(guardrail.clone()));
        }
        let map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke"}},
            "data": {
                "revision": state.latest_revision.to_string(),
                "contentRevision": state.intent.revision.unwrap_or(0).to_string(),
                "documents.yaml": set.to_yaml(),
            },
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&map),
            )
            .await
            .context("persisting the intent")?;
        Ok(())
    }
}

fn fail_closed(reason: &str) -> IntentState {
    tracing::error!(
        reason,
        "Failing closed: verified agents without rules get the baseline only"
    );
    IntentState {
        intent: Intent {
            revision: None,
            policies: Vec::new(),
            guardrails: vec![EgressGuardrail {
                metadata: Metadata {
                    name: "unreadable-persisted-intent".into(),
                    ..Metadata::default()
                },
                spec: EgressGuardrailSpec {
                    verified_default: VerifiedDefault::BaselineOnly,
                    ..EgressGuardrailSpec::default()
                },
            }],
        },
        latest_revision: 0,
    }
}

/// Runs the hub connection until a final refusal; reconnects otherwise.
pub async fn run(
    settings: HubSettings,
    state: watch::Sender<Arc<IntentState>>,
    persisted: PersistedIntent,
    mut reports: Reports,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut rotation = Rotation::new(settings.urls.len());
    loop {
        let started = Instant::now();
        let url = &settings.urls[rotation.current()];
        let result = session(&settings, url, &state, &persisted, &mut reports, &metrics).await;
        let status = match result {
            Ok(()) => tonic::Status::unavailable("the stream ended"),
            Err(status) => status,
        };
        let refused = matches!(
            status.code(),
            Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
        );
        let Some(delay) = rotation.after_session(refused, started.elapsed(), jitter_seed()) else {
            tracing::error!(code = ?status.code(), message = status.message(), "The hub refused this spoke; not retrying (enforcing the last intent)");
            return;
        };
        if refused {
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

    /// After a session that lasted `lasted` ended (`refused`: with a final status code): `None` when every replica
    /// refused in turn (stop), else the delay before the next replica. The next replica is tried after a short
    /// pause; the capped exponential backoff applies once a whole round failed, and restarts after a session that
    /// lasted longer than the cap.
    pub fn after_session(&mut self, refused: bool, lasted: Duration, seed: u64) -> Option<Duration> {
        self.refused = if refused { self.refused + 1 } else { 0 };
        if self.refused >= self.replicas {
            return None;
        }
        if lasted > BACKOFF_CAP {
            self.attempt = 0;
        }
        self.sessions += 1;
        if self.current() != 0 {
            return Some(BACKOFF_FIRST / 5);
        }
        let delay = backoff(self.attempt, seed);
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }
}

/// Capped exponential backoff with full jitter in [delay/2, delay].
pub fn backoff(attempt: u32, seed: u64) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    let half = base / 2;
    let spread = half.as_millis().max(1) as u64;
    half + Duration::from_millis(seed % spread)
}

fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7
}

async fn connect(settings: &HubSettings, url: &str) -> Result<Channel, tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(format!("connecting to {url}: {e}"));
    let mut endpoint = Channel::from_shared(url.to_string())
        .map_err(|e| tonic::Status::invalid_argument(format!("--hub {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(HEARTBEAT);
    if let Some(tls) = &settings.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| tonic::Status::failed_precondition(format!("reading {}: {e}", p.display())))
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(|e| unavailable(&e))?;
    }
    endpoint.connect().await.map_err(|e| unavailable(&e))
}

async fn session(
    settings: &HubSettings,
    url: &str,
    state: &watch::Sender<Arc<IntentState>>,
    persisted: &PersistedIntent,
    reports: &mut Reports,
    metrics: &crate::metrics::Metrics,
) -> Result<(), tonic::Status> {
    let channel = connect(settings, url).await?;
    let (tx, rx) = mpsc::channel(16);
    let send = |msg: spoke_message::Msg| {
        let tx = tx.clone();
        async move {
            tx.send(pb::SpokeMessage { msg: Some(msg) })
                .await
                .map_err(|_| tonic::Status::unavailable("stream closed"))
        }
    };
    let last_applied = state.borrow().latest_revision;
    send(spoke_message::Msg::Hello(pb::Hello {
        cluster_id: settings.cluster_id.clone(),
        labels: settings.labels.clone().into_iter().collect(),
        spoke_version: env!("CARGO_PKG_VERSION").to_string(),
        last_applied_revision: last_applied,
    }))
    .await?;
    let mut inbound = SpokeSyncClient::new(channel)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(hub = %url, last_applied, "Connected to the hub");
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
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(()) };
                last_heard = Instant::now();
                match message.msg {
                    Some(hub_message::Msg::Intent(intent)) => {
                        metrics.hub_updated();
                        receive(intent, state, persisted, &send).await?;
                    }
                    // Answer the hub's heartbeats, so the hub hears from this spoke once per its own period,
                    // whatever period it was started with.
                    Some(hub_message::Msg::Heartbeat(_)) => {
                        send(spoke_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_millis: unix_millis() })).await?;
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
            _ = ticker.tick() => {
                if last_heard.elapsed() > HEARTBEAT * 3 {
                    return Err(tonic::Status::unavailable("heartbeat timeout: nothing heard from the hub"));
                }
                send(spoke_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_millis: unix_millis() })).await?;
            }
        }
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn receive<F, Fut>(
    message: pb::IntentRevision,
    state: &watch::Sender<Arc<IntentState>>,
    persisted: &PersistedIntent,
    send: &F,
) -> Result<(), tonic::Status>
where
    F: Fn(spoke_message::Msg) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let current = state.borrow().clone();
    let next = if message.unchanged {
        IntentState {
            intent: current.intent.clone(),
            latest_revision: message.revision,
        }
    } else {
        match intent_from_wire(&message) {
            Ok(intent) => IntentState {
                intent,
                latest_revision: message.revision,
            },
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(
                    revision = message.revision,
                    ?errors,
                    "Refused an invalid intent; keeping the last one"
                );
                return send(spoke_message::Msg::Ack(pb::Ack {
                    revision: message.revision,
                    errors,
                }))
                .await;
            }
        }
    };
    tracing::info!(
        revision = message.revision,
        unchanged = message.unchanged,
        "Intent received"
    );
    if let Err(error) = persisted.save(&next).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "Could not persist the intent; enforcing it anyway"
        );
    }
    state.send_replace(Arc::new(next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hub_backs_off_and_a_refusal_stops() {
        let mut one = Rotation::new(1);
        let short = Duration::from_secs(1);
        assert_eq!(one.after_session(false, short, 0), Some(Duration::from_millis(125)));
        assert_eq!(one.after_session(false, short, 0), Some(Duration::from_millis(250)));
        assert_eq!(one.current(), 0);
        // A session that lasted past the cap starts the backoff again.
        assert_eq!(
            one.after_session(false, BACKOFF_CAP * 2, 0),
            Some(Duration::from_millis(125))
        );
        assert_eq!(one.after_session(true, short, 0), None);
    }

    #[test]
    fn replicas_are_tried_in_turn_and_only_a_refusal_by_every_one_stops() {
        let short = Duration::from_secs(1);
        let mut three = Rotation::new(3);
        assert_eq!(three.current(), 0);
        assert_eq!(three.after_session(false, short, 0), Some(Duration::from_millis(50)));
        assert_eq!(three.current(), 1);
        assert_eq!(three.after_session(false, short, 0), Some(Duration::from_millis(50)));
        // A full round failed: back to the first, after the backoff.
        assert_eq!(three.after_session(false, short, 0), Some(Duration::from_millis(125)));
        assert_eq!(three.current(), 0);
        // Two refusals, then a replica that is only unavailable: the count starts again.
        assert!(three.after_session(true, short, 0).is_some());
        assert!(three.after_session(true, short, 0).is_some());
        assert!(three.after_session(false, short, 0).is_some());
        assert!(three.after_session(true, short, 0).is_some());
        assert!(three.after_session(true, short, 0).is_some());
        assert_eq!(
            three.after_session(true, short, 0),
            None,
            "every replica refused in turn"
        );
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
