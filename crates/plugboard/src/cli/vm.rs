//! `plugboard vm …`: VMs and their devices, as a client of the daemon (`plugboard serve`).
//!
//! Every command is one request to the daemon's API; the daemon decides and keeps the
//! books. Tables for people, `--json` prints the daemon's answer as it came.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::table::{header, text};
use super::{Global, print_json};
use crate::serve::client::{Client, DEFAULT_SOCKET};

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
        pci: Option<String>,
        /// With --pci: every endpoint of its IOMMU group.
        #[arg(long, requires = "pci")]
        whole_group: bool,
        /// The guest driver: virtio-blk (default), virtio-scsi, nvdimm.
        #[arg(long)]
        driver: Option<String>,
        /// The image format: raw (default) or qcow2.
        #[arg(long)]
        format: Option<String>,
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
        id: String,
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
    match args.command {
        VmCommand::Register {
            name,
            qmp,
            name_offset,
        } => {
            let body = json!({
                "name": name,
                "endpoint": {"kind": "qemu", "qmp_socket": absolute(&qmp)?},
                "name_offset": name_offset,
            });
            let vm: Value = client.call("POST", "/v1/vms", Some(&body))?;
            if global.json {
                return print_json(&vm);
            }
            println!(
                "registered VM {name} (owner uid {}, {} hotplug ports)",
                vm["owner_uid"],
                vm["root_ports"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        VmCommand::Ls => {
            let answer: Value = client.call("GET", "/v1/vms", None)?;
            if global.json {
                return print_json(&answer);
            }
            let mut rows = vec![header(&[
                "NAME",
                "OWNER",
                "CONNECTED",
                "DEVICES",
                "ENDPOINT",
            ])];
            for vm in answer["vms"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&vm["name"]),
                    text(&vm["owner_uid"]),
                    if vm["connected"].as_bool() == Some(true) {
                        "yes".to_owned()
                    } else {
                        format!("no: {}", text(&vm["reason"]))
                    },
                    format!("{}/{}", text(&vm["attached"]), text(&vm["devices"])),
                    text(&vm["endpoint"]["qmp_socket"]),
                ]);
            }
            super::table::print_table(&rows)?;
            Ok(())
        }
        VmCommand::Reconnect { name } => {
            let answer: Value = client.call("POST", &format!("/v1/vms/{name}/reconnect"), None)?;
            if global.json {
                return print_json(&answer);
            }
            println!("reconnected VM {name}");
            for r in answer["repairs"].as_array().into_iter().flatten() {
                println!("repaired: {r}");
            }
            Ok(())
        }
        VmCommand::Unregister { name } => {
            let _: Value = client.call("DELETE", &format!("/v1/vms/{name}"), None)?;
            if !global.json {
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
            let body = match (disk, spec) {
                _ if pci.is_some() => {
                    json!({"kind": "pci", "address": pci, "whole_group": whole_group})
                }
                (_, Some(spec)) => {
                    let text = std::fs::read_to_string(&spec)
                        .with_context(|| format!("cannot read the spec {}", spec.display()))?;
                    let spec: Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", spec.display()))?;
                    json!({"kind": "spec", "spec": spec})
                }
                (Some(disk), None) => {
                    let mut body =
                        json!({"kind": "disk", "path": absolute(&disk)?, "read_only": read_only});
                    if let Some(d) = driver {
                        body["driver"] = json!(d);
                    }
                    if let Some(f) = format {
                        body["format"] = json!(f);
                    }
                    body
                }
                (None, None) => anyhow::bail!("give --disk PATH, --pci ADDRESS or --spec FILE"),
            };
            let answer: Value =
                client.call("POST", &format!("/v1/vms/{vm}/devices"), Some(&body))?;
            if global.json {
                return print_json(&answer);
            }
            let device = &answer["device"];
            let what = if answer["plugged"].as_bool() == Some(true) {
                "attached"
            } else {
                "already attached; attachment counted"
            };
            println!(
                "{} {what} to {vm}: {}",
                id_text(&device["id"]),
                guest_text(&device["guest"])
            );
            Ok(())
        }
        VmCommand::Detach { vm, id } => {
            let answer: Value =
                client.call("DELETE", &format!("/v1/vms/{vm}/devices/{id}"), None)?;
            if global.json {
                return print_json(&answer);
            }
            if answer["unplugged"].as_bool() == Some(true) {
                println!("{id} detached from {vm}");
            } else {
                println!("{id}: one attachment dropped; still attached to {vm}");
            }
            Ok(())
        }
        VmCommand::Devices { vm } => {
            let answer: Value = client.call("GET", &format!("/v1/vms/{vm}/devices"), None)?;
            if global.json {
                return print_json(&answer);
            }
            let mut rows = vec![header(&["ID", "KIND", "DEVICE", "ATTACHED", "GUEST"])];
            for d in answer["devices"].as_array().into_iter().flatten() {
                let kind = &d["spec"]["kind"];
                rows.push(vec![
                    id_text(&d["id"]),
                    text(&kind["kind"]),
                    text(kind.get("path").unwrap_or(&d["spec"]["identity"])),
                    text(&d["attachments"]),
                    guest_text(&d["guest"]),
                ]);
            }
            super::table::print_table(&rows)?;
            Ok(())
        }
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// A device id as logs show it: 16 hex digits.
fn id_text(id: &Value) -> String {
    id.as_u64()
        .map_or_else(|| text(id), |n| format!("{n:016x}"))
}

fn guest_text(guest: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(name) = guest["drive_name"].as_str() {
        parts.push(format!("/dev/{name}"));
    }
    for p in guest["pci_paths"].as_array().into_iter().flatten() {
        parts.push(format!("pci {}", text(p)));
    }
    if !guest["scsi_address"].is_null() {
        parts.push(format!("scsi {}", text(&guest["scsi_address"])));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}
