//! The cost of `fqdn` peers: 1,000 agents sharing 200 DNS names with 30 s TTLs, in one real kube-apiserver, the
//! release `tollgate-spoke` binary asking a real DNS server (dnsmasq). Over a measured window, 10 % of the names
//! rotate one address per TTL; the bench reports DNS queries per second, the spoke's CPU, NetworkPolicy writes per
//! minute, and checks that only the policies of agents using a rotated name were rewritten.
//!
//! Run with `cargo bench -p tollgate-spoke --bench fqdn_churn` (options after `--`: `--agents N`, `--names N`,
//! `--ttl SECS`, `--window-secs N`, `--rotate-percent N`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tollgate_e2e::procfs::{cpu_seconds, load_average, metric, proc_status_kib};
use tollgate_e2e::spoke::{Spoke, VanillaCluster, run_args};
use tollgate_e2e::{DnsServer, free_port, wait_until};
use tollgate_spoke::agent_runtime::AgentRuntime;

const NAMESPACES: usize = 4;
const CONCURRENCY: usize = 32;

#[derive(Debug)]
struct Options {
    agents: usize,
    names: usize,
    ttl: u32,
    window_secs: u64,
    rotate_percent: usize,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut options = Self {
            agents: 1000,
            names: 200,
            ttl: 30,
            window_secs: 120,
            rotate_percent: 10,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || -> Result<u64> {
                let text = args.next().with_context(|| format!("{arg} needs a value"))?;
                text.parse().with_context(|| format!("{arg}: {text:?} is not a number"))
            };
            match arg.as_str() {
                "--agents" => options.agents = value()?.max(1) as usize,
                "--names" => options.names = value()?.max(1) as usize,
                "--ttl" => options.ttl = value()?.max(1) as u32,
                "--window-secs" => options.window_secs = value()?.max(1),
                "--rotate-percent" => options.rotate_percent = value()?.min(100) as usize,
                _ => {}
            }
        }
        Ok(options)
    }
}

fn name(i: usize) -> String {
    format!("n{i:03}.bench.test")
}

/// The records of every name: two addresses each, the rotated names with `generation` shifting their second one.
fn records(names: usize, rotated: usize, generation: usize) -> Vec<(String, String)> {
    (0..names)
        .flat_map(|i| {
            let second = if i < rotated { 2 + generation } else { 2 };
            [
                (name(i), format!("10.{}.{}.1", 100 + i / 250, i % 250)),
                (name(i), format!("10.{}.{}.{second}", 100 + i / 250, i % 250)),
            ]
        })
        .collect()
}

async fn set(dns: &DnsServer, records: &[(String, String)]) -> Result<()> {
    let refs: Vec<(&str, &str)> = records.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
    dns.set_records(&refs).await
}

fn namespace(i: usize) -> String {
    format!("team-{}", i % NAMESPACES)
}

/// Agent `i` uses name `i % names`.
async fn create_agent(client: &Client, i: usize, names: usize) -> Result<()> {
    let (ns, agent) = (namespace(i), format!("agent-{i:05}"));
    let api: Api<AgentRuntime> = Api::namespaced(client.clone(), &ns);
    let object: AgentRuntime = serde_json::from_value(json!({
        "apiVersion": "agent.kagenti.dev/v1alpha1",
        "kind": "AgentRuntime",
        "metadata": {"name": agent, "namespace": ns},
        "spec": {
            "type": "agent",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": agent},
            "egress": {"rules": [{"to": [{"fqdn": name(i % names)}], "ports": [{"protocol": "TCP", "port": 443}]}]},
        },
    }))?;
    api.create(&PostParams::default(), &object).await?;
    let status = json!({"status": {"card": {
        "transportSecurity": "mtls",
        "attestedAgentSpiffeID": format!("spiffe://example.org/ns/{ns}/sa/{agent}"),
    }}});
    api.patch_status(&agent, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// `(namespace, policy) → resourceVersion` of every managed policy, and how many carry a name's addresses.
async fn policies(client: &Client) -> Result<(BTreeMap<(String, String), String>, usize)> {
    let api: Api<NetworkPolicy> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tollgate-spoke"))
        .await?;
    let resolved = list
        .items
        .iter()
        .filter(|p| serde_json::to_string(&p.spec).is_ok_and(|s| s.contains("\"10.1")))
        .count();
    let versions = list
        .items
        .iter()
        .map(|p| {
            (
                (p.namespace().unwrap_or_default(), p.name_any()),
                p.resource_version().unwrap_or_default(),
            )
        })
        .collect();
    Ok((versions, resolved))
}

fn count_queries(dns: &DnsServer) -> usize {
    dns.log()
        .lines()
        .filter(|l| l.contains("query[") && l.contains(".bench.test from"))
        .count()
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let spoke_binary = Path::new(env!("CARGO_BIN_EXE_tollgate-spoke"));
    println!("tollgate-spoke fqdn churn");
    println!(
        "binary: {} ({})",
        spoke_binary.display(),
        if cfg!(debug_assertions) {
            "DEBUG BUILD: figures are not representative"
        } else {
            "optimized"
        }
    );
    println!("{options:?}; load average: {}", load_average());
    let rotated = options.names * options.rotate_percent / 100;
    let dns_records = records(options.names, rotated, 0);
    let refs: Vec<(&str, &str)> = dns_records.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
    let dns = DnsServer::start(&refs, options.ttl).await?;

    let control_plane = VanillaCluster::new(AgentRuntime::crd())
        .namespaces((0..NAMESPACES).map(namespace))
        .start()
        .await?;
    let cluster = &control_plane.clusters()[0];
    let client = cluster.client();
    let created: Vec<Result<()>> =
        futures::stream::iter((0..options.agents).map(|i| create_agent(&client, i, options.names)))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;

    let logs = tempfile::Builder::new()
        .prefix("tollgate-fqdn-churn-")
        .tempdir()?
        .keep();
    let metrics_port = free_port()?;
    let mut args = run_args("bench", cluster.kubeconfig_path(), metrics_port, None);
    args.extend(
        [
            "--standalone",
            "--fqdn-resolver",
            &dns.addr().to_string(),
            "--fqdn-min-ttl",
            &format!("{}s", options.ttl),
        ]
        .map(String::from),
    );
    let spoke = Spoke::spawn_logging_to(&args, metrics_port, &logs.join("spoke.log"))?;
    let started = Instant::now();
    wait_until(
        "every policy with its name's addresses",
        Duration::from_secs(300),
        || async {
            policies(&client)
                .await
                .is_ok_and(|(_, resolved)| resolved == options.agents)
        },
    )
    .await?;
    println!(
        "all {} policies carry their name's addresses {:.1} s after the spoke started",
        options.agents,
        started.elapsed().as_secs_f64()
    );
    // Let the first refresh after start-up pass, then measure whole TTL periods.
    tokio::time::sleep(Duration::from_secs(u64::from(options.ttl) + 2)).await;

    let spoke_metrics = || async {
        let (_, text) = spoke.get("/metrics").await?;
        anyhow::Ok(text)
    };
    let (before, _) = policies(&client).await?;
    let writes_before = metric(&spoke_metrics().await?, "tollgate_spoke_policy_writes_total").unwrap_or(0.0);
    let queries_before = count_queries(&dns);
    let cpu_before = cpu_seconds(spoke.pid())?;
    let window = Instant::now();
    let mut generation = 0;
    while window.elapsed() < Duration::from_secs(options.window_secs) {
        generation += 1;
        set(&dns, &records(options.names, rotated, generation)).await?;
        let next = Duration::from_secs(u64::from(options.ttl) * generation as u64);
        let remaining = next
            .saturating_sub(window.elapsed())
            .min(Duration::from_secs(options.window_secs).saturating_sub(window.elapsed()));
        tokio::time::sleep(remaining).await;
    }
    // The last rotation's policies are written within one TTL after the records changed.
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(spoke.pid())? - cpu_before;
    let queries = count_queries(&dns) - queries_before;
    let writes = metric(&spoke_metrics().await?, "tollgate_spoke_policy_writes_total").unwrap_or(0.0) - writes_before;
    let (after, _) = policies(&client).await?;
    let changed: BTreeSet<usize> = after
        .iter()
        .filter(|(key, version)| before.get(*key) != Some(*version))
        .filter_map(|((_, policy), _)| policy.strip_prefix("agent-")?.get(..5)?.parse().ok())
        .collect();
    let outside: Vec<&usize> = changed.iter().filter(|i| *i % options.names >= rotated).collect();
    let rss = proc_status_kib(spoke.pid(), "VmRSS")? as f64 / 1024.0;

    println!();
    println!(
        "window: {elapsed:.0} s, {generation} rotations of {rotated} of {} names",
        options.names
    );
    println!(
        "DNS queries: {queries} ({:.1}/s; one A + one AAAA per name per {} s TTL would be {:.1}/s)",
        queries as f64 / elapsed,
        options.ttl,
        2.0 * options.names as f64 / f64::from(options.ttl)
    );
    println!(
        "spoke CPU: {cpu:.2} s = {:.2} % of one core; RSS {rss:.0} MiB",
        100.0 * cpu / elapsed
    );
    println!(
        "NetworkPolicy writes: {writes:.0} ({:.0}/min); policies rewritten: {} (agents using a rotated name: {})",
        writes * 60.0 / elapsed,
        changed.len(),
        options.agents.div_ceil(options.names) * rotated
    );
    if !outside.is_empty() {
        bail!(
            "{} policies of agents whose names did not change were rewritten",
            outside.len()
        );
    }
    println!("only policies of agents using a rotated name were rewritten");
    println!(
        "reproduce: cargo bench -p tollgate-spoke --bench fqdn_churn -- --agents {} --names {} --ttl {} --window-secs {} --rotate-percent {}",
        options.agents, options.names, options.ttl, options.window_secs, options.rotate_percent
    );
    Ok(())
}
