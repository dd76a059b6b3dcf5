//! Durable claim+release pairs per second on the fake kernel, beside the raw rate of the
//! equivalent SQLite transactions measured in the same run on the same disk.
//!
//! A pair is `prepare_pci` of one detached (inactive) device for an owner, then
//! `release_pci` of it: two `BEGIN IMMEDIATE` transactions committed in WAL mode, plus the sysfs reads the rules need (device, driver,
//! header type, IOMMU group and its members). The raw peer runs the same statements
//! (reads of the device's row, intent and group, the row write and the audit insert) on
//! an identical database with rusqlite alone, so the ratio is hostdev's overhead.
//! Managed pairs (bind to vfio-pci and back through the fake kernel, four transactions)
//! are printed for information. Both durabilities are measured: `Process` (the default,
//! `synchronous=NORMAL`: survives any process crash) and `PowerCut` (`synchronous=FULL`:
//! an fsync per commit, bounded by the disk).
//!
//! Run: `cargo bench -p plugboard-hostdev --bench claim_release`.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure must stop it loudly"
)]

use std::time::{Duration, Instant};

use plugboard_hostdev::registry::{Durability, Registry, RegistryOptions};
use plugboard_hostdev::{HostdevManager, Owner, PrepareOptions};
use plugboard_sysfs::PciAddress;
use plugboard_sysfs::fake::{FakeKernel, PciSpec};
use rusqlite::{Connection, TransactionBehavior, params};

const DEVICES: usize = 16;
const ROUND: Duration = Duration::from_millis(400);
const ROUNDS: usize = 9;

fn main() {
    let mut verdict = false;
    for durability in [Durability::Process, Durability::PowerCut] {
        let (ours, raw) = measure(durability);
        if durability == Durability::Process {
            verdict = ours >= 1000.0 && ours / raw >= 0.5;
        }
    }
    println!(
        "goal (default durability): >= 1000 pairs/s and ratio >= 0.50: {}",
        if verdict { "met" } else { "NOT met" }
    );
}

/// Measures one durability; returns (hostdev, raw) pairs per second.
fn measure(durability: Durability) -> (f64, f64) {
    println!("== durability {durability:?}");
    let options = RegistryOptions {
        durability,
        ..RegistryOptions::default()
    };
    let mut builder = FakeKernel::builder();
    let addresses: Vec<PciAddress> = (0..DEVICES)
        .map(|i| format!("0000:{:02x}:00.0", i + 1).parse().unwrap())
        .collect();
    for (i, a) in addresses.iter().enumerate() {
        builder = builder.pci(
            PciSpec::new(&a.to_string(), 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(u32::try_from(i).unwrap() + 1)
                .driver("e1000e"),
        );
    }
    let kernel = builder.build().unwrap();
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostdev-bench-{durability:?}"));
    let _ = std::fs::remove_dir_all(&base);
    let state = base.join("state");
    let raw_dir = base.join("raw");
    let mut m = HostdevManager::with_options(kernel.sysfs(), &state, &options).unwrap();
    let owner: Owner = "qemu/bench".parse().unwrap();
    // Unmanaged devices: detached once, then claimed and released without sysfs writes.
    for a in &addresses[..DEVICES / 2] {
        m.detach(*a).unwrap();
    }
    drop(Registry::open(&raw_dir, &options).unwrap());
    let mut raw = Connection::open(raw_dir.join("hostdev.db")).unwrap();
    raw.busy_timeout(Duration::from_secs(10)).unwrap();
    raw.pragma_update(None, "journal_mode", "WAL").unwrap();
    let synchronous = if durability == Durability::Process {
        "NORMAL"
    } else {
        "FULL"
    };
    raw.pragma_update(None, "synchronous", synchronous).unwrap();
    let keys: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    for (i, k) in keys.iter().enumerate() {
        raw.execute(
            "INSERT INTO pci_devices (address, list, managed, original_driver, iommu_group) \
             VALUES (?1, 'inactive', 0, 'e1000e', ?2)",
            params![k, i64::try_from(i).unwrap() + 1],
        )
        .unwrap();
    }

    // Interleaved rounds, medians: the machine is shared, so noise hits both alike.
    let mut raws = Vec::new();
    let mut ours = Vec::new();
    for round in 0..ROUNDS {
        let r = rate(|i| {
            let d = i % (DEVICES / 2);
            raw_pair(&mut raw, &keys[d], i64::try_from(d).unwrap() + 1);
        });
        let o = rate(|i| {
            let a = addresses[i % (DEVICES / 2)];
            m.prepare_pci(&owner, &[a], PrepareOptions::default())
                .unwrap();
            let out = m.release_pci(&owner, &[a]).unwrap();
            out.into_iter().next().unwrap().result.unwrap();
        });
        println!("round {round}: raw SQLite {r:.0} pairs/s, hostdev {o:.0} pairs/s");
        raws.push(r);
        ours.push(o);
    }
    let managed = rate(|i| {
        let a = addresses[DEVICES / 2 + i % (DEVICES / 2)];
        let managed = PrepareOptions {
            managed: true,
            whole_group: false,
        };
        m.prepare_pci(&owner, &[a], managed).unwrap();
        let out = m.release_pci(&owner, &[a]).unwrap();
        out.into_iter().next().unwrap().result.unwrap();
    });
    let best_raw = median(&mut raws);
    let best_ours = median(&mut ours);
    let binds = rate(|i| {
        let a = addresses[DEVICES / 2 + i % (DEVICES / 2)];
        let dev = kernel.sysfs().pci_device(a).unwrap();
        dev.bind("vfio-pci").unwrap();
        dev.reattach(Some("e1000e")).unwrap();
    });
    println!();
    println!("raw SQLite (equivalent transactions): {best_raw:.0} pairs/s (median)");
    println!("hostdev claim+release (unmanaged):    {best_ours:.0} pairs/s (median)");
    println!(
        "ratio hostdev / raw:                  {:.2}",
        best_ours / best_raw
    );
    println!(
        "hostdev claim+release (managed, binds through the fake kernel): {managed:.0} pairs/s"
    );
    println!("  peer: bare bind + reattach in the fake kernel, no registry: {binds:.0} pairs/s");
    println!();
    (best_ours, best_raw)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pairs per second of `f` over one round.
fn rate(mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < ROUND {
        f(n);
        n += 1;
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let pairs = n as f64;
    pairs / start.elapsed().as_secs_f64()
}

/// The SQL of one claim and one release, as hostdev issues it, without hostdev.
fn raw_pair(conn: &mut Connection, key: &str, group: i64) {
    for (list, owner, event) in [
        ("active", Some("qemu"), "active"),
        ("inactive", None, "inactive"),
    ] {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        {
            let mut intent = tx
                .prepare_cached("SELECT id FROM intents WHERE address = ?1")
                .unwrap();
            let _: Vec<i64> = intent
                .query_map([key], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut row = tx
                .prepare_cached("SELECT address, list, owner_driver, owner_domain, managed, original_driver, iommu_group FROM pci_devices WHERE address = ?1")
                .unwrap();
            let _: Vec<String> = row
                .query_map([key], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut in_group = tx
                .prepare_cached("SELECT address FROM pci_devices WHERE iommu_group = ?1")
                .unwrap();
            let _: Vec<String> = in_group
                .query_map([group], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            tx.prepare_cached(
                "INSERT OR REPLACE INTO pci_devices (address, list, owner_driver, owner_domain, managed, original_driver, iommu_group) VALUES (?1, ?2, ?3, ?4, 0, 'e1000e', ?5)",
            )
            .unwrap()
            .execute(params![key, list, owner, owner.map(|_| "bench"), group])
            .unwrap();
            tx.prepare_cached(
                "INSERT INTO events (address, iommu_group, event, owner_driver, owner_domain) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap()
            .execute(params![key, group, event, owner, owner.map(|_| "bench")])
            .unwrap();
        }
        tx.commit().unwrap();
    }
}
