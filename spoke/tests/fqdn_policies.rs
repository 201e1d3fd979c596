//! `fqdn` peers end to end: the real spoke binary against a real kube-apiserver and a real DNS server (dnsmasq)
//! whose records change during the test. The policies carry the addresses where the names stood, follow a rotation
//! (after the grace period), are not rewritten while the answers stay the same, and a missing name is reported.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tollgate_e2e::{DnsServer, wait_until};

const API: &str = "api.example.test";

fn rule(to: Value) -> Value {
    json!({"rules": [{"to": to, "ports": [{"protocol": "TCP", "port": 443}]}]})
}

/// The declared rules of a scoped policy (after the API server, its Service and DNS).
fn declared(policy: &Value) -> Vec<Value> {
    egress(policy).as_array().unwrap()[3..].to_vec()
}

fn metric(text: &str, name: &str) -> f64 {
    tollgate_e2e::procfs::metric(text, name).unwrap_or(-1.0)
}

#[tokio::test]
async fn names_become_addresses_follow_rotations_and_are_reported() -> anyhow::Result<()> {
    let dns = DnsServer::start(&[(API, "203.0.113.20"), (API, "203.0.113.10"), (API, "2001:db8::a")], 1).await?;
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    // Three agents share one name; one also names a name that does not exist, next to an ipBlock.
    for name in ["one", "two", "three"] {
        agent(&client, name, Some(rule(json!([{"fqdn": API}]))), Some(mtls_card())).await?;
    }
    agent(
        &client,
        "partial",
        Some(rule(
            json!([{"fqdn": "missing.example.test"}, {"ipBlock": {"cidr": "198.51.100.0/24"}}]),
        )),
        Some(mtls_card()),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let resolver = dns.addr().to_string();
    let spoke = Spoke::start(
        cluster,
        dir.path(),
        &[
            "--fqdn-resolver",
            &resolver,
            "--fqdn-min-ttl",
            "1s",
            "--fqdn-max-ttl",
            "1s",
            "--fqdn-grace",
            "3s",
        ],
    )
    .await?;

    // The name's addresses, sorted, stand where the name stood; the first policy already has them.
    let host = |cidr: &str| json!({"ipBlock": {"cidr": cidr}});
    let one = wait_policy(&client, "one-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        declared(&one),
        [json!({
            "to": [host("203.0.113.10/32"), host("203.0.113.20/32"), host("2001:db8::a/128")],
            "ports": [{"protocol": "TCP", "port": 443}],
        })]
    );
    // A name without addresses drops only its own peer; the ipBlock stays.
    let partial = wait_policy(&client, "partial-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        declared(&partial),
        [json!({"to": [host("198.51.100.0/24")], "ports": [{"protocol": "TCP", "port": 443}]})]
    );
    wait_until("the missing name to be reported", WAIT, || async {
        event_reasons(&client, "partial")
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "FqdnNotFound") && r.iter().any(|r| r == "RulesDropped"))
    })
    .await?;

    // Answers that stay the same rewrite nothing, and one query per refresh serves all three agents.
    let (_, metrics) = spoke.get("/metrics").await?;
    let writes = metric(&metrics, "tollgate_spoke_policy_writes_total");
    assert_eq!(metric(&metrics, "tollgate_spoke_fqdn_names"), 2.0, "{metrics}");
    let asked_before = dns.queries("A", API);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let asked = dns.queries("A", API) - asked_before;
    assert!(
        (1..=6).contains(&asked),
        "{asked} A queries of {API} in 4 s with a 1 s TTL and three agents using it"
    );
    let (_, metrics) = spoke.get("/metrics").await?;
    assert_eq!(
        metric(&metrics, "tollgate_spoke_policy_writes_total"),
        writes,
        "unchanged answers rewrote a policy:\n{}",
        spoke.log()
    );
    assert!(
        metric(&metrics, "tollgate_spoke_fqdn_lookups_total{result=\"answered\"}") > 0.0,
        "{metrics}"
    );

    // A rotation: the new address is added at once, the old one leaves after the grace period.
    dns.set_records(&[(API, "203.0.113.20"), (API, "203.0.113.30"), (API, "2001:db8::a")])
        .await?;
    let rotated = wait_policy(&client, "two-signature-policy", "the new address", |p| {
        p.to_string().contains("203.0.113.30/32")
    })
    .await?;
    assert!(
        rotated.to_string().contains("203.0.113.10/32"),
        "the old address stays for the grace period"
    );
    wait_policy(&client, "three-signature-policy", "the old address gone", |p| {
        !p.to_string().contains("203.0.113.10/32") && p.to_string().contains("203.0.113.30/32")
    })
    .await?;
    Ok(())
}
