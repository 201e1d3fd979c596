//! Resolution of the DNS names in `fqdn` peers (docs/design.md, "FQDN destinations").
//!
//! The resolver is its own component: the reconciler tells it which names the rules use and which DNS server the
//! cluster's pods use ([`Resolver::sync`]), and gets back the addresses to render; a background task
//! ([`Resolver::refresh`]) looks each name up again when its answer's TTL (clamped) runs out, and wakes the
//! reconciler only when the addresses a policy would carry, or a name's reported state, changed. The planner stays
//! pure: it receives the addresses as input.
//!
//! One name is one query (A and AAAA) per refresh, however many agents use it. Addresses seen within the grace
//! period stay (applications cache answers past their TTL, and DNS load balancing hands pods other subsets than the
//! spoke sees). A failed lookup keeps the last good addresses; NXDOMAIN lets them run out with the grace period.
//! At most [`MAX_ADDRESSES`] per name. Nothing about a name ever widens a policy beyond its addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Resolver as DnsClient, TokioResolver};
use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_common::Fqdn;
use tollgate_common::planner::ResolvedNames;
use tollgate_proto::v1 as pb;

use crate::metrics::{LookupLabel, Metrics};

/// Addresses per name in a policy; more are reported and cut (the latest answer first, in sorted order).
pub const MAX_ADDRESSES: usize = 64;
/// Addresses kept per name (the latest answer and those within the grace period, the most recently seen first): a
/// server answering thousands of records cannot grow the spoke's memory without bound.
pub const MAX_KNOWN: usize = 256;
/// Consecutive lookups with a different answer after which a name is reported as unstable.
const UNSTABLE_AFTER: u32 = 3;
/// Lookups of different names in flight at once, on refresh.
const CONCURRENCY: usize = 16;
/// Lookups in flight at once for names never looked up (a pass waits for them).
const FIRST_LOOKUPS: usize = 256;

/// How names are resolved and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// `--fqdn-resolver`: the DNS server to ask; `None`: the cluster's DNS Service (its ClusterIP, port 53).
    pub server: Option<SocketAddr>,
    /// Refresh no sooner than this after an answer (`--fqdn-min-ttl`), and no later than `max_ttl`.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Addresses seen within this period stay in the policies (`--fqdn-grace`).
    pub grace: Duration,
    /// How long one lookup may take.
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            server: None,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(600),
            grace: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
        }
    }
}

/// What one lookup of a name (A and AAAA) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; its addresses (possibly none) and the smallest TTL of the answer.
    Addresses { addresses: BTreeSet<IpAddr>, ttl: Duration },
    /// The name does not exist.
    NxDomain,
    /// No usable answer: timeout, SERVFAIL, refused, no server.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    first_unix: i64,
    last: Instant,
    last_unix: i64,
}

/// Everything known about one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameState {
    addresses: BTreeMap<IpAddr, Seen>,
    /// Special-purpose addresses the last answer held, refused (never in a policy).
    refused: BTreeSet<IpAddr>,
    /// The addresses of the last answer.
    last_answer: Option<BTreeSet<IpAddr>>,
    /// Consecutive answers that differed from the one before.
    changes: u32,
    error: Option<String>,
    nxdomain: bool,
    /// When to look the name up again; `None`: never looked up yet.
    next_refresh: Option<Instant>,
}

impl NameState {
    /// Takes one answer in. Pure, so that the rules (clamping, grace, last good, NXDOMAIN) are tested without a
    /// clock or a network.
    pub fn apply(&mut self, answer: Answer, now: Instant, now_unix: i64, settings: &ResolverSettings) {
        let answered = match answer {
            Answer::Addresses { addresses, ttl } => {
                // IPv4-mapped IPv6 addresses are written as IPv4; special-purpose ones are refused.
                let (addresses, refused): (BTreeSet<IpAddr>, BTreeSet<IpAddr>) = addresses
                    .into_iter()
                    .map(|ip| ip.to_canonical())
                    .partition(|ip| !is_special_purpose(ip));
                self.refused = refused;
                for ip in &addresses {
                    let seen = self.addresses.entry(*ip).or_insert(Seen {
                        first_unix: now_unix,
                        last: now,
                        last_unix: now_unix,
                    });
                    seen.last = now;
                    seen.last_unix = now_unix;
                }
                self.error = None;
                self.nxdomain = false;
                self.next_refresh = Some(now + ttl.clamp(settings.min_ttl, settings.max_ttl));
                Some(addresses)
            }
            Answer::NxDomain => {
                self.refused.clear();
                self.error = None;
                self.nxdomain = true;
                self.next_refresh = Some(now + settings.min_ttl);
                Some(BTreeSet::new())
            }
            Answer::Failed(error) => {
                // The last good addresses stay, however old: a resolver outage never narrows or widens a policy.
                self.error = Some(error);
                self.next_refresh = Some(now + settings.min_ttl);
                None
            }
        };
        if let Some(answer) = answered {
            // Only an answer lets addresses run out: those not in it and not seen within the grace period.
            self.addresses
                .retain(|ip, seen| answer.contains(ip) || now.saturating_duration_since(seen.last) < settings.grace);
            if self.addresses.len() > MAX_KNOWN {
                // Keep the latest answer (its first ones in sorted order) and then the most recently seen others.
                let mut order: Vec<(bool, Instant, IpAddr)> = self
                    .addresses
                    .iter()
                    .map(|(ip, seen)| (!answer.contains(ip), seen.last, *ip))
                    .collect();
                order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
                let keep: BTreeSet<IpAddr> = order.into_iter().take(MAX_KNOWN).map(|(_, _, ip)| ip).collect();
                self.addresses.retain(|ip, _| keep.contains(ip));
            }
            match &self.last_answer {
                Some(previous) if *previous != answer => self.changes += 1,
                _ => self.changes = 0,
            }
            self.last_answer = Some(answer);
        }
    }

    /// The addresses a policy carries, sorted, at most [`MAX_ADDRESSES`]: those of the latest answer first (the
    /// first ones in sorted order when it alone has more), then the most recently seen within the grace period.
    pub fn in_policy(&self) -> Vec<IpAddr> {
        if self.addresses.len() <= MAX_ADDRESSES {
            return self.addresses.keys().copied().collect();
        }
        let current = self.last_answer.as_ref();
        let mut order: Vec<(bool, Instant, IpAddr)> = self
            .addresses
            .iter()
            .map(|(ip, seen)| (!current.is_some_and(|a| a.contains(ip)), seen.last, *ip))
            .collect();
        // The latest answer in sorted order; then the others, the most recently seen first.
        order.sort_by(|a, b| match (a.0, b.0) {
            (false, false) => a.2.cmp(&b.2),
            (true, true) => b.1.cmp(&a.1).then(a.2.cmp(&b.2)),
            (x, y) => x.cmp(&y),
        });
        let mut kept: Vec<IpAddr> = order.into_iter().take(MAX_ADDRESSES).map(|(_, _, ip)| ip).collect();
        kept.sort();
        kept
    }

    /// Whether the name has been looked up at least once.
    pub fn looked_up(&self) -> bool {
        self.next_refresh.is_some()
    }

    pub fn unstable(&self) -> bool {
        self.changes >= UNSTABLE_AFTER
    }

    /// The name as the spoke reports it to the hub.
    pub fn status(&self, name: &Fqdn) -> pb::ResolvedName {
        let current = self.last_answer.clone().unwrap_or_default();
        pb::ResolvedName {
            name: name.to_string(),
            addresses: self
                .in_policy()
                .into_iter()
                .filter_map(|ip| Some((ip, self.addresses.get(&ip)?)))
                .map(|(ip, seen)| pb::ResolvedAddress {
                    address: ip.to_string(),
                    first_seen_unix: seen.first_unix,
                    stale_since_unix: if current.contains(&ip) { 0 } else { seen.last_unix },
                })
                .collect(),
            error: self.error.clone().unwrap_or_default(),
            nxdomain: self.nxdomain,
            unstable: self.unstable(),
            known: u32::try_from(self.addresses.len()).unwrap_or(u32::MAX),
        }
    }

    /// `(reason, message)` of each problem of the name, worded so that it changes only when the problem does.
    pub fn problems(&self, name: &Fqdn) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(error) = &self.error {
            out.push((
                "FqdnLookupFailed",
                format!("looking up {name} failed ({error}); its last known addresses are kept"),
            ));
        }
        if self.nxdomain {
            out.push((
                "FqdnNotFound",
                format!("{name} does not exist (NXDOMAIN); its addresses leave the policy after the grace period"),
            ));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            out.push((
                "FqdnAddressLimit",
                format!(
                    "{name} has {} addresses: only {MAX_ADDRESSES} are allowed (the latest answer's first, in sorted \
                     order); allow the provider's published address range (ipBlock) instead",
                    self.addresses.len()
                ),
            ));
        }
        if !self.refused.is_empty() {
            let list: Vec<String> = self.refused.iter().map(ToString::to_string).collect();
            out.push((
                "FqdnAddressRefused",
                format!(
                    "{name} answered {}: special-purpose addresses (unspecified, loopback, link-local such as cloud \
                     metadata, multicast, broadcast, reserved) are never allowed by name",
                    list.join(", ")
                ),
            ));
        }
        if self.unstable() {
            out.push((
                "FqdnUnstable",
                format!(
                    "{name} answers differently on every lookup: pods may be handed addresses the policy does not \
                     list yet; allow the provider's published address range (ipBlock) instead"
                ),
            ));
        }
        out
    }
}

/// The resolver's state as the reconciler plans with it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    names: BTreeMap<Fqdn, NameState>,
}

impl Snapshot {
    /// The planner's input: every name's addresses.
    pub fn addresses(&self) -> ResolvedNames {
        self.names
            .iter()
            .map(|(name, state)| (name.clone(), state.in_policy()))
            .collect()
    }

    /// Every name as reported to the hub, sorted.
    pub fn statuses(&self) -> Vec<pb::ResolvedName> {
        self.names.iter().map(|(name, state)| state.status(name)).collect()
    }

    pub fn get(&self, name: &Fqdn) -> Option<&NameState> {
        self.names.get(name)
    }
}

/// The resolver shared by the reconciler and the refresh task. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: ResolverSettings,
    state: Mutex<State>,
    /// Wakes the refresh task: names or the server changed.
    wake: Notify,
    /// Wakes the reconciler: what a policy would carry, or what is reported, changed.
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    names: BTreeMap<Fqdn, NameState>,
    /// Names whose first lookup is in flight.
    pending: BTreeSet<Fqdn>,
    /// The server asked, and a client for it.
    client: Option<(SocketAddr, TokioResolver)>,
    /// The server to ask (`None`: none known).
    server: Option<SocketAddr>,
}

impl Resolver {
    /// `changed` is notified when a refresh changed what a policy carries or what is reported.
    pub fn new(settings: ResolverSettings, changed: Arc<Notify>, metrics: Arc<Metrics>) -> Self {
        let state = State {
            server: settings.server,
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(state),
                wake: Notify::new(),
                changed,
                metrics,
            }),
        }
    }

    /// Keeps exactly `wanted`, asks `cluster_dns` (the DNS Service's ClusterIP) unless `--fqdn-resolver` is set,
    /// looks up every name that was never looked up, and returns the state to plan with. The first lookups are
    /// waited for at most about two lookup timeouts: a silent DNS server never stalls a pass for longer, and the
    /// names that answer later wake the reconciler then.
    pub async fn sync(&self, wanted: &BTreeSet<Fqdn>, cluster_dns: Option<IpAddr>) -> Snapshot {
        let fresh: Vec<Fqdn> = {
            let mut state = self.lock();
            if self.inner.settings.server.is_none() {
                state.server = cluster_dns.map(|ip| SocketAddr::new(ip, 53));
            }
            state.names.retain(|name, _| wanted.contains(name));
            for name in wanted {
                state.names.entry(name.clone()).or_default();
            }
            let State { names, pending, .. } = &mut *state;
            pending.retain(|name| wanted.contains(name));
            let fresh: Vec<Fqdn> = names
                .iter()
                .filter(|(name, s)| !s.looked_up() && !pending.contains(*name))
                .map(|(n, _)| n.clone())
                .collect();
            pending.extend(fresh.iter().cloned());
            fresh
        };
        if !fresh.is_empty() {
            let mut task = tokio::spawn({
                let this = self.clone();
                async move {
                    // Whatever happens to the lookups, the names are no longer pending afterwards (the refresh task
                    // then retries them).
                    let _pending = Pending {
                        resolver: this.clone(),
                        names: fresh.clone(),
                    };
                    // Every new name at once: a silent server then costs one timeout, not one per batch.
                    let changed = this.resolve(fresh, FIRST_LOOKUPS).await;
                    // The refresh task plans its next wake-up from the names' refresh times, new ones included.
                    this.inner.wake.notify_one();
                    // A pass that stopped waiting planned without these names; one that waited re-plans for
                    // nothing, which is cheap. Either way no answer waits for an unrelated event.
                    if changed {
                        this.inner.changed.notify_one();
                    }
                }
            });
            let wait = self.inner.settings.timeout * 2 + Duration::from_millis(500);
            if tokio::time::timeout(wait, &mut task).await.is_err() {
                tracing::warn!("The DNS server is slow to answer new names: planning without them until it does");
            }
        }
        self.snapshot()
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        self.inner.metrics.fqdn_names.set(state.names.len() as i64);
        self.inner
            .metrics
            .fqdn_addresses
            .set(state.names.values().map(|s| s.in_policy().len() as i64).sum());
        self.inner.metrics.fqdn_over_limit.set(
            state
                .names
                .values()
                .filter(|s| s.addresses.len() > MAX_ADDRESSES)
                .count() as i64,
        );
        self.inner
            .metrics
            .fqdn_unstable
            .set(state.names.values().filter(|s| s.unstable()).count() as i64);
        Snapshot {
            names: state.names.clone(),
        }
    }

    /// The refresh task: looks each name up again when it is due, and wakes the reconciler when something it
    /// would plan or report with changed. Runs until the process stops.
    pub async fn refresh(self) {
        loop {
            let next = {
                let state = self.lock();
                state.names.values().filter_map(|s| s.next_refresh).min()
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                () = sleep => {}
                () = self.inner.wake.notified() => continue,
            }
            let now = Instant::now();
            let due: Vec<Fqdn> = {
                let state = self.lock();
                state
                    .names
                    .iter()
                    .filter(|(_, s)| s.next_refresh.is_some_and(|at| at <= now))
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            if !due.is_empty() && self.resolve(due, CONCURRENCY).await {
                self.inner.changed.notify_one();
            }
        }
    }

    /// Looks up `names` (one query per name, a bounded number at once) and takes the answers in. Returns whether
    /// what a policy carries, or what is reported, changed for any of them.
    async fn resolve(&self, names: Vec<Fqdn>, concurrency: usize) -> bool {
        let client = self.client();
        let timeout = self.inner.settings.timeout;
        let answers: Vec<(Fqdn, Answer)> = {
            use futures::StreamExt;
            futures::stream::iter(names.into_iter().map(|name| {
                let client = client.clone();
                async move {
                    let answer = match client {
                        Ok(client) => lookup(&client, &name, timeout).await,
                        Err(error) => Answer::Failed(error),
                    };
                    (name, answer)
                }
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await
        };
        let now = Instant::now();
        let now_unix = tollgate_process::unix_secs();
        let mut changed = false;
        let mut state = self.lock();
        for (name, answer) in answers {
            let result = match &answer {
                Answer::Addresses { .. } => "answered",
                Answer::NxDomain => "nxdomain",
                Answer::Failed(_) => "failed",
            };
            self.inner
                .metrics
                .fqdn_lookups
                .get_or_create(&LookupLabel { result })
                .inc();
            if let Answer::Failed(error) = &answer {
                tracing::warn!(%name, %error, "DNS lookup failed; keeping the last known addresses");
            }
            state.pending.remove(&name);
            // A name dropped from the rules while it was looked up stays dropped.
            let Some(entry) = state.names.get_mut(&name) else {
                continue;
            };
            let before = (entry.in_policy(), entry.status(&name));
            entry.apply(answer, now, now_unix, &self.inner.settings);
            let after = (entry.in_policy(), entry.status(&name));
            if before != after {
                tracing::info!(%name, addresses = after.0.len(), "Addresses of a name changed");
                changed = true;
            }
        }
        changed
    }

    /// A client for the current server (built once per server).
    fn client(&self) -> Result<TokioResolver, String> {
        let mut state = self.lock();
        let Some(server) = state.server else {
            return Err("no DNS server: the cluster's DNS Service was not discovered; set --fqdn-resolver".into());
        };
        if let Some((at, client)) = &state.client
            && *at == server
        {
            return Ok(client.clone());
        }
        let client = dns_client(server, self.inner.settings.timeout).map_err(|e| format!("DNS client: {e}"))?;
        state.client = Some((server, client.clone()));
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section only reads or replaces plain data, so a poisoned lock still holds whole values.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Addresses a name may never stand for: unspecified, "this network", loopback, link-local (cloud metadata lives
/// there), multicast, broadcast and reserved ranges.
pub fn is_special_purpose(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            v4.is_unspecified()
                || first == 0
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || first >= 240
        }
        IpAddr::V6(v6) => {
            let head = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fe80::/10 link-local and the deprecated fec0::/10 site-local.
                || (head & 0xffc0) == 0xfe80
                || (head & 0xffc0) == 0xfec0
        }
    }
}

/// Names whose first lookup is in flight; dropped (even by a panic) when it ends.
struct Pending {
    resolver: Resolver,
    names: Vec<Fqdn>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.resolver.lock();
        for name in &self.names {
            state.pending.remove(name);
        }
    }
}

/// A DNS client that asks exactly `server` (UDP, then TCP for truncated answers), caches nothing (every refresh
/// asks), and reads no hosts file.
fn dns_client(server: SocketAddr, timeout: Duration) -> Result<TokioResolver, hickory_resolver::net::NetError> {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])]);
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 1;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;
    // A and AAAA of every new name at once share a TCP connection when answers are truncated.
    options.max_active_requests = 2 * FIRST_LOOKUPS;
    DnsClient::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
}

/// One lookup of A and AAAA. Any failure of either makes the whole lookup failed (the last good addresses of both
/// families stay); the name is missing only when neither query found it.
pub async fn lookup(client: &TokioResolver, name: &Fqdn, timeout: Duration) -> Answer {
    let Ok(fqdn) = Name::from_ascii(format!("{name}.")) else {
        return Answer::Failed(format!("{name} is not a DNS name"));
    };
    let query = |kind| {
        let fqdn = fqdn.clone();
        async move {
            // The client's own timeout covers each exchange; this bounds a UDP try followed by TCP.
            match tokio::time::timeout(timeout * 2, client.lookup(fqdn, kind)).await {
                Ok(result) => result.map_err(Some),
                Err(_) => Err(None),
            }
        }
    };
    let (a, aaaa) = tokio::join!(query(RecordType::A), query(RecordType::AAAA));
    let mut addresses = BTreeSet::new();
    let mut ttl: Option<u32> = None;
    let mut missing = 0;
    for result in [a, aaaa] {
        match result {
            Ok(found) => {
                for record in found.answers() {
                    ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                    if let Some(ip) = record.data.ip_addr() {
                        addresses.insert(ip);
                    }
                }
            }
            Err(Some(error)) if error.is_nx_domain() => missing += 1,
            Err(Some(error)) if error.is_no_records_found() => {}
            Err(Some(error)) => return Answer::Failed(error.to_string()),
            Err(None) => return Answer::Failed("timed out".into()),
        }
    }
    if missing > 0 && addresses.is_empty() {
        return Answer::NxDomain;
    }
    Answer::Addresses {
        addresses,
        ttl: Duration::from_secs(u64::from(ttl.unwrap_or(0))),
    }
}

/// Every name in the rules the planner will see: the hub's policies and every agent's local rules.
pub fn wanted<'a>(
    intent: &tollgate_common::Intent,
    agents: impl IntoIterator<Item = &'a tollgate_common::planner::Agent>,
) -> BTreeSet<Fqdn> {
    let hub = intent.policies.iter().flat_map(|p| p.spec.egress.iter());
    let local = agents.into_iter().flat_map(|a| match &a.local_egress {
        tollgate_common::planner::LocalEgress::Rules(rules) => rules.as_slice(),
        _ => &[],
    });
    hub.chain(local)
        .flat_map(|rule| rule.to.iter().filter_map(|p| p.fqdn.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ResolverSettings {
        ResolverSettings {
            server: None,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(600),
            grace: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn answer(list: &[&str], ttl: u64) -> Answer {
        Answer::Addresses {
            addresses: ips(list),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn policy(state: &NameState) -> Vec<String> {
        state.in_policy().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ttl_is_clamped_to_the_bounds() {
        let t0 = Instant::now();
        let mut state = NameState::default();
        assert!(!state.looked_up());
        state.apply(answer(&["192.0.2.1"], 1), t0, 0, &settings());
        assert_eq!(state.next_refresh, Some(t0 + Duration::from_secs(30)));
        state.apply(answer(&["192.0.2.1"], 86_400), t0, 0, &settings());
        assert_eq!(state.next_refresh, Some(t0 + Duration::from_secs(600)));
        state.apply(answer(&["192.0.2.1"], 120), t0, 0, &settings());
        assert_eq!(state.next_refresh, Some(t0 + Duration::from_secs(120)));
    }

    #[test]
    fn addresses_stay_for_the_grace_period_and_failures_keep_the_last_good() {
        let t0 = Instant::now();
        let s = settings();
        let mut state = NameState::default();
        state.apply(answer(&["192.0.2.1", "192.0.2.2"], 60), t0, 100, &s);
        state.apply(answer(&["192.0.2.3"], 60), t0 + Duration::from_secs(60), 160, &s);
        assert_eq!(
            policy(&state),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            "rotated out, inside grace"
        );
        let status = state.status(&Fqdn::parse("a.example.com").unwrap());
        assert_eq!(status.addresses[0].first_seen_unix, 100);
        assert_eq!(status.addresses[0].stale_since_unix, 100, "no longer answered");
        assert_eq!(status.addresses[2].stale_since_unix, 0, "in the latest answer");
        // A failed lookup long after: nothing runs out, the error is reported.
        let late = t0 + Duration::from_secs(7200);
        state.apply(Answer::Failed("SERVFAIL".into()), late, 7300, &s);
        assert_eq!(policy(&state), ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
        assert_eq!(state.next_refresh, Some(late + s.min_ttl));
        assert!(
            state.problems(&Fqdn::parse("a.example.com").unwrap())[0]
                .1
                .contains("SERVFAIL")
        );
        // The next answer ends the grace of those not seen for an hour.
        state.apply(answer(&["192.0.2.3"], 60), late, 7300, &s);
        assert_eq!(policy(&state), ["192.0.2.3"]);
        assert!(state.error.is_none());
    }

    #[test]
    fn special_purpose_addresses_are_refused_and_mapped_ones_written_as_ipv4() {
        let t0 = Instant::now();
        let mut state = NameState::default();
        state.apply(
            answer(
                &[
                    "0.0.0.0",
                    "127.0.0.1",
                    "169.254.169.254",
                    "224.0.0.1",
                    "255.255.255.255",
                    "::",
                    "::1",
                    "fe80::1",
                    "ff02::1",
                    "::ffff:203.0.113.7",
                    "2001:db8::7",
                    "10.1.2.3",
                ],
                60,
            ),
            t0,
            0,
            &settings(),
        );
        assert_eq!(policy(&state), ["10.1.2.3", "203.0.113.7", "2001:db8::7"]);
        let name = Fqdn::parse("evil.example.com").unwrap();
        let problems = state.problems(&name);
        assert_eq!(problems[0].0, "FqdnAddressRefused");
        assert!(problems[0].1.contains("169.254.169.254"), "{}", problems[0].1);
        state.apply(answer(&["10.1.2.3"], 60), t0, 0, &settings());
        assert!(state.problems(&name).is_empty(), "cleared by a clean answer");
    }

    #[test]
    fn stored_addresses_are_bounded_and_the_latest_answer_comes_first() {
        let t0 = Instant::now();
        let s = settings();
        let mut state = NameState::default();
        // Many answers of 100 fresh addresses each, all within the grace period.
        for round in 0..5u8 {
            let ips: Vec<String> = (0..100).map(|i| format!("10.{round}.0.{i}")).collect();
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            state.apply(answer(&ips, 60), t0 + Duration::from_secs(u64::from(round)), 0, &s);
        }
        assert!(state.addresses.len() <= MAX_KNOWN, "{}", state.addresses.len());
        let kept = state.in_policy();
        assert_eq!(kept.len(), MAX_ADDRESSES);
        assert!(
            kept.iter().all(|ip| ip.to_string().starts_with("10.4.")),
            "the latest answer first: {kept:?}"
        );
        // A small latest answer: it is kept whole, then the most recently seen others.
        state.apply(answer(&["192.0.2.1"], 60), t0 + Duration::from_secs(10), 0, &s);
        let kept: Vec<String> = state.in_policy().iter().map(ToString::to_string).collect();
        assert!(kept.contains(&"192.0.2.1".to_string()));
        assert_eq!(kept.len(), MAX_ADDRESSES);
        assert!(kept.iter().filter(|ip| ip.starts_with("10.4.")).count() == MAX_ADDRESSES - 1);
    }

    #[test]
    fn without_a_grace_period_a_policy_follows_each_answer() {
        let t0 = Instant::now();
        let s = ResolverSettings {
            grace: Duration::ZERO,
            ..settings()
        };
        let mut state = NameState::default();
        state.apply(answer(&["192.0.2.1"], 60), t0, 0, &s);
        assert_eq!(policy(&state), ["192.0.2.1"]);
        state.apply(answer(&["192.0.2.2"], 60), t0 + Duration::from_secs(60), 60, &s);
        assert_eq!(policy(&state), ["192.0.2.2"]);
    }

    #[test]
    fn nxdomain_empties_the_set_after_the_grace_period() {
        let t0 = Instant::now();
        let s = settings();
        let mut state = NameState::default();
        state.apply(answer(&["2001:db8::1"], 60), t0, 0, &s);
        state.apply(Answer::NxDomain, t0 + Duration::from_secs(60), 60, &s);
        assert_eq!(policy(&state), ["2001:db8::1"], "within the grace period");
        assert!(state.nxdomain);
        state.apply(Answer::NxDomain, t0 + Duration::from_secs(3600), 3600, &s);
        assert!(policy(&state).is_empty());
        let problems = state.problems(&Fqdn::parse("gone.example.com").unwrap());
        assert_eq!(problems[0].0, "FqdnNotFound");
    }

    #[test]
    fn at_most_64_addresses_and_changing_answers_are_reported() {
        let t0 = Instant::now();
        let s = settings();
        let mut state = NameState::default();
        let many: Vec<String> = (0..100).map(|i| format!("198.51.100.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        state.apply(answer(&many, 60), t0, 0, &s);
        assert_eq!(state.in_policy().len(), MAX_ADDRESSES);
        assert_eq!(
            state.in_policy()[0].to_string(),
            "198.51.100.0",
            "the first ones in sorted order"
        );
        let name = Fqdn::parse("big.example.com").unwrap();
        assert_eq!(state.status(&name).known, 100);
        assert_eq!(state.problems(&name)[0].0, "FqdnAddressLimit");
        let mut unstable = NameState::default();
        for i in 0..=UNSTABLE_AFTER {
            unstable.apply(answer(&[&format!("203.0.113.{i}")], 60), t0, 0, &s);
        }
        assert!(unstable.unstable());
        assert!(unstable.status(&name).unstable);
        unstable.apply(answer(&["203.0.113.3"], 60), t0, 0, &s);
        assert!(!unstable.unstable(), "the same answer twice is stable again");
    }
}
