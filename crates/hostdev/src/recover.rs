//! `recover`: finish or undo every operation whose process died mid-way, by comparing its
//! journaled intent with what sysfs shows now. Run at daemon start and on demand.
//!
//! | intent   | policy  | what sysfs shows → what recover does |
//! |----------|---------|--------------------------------------|
//! | prepare  | undo    | on vfio (or override set) and we bound it → reattach the original driver; otherwise nothing. Lists were never touched. |
//! | release  | finish  | gone → drop the row; otherwise reattach the original driver and drop the row (on failure the row stays inactive) |
//! | detach   | by fact | on vfio → record inactive (finish); otherwise clear a stale override (undo) |
//! | reattach | finish  | reattach if still on vfio or overridden, then drop the row |
//!
//! A prepare or detach intent still at step `reserved` never reached sysfs: it is dropped.
//! Intents of a process that still runs (pid and start time match), this one included,
//! are left alone. Each
//! intent is first taken over (restamped with our process) in a write transaction, so two
//! concurrent `recover`s never work on the same one.

use plugboard_sysfs::{PciAddress, VFIO_PCI};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::DeviceFacts;
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::manager::HostdevManager;
use crate::registry::{EventKind, List, PciRow, RegistryError};

/// What recover did with one intent.
///
/// JSON (stable, internally tagged): `{"action": "finished"}`, `{"action": "undone"}`,
/// `{"action": "dropped"}`, `{"action": "still_running", "pid": 7}`,
/// `{"action": "failed", "error": "…"}`. [`Recovered`] flattens it beside the address.
/// [`Display`](fmt::Display) prints human words: "finished", "undone", "dropped (the device
/// is gone)", "still running (process 7)", "failed: …".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RecoverAction {
    /// The operation was completed.
    Finished,
    /// The operation was rolled back.
    Undone,
    /// The device is gone from sysfs; its rows were dropped.
    Dropped,
    /// Its process still runs; left alone.
    StillRunning {
        /// The process.
        pid: u32,
    },
    /// The sysfs write failed; the device is left as described, on the inactive list when
    /// it is on vfio-pci.
    Failed {
        /// The error, as text.
        error: String,
    },
}

impl fmt::Display for RecoverAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finished => f.write_str("finished"),
            Self::Undone => f.write_str("undone"),
            Self::Dropped => f.write_str("dropped (the device is gone)"),
            Self::StillRunning { pid } => write!(f, "still running (process {pid})"),
            Self::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// One recovered intent. JSON: `{"address": "0000:01:00.0", "op": "prepare", "action":
/// "still_running", "pid": 7}` (the action's fields sit beside the address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// The device.
    pub address: String,
    /// The operation that was pending.
    pub op: IntentOp,
    /// What recover did.
    #[serde(flatten)]
    pub action: RecoverAction,
}

impl HostdevManager {
    /// Finishes or undoes every pending intent of a dead process.
    pub fn recover(&mut self) -> Result<Vec<Recovered>, RegistryError> {
        let intents = self.registry.read(|tx| tx.intents())?;
        let mut done = Vec::with_capacity(intents.len());
        for intent in intents {
            let op = intent.op;
            let address = intent.address.clone();
            // A live process (this one included: another thread's manager may be mid-way)
            // is still running its operation. What a live daemon failed to undo waits for
            // its next start.
            if intent.process.is_alive() {
                done.push(Recovered {
                    address,
                    op,
                    action: RecoverAction::StillRunning {
                        pid: intent.process.pid,
                    },
                });
                continue;
            }
            // Take it over, unless another recover did first.
            let stamp = self.stamp;
            let mine = self.registry.write(|tx| {
                let current = tx.intent_for(&intent.address)?;
                Ok::<_, RegistryError>(
                    current.is_some_and(|c| c.id == intent.id && c.process == intent.process)
                        && tx.restamp_intent(intent.id, stamp).is_ok(),
                )
            })?;
            if !mine {
                continue;
            }
            let action = self.recover_one(&intent)?;
            tracing::info!(bdf = %intent.address, %op, %action, "recovered a pending operation");
            done.push(Recovered {
                address,
                op,
                action,
            });
        }
        Ok(done)
    }

    fn recover_one(&mut self, intent: &Intent) -> Result<RecoverAction, RegistryError> {
        let key = intent.address.as_str();
        let Ok(address) = key.parse::<PciAddress>() else {
            self.registry.write(|tx| tx.delete_intent(intent.id))?;
            return Ok(RecoverAction::Dropped);
        };
        let facts = match DeviceFacts::read(&self.sysfs, address) {
            Ok(facts) => facts,
            Err(err) if err.is_not_found() => {
                self.registry.write(|tx| {
                    if intent.op != IntentOp::Prepare {
                        tx.delete_pci_row(key, intent.iommu_group, EventKind::Gone)?;
                    }
                    tx.delete_intent(intent.id)
                })?;
                return Ok(RecoverAction::Dropped);
            }
            Err(err) => return Ok(failed(&err)),
        };
        if matches!(intent.op, IntentOp::Prepare | IntentOp::Detach)
            && intent.step == IntentStep::Reserved
        {
            // Nothing was written to sysfs for it: dropping the intent undoes it.
            self.registry.write(|tx| tx.delete_intent(intent.id))?;
            return Ok(RecoverAction::Undone);
        }
        let current_override = facts.device.driver_override().ok().flatten();
        let overridden = current_override.is_some();
        let on_vfio = facts.kind.is_vfio();
        let (action, rows): (RecoverAction, RowChange) = match intent.op {
            IntentOp::Prepare => {
                if intent.writes_sysfs
                    && (overridden
                        || (on_vfio
                            && intent.original_driver.as_deref() != facts.driver.as_deref()))
                {
                    match facts.device.reattach(intent.original_driver.as_deref()) {
                        Ok(_) => (RecoverAction::Undone, RowChange::None),
                        Err(err) => (failed(&err), RowChange::KeepOnVfio),
                    }
                } else {
                    (RecoverAction::Undone, RowChange::None)
                }
            }
            IntentOp::Release | IntentOp::Reattach => {
                if on_vfio || overridden {
                    match facts.device.reattach(intent.original_driver.as_deref()) {
                        Ok(_) => (RecoverAction::Finished, RowChange::Delete),
                        Err(err) => (failed(&err), RowChange::KeepOnVfio),
                    }
                } else {
                    (RecoverAction::Finished, RowChange::Delete)
                }
            }
            IntentOp::Detach => {
                if on_vfio {
                    (RecoverAction::Finished, RowChange::KeepOnVfio)
                } else if current_override.as_deref() == Some(VFIO_PCI) {
                    match facts.device.set_driver_override(None) {
                        Ok(()) => (RecoverAction::Undone, RowChange::None),
                        Err(err) => (failed(&err), RowChange::None),
                    }
                } else {
                    (RecoverAction::Undone, RowChange::None)
                }
            }
        };
        self.registry.write(|tx| {
            match &rows {
                RowChange::None => {}
                RowChange::Delete => tx.delete_pci_row(key, intent.iommu_group, EventKind::Host)?,
                RowChange::KeepOnVfio => {
                    // Keep the books true: a device left on vfio-pci is on the inactive list.
                    let existing = tx.pci_row(key)?;
                    if existing.as_ref().is_none_or(|r| r.list != List::Active) {
                        tx.put_pci_row(&PciRow {
                            address: key.to_owned(),
                            list: List::Inactive,
                            owner: None,
                            managed: existing.as_ref().map_or(intent.managed, |r| r.managed),
                            original_driver: existing
                                .and_then(|r| r.original_driver)
                                .or_else(|| intent.original_driver.clone()),
                            iommu_group: intent.iommu_group,
                        })?;
                    }
                }
            }
            tx.delete_intent(intent.id)
        })?;
        Ok(action)
    }
}

/// What to do to the device's row once sysfs is settled.
enum RowChange {
    None,
    Delete,
    KeepOnVfio,
}

fn failed(err: &dyn std::error::Error) -> RecoverAction {
    RecoverAction::Failed {
        error: crate::batch::error_chain(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessStamp;
    use crate::registry::List;
    use crate::test_support::*;

    #[test]
    fn a_recovered_intent_is_flat_snake_case_json_and_human_text() {
        let cases = [
            (
                RecoverAction::Finished,
                serde_json::json!({"action": "finished"}),
                "finished",
            ),
            (
                RecoverAction::Undone,
                serde_json::json!({"action": "undone"}),
                "undone",
            ),
            (
                RecoverAction::Dropped,
                serde_json::json!({"action": "dropped"}),
                "dropped (the device is gone)",
            ),
            (
                RecoverAction::StillRunning { pid: 7 },
                serde_json::json!({"action": "still_running", "pid": 7}),
                "still running (process 7)",
            ),
            (
                RecoverAction::Failed {
                    error: "no".to_owned(),
                },
                serde_json::json!({"action": "failed", "error": "no"}),
                "failed: no",
            ),
        ];
        for (action, json, text) in cases {
            assert_eq!(serde_json::to_value(&action).unwrap(), json);
            assert_eq!(action.to_string(), text);
            assert!(!text.contains("StillRunning") && !text.contains("Undone"));
            let recovered = Recovered {
                address: "0000:01:00.0".to_owned(),
                op: IntentOp::Prepare,
                action,
            };
            let mut flat = json.clone();
            flat["address"] = "0000:01:00.0".into();
            flat["op"] = "prepare".into();
            let value = serde_json::to_value(&recovered).unwrap();
            assert_eq!(value, flat);
            assert_eq!(
                serde_json::from_value::<Recovered>(value).unwrap(),
                recovered
            );
        }
    }

    fn intent(address: &str, op: IntentOp, process: ProcessStamp) -> Intent {
        Intent {
            id: 0,
            op,
            address: address.to_owned(),
            original_driver: Some("e1000e".to_owned()),
            owner: Some(owner("qemu/vm1")),
            managed: true,
            writes_sysfs: true,
            iommu_group: Some(1),
            step: IntentStep::Binding,
            process,
        }
    }

    #[test]
    fn intents_of_a_live_process_are_left_alone_and_dead_ones_settled() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let live = ProcessStamp::current();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = ProcessStamp {
            pid: child.id(),
            start: 1,
        };
        child.wait().unwrap();
        // A dead detach that got as far as binding: sysfs says vfio-pci, so it is finished.
        fx.kernel
            .sysfs()
            .pci_device(addr(NIC2))
            .unwrap()
            .bind("vfio-pci")
            .unwrap();
        m.registry()
            .write(|tx| {
                tx.insert_intent(&intent(NIC1, IntentOp::Prepare, live))?;
                tx.insert_intent(&intent(NIC2, IntentOp::Detach, dead))
            })
            .unwrap();
        let done = m.recover().unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.iter().any(
            |r| r.address == NIC1 && r.action == RecoverAction::StillRunning { pid: live.pid }
        ));
        assert!(
            done.iter()
                .any(|r| r.address == NIC2 && r.action == RecoverAction::Finished)
        );
        let listing = m.list().unwrap();
        assert_eq!(listing.pending.len(), 1);
        assert_eq!(listing.pending[0].address, NIC1);
        assert!(listing.pending[0].running);
        assert_eq!(listing.pci.len(), 1);
        assert_eq!(
            (listing.pci[0].address.as_str(), listing.pci[0].list),
            (NIC2, List::Inactive)
        );
        // A vanished device's intent is dropped.
        m.registry()
            .write(|tx| tx.insert_intent(&intent(NIC3, IntentOp::Release, dead)))
            .unwrap();
        fx.unplug(NIC3);
        let done = m.recover().unwrap();
        assert!(
            done.iter()
                .any(|r| r.address == NIC3 && r.action == RecoverAction::Dropped)
        );
    }
}
