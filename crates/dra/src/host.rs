//! Reading the host for the offers, through the core: the whole node for publishing, and
//! only the devices a claim names for prepare (a prepare on a node of thousands of devices
//! must not read them all).

use std::collections::BTreeMap;

use plugboard_service::{DeviceQuery, HostService, NamesQuery, ServiceError};
use plugboard_sysfs::{GroupMember, IommuGroup, PciAddress, PciDeviceInfo, SysfsError};

use crate::offer::{Offer, OfferName, all_offers, offers};

fn sysfs_error(what: &'static str) -> impl FnOnce(SysfsError) -> ServiceError {
    move |source| ServiceError::Sysfs { what, source }
}

/// Every device with its owner, and every IOMMU group: the groups' members are taken from
/// the inventory just read (only the group directories are listed again), so each device
/// is read once.
///
/// # Errors
/// sysfs or the registry cannot be read.
pub(crate) fn read_node(
    host: &HostService,
) -> Result<(Vec<PciDeviceInfo>, Vec<IommuGroup>), ServiceError> {
    let inventory = host.devices(&DeviceQuery {
        names: false,
        ..DeviceQuery::default()
    })?;
    let by_address: BTreeMap<PciAddress, &PciDeviceInfo> =
        inventory.devices.iter().map(|d| (d.address, d)).collect();
    let sysfs = host.sysfs();
    let mut groups = Vec::new();
    for number in sysfs
        .iommu_group_numbers()
        .map_err(sysfs_error("IOMMU groups"))?
    {
        let (addresses, other_members) = sysfs
            .iommu_group_addresses(number)
            .map_err(sysfs_error("IOMMU group"))?;
        let members: Option<Vec<GroupMember>> = addresses
            .iter()
            .map(|a| {
                by_address.get(a).map(|d| GroupMember {
                    address: d.address,
                    class: d.class,
                    driver: d.driver.clone(),
                    driver_kind: d.driver_kind,
                    bridge: d.class.is_bridge(),
                })
            })
            .collect();
        let group = match members {
            Some(members) => IommuGroup {
                number,
                members,
                other_members,
            },
            // A member the inventory could not read: read the group itself (it fails the
            // same way, or the member appeared since).
            None => sysfs
                .iommu_group(number)
                .map_err(sysfs_error("IOMMU group"))?,
        };
        groups.push(group);
    }
    Ok((inventory.devices, groups))
}

/// The node's offers now. See [`offers`].
///
/// # Errors
/// sysfs or the registry cannot be read.
pub(crate) fn node_offers(host: &HostService) -> Result<Vec<Offer>, ServiceError> {
    let (devices, groups) = read_node(host)?;
    Ok(offers(&devices, &groups))
}

/// The offer named `name` as the host shows it now, whoever holds it; `None` when no such
/// offer exists (the device vanished, or is no longer alone in its group, or the group no
/// longer has several endpoints).
///
/// # Errors
/// sysfs or the registry cannot be read.
pub(crate) fn find_offer(host: &HostService, name: &str) -> Result<Option<Offer>, ServiceError> {
    let Ok(parsed) = name.parse::<OfferName>() else {
        return Ok(None);
    };
    let sysfs = host.sysfs();
    let group = match parsed {
        OfferName::Function(address) => {
            if !sysfs.pci_devices_dir().join(address.to_string()).exists() {
                return Ok(None);
            }
            let detail = host.device(address, NamesQuery { names: false })?;
            match detail.iommu_group {
                Some(group) => group,
                None => return Ok(None),
            }
        }
        OfferName::Group(number) => {
            if !sysfs.iommu_groups_dir().join(number.to_string()).exists() {
                return Ok(None);
            }
            sysfs
                .iommu_group(number)
                .map_err(sysfs_error("IOMMU group"))?
        }
    };
    let mut devices = Vec::new();
    for member in group.members.iter().filter(|m| !m.bridge) {
        devices.push(
            host.device(member.address, NamesQuery { names: false })?
                .device,
        );
    }
    Ok(all_offers(&devices, &[group])
        .into_iter()
        .find(|o| o.name == parsed))
}
