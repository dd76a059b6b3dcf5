//! `plugboard hostdev …`: the registry's lists, and what each operation did.

use std::io::Write;

use plugboard_hostdev::Listing;
use plugboard_service::{NodeDeviceResult, PrepareAnswer, RecoverAnswer, ReleaseAnswer};

use crate::cli::table::{header, write_table};

/// `hostdev ls`: PCI rows, then the other kinds' claims, then pending operations.
pub fn listing(listing: &Listing, out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![header(&[
        "DEVICE",
        "LIST",
        "OWNER",
        "MODE",
        "ORIGINAL/DETAIL",
        "GROUP",
    ])];
    for r in &listing.pci {
        rows.push(vec![
            r.address.clone(),
            r.list.to_string(),
            r.owner
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            if r.managed { "managed" } else { "unmanaged" }.to_owned(),
            r.original_driver.clone().unwrap_or_default(),
            r.iommu_group.map(|g| g.to_string()).unwrap_or_default(),
        ]);
    }
    for c in &listing.claims {
        rows.push(vec![
            format!("{}:{}", c.kind, c.key),
            "active".to_owned(),
            c.owner.to_string(),
            if c.shareable { "shareable" } else { "" }.to_owned(),
            c.detail.clone().unwrap_or_default(),
            String::new(),
        ]);
    }
    write_table(out, &rows)?;
    for p in &listing.pending {
        let state = if p.running {
            "running"
        } else {
            "interrupted: run `plugboard hostdev recover`"
        };
        writeln!(
            out,
            "pending: {} {} by process {} ({state})",
            p.op, p.address, p.pid
        )?;
    }
    for a in &listing.needs_attention {
        writeln!(out, "needs attention: {a}")?;
    }
    Ok(())
}

/// `hostdev prepare`: the owner and everything it holds now.
pub fn prepared(answer: &PrepareAnswer, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "prepared for {}: {}",
        answer.owner,
        answer.devices.join(" ")
    )
}

/// `hostdev release`: one row per device.
pub fn released(answer: &ReleaseAnswer, out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![header(&["DEVICE", "RESULT", "DETAIL"])];
    for r in &answer.released {
        rows.push(vec![
            r.device.clone(),
            r.result.to_string(),
            r.detail.clone().unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)
}

/// `hostdev detach|reattach|reset`: one sentence.
pub fn node_device(answer: &NodeDeviceResult, out: &mut dyn Write) -> std::io::Result<()> {
    match answer {
        NodeDeviceResult::Detach { address, result } => writeln!(out, "{address}: {result}"),
        NodeDeviceResult::Reattach { address, result } => writeln!(out, "{address}: {result}"),
        NodeDeviceResult::Reset { address, result } => writeln!(out, "{address}: {result}"),
    }
}

/// `hostdev recover`: one row per pending operation found.
pub fn recovered(answer: &RecoverAnswer, out: &mut dyn Write) -> std::io::Result<()> {
    if answer.recovered.is_empty() {
        return writeln!(out, "nothing to recover");
    }
    let mut rows = vec![header(&["DEVICE", "PENDING", "ACTION"])];
    for r in &answer.recovered {
        rows.push(vec![
            r.address.clone(),
            r.op.to_string(),
            r.action.to_string(),
        ]);
    }
    write_table(out, &rows)
}
