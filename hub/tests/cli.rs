//! The `tollgate-hub` binary as a platform team runs it: certificates, `serve` on the embedded store, `apply`,
//! `get`, `history`, `rollback`, `status`, bad input refused with the store unchanged, and an acknowledged
//! apply surviving SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate-hub"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16) -> Server {
    let certs = dir.join("certs");
    let mut child = hub()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(certs.join("hub.pem"))
        .arg("--tls-key")
        .arg(certs.join("hub-key.pem"))
        .arg("--client-ca")
        .arg(certs.join("ca.pem"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "Hub serving" log line.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Hub serving") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("the hub started");
    Server(child)
}

fn cli(dir: &Path, port: u16, args: &[&str]) -> Output {
    let certs = dir.join("certs");
    hub()
        .args(args)
        .args(["--hub", &format!("https://localhost:{port}")])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("admin-admin.pem"))
        .arg("--key")
        .arg(certs.join("admin-admin-key.pem"))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  egress: [{to: [{ipBlock: {cidr: 104.18.0.0/16}}], ports: [{port: 443}]}]
";

#[test]
fn certificates_serve_apply_get_history_rollback_and_sigkill_durability() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", certs_arg],
        vec!["certs", "hub", "--dir", certs_arg],
        vec!["certs", "admin", "--dir", certs_arg],
        vec!["certs", "spoke", "--dir", certs_arg, "--cluster-id", "prod-eu"],
    ] {
        let out = hub().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_port();
    let server = serve(dir.path(), port);
    let file = dir.path().join("intent.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let file_arg = file.to_str().unwrap();

    let dry = stdout(&cli(dir.path(), port, &["apply", "--dry-run", "-f", file_arg]));
    assert!(dry.starts_with("EgressPolicy/llm-apis created (dry run)\n"), "{dry}");
    assert!(dry.ends_with("dry run: nothing was committed\n"), "{dry}");
    let applied = stdout(&cli(dir.path(), port, &["apply", "-f", file_arg]));
    assert_eq!(applied, "EgressPolicy/llm-apis created\nrevision 1\n");

    // Bad input: every error with file, document and field; nothing committed.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICY
            .replace("104.18.0.0/16", "104.18.0.1/16")
            .replace("port: 443", "port: 0"),
    )
    .unwrap();
    let refused = cli(dir.path(), port, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("spec.egress[0].to[0].ipBlock.cidr: 104.18.0.1/16 has host bits set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.egress[0].ports[0].port: 0 is outside the port range 1-65535"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s); nothing was applied"), "{stderr}");

    let yaml = stdout(&cli(dir.path(), port, &["get", "policies", "-o", "yaml"]));
    assert!(yaml.contains("cidr: 104.18.0.0/16"), "{yaml}");
    let table = stdout(&cli(dir.path(), port, &["get", "policies"]));
    assert!(
        table.starts_with(
            "KIND           NAME       CLUSTERS   DETAILS\nEgressPolicy   llm-apis   env=prod   1 rule(s)\n"
        ),
        "{table}"
    );
    assert!(table.ends_with("revision 1\n"), "{table}");

    std::fs::write(&file, POLICY.replace("104.18.0.0/16", "198.51.100.0/24")).unwrap();
    assert_eq!(
        stdout(&cli(dir.path(), port, &["apply", "-f", file_arg])),
        "EgressPolicy/llm-apis configured\nrevision 2\n"
    );
    assert_eq!(
        stdout(&cli(dir.path(), port, &["rollback", "--to", "1"])),
        "rolled back to the documents of revision 1\nrevision 3\n"
    );
    let history = stdout(&cli(dir.path(), port, &["history"]));
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("REVISION   CREATED"), "{history}");
    assert!(
        lines[3].starts_with("3") && lines[3].contains("rollback") && lines[3].contains("rollback to revision 1"),
        "{history}"
    );
    let status = stdout(&cli(dir.path(), port, &["status"]));
    assert!(status.starts_with("CLUSTER"), "{status}");
    let json = stdout(&cli(dir.path(), port, &["status", "-o", "json"]));
    assert_eq!(json.trim(), "[]");

    // SIGKILL right after an acknowledged apply: nothing is lost.
    std::fs::write(&file, POLICY.replace("104.18.0.0/16", "203.0.113.0/24")).unwrap();
    assert_eq!(
        stdout(&cli(dir.path(), port, &["apply", "-f", file_arg])),
        "EgressPolicy/llm-apis configured\nrevision 4\n"
    );
    let mut server = server;
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    let started = Instant::now();
    let _server = serve(dir.path(), port);
    let yaml = stdout(&cli(dir.path(), port, &["get", "policies", "-o", "yaml"]));
    assert!(
        yaml.contains("cidr: 203.0.113.0/24"),
        "revision 4 survived SIGKILL: {yaml}"
    );
    assert!(stdout(&cli(dir.path(), port, &["history"])).lines().count() == 5);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn plaintext_is_refused_off_loopback_and_tls_files_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let out = hub()
        .args([
            "serve",
            "--insecure-dev-plaintext",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed on a loopback address"));
    let out = hub().args(["serve", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS needs --tls-cert, --tls-key and --client-ca"));
}

/// One hub per data folder: a second `serve` on a folder a hub serves exits at once naming the folder, and the
/// first hub keeps serving; once the first is gone, the folder is free again.
#[test]
fn a_second_hub_on_a_served_data_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", certs_arg],
        vec!["certs", "hub", "--dir", certs_arg],
        vec!["certs", "admin", "--dir", certs_arg],
    ] {
        assert!(hub().args(&args).output().unwrap().status.success(), "{args:?}");
    }
    let port = free_port();
    let first = serve(dir.path(), port);
    let second = hub()
        .args([
            "serve",
            "--insecure-dev-plaintext",
            "--metrics-addr",
            "127.0.0.1:0",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("data is in use by another process"), "{stderr}");
    assert!(
        stdout(&cli(dir.path(), port, &["history"])).contains("REVISION"),
        "the first hub serves on"
    );
    drop(first);
    let _again = serve(dir.path(), port);
}
