//! Command line of `tollgate-spoke`. Every flag has a `TOLLGATE_SPOKE_*` environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// Tollgate spoke: reconciles least-privilege egress NetworkPolicies for the AI agents of one cluster.
#[derive(Debug, Parser)]
#[command(name = "tollgate-spoke", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the AgentRuntime CRD (agent.kagenti.dev/v1alpha1, with spec.egress) generated from the Rust types.
    Crd,
}

/// How egress is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Enforcement {
    /// One NetworkPolicy per agent (every CNI).
    #[value(name = "networkpolicy")]
    NetworkPolicy,
    /// The NetworkPolicy, and one AdminNetworkPolicy per restricted, scoped or baseline-only agent that namespace
    /// policies cannot widen (OVN-Kubernetes: OpenShift 4.16+). The API must be served.
    #[value(name = "adminnetworkpolicy")]
    AdminNetworkPolicy,
    /// AdminNetworkPolicy where the API is served (checked at start), else NetworkPolicy only.
    Auto,
}

pub use tollgate_process::LogFormat;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This cluster's id, as the hub knows it.
    #[arg(long, env = "TOLLGATE_SPOKE_CLUSTER_ID", default_value = "local")]
    pub cluster_id: String,

    /// This cluster's labels, `key=value` pairs separated by commas (hub `clusterSelector`s match them).
    #[arg(long, env = "TOLLGATE_SPOKE_CLUSTER_LABELS", default_value = "")]
    pub cluster_labels: String,

    /// Run without a hub: enforce local `spec.egress` rules only.
    #[arg(long, env = "TOLLGATE_SPOKE_STANDALONE")]
    pub standalone: bool,

    /// Hub address (`https://host:port`, or `http://` on loopback with --insecure-dev-plaintext). Several hub
    /// replicas: a comma-separated list, tried in turn whenever a connection fails or ends.
    #[arg(long, env = "TOLLGATE_SPOKE_HUB")]
    pub hub: Option<String>,

    /// CA certificate that signed the hub's certificate (PEM).
    #[arg(long, env = "TOLLGATE_SPOKE_HUB_CA")]
    pub hub_ca: Option<PathBuf>,

    /// This spoke's client certificate (PEM), from `tollgate-hub certs spoke --cluster-id ID`.
    #[arg(long, env = "TOLLGATE_SPOKE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// This spoke's private key (PEM).
    #[arg(long, env = "TOLLGATE_SPOKE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// A file holding a join token from `tollgate-hub clusters add` (a mounted Secret): the spoke makes its own key,
    /// gets its certificate from the hub and keeps both in --identity-secret; instead of --hub-ca, --tls-cert and
    /// --tls-key. Once joined it needs the token no more.
    #[arg(long, env = "TOLLGATE_SPOKE_JOIN_TOKEN_FILE", conflicts_with_all = ["hub_ca", "tls_cert", "tls_key"])]
    pub join_token_file: Option<PathBuf>,

    /// With --join-token-file: the Secret in --spoke-namespace that keeps this spoke's key, certificate and the
    /// hub's CA.
    #[arg(
        long,
        env = "TOLLGATE_SPOKE_IDENTITY_SECRET",
        default_value = "tollgate-spoke-identity"
    )]
    pub identity_secret: String,

    /// Name to verify in the hub's certificate (default: the host of --hub).
    #[arg(long, env = "TOLLGATE_SPOKE_HUB_TLS_SERVER_NAME")]
    pub hub_tls_server_name: Option<String>,

    /// Talk plaintext to a development hub on loopback.
    #[arg(long, env = "TOLLGATE_SPOKE_INSECURE_DEV_PLAINTEXT")]
    pub insecure_dev_plaintext: bool,

    /// Namespace of the spoke itself: the last intent received is kept in a ConfigMap there.
    #[arg(long, env = "TOLLGATE_SPOKE_NAMESPACE", default_value = "tollgate-system")]
    pub spoke_namespace: String,

    /// Name of the ConfigMap holding the last intent received from the hub.
    #[arg(
        long,
        env = "TOLLGATE_SPOKE_INTENT_CONFIGMAP",
        default_value = "tollgate-spoke-intent"
    )]
    pub intent_configmap: String,

    /// Kubeconfig file; without it, the in-cluster configuration (or `KUBECONFIG`) is used.
    #[arg(long, env = "TOLLGATE_SPOKE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch for agents, separated by commas; empty: all namespaces.
    #[arg(long, env = "TOLLGATE_SPOKE_NAMESPACES", default_value = "")]
    pub namespaces: String,

    /// Namespace of the agent operator: its pods may reach every agent.
    #[arg(long, env = "TOLLGATE_SPOKE_OPERATOR_NAMESPACE", default_value = "kagenti-system")]
    pub operator_namespace: String,

    /// Namespace of the cluster defaults: its pods may reach every agent.
    #[arg(
        long,
        env = "TOLLGATE_SPOKE_CLUSTER_DEFAULTS_NAMESPACE",
        default_value = "kagenti-system"
    )]
    pub cluster_defaults_namespace: String,

    /// Suffix of the policy name after the workload name.
    #[arg(long, env = "TOLLGATE_SPOKE_POLICY_NAME_SUFFIX", default_value = "-signature-policy")]
    pub policy_name_suffix: String,

    /// Trust domain the attested SPIFFE IDs must belong to (reported only, unless the agent's binding is strict).
    #[arg(long, env = "TOLLGATE_SPOKE_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// Treat agent cards older than this as unverified, e.g. `1h`, `30m`, `600s`.
    #[arg(long, env = "TOLLGATE_SPOKE_MAX_CARD_AGE", value_parser = parse_duration)]
    pub max_card_age: Option<Duration>,

    /// Let restricted (unverified) agents resolve names too.
    #[arg(long, env = "TOLLGATE_SPOKE_RESTRICTED_ALLOW_DNS")]
    pub restricted_allow_dns: bool,

    /// The DNS Service as `namespace/name`; default: kube-system/kube-dns, else openshift-dns/dns-default.
    #[arg(long, env = "TOLLGATE_SPOKE_DNS_SERVICE")]
    pub dns_service: Option<String>,

    /// The DNS server that resolves the names of `fqdn` peers, as `ADDRESS:PORT`; default: the DNS Service's
    /// ClusterIP on port 53 (the server the agents' pods ask).
    #[arg(long, env = "TOLLGATE_SPOKE_FQDN_RESOLVER")]
    pub fqdn_resolver: Option<SocketAddr>,

    /// Look a name up again no sooner than this after an answer, whatever its TTL.
    #[arg(long, env = "TOLLGATE_SPOKE_FQDN_MIN_TTL", value_parser = parse_duration, default_value = "30s")]
    pub fqdn_min_ttl: Duration,

    /// Look a name up again no later than this after an answer, whatever its TTL.
    #[arg(long, env = "TOLLGATE_SPOKE_FQDN_MAX_TTL", value_parser = parse_duration, default_value = "10m")]
    pub fqdn_max_ttl: Duration,

    /// Keep an address of a name in the policies this long after it was last answered (applications cache
    /// answers past their TTL, and DNS load balancing hands pods other addresses than the spoke sees).
    #[arg(long, env = "TOLLGATE_SPOKE_FQDN_GRACE", value_parser = parse_duration, default_value = "1h")]
    pub fqdn_grace: Duration,

    /// How egress is enforced: `networkpolicy`, `adminnetworkpolicy` (also one AdminNetworkPolicy per agent, which
    /// namespace NetworkPolicies cannot widen) or `auto` (AdminNetworkPolicy where the API is served).
    #[arg(long, env = "TOLLGATE_SPOKE_ENFORCEMENT", value_enum, default_value_t = Enforcement::NetworkPolicy)]
    pub enforcement: Enforcement,

    /// With `--enforcement auto`: how often to ask whether the AdminNetworkPolicy API is served (a change restarts
    /// the spoke).
    #[arg(long, env = "TOLLGATE_SPOKE_ENFORCEMENT_RECHECK", value_parser = parse_duration, default_value = "60s", hide = true)]
    pub enforcement_recheck: Duration,

    /// How often a pass looks at every agent rather than only at those whose inputs or objects changed (a safety
    /// net; `tollgate_spoke_full_resync_writes_total` counts what it still had to write).
    #[arg(long, env = "TOLLGATE_SPOKE_FULL_RESYNC_INTERVAL", value_parser = parse_duration, default_value = "10m", hide = true)]
    pub full_resync_interval: Duration,

    /// Priority of the AdminNetworkPolicies, 0 (evaluated first) to 99 (the highest OVN-Kubernetes implements). An
    /// administrator's AdminNetworkPolicies with a lower number are evaluated before the agents'.
    #[arg(long, env = "TOLLGATE_SPOKE_ANP_PRIORITY", default_value_t = 40, value_parser = clap::value_parser!(i32).range(0..=99))]
    pub anp_priority: i32,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoints.
    #[arg(long, env = "TOLLGATE_SPOKE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Log level filter (for example `info` or `tollgate_spoke=debug`).
    #[arg(long, env = "TOLLGATE_SPOKE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "TOLLGATE_SPOKE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

pub use tollgate_process::parse_duration;

/// A comma-separated list, entries trimmed, empty ones dropped.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `--hub`: one address, or a comma-separated list of hub replicas; every entry must be `https://HOST[:PORT]`,
/// or with `plaintext` (`--insecure-dev-plaintext`) `http://` to a loopback host — checked at start rather than when
/// the rotation first reaches it.
pub fn parse_hub_addresses(text: &str, plaintext: bool) -> anyhow::Result<Vec<String>> {
    let urls = parse_list(text);
    if urls.is_empty() {
        bail!("--hub: no address given");
    }
    for url in &urls {
        tollgate_proto::check_hub_address(url, plaintext).map_err(|reason| anyhow::anyhow!("--hub {reason}"))?;
    }
    Ok(urls)
}

/// Parses `namespace/name`.
pub fn parse_namespaced(text: &str, flag: &str) -> anyhow::Result<(String, String)> {
    let (ns, name) = text
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .with_context(|| format!("{flag}: {text:?} is not namespace/name"))?;
    Ok((ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_hub_addresses(" https://a:7443 ,https://b.example.com:7443,", false).unwrap(),
            ["https://a:7443", "https://b.example.com:7443"]
        );
        assert_eq!(
            parse_hub_addresses("http://127.0.0.1:7443", true).unwrap(),
            ["http://127.0.0.1:7443"]
        );
        for (bad, plaintext) in [
            ("", false),
            (" , ", false),
            ("https://a:7443,not an address", false),
            ("ftp://a:1", false),
            ("https://a:7443,a:7443", false),
            // Plaintext by mistake: TLS configured with http://, or plaintext to a remote host.
            ("http://hub.example.invalid:7443", false),
            ("http://hub.example.invalid:7443", true),
            ("https://127.0.0.1:7443,http://10.1.2.3:7443", true),
        ] {
            let error = parse_hub_addresses(bad, plaintext).unwrap_err().to_string();
            assert!(error.starts_with("--hub"), "{bad:?}: {error}");
        }
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2w").unwrap_err().contains("unit must be"));
        assert!(parse_duration("h").unwrap_err().contains("expected a number"));
    }

    #[test]
    fn namespaced_names() {
        assert_eq!(
            parse_namespaced("openshift-dns/dns-default", "--dns-service").unwrap(),
            ("openshift-dns".to_string(), "dns-default".to_string())
        );
        assert!(parse_namespaced("dns", "--dns-service").is_err());
    }
}
