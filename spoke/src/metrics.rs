//! Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabel {
    /// `answered`, `nxdomain` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    pub condition: &'static str,
}

/// Every metric of the spoke.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    /// Passes that looked at every agent because the full resync was due (not because cluster-wide inputs changed).
    pub full_resyncs: Counter,
    /// What those passes wrote or deleted: an incremental pass should have done it, so it stays 0.
    pub full_resync_writes: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub agents: Family<ModeLabel, Gauge>,
    pub writes: Counter,
    pub deletes: Counter,
    /// 1 while the spoke has a condition (`Diverged`, `IntentNotPersisted`, …), by condition.
    pub conditions: Family<ConditionLabel, Gauge>,
    /// Intents from the hub the spoke refused, by reason (`OtherStore`, `OlderRevision`, `Invalid`).
    pub intents_refused: Family<ReasonLabel, Counter>,
    /// 1 while a stream to the hub is open.
    pub hub_connected: Gauge,
    /// Agents whose egress other NetworkPolicies widen.
    pub agents_widened: Gauge,
    /// DNS names of `fqdn` peers tracked.
    pub fqdn_names: Gauge,
    /// DNS lookups of those names, by result.
    pub fqdn_lookups: Family<LookupLabel, Counter>,
    /// Addresses the names stand for in the policies.
    pub fqdn_addresses: Gauge,
    /// Names with more addresses than a policy takes.
    pub fqdn_over_limit: Gauge,
    /// Names whose answers differ on every lookup.
    pub fqdn_unstable: Gauge,
    hub_update_age: Gauge,
    /// `notAfter` of the client certificate the spoke presents to the hub, Unix seconds.
    certificate_expiry: Family<CertificateLabel, Gauge>,
    /// `notBefore` of the same certificates, Unix seconds.
    certificate_issued: Family<CertificateLabel, Gauge>,
    /// Unix seconds of the last intent received from the hub (0: none yet).
    last_hub_update: AtomicI64,
    ready: AtomicBool,
    /// Why every hub replica refused the spoke in the last round (it keeps dialling with backoff); empty while it is
    /// not refused.
    refused: std::sync::Mutex<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_spoke");
        let reconciles = Counter::default();
        let full_resyncs = Counter::default();
        let full_resync_writes = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let agents = Family::<ModeLabel, Gauge>::default();
        let writes = Counter::default();
        let deletes = Counter::default();
        let hub_update_age = Gauge::default();
        registry.register(
            "reconciles",
            "Reconcile passes over the cluster's agents",
            reconciles.clone(),
        );
        registry.register(
            "full_resyncs",
            "Passes that looked at every agent because the periodic full resync was due",
            full_resyncs.clone(),
        );
        registry.register(
            "full_resync_writes",
            "Objects the full resyncs wrote or deleted (an incremental pass missed them: stays 0)",
            full_resync_writes.clone(),
        );
        registry.register("reconcile_failures", "Failed writes, by reason", failures.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            duration.clone(),
        );
        registry.register("agents", "Agents by egress mode", agents.clone());
        registry.register("policy_writes", "NetworkPolicies created or updated", writes.clone());
        registry.register("policy_deletes", "NetworkPolicies deleted", deletes.clone());
        let conditions = Family::<ConditionLabel, Gauge>::default();
        registry.register(
            "condition",
            "1 while the spoke has this condition (Diverged, IntentNotPersisted, PoliciesHeld, LocalRulesUnavailable)",
            conditions.clone(),
        );
        let intents_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "intents_refused",
            "Intents from the hub refused (another store, an older revision, invalid), by reason",
            intents_refused.clone(),
        );
        registry.register(
            "build",
            "The spoke's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        let hub_connected = Gauge::default();
        registry.register(
            "hub_connected",
            "1 while a stream to the hub is open",
            hub_connected.clone(),
        );
        registry.register(
            "hub_update_age_seconds",
            "Seconds since the last intent received from the hub (-1: none yet, or standalone)",
            hub_update_age.clone(),
        );
        let certificate_issued = Family::<CertificateLabel, Gauge>::default();
        registry.register(
            "certificate_not_before_timestamp_seconds",
            "Unix time the certificates of certificate_expiry_timestamp_seconds became valid",
            certificate_issued.clone(),
        );
        let certificate_expiry = Family::<CertificateLabel, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time the certificate the spoke presents to the hub (client) expires, as last read",
            certificate_expiry.clone(),
        );
        let agents_widened = Gauge::default();
        registry.register(
            "agents_widened",
            "Agents whose egress other NetworkPolicies co-selecting their pods widen",
            agents_widened.clone(),
        );
        let fqdn_names = Gauge::default();
        registry.register("fqdn_names", "DNS names of fqdn peers tracked", fqdn_names.clone());
        let fqdn_lookups = Family::<LookupLabel, Counter>::default();
        registry.register(
            "fqdn_lookups",
            "DNS lookups of fqdn names, by result (answered, nxdomain, failed)",
            fqdn_lookups.clone(),
        );
        let fqdn_addresses = Gauge::default();
        registry.register(
            "fqdn_addresses",
            "Addresses the fqdn names stand for in the policies",
            fqdn_addresses.clone(),
        );
        let fqdn_over_limit = Gauge::default();
        registry.register(
            "fqdn_names_over_limit",
            "fqdn names with more addresses than a policy takes (64)",
            fqdn_over_limit.clone(),
        );
        let fqdn_unstable = Gauge::default();
        registry.register(
            "fqdn_names_unstable",
            "fqdn names whose answers differ on every lookup",
            fqdn_unstable.clone(),
        );
        for result in ["answered", "nxdomain", "failed"] {
            let _ = fqdn_lookups.get_or_create(&LookupLabel { result });
        }
        // Every known label value from the start, at 0: `rate()` and `increase()` then see the first failure, and
        // dashboards and alerts find the series before anything went wrong.
        for kind in crate::retry::ErrorKind::ALL {
            let _ = failures.get_or_create(&ReasonLabel { reason: kind.as_str() });
        }
        for reason in ["OtherStore", "OlderRevision", "Invalid"] {
            let _ = intents_refused.get_or_create(&ReasonLabel { reason });
        }
        Self {
            registry,
            reconciles,
            full_resyncs,
            full_resync_writes,
            failures,
            duration,
            agents,
            writes,
            deletes,
            conditions,
            intents_refused,
            hub_connected,
            agents_widened,
            fqdn_names,
            fqdn_lookups,
            fqdn_addresses,
            fqdn_over_limit,
            fqdn_unstable,
            hub_update_age,
            certificate_expiry,
            certificate_issued,
            last_hub_update: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            refused: std::sync::Mutex::default(),
        }
    }

    /// Records when the certificate in `pem` (the first of a chain) became valid and when it expires (alerts compare
    /// the time left with its lifetime); unparsable PEM records nothing.
    pub fn record_certificate(&self, certificate: &'static str, pem: &[u8]) {
        if let Some((not_before, not_after)) = tollgate_common::certificate::validity_unix_seconds(pem) {
            self.certificate_issued
                .get_or_create(&CertificateLabel { certificate })
                .set(not_before);
            self.certificate_expiry
                .get_or_create(&CertificateLabel { certificate })
                .set(not_after);
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the spoke refused by every hub replica (it is not ready until a stream is accepted); an empty reason
    /// clears it.
    pub fn set_refused(&self, reason: &str) {
        *self.refused.lock().expect("metrics lock") = reason.to_string();
    }

    /// Why the spoke is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        let refused = self.refused.lock().expect("metrics lock").clone();
        if !refused.is_empty() {
            return Some(format!("refused by every hub replica: {refused}"));
        }
        (!self.is_ready()).then(|| "waiting for the first full sync".to_string())
    }

    /// Records that an intent arrived from the hub now.
    pub fn hub_updated(&self) {
        self.last_hub_update
            .store(tollgate_process::unix_secs(), Ordering::Release);
    }

    pub fn encode(&self) -> String {
        let last = self.last_hub_update.load(Ordering::Acquire);
        self.hub_update_age.set(if last == 0 {
            -1
        } else {
            (tollgate_process::unix_secs() - last).max(0)
        });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves the health and metrics endpoints until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.not_ready() {
                    None => (StatusCode::OK, "ok".to_string()),
                    Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
