//! What a VMM does often besides DMA, in both VFIO interfaces: reading a device register
//! (through the mapped BAR vs through the device fd), and enabling then disabling a set of
//! MSI-X vectors, plugboard-vfio beside rust-vmm's `vfio-ioctls` 0.10 in the same guest run.
//!
//! It needs the lab guest (elsewhere it says so and exits 0). Build it with `cargo bench -p
//! plugboard-vfio --bench vmm --no-run` and run the binary in the guest:
//!
//! ```text
//! lab/run.sh --timeout 600 -- target/release/deps/vmm-<hash> --reps 8
//! ```
//!
//! - **register reads**: `--reads` (default 20000) 32-bit reads of the e1000e's STATUS
//!   register: ours through [`MappedRegion::read_u32`] (one load, trapped by the emulated
//!   device), ours through `read_region` (one `pread` each), and vfio-ioctls' `region_read`
//!   (one `pread` each; it has no mmap helper: a VMM using it maps BARs by hand). The ratio
//!   `read_region / mapped` is why a VMM maps BARs.
//! - **MSI-X enable/disable**: `--cycles` (default 20) rounds of wiring 8 MSI-X vectors to
//!   eventfds and disabling the index: ours `enable_msix` + `disable_irq(Msix)`, theirs
//!   `enable_msix` + `disable_msix`. On the lab's NVMe controller (QEMU's has 65 vectors; the
//!   e1000e has only 5, and is used, with its 5, only where no NVMe controller is found).
//!
//! Opening the device is not timed. After one unrecorded warm-up of each, `--reps` rounds
//! (default 8) run both, alternating which goes first; it prints medians and the median of
//! the rounds' own ratios (theirs / ours: above 1 means plugboard-vfio was faster).

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
use plugboard_vfio::{EventFd, IrqIndex, Mode, Vfio};
use support::{OnVfio, in_lab_guest, single_group_nic};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioIommufd, VfioOps};

const STATUS: u64 = 0x8;
const VECTORS: u32 = 8;

struct Args {
    reps: usize,
    reads: usize,
    cycles: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reps: 8,
        reads: 20_000,
        cycles: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--reps" => args.reps = value("--reps")?.max(1),
            "--reads" => args.reads = value("--reads")?.max(1),
            "--cycles" => args.cycles = value("--cycles")?.max(1),
            other if other.starts_with("--") => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// What one timed run does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Ours, through the mapped BAR0.
    MappedRead,
    /// Ours, through `read_region`.
    FdRead,
    /// vfio-ioctls' `region_read`.
    TheirRead,
    /// Ours: enable and disable MSI-X.
    OurMsix,
    /// Theirs: enable and disable MSI-X.
    TheirMsix,
}

fn main() -> ExitCode {
    if !in_lab_guest() {
        eprintln!("vmm bench: skipped, it needs the lab guest (see benches/vmm.rs)");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("vmm bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    let sysfs = Sysfs::new("/sys");
    let nic = single_group_nic(&sysfs, 0);
    let sysfs_path = sysfs.pci_device(nic).expect("NIC").path().to_path_buf();
    let bound = OnVfio::bind(&sysfs, nic);
    let msix = nvme_controller().unwrap_or(nic);
    let msix_path = sysfs
        .pci_device(msix)
        .expect("MSI-X device")
        .path()
        .to_path_buf();
    let msix_bound = (msix != nic).then(|| OnVfio::bind(&sysfs, msix));
    println!(
        "vmm bench: reads on {nic}, MSI-X on {msix}; {} rounds, {} reads, {} MSI-X cycles per run",
        args.reps, args.reads, args.cycles
    );
    println!(
        "{:<8} {:<34} {:>14} {:>14} {:>8} {:>8}",
        "mode", "what", "ours (median)", "peer (median)", "ratio", "paired"
    );
    for mode in [Mode::Legacy, Mode::Iommufd] {
        let run = |work: Work| match work {
            Work::MappedRead | Work::FdRead => run_ours(&sysfs, nic, mode, work, &args),
            Work::OurMsix => run_ours(&sysfs, msix, mode, work, &args),
            Work::TheirRead => run_theirs(&sysfs_path, mode, work, &args),
            Work::TheirMsix => run_theirs(&msix_path, mode, work, &args),
        };
        let pairs = [
            (
                Work::MappedRead,
                Work::FdRead,
                "STATUS read: mapped vs read_region",
            ),
            (
                Work::MappedRead,
                Work::TheirRead,
                "STATUS read: mapped vs their pread",
            ),
            (
                Work::FdRead,
                Work::TheirRead,
                "STATUS read: read_region vs theirs",
            ),
            (Work::OurMsix, Work::TheirMsix, "MSI-X enable+disable"),
        ];
        for (ours, peer, label) in pairs {
            run(ours);
            run(peer);
            let (mut a, mut b, mut paired) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..args.reps {
                let (o, p) = if round % 2 == 0 {
                    let o = run(ours);
                    (o, run(peer))
                } else {
                    let p = run(peer);
                    (run(ours), p)
                };
                a.push(o);
                b.push(p);
                paired.push(p.as_secs_f64() / o.as_secs_f64());
            }
            let per = if matches!(ours, Work::OurMsix) {
                args.cycles
            } else {
                args.reads
            };
            let (a, b) = (median(&mut a), median(&mut b));
            paired.sort_unstable_by(f64::total_cmp);
            println!(
                "{:<8} {:<34} {:>11.2} us {:>11.2} us {:>8.3} {:>8.3}",
                mode.to_string(),
                label,
                us(a) / per as f64,
                us(b) / per as f64,
                b.as_secs_f64() / a.as_secs_f64(),
                paired[paired.len() / 2],
            );
        }
    }
    if let Some(msix_bound) = msix_bound
        && let Err(err) = msix_bound.restore()
    {
        eprintln!("vmm bench: giving {msix} back failed: {err}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = bound.restore() {
        eprintln!("vmm bench: giving {nic} back failed: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The lab's NVMe controller (QEMU's `nvme`, 1b36:0010), if the guest has one.
fn nvme_controller() -> Option<PciAddress> {
    std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(Result::ok)
        .find(|d| {
            let id = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
            id("vendor").trim() == "0x1b36" && id("device").trim() == "0x0010"
        })
        .and_then(|d| d.file_name().to_str()?.parse().ok())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn eventfds(n: u32) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect()
}

fn run_ours(sysfs: &Sysfs, nic: PciAddress, mode: Mode, work: Work, args: &Args) -> Duration {
    let mut vfio = Vfio::new(sysfs.clone());
    let device = vfio
        .open(nic, mode)
        .unwrap_or_else(|e| panic!("open {nic} ({mode}): {e}"));
    let mut command = [0u8; 2];
    device.read_config(4, &mut command).expect("command");
    let command = u16::from_le_bytes(command) | 0x6;
    device
        .write_config(4, &command.to_le_bytes())
        .expect("enable memory");
    let took = match work {
        Work::MappedRead => {
            let bar0 = device.map_region(0).expect("map BAR0");
            let start = Instant::now();
            for _ in 0..args.reads {
                std::hint::black_box(bar0.read_u32(STATUS).expect("read"));
            }
            start.elapsed()
        }
        Work::FdRead => {
            let mut buf = [0u8; 4];
            let start = Instant::now();
            for _ in 0..args.reads {
                device.read_region(0, STATUS, &mut buf).expect("read");
                std::hint::black_box(&buf);
            }
            start.elapsed()
        }
        _ => {
            let count = device.irq(IrqIndex::Msix).expect("MSI-X").count;
            let fds = eventfds(VECTORS.min(count));
            let refs: Vec<&EventFd> = fds.iter().collect();
            let start = Instant::now();
            for _ in 0..args.cycles {
                device.enable_msix(&refs).expect("enable MSI-X");
                device.disable_irq(IrqIndex::Msix).expect("disable MSI-X");
            }
            start.elapsed()
        }
    };
    device.close().expect("close");
    took
}

fn run_theirs(sysfs_path: &Path, mode: Mode, work: Work, args: &Args) -> Duration {
    let (ops, cdev): (Arc<dyn VfioOps>, bool) = if mode == Mode::Legacy {
        (
            Arc::new(VfioContainer::new(None).expect("vfio-ioctls container")),
            false,
        )
    } else {
        let iommufd = Arc::new(iommufd_ioctls::IommuFd::new().expect("vfio-ioctls iommufd"));
        (
            Arc::new(VfioIommufd::new(iommufd, None, None).expect("vfio-ioctls IOAS")),
            true,
        )
    };
    let device = VfioDevice::new(sysfs_path, ops, cdev).expect("vfio-ioctls device");
    let mut command = [0u8; 2];
    device.region_read(7, &mut command, 4);
    let command = u16::from_le_bytes(command) | 0x6;
    device.region_write(7, &command.to_le_bytes(), 4);
    match work {
        Work::TheirRead => {
            let mut buf = [0u8; 4];
            let start = Instant::now();
            for _ in 0..args.reads {
                device.region_read(0, &mut buf, STATUS);
                std::hint::black_box(&buf);
            }
            start.elapsed()
        }
        _ => {
            let count = device.get_irq_info(2).expect("MSI-X").count;
            let fds = eventfds(VECTORS.min(count));
            let start = Instant::now();
            for _ in 0..args.cycles {
                device
                    .enable_msix(fds.iter().collect())
                    .expect("enable MSI-X");
                device.disable_msix().expect("disable MSI-X");
            }
            start.elapsed()
        }
    }
}
