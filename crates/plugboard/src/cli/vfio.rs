//! `plugboard vfio …`: open a device through VFIO and show what the kernel reports.
//!
//! Everything here is formatting: opening, mode selection and the kernel's answers come from
//! `plugboard-vfio` (`Vfio::open`). The table is for people; `--json` prints one object with
//! the interface used, the device flags, its regions and its IRQ indexes.

use clap::{Args, Subcommand};
use plugboard_sysfs::{PciAddress, Sysfs};
use plugboard_vfio::{
    DeviceFlags, Interface, IrqFlags, Mode, RegionCap, RegionFlags, SparseArea, Vfio, VfioDevice,
};
use serde::Serialize;

use super::{Global, print_json};

/// VFIO devices: open one and show what the kernel reports.
#[derive(Debug, Subcommand)]
pub enum VfioCommand {
    /// Open a device bound to vfio-pci and print the interface used, its flags, regions
    /// (sizes, flags, capabilities) and IRQ indexes. The device is closed again on exit.
    Info(InfoArgs),
}

/// Arguments of `plugboard vfio info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The device: `DDDD:BB:SS.F` or `BB:SS.F`.
    address: PciAddress,
    /// `auto` (cdev + iommufd when the kernel and device have it, else legacy), `legacy`
    /// (container + group) or `iommufd`.
    #[arg(long, default_value = "auto")]
    mode: Mode,
}

/// Runs a `plugboard vfio` command.
pub fn run(global: &Global, command: VfioCommand) -> anyhow::Result<()> {
    match command {
        VfioCommand::Info(args) => {
            super::daemon::vfio_guard(global, args.address)?;
            info(global, &args)
        }
    }
}

#[derive(Serialize)]
struct Report {
    device: String,
    mode: Mode,
    interface: Interface,
    group: Option<u32>,
    iommufd_dev_id: Option<u32>,
    flags: DeviceFlags,
    num_regions: u32,
    num_irqs: u32,
    regions: Vec<RegionReport>,
    irqs: Vec<IrqReport>,
}

#[derive(Serialize)]
struct RegionReport {
    index: u32,
    name: String,
    size: u64,
    offset: u64,
    flags: RegionFlags,
    caps: Vec<RegionCap>,
    mmap_areas: Vec<SparseArea>,
}

#[derive(Serialize)]
struct IrqReport {
    index: u32,
    name: String,
    count: u32,
    flags: IrqFlags,
}

fn report(device: &VfioDevice, mode: Mode) -> Report {
    Report {
        device: device.name().to_owned(),
        mode,
        interface: device.interface(),
        group: device.group_id(),
        iommufd_dev_id: device.iommufd_dev_id(),
        flags: device.info().flags,
        num_regions: device.info().num_regions,
        num_irqs: device.info().num_irqs,
        regions: device
            .regions()
            .iter()
            .map(|r| RegionReport {
                index: r.index,
                name: r.pci_name(),
                size: r.size,
                offset: r.offset,
                flags: r.flags,
                caps: r.caps.clone(),
                mmap_areas: r.mmap_areas(),
            })
            .collect(),
        irqs: device
            .irqs()
            .iter()
            .map(|i| IrqReport {
                index: i.index,
                name: i.pci_name(),
                count: i.count,
                flags: i.flags,
            })
            .collect(),
    }
}

fn info(global: &Global, args: &InfoArgs) -> anyhow::Result<()> {
    let sysfs = Sysfs::new(&global.sysfs_root).with_dev_root(&global.dev_root);
    let mut vfio = Vfio::new(sysfs);
    let device = vfio.open(args.address, args.mode)?;
    let report = report(&device, args.mode);
    device.close()?;
    if global.json {
        return print_json(&report);
    }
    print_report(&report)
}

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

fn print_report(report: &Report) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
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
    super::table::write_table(&mut out, &rows)?;
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
    super::table::write_table(&mut out, &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
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

    fn global(kernel: &plugboard_sysfs::fake::FakeKernel) -> Global {
        Global {
            sysfs_root: kernel.sysfs_root(),
            dev_root: kernel.dev_root(),
            state_dir: "/nonexistent".into(),
            json: true,
            verbose: 0,
        }
    }

    #[test]
    fn info_reports_the_library_errors_with_the_device_named() {
        use plugboard_sysfs::fake::{FakeKernel, PciSpec};
        let kernel = FakeKernel::builder()
            .pci(
                PciSpec::new("0000:01:00.0", 0x8086, 0x10d3)
                    .class(0x020000)
                    .iommu_group(3)
                    .driver("e1000e"),
            )
            .legacy_vfio_only()
            .build()
            .unwrap();
        let args = |mode: &str| InfoArgs {
            address: "01:00.0".parse().unwrap(),
            mode: mode.parse().unwrap(),
        };
        let err = info(&global(&kernel), &args("auto")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0000:01:00.0 is bound to e1000e, not to vfio-pci: bind it to vfio-pci first"
        );
        let sysfs = kernel.sysfs();
        let nic = sysfs.pci_device("01:00.0".parse().unwrap()).unwrap();
        nic.bind("vfio-pci").unwrap();
        let err = info(&global(&kernel), &args("iommufd")).unwrap_err();
        assert!(
            err.to_string().contains("lacks the iommufd VFIO interface"),
            "{err}"
        );
        // The fake kernel's nodes are plain files: legacy gets as far as the first ioctl.
        let err = info(&global(&kernel), &args("auto")).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("vfio/vfio: VFIO_GET_API_VERSION failed"),
            "{err}"
        );
    }
}
