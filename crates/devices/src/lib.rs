//! The per-VM device manager: one device model for every kind, reference and attach counts,
//! per-VM allocators, rollback, and save/load.
//!
//! # The model
//! A VM's devices are described by a [`DeviceSpec`]: what makes two requests the same device
//! (its [`DeviceIdentity`]: a node's type and `major:minor`, or a host path for devices
//! without a node), hot or cold plug, and the [`DeviceKind`]: block, VFIO, vhost-user
//! (blk, scsi, net, fs) or generic. This is Kata Containers' virtcontainers device model,
//! with the bugs noted in `shared/reference/kata-device-manager.md` left behind.
//!
//! # The hypervisor
//! The manager talks to a VMM through the small [`Hypervisor`] trait: hotplug add, hotplug
//! remove, coldplug (boot-time append) and the VMM's kind. Each call gets a [`PlugRequest`]
//! holding the device and everything the manager allocated for it (block index, drive name,
//! SCSI address, root port), and an add answers with the [`GuestView`]: the PCI path, SCSI
//! address and drive name the guest will see. `plugboard-qemu` implements it; tests use
//! [`test_util::InMemoryHypervisor`] (feature `test-util`).
//!
//! # Allocators
//! Block indexes are taken lowest-free from `[0, 65535)` and reused ([`IndexPool`]); a
//! block index gives the `vdX` [`DriveName`] (plus a name offset) and the virtio-scsi
//! [`ScsiAddress`]; PCIe root ports come from a [`RootPortPool`], one device function per
//! port.

mod drive_name;
mod hypervisor;
mod id;
mod index;
mod kind;
mod pci_path;
mod ports;
mod scsi;

#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub mod test_util;

pub use drive_name::{DriveName, DriveNameError, MAX_DRIVE_NAME_LEN, VIRTIO_PREFIX};
pub use hypervisor::{
    BlockPlug, GuestView, Hypervisor, HypervisorError, HypervisorKind, Plug, PlugRequest,
    VfioFunctionPlug, VfioPlug, VhostUserPlug,
};
pub use id::{DeviceId, DeviceIdError, MAX_NAME_ID_LEN};
pub use index::{BLOCK_INDEX_LIMIT, BlockIndex, BlockIndexError, IndexError, IndexPool};
pub use kind::{
    BlockDriver, BlockDriverError, BlockSpec, DeviceIdentity, DeviceKind, DeviceNode, DeviceSpec,
    FsCache, GenericSpec, HostFunction, ImageFormat, MacAddress, MdevUuid, NodeType, PciAddress,
    PlugMode, VfioBackend, VfioFunction, VfioSpec, VfioSpecError, VhostUserDevice, VhostUserSpec,
    VhostUserSpecError,
};
pub use pci_path::{MAX_PCI_SLOT, PciPath, PciPathError, PciSlot};
pub use ports::{RootPort, RootPortPool};
pub use scsi::{MAX_SCSI_INDEX, ScsiAddress, ScsiAddressError};
