//! PCI release: give an owner's devices back, best effort, with a result per device.
//!
//! 1. Under the write lock: skip devices that are not active for this owner (another
//!    owner's devices are never touched); drop devices that vanished from sysfs; move the
//!    rest to the inactive list. A managed device whose IOMMU group still has an active
//!    member stays inactive on vfio-pci for now (binding a host driver into a group a VM
//!    uses is refused by the kernel); when a group's last active member is released, the
//!    managed devices kept that way go back too. Each device to give back gets an intent.
//! 2. For each (`give_back.rs`): clear `driver_override`, unbind, probe, verify the
//!    original driver is back; then drop its row and intent. Unmanaged devices stay inactive on vfio-pci.
//!
//! Before unbinding, release looks for processes that hold the device's VFIO group node or
//! cdev open (`holders.rs`): the kernel's unbind would block until they let go, so release
//! refuses with [`ReleaseError::Held`], naming them, and puts the row back as it was. The
//! other waits of a release are bounded: the registry's busy timeout, and sysfs writes that
//! return once the driver is (un)bound.
//!
//! The managed flag that counts is the one recorded when the device first went inactive:
//! a device detached by hand and then prepared as managed stays inactive (as in libvirt).

use std::collections::BTreeSet;

use std::path::PathBuf;

use plugboard_sysfs::{BindError, PciAddress, PciDevice};
use serde::{Deserialize, Serialize};

use crate::device::{DeviceFacts, HostDeviceError};
use crate::fault;
use crate::give_back::give_back;
use crate::holders::{Holder, holders};
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{EventKind, List, PciRow, RegistryError, Tx};

/// What happened to one device of a release.
///
/// JSON (internally tagged, stable): `{"result": "reattached", "driver": "e1000e"}`,
/// `{"result": "inactive"}`, `{"result": "kept_for_group", "group": 7}`,
/// `{"result": "vanished"}`, `{"result": "not_owned"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PciReleased {
    /// Given back to its host driver (verified); dropped from the registry.
    Reattached {
        /// The driver it is on now (`None`: no driver took it, and none was recorded as
        /// its original one: it had none before either).
        driver: Option<String>,
    },
    /// Unmanaged: stays on vfio-pci, on the inactive list.
    Inactive,
    /// Managed, but its IOMMU group still has active members: stays inactive on vfio-pci
    /// until the group's last member is released.
    KeptForGroup {
        /// The group still in use.
        group: u32,
    },
    /// Gone from sysfs (hot-removed): dropped from both lists.
    Vanished,
    /// Not active for this owner: not touched.
    NotOwned,
}

/// Why giving one device back failed. The device stays on the inactive list.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Another process is changing the device.
    #[error("PCI device {address} has a pending {op} by process {pid}; not released")]
    Pending {
        /// The device.
        address: PciAddress,
        /// The pending operation.
        op: IntentOp,
        /// Its process.
        pid: u32,
    },
    /// The host driver did not take the device back. The device stays on the inactive list;
    /// when it is no longer on vfio-pci (the kernel left it unbound), `list` shows it as
    /// needing attention.
    #[error(
        "PCI device {address}: giving it back to its host driver failed; it stays on the inactive list (see `plugboard hostdev ls`)"
    )]
    Reattach {
        /// The device.
        address: PciAddress,
        /// What the kernel did.
        #[source]
        source: BindError,
    },
    /// A process still holds the device's VFIO group node or cdev open (a VMM still using
    /// it): unbinding vfio-pci now would block in the kernel until it lets go, so nothing
    /// was unbound and the device's row is as it was before the release.
    #[error(
        "PCI device {address} is still open ({}); not released: stop the process or detach the device from its VM first",
        holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Held {
        /// The device.
        address: PciAddress,
        /// The processes and the nodes they hold.
        holders: Vec<Holder>,
    },
    /// The device could not be read.
    #[error(transparent)]
    Device(#[from] HostDeviceError),
    /// The registry failed for this device.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The result for one device.
#[derive(Debug)]
pub struct ReleaseOutcome {
    /// The device.
    pub address: PciAddress,
    /// What happened to it.
    pub result: Result<PciReleased, ReleaseError>,
}

/// A device to give back to its host driver.
struct GiveBack {
    address: PciAddress,
    /// The row before this release: put back when the device is still held open.
    before: PciRow,
    original_driver: Option<String>,
    group: Option<u32>,
    intent: i64,
}

impl HostdevManager {
    /// Releases `owner`'s `devices`. Fails as a whole only when the registry cannot be
    /// written at all; otherwise every device has its own result.
    pub fn release_pci(
        &mut self,
        owner: &Owner,
        devices: &[PciAddress],
    ) -> Result<Vec<ReleaseOutcome>, RegistryError> {
        let sysfs = self.sysfs.clone();
        let stamp = self.stamp;
        let (mut outcomes, give_back) = self.registry.write(|tx| {
            let mut outcomes = Vec::new();
            let mut give_back = Vec::new();
            let mut released = BTreeSet::new();
            let mut touched_groups = BTreeSet::new();
            let mut managed_rows = Vec::new();
            for &address in devices {
                if !released.insert(address) {
                    continue;
                }
                let key = address.to_string();
                let row = tx.pci_row(&key)?;
                let Some(row) = row.filter(|r| r.list == List::Active && r.owner.as_ref() == Some(owner))
                else {
                    outcomes.push(ReleaseOutcome { address, result: Ok(PciReleased::NotOwned) });
                    continue;
                };
                if let Some(intent) = tx.intent_for(&key)? {
                    outcomes.push(ReleaseOutcome {
                        address,
                        result: Err(ReleaseError::Pending {
                            address,
                            op: intent.op,
                            pid: intent.process.pid,
                        }),
                    });
                    continue;
                }
                if sysfs.pci_device(address).is_err_and(|e| e.is_not_found()) {
                    tx.delete_pci_row(&key, row.iommu_group, EventKind::Gone)?;
                    tracing::info!(bdf = %address, "released device vanished from sysfs; dropped from the registry");
                    outcomes.push(ReleaseOutcome { address, result: Ok(PciReleased::Vanished) });
                    continue;
                }
                tx.put_pci_row(&PciRow { list: List::Inactive, owner: None, ..row.clone() })?;
                if let Some(g) = row.iommu_group {
                    touched_groups.insert(g);
                }
                if row.managed {
                    managed_rows.push(row);
                } else {
                    outcomes.push(ReleaseOutcome { address, result: Ok(PciReleased::Inactive) });
                }
            }
            // Managed devices kept earlier for a group that is free now go back too.
            for &g in &touched_groups {
                if group_busy(tx, g)? {
                    continue;
                }
                for row in tx.pci_rows_in_group(g)? {
                    let known = managed_rows.iter().any(|r: &PciRow| r.address == row.address);
                    if row.list == List::Inactive && row.managed && !known
                        && tx.intent_for(&row.address)?.is_none()
                    {
                        managed_rows.push(row);
                    }
                }
            }
            for row in managed_rows {
                let address: PciAddress = row
                    .address
                    .parse()
                    .map_err(|_| tx.invalid("pci_devices.address", &row.address))?;
                if let Some(g) = row.iommu_group
                    && group_busy(tx, g)?
                {
                    outcomes.push(ReleaseOutcome { address, result: Ok(PciReleased::KeptForGroup { group: g }) });
                    continue;
                }
                let intent = tx.insert_intent(&Intent {
                    id: 0,
                    op: IntentOp::Release,
                    address: row.address.clone(),
                    original_driver: row.original_driver.clone(),
                    owner: Some(owner.clone()),
                    managed: true,
                    writes_sysfs: true,
                    iommu_group: row.iommu_group,
                    step: IntentStep::Reserved,
                    process: stamp,
                })?;
                give_back.push(GiveBack {
                    address,
                    before: row.clone(),
                    original_driver: row.original_driver,
                    group: row.iommu_group,
                    intent,
                });
            }
            Ok::<_, RegistryError>((outcomes, give_back))
        })?;
        fault::point("release.journaled");

        for item in give_back {
            let result = self.give_back(&item);
            outcomes.push(ReleaseOutcome {
                address: item.address,
                result,
            });
        }
        Ok(outcomes)
    }

    /// Reattaches one managed device and records it; on failure it stays inactive.
    fn give_back(&mut self, item: &GiveBack) -> Result<PciReleased, ReleaseError> {
        let key = item.address.to_string();
        let device = match DeviceFacts::read(&self.sysfs, item.address) {
            Ok(facts) => facts.device,
            Err(err) if err.is_not_found() => {
                self.registry.write(|tx| {
                    tx.delete_pci_row(&key, item.group, EventKind::Gone)?;
                    tx.delete_intent(item.intent)
                })?;
                return Ok(PciReleased::Vanished);
            }
            Err(err) => {
                self.registry.write(|tx| tx.delete_intent(item.intent))?;
                return Err(err.into());
            }
        };
        let held = self.holders_of(&device, item.group);
        if !held.is_empty() {
            tracing::error!(bdf = %item.address, holders = ?held,
                "the device is still open; not unbinding it (the kernel would block)");
            self.registry.write(|tx| {
                tx.put_pci_row(&item.before)?;
                tx.delete_intent(item.intent)
            })?;
            return Err(ReleaseError::Held {
                address: item.address,
                holders: held,
            });
        }
        if let Err(err) = self.mark_binding(&key) {
            self.registry.write(|tx| tx.delete_intent(item.intent))?;
            return Err(err.into());
        }
        match give_back(&device, item.original_driver.as_deref()) {
            Ok(outcome) => {
                let driver = outcome.driver().map(str::to_owned);
                fault::point("release.reattached");
                self.registry.write(|tx| {
                    tx.delete_pci_row(&key, item.group, EventKind::Host)?;
                    tx.delete_intent(item.intent)
                })?;
                Ok(PciReleased::Reattached { driver })
            }
            Err(source) => {
                tracing::error!(bdf = %item.address, error = %source,
                    "giving the device back failed; it stays on the inactive list");
                self.registry.write(|tx| tx.delete_intent(item.intent))?;
                Err(ReleaseError::Reattach {
                    address: item.address,
                    source,
                })
            }
        }
    }
}

impl HostdevManager {
    /// The processes holding `device`'s VFIO nodes open: the group node of `group` and the
    /// device's cdev, while they exist.
    pub(crate) fn holders_of(&self, device: &PciDevice, group: Option<u32>) -> Vec<Holder> {
        let mut nodes: Vec<PathBuf> = group
            .map(|g| self.sysfs.vfio_group_node(g))
            .into_iter()
            .collect();
        if let Ok(Some(cdev)) = device.vfio_cdev_path() {
            nodes.push(cdev);
        }
        nodes.retain(|n| n.exists());
        holders(&self.proc_root, &nodes)
    }
}

/// True when a member of group `g` is active or being prepared.
pub(crate) fn group_busy(tx: &Tx<'_>, g: u32) -> Result<bool, RegistryError> {
    if tx
        .pci_rows_in_group(g)?
        .iter()
        .any(|r| r.list == List::Active)
    {
        return Ok(true);
    }
    Ok(tx
        .intents_in_group(g)?
        .iter()
        .any(|i| i.op == IntentOp::Prepare))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    /// The successful result for `address` in `out`.
    fn result_of(out: &[ReleaseOutcome], address: &str) -> PciReleased {
        out.iter()
            .find(|o| o.address == addr(address))
            .unwrap()
            .result
            .as_ref()
            .unwrap()
            .clone()
    }

    #[test]
    fn release_is_best_effort_with_a_result_per_device() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let b = owner("qemu/vm2");
        m.prepare_pci(&a, &[addr(NIC1), addr(NIC3)], MANAGED)
            .unwrap();
        m.prepare_pci(&b, &[addr(NIC2)], MANAGED).unwrap();
        fx.unplug(NIC3);
        let out = m
            .release_pci(&a, &[addr(NIC1), addr(NIC2), addr(NIC3), addr(FN0)])
            .unwrap();
        let result = |a: &str| result_of(&out, a);
        assert!(matches!(result(NIC1), PciReleased::Reattached { .. }));
        assert_eq!(result(NIC2), PciReleased::NotOwned);
        assert_eq!(result(NIC3), PciReleased::Vanished);
        assert_eq!(result(FN0), PciReleased::NotOwned);
        // The other owner's device is untouched.
        assert_eq!(
            books(&mut m),
            vec![(NIC2.into(), List::Active, Some("qemu/vm2".into()), true)]
        );
        assert_eq!(fx.driver(NIC2).as_deref(), Some("vfio-pci"));
        let audit = m.audit(0).unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.address == NIC3 && e.kind == EventKind::Gone)
        );
    }

    #[test]
    fn a_device_vanishing_mid_release_is_dropped_and_the_others_given_back() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        m.prepare_pci(&a, &[addr(NIC1), addr(NIC2)], MANAGED)
            .unwrap();
        let sys = fx.kernel.sysfs_root();
        let _hook = crate::fault::set_hook(move |point| {
            if point == "release.journaled" {
                unplug(&sys, NIC1);
            }
        });
        let out = m.release_pci(&a, &[addr(NIC1), addr(NIC2)]).unwrap();
        let result = |a: &str| result_of(&out, a);
        assert_eq!(result(NIC1), PciReleased::Vanished);
        assert!(matches!(result(NIC2), PciReleased::Reattached { .. }));
        assert!(books(&mut m).is_empty());
        assert_eq!(fx.driver(NIC2).as_deref(), Some("e1000e"));
    }

    #[test]
    fn a_failed_reattach_keeps_the_device_inactive_and_says_so() {
        let fx = Fixture::with(
            host_spec().driver(plugboard_sysfs::fake::DriverSpec::new("e1000e").fail_probe(NIC1)),
        );
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        // The fake binds NIC1 to e1000e at build even though later probes fail.
        m.prepare_pci(&a, &[addr(NIC1)], MANAGED).unwrap();
        let out = m.release_pci(&a, &[addr(NIC1)]).unwrap();
        let err = out[0].result.as_ref().unwrap_err();
        assert!(matches!(err, ReleaseError::Reattach { .. }), "{err:?}");
        assert!(err.to_string().contains(NIC1));
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Inactive, None, true)]
        );
        // Left unbound, not on vfio-pci: `ls` says it needs attention.
        assert_eq!(fx.driver(NIC1), None);
        let listing = m.list().unwrap();
        assert_eq!(listing.needs_attention.len(), 1, "{listing:?}");
        assert_eq!(listing.needs_attention[0].address, NIC1);
    }

    #[test]
    fn a_device_held_open_is_refused_by_name_and_released_once_closed() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        m.prepare_pci(&a, &[addr(NIC1)], MANAGED).unwrap();
        // The fake kernel's group node is a plain file: holding it open is what QEMU does.
        let node = fx.kernel.dev_root().join("vfio/1");
        let file = std::fs::File::open(&node).unwrap();
        let out = m.release_pci(&a, &[addr(NIC1)]).unwrap();
        let err = out[0].result.as_ref().unwrap_err();
        assert!(
            matches!(err, ReleaseError::Held { holders, .. }
                if holders.iter().any(|h| h.pid == std::process::id() && h.node == node)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(NIC1), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&node.display().to_string()), "{text}");
        // Nothing was unbound, and the owner still holds it.
        assert_eq!(fx.driver(NIC1).as_deref(), Some("vfio-pci"));
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Active, Some("qemu/vm1".into()), true)]
        );
        drop(file);
        let out = m.release_pci(&a, &[addr(NIC1)]).unwrap();
        assert!(
            matches!(out[0].result, Ok(PciReleased::Reattached { .. })),
            "{:?}",
            out[0].result
        );
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
        assert!(books(&mut m).is_empty());
    }
}
