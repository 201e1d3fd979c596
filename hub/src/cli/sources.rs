//! Reads document sources from files, folders and standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tollgate_common::document::Source;

/// `-f FILE|DIR` arguments, shared by every command that reads documents.
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// A YAML file, a folder of `.yaml`/`.yml` files, or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// Reads every source named by `-f`: files as they are, folders by their `.yaml`/`.yml` files in name order,
/// `-` from standard input.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading documents from standard input")?;
            sources.push(Source::new("-", text));
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading folder {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("reading folder {}", path.display()))?;
            files.retain(|f| f.is_file() && f.extension().is_some_and(|e| e == "yaml" || e == "yml"));
            files.sort();
            if files.is_empty() {
                bail!("{}: the folder holds no .yaml or .yml files", path.display());
            }
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(path)?);
        }
    }
    Ok(sources)
}

fn read_file(path: &Path) -> anyhow::Result<Source> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Source::new(path.display().to_string(), text))
}
