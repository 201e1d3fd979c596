//! What certificate renewals cost the hub: the real `tollgate-hub serve` (bench profile, mTLS, embedded store,
//! `--client-ca-key`) and one registered cluster whose spoke renews again and again, each renewal on a new mTLS
//! connection with a fresh CSR, as the real spoke does. Reported: the hub's CPU per renewal (utime + stime from
//! /proc, over batches, median), the signing alone in-process (`Signer::issue`, median), and what a fleet of 10,000
//! spokes renewing 24 h certificates at two thirds of their life costs the hub.
//!
//! `cargo bench -p tollgate-hub --bench renewal [-- --renewals 200 --batches 5]`

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rcgen::{CertificateParams, KeyPair, SanType};
use tollgate_e2e::free_port;
use tollgate_e2e::hub::{BENCH_ADMIN, START_TIMEOUT, ServeArgs, issue_certificates_as, spawn_hub, wait_ready};
use tollgate_e2e::procfs::cpu_seconds;
use tollgate_hub::server::membership::Signer;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::membership_client::MembershipClient;
use tollgate_proto::v1::{self as pb};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const CLUSTER: &str = "bench-renewal";
const FLEET: f64 = 10_000.0;
/// A 24 h certificate renewed at two thirds of its life: one renewal per spoke every 16 h.
const RENEW_EVERY_SECS: f64 = 16.0 * 3600.0;

fn csr() -> anyhow::Result<String> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(format!("tollgate://cluster/{CLUSTER}").try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

async fn channel(port: u16, certs: &Path, identity: &str) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(certs.join(format!("{identity}.pem")))?,
            std::fs::read(certs.join(format!("{identity}-key.pem")))?,
        ));
    Ok(Channel::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut renewals = 200usize;
    let mut batches = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--renewals" => renewals = args.next().context("--renewals N")?.parse()?,
            "--batches" => batches = args.next().context("--batches N")?.parse()?,
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let certs = dir.path().join("certs");
    issue_certificates_as(&certs, BENCH_ADMIN, &[CLUSTER])?;

    // Signing alone, in-process: CSR parse and signature check, certificate signed.
    let signer = Signer::load(
        &certs.join("ca.pem"),
        &certs.join("ca-key.pem"),
        &std::fs::read_to_string(certs.join("hub.pem"))?,
        Duration::from_secs(24 * 3600),
    )?;
    let requests: Vec<String> = (0..renewals).map(|_| csr()).collect::<anyhow::Result<_>>()?;
    let mut signing = Vec::new();
    for request in &requests {
        let started = Instant::now();
        signer
            .issue(CLUSTER, request, tollgate_process::unix_millis())
            .map_err(anyhow::Error::msg)?;
        signing.push(started.elapsed().as_secs_f64() * 1e6);
    }

    let (port, metrics) = (free_port()?, free_port()?);
    let serve = ServeArgs::bench(port, metrics, &dir.path().join("data"), &certs).signing();
    let log = dir.path().join("hub.log");
    let mut hub = spawn_hub(&serve.to_args(), &[("TOLLGATE_LOG".into(), "warn".into())], false, &log)?;
    let pid = hub.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        wait_ready(metrics, &log, START_TIMEOUT).await?;
        let mut admin = AdminClient::new(channel(port, &certs, "admin-bench").await?);
        admin
            .add_cluster(pb::AddClusterRequest {
                cluster_ids: vec![CLUSTER.into()],
                ..Default::default()
            })
            .await?;
        let mut per_renewal = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..batches {
            let before = cpu_seconds(pid)?;
            let started = Instant::now();
            for request in &requests {
                // A new connection per renewal, as the spoke makes one.
                let mut client = MembershipClient::new(channel(port, &certs, &format!("spoke-{CLUSTER}")).await?);
                let issued = client
                    .renew(pb::RenewRequest {
                        csr_pem: request.clone(),
                    })
                    .await?
                    .into_inner();
                ensure!(issued.certificate_pem.contains("BEGIN CERTIFICATE"));
            }
            wall.push(started.elapsed().as_secs_f64() * 1e3 / renewals as f64);
            per_renewal.push((cpu_seconds(pid)? - before) * 1e6 / renewals as f64);
        }
        anyhow::Ok((per_renewal, wall))
    });
    hub.kill();
    let (per_renewal, wall) = outcome?;
    let cpu_us = median(per_renewal.clone());
    let share = FLEET / RENEW_EVERY_SECS * cpu_us / 1e6 * 100.0;
    println!(
        "signing alone (Signer::issue, in-process): median {:.0} µs over {renewals}",
        median(signing)
    );
    println!(
        "hub CPU per renewal (new mTLS connection + Renew): median {cpu_us:.0} µs over {batches} batches of \
         {renewals} (batches: {per_renewal:.0?} µs); client-side wall time {:.2} ms per renewal",
        median(wall)
    );
    println!(
        "10,000 spokes renewing 24 h certificates every 16 h: {:.3} renewals/s, {share:.4} % of one core at the hub",
        FLEET / RENEW_EVERY_SECS
    );
    Ok(())
}
