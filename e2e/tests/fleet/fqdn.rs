//! A hub policy with an `fqdn` peer across the fleet: each cluster resolves the name with its own DNS server
//! (two dnsmasq servers that answer differently), so the same policy becomes different addresses per cluster;
//! `plan` shows the name, `status` shows the names per agent and, for one agent, the addresses.

use tollgate_e2e::DnsServer;
use tollgate_e2e::fleet::{Fleet, SpokeStart};

const NAME: &str = "llm.example.test";

const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-by-name}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  agentSelector: {matchLabels: {tier: tools}}
  egress:
    - to: [{fqdn: llm.example.test}]
      ports: [{port: 443}]
";

#[tokio::test]
async fn one_name_becomes_each_clusters_own_addresses() -> anyhow::Result<()> {
    let east_dns = DnsServer::start(&[(NAME, "203.0.113.1")], 60).await?;
    let west_dns = DnsServer::start(&[(NAME, "203.0.113.2"), (NAME, "2001:db8::2")], 60).await?;
    let mut fleet = Fleet::start().await?;
    for (index, dns) in [(0, &east_dns), (1, &west_dns)] {
        let start = SpokeStart {
            extra_args: vec!["--fqdn-resolver".into(), dns.addr().to_string()],
            ..SpokeStart::default()
        };
        fleet.start_spoke_with(index, start).await?;
    }

    let file = fleet.intent_file("fqdn.yaml", POLICY)?;
    let plan = fleet.cli_ok(&["plan", "-f", &file.display().to_string()]).await?;
    assert!(plan.contains(&format!("+ fqdn:{NAME} TCP/443")), "{plan}");
    assert!(
        !plan.contains("203.0.113."),
        "the plan names the name, not addresses:\n{plan}"
    );
    fleet.apply(POLICY).await?;

    let east = fleet
        .wait_policy(0, "search-signature-policy", "the east address", |p| {
            p.to_string().contains("203.0.113.1/32")
        })
        .await?;
    assert!(!east.to_string().contains("203.0.113.2/32"), "{east:#}");
    let west = fleet
        .wait_policy(1, "search-signature-policy", "the west addresses", |p| {
            p.to_string().contains("203.0.113.2/32") && p.to_string().contains("2001:db8::2/128")
        })
        .await?;
    assert!(!west.to_string().contains("203.0.113.1/32"), "{west:#}");
    let staging = fleet.policies(2).await?;
    assert!(
        !staging["search-signature-policy"].to_string().contains("203.0.113."),
        "staging is not selected"
    );

    // `status --cluster` names the names (once the spoke's inventory reached the hub); with `--agent`, the
    // addresses the cluster resolved.
    let mut shown = String::new();
    for _ in 0..50 {
        shown = fleet.cli_ok(&["status", "--cluster", "prod-west"]).await?;
        if shown.contains(NAME) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let header = shown.lines().next().unwrap_or_default();
    assert!(header.contains("NAMES"), "{shown}");
    let search = shown.lines().find(|l| l.contains("search")).unwrap_or_default();
    assert!(search.contains(NAME), "{shown}");
    // The addresses come with the cluster's facts, which may reach the hub after its inventory.
    let mut one = String::new();
    for _ in 0..50 {
        one = fleet
            .cli_ok(&["status", "--cluster", "prod-west", "--agent", "team-a/search"])
            .await?;
        if one.contains("203.0.113.2") && one.contains("2001:db8::2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(one.contains("203.0.113.2") && one.contains("2001:db8::2"), "{one}");
    assert!(one.contains("answered"), "{one}");
    // prod-east's inventory reaches the hub on its own schedule: wait for it as for prod-west's above.
    let mut yaml = String::new();
    for _ in 0..50 {
        yaml = fleet
            .cli_ok(&[
                "status",
                "--cluster",
                "prod-east",
                "--agent",
                "team-a/search",
                "-o",
                "yaml",
            ])
            .await?;
        if yaml.contains("address: 203.0.113.1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(yaml.contains("address: 203.0.113.1"), "{yaml}");
    assert!(!yaml.contains("203.0.113.2"), "{yaml}");
    let missing = fleet
        .cli(&["status", "--cluster", "prod-east", "--agent", "team-a/nobody"])
        .await?;
    assert!(
        !missing.success && missing.stderr.contains("reports no agent team-a/nobody"),
        "{missing:?}"
    );
    Ok(())
}
