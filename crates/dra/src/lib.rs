//! Plugboard as a Kubernetes DRA driver: a kubelet plugin for PCI passthrough, on the same
//! host-device core as the CLI and the daemon.
//!
//! Dynamic Resource Allocation (`resource.k8s.io/v1`, GA in Kubernetes 1.34) has a driver
//! publish its node's devices as `ResourceSlice`s; the scheduler allocates them to
//! `ResourceClaim`s, and the kubelet asks the driver's kubelet plugin to prepare a claim's
//! devices before the pod starts, receiving CDI ids that the container runtime turns into
//! device nodes. This crate is that driver for VFIO passthrough:
//!
//! - **What is offered** (`offer.rs`): every PCI endpoint alone in its IOMMU group, and
//!   every group of several endpoints as one device, because VFIO gives out groups whole.
//!   Devices held outside Kubernetes are not offered.
//! - **Publishing** (`slices.rs`, `publish.rs`): the offers as one pool per node, in slices
//!   of at most 128 devices, with typed attributes (`resource.kubernetes.io/pciBusID`, ids,
//!   class, IOMMU group, NUMA node, driver, viability), written through a [`SliceStore`]
//!   (kube-rs, or the in-memory stand-in of tests) only when something changed.
//! - **Prepare** (`prepare.rs`): the claim's allocation, read through a [`ClaimSource`],
//!   becomes a hostdev prepare for the owner `k8s/<namespace>/<claim uid>` through
//!   [`HostService`](plugboard_service::HostService) (whole group, managed, intent journal),
//!   then a CDI spec (`cdi.rs`) with the VFIO device nodes of the chosen mode. Unprepare is
//!   the hostdev release. Claims live in the hostdev registry, so `plugboard hostdev ls`
//!   shows them and recovery after a crash is the same as for every other owner.
//! - **The kubelet's APIs** (`proto.rs`, `server.rs`): plugin registration and `DRAPlugin`
//!   (v1 and v1beta1), generated from Kubernetes' own `.proto` files, served on Unix
//!   sockets.
//!
//! [`run`] puts it together; the `plugboard-dra` binary (`src/main.rs`) parses flags and calls it.

mod cdi;
mod claims;
mod error;
mod host;
mod kube_api;
mod offer;
mod prepare;
pub mod proto;
mod publish;
mod run;
mod server;
mod slices;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod validate;

pub use cdi::{
    CDI_KIND, CDI_VERSION, ContainerEdits, Device as CdiDevice, DeviceNode, Spec as CdiSpec,
    device_env, spec_path,
};
pub use claims::{Allocated, ClaimRef, ClaimSource, allocation};
pub use error::{ClaimError, PublishError, ServeError, StoreError};
pub use kube_api::{KubeClaims, KubeSlices};
pub use offer::{CLAIM_OWNER_DRIVER, Offer, OfferName, OfferNameError, all_offers, offers};
pub use prepare::{Driver, DriverConfig, PreparedDevice};
pub use publish::{PublishReport, Publisher, SliceEvent, SliceEvents, SliceStore, node_owner};
pub use run::{current_offers, publish_loop, publish_once, run};
pub use server::{PLUGIN_TYPE, RegistrationStatus, SUPPORTED_VERSIONS, Sockets, serve};
pub use slices::{
    MAX_DEVICES_PER_SLICE, PCI_BUS_ID, build_slices, chunks, device, slice_name, slices_of,
};
pub use validate::{is_dns_label, is_dns_subdomain, slice_problems};

/// The driver name the plugin uses unless told otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "vfio.plugboard.dev";
