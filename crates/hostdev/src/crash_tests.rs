//! The crash test: a child process runs prepare, release, detach or reattach against the
//! parent's fake kernel and one registry, and aborts (as `kill -9` would) at each fault
//! point in turn; the parent then runs `recover` and checks the host is consistent:
//! no device on vfio-pci without an owner or inactive entry, every owner's device bound
//! to vfio-pci, no pending intent, no device left without a driver unless it had none
//! before the child ran, nothing needing attention, and the operation undone (prepare) or
//! finished (the others). The give-back's own points (`give_back.cleared`: override
//! cleared; `give_back.unbound`: vfio-pci unbound, the host driver not yet probed) are
//! among them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;

use crate::fault::ABORT_AT;
use crate::manager::HostdevManager;
use crate::pci_request::PrepareOptions;
use crate::registry::List;
use crate::test_support::*;

const SCENARIO: &str = "PLUGBOARD_HOSTDEV_TEST_SCENARIO";
const ROOT: &str = "PLUGBOARD_HOSTDEV_TEST_ROOT";
const STATE: &str = "PLUGBOARD_HOSTDEV_TEST_STATE";
const SOCKET: &str = "PLUGBOARD_HOSTDEV_TEST_SOCKET";

/// The operation each scenario runs in the child, on a host set up by [`setup`].
fn run_scenario(m: &mut HostdevManager, scenario: &str) {
    let a = owner("qemu/vm1");
    match scenario {
        "prepare" => {
            m.prepare_pci(&a, &[addr(NIC1), addr(NIC2), addr(NIC3)], MANAGED)
                .unwrap();
        }
        "prepare-group" => {
            let whole = PrepareOptions {
                managed: true,
                whole_group: true,
            };
            m.prepare_pci(&a, &[addr(SHARED1)], whole).unwrap();
        }
        "release" => {
            let out = m
                .release_pci(&a, &[addr(NIC1), addr(NIC2), addr(NIC3)])
                .unwrap();
            assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        }
        "detach" => {
            m.detach(addr(FN0)).unwrap();
        }
        "reattach" => {
            m.reattach(addr(FN1)).unwrap();
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// The state before the child runs: for "release", NIC1 and NIC2 prepared managed and
/// NIC3 detached by hand then prepared; for "reattach", FN1 detached.
fn setup(m: &mut HostdevManager, scenario: &str) {
    let a = owner("qemu/vm1");
    match scenario {
        "release" => {
            m.prepare_pci(&a, &[addr(NIC1), addr(NIC2)], MANAGED)
                .unwrap();
            m.detach(addr(NIC3)).unwrap();
            m.prepare_pci(&a, &[addr(NIC3)], PrepareOptions::default())
                .unwrap();
        }
        "reattach" => {
            m.detach(addr(FN1)).unwrap();
        }
        _ => {}
    }
}

/// Entry point of the child process; does nothing unless the parent set the scenario.
#[test]
fn child_process_entry_point() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    if let Some(op) = scenario.strip_prefix("lab-") {
        lab_child(op);
        return;
    }
    let root = std::path::PathBuf::from(std::env::var(ROOT).unwrap());
    let socket = std::path::PathBuf::from(std::env::var(SOCKET).unwrap());
    let state = std::path::PathBuf::from(std::env::var(STATE).unwrap());
    let mut m = HostdevManager::open(remote_sysfs(&root, &socket), &state).unwrap();
    run_scenario(&mut m, &scenario);
}

/// Every PCI device's driver now.
fn drivers(fx: &Fixture) -> BTreeMap<String, Option<String>> {
    fx.kernel
        .sysfs()
        .pci_devices()
        .unwrap()
        .into_iter()
        .map(|d| (d.address().to_string(), d.driver().unwrap()))
        .collect()
}

/// Checks the invariants recover must restore, and returns the devices on vfio-pci.
/// `before`: every device's driver before the operation.
fn check_consistent(
    fx: &Fixture,
    m: &mut HostdevManager,
    before: &BTreeMap<String, Option<String>>,
) -> BTreeSet<String> {
    let listing = m.list().unwrap();
    assert!(listing.pending.is_empty(), "{:?}", listing.pending);
    assert!(
        listing.needs_attention.is_empty(),
        "{:?}",
        listing.needs_attention
    );
    let sysfs = fx.kernel.sysfs();
    let mut on_vfio = BTreeSet::new();
    for dev in sysfs.pci_devices().unwrap() {
        let bdf = dev.address().to_string();
        let driver = dev.driver().unwrap();
        assert!(
            driver.is_some() || before.get(&bdf).is_some_and(Option::is_none),
            "{bdf} was left without a driver; it had {:?}",
            before.get(&bdf)
        );
        let row = listing.pci.iter().find(|r| r.address == bdf);
        if dev.driver().unwrap().as_deref() == Some("vfio-pci") {
            assert!(
                row.is_some(),
                "{bdf} is on vfio-pci with no owner or inactive entry"
            );
            on_vfio.insert(bdf.clone());
        }
        if let Some(row) = row {
            assert_eq!(
                dev.driver().unwrap().as_deref(),
                Some("vfio-pci"),
                "{bdf} is on the {:?} list but not bound to vfio-pci",
                row.list
            );
        }
        assert_eq!(
            dev.driver_override().unwrap().is_some(),
            row.is_some(),
            "{bdf}: stale driver_override"
        );
    }
    on_vfio
}

#[test]
fn recover_restores_a_consistent_host_after_a_crash_at_every_step() {
    let cases: &[(&str, &[&str])] = &[
        (
            "prepare",
            &[
                "prepare.journaled",
                "prepare.binding#1",
                "prepare.bound#1",
                "prepare.binding#3",
                "prepare.bound#2",
                "prepare.bound#3",
                "prepare.committed",
            ],
        ),
        (
            "prepare-group",
            &[
                "prepare.journaled",
                "prepare.bound#1",
                "prepare.bound#2",
                "prepare.committed",
            ],
        ),
        (
            "release",
            &[
                "release.journaled",
                "give_back.cleared#1",
                "give_back.unbound#1",
                "release.reattached#1",
                "give_back.unbound#2",
                "release.reattached#2",
            ],
        ),
        (
            "detach",
            &["detach.journaled", "detach.binding", "detach.bound"],
        ),
        (
            "reattach",
            &[
                "reattach.journaled",
                "give_back.cleared",
                "give_back.unbound",
            ],
        ),
    ];
    let mut crashes = 0;
    for &(scenario, points) in cases {
        for &point in points {
            let fx = Fixture::new();
            let server = KernelServer::start(&fx.kernel);
            let mut m = fx.manager();
            setup(&mut m, scenario);
            let before = books(&mut m);
            let drivers_before = drivers(&fx);
            let status = child(
                "crash_tests::child_process_entry_point",
                &[
                    (SCENARIO, scenario.to_owned()),
                    (ROOT, fx.kernel.root().display().to_string()),
                    (STATE, fx.state.path().display().to_string()),
                    (SOCKET, server.socket.display().to_string()),
                    (ABORT_AT, point.to_owned()),
                ],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
            assert_eq!(
                status.signal(),
                Some(libc_sigabrt()),
                "{scenario} at {point}: {status:?}"
            );
            crashes += 1;

            let recovered = m.recover().unwrap();
            let on_vfio = check_consistent(&fx, &mut m, &drivers_before);
            let after = books(&mut m);
            let ctx = format!("{scenario} at {point}: recovered {recovered:?}");
            match scenario {
                // A prepare the caller never saw succeed is undone, unless it committed.
                "prepare" | "prepare-group" if point != "prepare.committed" => {
                    assert_eq!(after, before, "{ctx}");
                    assert!(on_vfio.is_empty(), "{ctx}: {on_vfio:?}");
                }
                "prepare" | "prepare-group" => {
                    assert!(after.iter().all(|r| r.1 == List::Active), "{ctx}");
                    assert!(recovered.is_empty(), "{ctx}");
                }
                "release" => {
                    // Finished: managed devices back on e1000e, the unmanaged one inactive.
                    assert_eq!(
                        after,
                        vec![(NIC3.into(), List::Inactive, None, false)],
                        "{ctx}"
                    );
                    assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"), "{ctx}");
                    assert_eq!(fx.driver(NIC2).as_deref(), Some("e1000e"), "{ctx}");
                }
                "detach" => {
                    let detached = after == vec![(FN0.into(), List::Inactive, None, false)];
                    let undone = after.is_empty() && fx.driver(FN0).as_deref() == Some("igb");
                    assert!(detached || undone, "{ctx}: {after:?}");
                }
                "reattach" => {
                    assert!(after.is_empty(), "{ctx}");
                    assert_eq!(fx.driver(FN1).as_deref(), Some("igb"), "{ctx}");
                }
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(crashes, 23);
}

fn libc_sigabrt() -> i32 {
    6
}

/// In the lab guest: refuses to go on anywhere else.
fn assert_lab_guest() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|a| a == "plugboard.lab=1"),
        "not in the lab guest: refusing to bind anything"
    );
}

/// The child of the real-kernel crash test: one prepare or release on the real `/sys`.
fn lab_child(op: &str) {
    assert_lab_guest();
    let state = std::path::PathBuf::from(std::env::var(STATE).unwrap());
    let nic: plugboard_sysfs::PciAddress = std::env::var(ROOT).unwrap().parse().unwrap();
    let mut m = HostdevManager::open(plugboard_sysfs::Sysfs::default(), &state).unwrap();
    let a = owner("qemu/lab-crash");
    match op {
        "prepare" => drop(m.prepare_pci(&a, &[nic], MANAGED).unwrap()),
        "release" => drop(m.release_pci(&a, &[nic]).unwrap()),
        other => panic!("unknown lab scenario {other}"),
    }
}

/// The crash test on a real kernel: run this unit-test binary in the lab guest with
/// `lab/run.sh -- <binary> crash_tests::lab --ignored --test-threads=1`.
#[test]
#[ignore = "needs the lab guest (lab/run.sh with this unit-test binary)"]
fn lab_recover_after_a_crash_on_a_real_kernel() {
    assert_lab_guest();
    let sysfs = plugboard_sysfs::Sysfs::default();
    let nic = sysfs
        .pci_devices()
        .unwrap()
        .into_iter()
        .find(|d| {
            (d.vendor_id().unwrap(), d.device_id().unwrap()) == (0x8086, 0x10d3)
                && d.iommu_group().unwrap().is_some_and(|g| {
                    sysfs
                        .iommu_group(g)
                        .unwrap()
                        .members
                        .iter()
                        .filter(|m| !m.bridge)
                        .count()
                        == 1
                })
        })
        .expect("an e1000e alone in its group")
        .address();
    let driver = || sysfs.pci_device(nic).unwrap().driver().unwrap();
    let points = [
        ("prepare", "prepare.journaled"),
        ("prepare", "prepare.binding"),
        ("prepare", "prepare.bound"),
        ("release", "release.journaled"),
        ("release", "give_back.unbound"),
        ("release", "release.reattached"),
    ];
    for (op, point) in points {
        let state = tempfile::tempdir().unwrap();
        let mut m = HostdevManager::open(sysfs.clone(), state.path()).unwrap();
        if op == "release" {
            m.prepare_pci(&owner("qemu/lab-crash"), &[nic], MANAGED)
                .unwrap();
        }
        let status = child(
            "crash_tests::child_process_entry_point",
            &[
                (SCENARIO, format!("lab-{op}")),
                (ROOT, nic.to_string()),
                (STATE, state.path().display().to_string()),
                (ABORT_AT, point.to_owned()),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
        let crashed = status.signal() == Some(libc_sigabrt());
        let recovered = m.recover().unwrap();
        let after = books(&mut m);
        let now = driver();
        // Give the NIC back whatever happened, before asserting.
        if now.as_deref() != Some("e1000e") {
            let _ = sysfs.pci_device(nic).unwrap().reattach(Some("e1000e"));
        }
        let ctx = format!("{op} at {point}: {status:?}, recovered {recovered:?}");
        assert!(crashed, "{ctx}");
        assert!(after.is_empty(), "{ctx}: {after:?}");
        assert_eq!(now.as_deref(), Some("e1000e"), "{ctx}");
        assert_eq!(
            sysfs.pci_device(nic).unwrap().driver_override().unwrap(),
            None,
            "{ctx}"
        );
    }
}
