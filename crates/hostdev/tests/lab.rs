//! The round trips of plugboard-hostdev on a real kernel: the lab guest (`lab/README.md`),
//! a q35 machine with an emulated IOMMU, e1000e NICs (8086:10d3) alone in their IOMMU
//! groups and two behind a PCIe-to-PCI bridge sharing one group.
//!
//! Every test is ignored on the host (`cargo test` never binds anything here) and refuses
//! to run outside the guest. Devices are found by reading sysfs, never by fixed address,
//! and every test gives each device it touched back to e1000e when it ends, pass or fail.
//!
//! Run: `lab/run-tests.sh` (all crates), or this binary alone in the guest with
//! `lab/run.sh --file <test binary> -- <test binary> --ignored --test-threads=1`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

use std::collections::BTreeMap;

use plugboard_hostdev::registry::List;
use plugboard_hostdev::{
    DetachOutcome, HostdevManager, NodeDeviceError, Owner, PciReleased, PrepareError,
    PrepareOptions,
};
use plugboard_sysfs::{PciAddress, Sysfs};

const E1000E: (u16, u16) = (0x8086, 0x10d3);
const MANAGED: PrepareOptions = PrepareOptions {
    managed: true,
    whole_group: false,
};
const UNMANAGED: PrepareOptions = PrepareOptions {
    managed: false,
    whole_group: false,
};

/// The guinea pigs, read from sysfs.
struct Nics {
    /// e1000e NICs alone in their IOMMU group.
    single: Vec<PciAddress>,
    /// e1000e NICs sharing one group (behind the PCIe-to-PCI bridge), and that group.
    shared: Vec<PciAddress>,
    shared_group: u32,
}

fn in_lab_guest() -> Sysfs {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|a| a == "plugboard.lab=1"),
        "not in the lab guest: refusing to bind anything (run lab/run-tests.sh)"
    );
    Sysfs::default()
}

fn nics(sysfs: &Sysfs) -> Nics {
    let mut by_group: BTreeMap<u32, Vec<PciAddress>> = BTreeMap::new();
    for dev in sysfs.pci_devices().unwrap() {
        if (dev.vendor_id().unwrap(), dev.device_id().unwrap()) == E1000E {
            let g = dev.iommu_group().unwrap().expect("the lab has an IOMMU");
            by_group.entry(g).or_default().push(dev.address());
        }
    }
    let mut single = Vec::new();
    let mut shared = Vec::new();
    let mut shared_group = 0;
    for (g, members) in by_group {
        let group = sysfs.iommu_group(g).unwrap();
        let endpoints = group.members.iter().filter(|m| !m.bridge).count();
        if endpoints == 1 {
            single.extend(members);
        } else {
            shared = members;
            shared_group = g;
        }
    }
    assert!(
        single.len() >= 2,
        "two single-device e1000e groups expected: {single:?}"
    );
    assert_eq!(shared.len(), 2, "two e1000e sharing a group expected");
    Nics {
        single,
        shared,
        shared_group,
    }
}

/// Gives every device back to e1000e when dropped (the state directory goes with it).
struct Restore {
    sysfs: Sysfs,
    devices: Vec<PciAddress>,
    _state: tempfile::TempDir,
}

impl Drop for Restore {
    fn drop(&mut self) {
        for &a in &self.devices {
            let dev = self.sysfs.pci_device(a).unwrap();
            if dev.driver().unwrap().as_deref() != Some("e1000e")
                && let Err(err) = dev.reattach(Some("e1000e"))
            {
                eprintln!("restoring {a} to e1000e failed: {err}");
            }
        }
    }
}

fn setup(devices: &[PciAddress]) -> (HostdevManager, Restore) {
    let sysfs = in_lab_guest();
    let state = tempfile::tempdir().unwrap();
    let m = HostdevManager::open(sysfs.clone(), state.path()).unwrap();
    for &a in devices {
        let driver = sysfs.pci_device(a).unwrap().driver().unwrap();
        assert_eq!(
            driver.as_deref(),
            Some("e1000e"),
            "{a} must start on e1000e"
        );
    }
    (
        m,
        Restore {
            sysfs,
            devices: devices.to_vec(),
            _state: state,
        },
    )
}

fn driver(sysfs: &Sysfs, a: PciAddress) -> Option<String> {
    sysfs.pci_device(a).unwrap().driver().unwrap()
}

fn group_node(sysfs: &Sysfs, a: PciAddress) -> std::path::PathBuf {
    let g = sysfs.pci_device(a).unwrap().iommu_group().unwrap().unwrap();
    sysfs.vfio_group_node(g)
}

fn books(m: &mut HostdevManager) -> Vec<(String, List, Option<String>)> {
    let l = m.list().unwrap();
    assert!(l.pending.is_empty(), "{:?}", l.pending);
    l.pci
        .into_iter()
        .map(|r| (r.address, r.list, r.owner.map(|o| o.to_string())))
        .collect()
}

fn owner(s: &str) -> Owner {
    s.parse().unwrap()
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn detach_and_reattach_with_no_guest() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    assert_eq!(
        m.detach(nic).unwrap(),
        DetachOutcome::Bound {
            from: Some("e1000e".into())
        }
    );
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    assert!(
        group_node(&sysfs, nic).exists(),
        "/dev/vfio/<group> appears"
    );
    assert_eq!(
        m.detach(nic).unwrap(),
        DetachOutcome::AlreadyDetached,
        "idempotent"
    );
    assert_eq!(books(&mut m), vec![(nic.to_string(), List::Inactive, None)]);
    assert_eq!(m.reattach(nic).unwrap().driver(), Some("e1000e"));
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    assert_eq!(
        sysfs.pci_device(nic).unwrap().driver_override().unwrap(),
        None
    );
    assert!(!group_node(&sysfs, nic).exists());
    assert!(books(&mut m).is_empty());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn managed_round_trip() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    let a = owner("qemu/lab1");
    let done = m.prepare_pci(&a, &[nic], MANAGED).unwrap();
    assert!(done[0].managed && done[0].bound);
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    assert!(
        sysfs
            .iommu_group(
                sysfs
                    .pci_device(nic)
                    .unwrap()
                    .iommu_group()
                    .unwrap()
                    .unwrap()
            )
            .unwrap()
            .is_viable()
    );
    assert_eq!(
        books(&mut m),
        vec![(nic.to_string(), List::Active, Some("qemu/lab1".into()))]
    );
    let out = m.release_pci(&a, &[nic]).unwrap();
    assert_eq!(
        out[0].result.as_ref().unwrap(),
        &PciReleased::Reattached {
            driver: Some("e1000e".into())
        }
    );
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    assert!(books(&mut m).is_empty());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn unmanaged_round_trip() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[1];
    let (mut m, _restore) = setup(&[nic]);
    let a = owner("qemu/lab1");
    let err = m.prepare_pci(&a, &[nic], UNMANAGED).unwrap_err();
    assert!(matches!(err, PrepareError::NotDetached { .. }), "{err:?}");
    m.detach(nic).unwrap();
    m.prepare_pci(&a, &[nic], UNMANAGED).unwrap();
    let out = m.release_pci(&a, &[nic]).unwrap();
    assert_eq!(out[0].result.as_ref().unwrap(), &PciReleased::Inactive);
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    assert_eq!(books(&mut m), vec![(nic.to_string(), List::Inactive, None)]);
    m.reattach(nic).unwrap();
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn detached_by_hand_then_prepared_managed_stays_inactive() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    let a = owner("qemu/lab1");
    m.detach(nic).unwrap();
    let done = m.prepare_pci(&a, &[nic], MANAGED).unwrap();
    assert!(!done[0].managed);
    let out = m.release_pci(&a, &[nic]).unwrap();
    assert_eq!(out[0].result.as_ref().unwrap(), &PciReleased::Inactive);
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    m.reattach(nic).unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_three_conflicts_fail_with_the_lists_unchanged() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    m.prepare_pci(&owner("qemu/lab1"), &[nic], MANAGED).unwrap();
    let before = books(&mut m);
    for who in ["qemu/lab1", "qemu/lab2", "kata/lab1"] {
        let err = m.prepare_pci(&owner(who), &[nic], MANAGED).unwrap_err();
        assert!(matches!(err, PrepareError::InUse { .. }), "{who}: {err:?}");
        assert_eq!(books(&mut m), before, "{who}");
    }
    let err = m.reattach(nic).unwrap_err();
    assert!(matches!(err, NodeDeviceError::Active { .. }), "{err:?}");
    let err = m.reset(nic).unwrap_err();
    assert!(matches!(err, NodeDeviceError::Active { .. }), "{err:?}");
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    m.release_pci(&owner("qemu/lab1"), &[nic]).unwrap();
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn the_shared_group_is_taken_whole_and_never_split() {
    let sysfs = in_lab_guest();
    let n = nics(&sysfs);
    let (x, y) = (n.shared[0], n.shared[1]);
    let (mut m, _restore) = setup(&[x, y]);
    let a = owner("qemu/lab1");
    // One NIC alone would leave the group not viable: refused, nothing written.
    let err = m.prepare_pci(&a, &[x], MANAGED).unwrap_err();
    assert!(
        matches!(err, PrepareError::NotViable { group, .. } if group == n.shared_group),
        "{err:?}"
    );
    assert_eq!(driver(&sysfs, x).as_deref(), Some("e1000e"));
    // The whole group: both NICs, not the bridge.
    let whole = PrepareOptions {
        managed: true,
        whole_group: true,
    };
    let done = m.prepare_pci(&a, &[x], whole).unwrap();
    assert_eq!(done.len(), 2);
    assert!(sysfs.iommu_group(n.shared_group).unwrap().is_viable());
    let err = m
        .prepare_pci(&owner("qemu/lab2"), &[y], MANAGED)
        .unwrap_err();
    assert!(matches!(err, PrepareError::InUse { .. }), "{err:?}");
    // Releasing one keeps it on vfio-pci while the other is in use; the last frees both.
    let out = m.release_pci(&a, &[x]).unwrap();
    assert_eq!(
        out[0].result.as_ref().unwrap(),
        &PciReleased::KeptForGroup {
            group: n.shared_group
        }
    );
    let err = m
        .prepare_pci(&owner("qemu/lab2"), &[x], UNMANAGED)
        .unwrap_err();
    assert!(matches!(err, PrepareError::GroupInUse { .. }), "{err:?}");
    let out = m.release_pci(&a, &[y]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(driver(&sysfs, x).as_deref(), Some("e1000e"));
    assert_eq!(driver(&sysfs, y).as_deref(), Some("e1000e"));
    assert!(books(&mut m).is_empty());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn reset_an_unused_device_and_leave_vfio_ones_to_vfio() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[1];
    let (mut m, _restore) = setup(&[nic]);
    // The lab's NICs sit alone behind root ports, so the kernel offers them a reset ("pm
    // bus"): the host-driver reset below must really run, not be skipped.
    let methods = sysfs.pci_device(nic).unwrap().reset_methods().unwrap();
    assert!(methods.can_reset, "{nic}: {methods:?}");
    assert_eq!(
        m.reset(nic).unwrap(),
        plugboard_hostdev::ResetOutcome::Reset
    );
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    m.detach(nic).unwrap();
    assert_eq!(
        m.reset(nic).unwrap(),
        plugboard_hostdev::ResetOutcome::LeftToVfio
    );
    m.reattach(nic).unwrap();
}
