//! What a PCI prepare is asked ([`PrepareOptions`]) and why it is refused
//! ([`PrepareError`]).
//!
//! Both the checks (`plan.rs`) and the prepare itself (`pci.rs`) use these types; they
//! live here, below both, so that `pci.rs` imports `plan.rs` and never the reverse.

use plugboard_sysfs::{BindError, PciAddress, SysfsError, VFIO_PCI};

use crate::device::HostDeviceError;
use crate::intent::IntentOp;
use crate::owner::Owner;
use crate::registry::RegistryError;

/// How to prepare.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrepareOptions {
    /// Detach devices from their host driver (libvirt `managed='yes'`). Without it, each
    /// device must already be inactive or bound to vfio-pci/a variant.
    pub managed: bool,
    /// Also prepare every other endpoint of each device's IOMMU group.
    pub whole_group: bool,
}

/// Why a prepare failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The device is missing, not an endpoint, or unreadable.
    #[error(transparent)]
    Device(#[from] HostDeviceError),
    /// Already active (libvirt refuses even the same owner). When the owner asking already
    /// holds the device, `already_yours` is true and the message ends "(already yours)":
    /// nothing was changed and the owner still holds it.
    #[error(
        "PCI device {address} is in use by {owner}{}",
        if *.already_yours { " (already yours)" } else { "" }
    )]
    InUse {
        /// The device.
        address: PciAddress,
        /// Its owner.
        owner: Owner,
        /// The owner asking is the one holding it.
        already_yours: bool,
    },
    /// Another member of the group belongs to another owner.
    #[error(
        "PCI device {address}: IOMMU group {group} member {member} is in use by {owner}; a group is never split between owners"
    )]
    GroupInUse {
        /// The device asked for.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The member in use.
        member: PciAddress,
        /// The member's owner (or the owner of its pending prepare).
        owner: Owner,
    },
    /// Another process is changing the device right now.
    #[error(
        "PCI device {address} has a pending {op} by process {pid} (if that process died, run `plugboard hostdev recover`)"
    )]
    Pending {
        /// The device.
        address: PciAddress,
        /// The operation pending.
        op: IntentOp,
        /// The process running it.
        pid: u32,
    },
    /// A group member would stay on a host driver: VFIO would refuse the group.
    #[error(
        "PCI device {address}: IOMMU group {group} is not viable: member {member} is bound to host driver {driver} (detach it, or prepare the whole group)"
    )]
    NotViable {
        /// The device asked for.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The member on a host driver.
        member: PciAddress,
        /// That driver.
        driver: String,
    },
    /// Unmanaged, yet still on a host driver.
    #[error(
        "unmanaged PCI device {address} must be detached from the host first (it is bound to {driver}); run `plugboard hostdev detach {address}` or prepare it as managed"
    )]
    NotDetached {
        /// The device.
        address: PciAddress,
        /// Its host driver.
        driver: String,
    },
    /// Reading the device's IOMMU group failed.
    #[error("PCI device {address}: cannot read IOMMU group {group}")]
    Group {
        /// The device.
        address: PciAddress,
        /// The group.
        group: u32,
        /// What failed.
        #[source]
        source: SysfsError,
    },
    /// Binding to vfio-pci failed (the kernel's answer is in the source).
    #[error("PCI device {address}: binding to {VFIO_PCI} failed")]
    Bind {
        /// The device.
        address: PciAddress,
        /// What the kernel did.
        #[source]
        source: BindError,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl PrepareError {
    /// True when the prepare was refused only because the asking owner already holds a
    /// device it named (the owner still holds it; nothing changed).
    pub fn is_already_yours(&self) -> bool {
        matches!(
            self,
            Self::InUse {
                already_yours: true,
                ..
            }
        )
    }
}
