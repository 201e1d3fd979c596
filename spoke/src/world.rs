//! The spoke's view of its cluster: one reflector store per watched kind, and a trigger that fires on any change.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tollgate_common::planner::{LABEL_AGENT, LABEL_MANAGED_BY, MANAGED_BY};

use crate::agent_runtime::ObservedRuntime;
use crate::anp::AdminNetworkPolicy;
use crate::diff::ObservedPolicy;

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A candidate DNS Service and its endpoints.
#[derive(Debug)]
pub struct DnsCandidate {
    pub namespace: String,
    pub name: String,
    pub service: Store<Service>,
    pub endpoints: Store<Endpoints>,
    /// Its discovery.k8s.io/v1 EndpointSlices, where the server offers them.
    pub slices: Option<Store<EndpointSlice>>,
}

/// Every store the reconciler reads. Namespaced kinds have one store per watched namespace (one in all when
/// every namespace is watched).
#[derive(Debug)]
pub struct World {
    /// The AgentRuntimes, each parsed or, when malformed, its metadata and what is wrong.
    pub runtimes: Vec<Store<ObservedRuntime>>,
    pub deployments: Vec<Store<Deployment>>,
    pub statefulsets: Vec<Store<StatefulSet>>,
    /// The managed NetworkPolicies, in the compact form the diff reads.
    pub policies: Vec<Store<ObservedPolicy>>,
    /// The NetworkPolicies of the watched namespaces that are not the spoke's (not both Tollgate labels): the ones
    /// that may widen an agent. An object with both is an agent's own, or swept by the spoke.
    pub others: Vec<Store<NetworkPolicy>>,
    pub agent_cards: Vec<Store<DynamicObject>>,
    pub namespaces: Store<Namespace>,
    pub api_endpoints: Store<Endpoints>,
    /// EndpointSlices of `default/kubernetes`, where the server offers discovery.k8s.io/v1.
    pub api_slices: Option<Store<EndpointSlice>>,
    pub api_service: Store<Service>,
    pub dns: Vec<DnsCandidate>,
    /// The AdminNetworkPolicies the spoke manages (cluster-scoped), when watched.
    pub admin_policies: Option<Store<AdminNetworkPolicy>>,
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// DNS Services to look for, in order of preference.
    pub dns_candidates: Vec<(String, String)>,
    /// The deprecated AgentCard kind, when its CRD is installed.
    pub agent_card: Option<ApiResource>,
    /// Whether the server offers discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: bool,
    /// Whether to watch the AdminNetworkPolicies the spoke manages (the API is served and the spoke may list them).
    pub admin_policies: bool,
    /// `--max-card-age`: an AgentRuntime update that only moves `status.card.lastCardFetchTime` is stored without a
    /// reconcile pass while the card is fresh before and after (always, without a maximum age).
    pub max_card_age_secs: Option<u64>,
}

impl World {
    /// Starts every watch; each change notifies `trigger`.
    pub fn start(client: &Client, scope: &Scope, trigger: &Arc<Notify>, tasks: &mut JoinSet<()>) -> Self {
        let per_namespace = |f: &mut dyn FnMut(Option<&str>)| {
            if scope.namespaces.is_empty() {
                f(None);
            } else {
                for ns in &scope.namespaces {
                    f(Some(ns));
                }
            }
        };
        let mut runtimes = Vec::new();
        let mut deployments = Vec::new();
        let mut statefulsets = Vec::new();
        let mut policies = Vec::new();
        let mut others = Vec::new();
        let mut agent_cards = Vec::new();
        per_namespace(&mut |ns| {
            runtimes.push(watch_runtimes(api(client, ns), scope.max_card_age_secs, trigger, tasks));
            deployments.push(watch(api(client, ns), watcher::Config::default(), trigger, tasks));
            statefulsets.push(watch(api(client, ns), watcher::Config::default(), trigger, tasks));
            let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
            policies.push(watch_policies(api(client, ns), managed, trigger, tasks));
            // Everything but objects with both Tollgate labels (which the sweep keeps to the agents' own policies), in
            // two selectors since a label selector cannot say "or": without the agent label, or with it but another
            // manager. So the managed ones are neither held twice in memory nor checked against every agent on each
            // pass, and copying one label hides nothing.
            let without_agent = watcher::Config::default().labels(&format!("!{LABEL_AGENT}"));
            let foreign_agent =
                watcher::Config::default().labels(&format!("{LABEL_AGENT},{LABEL_MANAGED_BY}!={MANAGED_BY}"));
            others.push(watch(api(client, ns), without_agent, trigger, tasks));
            others.push(watch(api(client, ns), foreign_agent, trigger, tasks));
            if let Some(ar) = &scope.agent_card {
                let cards = match ns {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
                    None => Api::all_with(client.clone(), ar),
                };
                agent_cards.push(watch_dynamic(cards, ar.clone(), trigger, tasks));
            }
        });
        let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let slices_of = |ns: &str, service: &str, tasks: &mut JoinSet<()>| {
            scope.endpoint_slices.then(|| {
                let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
                watch(Api::namespaced(client.clone(), ns), config, trigger, tasks)
            })
        };
        let dns = scope
            .dns_candidates
            .iter()
            .map(|(ns, name)| DnsCandidate {
                namespace: ns.clone(),
                name: name.clone(),
                service: watch(Api::namespaced(client.clone(), ns), by_name(name), trigger, tasks),
                endpoints: watch(Api::namespaced(client.clone(), ns), by_name(name), trigger, tasks),
                slices: slices_of(ns, name, tasks),
            })
            .collect();
        let api_slices = slices_of("default", "kubernetes", tasks);
        let admin_policies = scope.admin_policies.then(|| {
            let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
            watch(Api::all(client.clone()), managed, trigger, tasks)
        });
        Self {
            runtimes,
            deployments,
            statefulsets,
            policies,
            others,
            admin_policies,
            agent_cards,
            namespaces: watch(Api::all(client.clone()), watcher::Config::default(), trigger, tasks),
            api_endpoints: watch(
                Api::namespaced(client.clone(), "default"),
                by_name("kubernetes"),
                trigger,
                tasks,
            ),
            api_slices,
            api_service: watch(
                Api::namespaced(client.clone(), "default"),
                by_name("kubernetes"),
                trigger,
                tasks,
            ),
            dns,
        }
    }

    /// Waits until every store has its first full list.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        async fn ready<K>(stores: &[Store<K>]) -> anyhow::Result<()>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + Hash + Clone,
        {
            for store in stores {
                store.wait_until_ready().await?;
            }
            Ok(())
        }
        ready(&self.runtimes).await?;
        ready(&self.deployments).await?;
        ready(&self.statefulsets).await?;
        ready(&self.policies).await?;
        ready(&self.others).await?;
        ready(self.admin_policies.as_slice()).await?;
        ready(&self.agent_cards).await?;
        ready(std::slice::from_ref(&self.namespaces)).await?;
        ready(std::slice::from_ref(&self.api_endpoints)).await?;
        ready(std::slice::from_ref(&self.api_service)).await?;
        ready(self.api_slices.as_slice()).await?;
        for candidate in &self.dns {
            ready(std::slice::from_ref(&candidate.service)).await?;
            ready(std::slice::from_ref(&candidate.endpoints)).await?;
            ready(candidate.slices.as_slice()).await?;
        }
        Ok(())
    }

    /// The AgentRuntime `namespace/name` as the watch shows it now.
    pub fn runtime(&self, namespace: &str, name: &str) -> Option<Arc<ObservedRuntime>> {
        let reference = ObjectRef::new(name).within(namespace);
        self.runtimes.iter().find_map(|store| store.get(&reference))
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A reflector for `api`: the store it fills, and a task that notifies `trigger` on every change.
fn watch<K>(api: Api<K>, config: watcher::Config, trigger: &Arc<Notify>, tasks: &mut JoinSet<()>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    spawn_reflector(kind, watcher(api, config).map_ok(lean), writer, trigger, tasks);
    reader
}

/// A reflector of AgentRuntimes; an update that only moves a card's fetch time, and changes no decision
/// ([`ObservedRuntime::refresh_changes_nothing`]), is stored but does not notify `trigger` (the agent operator
/// refreshes every card periodically: at 10,000 agents that would be a steady stream of whole-cluster passes that
/// change nothing).
fn watch_runtimes(
    api: Api<ObservedRuntime>,
    max_card_age_secs: Option<u64>,
    trigger: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<ObservedRuntime> {
    let (reader, writer) = reflector::store();
    let quiet = Arc::new(AtomicBool::new(false));
    let events = watcher(api, watcher::Config::default()).map_ok(lean).map_ok({
        let (reader, quiet) = (reader.clone(), quiet.clone());
        move |event| {
            // Decided against the stored object before the reflector replaces it; the events pass one at a time.
            if let watcher::Event::Apply(new) = &event
                && let Some(old) = reader.get(&ObjectRef::from_obj(new))
                && old.refresh_changes_nothing(new, max_card_age_secs, tollgate_process::unix_secs())
            {
                quiet.store(true, Ordering::Relaxed);
            }
            event
        }
    });
    spawn_reflector_quiet("AgentRuntime".to_string(), events, writer, trigger, tasks, Some(quiet));
    reader
}

/// A reflector of managed NetworkPolicies that stores each in its compact form.
fn watch_policies(
    api: Api<NetworkPolicy>,
    config: watcher::Config,
    trigger: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<ObservedPolicy> {
    fn compact(event: watcher::Event<NetworkPolicy>) -> watcher::Event<ObservedPolicy> {
        use watcher::Event;
        match event {
            Event::Apply(policy) => Event::Apply(policy.into()),
            Event::Delete(policy) => Event::Delete(policy.into()),
            Event::Init => Event::Init,
            Event::InitApply(policy) => Event::InitApply(policy.into()),
            Event::InitDone => Event::InitDone,
        }
    }
    let (reader, writer) = reflector::store();
    let kind = NetworkPolicy::kind(&()).into_owned();
    spawn_reflector(kind, watcher(api, config).map_ok(compact), writer, trigger, tasks);
    reader
}

fn watch_dynamic(
    api: Api<DynamicObject>,
    resource: ApiResource,
    trigger: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<DynamicObject> {
    let kind = resource.kind.clone();
    let writer = reflector::store::Writer::new(resource);
    let reader = writer.as_reader();
    let events = watcher(api, watcher::Config::default()).map_ok(lean);
    spawn_reflector(kind, events, writer, trigger, tasks);
    reader
}

/// Drops the managed fields and kubectl's last-applied copy, large and never read, before an object reaches its
/// store.
fn lean<K: Resource>(event: watcher::Event<K>) -> watcher::Event<K> {
    event.modify(|obj| {
        let meta = obj.meta_mut();
        meta.managed_fields = None;
        if let Some(annotations) = &mut meta.annotations {
            annotations.remove(LAST_APPLIED);
        }
    })
}

fn spawn_reflector<K, S>(
    kind: String,
    stream: S,
    writer: reflector::store::Writer<K>,
    trigger: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    spawn_reflector_quiet(kind, stream, writer, trigger, tasks, None);
}

/// [`spawn_reflector`]; an event for which the stream set `quiet` is stored without notifying `trigger`.
fn spawn_reflector_quiet<K, S>(
    kind: String,
    stream: S,
    writer: reflector::store::Writer<K>,
    trigger: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
    quiet: Option<Arc<AtomicBool>>,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let trigger = trigger.clone();
    tasks.spawn(async move {
        let events = stream.default_backoff().reflect(writer);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) if quiet.as_ref().is_some_and(|q| q.swap(false, Ordering::Relaxed)) => {
                    tracing::trace!(%kind, "Stored an update that changes nothing the passes read");
                }
                Ok(_) => trigger.notify_one(),
                Err(error) => tracing::warn!(%kind, %error, "Watch failed; retrying with backoff"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;

    #[test]
    fn lean_objects_lose_managed_fields_and_the_last_applied_copy_only() {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.to_string(), "{}".to_string()),
                    ("team".to_string(), "x".to_string()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let watcher::Event::Apply(lean_object) = lean(watcher::Event::Apply(object)) else {
            panic!("the event kind changed");
        };
        assert_eq!(lean_object.metadata.name.as_deref(), Some("a"));
        assert_eq!(lean_object.metadata.managed_fields, None);
        let annotations: Vec<&str> = lean_object
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(annotations, ["team"]);

        let bare = ConfigMap::default();
        let watcher::Event::InitApply(bare) = lean(watcher::Event::InitApply(bare)) else {
            panic!("the event kind changed");
        };
        assert_eq!(
            bare.metadata,
            ObjectMeta::default(),
            "nothing is added to an object without them"
        );
    }
}
