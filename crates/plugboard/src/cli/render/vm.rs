//! `plugboard vm …`: the daemon's VMs and their devices.

use std::io::Write;

use plugboard_devices::{DeviceKind, DeviceState, GuestView};
use plugboard_service::{Attached, Detached, DeviceList, Reconnected, VmInfo, VmList};

use crate::cli::table::{header, write_table};

/// `vm register`: the VM as registered.
pub fn registered(vm: &VmInfo, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "registered VM {} (owner uid {}, {} hotplug ports)",
        vm.record.name,
        vm.record.owner_uid,
        vm.record.root_ports.len()
    )
}

/// `vm ls`: one row per VM.
pub fn vms(list: &VmList, out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![header(&[
        "NAME",
        "OWNER",
        "CONNECTED",
        "DEVICES",
        "ENDPOINT",
    ])];
    for vm in &list.vms {
        rows.push(vec![
            vm.record.name.clone(),
            vm.record.owner_uid.to_string(),
            if vm.connected {
                "yes".to_owned()
            } else {
                format!("no: {}", vm.reason.as_deref().unwrap_or("-"))
            },
            format!("{}/{}", vm.attached, vm.devices),
            vm.record.endpoint.socket().display().to_string(),
        ]);
    }
    write_table(out, &rows)
}

/// `vm show`: one VM, a fact per line.
pub fn vm(vm: &VmInfo, out: &mut dyn Write) -> std::io::Result<()> {
    let rows = vec![
        vec!["name:".to_owned(), vm.record.name.clone()],
        vec!["owner uid:".to_owned(), vm.record.owner_uid.to_string()],
        vec![
            "endpoint:".to_owned(),
            vm.record.endpoint.socket().display().to_string(),
        ],
        vec![
            "connected:".to_owned(),
            if vm.connected {
                "yes".to_owned()
            } else {
                format!("no: {}", vm.reason.as_deref().unwrap_or("-"))
            },
        ],
        vec![
            "devices:".to_owned(),
            format!("{} ({} attached)", vm.devices, vm.attached),
        ],
        vec![
            "hotplug ports:".to_owned(),
            if vm.record.root_ports.is_empty() {
                "-".to_owned()
            } else {
                vm.record.root_ports.join(" ")
            },
        ],
        vec!["name offset:".to_owned(), vm.record.name_offset.to_string()],
    ];
    write_table(out, &rows)
}

/// `vm reconnect`: the VM and what reconciliation repaired.
pub fn reconnected(answer: &Reconnected, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "reconnected VM {}", answer.vm.record.name)?;
    for r in &answer.repairs {
        writeln!(out, "repaired: {r}")?;
    }
    Ok(())
}

/// `vm attach`: the device and where the guest sees it.
pub fn attached(vm: &str, answer: &Attached, out: &mut dyn Write) -> std::io::Result<()> {
    let what = if answer.plugged {
        "attached"
    } else {
        "already attached; attachment counted"
    };
    writeln!(
        out,
        "{} {what} to {vm}: {}",
        answer.device.id,
        guest_text(answer.device.guest.as_ref())
    )
}

/// `vm detach`: whether the device left the VM.
pub fn detached(vm: &str, answer: &Detached, out: &mut dyn Write) -> std::io::Result<()> {
    if answer.unplugged {
        writeln!(out, "{} detached from {vm}", answer.id)
    } else {
        writeln!(
            out,
            "{}: one attachment dropped; still attached to {vm}",
            answer.id
        )
    }
}

/// `vm devices`: one row per device.
pub fn devices(list: &DeviceList, out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![header(&["ID", "KIND", "DEVICE", "ATTACHED", "GUEST"])];
    for d in &list.devices {
        rows.push(vec![
            d.id.to_string(),
            d.spec.kind.type_name().to_owned(),
            device_text(d),
            d.attachments.get().to_string(),
            if d.needs_cleanup.is_some() {
                "a failed plug left part of it in the VM; needs cleanup".to_owned()
            } else {
                guest_text(d.guest.as_ref())
            },
        ]);
    }
    write_table(out, &rows)
}

/// What a device is on the host: a disk's path, else its identity.
fn device_text(d: &DeviceState) -> String {
    match &d.spec.kind {
        DeviceKind::Block(block) => block.path.display().to_string(),
        _ => d.spec.identity.to_string(),
    }
}

fn guest_text(guest: Option<&GuestView>) -> String {
    let Some(guest) = guest else {
        return "-".to_owned();
    };
    let mut parts = Vec::new();
    if let Some(name) = &guest.drive_name {
        parts.push(format!("/dev/{name}"));
    }
    for p in &guest.pci_paths {
        parts.push(format!("pci {p}"));
    }
    if let Some(scsi) = &guest.scsi_address {
        parts.push(format!("scsi {scsi}"));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}
