//! The plan of a cluster kept between passes, so that a pass plans again only the agents whose inputs changed.
//!
//! The planner stays pure ([`Planner::plan_agent`]); this index beside it remembers each agent's inputs and plan,
//! and knows which agents share a workload (one policy per workload: they are planned together, the first by name
//! holding the policy). A change of the cluster-wide inputs (facts, intent, settings) calls for
//! [`IncrementalPlan::replan_all`]; otherwise [`IncrementalPlan::update`] compares each agent's inputs with the last
//! ones. Either way the result equals [`plan`] over every agent (the property test says so).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Agent, ClusterProblem, Plan, PlannedAgent, Planner, Problem};

/// An agent: (namespace, name).
pub type AgentKey = (String, String);

/// A workload that names a policy: (namespace, target name).
type Workload = (String, String);

/// What a pass planned, per agent, and what it needs to plan again only what changed.
#[derive(Clone, Debug, Default)]
pub struct IncrementalPlan {
    inputs: BTreeMap<AgentKey, Agent>,
    planned: BTreeMap<AgentKey, PlannedAgent>,
    /// Agent names by the workload their policy is named after.
    workloads: HashMap<Workload, BTreeSet<String>>,
    problems: Vec<ClusterProblem>,
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
        let before = std::mem::take(&mut self.planned);
        self.inputs.clear();
        self.workloads.clear();
        for agent in agents {
            self.workloads
                .entry(workload(&agent))
                .or_default()
                .insert(agent.name.clone());
            self.inputs.insert(key(&agent), agent);
        }
        self.problems = planner.baseline.problems();
        let workloads: Vec<Workload> = self.workloads.keys().cloned().collect();
        for workload in workloads {
            self.plan_workload(planner, &workload);
        }
        let mut changes = Changes::default();
        for (key, old) in &before {
            match self.planned.get(key) {
                None => {
                    changes.removed.insert(key.clone());
                }
                Some(new) if new != old => {
                    changes.changed.insert(key.clone());
                }
                Some(_) => {}
            }
        }
        changes
            .changed
            .extend(self.planned.keys().filter(|k| !before.contains_key(*k)).cloned());
        changes
    }

    /// Brings the plan up to date with `agents` (every agent of the cluster now), under the same cluster-wide
    /// inputs as the last pass: plans again the agents whose inputs differ from the last ones, new agents, and the
    /// agents sharing a workload with any of them or with an agent gone.
    pub fn update(&mut self, planner: &Planner<'_>, agents: Vec<Agent>) -> Changes {
        let mut present: BTreeSet<AgentKey> = BTreeSet::new();
        let mut dirty: BTreeSet<Workload> = BTreeSet::new();
        for agent in agents {
            let key = key(&agent);
            present.insert(key.clone());
            match self.inputs.get(&key) {
                Some(old) if *old == agent => continue,
                Some(old) => {
                    let before = workload(old);
                    if before != workload(&agent) {
                        self.leave(&before, &key.1);
                        dirty.insert(before);
                    }
                }
                None => {}
            }
            let now = workload(&agent);
            self.workloads.entry(now.clone()).or_default().insert(key.1.clone());
            dirty.insert(now);
            self.inputs.insert(key, agent);
        }
        let gone: Vec<AgentKey> = self.inputs.keys().filter(|k| !present.contains(*k)).cloned().collect();
        let mut changes = Changes::default();
        for key in gone {
            if let Some(agent) = self.inputs.remove(&key) {
                let before = workload(&agent);
                self.leave(&before, &key.1);
                dirty.insert(before);
            }
            self.planned.remove(&key);
            changes.removed.insert(key);
        }
        for workload in dirty {
            changes.changed.extend(self.plan_workload(planner, &workload));
        }
        changes
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
                    PlannedAgent {
                        outcome,
                        policy: Some(policy),
                    }
                }
                Some(owner) => {
                    let policy = outcome.policy_name.take().unwrap_or_default();
                    outcome.problems.push(Problem::PolicyTaken {
                        policy,
                        owner: owner.to_string(),
                    });
                    PlannedAgent { outcome, policy: None }
                }
            };
            if self.planned.get(&key) != Some(&planned) {
                self.planned.insert(key.clone(), planned);
                changed.push(key);
            }
        }
        changed
    }

    /// The plan of one agent.
    pub fn get(&self, key: &AgentKey) -> Option<&PlannedAgent> {
        self.planned.get(key)
    }

    /// Every agent's plan, by namespace then name.
    pub fn agents(&self) -> impl Iterator<Item = &PlannedAgent> {
        self.planned.values()
    }

    /// The planner's input for one agent, as last given.
    pub fn input(&self, key: &AgentKey) -> Option<&Agent> {
        self.inputs.get(key)
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
            agents: self.planned.values().cloned().collect(),
            problems: self.problems.clone(),
        }
    }
}
