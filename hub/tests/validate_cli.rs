//! The `tollgate-hub validate` binary as a user runs it.

use tollgate_e2e::cli::hub;

#[test]
fn valid_folder_prints_a_summary_and_exits_zero() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let out = hub().args(["validate", "-f", examples]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.ends_with("3 document(s) valid\n"), "{stdout}");
}

#[test]
fn invalid_file_prints_every_error_with_file_document_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: bad}
spec:
  egress:
    - ports: [{port: 443}]
    - to: [{ipBlock: {cidr: 10.0.0.1/8}}]
      colour: blue
",
    )
    .unwrap();
    let out = hub().args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let name = file.display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert_eq!(
        lines[0],
        format!(
            "{name}:1: document 1 (EgressPolicy/bad): spec.egress[1].colour: unknown field: it is not part of the schema (check its spelling and indentation)"
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "{name}:1: document 1 (EgressPolicy/bad): spec.egress[0].to: port-only rule"
        )),
        "{stderr}"
    );
    assert!(lines[1].contains("OVN-Kubernetes"));
    assert_eq!(
        lines[2],
        format!(
            "{name}:1: document 1 (EgressPolicy/bad): spec.egress[1].to[0].ipBlock.cidr: 10.0.0.1/8 has host bits set: use the network address 10.0.0.0/8"
        )
    );
    assert_eq!(lines[3], "3 error(s); nothing is valid until all are fixed");
    assert!(out.stdout.is_empty());
}

#[test]
fn malformed_yaml_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x\nspec: {}\n",
    )
    .unwrap();
    let out = hub().args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:4: document 1:", file.display())),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let out = hub()
        .args(["validate", "-f", "/nonexistent/intent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/intent.yaml"));
}
