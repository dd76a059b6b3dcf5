//! What this node offers to Kubernetes: the passthrough-capable PCI devices, as DRA devices.
//!
//! A device goes to a claim with its whole IOMMU group, because VFIO hands out groups, not
//! functions. So an offer is one of two things:
//!
//! - **a function** (`pci-0000-02-00-0`): an endpoint alone in its group (bridges in the
//!   group do not count: they are ignored for viability and never bound);
//! - **a group** (`iommu-group-5`): every endpoint of a group that has several, offered
//!   together as one DRA device. Offering the members one by one would let the scheduler
//!   give two of them to two claims, and the second prepare would then fail for good ("a
//!   group is never split between owners"). As one device, a group is allocated whole or
//!   not at all, and its attributes say what it holds (`members`, `memberCount`).
//!
//! Not offered: functions without an IOMMU group (VFIO cannot use them), groups with
//! non-PCI members, and any offer a member of which is held by an owner outside Kubernetes
//! (a VM of the daemon, a libvirt domain): that owner has it, and the next publish takes it
//! off the node's slices. Devices held by claims (`k8s/...`) stay offered: the scheduler
//! already counts them as allocated.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use plugboard_sysfs::{HeaderType, IommuGroup, PciAddress, PciDeviceInfo};

/// The hostdev owner driver of claims: a claim's owner is `k8s/<namespace>/<claim uid>`.
pub const CLAIM_OWNER_DRIVER: &str = "k8s";

/// The name of an offer, a valid DNS label: `pci-0000-02-00-0` or `iommu-group-5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfferName {
    /// One PCI function alone in its group.
    Function(PciAddress),
    /// A whole IOMMU group of several endpoints.
    Group(u32),
}

impl fmt::Display for OfferName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Function(a) => {
                let text = a.to_string().replace([':', '.'], "-");
                write!(f, "pci-{text}")
            }
            Self::Group(n) => write!(f, "iommu-group-{n}"),
        }
    }
}

/// A DRA device name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Plugboard device name (pci-DDDD-BB-SS-F or iommu-group-N)")]
pub struct OfferNameError(String);

impl FromStr for OfferName {
    type Err = OfferNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || OfferNameError(s.to_owned());
        let name = if let Some(n) = s.strip_prefix("iommu-group-") {
            Self::Group(n.parse().map_err(|_| bad())?)
        } else {
            let rest = s.strip_prefix("pci-").ok_or_else(bad)?;
            let parts: Vec<&str> = rest.split('-').collect();
            let [domain, bus, slot, function] = parts[..] else {
                return Err(bad());
            };
            let address: PciAddress = format!("{domain}:{bus}:{slot}.{function}")
                .parse()
                .map_err(|_| bad())?;
            Self::Function(address)
        };
        // Only the canonical spelling names a device (one name per device): not
        // `iommu-group-05` or `iommu-group-+5` for group 5, nor upper-case hex.
        if name.to_string() == s {
            Ok(name)
        } else {
            Err(bad())
        }
    }
}

/// One offered DRA device: a function alone in its group, or a whole group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Its name.
    pub name: OfferName,
    /// The IOMMU group.
    pub group: u32,
    /// The group's endpoints, by address (one for a function).
    pub members: Vec<PciDeviceInfo>,
    /// Whether the group is viable now (no endpoint on a host driver). A prepare takes the
    /// whole group off its host drivers, so `false` only says that it is not detached yet.
    pub viable: bool,
}

impl Offer {
    /// The members' addresses.
    pub fn addresses(&self) -> impl Iterator<Item = PciAddress> + '_ {
        self.members.iter().map(|d| d.address)
    }
}

/// The node's offers from its PCI devices (with their owners, as
/// [`HostService::devices`](plugboard_service::HostService::devices) reads them) and its
/// IOMMU groups, sorted by name (as text, the order of the slices). See the module documentation for the rules.
#[must_use]
pub fn offers(devices: &[PciDeviceInfo], groups: &[IommuGroup]) -> Vec<Offer> {
    let mut offers = all_offers(devices, groups);
    offers.retain(|o| o.members.iter().all(offerable_owner));
    offers
}

/// Every offer the host's devices make, whoever holds them: what a claim's device name is
/// looked up in, so that a device another owner took is told apart from one that vanished.
#[must_use]
pub fn all_offers(devices: &[PciDeviceInfo], groups: &[IommuGroup]) -> Vec<Offer> {
    let by_address: BTreeMap<PciAddress, &PciDeviceInfo> =
        devices.iter().map(|d| (d.address, d)).collect();
    let mut offers = Vec::new();
    for group in groups {
        if !group.other_members.is_empty() {
            continue;
        }
        let endpoints: Option<Vec<PciDeviceInfo>> = group
            .members
            .iter()
            .filter(|m| !m.bridge)
            .map(|m| by_address.get(&m.address).map(|d| (*d).clone()))
            .collect();
        // A member that could not be read: the group cannot be given out safely.
        let Some(members) = endpoints else { continue };
        if members.is_empty()
            || members
                .iter()
                .any(|d| d.header_type != HeaderType::Endpoint)
        {
            continue;
        }
        let name = match members.as_slice() {
            [one] => OfferName::Function(one.address),
            _ => OfferName::Group(group.number),
        };
        offers.push(Offer {
            name,
            group: group.number,
            members,
            viable: group.is_viable(),
        });
    }
    offers.sort_by_cached_key(|o| o.name.to_string());
    offers
}

/// Free, or held by a claim.
fn offerable_owner(device: &PciDeviceInfo) -> bool {
    device.owner.as_deref().is_none_or(|o| {
        o.split_once('/')
            .is_some_and(|(driver, _)| driver == CLAIM_OWNER_DRIVER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_parse_back() {
        let a: PciAddress = "0000:3b:00.1".parse().unwrap();
        let name = OfferName::Function(a);
        assert_eq!(name.to_string(), "pci-0000-3b-00-1");
        assert_eq!("pci-0000-3b-00-1".parse::<OfferName>().unwrap(), name);
        assert_eq!(
            "iommu-group-12".parse::<OfferName>().unwrap(),
            OfferName::Group(12)
        );
        for bad in [
            "",
            "pci-",
            "pci-0000-3b-00",
            "pci-0000-3B-00-1",
            "gpu-0",
            "iommu-group-x",
            "pci-0000-3b-00-1-2",
            // One name per device: no other spelling of a group number.
            "iommu-group-+5",
            "iommu-group-05",
            "iommu-group-",
        ] {
            assert!(bad.parse::<OfferName>().is_err(), "{bad:?}");
        }
    }
}
