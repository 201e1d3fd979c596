//! The admin CLI: talks to a hub over mTLS with an admin certificate.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::args::FileArgs;
use crate::render;
use crate::sources::read_sources;

/// How to reach the hub.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// Hub address: `https://host:port` (or `http://` with --insecure-dev-plaintext).
    #[arg(long, env = "TOLLGATE_HUB", default_value = "https://127.0.0.1:7443")]
    pub hub: String,
    /// CA certificate that signed the hub's certificate (PEM).
    #[arg(long, env = "TOLLGATE_CA")]
    pub ca: Option<PathBuf>,
    /// Admin certificate (PEM), from `tollgate-hub certs admin`.
    #[arg(long, env = "TOLLGATE_CERT")]
    pub cert: Option<PathBuf>,
    /// Admin private key (PEM).
    #[arg(long, env = "TOLLGATE_KEY")]
    pub key: Option<PathBuf>,
    /// Name to verify in the hub's certificate (default: the host of --hub).
    #[arg(long, env = "TOLLGATE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Talk plaintext to a development hub on loopback.
    #[arg(long, env = "TOLLGATE_INSECURE_DEV_PLAINTEXT")]
    pub insecure_dev_plaintext: bool,
}

impl Connection {
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        tollgate_proto::check_hub_address(&self.hub, self.insecure_dev_plaintext)
            .map_err(|reason| anyhow::anyhow!("--hub {reason}"))?;
        let mut endpoint = Channel::from_shared(self.hub.clone()).with_context(|| format!("--hub {:?}", self.hub))?;
        if self.insecure_dev_plaintext {
            if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
                bail!("--insecure-dev-plaintext cannot be combined with TLS files (--ca, --cert, --key)");
            }
        } else {
            let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
                bail!("mTLS needs --ca, --cert and --key (or TOLLGATE_CA, TOLLGATE_CERT, TOLLGATE_KEY)");
            };
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?));
            if let Some(name) = &self.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the hub at {}", self.hub))?;
        Ok(AdminClient::new(channel).max_decoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES))
    }
}

/// A refused call, printed as the hub said it.
fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the `-f` sources and validates them locally with the hub's own function, so bad input never leaves the
/// machine: every error is printed and `None` returned.
fn valid_sources(files: &FileArgs, consequence: &str) -> anyhow::Result<Option<Vec<pb::Source>>> {
    let sources = read_sources(&files.files)?;
    if let Err(errors) = tollgate_common::document::DocumentSet::from_sources(&sources) {
        let mut err = std::io::stderr().lock();
        for error in &errors {
            writeln!(err, "{error}")?;
        }
        writeln!(err, "{} error(s); {consequence}", errors.len())?;
        return Ok(None);
    }
    Ok(Some(
        sources
            .into_iter()
            .map(|s| pb::Source {
                name: s.name,
                yaml: s.text,
            })
            .collect(),
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Validate and show the changes without committing.
    #[arg(long)]
    dry_run: bool,
    /// Delete hub documents that are not in the files.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    connection: Connection,
}

impl ApplyArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            files,
            dry_run,
            prune,
            connection,
        } = self;
        let Some(sources) = valid_sources(&files, "nothing was applied")? else {
            return Ok(ExitCode::FAILURE);
        };
        let request = pb::ApplyRequest {
            sources,
            dry_run,
            prune,
        };
        let response = connection
            .admin()
            .await?
            .apply(request)
            .await
            .map_err(call_error)?
            .into_inner();
        out.write_all(render::apply_result(&response, dry_run, dry_run).as_bytes())?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Preview as if hub documents not in the files were deleted.
    #[arg(long)]
    prune: bool,
    /// Output format: the readable preview, or one object per cluster.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    connection: Connection,
}

impl PlanArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            files,
            prune,
            output,
            connection,
        } = self;
        let Some(sources) = valid_sources(&files, "nothing to preview")? else {
            return Ok(ExitCode::FAILURE);
        };
        let request = pb::PlanRequest { sources, prune };
        let response = connection
            .admin()
            .await?
            .plan(request)
            .await
            .map_err(call_error)?
            .into_inner();
        let text = match output {
            Output::Table => crate::plan::render(&response.clusters),
            Output::Json => serde_json::to_string_pretty(&crate::plan::rows(&response.clusters))? + "\n",
            Output::Yaml => serde_yaml_ng::to_string(&crate::plan::rows(&response.clusters))?,
        };
        out.write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Policies,
    Guardrails,
}

impl Kind {
    fn document_kind(self) -> &'static str {
        match self {
            Self::Policies => tollgate_common::document::KIND_POLICY,
            Self::Guardrails => tollgate_common::document::KIND_GUARDRAIL,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    kind: Kind,
    name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// A past revision instead of the latest.
    #[arg(long)]
    revision: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

impl GetArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            kind,
            name,
            output,
            revision,
            connection,
        } = self;
        let response = connection
            .admin()
            .await?
            .get(pb::GetRequest {
                kind: kind.document_kind().to_string(),
                name: name.unwrap_or_default(),
                revision: revision.unwrap_or(0),
            })
            .await
            .map_err(call_error)?
            .into_inner();
        let set = tollgate_common::wire::documents_from_wire(&response.documents)
            .map_err(|errors| anyhow::anyhow!("the hub sent invalid documents: {}", errors[0]))?;
        match output {
            Output::Yaml => out.write_all(set.to_yaml().as_bytes())?,
            Output::Json => {
                let docs: Vec<serde_json::Value> = set
                    .documents()
                    .map(|d| serde_yaml_ng::from_str(&d.to_yaml()).expect("canonical YAML parses"))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&docs)?)?;
            }
            Output::Table => {
                let summary = crate::validate::render_summary(&set);
                let table: String = summary.lines().take(set.len() + 1).map(|l| format!("{l}\n")).collect();
                out.write_all(table.as_bytes())?;
                writeln!(out, "revision {}", response.revision)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// EgressPolicy or EgressGuardrail (or policy / guardrail).
    kind: String,
    name: String,
    #[command(flatten)]
    connection: Connection,
}

impl DeleteArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self { kind, name, connection } = self;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "egresspolicy" | "policy" | "policies" => tollgate_common::document::KIND_POLICY,
            "egressguardrail" | "guardrail" | "guardrails" => tollgate_common::document::KIND_GUARDRAIL,
            _ => bail!("unknown kind {kind:?}: expected EgressPolicy or EgressGuardrail"),
        };
        let response = connection
            .admin()
            .await?
            .delete(pb::DeleteRequest {
                kind: kind.to_string(),
                name: name.clone(),
            })
            .await
            .map_err(call_error)?
            .into_inner();
        writeln!(out, "{kind}/{name} deleted\nrevision {}", response.revision)?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    connection: Connection,
}

impl HistoryArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let response = self
            .connection
            .admin()
            .await?
            .history(pb::HistoryRequest {})
            .await
            .map_err(call_error)?
            .into_inner();
        out.write_all(render::history_table(&response, now_millis()).as_bytes())?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The revision whose documents become the latest again.
    #[arg(long)]
    to: u64,
    #[command(flatten)]
    connection: Connection,
}

impl RollbackArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self { to, connection } = self;
        let response = connection
            .admin()
            .await?
            .rollback(pb::RollbackRequest { to_revision: to })
            .await
            .map_err(call_error)?
            .into_inner();
        writeln!(
            out,
            "rolled back to the documents of revision {to}\nrevision {}",
            response.revision
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Show the agents of one cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// Refresh every second until interrupted.
    #[arg(long)]
    watch: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    connection: Connection,
}

impl StatusArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            cluster,
            watch,
            output,
            connection,
        } = self;
        let request = pb::FleetStatusRequest {
            cluster_id: cluster.clone().unwrap_or_default(),
        };
        let mut client = connection.admin().await?;
        if !watch {
            let status = client.fleet_status(request).await.map_err(call_error)?.into_inner();
            out.write_all(render_status(&status, cluster.is_some(), output)?.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut stream = client
            .watch_fleet_status(request)
            .await
            .map_err(call_error)?
            .into_inner();
        while let Some(status) = stream.message().await.map_err(call_error)? {
            // Clear the screen and redraw in place.
            out.write_all(b"\x1b[H\x1b[2J")?;
            out.write_all(render_status(&status, cluster.is_some(), output)?.as_bytes())?;
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn render_status(status: &pb::FleetStatusResponse, agents: bool, output: Output) -> anyhow::Result<String> {
    Ok(match (agents, output) {
        (false, Output::Table) => render::clusters_table(status, now_millis()),
        (true, Output::Table) => render::agents_table(status),
        (false, Output::Json) => serde_json::to_string_pretty(&render::cluster_rows(status))? + "\n",
        (true, Output::Json) => serde_json::to_string_pretty(&render::agent_rows(status))? + "\n",
        (false, Output::Yaml) => serde_yaml_ng::to_string(&render::cluster_rows(status))?,
        (true, Output::Yaml) => serde_yaml_ng::to_string(&render::agent_rows(status))?,
    })
}

/// `tollgate-hub clusters …`: the clusters the hub serves.
#[derive(Debug, clap::Subcommand)]
pub enum ClustersCommand {
    /// Let one Diverged cluster take this hub's latest revision: after the hub came back on another store (a lost
    /// volume, a new database) or on an older copy of its store, a spoke keeps enforcing what it has until an
    /// admin says so.
    Adopt {
        /// The cluster id.
        cluster: String,
        #[command(flatten)]
        connection: Connection,
    },
}

impl ClustersCommand {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        match self {
            Self::Adopt { cluster, connection } => {
                let response = connection
                    .admin()
                    .await?
                    .adopt_cluster(pb::AdoptClusterRequest {
                        cluster_id: cluster.clone(),
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                writeln!(
                    out,
                    "cluster {cluster} adopts revision {} of store {} ({})",
                    response.revision,
                    response.store_id,
                    if response.connected {
                        "offered now"
                    } else {
                        "offered when its spoke connects, or within a heartbeat on the replica it is connected to"
                    }
                )?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
