//! Fleet latency: from `tollgate-hub apply` returning to the NetworkPolicy being updated in every
//! cluster's kube-apiserver, side by side with what a team does without a hub — `kubectl apply` of the
//! equivalent NetworkPolicy to each cluster in turn.
//!
//! ```sh
//! cargo build --release --locked -p tollgate-hub -p tollgate-spoke
//! cargo bench -p tollgate-e2e --bench fleet_latency            # options after `--`: --applies N --clusters 3,20
//! ```
//!
//! For each fleet size: a [`Fleet`] of real processes (one etcd, one kube-apiserver per cluster, the release hub
//! on its embedded store with mTLS, one release spoke per cluster), a watch on the `chat` agent's NetworkPolicy
//! in every cluster, then `--applies` times: the CLI applies an `EgressPolicy` whose port changes each time, and
//! the time is taken when the last cluster's watch delivers the policy stamped with the new revision. Then the
//! same number of rounds of `kubectl apply -f` (Debian's kubectl of the same release as the API servers, from
//! `scripts/kubectl-client`) of an equivalent NetworkPolicy to each cluster in turn, timed from the first
//! invocation to the last return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate_e2e::fleet::{Fleet, TEAM_NS, numbered_clusters};
use tollgate_e2e::workspace_root;

const POLICY: &str = "chat-signature-policy";
const KUBECTL_POLICY: &str = "kubectl-chat-policy";
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Options {
    applies: usize,
    clusters: Vec<usize>,
}

impl Options {
    /// `--applies N`, `--clusters A,B`; anything else (such as cargo's `--bench`) is ignored.
    fn parse() -> Result<Self> {
        let mut options = Self {
            applies: 50,
            clusters: vec![3, 20],
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--applies" => {
                    options.applies = args.next().context("--applies needs a number")?.parse()?;
                }
                "--clusters" => {
                    let list = args.next().context("--clusters needs a list such as 3,20")?;
                    options.clusters = list
                        .split(',')
                        .map(|n| n.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--clusters {list:?}"))?;
                }
                _ => {}
            }
        }
        if options.applies == 0 || options.clusters.iter().any(|&n| n == 0 || n > 200) {
            bail!("--applies must be at least 1 and each --clusters value between 1 and 200");
        }
        Ok(options)
    }
}

/// Milliseconds of each sample.
#[derive(Debug, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, duration: Duration) {
        self.0.push(duration.as_secs_f64() * 1000.0);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> f64 {
        tollgate_e2e::stats::percentile(&self.sorted(), p)
    }

    fn summary(&self) -> String {
        format!(
            "median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms (n = {})",
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.sorted().first().copied().unwrap_or_default(),
            self.sorted().last().copied().unwrap_or_default(),
            self.0.len()
        )
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let kubectl = kubectl()?;
    println!("kubectl: {}", kubectl.display());
    for binary in ["tollgate-hub", "tollgate-spoke"] {
        let path = tollgate_e2e::binary(binary)?;
        let modified = std::fs::metadata(&path)?.modified()?;
        let age = modified.elapsed().unwrap_or_default().as_secs();
        println!("{binary}: {} (built {age} s ago)", path.display());
    }
    let mut rows = Vec::new();
    for &count in &options.clusters {
        let started = Instant::now();
        let fleet = Fleet::start_with(numbered_clusters(count)).await?;
        println!(
            "\n{count} clusters: fleet up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let hub = tollgate(&fleet, options.applies).await?;
        println!(
            "tollgate apply returned -> all {count} updated: {}",
            hub.after_return.summary()
        );
        println!(
            "tollgate apply invoked  -> all {count} updated: {}",
            hub.after_invoke.summary()
        );
        println!("tollgate apply command itself:           {}", hub.command.summary());
        println!(
            "updates already complete when the command returned: {} of {}",
            hub.before_return, options.applies
        );
        let direct = kubectl_rounds(&fleet, &kubectl, options.applies).await?;
        println!("kubectl apply to each of {count} in turn:   {}", direct.summary());
        rows.push((count, hub, direct));
    }
    println!(
        "\n| clusters | Tollgate: apply returned → all updated (median / p99) | from invocation (median / p99) | kubectl apply to each in turn (median / p99) | ratio of medians (kubectl / Tollgate from invocation) |"
    );
    println!("|---|---|---|---|---|");
    for (count, hub, direct) in &rows {
        println!(
            "| {count} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1}× |",
            hub.after_return.percentile(50.0),
            hub.after_return.percentile(99.0),
            hub.after_invoke.percentile(50.0),
            hub.after_invoke.percentile(99.0),
            direct.percentile(50.0),
            direct.percentile(99.0),
            direct.percentile(50.0) / hub.after_invoke.percentile(50.0),
        );
    }
    Ok(())
}

struct HubSamples {
    /// From the CLI's exit to the last cluster's update (0 when every update came first).
    after_return: Samples,
    /// From the CLI's invocation to the last cluster's update.
    after_invoke: Samples,
    /// The CLI's own run time (process start, TLS, commit, exit).
    command: Samples,
    before_return: usize,
}

/// `applies` rounds of `tollgate-hub apply`, each waiting for the policy in every cluster.
async fn tollgate(fleet: &Fleet, applies: usize) -> Result<HubSamples> {
    let count = fleet.specs().len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for index in 0..count {
        let api: Api<NetworkPolicy> = Api::namespaced(fleet.client(index), TEAM_NS);
        let tx = tx.clone();
        watches.push(tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={POLICY}"));
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(event) = stream.next().await {
                let seen = Instant::now();
                if let Ok(Event::Apply(policy) | Event::InitApply(policy)) = event {
                    let revision = policy
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("tollgate.dev/revision"))
                        .and_then(|r| r.parse::<u64>().ok())
                        .unwrap_or_default();
                    let _ = tx.send((index, revision, seen));
                }
            }
        }));
    }
    let mut samples = HubSamples {
        after_return: Samples::default(),
        after_invoke: Samples::default(),
        command: Samples::default(),
        before_return: 0,
    };
    // Revision → cluster → when its watch first delivered the policy at that revision.
    let mut seen: BTreeMap<u64, BTreeMap<usize, Instant>> = BTreeMap::new();
    for round in 0..applies {
        let port = 1000 + (round % 2) * 1000 + round;
        let yaml = format!(
            "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {{name: llm-apis}}
spec:
  agentSelector: {{matchLabels: {{tier: llm}}}}
  egress: [{{to: [{{ipBlock: {{cidr: 104.18.0.0/16}}}}], ports: [{{port: {port}}}]}}]
"
        );
        let file = fleet.intent_file("bench.yaml", &yaml)?;
        let invoked = Instant::now();
        let out = fleet.cli_ok(&["apply", "-f", &file.display().to_string()]).await?;
        let returned = Instant::now();
        let revision: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("revision "))
            .and_then(|r| r.trim().parse().ok())
            .with_context(|| format!("no revision in {out:?}"))?;
        let deadline = returned + TIMEOUT;
        loop {
            while let Ok((index, rev, at)) = rx.try_recv() {
                seen.entry(rev).or_default().entry(index).or_insert(at);
            }
            if seen.get(&revision).is_some_and(|c| c.len() == count) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "revision {revision} reached only {:?} of {count} clusters in {TIMEOUT:?}",
                    seen.get(&revision).map(BTreeMap::len)
                );
            }
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some((index, rev, at))) => {
                    seen.entry(rev).or_default().entry(index).or_insert(at);
                }
                Ok(None) => bail!("every watch ended"),
                Err(_) => {}
            }
        }
        let last = seen[&revision].values().max().copied().unwrap_or(returned);
        if last <= returned {
            samples.before_return += 1;
        }
        samples.after_return.push(last.saturating_duration_since(returned));
        samples.after_invoke.push(last.saturating_duration_since(invoked));
        samples.command.push(returned - invoked);
        // Let the spokes' acknowledgements and inventories settle before the next round.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for watch in watches {
        watch.abort();
    }
    Ok(samples)
}

/// `applies` rounds of `kubectl apply -f` of the equivalent NetworkPolicy to every cluster in turn.
async fn kubectl_rounds(fleet: &Fleet, kubectl: &Path, applies: usize) -> Result<Samples> {
    // The policy the spoke wrote for `chat` in the first cluster, as a team would keep it in Git: the same spec
    // under another name, without the spoke's labels (which would make the spoke sweep it).
    let written = fleet.policies(0).await?;
    let spec = written.get(POLICY).with_context(|| format!("{POLICY} is missing"))?["spec"].clone();
    let mut samples = Samples::default();
    let file = fleet.dir().join("kubectl-policy.yaml");
    for round in 0..applies {
        let mut spec = spec.clone();
        let port = 20000 + round;
        if let Some(rules) = spec["egress"].as_array_mut()
            && let Some(last) = rules.last_mut()
        {
            last["ports"] = serde_json::json!([{"protocol": "TCP", "port": port}]);
        }
        let object = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": KUBECTL_POLICY, "namespace": TEAM_NS},
            "spec": spec,
        });
        std::fs::write(&file, serde_yaml_ng::to_string(&object)?)?;
        let started = Instant::now();
        for index in 0..fleet.specs().len() {
            let output = tokio::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(fleet.cluster(index).kubeconfig_path())
                .args(["apply", "-f"])
                .arg(&file)
                .output()
                .await
                .context("running kubectl")?;
            if !output.status.success() {
                bail!("kubectl apply failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Debian's kubectl of the API servers' release (`scripts/kubectl-client`; `KUBECTL` overrides).
fn kubectl() -> Result<PathBuf> {
    let script = workspace_root().join("scripts/kubectl-client");
    let output = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed", script.display());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let path = stdout
        .lines()
        .last()
        .context("scripts/kubectl-client printed nothing")?;
    Ok(PathBuf::from(path.trim()))
}
