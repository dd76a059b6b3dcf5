//! IOMMU groups: their members, and whether a group is viable for passthrough.
//!
//! The kernel isolates devices per IOMMU group: VFIO hands a group to userspace only when
//! every endpoint in it is on `vfio-pci`, on a vfio variant driver, or on no driver at all.
//! Bridges (host bridge 0x0600, PCI bridge 0x0604) do not count. A group that fails this is
//! "not viable", and the member on a host driver is the one to name in the error.

use serde::Serialize;

use crate::address::PciAddress;
use crate::attr;
use crate::error::SysfsError;
use crate::pci::{DriverKind, PciClass};
use crate::sysfs::Sysfs;

/// One member of an IOMMU group with what viability depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// The member's address.
    pub address: PciAddress,
    /// Its class code.
    pub class: PciClass,
    /// Its driver, if bound.
    pub driver: Option<String>,
    /// What that driver is to VFIO.
    pub driver_kind: DriverKind,
    /// A bridge (0x0600 or 0x0604): ignored for viability.
    pub bridge: bool,
}

impl GroupMember {
    /// True when this member keeps the group from being used through VFIO.
    pub fn blocks(&self) -> bool {
        !self.bridge && self.driver_kind == DriverKind::Host
    }
}

/// An IOMMU group as it is now: its members and its viability. Serializes with two
/// computed fields, `viable` and `blockers` (the addresses of the blocking members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuGroup {
    /// The group number (`kernel/iommu_groups/<N>`).
    pub number: u32,
    /// The PCI members, sorted by address.
    pub members: Vec<GroupMember>,
    /// Members that are not PCI functions (rare; e.g. platform devices), by name.
    pub other_members: Vec<String>,
}

impl IommuGroup {
    /// Viable for passthrough: no endpoint member is on a host driver.
    pub fn is_viable(&self) -> bool {
        self.members.iter().all(|m| !m.blocks())
    }

    /// The members that make the group non-viable (endpoints on a host driver).
    pub fn blockers(&self) -> impl Iterator<Item = &GroupMember> {
        self.members.iter().filter(|m| m.blocks())
    }

    /// The member addresses.
    pub fn addresses(&self) -> impl Iterator<Item = PciAddress> + '_ {
        self.members.iter().map(|m| m.address)
    }
}

impl Serialize for IommuGroup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            number: u32,
            viable: bool,
            blockers: Vec<PciAddress>,
            members: &'a [GroupMember],
            other_members: &'a [String],
        }
        Shape {
            number: self.number,
            viable: self.is_viable(),
            blockers: self.blockers().map(|m| m.address).collect(),
            members: &self.members,
            other_members: &self.other_members,
        }
        .serialize(serializer)
    }
}

impl Sysfs {
    /// The group numbers under `kernel/iommu_groups`, ascending. Empty when the IOMMU is off.
    pub fn iommu_group_numbers(&self) -> Result<Vec<u32>, SysfsError> {
        let mut numbers: Vec<u32> = attr::list_dir(&self.iommu_groups_dir())?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The member addresses of group `number` (from `kernel/iommu_groups/N/devices`).
    pub fn iommu_group_addresses(
        &self,
        number: u32,
    ) -> Result<(Vec<PciAddress>, Vec<String>), SysfsError> {
        let group_dir = self.iommu_groups_dir().join(number.to_string());
        if !attr::is_dir(&group_dir) {
            return Err(SysfsError::NotFound {
                what: format!("IOMMU group {number}"),
                path: group_dir,
            });
        }
        let mut pci = Vec::new();
        let mut other = Vec::new();
        for name in attr::list_dir(&group_dir.join("devices"))? {
            match name.parse::<PciAddress>() {
                Ok(address) => pci.push(address),
                Err(_) => other.push(name),
            }
        }
        pci.sort_unstable();
        Ok((pci, other))
    }

    /// Group `number` with its members' classes and drivers read now.
    pub fn iommu_group(&self, number: u32) -> Result<IommuGroup, SysfsError> {
        let (addresses, other_members) = self.iommu_group_addresses(number)?;
        let mut members = Vec::with_capacity(addresses.len());
        for address in addresses {
            let device = self.pci_device(address)?;
            let class = device.class()?;
            let driver = device.driver()?;
            let driver_kind = device.driver_kind_of(driver.as_deref());
            members.push(GroupMember {
                address,
                class,
                driver,
                driver_kind,
                bridge: class.is_bridge(),
            });
        }
        Ok(IommuGroup {
            number,
            members,
            other_members,
        })
    }

    /// Every IOMMU group, ascending by number.
    pub fn iommu_groups(&self) -> Result<Vec<IommuGroup>, SysfsError> {
        self.iommu_group_numbers()?
            .into_iter()
            .map(|n| self.iommu_group(n))
            .collect()
    }
}
