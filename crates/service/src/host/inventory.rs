//! Host queries: the PCI inventory with names and owners, IOMMU groups, one device, and a
//! device node by number. Reads only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use plugboard_sysfs::{
    DevKind, DevNumber, Inventory, IommuGroup, PciAddress, PciDeviceInfo, PciFilter,
};
use serde::{Deserialize, Serialize};

use super::HostService;
use crate::error::ServiceError;

/// Whether to look device names up (`?names=false` turns them off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesQuery {
    /// Look names up in the pci.ids database (default true).
    #[serde(default = "yes")]
    pub names: bool,
}

impl Default for NamesQuery {
    fn default() -> Self {
        Self { names: true }
    }
}

/// Which PCI devices to list (by default: all of them, with names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Only this class: a hex prefix (`02`, `0200`, `0x010802`) or a word of the class
    /// name (`ethernet`, `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Only this driver; `none` for unbound devices, `vfio` for vfio-pci and variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Look names up (default true).
    #[serde(default = "yes")]
    pub names: bool,
}

impl Default for DeviceQuery {
    fn default() -> Self {
        Self {
            class: None,
            driver: None,
            names: true,
        }
    }
}

const fn yes() -> bool {
    true
}

/// The host's IOMMU groups, with the device record of every PCI member (names and owner
/// included) for the people reading them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGroups {
    /// The groups, by number.
    pub groups: Vec<IommuGroup>,
    /// The PCI members' records, as `host ls` shows them, by address.
    pub devices: Vec<PciDeviceInfo>,
}

/// Everything known about one PCI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device, with names and owner.
    pub device: PciDeviceInfo,
    /// Its IOMMU group, when it has one.
    pub iommu_group: Option<IommuGroup>,
}

/// A device node found by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Block or char.
    pub kind: DevKind,
    /// `major:minor`.
    pub number: String,
    /// The node's path.
    pub path: PathBuf,
}

impl HostService {
    /// The host's PCI devices that pass `query`, with names and owners; devices that could
    /// not be read are listed as problems.
    ///
    /// # Errors
    /// sysfs cannot be listed.
    pub fn devices(&self, query: &DeviceQuery) -> Result<Inventory, ServiceError> {
        let mut inventory = self
            .sysfs
            .pci_inventory()
            .map_err(|source| ServiceError::Sysfs {
                what: "PCI devices",
                source,
            })?;
        let names = self.names(query.names, inventory.devices.iter().map(|d| d.ids));
        inventory.apply_names(&names);
        inventory.retain(&PciFilter {
            class: query.class.clone(),
            driver: query.driver.clone(),
        });
        let owners = self.owners();
        for d in &mut inventory.devices {
            d.owner = owners.get(&d.address).cloned();
        }
        for problem in &inventory.problems {
            tracing::warn!(bdf = %problem.address, error = %problem.error, "device skipped");
        }
        Ok(inventory)
    }

    /// The host's IOMMU groups and their viability, with their members' records.
    ///
    /// # Errors
    /// sysfs cannot be read.
    pub fn groups(&self, query: NamesQuery) -> Result<HostGroups, ServiceError> {
        let groups = self
            .sysfs
            .iommu_groups()
            .map_err(|source| ServiceError::Sysfs {
                what: "IOMMU groups",
                source,
            })?;
        let mut devices = Vec::new();
        if !groups.is_empty() {
            let inventory = self.devices(&DeviceQuery {
                names: query.names,
                ..DeviceQuery::default()
            })?;
            devices = inventory
                .devices
                .into_iter()
                .filter(|d| d.iommu_group.is_some())
                .collect();
        }
        Ok(HostGroups { groups, devices })
    }

    /// One PCI device, with names, owner and IOMMU group.
    ///
    /// # Errors
    /// No such device ([`ServiceError`] of class not-found), or sysfs cannot be read.
    pub fn device(
        &self,
        address: PciAddress,
        query: NamesQuery,
    ) -> Result<DeviceDetail, ServiceError> {
        let mut device =
            self.sysfs
                .pci_device_info(address)
                .map_err(|source| ServiceError::HostDevice {
                    address,
                    source: Box::new(source),
                })?;
        device.apply_names(&self.names(query.names, [device.ids]));
        device.owner = self.owners().get(&address).cloned();
        let iommu_group = device
            .iommu_group
            .map(|n| self.sysfs.iommu_group(n))
            .transpose()
            .map_err(|source| ServiceError::Sysfs {
                what: "IOMMU group",
                source,
            })?;
        Ok(DeviceDetail {
            device,
            iommu_group,
        })
    }

    /// The device node of a block or char device number.
    ///
    /// # Errors
    /// No such node, or sysfs cannot be read.
    pub fn resolve(&self, kind: DevKind, number: DevNumber) -> Result<Resolved, ServiceError> {
        let path = self
            .sysfs
            .resolve_devnode(kind, number)
            .map_err(|source| ServiceError::HostNode(Box::new(source)))?;
        Ok(Resolved {
            kind,
            number: number.to_string(),
            path,
        })
    }

    /// The owner of every active PCI device: from the open registry, or read-only from the
    /// state directory. No registry means no owners; an unreadable one is a warning.
    pub(super) fn owners(&self) -> BTreeMap<PciAddress, String> {
        let owners = match self.open_hostdev() {
            Some(mut hostdev) => hostdev.owners(),
            None => plugboard_hostdev::read_owners(&self.config.state_dir),
        };
        match owners {
            Ok(owners) => owners
                .into_iter()
                .map(|(a, o)| (a, o.to_string()))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "no device owners: the hostdev registry cannot be read");
                BTreeMap::new()
            }
        }
    }
}
