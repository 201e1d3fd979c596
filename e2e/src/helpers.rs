//! Everyday test set-up on a [`Cluster`]: namespaces, CRDs, arbitrary YAML, the API server's Endpoints.
//!
//! All writes are server-side apply with the field manager [`FIELD_MANAGER`] and `force`: test set-up
//! always wins over other managers.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Endpoints, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{GroupVersionKind, TypeMeta};
use kube::discovery::{Scope, pinned_kind};
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::wait::{wait_for, wait_for_object};

/// The field manager of every write made by these helpers.
pub const FIELD_MANAGER: &str = "tollgate-e2e";

/// How long [`Cluster::install_crd`] waits for `Established`, and [`Cluster::apply_yaml`] for a kind
/// to appear in discovery.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

impl Cluster {
    /// Creates (applies) a namespace.
    pub async fn create_namespace(&self, name: &str) -> Result<Namespace> {
        let api: Api<Namespace> = Api::all(self.client());
        let namespace = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name },
        });
        api.patch(name, &apply_params(), &Patch::Apply(&namespace))
            .await
            .with_context(|| format!("{}: creating namespace {name:?}", self.name()))
    }

    /// Creates a cluster DNS Service (`dns` UDP and `dns-tcp` TCP on port 53, named target ports) and its
    /// Endpoints: one pod address listening on `pod_port` (53 for kube-dns, 5353 for OpenShift's dns-default).
    pub async fn create_dns_service(
        &self,
        namespace: &str,
        name: &str,
        cluster_ip: &str,
        pod_ip: &str,
        pod_port: u16,
    ) -> Result<()> {
        let yaml = format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  clusterIP: {cluster_ip}
  ports:
    - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
    - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: {namespace}}}
subsets:
  - addresses: [{{ip: {pod_ip}}}]
    ports:
      - {{name: dns, port: {pod_port}, protocol: UDP}}
      - {{name: dns-tcp, port: {pod_port}, protocol: TCP}}
"
        );
        self.apply_yaml(&yaml)
            .await
            .with_context(|| format!("{}: creating the DNS Service {namespace}/{name}", self.name()))?;
        Ok(())
    }

    /// Applies a CRD and waits until its `Established` condition is `True`.
    pub async fn install_crd(&self, crd: &CustomResourceDefinition) -> Result<CustomResourceDefinition> {
        let name = crd.metadata.name.as_deref().context("the CRD has no metadata.name")?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        api.patch(name, &apply_params(), &Patch::Apply(crd))
            .await
            .with_context(|| format!("{}: applying CRD {name:?}", self.name()))?;
        wait_for_object(&api, name, SETUP_TIMEOUT, is_established)
            .await
            .with_context(|| format!("{}: CRD {name:?} never became Established", self.name()))
    }

    /// [`Self::install_crd`] from one YAML (or JSON) document.
    pub async fn install_crd_yaml(&self, yaml: &str) -> Result<CustomResourceDefinition> {
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(yaml).context("parsing a CustomResourceDefinition")?;
        self.install_crd(&crd).await
    }

    /// Server-side applies every document of a multi-document YAML, in order. Kinds are resolved
    /// through discovery (waiting up to [`SETUP_TIMEOUT`] for a kind that is not served yet, e.g. a
    /// CRD applied just before); namespaced objects without a namespace go to `default`.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<DynamicObject>> {
        let mut applied = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let value =
                serde_json::Value::deserialize(document).with_context(|| format!("parsing YAML document {index}"))?;
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value)
                .with_context(|| format!("YAML document {index} is not a Kubernetes object"))?;
            applied.push(
                self.apply_object(&object)
                    .await
                    .with_context(|| format!("{}: applying YAML document {index}", self.name()))?,
            );
        }
        Ok(applied)
    }

    async fn apply_object(&self, object: &DynamicObject) -> Result<DynamicObject> {
        let types = object.types.as_ref().context("the object has no apiVersion/kind")?;
        let gvk = gvk_of(types)?;
        let name = object
            .metadata
            .name
            .as_deref()
            .context("the object has no metadata.name")?;
        let client = self.client();
        let (resource, capabilities) = wait_for(
            format!("{}/{} to be served", types.api_version, types.kind),
            SETUP_TIMEOUT,
            || async { Ok(Some(pinned_kind(&client, &gvk).await?)) },
        )
        .await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
                Api::namespaced_with(client, namespace, &resource)
            }
            Scope::Cluster => Api::all_with(client, &resource),
        };
        api.patch(name, &apply_params(), &Patch::Apply(object))
            .await
            .with_context(|| format!("applying {} {name:?}", types.kind))
    }

    /// Writes the `default/kubernetes` Endpoints: `addresses` on one TCP port named `https`.
    /// Meant for clusters started with `endpoint_reconciler_none(true)`; the API server rejects
    /// loopback and link-local addresses here, so use documentation ranges such as `192.0.2.10`.
    pub async fn set_api_endpoints(&self, addresses: &[IpAddr], port: u16) -> Result<Endpoints> {
        let api: Api<Endpoints> = Api::namespaced(self.client(), "default");
        let endpoints = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": { "name": "kubernetes", "namespace": "default" },
            "subsets": [{
                "addresses": addresses.iter().map(|ip| serde_json::json!({ "ip": ip.to_string() })).collect::<Vec<_>>(),
                "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
            }],
        });
        api.patch("kubernetes", &apply_params(), &Patch::Apply(&endpoints))
            .await
            .with_context(|| format!("{}: writing default/kubernetes Endpoints", self.name()))
    }
}

/// Whether a CRD's `Established` condition is `True`.
pub fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

fn gvk_of(types: &TypeMeta) -> Result<GroupVersionKind> {
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", types.api_version.as_str()),
    };
    if version.is_empty() || types.kind.is_empty() {
        bail!("bad apiVersion/kind {:?}/{:?}", types.api_version, types.kind);
    }
    Ok(GroupVersionKind::gvk(group, version, &types.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(api_version: &str, kind: &str) -> TypeMeta {
        TypeMeta {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        }
    }

    #[test]
    fn gvk_from_api_version() {
        assert_eq!(
            gvk_of(&types("v1", "ConfigMap")).unwrap(),
            GroupVersionKind::gvk("", "v1", "ConfigMap")
        );
        assert_eq!(
            gvk_of(&types("rbac.authorization.k8s.io/v1", "Role")).unwrap(),
            GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "Role")
        );
        assert!(gvk_of(&types("", "X")).is_err());
        assert!(gvk_of(&types("v1", "")).is_err());
    }

    #[test]
    fn established_condition() {
        let mut crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "xs.example.com" },
            "spec": { "group": "example.com", "names": { "kind": "X", "plural": "xs" },
                      "scope": "Namespaced", "versions": [] },
            "status": { "conditions": [
                { "type": "NamesAccepted", "status": "True" },
                { "type": "Established", "status": "False" },
            ] },
        }))
        .unwrap();
        assert!(!is_established(&crd));
        let conditions = crd.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions[1].status = "True".to_string();
        assert!(is_established(&crd));
    }
}
