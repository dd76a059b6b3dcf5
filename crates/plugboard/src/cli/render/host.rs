//! `plugboard host ls|groups|show|resolve`: tables of the host's devices, IOMMU groups, one
//! device, a device node. Columns are in the order lspci and ls-iommu users expect.

use std::collections::BTreeMap;
use std::io::Write;

use plugboard_service::{DeviceDetail, HostGroups, Resolved};
use plugboard_sysfs::{Inventory, PciAddress, PciDeviceInfo};

use super::opt;
use crate::cli::table::{header, write_sections, write_table};

/// `host ls`: one row per device; the OWNER column only when some device has an owner.
/// Devices that could not be read are warnings on stderr.
pub fn devices(inventory: &Inventory, out: &mut dyn Write) -> std::io::Result<()> {
    let with_owner = inventory.devices.iter().any(|d| d.owner.is_some());
    let mut columns = vec![
        "ADDRESS",
        "CLASS",
        "VENDOR:DEVICE",
        "NAME",
        "DRIVER",
        "GROUP",
        "NUMA",
    ];
    if with_owner {
        columns.push("OWNER");
    }
    let mut rows = vec![header(&columns)];
    for d in &inventory.devices {
        let mut row = vec![
            d.address.to_string(),
            class_text(d),
            ids_text(d),
            name_text(d),
            opt(d.driver.as_deref()),
            opt(d.iommu_group),
            opt(d.numa_node),
        ];
        if with_owner {
            row.push(opt(d.owner.as_deref()));
        }
        rows.push(row);
    }
    write_table(out, &rows)?;
    for problem in &inventory.problems {
        eprintln!("plugboard: warning: {}: {}", problem.address, problem.error);
    }
    Ok(())
}

/// `host groups`: a line per group with its verdict, then its members aligned.
pub fn groups(answer: &HostGroups, out: &mut dyn Write) -> std::io::Result<()> {
    if answer.groups.is_empty() {
        return writeln!(
            out,
            "no IOMMU groups: the IOMMU is off or absent (no groups under the sysfs iommu_groups directory)"
        );
    }
    let by_address: BTreeMap<PciAddress, &PciDeviceInfo> =
        answer.devices.iter().map(|d| (d.address, d)).collect();
    let mut rows = Vec::new();
    for group in &answer.groups {
        let verdict = if group.is_viable() {
            "viable".to_owned()
        } else {
            let blockers: Vec<String> = group
                .blockers()
                .map(|m| format!("{} on {}", m.address, m.driver.as_deref().unwrap_or("-")))
                .collect();
            format!("not viable: blocked by {}", blockers.join(", "))
        };
        rows.push(vec![format!("IOMMU group {}: {verdict}", group.number)]);
        for m in &group.members {
            let info = by_address.get(&m.address);
            let note = if m.bridge {
                "bridge, ignored"
            } else if m.blocks() {
                "BLOCKS"
            } else {
                "ok"
            };
            let owner = info.and_then(|d| d.owner.as_deref());
            rows.push(vec![
                format!("  {}", m.address),
                info.map_or_else(|| m.class.to_string(), |d| class_text(d)),
                info.map_or_else(String::new, |d| ids_text(d)),
                opt(m.driver.as_deref()),
                owner.map_or_else(|| note.to_owned(), |o| format!("{note}, owner {o}")),
            ]);
        }
        for other in &group.other_members {
            rows.push(vec![format!("  {other}"), "(not PCI)".to_owned()]);
        }
    }
    write_sections(out, &rows)
}

/// `host show`: one `key: value` line per fact.
pub fn device(detail: &DeviceDetail, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &detail.device;
    let list = |v: &[PciAddress]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("address", d.address.to_string()),
        ("class", format!("{} ({})", class_text(d), d.class)),
        (
            "vendor",
            format!(
                "{:04x} {}",
                d.ids.vendor,
                d.names.vendor.as_deref().unwrap_or_default()
            ),
        ),
        (
            "device",
            format!(
                "{:04x} {}",
                d.ids.device,
                d.names.device.as_deref().unwrap_or_default()
            ),
        ),
        (
            "subsystem",
            format!(
                "{:04x}:{:04x} {}",
                d.ids.subsystem_vendor,
                d.ids.subsystem_device,
                d.names.subsystem.as_deref().unwrap_or_default()
            ),
        ),
        ("revision", format!("{:02x}", d.revision)),
        ("header type", d.header_type.to_string()),
        (
            "pcie",
            format!("{} (config space {} bytes)", d.pcie, d.config_size),
        ),
        ("driver", opt(d.driver.as_deref())),
        ("driver kind", d.driver_kind.to_string()),
        ("driver_override", opt(d.driver_override.as_deref())),
        ("vfio cdev", opt(d.vfio_dev.as_deref())),
        ("iommu group", opt(d.iommu_group)),
        ("numa node", opt(d.numa_node)),
        ("parent", opt(d.parent)),
        ("physfn", opt(d.physfn)),
        ("virtfns", list(&d.virtfns)),
        ("sriov_totalvfs", opt(d.sriov_totalvfs)),
        ("reset", reset_text(d)),
        ("owner", opt(d.owner.as_deref())),
    ];
    for bar in &d.bars {
        let kind = if bar.is_rom() {
            "rom"
        } else if bar.is_io() {
            "io"
        } else if bar.is_64bit() {
            "mem64"
        } else {
            "mem32"
        };
        rows.push((
            "bar",
            format!(
                "{}: {kind} {:#x}-{:#x} size {}{}{}",
                bar.index,
                bar.start,
                bar.end,
                human_size(bar.size()),
                if bar.is_prefetchable() {
                    " prefetchable"
                } else {
                    ""
                },
                if bar.is_large() { " (large)" } else { "" },
            ),
        ));
    }
    if let Some(g) = &detail.iommu_group {
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| format!("{} ({})", m.address, m.driver.as_deref().unwrap_or("-")))
            .collect();
        rows.push(("group members", members.join(" ")));
        let verdict = if g.is_viable() {
            "viable"
        } else {
            "not viable"
        };
        rows.push(("group", verdict.to_owned()));
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![format!("{k}:"), v.trim_end().to_owned()])
        .collect();
    write_table(out, &table)
}

/// `host resolve`: the node's path.
pub fn resolved(resolved: &Resolved, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}", resolved.path.display())
}

fn reset_text(d: &PciDeviceInfo) -> String {
    if !d.reset.can_reset {
        "no".to_owned()
    } else if d.reset.methods.is_empty() {
        "yes".to_owned()
    } else {
        d.reset.methods.join(" ")
    }
}

// The three cells below are built by hand rather than with `format!`: `host ls` makes them
// for every device, and on a host of ten thousand functions that is a visible share of
// its time.

fn class_text(d: &PciDeviceInfo) -> String {
    let mut text = String::with_capacity(48);
    if let Some(name) = &d.names.class {
        text.push_str(name);
        text.push(' ');
    }
    text.push('[');
    push_hex4(&mut text, d.class.class_and_subclass());
    text.push(']');
    text
}

fn ids_text(d: &PciDeviceInfo) -> String {
    let mut text = String::with_capacity(9);
    push_hex4(&mut text, d.ids.vendor);
    text.push(':');
    push_hex4(&mut text, d.ids.device);
    text
}

fn name_text(d: &PciDeviceInfo) -> String {
    let Some(vendor) = &d.names.vendor else {
        return "-".to_owned();
    };
    let mut text = String::with_capacity(vendor.len() + 48);
    text.push_str(vendor);
    match &d.names.device {
        Some(device) => {
            text.push(' ');
            text.push_str(device);
        }
        None => {
            text.push_str(" device ");
            push_hex4(&mut text, d.ids.device);
        }
    }
    text
}

/// Appends `value` as four lowercase hex digits (`{:04x}`).
fn push_hex4(text: &mut String, value: u16) {
    for shift in [12, 8, 4, 0] {
        let digit = u32::from((value >> shift) & 0xf);
        text.push(char::from_digit(digit, 16).unwrap_or('0'));
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host bridge's record as `host ls --json` prints it, with `names` as given.
    fn bridge(names: &serde_json::Value) -> PciDeviceInfo {
        serde_json::from_value(serde_json::json!({
            "address": "0000:00:00.0",
            "ids": {"vendor": "8086", "device": "29c0",
                    "subsystem_vendor": "0000", "subsystem_device": "0000"},
            "names": names,
            "class": "0x060000", "revision": "00", "header_type": "endpoint",
            "pcie": true, "config_size": 4096, "driver": null, "driver_kind": "unbound",
            "driver_override": null, "vfio_dev": null, "iommu_group": 0, "numa_node": null,
            "parent": null, "bars": [], "large_bar": false, "physfn": null, "virtfns": [],
            "sriov_totalvfs": null, "reset": {"can_reset": false, "methods": []},
            "owner": null
        }))
        .unwrap()
    }

    #[test]
    fn cells_say_what_the_names_database_knows() {
        let named = bridge(&serde_json::json!({
            "vendor": "Intel Corporation", "device": "DRAM Controller",
            "subsystem": null, "class": "Host bridge"
        }));
        assert_eq!(class_text(&named), "Host bridge [0600]");
        assert_eq!(ids_text(&named), "8086:29c0");
        assert_eq!(name_text(&named), "Intel Corporation DRAM Controller");

        let vendor_only = bridge(&serde_json::json!({
            "vendor": "Intel Corporation", "device": null, "subsystem": null, "class": null
        }));
        assert_eq!(class_text(&vendor_only), "[0600]");
        assert_eq!(name_text(&vendor_only), "Intel Corporation device 29c0");

        let unknown = bridge(&serde_json::json!({
            "vendor": null, "device": null, "subsystem": null, "class": null
        }));
        assert_eq!(name_text(&unknown), "-");
    }
}
