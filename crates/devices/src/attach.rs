//! Attach and detach: count every time, reach the hypervisor only on the first attach and
//! the last detach, and roll back everything on failure.
//!
//! A first attach plans the plug under the lock (taking the block index and root ports),
//! marks the device busy, drops the lock, calls the hypervisor, and books the answer: on
//! success the attach count becomes 1 and the request and guest view are kept; on failure
//! the allocations go back and the count stays 0. A last detach is the mirror image. A
//! [`Busy`] guard clears the mark (and gives back the allocations of a plug that never
//! finished) even if the hypervisor call panics, so waiters are never stranded.
//! [`DeviceManager::attach_new`] (in `transaction.rs`) attaches through the same path and
//! has the guard give back the reference it took as well, under the same lock.
//!
//! Two answers of the hypervisor change the books on purpose, and say so: a plug it could
//! not undo ([`HypervisorError::Incomplete`]) keeps its allocations and marks the device as
//! needing cleanup (`cleanup.rs`; the next attach cleans up first), and a cold-plugged
//! device the running VM cannot remove ([`HypervisorError::NotRemovable`]) is detached by
//! count only and stays in the VM until it stops ([`crate::DeviceState::resident`]).

use std::sync::MutexGuard;

use plugboard_vfio::{Acquired, Released};

use crate::error::DeviceError;
use crate::hypervisor::{Hypervisor, HypervisorError, PlugRequest};
use crate::id::DeviceId;
use crate::kind::PlugMode;
use crate::manager::{DeviceManager, drop_reference};
use crate::state::{Books, Leftover};

impl<H: Hypervisor> DeviceManager<H> {
    /// Attaches a device: the first attach plugs it (hot or cold, per its spec), later ones
    /// only count. Kata's `AttachDevice`.
    ///
    /// # Errors
    /// [`DeviceError::NotFound`]; [`DeviceError::TooManyAttachments`]; an allocator error
    /// ([`DeviceError::BlockIndex`], [`DeviceError::RootPort`], …); [`DeviceError::Plug`]
    /// when the hypervisor refuses. On every error the manager and the VM are as before.
    pub fn attach(&self, id: DeviceId) -> Result<Acquired, DeviceError> {
        let books = self.lock_idle(id)?;
        self.attach_locked(books, id, OnFailure::Keep)
    }

    /// [`Self::attach`] of `id`, idle in the locked `books`. On failure it also does what
    /// `on_failure` says, under the same lock as the rest of the rollback, so nobody sees a
    /// device that is half rolled back.
    pub(crate) fn attach_locked(
        &self,
        books: MutexGuard<'_, Books>,
        id: DeviceId,
        on_failure: OnFailure,
    ) -> Result<Acquired, DeviceError> {
        // What an earlier failed plug left in the VM goes first: its allocations are still
        // taken, and the VM may hold objects of the device's names.
        let (mut books, cleaned) = self.clean_up_locked(books, id);
        self.idle.notify_all();
        if let Err(e) = cleaned {
            on_failure.undo(&mut books, id);
            return Err(e);
        }
        let books_ref = &mut *books;
        let request = match count_or_plan(books_ref, id) {
            Ok(Planned::Counted(step)) => return Ok(step),
            Ok(Planned::Plug(request)) => request,
            Err(e) => {
                on_failure.undo(books_ref, id);
                return Err(e);
            }
        };
        books.set_busy(id, true);
        drop(books);

        let busy = Busy {
            manager: self,
            id,
            planned: Some(&request),
            on_failure,
        };
        let result = match request.mode {
            PlugMode::Hot => self.hypervisor.hotplug_add(&request),
            PlugMode::Cold => self.hypervisor.coldplug(&request),
        };
        let guest = match result {
            Ok(guest) => guest,
            Err(source @ HypervisorError::Incomplete { .. }) => {
                // The VM may still hold part of the device: keep its allocations (a port
                // the VM still uses is not free) and the device itself, and say so.
                let mut books = busy.finish();
                if let Some(entry) = books.devices.get_mut(&id) {
                    entry.state.needs_cleanup = Some(Leftover {
                        request: request.clone(),
                        holds_reference: on_failure == OnFailure::DropReference,
                    });
                }
                drop(books);
                self.idle.notify_all();
                tracing::error!(device = %id, error = %source, "plug failed and its undo did not finish; the device is recorded as needing cleanup, its allocations stay taken");
                return Err(DeviceError::PlugIncomplete { id, source });
            }
            Err(source) => {
                tracing::warn!(device = %id, error = %source, "plug failed; allocations given back");
                drop(busy);
                return Err(DeviceError::Plug { id, source });
            }
        };
        let mut books = busy.finish();
        if let Some(entry) = books.devices.get_mut(&id) {
            let _: Result<Acquired, _> = entry.state.attachments.acquire();
            tracing::info!(device = %id, mode = ?request.mode, "device plugged; detach it to unplug");
            entry.state.plugged = Some(request);
            entry.state.guest = Some(guest);
        }
        drop(books);
        self.idle.notify_all();
        Ok(Acquired::First)
    }

    /// Detaches a device: the last detach unplugs it and frees its block index and root
    /// ports, earlier ones only count. Kata's `DetachDevice`.
    ///
    /// # Errors
    /// [`DeviceError::NotFound`]; [`DeviceError::NotAttached`] when the count is 0;
    /// [`DeviceError::Unplug`] when the hypervisor refuses (the device stays attached). On
    /// every error the manager and the VM are as before.
    pub fn detach(&self, id: DeviceId) -> Result<Released, DeviceError> {
        let mut books = self.lock_idle(id)?;
        let state = &mut books.entry_mut(id)?.state;
        let step = state
            .attachments
            .peek_release()
            .map_err(|_| DeviceError::NotAttached { id })?;
        let request = match (step, &state.plugged) {
            (Released::Last, Some(request)) => request.clone(),
            // Not the last detach, or a generic device: counting is all there is.
            (Released::StillUsed, _) | (Released::Last, None) => {
                let _: Result<Released, _> = state.attachments.release();
                return Ok(step);
            }
        };
        books.set_busy(id, true);
        drop(books);

        let busy = Busy {
            manager: self,
            id,
            planned: None,
            on_failure: OnFailure::Keep,
        };
        match self.hypervisor.hotplug_remove(&request) {
            Ok(()) => {}
            // A cold device the running VM cannot take out: Kata's rule, the detach only
            // counts down, and the device stays in the VM (allocations and all) until it
            // stops.
            Err(HypervisorError::NotRemovable { .. }) if request.mode == PlugMode::Cold => {
                let mut books = busy.finish();
                if let Some(entry) = books.devices.get_mut(&id) {
                    let _: Result<Released, _> = entry.state.attachments.release();
                    entry.state.resident = true;
                }
                drop(books);
                self.idle.notify_all();
                tracing::info!(device = %id, "cold-plugged device detached; the running VM cannot remove it, so it stays there until the VM stops");
                return Ok(Released::Last);
            }
            Err(source) => {
                tracing::warn!(device = %id, error = %source, "unplug failed; device stays attached");
                drop(busy);
                return Err(DeviceError::Unplug { id, source });
            }
        }
        let mut books = busy.finish();
        if let Some(entry) = books.devices.get_mut(&id) {
            let _: Result<Released, _> = entry.state.attachments.release();
            entry.state.plugged = None;
            entry.state.guest = None;
        }
        if let Err(e) = books.alloc.release(&request) {
            tracing::error!(device = %id, error = %e, "freeing the allocations of an unplugged device failed");
        }
        tracing::info!(device = %id, "device unplugged");
        drop(books);
        self.idle.notify_all();
        Ok(Released::Last)
    }
}

/// What an attach does under the lock before any hypervisor call.
enum Planned {
    /// Counting was all there was (a later attach, or a generic device): done.
    Counted(Acquired),
    /// The first attach of a pluggable device: its allocations are taken for this request.
    Plug(PlugRequest),
}

/// Counts a later attach (or a generic device's first), or plans the first plug. Nothing
/// changes on error.
fn count_or_plan(books: &mut Books, id: DeviceId) -> Result<Planned, DeviceError> {
    let entry = books
        .devices
        .get_mut(&id)
        .ok_or(DeviceError::NotFound { id })?;
    let state = &mut entry.state;
    let step = state
        .attachments
        .peek_acquire()
        .map_err(|_| DeviceError::TooManyAttachments { id })?;
    if step == Acquired::Again {
        let _: Result<Acquired, _> = state.attachments.acquire();
        return Ok(Planned::Counted(Acquired::Again));
    }
    if state.resident {
        // Still in the VM since its last detach: counting is all there is, and no plug
        // happens now.
        let _: Result<Acquired, _> = state.attachments.acquire();
        state.resident = false;
        return Ok(Planned::Counted(Acquired::Again));
    }
    let Some(request) = books.alloc.plan(id, &state.spec)? else {
        // A generic device: counting is all there is.
        let _: Result<Acquired, _> = state.attachments.acquire();
        return Ok(Planned::Counted(Acquired::First));
    };
    Ok(Planned::Plug(request))
}

/// What a failed attach gives back besides its own steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Nothing.
    Keep,
    /// The reference the caller took for this attach ([`DeviceManager::attach_new`]): the
    /// device goes if it was the last one.
    DropReference,
}

impl OnFailure {
    fn undo(self, books: &mut Books, id: DeviceId) {
        if self == Self::DropReference
            && let Err(e) = drop_reference(books, id)
        {
            // Cannot happen: the reference was taken under the lock that is held (or the device
            // was busy) ever since, so nobody attached or removed the device meanwhile.
            tracing::error!(device = %id, error = %e, "dropping the reference of a failed attach failed");
        }
    }
}

/// A device marked busy while the hypervisor works on it. Dropping it (error or panic)
/// clears the mark and gives back `planned` allocations; [`Busy::finish`] clears the mark and
/// hands over the locked books for booking a success.
pub(crate) struct Busy<'m, 'r, H: Hypervisor> {
    pub(crate) manager: &'m DeviceManager<H>,
    pub(crate) id: DeviceId,
    /// The allocations of a plug, to give back if it does not finish.
    pub(crate) planned: Option<&'r PlugRequest>,
    /// What else a plug that does not finish gives back.
    pub(crate) on_failure: OnFailure,
}

impl<'m, H: Hypervisor> Busy<'m, '_, H> {
    pub(crate) fn finish(mut self) -> MutexGuard<'m, Books> {
        self.planned = None;
        let mut books = self.manager.lock();
        books.set_busy(self.id, false);
        std::mem::forget(self);
        books
    }
}

impl<H: Hypervisor> Drop for Busy<'_, '_, H> {
    fn drop(&mut self) {
        let mut books = self.manager.lock();
        if let Some(request) = self.planned {
            if let Err(e) = books.alloc.release(request) {
                tracing::error!(device = %self.id, error = %e, "giving back the allocations of a failed plug failed");
            }
            self.on_failure.undo(&mut books, self.id);
        }
        books.set_busy(self.id, false);
        drop(books);
        self.manager.idle.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::ManagerConfig;
    use crate::hypervisor::Plug;
    use crate::kind::{BlockDriver, MacAddress, VhostUserDevice};
    use crate::manager::NewDevice;
    use crate::plan::Allocations;
    use crate::ports::RootPort;
    use crate::state::DeviceState;
    use crate::test_util::{
        HypervisorOp, InMemoryHypervisor, block_spec, generic_spec, image_spec, vfio_spec,
        vhost_user_spec,
    };

    type Manager = DeviceManager<Arc<InMemoryHypervisor>>;

    fn manager(config: ManagerConfig) -> Manager {
        DeviceManager::new(Arc::new(InMemoryHypervisor::new()), config)
    }

    type Snapshot = (
        Vec<DeviceState>,
        Allocations,
        BTreeMap<DeviceId, PlugRequest>,
    );

    fn snapshot(m: &Manager) -> Snapshot {
        (m.devices(), m.allocations(), m.hypervisor().plugged())
    }

    fn new(m: &Manager, spec: crate::kind::DeviceSpec) -> DeviceId {
        m.new_device(spec).unwrap().id()
    }

    fn ops(m: &Manager) -> Vec<HypervisorOp> {
        m.hypervisor().calls().iter().map(|c| c.op).collect()
    }

    #[test]
    fn only_first_attach_and_last_detach_reach_the_hypervisor() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        assert_eq!(m.attach(id).unwrap(), Acquired::First);
        assert_eq!(m.attach(id).unwrap(), Acquired::Again);
        assert_eq!(m.attach(id).unwrap(), Acquired::Again);
        assert_eq!(ops(&m), [HypervisorOp::HotplugAdd]);
        assert_eq!(m.detach(id).unwrap(), Released::StillUsed);
        assert_eq!(m.detach(id).unwrap(), Released::StillUsed);
        assert!(m.hypervisor().is_plugged(id));
        assert_eq!(m.detach(id).unwrap(), Released::Last);
        assert_eq!(
            ops(&m),
            [HypervisorOp::HotplugAdd, HypervisorOp::HotplugRemove]
        );
        assert!(!m.is_attached(id));
        assert!(m.hypervisor().plugged().is_empty());
        assert_eq!(m.allocations(), Allocations::default());
    }

    #[test]
    fn detach_of_an_unattached_device_changes_nothing() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        let before = snapshot(&m);
        assert!(matches!(m.detach(id), Err(DeviceError::NotAttached { .. })));
        assert_eq!(snapshot(&m), before);
        let unknown = DeviceId::from_raw(99);
        assert!(matches!(
            m.detach(unknown),
            Err(DeviceError::NotFound { .. })
        ));
        assert!(matches!(
            m.attach(unknown),
            Err(DeviceError::NotFound { .. })
        ));
        assert!(!m.is_attached(unknown));
    }

    #[test]
    fn attach_overflow_changes_nothing() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        m.attach(id).unwrap();
        if let Some(e) = m.lock().devices.get_mut(&id) {
            e.state.attachments = plugboard_vfio::RefCount::from_raw(u32::MAX);
        }
        let before = snapshot(&m);
        assert!(matches!(
            m.attach(id),
            Err(DeviceError::TooManyAttachments { .. })
        ));
        assert_eq!(snapshot(&m), before);
    }

    #[test]
    fn generic_devices_only_count() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let id = new(&m, generic_spec("/dev/fuse", 10, 229));
        assert_eq!(m.attach(id).unwrap(), Acquired::First);
        assert!(m.is_attached(id));
        assert_eq!(m.detach(id).unwrap(), Released::Last);
        assert!(m.hypervisor().calls().is_empty());
    }

    fn block_plug(m: &Manager, id: DeviceId) -> crate::hypervisor::BlockPlug {
        match m.device(id).unwrap().plugged.unwrap().plug {
            Plug::Block(b) => b,
            other => panic!("not a block plug: {other:?}"),
        }
    }

    #[test]
    fn block_indexes_names_and_scsi_addresses() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let a = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        let b = new(&m, block_spec(1, BlockDriver::VirtioBlk));
        let c = new(&m, block_spec(2, BlockDriver::VirtioScsi));
        let d = new(&m, block_spec(3, BlockDriver::Nvdimm));
        for id in [a, b, c, d] {
            m.attach(id).unwrap();
        }
        let (pa, pb, pc, pd) = (
            block_plug(&m, a),
            block_plug(&m, b),
            block_plug(&m, c),
            block_plug(&m, d),
        );
        assert_eq!(
            (pa.index.get(), pa.drive_name.unwrap().as_str()),
            (0, "vda")
        );
        assert_eq!(
            (pb.index.get(), pb.drive_name.unwrap().as_str()),
            (1, "vdb")
        );
        assert_eq!(pc.index.get(), 2);
        assert_eq!(pc.drive_name, None);
        assert_eq!(pc.scsi_address.unwrap().to_string(), "0:2");
        assert_eq!(
            (pd.index.get(), pd.drive_name, pd.scsi_address),
            (3, None, None)
        );
        assert_eq!(pa.name_id, format!("drive-{a}"));
        // The guest view is what the hypervisor answered.
        let guest = m.device(c).unwrap().guest.unwrap();
        assert_eq!(guest.scsi_address.unwrap().to_string(), "0:2");
        // Lowest free is reused.
        m.detach(b).unwrap();
        m.detach(a).unwrap();
        let e = new(&m, block_spec(4, BlockDriver::VirtioBlk));
        m.attach(e).unwrap();
        assert_eq!(block_plug(&m, e).index.get(), 0);
        m.attach(b).unwrap();
        assert_eq!(block_plug(&m, b).index.get(), 1);
    }

    #[test]
    fn name_offset_changes_the_name_not_the_index() {
        let m = manager(ManagerConfig {
            name_offset: 1,
            ..crate::test_util::EIGHT_PORTS
        });
        let id = new(&m, image_spec("/img/a", BlockDriver::VirtioMmio));
        m.attach(id).unwrap();
        let p = block_plug(&m, id);
        assert_eq!((p.index.get(), p.drive_name.unwrap().as_str()), (0, "vdb"));
        assert_eq!(p.port, None, "virtio-mmio is not PCI");
    }

    fn vhost_plug(m: &Manager, id: DeviceId) -> crate::hypervisor::VhostUserPlug {
        match m.device(id).unwrap().plugged.unwrap().plug {
            Plug::VhostUser(v) => v,
            other => panic!("not a vhost-user plug: {other:?}"),
        }
    }

    #[test]
    fn vhost_user_blk_takes_an_index_only_in_the_virtio_blk_family() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let blk = new(
            &m,
            vhost_user_spec(
                "/run/blk.sock",
                VhostUserDevice::Blk {
                    driver: BlockDriver::VirtioBlk,
                },
            ),
        );
        let scsi_driven = new(
            &m,
            vhost_user_spec(
                "/run/blk2.sock",
                VhostUserDevice::Blk {
                    driver: BlockDriver::VirtioScsi,
                },
            ),
        );
        let net = new(
            &m,
            vhost_user_spec(
                "/run/net.sock",
                VhostUserDevice::Net {
                    mac: MacAddress::from([2, 0, 0, 0, 0, 1]),
                },
            ),
        );
        for id in [blk, scsi_driven, net] {
            m.attach(id).unwrap();
        }
        let p = vhost_plug(&m, blk);
        assert_eq!(
            (
                p.index.map(|i| i.get()),
                p.drive_name.map(|n| n.to_string())
            ),
            (Some(0), Some("vda".into()))
        );
        assert_eq!(p.name_id, format!("blk-{blk}"));
        assert_eq!(vhost_plug(&m, scsi_driven).index, None);
        assert_eq!(vhost_plug(&m, net).index, None);
        assert_eq!(vhost_plug(&m, net).name_id, format!("net-{net}"));
        assert_eq!(m.allocations().block_indexes.len(), 1);
        // Freeing only what was taken: detaching net must not free a block index (the
        // runtime-rs bug of returning a vhost-user-net index to the block pool).
        m.detach(net).unwrap();
        m.detach(scsi_driven).unwrap();
        assert_eq!(m.allocations().block_indexes.len(), 1);
        m.detach(blk).unwrap();
        assert!(m.allocations().block_indexes.is_empty());
    }

    #[test]
    fn root_ports_one_device_per_port_and_rollback_when_exhausted() {
        let m = manager(ManagerConfig {
            root_ports: 4,
            ..crate::test_util::EIGHT_PORTS
        });
        // A group with two PCIe functions and one conventional PCI function.
        let gpu = new(&m, vfio_spec(10, &[true, true, false]));
        m.attach(gpu).unwrap();
        let Plug::Vfio(v) = m.device(gpu).unwrap().plugged.unwrap().plug else {
            panic!("not vfio")
        };
        let ports: Vec<_> = v
            .functions
            .iter()
            .map(|f| f.port.map(|p| p.to_string()))
            .collect();
        assert_eq!(
            ports,
            [Some("rp0".into()), Some("rp1".into()), Some("rp2".into())]
        );
        // One guest PCI path per function.
        assert_eq!(m.device(gpu).unwrap().guest.unwrap().pci_paths.len(), 3);
        // A virtio-blk disk takes the last port.
        let disk = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        m.attach(disk).unwrap();
        assert_eq!(block_plug(&m, disk).port.unwrap().to_string(), "rp3");
        // No port left: the next PCI device fails and takes nothing, not even its index.
        let disk2 = new(&m, block_spec(1, BlockDriver::VirtioBlk));
        let before = snapshot(&m);
        let calls = m.hypervisor().calls().len();
        assert!(matches!(m.attach(disk2), Err(DeviceError::RootPort { .. })));
        assert_eq!(snapshot(&m), before);
        assert_eq!(
            m.hypervisor().calls().len(),
            calls,
            "never reached the hypervisor"
        );
        // A group needing two ports with one free: the first port goes back too.
        m.detach(disk).unwrap();
        let nic = new(&m, vfio_spec(11, &[true, true]));
        let before = snapshot(&m);
        assert!(matches!(m.attach(nic), Err(DeviceError::RootPort { .. })));
        assert_eq!(snapshot(&m), before);
        // Freed ports are reused.
        m.detach(gpu).unwrap();
        m.attach(nic).unwrap();
        assert_eq!(m.allocations().root_ports.len(), 2);
    }

    /// Issue 17, item 2: a conventional PCI function (256-byte config space, a GPU's audio
    /// function) used to get no root port, and QEMU (q35) hot-plugs nothing on its root bus,
    /// so a group holding one could never be hot-plugged. Each function takes a port now.
    #[test]
    fn a_conventional_pci_function_takes_a_root_port_so_qemu_can_hot_plug_its_group() {
        let m = manager(ManagerConfig {
            root_ports: 2,
            ..crate::test_util::EIGHT_PORTS
        });
        // A GPU and its conventional audio function.
        let gpu = new(&m, vfio_spec(12, &[true, false]));
        assert_eq!(m.attach(gpu).unwrap(), Acquired::First);
        let Plug::Vfio(v) = m.device(gpu).unwrap().plugged.unwrap().plug else {
            panic!("not vfio")
        };
        let ports: Vec<_> = v.functions.iter().map(|f| f.port).collect();
        assert_eq!(ports, [Some(RootPort::new(0)), Some(RootPort::new(1))]);
        let paths = m.device(gpu).unwrap().guest.unwrap().pci_paths;
        assert_eq!(
            paths.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["01/00", "02/00"],
            "each function behind its own port"
        );
        m.detach(gpu).unwrap();
        // With no ports, QEMU cannot hot-plug it: a clear refusal that leaves nothing taken.
        let bare = manager(ManagerConfig {
            root_ports: 0,
            ..crate::test_util::EIGHT_PORTS
        });
        let gpu = new(&bare, vfio_spec(12, &[true, false]));
        let err = bare.attach(gpu).unwrap_err();
        assert!(matches!(err, DeviceError::Plug { .. }), "{err}");
        assert!(!bare.is_attached(gpu));
        assert_eq!(bare.allocations(), Allocations::default());
    }

    #[test]
    fn a_failed_plug_leaves_everything_as_before() {
        let m = manager(ManagerConfig {
            root_ports: 4,
            ..crate::test_util::EIGHT_PORTS
        });
        let other = new(&m, block_spec(9, BlockDriver::VirtioBlk));
        m.attach(other).unwrap();
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
        ];
        for spec in kinds {
            let id = new(&m, spec);
            let before = snapshot(&m);
            m.hypervisor().fail_next(HypervisorOp::HotplugAdd);
            let err = m.attach(id).unwrap_err();
            assert!(matches!(err, DeviceError::Plug { .. }), "{err}");
            assert_eq!(snapshot(&m), before);
            // And it works afterwards, with the same allocations a clean attach gets.
            m.attach(id).unwrap();
            m.detach(id).unwrap();
            assert_eq!(snapshot(&m), before);
        }
    }

    #[test]
    fn a_failed_unplug_leaves_the_device_attached() {
        let m = manager(ManagerConfig {
            root_ports: 1,
            ..crate::test_util::EIGHT_PORTS
        });
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        m.attach(id).unwrap();
        let before = snapshot(&m);
        m.hypervisor().fail_next(HypervisorOp::HotplugRemove);
        assert!(matches!(m.detach(id), Err(DeviceError::Unplug { .. })));
        assert_eq!(snapshot(&m), before);
        assert_eq!(m.detach(id).unwrap(), Released::Last);
    }

    #[test]
    fn cold_plug_uses_coldplug_and_is_removed_with_its_request() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let mut spec = vhost_user_spec(
            "/run/fs.sock",
            VhostUserDevice::Fs {
                tag: "kataShared".into(),
                cache: crate::kind::FsCache::Auto,
            },
        );
        spec.mode = PlugMode::Cold;
        let id = new(&m, spec);
        m.attach(id).unwrap();
        assert_eq!(ops(&m), [HypervisorOp::Coldplug]);
        let request = m.device(id).unwrap().plugged.unwrap();
        assert_eq!(request.mode, PlugMode::Cold);
        m.detach(id).unwrap();
        let calls = m.hypervisor().calls();
        assert_eq!(calls[1].op, HypervisorOp::HotplugRemove);
        assert_eq!(calls[1].request, request);
    }

    /// Issue 17, item 3: the last detach of a cold device the running VM cannot remove used
    /// to fail for good (the device attached forever). Kata's rule: it only counts down.
    #[test]
    fn a_cold_device_the_running_vm_cannot_remove_is_detached_by_count() {
        let m = manager(crate::test_util::EIGHT_PORTS);
        let mut spec = block_spec(0, BlockDriver::VirtioBlk);
        spec.mode = PlugMode::Cold;
        let id = new(&m, spec);
        m.attach(id).unwrap();
        m.hypervisor().keep_cold_devices();
        let allocations = m.allocations();
        assert_eq!(m.detach(id).unwrap(), Released::Last);
        let state = m.device(id).unwrap();
        assert!(state.resident && state.attachments.is_zero());
        assert!(state.plugged.is_some() && state.guest.is_some());
        assert_eq!(m.allocations(), allocations, "its allocations stay taken");
        assert!(m.hypervisor().is_plugged(id));
        assert!(matches!(
            m.remove_device(id),
            Err(DeviceError::StaysInVm { .. })
        ));
        // Saved and loaded as it is.
        let saved = m.save();
        let json = saved.to_json().unwrap();
        assert!(json.contains("\"resident\": true"), "{json}");
        let loaded = DeviceManager::load(
            Arc::clone(m.hypervisor()),
            crate::persist::SavedState::from_json(&json).unwrap(),
        )
        .unwrap();
        assert_eq!(loaded.save(), saved);
        // Attaching again only counts.
        let calls = m.hypervisor().calls().len();
        assert_eq!(m.attach(id).unwrap(), Acquired::Again);
        assert_eq!(m.hypervisor().calls().len(), calls);
        assert!(!m.device(id).unwrap().resident);
        // A hot device that cannot be removed still stays attached.
        let hot = new(&m, block_spec(1, BlockDriver::VirtioBlk));
        m.attach(hot).unwrap();
        m.hypervisor().fail_next(HypervisorOp::HotplugRemove);
        assert!(matches!(m.detach(hot), Err(DeviceError::Unplug { .. })));
        assert!(m.is_attached(hot));
    }

    /// `m.attach(id)` on a thread of its own.
    fn attach_on_a_thread(
        m: &Arc<Manager>,
        id: DeviceId,
    ) -> std::thread::JoinHandle<Result<Acquired, DeviceError>> {
        let m = Arc::clone(m);
        std::thread::spawn(move || m.attach(id))
    }

    #[test]
    fn a_slow_plug_blocks_neither_reads_nor_other_devices() {
        let m = Arc::new(manager(crate::test_util::EIGHT_PORTS));
        let slow = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        let fast = new(&m, generic_spec("/dev/fuse", 10, 229));
        let other = new(&m, block_spec(1, BlockDriver::VirtioBlk));
        m.attach(other).unwrap();
        m.hypervisor().hold(HypervisorOp::HotplugAdd);
        let t = attach_on_a_thread(&m, slow);
        m.hypervisor().wait_for_held_calls(1);
        // The plug of `slow` is now inside the hypervisor. Everything else goes on.
        assert!(
            !m.is_attached(slow),
            "not attached until the plug is booked"
        );
        assert_eq!(m.devices().len(), 3);
        assert!(m.device(other).unwrap().guest.is_some());
        m.attach(fast).unwrap();
        m.detach(other).unwrap();
        assert!(matches!(
            m.new_device(block_spec(2, BlockDriver::VirtioBlk)),
            Ok(NewDevice::Created(_))
        ));
        m.hypervisor().release(HypervisorOp::HotplugAdd);
        assert_eq!(t.join().unwrap().unwrap(), Acquired::First);
        assert!(m.is_attached(slow));
    }

    #[test]
    fn concurrent_attaches_of_one_device_plug_it_once() {
        let m = Arc::new(manager(crate::test_util::EIGHT_PORTS));
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        m.hypervisor().hold(HypervisorOp::HotplugAdd);
        let first = attach_on_a_thread(&m, id);
        m.hypervisor().wait_for_held_calls(1);
        let second = attach_on_a_thread(&m, id);
        // However the second thread is scheduled, it cannot report success before the
        // plug is done: it waits for the busy device.
        m.hypervisor().release(HypervisorOp::HotplugAdd);
        let mut steps = [
            first.join().unwrap().unwrap(),
            second.join().unwrap().unwrap(),
        ];
        steps.sort_by_key(|s| *s == Acquired::Again);
        assert_eq!(steps, [Acquired::First, Acquired::Again]);
        assert_eq!(ops(&m), [HypervisorOp::HotplugAdd]);
        assert_eq!(m.device(id).unwrap().attachments.get(), 2);
    }

    #[test]
    fn a_waiter_plugs_itself_when_the_first_plug_fails() {
        let m = Arc::new(manager(crate::test_util::EIGHT_PORTS));
        let id = new(&m, block_spec(0, BlockDriver::VirtioBlk));
        m.hypervisor().hold(HypervisorOp::HotplugAdd);
        m.hypervisor().fail_next(HypervisorOp::HotplugAdd);
        let a = attach_on_a_thread(&m, id);
        m.hypervisor().wait_for_held_calls(1);
        let b = attach_on_a_thread(&m, id);
        m.hypervisor().release(HypervisorOp::HotplugAdd);
        let results = [a.join().unwrap(), b.join().unwrap()];
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok, [&Acquired::First], "{results:?}");
        assert_eq!(m.device(id).unwrap().attachments.get(), 1);
        assert!(m.hypervisor().is_plugged(id));
    }
}

#[cfg(test)]
mod panics {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::ManagerConfig;
    use crate::hypervisor::{GuestView, HypervisorError, HypervisorKind};
    use crate::kind::BlockDriver;
    use crate::test_util::{InMemoryHypervisor, block_spec};

    /// A hypervisor whose next add panics.
    #[derive(Debug, Default)]
    struct Panicky {
        inner: InMemoryHypervisor,
        panic_next: AtomicBool,
    }

    impl Hypervisor for Panicky {
        fn kind(&self) -> HypervisorKind {
            self.inner.kind()
        }

        fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
            assert!(
                !self.panic_next.swap(false, Ordering::SeqCst),
                "hypervisor bug"
            );
            self.inner.hotplug_add(request)
        }

        fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
            self.inner.hotplug_remove(request)
        }

        fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
            self.inner.coldplug(request)
        }

        fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
            self.inner.guest_view(request)
        }
    }

    #[test]
    fn a_panicking_plug_gives_everything_back_and_strands_no_waiter() {
        let m = DeviceManager::new(
            Panicky::default(),
            ManagerConfig {
                root_ports: 1,
                name_offset: 0,
            },
        );
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        let before = (m.devices(), m.allocations());
        m.hypervisor().panic_next.store(true, Ordering::SeqCst);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.attach(id)));
        assert!(caught.is_err(), "the panic reaches the caller");
        assert_eq!((m.devices(), m.allocations()), before);
        // Not left busy: the next attach (which would wait on a busy device) goes through.
        assert_eq!(m.attach(id).unwrap(), Acquired::First);
        assert_eq!(m.allocations().root_ports.len(), 1);
    }
}

#[cfg(test)]
mod stress {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::config::ManagerConfig;
    use crate::kind::BlockDriver;
    use crate::test_util::{InMemoryHypervisor, block_spec, vfio_spec};

    /// Four threads attach and detach six devices at random; afterwards every count is the
    /// number of successful attaches minus detaches, and the hypervisor holds exactly the
    /// attached devices.
    #[test]
    fn threads_agree_with_the_counts() {
        let m = Arc::new(DeviceManager::new(
            Arc::new(InMemoryHypervisor::new()),
            ManagerConfig {
                root_ports: 4,
                name_offset: 0,
            },
        ));
        let mut specs: Vec<_> = (0..4)
            .map(|n| block_spec(n, BlockDriver::VirtioBlk))
            .collect();
        specs.push(vfio_spec(1, &[true, true]));
        specs.push(block_spec(9, BlockDriver::VirtioScsi));
        let ids: Vec<DeviceId> = specs
            .into_iter()
            .map(|s| m.new_device(s).unwrap().id())
            .collect();
        let expected: Arc<Vec<AtomicI64>> =
            Arc::new(ids.iter().map(|_| AtomicI64::new(0)).collect());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (m, ids, expected) = (Arc::clone(&m), ids.clone(), Arc::clone(&expected));
                std::thread::spawn(move || {
                    // A small xorshift, seeded per thread: no clock, no shared RNG.
                    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (t + 1);
                    for _ in 0..400 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let i = usize::try_from(x % 6).unwrap();
                        if x & 0x100 == 0 {
                            if m.attach(ids[i]).is_ok() {
                                expected[i].fetch_add(1, Ordering::SeqCst);
                            }
                        } else if m.detach(ids[i]).is_ok() {
                            expected[i].fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut plugged = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let d = m.device(*id).unwrap();
            assert_eq!(
                i64::from(d.attachments.get()),
                expected[i].load(Ordering::SeqCst)
            );
            if !d.attachments.is_zero() {
                plugged.push(*id);
            }
        }
        assert_eq!(
            m.hypervisor().plugged().keys().copied().collect::<Vec<_>>(),
            plugged
        );
        m.detach_all().unwrap();
        assert_eq!(m.allocations(), crate::plan::Allocations::default());
    }
}
