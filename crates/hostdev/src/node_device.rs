//! Single-device operations without a VM (virsh `nodedev-detach`, `-reattach`, `-reset`).
//!
//! - detach: bind to vfio-pci (verified) and put the device on the inactive list with
//!   managed = false, so a later release leaves it there. Idempotent: a device already on
//!   a vfio driver is only recorded. Refused while the device is active.
//! - reattach: give an unused device back to the host (`give_back.rs`: override cleared,
//!   unbound if bound, probe; verified against the recorded original driver when there is
//!   one) and drop it from the books. Works on a device the registry never saw and on an
//!   unbound one, like libvirt; a probe that binds nothing is
//!   [`ReattachOutcome::Driverless`] (or, with a recorded original driver, an error), never
//!   a quiet success. Refused while active.
//! - reset: refused while active; a no-op on a vfio driver (it resets on open);
//!   otherwise the kernel's `reset` attribute.

use plugboard_sysfs::{BindError, PciAddress, VFIO_PCI};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceFacts, HostDeviceError};
use crate::fault;
use crate::give_back::{ReattachOutcome, give_back};
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{EventKind, List, PciRow, RegistryError, Tx};

/// Why a node-device operation failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NodeDeviceError {
    /// The device is missing, not an endpoint, or unreadable.
    #[error(transparent)]
    Device(#[from] HostDeviceError),
    /// The device is in use by a VM.
    #[error("PCI device {address} is in use by {owner}; release it first")]
    Active {
        /// The device.
        address: PciAddress,
        /// Its owner.
        owner: Owner,
    },
    /// Its IOMMU group is in use: a host driver in it would break the VM's group.
    #[error(
        "PCI device {address}: IOMMU group {group} is in use by {owner} (member {member}); release that first"
    )]
    GroupActive {
        /// The device.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The active member.
        member: String,
        /// Its owner.
        owner: Owner,
    },
    /// Another process is changing the device.
    #[error(
        "PCI device {address} has a pending {op} by process {pid} (if that process died, run `plugboard hostdev recover`)"
    )]
    Pending {
        /// The device.
        address: PciAddress,
        /// The pending operation.
        op: IntentOp,
        /// Its process.
        pid: u32,
    },
    /// The kernel refused the bind, unbind or reset.
    #[error("PCI device {address}: {action} failed")]
    Kernel {
        /// The device.
        address: PciAddress,
        /// What we asked for.
        action: &'static str,
        /// The kernel's answer.
        #[source]
        source: BindError,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What a detach did.
///
/// JSON (stable): `{"outcome": "bound", "from": "e1000e"}` (`from` is `null` when the device
/// had no driver) or `{"outcome": "already_detached"}`. [`Display`](fmt::Display) prints a
/// sentence without the address ("detached from e1000e, now on vfio-pci (inactive)").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DetachOutcome {
    /// Bound to vfio-pci now, from this driver.
    Bound {
        /// The host driver it left (`None`: it had none).
        from: Option<String>,
    },
    /// It was already on a vfio driver; recorded as inactive (if it was not).
    AlreadyDetached,
}

/// What a reset did.
///
/// JSON (stable): the word `reset` or `left_to_vfio`. [`Display`](fmt::Display) prints a
/// sentence without the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetOutcome {
    /// Reset through the kernel's `reset` attribute.
    Reset,
    /// On a vfio driver, which resets the device itself when it is opened.
    LeftToVfio,
}

impl fmt::Display for DetachOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bound { from } => write!(
                f,
                "detached from {}, now on {VFIO_PCI} (inactive)",
                from.as_deref().unwrap_or("no driver")
            ),
            Self::AlreadyDetached => f.write_str("already on a vfio driver (inactive)"),
        }
    }
}

impl fmt::Display for ResetOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reset => "reset",
            Self::LeftToVfio => "on a vfio driver, which resets it when opened",
        })
    }
}

impl HostdevManager {
    /// Detaches `address` from its host driver onto the inactive list.
    pub fn detach(&mut self, address: PciAddress) -> Result<DetachOutcome, NodeDeviceError> {
        let sysfs = self.sysfs.clone();
        let stamp = self.stamp;
        let key = address.to_string();
        let (facts, original, intent) = self.registry.write(|tx| {
            let facts = DeviceFacts::endpoint(&sysfs, address)?;
            let row = usable_row(tx, address)?;
            if facts.kind.is_vfio() {
                if row.is_none() {
                    tx.put_pci_row(&inactive_row(address, &facts, None))?;
                }
                return Ok::<_, NodeDeviceError>((facts, None, None));
            }
            // A device with no driver now (one its host driver did not take back) keeps
            // the original driver on record.
            let original = facts
                .driver
                .clone()
                .or_else(|| row.and_then(|r| r.original_driver));
            let intent = tx.insert_intent(&Intent {
                id: 0,
                op: IntentOp::Detach,
                address: key.clone(),
                original_driver: original.clone(),
                owner: None,
                managed: false,
                writes_sysfs: true,
                iommu_group: facts.group,
                step: IntentStep::Reserved,
                process: stamp,
            })?;
            Ok((facts, original, Some(intent)))
        })?;
        let Some(intent) = intent else {
            return Ok(DetachOutcome::AlreadyDetached);
        };
        fault::point("detach.journaled");
        if let Err(err) = self.mark_binding(&key) {
            self.registry.write(|tx| tx.delete_intent(intent))?;
            return Err(err.into());
        }
        fault::point("detach.binding");
        if let Err(source) = facts.device.bind(VFIO_PCI) {
            self.registry.write(|tx| tx.delete_intent(intent))?;
            return Err(NodeDeviceError::Kernel {
                address,
                action: "binding to vfio-pci",
                source,
            });
        }
        fault::point("detach.bound");
        self.registry.write(|tx| {
            tx.put_pci_row(&inactive_row(address, &facts, original.clone()))?;
            tx.delete_intent(intent)
        })?;
        Ok(DetachOutcome::Bound { from: facts.driver })
    }

    /// Gives `address` back to the host and drops it from the inactive list: whenever it is
    /// not on a host driver (on a vfio driver, overridden, or unbound) the override is
    /// cleared, the device unbound if bound, and probed. With an original driver on record,
    /// that driver must take it ([`NodeDeviceError::Kernel`] otherwise, and the device stays
    /// on the inactive list, shown as needing attention by [`list`](Self::list)); without
    /// one, a probe that binds nothing is [`ReattachOutcome::Driverless`].
    pub fn reattach(&mut self, address: PciAddress) -> Result<ReattachOutcome, NodeDeviceError> {
        let sysfs = self.sysfs.clone();
        let stamp = self.stamp;
        let key = address.to_string();
        let (facts, row, intent) = self.registry.write(|tx| {
            let facts = DeviceFacts::read(&sysfs, address)?;
            let row = usable_row(tx, address)?;
            if let Some(g) = facts.group
                && let Some(member) = tx
                    .pci_rows_in_group(g)?
                    .into_iter()
                    .find(|r| r.list == List::Active)
            {
                return Err(NodeDeviceError::GroupActive {
                    address,
                    group: g,
                    member: member.address,
                    owner: member.owner.unwrap_or_else(Owner::unknown),
                });
            }
            let intent = tx.insert_intent(&Intent {
                id: 0,
                op: IntentOp::Reattach,
                address: key.clone(),
                original_driver: row.as_ref().and_then(|r| r.original_driver.clone()),
                owner: None,
                managed: row.as_ref().is_some_and(|r| r.managed),
                writes_sysfs: true,
                iommu_group: facts.group,
                step: IntentStep::Reserved,
                process: stamp,
            })?;
            Ok::<_, NodeDeviceError>((facts, row, intent))
        })?;
        fault::point("reattach.journaled");
        if let Err(err) = self.mark_binding(&key) {
            self.registry.write(|tx| tx.delete_intent(intent))?;
            return Err(err.into());
        }
        let expect = row.as_ref().and_then(|r| r.original_driver.clone());
        match give_back(&facts.device, expect.as_deref()) {
            Ok(outcome) => {
                self.registry.write(|tx| {
                    tx.delete_pci_row(&key, facts.group, EventKind::Host)?;
                    tx.delete_intent(intent)
                })?;
                Ok(outcome)
            }
            Err(source) => {
                self.registry.write(|tx| tx.delete_intent(intent))?;
                Err(NodeDeviceError::Kernel {
                    address,
                    action: "reattaching to the host driver",
                    source,
                })
            }
        }
    }

    /// Resets `address`, which must not be active.
    pub fn reset(&mut self, address: PciAddress) -> Result<ResetOutcome, NodeDeviceError> {
        let sysfs = self.sysfs.clone();
        let facts = self.registry.read(|tx| {
            let facts = DeviceFacts::endpoint(&sysfs, address)?;
            usable_row(tx, address)?;
            Ok::<_, NodeDeviceError>(facts)
        })?;
        if facts.kind.is_vfio() {
            tracing::debug!(bdf = %address, "on a vfio driver: it resets the device when opened");
            return Ok(ResetOutcome::LeftToVfio);
        }
        facts
            .device
            .reset()
            .map_err(|source| NodeDeviceError::Kernel {
                address,
                action: "reset",
                source,
            })?;
        Ok(ResetOutcome::Reset)
    }
}

/// The device's row, refusing an active or busy device.
fn usable_row(tx: &Tx<'_>, address: PciAddress) -> Result<Option<PciRow>, NodeDeviceError> {
    let key = address.to_string();
    if let Some(intent) = tx.intent_for(&key)? {
        return Err(NodeDeviceError::Pending {
            address,
            op: intent.op,
            pid: intent.process.pid,
        });
    }
    let row = tx.pci_row(&key)?;
    if let Some(r) = &row
        && r.list == List::Active
    {
        return Err(NodeDeviceError::Active {
            address,
            owner: r.owner.clone().unwrap_or_else(Owner::unknown),
        });
    }
    Ok(row)
}

fn inactive_row(address: PciAddress, facts: &DeviceFacts, original: Option<String>) -> PciRow {
    PciRow {
        address: address.to_string(),
        list: List::Inactive,
        owner: None,
        managed: false,
        original_driver: original,
        iommu_group: facts.group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci_request::PrepareError;
    use crate::registry::{List, RegistryOptions};
    use crate::test_support::*;

    #[test]
    fn outcomes_have_snake_case_json_and_sentences() {
        let cases = [
            (
                DetachOutcome::Bound {
                    from: Some("e1000e".to_owned()),
                },
                serde_json::json!({"outcome": "bound", "from": "e1000e"}),
                "detached from e1000e, now on vfio-pci (inactive)",
            ),
            (
                DetachOutcome::Bound { from: None },
                serde_json::json!({"outcome": "bound", "from": null}),
                "detached from no driver, now on vfio-pci (inactive)",
            ),
            (
                DetachOutcome::AlreadyDetached,
                serde_json::json!({"outcome": "already_detached"}),
                "already on a vfio driver (inactive)",
            ),
        ];
        for (outcome, json, text) in cases {
            assert_eq!(serde_json::to_value(&outcome).unwrap(), json);
            assert_eq!(
                serde_json::from_value::<DetachOutcome>(json).unwrap(),
                outcome
            );
            assert_eq!(outcome.to_string(), text);
        }
        for (outcome, word, text) in [
            (ResetOutcome::Reset, "reset", "reset"),
            (
                ResetOutcome::LeftToVfio,
                "left_to_vfio",
                "on a vfio driver, which resets it when opened",
            ),
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), word);
            assert_eq!(
                serde_json::from_value::<ResetOutcome>(word.into()).unwrap(),
                outcome
            );
            assert_eq!(outcome.to_string(), text);
        }
    }

    #[test]
    fn detach_is_idempotent_and_reattach_gives_the_device_back() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        assert_eq!(
            m.detach(addr(NIC1)).unwrap(),
            DetachOutcome::Bound {
                from: Some("e1000e".into())
            }
        );
        let writes = fx.kernel.writes().len();
        assert_eq!(
            m.detach(addr(NIC1)).unwrap(),
            DetachOutcome::AlreadyDetached
        );
        assert_eq!(
            fx.kernel.writes().len(),
            writes,
            "the second detach writes nothing"
        );
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Inactive, None, false)]
        );
        assert_eq!(m.reattach(addr(NIC1)).unwrap().driver(), Some("e1000e"));
        assert_eq!(fx.driver_override(NIC1), None);
        assert!(books(&mut m).is_empty());
        // Reattaching a device the registry never saw, on its host driver: a no-op.
        assert_eq!(m.reattach(addr(NIC2)).unwrap().driver(), Some("e1000e"));
    }

    #[test]
    fn reattach_gives_an_unbound_device_back_to_its_host_driver() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        // Unbound by hand, never seen by the registry: libvirt probes it anyway.
        let nic = fx.kernel.sysfs().pci_device(addr(NIC1)).unwrap();
        nic.unbind().unwrap();
        assert_eq!(fx.driver(NIC1), None);
        let out = m.reattach(addr(NIC1)).unwrap();
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"), "{out:?}");
        assert_eq!(
            out,
            ReattachOutcome::Reattached {
                driver: "e1000e".into()
            }
        );
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_reattach_that_leaves_the_device_driverless_says_so() {
        // No host driver matches this card's IDs.
        let fx = Fixture::with(
            host_spec().pci(
                plugboard_sysfs::fake::PciSpec::new("0000:08:00.0", 0x1234, 0x5678)
                    .class(0x02_0000)
                    .iommu_group(8)
                    .driver("vfio-pci"),
            ),
        );
        let mut m = fx.manager();
        let out = m.reattach(addr("0000:08:00.0")).unwrap();
        assert_eq!(out, ReattachOutcome::Driverless);
        assert!(out.is_driverless() && out.driver().is_none());
        assert_eq!(fx.driver("0000:08:00.0"), None);
        // With an original driver on record that does not take it back: an error, and the
        // device stays on the inactive list, needing attention.
        let fx = Fixture::with(
            host_spec().driver(plugboard_sysfs::fake::DriverSpec::new("e1000e").fail_probe(NIC1)),
        );
        let mut m = fx.manager();
        m.detach(addr(NIC1)).unwrap();
        let err = m.reattach(addr(NIC1)).unwrap_err();
        assert!(matches!(err, NodeDeviceError::Kernel { .. }), "{err:?}");
        assert!(err.to_string().contains(NIC1), "{err}");
        assert_eq!(fx.driver(NIC1), None);
        let listing = m.list().unwrap();
        assert_eq!(listing.pci.len(), 1);
        assert_eq!(listing.needs_attention.len(), 1, "{listing:?}");
        let attention = &listing.needs_attention[0];
        assert_eq!(
            (attention.address.as_str(), attention.driver.as_deref()),
            (NIC1, None)
        );
        assert_eq!(attention.original_driver.as_deref(), Some("e1000e"));
        assert_eq!(
            attention.to_string(),
            format!(
                "{NIC1} (inactive) has no driver; its host driver e1000e did not take it back: run `plugboard hostdev reattach {NIC1}`"
            )
        );
    }

    #[test]
    fn reattach_and_reset_refuse_an_active_device_and_a_group_in_use() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(NIC1)], MANAGED)
            .unwrap();
        let before = books(&mut m);
        for err in [
            m.reattach(addr(NIC1)).unwrap_err(),
            m.reset(addr(NIC1)).unwrap_err(),
            m.detach(addr(NIC1)).unwrap_err(),
        ] {
            assert!(matches!(err, NodeDeviceError::Active { .. }), "{err:?}");
            assert!(
                err.to_string().contains(NIC1) && err.to_string().contains("qemu/vm1"),
                "{err}"
            );
        }
        assert_eq!(books(&mut m), before);
        assert_eq!(fx.kernel.resets(addr(NIC1)), 0);
        // A free member of a group in use stays on vfio-pci.
        m.detach(addr(SHARED2)).unwrap();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(SHARED1)], MANAGED)
            .unwrap();
        let err = m.reattach(addr(SHARED2)).unwrap_err();
        assert!(
            matches!(err, NodeDeviceError::GroupActive { group: 5, .. }),
            "{err:?}"
        );
        assert_eq!(fx.driver(SHARED2).as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn reset_writes_reset_on_a_host_driver_and_leaves_vfio_alone() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        assert_eq!(m.reset(addr(NIC1)).unwrap(), ResetOutcome::Reset);
        assert_eq!(fx.kernel.resets(addr(NIC1)), 1);
        m.detach(addr(NIC2)).unwrap();
        assert_eq!(m.reset(addr(NIC2)).unwrap(), ResetOutcome::LeftToVfio);
        assert_eq!(fx.kernel.resets(addr(NIC2)), 0);
        let err = m.reset(addr(BRIDGE)).unwrap_err();
        assert!(err.to_string().contains("not an endpoint"), "{err}");
        let err = m.detach(addr(BRIDGE)).unwrap_err();
        assert!(
            matches!(
                err,
                NodeDeviceError::Device(HostDeviceError::NotEndpoint { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_locked_or_read_only_registry_fails_before_any_sysfs_write() {
        let fx = Fixture::new();
        let quick = RegistryOptions {
            busy_timeout: std::time::Duration::from_millis(50),
            ..RegistryOptions::default()
        };
        let mut holder = fx.manager();
        let mut m =
            HostdevManager::with_options(fx.kernel.sysfs(), fx.state.path(), &quick).unwrap();
        let db = fx.state.path().join("hostdev.db").display().to_string();
        holder
            .registry()
            .write(|_tx| {
                let err = m
                    .prepare_pci(&owner("qemu/vm1"), &[addr(NIC1)], MANAGED)
                    .unwrap_err();
                assert!(
                    matches!(&err, PrepareError::Registry(e) if e.is_locked()),
                    "{err:?}"
                );
                assert!(err.to_string().contains(&db), "{err}");
                let err = m.detach(addr(NIC2)).unwrap_err();
                assert!(
                    err.to_string().contains("locked") && err.to_string().contains(&db),
                    "{err}"
                );
                Ok::<_, crate::registry::RegistryError>(())
            })
            .unwrap();
        let read_only = RegistryOptions {
            read_only: true,
            ..RegistryOptions::default()
        };
        let mut ro =
            HostdevManager::with_options(fx.kernel.sysfs(), fx.state.path(), &read_only).unwrap();
        let err = ro.detach(addr(NIC2)).unwrap_err();
        assert!(
            err.to_string().contains("read-only") && err.to_string().contains(&db),
            "{err}"
        );
        assert!(fx.kernel.writes().is_empty(), "{:?}", fx.kernel.writes());
        assert!(books(&mut holder).is_empty());
    }
}
