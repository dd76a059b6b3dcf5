//! `plugboard hostdev …`: host-wide ownership of passthrough devices (the registry in
//! `--state-dir`), on the host seen through `--sysfs-root`.
//!
//! Everything here is formatting and argument parsing; the rules live in
//! `plugboard-hostdev`. Tables are for people, `--json` prints the library's records.

use anyhow::Context;
use clap::Subcommand;
use plugboard_hostdev::{BatchOptions, HostDevice, HostdevManager, Owner};
use plugboard_sysfs::{PciAddress, Sysfs};
use serde::Serialize;

use super::{Global, print_json};

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
    if let Some(done) = super::daemon::hostdev(global, &command) {
        return done;
    }
    let sysfs = Sysfs::new(&global.sysfs_root).with_dev_root(&global.dev_root);
    let mut m = HostdevManager::open(sysfs, &global.state_dir)?;
    match command {
        HostdevCommand::Ls => ls(&mut m, global.json),
        HostdevCommand::Prepare {
            owner,
            managed,
            whole_group,
            shareable,
            devices,
        } => {
            let options = BatchOptions {
                managed,
                whole_group,
                shareable,
            };
            m.prepare(&owner, &devices, options)
                .with_context(|| format!("prepare for {owner}"))?;
            let listing = m.list()?;
            if global.json {
                return print_json(&listing);
            }
            println!("prepared for {owner}: {}", join(&devices));
            Ok(())
        }
        HostdevCommand::Release { owner, devices } => {
            let out = m.release(&owner, &devices)?;
            if global.json {
                print_json(&out)?;
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|r| {
                        vec![
                            r.device.clone(),
                            r.result.to_string(),
                            r.detail.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["DEVICE", "RESULT", "DETAIL"], &rows)?;
            }
            let failed: Vec<&str> = out
                .iter()
                .filter(|r| r.result.is_failure())
                .map(|r| r.device.as_str())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "release failed for {}",
                failed.join(", ")
            );
            Ok(())
        }
        HostdevCommand::Detach { address } => {
            let done = m.detach(address)?;
            let text = format!("{address}: {done}");
            report(global.json, &done, &text)
        }
        HostdevCommand::Reattach { address } => {
            let driver = m.reattach(address)?;
            let text = format!(
                "{address}: reattached to {}",
                driver.as_deref().unwrap_or("no driver")
            );
            report(global.json, &driver, &text)
        }
        HostdevCommand::Reset { address } => {
            let done = m.reset(address)?;
            let text = format!("{address}: {done}");
            report(global.json, &done, &text)
        }
        HostdevCommand::Recover => {
            let done = m.recover()?;
            if global.json {
                return print_json(&done);
            }
            if done.is_empty() {
                println!("nothing to recover");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = done
                .iter()
                .map(|r| vec![r.address.clone(), r.op.to_string(), r.action.to_string()])
                .collect();
            table(&["DEVICE", "PENDING", "ACTION"], &rows)
        }
    }
}

fn ls(m: &mut HostdevManager, json: bool) -> anyhow::Result<()> {
    let listing = m.list()?;
    if json {
        return print_json(&listing);
    }
    let mut rows: Vec<Vec<String>> = listing
        .pci
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.list.to_string(),
                r.owner
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                if r.managed { "managed" } else { "unmanaged" }.to_owned(),
                r.original_driver.clone().unwrap_or_default(),
                r.iommu_group.map(|g| g.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    for c in &listing.claims {
        rows.push(vec![
            format!("{}:{}", c.kind.as_str(), c.key),
            "active".to_owned(),
            c.owner.to_string(),
            if c.shareable { "shareable" } else { "" }.to_owned(),
            c.detail.clone().unwrap_or_default(),
            String::new(),
        ]);
    }
    table(
        &[
            "DEVICE",
            "LIST",
            "OWNER",
            "MODE",
            "ORIGINAL/DETAIL",
            "GROUP",
        ],
        &rows,
    )?;
    for p in &listing.pending {
        let state = if p.running {
            "running"
        } else {
            "interrupted: run `plugboard hostdev recover`"
        };
        println!(
            "pending: {} {} by process {} ({state})",
            p.op, p.address, p.pid
        );
    }
    Ok(())
}

fn report<T: Serialize>(json: bool, value: &T, text: &str) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        println!("{text}");
        Ok(())
    }
}

fn join(devices: &[HostDevice]) -> String {
    devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints `header` then `rows` as a table.
fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut all = Vec::with_capacity(rows.len() + 1);
    all.push(super::table::header(header));
    all.extend_from_slice(rows);
    Ok(super::table::print_table(&all)?)
}
