//! The hub's gRPC services in-process, over real mTLS on loopback: snapshot on connect, push on apply, selector
//! filtering, resumption, a stuck spoke not delaying a healthy one, heartbeat timeout, and the security matrix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_hub::certs::{Leaf, init_ca, issue};
use tollgate_hub::server::grpc::{self, ServeOptions, TlsFiles};
use tollgate_hub::server::sessions::Sessions;
use tollgate_hub::server::state::Hub;
use tollgate_hub::server::store::Store;
use tollgate_hub::server::store::sqlite::SqliteStore;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::spoke_sync_client::SpokeSyncClient;
use tollgate_proto::v1::{self as pb, hub_message, spoke_message};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const WAIT: Duration = Duration::from_secs(10);

struct TestHub {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    hub: Arc<Hub<SqliteStore>>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn certs(dir: &Path) {
    init_ca(dir).unwrap();
    issue(
        dir,
        dir,
        &Leaf::Hub {
            dns_names: vec!["localhost".into()],
            addresses: vec!["127.0.0.1".parse().unwrap()],
        },
    )
    .unwrap();
    for cluster in ["prod-eu", "dev"] {
        issue(
            dir,
            dir,
            &Leaf::Spoke {
                cluster_id: cluster.into(),
            },
        )
        .unwrap();
    }
    issue(dir, dir, &Leaf::Admin { name: "alice".into() }).unwrap();
    // Signed by the hub's CA, but not on its admin list.
    issue(dir, dir, &Leaf::Admin { name: "mallory".into() }).unwrap();
}

/// The clusters every test hub has registered, with the labels its documents are selected by.
const REGISTERED: [(&str, &str); 2] = [("prod-eu", "prod"), ("dev", "dev")];

async fn start(heartbeat: Duration) -> TestHub {
    start_signing(heartbeat, None).await
}

/// A test hub; with `spoke_cert_ttl`, it signs spoke certificates (joins and renewals) with its CA's key.
async fn start_signing(heartbeat: Duration, spoke_cert_ttl: Option<Duration>) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let signer = spoke_cert_ttl.map(|ttl| {
        Arc::new(
            tollgate_hub::server::membership::ReloadingSigner::load(
                &dir.path().join("ca.pem"),
                &dir.path().join("ca-key.pem"),
                &dir.path().join("hub.pem"),
                ttl,
            )
            .unwrap(),
        )
    });
    let options = ServeOptions {
        signer,
        tls: Some(TlsFiles {
            cert: dir.path().join("hub.pem"),
            key: dir.path().join("hub-key.pem"),
            client_ca: dir.path().join("ca.pem"),
        }),
        heartbeat,
        send_timeout: Duration::from_secs(2),
        admins: Arc::new(["alice".to_string()].into()),
        ..ServeOptions::default()
    };
    let store = SqliteStore::open(&dir.path().join("data")).unwrap();
    let hub = Arc::new(Hub::new(store).await.unwrap());
    let listener = grpc::bind("127.0.0.1:0".parse().unwrap(), &options).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = hub.clone();
    let sessions = Arc::new(Sessions::new("hub", heartbeat, false));
    tokio::spawn(sessions.clone().watch_registry(hub.clone(), heartbeat));
    tokio::spawn(async move {
        grpc::serve(served, sessions, listener, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let hub = TestHub {
        dir,
        addr,
        shutdown: Some(tx),
        hub,
    };
    for (cluster, env) in REGISTERED {
        hub.admin()
            .await
            .add_cluster(pb::AddClusterRequest {
                cluster_ids: vec![cluster.into()],
                labels: [("env".to_string(), env.to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    hub
}

impl TestHub {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A channel presenting `identity` (`spoke-<id>` or `admin-<name>`), trusting `ca`.
    async fn channel(&self, identity: Option<&str>, ca: &Path) -> Result<Channel, tonic::transport::Error> {
        self.channel_to("localhost", identity, ca).await
    }

    /// [`Self::channel`] verifying the hub's certificate for `name`.
    async fn channel_to(
        &self,
        name: &str,
        identity: Option<&str>,
        ca: &Path,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name(name);
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(self.path(&format!("{id}.pem"))).unwrap(),
                std::fs::read(self.path(&format!("{id}-key.pem"))).unwrap(),
            ));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// The TLS of a client presenting `identity` and trusting `ca` that resumes the sessions it began, as the spoke
    /// connects (rustls resumes a session only through the configuration that began it).
    fn resuming_config(&self, identity: &str, ca: &Path) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_file_iter(self.path(&format!("{identity}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{identity}-key.pem"))).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption =
            rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(4)));
        Arc::new(config)
    }

    /// A channel over `config` ([`Self::resuming_config`]); each handshake's kind is added to `kinds`.
    async fn resuming_channel(
        &self,
        config: &Arc<rustls::ClientConfig>,
        kinds: &Arc<std::sync::Mutex<Vec<rustls::HandshakeKind>>>,
    ) -> Result<Channel, tonic::transport::Error> {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let (addr, kinds) = (self.addr, kinds.clone());
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let (connector, kinds) = (connector.clone(), kinds.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    kinds.lock().unwrap().extend(tls.get_ref().1.handshake_kind());
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
    }

    /// Replaces the client CA with a new one; whether the hub refused a fresh handshake with the old CA's admin
    /// certificate (verifying the hub for `name` with `server_ca`) within [`WAIT`].
    async fn rotate_client_ca(&self, name: &str, server_ca: &Path) -> bool {
        let rotated = tempfile::tempdir().unwrap();
        init_ca(rotated.path()).unwrap();
        std::fs::copy(rotated.path().join("ca.pem"), self.path("ca.pem")).unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                let refused = match self.channel_to(name, Some("admin-alice"), server_ca).await {
                    Err(_) => true,
                    Ok(channel) => AdminClient::new(channel).history(pb::HistoryRequest {}).await.is_err(),
                };
                if refused {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Cluster prod-eu's first intent over a channel of [`Self::resuming_channel`].
    async fn resumed_intent(
        &self,
        config: &Arc<rustls::ClientConfig>,
        kinds: &Arc<std::sync::Mutex<Vec<rustls::HandshakeKind>>>,
    ) -> Result<pb::IntentRevision, tonic::Status> {
        let channel = self
            .resuming_channel(config, kinds)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut spoke = FakeSpoke::over(channel, "prod-eu", &[], &pb::IntentRevision::default()).await?;
        spoke.intent().await
    }

    /// Cluster prod-eu connects twice with `config`: a full handshake, then a resumed session, both accepted.
    async fn connect_then_resume(
        &self,
        config: &Arc<rustls::ClientConfig>,
        kinds: &Arc<std::sync::Mutex<Vec<rustls::HandshakeKind>>>,
    ) {
        self.resumed_intent(config, kinds).await.expect("a full handshake");
        self.resumed_intent(config, kinds).await.expect("a resumed session");
        assert_eq!(
            *kinds.lock().unwrap(),
            [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
        );
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel(Some("admin-alice"), &self.path("ca.pem")).await.unwrap())
    }

    async fn apply(&self, yaml: &str) -> Result<pb::ApplyResponse, tonic::Status> {
        let request = pb::ApplyRequest {
            sources: vec![pb::Source {
                name: "test.yaml".into(),
                yaml: yaml.into(),
            }],
            dry_run: false,
            prune: false,
            prune_selector: String::new(),
        };
        self.admin().await.apply(request).await.map(|r| r.into_inner())
    }
}

/// A fake spoke: sends hello, then whatever the test pushes; receives hub messages.
struct FakeSpoke {
    tx: mpsc::Sender<pb::SpokeMessage>,
    inbound: tonic::Streaming<pb::HubMessage>,
}

impl FakeSpoke {
    async fn connect(
        hub: &TestHub,
        cert: &str,
        cluster: &str,
        labels: &[(&str, &str)],
        last: u64,
    ) -> Result<Self, tonic::Status> {
        let held = pb::IntentRevision {
            revision: last,
            ..Default::default()
        };
        Self::connect_holding(hub, cert, cluster, labels, &held).await
    }

    /// Connects saying it enforces `held` (its revision, store and digest), as a spoke resuming.
    async fn connect_holding(
        hub: &TestHub,
        cert: &str,
        cluster: &str,
        labels: &[(&str, &str)],
        held: &pb::IntentRevision,
    ) -> Result<Self, tonic::Status> {
        let channel = hub
            .channel(Some(cert), &hub.path("ca.pem"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Self::over(channel, cluster, labels, held).await
    }

    /// [`Self::connect_holding`] over `channel`.
    async fn over(
        channel: Channel,
        cluster: &str,
        labels: &[(&str, &str)],
        held: &pb::IntentRevision,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            cluster_id: cluster.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            spoke_version: "test".into(),
            last_applied_revision: held.revision,
            store_id: held.store_id.clone(),
            digest: held.digest.clone(),
            ..Default::default()
        };
        tx.send(pb::SpokeMessage {
            msg: Some(spoke_message::Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let inbound = SpokeSyncClient::new(channel)
            .sync(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, inbound })
    }

    /// How the stream ended, if it ends within `within` (`Some(None)`: closed without a status).
    async fn end(&mut self, within: Duration) -> Option<Option<tonic::Status>> {
        tokio::time::timeout(within, async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
        .await
        .ok()
    }

    /// The next intent revision, skipping heartbeats.
    async fn intent(&mut self) -> Result<pb::IntentRevision, tonic::Status> {
        loop {
            let message = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no intent within the deadline"))??
                .ok_or_else(|| tonic::Status::aborted("stream ended"))?;
            if let Some(hub_message::Msg::Intent(intent)) = message.msg {
                return Ok(intent);
            }
        }
    }

    async fn ack(&self, revision: u64) {
        self.tx
            .send(pb::SpokeMessage {
                msg: Some(spoke_message::Msg::Ack(pb::Ack {
                    revision,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
}

fn policy(name: &str, env: &str, cidr: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
         clusterSelector: {{matchLabels: {{env: {env}}}}}\n  egress: [{{to: [{{ipBlock: {{cidr: {cidr}}}}}]}}]\n"
    )
}

#[tokio::test]
async fn snapshot_on_connect_push_on_apply_selector_filtering_and_resume() {
    let hub = start(Duration::from_secs(10)).await;
    let mut prod = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], 0)
        .await
        .unwrap();
    let mut dev = FakeSpoke::connect(&hub, "spoke-dev", "dev", &[("env", "dev")], 0)
        .await
        .unwrap();
    let first = prod.intent().await.unwrap();
    assert_eq!((first.revision, first.documents.len(), first.unchanged), (0, 0, false));
    dev.intent().await.unwrap();

    let applied = hub.apply(&policy("llm", "prod", "104.18.0.0/16")).await.unwrap();
    assert_eq!(applied.revision, 1);
    let pushed = prod.intent().await.unwrap();
    assert_eq!(pushed.revision, 1);
    assert_eq!(pushed.documents.len(), 1);
    assert_eq!(pushed.documents[0].name, "llm");
    assert!(pushed.documents[0].yaml.contains("104.18.0.0/16"));
    let other = dev.intent().await.unwrap();
    assert_eq!(
        (other.revision, other.documents.len(), other.unchanged),
        (1, 0, true),
        "dev never sees prod's intent"
    );

    prod.ack(1).await;
    let admin = &mut hub.admin().await;
    tokio::time::timeout(WAIT, async {
        loop {
            let status = admin
                .fleet_status(pb::FleetStatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            if status
                .clusters
                .iter()
                .any(|c| c.cluster_id == "prod-eu" && c.applied_revision == 1 && c.connected)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("prod-eu reported at revision 1");

    // Reconnect with the applied revision, store and digest: nothing changed for this cluster, so no documents
    // are resent.
    assert_eq!(pushed.store_id, hub.hub.store().store_id());
    assert_eq!(pushed.digest.len(), 64, "{pushed:?}");
    drop(prod);
    let mut again = FakeSpoke::connect_holding(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], &pushed)
        .await
        .unwrap();
    let resumed = again.intent().await.unwrap();
    assert_eq!(
        (resumed.revision, resumed.unchanged, resumed.documents.len()),
        (1, true, 0)
    );
    // A spoke whose applied revision is behind gets the documents again.
    hub.apply(&policy("dev-only", "dev", "198.51.100.0/24")).await.unwrap();
    again.intent().await.unwrap();
    let mut stale = FakeSpoke::connect_holding(&hub, "spoke-dev", "dev", &[("env", "dev")], &other)
        .await
        .unwrap();
    let refreshed = stale.intent().await.unwrap();
    assert_eq!(
        (refreshed.revision, refreshed.unchanged, refreshed.documents.len()),
        (2, false, 1)
    );
}

#[tokio::test]
async fn a_stuck_spoke_never_delays_a_healthy_one_and_bursts_coalesce() {
    let hub = start(Duration::from_secs(10)).await;
    let mut healthy = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], 0)
        .await
        .unwrap();
    // The stuck spoke connects and never reads again.
    let _stuck = FakeSpoke::connect(&hub, "spoke-dev", "dev", &[("env", "prod")], 0)
        .await
        .unwrap();
    healthy.intent().await.unwrap();
    let mut latest = 0;
    for i in 0..40 {
        latest = hub
            .apply(&policy(&format!("p{i}"), "prod", "10.0.0.0/8"))
            .await
            .unwrap()
            .revision;
    }
    let started = std::time::Instant::now();
    let mut received = 0;
    loop {
        let intent = healthy.intent().await.unwrap();
        received += 1;
        if intent.revision == latest {
            assert_eq!(intent.documents.len(), 40);
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the healthy spoke waited {:?}",
        started.elapsed()
    );
    assert!(received <= 40, "received {received} intents for 40 revisions");
}

/// In paused time (the clock moves only when every task waits), so the heartbeats are exact whatever the load.
#[tokio::test(start_paused = true)]
async fn a_silent_spoke_is_dropped_after_three_heartbeats() {
    let hub = start(Duration::from_millis(200)).await;
    let mut spoke = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[], 0)
        .await
        .unwrap();
    spoke.intent().await.unwrap();
    let started = tokio::time::Instant::now();
    let ended = loop {
        match tokio::time::timeout(WAIT, spoke.inbound.message())
            .await
            .expect("the hub drops the stream")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("a heartbeat timeout is an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat timeout"), "{status:?}");
    // Dropped once nothing was heard for three periods (600 ms after the hello), at the next tick.
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(600)..=Duration::from_millis(800)).contains(&waited),
        "dropped after {waited:?}"
    );
}

#[tokio::test]
async fn security_matrix() {
    let hub = start(Duration::from_secs(10)).await;
    let ca = hub.path("ca.pem");

    // No client certificate: the TLS handshake or the first call fails.
    let no_cert = match hub.channel(None, &ca).await {
        Err(_) => true,
        Ok(channel) => AdminClient::new(channel).history(pb::HistoryRequest {}).await.is_err(),
    };
    assert!(no_cert, "a client without a certificate was served");

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    let foreign_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(other.path().join("admin-alice.pem")).unwrap(),
            std::fs::read(other.path().join("admin-alice-key.pem")).unwrap(),
        ));
    let foreign = match Channel::from_shared(format!("https://{}", hub.addr))
        .unwrap()
        .tls_config(foreign_tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => AdminClient::new(channel).history(pb::HistoryRequest {}).await.is_err(),
    };
    assert!(foreign, "a certificate of another CA was served");

    // A spoke certificate claiming another cluster.
    let claim = FakeSpoke::connect(&hub, "spoke-dev", "prod-eu", &[("env", "prod")], 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(claim.code(), Code::PermissionDenied, "{claim:?}");
    assert!(claim.message().contains("is for cluster \"dev\""), "{claim:?}");

    // A spoke certificate on the admin API.
    let channel = hub.channel(Some("spoke-prod-eu"), &ca).await.unwrap();
    let refused = AdminClient::new(channel)
        .history(pb::HistoryRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // An admin certificate on the spoke API.
    let refused = FakeSpoke::connect(&hub, "admin-alice", "prod-eu", &[], 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Plaintext only on loopback.
    let plaintext = ServeOptions::default();
    let err = grpc::bind("0.0.0.0:0".parse().unwrap(), &plaintext).await.unwrap_err();
    assert!(err.to_string().contains("only allowed on a loopback address"), "{err}");

    // An admin certificate signed by the hub's CA whose name is not on the admin list.
    let channel = hub.channel(Some("admin-mallory"), &ca).await.unwrap();
    let refused = AdminClient::new(channel)
        .apply(pb::ApplyRequest {
            sources: vec![pb::Source {
                name: "x.yaml".into(),
                yaml: policy("sneaky", "prod", "0.0.0.0/0"),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("not on this hub's admin list"),
        "{refused:?}"
    );
    assert_eq!(hub.hub.snapshot().revision, 0, "nothing applied");

    // Nothing leaked: the refused hellos recorded nothing about the registered clusters.
    let clusters = hub.hub.store().clusters().await.unwrap();
    assert_eq!(clusters.len(), REGISTERED.len());
    assert!(clusters.iter().all(|c| c.first_seen_unix_millis == 0), "{clusters:?}");
}

/// Joining: a token works once for a certificate of its cluster, made from the spoke's CSR; the certificate opens
/// the cluster's stream and renews itself; a removal revokes it for renewals too. With client certificates optional
/// for joins, nothing else can be called without one.
#[tokio::test]
async fn a_join_token_works_once_and_only_join_is_served_without_a_certificate() {
    let hub = start_signing(Duration::from_secs(10), Some(Duration::from_secs(3600))).await;
    let added = hub
        .admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["joiner".into()],
            token_ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.tokens.len(), 1);
    let token = tollgate_common::join::JoinToken::parse(&added.tokens[0].token).unwrap();
    assert_eq!(token.cluster_id, "joiner");

    // Without a client certificate: only Join answers.
    let anonymous = hub.channel(None, &hub.path("ca.pem")).await.unwrap();
    let refused = AdminClient::new(anonymous.clone())
        .history(pb::HistoryRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let (_, rx) = mpsc::channel::<pb::SpokeMessage>(1);
    let refused = SpokeSyncClient::new(anonymous.clone())
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let renew = tollgate_proto::v1::membership_client::MembershipClient::new(anonymous.clone())
        .renew(pb::RenewRequest { csr_pem: String::new() })
        .await
        .unwrap_err();
    assert_eq!(renew.code(), Code::Unauthenticated, "{renew:?}");

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI("tollgate://cluster/joiner".try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let join = |secret: &str, cluster: &str| pb::JoinRequest {
        cluster_id: cluster.into(),
        token_secret: secret.into(),
        csr_pem: csr.clone(),
    };
    let mut membership = tollgate_proto::v1::membership_client::MembershipClient::new(anonymous);
    // Another cluster's name with this token, or a wrong secret: refused, and the token still works after.
    let wrong = membership.join(join(&token.secret, "prod-eu")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    let wrong = membership.join(join(&"0".repeat(64), "joiner")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    let issued = membership
        .join(join(&token.secret, "joiner"))
        .await
        .unwrap()
        .into_inner();
    assert!(issued.ca_pem.contains("BEGIN CERTIFICATE"));
    let again = membership.join(join(&token.secret, "joiner")).await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(again.message().contains("unknown or was used already"), "{again:?}");

    // The certificate opens the cluster's stream.
    std::fs::write(hub.path("spoke-joiner.pem"), &issued.certificate_pem).unwrap();
    std::fs::write(hub.path("spoke-joiner-key.pem"), key.serialize_pem()).unwrap();
    let mut spoke = FakeSpoke::connect(&hub, "spoke-joiner", "joiner", &[], 0)
        .await
        .unwrap();
    spoke.intent().await.unwrap();
    // And renews itself.
    let channel = hub.channel(Some("spoke-joiner"), &hub.path("ca.pem")).await.unwrap();
    let mut renewing = tollgate_proto::v1::membership_client::MembershipClient::new(channel.clone());
    let renewed = renewing
        .renew(pb::RenewRequest { csr_pem: csr.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.not_after_unix_millis >= issued.not_after_unix_millis);
    // An admin certificate cannot be renewed as a cluster's.
    let admin = hub.channel(Some("admin-alice"), &hub.path("ca.pem")).await.unwrap();
    let refused = tollgate_proto::v1::membership_client::MembershipClient::new(admin)
        .renew(pb::RenewRequest { csr_pem: csr.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Removed: the certificate renews no more.
    hub.admin()
        .await
        .remove_cluster(pb::RemoveClusterRequest {
            cluster_id: "joiner".into(),
        })
        .await
        .unwrap();
    let refused = renewing.renew(pb::RenewRequest { csr_pem: csr }).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// A removal made through another replica, followed at once by a new registration of the same id, still closes
/// this replica's stream of the revoked certificate within a heartbeat: the registry check compares the stream's
/// certificate with the removal time, not only whether the id is registered.
#[tokio::test(start_paused = true)]
async fn a_stream_of_a_revoked_certificate_closes_even_if_the_id_is_registered_again_elsewhere() {
    let hub = start(Duration::from_secs(1)).await;
    let mut prod = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[], 0)
        .await
        .unwrap();
    prod.intent().await.unwrap();
    // What another replica does: remove and re-register in the shared store, without this replica's sessions.
    let store = hub.hub.store();
    let now = tollgate_process::unix_millis();
    assert!(store.remove_cluster("prod-eu", now).await.unwrap());
    assert!(
        store
            .register_cluster("prod-eu", &Default::default(), now + 1)
            .await
            .unwrap()
    );
    let ended = prod
        .end(Duration::from_millis(2_500))
        .await
        .expect("closed within a heartbeat (before the heartbeat timeout)");
    let status = ended.expect("closed with a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// A renewed hub certificate on disk is served to new handshakes without a restart; connections already open keep
/// working. A new client CA likewise: certificates of the old one are refused from then on.
#[tokio::test]
async fn the_hubs_certificate_and_client_ca_are_reloaded_without_a_restart() {
    let hub = start(Duration::from_secs(10)).await;
    let mut open = hub.admin().await;
    open.history(pb::HistoryRequest {}).await.unwrap();

    let renewed = tempfile::tempdir().unwrap();
    issue(
        hub.dir.path(),
        renewed.path(),
        &Leaf::Hub {
            dns_names: vec!["renewed.example".into()],
            addresses: vec![],
        },
    )
    .unwrap();
    for name in ["hub.pem", "hub-key.pem"] {
        std::fs::copy(renewed.path().join(name), hub.path(name)).unwrap();
    }
    let ca = hub.path("ca.pem");
    let served = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(channel) = hub.channel_to("renewed.example", Some("admin-alice"), &ca).await
                && AdminClient::new(channel).history(pb::HistoryRequest {}).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the renewed certificate was never served");
    let old_name = match hub.channel(Some("admin-alice"), &ca).await {
        Err(_) => true,
        Ok(channel) => AdminClient::new(channel).history(pb::HistoryRequest {}).await.is_err(),
    };
    assert!(old_name, "new handshakes still got the old certificate");
    open.history(pb::HistoryRequest {})
        .await
        .expect("an open connection keeps working");

    // A new client CA: admin certificates of the old CA are refused on new connections (the clients still trust
    // the old CA for the hub's own certificate, which it signed).
    let server_ca = hub.path("server-ca.pem");
    std::fs::copy(&ca, &server_ca).unwrap();
    assert!(
        hub.rotate_client_ca("renewed.example", &server_ca).await,
        "a certificate of the old client CA was still accepted"
    );
}

/// A hub without its CA's key prints no token and refuses joins with the reason.
#[tokio::test]
async fn a_hub_without_the_ca_key_has_no_tokens() {
    let hub = start(Duration::from_secs(10)).await;
    let added = hub
        .admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["plain".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.tokens.is_empty());
    let refused = hub
        .admin()
        .await
        .create_join_token(pb::CreateJoinTokenRequest {
            cluster_id: "plain".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("--client-ca-key"), "{refused:?}");
}

/// Only registered clusters connect; the refusal names the command that registers one.
#[tokio::test]
async fn an_unregistered_cluster_is_refused_with_the_command_that_registers_it() {
    let hub = start(Duration::from_secs(10)).await;
    issue(
        hub.dir.path(),
        hub.dir.path(),
        &Leaf::Spoke {
            cluster_id: "stranger".into(),
        },
    )
    .unwrap();
    let refused = FakeSpoke::connect(&hub, "spoke-stranger", "stranger", &[("env", "prod")], 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("`tollgate-hub clusters add stranger`"),
        "{refused:?}"
    );
    assert!(
        hub.hub
            .store()
            .clusters()
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != "stranger"),
        "nothing recorded"
    );
    // Registered, it connects.
    hub.admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["stranger".into()],
            labels: HashMap::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut admitted = FakeSpoke::connect(&hub, "spoke-stranger", "stranger", &[], 0)
        .await
        .unwrap();
    admitted.intent().await.unwrap();
    // Registering twice is an error that changes nothing.
    let twice = hub
        .admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["other".into(), "stranger".into()],
            labels: [("env".to_string(), "prod".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists, "{twice:?}");
    assert!(
        hub.hub
            .store()
            .clusters()
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != "other"),
        "all or nothing"
    );
    // Bad ids and labels name the field.
    let bad = hub
        .admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["Bad_Id".into()],
            labels: HashMap::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("clusterId \"Bad_Id\""), "{bad:?}");
    let bad = hub
        .admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["fine".into()],
            labels: [("env".to_string(), "not valid!".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        bad.message().contains("labels.env") && bad.message().contains("invalid label value"),
        "{bad:?}"
    );
    assert!(hub.hub.store().clusters().await.unwrap().iter().all(|c| c.id != "fine"));
}

/// The labels documents are selected by are the registry's: a spoke cannot claim `env=prod` to receive prod's
/// documents, and an admin's relabelling reaches the connected stream at once.
#[tokio::test]
async fn documents_follow_the_registrys_labels_not_the_spokes_claims() {
    let hub = start(Duration::from_secs(10)).await;
    hub.apply(&policy("llm", "prod", "104.18.0.0/16")).await.unwrap();
    // dev claims env=prod in its hello.
    let mut dev = FakeSpoke::connect(&hub, "spoke-dev", "dev", &[("env", "prod")], 0)
        .await
        .unwrap();
    let first = dev.intent().await.unwrap();
    assert_eq!(
        (first.revision, first.documents.len()),
        (1, 0),
        "the claim selected nothing"
    );
    let listed = hub
        .admin()
        .await
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let row = listed.clusters.iter().find(|c| c.cluster_id == "dev").unwrap();
    assert_eq!(row.labels.get("env").map(String::as_str), Some("dev"));
    assert_eq!(
        row.reported_labels.get("env").map(String::as_str),
        Some("prod"),
        "shown, not used"
    );
    assert!(row.connected);
    assert!(
        row.certificate_not_after_unix_millis > tollgate_process::unix_millis(),
        "{row:?}"
    );

    // An admin moves dev to prod: its stream is sent prod's documents without reconnecting.
    let labelled = hub
        .admin()
        .await
        .label_cluster(pb::LabelClusterRequest {
            cluster_id: "dev".into(),
            set: [("env".to_string(), "prod".to_string())].into(),
            remove: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labelled.labels.get("env").map(String::as_str), Some("prod"));
    let moved = dev.intent().await.unwrap();
    assert_eq!((moved.revision, moved.unchanged), (1, false));
    assert_eq!(moved.documents.len(), 1);
    assert_eq!(moved.documents[0].name, "llm");
    // Removing the label takes them away again.
    hub.admin()
        .await
        .label_cluster(pb::LabelClusterRequest {
            cluster_id: "dev".into(),
            set: HashMap::new(),
            remove: vec!["env".into()],
        })
        .await
        .unwrap();
    let emptied = dev.intent().await.unwrap();
    assert_eq!((emptied.unchanged, emptied.documents.len()), (false, 0));
    // Unknown clusters and bad labels are refused.
    let unknown = hub
        .admin()
        .await
        .label_cluster(pb::LabelClusterRequest {
            cluster_id: "nowhere".into(),
            set: [("a".to_string(), "b".to_string())].into(),
            remove: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

/// Removing a cluster closes its stream with PermissionDenied, drops its rows, and revokes every certificate issued
/// before the removal, also once the id is registered again; a certificate issued after it works.
#[tokio::test]
async fn removing_a_cluster_closes_its_stream_and_revokes_its_certificates() {
    let hub = start(Duration::from_secs(10)).await;
    let mut prod = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[], 0)
        .await
        .unwrap();
    prod.intent().await.unwrap();
    let removed = hub
        .admin()
        .await
        .remove_cluster(pb::RemoveClusterRequest {
            cluster_id: "prod-eu".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.disconnected);
    let ended = prod.end(WAIT).await.expect("the stream closed");
    let status = ended.expect("closed with a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let fleet = hub
        .admin()
        .await
        .fleet_status(pb::FleetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        fleet.clusters.iter().all(|c| c.cluster_id != "prod-eu"),
        "its rows left status"
    );

    // Registered again: the old certificate stays refused.
    hub.admin()
        .await
        .add_cluster(pb::AddClusterRequest {
            cluster_ids: vec!["prod-eu".into()],
            labels: HashMap::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[], 0)
        .await
        .err()
        .expect("the certificate issued before the removal is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("issued before the cluster was removed"),
        "{refused:?}"
    );
    // A certificate valid from after the removal connects.
    let not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let fresh = hub.dir.path().join("fresh");
    tollgate_hub::certs::issue_valid(
        hub.dir.path(),
        &fresh,
        &Leaf::Spoke {
            cluster_id: "prod-eu".into(),
        },
        not_before,
        not_before + time::Duration::hours(1),
    )
    .unwrap();
    for name in ["spoke-prod-eu.pem", "spoke-prod-eu-key.pem"] {
        std::fs::copy(fresh.join(name), hub.path(&format!("fresh-{name}"))).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut renewed = FakeSpoke::connect(&hub, "fresh-spoke-prod-eu", "prod-eu", &[], 0)
        .await
        .unwrap();
    renewed.intent().await.unwrap();
}

#[tokio::test]
async fn invalid_apply_changes_nothing_and_rollback_is_exact() {
    let hub = start(Duration::from_secs(10)).await;
    let first = hub.apply(&policy("a", "prod", "10.0.0.0/8")).await.unwrap();
    assert_eq!(first.revision, 1);
    let bad = format!(
        "{}---\n{}",
        policy("b", "prod", "10.0.0.1/8"),
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: c}\nspec:\n  egress: [{ports: [{port: 443}]}]\n"
    );
    let refused = hub.apply(&bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("spec.egress[0].to[0].ipBlock.cidr"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("OVN-Kubernetes"), "{}", refused.message());
    assert_eq!(hub.hub.snapshot().revision, 1, "nothing committed");

    let second = hub.apply(&policy("a", "prod", "172.16.0.0/12")).await.unwrap();
    assert_eq!(second.revision, 2);
    assert_eq!(second.changes[0].action, "configured");
    let diff = &second.changes[0].diff;
    assert!(
        diff.lines()
            .any(|l| l.starts_with('-') && l.ends_with("cidr: 10.0.0.0/8")),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with('+') && l.ends_with("cidr: 172.16.0.0/12")),
        "{diff}"
    );
    let unchanged = hub.apply(&policy("a", "prod", "172.16.0.0/12")).await.unwrap();
    assert_eq!(unchanged.revision, 0, "no new revision when nothing changes");

    let mut admin = hub.admin().await;
    let rolled = admin
        .rollback(pb::RollbackRequest { to_revision: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.revision, 3);
    let now = admin
        .get(pb::GetRequest {
            kind: String::new(),
            name: String::new(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let then = admin
        .get(pb::GetRequest {
            kind: String::new(),
            name: String::new(),
            revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.documents, then.documents, "rollback restores revision 1 exactly");
    let history = admin.history(pb::HistoryRequest {}).await.unwrap().into_inner();
    let operations: Vec<&str> = history.revisions.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(operations, ["apply", "apply", "rollback"]);
    let missing = admin
        .rollback(pb::RollbackRequest { to_revision: 99 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// A spoke that already applied a revision this hub has not published yet (it moved here from a replica that saw
/// the revision first) makes the hub catch up from the store: it is answered `unchanged` at that revision, never
/// sent an older intent.
#[tokio::test]
async fn a_hello_ahead_of_the_hub_is_answered_from_the_store() {
    let hub = start(Duration::from_secs(10)).await;
    let documents =
        tollgate_common::document::DocumentSet::from_yaml("test", &policy("p1", "prod", "104.18.0.0/16")).unwrap();
    // Committed behind this hub's back, as another replica would.
    hub.hub
        .store()
        .commit(
            0,
            tollgate_hub::server::store::Operation::Apply,
            "another replica",
            "alice",
            &documents,
            1,
        )
        .await
        .unwrap();
    assert_eq!(hub.hub.snapshot().revision, 0);

    let held = pb::IntentRevision {
        revision: 1,
        store_id: hub.hub.store().store_id().to_string(),
        digest: documents.digest(),
        ..Default::default()
    };
    let mut spoke = FakeSpoke::connect_holding(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], &held)
        .await
        .unwrap();
    let intent = spoke.intent().await.unwrap();
    assert_eq!((intent.revision, intent.unchanged), (1, true), "{intent:?}");
    assert_eq!(hub.hub.snapshot().revision, 1);
}

/// What a hello says it holds decides whether the hub resends the documents: the same revision with another
/// store, or with another digest (a cache edited by hand), gets the documents; only the exact match resumes.
#[tokio::test]
async fn only_the_same_store_and_digest_resume() {
    let hub = start(Duration::from_secs(10)).await;
    hub.apply(&policy("llm", "prod", "104.18.0.0/16")).await.unwrap();
    let mut first = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], 0)
        .await
        .unwrap();
    let held = first.intent().await.unwrap();
    assert_eq!((held.revision, held.documents.len()), (1, 1));
    drop(first);
    for (store_id, digest, resumes) in [
        (held.store_id.clone(), held.digest.clone(), true),
        ("another-store".to_string(), held.digest.clone(), false),
        (held.store_id.clone(), "0".repeat(64), false),
        (String::new(), held.digest.clone(), false),
    ] {
        let hello = pb::IntentRevision {
            store_id: store_id.clone(),
            digest: digest.clone(),
            ..held.clone()
        };
        let mut spoke = FakeSpoke::connect_holding(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], &hello)
            .await
            .unwrap();
        let intent = spoke.intent().await.unwrap();
        assert_eq!(
            (intent.unchanged, intent.documents.len(), intent.adopt),
            (resumes, if resumes { 0 } else { 1 }, false),
            "store {store_id:?}, digest {digest:?}"
        );
        assert_eq!(
            (intent.store_id.as_str(), intent.digest.as_str()),
            (held.store_id.as_str(), held.digest.as_str())
        );
    }
}

/// One live stream per cluster: a second hello for the same cluster replaces the first, whose stream ends.
#[tokio::test]
async fn a_second_stream_of_a_cluster_replaces_the_first() {
    let hub = start(Duration::from_secs(10)).await;
    let mut first = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], 0)
        .await
        .unwrap();
    first.intent().await.unwrap();
    let mut second = FakeSpoke::connect(&hub, "spoke-prod-eu", "prod-eu", &[("env", "prod")], 0)
        .await
        .unwrap();
    second.intent().await.unwrap();
    assert!(first.end(WAIT).await.is_some(), "the first stream is still open");
    hub.apply(&policy("llm", "prod", "104.18.0.0/16")).await.unwrap();
    assert_eq!(
        second.intent().await.unwrap().revision,
        1,
        "the second stream is the live one"
    );
}

/// A connection that never completes its TLS handshake is closed after the handshake timeout (10 s), so idle
/// sockets cannot pile up on the hub.
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_handshakes_is_closed() {
    use tokio::io::AsyncReadExt as _;
    let hub = start(Duration::from_secs(10)).await;
    let mut socket = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buffer))
        .await
        .expect("the hub kept a silent connection open for 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(11)).contains(&waited),
        "closed after {waited:?}, not at the handshake timeout"
    );
}

/// One connection holds at most `MAX_STREAMS_PER_CONNECTION` streams at once: with that many open (spoke streams
/// that never say hello), the next call on the connection waits, while the same call on another connection is
/// answered at once.
#[tokio::test]
async fn one_connection_cannot_open_more_than_the_stream_limit() {
    let hub = start(Duration::from_secs(10)).await;
    let channel = hub.channel(Some("spoke-prod-eu"), &hub.path("ca.pem")).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..grpc::MAX_STREAMS_PER_CONNECTION {
        let (tx, rx) = mpsc::channel::<pb::SpokeMessage>(1);
        let mut client = SpokeSyncClient::new(channel.clone());
        held.push((
            tx,
            tokio::spawn(async move { client.sync(ReceiverStream::new(rx)).await }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status_call = |channel: Channel| async move {
        AdminClient::new(channel)
            .fleet_status(pb::FleetStatusRequest::default())
            .await
    };
    // A spoke certificate is refused by the admin service: an immediate answer, when the call gets a stream.
    let other = hub.channel(Some("spoke-prod-eu"), &hub.path("ca.pem")).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(2), status_call(other)).await;
    assert_eq!(
        answered.expect("answered at once").unwrap_err().code(),
        Code::PermissionDenied
    );
    let queued = tokio::time::timeout(Duration::from_secs(2), status_call(channel)).await;
    assert!(queued.is_err(), "a stream beyond the limit was opened: {queued:?}");
}

/// A spoke that reconnects resumes its TLS session (no certificate signed or verified again), and the stream is
/// accepted as after a full handshake. Neither a session nor a connection outlives the certificate it began with:
/// once that expired, a new stream on the connection is refused, and so is a resumed session, both naming why (the
/// attack: keep using a connection or a session after the certificate expired).
#[tokio::test]
async fn neither_a_connection_nor_a_resumed_session_outlives_its_certificate() {
    let hub = start(Duration::from_secs(10)).await;
    std::fs::create_dir_all(hub.path("short")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    tollgate_hub::certs::issue_valid(
        hub.dir.path(),
        &hub.path("short"),
        &Leaf::Spoke {
            cluster_id: "prod-eu".into(),
        },
        now - time::Duration::minutes(1),
        now + time::Duration::seconds(3),
    )
    .unwrap();
    for name in ["spoke-prod-eu.pem", "spoke-prod-eu-key.pem"] {
        std::fs::copy(hub.path("short").join(name), hub.path(&format!("short-{name}"))).unwrap();
    }
    let config = hub.resuming_config("short-spoke-prod-eu", &hub.path("ca.pem"));
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let open = hub.resuming_channel(&config, &kinds).await.unwrap();
    let held = pb::IntentRevision::default();
    FakeSpoke::over(open.clone(), "prod-eu", &[], &held)
        .await
        .unwrap()
        .intent()
        .await
        .expect("a full handshake");
    hub.resumed_intent(&config, &kinds).await.expect("a resumed session");
    assert_eq!(
        *kinds.lock().unwrap(),
        [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = match FakeSpoke::over(open, "prod-eu", &[], &held).await {
        Ok(mut spoke) => spoke
            .intent()
            .await
            .expect_err("a stream after the certificate expired"),
        Err(status) => status,
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");

    let refused = hub
        .resumed_intent(&config, &kinds)
        .await
        .expect_err("a session of an expired certificate");
    assert_eq!(
        kinds.lock().unwrap().last(),
        Some(&rustls::HandshakeKind::Resumed),
        "the hub resumed the session: the listener must refuse its certificate"
    );
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("resumed TLS session") && refused.message().contains("expired"),
        "{refused:?}"
    );
}

/// Session tickets are bound to the client CA: after a rotation, a session begun with a certificate of the old CA
/// is not resumed, so the certificate is checked against the new CA and refused (the attack: keep a revoked CA's
/// identity alive through its sessions).
#[tokio::test]
async fn no_session_outlives_a_rotation_of_the_client_ca() {
    let hub = start(Duration::from_secs(10)).await;
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server_ca = hub.path("server-ca.pem");
    std::fs::copy(hub.path("ca.pem"), &server_ca).unwrap();
    let config = hub.resuming_config("spoke-prod-eu", &server_ca);
    let connect = || hub.resumed_intent(&config, &kinds);
    hub.connect_then_resume(&config, &kinds).await;

    assert!(
        hub.rotate_client_ca("localhost", &server_ca).await,
        "the new client CA was never used"
    );
    let before = kinds.lock().unwrap().len();
    assert!(
        connect().await.is_err(),
        "a session of the old client CA was resumed and accepted"
    );
    assert!(
        !kinds.lock().unwrap()[before..].contains(&rustls::HandshakeKind::Resumed),
        "{:?}",
        kinds.lock().unwrap()
    );
}

/// The hub's order of cipher suites decides: AES-128-GCM with SHA-256 (its key schedule runs on the CPU's SHA
/// extensions), even for a client that prefers AES-256-GCM, as rustls's defaults do.
#[tokio::test]
async fn the_hub_chooses_aes_128_gcm_over_the_clients_preference() {
    let hub = start(Duration::from_secs(10)).await;
    let config = hub.resuming_config("spoke-prod-eu", &hub.path("ca.pem"));
    assert_eq!(
        config.crypto_provider().cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client prefers AES-256-GCM"
    );
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

/// A client CA rotated on disk signs renewals from then on, without a restart (docs/runbooks.md, "Rotate the client
/// CA"). During the rotation the CA file holds the new CA first and the old one after it (both verify clients), the
/// key is the new CA's, and the hub keeps serving its certificate with the old CA after it (the CA joined spokes
/// verify the hub with). A spoke renewing with its old certificate gets one of the new CA, which still opens its
/// stream once the old CA no longer verifies clients.
#[tokio::test]
async fn a_rotated_client_ca_signs_renewals_without_a_restart() {
    let hub = start_signing(Duration::from_secs(10), Some(Duration::from_secs(3600))).await;
    let old_ca = std::fs::read_to_string(hub.path("ca.pem")).unwrap();
    std::fs::write(hub.path("server-ca.pem"), &old_ca).unwrap();
    let rotated = tempfile::tempdir().unwrap();
    init_ca(rotated.path()).unwrap();
    let new_ca = std::fs::read_to_string(rotated.path().join("ca.pem")).unwrap();
    let hub_cert = std::fs::read_to_string(hub.path("hub.pem")).unwrap();
    std::fs::write(hub.path("hub.pem"), format!("{}\n{old_ca}", hub_cert.trim_end())).unwrap();
    std::fs::copy(rotated.path().join("ca-key.pem"), hub.path("ca-key.pem")).unwrap();
    std::fs::write(hub.path("ca.pem"), format!("{new_ca}{old_ca}")).unwrap();

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI("tollgate://cluster/prod-eu".try_into().unwrap())];
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed_by_new_ca = |certificate: &str| {
        let (_, leaf) = x509_parser::pem::parse_x509_pem(certificate.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(new_ca.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        leaf.parse_x509()
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .is_ok()
    };
    let server_ca = hub.path("server-ca.pem");
    let renewed = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(channel) = hub.channel(Some("spoke-prod-eu"), &server_ca).await
                && let Ok(issued) = tollgate_proto::v1::membership_client::MembershipClient::new(channel)
                    .renew(pb::RenewRequest {
                        csr_pem: csr_pem.clone(),
                    })
                    .await
                && signed_by_new_ca(&issued.get_ref().certificate_pem)
            {
                return issued.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("renewals were never signed by the new client CA");
    assert_eq!(
        renewed.ca_pem.trim(),
        old_ca.trim(),
        "the spoke keeps verifying the hub with the CA of its certificate"
    );

    std::fs::write(hub.path("ca.pem"), &new_ca).unwrap();
    std::fs::write(hub.path("spoke-renewed.pem"), &renewed.certificate_pem).unwrap();
    std::fs::write(hub.path("spoke-renewed-key.pem"), key.serialize_pem()).unwrap();
    // Once the old CA is dropped (its certificates refused), the renewed certificate opens the cluster's stream.
    let (hub, server_ca) = (&hub, &server_ca);
    let stream = |cert: &'static str| async move {
        let channel = hub
            .channel(Some(cert), server_ca)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        FakeSpoke::over(channel, "prod-eu", &[], &pb::IntentRevision::default())
            .await?
            .intent()
            .await
    };
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            if stream("spoke-prod-eu").await.is_err() && stream("spoke-renewed").await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        connected.is_ok(),
        "the renewed certificate did not open the cluster's stream"
    );
}
