//! The host's PCI inventory: every function's facts in one serializable record.
//!
//! This is what `plugboard host ls/show` print and what `--json` emits; the shapes are
//! documented in `docs/host-json.md`. A device whose attributes cannot be read does not stop
//! the listing: it is reported in [`Inventory::problems`] instead.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::address::PciAddress;
use crate::error::SysfsError;
use crate::ids::{PciIds, hex2};
use crate::names::PciNames;
use crate::pci::{DriverKind, HeaderType, PciClass, PciDevice, ResetMethods};
use crate::resource::Bar;
use crate::sysfs::Sysfs;

/// Names from `pci.ids`, each `None` when unknown or when there is no database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceNames {
    /// The vendor's name.
    pub vendor: Option<String>,
    /// The device's name.
    pub device: Option<String>,
    /// The subsystem's name.
    pub subsystem: Option<String>,
    /// The class name (subclass when known).
    pub class: Option<String>,
}

/// Everything known about one PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// Its address.
    pub address: PciAddress,
    /// Its IDs.
    pub ids: PciIds,
    /// Its names.
    pub names: PciDeviceNames,
    /// Its class code (`0x020000`).
    pub class: PciClass,
    /// Its revision (2-digit hex).
    #[serde(with = "hex2")]
    pub revision: u8,
    /// Its header type.
    pub header_type: HeaderType,
    /// PCI Express (config space > 256 bytes).
    pub pcie: bool,
    /// The size of its config space in bytes.
    pub config_size: u64,
    /// Its driver, if bound.
    pub driver: Option<String>,
    /// What the driver is to VFIO.
    pub driver_kind: DriverKind,
    /// Its `driver_override`, if set.
    pub driver_override: Option<String>,
    /// Its VFIO device cdev name (`vfioN`), while it has one.
    pub vfio_dev: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Its NUMA node.
    pub numa_node: Option<u32>,
    /// The upstream bridge or port, if any.
    pub parent: Option<PciAddress>,
    /// Its used BARs, ROM and windows.
    pub bars: Vec<Bar>,
    /// One BAR is larger than 4 GiB.
    pub large_bar: bool,
    /// For a VF: its PF.
    pub physfn: Option<PciAddress>,
    /// For a PF: its VFs.
    pub virtfns: Vec<PciAddress>,
    /// For a PF: `sriov_totalvfs`.
    pub sriov_totalvfs: Option<u32>,
    /// The resets the kernel offers.
    pub reset: ResetMethods,
    /// Who owns it in Plugboard's registry; filled in by `plugboard-hostdev`, `None` here.
    pub owner: Option<String>,
}

impl PciDeviceInfo {
    /// Reads every fact about `device` (names left empty; see [`Self::apply_names`]).
    pub fn read(device: &PciDevice) -> Result<Self, SysfsError> {
        let device = &device.opened()?;
        let bars = device.bars()?;
        // Each attribute once, and the costly ones only where they can exist.
        let driver = device.driver()?;
        let driver_kind = device.driver_kind_of(driver.as_deref());
        let config_size = device.config_size()?;
        let sriov_totalvfs = device.sriov_totalvfs()?;
        let virtfns = if sriov_totalvfs.is_some() {
            device.virtfns()?
        } else {
            Vec::new()
        };
        let vfio_dev = if driver_kind.is_vfio() {
            device.vfio_dev()?
        } else {
            None
        };
        Ok(Self {
            address: device.address(),
            ids: PciIds {
                vendor: device.vendor_id()?,
                device: device.device_id()?,
                subsystem_vendor: device.subsystem_vendor_id()?,
                subsystem_device: device.subsystem_device_id()?,
            },
            names: PciDeviceNames::default(),
            class: device.class()?,
            revision: device.revision()?,
            header_type: device.header_type()?,
            config_size,
            pcie: config_size > 256,
            driver,
            driver_kind,
            driver_override: device.driver_override()?,
            vfio_dev,
            iommu_group: device.iommu_group()?,
            numa_node: device.numa_node()?,
            parent: device.parent()?,
            large_bar: bars.iter().any(Bar::is_large),
            bars,
            physfn: device.physfn()?,
            virtfns,
            sriov_totalvfs,
            reset: device.reset_methods()?,
            owner: None,
        })
    }

    /// Fills in the names from `names`.
    pub fn apply_names(&mut self, names: &PciNames) {
        let ids = self.ids;
        self.names = PciDeviceNames {
            vendor: names.vendor(ids.vendor).map(str::to_owned),
            device: names.device(ids.vendor, ids.device).map(str::to_owned),
            subsystem: names
                .subsystem(
                    ids.vendor,
                    ids.device,
                    ids.subsystem_vendor,
                    ids.subsystem_device,
                )
                .map(str::to_owned),
            class: names.class(self.class).map(str::to_owned),
        };
    }
}

/// A device that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryProblem {
    /// The device.
    pub address: PciAddress,
    /// The error, with its causes, on one line.
    pub error: String,
}

/// Every PCI function of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The devices read, by address.
    pub devices: Vec<PciDeviceInfo>,
    /// The devices that could not be read.
    pub problems: Vec<InventoryProblem>,
}

/// The error and its sources on one line, `a: b: c`.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Inventory {
    /// The vendor IDs present (for [`PciNames::load_for`]).
    pub fn vendors(&self) -> BTreeSet<u16> {
        self.devices
            .iter()
            .flat_map(|d| [d.ids.vendor, d.ids.subsystem_vendor])
            .filter(|v| *v != 0 && *v != 0xffff)
            .collect()
    }

    /// Fills in every device's names.
    pub fn apply_names(&mut self, names: &PciNames) {
        for device in &mut self.devices {
            device.apply_names(names);
        }
    }

    /// Keeps the devices `filter` accepts.
    pub fn retain(&mut self, filter: &PciFilter) {
        self.devices.retain(|d| filter.matches(d));
    }
}

/// Which devices to list: by class and by driver. Empty filters accept everything.
///
/// Serializable, so that a front can send it to the daemon as it is (missing fields are
/// empty filters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciFilter {
    /// A class: hex code prefix (`02`, `0200`, `0x020000`) or a word of the class name
    /// (`ethernet`, `bridge`; case-insensitive).
    pub class: Option<String>,
    /// A driver name, or `none` (unbound), or `vfio` (vfio-pci or a variant).
    pub driver: Option<String>,
}

impl PciFilter {
    /// True when `device` passes every filter given.
    pub fn matches(&self, device: &PciDeviceInfo) -> bool {
        self.class
            .as_deref()
            .is_none_or(|c| class_matches(c, device))
            && self.driver.as_deref().is_none_or(|d| match d {
                "none" => device.driver.is_none(),
                "vfio" => device.driver_kind.is_vfio(),
                name => device.driver.as_deref() == Some(name),
            })
    }
}

fn class_matches(filter: &str, device: &PciDeviceInfo) -> bool {
    let hex = filter
        .strip_prefix("0x")
        .unwrap_or(filter)
        .to_ascii_lowercase();
    let code = format!("{:06x}", device.class.code());
    if !hex.is_empty() && hex.len() <= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return code.starts_with(&hex);
    }
    device.names.class.as_deref().is_some_and(|name| {
        name.to_ascii_lowercase()
            .contains(&filter.to_ascii_lowercase())
    })
}

impl Sysfs {
    /// Reads every PCI function; unreadable ones go to [`Inventory::problems`]. Names are
    /// left empty: load them with [`PciNames::load_for`]`(path, inventory.vendors())` and
    /// [`Inventory::apply_names`].
    pub fn pci_inventory(&self) -> Result<Inventory, SysfsError> {
        let mut inventory = Inventory::default();
        for device in self.pci_devices()? {
            match PciDeviceInfo::read(&device) {
                Ok(info) => inventory.devices.push(info),
                Err(err) => inventory.problems.push(InventoryProblem {
                    address: device.address(),
                    error: chain(&err),
                }),
            }
        }
        Ok(inventory)
    }

    /// Reads one PCI function.
    pub fn pci_device_info(&self, address: PciAddress) -> Result<PciDeviceInfo, SysfsError> {
        PciDeviceInfo::read(&self.pci_device(address)?)
    }
}
