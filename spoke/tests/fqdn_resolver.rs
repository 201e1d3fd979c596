//! The spoke's resolver of `fqdn` names against a real DNS server (dnsmasq on loopback) whose records change while
//! the test runs: rotation with the grace period, TTL clamping, NXDOMAIN, a server that stops answering, the
//! address limit and IPv6.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_common::Fqdn;
use tollgate_e2e::{DnsServer, wait_until};
use tollgate_spoke::fqdn::{MAX_ADDRESSES, Resolver, ResolverSettings};
use tollgate_spoke::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(20);

fn name(text: &str) -> Fqdn {
    Fqdn::parse(text).unwrap()
}

fn names(list: &[&str]) -> BTreeSet<Fqdn> {
    list.iter().map(|n| name(n)).collect()
}

fn settings(dns: &DnsServer, min_ttl: u64, max_ttl: u64, grace: u64) -> ResolverSettings {
    ResolverSettings {
        server: Some(dns.addr()),
        min_ttl: Duration::from_secs(min_ttl),
        max_ttl: Duration::from_secs(max_ttl),
        grace: Duration::from_secs(grace),
        timeout: Duration::from_secs(1),
    }
}

/// A resolver with its refresh task running, and the notifier it wakes.
fn resolver(settings: ResolverSettings) -> (Resolver, Arc<Notify>) {
    let changed = Arc::new(Notify::new());
    let resolver = Resolver::new(settings, changed.clone(), Arc::new(Metrics::new()));
    tokio::spawn(resolver.clone().refresh());
    (resolver, changed)
}

fn addresses(resolver: &Resolver, of: &str) -> Vec<String> {
    resolver.snapshot().addresses()[&name(of)]
        .iter()
        .map(IpAddr::to_string)
        .collect()
}

#[tokio::test]
async fn rotated_addresses_stay_for_the_grace_period_and_ipv6_is_resolved() -> anyhow::Result<()> {
    let api = "api.example.test";
    let dns = DnsServer::start(&[(api, "192.0.2.1"), (api, "192.0.2.2")], 1).await?;
    let (resolver, changed) = resolver(settings(&dns, 1, 1, 4));
    let snapshot = resolver.sync(&names(&[api]), None).await;
    assert_eq!(
        snapshot.addresses()[&name(api)],
        ["192.0.2.1".parse::<IpAddr>()?, "192.0.2.2".parse()?],
        "looked up before the first plan"
    );

    // One address rotates out, one in, and an IPv6 address appears.
    dns.set_records(&[(api, "192.0.2.2"), (api, "192.0.2.3"), (api, "2001:db8::3")])
        .await?;
    let rotated = Instant::now();
    tokio::time::timeout(WAIT, changed.notified()).await?;
    wait_until("the new addresses", WAIT, || async {
        addresses(&resolver, api).contains(&"2001:db8::3".to_string())
    })
    .await?;
    assert_eq!(
        addresses(&resolver, api),
        ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::3"],
        "the rotated-out address stays within the grace period"
    );
    let status = resolver.snapshot().statuses();
    let stale: Vec<&str> = status[0]
        .addresses
        .iter()
        .filter(|a| a.stale_since_unix > 0)
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(stale, ["192.0.2.1"], "reported as no longer answered");

    wait_until("the grace period to run out", WAIT, || async {
        !addresses(&resolver, api).contains(&"192.0.2.1".to_string())
    })
    .await?;
    assert!(
        rotated.elapsed() >= Duration::from_secs(3),
        "dropped after {:?}, before the 4 s grace period",
        rotated.elapsed()
    );
    assert_eq!(addresses(&resolver, api), ["192.0.2.2", "192.0.2.3", "2001:db8::3"]);
    Ok(())
}

#[tokio::test]
async fn ttls_are_clamped_to_the_configured_bounds() -> anyhow::Result<()> {
    // A TTL of an hour is cut to the 2 s maximum: a changed record is seen within seconds.
    let long = "long.example.test";
    let dns = DnsServer::start(&[(long, "198.51.100.1")], 3600).await?;
    let (resolver_long, _) = resolver(settings(&dns, 1, 2, 0));
    resolver_long.sync(&names(&[long]), None).await;
    dns.set_records(&[(long, "198.51.100.2")]).await?;
    wait_until(
        "the long-TTL name to be looked up again",
        Duration::from_secs(8),
        || async { addresses(&resolver_long, long) == ["198.51.100.2"] },
    )
    .await?;

    // A TTL of 1 s is raised to the 3 s minimum: over 7 s the name is asked at most 3 times (at 0, 3 and 6 s),
    // not 7.
    let short = "short.example.test";
    let dns = DnsServer::start(&[(short, "198.51.100.9")], 1).await?;
    let (resolver_short, _) = resolver(settings(&dns, 3, 10, 0));
    resolver_short.sync(&names(&[short]), None).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let asked = dns.queries("A", short);
    assert!(
        (2..=3).contains(&asked),
        "{asked} A queries in 7 s with a 3 s minimum TTL:\n{}",
        dns.log()
    );
    Ok(())
}

#[tokio::test]
async fn nxdomain_a_silent_server_and_recovery() -> anyhow::Result<()> {
    let ok = "ok.example.test";
    let missing = "missing.example.test";
    let dns = DnsServer::start(&[(ok, "203.0.113.5")], 1).await?;
    let (resolver, _) = resolver(settings(&dns, 1, 1, 3600));
    let snapshot = resolver.sync(&names(&[ok, missing]), None).await;
    assert!(snapshot.addresses()[&name(missing)].is_empty());
    let status = snapshot.statuses();
    assert!(status[0].nxdomain, "{status:?}");
    let problems = snapshot.get(&name(missing)).unwrap().problems(&name(missing));
    assert_eq!(problems[0].0, "FqdnNotFound");

    // The server stops answering: lookups time out, the last good addresses stay, the failure is reported.
    dns.pause()?;
    wait_until("a failed lookup", WAIT, || async {
        resolver
            .snapshot()
            .statuses()
            .iter()
            .any(|n| n.name == ok && !n.error.is_empty())
    })
    .await?;
    assert_eq!(addresses(&resolver, ok), ["203.0.113.5"], "last good addresses kept");
    let problems = resolver.snapshot().get(&name(ok)).unwrap().problems(&name(ok));
    assert_eq!(problems[0].0, "FqdnLookupFailed", "{problems:?}");

    dns.resume()?;
    wait_until("the lookups to succeed again", WAIT, || async {
        resolver.snapshot().statuses().iter().all(|n| n.error.is_empty())
    })
    .await?;
    assert_eq!(addresses(&resolver, ok), ["203.0.113.5"]);
    Ok(())
}

#[tokio::test]
async fn a_name_with_a_hundred_addresses_is_cut_to_the_limit() -> anyhow::Result<()> {
    let big = "big.example.test";
    let ips: Vec<String> = (1..=100).map(|i| format!("10.1.{}.{}", i / 50, i % 50 + 1)).collect();
    let records: Vec<(&str, &str)> = ips.iter().map(|ip| (big, ip.as_str())).collect();
    // 100 A records do not fit a UDP answer: the client retries over TCP.
    let dns = DnsServer::start(&records, 60).await?;
    let (resolver, _) = resolver(settings(&dns, 30, 600, 3600));
    let snapshot = resolver.sync(&names(&[big]), None).await;
    let status = &snapshot.statuses()[0];
    assert!(status.error.is_empty(), "{status:?}");
    assert_eq!(status.known, 100);
    let kept = &snapshot.addresses()[&name(big)];
    assert_eq!(kept.len(), MAX_ADDRESSES);
    let mut sorted: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    sorted.sort();
    assert_eq!(kept[..], sorted[..MAX_ADDRESSES], "the first 64 in sorted order");
    let problems = snapshot.get(&name(big)).unwrap().problems(&name(big));
    assert_eq!(problems[0].0, "FqdnAddressLimit");
    assert!(problems[0].1.contains("100 addresses"), "{}", problems[0].1);
    Ok(())
}

#[tokio::test]
async fn a_silent_server_at_start_delays_a_pass_by_seconds_at_most() -> anyhow::Result<()> {
    let api = "late.example.test";
    let dns = DnsServer::start(&[(api, "192.0.2.77")], 1).await?;
    dns.pause()?;
    let (resolver, changed) = resolver(settings(&dns, 1, 1, 3600));
    let started = Instant::now();
    let snapshot = resolver.sync(&names(&[api]), None).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the pass waited {:?} for a silent DNS server",
        started.elapsed()
    );
    assert!(snapshot.addresses()[&name(api)].is_empty());
    assert!(!snapshot.statuses()[0].error.is_empty(), "{:?}", snapshot.statuses());
    dns.resume()?;
    tokio::time::timeout(WAIT, changed.notified()).await?;
    wait_until("the name to answer", WAIT, || async {
        addresses(&resolver, api) == ["192.0.2.77"]
    })
    .await?;
    Ok(())
}
