//! The per-VM device manager: one device model for every kind, reference and attach counts,
//! per-VM allocators, rollback, and save/load.
//!
//! # The model
//! A VM's devices are described by a [`DeviceSpec`]: what makes two requests the same device
//! (its [`DeviceIdentity`]: a node's type and `major:minor`, or a host path for devices
//! without a node), hot or cold plug, and the [`DeviceKind`]: block, VFIO, vhost-user
//! (blk, scsi, net, fs) or generic. This is Kata Containers' virtcontainers device model,
//! with Kata's known bugs left behind (the crate's README lists them, with the upstream
//! issues).
//!
//! # The hypervisor
//! The manager talks to a VMM through the small [`Hypervisor`] trait: hotplug add, hotplug
//! remove, coldplug (boot-time append) and the VMM's kind. Each call gets a [`PlugRequest`]
//! holding the device and everything the manager allocated for it (block index, drive name,
//! SCSI address, root port), and an add answers with the [`GuestView`]: the PCI path, SCSI
//! address and drive name the guest will see. `plugboard-qemu` implements it; tests use
//! `test_util::InMemoryHypervisor` (feature `test-util`).
//!
//! # The manager
//! [`DeviceManager`] holds one VM's devices. [`DeviceManager::new_device`] creates a device
//! or, for an identity it already holds, adds a reference ([`NewDevice::Existing`]);
//! [`DeviceManager::attach`] and [`DeviceManager::detach`] count plugs and reach the
//! hypervisor only on the first attach ([`Acquired::First`]) and the last detach
//! ([`Released::Last`]); [`DeviceManager::remove_device`] drops a reference and refuses to
//! drop the last one of an attached device. Any failure leaves counts, allocators and the
//! hypervisor's view as they were, except a plug the hypervisor could not undo
//! ([`DeviceError::PlugIncomplete`]), which stays in the books as needing cleanup
//! ([`DeviceManager::clean_up`]). The manager is `Send + Sync`; its lock is never held
//! across a hypervisor call (a hypervisor may still serialize its own calls: QEMU's QMP
//! session does). [`DeviceManager::save`] and [`DeviceManager::load`] round-trip
//! the whole state through the versioned [`SavedState`].
//!
//! [`DeviceManager::attach_new`] is the attach a caller that keeps the state on disk uses:
//! create or dedupe, count, plug and persist as one transaction, with one rollback path (a
//! failed persist unplugs the device again; see [`AttachError`]).
//!
//! # Host reads
//! [`HostDevices`] turns what a container runtime asks for ([`DeviceRequest`]: container
//! path, node type, `major:minor`) into a [`DeviceSpec`]: the host path from the kernel's
//! `uevent` (through a `plugboard_sysfs::Sysfs` handle, so a fake kernel can stand in), VFIO
//! IOMMU-group expansion, and Kata's vhost-user store ([`VhostUserStore`]).
//!
//! # Allocators
//! Block indexes are taken lowest-free from `[0, 65535)` and reused ([`IndexPool`]); a
//! block index gives the `vdX` [`DriveName`] (plus a name offset) and the virtio-scsi
//! [`GuestScsiAddress`]; PCIe root ports come from a [`RootPortPool`], one PCI function
//! (PCIe or conventional) per port.
//!
//! # Shared types
//! A [`DeviceId`] has one text form, 16 hex digits, in JSON as everywhere else. Device nodes
//! are built on `plugboard-sysfs`'s [`DevKind`] and [`DevNumber`], and the counts are
//! `plugboard-vfio`'s [`RefCount`] (both re-exported here).

mod attach;
mod cleanup;
mod config;
mod drive_name;
mod error;
mod host;
mod hypervisor;
mod id;
mod index;
mod kind;
mod manager;
mod pci_path;
mod persist;
mod plan;
mod ports;
mod scsi;
mod state;
mod teardown;
mod transaction;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use config::ManagerConfig;
pub use drive_name::{DriveName, DriveNameError, MAX_DRIVE_NAME_LEN, VIRTIO_PREFIX};
pub use error::DeviceError;
pub use host::{
    DeviceRequest, HostDevices, HostError, HostPathError, VHOST_USER_BLK_MAJOR,
    VHOST_USER_SCSI_MAJOR, VfioHostError, VhostUserStore, VhostUserStoreError, vfio_iommu_group,
};
pub use hypervisor::{
    BlockPlug, GuestView, Hypervisor, HypervisorError, HypervisorKind, Plug, PlugRequest,
    VfioFunctionPlug, VfioPlug, VhostUserPlug,
};
pub use id::{DeviceId, DeviceIdError, MAX_NAME_ID_LEN};
pub use index::{BLOCK_INDEX_LIMIT, BlockIndex, BlockIndexError, IndexError, IndexPool};
pub use kind::{
    BlockDriver, BlockDriverError, BlockSpec, DeviceIdentity, DeviceKind, DeviceNode, DeviceSpec,
    FsCache, GenericSpec, HostFunction, ImageFormat, MacAddress, MdevUuid, PassedFd,
    PassedFileType, PciAddress, PlugMode, Sharing, VfioBackend, VfioFunction, VfioSpec,
    VfioSpecError, VhostUserDevice, VhostUserSpec, VhostUserSpecError,
};
pub use manager::{DeviceManager, NewDevice, Removed};
pub use pci_path::{MAX_PCI_SLOT, PciPath, PciPathError, PciSlot};
pub use persist::{PersistError, SAVED_STATE_VERSION, SavedState};
pub use plan::Allocations;
pub use plugboard_sysfs::{DevKind, DevNumber};
pub use plugboard_vfio::{Acquired, RefCount, RefCountError, Released};
pub use ports::{RootPort, RootPortPool};
pub use scsi::{GuestScsiAddress, GuestScsiAddressError, MAX_SCSI_INDEX};
pub use state::{DeviceState, Leftover};
pub use teardown::TeardownError;
pub use transaction::{AttachError, AttachedDevice};
