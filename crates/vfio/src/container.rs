//! The legacy address space: a VFIO container (`/dev/vfio/vfio`) with its groups.
//!
//! A container is an IOMMU context that groups join (`VFIO_GROUP_SET_CONTAINER`). The IOMMU
//! model (type1v2) can be set only once the first group is in, and the kernel throws the
//! container's DMA mappings away when the last group leaves. A group node can be opened only
//! once, so two devices of one group must share it (cloud-hypervisor #3078).
//!
//! So the container owns its groups: one fd per group, with a [`RefCount`] of the devices
//! using it. [`Container::attach_group`] hands out a [`Group`] lease; the first lease opens
//! and attaches the group, and dropping the last detaches and closes it. The container also
//! keeps the books of its DMA mappings and maps them again when a group joins after the
//! kernel dropped them with the last one (cloud-hypervisor #7328: the next hotplug found no
//! mappings), unless it was opened with [`DmaReplay::Off`] for a VMM that maps its memory
//! again itself. Devices and [`crate::DmaMapping`]s hold the container in an `Arc`, so it
//! outlives all of them.
//!
//! `container.rs` and `group.rs` import each other on purpose (the owner and its lease; see
//! `group.rs`).

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tracing::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_GROUP_FLAGS_CONTAINER_SET, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1v2_IOMMU,
};

use crate::books::Books;
use crate::dma::{AddressSpace, DmaError, check_range, check_ranges};
use crate::group::{Group, GroupError};
use crate::ioctl;
use crate::iova::{IovaInfo, IovaRange, parse_type1_caps};
use crate::node::open_node;
use crate::refcount::{Acquired, RefCount, Released};

/// Why a container could not be opened or adopted.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `/dev/vfio/vfio` could not be opened (no VFIO in the kernel, or no permission).
    #[error("cannot open the VFIO container {path}")]
    Open {
        /// The container node.
        path: PathBuf,
        /// errno from `open`.
        #[source]
        source: io::Error,
    },
    /// The container speaks another API version than this crate.
    #[error("the VFIO container {path} has API version {found}, expected {VFIO_API_VERSION}")]
    ApiVersion {
        /// The container node.
        path: PathBuf,
        /// What the kernel answered.
        found: i32,
    },
    /// An ioctl on the container failed.
    #[error("VFIO container {path}: {what} failed")]
    Ioctl {
        /// The container node.
        path: PathBuf,
        /// Which request.
        what: &'static str,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// The kernel has no type1v2 IOMMU driver for this container.
    #[error("the VFIO container {path} does not support the type1v2 IOMMU")]
    NoType1v2 {
        /// The container node.
        path: PathBuf,
    },
    /// A group fd handed over with a container fd is not attached to a container.
    #[error("the received fd of IOMMU group {group} is not attached to a VFIO container")]
    NotAttached {
        /// The group id.
        group: u32,
    },
}

/// What a legacy container does about the DMA mappings that the kernel throws away when the
/// container's last group leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmaReplay {
    /// Keep books of every mapping and map them all again when a group joins after the last
    /// one left, so that a device hotplugged after the last one was unplugged finds guest
    /// memory mapped (cloud-hypervisor #7328). Each DMA call takes the container's lock to
    /// keep the books. The default.
    #[default]
    On,
    /// Keep no books: the mappings go with the last group, and whoever made them maps them
    /// again when a group joins (as users of rust-vmm's vfio-ioctls must). DMA calls take no
    /// lock. For a VMM that re-maps guest memory on hotplug itself: with [`DmaReplay::On`]
    /// its map of a range the container already restored fails with `EEXIST`.
    Off,
}

/// One group the container holds: its fd and how many devices use it.
#[derive(Debug)]
struct GroupSlot {
    file: OwnedFd,
    users: RefCount,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<u32, GroupSlot>,
    books: Books,
}

/// A legacy VFIO container with type1v2 IOMMU. Shared as `Arc<Container>`.
pub struct Container {
    /// An `OwnedFd`, not a `File`: its `as_fd` inlines, and it is on every DMA call.
    file: OwnedFd,
    path: PathBuf,
    dev_root: PathBuf,
    replay: DmaReplay,
    /// How many groups are attached: `state.groups.len()`, written under the lock, read
    /// without it by the DMA calls of a container that keeps no books.
    attached: AtomicUsize,
    state: Mutex<State>,
    /// The IOVA ranges type1 accepts, read when a group joins; empty when unknown.
    ranges: RwLock<Vec<IovaRange>>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Container")
            .field("path", &self.path)
            .field("replay", &self.replay)
            .field("groups", &state.groups.keys().collect::<Vec<_>>())
            .field("mappings", &state.books.len())
            .finish()
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VFIO container {}", self.path.display())
    }
}

impl Container {
    /// Opens `<dev_root>/vfio/vfio` and checks the API version and type1v2 support. The
    /// container keeps books of its DMA mappings ([`DmaReplay::On`]).
    pub fn open(dev_root: &Path) -> Result<Arc<Self>, ContainerError> {
        Self::open_with(dev_root, DmaReplay::On)
    }

    /// [`Container::open`] with the given [`DmaReplay`].
    pub fn open_with(dev_root: &Path, replay: DmaReplay) -> Result<Arc<Self>, ContainerError> {
        let path = dev_root.join("vfio/vfio");
        let file = open_node(&path).map_err(|source| ContainerError::Open {
            path: path.clone(),
            source,
        })?;
        let container = Self {
            file,
            path,
            dev_root: dev_root.to_path_buf(),
            replay,
            attached: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            ranges: RwLock::new(Vec::new()),
        };
        container.check()?;
        debug!(path = %container.path.display(), "opened VFIO container");
        Ok(Arc::new(container))
    }

    /// Adopts a container fd and a group fd received from a privileged helper (see
    /// [`crate::VmmFds`]): the group is already attached and the IOMMU set. The returned
    /// lease is the group's first user. Such a container knows no `/dev` root, so it cannot
    /// open further groups itself: a VMM gets each group's fd from the helper.
    pub fn from_fds(
        container: OwnedFd,
        group: OwnedFd,
        group_id: u32,
        replay: DmaReplay,
    ) -> Result<(Arc<Self>, Group), ContainerError> {
        let path = PathBuf::from("(received fd)");
        let container = Self {
            file: container,
            path,
            dev_root: PathBuf::new(),
            replay,
            attached: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            ranges: RwLock::new(Vec::new()),
        };
        container.check()?;
        let flags = ioctl::group_status(group.as_fd()).map_err(|source| ContainerError::Ioctl {
            path: container.path.clone(),
            what: "VFIO_GROUP_GET_STATUS on the received group",
            source,
        })?;
        if flags & VFIO_GROUP_FLAGS_CONTAINER_SET == 0 {
            return Err(ContainerError::NotAttached { group: group_id });
        }
        container.add_group(
            &mut container.state(),
            group_id,
            GroupSlot {
                file: group,
                users: RefCount::from_raw(1),
            },
        );
        container.refresh_ranges(group_id);
        let container = Arc::new(container);
        let lease = Group::new(Arc::clone(&container), group_id);
        Ok((container, lease))
    }

    fn check(&self) -> Result<(), ContainerError> {
        let found =
            ioctl::get_api_version(self.file.as_fd()).map_err(|source| ContainerError::Ioctl {
                path: self.path.clone(),
                what: "VFIO_GET_API_VERSION",
                source,
            })?;
        if u32::try_from(found) != Ok(VFIO_API_VERSION) {
            return Err(ContainerError::ApiVersion {
                path: self.path.clone(),
                found,
            });
        }
        let type1v2 =
            ioctl::check_extension(self.file.as_fd(), VFIO_TYPE1v2_IOMMU).map_err(|source| {
                ContainerError::Ioctl {
                    path: self.path.clone(),
                    what: "VFIO_CHECK_EXTENSION(TYPE1v2)",
                    source,
                }
            })?;
        if !type1v2 {
            return Err(ContainerError::NoType1v2 {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the state is still
        // consistent at every await-free step, so carry on rather than poison every caller.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The container fd, for handing to a VMM or registering with KVM.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The ids of the groups attached now, sorted.
    pub fn group_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.state().groups.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many leases (devices) use group `id` now; 0 if it is not attached.
    pub fn group_users(&self, id: u32) -> usize {
        self.state().groups.get(&id).map_or(0, |slot| {
            usize::try_from(slot.users.get()).unwrap_or(usize::MAX)
        })
    }

    /// How many DMA mappings the container's books hold (always 0 with [`DmaReplay::Off`]).
    pub fn mapping_count(&self) -> usize {
        self.state().books.len()
    }

    /// What the container does about the mappings the kernel drops with its last group.
    pub fn dma_replay(&self) -> DmaReplay {
        self.replay
    }

    fn add_group(&self, state: &mut State, id: u32, slot: GroupSlot) {
        state.groups.insert(id, slot);
        self.attached.store(state.groups.len(), Ordering::Relaxed);
    }

    /// Gets a lease on group `id`: the first one opens `<dev_root>/vfio/<id>`, checks that
    /// the group is viable, attaches it, sets the IOMMU model (first group) and maps the
    /// booked DMA mappings again if the kernel had dropped them; later ones share that fd.
    pub fn attach_group(self: &Arc<Self>, id: u32) -> Result<Group, GroupError> {
        let mut state = self.state();
        if let Some(slot) = state.groups.get_mut(&id) {
            let again = slot
                .users
                .acquire()
                .map_err(|_| GroupError::TooManyUsers { group: id })?;
            debug_assert_eq!(again, Acquired::Again);
            debug!(
                group = id,
                users = slot.users.get(),
                "shared an attached IOMMU group"
            );
            return Ok(Group::new(Arc::clone(self), id));
        }
        let path = self.dev_root.join("vfio").join(id.to_string());
        let file = open_node(&path).map_err(|source| GroupError::Open {
            group: id,
            path: path.clone(),
            source,
        })?;
        let flags = ioctl::group_status(file.as_fd()).map_err(|source| GroupError::Ioctl {
            group: id,
            what: "VFIO_GROUP_GET_STATUS",
            source,
        })?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(GroupError::NotViable {
                group: id,
                blockers: Vec::new(),
            });
        }
        ioctl::group_set_container(file.as_fd(), self.file.as_fd()).map_err(|source| {
            GroupError::Ioctl {
                group: id,
                what: "VFIO_GROUP_SET_CONTAINER",
                source,
            }
        })?;
        if state.groups.is_empty() {
            // First group: the container has no IOMMU model yet (or lost it with the last
            // group). On failure, detaching the group undoes the attach.
            if let Err(err) = self.first_group_setup(&state, id) {
                if let Err(undo) = ioctl::group_unset_container(file.as_fd()) {
                    warn!(group = id, error = %undo, "undoing the group attach failed; closing the group fd detaches it");
                }
                return Err(err);
            }
        }
        let users = RefCount::from_raw(1);
        self.add_group(&mut state, id, GroupSlot { file, users });
        self.refresh_ranges(id);
        info!(group = id, container = %self.path.display(), "attached IOMMU group to the container (undone when its last device closes)");
        Ok(Group::new(Arc::clone(self), id))
    }

    fn first_group_setup(&self, state: &State, id: u32) -> Result<(), GroupError> {
        ioctl::set_iommu(self.file.as_fd(), VFIO_TYPE1v2_IOMMU).map_err(|source| {
            GroupError::Ioctl {
                group: id,
                what: "VFIO_SET_IOMMU(TYPE1v2)",
                source,
            }
        })?;
        if !state.books.is_empty() {
            info!(
                mappings = state.books.len(),
                group = id,
                "mapping the container's DMA books again"
            );
        }
        for mapping in state.books.iter() {
            // SAFETY: every booked range was mapped through `map_dma`, whose caller promised
            // that it stays valid and unaliased until `unmap_dma` covers it; a range leaves
            // the books only then, so the promise still holds for this one.
            unsafe { ioctl::map_dma(self.file.as_fd(), mapping.iova, mapping.len, mapping.vaddr) }
                .map_err(|source| GroupError::Replay {
                    group: id,
                    iova: mapping.iova,
                    source,
                })?;
        }
        Ok(())
    }

    /// Opens a device of an attached group by name (`VFIO_GROUP_GET_DEVICE_FD`).
    pub(crate) fn group_device_fd(&self, id: u32, name: &CStr) -> io::Result<OwnedFd> {
        let state = self.state();
        let slot = state
            .groups
            .get(&id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        ioctl::group_get_device_fd(slot.file.as_fd(), name)
    }

    /// A new fd for an attached group, for handing to a VMM.
    pub(crate) fn group_try_clone_fd(&self, id: u32) -> io::Result<OwnedFd> {
        let state = self.state();
        let slot = state
            .groups
            .get(&id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        slot.file.try_clone()
    }

    /// Drops one lease on group `id`. The last one detaches the group and closes its fd,
    /// under the lock, so that a concurrent [`Container::attach_group`] never finds the group
    /// node still open. Errors are returned for [`Group::close`] and logged by its drop.
    pub(crate) fn release_group(&self, id: u32) -> Result<(), GroupError> {
        let mut state = self.state();
        let Some(slot) = state.groups.get_mut(&id) else {
            return Err(GroupError::NotAttached { group: id });
        };
        match slot.users.release() {
            Ok(Released::StillUsed) => return Ok(()),
            Err(_) => return Err(GroupError::NotAttached { group: id }),
            Ok(Released::Last) => {}
        }
        let Some(slot) = state.groups.remove(&id) else {
            return Err(GroupError::NotAttached { group: id });
        };
        self.attached.store(state.groups.len(), Ordering::Relaxed);
        let unset = match ioctl::group_unset_container(slot.file.as_fd()) {
            // When the group's last device was unbound from vfio-pci (a holder that answered
            // the request notifier and closed its device lets the unbind finish), the kernel
            // detaches the group from the container itself and forgets the IOMMU group: the
            // group fd then answers its status with ENODEV (or without CONTAINER_SET).
            Err(err)
                if err.raw_os_error() == Some(libc::EINVAL)
                    && detached_by_the_kernel(slot.file.as_fd()) =>
            {
                debug!(
                    group = id,
                    "the kernel had already detached the group (its devices were unbound)"
                );
                Ok(())
            }
            other => other,
        };
        // Closing the fd detaches the group in any case (the kernel's release does it).
        drop(slot);
        if state.groups.is_empty() && self.replay == DmaReplay::Off {
            info!(
                container = %self.path.display(),
                "the last group left the container: the kernel dropped its DMA mappings, and with DmaReplay::Off they stay gone until mapped again"
            );
        } else if state.groups.is_empty() && !state.books.is_empty() {
            info!(
                mappings = state.books.len(),
                "the last group left the container: the kernel dropped its DMA mappings; they are booked and will be mapped again when a group joins"
            );
        }
        info!(group = id, container = %self.path.display(), "detached IOMMU group from the container");
        unset.map_err(|source| GroupError::Ioctl {
            group: id,
            what: "VFIO_GROUP_UNSET_CONTAINER",
            source,
        })
    }
}

/// Whether the kernel itself detached this group from its container (see `release_group`).
fn detached_by_the_kernel(group: BorrowedFd<'_>) -> bool {
    match ioctl::group_status(group) {
        Ok(flags) => flags & VFIO_GROUP_FLAGS_CONTAINER_SET == 0,
        Err(err) => err.raw_os_error() == Some(libc::ENODEV),
    }
}

impl Container {
    /// Asks type1 for its info (`VFIO_IOMMU_GET_INFO`): IOVA ranges, page sizes, mappings
    /// left. Needs a group attached (the IOMMU set).
    fn query_info(&self) -> io::Result<IovaInfo> {
        let (info, bytes) = ioctl::type1_info(self.file.as_fd())?;
        let (ranges, dma_avail) = parse_type1_caps(&bytes, info.cap_offset);
        Ok(IovaInfo {
            ranges,
            page_sizes: info.iova_pgsizes,
            dma_avail,
        })
    }

    /// Reads the IOVA ranges again after group `id` joined (its reserved regions may cut
    /// holes). If the kernel does not answer, the ranges become unknown and the kernel alone
    /// judges each map.
    fn refresh_ranges(&self, id: u32) {
        let ranges = match self.query_info() {
            Ok(info) => info.ranges,
            Err(err) => {
                warn!(group = id, error = %err, "cannot read the container's IOVA ranges; maps are not checked against them");
                Vec::new()
            }
        };
        debug!(group = id, ranges = %crate::iova::ranges_text(&ranges), "usable IOVA ranges");
        *self.ranges.write().unwrap_or_else(PoisonError::into_inner) = ranges;
    }

    fn check_ranges(&self, iova: u64, len: u64) -> Result<(), DmaError> {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        check_ranges(&ranges, iova, len, self)
    }

    #[cold]
    fn no_iommu(&self) -> DmaError {
        DmaError::NoIommu {
            space: self.to_string(),
        }
    }

    #[cold]
    fn map_failed(&self, iova: u64, len: u64, source: io::Error) -> DmaError {
        DmaError::Map {
            space: self.to_string(),
            iova,
            len,
            source,
        }
    }

    #[cold]
    fn unmap_failed(&self, iova: u64, len: u64, source: io::Error) -> DmaError {
        DmaError::Unmap {
            space: self.to_string(),
            iova,
            len,
            source,
        }
    }
}

impl AddressSpace for Container {
    unsafe fn map_dma(&self, iova: u64, len: usize, vaddr: *mut u8) -> Result<(), DmaError> {
        let vaddr = u64::try_from(vaddr.addr()).unwrap_or(u64::MAX);
        let (iova, len) = check_range(iova, len, vaddr)?;
        self.check_ranges(iova, len)?;
        if self.replay == DmaReplay::Off {
            // No books, so no lock. A group that leaves meanwhile makes the kernel refuse
            // the call (EINVAL), which the error reports.
            if self.attached.load(Ordering::Relaxed) == 0 {
                return Err(self.no_iommu());
            }
            // SAFETY: our caller upholds `map_dma`'s contract for this range.
            return unsafe { ioctl::map_dma(self.file.as_fd(), iova, len, vaddr) }
                .map_err(|source| self.map_failed(iova, len, source));
        }
        let mut state = self.state();
        if state.groups.is_empty() {
            return Err(self.no_iommu());
        }
        // SAFETY: our caller upholds `map_dma`'s contract for this range.
        unsafe { ioctl::map_dma(self.file.as_fd(), iova, len, vaddr) }
            .map_err(|source| self.map_failed(iova, len, source))?;
        state.books.insert(iova, len, vaddr);
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), DmaError> {
        let (iova, len) = check_range(iova, len, 0)?;
        let unmapped = if self.replay == DmaReplay::Off {
            if self.attached.load(Ordering::Relaxed) == 0 {
                // The kernel dropped every mapping with the last group; none is left to
                // unmap, and there are no books to tell what was there.
                return Ok(());
            }
            ioctl::unmap_dma(self.file.as_fd(), iova, len)
                .map_err(|source| self.unmap_failed(iova, len, source))?
        } else {
            let mut state = self.state();
            if state.groups.is_empty() {
                // The kernel already dropped everything; only the books remain.
                state.books.forget(iova, len)
            } else {
                let unmapped = ioctl::unmap_dma(self.file.as_fd(), iova, len)
                    .map_err(|source| self.unmap_failed(iova, len, source))?;
                state.books.forget(iova, len);
                unmapped
            }
        };
        if unmapped != len {
            return Err(DmaError::PartialUnmap {
                space: self.to_string(),
                iova,
                len,
                unmapped,
            });
        }
        Ok(())
    }

    fn iova_info(&self) -> Result<IovaInfo, DmaError> {
        if self.attached.load(Ordering::Relaxed) == 0 {
            return Err(self.no_iommu());
        }
        let info = self.query_info().map_err(|source| DmaError::Query {
            space: self.to_string(),
            what: "VFIO_IOMMU_GET_INFO",
            source,
        })?;
        *self.ranges.write().unwrap_or_else(PoisonError::into_inner) = info.ranges.clone();
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_names_the_missing_node() {
        let root = tempfile::tempdir().unwrap();
        let err = Container::open(root.path()).unwrap_err();
        let expected = format!(
            "cannot open the VFIO container {}/vfio/vfio",
            root.path().display()
        );
        assert_eq!(err.to_string(), expected);
        let ContainerError::Open { source, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn only_enodev_or_a_cleared_container_flag_means_the_kernel_detached_the_group() {
        // A plain file answers ENOTTY: not a group the kernel detached, so the EINVAL of
        // the unset stays an error.
        let file = tempfile::tempfile().unwrap();
        assert!(!detached_by_the_kernel(file.as_fd()));
    }

    #[test]
    fn a_regular_file_is_not_a_container() {
        // A plain file where the node should be: the API-version ioctl fails with ENOTTY,
        // and the error says which request on which path.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("vfio")).unwrap();
        std::fs::write(root.path().join("vfio/vfio"), b"").unwrap();
        let err = Container::open(root.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("vfio/vfio: VFIO_GET_API_VERSION failed"),
            "{err}"
        );
        let ContainerError::Ioctl { source, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
    }
}
