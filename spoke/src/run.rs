//! `tollgate-spoke run`: wires the watches, the reconciler and the health/metrics server together.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::api::ApiResource;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tollgate_common::planner::ANNOTATION_REVISION;
use tollgate_common::planner::PlannerConfig;
use tollgate_common::wire;
use tollgate_proto::v1 as pb;

use crate::anp::{AdminNetworkPolicy, Capabilities};
use crate::args::Enforcement;
use crate::args::{RunArgs, parse_hub_addresses, parse_list, parse_namespaced};
use crate::conditions::{Conditions, Kind};
use crate::fqdn::{Resolver, ResolverSettings};
use crate::hub_client::{HubConnection, HubSettings, HubTls, IntentState, PersistedIntent, Reports, TlsFiles};
use crate::metrics::Metrics;
use crate::reconcile::{AdminSettings, PassReport, Reconciler, Settings};
use crate::retry::Backoff;
use crate::world::{Scope, World};

/// How often an unreadable intent cache is read again while the policies are held.
const CACHE_RETRY: Duration = Duration::from_secs(10);

/// Default DNS Services, in order of preference: vanilla Kubernetes, then OpenShift.
const DNS_CANDIDATES: [(&str, &str); 2] = [("kube-system", "kube-dns"), ("openshift-dns", "dns-default")];

/// How the spoke authenticates to the hub, as the flags say.
enum Joining {
    Files(TlsFiles),
    Token {
        token_file: std::path::PathBuf,
        secret: String,
        server_name: Option<String>,
    },
}

/// The hub connection as the flags describe it, before the cluster client exists.
struct HubPlan {
    urls: Vec<String>,
    tls: Option<Joining>,
    cluster_id: String,
    labels: BTreeMap<String, String>,
}

impl HubPlan {
    /// The settings of the hub connection; with a join token, the spoke's identity (kept in a Secret of
    /// `namespace`) and its renewal task.
    fn settings(
        self,
        client: &Client,
        namespace: &str,
        metrics: &Arc<Metrics>,
        tasks: &mut JoinSet<()>,
    ) -> HubSettings {
        let tls = self.tls.map(|tls| match tls {
            Joining::Files(files) => {
                // The certificate file is read at every connection; its expiry is exported as it is on disk, so a
                // renewal (cert-manager) shows before the next reconnect.
                let (cert, metrics) = (files.cert.clone(), metrics.clone());
                tasks.spawn(async move {
                    let mut ticker = tokio::time::interval(Duration::from_secs(60));
                    loop {
                        ticker.tick().await;
                        if let Ok(pem) = std::fs::read(&cert) {
                            metrics.record_certificate("client", &pem);
                        }
                    }
                });
                HubTls::Files(files)
            }
            Joining::Token {
                token_file,
                secret,
                server_name,
            } => {
                let membership = Arc::new(crate::membership::Membership::new(
                    self.cluster_id.clone(),
                    kube::Api::namespaced(client.clone(), namespace),
                    secret,
                    token_file,
                    server_name,
                    metrics.clone(),
                ));
                tasks.spawn(membership.clone().renew_forever(self.urls.clone()));
                HubTls::Joined(membership)
            }
        });
        HubSettings {
            urls: self.urls,
            tls,
            cluster_id: self.cluster_id,
            labels: self.labels,
        }
    }
}

/// The spoke's settings, parsed and checked from the command line before anything is contacted.
pub struct Config {
    pub cluster_id: String,
    pub cluster_labels: BTreeMap<String, String>,
    /// `None`: standalone (local rules only).
    hub: Option<HubPlan>,
    pub spoke_namespace: String,
    pub intent_configmap: String,
    pub kubeconfig: Option<PathBuf>,
    /// The namespaces whose agents this spoke owns (empty: all).
    pub namespaces: Vec<String>,
    /// DNS Services to look for, in order of preference.
    pub dns_candidates: Vec<(String, String)>,
    /// How a pass plans and writes (`admin` is set once the API server says what it serves).
    pub settings: Settings,
    pub resolver: ResolverSettings,
    pub enforcement: Enforcement,
    pub enforcement_recheck: Duration,
    pub anp_priority: i32,
    pub metrics_addr: SocketAddr,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cluster_id", &self.cluster_id)
            .field("hub", &self.hub.as_ref().map(|h| &h.urls))
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Every flag as typed settings; a contradiction or an invalid value is refused naming the flag.
    pub fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let RunArgs {
            cluster_id,
            cluster_labels,
            standalone,
            hub,
            hub_ca,
            tls_cert,
            tls_key,
            join_token_file,
            identity_secret,
            hub_tls_server_name,
            insecure_dev_plaintext,
            spoke_namespace,
            intent_configmap,
            kubeconfig,
            namespaces,
            operator_namespace,
            cluster_defaults_namespace,
            policy_name_suffix,
            trust_domain,
            max_card_age,
            restricted_allow_dns,
            dns_service,
            fqdn_resolver,
            fqdn_min_ttl,
            fqdn_max_ttl,
            fqdn_grace,
            enforcement,
            enforcement_recheck,
            full_resync_interval,
            anp_priority,
            metrics_addr,
            log_level: _,
            log_format: _,
        } = args;
        let cluster_labels = tollgate_common::label_selector::parse_labels(&cluster_labels, "--cluster-labels")?;
        let hub = match (standalone, hub) {
            (true, Some(_)) => bail!("--standalone and --hub exclude each other"),
            (false, None) => bail!("either --hub ADDRESS or --standalone is required"),
            (true, None) => None,
            (false, Some(addresses)) => {
                let urls = parse_hub_addresses(&addresses, insecure_dev_plaintext)?;
                let tls = match (hub_ca, tls_cert, tls_key, join_token_file, insecure_dev_plaintext) {
                    (Some(ca), Some(cert), Some(key), None, false) => Some(Joining::Files(TlsFiles {
                        ca,
                        cert,
                        key,
                        server_name: hub_tls_server_name,
                    })),
                    (None, None, None, Some(token_file), false) => Some(Joining::Token {
                        token_file,
                        secret: identity_secret,
                        server_name: hub_tls_server_name,
                    }),
                    (None, None, None, None, true) => None,
                    (_, _, _, _, true) => {
                        bail!("--insecure-dev-plaintext cannot be combined with TLS files or a join token")
                    }
                    _ => bail!(
                        "--hub needs --join-token-file, or --hub-ca, --tls-cert and --tls-key (or \
                         --insecure-dev-plaintext on loopback)"
                    ),
                };
                Some(HubPlan {
                    urls,
                    tls,
                    cluster_id: cluster_id.clone(),
                    labels: cluster_labels.clone(),
                })
            }
        };
        if fqdn_min_ttl > fqdn_max_ttl {
            bail!(
                "--fqdn-min-ttl ({}s) is longer than --fqdn-max-ttl ({}s)",
                fqdn_min_ttl.as_secs(),
                fqdn_max_ttl.as_secs()
            );
        }
        if fqdn_min_ttl.is_zero() {
            bail!("--fqdn-min-ttl must be at least 1s: a zero TTL would look names up without pause");
        }
        let namespaces = parse_list(&namespaces);
        let dns_candidates = match dns_service {
            Some(text) => vec![parse_namespaced(&text, "--dns-service")?],
            None => DNS_CANDIDATES
                .iter()
                .map(|(ns, n)| (ns.to_string(), n.to_string()))
                .collect(),
        };
        Ok(Self {
            cluster_id,
            cluster_labels,
            hub,
            spoke_namespace,
            intent_configmap,
            kubeconfig,
            dns_candidates,
            settings: Settings {
                planner: PlannerConfig {
                    operator_namespace,
                    cluster_defaults_namespace,
                    name_suffix: policy_name_suffix,
                    restricted_allow_dns,
                },
                trust_domain,
                max_card_age,
                admin: None,
                watched_namespaces: namespaces.clone(),
                full_resync: full_resync_interval,
            },
            namespaces,
            resolver: ResolverSettings {
                server: fqdn_resolver,
                min_ttl: fqdn_min_ttl,
                max_ttl: fqdn_max_ttl,
                grace: fqdn_grace,
                ..ResolverSettings::default()
            },
            enforcement,
            enforcement_recheck,
            anp_priority,
            metrics_addr,
        })
    }

    /// Whether the spoke follows a hub (else it is standalone).
    pub fn has_hub(&self) -> bool {
        self.hub.is_some()
    }
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let Config {
        cluster_id,
        cluster_labels,
        hub,
        spoke_namespace,
        intent_configmap,
        kubeconfig,
        namespaces,
        dns_candidates,
        mut settings,
        resolver: resolver_settings,
        enforcement,
        enforcement_recheck,
        anp_priority,
        metrics_addr,
    } = config;
    let max_card_age = settings.max_card_age;
    let client = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(&path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?;
            Client::try_from(config)?
        }
        None => Client::try_default()
            .await
            .context("no --kubeconfig given, and neither in-cluster configuration nor KUBECONFIG works")?,
    };
    let agent_card = discover_agent_card(&client).await;
    // AdminNetworkPolicies are watched wherever the spoke may list them, in every mode: those left by an earlier run
    // in AdminNetworkPolicy mode are then swept.
    let anp_served = serves_admin_network_policy(&client)
        .await
        .context("asking the API server whether it serves AdminNetworkPolicy")?;
    let anp_listable = anp_served && can_list_admin_policies(&client).await;
    let admin = match (enforcement, anp_served) {
        (Enforcement::NetworkPolicy, _) | (Enforcement::Auto, false) => None,
        (Enforcement::AdminNetworkPolicy, false) => bail!(
            "--enforcement adminnetworkpolicy: this API server does not serve policy.networking.k8s.io/v1alpha1 \
             AdminNetworkPolicy (OpenShift 4.16 or later with OVN-Kubernetes does); use --enforcement auto or \
             networkpolicy"
        ),
        (_, true) if !anp_listable => bail!(
            "--enforcement {}: the spoke may not list AdminNetworkPolicies; grant get, list, watch, create, patch and \
             delete on adminnetworkpolicies.policy.networking.k8s.io (the chart does with enforcement set)",
            if enforcement == Enforcement::Auto {
                "auto"
            } else {
                "adminnetworkpolicy"
            }
        ),
        (_, true) => Some(AdminSettings {
            priority: anp_priority,
            capabilities: admin_capabilities(&client).await,
        }),
    };
    settings.admin = admin;
    // `auto` follows the API: when its being served changes, the spoke restarts to enforce accordingly (its
    // watches and permissions are decided at start).
    let served_changed = Arc::new(Notify::new());
    if enforcement == Enforcement::Auto {
        let (client, changed) = (client.clone(), served_changed.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(enforcement_recheck.max(Duration::from_secs(1))).await;
                // A failed discovery says nothing: only a clear answer that differs restarts the spoke.
                if serves_admin_network_policy(&client)
                    .await
                    .is_ok_and(|served| served != anp_served)
                {
                    changed.notify_one();
                    return;
                }
            }
        });
    }
    let endpoint_slices = serves_endpoint_slices(&client).await;
    tracing::info!(
        cluster = %cluster_id,
        labels = ?cluster_labels,
        namespaces = ?namespaces,
        agent_cards = agent_card.is_some(),
        endpoint_slices,
        hub = hub.as_ref().map_or("standalone: local rules only".to_string(), |h| h.urls.join(",")),
        "Starting spoke"
    );

    let metrics = Arc::new(Metrics::new());
    let mut tasks = JoinSet::new();
    {
        let metrics = metrics.clone();
        tasks.spawn(async move {
            if let Err(error) = crate::metrics::serve(metrics_addr, metrics).await {
                tracing::error!(%error, "The health and metrics server stopped");
            }
        });
    }
    let trigger = Arc::new(Notify::new());
    let scope = Scope {
        namespaces,
        dns_candidates,
        agent_card,
        endpoint_slices,
        admin_policies: anp_listable,
        max_card_age_secs: max_card_age.map(|age| age.as_secs()),
    };

    let world = World::start(&client, &scope, &trigger, &mut tasks);
    tokio::select! {
        ready = world.wait_ready() => ready.context("waiting for the first list of every watched kind")?,
        () = tollgate_process::shutdown_signal() => return Ok(()),
    }
    tracing::info!("Every watch is synced");

    let reporter = Reporter {
        controller: "tollgate-spoke".into(),
        instance: std::env::var("HOSTNAME").ok().or(Some(cluster_id.clone())),
    };
    // The conditions' Events; the reconciler makes its own recorder(s) from the same reporter.
    let recorder = Recorder::new(client.clone(), reporter.clone());
    // The spoke's own conditions, published as Events on its intent ConfigMap, metrics and to the hub.
    let persisted = PersistedIntent::new(client.clone(), &spoke_namespace, &intent_configmap);
    let conditions = Conditions::default();
    tasks.spawn(crate::conditions::publish(
        conditions.subscribe(),
        recorder,
        persisted.reference(),
        metrics.clone(),
    ));
    tasks.spawn(crate::local_rules::watch(client.clone(), conditions.clone()));
    // The intent: the persisted one first (hub outages and restarts never block enforcement), then the hub's.
    let initial = match &hub {
        None => IntentState::default(),
        Some(_) => initial_intent(&persisted, &world, &conditions).await,
    };
    let held = initial.hold.is_some();
    let (intent_tx, mut intent_rx) = tokio::sync::watch::channel(Arc::new(initial));
    let (facts_tx, facts_rx) = tokio::sync::watch::channel(None);
    let (inventory_tx, inventory_rx) = tokio::sync::watch::channel(None);
    let (ack_tx, ack_rx) = tokio::sync::watch::channel(None);
    let has_hub = hub.is_some();
    if let Some(hub) = hub {
        if held {
            tasks.spawn(retry_cache(persisted.clone(), intent_tx.clone(), conditions.clone()));
        }
        let hub = hub.settings(&client, &spoke_namespace, &metrics, &mut tasks);
        let reports = Reports {
            facts: facts_rx,
            inventory: inventory_rx,
            ack: ack_rx,
            conditions: conditions.subscribe(),
        };
        tasks.spawn(crate::hub_client::run(HubConnection {
            settings: hub,
            state: intent_tx,
            persisted,
            reports,
            metrics: metrics.clone(),
            conditions: conditions.clone(),
            sessions: Default::default(),
        }));
    } else {
        tasks.spawn(async move {
            // Standalone: the intent never changes; keep the sender alive.
            let _keep = intent_tx;
            std::future::pending::<()>().await;
        });
    }

    // Reported with the facts, so that the hub's `plan` previews this cluster as this spoke plans it.
    let reported_settings = (
        settings.planner.restricted_allow_dns,
        settings.planner.name_suffix.clone(),
    );
    // Resolves the names of `fqdn` peers; a refresh that changes a name's addresses wakes the loop below.
    let resolver = Resolver::new(resolver_settings, trigger.clone(), metrics.clone());
    tasks.spawn(resolver.clone().refresh());
    let full_resync = settings.full_resync;
    let mut reconciler = Reconciler::new(client.clone(), settings, metrics.clone(), reporter, resolver);
    let mut backoff = Backoff::default();
    // Without a hub nothing reads the inventory.
    let mut inventory_cache = has_hub.then(Inventory::default);
    loop {
        let state = intent_rx.borrow_and_update().clone();
        let report = reconciler.reconcile(&world, &state.intent, state.hold.is_some()).await;
        metrics.set_ready();
        publish_reports(
            &report,
            &reconciler,
            inventory_cache.as_mut(),
            &state,
            &reported_settings,
            &facts_tx,
            &inventory_tx,
            &ack_tx,
        );
        let failed: HashSet<_> = report.errors.iter().map(|e| e.kind).collect();
        drop(report);
        let retry = backoff.next(&failed);
        if let Some(delay) = retry {
            tracing::info!(delay_ms = delay.as_millis() as u64, "Retrying failed writes");
        }
        // With a maximum card age, the first card to turn stale wakes the loop: card refreshes do not.
        let stale_in = max_card_age.and_then(|_| reconciler.next_staleness(tollgate_process::unix_secs()));
        // Idle, the loop wakes for the full resync (a pass that looks at every agent).
        let wait = retry.unwrap_or(full_resync).min(stale_in.unwrap_or(full_resync));
        tokio::select! {
            () = trigger.notified() => {}
            Ok(()) = intent_rx.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = tollgate_process::shutdown_signal() => break,
            () = served_changed.notified() => {
                tasks.abort_all();
                bail!(
                    "the AdminNetworkPolicy API is {} served: restarting to enforce {} (--enforcement auto)",
                    if anp_served { "no longer" } else { "now" },
                    if anp_served { "NetworkPolicies only" } else { "AdminNetworkPolicies too" }
                );
            }
        }
    }
    tracing::info!("Shutting down");
    tasks.abort_all();
    Ok(())
}

/// The intent to enforce before the hub answers: the cached one; with none, but NetworkPolicies written from a
/// hub revision, or with one that cannot be read, nothing (the policies in force are held unchanged, and no intent
/// older than the revision they name is taken).
async fn initial_intent(persisted: &PersistedIntent, world: &World, conditions: &Conditions) -> IntentState {
    let floor = world
        .policies
        .iter()
        .flat_map(|s| s.state())
        .filter_map(|p| p.annotations().get(ANNOTATION_REVISION)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let held = |reason: &str, message: String| {
        conditions.set(Kind::PoliciesHeld, reason, message.clone());
        IntentState::held(floor, message)
    };
    match persisted.load().await {
        Ok(Some(state)) => {
            tracing::info!(
                revision = state.latest_revision,
                store = state.store_id.as_deref().unwrap_or("none"),
                "Enforcing the persisted intent until the hub answers"
            );
            state
        }
        Ok(None) if floor > 0 => held(
            "CacheMissing",
            format!(
                "No cached intent in ConfigMap {}, but NetworkPolicies were written from hub revision {floor}: \
                 keeping every NetworkPolicy as it is until the hub answers.",
                persisted.location()
            ),
        ),
        Ok(None) => IntentState::default(),
        Err(error) => held(
            "CacheUnreadable",
            format!(
                "The cached intent cannot be read ({error:#}): keeping every NetworkPolicy as it is until the \
                 cache can be read or the hub answers."
            ),
        ),
    }
}

/// While the policies are held because the cache could not be read, reads it again every [`CACHE_RETRY`] until it
/// can be (then enforces it) or the hub answered.
async fn retry_cache(
    persisted: PersistedIntent,
    intent: tokio::sync::watch::Sender<Arc<IntentState>>,
    conditions: Conditions,
) {
    loop {
        tokio::time::sleep(CACHE_RETRY).await;
        if intent.borrow().hold.is_none() {
            return;
        }
        match persisted.load().await {
            Ok(Some(state)) => {
                let taken = intent.send_if_modified(|current| {
                    let still_held = current.hold.is_some();
                    if still_held {
                        *current = Arc::new(state);
                    }
                    still_held
                });
                if taken {
                    tracing::info!("The cached intent can be read again; enforcing it until the hub answers");
                    conditions.clear(Kind::PoliciesHeld);
                }
                return;
            }
            Ok(None) => return,
            Err(error) => tracing::debug!(error = format!("{error:#}"), "The cached intent still cannot be read"),
        }
    }
}

/// Facts, inventory and the acknowledgement of the intent revision, for the hub (sent only when they change).
/// While policies are held there is no intent to acknowledge or to describe the agents by: only facts are sent.
#[allow(clippy::too_many_arguments)]
fn publish_reports(
    report: &PassReport,
    reconciler: &Reconciler,
    cache: Option<&mut Inventory>,
    state: &IntentState,
    (restricted_allow_dns, policy_name_suffix): &(bool, String),
    facts: &tokio::sync::watch::Sender<Option<pb::ClusterFacts>>,
    inventory: &tokio::sync::watch::Sender<Option<pb::AgentInventory>>,
    ack: &tokio::sync::watch::Sender<Option<pb::Ack>>,
) {
    let fresh_facts = Some(pb::ClusterFacts {
        restricted_allow_dns: *restricted_allow_dns,
        policy_name_suffix: policy_name_suffix.clone(),
        spoke_version: env!("CARGO_PKG_VERSION").to_string(),
        resolved_names: report.names.statuses(),
        ..wire::facts_to_wire(&report.facts, "")
    });
    facts.send_if_modified(|current| replace_if_different(current, fresh_facts));
    if state.hold.is_some() {
        return;
    }
    let applied = state.latest_revision;
    if let Some(cache) = cache
        && cache.update(report, reconciler, applied)
    {
        inventory.send_replace(Some(cache.message()));
    }
    if applied > 0 {
        let errors = report
            .errors
            .iter()
            .map(|e| format!("{}/{}: {} ({})", e.namespace, e.name, e.error, e.kind.as_str()))
            .collect();
        ack.send_if_modified(|current| {
            replace_if_different(
                current,
                Some(pb::Ack {
                    revision: applied,
                    errors,
                    store_id: state.store_id.clone().unwrap_or_default(),
                }),
            )
        });
    }
}

/// The agent statuses the hub is sent, kept per agent: a pass rebuilds only the statuses of the agents it looked
/// at, and the inventory is sent only when one of them changed.
#[derive(Debug, Default)]
struct Inventory {
    statuses: std::collections::BTreeMap<(String, String), pb::AgentStatus>,
    applied: u64,
    sent: bool,
}

impl Inventory {
    /// Brings the statuses up to date with the pass; whether the inventory changed (or was never sent).
    fn update(&mut self, report: &PassReport, reconciler: &Reconciler, applied: u64) -> bool {
        let status = |key: &(String, String)| {
            let planned = reconciler.plan_of(key)?;
            let agent = reconciler.input(key)?;
            Some(pb::AgentStatus {
                widened_by: reconciler.widened_by(key),
                ..wire::agent_status_to_wire(&planned.outcome, agent, applied)
            })
        };
        let mut changed = !self.sent;
        if report.full || applied != self.applied {
            let fresh: std::collections::BTreeMap<_, _> = reconciler
                .planned()
                .filter_map(|p| {
                    let key = (p.outcome.namespace.clone(), p.outcome.name.clone());
                    Some((key.clone(), status(&key)?))
                })
                .collect();
            changed |= fresh != self.statuses;
            self.statuses = fresh;
        } else {
            for key in &report.agents {
                match status(key) {
                    Some(fresh) => {
                        if self.statuses.get(key) != Some(&fresh) {
                            self.statuses.insert(key.clone(), fresh);
                            changed = true;
                        }
                    }
                    None => changed |= self.statuses.remove(key).is_some(),
                }
            }
        }
        self.applied = applied;
        self.sent = true;
        changed
    }

    fn message(&self) -> pb::AgentInventory {
        pb::AgentInventory {
            agents: self.statuses.values().cloned().collect(),
        }
    }
}

fn replace_if_different<T: PartialEq>(current: &mut T, fresh: T) -> bool {
    if *current == fresh {
        false
    } else {
        *current = fresh;
        true
    }
}

/// The deprecated AgentCard kind, when its CRD is installed (checked at start).
async fn discover_agent_card(client: &Client) -> Option<ApiResource> {
    let group = kube::discovery::group(client, "agent.kagenti.dev").await.ok()?;
    group
        .resources_by_stability()
        .into_iter()
        .find(|(ar, _)| ar.kind == "AgentCard")
        .map(|(ar, _)| ar)
}

/// Whether the server serves policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy. Only a missing group or kind
/// means no; any other failure of discovery is an error (the answer is unknown).
async fn serves_admin_network_policy(client: &Client) -> Result<bool, kube::Error> {
    match kube::discovery::group(client, "policy.networking.k8s.io").await {
        Ok(group) => Ok(group
            .versioned_resources("v1alpha1")
            .iter()
            .any(|(ar, _)| ar.kind == "AdminNetworkPolicy")),
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Whether the spoke may list AdminNetworkPolicies (RBAC).
async fn can_list_admin_policies(client: &Client) -> bool {
    let api: kube::Api<AdminNetworkPolicy> = kube::Api::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(error) => {
            tracing::info!(%error, "AdminNetworkPolicies cannot be listed: none are written or swept");
            false
        }
    }
}

/// The egress peer types the served AdminNetworkPolicy CRD offers. Unreadable: none, so that every agent falls back
/// to its NetworkPolicy (with a Warning) rather than have fields pruned from what it is allowed.
async fn admin_capabilities(client: &Client) -> Capabilities {
    let api: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client.clone());
    match api.get("adminnetworkpolicies.policy.networking.k8s.io").await {
        Ok(crd) => Capabilities::of_crd(&serde_json::to_value(&crd).unwrap_or_default()),
        Err(error) => {
            tracing::warn!(%error, "The AdminNetworkPolicy CRD cannot be read: its peer types are unknown, agents keep NetworkPolicies only");
            Capabilities::default()
        }
    }
}

/// Whether the server offers discovery.k8s.io/v1 EndpointSlices (1.21 and later).
async fn serves_endpoint_slices(client: &Client) -> bool {
    match kube::discovery::group(client, "discovery.k8s.io").await {
        Ok(group) => group
            .versioned_resources("v1")
            .iter()
            .any(|(ar, _)| ar.kind == "EndpointSlice"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Args, Command};

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        let args = Args::try_parse_from(["tollgate-spoke", "run"].iter().chain(flags))?;
        let Command::Run(run) = args.command else {
            unreachable!("run")
        };
        Config::from_args(*run)
    }

    fn refused(flags: &[&str]) -> String {
        format!("{:#}", config(flags).unwrap_err())
    }

    #[test]
    fn flags_become_typed_settings_without_a_cluster() {
        let standalone = config(&[
            "--standalone",
            "--cluster-labels",
            "env=prod,region=eu",
            "--namespaces",
            "a, b",
            "--restricted-allow-dns",
            "--max-card-age",
            "15m",
        ])
        .unwrap();
        assert!(!standalone.has_hub());
        assert_eq!(standalone.cluster_labels["region"], "eu");
        assert_eq!(standalone.namespaces, ["a", "b"]);
        assert_eq!(standalone.settings.watched_namespaces, ["a", "b"]);
        assert!(standalone.settings.planner.restricted_allow_dns);
        assert_eq!(standalone.settings.max_card_age, Some(Duration::from_secs(900)));
        assert!(
            standalone.settings.admin.is_none(),
            "decided once the API server answers"
        );
        assert_eq!(standalone.dns_candidates.len(), DNS_CANDIDATES.len());

        let joined = config(&[
            "--hub",
            "https://hub-a:7443,https://hub-b:7443",
            "--join-token-file",
            "/var/run/token",
            "--dns-service",
            "openshift-dns/dns-default",
        ])
        .unwrap();
        let hub = joined.hub.as_ref().unwrap();
        assert_eq!(hub.urls.len(), 2);
        assert!(matches!(hub.tls, Some(Joining::Token { .. })));
        assert_eq!(
            joined.dns_candidates,
            [("openshift-dns".to_string(), "dns-default".to_string())]
        );

        let files = config(&[
            "--hub",
            "https://hub:7443",
            "--hub-ca",
            "ca",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .unwrap();
        assert!(matches!(files.hub.unwrap().tls, Some(Joining::Files(_))));
    }

    #[test]
    fn contradictions_are_refused_naming_the_flags() {
        assert!(refused(&["--standalone", "--hub", "https://hub:7443"]).contains("--standalone and --hub"));
        assert!(refused(&[]).contains("either --hub ADDRESS or --standalone"));
        assert!(refused(&["--hub", "https://hub:7443"]).contains("--hub needs --join-token-file"));
        assert!(
            refused(&["--hub", "https://hub:7443", "--hub-ca", "ca"]).contains("--hub needs"),
            "a CA without a certificate and key"
        );
        assert!(
            refused(&[
                "--hub",
                "http://127.0.0.1:7443",
                "--insecure-dev-plaintext",
                "--join-token-file",
                "t"
            ])
            .contains("--insecure-dev-plaintext cannot be combined")
        );
        assert!(
            refused(&["--standalone", "--fqdn-min-ttl", "20m", "--fqdn-max-ttl", "10m"])
                .contains("--fqdn-min-ttl (1200s) is longer than --fqdn-max-ttl (600s)")
        );
        assert!(refused(&["--standalone", "--fqdn-min-ttl", "0s"]).contains("--fqdn-min-ttl must be at least 1s"));
        assert!(refused(&["--standalone", "--dns-service", "nodash"]).contains("--dns-service"));
        assert!(refused(&["--standalone", "--cluster-labels", "=x"]).contains("label"));
    }
}
