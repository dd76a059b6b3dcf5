//! The per-VM device manager: create, dedupe, count, remove, and read devices.
//!
//! One lock guards the books (devices, identities, allocators). It is held only for
//! bookkeeping, never across a hypervisor call: a device being plugged or unplugged is marked
//! busy, the lock is dropped for the call, and the result is booked afterwards. Operations on
//! a busy device wait for it (so two attaches of the same device cannot both plug it, and a
//! second attach cannot report success before the first plug did); every other device, and
//! every read, goes on. Attach and detach are in `attach.rs`, save and load in `persist.rs`.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use plugboard_vfio::{Acquired, RefCount, Released};

use crate::config::ManagerConfig;
use crate::error::DeviceError;
use crate::hypervisor::Hypervisor;
use crate::id::DeviceId;
use crate::kind::{DeviceIdentity, DeviceKind, DeviceSpec, Sharing};
use crate::plan::Allocations;
use crate::state::{Books, DeviceState, Entry};

/// What [`DeviceManager::new_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewDevice {
    /// A new device with one reference.
    Created(DeviceId),
    /// An existing device with the same identity; it gained a reference.
    Existing(DeviceId),
}

impl NewDevice {
    /// The device's id, either way.
    #[must_use]
    pub const fn id(self) -> DeviceId {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }
}

/// What [`DeviceManager::remove_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The last reference went; the device is gone.
    Gone,
    /// Other references remain; the device stays.
    StillReferenced,
}

/// The devices of one VM. See the module documentation.
#[derive(Debug)]
pub struct DeviceManager<H> {
    pub(crate) hypervisor: H,
    pub(crate) books: Mutex<Books>,
    /// Signalled whenever a device stops being busy.
    pub(crate) idle: Condvar,
}

impl<H: Hypervisor> DeviceManager<H> {
    /// An empty manager for a VM behind `hypervisor`.
    pub fn new(hypervisor: H, config: ManagerConfig) -> Self {
        Self::from_books(hypervisor, Books::new(config))
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &H {
        &self.hypervisor
    }

    /// The allocator settings.
    pub fn config(&self) -> ManagerConfig {
        self.lock().alloc.config
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Books> {
        // The books are only changed by code that cannot panic half-way, so a poisoned lock
        // still guards consistent books.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn wait<'a>(&self, guard: MutexGuard<'a, Books>) -> MutexGuard<'a, Books> {
        self.idle
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the books once `id` is not busy. `Err(NotFound)` when it does not (or no longer)
    /// exist.
    pub(crate) fn lock_idle(&self, id: DeviceId) -> Result<MutexGuard<'_, Books>, DeviceError> {
        let mut books = self.lock();
        loop {
            match books.devices.get(&id) {
                None => return Err(DeviceError::NotFound { id }),
                Some(entry) if entry.busy => books = self.wait(books),
                Some(_) => return Ok(books),
            }
        }
    }

    /// Creates a device, or adds a reference to the existing device with the same identity
    /// (the same node type and `major:minor`, or the same host path for a device without a
    /// node). Kata's `NewDevice`.
    ///
    /// # Errors
    /// [`DeviceError::Conflict`] when a device with this identity exists with a different
    /// spec; [`DeviceError::TooManyReferences`]; [`DeviceError::InvalidVfio`] or
    /// [`DeviceError::InvalidVhostUser`] for a spec that cannot be plugged.
    pub fn new_device(&self, spec: DeviceSpec) -> Result<NewDevice, DeviceError> {
        let spec = normalize(spec);
        validate(&spec)?;
        let mut books = self.lock();
        take_reference(&mut books, spec)
    }

    /// Drops one reference. The device goes with its last reference, unless it is attached:
    /// then nothing changes and the answer is [`DeviceError::StillAttached`] (Kata dropped
    /// the count to 0 first and kept the device, so the next remove underflowed).
    ///
    /// # Errors
    /// [`DeviceError::NotFound`], [`DeviceError::StillAttached`].
    pub fn remove_device(&self, id: DeviceId) -> Result<Removed, DeviceError> {
        let mut books = self.lock_idle(id)?;
        drop_reference(&mut books, id)
    }

    /// A snapshot of one device; `None` for an unknown id. Never waits for a plug.
    pub fn device(&self, id: DeviceId) -> Option<DeviceState> {
        self.lock().devices.get(&id).map(|e| e.state.clone())
    }

    /// Snapshots of every device, by id. Never waits for a plug.
    pub fn devices(&self) -> Vec<DeviceState> {
        let books = self.lock();
        let mut all: Vec<DeviceState> = books.devices.values().map(|e| e.state.clone()).collect();
        drop(books);
        all.sort_by_key(|d| d.id);
        all
    }

    /// The id of the device with this identity, if any.
    pub fn find(&self, identity: &DeviceIdentity) -> Option<DeviceId> {
        self.lock().by_identity.get(identity).copied()
    }

    /// Whether the device is attached (false for an unknown id; Kata's `IsDeviceAttached`).
    pub fn is_attached(&self, id: DeviceId) -> bool {
        self.lock()
            .devices
            .get(&id)
            .is_some_and(|e| !e.state.attachments.is_zero())
    }

    /// How many devices the manager holds.
    pub fn len(&self) -> usize {
        self.lock().devices.len()
    }

    /// Whether the manager holds no device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block indexes and root ports in use.
    pub fn allocations(&self) -> Allocations {
        self.lock().alloc.in_use()
    }
}

/// Adds a reference to the device with `spec`'s identity, or creates it with one
/// reference: [`DeviceManager::new_device`] without the validation and the locking.
pub(crate) fn take_reference(
    books: &mut Books,
    spec: DeviceSpec,
) -> Result<NewDevice, DeviceError> {
    if let Some(&id) = books.by_identity.get(&spec.identity) {
        let entry = books.entry_mut(id)?;
        match entry.state.spec.sharing(&spec) {
            Sharing::Same | Sharing::Reader => {}
            // A writer joins a read-only device only before it is plugged (it then plugs
            // read-write), and only when no descriptor was opened for reading only.
            Sharing::Writer
                if entry.state.plugged.is_none()
                    && entry.state.needs_cleanup.is_none()
                    && !entry.busy
                    && matches!(&entry.state.spec.kind, DeviceKind::Block(b) if b.passed_fd.is_none()) =>
            {
                if let DeviceKind::Block(b) = &mut entry.state.spec.kind {
                    b.read_only = false;
                }
                tracing::info!(device = %id, "a read-write user joins a read-only device not plugged yet; it will plug read-write");
            }
            Sharing::Writer => return Err(DeviceError::ReadOnly { id }),
            Sharing::Different => {
                return Err(DeviceError::Conflict {
                    id,
                    identity: spec.identity,
                });
            }
        }
        entry
            .state
            .references
            .acquire()
            .map_err(|_| DeviceError::TooManyReferences { id })?;
        tracing::debug!(device = %id, identity = %spec.identity, references = entry.state.references.get(), "device referenced again");
        return Ok(NewDevice::Existing(id));
    }
    let id = DeviceId::from_raw(books.next_id);
    books.next_id += 1;
    let mut references = RefCount::new();
    // A fresh count cannot overflow.
    let _: Result<Acquired, _> = references.acquire();
    tracing::debug!(device = %id, identity = %spec.identity, kind = spec.kind.type_name(), "device created");
    books.by_identity.insert(spec.identity.clone(), id);
    books.devices.insert(
        id,
        Entry {
            state: DeviceState {
                id,
                spec,
                references,
                attachments: RefCount::new(),
                plugged: None,
                guest: None,
                needs_cleanup: None,
                resident: false,
            },
            busy: false,
        },
    );
    Ok(NewDevice::Created(id))
}

/// Drops one reference of `id`; the device goes with its last one unless it is attached:
/// [`DeviceManager::remove_device`] without the locking. The caller has waited for `id` to
/// be idle.
pub(crate) fn drop_reference(books: &mut Books, id: DeviceId) -> Result<Removed, DeviceError> {
    let state = &mut books.entry_mut(id)?.state;
    // Every device in the books holds at least one reference.
    let step = state
        .references
        .peek_release()
        .map_err(|_| DeviceError::NotFound { id })?;
    if step == Released::Last && state.needs_cleanup.is_some() {
        return Err(DeviceError::NeedsCleanup { id });
    }
    if step == Released::Last && state.resident {
        return Err(DeviceError::StaysInVm { id });
    }
    if step == Released::Last && !state.attachments.is_zero() {
        return Err(DeviceError::StillAttached {
            id,
            attachments: state.attachments.get(),
        });
    }
    let _: Result<Released, _> = state.references.release();
    if step == Released::StillUsed {
        tracing::debug!(device = %id, references = state.references.get(), "device reference dropped");
        return Ok(Removed::StillReferenced);
    }
    if let Some(entry) = books.devices.remove(&id) {
        books.by_identity.remove(&entry.state.spec.identity);
    }
    tracing::debug!(device = %id, "device removed");
    Ok(Removed::Gone)
}

/// The spec with its host paths (a nodeless identity, a block device's path, a socket, a
/// generic node's path) in one spelling: `a//b`, `a/./b` and `a/b/` are `a/b`. Lexical
/// only (the manager reads no files); `HostDevices` and the service resolve symlinks.
pub(crate) fn normalize(mut spec: DeviceSpec) -> DeviceSpec {
    let clean = |p: &mut std::path::PathBuf| *p = p.components().collect();
    if let DeviceIdentity::Path(p) = &mut spec.identity {
        clean(p);
    }
    match &mut spec.kind {
        DeviceKind::Block(b) => clean(&mut b.path),
        DeviceKind::VhostUser(v) => clean(&mut v.socket),
        DeviceKind::Generic(g) => clean(&mut g.path),
        DeviceKind::Vfio(_) => {}
    }
    spec
}

/// Refuses a spec that can never be plugged (empty paths, VFIO without functions, an invalid
/// vhost-user device).
pub(crate) fn validate(spec: &DeviceSpec) -> Result<(), DeviceError> {
    let path = match (&spec.identity, &spec.kind) {
        (DeviceIdentity::Path(p), _) if p.as_os_str().is_empty() => Some(p),
        (_, DeviceKind::Block(b)) => Some(&b.path),
        (_, DeviceKind::VhostUser(v)) => Some(&v.socket),
        (_, DeviceKind::Generic(g)) => Some(&g.path),
        (_, DeviceKind::Vfio(_)) => None,
    };
    if path.is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(DeviceError::EmptyPath {
            identity: spec.identity.clone(),
        });
    }
    match &spec.kind {
        DeviceKind::Vfio(vfio) if vfio.functions.is_empty() => Err(DeviceError::InvalidVfio {
            identity: spec.identity.clone(),
            source: crate::kind::VfioSpecError::NoFunctions(vfio.backend),
        }),
        DeviceKind::VhostUser(vhost) => {
            vhost
                .device
                .validate()
                .map_err(|source| DeviceError::InvalidVhostUser {
                    identity: spec.identity.clone(),
                    source,
                })
        }
        DeviceKind::Vfio(_) | DeviceKind::Block(_) | DeviceKind::Generic(_) => Ok(()),
    }
}

impl<H> DeviceManager<H> {
    pub(crate) fn from_books(hypervisor: H, books: Books) -> Self {
        Self {
            hypervisor,
            books: Mutex::new(books),
            idle: Condvar::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_sysfs::DevKind;

    use crate::kind::{BlockDriver, DeviceNode};
    use crate::test_util::{InMemoryHypervisor, block_spec, generic_spec, image_spec};

    fn manager() -> DeviceManager<InMemoryHypervisor> {
        DeviceManager::new(InMemoryHypervisor::new(), crate::test_util::EIGHT_PORTS)
    }

    #[test]
    fn manager_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DeviceManager<InMemoryHypervisor>>();
        check::<DeviceManager<std::sync::Arc<dyn Hypervisor>>>();
    }

    #[test]
    fn same_node_dedupes_and_adds_a_reference() {
        let m = manager();
        let a = m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        let b = m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        assert!(matches!(a, NewDevice::Created(_)));
        assert_eq!(b, NewDevice::Existing(a.id()));
        assert_eq!(m.device(a.id()).unwrap().references.get(), 2);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn nodeless_devices_never_collide() {
        // Kata compared major:minor only, so every 0:0 device was "the same".
        let m = manager();
        let a = m
            .new_device(image_spec("/img/a.raw", BlockDriver::VirtioBlk))
            .unwrap();
        let b = m
            .new_device(image_spec("/img/b.raw", BlockDriver::VirtioBlk))
            .unwrap();
        assert!(matches!(b, NewDevice::Created(_)));
        assert_ne!(a.id(), b.id());
        let again = m
            .new_device(image_spec("/img/a.raw", BlockDriver::VirtioBlk))
            .unwrap();
        assert_eq!(again, NewDevice::Existing(a.id()));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn block_and_char_with_the_same_numbers_differ() {
        let m = manager();
        let blk = m.new_device(block_spec(1, BlockDriver::VirtioBlk)).unwrap();
        let chr = m.new_device(generic_spec("/dev/x", 8, 1)).unwrap();
        assert_ne!(blk.id(), chr.id());
        let node = DeviceNode::new(DevKind::Char, 8, 1);
        assert_eq!(m.find(&DeviceIdentity::Node(node)), Some(chr.id()));
    }

    #[test]
    fn a_different_spec_for_the_same_identity_is_a_conflict() {
        let m = manager();
        let a = m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        let err = m
            .new_device(block_spec(0, BlockDriver::VirtioScsi))
            .unwrap_err();
        assert!(matches!(err, DeviceError::Conflict { id, .. } if id == a.id()));
        assert_eq!(m.device(a.id()).unwrap().references.get(), 1);
    }

    /// Issue 17, item 5 (Kata's case): two containers share a volume, one mounts it
    /// read-only. Read-only and read-write requests of one node are one device; every other
    /// difference is a conflict.
    #[test]
    fn read_only_and_read_write_users_of_one_node_share_it() {
        let m = manager();
        let ro = |minor| {
            let mut spec = block_spec(minor, BlockDriver::VirtioBlk);
            if let DeviceKind::Block(b) = &mut spec.kind {
                b.read_only = true;
            }
            spec
        };
        // Read-write first: the reader shares it, and it stays read-write.
        let rw = m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        m.attach(rw.id()).unwrap();
        assert_eq!(m.new_device(ro(0)).unwrap(), NewDevice::Existing(rw.id()));
        assert_eq!(m.attach(rw.id()).unwrap(), Acquired::Again);
        let DeviceKind::Block(b) = m.device(rw.id()).unwrap().spec.kind else {
            panic!("not a block device")
        };
        assert!(!b.read_only);
        // Read-only and plugged: a writer cannot share it, a clear answer.
        let first = m.new_device(ro(1)).unwrap();
        m.attach(first.id()).unwrap();
        let err = m
            .new_device(block_spec(1, BlockDriver::VirtioBlk))
            .unwrap_err();
        assert!(
            matches!(err, DeviceError::ReadOnly { id } if id == first.id()),
            "{err}"
        );
        assert_eq!(m.device(first.id()).unwrap().references.get(), 1);
        // Read-only and not plugged yet: a writer joins, and it plugs read-write.
        let later = m.new_device(ro(2)).unwrap();
        assert_eq!(
            m.new_device(block_spec(2, BlockDriver::VirtioBlk)).unwrap(),
            NewDevice::Existing(later.id())
        );
        m.attach(later.id()).unwrap();
        let Some(crate::hypervisor::Plug::Block(plug)) =
            m.device(later.id()).unwrap().plugged.map(|p| p.plug)
        else {
            panic!("not a block plug")
        };
        assert!(!plug.spec.read_only);
    }

    /// Issue 17, item 9: two spellings of one nodeless path used to be two devices.
    #[test]
    fn spellings_of_one_nodeless_path_are_one_device() {
        let m = manager();
        let a = m
            .new_device(image_spec("/img/a.raw", BlockDriver::VirtioBlk))
            .unwrap();
        for spelling in ["/img//a.raw", "/img/./a.raw", "/img/a.raw/"] {
            assert_eq!(
                m.new_device(image_spec(spelling, BlockDriver::VirtioBlk))
                    .unwrap(),
                NewDevice::Existing(a.id()),
                "{spelling}"
            );
        }
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn remove_rules() {
        let m = manager();
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        m.attach(id).unwrap();
        // Two references: the first remove only drops one.
        assert_eq!(m.remove_device(id).unwrap(), Removed::StillReferenced);
        // The last reference of an attached device: refused, nothing changes.
        let before = m.device(id).unwrap();
        let err = m.remove_device(id).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::StillAttached { attachments: 1, .. }
        ));
        assert_eq!(m.device(id).unwrap(), before);
        assert_eq!(before.references.get(), 1);
        // After detach it goes, with its identity.
        m.detach(id).unwrap();
        assert_eq!(m.remove_device(id).unwrap(), Removed::Gone);
        assert!(m.device(id).is_none());
        assert!(m.is_empty());
        assert!(matches!(
            m.remove_device(id),
            Err(DeviceError::NotFound { .. })
        ));
        // The same node again is a new device.
        let again = m.new_device(block_spec(0, BlockDriver::VirtioBlk)).unwrap();
        assert!(matches!(again, NewDevice::Created(new) if new != id));
    }

    #[test]
    fn reference_overflow_is_an_error_that_changes_nothing() {
        let m = manager();
        let id = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        if let Some(e) = m.lock().devices.get_mut(&id) {
            e.state.references = RefCount::from_raw(u32::MAX);
        }
        let err = m
            .new_device(block_spec(0, BlockDriver::VirtioBlk))
            .unwrap_err();
        assert!(matches!(err, DeviceError::TooManyReferences { .. }));
        assert_eq!(m.device(id).unwrap().references.get(), u32::MAX);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let m = manager();
        let mut vfio = crate::test_util::vfio_spec(3, &[true]);
        if let DeviceKind::Vfio(v) = &mut vfio.kind {
            v.functions.clear();
        }
        assert!(matches!(
            m.new_device(vfio),
            Err(DeviceError::InvalidVfio { .. })
        ));
        let fs = crate::test_util::vhost_user_spec(
            "/run/fs.sock",
            crate::kind::VhostUserDevice::Fs {
                tag: String::new(),
                cache: crate::kind::FsCache::Auto,
            },
        );
        assert!(matches!(
            m.new_device(fs),
            Err(DeviceError::InvalidVhostUser { .. })
        ));
        assert!(m.is_empty());
    }
}
