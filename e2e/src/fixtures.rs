//! Objects and command lines more than one test target needs.

use std::ffi::OsString;
use std::path::Path;

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
