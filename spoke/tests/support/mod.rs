//! Test fixtures: a real cluster prepared like a vanilla one (API endpoints, kube-dns, the AgentRuntime CRD) and
//! the real `tollgate-spoke` binary running against it.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use tollgate_e2e::{ChildProcess, Cluster, ControlPlane, free_port, wait_until};
use tollgate_spoke::agent_runtime::AgentRuntime;

pub const WAIT: Duration = Duration::from_secs(30);
pub const NS: &str = tollgate_e2e::fleet::TEAM_NS;

/// One cluster whose `default/kubernetes` Endpoints the test owns, with kube-dns, the CRD and namespace `team-a`.
pub async fn cluster() -> Result<ControlPlane> {
    let control_plane = ControlPlane::builder()
        .clusters(1)
        .endpoint_reconciler_none(true)
        .start()
        .await?;
    let cluster = &control_plane.clusters()[0];
    cluster.install_crd(&AgentRuntime::crd()).await?;
    cluster.set_api_endpoints(&[ip("192.0.2.10")], 6443).await?;
    cluster.create_namespace(NS).await?;
    cluster
        .create_dns_service("kube-system", "kube-dns", "10.0.0.10", "10.244.0.5", 53)
        .await?;
    Ok(control_plane)
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("a valid IP address")
}

/// The real spoke binary, killed on drop.
pub struct Spoke {
    pub process: ChildProcess,
    pub metrics_port: u16,
}

impl Spoke {
    /// Starts `tollgate-spoke run --standalone` against the cluster and waits until `/readyz` answers 200 (the
    /// first full pass is done).
    pub async fn start(cluster: &Cluster, log_dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--standalone"];
        args.extend_from_slice(extra);
        Self::start_with(cluster, log_dir, &args).await
    }

    /// Starts `tollgate-spoke run` with these flags (no `--standalone` added) and waits for `/readyz`.
    pub async fn start_with(cluster: &Cluster, log_dir: &Path, extra: &[&str]) -> Result<Self> {
        let metrics_port = free_port()?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--cluster-id".into(),
            cluster.name().into(),
            "--kubeconfig".into(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--log-level".into(),
            "info,tollgate_spoke=debug".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = log_dir.join(format!("spoke-{metrics_port}.log"));
        let process = ChildProcess::spawn(
            "tollgate-spoke",
            Path::new(env!("CARGO_BIN_EXE_tollgate-spoke")),
            &args,
            &log,
        )?;
        let spoke = Self { process, metrics_port };
        wait_until(format!("spoke /readyz (log: {})", log.display()), WAIT, || {
            spoke.ready()
        })
        .await?;
        Ok(spoke)
    }

    async fn ready(&self) -> bool {
        matches!(self.get("/readyz").await, Ok((200, _)))
    }

    /// A plain HTTP GET on the metrics listener: (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        tollgate_e2e::http_get(self.metrics_port, path).await
    }

    /// The spoke's log, for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

/// Applies an AgentRuntime labelled `tier: llm` (spec and optional status) for a Deployment of the same name.
pub async fn agent(client: &Client, name: &str, egress: Option<Value>, card: Option<Value>) -> Result<()> {
    tollgate_e2e::fleet::apply_agent(client, name, &[("tier", "llm")], egress, card).await
}

#[allow(unused_imports)] // Not every test binary writes cards.
pub use tollgate_e2e::fleet::{mtls_card, set_card};

/// A Deployment whose pod template carries `labels`.
pub async fn deployment(cluster: &Cluster, name: &str, labels: Value) -> Result<()> {
    let yaml = serde_json::to_string(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]},
            },
        },
    }))?;
    cluster.apply_yaml(&yaml).await?;
    Ok(())
}

pub fn policies(client: &Client) -> Api<NetworkPolicy> {
    Api::namespaced(client.clone(), NS)
}

/// Waits until the policy exists and its JSON satisfies `check`; returns it.
pub async fn wait_policy(client: &Client, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    tollgate_e2e::fleet::wait_for_policy(&policies(client), name, what, check).await
}

pub fn mode(policy: &Value) -> &str {
    policy["metadata"]["labels"]["tollgate.dev/mode"].as_str().unwrap_or("")
}

pub fn egress(policy: &Value) -> Value {
    policy["spec"]["egress"].clone()
}

/// The restricted rule for the given API-server addresses on 6443.
pub fn api_rule(addresses: &[&str]) -> Value {
    json!({
        "to": addresses.iter().map(|a| json!({"ipBlock": {"cidr": format!("{a}/32")}})).collect::<Vec<_>>(),
        "ports": [{"protocol": "TCP", "port": 6443}],
    })
}

/// The rule to the `kubernetes` Service ClusterIP (10.0.0.1:443 on the harness clusters).
pub fn api_service_rule() -> Value {
    json!({"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 443}]})
}

pub fn kube_dns_rule() -> Value {
    json!({
        "to": [
            {"ipBlock": {"cidr": "10.0.0.10/32"}},
            {"ipBlock": {"cidr": "10.244.0.5/32"}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
        ],
        "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}],
    })
}

/// Reasons of the events.k8s.io/v1 Events about an AgentRuntime.
pub async fn event_reasons(client: &Client, agent: &str) -> Result<Vec<String>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let events = api.list(&Default::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(agent))
        .filter_map(|e| e.reason)
        .collect())
}

/// [`cluster`] in RBAC mode (`--authorization-mode=RBAC`; the harness's admin stays allowed everything), for tests
/// that run the spoke with a ServiceAccount's identity.
pub async fn rbac_cluster() -> Result<ControlPlane> {
    let control_plane = ControlPlane::builder()
        .clusters(1)
        .endpoint_reconciler_none(true)
        .rbac(true)
        .start()
        .await?;
    let cluster = &control_plane.clusters()[0];
    cluster.install_crd(&AgentRuntime::crd()).await?;
    cluster.set_api_endpoints(&[ip("192.0.2.10")], 6443).await?;
    cluster.create_namespace(NS).await?;
    cluster.apply_yaml(KUBE_DNS_YAML).await?;
    Ok(control_plane)
}

/// The `kube-system/kube-dns` Service and Endpoints of a vanilla cluster (the same objects [`cluster`] writes).
pub const KUBE_DNS_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.0.0.10
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system}
subsets:
  - addresses: [{ip: 10.244.0.5}]
    ports:
      - {name: dns, port: 53, protocol: UDP}
      - {name: dns-tcp, port: 53, protocol: TCP}
"#;

impl Spoke {
    /// Starts the real spoke with exactly `args` (which must include `--metrics-addr=127.0.0.1:<metrics_port>`),
    /// without waiting for it to become ready.
    pub fn spawn(args: &[String], metrics_port: u16, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("spoke-{metrics_port}.log"));
        let process = ChildProcess::spawn(
            "tollgate-spoke",
            Path::new(env!("CARGO_BIN_EXE_tollgate-spoke")),
            args,
            &log,
        )?;
        Ok(Self { process, metrics_port })
    }

    /// Waits until `/readyz` answers 200; the error names the log and carries its tail.
    pub async fn wait_ready(&self) -> Result<()> {
        wait_until("spoke /readyz", WAIT, || self.ready())
            .await
            .map_err(|e| e.context(format!("spoke log:\n{}", self.log())))
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        self.ready().await
    }
}

/// The `tollgate-hub` binary of the same build.
pub fn hub_binary() -> std::path::PathBuf {
    tollgate_e2e::binary("tollgate-hub").expect("the tollgate-hub binary")
}

/// The egress np-guard's `nca` computes for each agent of [`NS`] from the policies the spoke wrote (plus `others`),
/// by agent name, the DNS endpoint being the cluster's kube-dns pod ([`tollgate_e2e::nca::judge_agents`]).
pub async fn judged_egress(
    client: &Client,
    others: &[NetworkPolicy],
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
    tollgate_e2e::nca::judge_agents(client, NS, "10.244.0.5", others).await
}
