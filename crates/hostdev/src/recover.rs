//! `recover`: finish or undo every operation whose process died mid-way, by comparing its
//! journaled intent with what sysfs shows now. Run at daemon start and on demand.
//!
//! | intent   | policy  | what sysfs shows → what recover does |
//! |----------|---------|--------------------------------------|
//! | prepare  | undo    | overridden, on vfio where it was not, or unbound where it had a driver (this prepare moved it) → give it back to the original driver; otherwise nothing. Lists were never touched. |
//! | release  | finish  | gone → drop the row; otherwise give it back to the original driver (whether it is on vfio, overridden **or unbound**: a kill between the unbind and the probe leaves it unbound) and drop the row |
//! | detach   | by fact | on vfio → record inactive (finish); otherwise clear a stale override (undo) |
//! | reattach | finish  | like release |
//!
//! Giving back is `give_back.rs`, the routine release and reattach use. When the original
//! driver does not take the device back, what follows depends on where the device is left:
//! still on vfio-pci → [`RecoverAction::Failed`], the device on the inactive list (the books
//! are true); anywhere else (unbound, another driver) → [`RecoverAction::NeedsAttention`],
//! the device kept on the inactive list so that `list` shows it in
//! [`needs_attention`](crate::Listing::needs_attention) until someone gives it back (`plugboard
//! hostdev reattach`). Never a silent "finished" for a device left without its driver.
//!
//! A prepare or detach intent still at step `reserved` never reached sysfs: it is dropped.
//! Intents of a process that still runs (pid and start time match, not a zombie), this one
//! included, are left alone. Each
//! intent is first taken over (restamped with our process) in a write transaction, so two
//! concurrent `recover`s never work on the same one.

use plugboard_sysfs::{PciAddress, VFIO_PCI};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::DeviceFacts;
use crate::give_back::give_back;
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::manager::HostdevManager;
use crate::registry::{EventKind, List, PciRow, RegistryError};

/// What recover did with one intent.
///
/// JSON (stable, internally tagged): `{"action": "finished"}`, `{"action": "undone"}`,
/// `{"action": "dropped"}`, `{"action": "still_running", "pid": 7}`,
/// `{"action": "failed", "error": "…"}`, `{"action": "needs_attention", "driver": null,
/// "original_driver": "e1000e"}`. [`Recovered`] flattens it beside the address.
/// [`Display`](fmt::Display) prints human words: "finished", "undone", "dropped (the device
/// is gone)", "still running (process 7)", "failed: …", "needs attention: e1000e did not
/// take it back; it has no driver (listed by `plugboard hostdev ls`)".
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
    /// The device could not be given back to its original driver and is not on vfio-pci
    /// either (left unbound, or on another driver): it stays on the inactive list and
    /// [`Listing::needs_attention`](crate::Listing::needs_attention) shows it.
    NeedsAttention {
        /// The driver it is on now (`None`: no driver).
        driver: Option<String>,
        /// The host driver it had before it was taken (`None`: not recorded).
        original_driver: Option<String>,
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
            Self::NeedsAttention {
                driver,
                original_driver,
            } => write!(
                f,
                "needs attention: {} did not take it back; {} (listed by `plugboard hostdev ls`)",
                original_driver.as_deref().unwrap_or("its host driver"),
                match driver {
                    Some(d) => format!("it is on {d}"),
                    None => "it has no driver".to_owned(),
                }
            ),
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
        let original = intent.original_driver.as_deref();
        let (action, rows): (RecoverAction, RowChange) = match intent.op {
            IntentOp::Prepare => {
                // What this prepare may have done: set the override, unbind the host driver,
                // bind vfio-pci (or, rolling back, clear the override and unbind vfio-pci).
                let moved = overridden
                    || (on_vfio && original != facts.driver.as_deref())
                    || (facts.driver.is_none() && original.is_some());
                if intent.writes_sysfs && moved {
                    self.settle(&facts, intent, RecoverAction::Undone, RowChange::None)
                } else {
                    (RecoverAction::Undone, RowChange::None)
                }
            }
            IntentOp::Release | IntentOp::Reattach => {
                self.settle(&facts, intent, RecoverAction::Finished, RowChange::Delete)
            }
            IntentOp::Detach => {
                if on_vfio {
                    (RecoverAction::Finished, RowChange::Keep)
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
                RowChange::Keep => {
                    // Keep the books true: a device left on vfio-pci is on the inactive list,
                    // and so is one its host driver did not take back (needing attention).
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
    /// On the inactive list (unless an owner holds it).
    Keep,
}

impl HostdevManager {
    /// Gives the device of `intent` back to its original driver: `done` and `rows` when
    /// that worked (or the device had no driver to begin with and none took it), otherwise
    /// failed (left on vfio) or needing attention (left elsewhere), on the inactive list.
    fn settle(
        &self,
        facts: &DeviceFacts,
        intent: &Intent,
        done: RecoverAction,
        rows: RowChange,
    ) -> (RecoverAction, RowChange) {
        let original = intent.original_driver.as_deref();
        match give_back(&facts.device, original) {
            Ok(_) => (done, rows),
            Err(err) => {
                let now = facts.device.driver().ok().flatten();
                let on_vfio = facts.device.driver_kind().is_ok_and(|k| k.is_vfio());
                tracing::error!(bdf = %facts.address(), error = %err, driver = ?now,
                    "recover: the original driver did not take the device back; it stays on the inactive list");
                if on_vfio {
                    (failed(&err), RowChange::Keep)
                } else {
                    (
                        RecoverAction::NeedsAttention {
                            driver: now,
                            original_driver: intent.original_driver.clone(),
                        },
                        RowChange::Keep,
                    )
                }
            }
        }
    }
}

fn failed(err: &dyn std::error::Error) -> RecoverAction {
    RecoverAction::Failed {
        error: plugboard_sysfs::error_chain(err),
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
            (
                RecoverAction::NeedsAttention {
                    driver: None,
                    original_driver: Some("e1000e".to_owned()),
                },
                serde_json::json!({"action": "needs_attention", "driver": null, "original_driver": "e1000e"}),
                "needs attention: e1000e did not take it back; it has no driver (listed by `plugboard hostdev ls`)",
            ),
            (
                RecoverAction::NeedsAttention {
                    driver: Some("igb".to_owned()),
                    original_driver: None,
                },
                serde_json::json!({"action": "needs_attention", "driver": "igb", "original_driver": null}),
                "needs attention: its host driver did not take it back; it is on igb (listed by `plugboard hostdev ls`)",
            ),
        ];
        for (action, json, text) in cases {
            assert_eq!(serde_json::to_value(&action).unwrap(), json);
            assert_eq!(action.to_string(), text);
            assert!(
                !text.contains("StillRunning")
                    && !text.contains("Undone")
                    && !text.contains("NeedsAttention")
            );
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

    /// A process that has exited (and been reaped).
    fn dead_stamp() -> ProcessStamp {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = ProcessStamp {
            pid: child.id(),
            start: 1,
        };
        child.wait().unwrap();
        dead
    }

    /// `owner`'s managed `address`, as a release killed after vfio-pci was unbound and
    /// before the host driver was probed leaves it: the row on the inactive list, a
    /// release intent at step `binding` of a dead process, no override, no driver.
    fn release_killed_before_the_probe(fx: &Fixture, m: &mut HostdevManager, address: &str) {
        m.prepare_pci(&owner("qemu/vm1"), &[addr(address)], MANAGED)
            .unwrap();
        let dead = dead_stamp();
        m.registry()
            .write(|tx| {
                let row = tx.pci_row(address)?.unwrap();
                tx.put_pci_row(&PciRow {
                    list: List::Inactive,
                    owner: None,
                    ..row
                })?;
                tx.insert_intent(&intent(address, IntentOp::Release, dead))
            })
            .unwrap();
        let dev = fx.kernel.sysfs().pci_device(addr(address)).unwrap();
        dev.set_driver_override(None).unwrap();
        assert_eq!(dev.unbind().unwrap().as_deref(), Some("vfio-pci"));
        assert_eq!(fx.driver(address), None);
    }

    #[test]
    fn a_release_killed_between_unbind_and_probe_is_finished_on_the_original_driver() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        release_killed_before_the_probe(&fx, &mut m, NIC1);
        let done = m.recover().unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].action, RecoverAction::Finished, "{done:?}");
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
        assert!(books(&mut m).is_empty());
    }

    #[test]
    fn a_release_whose_original_driver_refuses_the_device_needs_attention() {
        let fx = Fixture::with(
            host_spec().driver(plugboard_sysfs::fake::DriverSpec::new("e1000e").fail_probe(NIC1)),
        );
        let mut m = fx.manager();
        release_killed_before_the_probe(&fx, &mut m, NIC1);
        let done = m.recover().unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            done[0].action,
            RecoverAction::NeedsAttention {
                driver: None,
                original_driver: Some("e1000e".to_owned()),
            }
        );
        assert_eq!(fx.driver(NIC1), None);
        // Not silent: the device stays in the books and `ls` says it needs attention.
        let listing = m.list().unwrap();
        assert!(listing.pending.is_empty(), "{listing:?}");
        assert_eq!(
            books(&mut m),
            vec![(NIC1.into(), List::Inactive, None, true)]
        );
        assert_eq!(listing.needs_attention.len(), 1, "{listing:?}");
        assert_eq!(listing.needs_attention[0].address, NIC1);
        assert_eq!(
            listing.needs_attention[0].original_driver.as_deref(),
            Some("e1000e")
        );
        let json = serde_json::to_value(&listing).unwrap();
        assert_eq!(json["needs_attention"][0]["list"], "inactive");
        assert!(json["needs_attention"][0]["driver"].is_null());
    }

    #[test]
    fn a_failed_give_back_left_on_vfio_is_a_failure_with_true_books() {
        // The override cannot be cleared: the device stays on vfio-pci, inactive.
        let fx = Fixture::new();
        let mut m = fx.manager();
        m.prepare_pci(&owner("qemu/vm1"), &[addr(NIC2)], MANAGED)
            .unwrap();
        let dead = dead_stamp();
        m.registry()
            .write(|tx| tx.insert_intent(&intent(NIC2, IntentOp::Release, dead)))
            .unwrap();
        let dev = fx.kernel.sysfs().pci_device(addr(NIC2)).unwrap();
        std::fs::remove_file(dev.attr_path("driver_override")).unwrap();
        let done = m.recover().unwrap();
        assert!(
            matches!(&done[0].action, RecoverAction::Failed { error } if error.contains(NIC2)),
            "{done:?}"
        );
        assert_eq!(fx.driver(NIC2).as_deref(), Some("vfio-pci"));
        assert!(m.list().unwrap().needs_attention.is_empty());
    }

    #[test]
    fn the_intent_of_a_zombie_is_recovered() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        // A child that exited and is not reaped yet: a zombie keeps its /proc entry.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let zombie = ProcessStamp {
            pid,
            start: proc_start(pid).unwrap(),
        };
        let mut polls = 0;
        while proc_state(pid) != Some('Z') {
            polls += 1;
            assert!(polls < 10_000, "{pid} never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A detach it left at step `binding`, vfio-pci bound.
        fx.kernel
            .sysfs()
            .pci_device(addr(NIC2))
            .unwrap()
            .bind("vfio-pci")
            .unwrap();
        m.registry()
            .write(|tx| tx.insert_intent(&intent(NIC2, IntentOp::Detach, zombie)))
            .unwrap();
        assert!(!m.list().unwrap().pending[0].running, "ls: not running");
        let done = m.recover().unwrap();
        child.wait().unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].action, RecoverAction::Finished, "{done:?}");
        // (The test's intents say managed.)
        assert_eq!(
            books(&mut m),
            vec![(NIC2.into(), List::Inactive, None, true)]
        );
    }

    /// Fields 3 and 22 of `/proc/<pid>/stat`.
    fn proc_fields(pid: u32) -> Option<(char, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
        let state = rest.next()?.chars().next()?;
        Some((state, rest.nth(18)?.parse().ok()?))
    }

    fn proc_state(pid: u32) -> Option<char> {
        proc_fields(pid).map(|f| f.0)
    }

    fn proc_start(pid: u32) -> Option<u64> {
        proc_fields(pid).map(|f| f.1)
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
