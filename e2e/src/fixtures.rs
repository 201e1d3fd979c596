//! Objects and command lines more than one test target needs: CRDs, the harness clusters' kube-dns objects,
//! NetworkPolicies written by hand, and the admin CLI's connection flags.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use crate::workspace_root;

/// Where the project's AgentRuntime CRD lives, relative to the workspace.
pub const AGENT_RUNTIME_CRD_PATH: &str = "deploy/crds/agentruntimes.agent.kagenti.dev.yaml";

/// The project's AgentRuntime CRD as deployed ([`AGENT_RUNTIME_CRD_PATH`]), for tests that do not depend on the
/// spoke's types.
pub fn agent_runtime_crd() -> Result<String> {
    std::fs::read_to_string(workspace_root().join(AGENT_RUNTIME_CRD_PATH))
        .context("reading the AgentRuntime CRD from deploy/crds")
}

/// An AgentRuntime CRD like the agent operator's own, not the project's: `spec.targetRef` and `type` typed; `status`
/// (and, with `spec_open`, the rest of `spec`) kept as written, so a field of the wrong type is stored and only a
/// strict reader notices. Without `spec_open` the API server prunes `spec.egress`.
pub fn upstream_agent_runtime_crd(spec_open: bool) -> String {
    let spec = if spec_open {
        "type: object\n                x-kubernetes-preserve-unknown-fields: true"
    } else {
        "type: object"
    };
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: agentruntimes.agent.kagenti.dev}}
spec:
  group: agent.kagenti.dev
  names: {{kind: AgentRuntime, plural: agentruntimes, singular: agentruntime}}
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {{status: {{}}}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
                {spec}
                properties:
                  type: {{type: string}}
                  targetRef:
                    type: object
                    properties:
                      apiVersion: {{type: string}}
                      kind: {{type: string}}
                      name: {{type: string}}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"#
    )
}

/// The `kube-system/kube-dns` Service and Endpoints of a vanilla cluster, with numeric target ports (the objects
/// [`crate::Cluster::create_dns_service`] writes name them), at [`crate::fleet::DNS_SERVICE_IP`] and
/// [`crate::fleet::DNS_POD_IP`].
pub const KUBE_DNS_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.0.0.10
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system}
subsets:
  - addresses: [{ip: 10.244.0.5}]
    ports:
      - {name: dns, port: 53, protocol: UDP}
      - {name: dns-tcp, port: 53, protocol: TCP}
"#;

/// An egress NetworkPolicy written by hand (a team's, not the spoke's): `pod_selector` and `egress` as JSON.
pub fn network_policy(namespace: &str, name: &str, pod_selector: Value, egress: Value) -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": pod_selector, "policyTypes": ["Egress"], "egress": egress},
    }))?)
}

/// A team's `allow-all-egress` NetworkPolicy: every pod of `namespace` may reach anything.
pub fn allow_all_egress(namespace: &str) -> Result<NetworkPolicy> {
    network_policy(namespace, "allow-all-egress", json!({}), json!([{}]))
}

/// The deprecated upstream AgentCard kind (`agent.kagenti.dev/v1alpha1`), schema-less, with a status subresource.
pub const AGENT_CARD_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: agentcards.agent.kagenti.dev}
spec:
  group: agent.kagenti.dev
  names: {kind: AgentCard, plural: agentcards, singular: agentcard}
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// The name of the admin certificate `tollgate-hub certs admin` makes by default: what the tests' hubs list with
/// `serve --admin`.
pub const ADMIN: &str = "admin";

/// The flags that point the admin CLI at the hub `url` with the admin certificate `tollgate-hub certs` wrote to
/// `certs` (`ca.pem`, `admin-admin.pem`, `admin-admin-key.pem`).
pub fn admin_flags(url: &str, certs: &Path) -> Vec<OsString> {
    vec![
        "--hub".into(),
        url.into(),
        "--ca".into(),
        certs.join("ca.pem").into(),
        "--cert".into(),
        certs.join("admin-admin.pem").into(),
        "--key".into(),
        certs.join("admin-admin-key.pem").into(),
    ]
}
