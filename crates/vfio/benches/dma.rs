//! DMA map + unmap of a large buffer in small and large pieces, in both VFIO interfaces:
//! plugboard-vfio beside rust-vmm's `vfio-ioctls` 0.10 (feature `vfio_cdev`), same device,
//! same buffer, same guest run.
//!
//! It needs a real IOMMU, so it runs only inside the lab guest (elsewhere it says so and
//! exits 0 without touching anything). Build it with `cargo bench -p plugboard-vfio --bench
//! dma --no-run` and run the binary in the guest with enough memory for the buffer, e.g.
//!
//! ```text
//! lab/run.sh --mem 3072 --timeout 600 -- target/release/deps/dma-<hash> --size-mib 1024
//! ```
//!
//! For each interface and piece size it maps the whole buffer piece by piece at consecutive
//! IOVAs, then unmaps it piece by piece, and times that. Opening the device is not timed.
//! After one unrecorded warm-up run of each, each figure is the median (and the minimum) of
//! `--reps` runs (default 8), alternating which implementation goes first.
//! The ratio is vfio-ioctls' time over ours: above 1 means plugboard-vfio was faster.

#![expect(
    clippy::expect_used,
    reason = "a benchmark binary: any failure ends the measurement with its message"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_sysfs::{PciAddress, Sysfs};
use plugboard_vfio::{Mode, Vfio};
use support::{Buffer, OnVfio, in_lab_guest, single_group_nic};

const IOVA: u64 = 0x1_0000_0000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Ours,
    Theirs,
}

struct Args {
    size: usize,
    reps: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        size: 1024 << 20,
        reps: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--size-mib" => args.size = value("--size-mib")? << 20,
            "--reps" => args.reps = value("--reps")?.max(1),
            // cargo bench passes --bench; ignore it and other harness flags.
            other if other.starts_with("--") => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    if !in_lab_guest() {
        eprintln!(
            "dma bench: skipped, it needs the lab guest's IOMMU (see the comment at the top of benches/dma.rs)"
        );
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("dma bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    let sysfs = Sysfs::new("/sys");
    let nic = single_group_nic(&sysfs, 0);
    let sysfs_path = sysfs
        .pci_device(nic)
        .expect("find the NIC")
        .path()
        .to_path_buf();
    let bound = OnVfio::bind(&sysfs, nic);
    let buffer = Buffer::new(args.size);
    let limit = EntryLimit::raise_to(args.size / (4 << 10));
    println!(
        "dma bench: device {nic}, buffer {} MiB, median of {} runs; ratio = vfio-ioctls / plugboard-vfio (> 1: plugboard-vfio faster)",
        args.size >> 20,
        args.reps
    );
    println!(
        "{:<8} {:>6} {:>8} {:>16} {:>16} {:>7} {:>14} {:>14} {:>7}",
        "mode",
        "piece",
        "pieces",
        "plugboard-vfio",
        "vfio-ioctls",
        "ratio",
        "ours (min)",
        "theirs (min)",
        "ratio"
    );
    for mode in [Mode::Legacy, Mode::Iommufd] {
        for piece in [4usize << 10, 2 << 20] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            // One unrecorded run of each first: the first run after a switch of mode or
            // piece size pays for warming the kernel's caches and IOMMU page tables.
            run_ours(&sysfs, nic, mode, &buffer, piece);
            run_theirs(&sysfs_path, mode, &buffer, piece);
            for rep in 0..args.reps {
                let order = if rep % 2 == 0 {
                    [Who::Ours, Who::Theirs]
                } else {
                    [Who::Theirs, Who::Ours]
                };
                for who in order {
                    let took = match who {
                        Who::Ours => run_ours(&sysfs, nic, mode, &buffer, piece),
                        Who::Theirs => run_theirs(&sysfs_path, mode, &buffer, piece),
                    };
                    match who {
                        Who::Ours => ours.push(took),
                        Who::Theirs => theirs.push(took),
                    }
                }
            }
            let (ours_min, theirs_min) = (min(&ours), min(&theirs));
            let (ours, theirs) = (median(&mut ours), median(&mut theirs));
            println!(
                "{:<8} {:>6} {:>8} {:>13.1} ms {:>13.1} ms {:>7.3} {:>11.1} ms {:>11.1} ms {:>7.3}",
                mode.to_string(),
                if piece < 1 << 20 { "4KiB" } else { "2MiB" },
                args.size / piece,
                ms(ours),
                ms(theirs),
                theirs.as_secs_f64() / ours.as_secs_f64(),
                ms(ours_min),
                ms(theirs_min),
                theirs_min.as_secs_f64() / ours_min.as_secs_f64()
            );
        }
    }
    drop(buffer);
    drop(limit);
    if let Err(err) = bound.restore() {
        eprintln!("dma bench: giving {nic} back failed: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// type1 refuses more than `dma_entry_limit` mappings per container (65535 by default, so
/// 1 GiB in 4 KiB pieces does not fit): raise it in the guest for the run, for both
/// implementations alike, and put it back afterwards.
struct EntryLimit {
    old: Option<String>,
}

const ENTRY_LIMIT: &str = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit";

impl EntryLimit {
    fn raise_to(entries: usize) -> Self {
        let old = std::fs::read_to_string(ENTRY_LIMIT)
            .ok()
            .map(|s| s.trim().to_owned());
        let current: usize = old.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        if current >= entries {
            return Self { old: None };
        }
        std::fs::write(ENTRY_LIMIT, entries.to_string()).expect("raise dma_entry_limit");
        println!(
            "dma bench: vfio_iommu_type1.dma_entry_limit raised from {current} to {entries} for this run"
        );
        Self { old }
    }
}

impl Drop for EntryLimit {
    fn drop(&mut self) {
        if let Some(old) = &self.old
            && let Err(err) = std::fs::write(ENTRY_LIMIT, old)
        {
            eprintln!("dma bench: restoring dma_entry_limit to {old} failed: {err}");
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn min(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn iovas(buffer: &Buffer, piece: usize) -> impl Iterator<Item = (u64, usize)> {
    (0..buffer.len() / piece).map(move |i| (IOVA + (i * piece) as u64, i * piece))
}

fn run_ours(sysfs: &Sysfs, nic: PciAddress, mode: Mode, buffer: &Buffer, piece: usize) -> Duration {
    let mut vfio = Vfio::new(sysfs.clone());
    let device = vfio
        .open(nic, mode)
        .unwrap_or_else(|e| panic!("open {nic} ({mode}): {e}"));
    let space = device.address_space();
    let start = Instant::now();
    for (iova, offset) in iovas(buffer, piece) {
        // SAFETY: the buffer is never referenced from Rust and is unmapped below, before it
        // is dropped.
        unsafe { space.map_dma(iova, piece, buffer.at(offset)) }.expect("plugboard-vfio map");
    }
    for (iova, _) in iovas(buffer, piece) {
        space.unmap_dma(iova, piece).expect("plugboard-vfio unmap");
    }
    let took = start.elapsed();
    device.close().expect("close");
    took
}

fn run_theirs(sysfs_path: &Path, mode: Mode, buffer: &Buffer, piece: usize) -> Duration {
    use vfio_ioctls::{VfioContainer, VfioDevice, VfioIommufd, VfioOps};
    match mode {
        Mode::Legacy => {
            let container = Arc::new(VfioContainer::new(None).expect("vfio-ioctls container"));
            let ops: Arc<dyn VfioOps> = container.clone();
            let device =
                VfioDevice::new(sysfs_path, ops, false).expect("vfio-ioctls device (legacy)");
            let start = Instant::now();
            for (iova, offset) in iovas(buffer, piece) {
                // SAFETY: as in `run_ours`.
                unsafe { container.vfio_dma_map(iova, piece, buffer.at(offset)) }
                    .expect("vfio-ioctls map");
            }
            for (iova, _) in iovas(buffer, piece) {
                container
                    .vfio_dma_unmap(iova, piece)
                    .expect("vfio-ioctls unmap");
            }
            let took = start.elapsed();
            drop(device);
            took
        }
        _ => {
            let iommufd = Arc::new(iommufd_ioctls::IommuFd::new().expect("vfio-ioctls iommufd"));
            let ctx = Arc::new(VfioIommufd::new(iommufd, None, None).expect("vfio-ioctls IOAS"));
            let device = VfioDevice::new(sysfs_path, ctx.clone(), true)
                .expect("vfio-ioctls device (iommufd)");
            let start = Instant::now();
            for (iova, offset) in iovas(buffer, piece) {
                // SAFETY: as in `run_ours`.
                unsafe { ctx.vfio_dma_map(iova, piece, buffer.at(offset)) }
                    .expect("vfio-ioctls map");
            }
            for (iova, _) in iovas(buffer, piece) {
                ctx.vfio_dma_unmap(iova, piece).expect("vfio-ioctls unmap");
            }
            let took = start.elapsed();
            drop(device);
            took
        }
    }
}
