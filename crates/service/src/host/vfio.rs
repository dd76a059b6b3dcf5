//! `vfio info`: open a device through VFIO, read what the kernel reports, close it again.
//!
//! A device the hostdev registry lists as active belongs to a VM: opening it would reset
//! it under the guest (vfio-pci resets on open) or fail with EBUSY, so it is refused,
//! whichever front asked.

use plugboard_sysfs::PciAddress;
use plugboard_vfio::{
    DeviceFlags, Interface, IrqFlags, Mode, RegionCap, RegionFlags, SparseArea, Vfio, VfioDevice,
};
use serde::{Deserialize, Serialize};

use super::HostService;
use crate::auth::Caller;
use crate::error::ServiceError;

/// How to open the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioQuery {
    /// `auto` (cdev + iommufd when the kernel and device have it, else legacy), `legacy`
    /// or `iommufd`.
    #[serde(default)]
    pub mode: Mode,
}

/// What the kernel reports about a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioReport {
    /// The device's name (its PCI address).
    pub device: String,
    /// The mode asked for.
    pub mode: Mode,
    /// The interface used.
    pub interface: Interface,
    /// Its IOMMU group (legacy interface).
    pub group: Option<u32>,
    /// Its id in the iommufd (cdev interface).
    pub iommufd_dev_id: Option<u32>,
    /// The device flags.
    pub flags: DeviceFlags,
    /// How many regions the kernel reports.
    pub num_regions: u32,
    /// How many IRQ indexes the kernel reports.
    pub num_irqs: u32,
    /// The regions.
    pub regions: Vec<RegionReport>,
    /// The IRQ indexes.
    pub irqs: Vec<IrqReport>,
}

/// One region of a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReport {
    /// The region index.
    pub index: u32,
    /// Its PCI name (`BAR0`, `ROM`, `CONFIG`, `VGA`).
    pub name: String,
    /// Its size in bytes (0: absent).
    pub size: u64,
    /// Its offset in the device fd.
    pub offset: u64,
    /// Its flags.
    pub flags: RegionFlags,
    /// Its capabilities.
    pub caps: Vec<RegionCap>,
    /// The areas that may be mapped.
    pub mmap_areas: Vec<SparseArea>,
}

/// One IRQ index of a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqReport {
    /// The IRQ index.
    pub index: u32,
    /// Its PCI name (`INTX`, `MSI`, `MSIX`, `ERR`, `REQ`).
    pub name: String,
    /// How many vectors.
    pub count: u32,
    /// Its flags.
    pub flags: IrqFlags,
}

impl VfioReport {
    fn of(device: &VfioDevice, mode: Mode) -> Self {
        Self {
            device: device.name().to_owned(),
            mode,
            interface: device.interface(),
            group: device.group_id(),
            iommufd_dev_id: device.iommufd_dev_id(),
            flags: device.info().flags,
            num_regions: device.info().num_regions,
            num_irqs: device.info().num_irqs,
            regions: device
                .regions()
                .iter()
                .map(|r| RegionReport {
                    index: r.index,
                    name: r.pci_name(),
                    size: r.size,
                    offset: r.offset,
                    flags: r.flags,
                    caps: r.caps.clone(),
                    mmap_areas: r.mmap_areas(),
                })
                .collect(),
            irqs: device
                .irqs()
                .iter()
                .map(|i| IrqReport {
                    index: i.index,
                    name: i.pci_name(),
                    count: i.count,
                    flags: i.flags,
                })
                .collect(),
        }
    }
}

impl HostService {
    /// Opens `address` through VFIO (root only), reports what the kernel says, and closes
    /// it. A device a VM holds (active in the hostdev registry) is refused.
    ///
    /// # Errors
    /// Not root; the device is in use ([`crate::ErrorClass::Conflict`]); plugboard-vfio's
    /// error (not on vfio-pci, no such interface, an ioctl failing).
    pub fn vfio_info(
        &self,
        caller: Caller,
        address: PciAddress,
        query: VfioQuery,
    ) -> Result<VfioReport, ServiceError> {
        caller.may_change_host(&format!("open PCI device {address} through VFIO"))?;
        if let Some(owner) = self.owners().get(&address) {
            return Err(ServiceError::Conflict(format!(
                "PCI device {address} is in use by {owner} (the hostdev registry); not opening it"
            )));
        }
        let mut vfio = Vfio::new(self.sysfs.clone());
        let device = vfio
            .open(address, query.mode)
            .map_err(|e| ServiceError::VfioOpen(Box::new(e)))?;
        let report = VfioReport::of(&device, query.mode);
        device
            .close()
            .map_err(|e| ServiceError::VfioClose(Box::new(e)))?;
        Ok(report)
    }
}
