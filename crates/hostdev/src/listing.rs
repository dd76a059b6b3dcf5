//! Read-only views of the registry: the full listing for `plugboard hostdev ls`, the
//! owner of every PCI device for `plugboard host ls` / `host groups`, and the audit trail.

use std::collections::BTreeMap;
use std::path::Path;

use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use crate::intent::IntentOp;
use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{
    AuditEvent, ClaimRow, DB_FILE, PciRow, Registry, RegistryError, RegistryOptions,
};

/// An operation still pending in the intent journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The device.
    pub address: String,
    /// The operation.
    pub op: IntentOp,
    /// The process running it.
    pub pid: u32,
    /// False when that process is gone: `recover` will settle it.
    pub running: bool,
}

/// Everything the registry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// PCI devices on the active and inactive lists.
    pub pci: Vec<PciRow>,
    /// USB, SCSI, mdev and NVMe-namespace claims.
    pub claims: Vec<ClaimRow>,
    /// Operations under way (or interrupted).
    pub pending: Vec<Pending>,
}

impl HostdevManager {
    /// Both PCI lists, the other kinds' claims, and pending intents.
    pub fn list(&mut self) -> Result<Listing, RegistryError> {
        self.registry.read(|tx| {
            let pending = tx
                .intents()?
                .into_iter()
                .map(|i| Pending {
                    address: i.address,
                    op: i.op,
                    pid: i.process.pid,
                    running: i.process.is_alive(),
                })
                .collect();
            Ok(Listing {
                pci: tx.pci_rows()?,
                claims: tx.claims()?,
                pending,
            })
        })
    }

    /// The owner of every active PCI device.
    pub fn owners(&mut self) -> Result<BTreeMap<PciAddress, Owner>, RegistryError> {
        owners_of(&mut self.registry)
    }

    /// The audit trail after event `after` (0: all), in commit order.
    pub fn audit(&mut self, after: i64) -> Result<Vec<AuditEvent>, RegistryError> {
        self.registry.read(|tx| tx.events_after(after))
    }
}

/// The owner of every active PCI device, read from the registry in `state_dir` without
/// writing anything. A host with no registry yet has no owners (an empty map).
///
/// This is what `plugboard host ls` and `host groups` call to show an owner column.
pub fn read_owners(state_dir: &Path) -> Result<BTreeMap<PciAddress, Owner>, RegistryError> {
    if !state_dir.join(DB_FILE).exists() {
        return Ok(BTreeMap::new());
    }
    let options = RegistryOptions {
        read_only: true,
        ..RegistryOptions::default()
    };
    owners_of(&mut Registry::open(state_dir, &options)?)
}

fn owners_of(registry: &mut Registry) -> Result<BTreeMap<PciAddress, Owner>, RegistryError> {
    registry.read(|tx| {
        let mut owners = BTreeMap::new();
        for row in tx.pci_rows()? {
            if let (Some(owner), Ok(address)) = (row.owner, row.address.parse::<PciAddress>()) {
                owners.insert(address, owner);
            }
        }
        Ok(owners)
    })
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::UsbSpec;

    use super::*;
    use crate::batch::BatchOptions;
    use crate::host_device::HostDevice;
    use crate::test_support::*;

    fn round_trips<T>(value: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_value(value).unwrap();
        assert_eq!(
            &serde_json::from_value::<T>(json.clone()).unwrap(),
            value,
            "{json}"
        );
    }

    #[test]
    fn the_listing_and_the_audit_trail_round_trip_through_json() {
        let fx = Fixture::with(host_spec().usb(UsbSpec::new("1-1", 1, 2, 0x046d, 0xc52b)));
        let mut m = fx.manager();
        let devices: Vec<HostDevice> = [NIC1, "usb:1/2", "nvme:0000:06:00.0/1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let managed = BatchOptions {
            managed: true,
            ..BatchOptions::default()
        };
        m.prepare(&owner("qemu/vm1"), &devices, managed).unwrap();
        m.detach(addr(NIC2)).unwrap();
        let mut listing = m.list().unwrap();
        listing.pending.push(Pending {
            address: NIC3.to_owned(),
            op: IntentOp::Reattach,
            pid: 7,
            running: false,
        });
        assert!(listing.pci.len() >= 3 && !listing.claims.is_empty());
        let json = serde_json::to_value(&listing).unwrap();
        assert_eq!(json["pending"][0]["op"], "reattach");
        assert_eq!(json["pci"][0]["list"], "active");
        round_trips(&listing);
        let events = m.audit(0).unwrap();
        assert!(!events.is_empty());
        for event in &events {
            round_trips(event);
        }
        for prepared in m
            .prepare_pci(&owner("qemu/vm2"), &[addr(NIC2)], MANAGED)
            .unwrap()
        {
            round_trips(&prepared);
        }
    }
}
