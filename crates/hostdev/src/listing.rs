//! Read-only views of the registry: the full listing for `plugboard hostdev ls`, the
//! owner of every PCI device for `plugboard host ls` / `host groups`, and the audit trail.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use crate::intent::IntentOp;
use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{
    AuditEvent, ClaimRow, DB_FILE, List, PciRow, Registry, RegistryError, RegistryOptions,
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

/// A PCI device the registry lists that sysfs shows off a vfio driver, with no operation
/// pending on it: its host driver did not take it back (a release, reattach or `recover`
/// said so), or someone unbound it by hand. Nothing on the host and no VM can use it as it
/// is; `plugboard hostdev reattach` gives it back.
///
/// JSON: `{"address": "0000:01:00.0", "list": "inactive", "driver": null,
/// "original_driver": "e1000e"}`. [`Display`](fmt::Display): "0000:01:00.0 (inactive) has
/// no driver; its host driver e1000e did not take it back: run `plugboard hostdev reattach
/// 0000:01:00.0`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// The device.
    pub address: String,
    /// The list the registry has it on.
    pub list: List,
    /// The driver it is on now (`None`: no driver).
    pub driver: Option<String>,
    /// The host driver it had before it was taken (`None`: not recorded).
    pub original_driver: Option<String>,
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            address,
            list,
            driver,
            original_driver,
        } = self;
        match driver {
            Some(d) => write!(f, "{address} ({list}) is on {d}, not on a vfio driver")?,
            None => write!(f, "{address} ({list}) has no driver")?,
        }
        if let Some(original) = original_driver {
            write!(f, "; its host driver {original} did not take it back")?;
        }
        match list {
            List::Inactive => write!(f, ": run `plugboard hostdev reattach {address}`"),
            List::Active => write!(
                f,
                ": release it, then run `plugboard hostdev reattach {address}`"
            ),
        }
    }
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
    /// Listed PCI devices that are not on a vfio driver (and have no pending operation):
    /// left without their host driver, they need someone to give them back.
    #[serde(default)]
    pub needs_attention: Vec<Attention>,
}

impl HostdevManager {
    /// Both PCI lists, the other kinds' claims, pending intents, and the listed devices
    /// that sysfs shows off a vfio driver (needing attention).
    pub fn list(&mut self) -> Result<Listing, RegistryError> {
        let mut listing = self.registry.read(|tx| {
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
                needs_attention: Vec::new(),
            })
        })?;
        listing.needs_attention = self.needing_attention(&listing);
        Ok(listing)
    }

    /// The rows of `listing` whose device is present but not on a vfio driver, leaving out
    /// those with a pending operation (mid-way, or for `recover`).
    fn needing_attention(&self, listing: &Listing) -> Vec<Attention> {
        let mut found = Vec::new();
        for row in &listing.pci {
            if listing.pending.iter().any(|p| p.address == row.address) {
                continue;
            }
            let Ok(address) = row.address.parse::<PciAddress>() else {
                continue;
            };
            // A device gone from sysfs, or unreadable, is not ours to judge here.
            let Ok(device) = self.sysfs.pci_device(address) else {
                continue;
            };
            let (Ok(kind), Ok(driver)) = (device.driver_kind(), device.driver()) else {
                continue;
            };
            if !kind.is_vfio() {
                found.push(Attention {
                    address: row.address.clone(),
                    list: row.list,
                    driver,
                    original_driver: row.original_driver.clone(),
                });
            }
        }
        found
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
