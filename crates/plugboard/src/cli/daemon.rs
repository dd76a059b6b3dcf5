//! `host`, `hostdev` and `vfio` through the daemon when it runs, locally otherwise.
//!
//! A command uses the daemon when its socket (`$PLUGBOARD_SOCKET`, else the default) is
//! there and the daemon looks at the same host as the command would (its `/healthz`
//! names the same sysfs root, dev root and state directory as this command's options).
//! Then the daemon's authorization and its one view of the registry apply: a member of
//! the socket's group can read the registry and prepare devices for their own VMs without
//! being root. `PLUGBOARD_LOCAL=1` forces local work. Each `run` calls one function here
//! first; `None` means "do it locally".

use std::path::{Path, PathBuf};

use anyhow::Context;
use plugboard_sysfs::PciAddress;
use serde_json::{Value, json};

use super::host::HostCommand;
use super::hostdev::HostdevCommand;
use super::table::{header, text};
use super::{Global, print_json};
use crate::serve::client::{Client, DEFAULT_SOCKET};

/// The daemon's client, when this command should use it.
pub fn client(global: &Global) -> Option<Client> {
    if std::env::var_os("PLUGBOARD_LOCAL").is_some_and(|v| v != "0") {
        return None;
    }
    let socket = std::env::var_os("PLUGBOARD_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    if !socket.exists() {
        return None;
    }
    let client = Client::new(&socket).ok()?;
    let health: Value = match client.call("GET", "/healthz", None) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "the daemon's socket is there but it does not answer; working locally");
            return None;
        }
    };
    let same = |key: &str, ours: &Path| {
        let ours = std::path::absolute(ours).unwrap_or_else(|_| ours.to_path_buf());
        health[key].as_str().map(Path::new) == Some(ours.as_path())
    };
    if same("sysfs_root", &global.sysfs_root)
        && same("dev_root", &global.dev_root)
        && same("state_dir", &global.state_dir)
    {
        tracing::debug!(socket = %socket.display(), "using the daemon");
        Some(client)
    } else {
        tracing::debug!(socket = %socket.display(), "the daemon looks at another host or state; working locally");
        None
    }
}

/// `plugboard host ls|groups|show` through the daemon (`resolve` and filtered listings
/// stay local).
pub fn host(global: &Global, command: &HostCommand) -> Option<anyhow::Result<()>> {
    let routed = match command {
        HostCommand::Ls { class, driver, .. } => class.is_none() && driver.is_none(),
        HostCommand::Groups { .. } | HostCommand::Show { .. } => true,
        HostCommand::Resolve { .. } => false,
    };
    if !routed {
        return None;
    }
    let client = client(global)?;
    Some(host_remote(&client, global.json, command))
}

fn host_remote(client: &Client, json: bool, command: &HostCommand) -> anyhow::Result<()> {
    match command {
        HostCommand::Groups { .. } => {
            let groups: Value = client.call("GET", "/v1/host/iommu-groups", None)?;
            if json {
                return print_json(&groups);
            }
            let mut rows = Vec::new();
            for g in groups["groups"].as_array().into_iter().flatten() {
                let verdict = if g["viable"] == true {
                    "viable".to_owned()
                } else {
                    format!("not viable: blocked by {}", list(&g["blockers"]))
                };
                rows.push(vec![format!("IOMMU group {}: {verdict}", g["number"])]);
                for m in g["members"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        format!("  {}", text(&m["address"])),
                        text(&m["class"]),
                        text(&m["driver"]),
                    ]);
                }
            }
            super::table::print_table(&rows)?;
            Ok(())
        }
        HostCommand::Show { address, .. } => {
            let device = device(client, *address)?;
            if json {
                return print_json(&device);
            }
            for (key, value) in device.as_object().into_iter().flatten() {
                println!("{key:<16} {}", text(value));
            }
            Ok(())
        }
        HostCommand::Ls { .. } | HostCommand::Resolve { .. } => {
            let inventory: Value = client.call("GET", "/v1/host/devices", None)?;
            if json {
                return print_json(&inventory);
            }
            let mut rows = vec![header(&[
                "ADDRESS",
                "CLASS",
                "VENDOR:DEVICE",
                "NAME",
                "DRIVER",
                "GROUP",
                "OWNER",
            ])];
            for d in inventory["devices"].as_array().into_iter().flatten() {
                let name = [&d["names"]["vendor"], &d["names"]["device"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                rows.push(vec![
                    text(&d["address"]),
                    d["names"]["class"]
                        .as_str()
                        .map_or_else(|| text(&d["class"]), str::to_owned),
                    format!(
                        "{}:{}",
                        text(&d["ids"]["vendor"]),
                        text(&d["ids"]["device"])
                    ),
                    name,
                    text(&d["driver"]),
                    text(&d["iommu_group"]),
                    text(&d["owner"]),
                ]);
            }
            super::table::print_table(&rows)?;
            for p in inventory["problems"].as_array().into_iter().flatten() {
                eprintln!(
                    "plugboard: warning: {}: {}",
                    text(&p["address"]),
                    text(&p["error"])
                );
            }
            Ok(())
        }
    }
}

fn device(client: &Client, address: PciAddress) -> anyhow::Result<Value> {
    let inventory: Value = client.call("GET", "/v1/host/devices", None)?;
    inventory["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["address"].as_str() == Some(&address.to_string()))
        .cloned()
        .with_context(|| format!("no PCI device {address} on this host (the daemon says)"))
}

/// Every `plugboard hostdev` command through the daemon.
pub fn hostdev(global: &Global, command: &HostdevCommand) -> Option<anyhow::Result<()>> {
    let client = client(global)?;
    Some(hostdev_remote(&client, global.json, command))
}

fn hostdev_remote(client: &Client, json: bool, command: &HostdevCommand) -> anyhow::Result<()> {
    let names = |devices: &[plugboard_hostdev::HostDevice]| -> Vec<String> {
        devices.iter().map(ToString::to_string).collect()
    };
    match command {
        HostdevCommand::Ls => {
            let listing: Value = client.call("GET", "/v1/hostdevs", None)?;
            if json {
                return print_json(&listing);
            }
            let mut rows = vec![header(&[
                "DEVICE",
                "LIST",
                "OWNER",
                "MANAGED",
                "ORIGINAL DRIVER",
                "GROUP",
            ])];
            for r in listing["pci"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&r["address"]),
                    text(&r["list"]),
                    owner(&r["owner"]),
                    if r["managed"] == true {
                        "managed"
                    } else {
                        "unmanaged"
                    }
                    .to_owned(),
                    text(&r["original_driver"]),
                    text(&r["iommu_group"]),
                ]);
            }
            for c in listing["claims"].as_array().into_iter().flatten() {
                rows.push(vec![
                    format!("{}:{}", text(&c["kind"]), text(&c["key"])),
                    "claimed".to_owned(),
                    owner(&c["owner"]),
                ]);
            }
            super::table::print_table(&rows)?;
            for p in listing["pending"].as_array().into_iter().flatten() {
                println!(
                    "pending: {} {} by process {}",
                    text(&p["op"]),
                    text(&p["address"]),
                    text(&p["pid"])
                );
            }
            Ok(())
        }
        HostdevCommand::Prepare {
            owner,
            managed,
            whole_group,
            shareable,
            devices,
        } => {
            let body = json!({
                "owner": owner.to_string(), "devices": names(devices),
                "managed": managed, "whole_group": whole_group, "shareable": shareable,
            });
            let answer: Value = client.call("POST", "/v1/hostdevs/prepare", Some(&body))?;
            if json {
                return print_json(&answer);
            }
            println!("prepared for {owner}: {}", names(devices).join(", "));
            Ok(())
        }
        HostdevCommand::Release { owner, devices } => {
            let body = json!({"owner": owner.to_string(), "devices": names(devices)});
            let answer: Value = client.call("POST", "/v1/hostdevs/release", Some(&body))?;
            if json {
                print_json(&answer)?;
            } else {
                let mut rows = vec![header(&["DEVICE", "RESULT", "DETAIL"])];
                for r in answer["released"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        text(&r["device"]),
                        text(&r["result"]),
                        text(&r["detail"]),
                    ]);
                }
                super::table::print_table(&rows)?;
            }
            let failed: Vec<String> = answer["released"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["result"] == "failed")
                .map(|r| text(&r["device"]))
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "release failed for {}",
                failed.join(", ")
            );
            Ok(())
        }
        HostdevCommand::Detach { address }
        | HostdevCommand::Reattach { address }
        | HostdevCommand::Reset { address } => {
            let op = match command {
                HostdevCommand::Detach { .. } => "detach",
                HostdevCommand::Reattach { .. } => "reattach",
                _ => "reset",
            };
            let answer: Value =
                client.call("POST", &format!("/v1/hostdevs/{address}/{op}"), None)?;
            if json {
                return print_json(&answer);
            }
            println!(
                "{address}: {op}: {}",
                text(answer.get("result").unwrap_or(&answer["driver"]))
            );
            Ok(())
        }
        HostdevCommand::Recover => {
            let answer: Value = client.call("POST", "/v1/hostdevs/recover", None)?;
            if json {
                return print_json(&answer["recovered"]);
            }
            let done = answer["recovered"].as_array().cloned().unwrap_or_default();
            if done.is_empty() {
                println!("nothing to recover");
            }
            for r in done {
                println!(
                    "{} {}: {}",
                    text(&r["address"]),
                    text(&r["op"]),
                    text(&r["action"])
                );
            }
            Ok(())
        }
    }
}

/// `plugboard vfio info`: a device a VM holds (active in the daemon's registry) is not
/// opened from here; anything else is opened locally.
pub fn vfio_guard(global: &Global, address: PciAddress) -> anyhow::Result<()> {
    let Some(client) = client(global) else {
        return Ok(());
    };
    let listing: Value = client.call("GET", "/v1/hostdevs", None)?;
    let row = listing["pci"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["address"].as_str() == Some(&address.to_string()) && r["list"] == "active");
    if let Some(row) = row {
        anyhow::bail!(
            "PCI device {address} is in use by {} (the daemon's registry); not opening it",
            owner(&row["owner"])
        );
    }
    Ok(())
}

fn owner(v: &Value) -> String {
    match (v["driver"].as_str(), v["domain"].as_str()) {
        (Some(d), Some(n)) => format!("{d}/{n}"),
        _ => text(v),
    }
}

fn list(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect::<Vec<_>>()
        .join(", ")
}
