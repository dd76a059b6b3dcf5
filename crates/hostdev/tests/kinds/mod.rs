//! Every hostdev kind besides whole PCI functions, on the lab guest's real drivers (see
//! lab/README.md's topology): an NVMe controller (QEMU `nvme`, 1b36:0010) with namespaces
//! 1 and 2, a USB device (QEMU `usb-serial`, 0403:6001, interface on `ftdi_sio`) on a
//! qemu-xhci controller, two virtio-scsi disks (vendor `PLUGBRD`, models `lab-disk-0` and
//! `lab-disk-1`) with their sg nodes, and the kernel's sample mdev parent `mtty`.
//!
//! Prepare and release go through the public CLI (`plugboard hostdev ... --json`, the
//! binary the lab packs), as an operator or a runtime would; the checks read sysfs through
//! plugboard-sysfs, and the mdev is opened through plugboard-vfio. Every test puts back what
//! it changed when it ends, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use plugboard_sysfs::{PciAddress, ScsiDevice, Sysfs};
use plugboard_vfio::{Interface, Mode, Vfio};
use serde_json::Value;

use super::{in_lab_guest, plugboard_bin};

/// `plugboard --state-dir STATE --json ARGS...`.
fn plugboard(state: &Path, args: &[&str]) -> Output {
    let out = Command::new(plugboard_bin())
        .arg("--state-dir")
        .arg(state)
        .arg("--json")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    eprintln!(
        "$ plugboard {} -> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `plugboard`, expects success, returns its JSON answer.
fn ok(state: &Path, args: &[&str]) -> Value {
    let out = plugboard(state, args);
    assert!(
        out.status.success(),
        "plugboard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `plugboard`, expects failure, returns its stderr.
fn refused(state: &Path, args: &[&str]) -> String {
    let out = plugboard(state, args);
    assert!(!out.status.success(), "plugboard {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `result` words of a release answer, in order.
fn results(answer: &Value) -> Vec<String> {
    answer["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect()
}

/// `(device, owner)` pairs.
type Rows = Vec<(String, String)>;

/// `hostdev ls --json`: the PCI rows as `(address, owner)` and the claims as
/// `(kind:key, owner)`, owners as `driver/domain`.
fn books(state: &Path) -> (Rows, Rows) {
    let ls = ok(state, &["hostdev", "ls"]);
    assert!(ls["pending"].as_array().is_none_or(Vec::is_empty), "{ls}");
    let owner = |r: &Value| {
        format!(
            "{}/{}",
            r["owner"]["driver"].as_str().unwrap_or_default(),
            r["owner"]["domain"].as_str().unwrap_or_default()
        )
    };
    let rows = |key: &str| ls[key].as_array().cloned().unwrap_or_default();
    let pci = rows("pci")
        .iter()
        .map(|r| (r["address"].as_str().unwrap().to_owned(), owner(r)))
        .collect();
    let claims = rows("claims")
        .iter()
        .map(|r| {
            (
                format!(
                    "{}:{}",
                    r["kind"].as_str().unwrap(),
                    r["key"].as_str().unwrap()
                ),
                owner(r),
            )
        })
        .collect();
    (pci, claims)
}

/// Polls `check` every 50 ms for up to `secs` seconds.
fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pci_by_id(sysfs: &Sysfs, vendor: u16, device: u16) -> PciAddress {
    let found: Vec<PciAddress> = sysfs
        .pci_devices()
        .unwrap()
        .into_iter()
        .filter(|d| (d.vendor_id().unwrap(), d.device_id().unwrap()) == (vendor, device))
        .map(|d| d.address())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {vendor:04x}:{device:04x} expected: {found:?}"
    );
    found[0]
}

fn driver(sysfs: &Sysfs, a: PciAddress) -> Option<String> {
    sysfs.pci_device(a).unwrap().driver().unwrap()
}

/// Puts a PCI device back on `driver` when dropped.
struct BackOn {
    sysfs: Sysfs,
    address: PciAddress,
    driver: &'static str,
}

impl Drop for BackOn {
    fn drop(&mut self) {
        let dev = self.sysfs.pci_device(self.address).unwrap();
        if dev.driver().unwrap().as_deref() != Some(self.driver)
            && let Err(err) = dev.reattach(Some(self.driver))
        {
            eprintln!(
                "restoring {} to {} failed: {err}",
                self.address, self.driver
            );
        }
    }
}

/// The namespace IDs the `nvme` driver shows under the controller (none while it is on
/// vfio-pci).
fn namespaces(controller: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    for ctrl in std::fs::read_dir(controller.join("nvme"))
        .into_iter()
        .flatten()
    {
        let ctrl = ctrl.unwrap().path();
        for ns in std::fs::read_dir(&ctrl).unwrap() {
            let ns = ns.unwrap().path();
            // The block devices (`nvme0n1`), not the generic char ones (`ng0n1`).
            let block = ns
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("nvme"));
            if !block {
                continue;
            }
            if let Ok(id) = std::fs::read_to_string(ns.join("nsid")) {
                ids.push(id.trim().parse().unwrap());
            }
        }
    }
    ids.sort_unstable();
    ids
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn nvme_namespaces_share_their_controller_which_goes_back_with_the_last() {
    let sysfs = in_lab_guest();
    let ctrl = pci_by_id(&sysfs, 0x1b36, 0x0010);
    let _back = BackOn {
        sysfs: sysfs.clone(),
        address: ctrl,
        driver: "nvme",
    };
    let path = sysfs.pci_device(ctrl).unwrap().path().to_owned();
    assert_eq!(driver(&sysfs, ctrl).as_deref(), Some("nvme"));
    wait_for("namespaces 1 and 2", 20, || namespaces(&path) == [1, 2]);
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let (ns1, ns2) = (format!("nvme:{ctrl}/1"), format!("nvme:{ctrl}/2"));
    let group = sysfs
        .pci_device(ctrl)
        .unwrap()
        .iommu_group()
        .unwrap()
        .unwrap();
    let node = sysfs.vfio_group_node(group);

    // The first namespace takes the controller to vfio-pci; the nvme driver lets go of
    // both namespaces (the kernel removes their block devices).
    let answer = ok(
        s,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/lab1",
            "--managed",
            &ns1,
        ],
    );
    // What it took: the controller (a PCI row) and the namespace (a claim).
    assert_eq!(
        answer["devices"],
        serde_json::json!([ctrl.to_string(), ns1]),
        "{answer}"
    );
    assert_eq!(driver(&sysfs, ctrl).as_deref(), Some("vfio-pci"));
    assert!(node.exists(), "{} appears", node.display());
    assert!(namespaces(&path).is_empty());
    let (pci, claims) = books(s);
    assert_eq!(pci, vec![(ctrl.to_string(), "qemu/lab1".to_owned())]);
    assert_eq!(claims, vec![(ns1.clone(), "qemu/lab1".to_owned())]);

    // The second namespace of the same owner: the controller is already there.
    ok(
        s,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/lab1",
            "--managed",
            &ns2,
        ],
    );
    assert_eq!(driver(&sysfs, ctrl).as_deref(), Some("vfio-pci"));
    // A namespace in use, and another owner on this controller, are refused.
    let err = refused(
        s,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/lab2",
            "--managed",
            &ns2,
        ],
    );
    assert!(err.contains("in use by qemu/lab1"), "{err}");

    // Releasing one namespace keeps the controller for the other.
    let answer = ok(s, &["hostdev", "release", "--owner", "qemu/lab1", &ns1]);
    assert_eq!(results(&answer), ["released"], "{answer}");
    assert_eq!(driver(&sysfs, ctrl).as_deref(), Some("vfio-pci"));
    let (pci, claims) = books(s);
    assert_eq!(pci.len(), 1, "{pci:?}");
    assert_eq!(claims, vec![(ns2.clone(), "qemu/lab1".to_owned())]);

    // The last one gives the controller back to nvme, which finds both namespaces again.
    let answer = ok(s, &["hostdev", "release", "--owner", "qemu/lab1", &ns2]);
    assert_eq!(results(&answer), ["reattached"], "{answer}");
    assert_eq!(
        answer["released"][0]["detail"],
        format!("controller {ctrl}: nvme"),
        "{answer}"
    );
    assert_eq!(driver(&sysfs, ctrl).as_deref(), Some("nvme"));
    assert_eq!(
        sysfs.pci_device(ctrl).unwrap().driver_override().unwrap(),
        None
    );
    assert!(!node.exists(), "{} is gone", node.display());
    wait_for("namespaces 1 and 2 back", 20, || {
        namespaces(&path) == [1, 2]
    });
    assert_eq!(books(s), (vec![], vec![]));
}

/// The USB device the lab plugs in (QEMU's usb-serial): its sysfs name, bus and number.
fn usb_serial(sysfs: &Sysfs) -> Option<plugboard_sysfs::UsbDevice> {
    sysfs
        .usb_devices()
        .unwrap()
        .into_iter()
        .find(|d| (d.vendor_id, d.product_id) == (0x0403, 0x6001))
}

/// The driver of the device's first interface (`NAME:1.0`).
fn interface_driver(sysfs: &Sysfs, name: &str) -> Option<String> {
    let link = sysfs
        .path("bus/usb/devices")
        .join(format!("{name}:1.0"))
        .join("driver");
    std::fs::read_link(link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// What QEMU's usb-host does through libusb: `USBDEVFS_IOCTL` with `USBDEVFS_DISCONNECT`
/// (detach the kernel driver of interface 0) or `USBDEVFS_CONNECT` (give it back).
fn usbfs_driver(node: &Path, connect: bool) {
    #[repr(C)]
    struct UsbdevfsIoctl {
        ifno: libc::c_int,
        ioctl_code: libc::c_int,
        data: *mut libc::c_void,
    }
    const USBDEVFS_IOCTL: libc::c_ulong = 0xc010_5512; // _IOWR('U', 18, 16 bytes)
    const USBDEVFS_DISCONNECT: libc::c_int = 0x5516; // _IO('U', 22)
    const USBDEVFS_CONNECT: libc::c_int = 0x5517; // _IO('U', 23)
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .unwrap();
    let mut req = UsbdevfsIoctl {
        ifno: 0,
        ioctl_code: if connect {
            USBDEVFS_CONNECT
        } else {
            USBDEVFS_DISCONNECT
        },
        data: std::ptr::null_mut(),
    };
    // SAFETY: the fd is open for the ioctl's duration and `req` is the kernel's
    // `struct usbdevfs_ioctl`, valid and writable for the call; DISCONNECT and CONNECT
    // take no data.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            USBDEVFS_IOCTL,
            &raw mut req,
        )
    };
    assert!(
        rc >= 0,
        "USBDEVFS_IOCTL on {}: {}",
        node.display(),
        std::io::Error::last_os_error()
    );
}

/// Unplugs and replugs every device of the xHCI controller (its driver lets go of it and
/// takes it again), then waits for the usb-serial and its ftdi_sio to be back.
fn replug(sysfs: &Sysfs, xhci: PciAddress) -> plugboard_sysfs::UsbDevice {
    let dev = sysfs.pci_device(xhci).unwrap();
    dev.unbind().unwrap();
    wait_for("the USB device to go", 10, || usb_serial(sysfs).is_none());
    dev.probe().unwrap();
    assert_eq!(dev.driver().unwrap().as_deref(), Some("xhci_hcd"));
    let mut found = None;
    wait_for("the USB device to come back on ftdi_sio", 30, || {
        found = usb_serial(sysfs)
            .filter(|d| interface_driver(sysfs, &d.name).as_deref() == Some("ftdi_sio"));
        found.is_some()
    });
    found.unwrap()
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn usb_is_claimed_keeps_its_driver_and_is_found_again_by_ids_after_a_replug() {
    let sysfs = in_lab_guest();
    let xhci = pci_by_id(&sysfs, 0x1b36, 0x000d);
    let _back = BackOn {
        sysfs: sysfs.clone(),
        address: xhci,
        driver: "xhci_hcd",
    };
    // The hub driver enumerates it a few seconds after boot under TCG.
    let mut found = None;
    wait_for("the lab's usb-serial (0403:6001) on ftdi_sio", 60, || {
        found = usb_serial(&sysfs)
            .filter(|d| interface_driver(&sysfs, &d.name).as_deref() == Some("ftdi_sio"));
        found.is_some()
    });
    let usb = found.unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let by_ids = "usb:0403:6001";
    let by_number = format!("usb:{}/{}", usb.busnum, usb.devnum);
    let node = sysfs.dev_root().join(usb.devname());
    assert!(
        node.exists(),
        "{} (what QEMU's usb-host opens)",
        node.display()
    );

    // Claimed by IDs; the host driver stays (hostdev has nothing to detach for USB).
    ok(s, &["hostdev", "prepare", "--owner", "qemu/lab1", by_ids]);
    let (_, claims) = books(s);
    assert_eq!(
        claims,
        vec![(
            format!("usb:{:03}/{:03}", usb.busnum, usb.devnum),
            "qemu/lab1".to_owned()
        )]
    );
    assert_eq!(
        interface_driver(&sysfs, &usb.name).as_deref(),
        Some("ftdi_sio")
    );
    // By number, by another owner: refused.
    let err = refused(
        s,
        &["hostdev", "prepare", "--owner", "qemu/lab2", &by_number],
    );
    assert!(err.contains("in use by qemu/lab1"), "{err}");

    // The VMM's part, as QEMU's usb-host does it through usbfs: the kernel driver lets go
    // of the interface, and closing the node does NOT give it back; CONNECT does.
    usbfs_driver(&node, false);
    assert_eq!(interface_driver(&sysfs, &usb.name), None);
    usbfs_driver(&node, true);
    assert_eq!(
        interface_driver(&sysfs, &usb.name).as_deref(),
        Some("ftdi_sio")
    );

    let answer = ok(s, &["hostdev", "release", "--owner", "qemu/lab1", by_ids]);
    assert_eq!(results(&answer), ["released"], "{answer}");
    assert_eq!(
        interface_driver(&sysfs, &usb.name).as_deref(),
        Some("ftdi_sio")
    );
    assert_eq!(books(s), (vec![], vec![]));

    // Unplugged and plugged again: found again by its IDs, whatever its new number.
    let again = replug(&sysfs, xhci);
    eprintln!(
        "usb-serial was {}/{} ({}), is {}/{} ({}) after the replug",
        usb.busnum, usb.devnum, usb.name, again.busnum, again.devnum, again.name
    );
    let answer = ok(s, &["hostdev", "prepare", "--owner", "qemu/lab2", by_ids]);
    assert_eq!(answer["owner"], "qemu/lab2", "{answer}");
    let (_, claims) = books(s);
    assert_eq!(
        claims,
        vec![(
            format!("usb:{:03}/{:03}", again.busnum, again.devnum),
            "qemu/lab2".to_owned()
        )]
    );
    let answer = ok(s, &["hostdev", "release", "--owner", "qemu/lab2", by_ids]);
    assert_eq!(results(&answer), ["released"], "{answer}");
    assert_eq!(books(s), (vec![], vec![]));
}

/// The lab's two virtio-scsi disks (vendor `PLUGBRD`), `lab-disk-0` first.
fn lab_disks(sysfs: &Sysfs) -> Vec<ScsiDevice> {
    let mut disks: Vec<ScsiDevice> = sysfs
        .scsi_devices()
        .unwrap()
        .into_iter()
        .filter(|d| d.vendor == "PLUGBRD")
        .collect();
    disks.sort_by(|a, b| a.model.cmp(&b.model));
    assert_eq!(
        disks.iter().map(|d| d.model.as_str()).collect::<Vec<_>>(),
        ["lab-disk-0", "lab-disk-1"]
    );
    disks
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn scsi_shareable_disk_serves_two_owners_and_an_unshared_one_only_one() {
    let sysfs = in_lab_guest();
    let disks = lab_disks(&sysfs);
    for d in &disks {
        // What QEMU's scsi-generic opens: the sg node, next to the host's own sd.
        let sg = d.sg.as_deref().expect("an sg node (CONFIG_CHR_DEV_SG)");
        assert!(
            d.block.as_deref().is_some_and(|b| b.starts_with("sd")),
            "{d:?}"
        );
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(sysfs.dev_root().join(sg))
            .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let shared = format!("scsi:{}", disks[0].address);
    let single = format!("scsi:{}", disks[1].address);

    // Shareable: two VMs that both agree.
    for owner in ["qemu/lab1", "qemu/lab2"] {
        ok(
            s,
            &[
                "hostdev",
                "prepare",
                "--owner",
                owner,
                "--shareable",
                &shared,
            ],
        );
    }
    // A third that will not share is refused, naming the users.
    let err = refused(s, &["hostdev", "prepare", "--owner", "qemu/lab3", &shared]);
    assert!(
        err.contains("qemu/lab1") && err.contains("qemu/lab2"),
        "{err}"
    );
    // Not shareable: the first takes it, the second is refused even if it would share.
    ok(s, &["hostdev", "prepare", "--owner", "qemu/lab1", &single]);
    let err = refused(
        s,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/lab2",
            "--shareable",
            &single,
        ],
    );
    assert!(err.contains(&disks[1].address.to_string()), "{err}");
    // No managed mode for SCSI.
    let err = refused(
        s,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/lab3",
            "--managed",
            &single,
        ],
    );
    assert!(err.contains("managed"), "{err}");
    let (_, mut claims) = books(s);
    claims.sort();
    assert_eq!(
        claims,
        vec![
            (shared.clone(), "qemu/lab1".to_owned()),
            (shared.clone(), "qemu/lab2".to_owned()),
            (single.clone(), "qemu/lab1".to_owned()),
        ]
    );
    // The host kept its driver: the disks are still block devices.
    for d in lab_disks(&sysfs) {
        assert!(d.block.is_some(), "{d:?}");
    }

    // Release: each user leaves on its own; the other keeps the shared disk.
    let answer = ok(
        s,
        &[
            "hostdev",
            "release",
            "--owner",
            "qemu/lab1",
            &shared,
            &single,
        ],
    );
    assert_eq!(results(&answer), ["released", "released"], "{answer}");
    assert_eq!(books(s).1, vec![(shared.clone(), "qemu/lab2".to_owned())]);
    // Now lab2 may take the unshared one.
    ok(s, &["hostdev", "prepare", "--owner", "qemu/lab2", &single]);
    let answer = ok(
        s,
        &[
            "hostdev",
            "release",
            "--owner",
            "qemu/lab2",
            &shared,
            &single,
        ],
    );
    assert_eq!(results(&answer), ["released", "released"], "{answer}");
    assert_eq!(books(s), (vec![], vec![]));
}

const MDEV_UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

/// Removes the mdev when dropped (if it is still there).
struct RemoveMdev(PathBuf);

impl Drop for RemoveMdev {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(err) = std::fs::write(self.0.join("remove"), "1")
        {
            eprintln!("removing {} failed: {err}", self.0.display());
        }
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn mdev_is_created_prepared_opened_in_legacy_mode_released_and_removed() {
    let sysfs = in_lab_guest();
    let parent = Path::new("/sys/devices/virtual/mtty/mtty");
    let mdev_dir = sysfs.path("bus/mdev/devices").join(MDEV_UUID);
    assert!(
        !mdev_dir.exists(),
        "{} is left from before",
        mdev_dir.display()
    );
    let _remove = RemoveMdev(mdev_dir.clone());

    // Create, as mdevctl does: the UUID into the type's `create`.
    let mtype = parent.join("mdev_supported_types/mtty-2");
    let before: u32 = std::fs::read_to_string(mtype.join("available_instances"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::write(mtype.join("create"), MDEV_UUID).unwrap();
    let mdev = sysfs.mdev(MDEV_UUID).unwrap();
    eprintln!("{mdev:?}");
    assert_eq!(mdev.type_id, "mtty-2");
    assert_eq!(mdev.type_name.as_deref(), Some("Dual port serial"));
    assert_eq!(mdev.device_api, "vfio-pci");
    assert_eq!(
        mdev.parent, None,
        "mtty's parent is a virtual device, not PCI"
    );
    let group = mdev.iommu_group.expect("an emulated IOMMU group");
    assert!(sysfs.vfio_group_node(group).exists());
    assert_eq!(sysfs.mdev_uuids().unwrap(), [MDEV_UUID]);
    let after: u32 = std::fs::read_to_string(mtype.join("available_instances"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(after < before, "{before} -> {after}");

    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let name = format!("mdev:{MDEV_UUID}");
    ok(s, &["hostdev", "prepare", "--owner", "qemu/lab1", &name]);
    let err = refused(s, &["hostdev", "prepare", "--owner", "qemu/lab2", &name]);
    assert!(err.contains("in use by qemu/lab1"), "{err}");
    assert_eq!(books(s).1, vec![(name.clone(), "qemu/lab1".to_owned())]);

    // Open it as the VMM would, through its group in a legacy container.
    let mut vfio = Vfio::new(sysfs.clone());
    let device = vfio.open_mdev(MDEV_UUID, Mode::Legacy).unwrap();
    assert_eq!(device.interface(), Interface::Legacy);
    assert_eq!(device.group_id(), Some(group));
    let mut id = [0u8; 4];
    device.read_config(0, &mut id).unwrap();
    assert_eq!(
        (
            u16::from_le_bytes([id[0], id[1]]),
            u16::from_le_bytes([id[2], id[3]])
        ),
        (0x4348, 0x3253),
        "mtty's emulated PCI IDs"
    );
    assert!(!device.regions().is_empty());
    device.close().unwrap();
    drop(vfio);

    let answer = ok(s, &["hostdev", "release", "--owner", "qemu/lab1", &name]);
    assert_eq!(results(&answer), ["released"], "{answer}");
    assert_eq!(books(s), (vec![], vec![]));

    // Remove: the mdev, its group and its node go.
    std::fs::write(mdev_dir.join("remove"), "1").unwrap();
    assert!(!mdev_dir.exists());
    assert!(sysfs.mdev(MDEV_UUID).unwrap_err().is_not_found());
    assert!(!sysfs.vfio_group_node(group).exists());
    assert!(sysfs.mdev_uuids().unwrap().is_empty());
}
