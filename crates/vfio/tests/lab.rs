//! Real-kernel tests of plugboard-vfio, in both VFIO interfaces, inside the lab guest.
//!
//! `lab/run-tests.sh` runs this binary in the guest as root with `--ignored
//! --test-threads=1`; `cargo test` elsewhere lists every test as ignored. The guest (see
//! lab/README.md) has e1000e NICs (8086:10d3) alone in their IOMMU groups and two behind a
//! PCIe-to-PCI bridge that share a group. The tests find them by reading sysfs, bind them to
//! vfio-pci through plugboard-sysfs, and give them back to e1000e when they finish, because
//! other crates' tests run in the same guest.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test binary: a failed step is a failed test, with its message"
)]

mod support;
#[path = "lab/vmm.rs"]
mod vmm;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use plugboard_sysfs::{PciAddress, Sysfs};
use plugboard_vfio::{
    AddressSpace, Container, DmaError, DmaMapping, DmaReplay, GroupError, Interface, Iommufd, Mode,
    ModeError, OpenError, RegionCap, Vfio, VfioDevice, VfioDeviceError, VmmFds, open_for_vmm,
};
use support::{Buffer, OnVfio, require_lab_guest, shared_group_nics, single_group_nic};

/// An IOVA well above the x86 MSI window and below the emulated IOMMU's 39-bit limit.
const IOVA: u64 = 0x1_0000_0000;
const MIB: usize = 1 << 20;
const MODES: [Mode; 2] = [Mode::Legacy, Mode::Iommufd];

fn interface_of(mode: Mode) -> Interface {
    match mode {
        Mode::Iommufd => Interface::Iommufd,
        _ => Interface::Legacy,
    }
}

fn open(vfio: &mut Vfio, address: PciAddress, mode: Mode) -> VfioDevice {
    vfio.open(address, mode)
        .unwrap_or_else(|e| panic!("open {address} ({mode}): {e}"))
}

fn config_u16(device: &VfioDevice, offset: u64) -> u16 {
    let mut bytes = [0u8; 2];
    device.read_config(offset, &mut bytes).expect("read config");
    u16::from_le_bytes(bytes)
}

/// The BAR index (BIR) of the MSI-X table, found by walking the capability list in config
/// space through VFIO.
fn msix_table_bar(device: &VfioDevice) -> Option<u32> {
    let mut byte = [0u8; 1];
    device
        .read_config(0x34, &mut byte)
        .expect("read capability pointer");
    let mut at = u64::from(byte[0] & !3);
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        let header = config_u16(device, at);
        if header & 0xff == 0x11 {
            let mut table = [0u8; 4];
            device
                .read_config(at + 4, &mut table)
                .expect("read MSI-X table offset");
            return Some(u32::from_le_bytes(table) & 7);
        }
        at = u64::from(header >> 8) & !3;
    }
    None
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn opens_a_device_and_reports_what_the_kernel_says_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let host = sysfs.pci_device(nic).unwrap();
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        assert_eq!(device.interface(), interface_of(mode));
        assert_eq!(device.name(), nic.to_string());
        let info = device.info();
        assert!(info.flags.pci(), "{mode}: flags {:?}", info.flags.names());
        assert!(
            info.num_regions >= 9 && info.num_irqs >= 5,
            "{mode}: {info:?}"
        );

        // Config space: vendor and device as sysfs reads them.
        assert_eq!(
            config_u16(&device, 0),
            host.vendor_id().unwrap(),
            "{mode}: vendor"
        );
        assert_eq!(
            config_u16(&device, 2),
            host.device_id().unwrap(),
            "{mode}: device"
        );
        let config = device.region(7).expect("config region");
        assert!(config.flags.readable() && config.flags.writable() && config.size >= 256);

        // BAR0 has the size sysfs gives its resource line.
        let bar0 = host
            .bars()
            .unwrap()
            .into_iter()
            .find(|b| b.index == 0)
            .expect("BAR0");
        assert_eq!(
            device.region(0).expect("BAR0 region").size,
            bar0.size(),
            "{mode}: BAR0"
        );

        // The BAR holding the MSI-X table carries a capability saying how it may be mapped.
        let bir = msix_table_bar(&device).expect("e1000e has MSI-X");
        let caps = &device.region(bir).expect("MSI-X BAR").caps;
        assert!(
            caps.iter()
                .any(|c| matches!(c, RegionCap::SparseMmap { .. } | RegionCap::MsixMappable)),
            "{mode}: BAR{bir} caps {caps:?}"
        );
        let msix = device
            .irqs()
            .iter()
            .find(|i| i.index == 2)
            .expect("MSI-X index");
        assert!(
            msix.count > 0 && msix.flags.names().contains(&"eventfd"),
            "{mode}: {msix:?}"
        );

        match mode {
            Mode::Legacy => {
                assert_eq!(device.group_id(), host.iommu_group().unwrap());
                assert!(device.container().is_some() && device.iommufd().is_none());
            }
            _ => {
                assert!(device.iommufd().is_some() && device.iommufd_dev_id().is_some());
                assert_eq!(device.group_id(), None);
            }
        }
        device
            .close()
            .unwrap_or_else(|e| panic!("{mode}: close: {e}"));
    }
    bound.restore().expect("give the NIC back to e1000e");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn maps_and_unmaps_dma_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(4 * MIB);
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        let space = device.address_space();
        // SAFETY: the buffer is never referenced from Rust and outlives every mapping here.
        unsafe { space.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap();
        // SAFETY: as above.
        unsafe { space.map_dma(IOVA + 2 * 1024 * 1024, 2 * MIB, buffer.at(2 * MIB)) }.unwrap();
        if let Some(container) = device.container() {
            assert_eq!(container.mapping_count(), 2);
        }
        // Mapping over an existing mapping is refused by the kernel, errno kept.
        // SAFETY: as above.
        let err = unsafe { space.map_dma(IOVA, 4096, buffer.as_ptr()) }.unwrap_err();
        let DmaError::Map { source, .. } = &err else {
            panic!("{mode}: {err:?}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::EEXIST), "{mode}: {err}");
        // Unaligned ranges never reach the kernel.
        // SAFETY: refused before any mapping.
        let err = unsafe { space.map_dma(IOVA + 1, 4096, buffer.as_ptr()) }.unwrap_err();
        assert!(matches!(err, DmaError::BadRange { .. }));
        // One unmap covering both mappings.
        space
            .unmap_dma(IOVA, 4 * MIB)
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        // Nothing is mapped there any more.
        space.unmap_dma(IOVA, 4 * MIB).unwrap_err();

        // The RAII form: dropping it unmaps, so the same range maps again afterwards.
        // SAFETY: as above.
        let mapping =
            unsafe { DmaMapping::new(Arc::clone(&space), IOVA, 4 * MIB, buffer.as_ptr()) }.unwrap();
        drop(mapping);
        // SAFETY: as above.
        let mapping = unsafe { DmaMapping::new(space, IOVA, 4 * MIB, buffer.as_ptr()) }.unwrap();
        mapping.unmap().unwrap();
        device.close().unwrap();
    }
    drop(buffer);
    bound.restore().expect("give the NIC back to e1000e");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn resets_the_device_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let methods = sysfs.pci_device(nic).unwrap().reset_methods().unwrap();
    for mode in MODES {
        let mut vfio = Vfio::new(sysfs.clone());
        let device = open(&mut vfio, nic, mode);
        if methods.can_reset {
            assert!(
                device.info().flags.resettable(),
                "{mode}: sysfs offers {methods:?}"
            );
            device
                .reset()
                .unwrap_or_else(|e| panic!("{mode}: reset: {e}"));
            // The device still answers after the reset.
            assert_eq!(config_u16(&device, 0), 0x8086);
        } else {
            let err = device.reset().unwrap_err();
            assert!(
                matches!(err, VfioDeviceError::ResetUnsupported { .. }),
                "{mode}: {err}"
            );
        }
        device.close().unwrap();
    }
    bound.restore().expect("give the NIC back to e1000e");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn after_close_or_drop_the_host_driver_rebinds_without_ebusy_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    for mode in MODES {
        for explicit_close in [true, false] {
            let bound = OnVfio::bind(&sysfs, nic);
            let mut vfio = Vfio::new(sysfs.clone());
            let device = open(&mut vfio, nic, mode);
            if explicit_close {
                device.close().unwrap();
            } else {
                drop(device);
            }
            // The context (container or iommufd) stays open: it must not hold the device.
            let driver = bound.restore().unwrap_or_else(|e| {
                panic!("{mode} (close: {explicit_close}): rebinding e1000e: {e}")
            });
            assert_eq!(driver.as_deref(), Some("e1000e"));
            drop(vfio);
        }
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn two_devices_of_one_group_share_one_group_fd() {
    let sysfs = require_lab_guest();
    let (group, a, b) = shared_group_nics(&sysfs);
    let bound_a = OnVfio::bind(&sysfs, a);
    let bound_b = OnVfio::bind(&sysfs, b);
    let buffer = Buffer::new(2 * MIB);

    let mut vfio = Vfio::new(sysfs.clone());
    let first = open(&mut vfio, a, Mode::Legacy);
    let second = open(&mut vfio, b, Mode::Legacy);
    let container = Arc::clone(vfio.container().expect("container"));
    assert_eq!(
        (first.group_id(), second.group_id()),
        (Some(group), Some(group))
    );
    assert_eq!(container.group_ids(), [group]);
    assert_eq!(container.group_users(group), 2);
    assert!(Arc::ptr_eq(
        first.container().unwrap(),
        second.container().unwrap()
    ));
    // A second context cannot open the group: a group node opens once. This is why the
    // container shares it.
    let err = Vfio::new(sysfs.clone()).open(b, Mode::Legacy).unwrap_err();
    assert!(
        matches!(&err, OpenError::Device(VfioDeviceError::Group(GroupError::Open { source, .. }))
            if source.raw_os_error() == Some(libc::EBUSY)),
        "{err}"
    );
    // SAFETY: the buffer is never referenced from Rust and outlives the mapping.
    unsafe {
        first
            .address_space()
            .map_dma(IOVA, 2 * MIB, buffer.as_ptr())
    }
    .unwrap();
    second.address_space().unmap_dma(IOVA, 2 * MIB).unwrap();
    drop(first);
    assert_eq!(
        container.group_users(group),
        1,
        "the group stays while a device uses it"
    );
    second.close().unwrap();
    assert!(
        container.group_ids().is_empty(),
        "the last device detached the group"
    );
    // The legacy context goes before the next one: every fd of this group is closed
    // before the NICs are given back (an unbind waits for every open device fd).
    drop((container, vfio));

    // iommufd: both devices join one IOAS.
    let mut vfio = Vfio::new(sysfs.clone());
    let first = open(&mut vfio, a, Mode::Iommufd);
    let second = open(&mut vfio, b, Mode::Iommufd);
    assert!(Arc::ptr_eq(
        first.iommufd().unwrap(),
        second.iommufd().unwrap()
    ));
    // SAFETY: as above.
    unsafe {
        second
            .address_space()
            .map_dma(IOVA, 2 * MIB, buffer.as_ptr())
    }
    .unwrap();
    first.address_space().unmap_dma(IOVA, 2 * MIB).unwrap();
    first.close().unwrap();
    second.close().unwrap();
    drop(vfio);
    drop(buffer);
    bound_a.restore().unwrap();
    bound_b.restore().unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn a_device_not_bound_to_vfio_is_refused_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 1);
    assert_eq!(
        sysfs.pci_device(nic).unwrap().driver().unwrap().as_deref(),
        Some("e1000e")
    );
    for mode in [Mode::Legacy, Mode::Iommufd, Mode::Auto] {
        let err = Vfio::new(sysfs.clone()).open(nic, mode).unwrap_err();
        assert!(
            matches!(&err, OpenError::Mode(ModeError::NotVfio { driver: Some(d), .. }) if d == "e1000e"),
            "{mode}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("{nic} is bound to e1000e, not to vfio-pci: bind it to vfio-pci first")
        );
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn a_non_viable_group_is_refused_naming_the_member_in_the_way_in_both_modes() {
    let sysfs = require_lab_guest();
    let (group, a, b) = shared_group_nics(&sysfs);
    let bound = OnVfio::bind(&sysfs, a);
    for mode in MODES {
        let err = Vfio::new(sysfs.clone()).open(a, mode).unwrap_err();
        let (found_group, blockers) = err.not_viable().unwrap_or_else(|| panic!("{mode}: {err}"));
        assert_eq!(found_group, group);
        assert_eq!(blockers.len(), 1, "{mode}: {blockers:?}");
        assert_eq!(
            (blockers[0].device.as_str(), blockers[0].driver.as_str()),
            (b.to_string().as_str(), "e1000e")
        );
        assert!(
            err.to_string().contains(&format!("{b} (bound to e1000e)")),
            "{err}"
        );
    }
    // The kernel agrees, each interface in its own way: the group reports itself not viable,
    // and binding the cdev is refused while a member is on a host driver: EPERM, because the
    // host driver holds the group's DMA ownership (`iommu_device_claim_dma_owner`).
    let container = Container::open(Path::new("/dev")).unwrap();
    let err = container.attach_group(group).unwrap_err();
    assert!(
        matches!(err, GroupError::NotViable { group: g, .. } if g == group),
        "{err}"
    );
    let iommufd = Iommufd::open(Path::new("/dev")).unwrap();
    let cdev = sysfs
        .pci_device(a)
        .unwrap()
        .vfio_cdev_path()
        .unwrap()
        .expect("cdev");
    let err = VfioDevice::open_cdev(&iommufd, &cdev, &a.to_string()).unwrap_err();
    let VfioDeviceError::Cdev(plugboard_vfio::CdevError::Ioctl { source, what, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*what, source.raw_os_error()),
        ("VFIO_DEVICE_BIND_IOMMUFD", Some(libc::EPERM)),
        "{err}"
    );
    drop((container, iommufd));
    bound.restore().unwrap();
}

/// A `/dev` root in a temp dir that links to some of the real nodes only: the kernel as a
/// host that lacks one interface would show it.
fn partial_dev_root(links: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, target) in links {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &path).unwrap();
    }
    dir
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn a_mode_the_kernel_lacks_is_a_clear_error_and_auto_falls_back() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let group = sysfs
        .pci_device(nic)
        .unwrap()
        .iommu_group()
        .unwrap()
        .unwrap();

    // No /dev/iommu: iommufd is refused by name, auto opens through legacy.
    let legacy_only = partial_dev_root(&[("vfio", "/dev/vfio")]);
    let host = Sysfs::new("/sys").with_dev_root(legacy_only.path());
    let err = Vfio::new(host.clone())
        .open(nic, Mode::Iommufd)
        .unwrap_err();
    let missing = legacy_only.path().join("iommu");
    assert!(
        matches!(&err, OpenError::Mode(ModeError::KernelLacks { missing: m, interface: Interface::Iommufd, .. }) if *m == missing),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{nic}: this kernel lacks the iommufd VFIO interface ({} does not exist)",
            missing.display()
        )
    );
    let device = open(&mut Vfio::new(host), nic, Mode::Auto);
    assert_eq!(device.interface(), Interface::Legacy);
    device.close().unwrap();

    // No container node: legacy is refused by name, auto opens through iommufd.
    let group_node = format!("/dev/vfio/{group}");
    let cdev_only = partial_dev_root(&[
        ("iommu", "/dev/iommu"),
        ("vfio/devices", "/dev/vfio/devices"),
        (&format!("vfio/{group}"), &group_node),
    ]);
    let host = Sysfs::new("/sys").with_dev_root(cdev_only.path());
    let err = Vfio::new(host.clone()).open(nic, Mode::Legacy).unwrap_err();
    assert!(
        matches!(
            &err,
            OpenError::Mode(ModeError::KernelLacks {
                interface: Interface::Legacy,
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().ends_with("vfio/vfio does not exist)"),
        "{err}"
    );
    let device = open(&mut Vfio::new(host), nic, Mode::Auto);
    assert_eq!(device.interface(), Interface::Iommufd);
    device.close().unwrap();

    // The real /dev has both: auto picks iommufd.
    let device = open(&mut Vfio::new(sysfs.clone()), nic, Mode::Auto);
    assert_eq!(device.interface(), Interface::Iommufd);
    device.close().unwrap();
    bound.restore().unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn fds_opened_for_a_vmm_work_after_crossing_a_socket_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(2 * MIB);
    for mode in MODES {
        let (helper, vmm) = UnixStream::pair().unwrap();
        let fds = open_for_vmm(&sysfs, nic, mode).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(fds.interface(), interface_of(mode));
        fds.send(&helper).unwrap();
        drop(fds); // the helper's copies go; the VMM's keep the kernel objects alive
        let received = VmmFds::recv(&vmm).unwrap();
        // A VMM that maps again after a hotplug itself asks for no replay.
        let device = received
            .into_device_with(DmaReplay::Off)
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(device.interface(), interface_of(mode));
        if let Some(container) = device.container() {
            assert_eq!(container.dma_replay(), DmaReplay::Off);
        }
        assert_eq!(config_u16(&device, 0), 0x8086);
        // SAFETY: the buffer is never referenced from Rust and outlives the mapping.
        unsafe {
            device
                .address_space()
                .map_dma(IOVA, 2 * MIB, buffer.as_ptr())
        }
        .unwrap();
        device.address_space().unmap_dma(IOVA, 2 * MIB).unwrap();
        device.close().unwrap();
    }
    drop(buffer);
    bound.restore().expect("no fd may still hold the device");
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn a_legacy_container_maps_its_books_again_after_the_last_group_left() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(2 * MIB);
    let mut vfio = Vfio::new(sysfs.clone());
    let device = open(&mut vfio, nic, Mode::Legacy);
    let container = Arc::clone(device.container().unwrap());
    // SAFETY: the buffer is never referenced from Rust and outlives the mapping.
    unsafe { container.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap();
    device.close().unwrap();
    assert!(container.group_ids().is_empty());
    assert_eq!(
        container.mapping_count(),
        1,
        "the books keep what the kernel dropped"
    );
    // SAFETY: as above (refused: no IOMMU without a group).
    let err =
        unsafe { container.map_dma(IOVA + 4 * 1024 * 1024, 4096, buffer.as_ptr()) }.unwrap_err();
    assert!(matches!(err, DmaError::NoIommu { .. }), "{err}");
    // The next device brings the group back, and the mapping with it: mapping the range
    // again is refused as already there, and the kernel unmaps the full length only if it
    // was mapped again.
    let device = open(&mut vfio, nic, Mode::Legacy);
    // SAFETY: as above (refused: the replay mapped it).
    let err = unsafe { container.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap_err();
    let DmaError::Map { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::EEXIST), "{err}");
    container.unmap_dma(IOVA, 2 * MIB).unwrap();
    assert_eq!(container.mapping_count(), 0);
    device.close().unwrap();
    drop((vfio, container, buffer));
    bound.restore().unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn a_legacy_container_without_replay_leaves_mapping_again_to_its_user() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(2 * MIB);
    let mut vfio = Vfio::new(sysfs.clone()).with_dma_replay(DmaReplay::Off);
    let device = open(&mut vfio, nic, Mode::Legacy);
    let container = Arc::clone(device.container().unwrap());
    assert_eq!(container.dma_replay(), DmaReplay::Off);
    // SAFETY: the buffer is never referenced from Rust and outlives every mapping of it.
    unsafe { container.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap();
    assert_eq!(container.mapping_count(), 0, "no books are kept");
    device.close().unwrap();
    // SAFETY: as above (refused: no IOMMU without a group).
    let err = unsafe { container.map_dma(IOVA, 4096, buffer.as_ptr()) }.unwrap_err();
    assert!(matches!(err, DmaError::NoIommu { .. }), "{err}");
    // The next device brings the group back without the mapping: its user maps the same
    // range again (no EEXIST), and it unmaps in full.
    let device = open(&mut vfio, nic, Mode::Legacy);
    // SAFETY: as above.
    unsafe { container.map_dma(IOVA, 2 * MIB, buffer.as_ptr()) }.unwrap();
    container.unmap_dma(IOVA, 2 * MIB).unwrap();
    // Unmapping it again finds nothing there: the kernel reports 0 bytes unmapped.
    let err = container.unmap_dma(IOVA, 2 * MIB).unwrap_err();
    assert!(
        matches!(err, DmaError::PartialUnmap { unmapped: 0, .. }),
        "{err}"
    );
    device.close().unwrap();
    drop((vfio, container, buffer));
    bound.restore().unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_cli_prints_what_the_kernel_reports_in_both_modes() {
    let sysfs = require_lab_guest();
    let nic = single_group_nic(&sysfs, 0);
    let bound = OnVfio::bind(&sysfs, nic);
    let bin = std::env::var("PLUGBOARD_BIN").expect("the lab sets PLUGBOARD_BIN");
    for mode in ["legacy", "iommufd", "auto"] {
        let out = std::process::Command::new(&bin)
            .args(["vfio", "info", &nic.to_string(), "--mode", mode, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = if mode == "legacy" {
            "legacy"
        } else {
            "iommufd"
        };
        assert_eq!(json["interface"], want, "{json}");
        assert!(
            json["flags"].as_array().unwrap().iter().any(|f| f == "pci"),
            "{json}"
        );
        assert!(
            json["regions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "config"),
            "{json}"
        );
        assert!(
            json["irqs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "MSI-X"),
            "{json}"
        );
    }
    let table = std::process::Command::new(&bin)
        .args(["vfio", "info", &nic.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("BAR0") && text.contains("MSI-X"),
        "{text}"
    );
    let not_vfio = single_group_nic(&sysfs, 1);
    let out = std::process::Command::new(&bin)
        .args(["vfio", "info", &not_vfio.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bound to e1000e"),
        "{err}"
    );
    bound.restore().unwrap();
}
