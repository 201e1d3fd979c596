//! Whether a flood slows the hub down for everyone else: `apply` latency and the other spokes' last-receipt latency
//! on an idle hub, side by side with the same hub while 1,000 idle mTLS connections are open and one spoke sends
//! inventories as fast as its stream takes them.
//!
//! Two processes: the real `tollgate-hub serve` (bench-profile binary, embedded store in its own folder) and this
//! bench, which issues the certificates, holds the connections, runs the flooding spoke and ten watching spokes,
//! and makes the applies. Phases alternate (idle, flooded, idle, flooded, …) so that both see the same noise.
//!
//! `cargo bench -p tollgate-hub --bench flood [-- --rounds 3] [--applies 15] [--idle-connections 1000]
//! [--inventory-agents 200]`

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_e2e::hub::{BENCH_ADMIN, ServeArgs, issue_certificates_as, spawn_hub, wait_ready};
use tollgate_e2e::stats::p50_p99;
use tollgate_e2e::{RAISE_NOFILE, free_port};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::spoke_sync_client::SpokeSyncClient;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Set in the re-executed bench, once its open-file limit is raised.
const RAISED_ENV: &str = "TOLLGATE_FLOOD_RAISED";
const WATCHERS: usize = 10;
const WAIT: Duration = Duration::from_secs(30);

struct Options {
    rounds: usize,
    applies: usize,
    idle_connections: usize,
    inventory_agents: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        rounds: 3,
        applies: 15,
        idle_connections: 1_000,
        inventory_agents: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value =
            || -> anyhow::Result<usize> { Ok(args.next().with_context(|| format!("{arg} needs a value"))?.parse()?) };
        match arg.as_str() {
            "--rounds" => options.rounds = value()?,
            "--applies" => options.applies = value()?,
            "--idle-connections" => options.idle_connections = value()?,
            "--inventory-agents" => options.inventory_agents = value()?,
            // cargo bench passes --bench.
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    ensure!(
        options.rounds > 0 && options.applies > 0,
        "--rounds and --applies must be at least 1"
    );
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(RAISED_ENV).is_none() {
        let exe = std::env::current_exe()?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(RAISE_NOFILE)
            .arg(exe)
            .args(std::env::args().skip(1))
            .env(RAISED_ENV, "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let options = options()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(options))
}

fn tls(certs: &Path, identity: &str) -> anyhow::Result<ClientTlsConfig> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?))
        .identity(Identity::from_pem(
            std::fs::read(certs.join(format!("{identity}.pem")))?,
            std::fs::read(certs.join(format!("{identity}-key.pem")))?,
        ))
        .domain_name("localhost"))
}

async fn channel(port: u16, certs: &Path, identity: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls(certs, identity)?)?
        .connect()
        .await?)
}

/// Opens a SpokeSync stream for `cluster` (labels env=prod); returns its sender and inbound stream, after the first
/// intent.
async fn spoke_stream(
    port: u16,
    certs: &Path,
    cluster: &str,
) -> anyhow::Result<(mpsc::Sender<pb::SpokeMessage>, tonic::Streaming<pb::HubMessage>)> {
    let channel = channel(port, certs, &format!("spoke-{cluster}")).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::SpokeMessage {
        msg: Some(spoke_message::Msg::Hello(pb::Hello {
            cluster_id: cluster.to_string(),
            labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
            spoke_version: "flood-bench".into(),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = SpokeSyncClient::new(channel)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    loop {
        let message = tokio::time::timeout(WAIT, inbound.message())
            .await
            .context("no first intent")??
            .context("stream ended")?;
        if matches!(message.msg, Some(hub_message::Msg::Intent(_))) {
            return Ok((tx, inbound));
        }
    }
}

/// A watching spoke: records the highest revision it received and when.
struct Watcher {
    revision: AtomicU64,
    notify: tokio::sync::Notify,
}

async fn watch_intents(watcher: Arc<Watcher>, mut inbound: tonic::Streaming<pb::HubMessage>) {
    while let Ok(Some(message)) = inbound.message().await {
        if let Some(hub_message::Msg::Intent(intent)) = message.msg {
            watcher.revision.fetch_max(intent.revision, Ordering::AcqRel);
            watcher.notify.notify_waiters();
        }
    }
}

fn inventory(agents: usize, round: u64) -> pb::SpokeMessage {
    pb::SpokeMessage {
        msg: Some(spoke_message::Msg::Inventory(pb::AgentInventory {
            agents: (0..agents)
                .map(|i| pb::AgentStatus {
                    namespace: "team-a".into(),
                    name: format!("agent-{i:04}"),
                    labels: [("tier".to_string(), "llm".to_string())].into_iter().collect(),
                    verified: true,
                    verification_reason: pb::VerificationReason::MtlsVerified.into(),
                    mode: pb::EgressMode::AllowAll.into(),
                    applied_revision: round,
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

fn policy(apply: usize) -> pb::ApplyRequest {
    pb::ApplyRequest {
        sources: vec![pb::Source {
            name: "flood.yaml".into(),
            yaml: format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: llm}}\nspec:\n  \
                 clusterSelector: {{matchLabels: {{env: prod}}}}\n  egress: [{{to: [{{ipBlock: {{cidr: 10.{}.{}.0/24}}}}]}}]\n",
                apply / 256,
                apply % 256
            ),
        }],
        dry_run: false,
        prune: false,
        prune_selector: String::new(),
    }
}

#[derive(Default)]
struct Samples {
    apply_ms: Vec<f64>,
    receipt_ms: Vec<f64>,
}

async fn run(options: Options) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-flood-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let certs = dir.path().join("certs");
    let clusters: Vec<String> = (0..WATCHERS)
        .map(|i| format!("watch-{i:02}"))
        .chain(["flood".to_string(), "idle".to_string()])
        .collect();
    issue_certificates_as(
        &certs,
        BENCH_ADMIN,
        &clusters.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    let (port, metrics_port) = (free_port()?, free_port()?);
    let serve = ServeArgs::bench(port, metrics_port, &dir.path().join("data"), &certs);
    let log = dir.path().join("hub.log");
    let _hub = spawn_hub(&serve.to_args(), &[("RUST_LOG".into(), "warn".into())], true, &log)?;
    wait_ready(metrics_port, &log, WAIT).await?;
    let mut admin = AdminClient::new(channel(port, &certs, "admin-bench").await?);
    admin
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: clusters.clone(),
            labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
            ..Default::default()
        })
        .await?;

    let mut watchers = Vec::new();
    for cluster in clusters.iter().take(WATCHERS) {
        let (tx, inbound) = spoke_stream(port, &certs, cluster).await?;
        let watcher = Arc::new(Watcher {
            revision: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        });
        tokio::spawn(watch_intents(watcher.clone(), inbound));
        // Heartbeats, as a real spoke sends them: the hub drops a spoke silent for three heartbeat periods.
        let heartbeats = tx.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticker.tick().await;
                let beat = pb::SpokeMessage {
                    msg: Some(spoke_message::Msg::Heartbeat(pb::Heartbeat::default())),
                };
                if heartbeats.send(beat).await.is_err() {
                    return;
                }
            }
        });
        watchers.push((watcher, tx));
    }

    // The flooding spoke: one stream, inventories as fast as it takes them while `flooding` is on.
    let (flood_tx, flood_inbound) = spoke_stream(port, &certs, "flood").await?;
    tokio::spawn(async move {
        let mut inbound = flood_inbound;
        while let Ok(Some(_)) = inbound.message().await {}
    });
    let (flooding_tx, mut flooding) = watch::channel(false);
    let sent = Arc::new(AtomicU64::new(0));
    let flood_sent = sent.clone();
    let agents = options.inventory_agents;
    tokio::spawn(async move {
        let mut round = 0;
        loop {
            if !*flooding.borrow_and_update() {
                if flooding.changed().await.is_err() {
                    return;
                }
                continue;
            }
            round += 1;
            if flood_tx.send(inventory(agents, round)).await.is_err() {
                return;
            }
            flood_sent.fetch_add(1, Ordering::Relaxed);
        }
    });

    let mut idle = Samples::default();
    let mut flooded = Samples::default();
    let mut apply_number = 0;
    for round in 0..options.rounds {
        for flood in [false, true] {
            let mut held = Vec::new();
            if flood {
                let started = Instant::now();
                for _ in 0..options.idle_connections {
                    held.push(channel(port, &certs, "spoke-idle").await?);
                }
                let before = sent.load(Ordering::Relaxed);
                flooding_tx.send_replace(true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "round {round}: {} idle connections opened in {:.1} s; flooding ({} inventories in the first second)",
                    held.len(),
                    started.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed) - before
                );
            }
            let samples = if flood { &mut flooded } else { &mut idle };
            for _ in 0..options.applies {
                apply_number += 1;
                let started = Instant::now();
                let response = admin.apply(policy(apply_number)).await?.into_inner();
                samples.apply_ms.push(started.elapsed().as_secs_f64() * 1e3);
                for (watcher, _) in &watchers {
                    tokio::time::timeout(WAIT, async {
                        loop {
                            let notified = watcher.notify.notified();
                            if watcher.revision.load(Ordering::Acquire) >= response.revision {
                                return;
                            }
                            notified.await;
                        }
                    })
                    .await
                    .context("a watching spoke never received the revision")?;
                }
                samples.receipt_ms.push(started.elapsed().as_secs_f64() * 1e3);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if flood {
                flooding_tx.send_replace(false);
                drop(held);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let status = admin
        .fleet_status(pb::FleetStatusRequest::default())
        .await?
        .into_inner();
    let stored = status
        .clusters
        .iter()
        .find(|c| c.cluster_id == "flood")
        .map_or(0, |c| c.agents_total);
    println!(
        "flood bench: {} rounds x {} applies per phase; {} idle mTLS connections and {} inventories of {} agents \
         sent while flooding ({stored} agents stored for the flooding spoke)",
        options.rounds,
        options.applies,
        options.idle_connections,
        sent.load(Ordering::Relaxed),
        options.inventory_agents
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12}",
        "", "idle p50", "flooded p50", "idle p99", "flooded p99"
    );
    for (name, a, b) in [
        ("apply RPC (ms)", &idle.apply_ms, &flooded.apply_ms),
        ("last receipt, 10 spokes (ms)", &idle.receipt_ms, &flooded.receipt_ms),
    ] {
        let ((a50, a99), (b50, b99)) = (p50_p99(a), p50_p99(b));
        println!("{name:<28} {a50:>12.1} {b50:>12.1} {a99:>12.1} {b99:>12.1}");
        println!(
            "{:<28} {:>12} {:>12.2} {:>12} {:>12.2}   (target: within 2x)",
            "  flooded / idle",
            "",
            b50 / a50,
            "",
            b99 / a99
        );
    }
    Ok(())
}
