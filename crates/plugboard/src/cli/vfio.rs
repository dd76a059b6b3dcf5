//! `plugboard vfio …`: open a device through VFIO and show what the kernel reports.
//!
//! Parsing only: the core (`HostService::vfio_info`, locally or in the daemon) refuses a
//! device a VM holds, opens the device and types the answer; `render::vfio` prints it.

use clap::{Args, Subcommand};
use plugboard_service::VfioQuery;
use plugboard_sysfs::PciAddress;
use plugboard_vfio::Mode;

use super::Global;
use super::daemon::Core;
use super::render::{self, emit};

/// VFIO devices: open one and show what the kernel reports.
#[derive(Debug, Subcommand)]
pub enum VfioCommand {
    /// Open a device bound to vfio-pci and print the interface used, its flags, regions
    /// (sizes, flags, capabilities) and IRQ indexes. The device is closed again on exit.
    /// A device a VM holds (active in the hostdev registry) is not opened.
    Info(InfoArgs),
}

/// Arguments of `plugboard vfio info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The device: `DDDD:BB:SS.F` or `BB:SS.F`.
    address: PciAddress,
    /// `auto` (cdev + iommufd when the kernel and device have it, else legacy), `legacy`
    /// (container + group) or `iommufd`.
    #[arg(long, default_value = "auto")]
    mode: Mode,
}

/// Runs a `plugboard vfio` command.
pub fn run(global: &Global, command: VfioCommand) -> anyhow::Result<()> {
    match command {
        VfioCommand::Info(args) => info(global, &args),
    }
}

fn info(global: &Global, args: &InfoArgs) -> anyhow::Result<()> {
    let core = Core::for_host(global, None);
    let report = core.vfio_info(args.address, VfioQuery { mode: args.mode })?;
    emit(global.json, &report, render::vfio::report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(kernel: &plugboard_sysfs::fake::FakeKernel) -> Global {
        Global {
            sysfs_root: kernel.sysfs_root(),
            dev_root: kernel.dev_root(),
            state_dir: "/nonexistent".into(),
            json: true,
            verbose: 0,
        }
    }

    #[test]
    fn info_reports_the_library_errors_with_the_device_named() {
        use plugboard_sysfs::fake::{FakeKernel, PciSpec};
        let kernel = FakeKernel::builder()
            .pci(
                PciSpec::new("0000:01:00.0", 0x8086, 0x10d3)
                    .class(0x020000)
                    .iommu_group(3)
                    .driver("e1000e"),
            )
            .legacy_vfio_only()
            .build()
            .unwrap();
        let args = |mode: &str| InfoArgs {
            address: "01:00.0".parse().unwrap(),
            mode: mode.parse().unwrap(),
        };
        let err = info(&global(&kernel), &args("auto")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0000:01:00.0 is bound to e1000e, not to vfio-pci: bind it to vfio-pci first"
        );
        let sysfs = kernel.sysfs();
        let nic = sysfs.pci_device("01:00.0".parse().unwrap()).unwrap();
        nic.bind("vfio-pci").unwrap();
        let err = info(&global(&kernel), &args("iommufd")).unwrap_err();
        assert!(
            err.to_string().contains("lacks the iommufd VFIO interface"),
            "{err}"
        );
        // The fake kernel's nodes are plain files: legacy gets as far as the first ioctl.
        let err = info(&global(&kernel), &args("auto")).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("vfio/vfio: VFIO_GET_API_VERSION failed"),
            "{err}"
        );
    }
}
