//! Inventory of a generated fake kernel: 1,000, 10,000 and 50,000 PCI functions in 250,
//! 2,500 and 12,500 IOMMU groups (four functions per group, like multi-function cards),
//! some on a host driver, some on vfio-pci, some unbound
//! ([`FakeKernelBuilder::synthetic_pci`](plugboard_sysfs::fake::FakeKernelBuilder::synthetic_pci)).
//!
//! Measured, each the median of several runs on a warm page cache:
//! - "listing": `Sysfs::pci_inventory()` (every fact of every device) with names from
//!   `pci.ids` (`PciNames::load_for_ids` and `Inventory::apply_names`), in process: the
//!   library side of `plugboard host ls`;
//! - "groups": `Sysfs::iommu_groups()` (members and viability of every group);
//! - as a peer, `lspci -Dnnk` reading the same tree (`-O sysfs.path=…`), when installed.
//!
//! Printed: the times, the per-device cost at each size relative to the smallest (1.0 =
//! linear), and listing / lspci. The whole command against lspci, process start and table
//! included, is `cargo bench -p plugboard --bench host_ls_scale`.
//!
//! Run: `cargo bench -p plugboard-sysfs --features test-util --bench inventory`
//! (`PLUGBOARD_BENCH_SIZES=1000,10000` to pick sizes).

#![expect(clippy::unwrap_used, reason = "a benchmark: a failure is a failed run")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_sysfs::fake::FakeKernel;
use plugboard_sysfs::{DEFAULT_PCI_IDS, PciNames};

/// Where the trees go: tmpfs when there is one (`/dev/shm`), because the real sysfs lives
/// in memory too, and a disk-backed temp dir would measure the disk's directory code.
fn place() -> (tempfile::TempDir, &'static str) {
    match tempfile::Builder::new()
        .prefix("pb-bench-")
        .tempdir_in("/dev/shm")
    {
        Ok(dir) => (dir, "tmpfs (/dev/shm)"),
        Err(_) => (tempfile::tempdir().unwrap(), "the default temp dir"),
    }
}

fn tree(devices: usize, dir: &std::path::Path) -> FakeKernel {
    FakeKernel::builder()
        .synthetic_pci(devices)
        .legacy_vfio_only()
        .in_dir(dir)
        .build()
        .unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// (listing with names, groups).
fn plugboard_run(kernel: &FakeKernel, expect: usize) -> (Duration, Duration) {
    let sysfs = kernel.sysfs();
    let start = Instant::now();
    let mut inventory = sysfs.pci_inventory().unwrap();
    let names = PciNames::load_for_ids(
        std::path::Path::new(DEFAULT_PCI_IDS),
        inventory.devices.iter().map(|d| d.ids),
    )
    .unwrap();
    inventory.apply_names(&names);
    let listing = start.elapsed();
    let start = Instant::now();
    let groups = sysfs.iommu_groups().unwrap();
    let grouping = start.elapsed();
    assert_eq!(inventory.devices.len(), expect);
    assert!(inventory.problems.is_empty());
    assert_eq!(groups.len(), expect / 4);
    (listing, grouping)
}

fn lspci_run(kernel: &FakeKernel) -> Option<Duration> {
    let option = format!(
        "sysfs.path={}",
        kernel.sysfs_root().join("bus/pci").display()
    );
    let start = Instant::now();
    let status = Command::new("lspci")
        .args(["-A", "linux-sysfs", "-O", &option, "-Dnnk"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let took = start.elapsed();
    status.success().then_some(took)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PLUGBOARD_BENCH_SIZES").ok().map_or_else(
        || vec![1_000, 10_000, 50_000],
        |v| v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
    );
    let rounds: usize = std::env::var("PLUGBOARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "inventory: fake kernel trees; {rounds} rounds, each running every measurement once, alternating, so load from other processes hits all of them alike"
    );
    let mut trees = Vec::new();
    for devices in sizes {
        let (dir, place) = place();
        let build = Instant::now();
        let kernel = tree(devices, dir.path());
        println!(
            "built {devices} devices in {place} in {:.1}s",
            build.elapsed().as_secs_f64()
        );
        plugboard_run(&kernel, devices); // warm-up
        trees.push((devices, dir, kernel));
    }
    let have_lspci = trees.iter().all(|(_, _, k)| lspci_run(k).is_some());
    let mut ours: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); trees.len()];
    let mut theirs: Vec<Vec<Duration>> = vec![Vec::new(); trees.len()];
    for round in 0..rounds {
        for (i, (devices, _, kernel)) in trees.iter().enumerate() {
            if round % 2 == 0 {
                ours[i].push(plugboard_run(kernel, *devices));
            }
            if have_lspci {
                theirs[i].push(lspci_run(kernel).unwrap());
            }
            if round % 2 == 1 {
                ours[i].push(plugboard_run(kernel, *devices));
            }
        }
    }
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>12} {:>14} {:>16} {:>10}",
        "devices",
        "groups",
        "listing",
        "groups",
        "lspci -Dnnk",
        "listing/lspci",
        "per device",
        "per-dev x"
    );
    let mut base = None;
    for (i, (devices, _, _)) in trees.iter().enumerate() {
        let listing = median(ours[i].iter().map(|x| x.0).collect());
        let grouping = median(ours[i].iter().map(|x| x.1).collect());
        let theirs = have_lspci.then(|| median(theirs[i].clone()));
        let each = listing.as_secs_f64() / f64::from(u32::try_from(*devices).unwrap());
        let base = *base.get_or_insert(each);
        println!(
            "{devices:>8} {:>8} {:>10.1}ms {:>10.1}ms {:>12} {:>14} {:>14.2}us {:>10.2}",
            devices / 4,
            listing.as_secs_f64() * 1e3,
            grouping.as_secs_f64() * 1e3,
            theirs.map_or("n/a".to_owned(), |t| format!(
                "{:.1}ms",
                t.as_secs_f64() * 1e3
            )),
            theirs.map_or("n/a".to_owned(), |t| format!(
                "{:.3}",
                listing.as_secs_f64() / t.as_secs_f64()
            )),
            each * 1e6,
            each / base,
        );
    }
    if !have_lspci {
        println!("lspci is not installed: no peer figures");
    }
}
