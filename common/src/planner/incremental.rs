//! The plan of a cluster kept between passes, so that a pass plans again only the agents whose inputs changed.
//!
//! The planner stays pure ([`Planner::plan_agent`]); this index beside it remembers each agent's inputs and plan,
//! and knows which agents share a workload (one policy per workload: they are planned together, the first by name
//! holding the policy). A change of the cluster-wide inputs (facts, intent, settings) calls for
//! [`IncrementalPlan::replan_all`]; otherwise [`IncrementalPlan::update`] compares each agent's inputs with the last
//! ones. Either way the result equals [`plan`] over every agent (the property test says so).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{Agent, AgentOutcome, ClusterProblem, Plan, PlannedAgent, Planner, Problem};

/// An agent: (namespace, name).
pub type AgentKey = (String, String);

/// A workload that names a policy: (namespace, target name).
type Workload = (String, String);

/// What a pass planned, per agent, and what it needs to plan again only what changed.
#[derive(Clone, Debug, Default)]
pub struct IncrementalPlan {
    // Boxed: a B-tree node has room for eleven values inline and is often half full.
    inputs: BTreeMap<AgentKey, Box<Agent>>,
    planned: BTreeMap<AgentKey, Box<KeptAgent>>,
    /// Agent names by the workload their policy is named after.
    workloads: HashMap<Workload, BTreeSet<String>>,
    problems: Vec<ClusterProblem>,
    /// Workloads whose agents' inputs changed since the last plan.
    dirty: BTreeSet<Workload>,
    /// Agents removed since the last plan.
    removed: BTreeSet<AgentKey>,
}

/// A planned NetworkPolicy as the index keeps it: its JSON text, with its namespace and name. A whole
/// `NetworkPolicy` costs ~4.5 KiB, mostly in label-selector maps; the text ~1.3 KiB. A pass reads the policies of
/// the few agents it looks at ([`KeptPolicy::policy`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptPolicy {
    namespace: String,
    name: String,
    json: Box<str>,
}

impl KeptPolicy {
    pub fn new(policy: &NetworkPolicy) -> Self {
        Self {
            namespace: policy.metadata.namespace.clone().unwrap_or_default(),
            name: policy.metadata.name.clone().unwrap_or_default(),
            json: serde_json::to_string(policy)
                .expect("a NetworkPolicy serializes to JSON")
                .into_boxed_str(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy, read back from its text.
    pub fn policy(&self) -> NetworkPolicy {
        serde_json::from_str(&self.json).expect("the text was written from a NetworkPolicy")
    }
}

/// One agent's plan as the index keeps it ([`PlannedAgent`] with a [`KeptPolicy`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptAgent {
    pub outcome: AgentOutcome,
    pub policy: Option<KeptPolicy>,
}

impl KeptAgent {
    /// The plan with its whole policy.
    pub fn planned(&self) -> PlannedAgent {
        PlannedAgent {
            outcome: self.outcome.clone(),
            policy: self.policy.as_ref().map(KeptPolicy::policy),
        }
    }
}

/// The agents whose plan an update changed or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Planned anew with a different result (or for the first time).
    pub changed: BTreeSet<AgentKey>,
    /// Gone since the last pass.
    pub removed: BTreeSet<AgentKey>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

fn key(agent: &Agent) -> AgentKey {
    (agent.namespace.clone(), agent.name.clone())
}

fn workload(agent: &Agent) -> Workload {
    (agent.namespace.clone(), agent.target_name.clone())
}

impl IncrementalPlan {
    /// Plans every agent anew: the cluster-wide inputs changed. Every agent whose result differs, and every agent
    /// gone, is in the changes.
    pub fn replan_all(&mut self, planner: &Planner<'_>, agents: Vec<Agent>) -> Changes {
        let present: BTreeSet<AgentKey> = agents.iter().map(key).collect();
        let gone: Vec<AgentKey> = self.inputs.keys().filter(|k| !present.contains(*k)).cloned().collect();
        self.stage(agents, gone);
        self.plan_all(planner)
    }

    /// Brings the plan up to date with `agents` (every agent of the cluster now), under the same cluster-wide
    /// inputs as the last pass: plans again the agents whose inputs differ from the last ones, new agents, and the
    /// agents sharing a workload with any of them or with an agent gone.
    pub fn update(&mut self, planner: &Planner<'_>, agents: Vec<Agent>) -> Changes {
        let present: BTreeSet<AgentKey> = agents.iter().map(key).collect();
        let gone: Vec<AgentKey> = self.inputs.keys().filter(|k| !present.contains(*k)).cloned().collect();
        self.stage(agents, gone);
        self.plan_staged(planner)
    }

    /// Takes new inputs for some agents (`upserts`; one equal to the last is ignored) and removes others, without
    /// planning yet: [`Self::plan_staged`] plans what they touch, [`Self::plan_all`] everything. Returns the agents
    /// whose input changed (their plan may not).
    pub fn stage(&mut self, upserts: Vec<Agent>, removals: impl IntoIterator<Item = AgentKey>) -> Vec<AgentKey> {
        let mut staged = Vec::new();
        for agent in upserts {
            let key = key(&agent);
            match self.inputs.get(&key) {
                Some(old) if **old == agent => continue,
                Some(old) => {
                    let before = workload(old);
                    if before != workload(&agent) {
                        self.leave(&before, &key.1);
                        self.dirty.insert(before);
                    }
                }
                None => {}
            }
            let now = workload(&agent);
            self.workloads.entry(now.clone()).or_default().insert(key.1.clone());
            self.dirty.insert(now);
            staged.push(key.clone());
            self.inputs.insert(key, Box::new(agent));
        }
        for key in removals {
            if let Some(agent) = self.inputs.remove(&key) {
                let before = workload(&agent);
                self.leave(&before, &key.1);
                self.dirty.insert(before);
            }
            if self.planned.contains_key(&key) {
                self.removed.insert(key);
            }
        }
        staged
    }

    /// The agents whose policy is named after `workload` (namespace, target name).
    pub fn workload_agents(&self, namespace: &str, target: &str) -> Vec<AgentKey> {
        self.workloads
            .get(&(namespace.to_string(), target.to_string()))
            .map(|names| names.iter().map(|n| (namespace.to_string(), n.clone())).collect())
            .unwrap_or_default()
    }

    /// Plans the agents the staged inputs touch (under the same cluster-wide inputs as the last plan).
    pub fn plan_staged(&mut self, planner: &Planner<'_>) -> Changes {
        let mut changes = Changes::default();
        for key in std::mem::take(&mut self.removed) {
            if self.planned.remove(&key).is_some() {
                changes.removed.insert(key);
            }
        }
        for workload in std::mem::take(&mut self.dirty) {
            changes.changed.extend(self.plan_workload(planner, &workload));
        }
        changes
    }

    /// Plans every agent (the cluster-wide inputs changed); staged inputs are taken.
    pub fn plan_all(&mut self, planner: &Planner<'_>) -> Changes {
        self.dirty.clear();
        let mut changes = Changes::default();
        for key in std::mem::take(&mut self.removed) {
            if self.planned.remove(&key).is_some() {
                changes.removed.insert(key);
            }
        }
        self.problems = planner.baseline.problems();
        let workloads: Vec<Workload> = self.workloads.keys().cloned().collect();
        for workload in workloads {
            changes.changed.extend(self.plan_workload(planner, &workload));
        }
        changes
    }

    /// Every agent's inputs, staged ones included.
    pub fn inputs(&self) -> impl Iterator<Item = &Agent> {
        self.inputs.values().map(|agent| &**agent)
    }

    /// Removes agent `name` from `workload`'s members.
    fn leave(&mut self, workload: &Workload, name: &str) {
        if let Some(members) = self.workloads.get_mut(workload) {
            members.remove(name);
            if members.is_empty() {
                self.workloads.remove(workload);
            }
        }
    }

    /// Plans the agents of one workload: the first by name holds the policy, the others get none and say who holds
    /// it (as [`super::plan`] does). Returns the agents whose result changed.
    fn plan_workload(&mut self, planner: &Planner<'_>, workload: &Workload) -> Vec<AgentKey> {
        let Some(members) = self.workloads.get(workload) else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        let mut owner: Option<&str> = None;
        for name in members {
            let key = (workload.0.clone(), name.clone());
            let Some(agent) = self.inputs.get(&key) else { continue };
            let (policy, mut outcome) = planner.plan_agent(agent);
            let planned = match owner {
                None => {
                    owner = Some(name);
                    KeptAgent {
                        outcome,
                        policy: Some(KeptPolicy::new(&policy)),
                    }
                }
                Some(owner) => {
                    let policy = outcome.policy_name.take().unwrap_or_default();
                    outcome.problems.push(Problem::PolicyTaken {
                        policy,
                        owner: owner.to_string(),
                    });
                    KeptAgent { outcome, policy: None }
                }
            };
            if self.planned.get(&key).is_none_or(|old| **old != planned) {
                self.planned.insert(key.clone(), Box::new(planned));
                changed.push(key);
            }
        }
        changed
    }

    /// The plan of one agent.
    pub fn get(&self, key: &AgentKey) -> Option<&KeptAgent> {
        self.planned.get(key).map(|planned| &**planned)
    }

    /// Every agent's plan, by namespace then name.
    pub fn agents(&self) -> impl Iterator<Item = &KeptAgent> {
        self.planned.values().map(|planned| &**planned)
    }

    /// The planner's input for one agent, as last given.
    pub fn input(&self, key: &AgentKey) -> Option<&Agent> {
        self.inputs.get(key).map(|agent| &**agent)
    }

    /// The cluster-wide problems of the last full plan.
    pub fn problems(&self) -> &[ClusterProblem] {
        &self.problems
    }

    pub fn len(&self) -> usize {
        self.planned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.planned.is_empty()
    }

    /// The whole plan, as [`super::plan`] returns it.
    pub fn plan(&self) -> Plan {
        Plan {
            agents: self.planned.values().map(|planned| planned.planned()).collect(),
            problems: self.problems.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::intent::Intent;
    use crate::planner::{ClusterFacts, LocalEgress, PlannerConfig};
    use crate::verification::{Reason, Verification};

    fn agent(name: &str, tier: &str) -> Agent {
        Agent {
            namespace: "ns".into(),
            name: name.into(),
            uid: String::new(),
            target_name: name.into(),
            labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
            namespace_labels: Default::default(),
            pod_labels: None,
            local_egress: LocalEgress::Absent,
            verification: Verification::verified(Reason::SignatureVerified, "test"),
        }
    }

    /// Staging says which inputs changed, whether or not their plan does; an equal input is no change.
    #[test]
    fn staging_reports_the_inputs_that_changed() {
        let (config, facts, intent) = (PlannerConfig::default(), ClusterFacts::default(), Intent::default());
        let planner = Planner::new(&config, &facts, &intent);
        let mut plan = IncrementalPlan::default();
        assert_eq!(plan.stage(vec![agent("a", "x"), agent("b", "x")], []).len(), 2);
        plan.plan_all(&planner);
        assert!(plan.stage(vec![agent("a", "x")], []).is_empty(), "the same input");
        assert_eq!(
            plan.stage(vec![agent("a", "y")], []),
            [("ns".to_string(), "a".to_string())]
        );
        let changes = plan.plan_staged(&planner);
        assert!(
            changes.is_empty(),
            "labels no policy selects: the plan stays (allow-all)"
        );
        assert_eq!(plan.workload_agents("ns", "b"), [("ns".to_string(), "b".to_string())]);
        assert!(plan.workload_agents("ns", "c").is_empty());
    }
}
