//! How the CLI reaches the hub (flags, variables, the configuration's context), and the calls that more than one
//! command and shell completion make.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::ValueEnum;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How to reach the hub: flags, else `TOLLGATE_*` variables, else the context of the CLI configuration
/// (`tollgate-hub config`), else a local hub.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// The context of the CLI configuration to use (default: its current context).
    #[arg(long, env = "TOLLGATE_CONTEXT")]
    pub context: Option<String>,
    /// Hub address: `https://host:port` (or `http://` with --insecure-dev-plaintext); default
    /// `https://127.0.0.1:7443`.
    #[arg(long, env = "TOLLGATE_HUB")]
    pub hub: Option<String>,
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

/// The default hub address.
const LOCAL_HUB: &str = "https://127.0.0.1:7443";

impl Connection {
    /// Fills what flags and variables left unset from the context (a named one must exist).
    fn resolved(&self) -> anyhow::Result<Self> {
        let path = crate::cli::config::path()?;
        let config = crate::cli::config::Config::load(&path)?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let context = config.resolve(self.context.as_deref(), base)?.unwrap_or_default();
        let from_context = !context.hub.is_empty();
        Ok(Self {
            context: self.context.clone(),
            hub: self
                .hub
                .clone()
                .or(from_context.then_some(context.hub))
                .or(Some(LOCAL_HUB.to_string())),
            ca: self.ca.clone().or(context.ca),
            cert: self.cert.clone().or(context.cert),
            key: self.key.clone().or(context.key),
            tls_server_name: self.tls_server_name.clone().or(context.tls_server_name),
            insecure_dev_plaintext: self.insecure_dev_plaintext,
        })
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let this = self.resolved()?;
        let hub = this.hub.clone().unwrap_or_else(|| LOCAL_HUB.to_string());
        tollgate_proto::check_hub_address(&hub, this.insecure_dev_plaintext)
            .map_err(|reason| anyhow::anyhow!("--hub {reason}"))?;
        let mut endpoint = Channel::from_shared(hub.clone()).with_context(|| format!("--hub {hub:?}"))?;
        if this.insecure_dev_plaintext {
            if this.ca.is_some() || this.cert.is_some() || this.key.is_some() {
                bail!("--insecure-dev-plaintext cannot be combined with TLS files (--ca, --cert, --key)");
            }
        } else {
            let (Some(ca), Some(cert), Some(key)) = (&this.ca, &this.cert, &this.key) else {
                bail!(
                    "mTLS needs --ca, --cert and --key (or TOLLGATE_CA, TOLLGATE_CERT, TOLLGATE_KEY, or a context: \
                     `tollgate-hub config set-context`)"
                );
            };
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?));
            if let Some(name) = &this.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the hub at {hub}"))?;
        Ok(AdminClient::new(channel).max_decoding_message_size(tollgate_proto::MAX_HUB_INBOUND_MESSAGE_BYTES))
    }
}

/// A refused call, printed as the hub said it.
pub(crate) fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// A kind of hub document, named as kubectl names kinds: plural, singular, short name or the kind itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(
        name = "egresspolicies",
        aliases = ["egresspolicy", "ep", "policies", "policy", "EgressPolicy", "EgressPolicies"]
    )]
    Policies,
    #[value(
        name = "egressguardrails",
        aliases = ["egressguardrail", "eg", "guardrails", "guardrail", "EgressGuardrail", "EgressGuardrails"]
    )]
    Guardrails,
}

impl Kind {
    pub(crate) fn document_kind(self) -> &'static str {
        match self {
            Self::Policies => tollgate_common::document::KIND_POLICY,
            Self::Guardrails => tollgate_common::document::KIND_GUARDRAIL,
        }
    }
}

/// The documents of a kind (one by name) at the latest or a past revision, and that revision.
pub(crate) async fn documents(
    connection: &Connection,
    kind: Kind,
    name: Option<&str>,
    revision: Option<u64>,
) -> anyhow::Result<(tollgate_common::DocumentSet, u64)> {
    let response = connection
        .admin()
        .await?
        .get(pb::GetRequest {
            kind: kind.document_kind().to_string(),
            name: name.unwrap_or_default().to_string(),
            revision: revision.unwrap_or(0),
        })
        .await
        .map_err(call_error)?
        .into_inner();
    let set = tollgate_common::wire::documents_from_wire(&response.documents)
        .map_err(|errors| anyhow::anyhow!("the hub sent invalid documents: {}", errors[0]))?;
    Ok((set, response.revision))
}
