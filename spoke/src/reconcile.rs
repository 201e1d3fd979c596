//! One reconcile pass: recompute every agent's policy from the stores, write what differs, delete orphans,
//! report problems as Events. Level-triggered: it never looks at which event woke it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::DynamicObject;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use tollgate_common::Intent;
use tollgate_common::planner::{
    self, AgentOutcome, ClusterProblem, IncrementalPlan, KeptAgent, LABEL_AGENT, LABEL_MODE, Mode, PlannerConfig,
};
use tollgate_common::verification::{AgentCardStatus, VerificationSettings};

use crate::agent_runtime::ObservedRuntime;
use crate::anp::{AdminNetworkPolicy, Capabilities};
use crate::diff::{ObservedPolicy, needs_apply};
use crate::fqdn::{Resolver, Snapshot};
use crate::managed::{self, ManagedPolicies, address};
use crate::metrics::{Metrics, ModeLabel, ReasonLabel};
use crate::retry::ErrorKind;
use crate::world::World;
use crate::{agents, facts};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "tollgate-spoke";
/// Writes in flight at once.
const CONCURRENCY: usize = 16;

/// Settings that shape a pass.
#[derive(Clone, Debug)]
pub struct Settings {
    pub planner: PlannerConfig,
    pub trust_domain: Option<String>,
    pub max_card_age: Option<Duration>,
    /// AdminNetworkPolicy enforcement (`None`: NetworkPolicies only; managed AdminNetworkPolicies are swept).
    pub admin: Option<AdminSettings>,
    /// The namespaces whose agents this spoke owns (empty: all): the AdminNetworkPolicies it may sweep.
    pub watched_namespaces: Vec<String>,
    /// How often a pass looks at every agent, not only at what changed (a safety net: it should find nothing to do).
    pub full_resync: Duration,
}

/// Every agent is looked at this often by default.
pub const FULL_RESYNC: Duration = Duration::from_secs(600);

/// How AdminNetworkPolicies are written.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    pub priority: i32,
    /// The egress peer types the served API offers.
    pub capabilities: Capabilities,
}

/// What the AdminNetworkPolicy part of a pass did.
#[derive(Debug, Default)]
struct AdminReport {
    written: usize,
    deleted: usize,
    errors: Vec<WriteError>,
    /// Agents whose AdminNetworkPolicy is in force as desired (written now, or already equal): NetworkPolicies
    /// cannot widen their egress.
    enforced: HashSet<Key>,
    /// Agents that have none, and why.
    fallbacks: HashMap<Key, String>,
}

/// A failed write.
#[derive(Debug)]
pub struct WriteError {
    /// The agent whose object it was, when known (its next pass tries again).
    pub agent: Option<Key>,
    pub namespace: String,
    pub name: String,
    pub kind: ErrorKind,
    pub error: kube::Error,
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// What was discovered about the cluster.
    pub facts: planner::ClusterFacts,
    pub written: usize,
    pub deleted: usize,
    pub errors: Vec<WriteError>,
    /// The DNS names of the rules and their addresses, as planned with.
    pub names: Snapshot,
    /// Whether the pass looked at every agent (the first pass, cluster-wide inputs changed, or the full resync).
    pub full: bool,
    /// How many agents it looked at.
    pub looked_at: usize,
    /// The agents it looked at (every agent after a full pass), and those gone: whose reported status may differ.
    pub agents: Vec<Key>,
}

/// The agents of a pass: the plans it looks at, and the cluster's problems.
struct View<'a> {
    agents: Vec<&'a KeptAgent>,
    problems: &'a [ClusterProblem],
}

impl<'a> View<'a> {
    /// The agents of `focus` (every agent without one), by namespace then name.
    fn of(index: &'a IncrementalPlan, focus: Option<&HashSet<Key>>) -> Self {
        let agents = match focus {
            None => index.agents().collect(),
            Some(focus) => {
                let mut keys: Vec<&Key> = focus.iter().collect();
                keys.sort();
                keys.into_iter().filter_map(|key| index.get(key)).collect()
            }
        };
        Self {
            agents,
            problems: index.problems(),
        }
    }

    fn outcomes(&self) -> impl Iterator<Item = &AgentOutcome> {
        self.agents.iter().map(|a| &a.outcome)
    }
}

/// What a pass compares with the last one to tell whether every agent must be planned again.
#[derive(Debug, PartialEq)]
struct ClusterInputs {
    facts: planner::ClusterFacts,
    intent: Intent,
    names: Vec<tollgate_proto::v1::ResolvedName>,
    hold: bool,
}

/// The objects the last pass saw, to tell which agents a watch event touched since (the reflector stores replace an
/// object's `Arc` on every event).
#[derive(Debug, Default)]
struct Seen {
    others: HashMap<Key, Arc<NetworkPolicy>>,
    admin: HashMap<String, Arc<AdminNetworkPolicy>>,
}

/// Whether `now` holds a different object for `key` than `before` did.
fn moved<K: Eq + std::hash::Hash, V>(before: &HashMap<K, Arc<V>>, key: &K, now: &Arc<V>) -> bool {
    before.get(key).is_none_or(|old| !Arc::ptr_eq(old, now))
}

/// Reconciles the cluster's NetworkPolicies; keeps what it reported last so Events fire on changes only.
pub struct Reconciler {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    recorder: Recorder,
    resolver: Resolver,
    reported: HashMap<(String, String), Vec<(String, String)>>,
    /// Every agent's inputs and plan, planned again only where they change.
    index: IncrementalPlan,
    /// What each agent's input was built from, by namespace and name.
    built: HashMap<String, HashMap<String, Sources>>,
    /// The agent of each AgentRuntime object an input was built from, by the object's address (`built` holds a
    /// `Weak` to it, so the address is not reused): a pass finds the AgentRuntimes that changed, appeared or went
    /// without a lookup by name.
    built_at: HashMap<usize, Key>,
    /// The namespaces, workloads and AgentCards the last pass saw.
    dependencies: Dependencies,
    /// The cluster-wide inputs of the last pass.
    cluster: Option<ClusterInputs>,
    /// When the last pass that looked at every agent ran.
    last_resync: Option<Instant>,
    /// The next moment an agent's card turns stale under `--max-card-age` (Unix seconds), as of the last pass.
    next_stale: Option<i64>,
    seen: Seen,
    /// The managed NetworkPolicies, as of this pass.
    policies: ManagedPolicies,
    /// Agents whose writes failed: looked at again by the next pass.
    pending: HashSet<Key>,
    /// Agents whose egress other NetworkPolicies widen (marked when an AdminNetworkPolicy overrides them).
    widened: HashMap<Key, Vec<String>>,
    /// Agents whose AdminNetworkPolicy is in force as desired.
    enforced: HashSet<Key>,
    /// Agents without an AdminNetworkPolicy, and why.
    fallbacks: HashMap<Key, String>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

type Key = (String, String);

/// The result of one write, with the mode before and after.
struct Written {
    agent: Key,
    key: Key,
    before: Option<Mode>,
    after: Option<Mode>,
    result: Result<(), kube::Error>,
}

impl Reconciler {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        resolver: Resolver,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            settings,
            metrics,
            reporter,
            resolver,
            reported: HashMap::new(),
            index: IncrementalPlan::default(),
            built: HashMap::new(),
            built_at: HashMap::new(),
            dependencies: Dependencies::default(),
            cluster: None,
            last_resync: None,
            next_stale: None,
            seen: Seen::default(),
            policies: ManagedPolicies::default(),
            pending: HashSet::new(),
            widened: HashMap::new(),
            enforced: HashSet::new(),
            fallbacks: HashMap::new(),
        }
    }

    /// Every agent's plan, by namespace then name.
    pub fn planned(&self) -> impl Iterator<Item = &KeptAgent> {
        self.index.agents()
    }

    /// The plan of one agent, as the last pass left it.
    pub fn plan_of(&self, key: &Key) -> Option<&KeptAgent> {
        self.index.get(key)
    }

    /// The planner's input for one agent, as the last pass saw it.
    pub fn input(&self, key: &Key) -> Option<&planner::Agent> {
        self.index.input(key)
    }

    /// The NetworkPolicies that widen an agent, as the last pass found them.
    pub fn widened_by(&self, key: &Key) -> Vec<String> {
        self.widened.get(key).cloned().unwrap_or_default()
    }

    /// One pass. With `hold`, the NetworkPolicies in force are kept exactly as they are (there is no intent to
    /// enforce yet): only agents without any policy get one, which can only narrow their egress.
    ///
    /// Every agent's inputs are read, but only the agents whose inputs changed (and those sharing their workload)
    /// are planned again, and only they and the agents whose own objects (AgentRuntime, NetworkPolicy,
    /// AdminNetworkPolicy, a co-selecting NetworkPolicy of their namespace) changed are written, annotated and
    /// evented. The first pass, a change of the cluster-wide inputs (endpoints, resolved names, intent, holding) and
    /// the full resync every [`Settings::full_resync`] look at every agent.
    pub async fn reconcile(&mut self, world: &World, intent: &Intent, hold: bool) -> PassReport {
        let started = Instant::now();
        let now_unix = tollgate_process::unix_secs();
        let runtimes: Vec<Arc<ObservedRuntime>> = world.runtimes.iter().flat_map(|s| s.state()).collect();
        let mut facts = Self::facts(world);
        // Its own clock: passes that are full because cluster-wide inputs changed do not rebuild every input.
        let resync_due = self
            .last_resync
            .is_none_or(|at| at.elapsed() >= self.settings.full_resync);
        // The full resync builds every agent's input again; other passes only those whose objects changed.
        let staged = self.stage_inputs(world, &runtimes, now_unix, resync_due);
        // The names of the rules, resolved in this cluster (the planner receives addresses, never looks up).
        let cluster_dns = facts.dns.as_ref().and_then(|d| d.cluster_ip);
        let wanted = crate::fqdn::wanted(intent, self.index.inputs());
        let names = self.resolver.sync(&wanted, cluster_dns).await;
        facts.names = names.addresses();
        let planner = planner::Planner::new(&self.settings.planner, &facts, intent);
        let statuses = names.statuses();
        let cluster_changed = self
            .cluster
            .as_ref()
            .is_none_or(|c| c.hold != hold || c.facts != facts || c.intent != *intent || c.names != statuses);
        let full = cluster_changed || resync_due;
        let changes = if full {
            self.index.plan_all(&planner)
        } else {
            self.index.plan_staged(&planner)
        };
        if cluster_changed {
            self.cluster = Some(ClusterInputs {
                facts: facts.clone(),
                intent: intent.clone(),
                names: statuses,
                hold,
            });
        }
        let policy_changes = self
            .policies
            .update(world.policies.iter().flat_map(|s| s.state()).collect());
        let touched = self.observe(world, &policy_changes);
        let focus: Option<HashSet<Key>> = (!full).then(|| {
            let mut focus = touched;
            focus.extend(staged.touched);
            focus.extend(changes.changed.iter().cloned());
            focus.extend(changes.removed.iter().cloned());
            focus.extend(std::mem::take(&mut self.pending));
            focus
        });
        if full {
            self.pending.clear();
        }
        if resync_due {
            self.last_resync = Some(Instant::now());
        }
        let view = View::of(&self.index, focus.as_ref());
        let widened = widening(world, &view);
        // Agents whose target cannot be read have no policy in the plan; the policies they had are kept.
        let unplanned: HashSet<Key> = runtimes
            .iter()
            .filter(|rt| matches!(&***rt, ObservedRuntime::Malformed(m) if m.target_name.is_none()))
            .map(|rt| (rt.namespace().unwrap_or_default(), rt.name_any()))
            .collect();

        let mut report = PassReport {
            full,
            looked_at: view.agents.len(),
            ..PassReport::default()
        };
        let mode_changes = self
            .apply_network_policies(&view, &policy_changes, focus.as_ref(), hold, &unplanned, &mut report)
            .await;
        let mut admin = self.reconcile_admin(world, &view, hold, &unplanned).await;
        report.written += admin.written;
        report.deleted += admin.deleted;
        report.errors.append(&mut admin.errors);
        // The agents looked at replace what the last passes found for them.
        let looked_at: Vec<Key> = view
            .outcomes()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .chain(changes.removed.iter().cloned())
            .collect();
        for key in &looked_at {
            self.enforced.remove(key);
            self.fallbacks.remove(key);
            self.widened.remove(key);
        }
        report.agents.clone_from(&looked_at);
        // An input that changed without changing the plan (a namespace's labels) still changes the status reported.
        report.agents.extend(staged.inputs);
        self.enforced.extend(admin.enforced.iter().cloned());
        self.fallbacks.extend(admin.fallbacks.clone());
        // With an AdminNetworkPolicy, a widening NetworkPolicy has no effect on the agent's egress: reported as
        // overridden, not counted.
        for (key, by) in widened {
            let by = if self.enforced.contains(&key) {
                by.into_iter().map(|p| format!("{p} (overridden)")).collect()
            } else {
                by
            };
            self.widened.insert(key, by);
        }
        self.metrics
            .agents_widened
            .set(self.widened.keys().filter(|k| !self.enforced.contains(*k)).count() as i64);
        let view = View::of(&self.index, focus.as_ref());
        let focus_names: Option<HashSet<(&str, &str)>> = focus
            .as_ref()
            .map(|f| f.iter().map(|(ns, name)| (ns.as_str(), name.as_str())).collect());
        let focus_runtimes: Vec<Arc<ObservedRuntime>> = runtimes
            .iter()
            .filter(|rt| {
                let meta = rt.meta();
                let key = (
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                );
                focus_names.as_ref().is_none_or(|f| f.contains(&key))
            })
            .cloned()
            .collect();
        let events = problem_events(
            &mut self.reported,
            &focus_runtimes,
            &view,
            &mode_changes,
            &names,
            &Agents {
                widened: &self.widened,
                enforced: &self.enforced,
                fallbacks: &self.fallbacks,
            },
            &changes.removed.iter().chain(&staged.gone).cloned().collect(),
            full,
        );
        // The annotations replace every AgentRuntime they patch in the watch's store: the pass holds none of the
        // objects it started from while they do (a first pass annotates every agent), so each is held once.
        drop(focus_runtimes);
        drop(runtimes);
        // kube's recorder keeps every Event it published for six minutes, to count repeats as a series, and scans them
        // all on every publish: a pass that changes thousands of agents (the first one, a new intent) publishes them
        // in chunks, each through a recorder of its own dropped after it, so no recorder holds more than one chunk.
        if events.len() > LARGE_EVENT_BATCH {
            let mut events = events;
            while !events.is_empty() {
                let rest = events.split_off(events.len().min(LARGE_EVENT_BATCH));
                let chunk = std::mem::replace(&mut events, rest);
                publish(&Recorder::new(self.client.clone(), self.reporter.clone()), chunk).await;
            }
        } else {
            publish(&self.recorder, events).await;
        }
        if !hold {
            let failed = self.annotate(world, &view, intent.revision).await;
            self.pending.extend(failed);
        }
        self.pending
            .extend(report.errors.iter().filter_map(|e| e.agent.clone()));
        let mut modes: HashMap<Mode, i64> = HashMap::new();
        for planned in self.index.agents().filter(|a| a.policy.is_some()) {
            *modes.entry(planned.outcome.mode).or_default() += 1;
        }
        for mode in Mode::ALL {
            self.metrics
                .agents
                .get_or_create(&ModeLabel { mode: mode.as_str() })
                .set(modes.get(&mode).copied().unwrap_or(0));
        }
        self.metrics.reconciles.inc();
        if resync_due && !cluster_changed {
            // The safety net: a resync that finds something to write means an incremental pass missed it.
            self.metrics.full_resyncs.inc();
            self.metrics
                .full_resync_writes
                .inc_by((report.written + report.deleted) as u64);
        }
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        if report.written > 0 || report.deleted > 0 || !report.errors.is_empty() {
            tracing::info!(
                agents = self.index.len(),
                looked_at = report.looked_at,
                full,
                written = report.written,
                deleted = report.deleted,
                errors = report.errors.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Reconciled"
            );
        }
        report.facts = facts;
        report.names = names;
        report
    }

    /// Whether some agent's plan has the NetworkPolicy `key` (policies are named after their workload).
    fn desired(&self, key: &Key) -> bool {
        let Some(target) = key.1.strip_suffix(self.settings.planner.name_suffix.as_str()) else {
            return false;
        };
        self.index
            .workload_agents(&key.0, target)
            .iter()
            .filter_map(|agent| self.index.get(agent)?.policy.as_ref())
            .any(|p| p.namespace() == key.0 && p.name() == key.1)
    }

    /// The agents a watch event touched since the last pass through their own objects: their NetworkPolicy or
    /// AdminNetworkPolicy changed, appeared or went, or a NetworkPolicy of their namespace that is not the spoke's
    /// did (it may widen them). Their AgentRuntimes are compared in [`Self::stage_inputs`].
    fn observe(&mut self, world: &World, policy_changes: &[managed::Change]) -> HashSet<Key> {
        let mut touched = HashSet::new();
        // The agents an object of theirs may be: the one its label names now, the one it named before (a relabelled
        // policy), and the agents whose policy bears its name (labels can be edited; names cannot).
        let suffix = self.settings.planner.name_suffix.as_str();
        let index = &self.index;
        let owners = |key: &Key, now: Option<&ObservedPolicy>, before: Option<&Arc<ObservedPolicy>>| {
            let mut owners: Vec<Key> = [now, before.map(|p| &**p)]
                .into_iter()
                .flatten()
                .filter_map(|p| p.labels().get(LABEL_AGENT).map(|a| (key.0.clone(), a.clone())))
                .collect();
            if let Some(target) = key.1.strip_suffix(suffix) {
                owners.extend(index.workload_agents(&key.0, target));
            }
            owners
        };
        for change in policy_changes {
            touched.extend(owners(&change.key, change.now.as_deref(), change.before.as_ref()));
        }
        let others: HashMap<Key, Arc<NetworkPolicy>> = world
            .others
            .iter()
            .flat_map(|s| s.state())
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
            .collect();
        let mut namespaces: HashSet<String> = others
            .iter()
            .filter(|(key, policy)| moved(&self.seen.others, key, policy))
            .map(|(key, _)| key.0.clone())
            .collect();
        namespaces.extend(
            self.seen
                .others
                .keys()
                .filter(|k| !others.contains_key(*k))
                .map(|k| k.0.clone()),
        );
        if !namespaces.is_empty() {
            touched.extend(
                self.index
                    .agents()
                    .filter(|a| namespaces.contains(&a.outcome.namespace))
                    .map(|a| (a.outcome.namespace.clone(), a.outcome.name.clone())),
            );
        }
        let admin: HashMap<String, Arc<AdminNetworkPolicy>> = world
            .admin_policies
            .iter()
            .flat_map(|s| s.state())
            .map(|p| (p.name_any(), p))
            .collect();
        let agent_of = |policy: &AdminNetworkPolicy| {
            let labels = policy.labels();
            Some((
                labels.get(crate::anp::LABEL_AGENT_NAMESPACE)?.clone(),
                labels.get(LABEL_AGENT)?.clone(),
            ))
        };
        let mut moved_names: HashSet<&str> = HashSet::new();
        for (name, policy) in &admin {
            if moved(&self.seen.admin, name, policy) {
                touched.extend(agent_of(policy));
                touched.extend(self.seen.admin.get(name).and_then(|old| agent_of(old)));
                moved_names.insert(name);
            }
        }
        for (name, policy) in &self.seen.admin {
            if !admin.contains_key(name) {
                touched.extend(agent_of(policy));
                moved_names.insert(name);
            }
        }
        // By name too (labels can be edited, or stripped): the agents whose AdminNetworkPolicy bears a moved name.
        if !moved_names.is_empty() {
            touched.extend(
                self.index
                    .agents()
                    .map(|a| &a.outcome)
                    .filter(|o| moved_names.contains(crate::anp::name(&o.namespace, &o.name).as_str()))
                    .map(|o| (o.namespace.clone(), o.name.clone())),
            );
        }
        self.seen.others = others;
        self.seen.admin = admin;
        touched
    }

    /// Writes the NetworkPolicies that differ from the plan and deletes the managed ones no agent has any more;
    /// counts both in `report` and returns the agents whose policy was written with a new mode. With `hold`, only
    /// agents without any policy get one.
    async fn apply_network_policies(
        &self,
        view: &View<'_>,
        policy_changes: &[managed::Change],
        focus: Option<&HashSet<Key>>,
        hold: bool,
        unplanned: &HashSet<Key>,
        report: &mut PassReport,
    ) -> HashMap<Key, (Option<Mode>, Mode)> {
        let existing = &self.policies;

        // The sweep: only policies carrying both Tollgate labels that no agent has any more, each deleted only if it
        // is still the object observed (UID precondition). A policy that merely copies the managed-by label, or
        // that belongs to an agent whose target cannot be read, stays. A pass that looks at every agent sweeps every
        // policy; another can only have orphaned the policies that changed since the last pass and those of the
        // agents it looks at (an agent gone, or whose policy is now named after another workload).
        let deletes: Vec<(Key, String)> = if hold {
            Vec::new()
        } else {
            let orphan = |key: &Key, policy: &ObservedPolicy| {
                if self.desired(key) {
                    return None;
                }
                let agent = policy.labels().get(LABEL_AGENT)?;
                let owner = (key.0.clone(), agent.clone());
                (!unplanned.contains(&owner)).then(|| (key.clone(), policy.uid().unwrap_or_default()))
            };
            match focus {
                None => existing
                    .iter()
                    .filter_map(|(key, policy)| orphan(key, policy))
                    .collect(),
                Some(focus) => {
                    let candidates: BTreeSet<Key> = policy_changes
                        .iter()
                        .map(|c| c.key.clone())
                        .chain(focus.iter().flat_map(|agent| existing.of_agent(agent)))
                        .collect();
                    candidates
                        .iter()
                        .filter_map(|key| orphan(key, existing.get(key)?))
                        .collect()
                }
            }
        };

        // Read back from the index as the writes go (the stream pulls the next one when one finishes), so that only
        // the policies of the writes in flight are held whole.
        let writes = view.agents.iter().filter_map(|a| {
            let kept = a.policy.as_ref()?;
            let key = (kept.namespace().to_string(), kept.name().to_string());
            let current = existing.get(&key).cloned();
            if hold && current.is_some() {
                return None;
            }
            let desired = kept.policy();
            needs_apply(&desired, current.as_deref()).then(|| {
                let agent = (a.outcome.namespace.clone(), a.outcome.name.clone());
                (agent, key, desired, current)
            })
        });
        let client = &self.client;
        let results: Vec<Written> = futures::stream::iter(writes.map(|(agent, key, desired, current)| async move {
            Written {
                agent,
                key,
                before: current.as_deref().and_then(mode_of),
                after: mode_of(&desired),
                result: apply(client, &desired, current.is_some()).await,
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
        let mut mode_changes: HashMap<Key, (Option<Mode>, Mode)> = HashMap::new();
        for Written {
            agent,
            key,
            before,
            after,
            result,
        } in results
        {
            match result {
                Ok(()) => {
                    report.written += 1;
                    self.metrics.writes.inc();
                    if let Some(after) = after
                        && before != Some(after)
                    {
                        mode_changes.insert(key, (before, after));
                    }
                }
                Err(error) => report.errors.push(WriteError {
                    agent: Some(agent),
                    ..self.failed("NetworkPolicy", &key.0, &key.1, error)
                }),
            }
        }
        let delete_results: Vec<(Key, Result<(), kube::Error>)> =
            futures::stream::iter(deletes.into_iter().map(|(key, uid)| async move {
                let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &key.0);
                let result = delete_observed(&api, &key.1, uid).await;
                (key, result)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, result) in delete_results {
            match result {
                Ok(()) => {
                    report.deleted += 1;
                    self.metrics.deletes.inc();
                    tracing::info!(namespace = %key.0, name = %key.1, "Deleted NetworkPolicy of a removed agent");
                }
                Err(error) => report.errors.push(self.failed("NetworkPolicy", &key.0, &key.1, error)),
            }
        }
        mode_changes
    }

    /// The AdminNetworkPolicies: one per restricted, scoped or baseline-only agent when enabled, written and repaired
    /// by server-side apply like the NetworkPolicies; every managed one no agent wants is deleted (UID
    /// precondition), also when the mode is off. With `hold`, nothing changes.
    async fn reconcile_admin(
        &self,
        world: &World,
        view: &View<'_>,
        hold: bool,
        unplanned: &HashSet<Key>,
    ) -> AdminReport {
        let mut report = AdminReport::default();
        let Some(store) = &world.admin_policies else {
            return report;
        };
        let existing: HashMap<String, Arc<AdminNetworkPolicy>> =
            store.state().into_iter().map(|p| (p.name_any(), p)).collect();
        let mut desired: Vec<(Key, AdminNetworkPolicy)> = Vec::new();
        // The AdminNetworkPolicies of the agents not looked at stay wanted, as the passes that looked at them left them.
        let mut wanted: HashSet<String> = HashSet::new();
        if let Some(settings) = &self.settings.admin {
            let looked_at: HashSet<(&str, &str)> = view
                .outcomes()
                .map(|o| (o.namespace.as_str(), o.name.as_str()))
                .collect();
            wanted.extend(
                self.index
                    .agents()
                    .filter(|a| a.outcome.mode != Mode::AllowAll && a.policy.is_some())
                    .map(|a| &a.outcome)
                    .filter(|o| !looked_at.contains(&(o.namespace.as_str(), o.name.as_str())))
                    .filter(|o| !self.fallbacks.contains_key(&(o.namespace.clone(), o.name.clone())))
                    .map(|o| crate::anp::name(&o.namespace, &o.name)),
            );
            for planned in view.agents.iter().filter(|a| a.outcome.mode != Mode::AllowAll) {
                let (outcome, Some(policy)) = (&planned.outcome, &planned.policy) else {
                    continue;
                };
                let key = (outcome.namespace.clone(), outcome.name.clone());
                match crate::anp::render(
                    &outcome.namespace,
                    &outcome.name,
                    outcome.mode,
                    &policy.policy(),
                    settings.priority,
                    &settings.capabilities,
                ) {
                    Ok(anp) => desired.push((key, anp)),
                    Err(reason) => {
                        report.fallbacks.insert(key, reason);
                    }
                }
            }
        }
        wanted.extend(desired.iter().map(|(_, p)| p.name_any()));
        // Already in force as desired: enforced. The others are enforced once their write succeeds.
        let mut writes: Vec<(Key, AdminNetworkPolicy, Option<String>)> = Vec::new();
        for (key, anp) in desired {
            match existing.get(&anp.name_any()) {
                Some(current) if crate::anp::canonical(current) == crate::anp::canonical(&anp) => {
                    report.enforced.insert(key);
                }
                current => writes.push((key, anp, current.map(|c| c.uid().unwrap_or_default()))),
            }
        }
        if hold {
            return report;
        }
        // The sweep: only objects carrying every Tollgate label, of an agent in this spoke's namespaces that is gone
        // (not merely unreadable).
        let in_scope = |namespace: &str| {
            self.settings.watched_namespaces.is_empty()
                || self.settings.watched_namespaces.iter().any(|n| n == namespace)
        };
        let deletes: Vec<(String, String)> = existing
            .iter()
            .filter(|(name, _)| !wanted.contains(*name))
            .filter(|(_, p)| {
                let labels = p.labels();
                match (labels.get(LABEL_AGENT), labels.get(crate::anp::LABEL_AGENT_NAMESPACE)) {
                    (Some(agent), Some(namespace)) => {
                        in_scope(namespace) && !unplanned.contains(&(namespace.clone(), agent.clone()))
                    }
                    _ => false,
                }
            })
            .map(|(name, p)| (name.clone(), p.uid().unwrap_or_default()))
            .collect();
        let api: Api<AdminNetworkPolicy> = Api::all(self.client.clone());
        let api = &api;
        /// An agent, its AdminNetworkPolicy's name, the UID of the one in force (if any), and how the write went.
        type Outcome = (Key, String, Option<String>, Result<(), kube::Error>);
        let results: Vec<Outcome> = futures::stream::iter(writes.into_iter().map(|(key, anp, current)| async move {
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = current.is_some();
            let name = anp.name_any();
            let result = api.patch(&name, &params, &Patch::Apply(&anp)).await.map(|_| ());
            (key, name, current, result)
        }))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
        for (key, name, current, result) in results {
            match result {
                Ok(()) => {
                    report.written += 1;
                    self.metrics.writes.inc();
                    report.enforced.insert(key);
                }
                Err(error) => {
                    // An AdminNetworkPolicy that cannot be updated may allow what the agent may no longer reach
                    // (its Allow rules are final, whatever the NetworkPolicy says): it goes, and the NetworkPolicy
                    // alone enforces until the write succeeds.
                    let reason = format!("its AdminNetworkPolicy {name} could not be written ({error})");
                    if let Some(uid) = current
                        && let Err(delete_error) = delete_observed(api, &name, uid).await
                    {
                        report
                            .errors
                            .push(self.failed("AdminNetworkPolicy", "", &name, delete_error));
                    }
                    report.errors.push(WriteError {
                        agent: Some(key.clone()),
                        ..self.failed("AdminNetworkPolicy", "", &name, error)
                    });
                    report.fallbacks.insert(key, reason);
                }
            }
        }
        let results: Vec<(String, Result<(), kube::Error>)> =
            futures::stream::iter(deletes.into_iter().map(|(name, uid)| async move {
                let result = delete_observed(api, &name, uid).await;
                (name, result)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (name, result) in results {
            match result {
                Ok(()) => {
                    report.deleted += 1;
                    self.metrics.deletes.inc();
                    tracing::info!(%name, "Deleted an AdminNetworkPolicy no agent needs");
                }
                Err(error) => report.errors.push(self.failed("AdminNetworkPolicy", "", &name, error)),
            }
        }
        report
    }

    /// A failed write (or delete) of `namespace/name` of kind `what`, counted and logged.
    fn failed(&self, what: &str, namespace: &str, name: &str, error: kube::Error) -> WriteError {
        let kind = ErrorKind::of(&error);
        self.metrics
            .failures
            .get_or_create(&ReasonLabel { reason: kind.as_str() })
            .inc();
        tracing::warn!(namespace, name, reason = kind.as_str(), %error, "{what} write failed");
        WriteError {
            agent: None,
            namespace: namespace.to_string(),
            name: name.to_string(),
            kind,
            error,
        }
    }

    /// Records each agent's effective egress on its AgentRuntime, where `kubectl get agentruntimes` shows it:
    /// annotations only, by server-side apply with a field manager of their own (the agent operator owns `spec` and
    /// `status`), and only when they differ from what the watch observed.
    /// Returns the agents whose annotations could not be written (the next pass tries again).
    async fn annotate(&self, world: &World, view: &View<'_>, revision: Option<u64>) -> Vec<Key> {
        let widened = &self.widened;
        // Built as the stream pulls them, so that a pass that annotates every agent does not hold every patch, and
        // compared with each AgentRuntime as the watch shows it then.
        let patches = view.outcomes().filter_map(|outcome| {
            let runtime = world.runtime(&outcome.namespace, &outcome.name)?;
            let key = (outcome.namespace.clone(), outcome.name.clone());
            let by = widened.get(&key).map_or(&[][..], Vec::as_slice);
            let desired = egress_annotations(outcome, revision, by);
            let observed = runtime.annotations();
            // An annotation left out of the apply is removed by it (this field manager owned it).
            let current = desired.iter().all(|(k, v)| observed.get(k) == Some(v))
                && (desired.contains_key(ANNOTATION_WIDENED_BY) || !observed.contains_key(ANNOTATION_WIDENED_BY));
            (!current).then_some((key, desired))
        });
        let client = &self.client;
        let results: Vec<(Key, Result<(), kube::Error>)> =
            futures::stream::iter(patches.map(|(key, annotations)| async move {
                let api: Api<ObservedRuntime> = Api::namespaced(client.clone(), &key.0);
                let patch = serde_json::json!({
                    "apiVersion": "agent.kagenti.dev/v1alpha1",
                    "kind": "AgentRuntime",
                    "metadata": {"name": key.1, "namespace": key.0, "annotations": annotations},
                });
                let params = PatchParams::apply(ANNOTATION_MANAGER).force();
                let result = api.patch(&key.1, &params, &Patch::Apply(&patch)).await.map(|_| ());
                (key, result)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (key, result) in results {
            if let Err(error) = result {
                let kind = ErrorKind::of(&error);
                self.metrics
                    .failures
                    .get_or_create(&ReasonLabel { reason: kind.as_str() })
                    .inc();
                tracing::warn!(namespace = %key.0, name = %key.1, reason = kind.as_str(), %error, "Could not annotate AgentRuntime");
                failed.push(key);
            }
        }
        failed
    }

    /// The cluster's facts as the watches show them (without resolved names).
    fn facts(world: &World) -> planner::ClusterFacts {
        let api_endpoints = world.api_endpoints.state().into_iter().next();
        let api_service = world.api_service.state().into_iter().next();
        let api_slices: Vec<_> = world.api_slices.iter().flat_map(|s| s.state()).collect();
        let api_slice_refs: Vec<&_> = api_slices.iter().map(|s| s.as_ref()).collect();
        let api = facts::api_server(
            facts::EndpointSources {
                endpoints: api_endpoints.as_deref(),
                slices: &api_slice_refs,
            },
            api_service.as_deref(),
        );
        let dns = world.dns.iter().find_map(|candidate| {
            let service = candidate.service.state().into_iter().next()?;
            let endpoints = candidate.endpoints.state().into_iter().next();
            let slices: Vec<_> = candidate.slices.iter().flat_map(|s| s.state()).collect();
            let slice_refs: Vec<&_> = slices.iter().map(|s| s.as_ref()).collect();
            let sources = facts::EndpointSources {
                endpoints: endpoints.as_deref(),
                slices: &slice_refs,
            };
            facts::dns(&candidate.namespace, sources, Some(&service))
        });
        planner::ClusterFacts {
            api,
            dns,
            names: planner::ResolvedNames::new(),
        }
    }

    /// Builds the planner input of every agent whose AgentRuntime, namespace, target workload or AgentCards changed
    /// since the last pass (or whose card turned stale), all of them with `rebuild`, and stages them in the index
    /// with the agents gone. Returns the agents whose AgentRuntime changed, appeared or went.
    fn stage_inputs(
        &mut self,
        world: &World,
        runtimes: &[Arc<ObservedRuntime>],
        now_unix: i64,
        rebuild: bool,
    ) -> Staged {
        // When no namespace, workload or AgentCard changed and no card turned stale, an agent whose AgentRuntime is
        // the same object needs no lookup at all: the common pass after one agent's change touches nothing else.
        let dependencies_moved = self.dependencies.moved(world);
        let stale_due = self.next_stale.is_some_and(|at| at <= now_unix);
        let look_at_all = rebuild || dependencies_moved || stale_due;
        let present: HashSet<usize> = runtimes.iter().map(address).collect();
        let mut touched = HashSet::new();
        let remaining: Vec<&Arc<ObservedRuntime>> = runtimes
            .iter()
            .filter(|runtime| look_at_all || !self.built_at.contains_key(&address(runtime)))
            .collect();
        if remaining.is_empty() {
            let gone = self.sweep_built(&present, &mut touched);
            self.index.stage(Vec::new(), gone.clone());
            self.next_stale = self.next_stale.filter(|at| *at > now_unix);
            return Staged {
                touched,
                gone,
                inputs: Vec::new(),
            };
        }
        let namespaces: HashMap<String, Arc<Namespace>> = world
            .namespaces
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let mut cards: HashMap<Key, Vec<Arc<DynamicObject>>> = HashMap::new();
        for card in world.agent_cards.iter().flat_map(|s| s.state()) {
            if let Some((target, _)) = agents::agent_card(&card) {
                cards
                    .entry((card.namespace().unwrap_or_default(), target))
                    .or_default()
                    .push(card);
            }
        }
        let verification = VerificationSettings {
            trust_domain: self.settings.trust_domain.clone(),
            max_card_age_secs: self.settings.max_card_age.map(|d| d.as_secs()),
            now_unix,
        };
        let mut upserts = Vec::new();
        let mut unplannable = Vec::new();
        let mut namespace_labels: HashMap<String, Arc<BTreeMap<String, String>>> = HashMap::new();
        for runtime in remaining {
            let key = (runtime.namespace().unwrap_or_default(), runtime.name_any());
            let target = match &**runtime {
                ObservedRuntime::Valid(rt) => {
                    Some((rt.spec.target_ref.kind.as_str(), rt.spec.target_ref.name.as_str()))
                }
                ObservedRuntime::Malformed(m) => m.target_kind.as_deref().zip(m.target_name.as_deref()),
            };
            let sources = Sources {
                runtime: Arc::downgrade(runtime),
                namespace: namespaces.get(&key.0).cloned(),
                workload: target.and_then(|(kind, name)| workload(world, kind, &key.0, name)),
                cards: target
                    .and_then(|(_, name)| cards.get(&(key.0.clone(), name.to_string())))
                    .cloned()
                    .unwrap_or_default(),
                // Only while in the future: a stale card needs no more rebuilding.
                stale_at: self
                    .settings
                    .max_card_age
                    .and_then(|age| {
                        runtime
                            .card_fetched_unix()
                            .map(|f| f.saturating_add(age.as_secs() as i64 + 1))
                    })
                    .filter(|at| *at > now_unix),
            };
            let unchanged = self.built.get(&key.0).and_then(|by_name| by_name.get(&key.1));
            if unchanged.is_none_or(|b| !std::ptr::eq(b.runtime.as_ptr(), Arc::as_ptr(runtime))) {
                touched.insert(key.clone());
            }
            let fresh = unchanged.is_some_and(|b| b.same(&sources) && b.stale_at.is_none_or(|at| at > now_unix));
            if fresh && !rebuild {
                // Built from the same objects: kept.
                self.remember(key, sources);
                continue;
            }
            // One map per namespace, shared by its agents' inputs.
            let namespace_labels = namespace_labels
                .entry(key.0.clone())
                .or_insert_with(|| {
                    let mut labels = sources
                        .namespace
                        .as_ref()
                        .map(|n| n.labels().clone())
                        .unwrap_or_default();
                    labels
                        .entry(planner::LABEL_NAMESPACE_NAME.to_string())
                        .or_insert_with(|| key.0.clone());
                    Arc::new(labels)
                })
                .clone();
            let pod_labels = sources.workload.as_ref().and_then(Workload::template_labels);
            let agent = match &**runtime {
                ObservedRuntime::Valid(rt) => Some(agents::agent(
                    rt,
                    pod_labels,
                    namespace_labels,
                    merged_card_status(&sources.cards),
                    &verification,
                )),
                ObservedRuntime::Malformed(malformed) => {
                    agents::malformed_agent(malformed, pod_labels, namespace_labels)
                }
            };
            match agent {
                Some(agent) => upserts.push(agent),
                // Its target cannot be read: no input (its policies are kept, see `unplanned`).
                None => unplannable.push(key.clone()),
            }
            self.remember(key, sources);
        }
        let gone = self.sweep_built(&present, &mut touched);
        let mut removals = unplannable;
        removals.extend(gone.iter().cloned());
        let inputs = self.index.stage(upserts, removals);
        if self.settings.max_card_age.is_some() {
            self.next_stale = self
                .built
                .values()
                .flat_map(|by_name| by_name.values())
                .filter_map(|b| b.stale_at)
                .min();
        }
        Staged { touched, gone, inputs }
    }

    /// When the loop must wake for the next card to turn stale (under `--max-card-age`), from the pass's view.
    pub fn next_staleness(&self, now_unix: i64) -> Option<Duration> {
        self.next_stale
            .map(|at| Duration::from_secs(u64::try_from(at.saturating_sub(now_unix)).unwrap_or(0)))
    }

    /// Keeps what an agent's input was built from, in place of what it was built from before.
    fn remember(&mut self, key: Key, sources: Sources) {
        let at = sources.runtime.as_ptr() as usize;
        let by_name = self.built.entry(key.0.clone()).or_default();
        if let Some(before) = by_name.insert(key.1.clone(), sources) {
            self.built_at.remove(&(before.runtime.as_ptr() as usize));
        }
        self.built_at.insert(at, key);
    }

    /// Forgets the agents whose AgentRuntime object is no longer `present` and was not replaced by another: they
    /// are gone.
    fn sweep_built(&mut self, present: &HashSet<usize>, touched: &mut HashSet<Key>) -> Vec<Key> {
        let went = managed::went(&self.built_at, present);
        let mut gone = Vec::with_capacity(went.len());
        for at in went {
            let Some(key) = self.built_at.remove(&at) else {
                continue;
            };
            if let Some(by_name) = self.built.get_mut(&key.0) {
                by_name.remove(&key.1);
                if by_name.is_empty() {
                    self.built.remove(&key.0);
                }
            }
            gone.push(key);
        }
        touched.extend(gone.iter().cloned());
        gone
    }
}

/// What the last passes decided for each agent besides its plan.
struct Agents<'a> {
    widened: &'a HashMap<Key, Vec<String>>,
    enforced: &'a HashSet<Key>,
    fallbacks: &'a HashMap<Key, String>,
}

/// Events on each AgentRuntime looked at: the mode when its policy was written with a new mode, and its problems
/// when they change (`reported` keeps what was said last, per agent).
#[allow(clippy::too_many_arguments)]
fn problem_events(
    reported: &mut HashMap<Key, Vec<(String, String)>>,
    runtimes: &[Arc<ObservedRuntime>],
    view: &View<'_>,
    mode_changes: &HashMap<Key, (Option<Mode>, Mode)>,
    names: &Snapshot,
    agents: &Agents<'_>,
    removed: &BTreeSet<Key>,
    full: bool,
) -> Vec<(ObjectReference, Event)> {
    let by_key: HashMap<Key, &Arc<ObservedRuntime>> = runtimes
        .iter()
        .map(|rt| ((rt.namespace().unwrap_or_default(), rt.name_any()), rt))
        .collect();
    let mut events: Vec<(ObjectReference, Event)> = Vec::new();
    let mut seen = HashSet::new();
    // A malformed agent whose target cannot be read has no outcome: its problem is reported all the same.
    for (key, runtime) in &by_key {
        if let ObservedRuntime::Malformed(malformed) = &***runtime
            && malformed.target_name.is_none()
        {
            seen.insert(key.clone());
            let problems = vec![(
                "MalformedAgentRuntime".to_string(),
                format!(
                    "{}; no NetworkPolicy can be named without spec.targetRef.name",
                    malformed.message()
                ),
            )];
            if reported.get(key) != Some(&problems) {
                for (reason, note) in &problems {
                    events.push((runtime.object_ref(&()), event(EventType::Warning, reason, note.clone())));
                }
                reported.insert(key.clone(), problems);
            }
        }
    }
    for outcome in view.outcomes() {
        let key = (outcome.namespace.clone(), outcome.name.clone());
        seen.insert(key.clone());
        let Some(runtime) = by_key.get(&key) else { continue };
        let reference = runtime.object_ref(&());
        if let Some(policy) = &outcome.policy_name
            && let Some((before, after)) = mode_changes.get(&(outcome.namespace.clone(), policy.clone()))
        {
            let note = match before {
                Some(before) => format!(
                    "NetworkPolicy {policy}: egress mode {before} -> {after}; {}",
                    summary(outcome)
                ),
                None => format!(
                    "NetworkPolicy {policy} created: egress mode {after}; {}",
                    summary(outcome)
                ),
            };
            // The action names the change: the recorder folds Events of one action into one series (keeping the
            // first note), so each distinct change must be its own Event to read true in `kubectl describe`.
            let action = match before {
                Some(before) => format!("{}To{}", camel(before.as_str()), camel(after.as_str())),
                None => format!("Create{}", camel(after.as_str())),
            };
            let mut changed = event(EventType::Normal, "EgressModeChanged", note);
            changed.action = action;
            events.push((reference.clone(), changed));
        }
        let mut problems = problems(outcome, view.problems);
        if let Some(by) = agents.widened.get(&key) {
            if agents.enforced.contains(&key) {
                problems.push(("EgressWidenedOverridden".to_string(), overridden_note(by)));
            } else {
                problems.push(("EgressWidened".to_string(), widened_note(by)));
            }
        }
        if let Some(reason) = agents.fallbacks.get(&key) {
            problems.push((
                "AdminNetworkPolicyFallback".to_string(),
                format!("no AdminNetworkPolicy for this agent ({reason}): its NetworkPolicy alone enforces its egress"),
            ));
        }
        // The problems of the names its policy relies on (lookups failing, too many addresses, …).
        let mut seen_names = HashSet::new();
        for used in &outcome.names {
            if seen_names.insert(&used.name)
                && let Some(state) = names.get(&used.name)
            {
                problems.extend(state.problems(&used.name).into_iter().map(|(r, m)| (r.to_string(), m)));
            }
        }
        if let ObservedRuntime::Malformed(malformed) = &***runtime {
            problems.insert(0, ("MalformedAgentRuntime".to_string(), malformed.message()));
        }
        // Only agents with something to say are kept: nothing reported and no problems are the same.
        if reported.get(&key).map_or(&[][..], Vec::as_slice) != problems.as_slice() {
            for (reason, note) in &problems {
                events.push((reference.clone(), event(EventType::Warning, reason, note.clone())));
            }
        }
        if problems.is_empty() {
            reported.remove(&key);
        } else {
            reported.insert(key, problems);
        }
    }
    // Agents gone are forgotten; with every agent looked at, so is every one not seen.
    if full {
        reported.retain(|k, _| seen.contains(k));
    } else {
        reported.retain(|k, _| !removed.contains(k) || seen.contains(k));
    }
    events
}

/// More Events than this in one pass are published in chunks of this many, each through a recorder of its own.
const LARGE_EVENT_BATCH: usize = 256;

/// Publishes Events, a few at a time; a failure is logged, not retried.
async fn publish(recorder: &Recorder, events: Vec<(ObjectReference, Event)>) {
    futures::stream::iter(events.into_iter().map(|(reference, event)| async move {
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "Publishing an event failed");
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
}

/// The field manager of the annotations on AgentRuntimes (apart from the policies' own).
pub const ANNOTATION_MANAGER: &str = "tollgate-spoke-annotations";

/// The other NetworkPolicies that widen an agent, comma-separated, on its AgentRuntime (absent when none).
pub const ANNOTATION_WIDENED_BY: &str = "tollgate.dev/egress-widened-by";

/// The Warning of a widened agent.
fn widened_note(by: &[String]) -> String {
    format!(
        "NetworkPolicy {} also select{} this agent's pods and allow{} egress its own policy does not: NetworkPolicies \
         add up, so the agent can reach more than its egress mode says. Remove or narrow {}, or keep these pods out \
         of {} podSelector.",
        by.join(", "),
        if by.len() == 1 { "s" } else { "" },
        if by.len() == 1 { "s" } else { "" },
        if by.len() == 1 { "it" } else { "them" },
        if by.len() == 1 { "its" } else { "their" },
    )
}

/// The note of a widening policy that the agent's AdminNetworkPolicy overrides.
fn overridden_note(by: &[String]) -> String {
    format!(
        "NetworkPolicy {} select this agent's pods and allow more egress, but its AdminNetworkPolicy is evaluated \
         first and denies it: no effect on its egress",
        by.join(", ")
    )
}

/// Per agent, the other NetworkPolicies of its namespace that co-select its pods and allow egress its own policy
/// does not (docs/design.md, "Least privilege as enforced"). Allow-all agents have nothing to widen.
fn widening(world: &World, view: &View<'_>) -> HashMap<Key, Vec<String>> {
    let others: Vec<Arc<NetworkPolicy>> = world.others.iter().flat_map(|s| s.state()).collect();
    if others.is_empty() {
        return HashMap::new();
    }
    let mut by_namespace: HashMap<&str, Vec<&NetworkPolicy>> = HashMap::new();
    for policy in &others {
        by_namespace
            .entry(policy.metadata.namespace.as_deref().unwrap_or_default())
            .or_default()
            .push(policy);
    }
    view.agents
        .iter()
        .filter(|a| a.outcome.mode != Mode::AllowAll)
        .filter_map(|a| {
            let (o, policy) = (&a.outcome, a.policy.as_ref()?);
            let candidates = by_namespace.get(o.namespace.as_str())?;
            let by = tollgate_common::widening::widened_by(&policy.policy(), candidates.iter().copied());
            (!by.is_empty()).then(|| ((o.namespace.clone(), o.name.clone()), by))
        })
        .collect()
}

/// The annotations that show an agent's effective egress on its AgentRuntime.
pub fn egress_annotations(
    outcome: &AgentOutcome,
    revision: Option<u64>,
    widened_by: &[String],
) -> BTreeMap<String, String> {
    let invalid = outcome
        .problems
        .iter()
        .find(|p| matches!(p, planner::Problem::InvalidRule(_)));
    let reason = match invalid {
        Some(problem) if outcome.mode == Mode::BaselineOnly => problem.reason().to_string(),
        _ => outcome.verification_reason.as_str().to_string(),
    };
    BTreeMap::from([
        (
            "tollgate.dev/egress-mode".to_string(),
            outcome.mode.as_str().to_string(),
        ),
        ("tollgate.dev/egress-rules".to_string(), outcome.rule_count.to_string()),
        (
            "tollgate.dev/egress-revision".to_string(),
            revision.map_or_else(|| "none".to_string(), |r| r.to_string()),
        ),
        ("tollgate.dev/egress-reason".to_string(), reason),
    ])
    .into_iter()
    .chain((!widened_by.is_empty()).then(|| (ANNOTATION_WIDENED_BY.to_string(), widened_by.join(","))))
    .collect()
}

/// `allow-all` → `AllowAll`.
fn camel(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate_note(note)),
        action: "Reconcile".to_string(),
        secondary: None,
    }
}

/// An Event note cut to what the API server accepts (1 kB), at a character boundary.
pub fn truncate_note(mut note: String) -> String {
    if note.len() > 1000 {
        let mut cut = 990;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str(" …");
    }
    note
}

fn summary(outcome: &AgentOutcome) -> String {
    let sources: Vec<String> = outcome.rule_sources.iter().map(ToString::to_string).collect();
    format!(
        "{} ({}); {} declared rule(s){}",
        if outcome.verified { "verified" } else { "not verified" },
        outcome.verification_reason,
        outcome.rule_count,
        if sources.is_empty() {
            String::new()
        } else {
            format!(" from {}", sources.join(", "))
        }
    )
}

/// `(reason, message)` of every problem of one agent, in a stable order.
/// The agent's errors first, then its dropped rules, its warnings and the cluster's problems; problems of one
/// reason share an Event.
fn problems(outcome: &AgentOutcome, cluster: &[ClusterProblem]) -> Vec<(String, String)> {
    fn grouped<'p>(out: &mut Vec<(String, String)>, problems: impl Iterator<Item = &'p planner::Problem>) {
        let mut by_reason: Vec<(&str, Vec<String>)> = Vec::new();
        for problem in problems {
            match by_reason.iter_mut().find(|(r, _)| *r == problem.reason()) {
                Some((_, notes)) => notes.push(problem.to_string()),
                None => by_reason.push((problem.reason(), vec![problem.to_string()])),
            }
        }
        out.extend(
            by_reason
                .into_iter()
                .map(|(r, notes)| (r.to_string(), notes.join("; "))),
        );
    }
    let mut out = Vec::new();
    grouped(&mut out, outcome.errors());
    let dropped: Vec<String> = outcome.dropped.iter().map(ToString::to_string).collect();
    if !dropped.is_empty() {
        out.push(("RulesDropped".to_string(), dropped.join("; ")));
    }
    grouped(&mut out, outcome.warnings());
    for problem in cluster {
        out.push((problem.reason().to_string(), problem.to_string()));
    }
    out
}

fn mode_of(policy: &impl Resource) -> Option<Mode> {
    Mode::parse(policy.meta().labels.as_ref()?.get(LABEL_MODE)?)
}

/// Deletes the object observed with `uid` (a precondition: a newer object of the same name stays). Gone already, or
/// replaced since it was observed, is success.
async fn delete_observed<K>(api: &Api<K>, name: &str, uid: String) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Server-side apply. A policy the spoke already manages is applied with force, which also repairs edits made by
/// other managers; a new name is applied without force, so an unmanaged NetworkPolicy holding it is not taken
/// over (the write fails with a conflict, reported).
async fn apply(client: &Client, desired: &NetworkPolicy, managed: bool) -> Result<(), kube::Error> {
    let namespace = desired.namespace().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = managed;
    api.patch(&desired.name_any(), &params, &Patch::Apply(desired)).await?;
    Ok(())
}

/// The verification status of a workload's deprecated AgentCards: verified only while every card of the workload is.
fn merged_card_status(cards: &[Arc<DynamicObject>]) -> Option<AgentCardStatus> {
    let mut merged: Option<AgentCardStatus> = None;
    for card in cards {
        let Some((_, status)) = agents::agent_card(card) else {
            continue;
        };
        merged = Some(match merged {
            None => status,
            Some(mut current) => {
                current.verified_condition = match (current.verified_condition, status.verified_condition) {
                    (Some(true), Some(true)) => Some(true),
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    _ => None,
                };
                current
            }
        });
    }
    merged
}

/// The workload an agent targets, when it is a Deployment or StatefulSet that exists.
#[derive(Clone, Debug)]
enum Workload {
    Deployment(Arc<Deployment>),
    StatefulSet(Arc<StatefulSet>),
}

impl Workload {
    fn template_labels(&self) -> Option<BTreeMap<String, String>> {
        let template = match self {
            Self::Deployment(d) => &d.spec.as_ref()?.template,
            Self::StatefulSet(s) => &s.spec.as_ref()?.template,
        };
        template.metadata.as_ref()?.labels.clone()
    }

    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Deployment(a), Self::Deployment(b)) => Arc::ptr_eq(a, b),
            (Self::StatefulSet(a), Self::StatefulSet(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

fn workload(world: &World, kind: &str, namespace: &str, name: &str) -> Option<Workload> {
    use kube::runtime::reflector::ObjectRef;
    match kind {
        "Deployment" => world
            .deployments
            .iter()
            .find_map(|s| s.get(&ObjectRef::new(name).within(namespace)))
            .map(Workload::Deployment),
        "StatefulSet" => world
            .statefulsets
            .iter()
            .find_map(|s| s.get(&ObjectRef::new(name).within(namespace)))
            .map(Workload::StatefulSet),
        _ => None,
    }
}

/// What staging the inputs found.
#[derive(Debug, Default)]
struct Staged {
    /// Agents whose AgentRuntime changed, appeared or went.
    touched: HashSet<Key>,
    /// Agents whose AgentRuntime went.
    gone: Vec<Key>,
    /// Agents whose planner input changed.
    inputs: Vec<Key>,
}

/// The objects agents' inputs depend on besides their AgentRuntime, as one pass saw them: a set of `Arc` addresses
/// (the `Arc`s are kept, so that no address is reused while it is remembered).
#[derive(Debug, Default)]
struct Dependencies {
    addresses: HashSet<usize>,
    kept: Vec<AnyObject>,
}

type AnyObject = Arc<dyn std::any::Any + Send + Sync>;

impl Dependencies {
    /// Whether any namespace, Deployment, StatefulSet or AgentCard changed, appeared or went since the last call.
    fn moved(&mut self, world: &World) -> bool {
        let mut kept: Vec<AnyObject> = Vec::new();
        kept.extend(world.namespaces.state().into_iter().map(|o| o as AnyObject));
        for store in &world.deployments {
            kept.extend(store.state().into_iter().map(|o| o as AnyObject));
        }
        for store in &world.statefulsets {
            kept.extend(store.state().into_iter().map(|o| o as AnyObject));
        }
        for store in &world.agent_cards {
            kept.extend(store.state().into_iter().map(|o| o as AnyObject));
        }
        let addresses: HashSet<usize> = kept.iter().map(|o| Arc::as_ptr(o).cast::<()>() as usize).collect();
        let moved = addresses != self.addresses;
        self.addresses = addresses;
        self.kept = kept;
        moved
    }
}

/// The objects an agent's planner input was built from, held so that their addresses are not reused (the same address
/// is the same object).
#[derive(Debug)]
struct Sources {
    /// Weak: the object itself is freed once the store replaces it (the pass after the spoke annotated every
    /// AgentRuntime would otherwise hold two copies of each); the allocation, and so the address, stays ours.
    runtime: Weak<ObservedRuntime>,
    namespace: Option<Arc<Namespace>>,
    workload: Option<Workload>,
    cards: Vec<Arc<DynamicObject>>,
    /// When its card turns stale under `--max-card-age` (Unix seconds).
    stale_at: Option<i64>,
}

impl Sources {
    /// Whether `other` was built from the same objects.
    fn same(&self, other: &Self) -> bool {
        self.runtime.ptr_eq(&other.runtime)
            && match (&self.namespace, &other.namespace) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && match (&self.workload, &other.workload) {
                (Some(a), Some(b)) => a.same(b),
                (None, None) => true,
                _ => false,
            }
            && self.cards.len() == other.cards.len()
            && self.cards.iter().zip(&other.cards).all(|(a, b)| Arc::ptr_eq(a, b))
            && self.stale_at == other.stale_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::field_error::FieldError;
    use tollgate_common::planner::Problem;
    use tollgate_common::verification::Reason;

    #[test]
    fn each_kind_of_problem_is_its_own_event() {
        let outcome = AgentOutcome {
            namespace: "ns".into(),
            name: "b".into(),
            policy_name: None,
            mode: Mode::BaselineOnly,
            verified: true,
            verification_reason: Reason::SignatureVerified,
            rule_sources: Vec::new(),
            rule_count: 0,
            dropped: Vec::new(),
            names: Vec::new(),
            problems: vec![
                Problem::InvalidRule(FieldError::new("spec.egress.rules[0].to", "port-only rule")),
                Problem::BindingNotSatisfied("SPIFFE ID x is not bound".into()),
                Problem::PolicyTaken {
                    policy: "wl-signature-policy".into(),
                    owner: "a".into(),
                },
                Problem::InvalidRule(FieldError::new("spec.egress.rules[1].ports", "bad")),
            ],
        };
        let got = problems(&outcome, &[ClusterProblem::DnsUndiscovered]);
        let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "InvalidEgressRules",
                "WorkloadPolicyTaken",
                "BindingNotSatisfied",
                "DNSUndiscovered"
            ]
        );
        assert_eq!(
            got[0].1,
            "invalid local egress rule: spec.egress.rules[0].to: port-only rule; invalid local egress rule: \
             spec.egress.rules[1].ports: bad"
        );
        assert!(got[1].1.contains("already written for agent a"), "{}", got[1].1);
        assert_eq!(
            egress_annotations(&outcome, Some(3), &[])["tollgate.dev/egress-reason"],
            "InvalidEgressRules"
        );
    }
}
