//! `plugboard vfio info`: what the kernel reports about a VFIO device.

use std::io::Write;

use plugboard_service::VfioReport;
use plugboard_vfio::RegionCap;

use crate::cli::table::write_table;

fn size_text(size: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = size;
    let mut unit = 0;
    while value >= 1024 && value.is_multiple_of(1024) && unit < UNITS.len() - 1 {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

fn cap_text(cap: &RegionCap) -> String {
    match cap {
        RegionCap::SparseMmap { areas } => {
            let areas: Vec<String> = areas
                .iter()
                .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                .collect();
            format!("sparse-mmap[{}]", areas.join(" "))
        }
        RegionCap::Type {
            region_type,
            subtype,
        } => format!("type {region_type:#x}/{subtype:#x}"),
        RegionCap::MsixMappable => "msix-mappable".into(),
        RegionCap::Other { id, version } => format!("cap {id} v{version}"),
    }
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `vfio info`: the interface and flags, then a table of regions and one of IRQ indexes.
pub fn report(report: &VfioReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "device     {}", report.device)?;
    writeln!(
        out,
        "interface  {} (mode {})",
        report.interface, report.mode
    )?;
    match (report.group, report.iommufd_dev_id) {
        (Some(group), _) => writeln!(out, "group      {group}")?,
        (None, Some(id)) => writeln!(out, "dev id     {id} (in the iommufd)")?,
        (None, None) => {}
    }
    writeln!(out, "flags      {}", list(&report.flags.names()))?;
    writeln!(out)?;
    let mut rows = vec![vec![
        "REGION".to_owned(),
        "INDEX".into(),
        "SIZE".into(),
        "OFFSET".into(),
        "FLAGS".into(),
        "CAPS".into(),
    ]];
    for r in &report.regions {
        let caps: Vec<String> = r.caps.iter().map(cap_text).collect();
        rows.push(vec![
            r.name.clone(),
            r.index.to_string(),
            if r.size == 0 {
                "0 (absent)".into()
            } else {
                format!("{:#x} ({})", r.size, size_text(r.size))
            },
            format!("{:#x}", r.offset),
            list(&r.flags.names()),
            if caps.is_empty() {
                "-".into()
            } else {
                caps.join(" ")
            },
        ]);
    }
    write_table(out, &rows)?;
    writeln!(out)?;
    let mut rows = vec![vec![
        "IRQ".to_owned(),
        "INDEX".into(),
        "COUNT".into(),
        "FLAGS".into(),
    ]];
    for i in &report.irqs {
        rows.push(vec![
            i.name.clone(),
            i.index.to_string(),
            i.count.to_string(),
            list(&i.flags.names()),
        ]);
    }
    write_table(out, &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use plugboard_vfio::SparseArea;

    use super::*;

    #[test]
    fn sizes_and_caps_read_well() {
        assert_eq!(size_text(0x20000), "128 KiB");
        assert_eq!(size_text(0x1000_0000), "256 MiB");
        assert_eq!(size_text(0x20), "32 B");
        assert_eq!(size_text(0x1800), "6 KiB");
        assert_eq!(size_text(0x1801), "6145 B");
        let cap = RegionCap::SparseMmap {
            areas: vec![
                SparseArea {
                    offset: 0,
                    size: 0x2000,
                },
                SparseArea {
                    offset: 0x3000,
                    size: 0x1000,
                },
            ],
        };
        assert_eq!(cap_text(&cap), "sparse-mmap[0x0+0x2000 0x3000+0x1000]");
        assert_eq!(cap_text(&RegionCap::MsixMappable), "msix-mappable");
    }
}
