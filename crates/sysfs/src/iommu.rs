//! IOMMU groups: their members, and whether a group is viable for passthrough.
//!
//! The kernel isolates devices per IOMMU group: VFIO hands a group to userspace only when
//! every endpoint in it is on `vfio-pci`, on a vfio variant driver, on `pci-stub` (the
//! kernel's `vfio_driver_allowed[]`), or on no driver at all. Bridges (host bridge 0x0600,
//! PCI bridge 0x0604) do not count. A group that fails this is "not viable", and the member
//! on a host driver is the one to name in the error.

use serde::{Deserialize, Serialize};

use crate::address::PciAddress;
use crate::attr;
use crate::error::SysfsError;
use crate::pci::{DriverKind, PciClass};
use crate::sysfs::Sysfs;

/// One member of an IOMMU group with what viability depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        !self.bridge && self.driver_kind.blocks_group()
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

/// The serialized form: the fields and the computed `viable` and `blockers`.
#[derive(Serialize, Deserialize)]
struct GroupShape {
    number: u32,
    viable: bool,
    blockers: Vec<PciAddress>,
    members: Vec<GroupMember>,
    other_members: Vec<String>,
}

impl Serialize for IommuGroup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        GroupShape {
            number: self.number,
            viable: self.is_viable(),
            blockers: self.blockers().map(|m| m.address).collect(),
            members: self.members.clone(),
            other_members: self.other_members.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for IommuGroup {
    /// Reads the serialized form. `viable` and `blockers` are computed from the members,
    /// so they must agree with them: a record that says otherwise is refused.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shape = GroupShape::deserialize(deserializer)?;
        let group = Self {
            number: shape.number,
            members: shape.members,
            other_members: shape.other_members,
        };
        let blockers: Vec<PciAddress> = group.blockers().map(|m| m.address).collect();
        if group.is_viable() != shape.viable || blockers != shape.blockers {
            return Err(serde::de::Error::custom(format_args!(
                "IOMMU group {}: viable/blockers disagree with its members",
                group.number
            )));
        }
        Ok(group)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeKernel, PciSpec};

    fn member(address: &str, class: u32, driver: Option<&str>, kind: DriverKind) -> GroupMember {
        let class = PciClass::new(class);
        GroupMember {
            address: address.parse().unwrap(),
            class,
            driver: driver.map(str::to_owned),
            driver_kind: kind,
            bridge: class.is_bridge(),
        }
    }

    #[test]
    fn a_group_round_trips_through_json_with_its_computed_fields() {
        let group = IommuGroup {
            number: 7,
            members: vec![
                member(
                    "0000:00:1c.0",
                    0x06_0400,
                    Some("pcieport"),
                    DriverKind::Host,
                ),
                member("0000:01:00.0", 0x02_0000, Some("e1000e"), DriverKind::Host),
                member(
                    "0000:01:00.1",
                    0x02_0000,
                    Some("vfio-pci"),
                    DriverKind::VfioPci,
                ),
            ],
            other_members: vec!["platform-thing".to_owned()],
        };
        let json = serde_json::to_value(&group).unwrap();
        assert_eq!(json["viable"], false);
        assert_eq!(json["blockers"], serde_json::json!(["0000:01:00.0"]));
        assert_eq!(json["members"][2]["driver_kind"], "vfio_pci");
        assert_eq!(
            serde_json::from_value::<IommuGroup>(json.clone()).unwrap(),
            group
        );

        let mut lie = json;
        lie["viable"] = true.into();
        serde_json::from_value::<IommuGroup>(lie).unwrap_err();
    }

    /// A GPU and its audio function in one group, the audio function parked on pci-stub.
    fn gpu_with_stubbed_audio(gpu_driver: &str) -> FakeKernel {
        FakeKernel::builder()
            .pci(
                PciSpec::new("0000:09:00.0", 0x10de, 0x1b80)
                    .class(0x03_0000)
                    .iommu_group(9)
                    .driver(gpu_driver),
            )
            .pci(
                PciSpec::new("0000:09:00.1", 0x10de, 0x10f0)
                    .class(0x04_0300)
                    .iommu_group(9)
                    .driver("pci-stub"),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn a_member_on_pci_stub_does_not_block_its_group() {
        let kernel = gpu_with_stubbed_audio("vfio-pci");
        let group = kernel.sysfs().iommu_group(9).unwrap();
        assert!(group.is_viable(), "{group:?}");
        assert_eq!(group.blockers().count(), 0);
        assert_eq!(group.members[1].driver_kind, DriverKind::Stub);
        let json = serde_json::to_value(&group).unwrap();
        assert_eq!(json["viable"], true);
        assert_eq!(json["members"][1]["driver_kind"], "stub");
        // A host driver beside it still blocks.
        let kernel = gpu_with_stubbed_audio("nouveau");
        let group = kernel.sysfs().iommu_group(9).unwrap();
        let blockers: Vec<String> = group.blockers().map(|m| m.address.to_string()).collect();
        assert_eq!(blockers, ["0000:09:00.0"]);
    }
}
