//! The iommufd address space: one `/dev/iommu` fd and one IOAS that every device joining it
//! shares.
//!
//! With the device cdev interface (`/dev/vfio/devices/vfioN`) there are no groups or
//! containers: a device is bound to an iommufd (`VFIO_DEVICE_BIND_IOMMUFD`) and attached to
//! an IOAS, an I/O address space object inside it (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`). The
//! IOAS keeps its mappings for as long as it exists, whatever the devices do, which is the
//! behaviour a VMM wants across hot-unplug (unlike a legacy container).
//!
//! [`Iommufd`] owns the fd and the IOAS, and destroys the IOAS on drop. Devices hold it in an
//! `Arc`, so one iommufd is shared by all the devices of a VM (the cloud-hypervisor #8287
//! review: one context per device was wrong) and outlives them. [`AttachedCdev`] is one
//! device's binding and attachment: it detaches before the cdev closes.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tracing::{debug, warn};

use crate::dma::{AddressSpace, DmaError, check_range, check_ranges};
use crate::ioctl;
use crate::iova::{IovaInfo, IovaRange, ranges_text};
use crate::node::open_node;

/// Why an iommufd could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum IommufdError {
    /// `/dev/iommu` could not be opened (no iommufd in the kernel, or no permission).
    #[error("cannot open iommufd {path}")]
    Open {
        /// The iommufd node.
        path: PathBuf,
        /// errno from `open`.
        #[source]
        source: io::Error,
    },
    /// An ioctl on the iommufd failed.
    #[error("iommufd {path}: {what} failed")]
    Ioctl {
        /// The iommufd node.
        path: PathBuf,
        /// Which request.
        what: &'static str,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
}

/// An iommufd with one IOAS, shared as `Arc<Iommufd>` by the devices attached to it.
pub struct Iommufd {
    /// An `OwnedFd`, not a `File`: its `as_fd` inlines, and it is on every DMA call.
    file: OwnedFd,
    path: PathBuf,
    ioas: u32,
    /// The IOVA ranges the IOAS accepts, read when it is made and when a device attaches or
    /// detaches; empty when unknown.
    ranges: RwLock<Vec<IovaRange>>,
}

impl fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommufd")
            .field("path", &self.path)
            .field("ioas", &self.ioas)
            .finish()
    }
}

impl fmt::Display for Iommufd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iommufd IOAS {}", self.ioas)
    }
}

impl Iommufd {
    /// Opens `<dev_root>/iommu` and allocates an IOAS in it.
    pub fn open(dev_root: &Path) -> Result<Arc<Self>, IommufdError> {
        let path = dev_root.join("iommu");
        let file = open_node(&path).map_err(|source| IommufdError::Open {
            path: path.clone(),
            source,
        })?;
        Self::with_new_ioas(file, path)
    }

    /// Takes an iommufd received from a privileged helper (see [`crate::VmmFds`]) and
    /// allocates this process's IOAS in it.
    pub fn from_fd(fd: OwnedFd) -> Result<Arc<Self>, IommufdError> {
        Self::with_new_ioas(fd, PathBuf::from("(received fd)"))
    }

    fn with_new_ioas(file: OwnedFd, path: PathBuf) -> Result<Arc<Self>, IommufdError> {
        let ioas = ioctl::ioas_alloc(file.as_fd()).map_err(|source| IommufdError::Ioctl {
            path: path.clone(),
            what: "IOMMU_IOAS_ALLOC",
            source,
        })?;
        debug!(path = %path.display(), ioas, "allocated an IOAS");
        let iommufd = Self {
            file,
            path,
            ioas,
            ranges: RwLock::new(Vec::new()),
        };
        iommufd.refresh_ranges();
        Ok(Arc::new(iommufd))
    }

    fn query_info(&self) -> io::Result<IovaInfo> {
        let (pairs, alignment) = ioctl::ioas_iova_ranges(self.file.as_fd(), self.ioas)?;
        let mut ranges: Vec<IovaRange> = pairs
            .into_iter()
            .map(|(start, last)| IovaRange { start, last })
            .collect();
        ranges.sort_by_key(|r| r.start);
        Ok(IovaInfo {
            ranges,
            page_sizes: alignment,
            dma_avail: None,
        })
    }

    /// Reads the IOAS's IOVA ranges again (a device that attached or detached changes its
    /// reserved regions). If the kernel does not answer, they become unknown.
    pub(crate) fn refresh_ranges(&self) {
        let ranges = match self.query_info() {
            Ok(info) => info.ranges,
            Err(err) => {
                warn!(ioas = self.ioas, error = %err, "cannot read the IOAS's IOVA ranges; maps are not checked against them");
                Vec::new()
            }
        };
        debug!(ioas = self.ioas, ranges = %ranges_text(&ranges), "usable IOVA ranges");
        *self.ranges.write().unwrap_or_else(PoisonError::into_inner) = ranges;
    }

    /// The IOAS id that devices attach to.
    pub fn ioas_id(&self) -> u32 {
        self.ioas
    }

    /// The iommufd, for handing to a VMM.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Iommufd {
    fn drop(&mut self) {
        // Devices hold an `Arc` to us, so all of them have detached by now and the IOAS can
        // go. Closing the fd would free it anyway; destroying it explicitly reports errors.
        if let Err(err) = ioctl::destroy(self.file.as_fd(), self.ioas) {
            warn!(ioas = self.ioas, error = %err, "destroying the IOAS failed; closing the iommufd frees it");
        }
    }
}

impl AddressSpace for Iommufd {
    unsafe fn map_dma(&self, iova: u64, len: usize, vaddr: *mut u8) -> Result<(), DmaError> {
        let vaddr = u64::try_from(vaddr.addr()).unwrap_or(u64::MAX);
        let (iova, len) = check_range(iova, len, vaddr)?;
        {
            let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
            check_ranges(&ranges, iova, len, self)?;
        }
        // SAFETY: our caller upholds `map_dma`'s contract for this range.
        unsafe { ioctl::ioas_map(self.file.as_fd(), self.ioas, iova, len, vaddr) }.map_err(
            |source| DmaError::Map {
                space: self.to_string(),
                iova,
                len,
                source,
            },
        )
    }

    fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), DmaError> {
        let (iova, len) = check_range(iova, len, 0)?;
        let unmapped =
            ioctl::ioas_unmap(self.file.as_fd(), self.ioas, iova, len).map_err(|source| {
                DmaError::Unmap {
                    space: self.to_string(),
                    iova,
                    len,
                    source,
                }
            })?;
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
        let info = self.query_info().map_err(|source| DmaError::Query {
            space: self.to_string(),
            what: "IOMMU_IOAS_IOVA_RANGES",
            source,
        })?;
        *self.ranges.write().unwrap_or_else(PoisonError::into_inner) = info.ranges.clone();
        Ok(info)
    }
}

/// Why a device cdev could not be bound or attached.
#[derive(Debug, thiserror::Error)]
pub enum CdevError {
    /// The cdev node could not be opened.
    #[error("cannot open VFIO device cdev {path}")]
    Open {
        /// The cdev node.
        path: PathBuf,
        /// errno from `open`.
        #[source]
        source: io::Error,
    },
    /// Binding or attaching failed.
    #[error("VFIO device {device}: {what} failed")]
    Ioctl {
        /// The device name.
        device: String,
        /// Which request.
        what: &'static str,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
}

/// A device cdev bound to an iommufd and attached to its IOAS. Dropping it detaches the
/// device from the IOAS, then closes the cdev (which ends the binding), then releases its
/// hold on the iommufd, in that order.
pub(crate) struct AttachedCdev {
    // Field order is drop order: the cdev closes before the iommufd `Arc` is released.
    file: File,
    iommufd: Arc<Iommufd>,
    dev_id: Option<u32>,
    attached: bool,
}

impl fmt::Debug for AttachedCdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachedCdev")
            .field("ioas", &self.iommufd.ioas)
            .field("dev_id", &self.dev_id)
            .field("attached", &self.attached)
            .finish()
    }
}

impl AttachedCdev {
    /// Opens `path`, binds it to `iommufd` and attaches it to its IOAS.
    pub(crate) fn open(
        path: &Path,
        device: &str,
        iommufd: &Arc<Iommufd>,
    ) -> Result<Self, CdevError> {
        let file = File::from(open_node(path).map_err(|source| CdevError::Open {
            path: path.to_path_buf(),
            source,
        })?);
        let dev_id =
            ioctl::device_bind_iommufd(file.as_fd(), iommufd.as_fd()).map_err(|source| {
                CdevError::Ioctl {
                    device: device.to_owned(),
                    what: "VFIO_DEVICE_BIND_IOMMUFD",
                    source,
                }
            })?;
        // If attaching fails, dropping `file` closes the cdev, which undoes the bind.
        Self::attach(file, Some(dev_id), device, iommufd)
    }

    /// Attaches a cdev that is already bound to `iommufd` (received from a privileged
    /// helper) to its IOAS.
    pub(crate) fn from_bound(
        fd: OwnedFd,
        device: &str,
        iommufd: &Arc<Iommufd>,
    ) -> Result<Self, CdevError> {
        Self::attach(File::from(fd), None, device, iommufd)
    }

    fn attach(
        file: File,
        dev_id: Option<u32>,
        device: &str,
        iommufd: &Arc<Iommufd>,
    ) -> Result<Self, CdevError> {
        ioctl::device_attach_pt(file.as_fd(), iommufd.ioas).map_err(|source| CdevError::Ioctl {
            device: device.to_owned(),
            what: "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            source,
        })?;
        debug!(device, ioas = iommufd.ioas, "attached device to the IOAS");
        iommufd.refresh_ranges();
        Ok(Self {
            file,
            iommufd: Arc::clone(iommufd),
            dev_id,
            attached: true,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn iommufd(&self) -> &Arc<Iommufd> {
        &self.iommufd
    }

    pub(crate) fn dev_id(&self) -> Option<u32> {
        self.dev_id
    }

    /// Detaches now and reports failure; the cdev closes when `self` drops.
    pub(crate) fn detach(&mut self) -> io::Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let detached = ioctl::device_detach_pt(self.file.as_fd());
        self.iommufd.refresh_ranges();
        detached
    }
}

impl Drop for AttachedCdev {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            warn!(ioas = self.iommufd.ioas, error = %err, "detaching the device from the IOAS failed; closing the cdev detaches it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_names_the_missing_node() {
        let root = tempfile::tempdir().unwrap();
        let err = Iommufd::open(root.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot open iommufd {}/iommu", root.path().display())
        );
    }

    #[test]
    fn a_regular_file_is_not_an_iommufd() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("iommu"), b"").unwrap();
        let err = Iommufd::open(root.path()).unwrap_err();
        assert!(
            err.to_string().ends_with("/iommu: IOMMU_IOAS_ALLOC failed"),
            "{err}"
        );
        let IommufdError::Ioctl { source, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
    }
}
