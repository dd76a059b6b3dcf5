//! What the lab tests and the DMA benchmark share: the guard that keeps them inside the lab
//! guest, finding the e1000e guinea pigs by reading sysfs, binding them to vfio-pci with the
//! host driver restored afterwards, and page-aligned buffers for DMA.
//!
//! Nothing here runs on the build machine: every entry point first checks that it is inside
//! the lab guest (PID 1 is the lab's `/init`, the kernel was booted with the lab's
//! `intel_iommu=on panic=-1`), because binding a device on the build machine would take away
//! its disk or network.

#![allow(
    dead_code,
    reason = "each user (lab tests, bench) uses a different part"
)]

use std::collections::BTreeMap;
use std::ptr::NonNull;

use plugboard_sysfs::{PciAddress, PciDevice, Sysfs};

/// vendor:device of the lab's e1000e NICs.
pub const E1000E: (u16, u16) = (0x8086, 0x10d3);

/// True inside the lab guest.
pub fn in_lab_guest() -> bool {
    let init = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // The kernel runs the lab's `/init` script through its interpreter, so PID 1's argv is
    // `/bin/busybox sh /init`.
    init.split(|&b| b == 0).any(|arg| arg == b"/init")
        && cmdline.split_whitespace().any(|a| a == "intel_iommu=on")
        && cmdline.split_whitespace().any(|a| a == "panic=-1")
}

/// Panics outside the lab guest, so that an explicit `--ignored` run elsewhere fails loudly
/// instead of binding the build machine's devices.
pub fn require_lab_guest() -> Sysfs {
    assert!(
        in_lab_guest(),
        "refusing to run outside the lab guest (lab/run-tests.sh): these tests bind devices"
    );
    Sysfs::new("/sys")
}

/// The e1000e NICs, grouped by IOMMU group.
pub fn nics_by_group(sysfs: &Sysfs) -> BTreeMap<u32, Vec<PciAddress>> {
    let mut groups: BTreeMap<u32, Vec<PciAddress>> = BTreeMap::new();
    for device in sysfs.pci_devices().expect("list PCI devices") {
        let id = (
            device.vendor_id().unwrap_or(0),
            device.device_id().unwrap_or(0),
        );
        if id != E1000E {
            continue;
        }
        if let Some(group) = device.iommu_group().expect("read iommu_group") {
            groups.entry(group).or_default().push(device.address());
        }
    }
    groups
}

/// An e1000e alone in its IOMMU group (the lab has two; `nth` picks one).
pub fn single_group_nic(sysfs: &Sysfs, nth: usize) -> PciAddress {
    let singles: Vec<PciAddress> = nics_by_group(sysfs)
        .into_iter()
        .filter(|(group, _)| sysfs.iommu_group(*group).expect("read group").members.len() == 1)
        .map(|(_, nics)| nics[0])
        .collect();
    *singles.get(nth).unwrap_or_else(|| {
        panic!(
            "the lab should have {} single-group e1000e, found {singles:?}",
            nth + 1
        )
    })
}

/// The group holding two e1000e (behind the PCIe-to-PCI bridge) and those two.
pub fn shared_group_nics(sysfs: &Sysfs) -> (u32, PciAddress, PciAddress) {
    let (group, nics) = nics_by_group(sysfs)
        .into_iter()
        .find(|(_, nics)| nics.len() >= 2)
        .expect("the lab should have a group with two e1000e");
    (group, nics[0], nics[1])
}

/// A device bound to vfio-pci for the life of this guard; dropping it gives the device back
/// to the driver it had (reattach verifies that driver took it).
pub struct OnVfio {
    device: PciDevice,
    previous: Option<String>,
    restored: bool,
}

impl OnVfio {
    /// Binds `address` to vfio-pci.
    pub fn bind(sysfs: &Sysfs, address: PciAddress) -> Self {
        let device = sysfs.pci_device(address).expect("find device");
        let outcome = device.bind("vfio-pci").expect("bind to vfio-pci");
        Self {
            device,
            previous: outcome.previous_driver,
            restored: false,
        }
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.device.address()
    }

    /// Gives the device back now and returns what the kernel answered.
    pub fn restore(mut self) -> Result<Option<String>, plugboard_sysfs::BindError> {
        self.restored = true;
        self.device.reattach(self.previous.as_deref())
    }
}

impl Drop for OnVfio {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        if let Err(err) = self.device.reattach(self.previous.as_deref()) {
            eprintln!(
                "restoring {} to {:?} failed: {err}",
                self.device.address(),
                self.previous
            );
        }
    }
}

/// Anonymous, populated memory to DMA-map, starting on a 2 MiB boundary (as a VMM's guest
/// memory does). No Rust reference to its bytes is ever made, as the DMA contract requires.
pub struct Buffer {
    base: NonNull<u8>,
    total: usize,
    start: *mut u8,
    len: usize,
}

const ALIGN: usize = 2 << 20;

impl Buffer {
    /// `len` bytes (a multiple of the page size), faulted in up front.
    pub fn new(len: usize) -> Self {
        let total = len + ALIGN;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no
        // existing memory is affected. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap {total} bytes: {}",
            std::io::Error::last_os_error()
        );
        let base = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        let skip = base.as_ptr().align_offset(ALIGN);
        Self {
            base,
            total,
            start: base.as_ptr().wrapping_add(skip),
            len,
        }
    }

    /// The start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.start
    }

    /// The address `offset` bytes in.
    pub fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset < self.len);
        self.start.wrapping_add(offset)
    }

    /// The length.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; every DMA mapping of it has been
        // unmapped by its user before the buffer goes (the tests and bench drop in order).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.total) };
    }
}
