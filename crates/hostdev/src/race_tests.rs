//! The race test: 8 OS processes share one fake kernel and one registry and claim and
//! release random devices (managed, unmanaged, whole groups, detach/reattach) across
//! shared IOMMU groups for a bounded number of rounds. Afterwards the audit trail must
//! show that no group was ever split and no device ever had two owners, and the registry
//! must match sysfs.

use std::collections::BTreeMap;

use plugboard_sysfs::PciAddress;

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::pci_request::PrepareOptions;
use crate::registry::{EventKind, List};
use crate::test_support::*;

const WORKER: &str = "PLUGBOARD_HOSTDEV_TEST_WORKER";
const ROOT: &str = "PLUGBOARD_HOSTDEV_TEST_ROOT";
const STATE: &str = "PLUGBOARD_HOSTDEV_TEST_STATE";
const SOCKET: &str = "PLUGBOARD_HOSTDEV_TEST_SOCKET";
const WORKERS: usize = 8;
const ROUNDS: usize = 100;

const POOL: &[&str] = &[NIC1, NIC2, NIC3, SHARED1, SHARED2, FN0, FN1, NVME];

/// xorshift64: deterministic per worker, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap()
    }
}

/// One worker's rounds; prints `ok`/`err` counts as its last line.
fn work(m: &mut HostdevManager, seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let owners: Vec<Owner> = ["qemu/vm1", "qemu/vm2", "kata/vm1", "kata/pod"]
        .iter()
        .map(|o| owner(o))
        .collect();
    let (mut ok, mut refused) = (0, 0);
    // Devices are held across rounds, so that owners overlap in time.
    let mut held: Vec<(Owner, Vec<PciAddress>)> = Vec::new();
    for _ in 0..ROUNDS {
        if !held.is_empty() && rng.next(3) == 0 {
            let (who, devices) = held.swap_remove(rng.next(held.len()));
            let out = m.release_pci(&who, &devices).unwrap();
            assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
            continue;
        }
        let who = &owners[rng.next(owners.len())];
        let n = 1 + rng.next(2);
        let devices: Vec<PciAddress> = (0..n).map(|_| addr(POOL[rng.next(POOL.len())])).collect();
        match rng.next(6) {
            0 => {
                if m.detach(devices[0]).is_ok() {
                    ok += 1;
                } else {
                    refused += 1;
                }
            }
            1 => {
                if m.reattach(devices[0]).is_ok() {
                    ok += 1;
                } else {
                    refused += 1;
                }
            }
            k => {
                let options = PrepareOptions {
                    managed: k != 2,
                    whole_group: k == 5,
                };
                match m.prepare_pci(who, &devices, options) {
                    Ok(done) => {
                        ok += 1;
                        held.push((who.clone(), done.iter().map(|p| p.address).collect()));
                    }
                    Err(_) => refused += 1,
                }
            }
        }
    }
    for (who, devices) in held {
        let out = m.release_pci(&who, &devices).unwrap();
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    }
    (ok, refused)
}

/// Entry point of a worker process; does nothing unless the parent set the worker id.
#[test]
fn worker_process_entry_point() {
    let Ok(id) = std::env::var(WORKER) else {
        return;
    };
    let root = std::path::PathBuf::from(std::env::var(ROOT).unwrap());
    let socket = std::path::PathBuf::from(std::env::var(SOCKET).unwrap());
    let state = std::path::PathBuf::from(std::env::var(STATE).unwrap());
    let mut m = HostdevManager::open(remote_sysfs(&root, &socket), &state).unwrap();
    let (ok, refused) = work(&mut m, id.parse::<u64>().unwrap() + 1);
    println!("worker-result {ok} {refused}");
}

#[test]
fn eight_processes_never_split_a_group_nor_share_a_device() {
    let fx = Fixture::new();
    let server = KernelServer::start(&fx.kernel);
    let mut m = fx.manager();
    // Start with some devices detached by hand, so unmanaged prepares can succeed too.
    m.detach(addr(NIC3)).unwrap();
    m.detach(addr(FN1)).unwrap();

    let children: Vec<_> = (0..WORKERS)
        .map(|i| {
            child(
                "race_tests::worker_process_entry_point",
                &[
                    (WORKER, i.to_string()),
                    (ROOT, fx.kernel.root().display().to_string()),
                    (STATE, fx.state.path().display().to_string()),
                    (SOCKET, server.socket.display().to_string()),
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.split_once("worker-result").map_or_else(
            || panic!("worker printed no result: {text}"),
            |(_, rest)| rest.lines().next().unwrap_or_default().to_owned(),
        );
        let mut parts = line.split_whitespace().map(|p| p.parse::<usize>().unwrap());
        ok += parts.next().unwrap();
        refused += parts.next().unwrap();
    }
    assert!(ok > 0, "no operation ever succeeded");
    assert!(
        refused > 0,
        "no operation was ever refused: no contention was tested"
    );

    // "Ever": replay the audit trail in commit order.
    let sysfs = fx.kernel.sysfs();
    let group_of = |a: &str| sysfs.pci_device(addr(a)).unwrap().iommu_group().unwrap();
    let mut owners: BTreeMap<String, Owner> = BTreeMap::new();
    let events = m.audit(0).unwrap();
    assert!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Active)
            .count()
            > 0
    );
    for e in &events {
        match e.kind {
            EventKind::Active => {
                let new = e.owner.clone().unwrap();
                if let Some(old) = owners.insert(e.address.clone(), new.clone()) {
                    panic!(
                        "event {}: {} given to {new} while owned by {old}",
                        e.seq, e.address
                    );
                }
                let g = group_of(&e.address);
                for (other, o) in &owners {
                    assert!(
                        group_of(other) != g || *o == new,
                        "event {}: group {g:?} split: {} to {new}, {other} held by {o}",
                        e.seq,
                        e.address
                    );
                }
            }
            EventKind::Inactive | EventKind::Host | EventKind::Gone => {
                owners.remove(&e.address);
            }
        }
    }
    assert!(
        owners.is_empty(),
        "every worker released what it took: {owners:?}"
    );

    // The registry matches sysfs now.
    let listing = m.list().unwrap();
    assert!(listing.pending.is_empty(), "{:?}", listing.pending);
    for dev in sysfs.pci_devices().unwrap() {
        let bdf = dev.address().to_string();
        let row = listing.pci.iter().find(|r| r.address == bdf);
        let on_vfio = dev.driver().unwrap().as_deref() == Some("vfio-pci");
        assert_eq!(
            on_vfio,
            row.is_some(),
            "{bdf}: registry {row:?} vs driver {:?}",
            dev.driver()
        );
        if let Some(row) = row {
            assert_eq!(row.list, List::Inactive, "{bdf}");
        }
    }
}
