//! The `tollgate-hub` binary as a platform team runs it: certificates, `serve` on the embedded store, `apply`,
//! `get`, `history`, `rollback`, `status`, bad input refused with the store unchanged, and an acknowledged
//! apply surviving SIGKILL.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tollgate_e2e::cli::{Cli, isolated_hub as hub};
use tollgate_e2e::free_port;
use tollgate_e2e::hub::{HubServer, ServeArgs, issue_certificates};

/// The hub of `dir` (certificates in `dir/certs`, data in `dir/data`, logs in `dir`) serving on `port` with the
/// hub's own heartbeat period.
fn serve(dir: &Path, port: u16) -> HubServer {
    let serve =
        ServeArgs::new(port, free_port().unwrap(), &dir.join("data"), &dir.join("certs")).heartbeat_seconds(None);
    HubServer::serve_blocking(dir, serve).expect("the hub started")
}

/// The admin CLI against the hub of `dir` on `port`, with no CLI configuration of the user's.
fn cli(dir: &Path, port: u16, args: &[&str]) -> Output {
    Cli::admin(&format!("https://localhost:{port}"), &dir.join("certs"))
        .isolated()
        .output(args)
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
    let port = free_port().unwrap();
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
    assert!(lines[0].starts_with("REVISION   CREATED   AUTHOR"), "{history}");
    assert!(
        lines[3].starts_with("3")
            && lines[3].contains(" admin ")
            && lines[3].contains("rollback")
            && lines[3].contains("rollback to revision 1"),
        "every revision names the admin who made it: {history}"
    );
    let status = stdout(&cli(dir.path(), port, &["status"]));
    assert!(
        status.starts_with("No cluster is registered on this hub yet. Register each with `tollgate-hub clusters add"),
        "the empty state says what to do next: {status}"
    );
    let json = stdout(&cli(dir.path(), port, &["status", "-o", "json"]));
    assert_eq!(json.trim(), "[]");

    // SIGKILL right after an acknowledged apply: nothing is lost.
    std::fs::write(&file, POLICY.replace("104.18.0.0/16", "203.0.113.0/24")).unwrap();
    assert_eq!(
        stdout(&cli(dir.path(), port, &["apply", "-f", file_arg])),
        "EgressPolicy/llm-apis configured\nrevision 4\n"
    );
    let mut server = server;
    server.kill(); // SIGKILL
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
    // With TLS, the admin list is required: no admin certificate is accepted by default.
    let out = hub()
        .args([
            "serve",
            "--tls-cert",
            "a",
            "--tls-key",
            "b",
            "--client-ca",
            "c",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin NAME (or TOLLGATE_HUB_ADMINS) is required with TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster registry from the CLI: add with labels, relabel, list (table and JSON), remove; bad input names
/// the field and changes nothing.
#[test]
fn clusters_are_added_labelled_listed_and_removed() {
    let (dir, port, _server) = served();
    let run = |args: &[&str]| cli(dir.path(), port, args);
    assert_eq!(
        stdout(&run(&["clusters", "add", "prod-eu", "--labels", "env=prod,region=eu"])),
        "cluster prod-eu registered\n"
    );
    let twice = run(&["clusters", "add", "prod-eu"]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("registered already"),
        "{twice:?}"
    );
    let bad = run(&["clusters", "add", "dev", "--labels", "env"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--labels: \"env\" is not key=value"),
        "{bad:?}"
    );
    let bad = run(&["clusters", "label", "prod-eu", "tier"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected KEY=VALUE to set a label or KEY- to remove one"),
        "{bad:?}"
    );
    assert_eq!(
        stdout(&run(&["clusters", "label", "prod-eu", "tier=gold", "region-"])),
        "cluster prod-eu labelled: env=prod,tier=gold\n"
    );
    let table = stdout(&run(&["clusters", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLUSTER   LABELS"), "{table}");
    assert!(
        lines[1].starts_with("prod-eu") && lines[1].contains("env=prod,tier=gold") && lines[1].contains(" no "),
        "registered, never connected: {table}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(&["clusters", "list", "-o", "json"]))).unwrap();
    assert_eq!(json[0]["cluster"], "prod-eu");
    assert_eq!(json[0]["labels"]["tier"], "gold");
    assert_eq!(json[0]["connected"], false);
    let status: serde_json::Value = serde_json::from_str(&stdout(&run(&["status", "-o", "json"]))).unwrap();
    assert_eq!(status[0]["cluster"], "prod-eu", "a registered cluster has a status row");
    assert_eq!(
        stdout(&run(&["clusters", "remove", "prod-eu"])),
        "cluster prod-eu removed; its certificates are refused from now on (a stream on another hub replica closes \
         within a heartbeat)\n"
    );
    let gone = run(&["clusters", "remove", "prod-eu"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("is not registered"),
        "{gone:?}"
    );
    assert_eq!(stdout(&run(&["clusters", "list", "-o", "json"])).trim(), "[]");
}

/// One hub per data folder: a second `serve` on a folder a hub serves exits at once naming the folder, and the
/// first hub keeps serving; once the first is gone, the folder is free again.
#[test]
fn a_second_hub_on_a_served_data_folder_is_refused() {
    let (dir, port, first) = served();
    let second = hub()
        .args([
            "serve",
            "--insecure-dev-plaintext",
            "--metrics-addr",
            "127.0.0.1:0",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{}", free_port().unwrap()))
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

/// A hub with certificates in a new folder, serving on a free port.
fn served() -> (tempfile::TempDir, u16, HubServer) {
    let dir = tempfile::tempdir().unwrap();
    issue_certificates(&dir.path().join("certs"), &[]).unwrap();
    let port = free_port().unwrap();
    let server = serve(dir.path(), port);
    (dir, port, server)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Contexts of the CLI configuration switch between two real hubs; a named context, flags and variables win in
/// that order; the file is private to its owner.
#[test]
fn contexts_switch_between_two_hubs() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.yaml");
    let (port_one, port_two) = (free_port().unwrap(), free_port().unwrap());
    for dir in [one.path(), two.path()] {
        issue_certificates(&dir.join("certs"), &[]).unwrap();
    }
    let _hubs = (serve(one.path(), port_one), serve(two.path(), port_two));
    // Only hub one holds a policy.
    let file = write(one.path(), "p.yaml", POLICY);
    stdout(&cli(one.path(), port_one, &["apply", "-f", &file]));
    let tollgate = |args: &[&str]| hub().env("TOLLGATE_CONFIG", &config).args(args).output().unwrap();
    // `ARGS --hub … --ca … --cert … --key …` naming the hub of `dir` on `port` and its admin certificate.
    let flagged_for = |dir: &Path, port: u16, args: &[&str]| {
        Cli::admin(&format!("https://localhost:{port}"), &dir.join("certs"))
            .isolated()
            .command(args)
            .unwrap()
            .env("TOLLGATE_CONFIG", &config)
            .output()
            .unwrap()
    };
    for (name, dir, port) in [("one", one.path(), port_one), ("two", two.path(), port_two)] {
        let set = flagged_for(dir, port, &["config", "set-context", name]);
        assert_eq!(stdout(&set), format!("context \"{name}\" created\n"));
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    let contexts = stdout(&tollgate(&["config", "get-contexts"]));
    assert_eq!(
        contexts,
        format!(
            "CURRENT   NAME   HUB\n*         one    https://localhost:{port_one}\n          two    https://localhost:{port_two}\n"
        ),
        "the first context became the current one"
    );
    let names = |output: Output| stdout(&output);
    assert_eq!(names(tollgate(&["get", "ep", "-o", "name"])), "egresspolicy/llm-apis\n");
    assert_eq!(names(tollgate(&["get", "ep", "-o", "name", "--context", "two"])), "");
    assert_eq!(
        stdout(&tollgate(&["config", "use-context", "two"])),
        "switched to context \"two\"\n"
    );
    assert_eq!(stdout(&tollgate(&["config", "current-context"])), "two\n");
    assert_eq!(names(tollgate(&["get", "ep", "-o", "name"])), "", "hub two");
    // A flag wins over the context (hub one's address; hub one's CA and admin certificate are the context's own
    // files of hub two, which hub one refuses: the flags must also name hub one's files).
    let flagged = flagged_for(one.path(), port_one, &["get", "ep", "-o", "name"]);
    assert_eq!(names(flagged), "egresspolicy/llm-apis\n");
    let missing = tollgate(&["get", "ep", "--context", "three"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no context \"three\""), "{stderr}");
}

/// kubectl's kinds and aliases, `-o name|wide`, `--no-headers`, `-l`, `describe`, `delete` by alias.
#[test]
fn kinds_aliases_selectors_and_output_formats() {
    let (dir, port, _server) = served();
    let labelled = POLICY.replace(
        "metadata: {name: llm-apis}",
        "metadata: {name: llm-apis, labels: {team: ai}}",
    );
    let other = POLICY.replace("metadata: {name: llm-apis}", "metadata: {name: payments}");
    let file = write(dir.path(), "p.yaml", &format!("{labelled}---\n{other}"));
    stdout(&cli(dir.path(), port, &["apply", "-f", &file]));
    for kind in [
        "egresspolicies",
        "egresspolicy",
        "ep",
        "EgressPolicy",
        "policies",
        "policy",
    ] {
        assert_eq!(
            stdout(&cli(dir.path(), port, &["get", kind, "-o", "name"])),
            "egresspolicy/llm-apis\negresspolicy/payments\n",
            "{kind}"
        );
    }
    assert_eq!(
        stdout(&cli(dir.path(), port, &["get", "ep", "-l", "team=ai", "--no-headers"])),
        "EgressPolicy   llm-apis   env=prod   1 rule(s)\n"
    );
    let wide = stdout(&cli(dir.path(), port, &["get", "ep", "-o", "wide"]));
    assert_eq!(
        wide,
        "KIND           NAME       CLUSTERS   DETAILS     LABELS\n\
         EgressPolicy   llm-apis   env=prod   1 rule(s)   team=ai\n\
         EgressPolicy   payments   env=prod   1 rule(s)   -\n\
         revision 1\n"
    );
    assert_eq!(
        stdout(&cli(dir.path(), port, &["get", "eg"])),
        "No EgressGuardrail on the hub at revision 1. Write one and `tollgate-hub apply -f FILE`.\n"
    );
    let described = stdout(&cli(dir.path(), port, &["describe", "ep", "llm-apis"]));
    assert!(
        described.starts_with(
            "Name:       llm-apis\nKind:       EgressPolicy\nRevision:   1\nLabels:     team=ai\nSelects:    env=prod\n"
        ),
        "{described}"
    );
    assert!(
        described.contains("  (none of the clusters the hub knows)\n"),
        "{described}"
    );
    assert!(
        described.contains("Document:\n  apiVersion: tollgate.dev/v1alpha1\n"),
        "{described}"
    );
    let bad = cli(dir.path(), port, &["get", "ep", "-l", "team in ai"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("-l/--selector: selector term \"team in ai\""));
    assert_eq!(
        stdout(&cli(dir.path(), port, &["delete", "ep", "payments"])),
        "EgressPolicy/payments deleted\nrevision 2\n"
    );
}

/// `plan --exit-code` and `apply --dry-run --exit-code` exit like diff: 0 no change, 1 changes, 2 trouble. A bare
/// `--prune` is refused; `--prune -l` deletes only what the selector matches, and the dry run says so first.
#[test]
fn exit_codes_and_a_guarded_prune() {
    let (dir, port, _server) = served();
    let ours = POLICY.replace(
        "metadata: {name: llm-apis}",
        "metadata: {name: llm-apis, labels: {team: ai}}",
    );
    let theirs = POLICY.replace(
        "metadata: {name: llm-apis}",
        "metadata: {name: payments, labels: {team: pay}}",
    );
    let both = write(dir.path(), "both.yaml", &format!("{ours}---\n{theirs}"));
    let code = |args: &[&str]| cli(dir.path(), port, args).status.code();
    assert_eq!(
        code(&["apply", "--dry-run", "--exit-code", "-f", &both]),
        Some(1),
        "changes"
    );
    assert_eq!(
        code(&["plan", "--exit-code", "-f", &both]),
        Some(0),
        "no agent anywhere changes"
    );
    stdout(&cli(dir.path(), port, &["apply", "-f", &both]));
    assert_eq!(
        code(&["apply", "--dry-run", "--exit-code", "-f", &both]),
        Some(0),
        "nothing to change"
    );
    let missing = dir.path().join("missing.yaml");
    assert_eq!(
        code(&["plan", "--exit-code", "-f", missing.to_str().unwrap()]),
        Some(2),
        "trouble"
    );
    let invalid = write(dir.path(), "bad.yaml", &POLICY.replace("port: 443", "port: 0"));
    assert_eq!(code(&["apply", "--dry-run", "--exit-code", "-f", &invalid]), Some(2));
    assert_eq!(
        code(&["apply", "--exit-code", "-f", &both]),
        Some(2),
        "--exit-code needs --dry-run (usage)"
    );

    let only_ours = write(dir.path(), "ours.yaml", &ours);
    let bare = cli(dir.path(), port, &["apply", "--prune", "-f", &only_ours]);
    assert!(!bare.status.success());
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(
        stderr.contains("--prune deletes hub documents that are not in the files: add --all"),
        "{stderr}"
    );
    let preview = stdout(&cli(
        dir.path(),
        port,
        &["apply", "--prune", "-l", "team=ai", "--dry-run", "-f", &only_ours],
    ));
    assert!(
        preview.contains("EgressPolicy/payments unchanged (dry run)") && !preview.contains("deleted"),
        "the selector protects payments: {preview}"
    );
    let preview = stdout(&cli(
        dir.path(),
        port,
        &["apply", "--prune", "-l", "team=pay", "--dry-run", "-f", &only_ours],
    ));
    assert!(preview.contains("EgressPolicy/payments deleted (dry run)"), "{preview}");
    let names = |dir: &Path| stdout(&cli(dir, port, &["get", "ep", "-o", "name"]));
    assert_eq!(
        names(dir.path()),
        "egresspolicy/llm-apis\negresspolicy/payments\n",
        "dry runs changed nothing"
    );
    stdout(&cli(
        dir.path(),
        port,
        &["apply", "--prune", "-l", "team=pay", "-f", &only_ours],
    ));
    assert_eq!(names(dir.path()), "egresspolicy/llm-apis\n");
    let all = stdout(&cli(
        dir.path(),
        port,
        &["apply", "--prune", "--all", "-f", &write(dir.path(), "t.yaml", &theirs)],
    ));
    assert!(
        all.contains("EgressPolicy/llm-apis deleted") && all.contains("EgressPolicy/payments created"),
        "{all}"
    );
}

/// `completion bash` loads in bash and completes subcommands, kinds, flag values, and the hub's document names.
#[test]
fn bash_completion_completes_commands_kinds_and_the_hubs_names() {
    let (dir, port, _server) = served();
    stdout(&cli(
        dir.path(),
        port,
        &["apply", "-f", &write(dir.path(), "p.yaml", POLICY)],
    ));
    let script = stdout(&hub().args(["completion", "bash"]).output().unwrap());
    let script = write(dir.path(), "completion.bash", &script);
    let certs = dir.path().join("certs");
    let complete = |line: &str| -> Vec<String> {
        let driver = format!(
            "source {script}\n\
             COMP_LINE='{line}'; read -ra COMP_WORDS <<< \"$COMP_LINE\"; [[ \"$COMP_LINE\" == *' ' ]] && COMP_WORDS+=('')\n\
             COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9\n\
             _clap_complete_tollgate_hub tollgate-hub \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
        );
        let output = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &driver])
            .env("TOLLGATE_CONFIG", tollgate_e2e::cli::NO_CONFIG)
            .env("TOLLGATE_HUB", format!("https://localhost:{port}"))
            .env("TOLLGATE_CA", certs.join("ca.pem"))
            .env("TOLLGATE_CERT", certs.join("admin-admin.pem"))
            .env("TOLLGATE_KEY", certs.join("admin-admin-key.pem"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    assert_eq!(complete("tollgate-hub sta"), ["status"]);
    assert_eq!(
        complete("tollgate-hub get ")[..2],
        ["egresspolicies", "egressguardrails"]
    );
    assert_eq!(complete("tollgate-hub status --sort-by l"), ["lastSeen", "lag"]);
    assert_eq!(
        complete("tollgate-hub describe ep ")[0],
        "llm-apis",
        "names from the hub, then flags"
    );
    assert_eq!(complete("tollgate-hub describe ep l"), ["llm-apis"]);
}
