//! Joining with a token, with the real hub and spoke binaries on a real kube-apiserver: the spoke makes its key in
//! the cluster, checks the hub's CA against the token before sending anything, keeps its identity in a Secret (and
//! needs no token after a restart), and renews a short-lived certificate without dropping its stream or rewriting a
//! policy. A token works once and expires.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use support::*;
use tollgate_common::join::JoinToken;
use tollgate_e2e::hub::{HubServer, issue_certificates};
use tollgate_e2e::spoke::LOG_LEVEL;
use tollgate_e2e::wait_until;

const SPOKE_NS: &str = "tollgate-system";
const SECRET: &str = "tollgate-spoke-identity";

/// The token `clusters add` or `clusters token` printed (its last line).
fn token_of(printed: &str) -> String {
    printed.lines().last().unwrap_or_default().to_string()
}

/// Starts the spoke with a join token file, without waiting for it to be ready.
fn spawn_joining(
    cluster: &tollgate_e2e::Cluster,
    hub: &HubServer,
    token_file: &Path,
    dir: &Path,
) -> anyhow::Result<Spoke> {
    let hub = hub.url();
    let token_file = token_file.display().to_string();
    Spoke::spawn_against(
        cluster,
        dir,
        Some(LOG_LEVEL),
        &["--hub", &hub, "--join-token-file", &token_file],
    )
}

async fn identity(client: &kube::Client) -> anyhow::Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(client.clone(), SPOKE_NS)
        .get_opt(SECRET)
        .await?)
}

fn key_body(secret: &Secret) -> String {
    let pem = String::from_utf8(secret.data.as_ref().unwrap()["tls.key"].0.clone()).unwrap();
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test]
async fn a_spoke_joins_with_a_token_keeps_its_key_and_restarts_without_the_token() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    cluster.create_namespace(SPOKE_NS).await?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    issue_certificates(&certs, &[])?;
    let hub = HubServer::start_signing(dir.path(), &certs, &[]).await?;
    let printed = hub.cli_ok(&["clusters", "add", cluster.name(), "--labels", "env=prod"])?;
    assert!(printed.contains("join token for"), "{printed}");
    let token = JoinToken::parse(&token_of(&printed)).map_err(anyhow::Error::msg)?;
    let token_file = dir.path().join("token");

    // A token whose pin does not match the hub's CA: the spoke refuses the hub before sending the request.
    let mut wrong = token.clone();
    wrong.ca_sha256 = "0".repeat(64);
    std::fs::write(&token_file, wrong.to_string())?;
    let refusing = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    wait_until("the spoke refuses the hub's CA", WAIT, || async {
        refusing.log().contains("presents no CA with the join token's pin")
    })
    .await?;
    assert!(identity(&client).await?.is_none(), "nothing was issued");
    drop(refusing);

    // The real token (which the refusal above did not use up): the spoke joins.
    std::fs::write(&token_file, token.to_string())?;
    let spoke = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    hub.wait_connected(cluster.name())
        .await
        .map_err(|e| e.context(spoke.log()))?;
    spoke.wait_ready().await?;
    assert!(spoke.log().contains("Joined the hub"), "{}", spoke.log());
    let secret = identity(&client).await?.expect("the identity Secret");
    let key_text = key_body(&secret);
    assert!(key_text.len() > 40, "a private key is kept in the cluster");
    // The key never left the cluster: neither the hub's store nor its log holds it.
    for entry in std::fs::read_dir(hub.data_dir())? {
        let bytes = std::fs::read(entry?.path())?;
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key_text[..40]),
            "the hub's store holds the key"
        );
    }
    assert!(!hub.log().contains(&key_text[..40]));
    let listed: serde_json::Value = serde_json::from_str(&hub.cli_ok(&["clusters", "list", "-o", "json"])?)?;
    let expiry = listed[0]["certificateNotAfterUnixMillis"].as_i64().unwrap();
    let in_a_day = tollgate_process::unix_millis() + 24 * 3_600_000;
    assert!(
        (in_a_day - 120_000..=in_a_day + 1_000).contains(&expiry),
        "a 24 h certificate: {listed:#}"
    );

    // Restarted without the token (the file is gone): the Secret's identity is used.
    drop(spoke);
    std::fs::remove_file(&token_file)?;
    let restarted = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    restarted.wait_ready().await?;
    wait_until("reconnected with the kept identity", WAIT, || async {
        restarted.log().contains("Connected to the hub")
    })
    .await?;
    assert!(
        restarted.log().contains("Using the identity kept in the Secret"),
        "{}",
        restarted.log()
    );
    drop(restarted);

    // The token works once: with the Secret gone, the same token is refused.
    Api::<Secret>::namespaced(client.clone(), SPOKE_NS)
        .delete(SECRET, &Default::default())
        .await?;
    std::fs::write(&token_file, token.to_string())?;
    let reused = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    wait_until("the used token is refused", WAIT, || async {
        reused.log().contains("is unknown or was used already")
    })
    .await?;
    drop(reused);

    // An expired token is refused too.
    let short = hub.cli_ok(&["clusters", "token", cluster.name(), "--token-ttl", "1s"])?;
    std::fs::write(&token_file, token_of(&short))?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let late = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    wait_until("the expired token is refused", WAIT, || async {
        late.log().contains("has expired")
    })
    .await?;
    let (code, body) = late.get("/readyz").await?;
    assert_eq!(code, 503, "{body}");
    Ok(())
}

/// With a 60 s certificate the spoke renews at two thirds of it, over mTLS with its current certificate; the stream
/// never drops and no policy is rewritten.
#[tokio::test]
async fn a_short_lived_certificate_is_renewed_without_a_reconnect_or_a_rewrite() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    cluster.create_namespace(SPOKE_NS).await?;
    agent(&client, "llm", None, Some(mtls_card())).await?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    issue_certificates(&certs, &[])?;
    let hub = HubServer::start_signing(dir.path(), &certs, &["--spoke-cert-ttl", "60s"]).await?;
    let token = token_of(&hub.cli_ok(&["clusters", "add", cluster.name(), "--labels", "env=prod"])?);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    let spoke = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    spoke.wait_ready().await?;
    wait_until("connected", WAIT, || async {
        spoke.log().contains("Connected to the hub")
    })
    .await?;
    let first = identity(&client).await?.expect("joined");
    let policies_before = policies(&client).list(&Default::default()).await?;
    let versions = |list: &kube::core::ObjectList<k8s_openapi::api::networking::v1::NetworkPolicy>| {
        list.items
            .iter()
            .map(|p| (p.metadata.name.clone(), p.metadata.resource_version.clone()))
            .collect::<Vec<_>>()
    };

    wait_until("the certificate is renewed", Duration::from_secs(75), || async {
        spoke.log().contains("Renewed this cluster's certificate")
    })
    .await?;
    let renewed = identity(&client).await?.expect("kept");
    assert_ne!(key_body(&renewed), key_body(&first), "a new key, made in the cluster");
    assert_ne!(
        renewed.data.as_ref().unwrap()["tls.crt"],
        first.data.as_ref().unwrap()["tls.crt"]
    );
    assert_eq!(
        spoke.log().matches("Connected to the hub").count(),
        1,
        "the stream never dropped"
    );
    assert_eq!(
        versions(&policies(&client).list(&Default::default()).await?),
        versions(&policies_before),
        "no policy rewritten"
    );
    let listed: serde_json::Value = serde_json::from_str(&hub.cli_ok(&["clusters", "list", "-o", "json"])?)?;
    assert_eq!(listed[0]["connected"], true);
    Ok(())
}

/// The token is used up by the join, so a Secret that cannot be written yet (its namespace created late) must not
/// lose the identity: the spoke connects with it from memory and writes it as soon as it can.
#[tokio::test]
async fn an_identity_the_secret_cannot_hold_yet_is_used_from_memory_and_written_later() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    issue_certificates(&certs, &[])?;
    let hub = HubServer::start_signing(dir.path(), &certs, &[]).await?;
    let token = token_of(&hub.cli_ok(&["clusters", "add", cluster.name()])?);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    // No tollgate-system namespace yet: the Secret cannot be written.
    let spoke = spawn_joining(cluster, &hub, &token_file, dir.path())?;
    hub.wait_connected(cluster.name())
        .await
        .map_err(|e| e.context(spoke.log()))?;
    assert!(identity(&client).await?.is_none());
    cluster.create_namespace(SPOKE_NS).await?;
    wait_until("the identity is written once it can be", WAIT, || async {
        identity(&client).await.ok().flatten().is_some()
    })
    .await
    .map_err(|e| e.context(spoke.log()))?;
    Ok(())
}
