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

/// Every metric of the spoke.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub agents: Family<ModeLabel, Gauge>,
    pub writes: Counter,
    pub deletes: Counter,
    hub_update_age: Gauge,
    /// Unix seconds of the last intent received from the hub (0: none yet).
    last_hub_update: AtomicI64,
    ready: AtomicBool,
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
        registry.register("reconcile_failures", "Failed writes, by reason", failures.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            duration.clone(),
        );
        registry.register("agents", "Agents by egress mode", agents.clone());
        registry.register("policy_writes", "NetworkPolicies created or updated", writes.clone());
        registry.register("policy_deletes", "NetworkPolicies deleted", deletes.clone());
        registry.register(
            "hub_update_age_seconds",
            "Seconds since the last intent received from the hub (-1: none yet, or standalone)",
            hub_update_age.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            agents,
            writes,
            deletes,
            hub_update_age,
            last_hub_update: AtomicI64::new(0),
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that an intent arrived from the hub now.
    pub fn hub_updated(&self) {
        self.last_hub_update.store(unix_now(), Ordering::Release);
    }

    pub fn encode(&self) -> String {
        let last = self.last_hub_update.load(Ordering::Acquire);
        self.hub_update_age
            .set(if last == 0 { -1 } else { (unix_now() - last).max(0) });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serves the health and metrics endpoints until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first full sync")
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
