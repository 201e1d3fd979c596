//! The managed NetworkPolicies as the last pass saw them, brought up to date from the reflector stores by object
//! identity: the stores replace an object's `Arc` on every event, so a pass costs one address lookup per policy,
//! and string work (keys, labels) only for the policies that changed, appeared or went.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;
use tollgate_common::planner::LABEL_AGENT;

use crate::diff::ObservedPolicy;

/// (namespace, name).
pub type Key = (String, String);

/// One policy that changed since the last update: the object before (absent: it appeared) and now (absent: it went).
#[derive(Debug)]
pub struct Change {
    pub key: Key,
    pub before: Option<Arc<ObservedPolicy>>,
    pub now: Option<Arc<ObservedPolicy>>,
}

/// Every managed NetworkPolicy, by key, by address and by the agent its label names.
#[derive(Debug, Default)]
pub struct ManagedPolicies {
    by_key: HashMap<Key, Arc<ObservedPolicy>>,
    /// Each object held, by its address. Holding the `Arc` keeps the address from being reused.
    by_address: HashMap<usize, Arc<ObservedPolicy>>,
    /// Policy names by the agent their `tollgate.dev/agent` label names: (namespace, agent) → names.
    by_agent: HashMap<Key, BTreeSet<String>>,
}

/// An object's address, its identity in a reflector store (every event replaces the `Arc`).
pub fn address<T>(object: &Arc<T>) -> usize {
    Arc::as_ptr(object) as usize
}

/// The addresses held in `held` that are not `present` any more.
pub fn went<V>(held: &HashMap<usize, V>, present: &HashSet<usize>) -> Vec<usize> {
    held.keys().filter(|at| !present.contains(at)).copied().collect()
}

fn key_of(policy: &ObservedPolicy) -> Key {
    (policy.namespace().unwrap_or_default(), policy.name_any())
}

fn agent_of(key: &Key, policy: &ObservedPolicy) -> Option<Key> {
    policy
        .labels()
        .get(LABEL_AGENT)
        .map(|agent| (key.0.clone(), agent.clone()))
}

impl ManagedPolicies {
    /// Takes `now` (every managed policy in the stores) and returns what changed since the last update.
    pub fn update(&mut self, now: Vec<Arc<ObservedPolicy>>) -> Vec<Change> {
        let present: HashSet<usize> = now.iter().map(address).collect();
        let went = went(&self.by_address, &present);
        let mut before: HashMap<Key, Arc<ObservedPolicy>> = HashMap::with_capacity(went.len());
        for address in went {
            let Some(old) = self.by_address.remove(&address) else {
                continue;
            };
            let key = key_of(&old);
            self.by_key.remove(&key);
            self.forget_agent(&key, &old);
            before.insert(key, old);
        }
        let mut changes = Vec::new();
        for policy in now {
            if self.by_address.contains_key(&address(&policy)) {
                continue;
            }
            let key = key_of(&policy);
            if let Some(agent) = agent_of(&key, &policy) {
                self.by_agent.entry(agent).or_default().insert(key.1.clone());
            }
            self.by_address.insert(address(&policy), policy.clone());
            self.by_key.insert(key.clone(), policy.clone());
            changes.push(Change {
                before: before.remove(&key),
                key,
                now: Some(policy),
            });
        }
        changes.extend(before.into_iter().map(|(key, old)| Change {
            key,
            before: Some(old),
            now: None,
        }));
        changes
    }

    fn forget_agent(&mut self, key: &Key, policy: &ObservedPolicy) {
        let Some(agent) = agent_of(key, policy) else { return };
        if let Some(names) = self.by_agent.get_mut(&agent) {
            names.remove(&key.1);
            if names.is_empty() {
                self.by_agent.remove(&agent);
            }
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Arc<ObservedPolicy>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Arc<ObservedPolicy>)> {
        self.by_key.iter()
    }

    /// The keys of the policies whose label names `agent` (namespace, agent name).
    pub fn of_agent(&self, agent: &Key) -> impl Iterator<Item = Key> {
        self.by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .map(|name| (agent.0.clone(), name.clone()))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn policy(name: &str, agent: &str, rv: &str) -> Arc<ObservedPolicy> {
        Arc::new(ObservedPolicy::from(NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                labels: Some(BTreeMap::from([(LABEL_AGENT.to_string(), agent.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn key(name: &str) -> Key {
        ("ns".to_string(), name.to_string())
    }

    fn summary(changes: &[Change]) -> Vec<(String, Option<String>, Option<String>)> {
        let rv = |p: &Option<Arc<ObservedPolicy>>| p.as_ref().and_then(|p| p.resource_version());
        let mut out: Vec<_> = changes
            .iter()
            .map(|c| (c.key.1.clone(), rv(&c.before), rv(&c.now)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn only_objects_that_appeared_changed_or_went_are_reported() {
        let mut managed = ManagedPolicies::default();
        let (a, b) = (policy("a-policy", "a", "1"), policy("b-policy", "b", "1"));
        let first = managed.update(vec![a.clone(), b.clone()]);
        assert_eq!(
            summary(&first),
            [
                ("a-policy".into(), None, Some("1".into())),
                ("b-policy".into(), None, Some("1".into()))
            ]
        );
        assert!(
            managed.update(vec![a.clone(), b.clone()]).is_empty(),
            "the same objects: nothing moved"
        );

        // b is replaced (a watch event), a goes, c appears.
        let (b2, c) = (policy("b-policy", "b", "2"), policy("c-policy", "c", "1"));
        let changes = managed.update(vec![b2.clone(), c.clone()]);
        assert_eq!(
            summary(&changes),
            [
                ("a-policy".into(), Some("1".into()), None),
                ("b-policy".into(), Some("1".into()), Some("2".into())),
                ("c-policy".into(), None, Some("1".into())),
            ]
        );
        assert!(managed.get(&key("a-policy")).is_none());
        assert!(Arc::ptr_eq(managed.get(&key("b-policy")).unwrap(), &b2));
        assert_eq!(managed.len(), 2);
    }

    #[test]
    fn policies_are_found_by_the_agent_their_label_names_and_follow_a_relabel() {
        let mut managed = ManagedPolicies::default();
        managed.update(vec![policy("shared-policy", "a", "1"), policy("old-policy", "a", "1")]);
        let mut of_a: Vec<Key> = managed.of_agent(&key("a")).collect();
        of_a.sort();
        assert_eq!(of_a, [key("old-policy"), key("shared-policy")]);

        // Relabelled to b, and old-policy deleted.
        managed.update(vec![policy("shared-policy", "b", "2")]);
        assert_eq!(managed.of_agent(&key("a")).count(), 0);
        assert_eq!(managed.of_agent(&key("b")).collect::<Vec<_>>(), [key("shared-policy")]);
    }
}
