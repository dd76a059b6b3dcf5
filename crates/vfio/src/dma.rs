//! The I/O address space as a trait: DMA map and unmap, whichever kernel interface holds it.
//!
//! A VMM maps guest memory so that its passthrough devices can reach it. In the legacy
//! interface the mappings live in a container (`VFIO_IOMMU_MAP_DMA`); with iommufd they
//! live in an IOAS (`IOMMU_IOAS_MAP`). The memory manager of a VMM only needs "map this,
//! unmap that", so that is the whole trait. Both methods are required: there is no default
//! that panics for an implementor that forgot one (rust-vmm's `VfioOps` has three such
//! defaults), and no `as_any` to downcast through: a device knows its backend by its own
//! enum.
//!
//! [`DmaMapping`] is the RAII form: it holds the address space (an `Arc`, so the space lives
//! as long as any mapping in it) and unmaps on drop.

use std::fmt;
use std::io;
use std::sync::Arc;

use tracing::warn;

use crate::iova::{IovaInfo, IovaRange, ranges_text};

/// The smallest IOMMU page. Ranges must be aligned to it; the kernel checks the IOMMU's own
/// page-size bitmap on top of this.
pub const DMA_PAGE_SIZE: u64 = 4096;

/// An I/O address space that devices do DMA through: a legacy [`crate::Container`] or an
/// iommufd [`crate::Iommufd`] IOAS.
pub trait AddressSpace: fmt::Debug + Send + Sync {
    /// Maps `len` bytes of this process's memory at `vaddr` to the I/O virtual address
    /// `iova`, readable and writable by every device attached to this address space.
    /// `iova`, `len` and `vaddr` must be multiples of [`DMA_PAGE_SIZE`] and `len` non-zero.
    ///
    /// # Safety
    ///
    /// From the moment this is called until [`AddressSpace::unmap_dma`] succeeds for a range
    /// that covers it, the devices may read and write `[vaddr, vaddr + len)` at any time,
    /// without synchronisation. During all that time:
    ///
    /// - the range must stay mapped in this process (not `munmap`ed or replaced by
    ///   `mmap(MAP_FIXED)`);
    /// - no Rust reference (`&`/`&mut`) to any byte of it may exist, because the device's
    ///   writes would break Rust's aliasing rules; only raw-pointer, volatile or atomic
    ///   accesses, system calls that accept any content (`read`, `write`), and sharing with
    ///   a guest or another process are allowed;
    /// - this must not be called while such a reference is live.
    ///
    /// A legacy container may map the range again by itself when a group joins after the
    /// kernel dropped the container's mappings with its last group (see
    /// [`crate::Container`]); the same contract covers that.
    unsafe fn map_dma(&self, iova: u64, len: usize, vaddr: *mut u8) -> Result<(), DmaError>;

    /// Unmaps `[iova, iova + len)`. The range must cover whole mappings made by
    /// [`AddressSpace::map_dma`]; the kernel refuses to split one.
    fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), DmaError>;

    /// Asks the kernel now which IOVAs this space accepts (and, legacy, how many more
    /// mappings), so that a VMM can lay guest memory out there. The space keeps the ranges
    /// and [`AddressSpace::map_dma`] refuses a range outside them
    /// ([`DmaError::OutsideIovaRanges`]) before the kernel sees it; they are read again when
    /// a device joins (its reserved regions may cut new holes).
    fn iova_info(&self) -> Result<IovaInfo, DmaError>;
}

/// Why a DMA map or unmap failed. Every variant names the address space and the range.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The range is empty, not page-aligned, or wraps around the address space.
    #[error(
        "DMA range iova {iova:#x} length {len:#x} vaddr {vaddr:#x} is empty, not aligned to {DMA_PAGE_SIZE:#x}, or wraps around"
    )]
    BadRange {
        /// The I/O virtual address asked for.
        iova: u64,
        /// The length asked for.
        len: u64,
        /// The user address asked for (0 for an unmap).
        vaddr: u64,
    },
    /// The legacy container has no group attached, so it has no IOMMU to map into yet.
    #[error("{space} has no IOMMU group attached yet, so it cannot map DMA (open a device first)")]
    NoIommu {
        /// The address space.
        space: String,
    },
    /// The range is not inside one of the IOVA ranges the IOMMU accepts (see
    /// [`AddressSpace::iova_info`]); nothing was asked of the kernel.
    #[error(
        "{space}: iova {iova:#x} length {len:#x} is outside the usable IOVA ranges {}",
        ranges_text(ranges)
    )]
    OutsideIovaRanges {
        /// The address space.
        space: String,
        /// The I/O virtual address asked for.
        iova: u64,
        /// The length asked for.
        len: u64,
        /// The ranges it accepts.
        ranges: Vec<IovaRange>,
    },
    /// Asking the kernel about the address space failed.
    #[error("{space}: {what} failed")]
    Query {
        /// The address space.
        space: String,
        /// Which request.
        what: &'static str,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the mapping.
    #[error("{space}: mapping iova {iova:#x} length {len:#x} failed")]
    Map {
        /// The address space.
        space: String,
        /// The I/O virtual address.
        iova: u64,
        /// The length.
        len: u64,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the unmapping.
    #[error("{space}: unmapping iova {iova:#x} length {len:#x} failed")]
    Unmap {
        /// The address space.
        space: String,
        /// The I/O virtual address.
        iova: u64,
        /// The length.
        len: u64,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// The kernel unmapped a different amount than asked (the range did not cover whole
    /// mappings, or nothing was mapped there).
    #[error("{space}: unmapping iova {iova:#x} length {len:#x} removed {unmapped:#x} bytes")]
    PartialUnmap {
        /// The address space.
        space: String,
        /// The I/O virtual address.
        iova: u64,
        /// The length asked for.
        len: u64,
        /// What the kernel reported as unmapped.
        unmapped: u64,
    },
}

/// Checks a range and returns `(iova, len, vaddr)` as the kernel's `u64`s.
pub(crate) fn check_range(iova: u64, len: usize, vaddr: u64) -> Result<(u64, u64), DmaError> {
    let len64 = u64::try_from(len).unwrap_or(u64::MAX);
    let aligned = |v: u64| v.is_multiple_of(DMA_PAGE_SIZE);
    let ok = len64 != 0
        && aligned(iova)
        && aligned(len64)
        && aligned(vaddr)
        && iova.checked_add(len64 - 1).is_some()
        && vaddr.checked_add(len64 - 1).is_some();
    if ok {
        Ok((iova, len64))
    } else {
        Err(DmaError::BadRange {
            iova,
            len: len64,
            vaddr,
        })
    }
}

/// Refuses `[iova, iova + len)` unless it lies inside one of `ranges` (empty: unknown, so
/// accepted). `space` names the address space in the error.
pub(crate) fn check_ranges(
    ranges: &[IovaRange],
    iova: u64,
    len: u64,
    space: &dyn fmt::Display,
) -> Result<(), DmaError> {
    if crate::iova::fits(ranges, iova, len) {
        Ok(())
    } else {
        Err(DmaError::OutsideIovaRanges {
            space: space.to_string(),
            iova,
            len,
            ranges: ranges.to_vec(),
        })
    }
}

/// A DMA mapping that unmaps itself when dropped. It holds its address space, which
/// therefore outlives it.
#[derive(Debug)]
pub struct DmaMapping {
    space: Arc<dyn AddressSpace>,
    iova: u64,
    len: usize,
    mapped: bool,
}

impl DmaMapping {
    /// Maps `len` bytes at `vaddr` to `iova` in `space` (see [`AddressSpace::map_dma`]).
    ///
    /// # Safety
    ///
    /// The contract of [`AddressSpace::map_dma`] holds for `[vaddr, vaddr + len)` until this
    /// mapping is dropped or [`DmaMapping::unmap`] returns.
    pub unsafe fn new(
        space: Arc<dyn AddressSpace>,
        iova: u64,
        len: usize,
        vaddr: *mut u8,
    ) -> Result<Self, DmaError> {
        // SAFETY: forwarded to our caller (see `# Safety`).
        unsafe { space.map_dma(iova, len, vaddr)? };
        Ok(Self {
            space,
            iova,
            len,
            mapped: true,
        })
    }

    /// The I/O virtual address of the mapping.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps now and reports failure (drop only logs it). On failure the range may still be
    /// mapped, and the caller's contract for it still holds.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.mapped = false;
        self.space.unmap_dma(self.iova, self.len)
    }
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        if !self.mapped {
            return;
        }
        if let Err(err) = self.space.unmap_dma(self.iova, self.len) {
            warn!(iova = self.iova, len = self.len, error = %err, "DMA unmap on drop failed; the range stays mapped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn ranges_must_be_page_aligned_non_empty_and_not_wrap() {
        assert_eq!(
            check_range(0x1000, 0x2000, 0x7000).unwrap(),
            (0x1000, 0x2000)
        );
        for (iova, len, vaddr) in [
            (0, 0, 0),
            (0x1001, 0x1000, 0),
            (0x1000, 0x1001, 0),
            (0x1000, 0x1000, 0x10),
            (u64::MAX - 0xfff, 0x2000, 0),
            (0, 0x2000, u64::MAX - 0xfff),
        ] {
            let err = check_range(iova, len, vaddr).unwrap_err();
            assert!(
                matches!(err, DmaError::BadRange { .. }),
                "{iova:#x} {len:#x}"
            );
        }
    }

    #[test]
    fn a_map_outside_the_ranges_is_refused_before_the_kernel_naming_them() {
        let ranges = [
            IovaRange {
                start: 0,
                last: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                last: 0x7f_ffff_ffff,
            },
        ];
        check_ranges(&ranges, 0x1_0000_0000, 0x1000, &"container").unwrap();
        let err = check_ranges(&ranges, 0x80_0000_0000, 0x1000, &"container").unwrap_err();
        assert_eq!(
            err.to_string(),
            "container: iova 0x8000000000 length 0x1000 is outside the usable IOVA ranges 0x0..=0xfedfffff, 0xfef00000..=0x7fffffffff"
        );
        assert!(matches!(err, DmaError::OutsideIovaRanges { ref ranges, .. } if ranges.len() == 2));
        check_ranges(&ranges, 0xfee0_0000, 0x1000, &"container").unwrap_err();
        check_ranges(&[], 0xfee0_0000, 0x1000, &"container").unwrap();
    }

    #[test]
    fn messages_name_the_space_and_range_once() {
        let err = DmaError::Map {
            space: "iommufd IOAS 2".into(),
            iova: 0x1000,
            len: 0x2000,
            source: io::Error::from_raw_os_error(libc::EFAULT),
        };
        assert_eq!(
            err.to_string(),
            "iommufd IOAS 2: mapping iova 0x1000 length 0x2000 failed"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("Bad address"), "{source}");
    }

    /// A fake address space that records calls, to check the guard's drop behaviour.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl AddressSpace for Recorder {
        unsafe fn map_dma(&self, iova: u64, len: usize, _vaddr: *mut u8) -> Result<(), DmaError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("map {iova:#x} {len:#x}"));
            Ok(())
        }

        fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), DmaError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("unmap {iova:#x} {len:#x}"));
            Ok(())
        }

        fn iova_info(&self) -> Result<IovaInfo, DmaError> {
            Ok(IovaInfo::default())
        }
    }

    #[test]
    fn mapping_guard_unmaps_once_and_keeps_the_space_alive() {
        let space = Arc::new(Recorder::default());
        let dyn_space: Arc<dyn AddressSpace> = space.clone();
        // SAFETY: the recorder never touches memory.
        let mapping =
            unsafe { DmaMapping::new(dyn_space, 0x1000, 0x2000, std::ptr::null_mut()) }.unwrap();
        assert_eq!(
            Arc::strong_count(&space),
            2,
            "the mapping holds its address space"
        );
        drop(mapping);
        assert_eq!(Arc::strong_count(&space), 1);
        // SAFETY: as above.
        let mapping =
            unsafe { DmaMapping::new(space.clone(), 0x4000, 0x1000, std::ptr::null_mut()) }
                .unwrap();
        mapping.unmap().unwrap();
        let calls = space.0.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "map 0x1000 0x2000",
                "unmap 0x1000 0x2000",
                "map 0x4000 0x1000",
                "unmap 0x4000 0x1000"
            ]
        );
    }
}
