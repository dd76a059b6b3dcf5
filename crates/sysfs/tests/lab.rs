//! In-guest smoke tests on a real 6.12 kernel with an IOMMU (the lab, `lab/README.md`).
//!
//! Every test is ignored on the host and run inside the lab guest by `lab/run-tests.sh`
//! (as root, `--ignored --test-threads=1`). They find their guinea pigs by reading sysfs
//! (e1000e is 8086:10d3), never by fixed addresses, and every test puts back what it
//! changed, even when it fails (the `Restore` guard), because other crates' lab tests run in
//! the same guest afterwards. Outside the guest they refuse to run at all.

#![expect(clippy::unwrap_used, reason = "tests: a failure is a test failure")]
#![expect(clippy::expect_used, reason = "tests: a failure is a test failure")]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use plugboard_sysfs::{
    BindError, DevKind, DevNodeError, DevNumber, DriverKind, IommuGroup, PciAddress, PciDevice,
    Sysfs, SysfsError,
};

const E1000E: (u16, u16) = (0x8086, 0x10d3);

/// Panics unless this is the lab guest: these tests bind real devices.
fn guest() -> Sysfs {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|w| w == "plugboard.lab=1")
            && std::env::var("PLUGBOARD_LAB_GUEST").as_deref() == Ok("1"),
        "refusing to run: this is not the lab guest (no plugboard.lab=1 on /proc/cmdline)"
    );
    Sysfs::new("/sys")
}

fn e1000e_devices(sysfs: &Sysfs) -> Vec<PciDevice> {
    sysfs
        .pci_devices()
        .unwrap()
        .into_iter()
        .filter(|d| (d.vendor_id().unwrap(), d.device_id().unwrap()) == E1000E)
        .collect()
}

/// An e1000e alone in its IOMMU group (bridges aside).
fn single_device_nic(sysfs: &Sysfs) -> (PciDevice, u32) {
    for nic in e1000e_devices(sysfs) {
        let group = nic.iommu_group().unwrap().expect("the lab has an IOMMU");
        let g = sysfs.iommu_group(group).unwrap();
        if g.members.iter().filter(|m| !m.bridge).count() == 1 {
            return (nic, group);
        }
    }
    panic!("no e1000e in a single-device IOMMU group; see lab/README.md");
}

/// The group holding two or more e1000e (behind the PCIe-to-PCI bridge).
fn multi_device_group(sysfs: &Sysfs) -> IommuGroup {
    sysfs
        .iommu_groups()
        .unwrap()
        .into_iter()
        .find(|g| {
            g.members
                .iter()
                .filter(|m| {
                    let d = sysfs.pci_device(m.address).unwrap();
                    (d.vendor_id().unwrap(), d.device_id().unwrap()) == E1000E
                })
                .count()
                >= 2
        })
        .expect("no IOMMU group with two e1000e; see lab/README.md")
}

/// Puts a device back on its original driver with no override when dropped.
struct Restore {
    device: PciDevice,
    driver: Option<String>,
}

impl Restore {
    fn new(device: &PciDevice) -> Self {
        Self {
            device: device.clone(),
            driver: device.driver().unwrap(),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let clean = self.device.driver().ok() == Some(self.driver.clone())
            && self.device.driver_override().ok() == Some(None);
        if !clean && let Err(err) = self.device.reattach(self.driver.as_deref()) {
            eprintln!("could not restore {}: {err}", self.device.address());
        }
    }
}

/// The `plugboard` binary packed into the guest.
fn plugboard_bin() -> String {
    std::env::var("PLUGBOARD_BIN").unwrap_or_else(|_| "/usr/bin/plugboard".to_owned())
}

fn plugboard_text(args: &[&str]) -> String {
    let out = std::process::Command::new(plugboard_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plugboard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn plugboard(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&plugboard_text(args)).unwrap()
}

fn char_number(path: &Path) -> DevNumber {
    let meta = std::fs::metadata(path).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} is not a char device",
        path.display()
    );
    let rdev = meta.rdev();
    DevNumber {
        major: u32::try_from(((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)).unwrap(),
        minor: u32::try_from(((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)).unwrap(),
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn lists_iommu_groups() {
    let sysfs = guest();
    let groups = sysfs.iommu_groups().unwrap();
    assert!(groups.len() >= 5, "{groups:#?}");
    for g in &groups {
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| {
                format!(
                    "{} {} {}",
                    m.address,
                    m.class,
                    m.driver.as_deref().unwrap_or("-")
                )
            })
            .collect();
        eprintln!(
            "group {} viable={}: {}",
            g.number,
            g.is_viable(),
            members.join(", ")
        );
    }
    // Every PCI device is in exactly one group, and the groups agree with the links.
    let devices = sysfs.pci_devices().unwrap();
    let listed: usize = groups.iter().map(|g| g.members.len()).sum();
    assert_eq!(listed, devices.len());
    for d in &devices {
        let n = d.iommu_group().unwrap().unwrap();
        assert!(
            groups
                .iter()
                .any(|g| g.number == n && g.addresses().any(|a| a == d.address()))
        );
    }
    // The inventory reads every device of a real kernel without a problem.
    let inventory = sysfs.pci_inventory().unwrap();
    assert!(inventory.problems.is_empty(), "{:?}", inventory.problems);
    // Its drivers come from `uevent` (`DRIVER=`): the same as the `driver` links.
    for d in &inventory.devices {
        let link = sysfs.pci_device(d.address).unwrap().driver().unwrap();
        assert_eq!(d.driver, link, "{}", d.address);
    }
    assert!(
        inventory
            .devices
            .iter()
            .filter(|d| d.driver.as_deref() == Some("e1000e"))
            .count()
            >= 4
    );
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn binds_an_e1000e_to_vfio_pci_and_back() {
    let sysfs = guest();
    let (nic, group) = single_device_nic(&sysfs);
    let _restore = Restore::new(&nic);
    assert_eq!(nic.driver().unwrap().as_deref(), Some("e1000e"));
    assert!(!sysfs.iommu_group(group).unwrap().is_viable());
    let group_node = sysfs.vfio_group_node(group);
    assert!(
        !group_node.exists(),
        "{} exists before the bind",
        group_node.display()
    );

    let outcome = nic.bind("vfio-pci").unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.previous_driver.as_deref(), Some("e1000e"));
    assert_eq!(nic.driver().unwrap().as_deref(), Some("vfio-pci"));
    assert_eq!(nic.driver_kind().unwrap(), DriverKind::VfioPci);
    let info = sysfs.pci_device_info(nic.address()).unwrap();
    assert_eq!(info.driver.as_deref(), Some("vfio-pci"), "uevent's DRIVER=");
    assert!(sysfs.iommu_group(group).unwrap().is_viable());

    // Legacy: the group node. cdev: vfio-dev/vfioN, its node, and /dev/iommu.
    assert!(
        group_node.exists(),
        "{} missing after the bind",
        group_node.display()
    );
    let cdev = nic
        .vfio_cdev_path()
        .unwrap()
        .expect("vfio-dev/vfioN after binding vfio-pci");
    assert!(cdev.exists(), "{} missing", cdev.display());
    assert!(Path::new("/dev/iommu").exists());
    assert!(Path::new("/dev/vfio/vfio").exists());
    // Both nodes resolve back from their device numbers through /sys/dev/char.
    for node in [&group_node, &cdev] {
        let number = char_number(node);
        assert_eq!(&sysfs.resolve_devnode(DevKind::Char, number).unwrap(), node);
        let shown = plugboard_text(&["host", "resolve", "c", &number.to_string()]);
        assert_eq!(shown.trim(), node.display().to_string());
    }
    let shown = plugboard(&["--json", "host", "show", &nic.address().to_string()]);
    assert_eq!(shown["device"]["driver"], "vfio-pci");
    assert_eq!(shown["device"]["driver_kind"], "vfio_pci");
    assert_eq!(shown["iommu_group"]["viable"], true);
    // Reset works while vfio-pci holds the device (when the kernel offers one).
    if nic.reset_methods().unwrap().can_reset {
        nic.reset().unwrap();
    }

    let back = nic.reattach(Some("e1000e")).unwrap();
    assert_eq!(back.as_deref(), Some("e1000e"));
    let info = sysfs.pci_device_info(nic.address()).unwrap();
    assert_eq!(info.driver.as_deref(), Some("e1000e"), "uevent's DRIVER=");
    assert_eq!(nic.driver_override().unwrap(), None);
    assert!(
        !group_node.exists(),
        "{} left after the last member left vfio-pci",
        group_node.display()
    );
    assert!(!cdev.exists(), "{} left after unbinding", cdev.display());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn multi_device_group_is_not_viable_until_every_member_is_on_vfio() {
    let sysfs = guest();
    let group = multi_device_group(&sysfs);
    eprintln!(
        "multi-device group {}: {:?}",
        group.number,
        group.addresses().collect::<Vec<_>>()
    );
    assert!(
        group.members.iter().any(|m| m.bridge),
        "the bridge is in the group"
    );
    let nics: Vec<PciDevice> = group
        .members
        .iter()
        .filter(|m| !m.bridge)
        .map(|m| sysfs.pci_device(m.address).unwrap())
        .collect();
    let _restore: Vec<Restore> = nics.iter().map(Restore::new).collect();
    let (first, rest) = nics.split_first().unwrap();

    first.bind("vfio-pci").unwrap();
    let now = sysfs.iommu_group(group.number).unwrap();
    assert!(!now.is_viable(), "one member is still on e1000e");
    let blockers: Vec<PciAddress> = now.blockers().map(|m| m.address).collect();
    let expected: Vec<PciAddress> = rest.iter().map(PciDevice::address).collect();
    assert_eq!(blockers, expected);
    assert!(sysfs.vfio_group_node(group.number).exists());

    // What the operator sees: `plugboard host groups` says the same.
    let groups = plugboard(&["--json", "host", "groups"]);
    let shown = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["number"] == group.number)
        .unwrap();
    assert_eq!(shown["viable"], false);
    let shown_blockers: Vec<String> = shown["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    let expected_text: Vec<String> = expected.iter().map(ToString::to_string).collect();
    assert_eq!(shown_blockers, expected_text);
    let table = plugboard_text(&["host", "groups"]);
    eprintln!("{table}");
    assert!(table.contains(&format!(
        "IOMMU group {}: not viable: blocked by",
        group.number
    )));

    for nic in rest {
        nic.bind("vfio-pci").unwrap();
    }
    assert!(sysfs.iommu_group(group.number).unwrap().is_viable());

    // Give them back one by one: the group node stays until the last one leaves.
    for (i, nic) in nics.iter().enumerate() {
        nic.reattach(Some("e1000e")).unwrap();
        assert_eq!(
            sysfs.vfio_group_node(group.number).exists(),
            i + 1 < nics.len()
        );
    }
    assert!(!sysfs.iommu_group(group.number).unwrap().is_viable());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn refusals_on_a_real_kernel() {
    let sysfs = guest();
    let (nic, _) = single_device_nic(&sysfs);
    let _restore = Restore::new(&nic);
    // A driver that is not registered: refused before anything is written.
    assert!(matches!(
        nic.bind("no_such_driver"),
        Err(BindError::NoSuchDriver { .. })
    ));
    assert_eq!(nic.driver().unwrap().as_deref(), Some("e1000e"));
    // A bind to the wrong driver: the kernel leaves it unbound, the check says so, and the
    // rollback gives it back to e1000e.
    let err = nic.bind("pcieport").unwrap_err();
    assert!(matches!(err, BindError::NotBound { .. }), "{err}");
    assert_eq!(nic.driver().unwrap().as_deref(), Some("e1000e"));
    assert_eq!(nic.driver_override().unwrap(), None);
    // The kernel's own refusals: bind on a bound device, unbind from the wrong driver.
    let bind = sysfs.pci_drivers_dir().join("e1000e/bind");
    let err = sysfs
        .write_attribute(&bind, &nic.address().to_string())
        .unwrap_err();
    // 6.12 says EBUSY when the driver matches (the fake says ENODEV, like libvirt's mock;
    // see the fake module's documentation). Either way the device stays where it was.
    eprintln!("bind on a bound device: {err} ({:?})", err.raw_os_error());
    assert!(
        matches!(err.raw_os_error(), Some(libc::EBUSY | libc::ENODEV)),
        "{err}"
    );
    assert_eq!(nic.driver().unwrap().as_deref(), Some("e1000e"));
    let unbind = sysfs.pci_drivers_dir().join("vfio-pci/unbind");
    let err = sysfs
        .write_attribute(&unbind, &nic.address().to_string())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    // Unknown devices.
    let missing = sysfs
        .pci_device("0000:7f:1f.7".parse().unwrap())
        .unwrap_err();
    assert!(matches!(missing, SysfsError::NotFound { .. }));
    let nothing = sysfs.resolve_devnode(
        DevKind::Block,
        DevNumber {
            major: 4095,
            minor: 1,
        },
    );
    assert!(matches!(nothing, Err(DevNodeError::NoDevice { .. })));
}
