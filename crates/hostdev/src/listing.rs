//! Read-only views of the registry: the full listing for `plugboard hostdev ls`, the
//! owner of every PCI device for `plugboard host ls` / `host groups`, and the audit trail.

use std::collections::BTreeMap;
use std::path::Path;

use plugboard_sysfs::PciAddress;
use serde::Serialize;

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{ClaimRow, DB_FILE, Event, PciRow, Registry, RegistryError, RegistryOptions};

/// An operation still pending in the intent journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The device.
    pub address: String,
    /// The operation.
    pub op: &'static str,
    /// The process running it.
    pub pid: u32,
    /// False when that process is gone: `recover` will settle it.
    pub running: bool,
}

/// Everything the registry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
                    op: i.op.as_str(),
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
    pub fn audit(&mut self, after: i64) -> Result<Vec<Event>, RegistryError> {
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
