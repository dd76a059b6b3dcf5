//! `plugboard vm …`: VMs and their devices, as a client of the daemon (`plugboard serve`),
//! which keeps the VMs.
//!
//! Every command builds the service's typed request, makes one call of the typed client,
//! and hands the typed answer to its renderer (`render::vm`); `--json` prints the answer.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use plugboard_devices::{BlockDriver, DeviceId, ImageFormat};
use plugboard_service::{AttachRequest, Endpoint, RegisterVm};
use plugboard_sysfs::PciAddress;
use serde::Deserialize;
use serde::de::IntoDeserializer;

use super::Global;
use super::render::{self, emit};
use crate::client::{Client, DEFAULT_SOCKET};

/// `plugboard vm` and its options.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// The daemon's socket.
    #[arg(long, global = true, env = "PLUGBOARD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    command: VmCommand,
}

/// VMs and their devices.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Register a running VM with the daemon; you become its owner.
    Register {
        /// The VM's name.
        name: String,
        /// Its QEMU QMP socket.
        #[arg(long)]
        qmp: PathBuf,
        /// Drives the VM already has (its root disk is vda: 1).
        #[arg(long, default_value_t = 0)]
        name_offset: u32,
    },
    /// List the registered VMs.
    Ls,
    /// One VM: its owner, endpoint, hotplug ports and device counts.
    Show {
        /// The VM.
        name: String,
    },
    /// Reconnect a VM whose QEMU was not reachable (restarted at the same socket).
    Reconnect {
        /// The VM.
        name: String,
    },
    /// Forget a VM (it must have no devices).
    Unregister {
        /// The VM.
        name: String,
    },
    /// Attach a disk, a host PCI device, or any device from a spec to a VM.
    Attach {
        /// The VM.
        vm: String,
        /// A block device or image file.
        #[arg(long, required_unless_present_any = ["spec", "pci"], conflicts_with_all = ["spec", "pci"])]
        disk: Option<PathBuf>,
        /// A host PCI device to pass through (VFIO), `DDDD:BB:SS.F`.
        #[arg(long, conflicts_with = "spec")]
        pci: Option<PciAddress>,
        /// With --pci: every endpoint of its IOMMU group.
        #[arg(long, requires = "pci")]
        whole_group: bool,
        /// The guest driver: virtio-blk (default), virtio-scsi, nvdimm.
        #[arg(long)]
        driver: Option<BlockDriver>,
        /// The image format: raw (default) or qcow2.
        #[arg(long, value_parser = parse_format)]
        format: Option<ImageFormat>,
        /// The guest may not write.
        #[arg(long)]
        read_only: bool,
        /// A JSON file holding a plugboard-devices DeviceSpec.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Detach a device from a VM.
    Detach {
        /// The VM.
        vm: String,
        /// The device id (16 hex digits, from `plugboard vm devices`).
        id: DeviceId,
    },
    /// List a VM's devices.
    Devices {
        /// The VM.
        vm: String,
    },
}

/// Runs one `vm` subcommand.
pub fn run(global: &Global, args: VmArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.socket)?;
    let json = global.json;
    match args.command {
        VmCommand::Register {
            name,
            qmp,
            name_offset,
        } => {
            let request = RegisterVm {
                name,
                endpoint: Endpoint::Qemu {
                    qmp_socket: absolute(&qmp)?,
                },
                name_offset,
            };
            emit(json, &client.register_vm(&request)?, render::vm::registered)
        }
        VmCommand::Ls => emit(json, &client.vms()?, render::vm::vms),
        VmCommand::Show { name } => emit(json, &client.vm(&name)?, render::vm::vm),
        VmCommand::Reconnect { name } => {
            emit(json, &client.reconnect_vm(&name)?, render::vm::reconnected)
        }
        VmCommand::Unregister { name } => {
            client.unregister_vm(&name)?;
            if !json {
                println!("unregistered VM {name}");
            }
            Ok(())
        }
        VmCommand::Attach {
            vm,
            disk,
            driver,
            format,
            read_only,
            spec,
            pci,
            whole_group,
        } => {
            let request = match (disk, spec, pci) {
                (_, _, Some(address)) => AttachRequest::Pci {
                    address,
                    whole_group,
                },
                (_, Some(spec), None) => {
                    let text = std::fs::read_to_string(&spec)
                        .with_context(|| format!("cannot read the spec {}", spec.display()))?;
                    let spec = serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a plugboard-devices DeviceSpec", spec.display())
                    })?;
                    AttachRequest::Spec { spec }
                }
                (Some(disk), None, None) => AttachRequest::Disk {
                    path: absolute(&disk)?,
                    driver,
                    format: format.unwrap_or_default(),
                    read_only,
                },
                (None, None, None) => {
                    anyhow::bail!("give --disk PATH, --pci ADDRESS or --spec FILE")
                }
            };
            let answer = client.attach(&vm, &request)?;
            emit(json, &answer, |a, out| render::vm::attached(&vm, a, out))
        }
        VmCommand::Detach { vm, id } => {
            let answer = client.detach(&vm, id)?;
            emit(json, &answer, |a, out| render::vm::detached(&vm, a, out))
        }
        VmCommand::Devices { vm } => emit(json, &client.devices(&vm)?, render::vm::devices),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// An image format by its own serde name (`raw`, `qcow2`).
fn parse_format(text: &str) -> Result<ImageFormat, String> {
    ImageFormat::deserialize(text.into_deserializer())
        .map_err(|e: serde::de::value::Error| e.to_string())
}
