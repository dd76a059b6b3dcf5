//! The core every front calls: everything `plugboard serve` and the CLI know and decide,
//! with no HTTP and no rendering in it.
//!
//! It is split by what it serves. [`HostService`] is the host side: the PCI inventory
//! with names and owners, IOMMU groups, device nodes, the hostdev operations and `vfio
//! info`. The CLI builds one when no daemon serves the host; the daemon's [`Service`]
//! holds one ([`Service::host`]) and its handlers call the same methods. [`Service`] adds
//! the VM side: registered VMs and their device managers. Every request and answer type is
//! `Serialize + Deserialize`: the daemon's client sends and receives exactly these.
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
mod held;
mod host;
mod metrics;
mod open;
mod passthrough;
mod reconcile;
mod restore;
mod service;
mod store;
mod vm;
mod vms;

pub use attach::{AttachRequest, CheckedSpec};
pub use auth::Caller;
pub use backend::{Backend, Endpoint};
pub use error::{ErrorClass, ServiceError};
pub use host::{
    DeviceDetail, DeviceQuery, HostConfig, HostGroups, HostService, HostdevRequest, IrqReport,
    NamesQuery, NodeDeviceResult, OWNER_DRIVER, PrepareAnswer, RecoverAnswer, RegionReport,
    ReleaseAnswer, Resolved, VfioQuery, VfioReport, VmDirectory,
};
pub use metrics::{Gauges, LATENCY_BUCKETS, Metrics};
pub use open::OpenedFile;
pub use reconcile::Repair;
pub use service::{Health, Service, ServiceConfig, StartReport};
pub use vm::{MAX_VM_NAME_LEN, RegisterVm, VmInfo, VmRecord, parse_device_id, validate_name};
pub use vms::{Attached, Detached, DeviceList, Reconnected, VmList};

#[cfg(test)]
mod tests;
