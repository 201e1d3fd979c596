//! The pure planner: cluster facts + agents + hub intent + config → one desired NetworkPolicy per agent and a
//! per-agent outcome (docs/design.md: effective egress, the NetworkPolicy). Deterministic: equal inputs give equal output, in any input order.

mod baseline;
mod guardrail;
pub mod incremental;
mod render;

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule};

use crate::document::{EgressPolicy, VerifiedDefault};
use crate::egress_rule::{EgressRule, PortRange};
use crate::field_error::FieldError;
use crate::fqdn::Fqdn;
use crate::intent::Intent;
use crate::verification::Verification;

pub use baseline::Baseline;
use guardrail::Guardrails;
pub use incremental::{AgentKey, Changes, IncrementalPlan, KeptAgent, KeptPolicy};

/// `app.kubernetes.io/managed-by` value on every NetworkPolicy the spoke writes.
pub const MANAGED_BY: &str = "tollgate-spoke";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_AGENT: &str = "tollgate.dev/agent";
pub const LABEL_MODE: &str = "tollgate.dev/mode";
pub const ANNOTATION_REVISION: &str = "tollgate.dev/revision";
pub const ANNOTATION_RULE_SOURCES: &str = "tollgate.dev/rule-sources";
/// Pod label the upstream operator sets on verified workloads.
pub const LABEL_SIGNATURE_VERIFIED: &str = "agent.kagenti.dev/signature-verified";
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
pub const AGENT_RUNTIME_API_VERSION: &str = "agent.kagenti.dev/v1alpha1";
pub const AGENT_RUNTIME_KIND: &str = "AgentRuntime";

/// The spoke's settings that shape the policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Namespace of the operator: its pods may reach every agent.
    pub operator_namespace: String,
    /// Namespace of the cluster defaults (upstream `kagenti-system`): its pods may reach every agent.
    pub cluster_defaults_namespace: String,
    /// Appended to the workload name to name the policy.
    pub name_suffix: String,
    /// Restricted agents may also reach DNS.
    pub restricted_allow_dns: bool,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            operator_namespace: "kagenti-system".into(),
            cluster_defaults_namespace: "kagenti-system".into(),
            name_suffix: "-signature-policy".into(),
            restricted_allow_dns: false,
        }
    }
}

/// What the spoke discovered about its cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    pub api: ApiServerFacts,
    /// `None`: no DNS Service was found.
    pub dns: Option<DnsFacts>,
    /// The addresses of the DNS names used in rules, as resolved in this cluster. A name missing here (or with no
    /// addresses) contributes no peer.
    pub names: ResolvedNames,
}

/// Addresses of DNS names, by name (the resolver's output, the planner's input).
pub type ResolvedNames = BTreeMap<Fqdn, Vec<IpAddr>>;

/// The API server: addresses and ports of `default/kubernetes` endpoints, and the Service's ClusterIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiServerFacts {
    pub addresses: Vec<IpAddr>,
    /// TCP ports of the endpoints (6443 on OpenShift).
    pub ports: Vec<u16>,
    /// The `kubernetes` Service ClusterIP and port.
    pub service: Option<(IpAddr, u16)>,
}

/// The cluster's DNS Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsFacts {
    pub namespace: String,
    /// Endpoint addresses of the Service.
    pub addresses: Vec<IpAddr>,
    /// Ports the DNS pods listen on (the endpoints' target ports: 53, or 5353 on OpenShift).
    pub target_ports: Vec<PortRange>,
    pub cluster_ip: Option<IpAddr>,
}

/// An agent's own declaration on `AgentRuntime.spec.egress`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LocalEgress {
    /// No `spec.egress`.
    #[default]
    Absent,
    /// `spec.egress` present and valid (possibly with zero rules).
    Rules(Vec<EgressRule>),
    /// `spec.egress` present but invalid: the agent fails closed.
    Invalid(Vec<FieldError>),
}

/// One `AgentRuntime` as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub namespace: String,
    /// The `AgentRuntime` name.
    pub name: String,
    /// The `AgentRuntime` UID, for the owner reference (empty: none).
    pub uid: String,
    /// `spec.targetRef.name`: names the policy.
    pub target_name: String,
    /// `AgentRuntime` labels (for `agentSelector`).
    pub labels: BTreeMap<String, String>,
    /// Labels of the agent's namespace (for `namespaceSelector`); shared by the agents of one namespace.
    pub namespace_labels: Arc<BTreeMap<String, String>>,
    /// Pod-template labels of the target workload, when it is a Deployment or StatefulSet that exists.
    pub pod_labels: Option<BTreeMap<String, String>>,
    pub local_egress: LocalEgress,
    pub verification: Verification,
}

/// The egress shape given to one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Declared rules + baseline.
    Scoped,
    /// `egress: [{}]`.
    AllowAll,
    /// API server + DNS only.
    BaselineOnly,
    /// API server only (plus DNS with `restricted_allow_dns`).
    Restricted,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Scoped, Mode::AllowAll, Mode::BaselineOnly, Mode::Restricted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scoped => "scoped",
            Self::AllowAll => "allow-all",
            Self::BaselineOnly => "baseline-only",
            Self::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleSource {
    /// `AgentRuntime.spec.egress`.
    Local,
    /// A hub `EgressPolicy`.
    Policy(String),
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Policy(name) => write!(f, "policy/{name}"),
        }
    }
}

/// A declared rule, or one peer of it, that did not reach the policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DroppedRule {
    pub source: RuleSource,
    /// Index of the rule within its source.
    pub rule: usize,
    /// Index of the peer within the rule, when only that peer was dropped.
    pub peer: Option<usize>,
    pub reason: DropReason,
}

/// Why a declared rule, or a peer of it, did not reach the policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// The agent is not verified: none of its declared rules apply.
    NotVerified(crate::verification::Reason),
    /// The peer is outside every guardrail ceiling (the guardrail's explanation).
    OutsideGuardrail(String),
    /// None of the rule's destinations has addresses yet: the rule is never written without destinations.
    NamesUnresolved(Vec<Fqdn>),
    /// This peer's name has no addresses yet.
    NameUnresolved(Fqdn),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotVerified(reason) => write!(f, "agent is not verified ({reason})"),
            Self::OutsideGuardrail(reason) => f.write_str(reason),
            Self::NamesUnresolved(names) => {
                let one = names.len() == 1;
                let names: Vec<String> = names.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{} {} no addresses yet: the rule is left out until {} (it is never written without destinations)",
                    names.join(", "),
                    if one { "has" } else { "have" },
                    if one { "it resolves" } else { "one resolves" },
                )
            }
            Self::NameUnresolved(name) => write!(f, "{name} has no addresses yet"),
        }
    }
}

/// A problem found while planning one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `AgentRuntime.spec.egress` is invalid: the agent fails closed (baseline only when verified).
    InvalidRule(FieldError),
    /// Another agent targets the same workload and holds its policy: none is written for this agent.
    PolicyTaken { policy: String, owner: String },
    /// The agent's identity binding is not satisfied; the agent stays verified (a non-strict binding).
    BindingNotSatisfied(String),
    /// The API server is not discovered: this restricted agent gets no API access.
    NoApiAccess,
}

impl Problem {
    /// Whether the problem fails the agent closed (an error), rather than being reported beside its mode.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::InvalidRule(_) | Self::PolicyTaken { .. })
    }

    /// The reason of the agent's Event (problems of one reason share an Event).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRule(_) => "InvalidEgressRules",
            Self::PolicyTaken { .. } => "WorkloadPolicyTaken",
            Self::BindingNotSatisfied(_) => "BindingNotSatisfied",
            Self::NoApiAccess => "NoAPIAccess",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRule(error) => write!(f, "invalid local egress rule: {error}"),
            Self::PolicyTaken { policy, owner } => write!(
                f,
                "policy {policy} is already written for agent {owner} (both target the same workload); no policy is \
                 written for this agent"
            ),
            Self::BindingNotSatisfied(why) => write!(f, "identity binding: {why}"),
            Self::NoApiAccess => f.write_str("API server not discovered: restricted agent gets no API access"),
        }
    }
}

/// A problem of the whole cluster, found while planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterProblem {
    /// `default/kubernetes` has no endpoint addresses: restricted agents get no egress at all.
    ApiServerUndiscovered,
    /// No DNS Service was found: DNS is allowed to the usual DNS namespaces instead.
    DnsUndiscovered,
}

impl ClusterProblem {
    /// The reason of the Event on every agent.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ApiServerUndiscovered => "APIServerUndiscovered",
            Self::DnsUndiscovered => "DNSUndiscovered",
        }
    }
}

impl fmt::Display for ClusterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiServerUndiscovered => f.write_str(
                "API server not discovered: default/kubernetes has no endpoint addresses; restricted agents get no \
                 egress at all",
            ),
            Self::DnsUndiscovered => write!(
                f,
                "DNS not discovered: allowing DNS to the namespaces {} on ports {} and {}",
                baseline::FALLBACK_DNS_NAMESPACES.join(" and "),
                baseline::DNS_PORT,
                baseline::OPENSHIFT_DNS_TARGET_PORT,
            ),
        }
    }
}

impl fmt::Display for DroppedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.source, self.rule)?;
        if let Some(peer) = self.peer {
            write!(f, " peer {peer}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A DNS name an agent's policy allows, with the ports of the rule it stands in (none: every port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameDestination {
    pub name: Fqdn,
    pub ports: Vec<PortRange>,
}

impl NameDestination {
    /// One line per port, in the shape of [`destinations`]' lines: what `plan` shows instead of the addresses.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        let ports: Vec<String> = if self.ports.is_empty() {
            vec!["any port".to_string()]
        } else {
            self.ports.iter().map(ToString::to_string).collect()
        };
        ports.into_iter().map(move |port| format!("fqdn:{} {port}", self.name))
    }
}

/// What happened to one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOutcome {
    pub namespace: String,
    pub name: String,
    /// The policy written for it (`None` when its name collides with another agent's).
    pub policy_name: Option<String>,
    pub mode: Mode,
    pub verified: bool,
    pub verification_reason: crate::verification::Reason,
    /// Sources of the declared rules in the policy.
    pub rule_sources: Vec<RuleSource>,
    /// Declared rules in the policy (baseline not counted).
    pub rule_count: usize,
    pub dropped: Vec<DroppedRule>,
    /// The DNS names in the agent's declared rules, whether resolved or not, sorted.
    pub names: Vec<NameDestination>,
    /// What went wrong, in the order found: errors (the agent failed closed) and warnings.
    pub problems: Vec<Problem>,
}

impl AgentOutcome {
    /// The problems that made the agent fail closed.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    /// The problems reported without changing the mode.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.is_error())
    }
}

/// One agent's plan: what happened to it, and the policy written for it (`None` when another agent on the same
/// workload holds that policy).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedAgent {
    pub outcome: AgentOutcome,
    pub policy: Option<NetworkPolicy>,
}

/// The planner's output for a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sorted by namespace, then agent name.
    pub agents: Vec<PlannedAgent>,
    /// Cluster-wide problems (API server or DNS not discovered).
    pub problems: Vec<ClusterProblem>,
}

impl Plan {
    /// Every outcome, in agent order.
    pub fn outcomes(&self) -> impl Iterator<Item = &AgentOutcome> {
        self.agents.iter().map(|a| &a.outcome)
    }

    /// Every policy to write, in agent order.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.agents.iter().filter_map(|a| a.policy.as_ref())
    }
}

/// Plans every agent of a cluster.
pub fn plan(config: &PlannerConfig, facts: &ClusterFacts, agents: &[Agent], intent: &Intent) -> Plan {
    let planner = Planner::new(config, facts, intent);
    let mut order: Vec<&Agent> = agents.iter().collect();
    order.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // Policy names are the workload name plus a fixed suffix: one policy per (namespace, workload).
    let mut taken: HashMap<(&str, &str), &str> = HashMap::with_capacity(agents.len());
    let mut plan = Plan {
        agents: Vec::with_capacity(agents.len()),
        problems: planner.baseline.problems(),
    };
    for agent in order {
        let (policy, mut outcome) = planner.plan_agent(agent);
        let policy = match taken.entry((agent.namespace.as_str(), agent.target_name.as_str())) {
            Entry::Occupied(slot) => {
                let policy = outcome.policy_name.take().unwrap_or_default();
                outcome.problems.push(Problem::PolicyTaken {
                    policy,
                    owner: slot.get().to_string(),
                });
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(agent.name.as_str());
                Some(policy)
            }
        };
        plan.agents.push(PlannedAgent { outcome, policy });
    }
    plan
}

/// The per-cluster part of planning, computed once and shared by every agent.
#[derive(Debug)]
pub struct Planner<'a> {
    config: &'a PlannerConfig,
    baseline: Baseline,
    /// The hub revision, written once for the annotation of every policy.
    revision: Option<String>,
    /// Hub policies sorted by name, with their rules rendered once (`None`: a rule whose names have no addresses).
    policies: Vec<(&'a EgressPolicy, Vec<Option<NetworkPolicyEgressRule>>)>,
    /// The resolved DNS names of the cluster.
    names: &'a ResolvedNames,
    guardrails: Guardrails<'a>,
    ingress_verified: Vec<NetworkPolicyIngressRule>,
    ingress_unverified: Vec<NetworkPolicyIngressRule>,
}

impl<'a> Planner<'a> {
    pub fn new(config: &'a PlannerConfig, facts: &'a ClusterFacts, intent: &'a Intent) -> Self {
        let mut policies: Vec<_> = intent
            .policies
            .iter()
            .map(|p| {
                let rendered = p
                    .spec
                    .egress
                    .iter()
                    .map(|r| render::egress_rule(r, &facts.names))
                    .collect();
                (p, rendered)
            })
            .collect();
        policies.sort_by(|(a, _), (b, _)| a.metadata.name.cmp(&b.metadata.name));
        policies.dedup_by(|(a, _), (b, _)| a.metadata.name == b.metadata.name);
        Self {
            config,
            baseline: Baseline::new(facts, config.restricted_allow_dns),
            revision: intent.revision.map(|r| r.to_string()),
            policies,
            names: &facts.names,
            guardrails: Guardrails::new(&intent.guardrails),
            ingress_verified: render::ingress(config, true),
            ingress_unverified: render::ingress(config, false),
        }
    }

    /// The desired policy and the outcome for one agent.
    pub fn plan_agent(&self, agent: &Agent) -> (NetworkPolicy, AgentOutcome) {
        let verification = &agent.verification;
        let suffix = &self.config.name_suffix;
        let mut policy_name = String::with_capacity(agent.target_name.len() + suffix.len());
        policy_name.push_str(&agent.target_name);
        policy_name.push_str(suffix);
        let mut outcome = AgentOutcome {
            namespace: agent.namespace.clone(),
            name: agent.name.clone(),
            policy_name: Some(policy_name),
            mode: Mode::Restricted,
            verified: verification.verified,
            verification_reason: verification.reason,
            rule_sources: Vec::new(),
            rule_count: 0,
            dropped: Vec::new(),
            names: Vec::new(),
            problems: Vec::new(),
        };
        if let Some(warning) = &verification.binding_warning {
            outcome.problems.push(Problem::BindingNotSatisfied(warning.clone()));
        }
        // Evaluated where needed rather than collected: most agents are selected by no hub policy.
        let selecting = || self.policies.iter().filter(|(p, _)| selects(p, agent));

        if let LocalEgress::Invalid(errors) = &agent.local_egress {
            outcome
                .problems
                .extend(errors.iter().cloned().map(Problem::InvalidRule));
        }

        let egress: Vec<NetworkPolicyEgressRule> = if !verification.verified {
            outcome.mode = Mode::Restricted;
            let reason = DropReason::NotVerified(verification.reason);
            if let LocalEgress::Rules(rules) = &agent.local_egress {
                outcome.dropped.extend((0..rules.len()).map(|rule| DroppedRule {
                    source: RuleSource::Local,
                    rule,
                    peer: None,
                    reason: reason.clone(),
                }));
            }
            for (policy, rules) in selecting() {
                outcome.dropped.extend((0..rules.len()).map(|rule| DroppedRule {
                    source: RuleSource::Policy(policy.metadata.name.clone()),
                    rule,
                    peer: None,
                    reason: reason.clone(),
                }));
            }
            if !self.baseline.api_discovered() {
                outcome.problems.push(Problem::NoApiAccess);
            }
            self.baseline.restricted_rules().to_vec()
        } else {
            match &agent.local_egress {
                LocalEgress::Invalid(_) => {
                    outcome.mode = Mode::BaselineOnly;
                    self.baseline.full_rules().to_vec()
                }
                LocalEgress::Rules(local) => {
                    outcome.mode = Mode::Scoped;
                    self.scoped_egress(local, selecting, &mut outcome)
                }
                LocalEgress::Absent if selecting().next().is_some() => {
                    outcome.mode = Mode::Scoped;
                    self.scoped_egress(&[], selecting, &mut outcome)
                }
                LocalEgress::Absent => match self.guardrails.verified_default() {
                    VerifiedDefault::AllowAll => {
                        outcome.mode = Mode::AllowAll;
                        vec![NetworkPolicyEgressRule::default()]
                    }
                    VerifiedDefault::BaselineOnly => {
                        outcome.mode = Mode::BaselineOnly;
                        self.baseline.full_rules().to_vec()
                    }
                },
            }
        };
        let ingress = if verification.verified {
            self.ingress_verified.clone()
        } else {
            self.ingress_unverified.clone()
        };
        let policy = render::network_policy(agent, &outcome, self.revision.as_deref(), ingress, egress);
        (policy, outcome)
    }

    /// The baseline, then the local rules inside the guardrail ceilings, then the rules of the selecting hub
    /// policies, each distinct rule once. Deduplicates on the domain rules (cheap comparisons) and renders each
    /// kept local rule once; hub rules were rendered when the planner was built. The output vector is sized once.
    fn scoped_egress<'r, I>(
        &'r self,
        local: &'r [EgressRule],
        selecting: impl Fn() -> I,
        outcome: &mut AgentOutcome,
    ) -> Vec<NetworkPolicyEgressRule>
    where
        I: Iterator<Item = &'r (&'a EgressPolicy, Vec<Option<NetworkPolicyEgressRule>>)>,
    {
        let (selected, hub_rules) = selecting().fold((0, 0), |(n, rules), (_, r)| (n + 1, rules + r.len()));
        let candidates = local.len() + hub_rules;
        let baseline = self.baseline.full_rules();
        let mut egress = Vec::with_capacity(baseline.len() + candidates);
        egress.extend_from_slice(baseline);
        // Each kept rule with its digest: most comparisons stop at the digest.
        let mut kept: Vec<(u64, Cow<'r, EgressRule>)> = Vec::with_capacity(candidates);
        for (i, rule) in local.iter().enumerate() {
            if let Some(rule) = self.guardrails.constrain(rule, i, &mut outcome.dropped) {
                let digest = digest(&rule);
                if !is_kept(&kept, digest, &rule) {
                    self.note_names(&rule, RuleSource::Local, i, outcome);
                    if let Some(k8s) = render::egress_rule(&rule, self.names) {
                        egress.push(k8s);
                        kept.push((digest, rule));
                    }
                }
            }
        }
        let local_kept = !kept.is_empty();
        outcome.rule_sources = Vec::with_capacity(usize::from(local_kept) + selected);
        if local_kept {
            outcome.rule_sources.push(RuleSource::Local);
        }
        for (policy, rendered) in selecting() {
            for (i, (rule, k8s)) in policy.spec.egress.iter().zip(rendered).enumerate() {
                let digest = digest(rule);
                if !is_kept(&kept, digest, rule) {
                    self.note_names(rule, RuleSource::Policy(policy.metadata.name.clone()), i, outcome);
                    if let Some(k8s) = k8s {
                        kept.push((digest, Cow::Borrowed(rule)));
                        egress.push(k8s.clone());
                    }
                }
            }
            outcome
                .rule_sources
                .push(RuleSource::Policy(policy.metadata.name.clone()));
        }
        outcome.rule_count = kept.len();
        outcome.names.sort();
        outcome.names.dedup();
        egress
    }

    /// Records the names of a rule that reaches the policy, and reports the name peers without addresses (or the
    /// whole rule, when no peer is left).
    fn note_names(&self, rule: &EgressRule, source: RuleSource, index: usize, outcome: &mut AgentOutcome) {
        let mut unresolved = Vec::new();
        for (j, peer) in rule.to.iter().enumerate() {
            let Some(name) = &peer.fqdn else { continue };
            outcome.names.push(NameDestination {
                name: name.clone(),
                ports: rule.ports.clone(),
            });
            if self.names.get(name).is_none_or(Vec::is_empty) {
                unresolved.push((j, name));
            }
        }
        if unresolved.is_empty() {
            return;
        }
        if unresolved.len() == rule.to.len() {
            outcome.dropped.push(DroppedRule {
                source,
                rule: index,
                peer: None,
                reason: DropReason::NamesUnresolved(unresolved.into_iter().map(|(_, n)| n.clone()).collect()),
            });
        } else {
            outcome
                .dropped
                .extend(unresolved.into_iter().map(|(j, name)| DroppedRule {
                    source: source.clone(),
                    rule: index,
                    peer: Some(j),
                    reason: DropReason::NameUnresolved(name.clone()),
                }));
        }
    }
}

/// Whether `rule` (of digest `digest`) is among the kept rules.
fn is_kept(kept: &[(u64, Cow<'_, EgressRule>)], digest: u64, rule: &EgressRule) -> bool {
    kept.iter().any(|(d, k)| *d == digest && k.as_ref() == rule)
}

/// A cheap digest of a rule's addresses and ports for deduplication: equal rules have equal digests, so the full
/// comparison only runs when the digests match. Selector peers all contribute the same constant; the full
/// comparison tells them apart.
fn digest(rule: &EgressRule) -> u64 {
    let peers = rule.to.iter().fold(rule.to.len() as u64, |acc, peer| {
        let bits = match peer.ip_block.as_ref().map(|b| b.cidr) {
            Some(IpNet::V4(net)) => (u64::from(net.addr().to_bits()) << 8) | u64::from(net.prefix_len()),
            Some(IpNet::V6(net)) => {
                let bits = net.addr().to_bits();
                (((bits >> 64) as u64 ^ bits as u64) << 8) | u64::from(net.prefix_len())
            }
            None => 1,
        };
        acc.rotate_left(13) ^ bits
    });
    rule.ports.iter().fold(peers, |acc, port| {
        let bits = (u64::from(port.port.unwrap_or(0)) << 32) | (u64::from(port.end_port.unwrap_or(0)) << 8);
        acc.rotate_left(7) ^ bits ^ port.protocol as u64
    })
}

/// Whether a hub policy selects an agent by namespace and labels.
pub fn selects(policy: &EgressPolicy, agent: &Agent) -> bool {
    let spec = &policy.spec;
    let namespace_ok = match (&spec.namespaces, &spec.namespace_selector) {
        (Some(names), _) => names.iter().any(|n| n == &agent.namespace),
        (None, Some(selector)) => selector.matches(&agent.namespace_labels),
        (None, None) => true,
    };
    namespace_ok && spec.agent_selector.as_ref().is_none_or(|s| s.matches(&agent.labels))
}

/// The destinations (CIDR or selector, with ports) a policy grants, one line each: the unit `plan` diffs in.
pub fn destinations(policy: &NetworkPolicy) -> BTreeSet<String> {
    render::destinations(policy)
}

/// The destination lines of a cluster's full baseline (API server and DNS), as every scoped policy carries them.
pub fn baseline_destinations(facts: &ClusterFacts, restricted_allow_dns: bool) -> BTreeSet<String> {
    let baseline = Baseline::new(facts, restricted_allow_dns);
    destinations(&NetworkPolicy {
        spec: Some(k8s_openapi::api::networking::v1::NetworkPolicySpec {
            egress: Some(baseline.full()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
