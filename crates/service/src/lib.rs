//! The host daemon's domain logic: everything `plugboard serve` knows and decides, with no
//! HTTP in it.
//!
//! # What the service holds
//!
//! - **The host**: PCI inventory and IOMMU groups (plugboard-sysfs), read on demand.
//! - **The hostdev registry** (plugboard-hostdev): who owns which host device, in SQLite
//!   under the state directory. `recover` runs at every start.
//! - **VMs**: each registered by name with its hypervisor endpoint (a QMP socket), owned by
//!   the uid that registered it, with a plugboard-devices `DeviceManager` whose whole
//!   state is saved in the same database after every change (`store.rs`).
//!
//! # Start
//!
//! [`Service::open`] recovers the registry, loads every VM, reconnects to its hypervisor
//! and **reconciles**: a device saved as attached that the VM no longer holds is dropped
//! from the books, and an object of ours the VM holds that no device accounts for is
//! reported. Every difference is logged and returned in the [`StartReport`].
//!
//! # Rules
//!
//! Who may do what ([`Caller`], `auth.rs`), which failures are the caller's and which the
//! service's ([`ErrorClass`]), and what is counted ([`Metrics`]) live here, so the HTTP
//! layer only maps them onto routes and status codes.

mod attach;
mod auth;
mod backend;
mod error;
mod hostdevs;
mod metrics;
mod passthrough;
mod reconcile;
mod service;
mod store;
mod vm;
mod vms;

pub use attach::AttachRequest;
pub use auth::Caller;
pub use backend::{Backend, Endpoint};
pub use error::{ErrorClass, ServiceError};
pub use hostdevs::{HostdevRequest, NodeDeviceResult, OWNER_DRIVER};
pub use metrics::{Gauges, LATENCY_BUCKETS, Metrics};
pub use reconcile::Repair;
pub use service::{Service, ServiceConfig, StartReport};
pub use vm::{MAX_VM_NAME_LEN, RegisterVm, VmInfo, VmRecord, validate_name};
pub use vms::{Attached, Detached};

#[cfg(test)]
mod tests;
