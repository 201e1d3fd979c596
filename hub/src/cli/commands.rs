//! The admin CLI: talks to a hub over mTLS with an admin certificate.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use clap_complete::engine::ArgValueCandidates;
use tollgate_proto::v1 as pb;

use crate::cli::connection::{Connection, Kind, call_error, documents};
use crate::cli::render;
use crate::cli::sources::FileArgs;
use crate::cli::sources::read_sources;

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

/// `-o`: a table, a wider table, `kind/name` lines, or the rows as JSON or YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Name,
    Yaml,
    Json,
}

impl Output {
    fn style(self, no_headers: bool) -> render::Style {
        render::Style {
            wide: self == Self::Wide,
            headers: !no_headers,
        }
    }
}

/// The `-l/--selector` flag, parsed; its errors name the flag.
fn selector_flag(text: &str) -> anyhow::Result<tollgate_common::LabelSelector> {
    tollgate_common::LabelSelector::parse(text).map_err(|e| anyhow::anyhow!("-l/--selector: {e}"))
}

/// Which hub documents `--prune` may delete: `--all`, or those a label selector matches.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete hub documents that are not in the files: needs --all or -l/--selector, which says which.
    #[arg(long)]
    prune: bool,
    /// With --prune: every hub document not in the files may be deleted.
    #[arg(long, requires = "prune", conflicts_with = "prune_selector")]
    all: bool,
    /// With --prune: only hub documents whose labels match (kubectl syntax, e.g. `team=payments`) may be deleted.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", requires = "prune")]
    prune_selector: Option<String>,
}

impl PruneArgs {
    /// `(prune, prune_selector)` of the request; refuses a bare --prune.
    fn request(&self) -> anyhow::Result<(bool, String)> {
        match (self.prune, self.all, &self.prune_selector) {
            (false, _, _) => Ok((false, String::new())),
            (true, true, _) => Ok((true, String::new())),
            (true, false, Some(selector)) => {
                selector_flag(selector)?;
                Ok((true, selector.clone()))
            }
            (true, false, None) => bail!(
                "--prune deletes hub documents that are not in the files: add --all to allow deleting any of them, or \
                 -l SELECTOR to allow only those whose labels match (preview with --dry-run or `plan`)"
            ),
        }
    }
}

/// Exit codes of `plan --exit-code` and `apply --dry-run --exit-code`, like `diff`: 0 no change, 1 changes.
fn change_exit_code(exit_code: bool, changed: bool) -> ExitCode {
    if exit_code && changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Invalid documents: exit 1, or 2 with `--exit-code` (where 1 means "changes").
fn invalid_input(exit_code: bool) -> ExitCode {
    if exit_code {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// With `--exit-code`, trouble exits 2 (1 means "changes"), printed as `main` prints errors.
fn trouble(exit_code: bool, result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(error) if exit_code => {
            eprintln!("error: {error:#}");
            Ok(ExitCode::from(2))
        }
        other => other,
    }
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Validate and show the changes without committing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    prune: PruneArgs,
    /// With --dry-run: exit 1 when the apply would change anything, 0 when not, 2 on errors (like `diff`).
    #[arg(long, requires = "dry_run")]
    exit_code: bool,
    #[command(flatten)]
    connection: Connection,
}

impl ApplyArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let exit_code = self.exit_code;
        trouble(exit_code, self.apply(out).await)
    }

    async fn apply(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            files,
            dry_run,
            prune,
            exit_code,
            connection,
        } = self;
        let (prune, prune_selector) = prune.request()?;
        let Some(sources) = valid_sources(&files, "nothing was applied")? else {
            return Ok(invalid_input(exit_code));
        };
        let request = pb::ApplyRequest {
            sources,
            dry_run,
            prune,
            prune_selector,
        };
        let response = connection
            .admin()
            .await?
            .apply(request)
            .await
            .map_err(call_error)?
            .into_inner();
        out.write_all(render::apply_result(&response, dry_run, dry_run).as_bytes())?;
        let changed = response.changes.iter().any(|c| c.action != "unchanged");
        Ok(change_exit_code(exit_code, changed))
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    files: FileArgs,
    #[command(flatten)]
    prune: PruneArgs,
    /// Output format: the readable preview (`wide`: with every baseline address), or one object per cluster.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// List the baseline's addresses (API server, DNS) instead of one `baseline` line, as -o wide does.
    #[arg(long)]
    show_baseline: bool,
    /// Exit 1 when the change would change any agent's egress, 0 when not, 2 on errors (like `diff`).
    #[arg(long)]
    exit_code: bool,
    #[command(flatten)]
    connection: Connection,
}

impl PlanArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let exit_code = self.exit_code;
        trouble(exit_code, self.plan(out).await)
    }

    async fn plan(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            files,
            prune,
            output,
            show_baseline,
            exit_code,
            connection,
        } = self;
        let (prune, prune_selector) = prune.request()?;
        if output == Output::Name {
            bail!("-o name: plan prints table, wide, json or yaml");
        }
        let Some(sources) = valid_sources(&files, "nothing to preview")? else {
            return Ok(invalid_input(exit_code));
        };
        let request = pb::PlanRequest {
            sources,
            prune,
            prune_selector,
        };
        let response = connection
            .admin()
            .await?
            .plan(request)
            .await
            .map_err(call_error)?
            .into_inner();
        let text = match output {
            Output::Table | Output::Wide | Output::Name => {
                crate::cli::preview::render(&response.clusters, show_baseline || output == Output::Wide)
            }
            Output::Json => serde_json::to_string_pretty(&crate::cli::preview::rows(&response.clusters))? + "\n",
            Output::Yaml => serde_yaml_ng::to_string(&crate::cli::preview::rows(&response.clusters))?,
        };
        out.write_all(text.as_bytes())?;
        let changed = response.clusters.iter().any(|c| !c.agents.is_empty());
        Ok(change_exit_code(exit_code, changed))
    }
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// egresspolicies (egresspolicy, ep) or egressguardrails (egressguardrail, eg).
    #[arg(ignore_case = true)]
    kind: Kind,
    #[arg(add = ArgValueCandidates::new(crate::cli::completion::document_names))]
    name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Only documents whose labels match (kubectl syntax: `team=payments,env!=dev`).
    #[arg(short = 'l', long = "selector", conflicts_with = "name")]
    selector: Option<String>,
    /// Print the table without its header line.
    #[arg(long)]
    no_headers: bool,
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
            selector,
            no_headers,
            revision,
            connection,
        } = self;
        let selector = selector.as_deref().map(selector_flag).transpose()?;
        let (mut set, revision) = documents(&connection, kind, name.as_deref(), revision).await?;
        if let Some(selector) = &selector {
            set = set.documents().filter(|d| selector.matches(d.labels())).fold(
                tollgate_common::DocumentSet::default(),
                |mut kept, d| {
                    kept.insert(d);
                    kept
                },
            );
        }
        let text = match output {
            Output::Yaml => set.to_yaml(),
            Output::Json => {
                let docs: Vec<serde_json::Value> = set
                    .documents()
                    .map(|d| serde_yaml_ng::from_str(&d.to_yaml()).expect("canonical YAML parses"))
                    .collect();
                serde_json::to_string_pretty(&docs)? + "\n"
            }
            Output::Name => render::document_names(&set),
            Output::Table | Output::Wide => {
                render::documents_view(&set, kind.document_kind(), revision, output.style(no_headers))
            }
        };
        out.write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// egresspolicies (egresspolicy, ep) or egressguardrails (egressguardrail, eg).
    #[arg(ignore_case = true)]
    kind: Kind,
    #[arg(add = ArgValueCandidates::new(crate::cli::completion::document_names))]
    name: String,
    #[command(flatten)]
    connection: Connection,
}

impl DeleteArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self { kind, name, connection } = self;
        let kind = kind.document_kind();
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
pub struct DescribeArgs {
    /// egresspolicies (egresspolicy, ep) or egressguardrails (egressguardrail, eg).
    #[arg(ignore_case = true)]
    kind: Kind,
    #[arg(add = ArgValueCandidates::new(crate::cli::completion::document_names))]
    name: String,
    #[command(flatten)]
    connection: Connection,
}

impl DescribeArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self { kind, name, connection } = self;
        let (set, revision) = documents(&connection, kind, Some(&name), None).await?;
        let document = set
            .documents()
            .next()
            .with_context(|| format!("{} {name:?} is not on the hub", kind.document_kind()))?;
        let status = connection
            .admin()
            .await?
            .fleet_status(pb::FleetStatusRequest::default())
            .await
            .map_err(call_error)?
            .into_inner();
        out.write_all(render::describe(&document, revision, &status).as_bytes())?;
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
        out.write_all(render::history_table(&response, tollgate_process::unix_millis()).as_bytes())?;
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
    #[arg(long, add = ArgValueCandidates::new(crate::cli::completion::cluster_ids))]
    cluster: Option<String>,
    /// With --cluster: one agent (`NAMESPACE/NAME`), with the addresses its DNS names (fqdn) stand for and their
    /// age.
    #[arg(long, requires = "cluster")]
    agent: Option<String>,
    /// Follow changes from the hub's watch stream: on a terminal the table is redrawn in place; otherwise (or with
    /// -o json|yaml|name) each changed row is printed once, with no control characters (NDJSON for json).
    #[arg(short = 'w', long)]
    watch: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Only clusters whose labels match (kubectl syntax: `env=prod,region in (eu,us)`).
    #[arg(short = 'l', long = "selector", conflicts_with = "cluster")]
    selector: Option<String>,
    /// Order of the clusters (ascending).
    #[arg(long, value_enum, default_value_t = render::SortBy::Cluster, conflicts_with = "cluster")]
    sort_by: render::SortBy,
    /// Print the table without its header line (and without the notes under it).
    #[arg(long)]
    no_headers: bool,
    /// Exit 3 when a (selected) cluster is disconnected, behind the latest revision, or reports a condition: for CI
    /// and cron.
    #[arg(long, conflicts_with_all = ["cluster", "watch"])]
    fail_on_disconnected: bool,
    #[command(flatten)]
    connection: Connection,
}

/// The exit code of `status --fail-on-disconnected` when a cluster is not healthy.
const UNHEALTHY: u8 = 3;

impl StatusArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self {
            cluster,
            agent,
            watch,
            output,
            selector,
            sort_by,
            no_headers,
            fail_on_disconnected,
            connection,
        } = self;
        let selector = selector.as_deref().map(selector_flag).transpose()?;
        if let Some(agent) = &agent
            && agent
                .split_once('/')
                .is_none_or(|(ns, name)| ns.is_empty() || name.is_empty())
        {
            anyhow::bail!("--agent {agent:?}: expected NAMESPACE/NAME");
        }
        let view = StatusView {
            cluster: cluster.clone(),
            agent,
            output,
            style: output.style(no_headers),
            selector,
            sort_by,
        };
        let request = pb::FleetStatusRequest {
            cluster_id: cluster.unwrap_or_default(),
        };
        let mut client = connection.admin().await?;
        if !watch {
            let mut status = client.fleet_status(request).await.map_err(call_error)?.into_inner();
            let now = tollgate_process::unix_millis();
            view.select(&mut status, now)?;
            out.write_all(view.render(&status, now)?.as_bytes())?;
            if fail_on_disconnected {
                let unhealthy = render::unhealthy(&status);
                if !unhealthy.is_empty() {
                    let mut err = std::io::stderr().lock();
                    for (cluster, why) in &unhealthy {
                        writeln!(err, "cluster {cluster}: {why}")?;
                    }
                    return Ok(ExitCode::from(UNHEALTHY));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut stream = client
            .watch_fleet_status(request)
            .await
            .map_err(call_error)?
            .into_inner();
        let redraw = output == Output::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut previous: Option<pb::FleetStatusResponse> = None;
        while let Some(mut status) = stream.message().await.map_err(call_error)? {
            let now = tollgate_process::unix_millis();
            view.select(&mut status, now)?;
            if redraw {
                // A terminal: clear the screen and redraw the table in place.
                out.write_all(b"\x1b[H\x1b[2J")?;
                out.write_all(view.render(&status, now)?.as_bytes())?;
            } else {
                out.write_all(view.changes(previous.as_ref(), &status, now)?.as_bytes())?;
            }
            out.flush()?;
            previous = Some(status);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// What `status` shows, and how.
struct StatusView {
    cluster: Option<String>,
    agent: Option<String>,
    output: Output,
    style: render::Style,
    selector: Option<tollgate_common::LabelSelector>,
    sort_by: render::SortBy,
}

impl StatusView {
    fn select(&self, status: &mut pb::FleetStatusResponse, now: i64) -> anyhow::Result<()> {
        if self.cluster.is_none() {
            render::select_clusters(status, self.selector.as_ref(), self.sort_by, now);
        }
        if let (Some(cluster), Some(agent)) = (&self.cluster, &self.agent)
            && !render::select_agent(status, agent)
        {
            anyhow::bail!("cluster {cluster} reports no agent {agent}");
        }
        Ok(())
    }

    fn render(&self, status: &pb::FleetStatusResponse, now: i64) -> anyhow::Result<String> {
        if let (Some(cluster), Some(_)) = (&self.cluster, &self.agent) {
            return Ok(match self.output {
                Output::Table | Output::Wide => render::agent_names_view(status, cluster, now / 1000),
                Output::Name => render::agent_names(status),
                Output::Json => serde_json::to_string_pretty(&render::agent_rows_with(status, true))? + "\n",
                Output::Yaml => serde_yaml_ng::to_string(&render::agent_rows_with(status, true))?,
            });
        }
        Ok(match (&self.cluster, self.output) {
            (None, Output::Table | Output::Wide) => render::clusters_view(status, now, self.style),
            (Some(cluster), Output::Table | Output::Wide) => render::agents_view(status, cluster, self.style),
            (None, Output::Name) => render::cluster_names(status),
            (Some(_), Output::Name) => render::agent_names(status),
            (None, Output::Json) => serde_json::to_string_pretty(&render::cluster_rows(status))? + "\n",
            (Some(_), Output::Json) => serde_json::to_string_pretty(&render::agent_rows(status))? + "\n",
            (None, Output::Yaml) => serde_yaml_ng::to_string(&render::cluster_rows(status))?,
            (Some(_), Output::Yaml) => serde_yaml_ng::to_string(&render::agent_rows(status))?,
        })
    }

    /// For a pipe: the rows that changed since `previous` (every row the first time), one line or object each.
    fn changes(
        &self,
        previous: Option<&pb::FleetStatusResponse>,
        status: &pb::FleetStatusResponse,
        now: i64,
    ) -> anyhow::Result<String> {
        let format = match self.output {
            Output::Json => render::WatchFormat::Json,
            Output::Yaml => render::WatchFormat::Yaml,
            Output::Name => render::WatchFormat::Name,
            Output::Table | Output::Wide => render::WatchFormat::Table(self.style),
        };
        Ok(match &self.cluster {
            None => render::watch_clusters(previous, status, now, format)?,
            Some(_) => render::watch_agents(previous, status, format)?,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// The client's version only, without asking the hub.
    #[arg(long)]
    client: bool,
    #[command(flatten)]
    connection: Connection,
}

impl VersionArgs {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let client = env!("CARGO_PKG_VERSION");
        if self.client {
            writeln!(out, "client: {client}")?;
            return Ok(ExitCode::SUCCESS);
        }
        let status = self
            .connection
            .admin()
            .await?
            .fleet_status(pb::FleetStatusRequest::default())
            .await
            .map_err(call_error)?
            .into_inner();
        let (text, warnings) = render::versions(client, &status);
        out.write_all(text.as_bytes())?;
        let mut err = std::io::stderr().lock();
        for warning in warnings {
            writeln!(err, "warning: {warning}")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `tollgate-hub clusters …`: the hub's cluster registry. Only registered clusters may connect, and the labels
/// `clusterSelector`s match are the registry's.
#[derive(Debug, clap::Subcommand)]
pub enum ClustersCommand {
    /// Register clusters: their spokes may connect from now on, and documents select them by these labels (all or
    /// nothing: when one is registered already, none is).
    Add {
        /// The cluster ids (the ones their spokes' certificates name).
        #[arg(required = true)]
        clusters: Vec<String>,
        /// The cluster's labels, `key=value` pairs separated by commas (`clusterSelector`s match them).
        #[arg(long, default_value = "")]
        labels: String,
        /// How long each printed join token works (once).
        #[arg(long, value_parser = tollgate_process::parse_duration, default_value = "1h")]
        token_ttl: std::time::Duration,
        #[command(flatten)]
        connection: Connection,
    },
    /// A new one-time join token for a registered cluster (the earlier one stops working): for a spoke installed
    /// after its token expired.
    Token {
        /// The cluster id.
        #[arg(add = ArgValueCandidates::new(crate::cli::completion::cluster_ids))]
        cluster: String,
        /// How long the token works (once).
        #[arg(long, value_parser = tollgate_process::parse_duration, default_value = "1h")]
        token_ttl: std::time::Duration,
        #[command(flatten)]
        connection: Connection,
    },
    /// Set (`key=value`) and remove (`key-`) labels of a registered cluster; its spoke is sent the documents its
    /// new labels select at once.
    Label {
        /// The cluster id.
        #[arg(add = ArgValueCandidates::new(crate::cli::completion::cluster_ids))]
        cluster: String,
        /// `key=value` to set, `key-` to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every registered cluster: its labels (and those its spoke reports), whether it is connected, its spoke's
    /// version and when its certificate expires.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove a cluster from the registry: its stream is closed, its certificates are refused from now on (also if
    /// the id is registered again), and its rows leave `status`.
    Remove {
        /// The cluster id.
        #[arg(add = ArgValueCandidates::new(crate::cli::completion::cluster_ids))]
        cluster: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Let one Diverged cluster take this hub's latest revision: after the hub came back on another store (a lost
    /// volume, a new database) or on an older copy of its store, a spoke keeps enforcing what it has until an
    /// admin says so.
    Adopt {
        /// The cluster id.
        #[arg(add = ArgValueCandidates::new(crate::cli::completion::cluster_ids))]
        cluster: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn ttl_seconds(ttl: std::time::Duration) -> anyhow::Result<i64> {
    match i64::try_from(ttl.as_secs()) {
        Ok(secs) if secs > 0 => Ok(secs),
        _ => bail!("--token-ttl: at least one second"),
    }
}

/// A join token and how to use it.
fn write_token(out: &mut impl Write, token: &pb::JoinToken) -> anyhow::Result<()> {
    writeln!(
        out,
        "join token for {} (works once, expires in {}):\n{}",
        token.cluster_id,
        render::until(token.expires_unix_millis, tollgate_process::unix_millis()).trim_start_matches("in "),
        token.token
    )?;
    Ok(())
}

/// `clusters label` arguments: labels to set and keys to remove, each checked (the hub checks them again).
pub fn label_changes(changes: &[String]) -> anyhow::Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for change in changes {
        if let Some((key, value)) = change.split_once('=') {
            set.insert(key.to_string(), value.to_string());
        } else if let Some(key) = change.strip_suffix('-').filter(|k| !k.is_empty()) {
            remove.push(key.to_string());
        } else {
            anyhow::bail!("{change:?}: expected KEY=VALUE to set a label or KEY- to remove one");
        }
    }
    Ok((set, remove))
}

impl ClustersCommand {
    pub async fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        match self {
            Self::Add {
                clusters,
                labels,
                token_ttl,
                connection,
            } => {
                let labels = tollgate_common::label_selector::parse_labels(&labels, "--labels")?;
                let response = connection
                    .admin()
                    .await?
                    .add_cluster(pb::AddClusterRequest {
                        cluster_ids: clusters.clone(),
                        labels: labels.into_iter().collect(),
                        token_ttl_seconds: ttl_seconds(token_ttl)?,
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                for cluster in clusters {
                    writeln!(out, "cluster {cluster} registered")?;
                }
                for token in &response.tokens {
                    write_token(out, token)?;
                }
            }
            Self::Token {
                cluster,
                token_ttl,
                connection,
            } => {
                let token = connection
                    .admin()
                    .await?
                    .create_join_token(pb::CreateJoinTokenRequest {
                        cluster_id: cluster,
                        ttl_seconds: ttl_seconds(token_ttl)?,
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                write_token(out, &token)?;
            }
            Self::Label {
                cluster,
                changes,
                connection,
            } => {
                let (set, remove) = label_changes(&changes)?;
                let response = connection
                    .admin()
                    .await?
                    .label_cluster(pb::LabelClusterRequest {
                        cluster_id: cluster.clone(),
                        set: set.into_iter().collect(),
                        remove,
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                let labels: BTreeMap<String, String> = response.labels.into_iter().collect();
                writeln!(out, "cluster {cluster} labelled: {}", render::label_pairs(&labels))?;
            }
            Self::List { output, connection } => {
                let response = connection
                    .admin()
                    .await?
                    .list_clusters(pb::ListClustersRequest {})
                    .await
                    .map_err(call_error)?
                    .into_inner();
                let rows = render::registry_rows(&response);
                let text = match output {
                    Output::Table | Output::Wide => render::registry_table(&rows, tollgate_process::unix_millis()),
                    Output::Name => rows.iter().map(|r| format!("cluster/{}\n", r.cluster)).collect(),
                    Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
                    Output::Yaml => serde_yaml_ng::to_string(&rows)?,
                };
                out.write_all(text.as_bytes())?;
            }
            Self::Remove { cluster, connection } => {
                let response = connection
                    .admin()
                    .await?
                    .remove_cluster(pb::RemoveClusterRequest {
                        cluster_id: cluster.clone(),
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                writeln!(
                    out,
                    "cluster {cluster} removed; its certificates are refused from now on ({})",
                    if response.disconnected {
                        "its stream was closed"
                    } else {
                        "a stream on another hub replica closes within a heartbeat"
                    }
                )?;
            }
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
