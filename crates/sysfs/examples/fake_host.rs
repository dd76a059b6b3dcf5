//! Lays out a synthetic fake-kernel tree of N PCI functions in a directory and leaves it
//! there, for profiling and for timing commands against it by hand:
//!
//! ```text
//! cargo run --release -p plugboard-sysfs --features test-util --example fake_host -- 10000 /dev/shm/pb10k
//! plugboard --sysfs-root /dev/shm/pb10k/sys host ls
//! lspci -A linux-sysfs -O sysfs.path=/dev/shm/pb10k/sys/bus/pci -Dnnk
//! ```
//!
//! The tree is [`FakeKernelBuilder::synthetic_pci`]'s (four functions per IOMMU group). The
//! directory must not exist yet, or be empty.
//!
//! [`FakeKernelBuilder::synthetic_pci`]: plugboard_sysfs::fake::FakeKernelBuilder::synthetic_pci

use std::path::PathBuf;
use std::process::ExitCode;

use plugboard_sysfs::fake::FakeKernel;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(count), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: fake_host DEVICES DIR");
        return ExitCode::FAILURE;
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("fake_host: DEVICES must be a number, not {count:?}");
        return ExitCode::FAILURE;
    };
    let dir = PathBuf::from(dir);
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("fake_host: cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    match FakeKernel::builder()
        .synthetic_pci(count)
        .legacy_vfio_only()
        .in_dir(&dir)
        .build()
    {
        Ok(kernel) => {
            println!("{}", kernel.sysfs_root().display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fake_host: {err}");
            ExitCode::FAILURE
        }
    }
}
