//! A lease on a legacy VFIO group (`/dev/vfio/<group>`) inside a [`Container`].
//!
//! The container owns the group fd and counts its users; a [`Group`] is one user. It holds
//! the container in an `Arc`, so the container outlives every group in it, and dropping the
//! last lease of a group detaches it from the container. A device keeps its lease in the
//! field after its own fd, so the device fd is closed first: the kernel refuses to detach a
//! group while one of its devices is open (rust-vmm/vfio #107).
//!
//! This module and `container.rs` import each other by design: a lease names its owner (to
//! give itself back on drop) and the owner hands out leases. It is the one import circle
//! of the crate.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use crate::container::Container;

/// A member of an IOMMU group that keeps the group from being viable: an endpoint bound to a
/// host driver other than vfio-pci (or a vfio variant).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blocker {
    /// The member's name (its PCI address).
    pub device: String,
    /// The host driver it is bound to.
    pub driver: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (bound to {})", self.device, self.driver)
    }
}

/// Why a group could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group node could not be opened (no member bound to vfio-pci, or it is open
    /// elsewhere: a group node opens only once).
    #[error("cannot open IOMMU group {group} at {path}")]
    Open {
        /// The group id.
        group: u32,
        /// The node.
        path: PathBuf,
        /// errno from `open`.
        #[source]
        source: io::Error,
    },
    /// Some endpoint of the group is bound to a host driver.
    #[error("IOMMU group {group} is not viable: {}", blockers_text(.blockers))]
    NotViable {
        /// The group id.
        group: u32,
        /// The members in the way (empty when sysfs could not tell).
        blockers: Vec<Blocker>,
    },
    /// An ioctl on the group or container failed.
    #[error("IOMMU group {group}: {what} failed")]
    Ioctl {
        /// The group id.
        group: u32,
        /// Which request.
        what: &'static str,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// Mapping the booked DMA mappings again, after the group joined, failed.
    #[error(
        "IOMMU group {group}: mapping the container's booked DMA range at iova {iova:#x} again failed"
    )]
    Replay {
        /// The group id.
        group: u32,
        /// The first IOVA that failed.
        iova: u64,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// The group is not attached to this container (a bookkeeping error).
    #[error("IOMMU group {group} is not attached to this container")]
    NotAttached {
        /// The group id.
        group: u32,
    },
    /// The group already has the most leases its count can hold.
    #[error("IOMMU group {group} has the maximum number of users")]
    TooManyUsers {
        /// The group id.
        group: u32,
    },
    /// `VFIO_GROUP_GET_DEVICE_FD` failed for a device of the group.
    #[error("IOMMU group {group}: cannot open device {device}")]
    DeviceFd {
        /// The group id.
        group: u32,
        /// The device name.
        device: String,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
}

fn blockers_text(blockers: &[Blocker]) -> String {
    if blockers.is_empty() {
        return "a member is bound to a host driver; bind every endpoint of the group to vfio-pci or unbind it".into();
    }
    let names: Vec<String> = blockers.iter().map(Blocker::to_string).collect();
    format!(
        "{} must be bound to vfio-pci or unbound first",
        names.join(", ")
    )
}

/// One user's lease on an attached group. Not `Clone`: each lease is one count.
pub struct Group {
    container: Arc<Container>,
    id: u32,
    leased: bool,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Group {
    pub(crate) fn new(container: Arc<Container>, id: u32) -> Self {
        Self {
            container,
            id,
            leased: true,
        }
    }

    /// The group id (`/dev/vfio/<id>`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The container the group is attached to.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// Opens one of the group's devices by name: its PCI address, or an mdev's UUID.
    pub(crate) fn open_device(&self, name: &str) -> Result<OwnedFd, GroupError> {
        let device_fd = |source| GroupError::DeviceFd {
            group: self.id,
            device: name.to_owned(),
            source,
        };
        let c_name = CString::new(name)
            .map_err(|_| device_fd(io::Error::from_raw_os_error(libc::EINVAL)))?;
        self.container
            .group_device_fd(self.id, &c_name)
            .map_err(device_fd)
    }

    /// A new fd for the group node, for handing to a VMM.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.container.group_try_clone_fd(self.id)
    }

    /// Ends this lease now and reports a failed detach (drop only logs it). Every device
    /// opened through this lease must be closed first.
    pub fn close(mut self) -> Result<(), GroupError> {
        self.leased = false;
        self.container.release_group(self.id)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.leased {
            return;
        }
        if let Err(err) = self.container.release_group(self.id) {
            warn!(group = self.id, error = %err, "releasing the IOMMU group failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_viable_names_the_blocking_member() {
        let err = GroupError::NotViable {
            group: 7,
            blockers: vec![Blocker {
                device: "0000:02:01.1".into(),
                driver: "e1000e".into(),
            }],
        };
        assert_eq!(
            err.to_string(),
            "IOMMU group 7 is not viable: 0000:02:01.1 (bound to e1000e) must be bound to vfio-pci or unbound first"
        );
        let err = GroupError::NotViable {
            group: 7,
            blockers: Vec::new(),
        };
        assert!(
            err.to_string()
                .starts_with("IOMMU group 7 is not viable: a member is bound")
        );
    }

    #[test]
    fn ioctl_errors_keep_errno_and_do_not_repeat_it() {
        let err = GroupError::Ioctl {
            group: 3,
            what: "VFIO_GROUP_SET_CONTAINER",
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(
            err.to_string(),
            "IOMMU group 3: VFIO_GROUP_SET_CONTAINER failed"
        );
        let GroupError::Ioctl { source, .. } = &err else {
            unreachable!()
        };
        assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
    }
}
