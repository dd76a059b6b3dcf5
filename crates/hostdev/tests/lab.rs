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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_hostdev::registry::{List, PciRow, RegistryError};
use plugboard_hostdev::{
    DetachOutcome, HostdevManager, Intent, IntentOp, IntentStep, NodeDeviceError, Owner,
    PciReleased, PrepareError, PrepareOptions, ProcessStamp, ReattachOutcome, RecoverAction,
    ReleaseError,
};
use plugboard_sysfs::{PciAddress, Sysfs};

/// NVMe namespaces, USB, SCSI and mdev on the lab's real drivers.
mod kinds;

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
    state: tempfile::TempDir,
}

impl Restore {
    /// The registry's state directory.
    fn state_dir(&self) -> &Path {
        self.state.path()
    }
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
            state,
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

/// A process that has exited and been reaped: its stamp is what a killed operation leaves
/// in the intent journal.
fn dead_process() -> ProcessStamp {
    let mut child = Command::new("true").spawn().unwrap();
    let stamp = ProcessStamp {
        pid: child.id(),
        start: 1,
    };
    child.wait().unwrap();
    stamp
}

/// Field 3 (`state`) and field 22 (`starttime`) of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

fn intent(nic: PciAddress, op: IntentOp, a: &Owner, process: ProcessStamp) -> Intent {
    Intent {
        id: 0,
        op,
        address: nic.to_string(),
        original_driver: Some("e1000e".into()),
        owner: Some(a.clone()),
        managed: true,
        writes_sysfs: true,
        iommu_group: None,
        step: IntentStep::Binding,
        process,
    }
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn reattach_gives_a_nic_unbound_by_hand_back_to_e1000e() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    // By hand, as an operator would: echo <bdf> > /sys/bus/pci/drivers/e1000e/unbind.
    std::fs::write("/sys/bus/pci/drivers/e1000e/unbind", nic.to_string()).unwrap();
    assert_eq!(driver(&sysfs, nic), None);
    assert_eq!(
        m.reattach(nic).unwrap(),
        ReattachOutcome::Reattached {
            driver: "e1000e".into()
        }
    );
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    assert!(books(&mut m).is_empty());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn recover_finishes_a_release_killed_between_unbind_and_probe() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    let a = owner("qemu/lab-kill");
    m.prepare_pci(&a, &[nic], MANAGED).unwrap();
    // What release does before its sysfs writes, as a process since dead: the row to the
    // inactive list and a release intent, in one transaction...
    let dead = dead_process();
    m.registry()
        .write(|tx| {
            let row = tx.pci_row(&nic.to_string())?.unwrap();
            tx.put_pci_row(&PciRow {
                list: List::Inactive,
                owner: None,
                ..row.clone()
            })?;
            tx.insert_intent(&Intent {
                iommu_group: row.iommu_group,
                ..intent(nic, IntentOp::Release, &a, dead)
            })?;
            Ok::<_, RegistryError>(())
        })
        .unwrap();
    // ...then its writes up to the kill: override cleared, vfio-pci unbound, no probe.
    let dev = sysfs.pci_device(nic).unwrap();
    dev.set_driver_override(None).unwrap();
    assert_eq!(dev.unbind().unwrap().as_deref(), Some("vfio-pci"));
    assert_eq!(driver(&sysfs, nic), None);
    let pending = m.list().unwrap().pending;
    assert!(pending.len() == 1 && !pending[0].running, "{pending:?}");

    let done = m.recover().unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].action, RecoverAction::Finished, "{done:?}");
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    assert_eq!(dev.driver_override().unwrap(), None);
    assert!(books(&mut m).is_empty());
    assert!(m.list().unwrap().needs_attention.is_empty());
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn recover_settles_the_intent_of_a_zombie() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[1];
    let (mut m, _restore) = setup(&[nic]);
    // A prepare that bound the NIC to vfio-pci, by a process that exited and was not
    // reaped yet (a zombie keeps its /proc entry and start time).
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let zombie = ProcessStamp {
        pid,
        start: proc_stat(pid).unwrap().1,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_stat(pid).map(|s| s.0) != Some('Z') {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    sysfs.pci_device(nic).unwrap().bind("vfio-pci").unwrap();
    let g = sysfs.pci_device(nic).unwrap().iommu_group().unwrap();
    m.registry()
        .write(|tx| {
            tx.insert_intent(&Intent {
                iommu_group: g,
                ..intent(nic, IntentOp::Prepare, &owner("qemu/lab-zombie"), zombie)
            })
        })
        .unwrap();
    let pending = m.list().unwrap().pending;
    let done = m.recover().unwrap();
    child.wait().unwrap();
    assert!(
        !pending[0].running,
        "ls: a zombie is not running: {pending:?}"
    );
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].action, RecoverAction::Undone, "{done:?}");
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("e1000e"));
    assert!(books(&mut m).is_empty());
}

/// Where the lab packs the `plugboard` binary.
fn plugboard_bin() -> PathBuf {
    let bin = std::env::var_os("PLUGBOARD_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/plugboard"), PathBuf::from);
    assert!(bin.exists(), "{} is not packed", bin.display());
    bin
}

/// How a `plugboard` child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// It exited by itself before the kill (its operation finished).
    Exited,
    /// SIGKILL reached it.
    Killed,
}

/// Waits for `child` up to `deadline`; panics past it (after killing it).
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running past its deadline");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `plugboard --state-dir STATE <args>` and SIGKILLs it after `delay` (unless it
/// exited first). `log` receives its stderr.
fn run_killed(state: &Path, args: &[String], delay: Duration, log: &Path) -> Ending {
    let mut child = Command::new(plugboard_bin())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let deadline = Instant::now() + Duration::from_secs(60);
    if child.try_wait().unwrap().is_some() {
        return Ending::Exited;
    }
    // SIGKILL (a zombie ignores it; it is reaped below either way).
    child.kill().unwrap();
    wait_until(
        &mut child,
        deadline,
        &format!("plugboard {}", args.join(" ")),
    );
    Ending::Killed
}

/// Where the shared group's two NICs are, after recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Where {
    /// Both active for the owner, on vfio-pci.
    Owned,
    /// Both on e1000e, unknown to the registry, no override.
    Host,
}

/// The invariants after every round: nothing pending, nothing needing attention, each NIC
/// fully owned or back on e1000e, and the group not split (both the same).
fn check_group(m: &mut HostdevManager, sysfs: &Sysfs, nics: &[PciAddress], a: &Owner) -> Where {
    let listing = m.list().unwrap();
    assert!(listing.pending.is_empty(), "pending: {:?}", listing.pending);
    assert!(
        listing.needs_attention.is_empty(),
        "needs attention: {:?}",
        listing.needs_attention
    );
    let mut seen = Vec::new();
    for &nic in nics {
        let dev = sysfs.pci_device(nic).unwrap();
        let drv = dev.driver().unwrap();
        let over = dev.driver_override().unwrap();
        let row = listing.pci.iter().find(|r| r.address == nic.to_string());
        let place = match (drv.as_deref(), row) {
            (Some("vfio-pci"), Some(r))
                if r.list == List::Active && r.owner.as_ref() == Some(a) =>
            {
                Where::Owned
            }
            (Some("e1000e"), None) if over.is_none() => Where::Host,
            _ => panic!("{nic} half-done: driver {drv:?}, override {over:?}, row {row:?}"),
        };
        seen.push(place);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "IOMMU group split: {nics:?} are {seen:?}"
    );
    seen[0]
}

/// The kill delays of `rounds` rounds: spread over [0, span] in a scrambled order, so that
/// kills land at every step of the operation (start-up, journal, unbind, probe, commit).
fn delays(rounds: u32, span: Duration) -> Vec<Duration> {
    (0..rounds)
        .map(|i| span.mul_f64(f64::from((i * 37) % rounds) / f64::from(rounds - 1)))
        .collect()
}

/// Kill `plugboard hostdev prepare --managed --whole-group` and `plugboard hostdev
/// release` (the shared group's two NICs) at 50 moments each, then `recover`: every NIC
/// fully owned or back on e1000e, the group never split, nothing pending.
#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn kill_prepare_and_release_at_random_moments_then_recover() {
    const ROUNDS: u32 = 50;
    let sysfs = in_lab_guest();
    let n = nics(&sysfs);
    let group = n.shared.clone();
    let (mut m, restore) = setup(&group);
    let state = restore.state_dir().to_owned();
    let log = state.join("child.log");
    let a = owner("qemu/lab-kill");
    let whole = PrepareOptions {
        managed: true,
        whole_group: true,
    };
    let prepare: Vec<String> = [
        "hostdev",
        "prepare",
        "--owner",
        "qemu/lab-kill",
        "--managed",
        "--whole-group",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([group[0].to_string()])
    .collect();
    let release: Vec<String> = ["hostdev", "release", "--owner", "qemu/lab-kill"]
        .iter()
        .map(ToString::to_string)
        .chain(group.iter().map(ToString::to_string))
        .collect();

    // How long each takes unkilled here (TCG is slow; the first run also pages the binary
    // in): the fastest of three, and the kills spread over that.
    let timed = |args: &[String]| {
        let start = Instant::now();
        let mut child = Command::new(plugboard_bin())
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_until(
            &mut child,
            Instant::now() + Duration::from_secs(120),
            &format!("unkilled plugboard {}", args.join(" ")),
        );
        assert!(status.success(), "plugboard {}: {status}", args.join(" "));
        start.elapsed()
    };
    let (mut prepare_took, mut release_took) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        prepare_took = prepare_took.min(timed(&prepare));
        assert_eq!(check_group(&mut m, &sysfs, &group, &a), Where::Owned);
        release_took = release_took.min(timed(&release));
        assert_eq!(check_group(&mut m, &sysfs, &group, &a), Where::Host);
    }
    println!(
        "unkilled (fastest of 3): prepare {} ms, release {} ms; kills spread over 0..=1.1x that",
        prepare_took.as_millis(),
        release_took.as_millis()
    );

    // (operation, how the child ended, whether recover had work, where the group is).
    let mut counts: BTreeMap<(&str, Ending, bool, Where), u32> = BTreeMap::new();
    let mut actions: BTreeMap<String, u32> = BTreeMap::new();
    let suite = Instant::now();
    let plan = [
        (
            "prepare",
            &prepare,
            delays(ROUNDS, prepare_took.mul_f64(1.1)),
            Where::Host,
        ),
        (
            "release",
            &release,
            delays(ROUNDS, release_took.mul_f64(1.1)),
            Where::Owned,
        ),
    ];
    for round in 0..ROUNDS as usize {
        for (op, args, delays, start_from) in &plan {
            let round_start = Instant::now();
            // Put the group where this operation starts from.
            match (check_group(&mut m, &sysfs, &group, &a), start_from) {
                (Where::Owned, Where::Host) => {
                    let out = m.release_pci(&a, &group).unwrap();
                    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
                }
                (Where::Host, Where::Owned) => {
                    m.prepare_pci(&a, &group[..1], whole).unwrap();
                }
                _ => {}
            }
            assert_eq!(check_group(&mut m, &sysfs, &group, &a), *start_from);
            let delay = delays[round];
            let ending = run_killed(&state, args, delay, &log);
            let recovered = m.recover().unwrap();
            for r in &recovered {
                *actions
                    .entry(format!("{op}: {} {}", r.op, r.action))
                    .or_default() += 1;
            }
            let ctx = format!(
                "round {round}, {op} killed after {} ms ({ending:?}), recovered {recovered:?}, its stderr: {}",
                delay.as_millis(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            let place = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_group(&mut m, &sysfs, &group, &a)
            }))
            .unwrap_or_else(|_| panic!("{ctx}"));
            if ending == Ending::Exited {
                // It finished: prepare owns the group, release gave it back.
                let done = if *op == "prepare" {
                    Where::Owned
                } else {
                    Where::Host
                };
                assert_eq!(place, done, "{ctx}");
            }
            *counts
                .entry((op, ending, !recovered.is_empty(), place))
                .or_default() += 1;
            assert!(
                round_start.elapsed() < Duration::from_secs(60),
                "{ctx}: the round took {:?}",
                round_start.elapsed()
            );
        }
    }
    println!(
        "{} rounds of prepare and of release in {} s",
        ROUNDS,
        suite.elapsed().as_secs()
    );
    for ((op, ending, recovered, place), count) in &counts {
        let what = match (*op, ending, recovered, place) {
            (_, Ending::Exited, _, _) => "exited by itself before the kill",
            ("prepare", Ending::Killed, false, Where::Host) => "killed before it journaled",
            ("prepare", Ending::Killed, true, Where::Host) => "killed mid-way: recover undid it",
            ("prepare", Ending::Killed, _, Where::Owned) => "killed after it committed: owned",
            ("release", Ending::Killed, false, Where::Owned) => "killed before it began: owned",
            ("release", Ending::Killed, true, Where::Host) => "killed mid-way: recover finished it",
            ("release", Ending::Killed, false, Where::Host) => "killed after it finished",
            _ => "unexpected",
        };
        println!("{op:8} {count:3}  {what}");
    }
    for (action, count) in &actions {
        println!("recover: {action}: {count}");
    }
    let total: u32 = counts.values().sum();
    assert_eq!(total, 2 * ROUNDS);
    // Leave the group as found.
    if check_group(&mut m, &sysfs, &group, &a) == Where::Owned {
        m.release_pci(&a, &group).unwrap();
    }
    assert_eq!(check_group(&mut m, &sysfs, &group, &a), Where::Host);
}

#[test]
#[ignore = "needs the lab guest (lab/run-tests.sh)"]
fn release_is_refused_while_a_process_holds_the_group_node() {
    let sysfs = in_lab_guest();
    let nic = nics(&sysfs).single[0];
    let (mut m, _restore) = setup(&[nic]);
    let a = owner("qemu/lab1");
    m.prepare_pci(&a, &[nic], MANAGED).unwrap();
    let node = group_node(&sysfs, nic);
    // What QEMU does with a legacy group: hold /dev/vfio/<group> open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .unwrap();
    let out = m.release_pci(&a, &[nic]).unwrap();
    let err = out[0].result.as_ref().unwrap_err();
    let me = std::process::id();
    assert!(
        matches!(err, ReleaseError::Held { holders, .. }
            if holders.iter().any(|h| h.pid == me && h.node == node)),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("pid {me}")), "{err}");
    assert_eq!(driver(&sysfs, nic).as_deref(), Some("vfio-pci"));
    assert_eq!(
        books(&mut m),
        vec![(nic.to_string(), List::Active, Some("qemu/lab1".into()))]
    );
    drop(file);
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
