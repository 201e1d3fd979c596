//! How long one `apply` takes to reach N spokes, over real mTLS on loopback, persistence included.
//!
//! Three processes: this bench (certificates, the admin client, the measurements), the real `tollgate-hub serve`
//! (bench-profile binary, its own data folder), and a swarm of N simulated spokes: this same binary re-executed
//! with `TOLLGATE_FANOUT_SWARM=1`, one tokio task, one TLS connection and one client certificate per spoke. Bench
//! and swarm talk in lines over the swarm's stdin / stdout; instants cross processes as CLOCK_REALTIME nanoseconds.
//!
//! Per N, on a fresh data folder: the same applies with no spoke connected (the per-apply cost that does not depend
//! on N), hub RSS idle and with N spokes connected (connected 64 at a time), hub CPU at idle (heartbeats) and over
//! the applies, the last-receipt latency of each apply (apply call start → the last spoke's receipt of that
//! revision), the apply RPC's own duration, and a reconnect storm (SIGKILL, a short outage, restart on the same
//! data folder → every spoke reconnected, with the real spoke's backoff, and holding its intent again).
//!
//! `cargo bench -p tollgate-hub --bench fanout [-- 100 1000 10000] [--applies 20] [--ack] [--data-dir DIR]
//! [--idle-secs 10] [--outage-secs 1] [--no-storm] [--setups embedded,postgres:2]`
//!
//! `--setups`: the hub setups to run side by side for each N (default `embedded`): `embedded` is one hub on its
//! SQLite store; `postgres:R` is R replicas on one PostgreSQL database (a server of the bench's own from Debian's
//! packages, via `tollgate_e2e::Postgres`), spoke `i` connected to replica `i mod R`, every apply sent to replica
//! 0, so the spokes of the other replicas are reached through the database's `NOTIFY`. Hub CPU and RSS are summed
//! over the replicas; the reconnect storm runs for `embedded` only.
//!
//! `--ack`: spokes acknowledge every revision (as the real spoke does after applying it), which the hub records;
//! on the embedded store the bench then polls the database (read-only) until every acknowledgement is recorded.
//! `--data-dir`: where the hub's data folder and the certificates go (default: the target's tmp folder, on disk).
//! `TOLLGATE_FANOUT_HUB_WRAPPER="valgrind --tool=massif"` runs the hub under a profiler.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};

/// Set (to anything) in the swarm process.
const SWARM_ENV: &str = "TOLLGATE_FANOUT_SWARM";
/// The hub replicas' URLs, comma-separated; spoke `i` uses the `i mod R`-th.
const SWARM_URL_ENV: &str = "TOLLGATE_FANOUT_URL";
const SWARM_CERTS_ENV: &str = "TOLLGATE_FANOUT_CERTS";
const SWARM_N_ENV: &str = "TOLLGATE_FANOUT_N";
const SWARM_ACK_ENV: &str = "TOLLGATE_FANOUT_ACK";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(SWARM_ENV).is_some() {
        return swarm::run();
    }
    bench::run()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn spoke_id(index: usize) -> String {
    format!("bench-{index:05}")
}

/// The bench side: certificates, hub and swarm processes, admin calls, measurements.
mod bench {
    use super::*;

    use tollgate_e2e::hub::{BENCH_ADMIN, ServeArgs, run_certs};
    use tollgate_e2e::stats::p50_p99;
    use tollgate_e2e::{RAISE_NOFILE, free_port};
    use tollgate_hub::certs::{Leaf, issue};
    use tollgate_proto::v1::{self as pb, admin_client::AdminClient};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    /// Lines of `ipBlock` peers in the applied policy: its canonical YAML is about 4 KB.
    const PEERS: usize = 87;
    /// Policy numbers of the applies made before any spoke connects.
    const BASELINE: usize = 1_000;
    /// Pause after each apply's last receipt, before the next apply.
    const GAP: Duration = Duration::from_millis(200);
    const READY_TIMEOUT: Duration = Duration::from_secs(1200);
    const REACHED_TIMEOUT: Duration = Duration::from_secs(300);
    const STORM_TIMEOUT: Duration = Duration::from_secs(900);

    #[derive(Debug)]
    struct Options {
        ns: Vec<usize>,
        applies: usize,
        ack: bool,
        data_root: PathBuf,
        idle: Duration,
        outage: Duration,
        storm: bool,
        setups: Vec<Setup>,
    }

    /// How the hub runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Setup {
        Embedded,
        Postgres(usize),
    }

    impl Setup {
        fn parse(text: &str) -> anyhow::Result<Self> {
            match text.split_once(':') {
                None if text == "embedded" => Ok(Self::Embedded),
                Some(("postgres", replicas)) => {
                    let replicas: usize = replicas.parse().with_context(|| format!("--setups {text:?}"))?;
                    ensure!(replicas >= 1, "--setups {text:?}: at least one replica");
                    Ok(Self::Postgres(replicas))
                }
                _ => bail!("--setups {text:?}: expected embedded or postgres:R"),
            }
        }

        fn replicas(self) -> usize {
            match self {
                Self::Embedded => 1,
                Self::Postgres(replicas) => replicas,
            }
        }

        fn name(self) -> String {
            match self {
                Self::Embedded => "one hub, embedded store".to_string(),
                Self::Postgres(replicas) => format!("{replicas} replica(s) on PostgreSQL"),
            }
        }
    }

    fn options() -> anyhow::Result<Options> {
        let mut options = Options {
            ns: Vec::new(),
            applies: 20,
            ack: false,
            data_root: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
            idle: Duration::from_secs(10),
            outage: Duration::from_secs(1),
            storm: true,
            setups: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--applies" => options.applies = value("--applies")?.parse()?,
                "--ack" => options.ack = true,
                "--data-dir" => options.data_root = PathBuf::from(value("--data-dir")?),
                "--idle-secs" => options.idle = Duration::from_secs(value("--idle-secs")?.parse()?),
                "--outage-secs" => options.outage = Duration::from_secs(value("--outage-secs")?.parse()?),
                "--no-storm" => options.storm = false,
                "--setups" => {
                    for setup in value("--setups")?.split(',') {
                        options.setups.push(Setup::parse(setup.trim())?);
                    }
                }
                n if n.chars().all(|c| c.is_ascii_digit() || c == '_' || c == ',') => {
                    options.ns.push(n.replace(['_', ','], "").parse()?);
                }
                other => bail!("unknown argument {other:?}"),
            }
        }
        if options.ns.is_empty() {
            options.ns = vec![100, 1_000, 10_000];
        }
        if options.setups.is_empty() {
            options.setups = vec![Setup::Embedded];
        }
        ensure!(options.applies > 0, "--applies must be at least 1");
        Ok(options)
    }

    fn sh(script: &str) -> anyhow::Result<String> {
        let output = Command::new("sh").arg("-c").arg(script).output()?;
        ensure!(output.status.success(), "sh -c {script:?} failed");
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    fn hub_bin() -> &'static str {
        env!("CARGO_BIN_EXE_tollgate-hub")
    }

    /// utime + stime of a process, in clock ticks (threads that exited included).
    fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    }

    fn rss_kib(pid: u32) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?)
    }

    /// A child process killed (SIGKILL) when dropped.
    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    struct Hub {
        process: Killed,
        /// When the hub logged "Hub serving", after its spawn.
        serving_after: Duration,
    }

    /// Starts `tollgate-hub serve` with the open-file limit raised; its log is appended to `log`. `store`: the
    /// shared store's URL and this replica's id; `None`: the embedded store in `data`.
    fn start_hub(
        port: u16,
        metrics_port: u16,
        data: &Path,
        store: Option<(&str, usize)>,
        certs: &Path,
        log: &Path,
    ) -> anyhow::Result<Hub> {
        let offset = std::fs::metadata(log).map_or(0, |m| m.len());
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let started = Instant::now();
        // For profiling: `TOLLGATE_FANOUT_HUB_WRAPPER="valgrind --tool=massif"` runs the hub under that command.
        let wrapper = std::env::var("TOLLGATE_FANOUT_HUB_WRAPPER").unwrap_or_default();
        let mut serve = ServeArgs::bench(port, metrics_port, data, certs);
        if let Some((url, replica)) = store {
            serve = serve.store(url, replica);
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(RAISE_NOFILE)
            .args(wrapper.split_whitespace())
            .arg(hub_bin())
            .args(serve.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        let mut process = Killed(child);
        loop {
            let text = std::fs::read(log)?;
            let text = String::from_utf8_lossy(&text[usize::try_from(offset)?..]).into_owned();
            if text.contains("Hub serving") {
                return Ok(Hub {
                    process,
                    serving_after: started.elapsed(),
                });
            }
            if let Some(status) = process.0.try_wait()? {
                bail!("the hub exited ({status}): {text}");
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the hub did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    struct Swarm {
        process: Killed,
        stdin: ChildStdin,
        lines: std_mpsc::Receiver<String>,
    }

    impl Swarm {
        fn spawn(n: usize, ports: &[u16], certs: &Path, ack: bool) -> anyhow::Result<Self> {
            let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(RAISE_NOFILE)
                .arg(std::env::current_exe()?)
                .env(SWARM_ENV, "1")
                .env(SWARM_URL_ENV, urls.join(","))
                .env(SWARM_CERTS_ENV, certs)
                .env(SWARM_N_ENV, n.to_string())
                .env(SWARM_ACK_ENV, if ack { "1" } else { "0" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdin = child.stdin.take().context("swarm stdin")?;
            let stdout = child.stdout.take().context("swarm stdout")?;
            let (tx, lines) = std_mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            Ok(Self {
                process: Killed(child),
                stdin,
                lines,
            })
        }

        fn pid(&self) -> u32 {
            self.process.0.id()
        }

        fn send(&mut self, line: &str) -> anyhow::Result<()> {
            writeln!(self.stdin, "{line}")?;
            self.stdin.flush()?;
            Ok(())
        }

        /// The next line, which must start with `word`; its other words.
        fn expect(&self, word: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
            let line = self
                .lines
                .recv_timeout(timeout)
                .with_context(|| format!("no {word:?} from the swarm within {timeout:?}"))?;
            let mut words = line.split_whitespace().map(str::to_string);
            ensure!(
                words.next().as_deref() == Some(word),
                "expected {word:?} from the swarm, got {line:?}"
            );
            Ok(words.collect())
        }
    }

    fn number(words: &[String], index: usize) -> anyhow::Result<u64> {
        words
            .get(index)
            .with_context(|| format!("missing field {index} in {words:?}"))?
            .parse()
            .with_context(|| format!("field {index} of {words:?}"))
    }

    /// A ~4 KB policy selecting env=prod; `apply` changes its first peer so every apply is a new revision.
    fn policy(apply: usize) -> String {
        let mut yaml = format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: fanout\nspec:\n  \
             clusterSelector: {{matchLabels: {{env: prod}}}}\n  egress:\n    - to:\n        - ipBlock: {{cidr: \
             10.{}.{}.0/24}}\n",
            apply / 256,
            apply % 256
        );
        for k in 0..PEERS {
            yaml.push_str(&format!(
                "        - ipBlock: {{cidr: 172.{}.{}.0/24}}\n",
                16 + k / 256,
                k % 256
            ));
        }
        yaml.push_str("      ports:\n        - {protocol: TCP, port: 443}\n");
        yaml
    }

    fn apply_request(apply: usize) -> pb::ApplyRequest {
        pb::ApplyRequest {
            sources: vec![pb::Source {
                name: "fanout.yaml".into(),
                yaml: policy(apply),
            }],
            dry_run: false,
            prune: false,
            prune_selector: String::new(),
        }
    }

    async fn admin_client(port: u16, certs: &Path) -> anyhow::Result<AdminClient<Channel>> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?))
            .identity(Identity::from_pem(
                std::fs::read(certs.join("admin-bench.pem"))?,
                std::fs::read(certs.join("admin-bench-key.pem"))?,
            ))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(AdminClient::new(channel))
    }

    #[derive(Debug, Default)]
    struct Outcome {
        n: usize,
        setup: String,
        connect_all: Duration,
        rss_idle_kib: u64,
        rss_connected_kib: u64,
        rss_after_applies_kib: u64,
        idle_cpu_per_s: f64,
        last_ms: Vec<f64>,
        first_ms: Vec<f64>,
        rpc_ms: Vec<f64>,
        baseline_rpc_ms: Vec<f64>,
        baseline_cpu_s: f64,
        message_bytes: u64,
        apply_cpu_s: f64,
        apply_background_s: f64,
        swarm_cpu_s: f64,
        swarm_rss_kib: u64,
        drops: u64,
        /// With `--ack` on the embedded store: per apply, from the last spoke's receipt until the store holds every
        /// spoke's acknowledgement of the revision.
        acks_recorded_ms: Vec<f64>,
        storm: Option<Storm>,
    }

    #[derive(Debug)]
    struct Storm {
        serving_after: Duration,
        settled: Duration,
        unchanged: u64,
        attempts: u64,
        hub_cpu_s: f64,
        /// The simulated spokes' CPU from the kill until they all had their intent again.
        swarm_cpu_s: f64,
        rss_kib: u64,
        /// TLS handshakes of the restarted hub: (full, resumed from a session ticket); `None` from a hub that does not
        /// count them (an older one run through `TOLLGATE_FANOUT_HUB_WRAPPER`).
        handshakes: Option<(f64, f64)>,
    }

    /// The restarted hub's handshake counts, from its `/metrics`.
    fn handshakes(metrics_port: u16) -> anyhow::Result<Option<(f64, f64)>> {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let count = |kind: &str| {
            let series = format!("tollgate_hub_tls_handshakes_total{{kind=\"{kind}\"}}");
            tollgate_e2e::procfs::metric(&text, &series)
        };
        Ok(count("full").zip(count("resumed")))
    }

    impl Outcome {
        /// Hub CPU per delivery: raw; net of the idle background; net of the background and of the same applies
        /// with no spoke connected.
        fn cpu_us_per_delivery(&self) -> (f64, f64, f64) {
            let deliveries = (self.n * self.last_ms.len()) as f64;
            let net = self.apply_cpu_s - self.apply_background_s;
            (
                self.apply_cpu_s * 1e6 / deliveries,
                net.max(0.0) * 1e6 / deliveries,
                (net - self.baseline_cpu_s).max(0.0) * 1e6 / deliveries,
            )
        }

        fn kib_per_spoke(&self) -> f64 {
            (self.rss_connected_kib as f64 - self.rss_idle_kib as f64) / self.n as f64
        }
    }

    /// The CPU ticks and RSS of every replica, summed.
    fn hubs_cpu_ticks(hubs: &[Hub]) -> anyhow::Result<u64> {
        hubs.iter().map(|h| cpu_ticks(h.process.0.id())).sum()
    }

    fn hubs_rss_kib(hubs: &[Hub]) -> anyhow::Result<u64> {
        hubs.iter().map(|h| rss_kib(h.process.0.id())).sum()
    }

    fn run_n(
        options: &Options,
        setup: Setup,
        work: &Path,
        certs: &Path,
        clk_tck: f64,
        n: usize,
    ) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome {
            n,
            setup: setup.name(),
            ..Outcome::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // The shared store's server lives as long as this run.
        let postgres = match setup {
            Setup::Embedded => None,
            Setup::Postgres(_) => {
                let server = runtime.block_on(tollgate_e2e::Postgres::start())?;
                let url = runtime.block_on(server.create_database())?;
                Some((server, url))
            }
        };
        let tag = format!("{n}-{}", setup.replicas());
        let data = work.join(format!("data-{tag}"));
        let log = work.join(format!("hub-{tag}.log"));
        let ports: Vec<(u16, u16)> = (0..setup.replicas())
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut hubs = Vec::new();
        for (replica, (port, metrics_port)) in ports.iter().enumerate() {
            let store = postgres.as_ref().map(|(_, url)| (url.as_str(), replica));
            hubs.push(start_hub(*port, *metrics_port, &data, store, certs, &log)?);
        }
        let (port, metrics_port) = ports[0];
        std::thread::sleep(Duration::from_secs(1));
        outcome.rss_idle_kib = hubs_rss_kib(&hubs)?;

        // The same applies with no spoke connected: the per-apply cost that does not depend on N.
        // The runtime's worker thread keeps the admin connection answering the hub's keepalive pings while this
        // thread sleeps.
        let mut admin = runtime.block_on(admin_client(port, certs))?;
        // Every simulated spoke's cluster is registered with the labels the documents select, in one call.
        runtime.block_on(admin.add_cluster(pb::AddClusterRequest {
            cluster_ids: (0..n).map(spoke_id).collect(),
            labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
            ..Default::default()
        }))?;
        let mut revision = 0;
        let ticks = hubs_cpu_ticks(&hubs)?;
        for apply in 1..=options.applies {
            let call = Instant::now();
            revision = runtime
                .block_on(admin.apply(apply_request(BASELINE + apply)))?
                .into_inner()
                .revision;
            outcome.baseline_rpc_ms.push(call.elapsed().as_secs_f64() * 1e3);
        }
        outcome.baseline_cpu_s = (hubs_cpu_ticks(&hubs)? - ticks) as f64 / clk_tck;
        // Every replica has seen the baseline revisions before the spokes connect.
        std::thread::sleep(Duration::from_millis(500));

        let started = Instant::now();
        let swarm_ports: Vec<u16> = ports.iter().map(|(p, _)| *p).collect();
        let mut swarm = Swarm::spawn(n, &swarm_ports, certs, options.ack)?;
        swarm.expect("ready", READY_TIMEOUT)?;
        outcome.connect_all = started.elapsed();
        eprintln!(
            "[N={n}] {n} spokes connected in {:.1} s",
            outcome.connect_all.as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(2));
        outcome.rss_connected_kib = hubs_rss_kib(&hubs)?;

        // Background: heartbeats and keepalive pings of N idle streams.
        let (ticks, at) = (hubs_cpu_ticks(&hubs)?, Instant::now());
        std::thread::sleep(options.idle);
        outcome.idle_cpu_per_s = (hubs_cpu_ticks(&hubs)? - ticks) as f64 / clk_tck / at.elapsed().as_secs_f64();

        let (hub_ticks, swarm_ticks, window) = (hubs_cpu_ticks(&hubs)?, cpu_ticks(swarm.pid())?, Instant::now());
        for apply in 1..=options.applies {
            revision += 1;
            swarm.send(&format!("expect {revision}"))?;
            swarm.expect("armed", Duration::from_secs(30))?;
            let request = apply_request(apply);
            let start = now_ns();
            let call = Instant::now();
            let response = runtime.block_on(admin.apply(request))?.into_inner();
            let rpc = call.elapsed();
            ensure!(
                response.revision == revision,
                "apply {apply} made revision {}, expected {revision}",
                response.revision
            );
            let reached = swarm.expect("reached", REACHED_TIMEOUT)?;
            let ms = |ns: u64| ns.saturating_sub(start) as f64 / 1e6;
            outcome.first_ms.push(ms(number(&reached, 1)?));
            outcome.last_ms.push(ms(number(&reached, 2)?));
            if options.ack && setup == Setup::Embedded {
                let recorded = acks_recorded(&data, revision, n)?;
                outcome
                    .acks_recorded_ms
                    .push(recorded.saturating_sub(number(&reached, 2)?) as f64 / 1e6);
            }
            outcome.message_bytes = number(&reached, 3)?;
            outcome.rpc_ms.push(rpc.as_secs_f64() * 1e3);
            eprintln!(
                "[N={n}] apply {apply}: rpc {:.1} ms, first {:.1} ms, last {:.1} ms",
                rpc.as_secs_f64() * 1e3,
                outcome.first_ms.last().unwrap(),
                outcome.last_ms.last().unwrap()
            );
            std::thread::sleep(GAP);
        }
        let elapsed = window.elapsed().as_secs_f64();
        outcome.apply_cpu_s = (hubs_cpu_ticks(&hubs)? - hub_ticks) as f64 / clk_tck;
        outcome.apply_background_s = outcome.idle_cpu_per_s * elapsed;
        outcome.swarm_cpu_s = (cpu_ticks(swarm.pid())? - swarm_ticks) as f64 / clk_tck;
        outcome.rss_after_applies_kib = hubs_rss_kib(&hubs)?;
        outcome.swarm_rss_kib = rss_kib(swarm.pid())?;
        drop(admin);

        swarm.send("stats")?;
        outcome.drops = number(&swarm.expect("stats", Duration::from_secs(30))?, 0)?;

        if options.storm && setup == Setup::Embedded {
            swarm.send("storm")?;
            swarm.expect("armed-storm", Duration::from_secs(30))?;
            hubs.clear();
            let swarm_ticks = cpu_ticks(swarm.pid())?;
            std::thread::sleep(options.outage);
            let start = now_ns();
            let hub = start_hub(port, metrics_port, &data, None, certs, &log)?;
            let hub_pid = hub.process.0.id();
            eprintln!(
                "[N={n}] hub restarted (serving after {:.0} ms)",
                hub.serving_after.as_secs_f64() * 1e3
            );
            let stormed = swarm.expect("stormed", STORM_TIMEOUT)?;
            let hub_cpu_s = cpu_ticks(hub_pid)? as f64 / clk_tck;
            let swarm_cpu_s = (cpu_ticks(swarm.pid())? - swarm_ticks) as f64 / clk_tck;
            let storm = Storm {
                serving_after: hub.serving_after,
                settled: Duration::from_nanos(number(&stormed, 0)?.saturating_sub(start)),
                unchanged: number(&stormed, 1)?,
                attempts: number(&stormed, 2)?,
                hub_cpu_s,
                swarm_cpu_s,
                rss_kib: rss_kib(hub_pid)?,
                handshakes: handshakes(metrics_port)?,
            };
            eprintln!("[N={n}] storm settled in {:.2} s", storm.settled.as_secs_f64());
            outcome.storm = Some(storm);
            hubs.push(hub);
        }
        swarm.send("quit")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while swarm.process.0.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(hubs);
        drop(postgres);
        Ok(outcome)
    }

    /// Polls the embedded store (read-only, beside the serving hub: WAL mode lets a reader in) until `n` clusters
    /// have `revision` recorded as applied; returns that instant (CLOCK_REALTIME nanoseconds).
    fn acks_recorded(data: &Path, revision: u64, n: usize) -> anyhow::Result<u64> {
        let path = data.join(tollgate_hub::server::store::sqlite::DATABASE_FILE);
        let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        db.busy_timeout(Duration::from_secs(5))?;
        let revision = i64::try_from(revision)?;
        let deadline = Instant::now() + REACHED_TIMEOUT;
        loop {
            let recorded: i64 = db.query_row(
                "SELECT COUNT(*) FROM clusters WHERE applied_revision >= ?1",
                [revision],
                |row| row.get(0),
            )?;
            if usize::try_from(recorded)? >= n {
                return Ok(now_ns());
            }
            ensure!(
                Instant::now() < deadline,
                "only {recorded} of {n} acknowledgements of revision {revision} recorded"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn report(outcome: &Outcome) {
        let n = outcome.n;
        let (last_p50, last_p99) = p50_p99(&outcome.last_ms);
        let (first_p50, first_p99) = p50_p99(&outcome.first_ms);
        let (rpc_p50, rpc_p99) = p50_p99(&outcome.rpc_ms);
        let (cpu_raw, cpu_net, cpu_marginal) = outcome.cpu_us_per_delivery();
        let (base_p50, _) = p50_p99(&outcome.baseline_rpc_ms);
        let deliveries = (n * outcome.last_ms.len()) as f64;
        println!(
            "== N = {n}, {}: {} applies, IntentRevision {} bytes",
            outcome.setup,
            outcome.last_ms.len(),
            outcome.message_bytes
        );
        println!(
            "   all spokes connected (initial, 64 concurrent connects): {:.1} s",
            outcome.connect_all.as_secs_f64()
        );
        println!("   last receipt  median {last_p50:.1} ms  p99 {last_p99:.1} ms");
        println!("   first receipt median {first_p50:.1} ms  p99 {first_p99:.1} ms");
        println!("   apply RPC     median {rpc_p50:.1} ms  p99 {rpc_p99:.1} ms");
        println!("   apply RPC with no spoke connected: median {base_p50:.1} ms");
        println!(
            "   hub CPU over the applies {:.2} s (idle background {:.3} s/s → {:.2} s; the same applies with no spoke \
             {:.2} s): {cpu_raw:.1} µs/delivery raw, {cpu_net:.1} net of background, {cpu_marginal:.1} net of both",
            outcome.apply_cpu_s, outcome.idle_cpu_per_s, outcome.apply_background_s, outcome.baseline_cpu_s
        );
        println!(
            "   swarm CPU over the applies {:.2} s ({:.1} µs/receipt), swarm RSS {} KiB",
            outcome.swarm_cpu_s,
            outcome.swarm_cpu_s * 1e6 / deliveries,
            outcome.swarm_rss_kib
        );
        println!(
            "   hub RSS idle {} KiB, connected {} KiB, after applies {} KiB: {:.1} KiB/spoke ({:.1} after applies)",
            outcome.rss_idle_kib,
            outcome.rss_connected_kib,
            outcome.rss_after_applies_kib,
            outcome.kib_per_spoke(),
            (outcome.rss_after_applies_kib as f64 - outcome.rss_idle_kib as f64) / n as f64
        );
        println!("   reconnects during the applies (streams dropped): {}", outcome.drops);
        if !outcome.acks_recorded_ms.is_empty() {
            let (p50, _) = p50_p99(&outcome.acks_recorded_ms);
            println!(
                "   all {n} acknowledgements in the store after the last receipt: median {p50:.1} ms  max {:.1} ms",
                outcome.acks_recorded_ms.iter().copied().fold(0.0, f64::max)
            );
        }
        if let Some(storm) = &outcome.storm {
            println!(
                "   reconnect storm: serving after {:.0} ms, all {n} back with their intent after {:.2} s \
                 ({} unchanged, {} connection attempts; TLS handshakes: {}); hub CPU {:.1} s, RSS {} KiB; \
                 simulated spokes' CPU {:.1} s",
                storm.serving_after.as_secs_f64() * 1e3,
                storm.settled.as_secs_f64(),
                storm.unchanged,
                storm.attempts,
                storm
                    .handshakes
                    .map_or("not counted".to_string(), |(full, resumed)| format!(
                        "{full} full, {resumed} resumed"
                    )),
                storm.hub_cpu_s,
                storm.rss_kib,
                storm.swarm_cpu_s
            );
        }
        let target_ms = match n {
            0..=100 => 10.0,
            101..=1_000 => 50.0,
            _ => 500.0,
        };
        println!(
            "   targets: last-receipt median ≤ {target_ms} ms {}; ≤ 50 µs/delivery {}; ≤ 64 KiB/spoke {}; storm ≤ 20 s {}",
            verdict(last_p50 <= target_ms),
            verdict(cpu_marginal <= 50.0),
            verdict(outcome.kib_per_spoke() <= 64.0),
            outcome
                .storm
                .as_ref()
                .map_or("not run", |s| verdict(s.settled <= Duration::from_secs(20)))
        );
    }

    fn verdict(met: bool) -> &'static str {
        if met { "met" } else { "MISSED" }
    }

    pub fn run() -> anyhow::Result<()> {
        let options = options()?;
        let clk_tck: f64 = sh("getconf CLK_TCK")?.parse()?;
        let hard = sh("ulimit -Hn")?;
        let hard_nofile = if hard == "unlimited" { u64::MAX } else { hard.parse()? };
        let mut ns = Vec::new();
        for &n in &options.ns {
            // Each process holds one socket per spoke plus a few hundred other descriptors.
            if n as u64 + 512 > hard_nofile {
                eprintln!("N = {n} skipped: the hard open-file limit is {hard_nofile}, one process needs {n} + ~512");
            } else {
                ns.push(n);
            }
        }
        let max_n = ns.iter().copied().max().context("nothing to run")?;
        std::fs::create_dir_all(&options.data_root)?;
        let work = tempfile::Builder::new()
            .prefix("fanout-")
            .tempdir_in(&options.data_root)?;
        let certs = work.path().join("certs");
        let at = Instant::now();
        run_certs(
            &certs,
            &[
                &["init"],
                &["hub"],
                &["admin", "--name", BENCH_ADMIN],
                &["spoke", "--cluster-id", &spoke_id(0)],
            ],
        )?;
        let cli_certs = at.elapsed();
        let at = Instant::now();
        for index in 1..max_n {
            issue(
                &certs,
                &certs,
                &Leaf::Spoke {
                    cluster_id: spoke_id(index),
                },
            )?;
        }
        let in_process = at.elapsed();
        println!(
            "fan-out bench: hub {}, data in {}, uptime: {}",
            hub_bin(),
            work.path().display(),
            sh("uptime")?
        );
        println!(
            "certificates: CA, hub, admin and 1 spoke with the binary in {:.0} ms (4 processes); {} more spoke \
             certificates in-process in {:.2} s ({:.2} ms each); not timed below",
            cli_certs.as_secs_f64() * 1e3,
            max_n - 1,
            in_process.as_secs_f64(),
            in_process.as_secs_f64() * 1e3 / (max_n.max(2) - 1) as f64
        );
        println!("open files: hard limit {hard_nofile}, hub and swarm raise their soft limit to it");
        for n in ns {
            for &setup in &options.setups {
                let outcome = run_n(&options, setup, work.path(), &certs, clk_tck, n)?;
                report(&outcome);
                println!("   uptime after: {}", sh("uptime")?);
            }
        }
        Ok(())
    }
}

/// The simulated spokes: one task, one TLS connection and one certificate per spoke, reconnecting with the real
/// spoke's backoff. Commands on stdin, reports on stdout.
mod swarm {
    use super::*;

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use prost::Message as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
    use tokio_stream::wrappers::ReceiverStream;
    use tollgate_proto::v1::spoke_sync_client::SpokeSyncClient;
    use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
    use tonic::transport::Endpoint;

    /// As the real spoke (spoke/src/hub_client.rs).
    const HEARTBEAT: Duration = Duration::from_secs(10);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    const BACKOFF_FIRST: Duration = Duration::from_millis(250);
    const BACKOFF_CAP: Duration = Duration::from_secs(30);
    /// Connection attempts in flight while the swarm first connects (not during the storm).
    const INITIAL_CONCURRENCY: usize = 64;
    const WAIT: Duration = Duration::from_secs(900);

    #[derive(Debug)]
    struct Shared {
        n: usize,
        ack: bool,
        first_intents: AtomicUsize,
        ready: Notify,
        target: AtomicU64,
        reached: AtomicUsize,
        first_ns: AtomicU64,
        last_ns: AtomicU64,
        bytes: AtomicU64,
        reached_all: Notify,
        storm_epoch: AtomicU64,
        stormed: AtomicUsize,
        storm_last_ns: AtomicU64,
        storm_unchanged: AtomicU64,
        storm_all: Notify,
        attempts: AtomicU64,
        errors: Mutex<BTreeMap<String, u64>>,
    }

    /// What one spoke remembers across its streams.
    #[derive(Debug, Default)]
    struct SpokeState {
        index: usize,
        last_revision: u64,
        /// The store and digest of the intent held, sent in the hello so a reconnect resumes.
        store_id: String,
        digest: String,
        connected_once: bool,
        storm_epoch: u64,
    }

    impl Shared {
        fn count(&self, counter: &AtomicUsize, notify: &Notify) {
            if counter.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
                notify.notify_waiters();
            }
        }

        fn on_intent(&self, state: &mut SpokeState, intent: &pb::IntentRevision, first_of_stream: bool, now: u64) {
            if first_of_stream {
                if !state.connected_once {
                    state.connected_once = true;
                    self.count(&self.first_intents, &self.ready);
                }
                let epoch = self.storm_epoch.load(Ordering::Acquire);
                if epoch > state.storm_epoch {
                    state.storm_epoch = epoch;
                    self.storm_last_ns.fetch_max(now, Ordering::AcqRel);
                    if intent.unchanged {
                        self.storm_unchanged.fetch_add(1, Ordering::AcqRel);
                    }
                    self.count(&self.stormed, &self.storm_all);
                }
            }
            if intent.revision > state.last_revision {
                let target = self.target.load(Ordering::Acquire);
                if target > 0 && state.last_revision < target && intent.revision >= target {
                    self.first_ns.fetch_min(now, Ordering::AcqRel);
                    self.last_ns.fetch_max(now, Ordering::AcqRel);
                    self.bytes.fetch_max(intent.encoded_len() as u64, Ordering::AcqRel);
                    self.count(&self.reached, &self.reached_all);
                }
                state.last_revision = intent.revision;
            }
            if !intent.unchanged {
                state.store_id.clone_from(&intent.store_id);
                state.digest.clone_from(&intent.digest);
            }
        }

        fn error(&self, error: String) {
            let mut errors = self.errors.lock().unwrap();
            *errors.entry(error.chars().take(160).collect()).or_default() += 1;
        }

        /// Waits until `counter` reaches N (or the wait times out); whether it did.
        async fn wait_all(&self, counter: &AtomicUsize, notify: &Notify) -> bool {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let notified = notify.notified();
                if counter.load(Ordering::Acquire) >= self.n {
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        }
    }

    fn env(name: &str) -> anyhow::Result<String> {
        std::env::var(name).with_context(|| format!("{name} is not set"))
    }

    pub fn run() -> anyhow::Result<()> {
        let n: usize = env(SWARM_N_ENV)?.parse()?;
        let url = env(SWARM_URL_ENV)?;
        let certs = PathBuf::from(env(SWARM_CERTS_ENV)?);
        let ack = env(SWARM_ACK_ENV)? == "1";
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(main(n, url, certs, ack))?;
        // Do not wait for the spoke tasks to wind down.
        std::process::exit(0)
    }

    async fn main(n: usize, url: String, certs: PathBuf, ack: bool) -> anyhow::Result<()> {
        let shared = Arc::new(Shared {
            n,
            ack,
            first_intents: AtomicUsize::new(0),
            ready: Notify::new(),
            target: AtomicU64::new(0),
            reached: AtomicUsize::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reached_all: Notify::new(),
            storm_epoch: AtomicU64::new(0),
            stormed: AtomicUsize::new(0),
            storm_last_ns: AtomicU64::new(0),
            storm_unchanged: AtomicU64::new(0),
            storm_all: Notify::new(),
            attempts: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        });
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
            roots.add(ca?)?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connecting = Arc::new(Semaphore::new(INITIAL_CONCURRENCY));
        for index in 0..n {
            let id = spoke_id(index);
            let chain =
                CertificateDer::pem_file_iter(certs.join(format!("spoke-{id}.pem")))?.collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(certs.join(format!("spoke-{id}-key.pem")))?;
            // As the real spoke (spoke/src/hub_tls.rs): the session the hub gave a ticket for is resumed at the next
            // connection, from a store of this spoke's own.
            let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)?;
            tls.alpn_protocols = vec![b"h2".to_vec()];
            tls.resumption =
                rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(1)));
            let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let urls: Vec<&str> = url.split(',').collect();
            let url = urls[index % urls.len()].to_string();
            tokio::spawn(spoke(shared.clone(), url, index, tls, connecting.clone()));
        }
        if !shared.wait_all(&shared.first_intents, &shared.ready).await {
            report_errors(&shared);
            bail!(
                "only {} of {n} spokes received their first intent",
                shared.first_intents.load(Ordering::Acquire)
            );
        }
        println!("ready {n}");
        // Commands, read on a thread (tokio's stdin needs a feature the workspace does not enable).
        let (commands, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if commands.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["expect", revision] => {
                    let revision: u64 = revision.parse()?;
                    shared.reached.store(0, Ordering::Release);
                    shared.first_ns.store(u64::MAX, Ordering::Release);
                    shared.last_ns.store(0, Ordering::Release);
                    shared.target.store(revision, Ordering::Release);
                    println!("armed {revision}");
                    if !shared.wait_all(&shared.reached, &shared.reached_all).await {
                        report_errors(&shared);
                        bail!(
                            "only {} of {n} spokes received revision {revision}",
                            shared.reached.load(Ordering::Acquire)
                        );
                    }
                    println!(
                        "reached {revision} {} {} {}",
                        shared.first_ns.load(Ordering::Acquire),
                        shared.last_ns.load(Ordering::Acquire),
                        shared.bytes.load(Ordering::Acquire)
                    );
                }
                ["stats"] => {
                    let attempts = shared.attempts.load(Ordering::Acquire);
                    println!("stats {}", attempts.saturating_sub(n as u64));
                    report_errors(&shared);
                }
                ["storm"] => {
                    shared.stormed.store(0, Ordering::Release);
                    shared.storm_last_ns.store(0, Ordering::Release);
                    shared.storm_unchanged.store(0, Ordering::Release);
                    let attempts = shared.attempts.load(Ordering::Acquire);
                    shared.storm_epoch.fetch_add(1, Ordering::AcqRel);
                    println!("armed-storm");
                    if !shared.wait_all(&shared.stormed, &shared.storm_all).await {
                        report_errors(&shared);
                        bail!(
                            "only {} of {n} spokes came back after the restart",
                            shared.stormed.load(Ordering::Acquire)
                        );
                    }
                    println!(
                        "stormed {} {} {}",
                        shared.storm_last_ns.load(Ordering::Acquire),
                        shared.storm_unchanged.load(Ordering::Acquire),
                        shared.attempts.load(Ordering::Acquire) - attempts
                    );
                    report_errors(&shared);
                }
                ["quit"] => break,
                _ => bail!("unknown command {line:?}"),
            }
        }
        Ok(())
    }

    fn report_errors(shared: &Shared) {
        let mut errors = shared.errors.lock().unwrap();
        for (error, count) in errors.iter() {
            eprintln!("[swarm] {count} × {error}");
        }
        errors.clear();
    }

    /// Capped exponential backoff with jitter in [delay/2, delay], as the real spoke.
    fn backoff(attempt: u32, seed: u64) -> Duration {
        let base = BACKOFF_FIRST.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
        let half = base / 2;
        let spread = half.as_millis().max(1) as u64;
        half + Duration::from_millis(seed % spread)
    }

    fn jitter_seed(index: usize) -> u64 {
        (now_ns() ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7
    }

    async fn spoke(
        shared: Arc<Shared>,
        url: String,
        index: usize,
        tls: tokio_rustls::TlsConnector,
        connecting: Arc<Semaphore>,
    ) {
        let mut state = SpokeState {
            index,
            ..SpokeState::default()
        };
        let mut attempt: u32 = 0;
        loop {
            let permit = if state.connected_once {
                None
            } else {
                Some(connecting.clone().acquire_owned().await.expect("semaphore open"))
            };
            let started = tokio::time::Instant::now();
            shared.attempts.fetch_add(1, Ordering::AcqRel);
            let error = match session(&shared, &url, &tls, &mut state, permit).await {
                Ok(()) => "the stream ended".to_string(),
                Err(error) => error,
            };
            shared.error(error);
            if started.elapsed() > BACKOFF_CAP {
                attempt = 0;
            }
            let delay = backoff(attempt, jitter_seed(index));
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    async fn session(
        shared: &Shared,
        url: &str,
        tls: &tokio_rustls::TlsConnector,
        state: &mut SpokeState,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), String> {
        let address = url.trim_start_matches("https://").to_string();
        let tls = tls.clone();
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(HEARTBEAT)
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let (tls, address) = (tls.clone(), address.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(address).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::try_from("localhost").expect("a DNS name");
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls.connect(name, tcp).await?))
                }
            }))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let (tx, rx) = mpsc::channel(4);
        let message = |msg| pb::SpokeMessage { msg: Some(msg) };
        let id = spoke_id(state.index);
        tx.send(message(spoke_message::Msg::Hello(pb::Hello {
            cluster_id: id,
            labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
            spoke_version: "fanout-bench".into(),
            last_applied_revision: state.last_revision,
            store_id: state.store_id.clone(),
            digest: state.digest.clone(),
            ..Default::default()
        })))
        .await
        .map_err(|_| "hello not sent".to_string())?;
        let mut inbound = SpokeSyncClient::new(channel)
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("sync: {:?} {}", s.code(), s.message()))?
            .into_inner();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let mut first = true;
        loop {
            tokio::select! {
                received = inbound.message() => {
                    let received = received
                        .map_err(|s| format!("stream: {:?} {}", s.code(), s.message()))?
                        .ok_or_else(|| "the hub ended the stream".to_string())?;
                    if let Some(hub_message::Msg::Intent(intent)) = received.msg {
                        let now = now_ns();
                        let newer = intent.revision > state.last_revision;
                        shared.on_intent(state, &intent, first, now);
                        if first {
                            first = false;
                            permit.take();
                        }
                        if shared.ack && newer {
                            let ack = message(spoke_message::Msg::Ack(pb::Ack {
                                revision: intent.revision,
                                store_id: intent.store_id.clone(),
                                ..Default::default()
                            }));
                            tx.send(ack).await.map_err(|_| "ack not sent".to_string())?;
                        }
                    }
                }
                _ = ticker.tick() => {
                    let heartbeat = message(spoke_message::Msg::Heartbeat(pb::Heartbeat {
                        sent_unix_millis: i64::try_from(now_ns() / 1_000_000).unwrap_or(i64::MAX),
                    }));
                    tx.send(heartbeat).await.map_err(|_| "heartbeat not sent".to_string())?;
                }
            }
        }
    }
}
