//! The whole product end to end, with real processes only: one etcd, three kube-apiservers (`prod-east`,
//! `prod-west`: `env=prod`; `staging`), the `tollgate-hub` binary on its embedded store with mTLS, three
//! `tollgate-spoke` binaries with their own certificates and kubeconfigs, and the CLI as a user runs it.
//! Each test starts its own fleet ([`tollgate_e2e::fleet::Fleet`]), so nextest runs them in parallel.

mod cli;
mod cluster_changes;
mod fail_closed;
mod failures;
mod fqdn;
mod intent;
mod membership;
mod replicas;
mod runbooks;
mod support;
mod widening;
