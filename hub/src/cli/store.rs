//! `tollgate-hub store backup | restore`: the embedded store's backup, for the runbooks (docs/runbooks.md).

use std::io::{Read as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::server::store::backup;

/// Backup and restore of the embedded store (PostgreSQL: use pg_dump and pg_restore).
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Write a consistent copy of the embedded store (every revision, the store id, the clusters); works while the
    /// hub serves. A summary goes to standard error.
    Backup {
        /// The hub's data folder (`serve --data-dir`).
        #[arg(long, env = "TOLLGATE_HUB_DATA_DIR", default_value = ".tollgate/hub")]
        data_dir: PathBuf,
        /// The backup file to create (never overwritten); `-`: standard output, e.g. through `kubectl exec`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup in place as the embedded store, while no hub serves the folder. Spokes that enforce a newer
    /// revision than the backup's keep their policies and report Diverged until `clusters adopt`.
    Restore {
        /// The hub's data folder (`serve --data-dir`).
        #[arg(long, env = "TOLLGATE_HUB_DATA_DIR", default_value = ".tollgate/hub")]
        data_dir: PathBuf,
        /// The backup file; `-`: standard input.
        #[arg(long)]
        from: PathBuf,
        /// Replace the folder's store (kept beside it as `tollgate-hub.db.replaced-<unix millis>`).
        #[arg(long)]
        force: bool,
    },
}

fn is_stdio(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

impl StoreCommand {
    pub fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let mut err = std::io::stderr().lock();
        match self {
            Self::Backup { data_dir, out: file } => {
                let summary = if is_stdio(&file) {
                    let scratch = tempfile::tempdir().context("creating a temporary folder for the backup")?;
                    let copy = scratch.path().join("tollgate-hub.db");
                    let summary = backup::backup(&data_dir, &copy)?;
                    let mut reader =
                        std::fs::File::open(&copy).with_context(|| format!("reading {}", copy.display()))?;
                    std::io::copy(&mut reader, out).context("writing the backup to standard output")?;
                    out.flush()?;
                    summary
                } else {
                    backup::backup(&data_dir, &file)?
                };
                writeln!(err, "backup of {}: {summary}", data_dir.display())?;
            }
            Self::Restore { data_dir, from, force } => {
                let scratch = tempfile::tempdir().context("creating a temporary folder for the backup")?;
                let source = if is_stdio(&from) {
                    let copy = scratch.path().join("tollgate-hub.db");
                    let mut bytes = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("reading the backup from standard input")?;
                    std::fs::write(&copy, bytes).with_context(|| format!("writing {}", copy.display()))?;
                    copy
                } else {
                    from
                };
                let restored = backup::restore(&data_dir, &source, force, tollgate_process::unix_millis())?;
                if let Some(kept) = &restored.replaced {
                    writeln!(err, "the store it replaced is kept in {}", kept.display())?;
                }
                writeln!(err, "restored into {}: {}", data_dir.display(), restored.summary)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
