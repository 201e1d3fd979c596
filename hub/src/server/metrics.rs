//! Prometheus metrics of the hub and its `/healthz`, `/readyz`, `/metrics` endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::sessions::Sessions;
use crate::server::state::Hub;
use crate::server::store::Store;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// Every metric of the hub.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connected: Gauge,
    pub revision: Gauge,
    pub lag: Family<ClusterLabel, Gauge>,
    pub pushes: Counter,
    pub applies: Family<ResultLabel, Counter>,
    pub unreadable: Gauge,
    /// When each registered cluster was last heard of, connected or not (so an alert can see one go silent).
    pub last_seen: Family<ClusterLabel, Gauge>,
    /// `notAfter` of the certificates the hub serves with (`serving`) and trusts (`client-ca`), Unix seconds.
    certificate_expiry: Family<CertificateLabel, Gauge>,
    /// `notBefore` of the same certificates, Unix seconds.
    certificate_issued: Family<CertificateLabel, Gauge>,
    /// TLS handshakes completed, full or resumed from a session ticket.
    handshakes: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate_hub");
        let connected = Gauge::default();
        let revision = Gauge::default();
        let lag = Family::<ClusterLabel, Gauge>::default();
        let pushes = Counter::default();
        let applies = Family::<ResultLabel, Counter>::default();
        registry.register(
            "connected_spokes",
            "Spokes with an open stream to this hub",
            connected.clone(),
        );
        registry.register("latest_revision", "The latest intent revision", revision.clone());
        registry.register(
            "revision_lag",
            "Latest revision minus the revision a connected cluster acknowledged",
            lag.clone(),
        );
        registry.register("pushes", "Intent revisions sent to spokes", pushes.clone());
        registry.register("applies", "Apply calls, by result", applies.clone());
        let unreadable = Gauge::default();
        registry.register(
            "unreadable_revisions",
            "Stored revisions newer than the one served that cannot be read (see `tollgate-hub history`)",
            unreadable.clone(),
        );
        let last_seen = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_last_seen_timestamp_seconds",
            "Unix time the hub last heard from each registered cluster, kept while it is disconnected",
            last_seen.clone(),
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
            "Unix time the hub's certificates expire (serving: its server certificate; client-ca: the CA it trusts)",
            certificate_expiry.clone(),
        );
        let handshakes = Family::<KindLabel, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed: full (certificates signed and verified) or resumed from a session ticket",
            handshakes.clone(),
        );
        for kind in ["full", "resumed"] {
            let _ = handshakes.get_or_create(&KindLabel { kind });
        }
        registry.register(
            "build",
            "The hub's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        // Every result from the start, at 0, so that `rate()` sees the first of each.
        for result in ["committed", "unchanged", "dry-run", "invalid", "error"] {
            let _ = applies.get_or_create(&ResultLabel { result });
        }
        Self {
            registry,
            connected,
            revision,
            lag,
            pushes,
            applies,
            unreadable,
            last_seen,
            certificate_expiry,
            certificate_issued,
            handshakes,
        }
    }
}

impl Metrics {
    /// Counts a completed TLS handshake.
    pub fn record_handshake(&self, kind: Option<rustls::HandshakeKind>) {
        let kind = match kind {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        self.handshakes.get_or_create(&KindLabel { kind }).inc();
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

    /// Refreshes the gauges that describe the present, then encodes everything.
    pub fn encode(
        &self,
        latest_revision: u64,
        unreadable: u64,
        sessions: &Sessions,
        last_seen: &[(String, i64)],
    ) -> String {
        self.unreadable.set(unreadable as i64);
        self.last_seen.clear();
        // A registered cluster whose spoke never connected has no series yet: "silent since" starts with its first
        // hello, not with its registration.
        for (cluster, millis) in last_seen.iter().filter(|(_, millis)| *millis > 0) {
            self.last_seen
                .get_or_create(&ClusterLabel {
                    cluster: cluster.clone(),
                })
                .set(millis / 1000);
        }
        let connected = sessions.connected();
        self.connected.set(connected.len() as i64);
        self.revision.set(latest_revision as i64);
        self.lag.clear();
        for (cluster, session) in connected {
            let lag = latest_revision.saturating_sub(session.applied_revision);
            self.lag.get_or_create(&ClusterLabel { cluster }).set(lag as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

struct Context<S> {
    metrics: Arc<Metrics>,
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
}

/// Serves the health and metrics endpoints until the task is dropped.
pub async fn serve<S: Store>(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    hub: Arc<Hub<S>>,
    sessions: Arc<Sessions>,
) -> anyhow::Result<()> {
    let context = Arc::new(Context { metrics, hub, sessions });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(c): State<Arc<Context<S>>>| async move {
                // Not ready while the store does not answer (a stopped database): applies and hellos would fail.
                match tokio::time::timeout(READY_TIMEOUT, c.hub.store().ping()).await {
                    Ok(Ok(())) => (axum::http::StatusCode::OK, "ok".to_string()),
                    Ok(Err(error)) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("store: {error}")),
                    Err(_) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("store: no answer within {READY_TIMEOUT:?}"),
                    ),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(c): State<Arc<Context<S>>>| async move {
                // A store that does not answer leaves the per-cluster series out of this scrape (readiness says why).
                let last_seen = match tokio::time::timeout(READY_TIMEOUT, c.hub.store().clusters()).await {
                    Ok(Ok(clusters)) => clusters
                        .into_iter()
                        .map(|cluster| (cluster.id, cluster.last_seen_unix_millis))
                        .collect(),
                    _ => Vec::new(),
                };
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    c.metrics.encode(
                        c.hub.snapshot().revision,
                        c.hub.unreadable_revisions(),
                        &c.sessions,
                        &last_seen,
                    ),
                )
            }),
        )
        .with_state(context);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster registered but never connected has no last-seen series: an alert on silence starts with its
    /// first hello.
    #[test]
    fn last_seen_is_exported_only_for_clusters_that_connected() {
        let metrics = Metrics::default();
        let text = metrics.encode(
            1,
            0,
            &Sessions::default(),
            &[("seen".to_string(), 5_000), ("never".to_string(), 0)],
        );
        assert!(
            text.contains("tollgate_hub_cluster_last_seen_timestamp_seconds{cluster=\"seen\"} 5"),
            "{text}"
        );
        assert!(!text.contains("cluster=\"never\""), "{text}");
    }
}
