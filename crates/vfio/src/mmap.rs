//! Regions mapped into this process: a BAR's registers as memory, read and written with
//! volatile accesses instead of one `pread`/`pwrite` system call each.
//!
//! A region that VFIO lets be mmapped (`VFIO_REGION_INFO_FLAG_MMAP`) may still have parts
//! that must not be: the sparse-mmap capability then lists the parts that may, and only those
//! are mapped. On kernels that say neither that nor `MSIX_MAPPABLE` for the BAR that holds
//! the MSI-X table, the table's pages are cut out too (the kernel emulates the table; older
//! kernels refused to map it). The rest of the region stays reachable through
//! [`VfioDevice::read_region`] and [`VfioDevice::write_region`].
//!
//! [`MappedRegion`] owns its mappings and unmaps them on drop. Its accessors check bounds and
//! natural alignment and use volatile loads and stores of the size asked for (a register read
//! must be one access of its width). The mapping keeps the device's file open in the kernel
//! (the mapping holds its own reference), so unbinding the device waits for the drop.
//!
//! This module and `ioctl.rs` are the only ones that say `unsafe`.

use std::fmt;
use std::io;
use std::ptr::NonNull;

use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use crate::device::VfioDevice;
use crate::region::{RegionCap, SparseArea, pci_region_name};

/// The page size mappings are made in (x86 and arm64 hosts with 4 KiB pages).
const PAGE: u64 = 4096;

/// Why a region could not be mapped or accessed through its mapping. Every variant names
/// the device and the region.
#[derive(Debug, thiserror::Error)]
pub enum MmapError {
    /// The device has no such region.
    #[error("VFIO device {device} has no region {index}")]
    NoRegion {
        /// The device name.
        device: String,
        /// The region index asked for.
        index: u32,
    },
    /// The region has no mmappable part (no `mmap` flag, or no area left once the MSI-X
    /// table is cut out): use `read_region`/`write_region`.
    #[error("VFIO device {device}: {region} cannot be mmapped (use read_region/write_region)")]
    NotMappable {
        /// The device name.
        device: String,
        /// The region's name.
        region: String,
    },
    /// `mmap` failed.
    #[error("VFIO device {device}: mmap of {region} at {offset:#x}, {len:#x} bytes failed")]
    Mmap {
        /// The device name.
        device: String,
        /// The region's name.
        region: String,
        /// The area's offset in the region.
        offset: u64,
        /// The area's length.
        len: u64,
        /// errno from `mmap`.
        #[source]
        source: io::Error,
    },
    /// The access is not inside one mapped area, or not aligned to its own size.
    #[error(
        "VFIO device {device}: {len}-byte access at {offset:#x} of {region} is not aligned or not inside a mapped area"
    )]
    OutsideMapping {
        /// The device name.
        device: String,
        /// The region's name.
        region: String,
        /// Offset in the region.
        offset: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// Reading config space to find the MSI-X table failed.
    #[error("VFIO device {device}: reading the MSI-X capability failed")]
    Config {
        /// The device name.
        device: String,
        /// What failed.
        #[source]
        source: Box<crate::device::VfioDeviceError>,
    },
}

/// One mapped area of a region.
#[derive(Debug)]
pub struct MappedArea {
    ptr: NonNull<u8>,
    len: usize,
    offset: u64,
}

impl MappedArea {
    /// The area's offset from the start of the region.
    pub fn region_offset(&self) -> u64 {
        self.offset
    }

    /// The area's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an area is never empty (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the area starts in this process, e.g. to give it to KVM as guest memory for
    /// the BAR. Accesses through it must be volatile; it stays valid while the
    /// [`MappedRegion`] lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn end(&self) -> u64 {
        self.offset + u64::try_from(self.len).unwrap_or(u64::MAX)
    }
}

/// The mmappable areas of a region, mapped `MAP_SHARED` with the region's read/write
/// permissions, and unmapped on drop.
///
/// Accessing device memory while the device's memory decoding is off (`PCI_COMMAND` bit 1
/// clear, or during a reset) makes vfio-pci fault the access with `SIGBUS`, as on bare
/// metal; a VMM keeps decoding on while it touches the mapping.
pub struct MappedRegion {
    device: String,
    index: u32,
    size: u64,
    areas: Vec<MappedArea>,
}

// SAFETY: the mappings are plain shared memory owned by this value; every access through
// them is a volatile load or store, which is sound from any thread (the device sees
// concurrent accesses as concurrent bus transactions), and `Drop` unmaps them once.
unsafe impl Send for MappedRegion {}
// SAFETY: as above; `&self` accessors only make volatile accesses.
unsafe impl Sync for MappedRegion {}

impl fmt::Debug for MappedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedRegion")
            .field("device", &self.device)
            .field("region", &pci_region_name(self.index))
            .field("size", &self.size)
            .field("areas", &self.areas)
            .finish()
    }
}

impl MappedRegion {
    /// The region index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The whole region's size (the mapped areas may cover less).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The mapped areas, by offset.
    pub fn areas(&self) -> &[MappedArea] {
        &self.areas
    }

    /// The address of `[offset, offset + len)` if it is inside one area and `offset` is a
    /// multiple of `align`.
    fn locate(&self, offset: u64, len: usize, align: u64) -> Result<*mut u8, MmapError> {
        let outside = || MmapError::OutsideMapping {
            device: self.device.clone(),
            region: pci_region_name(self.index),
            offset,
            len,
        };
        let len64 = u64::try_from(len).map_err(|_| outside())?;
        let end = offset.checked_add(len64).ok_or_else(outside)?;
        if !offset.is_multiple_of(align) {
            return Err(outside());
        }
        let area = self
            .areas
            .iter()
            .find(|a| a.offset <= offset && end <= a.end())
            .ok_or_else(outside)?;
        let at = usize::try_from(offset - area.offset).map_err(|_| outside())?;
        // The pointer stays inside the area (checked above), so `wrapping_add` is exact.
        Ok(area.ptr.as_ptr().wrapping_add(at))
    }

    /// Reads a byte at `offset` of the region.
    pub fn read_u8(&self, offset: u64) -> Result<u8, MmapError> {
        let ptr = self.locate(offset, 1, 1)?;
        // SAFETY: `ptr` is inside a live shared mapping of this region (checked by
        // `locate`); a volatile load is how device memory must be read.
        Ok(unsafe { ptr.read_volatile() })
    }

    /// Reads a 16-bit register at `offset` (aligned to 2) with one access.
    pub fn read_u16(&self, offset: u64) -> Result<u16, MmapError> {
        let ptr = self.locate(offset, 2, 2)?.cast::<u16>();
        // SAFETY: `ptr` is inside a live mapping and aligned to 2 (the mapping is
        // page-aligned and `offset` is even); one volatile load of the register's width.
        Ok(u16::from_le(unsafe { ptr.read_volatile() }))
    }

    /// Reads a 32-bit register at `offset` (aligned to 4) with one access.
    pub fn read_u32(&self, offset: u64) -> Result<u32, MmapError> {
        let ptr = self.locate(offset, 4, 4)?.cast::<u32>();
        // SAFETY: `ptr` is inside a live mapping and aligned to 4 (page-aligned mapping,
        // `offset` checked); one volatile load of the register's width.
        Ok(u32::from_le(unsafe { ptr.read_volatile() }))
    }

    /// Reads a 64-bit register at `offset` (aligned to 8) with one access.
    pub fn read_u64(&self, offset: u64) -> Result<u64, MmapError> {
        let ptr = self.locate(offset, 8, 8)?.cast::<u64>();
        // SAFETY: `ptr` is inside a live mapping and aligned to 8; one volatile load.
        Ok(u64::from_le(unsafe { ptr.read_volatile() }))
    }

    /// Writes a byte at `offset` of the region.
    pub fn write_u8(&self, offset: u64, value: u8) -> Result<(), MmapError> {
        let ptr = self.locate(offset, 1, 1)?;
        // SAFETY: `ptr` is inside a live shared, writable mapping of this region (mapped
        // writable only if the region is); a volatile store is how device memory is written.
        unsafe { ptr.write_volatile(value) };
        Ok(())
    }

    /// Writes a 16-bit register at `offset` (aligned to 2) with one access.
    pub fn write_u16(&self, offset: u64, value: u16) -> Result<(), MmapError> {
        let ptr = self.locate(offset, 2, 2)?.cast::<u16>();
        // SAFETY: inside a live mapping, aligned to 2; one volatile store.
        unsafe { ptr.write_volatile(value.to_le()) };
        Ok(())
    }

    /// Writes a 32-bit register at `offset` (aligned to 4) with one access.
    pub fn write_u32(&self, offset: u64, value: u32) -> Result<(), MmapError> {
        let ptr = self.locate(offset, 4, 4)?.cast::<u32>();
        // SAFETY: inside a live mapping, aligned to 4; one volatile store.
        unsafe { ptr.write_volatile(value.to_le()) };
        Ok(())
    }

    /// Writes a 64-bit register at `offset` (aligned to 8) with one access.
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<(), MmapError> {
        let ptr = self.locate(offset, 8, 8)?.cast::<u64>();
        // SAFETY: inside a live mapping, aligned to 8; one volatile store.
        unsafe { ptr.write_volatile(value.to_le()) };
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`, one volatile byte load each (for
    /// memory-like areas; registers want the sized reads).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MmapError> {
        let ptr = self.locate(offset, buf.len(), 1)?;
        for (k, byte) in buf.iter_mut().enumerate() {
            // SAFETY: `[ptr, ptr + buf.len())` is inside one live mapping (`locate`).
            *byte = unsafe { ptr.add(k).read_volatile() };
        }
        Ok(())
    }

    /// Copies `buf` to `offset`, one volatile byte store each.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), MmapError> {
        let ptr = self.locate(offset, buf.len(), 1)?;
        for (k, byte) in buf.iter().enumerate() {
            // SAFETY: `[ptr, ptr + buf.len())` is inside one live, writable mapping.
            unsafe { ptr.add(k).write_volatile(*byte) };
        }
        Ok(())
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        for area in &self.areas {
            // SAFETY: each area is a mapping `map_region` made and nothing else unmaps;
            // after this no accessor can reach it (we are being dropped).
            let ret = unsafe { libc::munmap(area.ptr.as_ptr().cast(), area.len) };
            if ret != 0 {
                tracing::warn!(
                    device = self.device,
                    region = pci_region_name(self.index),
                    offset = area.offset,
                    error = %io::Error::last_os_error(),
                    "munmap of a region area failed; the mapping stays until the process exits"
                );
            }
        }
    }
}

/// The MSI-X table's place: which BAR, and its byte range there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsixTable {
    pub(crate) bar: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// `areas` without the pages that `hole` touches (rounded out to whole pages).
pub(crate) fn cut_out(areas: &[SparseArea], hole_start: u64, hole_len: u64) -> Vec<SparseArea> {
    let start = hole_start - hole_start % PAGE;
    let end = hole_start
        .saturating_add(hole_len)
        .div_ceil(PAGE)
        .saturating_mul(PAGE);
    let mut out = Vec::new();
    for area in areas {
        let area_end = area.offset.saturating_add(area.size);
        if area_end <= start || area.offset >= end {
            out.push(*area);
            continue;
        }
        if area.offset < start {
            out.push(SparseArea {
                offset: area.offset,
                size: start - area.offset,
            });
        }
        if area_end > end {
            out.push(SparseArea {
                offset: end,
                size: area_end - end,
            });
        }
    }
    out
}

/// Mapping regions, in either interface.
impl VfioDevice {
    /// Where the MSI-X table is, from the MSI-X capability in config space.
    fn msix_table(&self) -> Result<Option<MsixTable>, MmapError> {
        let config_error = |source| MmapError::Config {
            device: self.name().to_owned(),
            source: Box::new(source),
        };
        let read = |offset: u64, buf: &mut [u8]| {
            self.read_region(VFIO_PCI_CONFIG_REGION_INDEX, offset, buf)
                .map_err(config_error)
        };
        let mut status = [0u8; 2];
        read(6, &mut status)?;
        if u16::from_le_bytes(status) & 0x10 == 0 {
            return Ok(None); // no capability list
        }
        let mut byte = [0u8; 1];
        read(0x34, &mut byte)?;
        let mut at = u64::from(byte[0] & !3);
        // A capability list has at most 48 entries in 256 bytes; more is a loop.
        for _ in 0..48 {
            if at < 0x40 {
                return Ok(None);
            }
            let mut header = [0u8; 2];
            read(at, &mut header)?;
            if header[0] == 0x11 {
                let mut control = [0u8; 2];
                read(at + 2, &mut control)?;
                let mut table = [0u8; 4];
                read(at + 4, &mut table)?;
                let entries = u64::from(u16::from_le_bytes(control) & 0x7ff) + 1;
                let table = u32::from_le_bytes(table);
                return Ok(Some(MsixTable {
                    bar: table & 7,
                    offset: u64::from(table & !7),
                    size: entries * 16,
                }));
            }
            at = u64::from(header[1] & !3);
        }
        Ok(None)
    }

    /// The parts of region `index` that [`VfioDevice::map_region`] maps: the sparse-mmap
    /// areas if the kernel lists them, else the whole region; without the MSI-X table's
    /// pages when the table is in this BAR and the kernel does not say it may be mapped.
    pub fn mappable_areas(&self, index: u32) -> Result<Vec<SparseArea>, MmapError> {
        let region = self.region(index).ok_or_else(|| MmapError::NoRegion {
            device: self.name().to_owned(),
            index,
        })?;
        let mut areas = region.mmap_areas();
        let msix_mappable = region.caps.contains(&RegionCap::MsixMappable);
        let sparse = region
            .caps
            .iter()
            .any(|c| matches!(c, RegionCap::SparseMmap { .. }));
        if !areas.is_empty()
            && !msix_mappable
            && !sparse
            && self.info().flags.pci()
            && let Some(table) = self.msix_table()?.filter(|t| t.bar == index)
        {
            areas = cut_out(&areas, table.offset, table.size);
        }
        Ok(areas)
    }

    /// Maps the mmappable areas of region `index` (see [`VfioDevice::mappable_areas`]) into
    /// this process. A region with none is [`MmapError::NotMappable`]: read and write it
    /// through the device fd instead.
    pub fn map_region(&self, index: u32) -> Result<MappedRegion, MmapError> {
        let areas = self.mappable_areas(index)?;
        let region_name = pci_region_name(index);
        let not_mappable = || MmapError::NotMappable {
            device: self.name().to_owned(),
            region: region_name.clone(),
        };
        let Some(region) = self.region(index) else {
            return Err(not_mappable());
        };
        if areas.is_empty() {
            return Err(not_mappable());
        }
        let mut prot = 0;
        if region.flags.readable() {
            prot |= libc::PROT_READ;
        }
        if region.flags.writable() {
            prot |= libc::PROT_WRITE;
        }
        let mut mapped = MappedRegion {
            device: self.name().to_owned(),
            index,
            size: region.size,
            areas: Vec::with_capacity(areas.len()),
        };
        for area in areas {
            let mmap_error = |source| MmapError::Mmap {
                device: self.name().to_owned(),
                region: region_name.clone(),
                offset: area.offset,
                len: area.size,
                source,
            };
            let invalid = || mmap_error(io::Error::from_raw_os_error(libc::EINVAL));
            let len = usize::try_from(area.size).map_err(|_| invalid())?;
            let file_offset = region
                .offset
                .checked_add(area.offset)
                .and_then(|o| libc::off_t::try_from(o).ok())
                .ok_or_else(invalid)?;
            if len == 0 {
                continue;
            }
            // SAFETY: a new shared mapping at an address the kernel picks (no existing
            // memory is replaced) of `len` bytes of the device fd at the area's offset, which
            // the kernel validates; the result is checked before use.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&self.as_fd()),
                    file_offset,
                )
            };
            if ptr == libc::MAP_FAILED {
                // The areas mapped so far are unmapped by `mapped`'s drop.
                return Err(mmap_error(io::Error::last_os_error()));
            }
            let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(invalid)?;
            mapped.areas.push(MappedArea {
                ptr,
                len,
                offset: area.offset,
            });
        }
        tracing::debug!(
            device = self.name(),
            region = region_name,
            areas = mapped.areas.len(),
            "mapped region"
        );
        Ok(mapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(offset: u64, size: u64) -> SparseArea {
        SparseArea { offset, size }
    }

    #[test]
    fn the_msix_table_pages_are_cut_out_of_the_areas() {
        // A 16 KiB BAR with a 5-entry table at 0x2000: its page goes.
        assert_eq!(
            cut_out(&[area(0, 0x4000)], 0x2000, 5 * 16),
            [area(0, 0x2000), area(0x3000, 0x1000)]
        );
        // A table straddling a page boundary takes both pages.
        assert_eq!(
            cut_out(&[area(0, 0x4000)], 0x1ff0, 0x20),
            [area(0, 0x1000), area(0x3000, 0x1000)]
        );
        // A table at the start or the end leaves one side only.
        assert_eq!(cut_out(&[area(0, 0x4000)], 0, 0x10), [area(0x1000, 0x3000)]);
        assert_eq!(
            cut_out(&[area(0, 0x4000)], 0x3800, 0x800),
            [area(0, 0x3000)]
        );
        // A table filling the BAR leaves nothing; areas away from it stay whole.
        assert_eq!(cut_out(&[area(0, 0x1000)], 0, 0x800), []);
        assert_eq!(
            cut_out(&[area(0, 0x1000), area(0x8000, 0x1000)], 0x4000, 0x10),
            [area(0, 0x1000), area(0x8000, 0x1000)]
        );
    }

    /// A `MappedRegion` over ordinary anonymous memory, to test the accessors' checks.
    fn anonymous(areas: &[(u64, usize)]) -> MappedRegion {
        let mut region = MappedRegion {
            device: "0000:01:00.0".into(),
            index: 0,
            size: 0x4000,
            areas: Vec::new(),
        };
        for &(offset, len) in areas {
            // SAFETY: a new private anonymous mapping; checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            region.areas.push(MappedArea {
                ptr: NonNull::new(ptr.cast()).unwrap(),
                len,
                offset,
            });
        }
        region
    }

    #[test]
    fn accessors_check_bounds_holes_and_alignment() {
        let region = anonymous(&[(0, 0x1000), (0x2000, 0x1000)]);
        region.write_u32(0x8, 0xdead_beef).unwrap();
        assert_eq!(region.read_u32(0x8).unwrap(), 0xdead_beef);
        assert_eq!(region.read_u16(0xa).unwrap(), 0xdead);
        assert_eq!(region.read_u8(0x8).unwrap(), 0xef);
        region.write_u64(0x2ff8, u64::MAX).unwrap();
        assert_eq!(region.read_u64(0x2ff8).unwrap(), u64::MAX);
        region.write(0x2000, b"abc").unwrap();
        let mut buf = [0u8; 3];
        region.read(0x2000, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        // In the hole, past the end, across the end of an area, unaligned, overflowing.
        for offset in [0x1000, 0x3000, 0xffe, 0x9, u64::MAX] {
            let err = region.read_u32(offset).unwrap_err();
            assert!(
                matches!(err, MmapError::OutsideMapping { offset: o, .. } if o == offset),
                "{offset:#x}: {err}"
            );
        }
        region.write(0xfff, b"ab").unwrap_err();
        let err = region.read_u32(0x1000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:01:00.0: 4-byte access at 0x1000 of BAR0 is not aligned or not inside a mapped area"
        );
        // Dropping unmaps (nothing to observe but that it does not fail or panic).
        drop(region);
    }
}
