//! The host as the kernel shows it: typed sysfs reads and driver binding that verifies itself.
//!
//! Linux describes every device in sysfs: a PCI function is a directory
//! (`/sys/bus/pci/devices/0000:01:00.0`) of small text attributes (`vendor`, `class`,
//! `numa_node`…) and symlinks (`driver`, `iommu_group`). Moving a device between drivers is
//! done by writing to attributes (`driver_override`, `unbind`, `drivers_probe`). This crate
//! reads those files into types and performs those writes with the checks that the kernel's
//! interface leaves to the caller.
//!
//! # The handle and its roots
//!
//! Everything starts from a [`Sysfs`] handle made from a root path (`/sys` on a host; a fake
//! kernel's temp dir in tests; the guest's `/sys` in the lab) and a `/dev` root. Nothing in
//! the crate names an absolute path. Writes go through the [`AttrWriter`] seam: the real
//! kernel's [`KernelWriter`] by default, the fake kernel's own writer in tests.
//!
//! ```no_run
//! use plugboard_sysfs::{PciAddress, Sysfs};
//!
//! let host = Sysfs::new("/sys");
//! for device in host.pci_devices()? {
//!     println!("{} {:04x}:{:04x} {:?}", device.address(), device.vendor_id()?,
//!              device.device_id()?, device.driver()?);
//! }
//! let nic = host.pci_device("0000:01:00.0".parse::<PciAddress>()?)?;
//! let group = host.iommu_group(nic.iommu_group()?.unwrap_or_default())?;
//! if !group.is_viable() {
//!     for member in group.blockers() {
//!         eprintln!("{} is on {:?}", member.address, member.driver);
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is read
//!
//! - **PCI** ([`PciDevice`]): IDs, [`PciClass`], revision, [`HeaderType`] (config byte
//!   0x0e), config size and PCIe, driver and [`DriverKind`] (vfio-pci, a vfio variant with
//!   `vfio-dev/`, `pci-stub`, a host driver, none), `driver_override`, IOMMU group, NUMA node, BARs
//!   ([`Bar`], from `resource`, with [`Bar::is_large`] for > 4 GiB), SR-IOV `physfn` and
//!   `virtfnN`, [`ResetMethods`], the upstream bridge.
//! - **IOMMU groups** ([`IommuGroup`]): members and viability (every endpoint member on
//!   vfio-pci, a vfio variant, `pci-stub`, or no driver; bridges 0x0600/0x0604 do not count), with the
//!   blocking members named.
//! - **Device nodes** ([`Sysfs::resolve_devnode`]): `dev/{block,char}/M:m/uevent` →
//!   `DEVNAME`, with "no such device", "no uevent", "no DEVNAME" and "malformed" kept apart.
//! - **mdev** ([`Mdev`]), **USB** ([`UsbDevice`]), **SCSI** ([`ScsiDevice`], `H:C:T:L`, sg
//!   node), **loop** backing files, the **NVDIMM PFN** signature
//!   ([`has_nvdimm_pfn_signature`]).
//! - **Inventory** ([`Sysfs::pci_inventory`]): everything above for every PCI function, as
//!   serializable records, with names from `pci.ids` ([`PciNames`]) when the file exists.
//!
//! # What is written
//!
//! [`PciDevice::bind`] (override, unbind, `drivers_probe`, then read back and fail with
//! [`BindError::NotBound`] when the kernel did something else), [`PciDevice::reattach`],
//! [`PciDevice::unbind`], [`PciDevice::set_driver_override`], [`PciDevice::reset`]. Never
//! `new_id`. Every write names the file and value in its error and is logged with how to
//! undo it.
//!
//! # Testing against a fake kernel
//!
//! With the `test-util` feature, [`fake::FakeKernel`] builds a sysfs tree with the kernel's
//! layout from a short table and applies the kernel's semantics to every write made through
//! its [`Sysfs`]. See the [`fake`] module.

mod address;
mod attr;
mod bind;
mod block;
mod devnode;
mod dir;
mod error;
mod ids;
mod inventory;
mod iommu;
mod mdev;
mod names;
mod names_cache;
mod pci;
mod pci_ids_file;
mod pci_uevent;
mod resource;
mod scsi;
mod sysfs;
mod usb;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

pub use address::{PciAddress, PciAddressError};
pub use bind::{BindError, BindOutcome};
pub use block::{NVDIMM_PFN_OFFSET, NVDIMM_PFN_SIGNATURE, has_nvdimm_pfn_signature};
pub use devnode::{DevKind, DevNodeError, DevNumber, Uevent, UeventError};
pub use error::{SysfsError, error_chain};
pub use ids::PciIds;
pub use inventory::{Inventory, InventoryProblem, PciDeviceInfo, PciDeviceNames, PciFilter};
pub use iommu::{GroupMember, IommuGroup};
pub use mdev::Mdev;
pub use names::{DEFAULT_PCI_IDS, PciNames};
pub use names_cache::PciNamesCache;
pub use pci::{DriverKind, HeaderType, PCI_STUB, PciClass, PciDevice, ResetMethods, VFIO_PCI};
pub use resource::{
    Bar, IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_MEM_64, IORESOURCE_PREFETCH, LARGE_BAR,
    ResourceError, parse_resource,
};
pub use scsi::{ScsiAddress, ScsiAddressError, ScsiDevice};
pub use sysfs::{
    AttrWriter, DEFAULT_DEV_ROOT, DEFAULT_SYSFS_ROOT, KernelWriter, Sysfs, WriteError,
};
pub use usb::UsbDevice;
