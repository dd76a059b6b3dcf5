//! Inventory of a generated fake kernel: 1,000 and 10,000 PCI functions in 250 and 2,500
//! IOMMU groups (four functions per group, like multi-function cards), some on a host
//! driver, some on vfio-pci, some unbound.
//!
//! Measured, each the median of several runs on a warm page cache:
//! - `Sysfs::pci_inventory()` (every fact of every device) plus `Sysfs::iommu_groups()`
//!   (members and viability of every group), in process;
//! - as a peer, `lspci -Dnnk` reading the same tree (`-O sysfs.path=…`), when installed.
//!
//! Printed: the times, the per-device cost at each size and their ratio (1.0 = linear), and
//! plugboard / lspci. Goals: 10,000 devices under a second, and linear.
//!
//! Run: `cargo bench -p plugboard-sysfs --features test-util --bench inventory`.

#![expect(clippy::unwrap_used, reason = "a benchmark: a failure is a failed run")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_sysfs::PciAddress;
use plugboard_sysfs::fake::{FakeKernel, PciSpec};

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
    let mut builder = FakeKernel::builder().in_dir(dir);
    for i in 0..devices {
        let bus = u8::try_from(1 + i / 128).unwrap();
        let slot = u8::try_from((i / 4) % 32).unwrap();
        let function = u8::try_from(i % 4).unwrap();
        let address = PciAddress::new(0, bus, slot, function).unwrap().to_string();
        let group = u32::try_from(i / 4).unwrap();
        let mut spec = PciSpec::new(&address, 0x8086, 0x10d3)
            .class(0x020000)
            .iommu_group(group)
            .numa_node(i32::from(bus % 2))
            .bar(
                0,
                0xe000_0000 + (u64::try_from(i).unwrap() << 17),
                128 << 10,
            );
        spec = match i % 3 {
            0 => spec.driver("e1000e"),
            1 => spec.driver("vfio-pci"),
            _ => spec.unbound(),
        };
        builder = builder.pci(spec);
    }
    builder.legacy_vfio_only().build().unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn plugboard_run(kernel: &FakeKernel, expect: usize) -> Duration {
    let sysfs = kernel.sysfs();
    let start = Instant::now();
    let inventory = sysfs.pci_inventory().unwrap();
    let mid = start.elapsed();
    let groups = sysfs.iommu_groups().unwrap();
    let took = start.elapsed();
    if std::env::var_os("PLUGBOARD_BENCH_SPLIT").is_some() {
        eprintln!("  inventory {mid:?}, groups {:?}", took - mid);
    }
    assert_eq!(inventory.devices.len(), expect);
    assert!(inventory.problems.is_empty());
    assert_eq!(groups.len(), expect / 4);
    took
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
    let sizes = [1_000usize, 10_000];
    let rounds: usize = std::env::var("PLUGBOARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
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
    let mut ours: Vec<Vec<Duration>> = vec![Vec::new(); trees.len()];
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
        "{:>8} {:>8} {:>14} {:>14} {:>16} {:>16}",
        "devices", "groups", "plugboard", "per device", "lspci -Dnnk", "plugboard/lspci"
    );
    let mut per_device = Vec::new();
    for (i, (devices, _, _)) in trees.iter().enumerate() {
        let ours = median(ours[i].clone());
        let theirs = have_lspci.then(|| median(theirs[i].clone()));
        let each = ours.as_secs_f64() / f64::from(u32::try_from(*devices).unwrap());
        per_device.push(each);
        println!(
            "{devices:>8} {:>8} {:>12.1}ms {:>12.2}us {:>16} {:>16}",
            devices / 4,
            ours.as_secs_f64() * 1e3,
            each * 1e6,
            theirs.map_or("n/a".to_owned(), |t| format!(
                "{:.1}ms",
                t.as_secs_f64() * 1e3
            )),
            theirs.map_or("n/a".to_owned(), |t| format!(
                "{:.3}",
                ours.as_secs_f64() / t.as_secs_f64()
            )),
        );
    }
    let linearity = per_device[1] / per_device[0];
    println!("RATIO per-device cost 10,000 / 1,000 = {linearity:.3} (1.0 = linear; goal: about 1)");
    if !have_lspci {
        println!("lspci is not installed: no peer figures");
    }
}
