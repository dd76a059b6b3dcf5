//! The checks of a PCI prepare, run inside the registry's write transaction: which
//! devices (with `whole_group`, every endpoint of their groups), and for each what to do,
//! or the rule it breaks. Nothing here writes to sysfs; the plan is carried out by
//! `pci.rs`.
//!
//! Rules: an endpoint; no pending operation; not active, even for the same owner; the
//! managed flag and original driver of an inactive device are the recorded ones; a device
//! with no row already on a vfio driver is adopted as unmanaged; an unmanaged device on a
//! host driver is refused; no other member of a group active or being prepared for another
//! owner, nor being given back to the host; the group viable once the plan is done.
//!
//! `pci-stub`: the kernel allows it beside VFIO, so a member on it neither blocks its group
//! nor is taken by a whole-group prepare (libvirt too leaves pci-stub devices alone for
//! viability): it stays where the administrator parked it, with no row. Named explicitly,
//! such a device is taken like any other on a host driver (managed: bound to vfio-pci,
//! given back to `pci-stub` on release; unmanaged: refused as not detached).

use std::collections::BTreeSet;

use plugboard_sysfs::{DriverKind, PciAddress, Sysfs};

use crate::device::DeviceFacts;
use crate::intent::IntentOp;
use crate::owner::Owner;
use crate::pci_request::{PrepareError, PrepareOptions};
use crate::registry::{List, Tx};

/// What to do with one device of the plan.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub address: PciAddress,
    pub group: Option<u32>,
    pub managed: bool,
    pub original_driver: Option<String>,
    pub bind: bool,
}

/// Checks every rule and returns the plan, inside the write transaction.
pub(crate) fn plan(
    tx: &Tx<'_>,
    sysfs: &Sysfs,
    owner: &Owner,
    devices: &[PciAddress],
    options: PrepareOptions,
) -> Result<Vec<Step>, PrepareError> {
    // The devices named, then (whole group) the other endpoints of their groups.
    let mut wanted: Vec<DeviceFacts> = Vec::new();
    let mut seen = BTreeSet::new();
    for &address in devices {
        if seen.insert(address) {
            wanted.push(DeviceFacts::endpoint(sysfs, address)?);
        }
    }
    let mut groups = BTreeSet::new();
    for facts in &wanted {
        if let Some(g) = facts.group {
            groups.insert((g, facts.address()));
        }
    }
    let mut group_info = Vec::new();
    for &(number, address) in &groups {
        if group_info.iter().any(|(g, _): &(u32, _)| *g == number) {
            continue;
        }
        let group = sysfs
            .iommu_group(number)
            .map_err(|source| PrepareError::Group {
                address,
                group: number,
                source,
            })?;
        group_info.push((number, group));
    }
    if options.whole_group {
        for (_, group) in &group_info {
            for member in group.members.iter().filter(|m| !m.bridge) {
                // Named devices are planned already; a member on pci-stub is left alone.
                if seen.contains(&member.address) || member.driver_kind == DriverKind::Stub {
                    continue;
                }
                // A member this owner already holds is simply kept.
                if let Some(row) = tx.pci_row(&member.address.to_string())?
                    && row.list == List::Active
                    && row.owner.as_ref() == Some(owner)
                {
                    continue;
                }
                seen.insert(member.address);
                wanted.push(DeviceFacts::endpoint(sysfs, member.address)?);
            }
        }
    }

    let mut plan = Vec::with_capacity(wanted.len());
    for facts in &wanted {
        let address = facts.address();
        let key = address.to_string();
        if let Some(intent) = tx.intent_for(&key)? {
            return Err(PrepareError::Pending {
                address,
                op: intent.op,
                pid: intent.process.pid,
            });
        }
        let row = tx.pci_row(&key)?;
        if let Some(row) = &row
            && row.list == List::Active
        {
            let holder = row.owner.clone().unwrap_or_else(Owner::unknown);
            return Err(PrepareError::InUse {
                address,
                already_yours: &holder == owner,
                owner: holder,
            });
        }
        let step = match row {
            Some(row) => Step {
                address,
                group: facts.group,
                managed: row.managed,
                original_driver: row.original_driver,
                bind: !facts.kind.is_vfio(),
            },
            None if facts.kind.is_vfio() => {
                tracing::info!(bdf = %address, driver = ?facts.driver,
                    "adopting a device already on a vfio driver as unmanaged");
                Step {
                    address,
                    group: facts.group,
                    managed: false,
                    original_driver: None,
                    bind: false,
                }
            }
            None if options.managed => Step {
                address,
                group: facts.group,
                managed: true,
                original_driver: facts.driver.clone(),
                bind: true,
            },
            None => {
                return Err(PrepareError::NotDetached {
                    address,
                    driver: facts.driver.clone().unwrap_or_else(|| "no driver".into()),
                });
            }
        };
        plan.push(step);
    }

    // Groups: never split between owners, and viable once the plan is done.
    let in_plan: BTreeSet<PciAddress> = plan.iter().map(|s| s.address).collect();
    for (number, group) in &group_info {
        let asked = plan
            .iter()
            .find(|s| s.group == Some(*number))
            .map_or_else(|| group.members[0].address, |s| s.address);
        for member in &group.members {
            if in_plan.contains(&member.address) {
                continue;
            }
            let key = member.address.to_string();
            if let Some(row) = tx.pci_row(&key)?
                && row.list == List::Active
                && row.owner.as_ref() != Some(owner)
            {
                return Err(PrepareError::GroupInUse {
                    address: asked,
                    group: *number,
                    member: member.address,
                    owner: row.owner.unwrap_or_else(Owner::unknown),
                });
            }
            if let Some(intent) = tx.intent_for(&key)? {
                // Another process is moving this member: being prepared for another owner
                // is a conflict; going back to a host driver would break viability.
                if intent.op != IntentOp::Prepare {
                    return Err(PrepareError::Pending {
                        address: member.address,
                        op: intent.op,
                        pid: intent.process.pid,
                    });
                }
                if intent.owner.as_ref() != Some(owner) {
                    return Err(PrepareError::GroupInUse {
                        address: asked,
                        group: *number,
                        member: member.address,
                        owner: intent.owner.unwrap_or_else(Owner::unknown),
                    });
                }
            }
            if member.blocks() {
                return Err(PrepareError::NotViable {
                    address: asked,
                    group: *number,
                    member: member.address,
                    driver: member.driver.clone().unwrap_or_default(),
                });
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::PciSpec;

    use crate::pci_request::{PrepareError, PrepareOptions};
    use crate::registry::List;
    use crate::release::PciReleased;
    use crate::test_support::*;

    /// Group 9: a GPU on its host driver, its audio function parked on pci-stub.
    const GPU: &str = "0000:09:00.0";
    const AUDIO: &str = "0000:09:00.1";

    fn gpu_with_stubbed_audio() -> Fixture {
        Fixture::with(
            host_spec()
                .pci(
                    PciSpec::new(GPU, 0x10de, 0x1b80)
                        .class(0x03_0000)
                        .iommu_group(9)
                        .driver("nouveau"),
                )
                .pci(
                    PciSpec::new(AUDIO, 0x10de, 0x10f0)
                        .class(0x04_0300)
                        .iommu_group(9)
                        .driver("pci-stub"),
                ),
        )
    }

    const WHOLE: PrepareOptions = PrepareOptions {
        managed: true,
        whole_group: true,
    };

    #[test]
    fn a_member_on_pci_stub_does_not_make_the_group_non_viable() {
        let fx = gpu_with_stubbed_audio();
        let mut m = fx.manager();
        let done = m
            .prepare_pci(&owner("qemu/vm1"), &[addr(GPU)], MANAGED)
            .unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(fx.driver(GPU).as_deref(), Some("vfio-pci"));
        assert_eq!(fx.driver(AUDIO).as_deref(), Some("pci-stub"));
        assert_eq!(
            books(&mut m),
            vec![(GPU.into(), List::Active, Some("qemu/vm1".into()), true)]
        );
    }

    #[test]
    fn a_whole_group_prepare_leaves_a_pci_stub_member_where_it_is() {
        let fx = gpu_with_stubbed_audio();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let done = m.prepare_pci(&a, &[addr(GPU)], WHOLE).unwrap();
        let taken: Vec<String> = done.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(taken, [GPU], "the pci-stub member is not taken");
        assert_eq!(fx.driver(AUDIO).as_deref(), Some("pci-stub"));
        assert!(
            fx.kernel
                .writes()
                .iter()
                .all(|(path, _)| !path.to_string_lossy().contains(AUDIO)),
            "{:?}",
            fx.kernel.writes()
        );
        // The group is still never split: another owner cannot take the stub member.
        let err = m
            .prepare_pci(&owner("qemu/vm2"), &[addr(AUDIO)], MANAGED)
            .unwrap_err();
        assert!(
            matches!(&err, PrepareError::GroupInUse { member, group: 9, .. } if *member == addr(GPU)),
            "{err:?}"
        );
        let out = m.release_pci(&a, &[addr(GPU)]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].result.as_ref().unwrap(),
            &PciReleased::Reattached {
                driver: Some("nouveau".into())
            }
        );
        assert_eq!(fx.driver(AUDIO).as_deref(), Some("pci-stub"));
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_pci_stub_device_named_in_a_managed_prepare_is_taken_and_given_back_to_pci_stub() {
        let fx = gpu_with_stubbed_audio();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let done = m
            .prepare_pci(&a, &[addr(GPU), addr(AUDIO)], MANAGED)
            .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].original_driver.as_deref(), Some("pci-stub"));
        assert_eq!(fx.driver(AUDIO).as_deref(), Some("vfio-pci"));
        m.release_pci(&a, &[addr(GPU), addr(AUDIO)]).unwrap();
        assert_eq!(fx.driver(GPU).as_deref(), Some("nouveau"));
        assert_eq!(fx.driver(AUDIO).as_deref(), Some("pci-stub"));
        assert!(books(&mut m).is_empty());
        // Unmanaged, a device on pci-stub is not detached: refused, like any host driver.
        let err = m.prepare_pci(&a, &[addr(AUDIO)], UNMANAGED).unwrap_err();
        assert!(
            matches!(&err, PrepareError::NotDetached { driver, .. } if driver == "pci-stub"),
            "{err:?}"
        );
    }
}
