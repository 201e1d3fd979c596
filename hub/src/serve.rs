//! `tollgate-hub serve`: the hub on its embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::grpc::{self, ServeOptions, Sessions, TlsFiles};
use crate::state::Hub;
use crate::store::sqlite::SqliteStore;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC listener (spokes and the admin CLI).
    #[arg(long, env = "TOLLGATE_HUB_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,

    /// Folder of the embedded store.
    #[arg(long, env = "TOLLGATE_HUB_DATA_DIR", default_value = ".tollgate/hub")]
    data_dir: PathBuf,

    /// The hub's certificate (PEM).
    #[arg(long, env = "TOLLGATE_HUB_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The hub's private key (PEM).
    #[arg(long, env = "TOLLGATE_HUB_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// The CA that signs spoke and admin certificates (PEM).
    #[arg(long, env = "TOLLGATE_HUB_CLIENT_CA")]
    client_ca: Option<PathBuf>,

    /// Serve without TLS (development only; refused on a non-loopback address).
    #[arg(long, env = "TOLLGATE_HUB_INSECURE_DEV_PLAINTEXT")]
    insecure_dev_plaintext: bool,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoints.
    #[arg(long, env = "TOLLGATE_HUB_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: SocketAddr,

    /// Heartbeat period of spoke streams, in seconds.
    #[arg(long, env = "TOLLGATE_HUB_HEARTBEAT_SECONDS", default_value_t = 10)]
    heartbeat_seconds: u64,
}

impl ServeArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listen,
            data_dir,
            tls_cert,
            tls_key,
            client_ca,
            insecure_dev_plaintext,
            metrics_addr,
            heartbeat_seconds,
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
        let options = ServeOptions {
            tls,
            heartbeat: std::time::Duration::from_secs(heartbeat_seconds),
            ..ServeOptions::default()
        };
        let listener = grpc::bind(listen, &options).await?;
        let store =
            SqliteStore::open(&data_dir).with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let hub = Arc::new(Hub::new(store).await?);
        tracing::info!(
            addr = %listener.local_addr()?,
            data_dir = %data_dir.display(),
            revision = hub.snapshot().revision,
            tls = options.tls.is_some(),
            "Hub serving"
        );
        let sessions = Arc::new(Sessions::default());
        let metrics = crate::metrics::serve(metrics_addr, options.metrics.clone(), hub.clone(), sessions.clone());
        let metrics_task = tokio::spawn(async move {
            if let Err(error) = metrics.await {
                tracing::error!(%error, "The health and metrics server stopped");
            }
        });
        let served = grpc::serve(hub, sessions, listener, options, shutdown()).await;
        metrics_task.abort();
        served?;
        tracing::info!("Hub stopped");
        Ok(())
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
