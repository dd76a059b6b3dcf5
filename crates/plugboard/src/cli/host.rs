//! `plugboard host …`: the host's PCI inventory, IOMMU groups, one device, device nodes.
//!
//! Parsing only: the answers come from the core (`HostService`, in this process or in the
//! daemon; see `daemon.rs`) and `render::host` prints them. `--json` prints the answers,
//! documented in `docs/host-json.md`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use plugboard_service::{DeviceQuery, NamesQuery};
use plugboard_sysfs::{DevKind, DevNumber, PciAddress};

use super::Global;
use super::daemon::Core;
use super::render::{self, emit};

/// Host inventory: PCI devices, IOMMU groups, device nodes.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List PCI devices: address, class, vendor:device and names, driver, IOMMU group, NUMA.
    Ls {
        /// Only this class: a hex prefix (`02`, `0200`, `0x010802`) or a word of the class
        /// name (`ethernet`, `bridge`).
        #[arg(long)]
        class: Option<String>,
        /// Only this driver; `none` for unbound devices, `vfio` for vfio-pci and variants.
        #[arg(long)]
        driver: Option<String>,
        /// Names source.
        #[command(flatten)]
        names: NamesArgs,
    },
    /// List IOMMU groups, their members and whether each is viable for passthrough.
    Groups {
        /// Names source.
        #[command(flatten)]
        names: NamesArgs,
    },
    /// Everything known about one PCI device.
    Show {
        /// The device: `DDDD:BB:SS.F` or `BB:SS.F`.
        address: PciAddress,
        /// Names source.
        #[command(flatten)]
        names: NamesArgs,
    },
    /// The device node of a block (`b`) or char (`c`) device number.
    Resolve {
        /// `b` (block) or `c` (char).
        kind: DevKind,
        /// `MAJOR:MINOR`, e.g. `8:0`.
        number: DevNumber,
    },
}

/// Where vendor and device names come from.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// The pci.ids database; a missing file means no names, not an error.
    #[arg(long, env = "PLUGBOARD_PCI_IDS", default_value = plugboard_sysfs::DEFAULT_PCI_IDS)]
    pci_ids: PathBuf,
    /// Do not look names up at all.
    #[arg(long)]
    no_names: bool,
}

impl NamesArgs {
    /// The pci.ids file the listing uses (`None` with `--no-names`).
    fn pci_ids(&self) -> Option<&std::path::Path> {
        (!self.no_names).then_some(self.pci_ids.as_path())
    }

    fn query(&self) -> NamesQuery {
        NamesQuery {
            names: !self.no_names,
        }
    }
}

/// Runs one `host` subcommand.
pub fn run(global: &Global, command: HostCommand) -> anyhow::Result<()> {
    match command {
        HostCommand::Ls {
            class,
            driver,
            names,
        } => {
            let core = Core::for_host(global, names.pci_ids());
            let query = DeviceQuery {
                class,
                driver,
                names: !names.no_names,
            };
            emit(global.json, &core.devices(&query)?, render::host::devices)
        }
        HostCommand::Groups { names } => {
            let core = Core::for_host(global, names.pci_ids());
            emit(
                global.json,
                &core.groups(names.query())?,
                render::host::groups,
            )
        }
        HostCommand::Show { address, names } => {
            let core = Core::for_host(global, names.pci_ids());
            let detail = core.device(address, names.query())?;
            emit(global.json, &detail, render::host::device)
        }
        HostCommand::Resolve { kind, number } => {
            let core = Core::for_host(global, None);
            emit(
                global.json,
                &core.resolve(kind, number)?,
                render::host::resolved,
            )
        }
    }
}
