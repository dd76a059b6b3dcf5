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
                if seen.contains(&member.address) {
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
            if !member.bridge && member.driver_kind == DriverKind::Host {
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
