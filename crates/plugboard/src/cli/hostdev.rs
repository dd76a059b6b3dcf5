//! `plugboard hostdev …`: host-wide ownership of passthrough devices (the registry in
//! `--state-dir`), on the host seen through `--sysfs-root`.
//!
//! Parsing only: the rules live in the core (`HostService` over `plugboard-hostdev`, in
//! this process or in the daemon; see `daemon.rs`), and `render::hostdev` prints the
//! answers. `--json` prints the answers themselves.

use clap::Subcommand;
use plugboard_hostdev::{HostDevice, Owner};
use plugboard_service::HostdevRequest;
use plugboard_sysfs::PciAddress;

use super::Global;
use super::daemon::Core;
use super::render::{self, emit};

/// Ownership of passthrough devices: who uses what, detach, give back, recover.
#[derive(Debug, Subcommand)]
pub enum HostdevCommand {
    /// List the registry: active and inactive PCI devices, other claims, pending operations.
    Ls,
    /// Take devices for a VM (all or nothing). Devices: `DDDD:BB:SS.F`, `usb:BUS/DEV`,
    /// `usb:VVVV:PPPP`, `scsi:H:C:T:L`, `mdev:UUID`, `nvme:DDDD:BB:SS.F/NSID`.
    Prepare {
        /// The owner, `DRIVER/DOMAIN` (e.g. `qemu/vm1`).
        #[arg(long)]
        owner: Owner,
        /// Detach PCI and NVMe devices from their host driver (bind vfio-pci); without it
        /// they must already be detached (`plugboard hostdev detach`).
        #[arg(long)]
        managed: bool,
        /// Also take every other endpoint of each PCI device's IOMMU group.
        #[arg(long)]
        whole_group: bool,
        /// SCSI: agree to share the devices with other users who agree too.
        #[arg(long)]
        shareable: bool,
        /// The devices.
        #[arg(required = true)]
        devices: Vec<HostDevice>,
    },
    /// Give a VM's devices back (best effort; one result per device).
    Release {
        /// The owner, `DRIVER/DOMAIN`.
        #[arg(long)]
        owner: Owner,
        /// The devices.
        #[arg(required = true)]
        devices: Vec<HostDevice>,
    },
    /// Detach a PCI device from its host driver onto the inactive list (bind vfio-pci).
    Detach {
        /// The device, `DDDD:BB:SS.F`.
        address: PciAddress,
    },
    /// Give an unused PCI device back to its host driver.
    Reattach {
        /// The device, `DDDD:BB:SS.F`.
        address: PciAddress,
    },
    /// Reset an unused PCI device (a no-op on vfio-pci, which resets on open).
    Reset {
        /// The device, `DDDD:BB:SS.F`.
        address: PciAddress,
    },
    /// Finish or undo the operations of processes that died mid-way.
    Recover,
}

/// Runs one `hostdev` subcommand.
pub fn run(global: &Global, command: HostdevCommand) -> anyhow::Result<()> {
    let core = Core::for_host(global, None);
    let json = global.json;
    match command {
        HostdevCommand::Ls => emit(json, &core.hostdevs()?, render::hostdev::listing),
        HostdevCommand::Prepare {
            owner,
            managed,
            whole_group,
            shareable,
            devices,
        } => {
            let request = request(&owner, &devices, managed, whole_group, shareable);
            emit(json, &core.prepare(&request)?, render::hostdev::prepared)
        }
        HostdevCommand::Release { owner, devices } => {
            let request = request(&owner, &devices, false, false, false);
            let answer = core.release(&request)?;
            emit(json, &answer, render::hostdev::released)?;
            let failed = answer.failures();
            anyhow::ensure!(
                failed.is_empty(),
                "release failed for {}",
                failed.join(", ")
            );
            Ok(())
        }
        HostdevCommand::Detach { address } => {
            emit(json, &core.detach(address)?, render::hostdev::node_device)
        }
        HostdevCommand::Reattach { address } => {
            let answer = core.reattach(address)?;
            emit(json, &answer, render::hostdev::node_device)?;
            anyhow::ensure!(
                !answer.left_driverless(),
                "PCI device {address} was left with no driver: no host driver took it (load its driver, or bind one by hand)"
            );
            Ok(())
        }
        HostdevCommand::Reset { address } => {
            emit(json, &core.reset(address)?, render::hostdev::node_device)
        }
        HostdevCommand::Recover => emit(json, &core.recover()?, render::hostdev::recovered),
    }
}

/// The core's request for a prepare or release.
fn request(
    owner: &Owner,
    devices: &[HostDevice],
    managed: bool,
    whole_group: bool,
    shareable: bool,
) -> HostdevRequest {
    HostdevRequest {
        owner: owner.to_string(),
        devices: devices.iter().map(ToString::to_string).collect(),
        managed,
        whole_group,
        shareable,
    }
}
