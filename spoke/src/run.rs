//! `tollgate-spoke run`: wires the watches, the reconciler and the health/metrics server together.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::api::ApiResource;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Config};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tollgate_common::Intent;
use tollgate_common::planner::PlannerConfig;

use crate::args::{RunArgs, parse_labels, parse_namespaced};
use crate::metrics::Metrics;
use crate::reconcile::{Backoff, Reconciler, Settings};
use crate::world::{Scope, World};

/// A full pass runs at least this often, even when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

/// Default DNS Services, in order of preference: vanilla Kubernetes, then OpenShift.
const DNS_CANDIDATES: [(&str, &str); 2] = [("kube-system", "kube-dns"), ("openshift-dns", "dns-default")];

/// Parses every flag into typed settings, then runs the controller until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        cluster_id,
        cluster_labels,
        standalone,
        hub,
        kubeconfig,
        namespaces,
        operator_namespace,
        cluster_defaults_namespace,
        policy_name_suffix,
        trust_domain,
        max_card_age,
        restricted_allow_dns,
        dns_service,
        metrics_addr,
        log_level: _,
        log_format: _,
    } = args;
    let cluster_labels = parse_labels(&cluster_labels)?;
    match (standalone, hub) {
        (true, Some(_)) => bail!("--standalone and --hub exclude each other"),
        (false, Some(_)) => bail!("--hub: the hub connection is not implemented yet; run with --standalone"),
        (false, None) => bail!("either --hub ADDRESS or --standalone is required"),
        (true, None) => {}
    }
    let namespaces: Vec<String> = namespaces
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let dns_candidates = match dns_service {
        Some(text) => vec![parse_namespaced(&text, "--dns-service")?],
        None => DNS_CANDIDATES
            .iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect(),
    };
    let settings = Settings {
        planner: PlannerConfig {
            operator_namespace,
            cluster_defaults_namespace,
            name_suffix: policy_name_suffix,
            restricted_allow_dns,
        },
        trust_domain,
        max_card_age,
    };

    let client = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(&path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?;
            Client::try_from(config)?
        }
        None => Client::try_default()
            .await
            .context("no --kubeconfig given, and neither in-cluster configuration nor KUBECONFIG works")?,
    };
    let agent_card = discover_agent_card(&client).await;
    tracing::info!(
        cluster = %cluster_id,
        labels = ?cluster_labels,
        namespaces = ?namespaces,
        agent_cards = agent_card.is_some(),
        "Starting spoke (standalone: local rules only)"
    );

    let metrics = Arc::new(Metrics::new());
    let mut tasks = JoinSet::new();
    {
        let metrics = metrics.clone();
        tasks.spawn(async move {
            if let Err(error) = crate::metrics::serve(metrics_addr, metrics).await {
                tracing::error!(%error, "The health and metrics server stopped");
            }
        });
    }
    let trigger = Arc::new(Notify::new());
    let scope = Scope {
        namespaces,
        dns_candidates,
        agent_card,
    };
    let world = World::start(&client, &scope, &trigger, &mut tasks);
    tokio::select! {
        ready = world.wait_ready() => ready.context("waiting for the first list of every watched kind")?,
        () = shutdown() => return Ok(()),
    }
    tracing::info!("Every watch is synced");

    let reporter = Reporter {
        controller: "tollgate-spoke".into(),
        instance: std::env::var("HOSTNAME").ok().or(Some(cluster_id.clone())),
    };
    let mut reconciler = Reconciler::new(
        client.clone(),
        settings,
        metrics.clone(),
        Recorder::new(client, reporter),
    );
    let intent = Intent::default();
    let mut backoff = Backoff::default();
    loop {
        let report = reconciler.reconcile(&world, &intent).await;
        metrics.set_ready();
        let failed: HashSet<_> = report.errors.iter().map(|e| e.kind).collect();
        let retry = backoff.next(&failed);
        if let Some(delay) = retry {
            tracing::info!(delay_ms = delay.as_millis() as u64, "Retrying failed writes");
        }
        tokio::select! {
            () = trigger.notified() => {}
            () = tokio::time::sleep(retry.unwrap_or(RESYNC)) => {}
            () = shutdown() => break,
        }
    }
    tracing::info!("Shutting down");
    tasks.abort_all();
    Ok(())
}

/// The deprecated AgentCard kind, when its CRD is installed (checked at start).
async fn discover_agent_card(client: &Client) -> Option<ApiResource> {
    let group = kube::discovery::group(client, "agent.kagenti.dev").await.ok()?;
    group
        .resources_by_stability()
        .into_iter()
        .find(|(ar, _)| ar.kind == "AgentCard")
        .map(|(ar, _)| ar)
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
