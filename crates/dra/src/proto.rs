//! The kubelet's gRPC APIs, generated at build time from Kubernetes' own `.proto` files in
//! `proto/` (see `proto/README.md` for their upstream paths and version).

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// `pluginregistration.v1`: the kubelet's plugin watcher asks `GetInfo` on the
/// registration socket and reports with `NotifyRegistrationStatus`.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// `dra.v1` (Kubernetes 1.34+): `DRAPlugin` with `NodePrepareResources` and
/// `NodeUnprepareResources`.
pub mod dra_v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// `dra.v1beta1` (the kubelets of 1.32 and 1.33): the same service and messages.
pub mod dra_v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}
