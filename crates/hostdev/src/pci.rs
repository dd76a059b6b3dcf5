//! PCI prepare: take devices for an owner, with libvirt's rules.
//!
//! 1. Under the registry's write lock, read each device (and its IOMMU group) from sysfs
//!    and check: an endpoint; not active (even for the same owner); no pending operation;
//!    no member of its group active or being prepared for another owner; the group viable
//!    once the plan is done; an unmanaged device already inactive or on a vfio driver
//!    (`plan.rs`).
//! 2. If nothing needs a sysfs write, move the devices to the active list in that same
//!    transaction. Otherwise journal one intent per device (original driver, owner) and
//!    commit **before** touching sysfs; the intents also reserve the devices.
//! 3. Bind each managed device to vfio-pci (verified). On failure undo the binds in
//!    reverse and drop the intents: every list and binding is as before.
//! 4. In one transaction, move every device to the active list and drop the intents.
//!
//! Reset: every prepared device ends on vfio-pci or a variant, which resets it itself
//! when the VMM opens it, so prepare never writes `reset` (libvirt does the same).

use std::collections::BTreeSet;

use plugboard_sysfs::{BindError, PciAddress, PciDevice, VFIO_PCI};
use serde::{Deserialize, Serialize};

use crate::device::HostDeviceError;
use crate::fault;
use crate::give_back::give_back;
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::pci_request::{PrepareError, PrepareOptions};
use crate::plan::{Step, plan};
use crate::registry::{List, PciRow, RegistryError};

/// One prepared device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The device.
    pub address: PciAddress,
    /// The managed flag that counts (the one recorded when it first went inactive).
    pub managed: bool,
    /// The host driver release will give it back to (managed only).
    pub original_driver: Option<String>,
    /// True when this call bound it to vfio-pci.
    pub bound: bool,
}

/// A PCI prepare that has reserved its devices (one prepare intent each) and bound them,
/// but not yet recorded them active: every row is as before the call. It ends with
/// [`HostdevManager::commit_pci`] or [`HostdevManager::abandon_pci`]; a process that dies
/// in between leaves intents that `recover` undoes like any half-done prepare.
#[derive(Debug)]
pub(crate) struct PendingPci {
    plan: Vec<Step>,
    /// What this call bound: the device, its driver and `driver_override` before.
    bound: Vec<Bound>,
}

/// One device this call bound to vfio-pci, and what it had before.
#[derive(Debug, Clone)]
struct Bound {
    address: PciAddress,
    driver: Option<String>,
    driver_override: Option<String>,
}

impl HostdevManager {
    /// Prepares `devices` for `owner`. All or nothing: on error every list and binding is
    /// exactly as before. An empty list is a no-op.
    pub fn prepare_pci(
        &mut self,
        owner: &Owner,
        devices: &[PciAddress],
        options: PrepareOptions,
    ) -> Result<Vec<Prepared>, PrepareError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let (plan, journaled) = self.journal_pci(owner, devices, options, false)?;
        if !journaled {
            fault::point("prepare.committed");
            return Ok(prepared(&plan, &[]));
        }
        let pending = self.bind_pci(plan)?;
        self.commit_pci(owner, pending)
    }

    /// The first half of a prepare, for a caller that has more to do before the devices
    /// may be recorded active (a mixed prepare): reserves and binds `devices`, leaving
    /// every row as it was. `None` for an empty list.
    pub(crate) fn reserve_pci(
        &mut self,
        owner: &Owner,
        devices: &[PciAddress],
        options: PrepareOptions,
    ) -> Result<Option<PendingPci>, PrepareError> {
        if devices.is_empty() {
            return Ok(None);
        }
        // Held, the plan is always journaled: no row is written before `commit_pci`.
        let (plan, _journaled) = self.journal_pci(owner, devices, options, true)?;
        self.bind_pci(plan).map(Some)
    }

    /// Plans and journals, in one write transaction. With `hold`, the intents are written
    /// even when nothing needs a sysfs write, so that the rows stay untouched until
    /// [`Self::commit_pci`]; without it such a plan is recorded active at once (`false`
    /// returned: nothing journaled).
    fn journal_pci(
        &mut self,
        owner: &Owner,
        devices: &[PciAddress],
        options: PrepareOptions,
        hold: bool,
    ) -> Result<(Vec<Step>, bool), PrepareError> {
        let sysfs = self.sysfs.clone();
        let stamp = self.stamp;
        self.registry.write(|tx| {
            let plan = plan(tx, &sysfs, owner, devices, options)?;
            if !hold && plan.iter().all(|s| !s.bind) {
                // Nothing to write to sysfs: the claim is one transaction.
                for step in &plan {
                    tx.put_pci_row(&active_row(step, owner))?;
                }
                return Ok::<_, PrepareError>((plan, false));
            }
            for step in &plan {
                tx.insert_intent(&Intent {
                    id: 0,
                    op: IntentOp::Prepare,
                    address: step.address.to_string(),
                    original_driver: step.original_driver.clone(),
                    owner: Some(owner.clone()),
                    managed: step.managed,
                    writes_sysfs: step.bind,
                    iommu_group: step.group,
                    step: IntentStep::Reserved,
                    process: stamp,
                })?;
            }
            Ok((plan, true))
        })
    }

    /// Binds the managed devices of a journaled plan to vfio-pci (verified); on failure
    /// undoes the binds in reverse and drops the intents.
    fn bind_pci(&mut self, plan: Vec<Step>) -> Result<PendingPci, PrepareError> {
        fault::point("prepare.journaled");
        let sysfs = self.sysfs.clone();
        let mut bound: Vec<Bound> = Vec::new();
        for step in plan.iter().filter(|s| s.bind) {
            if let Err(err) = self.mark_binding(&step.address.to_string()) {
                self.undo_prepare(&plan, &bound);
                return Err(err.into());
            }
            fault::point("prepare.binding");
            let result = sysfs
                .pci_device(step.address)
                .map_err(|source| {
                    PrepareError::Device(HostDeviceError::NotFound {
                        address: step.address,
                        source,
                    })
                })
                .and_then(|dev| {
                    dev.bind(VFIO_PCI).map_err(|source| PrepareError::Bind {
                        address: step.address,
                        source,
                    })
                });
            match result {
                Ok(outcome) => {
                    if outcome.changed {
                        bound.push(Bound {
                            address: step.address,
                            driver: outcome.previous_driver,
                            driver_override: outcome.previous_override,
                        });
                    }
                    fault::point("prepare.bound");
                }
                Err(err) => {
                    self.undo_prepare(&plan, &bound);
                    return Err(err);
                }
            }
        }
        Ok(PendingPci { plan, bound })
    }

    /// The second half: in one transaction, records every device active for `owner` and
    /// drops the intents. On failure the prepare is undone.
    pub(crate) fn commit_pci(
        &mut self,
        owner: &Owner,
        pending: PendingPci,
    ) -> Result<Vec<Prepared>, PrepareError> {
        let PendingPci { plan, bound } = pending;
        let finish = self.registry.write(|tx| {
            for step in &plan {
                tx.put_pci_row(&active_row(step, owner))?;
                if let Some(intent) = tx.intent_for(&step.address.to_string())? {
                    tx.delete_intent(intent.id)?;
                }
            }
            Ok::<_, RegistryError>(())
        });
        if let Err(err) = finish {
            self.undo_prepare(&plan, &bound);
            return Err(err.into());
        }
        fault::point("prepare.committed");
        let bound: Vec<PciAddress> = bound.into_iter().map(|b| b.address).collect();
        Ok(prepared(&plan, &bound))
    }

    /// Gives up a reserved prepare: every binding and list exactly as before the call.
    pub(crate) fn abandon_pci(&mut self, pending: &PendingPci) {
        self.undo_prepare(&pending.plan, &pending.bound);
    }

    /// Rolls back a failed prepare: put back what this call bound, in reverse order, then
    /// drop the intents. Best effort; what cannot be undone stays journaled for `recover`.
    fn undo_prepare(&mut self, plan: &[Step], bound: &[Bound]) {
        let mut undone = BTreeSet::new();
        for b in bound.iter().rev() {
            let result = self
                .sysfs
                .pci_device(b.address)
                .map_err(BindError::from)
                .and_then(|dev| restore(&dev, b));
            match result {
                Ok(()) => {
                    tracing::info!(bdf = %b.address, driver = ?b.driver, "prepare rolled back");
                    undone.insert(b.address);
                }
                Err(err) => {
                    tracing::error!(bdf = %b.address, error = %err,
                        "rolling back a failed prepare: reattach failed; left journaled for `plugboard hostdev recover`");
                }
            }
        }
        let drop_intents = self.registry.write(|tx| {
            for step in plan {
                let bound_here = bound.iter().any(|b| b.address == step.address);
                if bound_here && !undone.contains(&step.address) {
                    continue;
                }
                if let Some(intent) = tx.intent_for(&step.address.to_string())? {
                    tx.delete_intent(intent.id)?;
                }
            }
            Ok::<_, RegistryError>(())
        });
        if let Err(err) = drop_intents {
            tracing::error!(error = %err, "rolling back a failed prepare: cannot drop its intents; run `plugboard hostdev recover`");
        }
    }
}

/// Puts a device this call bound back as it was: on its driver (given back and verified),
/// or, when it had none, unbound without a probe (a probe could bind a host driver into an
/// IOMMU group that a VM uses); then its `driver_override` as it was.
fn restore(device: &PciDevice, before: &Bound) -> Result<(), BindError> {
    match &before.driver {
        Some(driver) => {
            give_back(device, Some(driver))?;
        }
        None => {
            device.set_driver_override(None)?;
            if device.driver()?.is_some() {
                device.unbind()?;
            }
        }
    }
    if before.driver_override.is_some() {
        device.set_driver_override(before.driver_override.as_deref())?;
    }
    Ok(())
}

fn active_row(step: &Step, owner: &Owner) -> PciRow {
    PciRow {
        address: step.address.to_string(),
        list: List::Active,
        owner: Some(owner.clone()),
        managed: step.managed,
        original_driver: step.original_driver.clone(),
        iommu_group: step.group,
    }
}

fn prepared(plan: &[Step], bound: &[PciAddress]) -> Vec<Prepared> {
    plan.iter()
        .map(|s| Prepared {
            address: s.address,
            managed: s.managed,
            original_driver: s.original_driver.clone(),
            bound: bound.contains(&s.address),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::DriverSpec;

    use super::*;
    use crate::release::PciReleased;
    use crate::test_support::*;

    #[test]
    fn managed_round_trip_binds_vfio_and_gives_the_original_driver_back() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let done = m.prepare_pci(&a, &[addr(NIC1)], MANAGED).unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].managed && done[0].bound);
        assert_eq!(done[0].original_driver.as_deref(), Some("e1000e"));
        assert_eq!(fx.driver(NIC1).as_deref(), Some("vfio-pci"));
        assert!(fx.kernel.dev_root().join("vfio/1").exists());
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Active, Some("qemu/vm1".into()), true)]
        );
        assert_eq!(m.owners().unwrap().get(&addr(NIC1)), Some(&a));

        let out = m.release_pci(&a, &[addr(NIC1)]).unwrap();
        assert_eq!(
            out[0].result.as_ref().unwrap(),
            &PciReleased::Reattached {
                driver: Some("e1000e".into())
            }
        );
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
        assert_eq!(fx.driver_override(NIC1), None);
        assert!(!fx.kernel.dev_root().join("vfio/1").exists());
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn unmanaged_round_trip_stays_inactive_on_vfio() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        m.detach(addr(NIC2)).unwrap();
        assert_eq!(
            books(&mut m),
            vec![(NIC2.into(), List::Inactive, None, false)]
        );
        let done = m.prepare_pci(&a, &[addr(NIC2)], UNMANAGED).unwrap();
        assert!(!done[0].managed && !done[0].bound);
        assert_eq!(
            books(&mut m),
            vec![(NIC2.into(), List::Active, Some("qemu/vm1".into()), false)]
        );
        let out = m.release_pci(&a, &[addr(NIC2)]).unwrap();
        assert_eq!(out[0].result.as_ref().unwrap(), &PciReleased::Inactive);
        assert_eq!(fx.driver(NIC2).as_deref(), Some("vfio-pci"));
        assert_eq!(
            books(&mut m),
            vec![(NIC2.into(), List::Inactive, None, false)]
        );
        assert_eq!(m.reattach(addr(NIC2)).unwrap().driver(), Some("e1000e"));
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_device_detached_by_hand_then_prepared_managed_stays_inactive_after_release() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        m.detach(addr(NIC1)).unwrap();
        let done = m.prepare_pci(&a, &[addr(NIC1)], MANAGED).unwrap();
        assert!(!done[0].managed, "the inactive copy's managed flag counts");
        let out = m.release_pci(&a, &[addr(NIC1)]).unwrap();
        assert_eq!(out[0].result.as_ref().unwrap(), &PciReleased::Inactive);
        assert_eq!(fx.driver(NIC1).as_deref(), Some("vfio-pci"));
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Inactive, None, false)]
        );
    }

    #[test]
    fn the_three_conflicts_fail_and_change_nothing() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(NIC1)], MANAGED)
            .unwrap();
        let before = books(&mut m);
        let writes = fx.kernel.writes().len();
        for (who, what) in [
            ("qemu/vm1", "same owner again"),
            ("qemu/vm2", "other domain"),
            ("kata/vm1", "other driver"),
        ] {
            for options in [MANAGED, UNMANAGED] {
                let err = m
                    .prepare_pci(&owner(who), &[addr(NIC1)], options)
                    .unwrap_err();
                assert!(
                    matches!(&err, PrepareError::InUse { owner, .. } if owner.to_string() == "qemu/vm1"),
                    "{what}: {err:?}"
                );
                assert!(err.to_string().contains(NIC1), "{err}");
                assert_eq!(
                    err.to_string().ends_with("(already yours)"),
                    who == "qemu/vm1",
                    "{what}: {err}"
                );
                assert_eq!(err.is_already_yours(), who == "qemu/vm1", "{what}");
                assert_eq!(books(&mut m), before, "{what}");
            }
        }
        assert_eq!(fx.kernel.writes().len(), writes, "no sysfs write");
        assert_eq!(fx.driver(NIC1).as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn a_conflict_in_a_list_undoes_the_devices_bound_before_it() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(NIC2)], MANAGED)
            .unwrap();
        let before = books(&mut m);
        let err = m
            .prepare_pci(&owner("qemu/vm2"), &[addr(NIC1), addr(NIC2)], MANAGED)
            .unwrap_err();
        assert!(matches!(err, PrepareError::InUse { .. }), "{err:?}");
        assert_eq!(books(&mut m), before);
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
    }

    #[test]
    fn a_failed_bind_rolls_back_every_device_and_list() {
        let fx = Fixture::with(host_spec().driver(DriverSpec::new("vfio-pci").fail_probe(NIC3)));
        let mut m = fx.manager();
        m.detach(addr(NIC2)).unwrap();
        let before = books(&mut m);
        let err = m
            .prepare_pci(
                &owner("qemu/vm1"),
                &[addr(NIC1), addr(NIC2), addr(NIC3)],
                MANAGED,
            )
            .unwrap_err();
        assert!(
            matches!(&err, PrepareError::Bind { address, .. } if *address == addr(NIC3)),
            "{err:?}"
        );
        assert_eq!(books(&mut m), before);
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
        assert_eq!(fx.driver(NIC2).as_deref(), Some("vfio-pci"));
        assert_eq!(fx.driver(NIC3).as_deref(), Some("e1000e"));
        for nic in [NIC1, NIC3] {
            assert_eq!(fx.driver_override(nic), None, "{nic}");
        }
    }

    #[test]
    fn a_device_vanishing_mid_prepare_is_named_and_the_rest_rolled_back() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let sys = fx.kernel.sysfs_root();
        let mut first = true;
        let _hook = crate::fault::set_hook(move |point| {
            if point == "prepare.bound" && std::mem::take(&mut first) {
                unplug(&sys, NIC2);
            }
        });
        let err = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(NIC1), addr(NIC2)], MANAGED)
            .unwrap_err();
        assert!(err.to_string().contains(NIC2), "{err}");
        assert!(books(&mut m).is_empty());
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
    }

    #[test]
    fn an_unmanaged_device_on_a_host_driver_is_refused() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let err = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(NIC1)], UNMANAGED)
            .unwrap_err();
        assert!(matches!(err, PrepareError::NotDetached { .. }), "{err:?}");
        assert!(err.to_string().contains(NIC1) && err.to_string().contains("e1000e"));
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_device_already_on_vfio_is_adopted_as_unmanaged() {
        let fx = Fixture::with(
            host_spec().pci(
                plugboard_sysfs::fake::PciSpec::new("0000:0a:00.0", 0x8086, 0x10d3)
                    .iommu_group(10)
                    .driver("vfio-pci"),
            ),
        );
        let mut m = fx.manager();
        let done = m
            .prepare_pci(&owner("qemu/vm1"), &[addr("0000:0a:00.0")], UNMANAGED)
            .unwrap();
        assert!(!done[0].managed && !done[0].bound);
        m.release_pci(&owner("qemu/vm1"), &[addr("0000:0a:00.0")])
            .unwrap();
        assert_eq!(
            books(&mut m),
            vec![("0000:0a:00.0".into(), List::Inactive, None, false)]
        );
    }

    #[test]
    fn a_device_on_a_vfio_variant_driver_is_adopted_and_left_there() {
        let variant = "0000:0b:00.0";
        let fx = Fixture::with(
            host_spec()
                .driver(
                    DriverSpec::new("mlx5_vfio_pci")
                        .id(0x15b3, 0x101e)
                        .vfio_variant(),
                )
                .pci(
                    plugboard_sysfs::fake::PciSpec::new(variant, 0x15b3, 0x101e)
                        .iommu_group(11)
                        .driver("mlx5_vfio_pci"),
                ),
        );
        let mut m = fx.manager();
        for options in [UNMANAGED, MANAGED] {
            let done = m
                .prepare_pci(&owner("qemu/vm1"), &[addr(variant)], options)
                .unwrap();
            assert!(!done[0].managed && !done[0].bound, "{done:?}");
            m.release_pci(&owner("qemu/vm1"), &[addr(variant)]).unwrap();
            assert_eq!(fx.driver(variant).as_deref(), Some("mlx5_vfio_pci"));
        }
        assert_eq!(
            books(&mut m),
            vec![(variant.into(), List::Inactive, None, false)]
        );
        assert!(fx.kernel.writes().is_empty(), "{:?}", fx.kernel.writes());
    }

    #[test]
    fn bridges_and_unknown_devices_are_refused_by_name() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let err = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(BRIDGE)], MANAGED)
            .unwrap_err();
        assert!(
            matches!(
                err,
                PrepareError::Device(HostDeviceError::NotEndpoint { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(BRIDGE));
        let err = m
            .prepare_pci(&owner("qemu/vm1"), &[addr("0000:7f:00.0")], MANAGED)
            .unwrap_err();
        assert!(
            matches!(err, PrepareError::Device(HostDeviceError::NotFound { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("0000:7f:00.0"));
        assert!(books(&mut m).is_empty());
        assert!(fx.kernel.writes().is_empty());
    }

    #[test]
    fn a_group_is_never_split_between_owners() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let whole = PrepareOptions {
            managed: true,
            whole_group: true,
        };
        let done = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(SHARED1)], whole)
            .unwrap();
        assert_eq!(done.len(), 2, "both endpoints, not the bridge");
        assert_eq!(fx.driver(BRIDGE).as_deref(), Some("pcieport"));
        let before = books(&mut m);
        let err = m
            .prepare_pci(&owner("qemu/vm2"), &[addr(SHARED2)], MANAGED)
            .unwrap_err();
        assert!(matches!(err, PrepareError::InUse { .. }), "{err:?}");
        assert_eq!(books(&mut m), before);

        // Release one: the other is still active, so the group stays on vfio.
        let out = m.release_pci(&owner("qemu/vm1"), &[addr(SHARED1)]).unwrap();
        assert_eq!(
            out[0].result.as_ref().unwrap(),
            &PciReleased::KeptForGroup { group: 5 }
        );
        // Another owner still cannot take the free member of a group in use.
        let err = m
            .prepare_pci(&owner("qemu/vm2"), &[addr(SHARED1)], MANAGED)
            .unwrap_err();
        assert!(
            matches!(&err, PrepareError::GroupInUse { member, group: 5, .. } if *member == addr(SHARED2)),
            "{err:?}"
        );
        // Releasing the last member gives both back.
        let out = m.release_pci(&owner("qemu/vm1"), &[addr(SHARED2)]).unwrap();
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|o| matches!(o.result, Ok(PciReleased::Reattached { .. })))
        );
        assert_eq!(fx.driver(SHARED1).as_deref(), Some("e1000e"));
        assert_eq!(fx.driver(SHARED2).as_deref(), Some("e1000e"));
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_group_that_would_not_be_viable_is_refused() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let err = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(SHARED1)], MANAGED)
            .unwrap_err();
        assert!(
            matches!(&err, PrepareError::NotViable { member, group: 5, .. } if *member == addr(SHARED2)),
            "{err:?}"
        );
        assert!(fx.kernel.writes().is_empty());
        // Detaching the other member by hand makes it viable.
        m.detach(addr(SHARED2)).unwrap();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(SHARED1)], MANAGED)
            .unwrap();
        // And a second owner cannot take the detached member.
        let err = m
            .prepare_pci(&owner("qemu/vm2"), &[addr(SHARED2)], UNMANAGED)
            .unwrap_err();
        assert!(matches!(err, PrepareError::GroupInUse { .. }), "{err:?}");
    }

    #[test]
    fn an_empty_prepare_is_a_no_op() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        assert!(
            m.prepare_pci(&owner("qemu/vm1"), &[], MANAGED)
                .unwrap()
                .is_empty()
        );
    }
}
