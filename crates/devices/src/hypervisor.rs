//! The `Hypervisor` trait: what the device manager asks of a VMM, and nothing else.
//!
//! This is Kata's `DeviceReceiver`, narrowed. Kata's receiver also handed out block indexes
//! and name offsets; here those are the manager's own allocators, so a hypervisor only plugs,
//! unplugs, appends at boot, and says what it is. Each call takes a [`PlugRequest`] that
//! already holds everything the manager decided (index, drive name, SCSI address, root port,
//! the names of the hypervisor's objects), and an add answers with what the guest will see
//! ([`GuestView`]).
//!
//! The calls are synchronous: an implementation that talks to an async VMM API blocks on it.
//! The manager never holds its lock across a call, so a slow hotplug delays neither reads
//! nor the manager's bookkeeping of other devices. An implementation may serialize its own
//! calls (`plugboard-qemu` does: one QMP conversation per VM), and then a slow call delays
//! the next call of that VM whichever device it is for.
//!
//! # Contract
//! - **Atomic, or says it is not.** A call either does everything or leaves the VM as it
//!   was. A QEMU block plug is `blockdev-add` then `device_add`; when `device_add` fails, the
//!   implementation deletes the blockdev before it returns the error (Kata runtime #1941). A
//!   VFIO request holds every function of an IOMMU group: plug all or none. When undoing a
//!   failed plug does not finish (the guest never lets go of a function already plugged, a
//!   backend cannot be deleted), the answer is [`HypervisorError::Incomplete`], never a plain
//!   failure: the manager then keeps the device's allocations and records it as needing
//!   cleanup, which `hotplug_remove` of the same request finishes later.
//! - **One request, one device.** `hotplug_remove` gets the same request `hotplug_add` or
//!   `coldplug` got, so an implementation can find its objects from it alone (ids are in
//!   the request, not in the implementation's memory).
//! - **Cold-plugged devices** are removed through `hotplug_remove` too, with
//!   [`PlugRequest::mode`] telling which: before the VM starts that takes them out of its
//!   configuration, and once it runs a cold device in a hot-pluggable slot (a root port)
//!   leaves like a hot one. An implementation that cannot remove one from the running VM
//!   (QEMU's q35 root bus has no hotplug) returns [`HypervisorError::NotRemovable`]; the
//!   manager then does what Kata does, and only counts the detach down: the device stays in
//!   the VM until it stops ([`crate::DeviceState::resident`]). A hot device that cannot be
//!   removed (an nvdimm) stays attached.
//! - **What the guest sees** of a plugged device can be asked again
//!   ([`Hypervisor::guest_view`]): a device cold-plugged before the VM started gets its PCI
//!   path only once the VMM has placed it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::drive_name::DriveName;
use crate::id::DeviceId;
use crate::index::BlockIndex;
use crate::kind::{BlockSpec, PlugMode, VfioBackend, VfioFunction, VhostUserSpec};
use crate::pci_path::PciPath;
use crate::ports::RootPort;
use crate::scsi::GuestScsiAddress;

/// Which VMM is behind a [`Hypervisor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    /// QEMU (over QMP).
    Qemu,
    /// Cloud Hypervisor.
    CloudHypervisor,
    /// Firecracker.
    Firecracker,
}

impl fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::CloudHypervisor => "cloud-hypervisor",
            Self::Firecracker => "firecracker",
        })
    }
}

/// Why a hypervisor call failed. The manager rolls back its own state on every one of these.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The hypervisor cannot plug this kind of device, driver or mode.
    #[error("hypervisor cannot plug device {device}: {what}")]
    Unsupported {
        /// The device.
        device: DeviceId,
        /// What it cannot do, e.g. "vhost-user-fs hotplug".
        what: String,
    },
    /// The device cannot be removed (cold-plugged into a running VM, no hotplug slot).
    #[error("hypervisor cannot remove device {device}")]
    NotRemovable {
        /// The device.
        device: DeviceId,
    },
    /// An add for a device the VM already holds.
    #[error("device {device} is already plugged")]
    AlreadyPlugged {
        /// The device.
        device: DeviceId,
    },
    /// A remove for a device the VM does not hold.
    #[error("device {device} is not plugged")]
    NotPlugged {
        /// The device.
        device: DeviceId,
    },
    /// A plug failed and undoing what it had done did not finish: the VM may still hold part
    /// of the device (a function, a backend). The manager keeps the device's allocations
    /// and records it as needing cleanup ([`crate::DeviceState::needs_cleanup`]); a
    /// [`Hypervisor::hotplug_remove`] of the same request finishes the job.
    #[error(
        "plugging device {device} failed and undoing it did not finish; the VM may still hold part of it"
    )]
    Incomplete {
        /// The device.
        device: DeviceId,
        /// Why the plug failed and what was left (the implementation's own error).
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
    /// The VMM failed (a QMP error, a lost connection, a deadline); the source says how.
    #[error("hypervisor failed on device {device}")]
    Backend {
        /// The device.
        device: DeviceId,
        /// The implementation's own error.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
}

/// A block device to plug, with everything the manager allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPlug {
    /// The name for the hypervisor's objects: `drive-<id>`, at most 31 characters.
    pub name_id: String,
    /// The device.
    pub spec: BlockSpec,
    /// Its block index.
    pub index: BlockIndex,
    /// `vdX` for the virtio-blk family (index plus the manager's name offset), else `None`.
    pub drive_name: Option<DriveName>,
    /// `id:lun` for virtio-scsi, else `None`.
    pub scsi_address: Option<GuestScsiAddress>,
    /// The root port for a virtio-blk PCI function, when the VM has a port pool.
    pub port: Option<RootPort>,
}

/// A vhost-user device to plug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserPlug {
    /// The name for the hypervisor's objects (chardev, device): `blk-<id>`, `scsi-<id>`,
    /// `net-<id>` or `fs-<id>`, at most 31 characters.
    pub name_id: String,
    /// The device.
    pub spec: VhostUserSpec,
    /// Its block index: vhost-user-blk in the virtio-blk family only.
    pub index: Option<BlockIndex>,
    /// `vdX` when it has an index.
    pub drive_name: Option<DriveName>,
    /// The root port for a PCI device, when the VM has a port pool.
    pub port: Option<RootPort>,
}

/// One VFIO function to plug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioFunctionPlug {
    /// The name for the hypervisor's device: `vfio-<n>-<id>`, at most 31 characters.
    pub name_id: String,
    /// The host function.
    pub function: VfioFunction,
    /// The root port for a PCIe function, when the VM has a port pool.
    pub port: Option<RootPort>,
}

/// A VFIO device to plug: every function of the group, as a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioPlug {
    /// How the VMM opens the device.
    pub backend: VfioBackend,
    /// The functions, in group order.
    pub functions: Vec<VfioFunctionPlug>,
}

/// What to plug. Generic devices never reach the hypervisor, so they have no variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Plug {
    /// A block device.
    Block(BlockPlug),
    /// A vhost-user device.
    VhostUser(VhostUserPlug),
    /// A VFIO device.
    Vfio(VfioPlug),
}

/// One call's worth of work for a [`Hypervisor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlugRequest {
    /// The manager's id of the device.
    pub device: DeviceId,
    /// Hot or cold: which call added it.
    pub mode: PlugMode,
    /// The device and its allocations.
    pub plug: Plug,
}

/// What the guest sees of a plugged device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestView {
    /// The guest PCI path of each PCI function, in request order (one for a virtio device,
    /// one per function for VFIO); empty when the device is not on PCI or the hypervisor
    /// cannot tell.
    pub pci_paths: Vec<PciPath>,
    /// The SCSI address (virtio-scsi disks).
    pub scsi_address: Option<GuestScsiAddress>,
    /// The predicted disk name (virtio-blk family). A hint: the PCI path is authoritative.
    pub drive_name: Option<DriveName>,
}

/// A VMM that can take devices. Implemented by `plugboard-qemu`; tests use
/// `test_util::InMemoryHypervisor` (feature `test-util`).
///
/// See the module documentation for the contract every implementation keeps.
pub trait Hypervisor: Send + Sync {
    /// Which VMM this is. Saved with the manager's state; loading state saved for another
    /// kind is refused.
    fn kind(&self) -> HypervisorKind;

    /// Plugs a device into the running VM (Kata's `HotplugAddDevice`).
    ///
    /// # Errors
    /// Any [`HypervisorError`]; the VM is left as it was.
    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError>;

    /// Removes a device that `hotplug_add` or `coldplug` added, given the same request
    /// (Kata's `HotplugRemoveDevice`). Returns once the VMM has released it (for QEMU, after
    /// `DEVICE_DELETED`), so the host side can reclaim it.
    ///
    /// # Errors
    /// Any [`HypervisorError`]; the VM still holds the device.
    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError>;

    /// Adds a device to the VM's boot configuration (Kata's `AppendDevice`). Appending a VFIO
    /// request appends every function (Kata appended only the first).
    ///
    /// # Errors
    /// Any [`HypervisorError`]; the configuration is left as it was.
    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError>;

    /// What the guest sees of a device `hotplug_add` or `coldplug` added, as the VMM tells it
    /// now (a cold-plugged device's PCI path is known only once the VM runs).
    ///
    /// # Errors
    /// [`HypervisorError::NotPlugged`] when the VM does not hold it; any other
    /// [`HypervisorError`] when the VMM cannot be asked.
    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError>;
}

impl<H: Hypervisor + ?Sized> Hypervisor for Arc<H> {
    fn kind(&self) -> HypervisorKind {
        (**self).kind()
    }

    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).hotplug_add(request)
    }

    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
        (**self).hotplug_remove(request)
    }

    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).coldplug(request)
    }

    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).guest_view(request)
    }
}

impl<H: Hypervisor + ?Sized> Hypervisor for &H {
    fn kind(&self) -> HypervisorKind {
        (**self).kind()
    }

    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).hotplug_add(request)
    }

    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
        (**self).hotplug_remove(request)
    }

    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).coldplug(request)
    }

    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        (**self).guest_view(request)
    }
}

impl PlugRequest {
    /// The root ports this request uses, in order.
    #[must_use]
    pub fn ports(&self) -> Vec<RootPort> {
        match &self.plug {
            Plug::Block(b) => b.port.into_iter().collect(),
            Plug::VhostUser(v) => v.port.into_iter().collect(),
            Plug::Vfio(v) => v.functions.iter().filter_map(|f| f.port).collect(),
        }
    }

    /// The block index this request uses, if any.
    #[must_use]
    pub fn block_index(&self) -> Option<BlockIndex> {
        match &self.plug {
            Plug::Block(b) => Some(b.index),
            Plug::VhostUser(v) => v.index,
            Plug::Vfio(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn trait_objects_are_usable() {
        assert_send_sync::<Arc<dyn Hypervisor>>();
        assert_send_sync::<HypervisorError>();
    }

    #[test]
    fn error_messages_name_the_device() {
        let device = DeviceId::from_raw(7);
        let e = HypervisorError::Backend {
            device,
            source: "QMP says no".into(),
        };
        assert_eq!(
            e.to_string(),
            "hypervisor failed on device 0000000000000007"
        );
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("QMP says no")
        );
    }
}
