//! Failing closed, end to end: a hub back on an empty store, a cache edited or lost, an oversize apply, a stored
//! revision that cannot be read, plaintext by mistake, a certificate mounted late, a cache that cannot be written,
//! a store that stops answering. In every case no policy widens, the reason is visible, and an admin decides.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tollgate_common::document::DocumentSet;
use tollgate_e2e::fleet::{Fleet, SPOKE_NS, SpokeStart, WAIT, three_clusters};
use tollgate_e2e::{binary, wait_until};

use crate::support::*;

/// The spoke's intent ConfigMap (the chart's and the binary's default name).
const CACHE: &str = "tollgate-spoke-intent";

/// A fleet of prod-east alone, on the embedded store or on a PostgreSQL database.
async fn one_cluster(postgres: bool) -> anyhow::Result<Fleet> {
    let clusters = three_clusters().into_iter().take(1).collect();
    if postgres {
        Fleet::start_replicated(clusters, 1).await
    } else {
        Fleet::start_with(clusters).await
    }
}

/// Applies [`LLM_POLICY`] and waits until prod-east's `chat` is scoped by it and the cluster acknowledged it.
async fn scope_chat(fleet: &Fleet) -> anyhow::Result<()> {
    fleet.apply(LLM_POLICY).await?;
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "scoped by the hub", |p| {
            egress(p) == baseline_and(fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)])
        })
        .await?;
    fleet.wait_converged().await?;
    Ok(())
}

/// The condition types of a `status -o json` row.
fn condition_types(row: &Value) -> Vec<String> {
    row["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(String::from))
        .collect()
}

/// The value of a gauge line `NAME{LABELS} VALUE` in a metrics page.
fn gauge(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Reasons of the events.k8s.io Events in `namespace`.
async fn event_reasons(fleet: &Fleet, namespace: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(fleet.client(PROD_EAST), namespace);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// Point 1 of the fail-closed issue: the hub comes back on an empty store. The spoke refuses its intent (another
/// store), keeps every policy, and says why — in its hello (the hub's `status`), a Warning Event and a metric —
/// until an admin runs `clusters adopt`, which converges the cluster on the new store.
async fn a_hub_on_an_empty_store_changes_nothing_until_adopted(postgres: bool) -> anyhow::Result<()> {
    let mut fleet = one_cluster(postgres).await?;
    scope_chat(&fleet).await?;
    let before = fleet.resource_versions().await?;

    fleet.kill_hub();
    fleet.replace_hub_store().await?;
    fleet.start_hub().await?;
    let rows = fleet
        .wait_status("prod-east is Diverged", |rows| {
            condition_types(&rows[PROD_EAST]) == ["Diverged"] && rows[PROD_EAST]["connected"] == true
        })
        .await?;
    let diverged = condition(&rows[PROD_EAST], "Diverged");
    assert_eq!(diverged["reason"], "OtherStore", "{rows:#}");
    let message = diverged["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tollgate-hub clusters adopt prod-east"),
        "the message says what to do: {message}"
    );
    let table = fleet.cli_ok(&["status"]).await?;
    assert!(
        table.lines().nth(1).is_some_and(|l| l.trim_end().ends_with("Diverged")),
        "{table}"
    );
    assert!(table.contains("prod-east: Diverged: "), "{table}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "a hub on an empty store changed policies:\n{}",
        fleet.spoke_log_tail(PROD_EAST)
    );
    let metrics = fleet.spoke_metrics(PROD_EAST).await?;
    assert_eq!(
        gauge(&metrics, "tollgate_spoke_condition{condition=\"Diverged\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        gauge(&metrics, "tollgate_spoke_intents_refused_total{reason=\"OtherStore\"}") >= Some(1.0),
        "{metrics}"
    );
    wait_until("a Warning Event Diverged", WAIT, || async {
        event_reasons(&fleet, SPOKE_NS)
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "Diverged"))
    })
    .await?;

    let adopted = fleet.cli_ok(&["clusters", "adopt", "prod-east"]).await?;
    assert!(
        adopted.starts_with("cluster prod-east adopts revision 0 of store "),
        "{adopted}"
    );
    // The new store holds no intent: by the admin's decision, chat is allow-all again.
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "the adopted (empty) intent", |p| {
            mode(p) == "allow-all"
        })
        .await?;
    let rows = fleet
        .wait_status("prod-east converged without conditions", |rows| {
            condition_types(&rows[PROD_EAST]).is_empty() && rows[PROD_EAST]["appliedRevision"] == 0
        })
        .await?;
    assert_eq!(rows[PROD_EAST]["latestRevision"], 0, "{rows:#}");
    // The next apply on the new store reaches it.
    scope_chat(&fleet).await?;
    wait_until("a Normal Event DivergedCleared", WAIT, || async {
        event_reasons(&fleet, SPOKE_NS)
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "DivergedCleared"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_hub_on_an_empty_embedded_store_changes_nothing_until_adopted() -> anyhow::Result<()> {
    a_hub_on_an_empty_store_changes_nothing_until_adopted(false).await
}

#[tokio::test]
async fn a_hub_on_an_empty_postgres_database_changes_nothing_until_adopted() -> anyhow::Result<()> {
    a_hub_on_an_empty_store_changes_nothing_until_adopted(true).await
}

/// The cache ConfigMap of prod-east.
fn cache_api(fleet: &Fleet) -> Api<ConfigMap> {
    Api::namespaced(fleet.client(PROD_EAST), SPOKE_NS)
}

/// A wider intent than [`LLM_POLICY`]: chat may reach everything on 443.
fn widened() -> String {
    LLM_POLICY.replace("104.18.0.0/16", "0.0.0.0/0")
}

/// Replaces the cached documents, and with `consistent` their digest too (an edit by someone who knows the format).
async fn edit_cache(fleet: &Fleet, yaml: &str, consistent: bool) -> anyhow::Result<()> {
    let documents = DocumentSet::from_yaml("edit", yaml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut patch = json!({"data": {"documents.yaml": documents.to_yaml()}});
    if consistent {
        patch["metadata"] = json!({"annotations": {"tollgate.dev/digest": documents.digest()}});
    }
    cache_api(fleet)
        .patch(CACHE, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A cache edited by hand in the cluster — same revision, other documents, and a digest to match — is replaced by
/// the hub's documents when the spoke reconnects: the hub compares digests, not revision numbers.
#[tokio::test]
async fn a_cache_edited_by_hand_is_replaced_by_the_hubs_documents() -> anyhow::Result<()> {
    let mut fleet = one_cluster(false).await?;
    scope_chat(&fleet).await?;
    fleet.kill_spoke(PROD_EAST);
    edit_cache(&fleet, &widened(), true).await?;
    fleet.start_spoke(PROD_EAST).await?;
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "the hub's rule again", |p| {
            egress(p) == baseline_and(&fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)])
        })
        .await?;
    wait_until("the cache holds the hub's documents again", WAIT, || async {
        cache_api(&fleet).get_opt(CACHE).await.ok().flatten().is_some_and(|c| {
            let documents = c.data.unwrap_or_default().remove("documents.yaml").unwrap_or_default();
            documents.contains("104.18.0.0/16") && !documents.contains("0.0.0.0/0")
        })
    })
    .await?;
    fleet.wait_converged().await?;
    Ok(())
}

/// With the hub down, a spoke restarts on a cache that does not match its digest (edited by hand), then on no cache
/// at all: both times it changes no policy (it holds those in force, reports `PoliciesHeld`) until the hub
/// answers, which then converges it without widening anything.
#[tokio::test]
async fn a_spoke_without_a_trustworthy_cache_holds_every_policy_until_the_hub_answers() -> anyhow::Result<()> {
    let mut fleet = one_cluster(false).await?;
    scope_chat(&fleet).await?;
    let before = fleet.resource_versions().await?;
    fleet.kill_hub();

    fleet.kill_spoke(PROD_EAST);
    edit_cache(&fleet, &widened(), false).await?;
    fleet.start_spoke(PROD_EAST).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "a spoke on an unreadable cache changed policies:\n{}",
        fleet.spoke_log_tail(PROD_EAST)
    );
    let metrics = fleet.spoke_metrics(PROD_EAST).await?;
    assert_eq!(
        gauge(&metrics, "tollgate_spoke_condition{condition=\"PoliciesHeld\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        fleet.spoke_log(PROD_EAST).contains("The cached intent cannot be read"),
        "{}",
        fleet.spoke_log_tail(PROD_EAST)
    );

    fleet.kill_spoke(PROD_EAST);
    cache_api(&fleet).delete(CACHE, &DeleteParams::default()).await?;
    fleet.start_spoke(PROD_EAST).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "a spoke without a cache changed policies written from a hub revision:\n{}",
        fleet.spoke_log_tail(PROD_EAST)
    );
    assert!(
        fleet
            .spoke_log(PROD_EAST)
            .contains("NetworkPolicies were written from hub revision 1"),
        "{}",
        fleet.spoke_log_tail(PROD_EAST)
    );

    fleet.start_hub().await?;
    fleet.wait_converged().await?;
    let rows = fleet
        .wait_status("PoliciesHeld cleared", |rows| {
            condition_types(&rows[PROD_EAST]).is_empty()
        })
        .await?;
    assert_eq!(rows[PROD_EAST]["appliedRevision"], 1, "{rows:#}");
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "the hub's answer is the intent in force: nothing to write"
    );
    let metrics = fleet.spoke_metrics(PROD_EAST).await?;
    assert_eq!(
        gauge(&metrics, "tollgate_spoke_condition{condition=\"PoliciesHeld\"}"),
        Some(0.0),
        "{metrics}"
    );
    Ok(())
}

/// An EgressPolicy selecting no agent, with `peers` /32 peers in its one rule.
fn bulky_policy(name: &str, peers: usize, salt: u8) -> String {
    let mut yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
         agentSelector: {{matchLabels: {{tier: nobody}}}}\n  egress:\n    - ports: [{{port: 443}}]\n      to:\n"
    );
    for i in 0..peers {
        yaml.push_str(&format!(
            "        - ipBlock: {{cidr: 10.{salt}.{}.{}/32}}\n",
            i / 256,
            i % 256
        ));
    }
    yaml
}

/// Point 2: one document over the per-document limit in canonical form (18,000 `{port: N}` entries, 241 KB as
/// written) is refused with the reason and changes nothing; so is a set of documents over what one cluster can
/// cache, naming the cluster. A set just under that bound is delivered and cached, and the hub still serves every
/// verb afterwards.
#[tokio::test]
async fn oversize_intent_is_refused_and_a_near_limit_one_is_delivered_and_cached() -> anyhow::Result<()> {
    let fleet = one_cluster(false).await?;
    let ports: String = (1..=18_000).map(|p| format!("{{port: {p}}},")).collect();
    let huge = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: huge}}\nspec:\n  egress:\n    - to: \
         [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n      ports: [{}]\n",
        ports.trim_end_matches(',')
    );
    assert!(
        huge.len() < 256 * 1024,
        "written, it is under the limit: {}",
        huge.len()
    );
    let file = fleet.intent_file("huge.yaml", &huge)?;
    let output = fleet.cli(&["apply", "-f", &file.display().to_string()]).await?;
    assert!(!output.success, "the oversize document was applied: {}", output.stdout);
    assert!(
        output.stderr.contains("in canonical form") && output.stderr.contains("over the limit of 262144 bytes"),
        "{}",
        output.stderr
    );
    assert_eq!(fleet.cli_ok(&["history"]).await?.lines().count(), 1, "no revision");

    // Four documents of about 240 KB canonical each: under the per-document limit, 0.96 MB together.
    let near: Vec<String> = (0..4u8).map(|i| bulky_policy(&format!("bulk-{i}"), 5_600, i)).collect();
    let sizes: Vec<usize> = near
        .iter()
        .map(|y| DocumentSet::from_yaml("near", y).map(|d| d.to_yaml().len()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let total: usize = sizes.iter().map(|s| s + 4).sum();
    assert!(
        sizes.iter().all(|s| *s < 256 * 1024) && total > 900_000 && total < 1024 * 1024,
        "{sizes:?} {total}"
    );
    let printed = fleet.apply(&near.join("---\n")).await?;
    assert!(printed.ends_with("revision 1\n"), "{printed}");
    fleet.wait_converged().await?;
    let cached = cache_api(&fleet).get(CACHE).await?;
    let annotations = cached.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("tollgate.dev/revision").map(String::as_str), Some("1"));
    let documents = cached
        .data
        .unwrap_or_default()
        .remove("documents.yaml")
        .unwrap_or_default();
    assert!(documents.len() > 900_000, "{}", documents.len());
    for i in 0..4u8 {
        assert!(documents.contains(&format!("10.{i}.21.55/32")), "bulk-{i} is cached");
    }

    // A fifth such document would take the cluster over the bound: refused, naming the cluster.
    let file = fleet.intent_file("fifth.yaml", &bulky_policy("bulk-4", 5_600, 4))?;
    let output = fleet.cli(&["apply", "-f", &file.display().to_string()]).await?;
    assert!(
        !output.success,
        "an apply over the cluster bound succeeded: {}",
        output.stdout
    );
    assert!(
        output.stderr.contains("cluster \"prod-east\" would receive")
            && output.stderr.contains("over the limit of 1048576 bytes"),
        "{}",
        output.stderr
    );
    assert_eq!(
        fleet.cli_ok(&["history"]).await?.lines().count(),
        2,
        "still one revision"
    );
    // The hub is not bricked: every verb works.
    assert!(fleet.cli_ok(&["get", "policies"]).await?.contains("bulk-3"));
    fleet.cli_ok(&["delete", "EgressPolicy", "bulk-0"]).await?;
    fleet.cli_ok(&["rollback", "--to", "1"]).await?;
    fleet.wait_converged().await?;
    Ok(())
}

/// Overwrites the stored YAML of revision `number` behind the hub's back.
async fn damage_revision(fleet: &Fleet, number: i64, yaml: &str) -> anyhow::Result<()> {
    match fleet.store_url() {
        None => {
            let db = fleet.hub_data_dir().join("tollgate-hub.db");
            let connection = rusqlite::Connection::open(&db)?;
            let changed = connection.execute(
                "UPDATE revisions SET documents_yaml = ?1 WHERE number = ?2",
                rusqlite::params![yaml, number],
            )?;
            anyhow::ensure!(changed == 1, "revision {number} not found in {}", db.display());
        }
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let changed = client
                .execute(
                    "UPDATE revisions SET documents_yaml = $1 WHERE number = $2",
                    &[&yaml, &number],
                )
                .await?;
            anyhow::ensure!(changed == 1, "revision {number} not found");
        }
    }
    Ok(())
}

/// A stored revision made unreadable behind the hub's back never bricks it: the hub starts and serves the newest
/// readable revision, `history` and a metric say which one cannot be read, the spoke (which enforces the newer
/// one) refuses the older revision and keeps its policies, and `rollback --to` the readable one converges.
async fn an_unreadable_revision_is_skipped_and_rolled_back_past(postgres: bool) -> anyhow::Result<()> {
    let mut fleet = one_cluster(postgres).await?;
    scope_chat(&fleet).await?;
    fleet
        .apply(&LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13"))
        .await?;
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "revision 2", |p| {
            egress(p)[3] == rule("104.16.0.0/13", 443)
        })
        .await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    fleet.kill_hub();
    damage_revision(&fleet, 2, "kind: Nope\n").await?;
    fleet.start_hub().await?;
    let history = fleet.cli_ok(&["history"]).await?;
    assert!(history.contains("2 (unreadable)"), "{history}");
    assert!(history.contains("revision 2 cannot be read: "), "{history}");
    assert!(history.contains("the hub serves revision 1"), "{history}");
    let (_, metrics) = fleet.hub_http(0, "/metrics").await?;
    assert_eq!(
        gauge(&metrics, "tollgate_hub_unreadable_revisions"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        fleet
            .cli_ok(&["get", "policies", "-o", "yaml"])
            .await?
            .contains("104.18.0.0/16"),
        "get serves revision 1"
    );
    let rows = fleet
        .wait_status("prod-east refuses the older revision", |rows| {
            condition(&rows[PROD_EAST], "Diverged")["reason"] == "OlderRevision"
        })
        .await?;
    assert_eq!(rows[PROD_EAST]["appliedRevision"], 2, "{rows:#}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "an older revision changed policies"
    );

    let rolled = fleet.cli_ok(&["rollback", "--to", "1"]).await?;
    assert!(rolled.contains("revision 3"), "{rolled}");
    fleet
        .wait_policy(
            PROD_EAST,
            "chat-signature-policy",
            "revision 1's rule, as revision 3",
            |p| egress(p) == baseline_and(&fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)]),
        )
        .await?;
    let rows = fleet.wait_converged().await?;
    assert_eq!(rows[PROD_EAST]["appliedRevision"], 3, "{rows:#}");
    fleet
        .wait_status("Diverged cleared", |rows| condition_types(&rows[PROD_EAST]).is_empty())
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreadable_revision_in_the_embedded_store_is_skipped_and_rolled_back_past() -> anyhow::Result<()> {
    an_unreadable_revision_is_skipped_and_rolled_back_past(false).await
}

#[tokio::test]
async fn an_unreadable_revision_in_postgres_is_skipped_and_rolled_back_past() -> anyhow::Result<()> {
    an_unreadable_revision_is_skipped_and_rolled_back_past(true).await
}

/// Runs a binary to its end (at most 20 s): (success, stderr).
async fn run_to_end(program: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(binary(program)?)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{program} {args:?} kept running"))??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Point 3: `http://` with TLS files is an error at start, and `http://` without `--insecure-dev-plaintext` or to
/// a host other than loopback is refused — by the spoke and by the CLI.
#[tokio::test]
async fn plaintext_by_mistake_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, "not used").unwrap();
        path.display().to_string()
    };
    let (cert, key, ca, kubeconfig) = (file("c.pem"), file("k.pem"), file("ca.pem"), file("kubeconfig"));
    let spoke = |hub: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--cluster-id",
            "prod-east",
            "--kubeconfig",
            &kubeconfig,
            "--hub",
            hub,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let with_tls = ["--hub-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    for (args, expected) in [
        (
            spoke("http://hub.example.invalid:7443", &with_tls),
            "is plaintext but TLS is configured",
        ),
        (
            spoke(
                "http://127.0.0.1:7443",
                &["--insecure-dev-plaintext", "--tls-cert", &cert, "--tls-key", &key],
            ),
            "cannot be combined with TLS files",
        ),
        (spoke("http://127.0.0.1:7443", &[]), "--insecure-dev-plaintext"),
        (
            spoke("http://hub.example.invalid:7443", &["--insecure-dev-plaintext"]),
            "loopback",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (success, stderr) = run_to_end("tollgate-spoke", &args).await?;
        assert!(!success, "the spoke started with {args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    for (args, expected) in [
        (
            vec![
                "status",
                "--hub",
                "http://hub.example.invalid:7443",
                "--cert",
                &cert,
                "--key",
                &key,
            ],
            "is plaintext but TLS is configured",
        ),
        (
            vec!["status", "--hub", "http://127.0.0.1:7443"],
            "--insecure-dev-plaintext",
        ),
    ] {
        let (success, stderr) = run_to_end("tollgate-hub", &args).await?;
        assert!(!success, "the CLI ran with {args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    Ok(())
}

/// A certificate file that is missing at start (a Secret mounted late) is retried, not final: the spoke connects
/// once the files appear.
#[tokio::test]
async fn a_certificate_mounted_late_is_retried() -> anyhow::Result<()> {
    let mut fleet = one_cluster(false).await?;
    let late = fleet.dir().join("late");
    let (cert, key) = (late.join("tls.crt"), late.join("tls.key"));
    fleet
        .start_spoke_with(
            PROD_EAST,
            SpokeStart {
                tls_files: Some((cert.clone(), key.clone())),
                answering: true,
                ..SpokeStart::default()
            },
        )
        .await?;
    fleet
        .wait_status("prod-east disconnected", |rows| rows[PROD_EAST]["connected"] == false)
        .await?;
    wait_until("the spoke retries the certificate", WAIT, || async {
        fleet.spoke_log(PROD_EAST).contains("tls.crt")
    })
    .await?;
    let (code, body) = fleet.spoke_readyz(PROD_EAST).await?;
    assert!(
        !body.contains("refused"),
        "a missing file is not a refusal: {code} {body}"
    );
    std::fs::create_dir_all(&late)?;
    std::fs::copy(fleet.certs_dir().join("spoke-prod-east.pem"), &cert)?;
    std::fs::copy(fleet.certs_dir().join("spoke-prod-east-key.pem"), &key)?;
    fleet
        .wait_status("prod-east connected with the late certificate", |rows| {
            rows[PROD_EAST]["connected"] == true
        })
        .await?;
    Ok(())
}

/// A cache that cannot be written (the README's quick start has no `tollgate-system` namespace) is a condition, not
/// a log line: a Warning Event (on the CRD, in `default`, since the namespace is missing), the metric, the hub's
/// `status` row, and one readable sentence in the log for the whole time it lasts.
#[tokio::test]
async fn a_cache_that_cannot_be_written_is_reported_on_the_spoke_and_the_hub() -> anyhow::Result<()> {
    let mut fleet = one_cluster(false).await?;
    fleet
        .start_spoke_with(
            PROD_EAST,
            SpokeStart {
                extra_args: vec!["--spoke-namespace".into(), "missing-namespace".into()],
                ..SpokeStart::default()
            },
        )
        .await?;
    scope_chat(&fleet).await?;
    fleet
        .apply(&LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13"))
        .await?;
    let rows = fleet
        .wait_status("prod-east IntentNotPersisted at revision 2", |rows| {
            condition_types(&rows[PROD_EAST]) == ["IntentNotPersisted"] && rows[PROD_EAST]["appliedRevision"] == 2
        })
        .await?;
    let message = condition(&rows[PROD_EAST], "IntentNotPersisted")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("missing-namespace") && message.contains("Create namespace"),
        "{message}"
    );
    assert!(!message.contains("Status {"), "no raw status dump: {message}");
    let metrics = fleet.spoke_metrics(PROD_EAST).await?;
    assert_eq!(
        gauge(&metrics, "tollgate_spoke_condition{condition=\"IntentNotPersisted\"}"),
        Some(1.0),
        "{metrics}"
    );
    wait_until("a Warning Event IntentNotPersisted in default", WAIT, || async {
        event_reasons(&fleet, "default")
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "IntentNotPersisted"))
    })
    .await
    .map_err(|e| e.context(format!("the spoke's log ends:\n{}", fleet.spoke_log_tail(PROD_EAST))))?;
    let log = fleet.spoke_log(PROD_EAST);
    assert_eq!(
        log.matches("could not be cached in ConfigMap").count(),
        1,
        "logged once for two revisions:\n{log}"
    );
    Ok(())
}

/// The process `pid` and its descendants (from /proc), parents first.
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        next += 1;
    }
    tree
}

/// Hub `/readyz` fails while its store does not answer (PostgreSQL stopped with SIGSTOP) and recovers after.
#[tokio::test]
async fn hub_readiness_follows_its_store() -> anyhow::Result<()> {
    let fleet = one_cluster(true).await?;
    assert_eq!(fleet.hub_http(0, "/readyz").await?.0, 200);
    // The server and every backend process: the hub's pooled connections are served by the backends, so stopping
    // the postmaster alone leaves them answering.
    let postmaster = fleet.postgres().expect("the fleet's PostgreSQL").process().pid();
    let tree = process_tree(postmaster);
    assert!(tree.len() > 1, "the postmaster has backends: {tree:?}");
    let signal = |name: &str| -> anyhow::Result<()> {
        let pids: Vec<String> = tree.iter().map(u32::to_string).collect();
        let status = std::process::Command::new("kill").arg(name).args(&pids).status()?;
        anyhow::ensure!(status.success(), "kill {name} {pids:?}");
        Ok(())
    };
    signal("-STOP")?;
    let stopped = wait_until("hub /readyz fails", WAIT, || async {
        fleet.hub_http(0, "/readyz").await.is_ok_and(|(code, _)| code == 503)
    })
    .await;
    signal("-CONT")?;
    stopped?;
    wait_until("hub /readyz recovers", WAIT, || async {
        fleet.hub_http(0, "/readyz").await.is_ok_and(|(code, _)| code == 200)
    })
    .await?;
    Ok(())
}

/// The signals an alert needs: build versions, the spoke's hub connection, certificate expiry, and when the hub
/// last heard of each cluster — kept for a cluster whose spoke is gone, which is exactly when an alert must fire.
/// Every metric the charts' alerts and dashboards query is exposed by the running binaries.
#[tokio::test]
async fn metrics_show_versions_connections_and_when_each_cluster_was_last_heard_of() -> anyhow::Result<()> {
    let mut fleet = one_cluster(false).await?;
    let version = env!("CARGO_PKG_VERSION");
    let spoke = fleet.spoke_metrics(PROD_EAST).await?;
    assert_eq!(gauge(&spoke, "tollgate_spoke_hub_connected"), Some(1.0), "{spoke}");
    assert_eq!(
        gauge(&spoke, &format!("tollgate_spoke_build_info{{version=\"{version}\"}}")),
        Some(1.0),
        "{spoke}"
    );
    let series = "tollgate_hub_cluster_last_seen_timestamp_seconds{cluster=\"prod-east\"}";
    let (_, hub) = fleet.hub_http(0, "/metrics").await?;
    assert_eq!(
        gauge(&hub, &format!("tollgate_hub_build_info{{version=\"{version}\"}}")),
        Some(1.0),
        "{hub}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let seen = gauge(&hub, series).unwrap_or_else(|| panic!("no {series}:\n{hub}"));
    assert!((now - seen).abs() < 60.0, "last seen {seen}, now {now}");
    // Each certificate's notAfter, read from the files the processes were started with.
    let certs = fleet.certs_dir();
    let not_after = |file: &str| -> anyhow::Result<f64> {
        let pem = std::fs::read(certs.join(file))?;
        let seconds = tollgate_common::certificate::not_after_unix_seconds(&pem)
            .ok_or_else(|| anyhow::anyhow!("{file} holds no certificate"))?;
        Ok(seconds as f64)
    };
    for (metrics, series, file) in [
        (
            &hub,
            "tollgate_hub_certificate_expiry_timestamp_seconds{certificate=\"serving\"}",
            "hub.pem",
        ),
        (
            &hub,
            "tollgate_hub_certificate_expiry_timestamp_seconds{certificate=\"client-ca\"}",
            "ca.pem",
        ),
        (
            &spoke,
            "tollgate_spoke_certificate_expiry_timestamp_seconds{certificate=\"client\"}",
            "spoke-prod-east.pem",
        ),
    ] {
        let expected = not_after(file)?;
        assert!(expected > now + 86_400.0, "{file} expires in the future");
        assert_eq!(
            gauge(metrics, series),
            Some(expected),
            "{series} is {file}'s notAfter:\n{metrics}"
        );
    }
    // Every metric the charts' alerts and dashboards query is one these binaries expose.
    for (chart, values, metrics) in [
        (
            "tollgate-hub",
            "admins: [admin]\ntlsSecretName: t\nmetrics: {prometheusRule: {enabled: true}}\n",
            &hub,
        ),
        (
            "tollgate-spoke",
            "standalone: false\nhub: {address: 'https://hub:7443', tls: {secretName: s}}\n\
             metrics: {prometheusRule: {enabled: true}}\n",
            &spoke,
        ),
    ] {
        let folder = tollgate_e2e::workspace_root().join("deploy/charts").join(chart);
        let rendered = tollgate_e2e::helm::render(&format!("deploy/charts/{chart}"), "t", SPOKE_NS, &[values])?;
        let rules = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(<Value as serde::Deserialize>::deserialize)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|o| o["kind"] == "PrometheusRule")
            .ok_or_else(|| anyhow::anyhow!("{chart} rendered no PrometheusRule"))?;
        let dashboard = std::fs::read_to_string(folder.join(format!("dashboards/{chart}.json")))?;
        for (what, text) in [
            ("alerts", serde_yaml_ng::to_string(&rules["spec"])?),
            ("dashboard", dashboard),
        ] {
            let names = tollgate_e2e::monitoring::metric_names(&text);
            assert!(names.len() >= 4, "{chart} {what}: {names:?}");
            tollgate_e2e::monitoring::ensure_exposed(&format!("the {chart} {what}"), &names, metrics)?;
        }
    }

    fleet.kill_spoke(PROD_EAST);
    fleet
        .wait_status("prod-east disconnected", |rows| rows[PROD_EAST]["connected"] == false)
        .await?;
    let (_, hub) = fleet.hub_http(0, "/metrics").await?;
    assert!(
        gauge(&hub, series).is_some(),
        "the series stays for a disconnected cluster:\n{hub}"
    );
    assert_eq!(gauge(&hub, "tollgate_hub_connected_spokes"), Some(0.0), "{hub}");
    Ok(())
}
