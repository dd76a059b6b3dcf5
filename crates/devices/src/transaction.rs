//! One attach as one transaction: create or dedupe, count, plug, persist, with one rollback.
//!
//! A caller that keeps the manager's state on disk used to call `new_device`, `attach` and
//! then save, undoing by hand what had been done when a later step failed; when saving
//! failed after the plug, the device stayed plugged and counted while the caller got an
//! error. [`DeviceManager::attach_new`] does it all, in this order:
//!
//! 1. Under the lock, without letting go of it: validate the spec, wait for a device with
//!    the same identity to finish a plug or unplug, take a reference (creating the device
//!    with its first one), then count the attach or plan the plug (taking the block index,
//!    SCSI address and root ports). Nothing else sees a half-made device.
//! 2. For a first attach, plug it with the device marked busy and the lock dropped, as
//!    [`DeviceManager::attach`] does. If the plug fails (or panics), the allocations and the
//!    reference go back under one lock; a device created by this call is gone.
//! 3. Hand the caller's `persist` the state after the plug, as [`DeviceManager::save`] gives
//!    it (it waits for other devices' plugs in flight, so it is never half-done).
//! 4. If persisting fails, undo the attach and the reference: detach (which unplugs it if
//!    no one else attached it meanwhile, and frees its block index and root ports) and drop
//!    the reference (the device goes if this call created it). If that undo fails too, the
//!    error says so and the device stays recorded as it is: attached, counted, plugged.
//!
//! Device ids are never reused: after a rolled-back transaction that created a device, the
//! next device gets a later id than it would have.

use plugboard_vfio::Acquired;

use crate::attach::OnFailure;
use crate::error::DeviceError;
use crate::hypervisor::Hypervisor;
use crate::id::DeviceId;
use crate::kind::DeviceSpec;
use crate::manager::{DeviceManager, NewDevice, normalize, take_reference, validate};
use crate::persist::SavedState;
use crate::state::DeviceState;

/// What [`DeviceManager::attach_new`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDevice {
    /// Whether the device was created by this call or existed (same identity) and gained a
    /// reference; either way, its id.
    pub device: NewDevice,
    /// [`Acquired::First`]: the first attach, so the device was plugged now (a generic device,
    /// which never reaches the hypervisor, is only counted). [`Acquired::Again`]: it was
    /// attached already; this attach was only counted.
    pub attached: Acquired,
    /// The device as it was persisted.
    pub state: DeviceState,
}

impl AttachedDevice {
    /// The device's id.
    #[must_use]
    pub const fn id(&self) -> DeviceId {
        self.device.id()
    }
}

/// Why [`DeviceManager::attach_new`] did not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError<E: std::error::Error + 'static> {
    /// The manager refused or the hypervisor failed to plug; `persist` was not called. The
    /// manager and the VM are as before the call.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Persisting the state after the attach failed, and the attach was undone: unplugged
    /// again if it was plugged now, counts, block index, root ports and SCSI address as
    /// before the call, and a device created by the call gone.
    #[error("saving the state after attaching device {id} failed; the attach was undone")]
    PersistFailed {
        /// The device.
        id: DeviceId,
        /// Why persisting failed.
        #[source]
        persist: E,
    },
    /// Persisting the state after the attach failed, and undoing the attach failed as well:
    /// the device stays in the manager as the attach left it (attached, counted, plugged if
    /// it was plugged now), and the persisted state does not have it. A later
    /// [`DeviceManager::detach`] and [`DeviceManager::remove_device`] can finish the undo.
    #[error(
        "saving the state after attaching device {id} failed, and undoing the attach failed too ({undo}); the device stays attached"
    )]
    PersistFailedUndoFailed {
        /// The device.
        id: DeviceId,
        /// Why persisting failed.
        #[source]
        persist: E,
        /// Why the undo failed (e.g. [`DeviceError::Unplug`]).
        undo: DeviceError,
    },
}

impl<E: std::error::Error + 'static> AttachError<E> {
    /// Whether the manager and the VM are as before the call ([`Self::Device`] and
    /// [`Self::PersistFailed`]); false when the device stayed attached, or when its plug
    /// failed and the VM may still hold part of it ([`DeviceError::PlugIncomplete`]).
    #[must_use]
    pub const fn rolled_back(&self) -> bool {
        !matches!(
            self,
            Self::PersistFailedUndoFailed { .. } | Self::Device(DeviceError::PlugIncomplete { .. })
        )
    }
}

impl<H: Hypervisor> DeviceManager<H> {
    /// Creates the device of `spec` (or references the existing one with its identity),
    /// attaches it (the first attach plugs it), and persists the state with `persist`, as one
    /// transaction: on any failure everything it did is undone. See the module
    /// documentation for the steps.
    ///
    /// `persist` gets the whole state after the plug, as [`Self::save`] gives it; it is not
    /// called when the attach itself fails.
    ///
    /// # Errors
    /// [`AttachError::Device`] with what [`Self::new_device`] or [`Self::attach`] refuse
    /// ([`DeviceError::Conflict`], [`DeviceError::TooManyAttachments`], an allocator error,
    /// [`DeviceError::Plug`], …); [`AttachError::PersistFailed`] when `persist` fails
    /// (everything undone); [`AttachError::PersistFailedUndoFailed`] when the undo fails too.
    pub fn attach_new<E>(
        &self,
        spec: DeviceSpec,
        persist: impl FnOnce(&SavedState) -> Result<(), E>,
    ) -> Result<AttachedDevice, AttachError<E>>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let spec = normalize(spec);
        validate(&spec)?;
        let mut books = self.lock();
        // A device with this identity that is being plugged or unplugged is counted after
        // that is done, as `attach` waits for it.
        while books
            .by_identity
            .get(&spec.identity)
            .and_then(|id| books.devices.get(id))
            .is_some_and(|entry| entry.busy)
        {
            books = self.wait(books);
        }
        let device = take_reference(&mut books, spec)?;
        let id = device.id();
        let attached = self.attach_locked(books, id, OnFailure::DropReference)?;

        let saved = self.save();
        let Some(state) = saved.devices.iter().find(|d| d.id == id).cloned() else {
            // Only if another caller removed a reference it did not hold.
            return Err(DeviceError::NotFound { id }.into());
        };
        match persist(&saved) {
            Ok(()) => Ok(AttachedDevice {
                device,
                attached,
                state,
            }),
            Err(persist) => {
                tracing::warn!(device = %id, error = %persist, "saving after an attach failed; undoing the attach");
                match self.undo_attach(id) {
                    Ok(()) => Err(AttachError::PersistFailed { id, persist }),
                    Err(undo) => {
                        tracing::error!(device = %id, error = %undo, "undoing an attach whose state was not saved failed; the device stays attached");
                        Err(AttachError::PersistFailedUndoFailed { id, persist, undo })
                    }
                }
            }
        }
    }

    /// Takes back one attach and one reference of `id`: the last detach unplugs it, the last
    /// reference removes it.
    fn undo_attach(&self, id: DeviceId) -> Result<(), DeviceError> {
        self.detach(id)?;
        self.remove_device(id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::ManagerConfig;
    use crate::hypervisor::PlugRequest;
    use crate::kind::{BlockDriver, VhostUserDevice};
    use crate::plan::Allocations;
    use crate::test_util::{
        HypervisorOp, InMemoryHypervisor, block_spec, generic_spec, vfio_spec, vhost_user_spec,
    };

    type Manager = DeviceManager<Arc<InMemoryHypervisor>>;

    fn manager() -> Manager {
        DeviceManager::new(
            Arc::new(InMemoryHypervisor::new()),
            ManagerConfig {
                root_ports: 4,
                name_offset: 0,
            },
        )
    }

    type Snapshot = (
        Vec<DeviceState>,
        Allocations,
        BTreeMap<DeviceId, PlugRequest>,
    );

    fn snapshot(m: &Manager) -> Snapshot {
        (m.devices(), m.allocations(), m.hypervisor().plugged())
    }

    fn ops(m: &Manager) -> Vec<HypervisorOp> {
        m.hypervisor().calls().iter().map(|c| c.op).collect()
    }

    /// What the test's persist step fails with.
    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct DiskFull;

    fn saved_ok(_: &SavedState) -> Result<(), DiskFull> {
        Ok(())
    }

    fn disk_full(_: &SavedState) -> Result<(), DiskFull> {
        Err(DiskFull)
    }

    fn never_called(_: &SavedState) -> Result<(), DiskFull> {
        panic!("persist must not be called when the attach fails")
    }

    /// Issue 17, item 1: a plug whose undo did not finish (the guest never let go of the
    /// first function of a group when the second failed) used to be booked as a clean
    /// rollback: ports freed, device gone, while the VM still held a function on a port.
    /// Now the device stays, recorded as needing cleanup, its ports taken, saved and loaded
    /// as such, and not removable until the cleanup has run.
    #[test]
    fn a_plug_whose_undo_did_not_finish_is_recorded_and_cleaned_up_later() {
        let m = manager();
        let spec = vfio_spec(7, &[true, true]);
        m.hypervisor().fail_next_incomplete();
        let err = m.attach_new(spec.clone(), never_called).unwrap_err();
        assert!(
            matches!(err, AttachError::Device(DeviceError::PlugIncomplete { .. })),
            "{err}"
        );
        assert!(!err.rolled_back());
        let id = m
            .find(&spec.identity)
            .expect("the device stays in the books");
        let state = m.device(id).unwrap();
        assert!(state.attachments.is_zero());
        let leftover = state.needs_cleanup.expect("recorded as needing cleanup");
        assert!(leftover.holds_reference);
        assert_eq!(leftover.request.ports().len(), 2);
        assert_eq!(
            m.allocations().root_ports,
            leftover.request.ports(),
            "ports stay taken"
        );
        assert!(m.hypervisor().is_plugged(id), "the VM still holds it");
        assert_eq!(m.needing_cleanup(), [id]);
        assert!(matches!(
            m.remove_device(id),
            Err(DeviceError::NeedsCleanup { .. })
        ));
        // Saved and loaded as it is.
        let saved = m.save();
        let json = saved.to_json().unwrap();
        assert!(json.contains("needs_cleanup"), "{json}");
        let loaded = DeviceManager::load(
            Arc::clone(m.hypervisor()),
            SavedState::from_json(&json).unwrap(),
        )
        .unwrap();
        assert_eq!(loaded.save(), saved);
        // A cleanup that fails leaves it as it is.
        m.hypervisor().fail_next(HypervisorOp::HotplugRemove);
        assert!(matches!(m.clean_up(id), Err(DeviceError::Cleanup { .. })));
        assert_eq!(m.needing_cleanup(), [id]);
        // The cleanup removes it from the VM, frees the ports and drops the reference the
        // failed attach kept: the device it created is gone.
        assert!(m.clean_up(id).unwrap());
        assert!(m.device(id).is_none());
        assert!(m.hypervisor().plugged().is_empty());
        assert_eq!(m.allocations(), Allocations::default());
        assert!(!m.clean_up(DeviceId::from_raw(99)).unwrap_or(false));
    }

    #[test]
    fn attaching_a_device_that_needs_cleanup_cleans_up_first() {
        let m = manager();
        let spec = vfio_spec(8, &[true, false]);
        m.hypervisor().fail_next_incomplete();
        m.attach_new(spec.clone(), never_called).unwrap_err();
        let attached = m.attach_new(spec, saved_ok).unwrap();
        assert_eq!(attached.attached, Acquired::First);
        assert_eq!(
            ops(&m),
            [
                HypervisorOp::HotplugAdd,
                HypervisorOp::HotplugRemove,
                HypervisorOp::HotplugAdd
            ]
        );
        let state = m.device(attached.id()).unwrap();
        assert_eq!(
            state.references.get(),
            1,
            "the failed attach's reference is gone"
        );
        assert!(state.needs_cleanup.is_none());
        assert_eq!(m.allocations().root_ports.len(), 2);
        m.detach(attached.id()).unwrap();
        assert_eq!(
            m.remove_device(attached.id()).unwrap(),
            crate::manager::Removed::Gone
        );
        assert_eq!(m.allocations(), Allocations::default());
    }

    #[test]
    fn attaches_and_persists_the_state_after_the_plug() {
        let m = manager();
        let seen = Mutex::new(None);
        let first = m
            .attach_new(block_spec(0, BlockDriver::VirtioScsi), |saved| {
                *seen.lock().unwrap() = Some(saved.clone());
                Ok::<_, DiskFull>(())
            })
            .unwrap();
        assert!(matches!(first.device, NewDevice::Created(_)));
        assert_eq!(first.attached, Acquired::First);
        let id = first.id();
        assert!(m.hypervisor().is_plugged(id));
        // What was persisted is the state after the plug, and the answer is that device.
        let saved = seen.lock().unwrap().take().unwrap();
        assert_eq!(saved, m.save());
        assert_eq!(saved.devices, std::slice::from_ref(&first.state));
        assert!(first.state.plugged.is_some());
        assert_eq!(
            first.state.guest.unwrap().scsi_address.unwrap().to_string(),
            "0:0"
        );
        assert_eq!(first.state.attachments.get(), 1);

        // The same device again: a reference and an attachment more, no second plug.
        let again = m
            .attach_new(block_spec(0, BlockDriver::VirtioScsi), saved_ok)
            .unwrap();
        assert_eq!(again.device, NewDevice::Existing(id));
        assert_eq!(again.attached, Acquired::Again);
        assert_eq!(
            (again.state.references.get(), again.state.attachments.get()),
            (2, 2)
        );
        assert_eq!(ops(&m), [HypervisorOp::HotplugAdd]);
    }

    /// The fault test: persisting fails after a successful plug. The device is
    /// unplugged again, counts and allocators are as before, and the caller gets one error.
    #[test]
    fn a_failed_persist_after_a_plug_unplugs_and_restores_everything() {
        let m = manager();
        // Something else attached, so "as before" is not just "empty".
        let other = m
            .attach_new(block_spec(9, BlockDriver::VirtioBlk), saved_ok)
            .unwrap()
            .id();
        let kinds = [
            block_spec(0, BlockDriver::VirtioBlk),
            block_spec(1, BlockDriver::VirtioScsi),
            vfio_spec(5, &[true, false]),
            vhost_user_spec(
                "/run/b.sock",
                VhostUserDevice::Blk {
                    driver: BlockDriver::VirtioBlk,
                },
            ),
            generic_spec("/dev/fuse", 10, 229),
        ];
        for spec in kinds {
            let before = snapshot(&m);
            let next_id_before = m.save().next_id;
            m.hypervisor().clear_calls();
            let seen = Mutex::new(None);
            let err = m
                .attach_new(spec.clone(), |saved| {
                    *seen.lock().unwrap() = Some(saved.clone());
                    Err(DiskFull)
                })
                .unwrap_err();
            let id = DeviceId::from_raw(next_id_before);
            assert!(
                matches!(&err, AttachError::PersistFailed { id: e, persist: DiskFull } if *e == id),
                "{err:?}"
            );
            assert!(err.rolled_back());
            assert_eq!(
                err.to_string(),
                format!(
                    "saving the state after attaching device {id} failed; the attach was undone"
                )
            );
            assert_eq!(
                std::error::Error::source(&err).unwrap().to_string(),
                "disk full"
            );
            // Persist saw the device attached (and plugged, unless generic).
            let seen = seen.lock().unwrap().take().unwrap();
            let in_saved = seen.devices.iter().find(|d| d.id == id).unwrap();
            assert_eq!(in_saved.attachments.get(), 1);
            let generic = matches!(spec.kind, crate::kind::DeviceKind::Generic(_));
            assert_eq!(in_saved.plugged.is_some(), !generic);
            // Unplugged again: the call log shows the plug and its undo.
            if generic {
                assert!(ops(&m).is_empty());
            } else {
                assert_eq!(
                    ops(&m),
                    [HypervisorOp::HotplugAdd, HypervisorOp::HotplugRemove]
                );
            }
            assert!(!m.hypervisor().is_plugged(id));
            assert_eq!(snapshot(&m), before, "{spec:?}");
            assert!(m.device(id).is_none());
            assert!(m.find(&spec.identity).is_none());
            // And it attaches cleanly afterwards, with the allocations it would have had.
            let ok = m.attach_new(spec, saved_ok).unwrap();
            assert_eq!(ok.attached, Acquired::First);
            m.detach(ok.id()).unwrap();
            m.remove_device(ok.id()).unwrap();
            assert_eq!(snapshot(&m), before);
        }
        assert!(m.is_attached(other));
    }

    #[test]
    fn a_failed_persist_of_a_counted_attach_only_counts_back() {
        let m = manager();
        let id = m
            .attach_new(block_spec(0, BlockDriver::VirtioBlk), saved_ok)
            .unwrap()
            .id();
        let before = snapshot(&m);
        m.hypervisor().clear_calls();
        let err = m
            .attach_new(block_spec(0, BlockDriver::VirtioBlk), |saved| {
                let d = saved.devices.iter().find(|d| d.id == id).unwrap();
                assert_eq!((d.references.get(), d.attachments.get()), (2, 2));
                Err(DiskFull)
            })
            .unwrap_err();
        assert!(matches!(err, AttachError::PersistFailed { id: e, .. } if e == id));
        assert_eq!(snapshot(&m), before);
        let state = m.device(id).unwrap();
        assert_eq!((state.references.get(), state.attachments.get()), (1, 1));
        assert!(ops(&m).is_empty(), "nothing unplugged: {:?}", ops(&m));
        assert!(m.hypervisor().is_plugged(id));
    }

    #[test]
    fn a_failed_persist_of_an_existing_unattached_device_unplugs_and_keeps_it() {
        let m = manager();
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        let before = snapshot(&m);
        let err = m
            .attach_new(block_spec(0, BlockDriver::VirtioBlk), disk_full)
            .unwrap_err();
        assert!(matches!(err, AttachError::PersistFailed { .. }));
        assert_eq!(snapshot(&m), before);
        assert_eq!(m.device(id).unwrap().references.get(), 1);
        assert_eq!(
            ops(&m),
            [HypervisorOp::HotplugAdd, HypervisorOp::HotplugRemove]
        );
    }

    #[test]
    fn a_failed_undo_is_reported_and_the_device_stays_recorded() {
        let m = manager();
        m.hypervisor().fail_next(HypervisorOp::HotplugRemove);
        let err = m
            .attach_new(block_spec(0, BlockDriver::VirtioBlk), disk_full)
            .unwrap_err();
        let AttachError::PersistFailedUndoFailed { id, persist, undo } = &err else {
            panic!("not an undo failure: {err:?}");
        };
        assert!(matches!(persist, DiskFull));
        assert!(matches!(undo, DeviceError::Unplug { id: u, .. } if u == id));
        assert!(!err.rolled_back());
        let message = err.to_string();
        assert!(
            message.contains("undoing the attach failed too"),
            "{message}"
        );
        assert!(message.contains("stays attached"), "{message}");
        // Not silently dropped: the device is there as the attach left it, and plugged.
        let state = m.device(*id).unwrap();
        assert_eq!((state.references.get(), state.attachments.get()), (1, 1));
        assert!(state.plugged.is_some());
        assert!(m.hypervisor().is_plugged(*id));
        assert_eq!(m.allocations().block_indexes.len(), 1);
        // The undo can be finished by hand.
        m.detach(*id).unwrap();
        m.remove_device(*id).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.allocations(), Allocations::default());
    }

    #[test]
    fn a_failed_plug_rolls_back_as_before_and_persists_nothing() {
        let m = manager();
        m.attach_new(block_spec(9, BlockDriver::VirtioBlk), saved_ok)
            .unwrap();
        for spec in [
            block_spec(0, BlockDriver::VirtioBlk),
            block_spec(1, BlockDriver::VirtioScsi),
            vfio_spec(5, &[true, true]),
        ] {
            let before = snapshot(&m);
            m.hypervisor().fail_next(HypervisorOp::HotplugAdd);
            let err = m.attach_new(spec.clone(), never_called).unwrap_err();
            assert!(
                matches!(err, AttachError::Device(DeviceError::Plug { .. })),
                "{err:?}"
            );
            assert!(err.rolled_back());
            assert_eq!(snapshot(&m), before);
            assert!(
                m.find(&spec.identity).is_none(),
                "the created device is gone"
            );
        }
        // An existing device whose plug fails keeps its other reference, unattached.
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        let before = snapshot(&m);
        m.hypervisor().fail_next(HypervisorOp::HotplugAdd);
        m.attach_new(block_spec(0, BlockDriver::VirtioBlk), never_called)
            .unwrap_err();
        assert_eq!(snapshot(&m), before);
        assert_eq!(m.device(id).unwrap().references.get(), 1);
    }

    #[test]
    fn refusals_change_nothing_and_persist_nothing() {
        let m = DeviceManager::new(
            Arc::new(InMemoryHypervisor::new()),
            ManagerConfig {
                root_ports: 1,
                name_offset: 0,
            },
        );
        let id = m
            .attach_new(block_spec(0, BlockDriver::VirtioBlk), saved_ok)
            .unwrap()
            .id();
        let before = snapshot(&m);
        // Same identity, different spec.
        let err = m
            .attach_new(block_spec(0, BlockDriver::VirtioScsi), never_called)
            .unwrap_err();
        assert!(matches!(
            err,
            AttachError::Device(DeviceError::Conflict { .. })
        ));
        // Every root port taken: the planner refuses after the device was created.
        let err = m
            .attach_new(block_spec(1, BlockDriver::VirtioBlk), never_called)
            .unwrap_err();
        assert!(
            matches!(err, AttachError::Device(DeviceError::RootPort { .. })),
            "{err:?}"
        );
        // An invalid spec.
        let mut vfio = vfio_spec(3, &[true]);
        if let crate::kind::DeviceKind::Vfio(v) = &mut vfio.kind {
            v.functions.clear();
        }
        let err = m.attach_new(vfio, never_called).unwrap_err();
        assert!(matches!(
            err,
            AttachError::Device(DeviceError::InvalidVfio { .. })
        ));
        assert_eq!(snapshot(&m), before);
        assert_eq!(m.device(id).unwrap().references.get(), 1);
    }

    #[test]
    fn waits_for_a_plug_of_the_same_device_in_flight() {
        let m = Arc::new(manager());
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        m.hypervisor().hold(HypervisorOp::HotplugAdd);
        let plugging = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.attach(id))
        };
        m.hypervisor().wait_for_held_calls(1);
        let counting = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                m.attach_new(block_spec(0, BlockDriver::VirtioBlk), saved_ok)
            })
        };
        m.hypervisor().release(HypervisorOp::HotplugAdd);
        assert_eq!(plugging.join().unwrap().unwrap(), Acquired::First);
        let counted = counting.join().unwrap().unwrap();
        assert_eq!(counted.device, NewDevice::Existing(id));
        assert_eq!(counted.attached, Acquired::Again);
        assert_eq!(ops(&m), [HypervisorOp::HotplugAdd]);
        assert_eq!(m.device(id).unwrap().attachments.get(), 2);
    }
}
