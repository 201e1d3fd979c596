//! The CLI's configuration file: named contexts, each a hub address and the admin certificate files to reach it,
//! like kubectl's kubeconfig. `$TOLLGATE_CONFIG`, else `$XDG_CONFIG_HOME/tollgate/config.yaml`, else
//! `~/.config/tollgate/config.yaml`. Flags and `TOLLGATE_*` variables win over the context.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_context: String,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One hub and the admin identity for it. Relative paths are relative to the file's folder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub hub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// Where the file is.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TOLLGATE_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither TOLLGATE_CONFIG nor HOME is set")?).join(".config")
        }
    };
    Ok(base.join("tollgate/config.yaml"))
}

impl Config {
    /// The file at `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{}: not a Tollgate CLI configuration", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file (creating its folder), readable by its owner only: it names private keys.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = path.with_extension("yaml.partial");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&partial)
                .with_context(|| format!("writing {}", partial.display()))?;
            file.write_all(serde_yaml_ng::to_string(self)?.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
    }

    /// The context `name`, or the current one; `None` when neither is set. Paths made absolute against `base`.
    pub fn resolve(&self, name: Option<&str>, base: &Path) -> anyhow::Result<Option<Context>> {
        let wanted = match name {
            Some(name) => name,
            None if self.current_context.is_empty() => return Ok(None),
            None => &self.current_context,
        };
        let Some(context) = self.contexts.iter().find(|c| c.name == wanted) else {
            let known: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "no context {wanted:?} in the CLI configuration (contexts: {known:?}); add it with `tollgate-hub config set-context`"
            );
        };
        let absolute = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| if p.is_absolute() { p.clone() } else { base.join(p) })
        };
        Ok(Some(Context {
            ca: absolute(&context.ca),
            cert: absolute(&context.cert),
            key: absolute(&context.key),
            ..context.clone()
        }))
    }
}

/// `tollgate-hub config …`: the CLI's contexts.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Make a context the current one.
    UseContext { name: String },
    /// Create a context, or change the given fields of an existing one.
    SetContext {
        name: String,
        /// The hub's address, `https://host:port`.
        #[arg(long)]
        hub: Option<String>,
        /// The CA certificate that signed the hub's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The admin certificate.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The admin private key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The name to verify in the hub's certificate.
        #[arg(long)]
        tls_server_name: Option<String>,
    },
}

impl ConfigCommand {
    pub fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let path = path()?;
        let mut config = Config::load(&path)?;
        match self {
            Self::GetContexts => {
                let mut rows = vec![["CURRENT".to_string(), "NAME".into(), "HUB".into()]];
                for context in &config.contexts {
                    let current = if context.name == config.current_context {
                        "*"
                    } else {
                        ""
                    };
                    rows.push([current.to_string(), context.name.clone(), context.hub.clone()]);
                }
                if config.contexts.is_empty() {
                    writeln!(
                        out,
                        "No context in {}: add one with `tollgate-hub config set-context NAME --hub https://HOST:PORT --ca CA --cert CERT --key KEY`.",
                        path.display()
                    )?;
                } else {
                    out.write_all(crate::cli::render::render_table(&rows).as_bytes())?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Self::CurrentContext => {
                if config.current_context.is_empty() {
                    bail!(
                        "no current context in {}: `tollgate-hub config use-context NAME`",
                        path.display()
                    );
                }
                writeln!(out, "{}", config.current_context)?;
                return Ok(ExitCode::SUCCESS);
            }
            Self::UseContext { name } => {
                if !config.contexts.iter().any(|c| c.name == name) {
                    bail!("no context {name:?} in {}", path.display());
                }
                config.current_context = name.clone();
                writeln!(out, "switched to context {name:?}")?;
            }
            Self::SetContext {
                name,
                hub,
                ca,
                cert,
                key,
                tls_server_name,
            } => {
                let existing = config.contexts.iter_mut().find(|c| c.name == name);
                let created = existing.is_none();
                let context = match existing {
                    Some(context) => context,
                    None => {
                        let Some(hub) = hub.clone() else {
                            bail!("a new context needs --hub");
                        };
                        config.contexts.push(Context {
                            name: name.clone(),
                            hub,
                            ..Context::default()
                        });
                        config.contexts.last_mut().expect("just pushed")
                    }
                };
                if let Some(hub) = hub {
                    tollgate_proto::check_hub_address(&hub, false)
                        .or_else(|_| tollgate_proto::check_hub_address(&hub, true))
                        .map_err(|reason| anyhow::anyhow!("--hub {reason}"))?;
                    context.hub = hub;
                }
                let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
                context.ca = ca.map(absolute).or(context.ca.take());
                context.cert = cert.map(absolute).or(context.cert.take());
                context.key = key.map(absolute).or(context.key.take());
                context.tls_server_name = tls_server_name.or(context.tls_server_name.take());
                if config.current_context.is_empty() {
                    config.current_context = name.clone();
                }
                writeln!(out, "context {name:?} {}", if created { "created" } else { "modified" })?;
            }
        }
        config.save(&path)?;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_or_current_context_resolves_with_paths_relative_to_the_file() {
        let config: Config = serde_yaml_ng::from_str(
            "currentContext: prod\ncontexts:\n- {name: prod, hub: 'https://prod:7443', ca: certs/ca.pem, cert: /abs/admin.pem}\n\
             - {name: lab, hub: 'https://lab:7443'}\n",
        )
        .unwrap();
        let base = Path::new("/home/me/.config/tollgate");
        let prod = config.resolve(None, base).unwrap().unwrap();
        assert_eq!(prod.hub, "https://prod:7443");
        assert_eq!(
            prod.ca.as_deref(),
            Some(Path::new("/home/me/.config/tollgate/certs/ca.pem"))
        );
        assert_eq!(prod.cert.as_deref(), Some(Path::new("/abs/admin.pem")));
        assert_eq!(
            config.resolve(Some("lab"), base).unwrap().unwrap().hub,
            "https://lab:7443"
        );
        let missing = config.resolve(Some("nope"), base).unwrap_err().to_string();
        assert!(
            missing.contains("no context \"nope\"") && missing.contains("[\"prod\", \"lab\"]"),
            "{missing}"
        );
        assert_eq!(Config::default().resolve(None, base).unwrap(), None);
        let typo = serde_yaml_ng::from_str::<Config>("contexts: [{name: a, hub: x, cacert: y}]").unwrap_err();
        assert!(typo.to_string().contains("unknown field `cacert`"), "{typo}");
    }
}
