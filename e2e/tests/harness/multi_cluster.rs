//! Two clusters on one etcd: isolation, kubeconfig files, garbage collection by the controller
//! manager, test-owned `default/kubernetes` Endpoints, and clean-up on drop.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tollgate_e2e::{ControlPlane, process_is_alive, wait_for_deletion, wait_for_object};

use crate::support::{CONTROLLER, QUICK, api_code, data_of, mk_config_map, pairs};

fn doc_ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

#[tokio::test]
async fn two_clusters_isolated_with_gc_and_test_owned_endpoints_then_all_processes_die() -> Result<()> {
    let control_plane = ControlPlane::builder()
        .clusters(2)
        .controller_manager(true)
        .endpoint_reconciler_none(true)
        .start()
        .await?;
    let [a, b] = control_plane.clusters() else {
        panic!("asked for two clusters")
    };
    assert_ne!(a.url(), b.url());
    let apply = PatchParams::apply("e2e-test");
    let cms_a: Api<ConfigMap> = Api::default_namespaced(a.client());
    let cms_b: Api<ConfigMap> = Api::default_namespaced(b.client());

    // Isolation: same names, separate objects.
    cms_a
        .patch(
            "shared-name",
            &apply,
            &Patch::Apply(mk_config_map("shared-name", &[("in", "a")])),
        )
        .await?;
    assert!(cms_b.get_opt("shared-name").await?.is_none());
    cms_b
        .patch(
            "shared-name",
            &apply,
            &Patch::Apply(mk_config_map("shared-name", &[("in", "b")])),
        )
        .await?;
    assert_eq!(data_of(&cms_a.get("shared-name").await?), pairs(&[("in", "a")]));
    assert_eq!(data_of(&cms_b.get("shared-name").await?), pairs(&[("in", "b")]));
    // Each cluster has its own admin token.
    let a_token_on_b = b.client_for_token(a.admin_token()).await?;
    let err = Api::<Namespace>::all(a_token_on_b)
        .list(&ListParams::default())
        .await
        .expect_err("cluster A's token must not work on cluster B");
    assert_eq!(api_code(&err), Some(401), "{err}");

    // The kubeconfig file works on its own and verifies TLS against the generated CA.
    let kubeconfig = Kubeconfig::read_from(a.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    assert!(!config.accept_invalid_certs);
    let from_file: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config)?);
    assert_eq!(data_of(&from_file.get("shared-name").await?), pairs(&[("in", "a")]));

    // Garbage collection (controller manager): deleting the owner removes the dependent.
    let owner = cms_a
        .patch("owner", &apply, &Patch::Apply(mk_config_map("owner", &[])))
        .await?;
    let uid = owner.metadata.uid.context("owner has a uid")?;
    let mut owned = mk_config_map("owned", &[]);
    owned["metadata"]["ownerReferences"] =
        json!([{ "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid }]);
    cms_a.patch("owned", &apply, &Patch::Apply(owned)).await?;
    cms_a.delete("owner", &DeleteParams::default()).await?;
    if let Err(e) = wait_for_deletion(&cms_a, "owned", CONTROLLER).await {
        control_plane.check_alive()?;
        return Err(e);
    }

    // No reconciler: the Service exists (bootstrap controller), the Endpoints are ours alone.
    let service = wait_for_object(
        &Api::<Service>::default_namespaced(b.client()),
        "kubernetes",
        QUICK,
        |_| true,
    )
    .await?;
    let spec = service.spec.context("kubernetes Service has a spec")?;
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.0.0.1"));
    let ports = spec.ports.unwrap_or_default();
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.port, p.target_port.clone()))
            .collect::<Vec<_>>(),
        [(443, Some(IntOrString::Int(i32::from(b.port()))))]
    );
    let endpoints_b: Api<Endpoints> = Api::default_namespaced(b.client());
    assert!(endpoints_b.get_opt("kubernetes").await?.is_none());
    b.set_api_endpoints(&[doc_ip(10)], 6443).await?;
    assert_eq!(
        endpoint_addresses(&endpoints_b.get("kubernetes").await?),
        [("192.0.2.10".to_string(), 6443)]
    );
    b.set_api_endpoints(&[doc_ip(11), doc_ip(12)], 8443).await?;
    assert_eq!(
        endpoint_addresses(&endpoints_b.get("kubernetes").await?),
        [("192.0.2.11".to_string(), 8443), ("192.0.2.12".to_string(), 8443)]
    );
    let loopback = b.set_api_endpoints(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], 6443).await;
    assert!(loopback.is_err(), "v1.20 rejects loopback Endpoints addresses");

    // Dropping the control plane kills every process it started.
    let pids = control_plane.pids();
    assert_eq!(pids.len(), 5, "etcd + 2 × (apiserver + controller manager)");
    assert!(pids.iter().all(|&pid| process_is_alive(pid)));
    drop(control_plane);
    let alive: Vec<_> = pids.into_iter().filter(|&pid| process_is_alive(pid)).collect();
    assert_eq!(alive, Vec::<u32>::new());
    Ok(())
}

fn endpoint_addresses(endpoints: &Endpoints) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for address in subset.addresses.iter().flatten() {
            for port in subset.ports.iter().flatten() {
                out.push((address.ip.clone(), port.port));
            }
        }
    }
    out.sort();
    out
}
