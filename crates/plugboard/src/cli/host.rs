//! `plugboard host …`: the host's PCI inventory, IOMMU groups, one device, device nodes.
//!
//! Everything here is formatting: the facts come from `plugboard-sysfs`
//! (`Sysfs::pci_inventory`, `Sysfs::iommu_groups`, `Sysfs::resolve_devnode`), and names from
//! `pci.ids` when the file exists. Tables are for people (columns in the order lspci and
//! ls-iommu users expect); `--json` prints the library's records, documented in
//! `docs/host-json.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use plugboard_sysfs::{
    DevKind, DevNumber, IommuGroup, PciAddress, PciDeviceInfo, PciFilter, PciIds, PciNames, Sysfs,
};
use serde::Serialize;

use super::{Global, print_json};

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
    fn load(&self, ids: impl IntoIterator<Item = PciIds>) -> PciNames {
        if self.no_names {
            return PciNames::empty();
        }
        PciNames::load_for_ids(&self.pci_ids, ids).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "no device names");
            PciNames::empty()
        })
    }
}

/// Runs one `host` subcommand.
pub fn run(global: &Global, command: HostCommand) -> anyhow::Result<()> {
    if let Some(done) = super::daemon::host(global, &command) {
        return done;
    }
    let sysfs = Sysfs::new(&global.sysfs_root).with_dev_root(&global.dev_root);
    match command {
        HostCommand::Ls {
            class,
            driver,
            names,
        } => {
            let owners = owners(&global.state_dir);
            ls(
                &sysfs,
                global.json,
                &PciFilter { class, driver },
                &names,
                &owners,
            )
        }
        HostCommand::Groups { names } => {
            groups(&sysfs, global.json, &names, &owners(&global.state_dir))
        }
        HostCommand::Show { address, names } => {
            let owners = owners(&global.state_dir);
            show(&sysfs, global.json, address, &names, &owners)
        }
        HostCommand::Resolve { kind, number } => resolve(&sysfs, global.json, kind, number),
    }
}

/// The owner of every PCI device, from the hostdev registry in `state_dir` (read only; no
/// registry yet means no owners; an unreadable one is a warning, not a failure).
fn owners(state_dir: &Path) -> BTreeMap<PciAddress, String> {
    match plugboard_hostdev::read_owners(state_dir) {
        Ok(owners) => owners
            .into_iter()
            .map(|(a, o)| (a, o.to_string()))
            .collect(),
        Err(err) => {
            eprintln!("plugboard: warning: no device owners: {err}");
            BTreeMap::new()
        }
    }
}

fn ls(
    sysfs: &Sysfs,
    json: bool,
    filter: &PciFilter,
    names: &NamesArgs,
    owners: &BTreeMap<PciAddress, String>,
) -> anyhow::Result<()> {
    let mut inventory = sysfs
        .pci_inventory()
        .with_context(|| format!("cannot list PCI devices under {}", sysfs.root().display()))?;
    let db = names.load(inventory.devices.iter().map(|d| d.ids));
    inventory.apply_names(&db);
    inventory.retain(filter);
    for d in &mut inventory.devices {
        d.owner = owners.get(&d.address).cloned();
    }
    for problem in &inventory.problems {
        tracing::warn!(bdf = %problem.address, error = %problem.error, "device skipped");
    }
    if json {
        return print_json(&inventory);
    }
    let with_owner = inventory.devices.iter().any(|d| d.owner.is_some());
    let mut rows = vec![super::table::header(&[
        "ADDRESS",
        "CLASS",
        "VENDOR:DEVICE",
        "NAME",
        "DRIVER",
        "GROUP",
        "NUMA",
        "OWNER",
    ])];
    for d in &inventory.devices {
        let mut row = vec![
            d.address.to_string(),
            class_text(d),
            format!("{:04x}:{:04x}", d.ids.vendor, d.ids.device),
            name_text(d),
            d.driver.clone().unwrap_or_else(|| "-".to_owned()),
            opt(d.iommu_group),
            opt(d.numa_node),
            d.owner.clone().unwrap_or_else(|| "-".to_owned()),
        ];
        if !with_owner {
            row.pop();
        }
        rows.push(row);
    }
    if !with_owner {
        rows[0].pop();
    }
    super::table::print_table(&rows)?;
    for problem in &inventory.problems {
        eprintln!("plugboard: warning: {}: {}", problem.address, problem.error);
    }
    Ok(())
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn class_text(d: &PciDeviceInfo) -> String {
    let code = d.class.class_and_subclass();
    match &d.names.class {
        Some(name) => format!("{name} [{code:04x}]"),
        None => format!("[{code:04x}]"),
    }
}

fn name_text(d: &PciDeviceInfo) -> String {
    match (&d.names.vendor, &d.names.device) {
        (Some(v), Some(dev)) => format!("{v} {dev}"),
        (Some(v), None) => format!("{v} device {:04x}", d.ids.device),
        _ => "-".to_owned(),
    }
}

fn groups(
    sysfs: &Sysfs,
    json: bool,
    names: &NamesArgs,
    owners: &BTreeMap<PciAddress, String>,
) -> anyhow::Result<()> {
    let groups = sysfs.iommu_groups().with_context(|| {
        format!(
            "cannot list IOMMU groups under {}",
            sysfs.iommu_groups_dir().display()
        )
    })?;
    if json {
        #[derive(Serialize)]
        struct Groups<'a> {
            groups: &'a [IommuGroup],
        }
        return print_json(&Groups { groups: &groups });
    }
    if groups.is_empty() {
        println!(
            "no IOMMU groups: the IOMMU is off or absent ({} is empty)",
            sysfs.iommu_groups_dir().display()
        );
        return Ok(());
    }
    let mut inventory = sysfs.pci_inventory()?;
    let db = names.load(inventory.devices.iter().map(|d| d.ids));
    inventory.apply_names(&db);
    let by_address: BTreeMap<PciAddress, &PciDeviceInfo> =
        inventory.devices.iter().map(|d| (d.address, d)).collect();
    let mut rows = Vec::new();
    for group in &groups {
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
            rows.push(vec![
                format!("  {}", m.address),
                info.map_or_else(|| format!("{}", m.class), |d| class_text(d)),
                info.map_or_else(String::new, |d| {
                    format!("{:04x}:{:04x}", d.ids.vendor, d.ids.device)
                }),
                m.driver.clone().unwrap_or_else(|| "-".to_owned()),
                owners
                    .get(&m.address)
                    .map_or_else(|| note.to_owned(), |o| format!("{note}, owner {o}")),
            ]);
        }
        for other in &group.other_members {
            rows.push(vec![format!("  {other}"), "(not PCI)".to_owned()]);
        }
    }
    print_groups(&rows)
}

/// Group header lines stand alone; member lines are aligned among themselves.
fn print_groups(rows: &[Vec<String>]) -> anyhow::Result<()> {
    use std::io::Write;
    let members: Vec<Vec<String>> = rows.iter().filter(|r| r.len() > 1).cloned().collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            members
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if row.len() > 1 {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    out.flush()?;
    Ok(())
}

fn show(
    sysfs: &Sysfs,
    json: bool,
    address: PciAddress,
    names: &NamesArgs,
    owners: &BTreeMap<PciAddress, String>,
) -> anyhow::Result<()> {
    let mut info = sysfs
        .pci_device_info(address)
        .with_context(|| format!("cannot read PCI device {address}"))?;
    info.owner = owners.get(&address).cloned();
    let db = names.load([info.ids]);
    info.apply_names(&db);
    let group = info
        .iommu_group
        .map(|n| sysfs.iommu_group(n))
        .transpose()
        .with_context(|| format!("cannot read the IOMMU group of {address}"))?;
    if json {
        #[derive(Serialize)]
        struct Show<'a> {
            device: &'a PciDeviceInfo,
            iommu_group: Option<&'a IommuGroup>,
        }
        return print_json(&Show {
            device: &info,
            iommu_group: group.as_ref(),
        });
    }
    let d = &info;
    let none = || "-".to_owned();
    let list = |v: &[PciAddress]| {
        if v.is_empty() {
            none()
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
                d.names.vendor.clone().unwrap_or_default()
            ),
        ),
        (
            "device",
            format!(
                "{:04x} {}",
                d.ids.device,
                d.names.device.clone().unwrap_or_default()
            ),
        ),
        (
            "subsystem",
            format!(
                "{:04x}:{:04x} {}",
                d.ids.subsystem_vendor,
                d.ids.subsystem_device,
                d.names.subsystem.clone().unwrap_or_default()
            ),
        ),
        ("revision", format!("{:02x}", d.revision)),
        ("header type", d.header_type.to_string()),
        (
            "pcie",
            format!("{} (config space {} bytes)", d.pcie, d.config_size),
        ),
        ("driver", d.driver.clone().unwrap_or_else(none)),
        ("driver kind", d.driver_kind.to_string()),
        (
            "driver_override",
            d.driver_override.clone().unwrap_or_else(none),
        ),
        ("vfio cdev", d.vfio_dev.clone().unwrap_or_else(none)),
        ("iommu group", opt(d.iommu_group)),
        ("numa node", opt(d.numa_node)),
        ("parent", opt(d.parent)),
        ("physfn", opt(d.physfn)),
        ("virtfns", list(&d.virtfns)),
        ("sriov_totalvfs", opt(d.sriov_totalvfs)),
        (
            "reset",
            if d.reset.can_reset {
                if d.reset.methods.is_empty() {
                    "yes".to_owned()
                } else {
                    d.reset.methods.join(" ")
                }
            } else {
                "no".to_owned()
            },
        ),
        ("owner", d.owner.clone().unwrap_or_else(none)),
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
    if let Some(g) = &group {
        let verdict = if g.is_viable() {
            "viable"
        } else {
            "not viable"
        };
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| format!("{} ({})", m.address, m.driver.as_deref().unwrap_or("-")))
            .collect();
        rows.push(("group members", members.join(" ")));
        rows.push(("group", verdict.to_owned()));
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![format!("{k}:"), v.trim_end().to_owned()])
        .collect();
    Ok(super::table::print_table(&table)?)
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

fn resolve(sysfs: &Sysfs, json: bool, kind: DevKind, number: DevNumber) -> anyhow::Result<()> {
    let path = sysfs.resolve_devnode(kind, number)?;
    if json {
        #[derive(Serialize)]
        struct Resolved<'a> {
            kind: DevKind,
            number: String,
            path: &'a Path,
        }
        return print_json(&Resolved {
            kind,
            number: number.to_string(),
            path: &path,
        });
    }
    println!("{}", path.display());
    Ok(())
}
