//! `docs/runbooks.md`, run: every shell block marked `<!-- tested: NAME -->` runs verbatim in bash against a real
//! fleet — the hub binary on its embedded store or on PostgreSQL, a spoke, a kube-apiserver, Debian's kubectl and
//! PostgreSQL client tools — with the variables the runbooks assume. Every other block must say why it is not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tollgate_e2e::fleet::{Fleet, SPOKE_NS, TEAM_NS, three_clusters};
use tollgate_e2e::workspace_root;

use crate::support::*;

/// Every tested block of the runbooks; each is run by one of the scenarios below.
const TESTED: &[&str] = &[
    "upgrade-crd",
    "upgrade-check",
    "backup-embedded",
    "restore-embedded",
    "adopt-after-restore",
    "backup-postgres",
    "restore-postgres",
    "export-intent",
    "import-intent",
    "cluster-disconnected",
    "policy-not-applied",
    "unreadable-revisions",
    "renew-spoke-certificate",
];

/// The shell blocks of `docs/runbooks.md` marked as tested, by name (indentation of list items removed).
fn tested_blocks() -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(workspace_root().join("docs/runbooks.md"))?;
    let mut blocks = BTreeMap::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut marker: Option<(usize, Option<String>)> = None;
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("<!-- tested: ") {
            let name = name.trim_end_matches("-->").trim().to_string();
            marker = Some((number, Some(name)));
        } else if trimmed.starts_with("<!-- not run by the tests: ") {
            ensure!(
                trimmed.len() > "<!-- not run by the tests:  -->".len(),
                "line {}: give the reason",
                number + 1
            );
            marker = Some((number, None));
        } else if trimmed.starts_with("```") {
            ensure!(
                trimmed == "```sh" || trimmed == "```",
                "line {}: runbook blocks are ```sh",
                number + 1
            );
            ensure!(
                trimmed == "```sh",
                "line {}: a closing fence without an opening one",
                number + 1
            );
            let Some((marked_at, name)) = marker.take() else {
                bail!(
                    "docs/runbooks.md:{}: a shell block with neither `<!-- tested: NAME -->` nor `<!-- not run by the tests: REASON -->` above it",
                    number + 1
                );
            };
            ensure!(
                marked_at + 1 == number,
                "docs/runbooks.md:{}: the marker must be the line above",
                number + 1
            );
            let indent = line.len() - trimmed.len();
            let mut body = String::new();
            for (_, line) in lines.by_ref() {
                if line.trim() == "```" {
                    break;
                }
                body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
                body.push('\n');
            }
            if let Some(name) = name {
                ensure!(blocks.insert(name.clone(), body).is_none(), "two blocks named {name}");
            }
        } else if !trimmed.is_empty() && marker.is_some() {
            bail!("docs/runbooks.md:{}: a marker not followed by a shell block", number);
        }
    }
    Ok(blocks)
}

#[test]
fn every_runbook_block_is_tested_or_says_why_not() -> Result<()> {
    let blocks = tested_blocks()?;
    let named: Vec<&str> = blocks.keys().map(String::as_str).collect();
    let mut expected = TESTED.to_vec();
    expected.sort_unstable();
    assert_eq!(
        named, expected,
        "the tested blocks of docs/runbooks.md and the scenarios that run them"
    );
    Ok(())
}

/// Runs the runbooks' blocks in a scratch folder with the runbooks' variables.
struct Runner {
    blocks: BTreeMap<String, String>,
    work: tempfile::TempDir,
    bin: PathBuf,
    env: BTreeMap<String, String>,
}

impl Runner {
    fn new(fleet: &Fleet) -> Result<Self> {
        let work = tempfile::tempdir()?;
        // Relative paths in the runbooks are relative to a checkout.
        std::os::unix::fs::symlink(workspace_root().join("deploy"), work.path().join("deploy"))?;
        let bin = work.path().join("bin");
        std::fs::create_dir(&bin)?;
        let certs = fleet.certs_dir();
        let path = |p: PathBuf| p.display().to_string();
        let env = BTreeMap::from([
            ("TOLLGATE_HUB".to_string(), fleet.hub_url()),
            ("TOLLGATE_CA".to_string(), path(certs.join("ca.pem"))),
            ("TOLLGATE_CERT".to_string(), path(certs.join("admin-admin.pem"))),
            ("TOLLGATE_KEY".to_string(), path(certs.join("admin-admin-key.pem"))),
            (
                "KUBECONFIG".to_string(),
                path(fleet.cluster(PROD_EAST).kubeconfig_path().to_path_buf()),
            ),
            ("CLUSTER".to_string(), fleet.specs()[PROD_EAST].name.clone()),
            ("NS".to_string(), SPOKE_NS.to_string()),
            ("AGENT_NS".to_string(), TEAM_NS.to_string()),
            ("DATA_DIR".to_string(), path(fleet.hub_data_dir())),
            ("CERTS".to_string(), path(certs)),
            (
                "STORE_URL".to_string(),
                fleet.store_url().unwrap_or_default().to_string(),
            ),
        ]);
        let runner = Self {
            blocks: tested_blocks()?,
            work,
            bin,
            env,
        };
        runner.link("tollgate-hub", &tollgate_e2e::binary("tollgate-hub")?)?;
        runner.link("kubectl", &kubectl()?)?;
        Ok(runner)
    }

    fn link(&self, name: &str, target: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, self.bin.join(name)).with_context(|| format!("linking {name}"))
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_string(), value.to_string());
    }

    /// The block's output (standard output and error); fails with it when the block fails.
    async fn run(&self, name: &str) -> Result<String> {
        let output = self.attempt(name).await?;
        ensure!(
            output.0,
            "runbook block {name} failed:\n{}\n{}",
            self.blocks[name],
            output.1
        );
        Ok(output.1)
    }

    /// Whether the block succeeded, and its output.
    async fn attempt(&self, name: &str) -> Result<(bool, String)> {
        ensure!(TESTED.contains(&name), "{name} is not in TESTED");
        let script = self
            .blocks
            .get(name)
            .with_context(|| format!("docs/runbooks.md has no block {name}"))?;
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let output = tokio::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(self.work.path())
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.work.path())
            .envs(&self.env)
            .output()
            .await?;
        Ok((
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// Debian's kubectl of the test API servers' release (`scripts/kubectl-client`; `KUBECTL` overrides).
fn kubectl() -> Result<PathBuf> {
    let output = std::process::Command::new(workspace_root().join("scripts/kubectl-client")).output()?;
    ensure!(
        output.status.success(),
        "scripts/kubectl-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    Ok(PathBuf::from(
        stdout
            .lines()
            .last()
            .context("scripts/kubectl-client printed nothing")?
            .trim(),
    ))
}

/// Applies `yaml` and waits until prod-east acknowledged the new revision.
async fn apply_and_converge(fleet: &Fleet, yaml: &str) -> Result<u64> {
    let applied = fleet.apply(yaml).await?;
    let rows = fleet.wait_converged().await?;
    let revision = rows[PROD_EAST]["appliedRevision"].as_u64().context("appliedRevision")?;
    ensure!(revision > 0, "{applied}");
    Ok(revision)
}

/// After a restore that took the hub back to revision `restored`, prod-east (which enforces a newer revision)
/// keeps it and reports Diverged; the runbook's adoption then converges it on the restored revision.
async fn adopt_after_restore(fleet: &Fleet, runner: &Runner, restored: u64, enforced: u64) -> Result<()> {
    let rows = fleet
        .wait_status("prod-east refuses the restored, older revision", |rows| {
            condition(&rows[PROD_EAST], "Diverged")["reason"] == "OlderRevision"
        })
        .await?;
    assert_eq!(rows[PROD_EAST]["appliedRevision"], enforced, "{rows:#}");
    let output = runner.run("adopt-after-restore").await?;
    assert!(output.contains("Diverged"), "status shows why: {output}");
    assert!(
        output.contains(&format!("cluster prod-east adopts revision {restored} of store ")),
        "{output}"
    );
    fleet
        .wait_status("prod-east adopted the restored revision", |rows| {
            rows[PROD_EAST]["appliedRevision"] == restored && condition(&rows[PROD_EAST], "Diverged").is_null()
        })
        .await?;
    Ok(())
}

/// The embedded store: upgrade steps, backup while serving, troubleshooting, renewal, restore refused while the hub
/// serves and done once it is stopped, adoption, and the intent exported and applied again.
#[tokio::test]
async fn the_runbooks_work_on_the_embedded_store() -> Result<()> {
    let mut fleet = Fleet::start_with(three_clusters().into_iter().take(1).collect()).await?;
    let mut runner = Runner::new(&fleet)?;

    runner.run("upgrade-crd").await?;
    let check = runner.run("upgrade-check").await?;
    assert!(check.contains("prod-east") && check.contains("EGRESS"), "{check}");

    let first = apply_and_converge(&fleet, LLM_POLICY).await?;
    runner.run("backup-embedded").await?;
    assert!(runner.file("hub-backup.db").is_file());
    runner.run("export-intent").await?;
    let exported = std::fs::read_to_string(runner.file("intent.yaml"))?;
    assert!(
        exported.contains("name: llm-apis") && exported.contains("104.18.0.0/16"),
        "{exported}"
    );
    let second = apply_and_converge(&fleet, &LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13")).await?;

    let troubleshooting = runner.run("policy-not-applied").await?;
    for expected in ["chat", "chat-signature-policy", "scoped"] {
        assert!(troubleshooting.contains(expected), "{expected}: {troubleshooting}");
    }
    let disconnected = runner.run("cluster-disconnected").await?;
    assert!(disconnected.contains("prod-east"), "{disconnected}");

    runner.set("REVISION", &first.to_string());
    let rolled = runner.run("unreadable-revisions").await?;
    assert!(rolled.contains(&format!("revision {}", second + 1)), "{rolled}");
    let enforced = fleet.wait_converged().await?[PROD_EAST]["appliedRevision"]
        .as_u64()
        .context("appliedRevision")?;
    assert_eq!(enforced, second + 1);

    runner.run("renew-spoke-certificate").await?;
    let secrets: Api<Secret> = Api::namespaced(fleet.client(PROD_EAST), SPOKE_NS);
    let secret = secrets.get("tollgate-spoke-hub-tls").await?;
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );

    // A restore under a serving hub is refused and changes nothing; with the hub stopped it is done.
    let (succeeded, refused) = runner.attempt("restore-embedded").await?;
    assert!(
        !succeeded && refused.contains("is in use by another process"),
        "{refused}"
    );
    fleet.kill_hub();
    let restored = runner.run("restore-embedded").await?;
    assert!(restored.contains(&format!("latest revision {first}")), "{restored}");
    assert!(restored.contains("the store it replaced is kept in "), "{restored}");
    fleet.start_hub().await?;
    adopt_after_restore(&fleet, &runner, first, enforced).await?;

    // The intent alone, applied again: the same documents, so nothing changes.
    let imported = runner.run("import-intent").await?;
    assert!(imported.contains("llm-apis"), "{imported}");
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "revision 1's rule", |p| {
            egress(p) == baseline_and(&fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)])
        })
        .await?;
    Ok(())
}

/// The PostgreSQL store: `pg_dump` while the hub serves, `pg_restore` with it stopped, adoption.
#[tokio::test]
async fn the_runbooks_work_on_the_postgres_store() -> Result<()> {
    let mut fleet = Fleet::start_replicated(three_clusters().into_iter().take(1).collect(), 1).await?;
    let runner = Runner::new(&fleet)?;
    let postgres = tollgate_e2e::postgres::binaries()?;
    for tool in ["pg_dump", "pg_restore"] {
        runner.link(tool, &postgres.join(tool))?;
    }
    let first = apply_and_converge(&fleet, LLM_POLICY).await?;
    runner.run("backup-postgres").await?;
    assert!(runner.file("hub.dump").is_file());
    let second = apply_and_converge(&fleet, &LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13")).await?;
    fleet.kill_hub();
    runner.run("restore-postgres").await?;
    fleet.start_hub().await?;
    let history = fleet.cli_ok(&["history"]).await?;
    let numbers: Vec<&str> = history
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(numbers, [first.to_string()], "revision {second} is gone: {history}");
    adopt_after_restore(&fleet, &runner, first, second).await?;
    fleet
        .wait_policy(PROD_EAST, "chat-signature-policy", "revision 1's rule", |p| {
            egress(p) == baseline_and(&fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)])
        })
        .await?;
    Ok(())
}
