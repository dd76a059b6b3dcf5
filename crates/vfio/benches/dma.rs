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
//! IOVAs, then unmaps it piece by piece, and times that. The legacy interface runs twice: as
//! opened by default, with the container keeping books of its mappings to map them again
//! after its last group left (`DmaReplay::On`, which vfio-ioctls does not do), and with
//! `DmaReplay::Off` (no books, no lock: the same work as vfio-ioctls). Opening the device is not timed.
//! After one unrecorded warm-up run of each, it does `--reps` rounds (default 8); a round
//! runs both implementations once, alternating which goes first.
//!
//! Both are called the same way: by default through their mode-agnostic trait objects
//! (`Arc<dyn AddressSpace>` and `Arc<dyn VfioOps>`), which is how a VMM that supports both
//! modes holds them; with `--direct`, through the concrete types (`Container`/`Iommufd` and
//! `VfioContainer`/`VfioIommufd`).
//!
//! It prints each one's median and minimum, and two ratios of vfio-ioctls' time over ours
//! (above 1 means plugboard-vfio was faster): the ratio of the medians and the median of the
//! rounds' own ratios. The second pairs runs made seconds apart, so slow drift of the
//! machine (this runs under emulation on a shared host) cancels out of it. `faster` counts
//! the rounds in which plugboard-vfio was the faster one.

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
use plugboard_vfio::{AddressSpace, Container, DmaReplay, Iommufd, Mode, Vfio};
use support::{Buffer, OnVfio, in_lab_guest, single_group_nic};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioIommufd, VfioOps};

const IOVA: u64 = 0x1_0000_0000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Ours,
    Theirs,
}

struct Args {
    size: usize,
    reps: usize,
    call: Call,
}

/// How the benchmark calls both implementations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Through the mode-agnostic trait objects.
    Trait,
    /// Through the concrete types.
    Direct,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        size: 1024 << 20,
        reps: 8,
        call: Call::Trait,
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
            "--direct" => args.call = Call::Direct,
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
        "dma bench: device {nic}, buffer {} MiB, {} rounds, called {}; ratio = vfio-ioctls / plugboard-vfio (> 1: plugboard-vfio faster)",
        args.size >> 20,
        args.reps,
        match args.call {
            Call::Trait => "through the trait objects",
            Call::Direct => "through the concrete types",
        }
    );
    println!(
        "{:<20} {:>6} {:>8} {:>15} {:>15} {:>14} {:>14} {:>8} {:>8} {:>6}",
        "mode",
        "piece",
        "pieces",
        "ours (median)",
        "theirs (median)",
        "ours (min)",
        "theirs (min)",
        "ratio",
        "paired",
        "faster"
    );
    let configs = [
        (Mode::Legacy, DmaReplay::On, "legacy"),
        (Mode::Legacy, DmaReplay::Off, "legacy (replay off)"),
        (Mode::Iommufd, DmaReplay::On, "iommufd"),
    ];
    for (mode, replay, label) in configs {
        for piece in [4usize << 10, 2 << 20] {
            let run = |who: Who| match who {
                Who::Ours => run_ours(&sysfs, nic, (mode, replay), args.call, &buffer, piece),
                Who::Theirs => run_theirs(&sysfs_path, mode, args.call, &buffer, piece),
            };
            // One unrecorded run of each first: the first run after a switch of mode or
            // piece size pays for warming the kernel's caches and IOMMU page tables.
            run(Who::Ours);
            run(Who::Theirs);
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            let mut paired = Vec::new();
            for round in 0..args.reps {
                let (o, t) = if round % 2 == 0 {
                    let o = run(Who::Ours);
                    (o, run(Who::Theirs))
                } else {
                    let t = run(Who::Theirs);
                    (run(Who::Ours), t)
                };
                ours.push(o);
                theirs.push(t);
                paired.push(t.as_secs_f64() / o.as_secs_f64());
            }
            let (ours_min, theirs_min) = (min(&ours), min(&theirs));
            let (ours, theirs) = (median(&mut ours), median(&mut theirs));
            paired.sort_unstable_by(f64::total_cmp);
            let faster = paired.iter().filter(|&&r| r > 1.0).count();
            println!(
                "{:<20} {:>6} {:>8} {:>12.1} ms {:>12.1} ms {:>11.1} ms {:>11.1} ms {:>8.3} {:>8.3} {:>3}/{:<2}",
                label,
                if piece < 1 << 20 { "4KiB" } else { "2MiB" },
                args.size / piece,
                ms(ours),
                ms(theirs),
                ms(ours_min),
                ms(theirs_min),
                theirs.as_secs_f64() / ours.as_secs_f64(),
                paired[paired.len() / 2],
                faster,
                paired.len(),
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

/// One implementation's DMA calls, as the benchmark makes them; a failure ends the run.
trait Dma {
    /// # Safety
    ///
    /// As for `AddressSpace::map_dma`.
    unsafe fn map(&self, iova: u64, len: usize, at: *mut u8);
    fn unmap(&self, iova: u64, len: usize);
}

macro_rules! impl_dma {
    ($($ty:ty => $map:ident, $unmap:ident, $who:literal;)*) => {$(
        impl Dma for $ty {
            unsafe fn map(&self, iova: u64, len: usize, at: *mut u8) {
                // SAFETY: our caller upholds the map call's contract (see `Dma::map`).
                unsafe { self.$map(iova, len, at) }.expect(concat!($who, " map"));
            }
            fn unmap(&self, iova: u64, len: usize) {
                self.$unmap(iova, len).expect(concat!($who, " unmap"));
            }
        }
    )*};
}

impl_dma! {
    dyn AddressSpace => map_dma, unmap_dma, "plugboard-vfio";
    Container => map_dma, unmap_dma, "plugboard-vfio";
    Iommufd => map_dma, unmap_dma, "plugboard-vfio";
    dyn VfioOps => vfio_dma_map, vfio_dma_unmap, "vfio-ioctls";
    VfioContainer => vfio_dma_map, vfio_dma_unmap, "vfio-ioctls";
    VfioIommufd => vfio_dma_map, vfio_dma_unmap, "vfio-ioctls";
}

/// Maps the buffer piece by piece at consecutive IOVAs, then unmaps it piece by piece, and
/// returns how long that took. Both implementations run through this one loop.
fn time_map_unmap<D: Dma + ?Sized>(dma: &D, buffer: &Buffer, piece: usize) -> Duration {
    let pieces = buffer.len() / piece;
    let start = Instant::now();
    for i in 0..pieces {
        // SAFETY: the buffer is never referenced from Rust, and every piece is unmapped
        // below, before the buffer can be dropped.
        unsafe { dma.map(IOVA + (i * piece) as u64, piece, buffer.at(i * piece)) };
    }
    for i in 0..pieces {
        dma.unmap(IOVA + (i * piece) as u64, piece);
    }
    start.elapsed()
}

fn run_ours(
    sysfs: &Sysfs,
    nic: PciAddress,
    (mode, replay): (Mode, DmaReplay),
    call: Call,
    buffer: &Buffer,
    piece: usize,
) -> Duration {
    let mut vfio = Vfio::new(sysfs.clone()).with_dma_replay(replay);
    let device = vfio
        .open(nic, mode)
        .unwrap_or_else(|e| panic!("open {nic} ({mode}): {e}"));
    let took = match (call, device.container(), device.iommufd()) {
        (Call::Trait, _, _) => time_map_unmap(&*device.address_space(), buffer, piece),
        (Call::Direct, Some(container), _) => time_map_unmap(&**container, buffer, piece),
        (Call::Direct, None, Some(iommufd)) => time_map_unmap(&**iommufd, buffer, piece),
        (Call::Direct, None, None) => panic!("{nic}: neither a container nor an iommufd"),
    };
    device.close().expect("close");
    took
}

fn run_theirs(
    sysfs_path: &Path,
    mode: Mode,
    call: Call,
    buffer: &Buffer,
    piece: usize,
) -> Duration {
    if mode == Mode::Legacy {
        let container = VfioContainer::new(None).expect("vfio-ioctls container");
        time_theirs(
            sysfs_path,
            &Arc::new(container),
            false,
            (call, buffer, piece),
        )
    } else {
        let iommufd = Arc::new(iommufd_ioctls::IommuFd::new().expect("vfio-ioctls iommufd"));
        let ctx = VfioIommufd::new(iommufd, None, None).expect("vfio-ioctls IOAS");
        time_theirs(sysfs_path, &Arc::new(ctx), true, (call, buffer, piece))
    }
}

/// Opens the device with vfio-ioctls in `space` (through its cdev when `cdev`) and times
/// the map and unmap calls on it.
fn time_theirs<S: VfioOps + Dma + 'static>(
    sysfs_path: &Path,
    space: &Arc<S>,
    cdev: bool,
    (call, buffer, piece): (Call, &Buffer, usize),
) -> Duration {
    let ops: Arc<dyn VfioOps> = Arc::clone(space) as Arc<dyn VfioOps>;
    let device = VfioDevice::new(sysfs_path, Arc::clone(&ops), cdev).expect("vfio-ioctls device");
    let took = match call {
        Call::Trait => time_map_unmap(&*ops, buffer, piece),
        Call::Direct => time_map_unmap(&**space, buffer, piece),
    };
    drop(device);
    took
}
