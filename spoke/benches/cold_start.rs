//! Spoke cold start and idle cost: 1,000 AgentRuntimes in one real kube-apiserver, the release
//! `tollgate-spoke` binary started cold until every NetworkPolicy is applied (target ≤ 20 s), then its idle cost
//! (target: RSS ≤ 50 MiB, CPU ≤ 1% of one core).
//!
//! Run with `cargo bench -p tollgate-spoke --bench cold_start` (options after `--`: `--agents N`, `--runs N`,
//! `--idle-secs N`, and `--churn-per-minute N --churn-secs S` for a card-refresh churn). The AgentRuntimes are
//! created before the spoke starts and their creation is timed separately; each run kills the spoke, deletes every
//! managed NetworkPolicy and starts the spoke again. The churn then refreshes verified agents' cards (only
//! `lastCardFetchTime` moves) with the spoke as it runs by default and, side by side, with `--max-card-age`.
//! `--edits N` then changes the rules of N agents one at a time and measures, per edit, the time from the
//! API server's answer to the patch until the watch sees the agent's NetworkPolicy with the new rule, and the cost
//! of a pass with nothing to write: with the spoke as it runs (incremental passes) and, side by side, with
//! `--full-resync-interval 0s` (every pass plans and compares every agent, as before incremental passes).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tollgate_common::planner::{LABEL_MANAGED_BY, LABEL_MODE, MANAGED_BY};
use tollgate_e2e::procfs::{clock_ticks, cpu_seconds, load_average, metric, proc_status_kib, self_cpu_seconds};
use tollgate_e2e::spoke::{Spoke, VanillaCluster};
use tollgate_e2e::{Cluster, ControlPlane, log_tail};
use tollgate_spoke::agent_runtime::AgentRuntime;

const NAMESPACES: usize = 4;
const CREATE_CONCURRENCY: usize = 32;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(25);
/// Pause between convergence and the idle window, so the passes triggered by the spoke's own writes are over.
const SETTLE: Duration = Duration::from_secs(5);
/// The spoke's full resync period (`--full-resync-interval`, `FULL_RESYNC` in spoke/src/reconcile.rs).
const RESYNC_SECS: f64 = 600.0;
const TARGET_CONVERGE_SECS: f64 = 20.0;
const TARGET_RSS_MIB: f64 = 50.0;
const TARGET_CPU_PERCENT: f64 = 1.0;

type Key = (String, String);

#[derive(Debug)]
struct Options {
    agents: usize,
    runs: usize,
    idle_secs: u64,
    /// `status.card` refreshes per minute (only `lastCardFetchTime` moves, as the agent operator's periodic fetch
    /// does); 0: no churn measured.
    churn_per_minute: u64,
    churn_secs: u64,
    /// Agents whose rules are changed one at a time, per spoke mode; 0: not measured.
    edits: u64,
}

impl Options {
    /// `--agents N`, `--runs N`, `--idle-secs N`; anything else (such as cargo's `--bench`) is ignored.
    fn parse() -> Result<Self> {
        let mut options = Self {
            agents: 1000,
            runs: 3,
            idle_secs: 30,
            churn_per_minute: 0,
            churn_secs: 60,
            edits: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || -> Result<u64> {
                let text = args.next().with_context(|| format!("{arg} needs a value"))?;
                text.parse().with_context(|| format!("{arg}: {text:?} is not a number"))
            };
            match arg.as_str() {
                "--agents" => options.agents = value()? as usize,
                "--runs" => options.runs = value()?.max(1) as usize,
                "--idle-secs" => options.idle_secs = value()?.max(1),
                "--churn-per-minute" => options.churn_per_minute = value()?,
                "--churn-secs" => options.churn_secs = value()?.max(1),
                "--edits" => options.edits = value()?,
                _ => {}
            }
        }
        Ok(options)
    }
}

/// The three kinds of agent, and the policy mode each must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentKind {
    /// mTLS-verified, three ipBlock rules on `spec.egress`.
    Scoped,
    /// mTLS-verified, nothing declared.
    AllowAll,
    /// No `status.card`.
    Restricted,
}

impl AgentKind {
    /// Half scoped, a quarter allow-all, a quarter restricted.
    fn of(index: usize) -> Self {
        match index % 4 {
            0 | 1 => Self::Scoped,
            2 => Self::AllowAll,
            _ => Self::Restricted,
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Self::Scoped => "scoped",
            Self::AllowAll => "allow-all",
            Self::Restricted => "restricted",
        }
    }
}

fn namespace(index: usize) -> String {
    format!("bench-{}", index % NAMESPACES)
}

fn agent_name(index: usize) -> String {
    format!("agent-{index:04}")
}

fn expected_policies(agents: usize) -> HashMap<Key, &'static str> {
    (0..agents)
        .map(|i| {
            let key = (namespace(i), format!("{}-signature-policy", agent_name(i)));
            (key, AgentKind::of(i).mode())
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let spoke_binary = Path::new(env!("CARGO_BIN_EXE_tollgate-spoke"));
    let optimized = !cfg!(debug_assertions);
    println!("tollgate-spoke cold start and idle cost");
    println!(
        "binary: {} ({})",
        spoke_binary.display(),
        if optimized {
            "optimized"
        } else {
            "DEBUG BUILD: figures are not representative"
        }
    );
    println!(
        "agents: {}, runs: {}, idle window: {} s, CPU clock ticks: {} /s",
        options.agents,
        options.runs,
        options.idle_secs,
        clock_ticks()
    );

    let started = Instant::now();
    let control_plane = cluster().await?;
    let cluster = &control_plane.clusters()[0];
    let client = cluster.client();
    println!(
        "cluster ready in {:.1} s; load average: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );

    let setup = Instant::now();
    create_agents(&client, options.agents).await?;
    let setup = setup.elapsed();
    println!(
        "set-up: {} AgentRuntimes created (with status) in {:.1} s ({:.0}/s, {CREATE_CONCURRENCY} in flight)",
        options.agents,
        setup.as_secs_f64(),
        options.agents as f64 / setup.as_secs_f64()
    );

    let expected = expected_policies(options.agents);
    let (mut progress, tracker) = track_policies(client.clone(), expected);
    progress
        .wait_for(|p| p.synced && p.present == 0)
        .await
        .context("the NetworkPolicy tracker stopped")?;

    // Kept after the bench, for a look at the spoke's passes.
    let logs = tempfile::Builder::new()
        .prefix("tollgate-cold-start-")
        .tempdir()?
        .keep();
    let mut runs = Vec::new();
    let mut spoke: Option<Spoke> = None;
    for run in 1..=options.runs {
        if let Some(mut previous) = spoke.take() {
            previous.process.kill();
            delete_policies(&client, &mut progress).await?;
        }
        let (result, running) = cold_start(cluster, &control_plane, &logs, &mut progress, options.agents)
            .await
            .with_context(|| format!("run {run}"))?;
        println!(
            "run {run}: ready {:.2} s, first policy {:.2} s, all {} policies {:.2} s ({} writes, {} passes)",
            result.ready.as_secs_f64(),
            result.first_policy.as_secs_f64(),
            options.agents,
            result.all_policies.as_secs_f64(),
            result.writes,
            result.reconciles
        );
        runs.push(result);
        spoke = Some(running);
    }
    let spoke = spoke.context("no run")?;

    tokio::time::sleep(SETTLE).await;
    let idle = idle_cost(&spoke, Duration::from_secs(options.idle_secs)).await?;
    let resync = noop_pass(cluster, &spoke).await?;
    tracker.abort();
    report(&options, setup, &runs, &idle, &resync, &spoke);
    let spoke = if options.edits > 0 {
        // Side by side in one run: the spoke as it runs, then every pass a full one.
        let incremental = edits(&client, &spoke, options.agents, options.edits, 0).await?;
        let incremental_noop = noop_pass(cluster, &spoke).await?;
        drop(spoke);
        let full = start_spoke(cluster, &logs, &["--full-resync-interval", "0s"])?;
        full.wait_ready_within(CONVERGE_TIMEOUT).await?;
        tokio::time::sleep(SETTLE).await;
        let full_edits = edits(&client, &full, options.agents, options.edits, 1).await?;
        let full_noop = noop_pass(cluster, &full).await?;
        println!();
        println!(
            "## One agent's rules changed, {} edits one at a time, {} agents",
            options.edits, options.agents
        );
        println!();
        println!(
            "| spoke | edit → its NetworkPolicy: p50 | p99 | max | pass with nothing to write: wall | spoke CPU |"
        );
        println!("|---|---|---|---|---|---|");
        for (name, latencies, noop) in [
            ("incremental passes (default)", &incremental, &incremental_noop),
            ("`--full-resync-interval 0s` (every pass full)", &full_edits, &full_noop),
        ] {
            println!(
                "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                percentile_ms(latencies, 0.50),
                percentile_ms(latencies, 0.99),
                percentile_ms(latencies, 1.0),
                noop.wall_seconds * 1000.0 / noop.passes.max(1) as f64,
                noop.cpu_seconds * 1000.0
            );
        }
        println!();
        println!(
            "reproduce: cargo bench -p tollgate-spoke --bench cold_start -- --agents {} --runs {} --idle-secs {} \
             --edits {}",
            options.agents, options.runs, options.idle_secs, options.edits
        );
        full
    } else {
        spoke
    };
    if options.churn_per_minute > 0 {
        // Side by side in one run: the spoke as it runs by default, then with a maximum card age (where a refresh of a
        // fresh card costs no pass either, and a staleness timer wakes the spoke instead).
        let window = Duration::from_secs(options.churn_secs);
        let quiet = churn(&client, &spoke, options.agents, options.churn_per_minute, window, 0).await?;
        drop(spoke);
        let aged = start_spoke(cluster, &logs, &["--max-card-age", "3650d"])?;
        aged.wait_ready_within(CONVERGE_TIMEOUT).await?;
        tokio::time::sleep(SETTLE).await;
        let every = churn(
            &client,
            &aged,
            options.agents,
            options.churn_per_minute,
            window,
            100_000,
        )
        .await?;
        println!();
        println!(
            "## Card-refresh churn: {} `lastCardFetchTime` updates per minute for {} s, {} agents",
            options.churn_per_minute, options.churn_secs, options.agents
        );
        println!();
        println!("| spoke | updates | passes | spoke CPU | % of one core |");
        println!("|---|---|---|---|---|");
        for (name, churn) in [("default", &quiet), ("`--max-card-age 3650d`", &every)] {
            println!(
                "| {name} | {} | {} | {:.2} s | {:.2} % |",
                churn.updates,
                churn.passes,
                churn.cpu_seconds,
                churn.cpu_seconds / churn.window.as_secs_f64() * 100.0
            );
        }
        println!();
        println!(
            "reproduce: cargo bench -p tollgate-spoke --bench cold_start -- --agents {} --runs {} --idle-secs {} \
             --churn-per-minute {} --churn-secs {}",
            options.agents, options.runs, options.idle_secs, options.churn_per_minute, options.churn_secs
        );
    }
    Ok(())
}

/// The p-th percentile (0..=1) of latencies, in milliseconds.
fn percentile_ms(latencies: &[Duration], p: f64) -> f64 {
    let mut sorted: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

/// Changes the first rule's CIDR of `count` scoped agents, one at a time, and measures from the API server's
/// answer to the patch until the NetworkPolicy watch sees the agent's policy with the new CIDR. `round` keeps the
/// CIDRs of successive calls distinct.
async fn edits(client: &Client, spoke: &Spoke, agents: usize, count: u64, round: u64) -> Result<Vec<Duration>> {
    let scoped: Vec<usize> = (0..agents).filter(|i| AgentKind::of(*i) == AgentKind::Scoped).collect();
    anyhow::ensure!(!scoped.is_empty(), "no scoped agent to edit");
    let mut latencies = Vec::new();
    for n in 0..count {
        let index = scoped[(n as usize * 7919 + round as usize * 104_729) % scoped.len()];
        let (ns, name) = (namespace(index), agent_name(index));
        let cidr = format!("100.{}.{}.0/24", 64 + round, n % 250);
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let policy = format!("{name}-signature-policy");
        let config = watcher::Config::default().fields(&format!("metadata.name={policy}"));
        let stream = watch_stream(policies, config).default_backoff();
        futures::pin_mut!(stream);
        // Synced before the edit, so that the change is an event after it.
        while let Some(event) = stream.next().await {
            if matches!(event, Ok(Event::InitDone)) {
                break;
            }
        }
        let runtimes: Api<AgentRuntime> = Api::namespaced(client.clone(), &ns);
        let mut runtime = runtimes.get(&name).await?;
        let egress = runtime.spec.egress.as_mut().context("a scoped agent has rules")?;
        let mut rules = serde_json::to_value(&*egress)?;
        rules["rules"][0]["to"][0]["ipBlock"]["cidr"] = json!(cidr);
        let patch = json!({"spec": {"egress": rules}});
        runtimes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("editing the rules of {ns}/{name}"))?;
        let edited = Instant::now();
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = stream.next().await {
                if let Ok(Event::Apply(p)) = event
                    && serde_json::to_string(&p.spec)?.contains(&cidr)
                {
                    return Ok(Instant::now());
                }
            }
            bail!("the watch of {policy} ended")
        })
        .await
        .with_context(|| {
            format!(
                "{policy} not rewritten within 30 s; spoke log:\n{}",
                log_tail(spoke.log_path(), 20)
            )
        })??;
        latencies.push(seen - edited);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(latencies)
}

/// What a card-refresh churn cost the spoke.
#[derive(Debug)]
struct Churn {
    window: Duration,
    updates: u64,
    passes: u64,
    cpu_seconds: f64,
}

/// Refreshes verified agents' cards at `per_minute` (only `lastCardFetchTime` moves) for `window`, and measures the
/// spoke's passes and CPU meanwhile. `offset` keeps the fetch times of successive calls distinct.
async fn churn(
    client: &Client,
    spoke: &Spoke,
    agents: usize,
    per_minute: u64,
    window: Duration,
    offset: u64,
) -> Result<Churn> {
    let verified: Vec<usize> = (0..agents)
        .filter(|i| AgentKind::of(*i) != AgentKind::Restricted)
        .collect();
    anyhow::ensure!(!verified.is_empty(), "no verified agent to refresh");
    let metrics_before = spoke.metrics().await?;
    let cpu_before = cpu_seconds(spoke.pid())?;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(60) / u32::try_from(per_minute.max(1)).unwrap_or(1));
    let mut updates = 0u64;
    while started.elapsed() < window {
        ticker.tick().await;
        let index = verified[(updates as usize * 7919) % verified.len()];
        // Any time of today is fresh under the 10-year maximum age; each update moves it by a second.
        let second = (offset + updates) % 86_400;
        let fetched = format!(
            "2026-12-06T{:02}:{:02}:{:02}Z",
            second / 3600,
            second / 60 % 60,
            second % 60
        );
        let api: Api<AgentRuntime> = Api::namespaced(client.clone(), &namespace(index));
        let status = json!({"status": {"card": {"lastCardFetchTime": fetched}}});
        api.patch_status(&agent_name(index), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("refreshing the card of {}", agent_name(index)))?;
        updates += 1;
    }
    let window = started.elapsed();
    let cpu = cpu_seconds(spoke.pid())? - cpu_before;
    let metrics_after = spoke.metrics().await?;
    let passes = (metric(&metrics_after, "tollgate_spoke_reconciles_total").unwrap_or(0.0)
        - metric(&metrics_before, "tollgate_spoke_reconciles_total").unwrap_or(0.0)) as u64;
    Ok(Churn {
        window,
        updates,
        passes,
        cpu_seconds: cpu,
    })
}

/// One cluster whose `default/kubernetes` Endpoints the bench owns, with kube-dns, the CRD and the namespaces (as
/// `spoke/tests/support` prepares it).
async fn cluster() -> Result<ControlPlane> {
    VanillaCluster::new(AgentRuntime::crd())
        .namespaces((0..NAMESPACES).map(namespace))
        .start()
        .await
}

/// Creates every AgentRuntime, then writes `status.card` of the verified ones through the status subresource.
async fn create_agents(client: &Client, agents: usize) -> Result<()> {
    let results: Vec<Result<()>> = futures::stream::iter((0..agents).map(|i| create_agent(client, i)))
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn create_agent(client: &Client, index: usize) -> Result<()> {
    let (ns, name, kind) = (namespace(index), agent_name(index), AgentKind::of(index));
    let api: Api<AgentRuntime> = Api::namespaced(client.clone(), &ns);
    let mut spec = json!({
        "type": "agent",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
    });
    if kind == AgentKind::Scoped {
        spec["egress"] = json!({"rules": [
            {
                "to": [{"ipBlock": {"cidr": format!("203.0.{}.0/24", index % 256)}}],
                "ports": [{"protocol": "TCP", "port": 443}],
            },
            {
                "to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}],
                "ports": [{"protocol": "TCP", "port": 8443}, {"protocol": "UDP", "port": 4433}],
            },
            {
                "to": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", index % 200 + 1)}}],
                "ports": [{"protocol": "TCP", "port": 5432}],
            },
        ]});
    }
    let object: AgentRuntime = serde_json::from_value(json!({
        "apiVersion": "agent.kagenti.dev/v1alpha1",
        "kind": "AgentRuntime",
        "metadata": {"name": name, "namespace": ns, "labels": {"tier": "llm"}},
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating AgentRuntime {ns}/{name}"))?;
    if kind != AgentKind::Restricted {
        let status = json!({"status": {"card": {
            "transportSecurity": "mtls",
            "attestedAgentSpiffeID": format!("spiffe://example.org/ns/{ns}/sa/{name}"),
        }}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("writing status.card of {ns}/{name}"))?;
    }
    Ok(())
}

/// What the NetworkPolicy watch has seen: how many managed policies exist and how many carry the expected mode,
/// with the instants the first appeared and all matched.
#[derive(Clone, Debug, Default)]
struct Progress {
    synced: bool,
    present: usize,
    matching: usize,
    first_at: Option<Instant>,
    all_at: Option<Instant>,
}

/// Watches the managed NetworkPolicies of every namespace (a watch, so the instants are those of the events).
fn track_policies(client: Client, expected: HashMap<Key, &'static str>) -> (watch::Receiver<Progress>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Progress::default());
    let task = tokio::spawn(async move {
        let api: Api<NetworkPolicy> = Api::all(client);
        let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        let stream = watch_stream(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut seen: HashMap<Key, String> = HashMap::new();
        let mut relist: Option<HashMap<Key, String>> = None;
        let entry = |p: &NetworkPolicy| {
            let mode = p.labels().get(LABEL_MODE).cloned().unwrap_or_default();
            ((p.namespace().unwrap_or_default(), p.name_any()), mode)
        };
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut synced = false;
            match event {
                Ok(Event::Apply(p)) => {
                    let (key, mode) = entry(&p);
                    seen.insert(key, mode);
                }
                Ok(Event::Delete(p)) => {
                    seen.remove(&entry(&p).0);
                }
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(p)) => {
                    let (key, mode) = entry(&p);
                    relist.get_or_insert_default().insert(key, mode);
                }
                Ok(Event::InitDone) => {
                    seen = relist.take().unwrap_or_default();
                    synced = true;
                }
                Err(error) => eprintln!("NetworkPolicy watch failed, retrying: {error}"),
            }
            let matching = seen
                .iter()
                .filter(|(key, mode)| expected.get(*key).is_some_and(|e| e == mode))
                .count();
            let present = seen.len();
            tx.send_modify(|p| {
                p.synced |= synced;
                p.present = present;
                p.matching = matching;
                if present == 0 {
                    p.first_at = None;
                } else if p.first_at.is_none() {
                    p.first_at = Some(now);
                }
                if matching < expected.len() {
                    p.all_at = None;
                } else if p.all_at.is_none() {
                    p.all_at = Some(now);
                }
            });
        }
    });
    (rx, task)
}

/// Deletes every managed NetworkPolicy (one deletecollection per namespace) and waits until the watch saw them go.
async fn delete_policies(client: &Client, progress: &mut watch::Receiver<Progress>) -> Result<()> {
    let selector = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    for i in 0..NAMESPACES {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace(i));
        api.delete_collection(&DeleteParams::default(), &selector).await?;
    }
    tokio::time::timeout(CONVERGE_TIMEOUT, progress.wait_for(|p| p.present == 0))
        .await
        .context("NetworkPolicies not gone after deletecollection")??;
    Ok(())
}

/// The release spoke, standalone, against `cluster` (`info` logs), with more flags; not waited for.
fn start_spoke(cluster: &Cluster, log_dir: &Path, extra: &[&str]) -> Result<Spoke> {
    let mut args = vec!["--standalone"];
    args.extend_from_slice(extra);
    Spoke::spawn_against(cluster, log_dir, Some("info"), &args)
}

/// One cold start.
#[derive(Debug)]
struct ColdStart {
    ready: Duration,
    first_policy: Duration,
    all_policies: Duration,
    /// `tollgate_spoke_policy_writes_total` and `tollgate_spoke_reconciles_total` when all policies were seen.
    writes: u64,
    reconciles: u64,
    /// CPU seconds from spawn to convergence.
    spoke_cpu: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    bench_cpu: f64,
    spoke_peak_rss_kib: u64,
    /// `elapsed_ms` of the spoke's first pass (plan, writes, events), from its log.
    first_pass: Option<Duration>,
}

/// Spawns the spoke and measures spawn → `/readyz` 200 and spawn → every expected policy seen by the watch.
async fn cold_start(
    cluster: &Cluster,
    control_plane: &ControlPlane,
    log_dir: &Path,
    progress: &mut watch::Receiver<Progress>,
    agents: usize,
) -> Result<(ColdStart, Spoke)> {
    let apiserver_pid = cluster.apiserver_process().pid();
    let etcd_pid = control_plane.etcd().process().pid();
    let cpu_before = (cpu_seconds(apiserver_pid)?, cpu_seconds(etcd_pid)?, self_cpu_seconds()?);
    let spawned = Instant::now();
    let mut spoke = start_spoke(cluster, log_dir, &[])?;
    let mut ready_at = None;
    let converged = loop {
        if ready_at.is_none() && matches!(spoke.get("/readyz").await, Ok((200, _))) {
            ready_at = Some(Instant::now());
        }
        let state = progress.borrow().clone();
        if let (Some(ready), Some(all), Some(first)) = (ready_at, state.all_at, state.first_at) {
            break (ready, first, all);
        }
        spoke.process.check_running()?;
        if spawned.elapsed() > CONVERGE_TIMEOUT {
            bail!(
                "not converged after {CONVERGE_TIMEOUT:?}: ready {}, {} present, {} of {agents} matching; spoke log:\n{}",
                ready_at.is_some(),
                state.present,
                state.matching,
                log_tail(spoke.log_path(), 40)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let spoke_cpu = cpu_seconds(spoke.pid())?;
    let peak = proc_status_kib(spoke.pid(), "VmHWM")?;
    let metrics = spoke.metrics().await?;
    let (ready, first, all) = converged;
    Ok((
        ColdStart {
            ready: ready - spawned,
            first_policy: first - spawned,
            all_policies: all - spawned,
            writes: metric(&metrics, "tollgate_spoke_policy_writes_total").unwrap_or(0.0) as u64,
            reconciles: metric(&metrics, "tollgate_spoke_reconciles_total").unwrap_or(0.0) as u64,
            spoke_cpu,
            apiserver_cpu: cpu_seconds(apiserver_pid)? - cpu_before.0,
            etcd_cpu: cpu_seconds(etcd_pid)? - cpu_before.1,
            bench_cpu: self_cpu_seconds()? - cpu_before.2,
            spoke_peak_rss_kib: peak,
            first_pass: first_pass_elapsed(spoke.log_path()),
        },
        spoke,
    ))
}

/// `elapsed_ms` of the first "Reconciled" line of a spoke log (plain format, ANSI colours stripped).
fn first_pass_elapsed(log: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("Reconciled"))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let ms = plain.split("elapsed_ms=").nth(1)?.split_whitespace().next()?;
    Some(Duration::from_millis(ms.parse().ok()?))
}

/// The cost of a pass that writes nothing.
#[derive(Debug)]
struct NoopPass {
    passes: u64,
    writes: u64,
    wall_seconds: f64,
    cpu_seconds: f64,
}

/// Annotates the kube-dns Service (the planner ignores annotations), which triggers one pass with no writes (an
/// incremental one looks at no agent; with `--full-resync-interval 0s` it looks at every agent), and measures its
/// duration (the spoke's histogram) and the spoke's CPU time around it.
async fn noop_pass(cluster: &Cluster, spoke: &Spoke) -> Result<NoopPass> {
    let pid = spoke.pid();
    let before = spoke.metrics().await?;
    let cpu_before = cpu_seconds(pid)?;
    let patch = json!({"metadata": {"annotations": {"bench.tollgate.dev/touched": format!("{:?}", Instant::now())}}});
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(cluster.client(), "kube-system");
    services
        .patch("kube-dns", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let passes_before = metric(&before, "tollgate_spoke_reconciles_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = spoke.metrics().await?;
        if metric(&after, "tollgate_spoke_reconciles_total").unwrap_or(0.0) > passes_before {
            break after;
        }
        if Instant::now() > deadline {
            bail!("no pass within 30 s of touching the kube-dns Service");
        }
    };
    // Let the CPU accounting of the pass's tail land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_seconds = cpu_seconds(pid)? - cpu_before;
    let after = {
        let late = spoke.metrics().await?;
        if metric(&late, "tollgate_spoke_reconciles_total") == metric(&after, "tollgate_spoke_reconciles_total") {
            late
        } else {
            after
        }
    };
    let delta = |name: &str| metric(&after, name).unwrap_or(0.0) - metric(&before, name).unwrap_or(0.0);
    Ok(NoopPass {
        passes: delta("tollgate_spoke_reconciles_total") as u64,
        writes: delta("tollgate_spoke_policy_writes_total") as u64,
        wall_seconds: delta("tollgate_spoke_reconcile_duration_seconds_sum"),
        cpu_seconds,
    })
}

/// Idle cost over a window.
#[derive(Debug)]
struct Idle {
    window: Duration,
    rss_max_kib: u64,
    rss_median_kib: u64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
    writes: u64,
    reconciles: u64,
    agents_by_mode: Vec<(String, u64)>,
}

/// Samples VmRSS every second and the CPU time at both ends of the window.
async fn idle_cost(spoke: &Spoke, window: Duration) -> Result<Idle> {
    let pid = spoke.pid();
    let metrics_before = spoke.metrics().await?;
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut rss = vec![proc_status_kib(pid, "VmRSS")?];
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(started.elapsed()))).await;
        rss.push(proc_status_kib(pid, "VmRSS")?);
    }
    let cpu = cpu_seconds(pid)? - cpu_before;
    let window = started.elapsed();
    let metrics_after = spoke.metrics().await?;
    let delta = |name: &str| {
        (metric(&metrics_after, name).unwrap_or(0.0) - metric(&metrics_before, name).unwrap_or(0.0)) as u64
    };
    rss.sort_unstable();
    let agents_by_mode = ["scoped", "allow-all", "baseline-only", "restricted"]
        .iter()
        .map(|mode| {
            let name = format!("tollgate_spoke_agents{{mode=\"{mode}\"}}");
            (mode.to_string(), metric(&metrics_after, &name).unwrap_or(0.0) as u64)
        })
        .collect();
    Ok(Idle {
        window,
        rss_max_kib: *rss.last().unwrap_or(&0),
        rss_median_kib: rss[rss.len() / 2],
        peak_rss_kib: proc_status_kib(pid, "VmHWM")?,
        cpu_seconds: cpu,
        writes: delta("tollgate_spoke_policy_writes_total"),
        reconciles: delta("tollgate_spoke_reconciles_total"),
        agents_by_mode,
    })
}

fn report(options: &Options, setup: Duration, runs: &[ColdStart], idle: &Idle, resync: &NoopPass, spoke: &Spoke) {
    let median = |f: &dyn Fn(&ColdStart) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let all = median(&|r| r.all_policies.as_secs_f64());
    let ready = median(&|r| r.ready.as_secs_f64());
    let rss_mib = idle.rss_max_kib as f64 / 1024.0;
    let cpu_percent = idle.cpu_seconds / idle.window.as_secs_f64() * 100.0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };

    println!();
    println!("## Results ({} AgentRuntimes, {} runs)", options.agents, runs.len());
    println!();
    println!(
        "set-up (not counted): {} AgentRuntimes + status in {:.1} s",
        options.agents,
        setup.as_secs_f64()
    );
    println!();
    println!(
        "| run | all policies | /readyz 200 | first policy | first pass (log) | writes | spoke CPU | apiserver CPU | \
         etcd CPU | bench CPU | spoke peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let pass = |r: &ColdStart| r.first_pass.map_or(f64::NAN, |d| d.as_secs_f64());
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1} MiB |",
            i + 1,
            r.all_policies.as_secs_f64(),
            r.ready.as_secs_f64(),
            r.first_policy.as_secs_f64(),
            pass(r),
            r.writes,
            r.spoke_cpu,
            r.apiserver_cpu,
            r.etcd_cpu,
            r.bench_cpu,
            r.spoke_peak_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "| median | {all:.2} s | {ready:.2} s | {:.2} s | {:.2} s | | {:.2} s | {:.2} s | {:.2} s | {:.2} s | |",
        median(&|r| r.first_policy.as_secs_f64()),
        median(&pass),
        median(&|r| r.spoke_cpu),
        median(&|r| r.apiserver_cpu),
        median(&|r| r.etcd_cpu),
        median(&|r| r.bench_cpu),
    );
    println!();
    println!(
        "idle ({:.0} s window after the last run, {} s settle): RSS max {:.1} MiB, median {:.1} MiB (peak VmHWM {:.1} MiB); \
         CPU {:.3} s = {cpu_percent:.2}% of one core; {} writes, {} passes during the window",
        idle.window.as_secs_f64(),
        SETTLE.as_secs(),
        rss_mib,
        idle.rss_median_kib as f64 / 1024.0,
        idle.peak_rss_kib as f64 / 1024.0,
        idle.cpu_seconds,
        idle.writes,
        idle.reconciles
    );
    println!(
        "CPU resolution: 1 clock tick = {:.3} s, i.e. {:.3}% of a core over this window",
        1.0 / clock_ticks(),
        100.0 / clock_ticks() / idle.window.as_secs_f64()
    );
    println!(
        "one pass with nothing to write (triggered by annotating kube-dns): {:.0} ms wall, {:.0} ms spoke CPU, \
         {} pass(es), {} writes; if it were the {} s full resync: {:.3}% of a core on average",
        resync.wall_seconds * 1000.0,
        resync.cpu_seconds * 1000.0,
        resync.passes,
        resync.writes,
        RESYNC_SECS,
        resync.cpu_seconds / RESYNC_SECS * 100.0
    );
    let modes: Vec<String> = idle.agents_by_mode.iter().map(|(m, n)| format!("{m}={n}")).collect();
    println!("agents by mode (spoke metric): {}", modes.join(", "));
    println!();
    println!("| target | measured (median) | verdict |");
    println!("|---|---|---|");
    println!(
        "| cold start to all policies ≤ {TARGET_CONVERGE_SECS} s | {all:.2} s | {} |",
        verdict(all <= TARGET_CONVERGE_SECS)
    );
    println!(
        "| idle RSS ≤ {TARGET_RSS_MIB} MiB | {rss_mib:.1} MiB (max sample) | {} |",
        verdict(rss_mib <= TARGET_RSS_MIB)
    );
    println!(
        "| idle CPU ≤ {TARGET_CPU_PERCENT}% of a core | {cpu_percent:.2}% | {} |",
        verdict(cpu_percent <= TARGET_CPU_PERCENT)
    );
    println!();
    println!("load average at the end: {}", load_average());
    println!(
        "spoke logs: {}",
        spoke.log_path().parent().unwrap_or(Path::new(".")).display()
    );
    println!(
        "reproduce: cargo bench -p tollgate-spoke --bench cold_start -- --agents {} --runs {} --idle-secs {}",
        options.agents, options.runs, options.idle_secs
    );
}
