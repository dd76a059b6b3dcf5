//! `plugboard host ls` against `lspci -Dnnk` on synthetic hosts of 1,000, 10,000 and
//! 50,000 PCI functions (four to an IOMMU group), side by side in one run.
//!
//! Both are what an operator runs: a fresh process that lists every device with vendor
//! and device names from `pci.ids` and its driver, stdout discarded. `plugboard` reads the
//! fake kernel's tree through `--sysfs-root` (locally, `PLUGBOARD_LOCAL=1`, with an empty
//! state directory); `lspci` reads the same tree through `-A linux-sysfs -O sysfs.path=`.
//! The trees are laid out in tmpfs (`/dev/shm`), as the real sysfs lives in memory too.
//! Each round runs every command once, alternating the order, so load from other
//! processes hits all of them alike.
//!
//! Printed per size: the median wall time and the median CPU time (user + system, from
//! the child's rusage: what the command cost, whatever else the machine was doing) of
//! each, their ratios plugboard / lspci (goal: at most 0.5 at 10,000 devices), the time of
//! `HostService::devices` in this process (the listing without process start and table),
//! and the per-device cost relative to the smallest size (1.0 = linear).
//!
//! Run: `cargo bench -p plugboard --bench host_ls_scale`. `PLUGBOARD_BENCH_SIZES=1000,10000`
//! picks sizes, `PLUGBOARD_BENCH_ROUNDS` the rounds (default 5). `PLUGBOARD_BENCH_BASELINE`
//! names another `plugboard` binary (an older build) to measure in the same rounds, for a
//! before/after table from one run. Nothing outside the temp trees is written.

#![expect(clippy::unwrap_used, reason = "a benchmark: a failure is a failed run")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_service::{DeviceQuery, HostConfig, HostService};
use plugboard_sysfs::fake::FakeKernel;

/// CPU time (user + system) of every child reaped so far.
fn children_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `usage` is a valid, writable rusage; getrusage fills it and returns 0, or
    // fails only for a bad `who`, which RUSAGE_CHILDREN is not.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: getrusage succeeded, so it initialized `usage`.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap())
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap())
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `cmd` to completion: (wall time, CPU time).
fn run(cmd: &mut Command) -> (Duration, Duration) {
    let cpu = children_cpu();
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let wall = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    (wall, children_cpu() - cpu)
}

fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

struct Tree {
    devices: usize,
    _dir: tempfile::TempDir,
    kernel: FakeKernel,
}

fn build(devices: usize) -> Tree {
    let dir = tempfile::Builder::new()
        .prefix("pb-host-ls-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let kernel = FakeKernel::builder()
        .synthetic_pci(devices)
        .legacy_vfio_only()
        .in_dir(dir.path())
        .build()
        .unwrap();
    Tree {
        devices,
        _dir: dir,
        kernel,
    }
}

fn plugboard(binary: &Path, tree: &Tree, state: &Path, pci_ids: &str) -> Command {
    let mut c = Command::new(binary);
    c.env("PLUGBOARD_LOCAL", "1")
        .arg("--sysfs-root")
        .arg(tree.kernel.sysfs_root())
        .arg("--dev-root")
        .arg(tree.kernel.dev_root())
        .arg("--state-dir")
        .arg(state)
        .args(["host", "ls", "--pci-ids", pci_ids]);
    c
}

fn lspci(tree: &Tree) -> Command {
    let mut c = Command::new("lspci");
    let option = format!(
        "sysfs.path={}",
        tree.kernel.sysfs_root().join("bus/pci").display()
    );
    c.args(["-A", "linux-sysfs", "-O", &option, "-Dnnk"]);
    c
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
    let pci_ids = plugboard_sysfs::DEFAULT_PCI_IDS;
    let have_lspci = Command::new("lspci")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_lspci,
        "lspci is not installed: nothing to compare against"
    );
    let state = tempfile::tempdir().unwrap();
    let ours_binary = Path::new(env!("CARGO_BIN_EXE_plugboard"));
    let baseline = std::env::var_os("PLUGBOARD_BENCH_BASELINE").map(std::path::PathBuf::from);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "host_ls_scale: fake-kernel trees in /dev/shm, {rounds} alternating rounds, {cores} cores, names from {pci_ids}"
    );
    let mut trees = Vec::new();
    for devices in sizes {
        let start = Instant::now();
        trees.push(build(devices));
        println!(
            "built {devices} devices in {:.1}s",
            start.elapsed().as_secs_f64()
        );
    }
    let mut rows = Vec::new();
    let mut befores = Vec::new();
    for tree in &trees {
        // Warm-up: page cache, dentries, the binary.
        run(&mut plugboard(ours_binary, tree, state.path(), pci_ids));
        run(&mut lspci(tree));
        let (mut ours, mut theirs, mut before) = (Vec::new(), Vec::new(), Vec::new());
        let mut inproc = Vec::new();
        let host = HostService::new(HostConfig {
            state_dir: state.path().to_owned(),
            sysfs_root: tree.kernel.sysfs_root(),
            dev_root: tree.kernel.dev_root(),
            pci_ids: Some(pci_ids.into()),
        });
        for round in 0..rounds {
            if let Some(old) = &baseline {
                before.push(run(&mut plugboard(old, tree, state.path(), pci_ids)));
            }
            if round % 2 == 0 {
                ours.push(run(&mut plugboard(
                    ours_binary,
                    tree,
                    state.path(),
                    pci_ids,
                )));
                theirs.push(run(&mut lspci(tree)));
            } else {
                theirs.push(run(&mut lspci(tree)));
                ours.push(run(&mut plugboard(
                    ours_binary,
                    tree,
                    state.path(),
                    pci_ids,
                )));
            }
            let start = Instant::now();
            let inventory = host.devices(&DeviceQuery::default()).unwrap();
            inproc.push(start.elapsed());
            assert_eq!(inventory.devices.len(), tree.devices);
            assert!(inventory.problems.is_empty());
        }
        let wall = |s: &[(Duration, Duration)]| median(&s.iter().map(|x| x.0).collect::<Vec<_>>());
        let cpu = |s: &[(Duration, Duration)]| median(&s.iter().map(|x| x.1).collect::<Vec<_>>());
        rows.push((
            tree.devices,
            wall(&ours),
            cpu(&ours),
            wall(&theirs),
            cpu(&theirs),
            median(&inproc),
        ));
        if !before.is_empty() {
            befores.push((
                tree.devices,
                wall(&before),
                cpu(&before),
                wall(&theirs),
                cpu(&theirs),
            ));
        }
    }
    println!(
        "{:>8} {:>7} | {:>11} {:>11} | {:>11} {:>11} | {:>10} {:>9} | {:>11} {:>10}",
        "devices",
        "groups",
        "pb wall",
        "pb cpu",
        "lspci wall",
        "lspci cpu",
        "wall ratio",
        "cpu ratio",
        "in-process",
        "per-dev x"
    );
    let base = rows[0].1.as_secs_f64() / f64::from(u32::try_from(rows[0].0).unwrap());
    for &(devices, pw, pc, lw, lc, ip) in &rows {
        let per_device = pw.as_secs_f64() / f64::from(u32::try_from(devices).unwrap());
        println!(
            "{devices:>8} {:>7} | {:>11} {:>11} | {:>11} {:>11} | {:>10.3} {:>9.3} | {:>11} {:>10.2}",
            devices / 4,
            ms(pw),
            ms(pc),
            ms(lw),
            ms(lc),
            pw.as_secs_f64() / lw.as_secs_f64(),
            pc.as_secs_f64() / lc.as_secs_f64(),
            ms(ip),
            per_device / base,
        );
    }
    if let Some(old) = &baseline {
        println!("baseline {} in the same rounds:", old.display());
        for &(devices, bw, bc, lw, lc) in &befores {
            println!(
                "{devices:>8} {:>7} | {:>11} {:>11} | {:>11} {:>11} | {:>10.3} {:>9.3}",
                devices / 4,
                ms(bw),
                ms(bc),
                ms(lw),
                ms(lc),
                bw.as_secs_f64() / lw.as_secs_f64(),
                bc.as_secs_f64() / lc.as_secs_f64(),
            );
        }
    }
    if let Some(&(devices, pw, _, lw, _, _)) = rows.iter().find(|r| r.0 == 10_000) {
        let ratio = pw.as_secs_f64() / lw.as_secs_f64();
        println!(
            "RATIO plugboard host ls / lspci -Dnnk at {devices} devices = {ratio:.3} (goal <= 0.5: {})",
            if ratio <= 0.5 { "met" } else { "NOT met" }
        );
    }
}
