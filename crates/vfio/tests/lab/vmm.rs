//! What a VMM needs beyond opening a device, on the real kernel: interrupts raised by the
//! e1000e itself reaching eventfds (MSI-X, MSI, INTx), BAR0 mapped into the process, the
//! request notifier on unbind, the IOVA ranges, and the file KVM is given.
//!
//! The e1000e is made to interrupt by writing its interrupt registers through the mapped
//! BAR0: IMS (0xD0) enables a cause, ICS (0xC8) sets it, IMC (0xD8) and a write of ICR
//! (0xC0, write-1-to-clear) take it away. The cause used is RXQ0 (bit 20): not one of the
//! "other" causes QEMU's e1000e drops outside MSI-X, and with MSI-X routed to a vector by
//! IVAR (0xE4). Every wait for an eventfd is a bounded `poll`.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use plugboard_vfio::{
    DmaError, EventFd, Interface, IrqError, IrqIndex, KvmFileKind, MappedRegion, MmapError, Mode,
    Vfio, VfioDevice,
};

use crate::support::{Buffer, OnVfio, require_lab_guest, single_group_nic};
use crate::{IOVA, MIB, MODES, open};

const STATUS: u64 = 0x8;
const ICR: u64 = 0xc0;
const ICS: u64 = 0xc8;
const IMS: u64 = 0xd0;
const IMC: u64 = 0xd8;
const IVAR: u64 = 0xe4;
const RXQ0: u32 = 1 << 20;
/// IVAR: RXQ0 to MSI-X vector 0, entry valid.
const IVAR_RXQ0_VECTOR0: u32 = 0x8;

/// Long enough for an interrupt under TCG on a loaded host; a missing one costs this.
const FIRES_WITHIN: Duration = Duration::from_secs(5);
/// How long silence must last to count as "did not fire".
const SILENT_FOR: Duration = Duration::from_millis(700);

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// Whether `fd` is signalled within `timeout`; consumes the count if it is.
fn fired(fd: &EventFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
    if ready == 0 {
        return false;
    }
    fd.read().expect("read a signalled eventfd");
    true
}

/// Drops any count the eventfds hold now.
fn drain(fds: &[EventFd]) {
    for fd in fds {
        let _ = fired(fd, Duration::ZERO);
    }
}

/// Turns on memory decoding and bus mastering (an MSI is a memory write by the device).
fn enable_memory_and_bus_master(device: &VfioDevice) {
    let mut command = [0u8; 2];
    device.read_config(4, &mut command).unwrap();
    let value = u16::from_le_bytes(command) | 0x6;
    device.write_config(4, &value.to_le_bytes()).unwrap();
}

fn map_bar0(device: &VfioDevice) -> MappedRegion {
    enable_memory_and_bus_master(device);
    device.map_region(0).expect("map BAR0")
}

/// Sets RXQ0 in the e1000e's cause register with the cause enabled.
fn raise(bar0: &MappedRegion) {
    bar0.write_u32(IMS, RXQ0).unwrap();
    bar0.write_u32(ICS, RXQ0).unwrap();
}

/// Disables and clears every cause, so the device stops asserting anything.
fn quiet(bar0: &MappedRegion) {
    bar0.write_u32(IMC, u32::MAX).unwrap();
    bar0.write_u32(ICR, u32::MAX).unwrap();
    let _ = bar0.read_u32(ICR).unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn bar0_mapped_reads_the_status_register_as_read_region_does_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let bar0 = map_bar0(&device);
        assert_eq!(bar0.size(), device.region(0).unwrap().size);
        let mapped: u64 = bar0.areas().iter().map(|a| a.len() as u64).sum();
        assert_eq!(mapped, bar0.size(), "{mode}: BAR0 holds no MSI-X table");
        let mut bytes = [0u8; 4];
        device.read_region(0, STATUS, &mut bytes).unwrap();
        let through_fd = u32::from_le_bytes(bytes);
        let through_map = bar0.read_u32(STATUS).unwrap();
        assert_eq!(through_map, through_fd, "{mode}: STATUS");
        assert_ne!(through_map, u32::MAX, "{mode}: the device answers");
        println!("{mode}: STATUS = {through_map:#010x} through the mapping and the fd");
        // Bounds are checked before any access.
        let err = bar0.read_u32(bar0.size()).unwrap_err();
        assert!(matches!(err, MmapError::OutsideMapping { .. }), "{err}");
        bar0.read_u32(STATUS + 1).unwrap_err();
        // Config space is never mappable.
        let err = device.map_region(7).unwrap_err();
        assert!(
            matches!(err, MmapError::NotMappable { .. }),
            "{mode}: {err}"
        );
        // The BAR with the MSI-X table: the kernel says whether its table may be mapped;
        // what is mapped is what it allows.
        let areas = device.mappable_areas(3).unwrap();
        println!("{mode}: BAR3 (MSI-X) mappable areas {areas:?}");
        if !areas.is_empty() {
            drop(device.map_region(3).expect("map BAR3"));
        }
        // Dropping the mapping releases the device file: closing and giving the device
        // back below would wait forever otherwise.
        drop(bar0);
        device.close().unwrap();
    }
    bound
        .restore()
        .expect("no mapping may still hold the device");
}

/// MSI-X or MSI: the e1000e's own interrupt reaches vector 0's eventfd; an unwired vector
/// does not fire.
fn message_interrupts(device: &VfioDevice, bar0: &MappedRegion, index: IrqIndex) {
    let count = device.irq(index).unwrap().count.min(5);
    let fds: Vec<EventFd> = (0..count).map(|_| eventfd()).collect();
    let refs: Vec<&EventFd> = fds.iter().collect();
    quiet(bar0);
    device.enable_irq(index, 0, &refs).unwrap();
    // The kernel's loopback reaches exactly the vector triggered.
    let last = count - 1;
    device.trigger_irq(index, last, 1).unwrap();
    assert!(
        fired(&fds[last as usize], FIRES_WITHIN),
        "{index}: loopback"
    );
    assert!(!fired(&fds[0], Duration::ZERO) || last == 0);

    // The device raises RXQ0: vector 0 fires.
    if index == IrqIndex::Msix {
        bar0.write_u32(IVAR, IVAR_RXQ0_VECTOR0).unwrap();
    }
    raise(bar0);
    assert!(
        fired(&fds[0], FIRES_WITHIN),
        "{index}: the e1000e's interrupt"
    );
    quiet(bar0);

    // Masking is INTx-only in vfio-pci: refused before the kernel.
    let err = device.mask_irq(index, 0, 1).unwrap_err();
    assert!(matches!(err, IrqError::NotMaskable { .. }), "{err}");
    // A vector out of range is refused before the kernel too.
    let err = device
        .enable_irq(index, device.irq(index).unwrap().count, &[&fds[0]])
        .unwrap_err();
    assert!(matches!(err, IrqError::OutOfRange { .. }), "{err}");

    // Unwire vector 0: the device raises it again and nothing fires. (A count left from
    // before the unwiring is dropped first: the e1000e's interrupt throttling may send the
    // first cause a second time just after it was read.)
    device.disable_vectors(index, 0, 1).unwrap();
    drain(&fds);
    raise(bar0);
    assert!(
        !fired(&fds[0], SILENT_FOR),
        "{index}: an unwired vector fired"
    );
    if index == IrqIndex::Msix {
        // The device kept it pending (the vector is masked at the device while unwired):
        // wiring it again delivers it.
        let again = eventfd();
        device.enable_irq(index, 0, &[&again]).unwrap();
        assert!(
            fired(&again, FIRES_WITHIN),
            "{index}: the pending interrupt after rewiring"
        );
    }
    quiet(bar0);
    device.disable_irq(index).unwrap();
    drain(&fds);
    // Disabled: raising it reaches no eventfd.
    raise(bar0);
    assert!(
        fds.iter().all(|fd| !fired(fd, Duration::ZERO)),
        "{index}: a disabled index fired"
    );
    quiet(bar0);
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_e1000e_raises_msix_and_msi_interrupts_to_eventfds_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let bar0 = map_bar0(&device);
        message_interrupts(&device, &bar0, IrqIndex::Msix);
        println!("{mode}: MSI-X ok");
        message_interrupts(&device, &bar0, IrqIndex::Msi);
        println!("{mode}: MSI ok");
        drop(bar0);
        device.close().unwrap();
    }
    bound.restore().expect("give the NIC back to e1000e");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_e1000e_raises_intx_which_masks_and_unmasks_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let Ok(intx) = device.irq(IrqIndex::Intx) else {
            println!("{mode}: the device has no INTx; skipped");
            device.close().unwrap();
            continue;
        };
        assert!(
            intx.flags.maskable() && intx.flags.automasked(),
            "{mode}: {intx:?}"
        );
        let bar0 = map_bar0(&device);
        quiet(&bar0);
        let fd = eventfd();
        device.enable_intx(&fd).unwrap();
        device.trigger_irq(IrqIndex::Intx, 0, 1).unwrap();
        assert!(fired(&fd, FIRES_WITHIN), "{mode}: loopback");

        // The device asserts INTx: it fires, and the kernel masks it.
        raise(&bar0);
        assert!(fired(&fd, FIRES_WITHIN), "{mode}: the e1000e's INTx");
        quiet(&bar0);
        device.unmask_irq(IrqIndex::Intx, 0, 1).unwrap();
        assert!(
            !fired(&fd, SILENT_FOR),
            "{mode}: fired again with nothing pending"
        );

        // Masked: the device asserts it, nothing fires; unmasked: the pending one does.
        device.mask_irq(IrqIndex::Intx, 0, 1).unwrap();
        drain(std::slice::from_ref(&fd));
        raise(&bar0);
        assert!(!fired(&fd, SILENT_FOR), "{mode}: a masked INTx fired");
        device.unmask_irq(IrqIndex::Intx, 0, 1).unwrap();
        assert!(
            fired(&fd, FIRES_WITHIN),
            "{mode}: the pending INTx after unmask"
        );
        quiet(&bar0);
        device.unmask_irq(IrqIndex::Intx, 0, 1).unwrap();

        // The resample eventfd: signalling it unmasks, as KVM does on the guest's EOI.
        let resample = eventfd();
        device
            .set_unmask_eventfd(IrqIndex::Intx, 0, Some(&resample))
            .unwrap();
        raise(&bar0);
        assert!(fired(&fd, FIRES_WITHIN), "{mode}: INTx with a resample fd");
        quiet(&bar0);
        raise(&bar0);
        assert!(!fired(&fd, SILENT_FOR), "{mode}: automasked INTx fired");
        resample.write(1).unwrap();
        assert!(
            fired(&fd, FIRES_WITHIN),
            "{mode}: the pending INTx after the resample eventfd unmasked it"
        );
        quiet(&bar0);
        device.set_unmask_eventfd(IrqIndex::Intx, 0, None).unwrap();
        device.unmask_irq(IrqIndex::Intx, 0, 1).unwrap();
        device.disable_irq(IrqIndex::Intx).unwrap();
        println!("{mode}: INTx ok");
        drop(bar0);
        device.close().unwrap();
    }
    bound.restore().expect("give the NIC back to e1000e");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_request_notifier_tells_the_holder_to_give_the_device_back_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    for mode in MODES {
        let bound = OnVfio::bind(&sysfs, nic);
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let request = device.request_notifier().unwrap();
        // PCIe devices have the error index too.
        drop(device.error_notifier().unwrap());
        assert!(!fired(&request, Duration::ZERO));
        // Someone gives the device back to e1000e: the unbind from vfio-pci waits for the
        // holder, and the kernel asks it through the request eventfd.
        let giver = std::thread::spawn(move || bound.restore());
        assert!(
            fired(&request, Duration::from_secs(10)),
            "{mode}: no request to give the device back"
        );
        device.close().unwrap();
        drop(vfio);
        let driver = giver
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(driver.as_deref(), Some("e1000e"), "{mode}");
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn iova_ranges_are_reported_and_a_map_outside_them_is_refused_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(2 * MIB);
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let info = device.iova_info().unwrap_or_else(|e| panic!("{mode}: {e}"));
        println!("{mode}: {info:?}");
        assert!(!info.ranges.is_empty(), "{mode}: no ranges");
        assert!(info.page_sizes & 0x1000 != 0, "{mode}: {info:?}");
        match mode {
            Mode::Legacy => assert!(info.dma_avail.is_some_and(|n| n > 0), "{info:?}"),
            _ => assert_eq!(info.dma_avail, None),
        }
        // x86: the MSI window is not usable, and the IOMMU's address width ends the space.
        let msi = 0xfee0_0000;
        assert!(
            !info.ranges.iter().any(|r| r.contains(msi, 0x1000)),
            "{mode}"
        );
        let last = info.ranges.iter().map(|r| r.last).max().unwrap();
        assert!(last < u64::MAX, "{mode}: the emulated IOMMU has a width");
        assert!(info.ranges.iter().any(|r| r.contains(IOVA, 2 * MIB as u64)));

        let space = device.address_space();
        for iova in [msi, (last + 1).next_multiple_of(0x1000)] {
            // SAFETY: refused before any mapping is made.
            let err = unsafe { space.map_dma(iova, 4096, buffer.as_ptr()) }.unwrap_err();
            assert!(
                matches!(err, DmaError::OutsideIovaRanges { .. }),
                "{mode}: {iova:#x}: {err}"
            );
            println!("{mode}: {err}");
        }
        // Inside them, the map is made.
        // SAFETY: the buffer is never referenced from Rust and outlives the mapping.
        unsafe { space.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap();
        if mode == Mode::Legacy {
            let after = device.iova_info().unwrap();
            assert_eq!(
                after.dma_avail.map(|n| n + 1),
                info.dma_avail,
                "one mapping fewer left"
            );
        }
        space.unmap_dma(IOVA, 2 * MIB).unwrap();
        device.close().unwrap();
    }
    drop(buffer);
    bound.restore().unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_file_for_kvm_is_the_group_or_the_device_cdev() {
    // KVM cannot run in the lab guest (no nested virtualisation under TCG), so this checks
    // only which file a VMM would hand to KVM_DEV_VFIO_FILE_ADD.
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let host = sysfs.pci_device(nic).unwrap();
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let file = device.kvm_file().unwrap();
        let target =
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd())).unwrap();
        match device.interface() {
            Interface::Legacy => {
                assert_eq!(device.kvm_file_kind(), KvmFileKind::Group);
                let group = host.iommu_group().unwrap().unwrap();
                assert_eq!(target, std::path::Path::new(&format!("/dev/vfio/{group}")));
            }
            Interface::Iommufd => {
                assert_eq!(device.kvm_file_kind(), KvmFileKind::DeviceCdev);
                assert_eq!(Some(target), host.vfio_cdev_path().unwrap());
            }
        }
        drop(file);
        device.close().unwrap();
    }
    bound.restore().unwrap();
}
