//! An independent judge of the written NetworkPolicies: np-guard's network-config-analyzer (`nca`, PyPI
//! `network-config-analyzer`), which computes offline the connectivity a set of NetworkPolicies allows between the
//! pods of given namespaces and IP ranges. The tests compare its answer with the intent, so the policies' meaning is
//! checked by code no one here wrote. `scripts/nca` provides it (a virtualenv cached outside the clone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

/// Where `nca` is; default: the cache of `scripts/nca`.
pub const NCA_ENV: &str = "TOLLGATE_NCA";
const VERSION: &str = "2.1.0";

/// The namespaces and pods the policies are judged against.
#[derive(Clone, Debug, Default)]
pub struct NcaWorld {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Value>,
}

impl NcaWorld {
    /// A namespace, labelled with `kubernetes.io/metadata.name` as the API server does.
    pub fn namespace(&mut self, name: &str) -> &mut Self {
        self.namespaces.insert(
            name.to_string(),
            BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())]),
        );
        self
    }

    /// One pod of workload `owner` (nca names endpoints `NAMESPACE/OWNER[ReplicaSet]`).
    pub fn pod(&mut self, namespace: &str, owner: &str, labels: &BTreeMap<String, String>, ip: &str) -> &mut Self {
        self.namespace(namespace);
        let index = self.pods.len();
        self.pods.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("{owner}-{index}"),
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": format!("uid-{index}")}],
            },
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/x:1"}]},
            "status": {"podIP": ip},
        }));
        self
    }
}

/// The `nca` program.
#[derive(Clone, Debug)]
pub struct Nca {
    program: PathBuf,
}

impl Nca {
    /// `TOLLGATE_NCA`, else the cache `scripts/nca` fills; an error saying how to get it otherwise.
    pub fn find() -> Result<Self> {
        let program = match std::env::var(NCA_ENV) {
            Ok(path) => PathBuf::from(path),
            Err(_) => {
                let cache = std::env::var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither XDG_CACHE_HOME nor HOME is set")?;
                cache.join(format!("tollgate/nca/{VERSION}/bin/nca"))
            }
        };
        if !program.exists() {
            bail!(
                "nca (np-guard's network-config-analyzer) is not at {}: run scripts/nca (scripts/test does), or set \
                 {NCA_ENV}",
                program.display()
            );
        }
        Ok(Self { program })
    }

    /// Per source endpoint (`NAMESPACE/OWNER[ReplicaSet]`), the destinations and connections `policies` allow it, one
    /// `DESTINATION : CONNECTIONS` line each, as nca words them.
    pub async fn connectivity(
        &self,
        policies: &[NetworkPolicy],
        world: &NcaWorld,
    ) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let output = self
            .run("--connectivity", policies, world, &["-o", "txt_no_fw_rules"])
            .await?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in output.lines() {
            let Some((source, rest)) = line.split_once(" => ") else {
                continue;
            };
            out.entry(source.trim().to_string())
                .or_default()
                .insert(rest.trim().to_string());
        }
        Ok(out)
    }

    /// `nca --sanity`: fails with nca's report when the policies have a rule that selects nothing, a redundant
    /// policy, and the like.
    pub async fn sanity(&self, policies: &[NetworkPolicy], world: &NcaWorld) -> Result<()> {
        let output = self.run("--sanity", policies, world, &[]).await?;
        if output.contains("failed sanity check") {
            bail!("nca --sanity failed:\n{output}");
        }
        Ok(())
    }

    async fn run(&self, query: &str, policies: &[NetworkPolicy], world: &NcaWorld, extra: &[&str]) -> Result<String> {
        let dir = tempfile::Builder::new().prefix("tollgate-nca-").tempdir()?;
        let write = |name: &str, value: Value| -> Result<String> {
            let path = dir.path().join(name);
            std::fs::write(&path, serde_yaml_ng::to_string(&value)?)?;
            Ok(path.display().to_string())
        };
        let mut policies_json: Vec<Value> = Vec::new();
        for policy in policies {
            let mut policy = serde_json::to_value(policy)?;
            // What the API server added is not part of the policy.
            if let Some(meta) = policy["metadata"].as_object_mut() {
                meta.retain(|k, _| k == "name" || k == "namespace");
            }
            policy["apiVersion"] = json!("networking.k8s.io/v1");
            policy["kind"] = json!("NetworkPolicy");
            policies_json.push(policy);
        }
        let policies_file = write(
            "policies.yaml",
            json!({"apiVersion": "v1", "kind": "List", "items": policies_json}),
        )?;
        let namespaces: Vec<Value> = world
            .namespaces
            .iter()
            .map(|(name, labels)| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))
            .collect();
        let ns_file = write(
            "namespaces.yaml",
            json!({"apiVersion": "v1", "kind": "NamespaceList", "items": namespaces}),
        )?;
        let pods_file = write(
            "pods.yaml",
            json!({"apiVersion": "v1", "kind": "PodList", "items": world.pods}),
        )?;
        let output = tokio::process::Command::new(&self.program)
            .args([query, &policies_file, "--ns_list", &ns_file, "--pod_list", &pods_file])
            .args(extra)
            .output()
            .await
            .with_context(|| format!("running {}", self.program.display()))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        if text.contains("Traceback") || text.contains("Error:") {
            bail!("nca {query} failed:\n{text}");
        }
        Ok(text)
    }
}

/// The egress `nca` computes for each agent of `namespace` from the NetworkPolicies the spoke wrote there (plus
/// `others`), by agent name; `nca --sanity` must pass on the spoke's set. Each agent is one pod labelled as its
/// policy selects; the DNS endpoint `dns_pod_ip` is a CoreDNS pod in kube-system; the operator namespace and a
/// verified peer pod exist so that every ingress rule selects something.
pub async fn judge_agents(
    client: &kube::Client,
    namespace: &str,
    dns_pod_ip: &str,
    others: &[NetworkPolicy],
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let managed = Api::<NetworkPolicy>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tollgate-spoke"))
        .await?
        .items;
    let mut world = NcaWorld::default();
    let mut agents = Vec::new();
    for (i, policy) in managed.iter().enumerate() {
        let agent = policy
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tollgate.dev/agent"))
            .cloned()
            .unwrap_or_default();
        let labels = policy
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        world.pod(namespace, &agent, &labels, &format!("10.244.1.{}", i + 10));
        agents.push(agent);
    }
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    world
        .pod(
            "kube-system",
            "coredns",
            &labels(&[("k8s-app", "kube-dns")]),
            dns_pod_ip,
        )
        .pod(
            "kagenti-system",
            "operator",
            &labels(&[("app", "operator")]),
            "10.244.2.5",
        )
        .pod(
            namespace,
            "verified-peer",
            &labels(&[("agent.kagenti.dev/signature-verified", "true")]),
            "10.244.1.250",
        );
    let nca = Nca::find()?;
    nca.sanity(&managed, &world).await?;
    let mut all = managed;
    all.extend(others.iter().cloned());
    let connectivity = nca.connectivity(&all, &world).await?;
    Ok(agents
        .into_iter()
        .map(|agent| {
            let lines = connectivity
                .get(&format!("{namespace}/{agent}[ReplicaSet]"))
                .cloned()
                .unwrap_or_default();
            (agent, lines)
        })
        .collect())
}
