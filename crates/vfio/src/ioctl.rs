//! Every VFIO and iommufd ioctl this crate makes, and the only place in it that says `unsafe`.
//!
//! The request numbers are declared at the top with `vmm-sys-util`'s `ioctl_io_nr!` (the
//! kernel declares them all as `_IO(type, base + n)`: the size lives in the structs'
//! `argsz`/`size` field instead). The argument structs are the kernel's own, from rust-vmm's
//! `vfio-bindings` and `iommufd-bindings`; nothing here redefines one.
//!
//! Each wrapper runs one call, checks the return value and, on failure, returns the
//! `io::Error` of `errno` untouched, so that callers can tell EBUSY from EINVAL. The modules
//! above wrap it in their own error with the device, group or IOVA named. A file descriptor
//! the kernel returns becomes an [`OwnedFd`] on the next line.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::raw::{c_int, c_uint, c_ulong};

use iommufd_bindings::{
    IOMMUFD_CMD_DESTROY, IOMMUFD_CMD_IOAS_ALLOC, IOMMUFD_CMD_IOAS_IOVA_RANGES,
    IOMMUFD_CMD_IOAS_MAP, IOMMUFD_CMD_IOAS_UNMAP, IOMMUFD_TYPE, iommu_destroy, iommu_ioas_alloc,
    iommu_ioas_iova_ranges, iommu_ioas_map, iommu_ioas_unmap, iommu_iova_range,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
};
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE,
    vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt,
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info, vfio_irq_info, vfio_irq_set, vfio_region_info,
};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};
use vmm_sys_util::ioctl_io_nr;

const VFIO: c_uint = VFIO_TYPE as c_uint;
const IOMMUFD: c_uint = IOMMUFD_TYPE as c_uint;

ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO, VFIO_BASE + 12);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO, VFIO_BASE + 14);
ioctl_io_nr!(VFIO_DEVICE_BIND_IOMMUFD, VFIO, VFIO_BASE + 18);
ioctl_io_nr!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO, VFIO_BASE + 19);
ioctl_io_nr!(VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO, VFIO_BASE + 20);
ioctl_io_nr!(IOMMU_DESTROY, IOMMUFD, IOMMUFD_CMD_DESTROY);
ioctl_io_nr!(IOMMU_IOAS_ALLOC, IOMMUFD, IOMMUFD_CMD_IOAS_ALLOC);
ioctl_io_nr!(
    IOMMU_IOAS_IOVA_RANGES,
    IOMMUFD,
    IOMMUFD_CMD_IOAS_IOVA_RANGES
);
ioctl_io_nr!(IOMMU_IOAS_MAP, IOMMUFD, IOMMUFD_CMD_IOAS_MAP);
ioctl_io_nr!(IOMMU_IOAS_UNMAP, IOMMUFD, IOMMUFD_CMD_IOAS_UNMAP);

/// `size_of::<T>()` as the `u32` the kernel wants in `argsz`/`size`. Every uAPI struct is far
/// smaller than 4 GiB; the fallback only keeps this total.
fn argsz<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

/// Turns a negative return into the errno it left, anything else into `Ok(ret)`.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------------------------------------
// Container (/dev/vfio/vfio)
// ---------------------------------------------------------------------------------------------

/// `VFIO_GET_API_VERSION`: the container's API version (the kernel answers 0).
pub(crate) fn get_api_version(container: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: `container` is an open fd for the life of the borrow; this ioctl takes no
    // argument and touches no user memory.
    check(unsafe { ioctl(&container, VFIO_GET_API_VERSION()) })
}

/// `VFIO_CHECK_EXTENSION`: whether the container supports an IOMMU type (> 0 means yes).
pub(crate) fn check_extension(container: BorrowedFd<'_>, extension: u32) -> io::Result<bool> {
    // SAFETY: `container` is open; the argument is a plain integer the kernel reads by value.
    let ret = check(unsafe {
        ioctl_with_val(&container, VFIO_CHECK_EXTENSION(), c_ulong::from(extension))
    })?;
    Ok(ret > 0)
}

/// `VFIO_SET_IOMMU`: picks the container's IOMMU model once a group is attached.
pub(crate) fn set_iommu(container: BorrowedFd<'_>, iommu_type: u32) -> io::Result<()> {
    // SAFETY: `container` is open; the argument is a plain integer the kernel reads by value.
    check(unsafe { ioctl_with_val(&container, VFIO_SET_IOMMU(), c_ulong::from(iommu_type)) })?;
    Ok(())
}

/// `VFIO_IOMMU_MAP_DMA` (type1): maps `size` bytes at `vaddr` to `iova`, readable and
/// writable by the devices.
///
/// # Safety
///
/// The caller upholds the contract of [`crate::AddressSpace::map_dma`] for
/// `[vaddr, vaddr + size)`: from now until it is unmapped, the memory may be read and written
/// by devices at any time, so no Rust reference to it may exist.
pub(crate) unsafe fn map_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    size: u64,
    vaddr: u64,
) -> io::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    // SAFETY: `container` is open and `map` is a live, initialised struct of the size in its
    // `argsz`, which the kernel only reads. What the mapping lets devices do to the user
    // memory is the caller's contract (see `# Safety`).
    check(unsafe { ioctl_with_ref(&container, VFIO_IOMMU_MAP_DMA(), &map) })?;
    Ok(())
}

/// `VFIO_IOMMU_UNMAP_DMA` (type1): unmaps `[iova, iova + size)` and returns how many bytes
/// the kernel unmapped.
pub(crate) fn unmap_dma(container: BorrowedFd<'_>, iova: u64, size: u64) -> io::Result<u64> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
        flags: 0,
        iova,
        size,
        ..Default::default()
    };
    // SAFETY: `container` is open and `unmap` is a live struct of the size in its `argsz`
    // (no dirty bitmap is asked for, so the kernel follows no pointer); the kernel writes
    // the unmapped size back into it. Unmapping only takes access away.
    check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_UNMAP_DMA(), &mut unmap) })?;
    Ok(unmap.size)
}

/// `VFIO_IOMMU_GET_INFO` (type1), capability chain included: the info and the raw bytes the
/// kernel wrote (the struct followed by its capabilities; `cap_offset` counts from the first
/// byte). The container must have its IOMMU set (a group attached).
pub(crate) fn type1_info(
    container: BorrowedFd<'_>,
) -> io::Result<(vfio_iommu_type1_info, Vec<u8>)> {
    let header = argsz::<vfio_iommu_type1_info>();
    let mut want = header;
    // As for region info: the kernel raises `argsz` to what the chain needs.
    for _ in 0..3 {
        // u64 words keep the buffer 8-byte aligned, as `vfio_iommu_type1_info` needs.
        let words = usize::try_from(want).unwrap_or(usize::MAX).div_ceil(8);
        let mut buf = vec![0u64; words.max(size_of::<vfio_iommu_type1_info>() / 8)];
        let info_ptr = buf.as_mut_ptr().cast::<vfio_iommu_type1_info>();
        let info = vfio_iommu_type1_info {
            argsz: want,
            ..Default::default()
        };
        // SAFETY: `buf` is at least `size_of::<vfio_iommu_type1_info>()` bytes, 8-byte
        // aligned and exclusively ours, so writing one struct at its start is in bounds.
        unsafe { info_ptr.write(info) };
        // SAFETY: `container` is open; `info_ptr` points at a buffer of `want` bytes or more
        // whose first bytes are an initialised `vfio_iommu_type1_info` with `argsz = want`,
        // so the kernel writes within it.
        check(unsafe { ioctl_with_mut_ptr(&container, VFIO_IOMMU_GET_INFO(), info_ptr) })?;
        // SAFETY: the buffer still holds the (now kernel-filled) struct written above.
        let got = unsafe { info_ptr.read() };
        if got.argsz <= want {
            let len = usize::try_from(want.max(header)).unwrap_or(usize::MAX);
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).take(len).collect();
            return Ok((got, bytes));
        }
        want = got.argsz;
    }
    Err(io::Error::other(
        "the IOMMU info's capability chain kept growing",
    ))
}

// ---------------------------------------------------------------------------------------------
// Group (/dev/vfio/<group>)
// ---------------------------------------------------------------------------------------------

/// `VFIO_GROUP_GET_STATUS`: the group's flags (`VFIO_GROUP_FLAGS_VIABLE`, `…_CONTAINER_SET`).
pub(crate) fn group_status(group: BorrowedFd<'_>) -> io::Result<u32> {
    let mut status = vfio_group_status {
        argsz: argsz::<vfio_group_status>(),
        flags: 0,
    };
    // SAFETY: `group` is open and `status` is a live struct of the size in its `argsz` that
    // the kernel fills in.
    check(unsafe { ioctl_with_mut_ref(&group, VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`: attaches the group to a container.
pub(crate) fn group_set_container(
    group: BorrowedFd<'_>,
    container: BorrowedFd<'_>,
) -> io::Result<()> {
    let container_fd: c_int = container.as_raw_fd();
    // SAFETY: `group` is open; the kernel reads one `int` (the container fd, open for the
    // life of its borrow) through the pointer, which points at a live local.
    check(unsafe { ioctl_with_ref(&group, VFIO_GROUP_SET_CONTAINER(), &container_fd) })?;
    Ok(())
}

/// `VFIO_GROUP_UNSET_CONTAINER`: detaches the group from its container. The kernel refuses
/// (EBUSY) while a device fd of the group is open.
pub(crate) fn group_unset_container(group: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `group` is open; this ioctl takes no argument.
    check(unsafe { ioctl(&group, VFIO_GROUP_UNSET_CONTAINER()) })?;
    Ok(())
}

/// `VFIO_GROUP_GET_DEVICE_FD`: opens a device of the group by name (its BDF or mdev UUID).
pub(crate) fn group_get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `group` is open; the kernel reads a NUL-terminated string from `name`, which
    // is valid and terminated for the life of the borrow.
    let fd = check(unsafe { ioctl_with_ptr(&group, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) })?;
    // SAFETY: on success the kernel returned a new fd that nothing else owns; we take it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// Device (from a group, or /dev/vfio/devices/vfioN)
// ---------------------------------------------------------------------------------------------

/// `VFIO_DEVICE_GET_INFO`: flags, number of regions and of IRQ indexes.
pub(crate) fn device_info(device: BorrowedFd<'_>) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: argsz::<vfio_device_info>(),
        ..Default::default()
    };
    // SAFETY: `device` is open and `info` is a live struct of the size in its `argsz`; the
    // kernel writes at most `argsz` bytes into it.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO`, capability chain included: returns the info and the raw
/// bytes the kernel wrote (the struct followed by its capabilities; `cap_offset` counts from
/// the first byte). Without capabilities the bytes are just the struct.
pub(crate) fn region_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> io::Result<(vfio_region_info, Vec<u8>)> {
    let header = argsz::<vfio_region_info>();
    let mut want = header;
    // The kernel says how much room the capabilities need by raising `argsz`; ask again with
    // that much. Two rounds suffice; a third covers a chain that grew in between.
    for _ in 0..3 {
        // u64 words keep the buffer 8-byte aligned, as `vfio_region_info` needs.
        let words = usize::try_from(want).unwrap_or(usize::MAX).div_ceil(8);
        let mut buf = vec![0u64; words.max(size_of::<vfio_region_info>() / 8)];
        let info_ptr = buf.as_mut_ptr().cast::<vfio_region_info>();
        let info = vfio_region_info {
            argsz: want,
            index,
            ..Default::default()
        };
        // SAFETY: `buf` is at least `size_of::<vfio_region_info>()` bytes, 8-byte aligned
        // and exclusively ours, so writing one struct at its start is in bounds.
        unsafe { info_ptr.write(info) };
        // SAFETY: `device` is open; `info_ptr` points at a buffer of `want` bytes or more
        // (rounded up to whole words) whose first bytes are an initialised
        // `vfio_region_info` with `argsz = want`, so the kernel writes within it.
        check(unsafe { ioctl_with_mut_ptr(&device, VFIO_DEVICE_GET_REGION_INFO(), info_ptr) })?;
        // SAFETY: the buffer still holds the (now kernel-filled) struct written above.
        let got = unsafe { info_ptr.read() };
        if got.argsz <= want {
            let len = usize::try_from(want.max(header)).unwrap_or(usize::MAX);
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).take(len).collect();
            return Ok((got, bytes));
        }
        want = got.argsz;
    }
    Err(io::Error::other(
        "the region's capability chain kept growing",
    ))
}

/// `VFIO_DEVICE_GET_IRQ_INFO`: flags and vector count of one IRQ index.
pub(crate) fn irq_info(device: BorrowedFd<'_>, index: u32) -> io::Result<vfio_irq_info> {
    let mut info = vfio_irq_info {
        argsz: argsz::<vfio_irq_info>(),
        index,
        ..Default::default()
    };
    // SAFETY: `device` is open and `info` is a live struct of the size in its `argsz`.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_DEVICE_SET_IRQS`: `set` is a whole `vfio_irq_set` (header and data) as built by
/// `crate::irq::IrqSet`, in 4-byte words so that it is aligned as the struct needs; its
/// `argsz` says how many bytes the kernel reads. Eventfds in the data are only read: the
/// kernel takes its own reference to each.
pub(crate) fn device_set_irqs(device: BorrowedFd<'_>, set: &[u32]) -> io::Result<()> {
    const HEADER: usize = size_of::<vfio_irq_set>();
    let argsz = set.first().copied().unwrap_or(0);
    let room = set.len().saturating_mul(4);
    if room < HEADER || usize::try_from(argsz).map_or(true, |argsz| argsz > room) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `device` is open; `set` is 4-byte aligned (the alignment of `vfio_irq_set`) and
    // holds at least the header and the `argsz` bytes the kernel reads (checked above); the
    // kernel only reads it.
    check(unsafe {
        ioctl_with_ptr(
            &device,
            VFIO_DEVICE_SET_IRQS(),
            set.as_ptr().cast::<vfio_irq_set>(),
        )
    })?;
    Ok(())
}

/// `VFIO_DEVICE_RESET`: a function-level (or bus/slot) reset done by vfio-pci.
pub(crate) fn device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `device` is open; this ioctl takes no argument.
    check(unsafe { ioctl(&device, VFIO_DEVICE_RESET()) })?;
    Ok(())
}

/// `VFIO_DEVICE_BIND_IOMMUFD`: binds a device cdev to an iommufd; returns the device id
/// inside that iommufd. The binding lasts until the cdev is closed.
pub(crate) fn device_bind_iommufd(
    device: BorrowedFd<'_>,
    iommufd: BorrowedFd<'_>,
) -> io::Result<u32> {
    let mut bind = vfio_device_bind_iommufd {
        argsz: argsz::<vfio_device_bind_iommufd>(),
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
        token_uuid_ptr: 0,
    };
    // SAFETY: `device` and `iommufd` are open for their borrows; `bind` is a live struct of
    // the size in its `argsz` (no token flag, so no pointer is followed) that the kernel
    // writes the device id into.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_BIND_IOMMUFD(), &mut bind) })?;
    Ok(bind.out_devid)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches a bound device to an IOAS (or HWPT) by id.
pub(crate) fn device_attach_pt(device: BorrowedFd<'_>, pt_id: u32) -> io::Result<()> {
    let mut attach = vfio_device_attach_iommufd_pt {
        argsz: argsz::<vfio_device_attach_iommufd_pt>(),
        flags: 0,
        pt_id,
        pasid: 0,
    };
    // SAFETY: `device` is open and `attach` is a live struct of the size in its `argsz`;
    // the kernel may write the id of the page table it picked back into it.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_ATTACH_IOMMUFD_PT(), &mut attach) })?;
    Ok(())
}

/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: detaches a device from its IOAS.
pub(crate) fn device_detach_pt(device: BorrowedFd<'_>) -> io::Result<()> {
    let detach = vfio_device_detach_iommufd_pt {
        argsz: argsz::<vfio_device_detach_iommufd_pt>(),
        flags: 0,
        pasid: 0,
    };
    // SAFETY: `device` is open and `detach` is a live struct of the size in its `argsz`.
    check(unsafe { ioctl_with_ref(&device, VFIO_DEVICE_DETACH_IOMMUFD_PT(), &detach) })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// iommufd (/dev/iommu)
// ---------------------------------------------------------------------------------------------

/// `IOMMU_IOAS_ALLOC`: a new, empty I/O address space; returns its id.
pub(crate) fn ioas_alloc(iommufd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut alloc = iommu_ioas_alloc {
        size: argsz::<iommu_ioas_alloc>(),
        flags: 0,
        out_ioas_id: 0,
    };
    // SAFETY: `iommufd` is open and `alloc` is a live struct of the size in its `size`.
    check(unsafe { ioctl_with_mut_ref(&iommufd, IOMMU_IOAS_ALLOC(), &mut alloc) })?;
    Ok(alloc.out_ioas_id)
}

/// `IOMMU_DESTROY`: frees an iommufd object (an IOAS here) by id.
pub(crate) fn destroy(iommufd: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    let destroy = iommu_destroy {
        size: argsz::<iommu_destroy>(),
        id,
    };
    // SAFETY: `iommufd` is open and `destroy` is a live struct of the size in its `size`.
    check(unsafe { ioctl_with_ref(&iommufd, IOMMU_DESTROY(), &destroy) })?;
    Ok(())
}

/// `IOMMU_IOAS_MAP` with a fixed IOVA: maps `length` bytes at `vaddr` to `iova`, readable
/// and writable by the devices attached to the IOAS.
///
/// # Safety
///
/// As for [`map_dma`]: the caller upholds the contract of [`crate::AddressSpace::map_dma`].
pub(crate) unsafe fn ioas_map(
    iommufd: BorrowedFd<'_>,
    ioas_id: u32,
    iova: u64,
    length: u64,
    vaddr: u64,
) -> io::Result<()> {
    let mut map = iommu_ioas_map {
        size: argsz::<iommu_ioas_map>(),
        flags: iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA
            | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
            | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id,
        __reserved: 0,
        user_va: vaddr,
        length,
        iova,
    };
    // SAFETY: `iommufd` is open and `map` is a live struct of the size in its `size` (the
    // kernel writes the IOVA back). What the mapping lets devices do to the user memory is
    // the caller's contract (see `# Safety`).
    check(unsafe { ioctl_with_mut_ref(&iommufd, IOMMU_IOAS_MAP(), &mut map) })?;
    Ok(())
}

/// `IOMMU_IOAS_IOVA_RANGES`: the IOVA ranges the IOAS accepts now, as `(start, last)` pairs
/// (`last` inclusive), and the alignment the kernel wants for IOVAs in them.
pub(crate) fn ioas_iova_ranges(
    iommufd: BorrowedFd<'_>,
    ioas_id: u32,
) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let mut ranges: Vec<iommu_iova_range> = Vec::new();
    // The first call (no room) returns EMSGSIZE with the count; a range added in between
    // makes the second do the same, so ask a few times.
    for _ in 0..4 {
        let mut query = iommu_ioas_iova_ranges {
            size: argsz::<iommu_ioas_iova_ranges>(),
            ioas_id,
            num_iovas: u32::try_from(ranges.len()).unwrap_or(u32::MAX),
            __reserved: 0,
            allowed_iovas: u64::try_from(ranges.as_mut_ptr().addr()).unwrap_or(0),
            out_iova_alignment: 0,
        };
        // SAFETY: `iommufd` is open and `query` is a live struct of the size in its `size`;
        // `allowed_iovas` points at `num_iovas` writable `iommu_iova_range`s (the vector's
        // length, all initialised), so the kernel writes within them.
        let ret =
            check(unsafe { ioctl_with_mut_ref(&iommufd, IOMMU_IOAS_IOVA_RANGES(), &mut query) });
        match ret {
            Ok(_) => {
                let count = usize::try_from(query.num_iovas).unwrap_or(usize::MAX);
                ranges.truncate(count);
                let pairs = ranges.iter().map(|r| (r.start, r.last)).collect();
                return Ok((pairs, query.out_iova_alignment));
            }
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                let count = usize::try_from(query.num_iovas).unwrap_or(0);
                ranges = vec![iommu_iova_range::default(); count];
            }
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("the IOAS's IOVA ranges kept changing"))
}

/// `IOMMU_IOAS_UNMAP`: unmaps `[iova, iova + length)`; returns how many bytes went.
pub(crate) fn ioas_unmap(
    iommufd: BorrowedFd<'_>,
    ioas_id: u32,
    iova: u64,
    length: u64,
) -> io::Result<u64> {
    let mut unmap = iommu_ioas_unmap {
        size: argsz::<iommu_ioas_unmap>(),
        ioas_id,
        iova,
        length,
    };
    // SAFETY: `iommufd` is open and `unmap` is a live struct of the size in its `size`; the
    // kernel writes the unmapped length back. Unmapping only takes access away.
    check(unsafe { ioctl_with_mut_ref(&iommufd, IOMMU_IOAS_UNMAP(), &mut unmap) })?;
    Ok(unmap.length)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The request numbers, checked against the values the kernel headers produce
    // (`_IO(';', 100 + n)` = 0x3b00 | (100 + n)), so a typo in a base offset fails here.
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(VFIO_GET_API_VERSION(), 0x3b64);
        assert_eq!(VFIO_GROUP_GET_STATUS(), 0x3b67);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO(), 0x3b6c);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_IOMMU_GET_INFO(), 0x3b70);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD(), 0x3b76);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT(), 0x3b78);
        assert_eq!(IOMMU_DESTROY(), 0x3b80);
        assert_eq!(IOMMU_IOAS_ALLOC(), 0x3b81);
        assert_eq!(IOMMU_IOAS_IOVA_RANGES(), 0x3b84);
        assert_eq!(IOMMU_IOAS_MAP(), 0x3b85);
        assert_eq!(IOMMU_IOAS_UNMAP(), 0x3b86);
    }

    #[test]
    fn errors_keep_errno() {
        // An ioctl on a regular file fails with ENOTTY; the wrapper must hand it back.
        let file = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        let err = get_api_version(file.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let err = region_info(file.as_fd(), 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
