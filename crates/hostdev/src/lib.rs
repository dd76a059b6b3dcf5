//! Host-wide ownership of passthrough devices: which VM owns each PCI, USB, SCSI, mdev or
//! NVMe device on this host, taking a device from its host driver onto vfio-pci and giving
//! it back, with libvirt's virHostdevManager semantics and what libvirt lacks.
//!
//! # The model
//!
//! An **owner** is a (driver, domain) pair: the runtime and the VM. A PCI device the
//! registry knows is on the **active** list (an owner uses it) or the **inactive** list
//! (detached from its host driver, bound to vfio-pci or a vfio variant, unused).
//! [`HostdevManager::prepare_pci`] moves devices to active for an owner (detaching
//! *managed* ones from their host driver first), [`HostdevManager::release_pci`] gives
//! them back, and [`HostdevManager::detach`], [`HostdevManager::reattach`] and
//! [`HostdevManager::reset`] are the single-device operations of `virsh nodedev-*`.
//!
//! # What libvirt lacks
//!
//! - **A registry shared by processes.** The lists live in an SQLite database under the
//!   state directory (WAL, busy timeout, `BEGIN IMMEDIATE` for every read-modify-write),
//!   so the daemon, CLI calls and embedding runtimes can all use it at once, and both
//!   lists, the original drivers and the managed flags survive restarts.
//! - **Crash safety by intent.** Before any sysfs write, the change (device, original
//!   driver, owner, step) is committed to an intent journal; [`HostdevManager::recover`]
//!   finishes or undoes what a dead process left, by looking at what sysfs shows.
//! - **Whole IOMMU groups.** A group is never split between owners, viability is checked
//!   before a device is used, and [`PrepareOptions::whole_group`] takes every endpoint of
//!   the group at once.
//!
//! Every sysfs read and write goes through `plugboard-sysfs` (binding verifies itself).

mod batch;
#[cfg(test)]
mod crash_tests;
mod device;
mod fault;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod give_back;
mod holders;
mod host_device;
mod intent;
mod listing;
mod manager;
mod mdev;
mod node_device;
mod nvme;
mod owner;
mod pci;
mod pci_request;
mod plan;
mod process;
#[cfg(test)]
mod race_tests;
mod recover;
pub mod registry;
mod release;
mod scsi;
#[cfg(test)]
mod test_support;
mod usb;

pub use batch::{BatchError, BatchOptions, DeviceRelease, ReleaseResult};
pub use device::HostDeviceError;
pub use give_back::ReattachOutcome;
pub use holders::Holder;
pub use host_device::{HostDevice, HostDeviceParseError};
pub use intent::{Intent, IntentOp, IntentStep};
pub use listing::{Attention, Listing, Pending, read_owners};
pub use manager::HostdevManager;
pub use mdev::MdevError;
pub use node_device::{DetachOutcome, NodeDeviceError, ResetOutcome};
pub use nvme::{NvmeError, NvmeNamespace, NvmeReleased, controller_released};
pub use owner::{Owner, OwnerError};
pub use pci::Prepared;
pub use pci_request::{PrepareError, PrepareOptions};
pub use process::ProcessStamp;
pub use recover::{RecoverAction, Recovered};
pub use release::{PciReleased, ReleaseError, ReleaseOutcome};
pub use scsi::ScsiError;
pub use usb::{UsbError, UsbSelector};
