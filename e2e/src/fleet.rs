//! A whole Tollgate fleet on one machine, the way a platform team runs it: N clusters of one
//! [`ControlPlane`], certificates from `tollgate-hub certs`, the real `tollgate-hub serve` on its embedded
//! store with mTLS, one real `tollgate-spoke run` per cluster with its own certificate, kubeconfig and
//! labels, and the CLI run as a user runs it. Every process is killed when the [`Fleet`] is dropped.
//!
//! Each cluster is prepared like a vanilla one: the AgentRuntime CRD from `deploy/crds`, test-owned
//! `default/kubernetes` Endpoints (one address per cluster on 6443), `kube-system/kube-dns`, and the namespaces
//! [`TEAM_NS`] and [`SPOKE_NS`]. Before the spokes start, every cluster gets the three [`STANDARD_AGENTS`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::cli::Cli;
use crate::hub::ServeArgs;
use crate::spoke::{LOG_LEVEL, Spoke, VanillaCluster};
use crate::{ChildProcess, Cluster, ControlPlane, Postgres, free_port, http_get, wait_for};

/// The namespace of the agents.
pub const TEAM_NS: &str = "team-a";
/// The spoke's own namespace (its persisted intent lives there).
pub const SPOKE_NS: &str = "tollgate-system";
/// How long the fleet helpers wait for a state to be reached.
pub const WAIT: Duration = Duration::from_secs(30);
/// The port of every cluster's API-server endpoints.
pub const API_PORT: u16 = 6443;
/// The `kubernetes` Service ClusterIP of the harness clusters (first address of 10.0.0.0/24).
pub const API_SERVICE_IP: &str = "10.0.0.1";
/// kube-dns: Service ClusterIP and its one endpoint address (port 53).
pub const DNS_SERVICE_IP: &str = "10.0.0.10";
pub const DNS_POD_IP: &str = "10.244.0.5";

/// An agent of the standard set.
#[derive(Clone, Copy, Debug)]
pub struct StandardAgent {
    pub name: &'static str,
    pub tier: &'static str,
    /// A verified (mTLS) status card.
    pub verified: bool,
    /// `spec.egress` of the AgentRuntime.
    pub local_egress: Option<&'static str>,
}

/// `chat`: verified, no rules (allow-all); `search`: verified with one local rule (scoped); `untrusted`: no card
/// (restricted). `chat` and `untrusted` carry `tier: llm`, `search` carries `tier: tools`.
pub const STANDARD_AGENTS: [StandardAgent; 3] = [
    StandardAgent {
        name: "chat",
        tier: "llm",
        verified: true,
        local_egress: None,
    },
    StandardAgent {
        name: "search",
        tier: "tools",
        verified: true,
        local_egress: Some(
            r#"{"rules": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"port": 443}]}]}"#,
        ),
    },
    StandardAgent {
        name: "untrusted",
        tier: "llm",
        verified: false,
        local_egress: None,
    },
];

/// One cluster of the fleet, as the hub knows it.
#[derive(Clone, Debug)]
pub struct FleetCluster {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The address of its `default/kubernetes` Endpoints.
    pub api_address: IpAddr,
}

impl FleetCluster {
    fn labels_flag(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The three clusters of the fleet scenarios: `prod-east` and `prod-west` (`env=prod`), `staging`.
pub fn three_clusters() -> Vec<FleetCluster> {
    let cluster = |name: &str, labels: &[(&str, &str)], last: u8| FleetCluster {
        name: name.to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        api_address: IpAddr::from([192, 0, 2, last]),
    };
    vec![
        cluster("prod-east", &[("env", "prod"), ("region", "east")], 11),
        cluster("prod-west", &[("env", "prod"), ("region", "west")], 12),
        cluster("staging", &[("env", "staging")], 13),
    ]
}

/// `count` clusters `c00`, `c01`, … all labelled `env=prod`, for benchmarks.
pub fn numbered_clusters(count: usize) -> Vec<FleetCluster> {
    (0..count)
        .map(|i| FleetCluster {
            name: format!("c{i:02}"),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            api_address: IpAddr::from([192, 0, 2, u8::try_from(10 + i).unwrap_or(255)]),
        })
        .collect()
}

pub use crate::cli::CliOutput;

/// How [`Fleet::start_spoke_with`] starts a spoke; the default is the cluster's own spoke.
#[derive(Clone, Debug, Default)]
pub struct SpokeStart {
    /// The cluster id it says hello with (default: the cluster's name).
    pub claimed_id: Option<String>,
    /// Whose certificate it presents (default: the cluster's own).
    pub certificate_of: Option<String>,
    /// Other certificate and key files (`--tls-cert`, `--tls-key`) instead.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// The labels it reports (`--cluster-labels`; default: the cluster's registered labels).
    pub reported_labels: Option<String>,
    /// More flags.
    pub extra_args: Vec<String>,
    /// Wait only until `/readyz` answers, ready or not (a spoke that is expected not to become ready).
    pub answering: bool,
}

/// The fleet. Field order is drop order: spokes, then the hub replicas, their database, the clusters, the folder.
#[derive(Debug)]
pub struct Fleet {
    spokes: Vec<Option<Spoke>>,
    hubs: Vec<Option<ChildProcess>>,
    postgres: Option<Postgres>,
    control_plane: ControlPlane,
    clusters: Vec<FleetCluster>,
    /// Per replica: (gRPC port, metrics port).
    hub_ports: Vec<(u16, u16)>,
    /// The shared store of the replicas; `None`: one hub on its embedded store.
    store_url: Option<String>,
    starts: u32,
    dir: TempDir,
}

impl Fleet {
    /// The three-cluster fleet of [`three_clusters`], every spoke connected.
    pub async fn start() -> Result<Self> {
        Self::start_with(three_clusters()).await
    }

    /// A fleet of these clusters: prepared, with the standard agents, the hub up on its embedded store and every
    /// spoke connected (the hub's status shows each cluster connected with its agents).
    pub async fn start_with(clusters: Vec<FleetCluster>) -> Result<Self> {
        Self::launch(clusters, 1, false).await
    }

    /// A fleet whose hub is `replicas` replicas sharing a PostgreSQL database (a [`Postgres`] server of the
    /// fleet's own). Spoke `i` lists every replica, starting with replica `i % replicas`.
    pub async fn start_replicated(clusters: Vec<FleetCluster>, replicas: usize) -> Result<Self> {
        Self::launch(clusters, replicas, true).await
    }

    async fn launch(clusters: Vec<FleetCluster>, replicas: usize, shared_store: bool) -> Result<Self> {
        if replicas == 0 || (replicas > 1 && !shared_store) {
            bail!("several hub replicas need the shared store");
        }
        let postgres = if shared_store {
            Some(Postgres::start().await?)
        } else {
            None
        };
        let store_url = match &postgres {
            Some(server) => Some(server.create_database().await?),
            None => None,
        };
        // Many API servers starting at once on two cores take longer than one.
        let startup = crate::DEFAULT_STARTUP_TIMEOUT.max(Duration::from_secs(10 * clusters.len() as u64));
        let control_plane = ControlPlane::builder()
            .cluster_names(clusters.iter().map(|c| c.name.clone()))
            .endpoint_reconciler_none(true)
            .startup_timeout(startup)
            .start()
            .await?;
        let crd = crate::fixtures::agent_runtime_crd()?;
        let vanilla = VanillaCluster::from_yaml(&crd)?.namespaces([TEAM_NS.to_string(), SPOKE_NS.to_string()]);
        let prepare = clusters.iter().map(|spec| {
            let vanilla = vanilla.clone().api_address(spec.api_address);
            let cluster = control_plane.cluster(&spec.name);
            async move {
                let cluster = cluster?;
                vanilla.prepare(cluster).await?;
                for agent in STANDARD_AGENTS {
                    let egress = agent.local_egress.map(serde_json::from_str).transpose()?;
                    let card = agent.verified.then(mtls_card);
                    apply_agent(&cluster.client(), agent.name, &[("tier", agent.tier)], egress, card).await?;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(prepare).await?;

        let dir = tempfile::Builder::new().prefix("tollgate-fleet-").tempdir()?;
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        crate::hub::issue_certificates(&dir.path().join("certs"), &names)?;
        let hub_ports = (0..replicas)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        let mut fleet = Self {
            spokes: clusters.iter().map(|_| None).collect(),
            hubs: (0..replicas).map(|_| None).collect(),
            postgres,
            control_plane,
            hub_ports,
            store_url,
            clusters,
            starts: 0,
            dir,
        };
        for replica in 0..replicas {
            fleet.start_hub_replica(replica).await?;
        }
        for index in 0..fleet.clusters.len() {
            fleet.start_spoke(index).await?;
        }
        let agents = STANDARD_AGENTS.len() as u64;
        let count = fleet.clusters.len();
        fleet
            .wait_status("every cluster connected with its agents", |rows| {
                rows.as_array().is_some_and(|rows| {
                    rows.len() == count
                        && rows
                            .iter()
                            .all(|r| r["connected"] == true && r["agents"].as_u64() == Some(agents))
                })
            })
            .await?;
        Ok(fleet)
    }

    /// The clusters as the hub knows them.
    pub fn specs(&self) -> &[FleetCluster] {
        &self.clusters
    }

    /// The control plane of cluster `index`.
    pub fn cluster(&self, index: usize) -> &Cluster {
        &self.control_plane.clusters()[index]
    }

    /// The admin client of cluster `index`.
    pub fn client(&self, index: usize) -> Client {
        self.cluster(index).client()
    }

    /// The folder of certificates (`ca.pem`, `hub.pem`, `spoke-<id>.pem`, `admin-admin.pem`, keys).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The fleet's folder (certificates, hub data, logs of the hub and spokes, intent files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://localhost:PORT` of the hub (replica 0).
    pub fn hub_url(&self) -> String {
        self.replica_url(0)
    }

    /// `https://localhost:PORT` of hub replica `replica`.
    pub fn replica_url(&self, replica: usize) -> String {
        format!("https://localhost:{}", self.hub_ports[replica].0)
    }

    /// How many hub replicas the fleet has.
    pub fn replicas(&self) -> usize {
        self.hubs.len()
    }

    /// The PostgreSQL server of the replicas' shared store.
    pub fn postgres(&self) -> Option<&Postgres> {
        self.postgres.as_ref()
    }

    /// Starts the hub (replica 0); see [`Self::start_hub_replica`].
    pub async fn start_hub(&mut self) -> Result<()> {
        self.start_hub_replica(0).await
    }

    /// Starts `tollgate-hub serve` for `replica` (mTLS, 1 s heartbeats; the embedded store in the fleet's folder,
    /// or the shared PostgreSQL store as replica `hub-<replica>`) on its port and waits until it serves; a restart
    /// reuses the port and the store.
    pub async fn start_hub_replica(&mut self, replica: usize) -> Result<()> {
        if let Some(mut hub) = self.hubs[replica].take() {
            hub.kill();
        }
        let (port, metrics_port) = self.hub_ports[replica];
        let mut serve = ServeArgs::new(port, metrics_port, &self.hub_data_dir(), &self.certs_dir());
        if let Some(url) = &self.store_url {
            serve = serve.store(url, replica);
        }
        self.starts += 1;
        let log = self.dir.path().join(format!("hub-{replica}.{}.log", self.starts));
        let hub = crate::hub::start_serving(&serve.to_args(), &[], metrics_port, &log, WAIT).await?;
        self.hubs[replica] = Some(hub);
        self.register_clusters(replica).await
    }

    /// Registers every cluster of the fleet with its labels through hub replica `replica` (`clusters add`), as an
    /// admin would on a new store; a cluster registered already is left as it is.
    pub async fn register_clusters(&self, replica: usize) -> Result<()> {
        for cluster in &self.clusters {
            let labels = cluster.labels_flag();
            let output = self
                .cli_on(replica, &["clusters", "add", &cluster.name, "--labels", &labels])
                .await?;
            if !output.success && !output.stderr.contains("registered already") {
                bail!(
                    "registering cluster {}: {}{}",
                    cluster.name,
                    output.stdout,
                    output.stderr
                );
            }
        }
        Ok(())
    }

    /// SIGKILLs the hub (replica 0).
    pub fn kill_hub(&mut self) {
        self.kill_hub_replica(0);
    }

    /// SIGKILLs hub replica `replica`.
    pub fn kill_hub_replica(&mut self, replica: usize) {
        if let Some(mut hub) = self.hubs[replica].take() {
            hub.kill();
        }
    }

    /// The log of hub replica `replica` (its latest start).
    pub fn hub_log(&self, replica: usize) -> String {
        self.hubs[replica]
            .as_ref()
            .map(|h| std::fs::read_to_string(h.log_path()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `GET path` on hub replica `replica`'s metrics port: the status code and the body.
    pub async fn hub_http(&self, replica: usize, path: &str) -> Result<(u16, String)> {
        http_get(self.hub_ports[replica].1, path).await
    }

    /// The embedded store's folder of the hub (`--data-dir`).
    pub fn hub_data_dir(&self) -> PathBuf {
        self.dir.path().join("hub-data")
    }

    /// The URL of the replicas' shared PostgreSQL database; `None` on the embedded store.
    pub fn store_url(&self) -> Option<&str> {
        self.store_url.as_deref()
    }

    /// Gives the hub a new, empty store from its next start (a lost volume, a new database), keeping the old one
    /// aside: the embedded store's folder is moved away, or the replicas are pointed at a new database.
    pub async fn replace_hub_store(&mut self) -> Result<()> {
        if let Some(server) = &self.postgres {
            self.store_url = Some(server.create_database().await?);
            return Ok(());
        }
        let data = self.hub_data_dir();
        if data.exists() {
            let aside = self.dir.path().join(format!("hub-data.old.{}", self.starts));
            std::fs::rename(&data, &aside).with_context(|| format!("moving {} aside", data.display()))?;
        }
        Ok(())
    }

    /// Starts cluster `index`'s spoke with its own identity and waits until its first pass is done.
    pub async fn start_spoke(&mut self, index: usize) -> Result<()> {
        let name = self.clusters[index].name.clone();
        self.start_spoke_as(index, &name, &name).await
    }

    /// Starts cluster `index`'s spoke saying it is cluster `claimed_id` with the certificate issued to
    /// `certificate_of`, and waits until its first pass is done (`/readyz`).
    pub async fn start_spoke_as(&mut self, index: usize, claimed_id: &str, certificate_of: &str) -> Result<()> {
        self.start_spoke_with(
            index,
            SpokeStart {
                claimed_id: Some(claimed_id.to_string()),
                certificate_of: Some(certificate_of.to_string()),
                ..SpokeStart::default()
            },
        )
        .await
    }

    /// Starts cluster `index`'s spoke as `start` says, and waits until it is ready (or, with
    /// [`SpokeStart::answering`], until `/readyz` answers at all).
    pub async fn start_spoke_with(&mut self, index: usize, start: SpokeStart) -> Result<()> {
        self.kill_spoke(index);
        let certs = self.certs_dir();
        let path = |name: String| certs.join(name).display().to_string();
        let metrics_port = free_port()?;
        let spec = &self.clusters[index];
        let claimed_id = start.claimed_id.clone().unwrap_or_else(|| spec.name.clone());
        let certificate_of = start.certificate_of.clone().unwrap_or_else(|| spec.name.clone());
        let (cert, key) = match &start.tls_files {
            Some((cert, key)) => (cert.display().to_string(), key.display().to_string()),
            None => (
                path(format!("spoke-{certificate_of}.pem")),
                path(format!("spoke-{certificate_of}-key.pem")),
            ),
        };
        let mut args = vec![
            "run".to_string(),
            "--cluster-id".into(),
            claimed_id,
            "--cluster-labels".into(),
            start.reported_labels.clone().unwrap_or_else(|| spec.labels_flag()),
            "--kubeconfig".into(),
            self.cluster(index).kubeconfig_path().display().to_string(),
            "--hub".into(),
            (0..self.hubs.len())
                .map(|k| self.replica_url((index + k) % self.hubs.len()))
                .collect::<Vec<_>>()
                .join(","),
            "--hub-ca".into(),
            path("ca.pem".into()),
            "--tls-cert".into(),
            cert,
            "--tls-key".into(),
            key,
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--log-level".into(),
            LOG_LEVEL.into(),
        ];
        args.extend(start.extra_args.iter().cloned());
        self.starts += 1;
        let log = self.dir.path().join(format!("spoke-{}.{}.log", spec.name, self.starts));
        let spoke = Spoke::spawn_logging_to(&args, metrics_port, &log)?;
        if start.answering {
            spoke.wait_answering().await?;
        } else {
            spoke.wait_ready().await?;
        }
        self.spokes[index] = Some(spoke);
        Ok(())
    }

    /// `GET /readyz` of cluster `index`'s spoke: the status code and the body.
    pub async fn spoke_readyz(&self, index: usize) -> Result<(u16, String)> {
        let spoke = self.spokes[index].as_ref().context("the spoke is not running")?;
        spoke.get("/readyz").await
    }

    /// SIGKILLs cluster `index`'s spoke.
    pub fn kill_spoke(&mut self, index: usize) {
        if let Some(mut spoke) = self.spokes[index].take() {
            spoke.kill();
        }
    }

    /// The log of cluster `index`'s spoke (its latest start).
    pub fn spoke_log(&self, index: usize) -> String {
        self.spokes[index].as_ref().map(Spoke::log).unwrap_or_default()
    }

    /// The last lines of cluster `index`'s spoke log, for failure messages.
    pub fn spoke_log_tail(&self, index: usize) -> String {
        self.spokes[index]
            .as_ref()
            .map(|s| crate::log_tail(s.log_path(), crate::LOG_TAIL_LINES))
            .unwrap_or_default()
    }

    /// `/metrics` of cluster `index`'s spoke.
    pub async fn spoke_metrics(&self, index: usize) -> Result<String> {
        let spoke = self.spokes[index].as_ref().context("the spoke is not running")?;
        Ok(spoke.get("/metrics").await?.1)
    }

    /// SIGKILLs cluster `index`'s kube-apiserver.
    pub fn kill_apiserver(&mut self, index: usize) -> Result<()> {
        let name = self.clusters[index].name.clone();
        self.control_plane.cluster_mut(&name)?.kill_apiserver();
        Ok(())
    }

    /// Starts cluster `index`'s kube-apiserver again on its port and etcd prefix.
    pub async fn start_apiserver(&mut self, index: usize) -> Result<()> {
        let name = self.clusters[index].name.clone();
        self.control_plane
            .cluster_mut(&name)?
            .start_apiserver(crate::DEFAULT_STARTUP_TIMEOUT)
            .await
    }

    /// Runs `tollgate-hub ARGS --hub … --ca … --cert … --key …` with the admin certificate, against replica 0.
    pub async fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        self.cli_on(0, args).await
    }

    /// [`Self::cli`] against hub replica `replica`.
    pub async fn cli_on(&self, replica: usize, args: &[&str]) -> Result<CliOutput> {
        self.admin_cli(replica).run_async(args).await
    }

    /// The admin CLI against hub replica `replica` with the admin certificate.
    pub fn admin_cli(&self, replica: usize) -> Cli {
        Cli::admin(&self.replica_url(replica), &self.certs_dir())
    }

    /// [`Self::cli`] that must succeed: its standard output.
    pub async fn cli_ok(&self, args: &[&str]) -> Result<String> {
        self.cli_ok_on(0, args).await
    }

    /// [`Self::cli_on`] that must succeed: its standard output.
    pub async fn cli_ok_on(&self, replica: usize, args: &[&str]) -> Result<String> {
        self.admin_cli(replica).run_ok_async(args).await
    }

    /// Writes `yaml` to a file of the fleet's folder and returns its path, for `-f`.
    pub fn intent_file(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `apply -f` of these documents; must succeed. Returns what it printed.
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        let file = self.intent_file("apply.yaml", yaml)?;
        self.cli_ok(&["apply", "-f", &file.display().to_string()]).await
    }

    /// `status -o json`: one object per cluster.
    pub async fn status(&self) -> Result<Value> {
        let text = self.cli_ok(&["status", "-o", "json"]).await?;
        serde_json::from_str(&text).with_context(|| format!("status -o json printed {text:?}"))
    }

    /// `status --cluster NAME -o json`: one object per agent.
    pub async fn agent_status(&self, cluster: &str) -> Result<Value> {
        let text = self.cli_ok(&["status", "--cluster", cluster, "-o", "json"]).await?;
        serde_json::from_str(&text).with_context(|| format!("status --cluster printed {text:?}"))
    }

    /// Polls `status -o json` until `check` holds; returns the rows.
    pub async fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
        let found = wait_for(format!("hub status: {what}"), WAIT, || {
            let check = &check;
            async move {
                let Ok(rows) = self.status().await else { return Ok(None) };
                Ok(check(&rows).then_some(rows))
            }
        })
        .await;
        match found {
            Ok(rows) => Ok(rows),
            Err(error) => {
                let last = self.status().await.unwrap_or_default();
                Err(error.context(format!("the last status: {last:#}")))
            }
        }
    }

    /// Waits until every cluster is connected and has applied the latest revision without errors.
    pub async fn wait_converged(&self) -> Result<Value> {
        self.wait_status(
            "every cluster connected at the latest revision, without errors",
            |rows| {
                rows.as_array().is_some_and(|rows| {
                    rows.iter().all(|r| {
                        r["connected"] == true && r["appliedRevision"] == r["latestRevision"] && r["errors"] == 0
                    })
                })
            },
        )
        .await
    }

    /// The managed NetworkPolicies of [`TEAM_NS`] in cluster `index`, by name, as JSON.
    pub async fn policies(&self, index: usize) -> Result<BTreeMap<String, Value>> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client(index), TEAM_NS);
        let list = api
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tollgate-spoke"))
            .await
            .with_context(|| format!("listing NetworkPolicies of {}", self.clusters[index].name))?;
        list.items
            .into_iter()
            .map(|p| Ok((p.name_any(), serde_json::to_value(&p)?)))
            .collect()
    }

    /// `name → resourceVersion` of every NetworkPolicy of [`TEAM_NS`], per cluster.
    pub async fn resource_versions(&self) -> Result<Vec<BTreeMap<String, String>>> {
        let mut out = Vec::new();
        for index in 0..self.clusters.len() {
            let api: Api<NetworkPolicy> = Api::namespaced(self.client(index), TEAM_NS);
            let list = api.list(&ListParams::default()).await?;
            out.push(
                list.items
                    .iter()
                    .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Waits until cluster `index`'s policy `name` satisfies `check`; returns it.
    pub async fn wait_policy(
        &self,
        index: usize,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client(index), TEAM_NS);
        let cluster = &self.clusters[index].name;
        wait_for_policy(&api, name, &format!("{cluster}: {what}"), check)
            .await
            .with_context(|| format!("the spoke's log ends:\n{}", self.spoke_log_tail(index)))
    }

    /// Writes the `status.card` of agent `name` in cluster `index` (as the operator would).
    pub async fn set_card(&self, index: usize, name: &str, card: Option<Value>) -> Result<()> {
        set_card(&self.client(index), name, card).await
    }
}

/// Waits until the NetworkPolicy `name` exists and its JSON satisfies `check`; returns it.
pub async fn wait_for_policy(
    api: &Api<NetworkPolicy>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(format!("NetworkPolicy {name}: {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            let Some(policy) = api.get_opt(name).await? else {
                return Ok(None);
            };
            let value = serde_json::to_value(&policy)?;
            Ok(check(&value).then_some(value))
        }
    })
    .await
}

/// The AgentRuntime kind, without depending on the spoke's types.
fn agent_runtimes(client: &Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("agent.kagenti.dev", "v1alpha1", "AgentRuntime"),
        "agentruntimes",
    );
    Api::namespaced_with(client.clone(), TEAM_NS, &resource)
}

/// Applies an AgentRuntime in [`TEAM_NS`] for a Deployment of the same name, then its status card.
pub async fn apply_agent(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    egress: Option<Value>,
    card: Option<Value>,
) -> Result<()> {
    let mut spec = json!({
        "type": "agent",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
    });
    if let Some(egress) = egress {
        spec["egress"] = egress;
    }
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let object = json!({
        "apiVersion": "agent.kagenti.dev/v1alpha1",
        "kind": "AgentRuntime",
        "metadata": {"name": name, "namespace": TEAM_NS, "labels": labels},
        "spec": spec,
    });
    agent_runtimes(client)
        .patch(
            name,
            &PatchParams::apply("tollgate-e2e").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| anyhow::anyhow!("applying AgentRuntime {name}: {e:?}"))?;
    set_card(client, name, card).await
}

/// Writes `status.card` through the status subresource (`None` removes it).
pub async fn set_card(client: &Client, name: &str, card: Option<Value>) -> Result<()> {
    let status = json!({
        "apiVersion": "agent.kagenti.dev/v1alpha1",
        "kind": "AgentRuntime",
        "status": {"card": card},
    });
    agent_runtimes(client)
        .patch_status(name, &PatchParams::apply("operator").force(), &Patch::Apply(&status))
        .await
        .with_context(|| format!("writing the status card of {name}"))?;
    Ok(())
}

/// A card attested over mTLS: the agent is verified.
pub fn mtls_card() -> Value {
    json!({"transportSecurity": "mtls", "attestedAgentSpiffeID": "spiffe://example.org/ns/team-a/sa/agent"})
}
