//! The fake kernel's rules, and every read and write of the crate, against it.

use std::fs;
use std::os::unix::fs::symlink;

use super::*;
use crate::{BindError, DevKind, DevNodeError, DriverKind, HeaderType, PciDevice, SysfsError};

const BRIDGE: &str = "0000:00:1e.0";
const NIC_A: &str = "0000:01:01.0";
const NIC_B: &str = "0000:01:02.0";
const SOLO: &str = "0000:02:00.0";
const UNGROUPED: &str = "0000:03:00.0";

fn e1000e(address: &str) -> PciSpec {
    PciSpec::new(address, 0x8086, 0x10d3)
        .class(0x020000)
        .subsystem(0x8086, 0xa01f)
        .driver("e1000e")
}

/// The lab's shape: a bridge with two e1000e in group 5, one e1000e alone in group 7, one
/// device with no IOMMU group.
fn lab() -> FakeKernel {
    FakeKernel::builder()
        .pci(PciSpec::bridge(BRIDGE).iommu_group(5))
        .pci(e1000e(NIC_A).parent(BRIDGE).iommu_group(5))
        .pci(e1000e(NIC_B).parent(BRIDGE).iommu_group(5))
        .pci(e1000e(SOLO).iommu_group(7).numa_node(1))
        .pci(e1000e(UNGROUPED))
        .build()
        .unwrap()
}

fn dev(kernel: &FakeKernel, address: &str) -> PciDevice {
    kernel.sysfs().pci_device(address.parse().unwrap()).unwrap()
}

fn errno_of(err: &BindError) -> Option<i32> {
    match err {
        BindError::Override { source, .. }
        | BindError::Unbind { source, .. }
        | BindError::Probe { source, .. }
        | BindError::Reset { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn layout_has_the_kernels_links() {
    let k = lab();
    let sys = k.sysfs_root();
    let link = fs::read_link(sys.join("bus/pci/devices").join(NIC_A)).unwrap();
    assert_eq!(
        link.to_str().unwrap(),
        format!("../../../devices/pci0000:00/{BRIDGE}/{NIC_A}")
    );
    let real = fs::canonicalize(sys.join("bus/pci/devices").join(NIC_A)).unwrap();
    assert!(real.starts_with(sys.join("devices/pci0000:00")));
    assert_eq!(
        fs::read_link(real.join("driver"))
            .unwrap()
            .to_str()
            .unwrap(),
        "../../../../bus/pci/drivers/e1000e"
    );
    assert!(sys.join("bus/pci/drivers/e1000e").join(NIC_A).exists());
    assert!(
        sys.join("kernel/iommu_groups/5/devices")
            .join(NIC_B)
            .exists()
    );
    assert!(real.join("iommu_group/devices").join(NIC_A).exists());
    assert!(k.dev_root().join("vfio/vfio").exists());
    assert!(k.dev_root().join("iommu").exists());
}

#[test]
fn reads_pci_attributes() {
    let k = FakeKernel::builder()
        .pci(PciSpec::bridge(BRIDGE).config_size(256))
        .pci(
            PciSpec::new("0000:3b:00.0", 0x10de, 0x2330)
                .class(0x030200)
                .revision(0xa1)
                .numa_node(1)
                .bar(0, 0xfb00_0000, 16 << 20)
                .bar(2, 0x3800_0000_0000, 64 << 30)
                .reset_methods(&["flr", "bus"])
                .driver_override("vfio-pci")
                .unbound(),
        )
        .pci(
            PciSpec::new("0000:3c:00.0", 0x1234, 0x5678)
                .header_type(0x7f)
                .no_reset(),
        )
        .build()
        .unwrap();
    let gpu = dev(&k, "3b:00.0");
    assert_eq!(
        (gpu.vendor_id().unwrap(), gpu.device_id().unwrap()),
        (0x10de, 0x2330)
    );
    assert_eq!(gpu.class().unwrap().code(), 0x030200);
    assert_eq!(gpu.revision().unwrap(), 0xa1);
    assert_eq!(gpu.header_type().unwrap(), HeaderType::Endpoint);
    assert!(gpu.is_pcie().unwrap());
    assert_eq!(gpu.numa_node().unwrap(), Some(1));
    assert_eq!(gpu.driver().unwrap(), None);
    assert_eq!(gpu.driver_kind().unwrap(), DriverKind::Unbound);
    assert_eq!(gpu.driver_override().unwrap().as_deref(), Some("vfio-pci"));
    assert_eq!(gpu.iommu_group().unwrap(), None);
    let bars = gpu.bars().unwrap();
    assert_eq!(bars.len(), 2);
    assert_eq!(bars[1].size(), 64 << 30);
    assert!(gpu.has_large_bar().unwrap());
    let reset = gpu.reset_methods().unwrap();
    assert!(reset.can_reset);
    assert_eq!(reset.methods, ["flr", "bus"]);
    assert_eq!(gpu.parent().unwrap(), None);

    let bridge = dev(&k, BRIDGE);
    assert_eq!(bridge.header_type().unwrap(), HeaderType::PciBridge);
    assert!(!bridge.is_pcie().unwrap());
    assert_eq!(bridge.driver_override().unwrap(), None);
    assert_eq!(bridge.numa_node().unwrap(), None);
    assert!(!bridge.reset_methods().unwrap().can_reset);

    let odd = dev(&k, "3c:00.0");
    assert!(matches!(odd.header_type(), Err(SysfsError::Parse { .. })));
    let err = odd.reset().unwrap_err();
    assert!(matches!(err, BindError::NoReset { .. }), "{err}");
}

#[test]
fn reads_sriov_links() {
    let pf = "0000:06:00.0";
    let k = FakeKernel::builder()
        .pci(
            PciSpec::new(pf, 0x8086, 0x1572)
                .class(0x020000)
                .sriov_totalvfs(8)
                .driver("i40e"),
        )
        .pci(
            PciSpec::new("0000:06:02.0", 0x8086, 0x154c)
                .physfn(pf)
                .driver("iavf"),
        )
        .pci(
            PciSpec::new("0000:06:02.1", 0x8086, 0x154c)
                .physfn(pf)
                .driver("iavf"),
        )
        .build()
        .unwrap();
    let p = dev(&k, pf);
    assert_eq!(p.sriov_totalvfs().unwrap(), Some(8));
    let vfs: Vec<String> = p
        .virtfns()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(vfs, ["0000:06:02.0", "0000:06:02.1"]);
    assert_eq!(
        dev(&k, "06:02.1").physfn().unwrap(),
        Some(pf.parse().unwrap())
    );
    assert_eq!(dev(&k, "06:02.1").sriov_totalvfs().unwrap(), None);
}

#[test]
fn unknown_device_is_not_found() {
    let k = lab();
    let err = k
        .sysfs()
        .pci_device("0000:09:00.0".parse().unwrap())
        .unwrap_err();
    assert!(err.is_not_found());
    assert!(err.to_string().contains("0000:09:00.0"), "{err}");
}

#[test]
fn groups_and_viability() {
    let k = lab();
    let sysfs = k.sysfs();
    assert_eq!(sysfs.iommu_group_numbers().unwrap(), [5, 7]);
    let g5 = sysfs.iommu_group(5).unwrap();
    assert_eq!(g5.members.len(), 3);
    assert!(g5.members[0].bridge);
    assert!(!g5.is_viable());
    let blockers: Vec<String> = g5.blockers().map(|m| m.address.to_string()).collect();
    assert_eq!(blockers, [NIC_A, NIC_B]);

    dev(&k, NIC_A).bind("vfio-pci").unwrap();
    let g5 = sysfs.iommu_group(5).unwrap();
    assert!(!g5.is_viable(), "one member is still on e1000e");
    let blockers: Vec<String> = g5.blockers().map(|m| m.address.to_string()).collect();
    assert_eq!(blockers, [NIC_B]);

    // An unbound member does not block.
    dev(&k, NIC_B).unbind().unwrap();
    assert!(sysfs.iommu_group(5).unwrap().is_viable());
    assert!(matches!(
        sysfs.iommu_group(99),
        Err(SysfsError::NotFound { .. })
    ));
}

#[test]
fn vfio_variant_drivers_count_as_vfio() {
    let k = FakeKernel::builder()
        .driver(DriverSpec::new("mlx5_vfio_pci").vfio_variant())
        .pci(
            PciSpec::new("0000:05:00.0", 0x15b3, 0x101e)
                .class(0x020000)
                .iommu_group(3)
                .driver("mlx5_core"),
        )
        .build()
        .unwrap();
    let nic = dev(&k, "05:00.0");
    nic.bind("mlx5_vfio_pci").unwrap();
    assert_eq!(nic.driver_kind().unwrap(), DriverKind::VfioVariant);
    assert!(nic.vfio_dev().unwrap().is_some());
    assert!(k.sysfs().iommu_group(3).unwrap().is_viable());
    assert!(k.dev_root().join("vfio/3").exists());
    nic.reattach(Some("mlx5_core")).unwrap();
    assert!(!k.dev_root().join("vfio/3").exists());
}

#[test]
fn bind_and_reattach_round_trip_with_vfio_nodes() {
    let k = lab();
    let solo = dev(&k, SOLO);
    let outcome = solo.bind("vfio-pci").unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.previous_driver.as_deref(), Some("e1000e"));
    assert_eq!(outcome.previous_override, None);
    assert_eq!(solo.driver().unwrap().as_deref(), Some("vfio-pci"));
    assert_eq!(solo.driver_override().unwrap().as_deref(), Some("vfio-pci"));
    assert!(k.dev_root().join("vfio/7").exists());
    assert_eq!(solo.vfio_dev().unwrap().as_deref(), Some("vfio0"));
    assert!(k.dev_root().join("vfio/devices/vfio0").exists());
    let node = k
        .sysfs()
        .resolve_devnode(DevKind::Char, "242:0".parse().unwrap())
        .unwrap();
    assert_eq!(node, k.dev_root().join("vfio/devices/vfio0"));
    // Group nodes' minors count from 0 in creation order, whatever the group number (as
    // on the lab's real kernel, where /dev/vfio/18 is 247:0).
    let group_node = k
        .sysfs()
        .resolve_devnode(
            DevKind::Char,
            format!("{VFIO_GROUP_MAJOR}:0").parse().unwrap(),
        )
        .unwrap();
    assert_eq!(group_node, k.dev_root().join("vfio/7"));
    k.sysfs()
        .resolve_devnode(
            DevKind::Char,
            format!("{VFIO_GROUP_MAJOR}:7").parse().unwrap(),
        )
        .unwrap_err();

    // Binding again is a no-op.
    assert!(!solo.bind("vfio-pci").unwrap().changed);

    assert_eq!(
        solo.reattach(Some("e1000e")).unwrap().as_deref(),
        Some("e1000e")
    );
    assert_eq!(solo.driver_override().unwrap(), None);
    assert!(!k.dev_root().join("vfio/7").exists());
    assert!(!k.dev_root().join("vfio/devices/vfio0").exists());
    assert_eq!(solo.vfio_dev().unwrap(), None);
}

#[test]
fn group_node_appears_with_first_member_and_goes_with_last() {
    let k = lab();
    let node = k.dev_root().join("vfio/5");
    let (a, b) = (dev(&k, NIC_A), dev(&k, NIC_B));
    a.bind("vfio-pci").unwrap();
    assert!(node.exists());
    b.bind("vfio-pci").unwrap();
    // cdev numbers: lowest free.
    assert_eq!(a.vfio_dev().unwrap().as_deref(), Some("vfio0"));
    assert_eq!(b.vfio_dev().unwrap().as_deref(), Some("vfio1"));
    a.reattach(None).unwrap();
    assert!(node.exists(), "B still holds the group");
    let c = dev(&k, SOLO);
    c.bind("vfio-pci").unwrap();
    assert_eq!(c.vfio_dev().unwrap().as_deref(), Some("vfio0"));
    b.reattach(None).unwrap();
    assert!(!node.exists());
}

#[test]
fn legacy_kernel_has_no_cdev() {
    let k = FakeKernel::builder()
        .legacy_vfio_only()
        .pci(e1000e(SOLO).iommu_group(7))
        .build()
        .unwrap();
    let solo = dev(&k, SOLO);
    solo.bind("vfio-pci").unwrap();
    assert!(k.dev_root().join("vfio/7").exists());
    assert_eq!(solo.vfio_dev().unwrap(), None);
    assert!(!k.dev_root().join("iommu").exists());
    // Without vfio-dev/, vfio-pci is still VFIO by name.
    assert_eq!(solo.driver_kind().unwrap(), DriverKind::VfioPci);
}

#[test]
fn override_is_read_only_at_probe_time() {
    let k = lab();
    let solo = dev(&k, SOLO);
    solo.set_driver_override(Some("vfio-pci")).unwrap();
    assert_eq!(solo.driver().unwrap().as_deref(), Some("e1000e"));
    // drivers_probe leaves a bound device alone.
    solo.probe().unwrap();
    assert_eq!(solo.driver().unwrap().as_deref(), Some("e1000e"));
    solo.unbind().unwrap();
    solo.probe().unwrap();
    assert_eq!(solo.driver().unwrap().as_deref(), Some("vfio-pci"));
    // Clearing shows "(null)" in the file.
    solo.set_driver_override(None).unwrap();
    let text = fs::read_to_string(solo.attr_path("driver_override")).unwrap();
    assert_eq!(text, "(null)\n");
}

#[test]
fn drivers_probe_binds_an_unbound_device_by_its_id_table() {
    // What a give-back after an interrupted one relies on: an unbound device with no
    // override goes to the driver whose ID table matches, never to vfio-pci (no IDs).
    let k = FakeKernel::builder()
        .pci(e1000e(SOLO).iommu_group(7))
        .pci(
            PciSpec::new(UNGROUPED, 0x1234, 0x5678)
                .class(0x020000)
                .iommu_group(8)
                .driver("vfio-pci"),
        )
        .build()
        .unwrap();
    let solo = dev(&k, SOLO);
    solo.bind("vfio-pci").unwrap();
    solo.set_driver_override(None).unwrap();
    solo.unbind().unwrap();
    assert_eq!(solo.driver().unwrap(), None);
    solo.probe().unwrap();
    assert_eq!(solo.driver().unwrap().as_deref(), Some("e1000e"));
    // No driver's table matches: the probe "succeeds" and binds nothing.
    let orphan = dev(&k, UNGROUPED);
    orphan.set_driver_override(None).unwrap();
    orphan.unbind().unwrap();
    orphan.probe().unwrap();
    assert_eq!(orphan.driver().unwrap(), None);
    assert!(!k.dev_root().join("vfio/8").exists());
}

#[test]
fn bind_on_bound_and_unbind_on_unbound_fail_with_enodev() {
    let k = lab();
    let sysfs = k.sysfs();
    let drivers = sysfs.pci_drivers_dir();
    let err = sysfs
        .write_attribute(&drivers.join("e1000e/bind"), SOLO)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    let err = sysfs
        .write_attribute(&drivers.join("vfio-pci/unbind"), SOLO)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    // Direct bind of an unbound device works when the driver matches.
    dev(&k, SOLO).unbind().unwrap();
    assert!(
        dev(&k, SOLO).unbind().unwrap().is_none(),
        "no-op when unbound"
    );
    let err = sysfs
        .write_attribute(&drivers.join("vfio-pci/bind"), SOLO)
        .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENODEV),
        "vfio-pci has no IDs"
    );
    sysfs
        .write_attribute(&drivers.join("e1000e/bind"), SOLO)
        .unwrap();
    assert_eq!(dev(&k, SOLO).driver().unwrap().as_deref(), Some("e1000e"));
    // A probe for a device that does not exist.
    let err = sysfs
        .write_attribute(&sysfs.path("bus/pci/drivers_probe"), "0000:0f:00.0")
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
}

#[test]
fn failed_probe_is_reported_and_rolled_back() {
    let k = FakeKernel::builder()
        .driver(DriverSpec::new("vfio-pci").fail_probe(SOLO))
        .pci(e1000e(SOLO).iommu_group(7))
        .build()
        .unwrap();
    let solo = dev(&k, SOLO);
    let err = solo.bind("vfio-pci").unwrap_err();
    match &err {
        BindError::NotBound { wanted, found, .. } => {
            assert_eq!(wanted, "vfio-pci");
            assert_eq!(found, &None);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("unbound"), "{err}");
    // Rolled back: the override is cleared and e1000e took the device again.
    assert_eq!(solo.driver_override().unwrap(), None);
    assert_eq!(solo.driver().unwrap().as_deref(), Some("e1000e"));
    assert!(!k.dev_root().join("vfio/7").exists());
}

#[test]
fn vfio_needs_an_iommu_group() {
    let k = lab();
    let err = dev(&k, UNGROUPED).bind("vfio-pci").unwrap_err();
    assert!(matches!(err, BindError::NotBound { .. }), "{err}");
    assert_eq!(
        dev(&k, UNGROUPED).driver().unwrap().as_deref(),
        Some("e1000e")
    );
}

#[test]
fn bad_driver_names_and_missing_drivers() {
    let k = lab();
    let solo = dev(&k, SOLO);
    for bad in ["../e1000e", "", "a/b", ".."] {
        let err = solo.bind(bad).unwrap_err();
        assert!(
            matches!(err, BindError::Read(SysfsError::BadName { .. })),
            "{err}"
        );
    }
    let err = solo.bind("nvme").unwrap_err();
    assert!(matches!(err, BindError::NoSuchDriver { .. }), "{err}");
    assert!(err.to_string().contains(SOLO), "{err}");
    let k = FakeKernel::builder()
        .without_vfio_pci()
        .pci(e1000e(SOLO))
        .build()
        .unwrap();
    assert!(matches!(
        dev(&k, SOLO).bind("vfio-pci"),
        Err(BindError::NoSuchDriver { .. })
    ));
}

#[test]
fn new_id_is_refused_and_reset_counts() {
    let k = lab();
    let sysfs = k.sysfs();
    let err = sysfs
        .write_attribute(
            &sysfs.pci_drivers_dir().join("vfio-pci/new_id"),
            "8086 10d3",
        )
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let solo = dev(&k, SOLO);
    solo.reset().unwrap();
    solo.reset().unwrap();
    assert_eq!(k.resets(solo.address()), 2);
    assert!(
        k.writes()
            .iter()
            .any(|(p, v)| p.ends_with("reset") && v == "1")
    );
    // Writing an attribute that does not exist: ENOENT, nothing created.
    let missing = solo.attr_path("no_such_attr");
    let err = sysfs.write_attribute(&missing, "1").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert!(!missing.exists());
}

#[test]
fn every_write_error_names_file_and_value() {
    let k = lab();
    let sysfs = k.sysfs();
    let err = sysfs
        .write_attribute(&sysfs.pci_drivers_dir().join("e1000e/bind"), SOLO)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("e1000e/bind") && text.contains(SOLO),
        "{text}"
    );
    let _ = errno_of(&BindError::NotBound {
        address: SOLO.parse().unwrap(),
        wanted: "x".into(),
        found: None,
    });
}

#[test]
fn boot_binding_uses_override_then_id_table() {
    let k = FakeKernel::builder()
        .driver(DriverSpec::new("nvme").id(0x1cc1, 0x8201))
        .pci(
            PciSpec::new("0000:01:00.0", 0x1cc1, 0x8201)
                .class(0x010802)
                .iommu_group(1),
        )
        .pci(
            PciSpec::new("0000:02:00.0", 0x1cc1, 0x8201)
                .class(0x010802)
                .iommu_group(2)
                .driver_override("vfio-pci"),
        )
        .pci(PciSpec::new("0000:03:00.0", 0x1cc1, 0x8201).unbound())
        .build()
        .unwrap();
    assert_eq!(
        dev(&k, "01:00.0").driver().unwrap().as_deref(),
        Some("nvme")
    );
    assert_eq!(
        dev(&k, "02:00.0").driver().unwrap().as_deref(),
        Some("vfio-pci")
    );
    assert!(k.dev_root().join("vfio/2").exists());
    assert_eq!(dev(&k, "03:00.0").driver().unwrap(), None);
    assert_eq!(k.drivers()["nvme"], [(0x1cc1, 0x8201)]);
}

#[test]
fn devnodes_resolve_and_fail_distinctly() {
    let k = FakeKernel::builder()
        .node(NodeSpec::block("loop0", 7, 0).loop_backing_file("/var/lib/images/a.img"))
        .node(NodeSpec::char("net/tun", 10, 200))
        .node(NodeSpec::block("nouevent", 7, 1).no_uevent())
        .node(NodeSpec::block("nodevname", 7, 2).uevent("MAJOR=7\nMINOR=2\n"))
        .node(NodeSpec::block("garbage", 7, 3).uevent("MAJOR=7\nthis is not a uevent\n"))
        .node(NodeSpec::block("escape", 7, 4).uevent("DEVNAME=../etc/passwd\n"))
        .node(NodeSpec::block("absolute", 7, 5).uevent("DEVNAME=/etc/passwd\n"))
        .build()
        .unwrap();
    let s = k.sysfs();
    let resolve = |kind, n: &str| s.resolve_devnode(kind, n.parse().unwrap());
    assert_eq!(
        resolve(DevKind::Block, "7:0").unwrap(),
        k.dev_root().join("loop0")
    );
    assert_eq!(
        resolve(DevKind::Char, "10:200").unwrap(),
        k.dev_root().join("net/tun")
    );
    assert_eq!(
        resolve(DevKind::Char, "10:196").unwrap(),
        k.dev_root().join("vfio/vfio")
    );
    assert!(matches!(
        resolve(DevKind::Char, "7:0"),
        Err(DevNodeError::NoDevice { .. })
    ));
    assert!(matches!(
        resolve(DevKind::Block, "7:1"),
        Err(DevNodeError::NoUevent { .. })
    ));
    assert!(matches!(
        resolve(DevKind::Block, "7:2"),
        Err(DevNodeError::NoDevName { .. })
    ));
    let err = resolve(DevKind::Block, "7:3").unwrap_err();
    assert!(matches!(err, DevNodeError::Malformed { .. }), "{err}");
    assert!(matches!(
        resolve(DevKind::Block, "7:4"),
        Err(DevNodeError::BadDevName { .. })
    ));
    assert!(matches!(
        resolve(DevKind::Block, "7:5"),
        Err(DevNodeError::BadDevName { .. })
    ));
    assert_eq!(
        s.loop_backing_file("loop0").unwrap().unwrap(),
        std::path::PathBuf::from("/var/lib/images/a.img")
    );
    assert_eq!(s.loop_backing_file("nouevent").unwrap(), None);
    assert!(s.loop_backing_file("loop9").unwrap_err().is_not_found());
    assert!(matches!(
        s.loop_backing_file("../x"),
        Err(SysfsError::BadName { .. })
    ));
}

#[test]
fn reads_mdev_usb_and_scsi() {
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    let k = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:00:02.0", 0x8086, 0x3e92)
                .class(0x030000)
                .driver("i915"),
        )
        .mdev(
            MdevSpec::new(uuid, "0000:00:02.0", "i915-GVTg_V5_4")
                .type_name("GVTg_V5_4")
                .iommu_group(12),
        )
        .usb(
            UsbSpec::new("1-2", 1, 3, 0x046d, 0xc52b)
                .product("USB Receiver")
                .manufacturer("Logitech"),
        )
        .scsi(ScsiSpec::new("0:0:0:0").block("sda", 8, 0).sg("sg0", 21, 0))
        .scsi(
            ScsiSpec::new("2:0:1:0")
                .ident("QEMU", "QEMU CD-ROM")
                .scsi_type(5)
                .sg("sg1", 21, 1),
        )
        .build()
        .unwrap();
    let s = k.sysfs();
    let m = s.mdev(uuid).unwrap();
    assert_eq!(m.type_id, "i915-GVTg_V5_4");
    assert_eq!(m.type_name.as_deref(), Some("GVTg_V5_4"));
    assert_eq!(m.device_api, "vfio-pci");
    assert_eq!(m.parent, Some("0000:00:02.0".parse().unwrap()));
    assert_eq!(m.iommu_group, Some(12));
    assert_eq!(s.mdevs().unwrap().len(), 1);
    assert!(s.mdev("not-a-uuid").unwrap_err().is_not_found());
    assert!(matches!(s.mdev("../../x"), Err(SysfsError::BadName { .. })));

    let usb = s.usb_devices().unwrap();
    assert_eq!(usb.len(), 1);
    assert_eq!((usb[0].busnum, usb[0].devnum), (1, 3));
    assert_eq!((usb[0].vendor_id, usb[0].product_id), (0x046d, 0xc52b));
    assert_eq!(usb[0].product.as_deref(), Some("USB Receiver"));
    assert_eq!(usb[0].devname(), "bus/usb/001/003");
    assert_eq!(
        s.resolve_devnode(DevKind::Char, "189:2".parse().unwrap())
            .unwrap(),
        k.dev_root().join("bus/usb/001/003")
    );

    let scsi = s.scsi_devices().unwrap();
    assert_eq!(scsi.len(), 2);
    assert_eq!(scsi[0].block.as_deref(), Some("sda"));
    assert_eq!(scsi[0].sg.as_deref(), Some("sg0"));
    assert_eq!(scsi[0].vendor, "QEMU");
    assert_eq!(scsi[1].scsi_type, 5);
    assert_eq!(scsi[1].block, None);
    assert_eq!(
        s.resolve_devnode(DevKind::Char, "21:1".parse().unwrap())
            .unwrap(),
        k.dev_root().join("sg1")
    );
    assert!(
        s.scsi_device("9:0:0:0".parse().unwrap())
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn broken_trees_give_errors_not_panics() {
    let k = lab();
    let solo = dev(&k, SOLO);
    let real = fs::canonicalize(solo.path()).unwrap();
    // A symlink loop where an attribute should be.
    fs::remove_file(real.join("vendor")).unwrap();
    symlink("vendor", real.join("vendor")).unwrap();
    let err = solo.vendor_id().unwrap_err();
    assert!(
        matches!(&err, SysfsError::Read { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
        "{err}"
    );
    // A directory where a file should be.
    fs::remove_file(real.join("class")).unwrap();
    fs::create_dir(real.join("class")).unwrap();
    assert!(matches!(solo.class(), Err(SysfsError::Read { .. })));
    // Garbage values.
    fs::write(real.join("device"), "0xnope\n").unwrap();
    assert!(matches!(solo.device_id(), Err(SysfsError::Parse { .. })));
    fs::write(real.join("numa_node"), "banana\n").unwrap();
    assert!(matches!(solo.numa_node(), Err(SysfsError::Parse { .. })));
    fs::write(real.join("resource"), "0x1 0x2\n").unwrap();
    assert!(matches!(solo.bars(), Err(SysfsError::Parse { .. })));
    // Missing attributes.
    fs::remove_file(real.join("revision")).unwrap();
    assert!(solo.revision().unwrap_err().is_not_found());
    fs::remove_file(real.join("config")).unwrap();
    assert!(solo.header_type().unwrap_err().is_not_found());
    // A looping driver link reads as a driver name, without following it.
    fs::remove_file(real.join("driver")).unwrap();
    symlink("driver", real.join("driver")).unwrap();
    assert_eq!(solo.driver().unwrap().as_deref(), Some("driver"));
    // A group link with a non-number.
    fs::remove_file(real.join("iommu_group")).unwrap();
    symlink("../../../kernel/iommu_groups/x", real.join("iommu_group")).unwrap();
    assert!(matches!(solo.iommu_group(), Err(SysfsError::Parse { .. })));

    // The inventory lists the broken device as a problem and carries on.
    let inventory = k.sysfs().pci_inventory().unwrap();
    assert_eq!(inventory.devices.len(), 4);
    assert_eq!(inventory.problems.len(), 1);
    assert_eq!(inventory.problems[0].address.to_string(), SOLO);
    // A non-PCI entry in bus/pci/devices is skipped.
    symlink("nowhere", k.sysfs_root().join("bus/pci/devices/garbage")).unwrap();
    assert_eq!(k.sysfs().pci_addresses().unwrap().len(), 5);
}

/// The inventory takes the driver from `uevent` (`DRIVER=`), the kernel's other view of the
/// same `dev->driver` as the `driver` link: both agree for every device, across binds.
#[test]
fn the_inventory_driver_is_the_driver_link_across_binds() {
    let k = lab();
    let agree = |k: &FakeKernel| {
        let inventory = k.sysfs().pci_inventory().unwrap();
        assert!(inventory.problems.is_empty(), "{:?}", inventory.problems);
        for d in &inventory.devices {
            let link = k.sysfs().pci_device(d.address).unwrap().driver().unwrap();
            assert_eq!(d.driver, link, "{}", d.address);
        }
        inventory
    };
    let solo = || k.sysfs().pci_device(SOLO.parse().unwrap()).unwrap();
    assert_eq!(solo().driver().unwrap().as_deref(), Some("e1000e"));
    agree(&k);
    solo().bind("vfio-pci").unwrap();
    let uevent = fs::read_to_string(solo().attr_path("uevent")).unwrap();
    assert!(
        uevent.starts_with("DRIVER=vfio-pci\nPCI_CLASS="),
        "{uevent}"
    );
    agree(&k);
    solo().unbind().unwrap();
    let uevent = fs::read_to_string(solo().attr_path("uevent")).unwrap();
    assert!(!uevent.contains("DRIVER="), "{uevent}");
    let unbound = agree(&k);
    let info = unbound
        .devices
        .iter()
        .find(|d| d.address.to_string() == SOLO);
    assert_eq!(info.unwrap().driver, None);
}

#[test]
fn inventory_and_filters() {
    let k = lab();
    let mut inv = k.sysfs().pci_inventory().unwrap();
    assert_eq!(inv.devices.len(), 5);
    assert!(inv.problems.is_empty());
    let solo = inv
        .devices
        .iter()
        .find(|d| d.address.to_string() == SOLO)
        .unwrap();
    assert_eq!(solo.numa_node, Some(1));
    assert_eq!(solo.iommu_group, Some(7));
    assert_eq!(solo.owner, None);
    let nic_a = inv
        .devices
        .iter()
        .find(|d| d.address.to_string() == NIC_A)
        .unwrap();
    assert_eq!(nic_a.parent, Some(BRIDGE.parse().unwrap()));
    assert_eq!(inv.vendors().into_iter().collect::<Vec<_>>(), [0x8086]);
    let filter = crate::PciFilter {
        class: Some("0604".into()),
        driver: None,
    };
    let mut bridges = inv.clone();
    bridges.retain(&filter);
    assert_eq!(bridges.devices.len(), 1);
    inv.retain(&crate::PciFilter {
        class: Some("02".into()),
        driver: Some("e1000e".into()),
    });
    assert_eq!(inv.devices.len(), 4);
    inv.retain(&crate::PciFilter {
        class: None,
        driver: Some("none".into()),
    });
    assert!(inv.devices.is_empty());
}

#[test]
fn table_errors_are_typed() {
    let bad = FakeKernel::builder()
        .pci(PciSpec::new("zz:00.0", 1, 1))
        .build();
    assert!(matches!(bad, Err(FakeError::Table(_))));
    let orphan = FakeKernel::builder()
        .pci(PciSpec::new("01:00.0", 1, 1).parent("00:1c.0"))
        .build();
    assert!(matches!(orphan, Err(FakeError::Table(_))));
    let twice = FakeKernel::builder()
        .pci(PciSpec::new("01:00.0", 1, 1))
        .pci(PciSpec::new("0000:01:00.0", 1, 1))
        .build();
    assert!(matches!(twice, Err(FakeError::Table(_))));
}

#[test]
fn opened_handles_read_the_same_as_path_handles() {
    let k = lab();
    dev(&k, NIC_A).bind("vfio-pci").unwrap();
    for d in k.sysfs().pci_devices().unwrap() {
        let o = d.opened().unwrap();
        assert_eq!(d.vendor_id().unwrap(), o.vendor_id().unwrap());
        assert_eq!(d.device_id().unwrap(), o.device_id().unwrap());
        assert_eq!(d.class().unwrap(), o.class().unwrap());
        assert_eq!(d.revision().unwrap(), o.revision().unwrap());
        assert_eq!(d.header_type().unwrap(), o.header_type().unwrap());
        assert_eq!(d.config_size().unwrap(), o.config_size().unwrap());
        assert_eq!(d.driver().unwrap(), o.driver().unwrap());
        assert_eq!(d.driver_kind().unwrap(), o.driver_kind().unwrap());
        assert_eq!(d.driver_override().unwrap(), o.driver_override().unwrap());
        assert_eq!(d.iommu_group().unwrap(), o.iommu_group().unwrap());
        assert_eq!(d.numa_node().unwrap(), o.numa_node().unwrap());
        assert_eq!(d.bars().unwrap(), o.bars().unwrap());
        assert_eq!(d.reset_methods().unwrap(), o.reset_methods().unwrap());
        assert_eq!(d.parent().unwrap(), o.parent().unwrap());
    }
    // An opened handle on a removed device fails with an error, not a panic.
    let solo = dev(&k, SOLO).opened().unwrap();
    fs::remove_dir_all(solo.path()).unwrap();
    assert!(solo.vendor_id().unwrap_err().is_not_found());
}

/// `from_value(to_value(x)) == x`, and the JSON of the copy is the same JSON.
fn round_trips<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_value(value).unwrap();
    let back: T = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(&back, value, "{json}");
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
}

#[test]
fn every_record_round_trips_through_json() {
    let k = FakeKernel::builder()
        .pci(PciSpec::bridge(BRIDGE).iommu_group(5))
        .pci(
            e1000e(NIC_A)
                .parent(BRIDGE)
                .iommu_group(5)
                .revision(3)
                .bar(0, 0xfe80_0000, 0x2_0000)
                .bar(2, 0x40_0000_0000, 8 << 30)
                .sriov_totalvfs(2)
                .reset_methods(&["flr", "bus"]),
        )
        .pci(e1000e(NIC_B).parent(BRIDGE).iommu_group(5).physfn(NIC_A))
        .pci(e1000e(SOLO).iommu_group(7).numa_node(1).no_reset())
        .pci(e1000e(UNGROUPED).unbound().driver_override("vfio-pci"))
        .mdev(
            MdevSpec::new("c4a9a4d2-1b2c-4d5e-8f90-0123456789ab", SOLO, "nvidia-63").iommu_group(9),
        )
        .usb(UsbSpec::new("1-2", 1, 2, 0x046d, 0xc52b).product("Receiver"))
        .node(NodeSpec::block("sda", 8, 0))
        .build()
        .unwrap();
    let sysfs = k.sysfs();
    let bound = dev(&k, SOLO).bind("vfio-pci").unwrap();
    round_trips(&bound);

    let mut inventory = sysfs.pci_inventory().unwrap();
    inventory.devices[1].owner = Some("qemu/vm1".to_owned());
    inventory.devices[1].names.vendor = Some("Intel Corporation".to_owned());
    inventory.problems.push(crate::InventoryProblem {
        address: UNGROUPED.parse().unwrap(),
        error: "cannot read: gone".to_owned(),
    });
    assert!(inventory.devices.iter().any(|d| d.large_bar));
    assert!(
        inventory
            .devices
            .iter()
            .any(|d| d.vfio_dev.is_some() || d.driver_kind.is_vfio())
    );
    round_trips(&inventory);
    for device in &inventory.devices {
        round_trips(device);
    }
    for group in sysfs.iommu_groups().unwrap() {
        round_trips(&group);
        for member in &group.members {
            round_trips(member);
        }
    }
    round_trips(&crate::PciFilter {
        class: Some("02".into()),
        driver: None,
    });
    assert_eq!(
        serde_json::from_str::<crate::PciFilter>("{}").unwrap(),
        crate::PciFilter::default()
    );
    for mdev in sysfs.mdevs().unwrap() {
        round_trips(&mdev);
    }
    for usb in sysfs.usb_devices().unwrap() {
        round_trips(&usb);
    }
    let number: crate::DevNumber = "8:0".parse().unwrap();
    round_trips(&number);
    round_trips(&DevKind::Block);
    assert_eq!(serde_json::to_value(DevKind::Char).unwrap(), "char");
    round_trips(&crate::Uevent::parse("MAJOR=8\nMINOR=0\nDEVNAME=sda\n").unwrap());
}

/// As the lab's real kernel shows the `mtty` sample: the parent is a virtual device (no
/// PCI address), and the mdev has an emulated IOMMU group whose node, like the mdev's own
/// VFIO cdev, exists from the moment the mdev does.
#[test]
fn an_mdev_on_a_virtual_parent_has_its_group_node_and_cdev_at_once() {
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    let k = FakeKernel::builder()
        .mdev(
            MdevSpec::on_virtual_parent(uuid, "mtty/mtty", "mtty-2")
                .type_name("Dual port serial")
                .iommu_group(14),
        )
        .build()
        .unwrap();
    let s = k.sysfs();
    let m = s.mdev(uuid).unwrap();
    assert_eq!(m.parent, None);
    assert_eq!(m.type_id, "mtty-2");
    assert_eq!(m.type_name.as_deref(), Some("Dual port serial"));
    assert_eq!(m.iommu_group, Some(14));
    assert_eq!(
        fs::canonicalize(&m.path).unwrap(),
        fs::canonicalize(k.sysfs_root().join("devices/virtual/mtty/mtty"))
            .unwrap()
            .join(uuid)
    );
    assert!(k.dev_root().join("vfio/14").exists());
    assert_eq!(
        s.resolve_devnode(
            DevKind::Char,
            format!("{VFIO_GROUP_MAJOR}:0").parse().unwrap()
        )
        .unwrap(),
        k.dev_root().join("vfio/14")
    );
    assert!(k.dev_root().join("vfio/devices/vfio0").exists());
    assert!(m.path.join("vfio-dev/vfio0/dev").exists());
    let group = s.iommu_group(14).unwrap();
    assert!(group.members.is_empty());
    assert_eq!(group.other_members, [uuid]);
    assert!(group.is_viable());

    // A parent path that climbs out is a table error.
    let err = FakeKernel::builder()
        .mdev(MdevSpec::on_virtual_parent(uuid, "../x", "mtty-2"))
        .build()
        .unwrap_err();
    assert!(matches!(err, FakeError::Table(_)), "{err}");
}
