//! Reconciliation: after a restart, compare what a VM's saved state says is plugged with
//! what its hypervisor really holds, repair the books, and log every difference.
//!
//! | saved state | hypervisor | repair |
//! |---|---|---|
//! | attached | holds every object of the plug | none |
//! | attached | misses a device (removed behind our back, VM restarted) | the device is dropped from the books, its block index and ports freed; what QEMU still holds of it is deleted: its backends (named from its id) and the fd set its file was handed over in, if QEMU still holds that as ours; a device of it still present is left alone |
//! | a failed plug, needing cleanup | may hold part of it | removed from the VM (`DeviceManager::clean_up`), its allocations freed, the device dropped if only the failed attach held it; a cleanup that fails again is reported and retried next time (also before the VM's next attach or detach while the service runs) |
//! | — | holds an object with one of our names that no device accounts for (a plug whose result was never saved) | reported as a stray and left alone: removing a guest's device is not a repair to make unasked |
//!
//! The repaired state is loaded into a fresh manager, which then agrees with the VM.

use std::collections::BTreeSet;
use std::path::PathBuf;

use plugboard_devices::{DeviceId, DeviceManager, Plug, PlugRequest, SavedState};
use plugboard_qemu::QemuError;
use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::held::pci_functions;

/// One difference found, and what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repair {
    /// Saved as attached, not in the VM: forgotten.
    Forgotten {
        /// The VM.
        vm: String,
        /// The device.
        device: DeviceId,
        /// What it was (`block /path`, …).
        what: String,
        /// The host PCI functions it held (VFIO), released in the hostdev registry.
        host_pci: Vec<PciAddress>,
    },
    /// A failed plug the VM still held part of ([`plugboard_devices::Leftover`]): removed
    /// from the VM now, its allocations freed.
    CleanedUp {
        /// The VM.
        vm: String,
        /// The device.
        device: DeviceId,
        /// The host PCI functions it held (VFIO), released in the hostdev registry when the
        /// device went with the cleanup.
        host_pci: Vec<PciAddress>,
    },
    /// A failed plug the VM may still hold part of, whose cleanup failed again: kept as
    /// needing cleanup, retried at the next reconciliation (or the device's next attach).
    StillNeedsCleanup {
        /// The VM.
        vm: String,
        /// The device.
        device: DeviceId,
        /// Why the cleanup failed.
        reason: String,
    },
    /// In the VM with one of our names, in no saved device: left alone.
    Stray {
        /// The VM.
        vm: String,
        /// The hypervisor's id of the object.
        id: String,
    },
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forgotten {
                device,
                what,
                host_pci,
                ..
            } => {
                write!(
                    f,
                    "device {device} ({what}) is no longer in the VM; dropped from the books"
                )?;
                if !host_pci.is_empty() {
                    let list: Vec<String> = host_pci.iter().map(ToString::to_string).collect();
                    write!(f, ", host PCI {} released", list.join(" "))?;
                }
                Ok(())
            }
            Self::CleanedUp { device, .. } => write!(
                f,
                "what a failed plug of device {device} left in the VM is removed"
            ),
            Self::StillNeedsCleanup { device, reason, .. } => write!(
                f,
                "a failed plug of device {device} still needs cleanup: {reason}"
            ),
            Self::Stray { id, .. } => write!(
                f,
                "the VM holds {id}, named like ours, that no device accounts for; left alone"
            ),
        }
    }
}

/// The file a plugged block device's fd set was opened from, if it was handed over.
fn passed_file(request: &PlugRequest) -> Option<PathBuf> {
    match &request.plug {
        Plug::Block(b) => b.spec.passed_fd.map(|_| b.spec.path.clone()),
        Plug::VhostUser(_) | Plug::Vfio(_) => None,
    }
}

/// Cleans up what failed plugs left in the VM of a loaded `manager` (see the table above).
/// Returns what was done, each already logged.
pub(crate) fn clean_up_failed_plugs(vm: &str, manager: &DeviceManager<Backend>) -> Vec<Repair> {
    let mut repairs = Vec::new();
    for id in manager.needing_cleanup() {
        let host = manager
            .device(id)
            .map(|d| pci_functions(&d))
            .unwrap_or_default();
        match manager.clean_up(id) {
            Ok(_) => {
                let gone = manager.device(id).is_none();
                tracing::warn!(vm, device = %id, gone, "what a failed plug left in the VM is removed");
                repairs.push(Repair::CleanedUp {
                    vm: vm.to_owned(),
                    device: id,
                    host_pci: if gone { host } else { Vec::new() },
                });
            }
            Err(e) => {
                let reason = plugboard_sysfs::error_chain(&e);
                tracing::warn!(vm, device = %id, reason, "a failed plug still needs cleanup; retried at the next reconciliation");
                repairs.push(Repair::StillNeedsCleanup {
                    vm: vm.to_owned(),
                    device: id,
                    reason,
                });
            }
        }
    }
    repairs
}

/// Repairs `saved` against what `backend` holds. Returns the repaired state and what was
/// repaired (each already logged).
///
/// # Errors
/// The hypervisor could not be asked.
pub(crate) fn reconcile(
    vm: &str,
    backend: &Backend,
    mut saved: SavedState,
) -> Result<(SavedState, Vec<Repair>), QemuError> {
    let plugged: Vec<_> = saved
        .devices
        .iter()
        .filter_map(|d| d.plugged.as_ref())
        .collect();
    // What failed plugs left accounts for what the VM holds too: not strays (they are
    // cleaned up once the state is loaded), and never "missing".
    let leftovers = saved
        .devices
        .iter()
        .filter_map(|d| d.needs_cleanup.as_ref().map(|l| &l.request));
    let asked: Vec<_> = plugged.iter().copied().chain(leftovers).collect();
    let inspection = backend.inspect(&asked)?;
    let missing: BTreeSet<DeviceId> = plugged
        .iter()
        .zip(&inspection.held)
        .filter(|(_, held)| !**held)
        .map(|(r, _)| r.device)
        .collect();
    let mut repairs = Vec::new();
    let mut freed_indexes = BTreeSet::new();
    let mut freed_ports = BTreeSet::new();
    saved.devices.retain(|d| {
        if !missing.contains(&d.id) {
            return true;
        }
        if let Some(r) = &d.plugged {
            freed_indexes.extend(r.block_index());
            freed_ports.extend(r.ports());
        }
        if let Some(r) = &d.plugged {
            match backend.clear_leftovers(r, passed_file(r).as_deref()) {
                Ok(left) if left.is_empty() => {}
                Ok(left) => {
                    tracing::warn!(vm, device = %d.id, ?left, "part of a device dropped from the books is still in the VM; left alone");
                }
                Err(e) => {
                    tracing::warn!(vm, device = %d.id, error = %e, "cannot delete what is left in the VM of a device dropped from the books; QEMU keeps it until it exits");
                }
            }
        }
        let what = format!("{} {}", d.spec.kind.type_name(), d.spec.identity);
        tracing::warn!(
            vm, device = %d.id, what,
            "device saved as attached is not in the VM; dropped from the books (attach it again to restore it)"
        );
        repairs.push(Repair::Forgotten {
            vm: vm.to_owned(),
            device: d.id,
            what,
            host_pci: pci_functions(d),
        });
        false
    });
    saved.block_indexes.retain(|i| !freed_indexes.contains(i));
    saved.root_ports.retain(|p| !freed_ports.contains(p));
    for id in inspection.strays {
        tracing::warn!(
            vm,
            id,
            "the VM holds a device named like ours that no saved device accounts for; left alone (remove it with QMP device_del if it is not wanted)"
        );
        repairs.push(Repair::Stray {
            vm: vm.to_owned(),
            id,
        });
    }
    Ok((saved, repairs))
}
