//! The container images, run from their own root filesystem: `scripts/image` builds both as OCI archives from the
//! binaries under test; each archive is unpacked (its layers into a root filesystem) and its entrypoint run with
//! `chroot` as the image's user. The hub image serves and answers `status`; the spoke image reconciles a real
//! kube-apiserver with the chart's arguments, configured in-cluster from a mounted ServiceAccount as in a pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use tollgate_e2e::cli::Cli;
use tollgate_e2e::fixtures::agent_runtime_crd;
use tollgate_e2e::fleet::{TEAM_NS, apply_agent, mtls_card, wait_for_policy};
use tollgate_e2e::hub::issue_certificates;
use tollgate_e2e::rules::mode;
use tollgate_e2e::spoke::{KubeDns, VanillaCluster};
use tollgate_e2e::{ChildProcess, binary, free_port, http_get, wait_until, workspace_root};

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "65532:65532";

/// One image, unpacked.
struct Image {
    config: Value,
    rootfs: PathBuf,
}

fn run(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Builds both images from the binaries under test into `out`, once per test process.
fn build_images(out: &Path) -> Result<()> {
    let bin_dir = binary("tollgate-hub")?
        .parent()
        .context("the binaries' folder")?
        .to_path_buf();
    run(Command::new(workspace_root().join("scripts/image"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out))?;
    Ok(())
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs").join(digest.replacen(':', "/", 1))
}

/// Unpacks `tollgate-<name>-<version>.oci.tar` of `out`: its config, and its layers as a root filesystem.
fn unpack(out: &Path, name: &str) -> Result<Image> {
    let archive = out.join(format!("tollgate-{name}-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    let dir = out.join(format!("unpacked-{name}"));
    std::fs::create_dir_all(&dir)?;
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&dir))?;
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let reference = &index["manifests"][0];
    assert_eq!(
        reference["annotations"]["org.opencontainers.image.ref.name"],
        format!("tollgate-{name}:{}", env!("CARGO_PKG_VERSION"))
    );
    let digest = reference["digest"].as_str().context("a manifest digest")?;
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(&dir, digest))?)?;
    let config_digest = manifest["config"]["digest"].as_str().context("a config digest")?;
    let config: Value = serde_json::from_slice(&std::fs::read(blob(&dir, config_digest))?)?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for layer in manifest["layers"].as_array().context("layers")? {
        let digest = layer["digest"].as_str().context("a layer digest")?;
        run(Command::new("tar")
            .arg("--same-owner")
            .arg("-xf")
            .arg(blob(&dir, digest))
            .arg("-C")
            .arg(&rootfs))?;
    }
    Ok(Image { config, rootfs })
}

/// Every file of a folder, recursively, relative to it.
fn files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    Ok(out)
}

/// What every image must be: the chart's entrypoint, a non-root user, the OCI labels, no shell.
fn check_image(image: &Image, name: &str) -> Result<()> {
    let config = &image.config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([format!("/usr/local/bin/tollgate-{name}")])
    );
    assert_eq!(config["User"], USER, "runs as the numeric non-root user");
    let labels: BTreeMap<String, String> = serde_json::from_value(config["Labels"].clone())?;
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    for label in ["org.opencontainers.image.revision", "org.opencontainers.image.source"] {
        assert!(labels.get(label).is_some_and(|v| !v.is_empty()), "{label}: {labels:?}");
    }
    let all = files(&image.rootfs)?;
    let shells: Vec<&PathBuf> = all
        .iter()
        .filter(|f| {
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            ["sh", "bash", "dash", "ash", "busybox", "zsh"].contains(&file)
        })
        .collect();
    assert!(shells.is_empty(), "a shell in the image: {shells:?}");
    assert!(
        all.iter().any(|f| f.ends_with("etc/ssl/certs/ca-certificates.crt")),
        "CA roots"
    );
    let packages = std::fs::read_to_string(image.rootfs.join("usr/share/doc/tollgate/packages"))?;
    assert!(packages.lines().any(|l| l.starts_with("libc6 ")), "{packages}");
    Ok(())
}

/// The first container of the chart's workload (Deployment or StatefulSet), default values plus `values`.
fn chart_container(chart: &str, values: &[&str]) -> Result<Value> {
    let text = tollgate_e2e::helm::render(&format!("deploy/charts/{chart}"), chart, "tollgate-system", values)?;
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let object = Value::deserialize(document)?;
        if matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            return Ok(object["spec"]["template"]["spec"]["containers"][0].clone());
        }
    }
    bail!("no workload in the rendered {chart} chart")
}

/// The chart runs the image's entrypoint with arguments only, and installs this image by default.
fn check_chart(chart: &str, name: &str, subcommand: &str, values: &[&str]) -> Result<Vec<String>> {
    let container = chart_container(chart, values)?;
    assert!(container.get("command").is_none(), "{container}");
    assert_eq!(
        container["image"],
        format!("tollgate-{name}:{}", env!("CARGO_PKG_VERSION"))
    );
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    assert!(args.iter().any(|a| a == subcommand), "{args:?}");
    Ok(args)
}

/// The chart's arguments with the listeners `flags` moved to loopback ports (a test serves on loopback only).
fn on_loopback(args: Vec<String>, flags: &[(&str, u16)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, _)) => (name.to_string(), true),
            None => (arg.clone(), false),
        };
        match flags.iter().find(|(flag, _)| *flag == name) {
            Some((flag, port)) => {
                if !inline {
                    args.next();
                }
                out.push(format!("{flag}=127.0.0.1:{port}"));
            }
            None => out.push(arg),
        }
    }
    out
}

/// `chroot --userspec=65532:65532 ROOTFS ENTRYPOINT ARGS…`, as the image would run.
fn spawn_in(image: &Image, name: &str, args: &[String], env: &[(String, String)], log: &Path) -> Result<ChildProcess> {
    let mut full = vec![
        format!("--userspec={USER}"),
        image.rootfs.display().to_string(),
        format!("/usr/local/bin/tollgate-{name}"),
    ];
    full.extend_from_slice(args);
    ChildProcess::spawn_with_env(
        &format!("tollgate-{name} (image)"),
        Path::new("chroot"),
        &full,
        env,
        log,
    )
}

#[tokio::test]
async fn the_hub_image_serves_and_answers_status() -> Result<()> {
    let out = tempfile::tempdir()?;
    build_images(out.path())?;
    let image = unpack(out.path(), "hub")?;
    check_image(&image, "hub")?;
    let chart_args = check_chart(
        "tollgate-hub",
        "hub",
        "serve",
        &["admins: [admin]\ntlsSecretName: hub-tls"],
    )?;

    // What the StatefulSet mounts: the TLS Secret (from `tollgate-hub certs`) and the data volume.
    let certs = out.path().join("certs");
    issue_certificates(&certs, &[])?;
    let tls = image.rootfs.join("etc/tollgate/tls");
    std::fs::create_dir_all(&tls)?;
    for (from, to) in [("hub.pem", "tls.crt"), ("hub-key.pem", "tls.key"), ("ca.pem", "ca.crt")] {
        std::fs::copy(certs.join(from), tls.join(to))?;
        std::os::unix::fs::chown(tls.join(to), Some(65532), Some(65532))?;
    }
    let data = image.rootfs.join("var/lib/tollgate-hub");
    std::fs::create_dir_all(&data)?;
    std::os::unix::fs::chown(&data, Some(65532), Some(65532))?;

    let (port, metrics) = (free_port()?, free_port()?);
    let args = on_loopback(chart_args, &[("--listen", port), ("--metrics-addr", metrics)]);
    let log = out.path().join("hub.log");
    let _hub = spawn_in(&image, "hub", &args, &[], &log)?;
    tollgate_e2e::hub::wait_ready(metrics, &log, WAIT)
        .await
        .map_err(|e| e.context(tollgate_e2e::log_tail(&log, 20)))?;
    let status = Cli::admin(&format!("https://localhost:{port}"), &certs).run_ok(&["status", "-o", "json"])?;
    assert_eq!(status.trim(), "[]");
    // Its store was written in its data volume, by its user.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data.join("tollgate-hub.db"))?);
    assert_eq!(owner, 65532);
    Ok(())
}

#[tokio::test]
async fn the_spoke_image_reconciles_a_real_cluster_with_the_charts_arguments() -> Result<()> {
    let out = tempfile::tempdir()?;
    build_images(out.path())?;
    let image = unpack(out.path(), "spoke")?;
    check_image(&image, "spoke")?;
    let chart_args = check_chart("tollgate-spoke", "spoke", "run", &["cluster: {id: image-test}"])?;

    let control_plane = VanillaCluster::from_yaml(&agent_runtime_crd()?)?
        .kube_dns(KubeDns::None)
        .start()
        .await?;
    let cluster = &control_plane.clusters()[0];
    let client = cluster.client();
    apply_agent(&client, "verified", &[("tier", "llm")], None, Some(mtls_card())).await?;
    apply_agent(&client, "unverified", &[("tier", "llm")], None, None).await?;

    // What a pod gets: the ServiceAccount mount and the service environment (in-cluster configuration).
    let secrets = image.rootfs.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(secrets.join("token"), cluster.admin_token())?;
    std::fs::copy(cluster.ca_cert_path(), secrets.join("ca.crt"))?;
    std::fs::write(secrets.join("namespace"), "tollgate-system")?;
    let env = [
        ("KUBERNETES_SERVICE_HOST".to_string(), "127.0.0.1".to_string()),
        ("KUBERNETES_SERVICE_PORT".to_string(), cluster.port().to_string()),
    ];
    // The chart's arguments, with the health endpoints on a loopback port instead of every address of the pod.
    let metrics = free_port()?;
    let args = on_loopback(chart_args, &[("--metrics-addr", metrics)]);
    let log = out.path().join("spoke.log");
    let _spoke = spawn_in(&image, "spoke", &args, &env, &log)?;
    wait_until("the spoke image's /readyz", WAIT, || async {
        matches!(http_get(metrics, "/readyz").await, Ok((200, _)))
    })
    .await
    .map_err(|e| e.context(tollgate_e2e::log_tail(&log, 30)))?;
    let api = kube::Api::namespaced(client.clone(), TEAM_NS);
    wait_for_policy(&api, "verified-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    wait_for_policy(&api, "unverified-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    Ok(())
}
