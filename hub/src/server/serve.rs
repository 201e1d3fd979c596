//! `tollgate-hub serve`: the hub on its embedded store (SQLite in `--data-dir`), or one of several replicas
//! sharing a PostgreSQL database (`--store postgres://…`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::server::grpc::{self, ServeOptions, TlsFiles};
use crate::server::sessions::Sessions;
use crate::server::state::Hub;
use crate::server::store::Store;
use crate::server::store::postgres::{PgStore, listen_for_revisions, redact};
use crate::server::store::sqlite::SqliteStore;

/// How often a replica re-reads the latest revision even without a notification (a listener connection cut off
/// silently by the network): the worst case for a missed push, not the normal path.
const SAFETY_NET: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC listener (spokes and the admin CLI).
    #[arg(long, env = "TOLLGATE_HUB_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,

    /// Folder of the embedded store (used when --store is not given).
    #[arg(long, env = "TOLLGATE_HUB_DATA_DIR", default_value = ".tollgate/hub")]
    data_dir: PathBuf,

    /// A shared PostgreSQL store, `postgres://user:password@host:port/database`, for several hub replicas
    /// (default: the embedded SQLite store in --data-dir, for one hub).
    #[arg(long, env = "TOLLGATE_HUB_STORE", hide_env_values = true)]
    store: Option<String>,

    /// With --store: the CA certificate (PEM) that signed the PostgreSQL server's certificate. Turns TLS on,
    /// required and verified for the URL's host.
    #[arg(long, env = "TOLLGATE_HUB_STORE_CA", requires = "store")]
    store_ca: Option<PathBuf>,

    /// This replica's name in the shared store (default: the host name and process id).
    #[arg(long, env = "TOLLGATE_HUB_REPLICA_ID")]
    replica_id: Option<String>,

    /// The hub's certificate (PEM).
    #[arg(long, env = "TOLLGATE_HUB_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The hub's private key (PEM).
    #[arg(long, env = "TOLLGATE_HUB_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// The CA that signs spoke and admin certificates (PEM).
    #[arg(long, env = "TOLLGATE_HUB_CLIENT_CA")]
    client_ca: Option<PathBuf>,

    /// The private key of --client-ca (PEM): the hub then signs spoke certificates itself, from join tokens
    /// (`clusters add` prints one per cluster) and renewals. Without it, spokes need certificates made out of band.
    #[arg(long, env = "TOLLGATE_HUB_CLIENT_CA_KEY", requires = "client_ca")]
    client_ca_key: Option<PathBuf>,

    /// How long a spoke certificate the hub signs is valid; spokes renew at two thirds of it.
    #[arg(long, env = "TOLLGATE_HUB_SPOKE_CERT_TTL", value_parser = tollgate_process::parse_duration, default_value = "24h")]
    spoke_cert_ttl: std::time::Duration,

    /// The secret that seals TLS session tickets, so that spokes resume their sessions after a restart (and on any
    /// replica given the same file) instead of a full handshake each: at least 32 random bytes in hex or base64,
    /// made (mode 0600) when the file does not exist, read again when it changes. As sensitive as the hub's key and
    /// the client CA's key together. Default with the embedded store: `session-ticket.key` in --data-dir; with
    /// --store: a secret of each process (no resumption across restarts or replicas).
    #[arg(long, env = "TOLLGATE_HUB_SESSION_TICKET_KEY", value_name = "FILE")]
    session_ticket_key: Option<PathBuf>,

    /// Serve without TLS (development only; refused on a non-loopback address).
    #[arg(long, env = "TOLLGATE_HUB_INSECURE_DEV_PLAINTEXT")]
    insecure_dev_plaintext: bool,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoints.
    #[arg(long, env = "TOLLGATE_HUB_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: SocketAddr,

    /// Heartbeat period of spoke streams, in seconds.
    #[arg(long, env = "TOLLGATE_HUB_HEARTBEAT_SECONDS", default_value_t = 10)]
    heartbeat_seconds: u64,

    /// An admin who may use the admin API: the NAME of its certificate (`tollgate://admin/NAME`, as `certs admin
    /// --name NAME` makes). Repeatable; comma-separated in the environment. Required with TLS: an admin
    /// certificate signed by the client CA whose name is not listed is refused.
    #[arg(
        long = "admin",
        env = "TOLLGATE_HUB_ADMINS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    admins: Vec<String>,
}

impl ServeArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listen,
            data_dir,
            store,
            store_ca,
            replica_id,
            tls_cert,
            tls_key,
            client_ca,
            client_ca_key,
            spoke_cert_ttl,
            session_ticket_key,
            insecure_dev_plaintext,
            metrics_addr,
            heartbeat_seconds,
            admins,
        } = self;
        let tls = match (tls_cert, tls_key, client_ca, insecure_dev_plaintext) {
            (Some(cert), Some(key), Some(client_ca), false) => Some(TlsFiles { cert, key, client_ca }),
            (None, None, None, true) => None,
            (_, _, _, true) => bail!("--insecure-dev-plaintext cannot be combined with TLS files"),
            _ => bail!(
                "TLS needs --tls-cert, --tls-key and --client-ca (create them with `tollgate-hub certs init` and \
                 `tollgate-hub certs hub`), or --insecure-dev-plaintext on a loopback address"
            ),
        };
        if heartbeat_seconds == 0 {
            bail!("--heartbeat-seconds must be at least 1");
        }
        let admins: std::collections::BTreeSet<String> = admins
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if tls.is_some() && admins.is_empty() {
            bail!(
                "--admin NAME (or TOLLGATE_HUB_ADMINS) is required with TLS: the names of the admin certificates \
                 this hub accepts (`tollgate-hub certs admin --name NAME` makes one)"
            );
        }
        let signer = match (&tls, client_ca_key) {
            (Some(tls), Some(key)) => Some(Arc::new(crate::server::membership::ReloadingSigner::load(
                &tls.client_ca,
                &key,
                &tls.cert,
                spoke_cert_ttl,
            )?)),
            (None, Some(_)) => bail!("--client-ca-key needs TLS: a plaintext hub signs no certificates"),
            (_, None) => None,
        };
        // The embedded store's folder is the hub's own: its ticket secret lives there unless given elsewhere.
        let session_ticket_key = match (&tls, session_ticket_key) {
            (None, Some(_)) => bail!("--session-ticket-key needs TLS: a plaintext hub has no sessions to resume"),
            (None, None) => None,
            (Some(_), Some(path)) => Some(path),
            (Some(_), None) if store.is_none() => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
                Some(data_dir.join("session-ticket.key"))
            }
            (Some(_), None) => None,
        };
        let options = ServeOptions {
            tls,
            session_ticket_key,
            heartbeat: std::time::Duration::from_secs(heartbeat_seconds),
            admins: Arc::new(admins),
            signer,
            ..ServeOptions::default()
        };
        let listener = grpc::bind(listen, &options).await?;
        let replica = replica_id.unwrap_or_else(default_replica_id);
        match store {
            None => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
                // Held until the process ends: one hub per folder, and no restore under a serving hub.
                let _lock = crate::server::store::sqlite::lock_data_dir(&data_dir)?;
                let store = SqliteStore::open(&data_dir)
                    .with_context(|| format!("opening the store in {}", data_dir.display()))?;
                let location = data_dir.display().to_string();
                run(store, &location, None, replica, listener, metrics_addr, options).await
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let store = PgStore::connect(&url, store_ca.as_deref())
                    .await
                    .context("opening the PostgreSQL store")?;
                let location = redact(&url);
                let shared = Some((url, store_ca));
                run(store, &location, shared, replica, listener, metrics_addr, options).await
            }
            Some(other) => bail!(
                "--store {:?}: expected a postgres:// URL (omit --store for the embedded store in --data-dir)",
                redact(&other)
            ),
        }
    }
}

/// `<host name>-<process id>`: unique among replicas, and stable across restarts of a StatefulSet pod (pid 1).
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "hub".to_string());
    format!("{host}-{}", std::process::id())
}

async fn run<S: Store>(
    store: S,
    location: &str,
    listen_to: Option<(String, Option<PathBuf>)>,
    replica: String,
    listener: tokio::net::TcpListener,
    metrics_addr: SocketAddr,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let hub = Arc::new(Hub::new(store).await?);
    tracing::info!(
        addr = %listener.local_addr()?,
        store = location,
        replica,
        revision = hub.snapshot().revision,
        tls = options.tls.is_some(),
        "Hub serving"
    );
    let sessions = Arc::new(Sessions::new(replica, options.heartbeat, listen_to.is_some()));
    let mut background = tokio::task::JoinSet::new();
    background.spawn(sessions.clone().renew(hub.clone(), options.heartbeat));
    // Removals and label changes made through another replica (or racing a hello) reach this replica's streams
    // within a heartbeat.
    background.spawn(sessions.clone().watch_registry(hub.clone(), options.heartbeat));
    if let Some((url, ca)) = listen_to {
        // Revisions committed by other replicas: pushed by the database, re-read, published to this replica's spokes.
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        background.spawn(listen_for_revisions(url, ca, wake));
        let hub = hub.clone();
        background.spawn(async move {
            // Pushed by the database; a slow safety net covers a listener cut off without an error.
            let mut safety_net = tokio::time::interval(SAFETY_NET);
            loop {
                tokio::select! {
                    woken = woken.recv() => if woken.is_none() { break },
                    _ = safety_net.tick() => {}
                }
                while woken.try_recv().is_ok() {}
                let mut delay = std::time::Duration::from_millis(100);
                loop {
                    match hub.refresh().await {
                        Ok(revision) => {
                            tracing::debug!(revision, "Refreshed from the shared store");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(error = %tollgate_process::error_chain(&error), retry_ms = delay.as_millis() as u64, "Could not read the latest revision");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                }
            }
        });
    }
    let metrics = crate::server::metrics::serve(metrics_addr, options.metrics.clone(), hub.clone(), sessions.clone());
    background.spawn(async move {
        if let Err(error) = metrics.await {
            tracing::error!(%error, "The health and metrics server stopped");
        }
    });
    let served = grpc::serve(hub, sessions, listener, options, tollgate_process::shutdown_signal()).await;
    background.abort_all();
    served?;
    tracing::info!("Hub stopped");
    Ok(())
}
