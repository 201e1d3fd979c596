//! Shell completion (clap_complete's dynamic engine): subcommands, flags and kinds offline, and — where the hub of
//! the current flags, variables or context answers within two seconds — document names and cluster ids.

use std::io::Write;
use std::process::ExitCode;

use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;

/// The variable that makes `tollgate-hub` answer a completion request instead of running.
pub const COMPLETE_VAR: &str = "TOLLGATE_COMPLETE";

/// How long a completion waits for the hub.
const HUB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell: `source <(tollgate-hub completion bash)` in ~/.bashrc, `source <(tollgate-hub completion zsh)` in
    /// ~/.zshrc, `tollgate-hub completion fish | source` in fish's config.
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionArgs {
    pub fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let name = match self.shell {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
        };
        let shells = Shells::builtins();
        let shell = shells
            .completer(name)
            .ok_or_else(|| anyhow::anyhow!("no completer for {name}"))?;
        // The completing binary is this one, wherever the script is loaded from.
        let completer = std::env::current_exe()?;
        let mut script = Vec::new();
        shell.write_registration(
            COMPLETE_VAR,
            "tollgate-hub",
            "tollgate-hub",
            &completer.to_string_lossy(),
            &mut script,
        )?;
        out.write_all(&script)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Runs `ask` against the hub of the environment (variables, current context); nothing when it does not answer.
fn from_hub<T: Default>(ask: impl AsyncFnOnce(crate::cli::connection::Connection) -> anyhow::Result<T>) -> T {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return T::default();
    };
    let connection = <crate::cli::connection::Connection as clap::FromArgMatches>::from_arg_matches(
        &<crate::cli::connection::Connection as clap::Args>::augment_args(clap::Command::new("completion"))
            .get_matches_from(["completion"]),
    );
    let Ok(connection) = connection else {
        return T::default();
    };
    runtime
        .block_on(async { tokio::time::timeout(HUB_TIMEOUT, ask(connection)).await })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The names of the hub's documents (both kinds).
pub fn document_names() -> Vec<CompletionCandidate> {
    from_hub(async |connection| {
        let mut names = Vec::new();
        for kind in [
            crate::cli::connection::Kind::Policies,
            crate::cli::connection::Kind::Guardrails,
        ] {
            let (set, _) = crate::cli::connection::documents(&connection, kind, None, None).await?;
            names.extend(set.documents().map(|d| CompletionCandidate::new(d.name().to_string())));
        }
        Ok(names)
    })
}

/// The ids of the clusters the hub knows.
pub fn cluster_ids() -> Vec<CompletionCandidate> {
    from_hub(async |connection| {
        let status = connection
            .admin()
            .await?
            .fleet_status(tollgate_proto::v1::FleetStatusRequest::default())
            .await?
            .into_inner();
        Ok(status
            .clusters
            .into_iter()
            .map(|c| CompletionCandidate::new(c.cluster_id))
            .collect())
    })
}
