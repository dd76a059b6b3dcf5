//! The host's PCI inventory: every function's facts in one serializable record.
//!
//! This is what `plugboard host ls/show` print and what `--json` emits; the shapes are
//! documented in `docs/host-json.md`. A device whose attributes cannot be read does not stop
//! the listing: it is reported in [`Inventory::problems`] instead.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::address::PciAddress;
use crate::attr;
use crate::dir::Dir;
use crate::error::{SysfsError, error_chain};
use crate::ids::{PciIds, hex2};
use crate::names::PciNames;
use crate::pci::{DriverKind, HeaderType, PciClass, PciDevice, ResetMethods};
use crate::pci_uevent;
use crate::resource::Bar;
use crate::sysfs::Sysfs;

/// Names from `pci.ids`, each `None` when unknown or when there is no database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceNames {
    /// The vendor's name.
    pub vendor: Option<String>,
    /// The device's name.
    pub device: Option<String>,
    /// The subsystem's name.
    pub subsystem: Option<String>,
    /// The class name (subclass when known).
    pub class: Option<String>,
}

/// Everything known about one PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// Its address.
    pub address: PciAddress,
    /// Its IDs.
    pub ids: PciIds,
    /// Its names.
    pub names: PciDeviceNames,
    /// Its class code (`0x020000`).
    pub class: PciClass,
    /// Its revision (2-digit hex).
    #[serde(with = "hex2")]
    pub revision: u8,
    /// Its header type.
    pub header_type: HeaderType,
    /// PCI Express (config space > 256 bytes).
    pub pcie: bool,
    /// The size of its config space in bytes.
    pub config_size: u64,
    /// Its driver, if bound.
    pub driver: Option<String>,
    /// What the driver is to VFIO.
    pub driver_kind: DriverKind,
    /// Its `driver_override`, if set.
    pub driver_override: Option<String>,
    /// Its VFIO device cdev name (`vfioN`), while it has one.
    pub vfio_dev: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Its NUMA node.
    pub numa_node: Option<u32>,
    /// The upstream bridge or port, if any.
    pub parent: Option<PciAddress>,
    /// Its used BARs, ROM and windows.
    pub bars: Vec<Bar>,
    /// One BAR is larger than 4 GiB.
    pub large_bar: bool,
    /// For a VF: its PF.
    pub physfn: Option<PciAddress>,
    /// For a PF: its VFs.
    pub virtfns: Vec<PciAddress>,
    /// For a PF: `sriov_totalvfs`.
    pub sriov_totalvfs: Option<u32>,
    /// The resets the kernel offers.
    pub reset: ResetMethods,
    /// Who owns it in Plugboard's registry; filled in by `plugboard-hostdev`, `None` here.
    pub owner: Option<String>,
}

impl PciDeviceInfo {
    /// Reads every fact about `device` (names left empty; see [`Self::apply_names`]).
    ///
    /// With the device's directory held open, each attribute is one `openat` of one name;
    /// the IDs, class and driver come from one read of `uevent` (the attributes and the
    /// `driver` link when it lacks them), the revision, header type and PCIe-ness from one
    /// open of `config`, and the costly probes only where they can succeed. That is about
    /// 25 system calls a device (`lspci -Dnnk` makes some 34).
    pub fn read(device: &PciDevice) -> Result<Self, SysfsError> {
        let device = &device.opened()?;
        let (ids, class, driver) = match device.with_raw("uevent", pci_uevent::parse) {
            Ok(Some(found)) => (found.ids, found.class, found.driver),
            _ => (
                PciIds {
                    vendor: device.vendor_id()?,
                    device: device.device_id()?,
                    subsystem_vendor: device.subsystem_vendor_id()?,
                    subsystem_device: device.subsystem_device_id()?,
                },
                device.class()?,
                device.driver()?,
            ),
        };
        let config = device.config_head()?;
        let bars = device.bars()?;
        // Each attribute once, and the costly ones only where they can exist.
        let driver_kind = device.driver_kind_of(driver.as_deref());
        let sriov_totalvfs = device.sriov_totalvfs()?;
        let virtfns = if sriov_totalvfs.is_some() {
            device.virtfns()?
        } else {
            Vec::new()
        };
        let vfio_dev = if driver_kind.is_vfio() {
            device.vfio_dev()?
        } else {
            None
        };
        Ok(Self {
            address: device.address(),
            ids,
            names: PciDeviceNames::default(),
            class,
            revision: config.revision,
            header_type: config.header_type,
            config_size: config.size,
            pcie: config.size > 256,
            driver,
            driver_kind,
            driver_override: device.driver_override()?,
            vfio_dev,
            iommu_group: device.iommu_group()?,
            numa_node: device.numa_node()?,
            parent: device.parent()?,
            large_bar: bars.iter().any(Bar::is_large),
            bars,
            physfn: device.physfn()?,
            virtfns,
            sriov_totalvfs,
            reset: device.reset_methods()?,
            owner: None,
        })
    }

    /// Fills in the names from `names`.
    pub fn apply_names(&mut self, names: &PciNames) {
        let ids = self.ids;
        self.names = PciDeviceNames {
            vendor: names.vendor(ids.vendor).map(str::to_owned),
            device: names.device(ids.vendor, ids.device).map(str::to_owned),
            subsystem: names
                .subsystem(
                    ids.vendor,
                    ids.device,
                    ids.subsystem_vendor,
                    ids.subsystem_device,
                )
                .map(str::to_owned),
            class: names.class(self.class).map(str::to_owned),
        };
    }
}

/// A device that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryProblem {
    /// The device.
    pub address: PciAddress,
    /// The error, with its causes, on one line.
    pub error: String,
}

/// Every PCI function of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The devices read, by address.
    pub devices: Vec<PciDeviceInfo>,
    /// The devices that could not be read.
    pub problems: Vec<InventoryProblem>,
}

impl Inventory {
    /// The vendor IDs present (for [`PciNames::load_for`]).
    pub fn vendors(&self) -> BTreeSet<u16> {
        self.devices
            .iter()
            .flat_map(|d| [d.ids.vendor, d.ids.subsystem_vendor])
            .filter(|v| *v != 0 && *v != 0xffff)
            .collect()
    }

    /// Fills in every device's names.
    pub fn apply_names(&mut self, names: &PciNames) {
        for device in &mut self.devices {
            device.apply_names(names);
        }
    }

    /// Keeps the devices `filter` accepts.
    pub fn retain(&mut self, filter: &PciFilter) {
        self.devices.retain(|d| filter.matches(d));
    }
}

/// Which devices to list: by class and by driver. Empty filters accept everything.
///
/// Serializable, so that a front can send it to the daemon as it is (missing fields are
/// empty filters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciFilter {
    /// A class: hex code prefix (`02`, `0200`, `0x020000`) or a word of the class name
    /// (`ethernet`, `bridge`; case-insensitive).
    pub class: Option<String>,
    /// A driver name, or `none` (unbound), or `vfio` (vfio-pci or a variant).
    pub driver: Option<String>,
}

impl PciFilter {
    /// True when `device` passes every filter given.
    pub fn matches(&self, device: &PciDeviceInfo) -> bool {
        self.class
            .as_deref()
            .is_none_or(|c| class_matches(c, device))
            && self.driver.as_deref().is_none_or(|d| match d {
                "none" => device.driver.is_none(),
                "vfio" => device.driver_kind.is_vfio(),
                name => device.driver.as_deref() == Some(name),
            })
    }
}

fn class_matches(filter: &str, device: &PciDeviceInfo) -> bool {
    let hex = filter
        .strip_prefix("0x")
        .unwrap_or(filter)
        .to_ascii_lowercase();
    let code = format!("{:06x}", device.class.code());
    if !hex.is_empty() && hex.len() <= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return code.starts_with(&hex);
    }
    device.names.class.as_deref().is_some_and(|name| {
        name.to_ascii_lowercase()
            .contains(&filter.to_ascii_lowercase())
    })
}

impl Sysfs {
    /// Reads every PCI function; unreadable ones go to [`Inventory::problems`]. Names are
    /// left empty: load them with [`PciNames::load_for_ids`] and [`Inventory::apply_names`].
    ///
    /// The sysfs root and `bus/pci/devices` are opened once; each device's link is read
    /// relative to the latter and its real directory opened relative to the former, so no
    /// path is walked from `/` per device. On hosts with many devices the work is spread
    /// over the available cores (512 devices a thread at least), the threads taking runs
    /// of 128 addresses in turn; the runs are put back in order, so the listing stays in
    /// address order.
    pub fn pci_inventory(&self) -> Result<Inventory, SysfsError> {
        let devices_dir = self.pci_devices_dir();
        let addresses = self.pci_addresses()?;
        let root = Dir::open(self.root()).map_err(|e| SysfsError::read(self.root(), e))?;
        let devices = root
            .open_dir(Path::new("bus/pci/devices"))
            .map_err(|e| SysfsError::read(&devices_dir, e));
        let devices = match devices {
            Ok(dir) => dir,
            // No PCI bus at all: nothing to read.
            Err(err) if err.is_not_found() => return Ok(Inventory::default()),
            Err(err) => return Err(err),
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(addresses.len() / PER_THREAD)
            .max(1);
        let at = Opener {
            sysfs: self,
            root: &root,
            devices: &devices,
            devices_dir: &devices_dir,
        };
        if threads == 1 {
            return Ok(at.read_all(&addresses));
        }
        // Runs of addresses handed out in turn, so a thread whose devices cost more (PFs
        // with VFs, VFIO-bound ones) does not leave the others idle at the end; each run's
        // result goes to its own slot, so the listing keeps the address order.
        let runs: Vec<&[PciAddress]> = addresses.chunks(RUN).collect();
        let next = AtomicUsize::new(0);
        let mut parts: Vec<(usize, Inventory)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(run) = runs.get(i) else { break };
                            done.push((i, at.read_all(run)));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        parts.sort_unstable_by_key(|(i, _)| *i);
        let mut inventory = Inventory::default();
        inventory.devices.reserve(addresses.len());
        for (_, part) in parts {
            inventory.devices.extend(part.devices);
            inventory.problems.extend(part.problems);
        }
        Ok(inventory)
    }

    /// Reads one PCI function.
    pub fn pci_device_info(&self, address: PciAddress) -> Result<PciDeviceInfo, SysfsError> {
        PciDeviceInfo::read(&self.pci_device(address)?)
    }
}

/// The least number of devices worth a thread of their own: below this, starting the
/// thread and the allocator arena it brings costs more than it saves.
const PER_THREAD: usize = 512;

/// How many devices a thread takes at a time: small enough that the threads finish
/// together, large enough that taking the next run costs nothing.
const RUN: usize = 128;

/// Opens devices relative to directories held open for the whole listing.
struct Opener<'a> {
    sysfs: &'a Sysfs,
    root: &'a Dir,
    devices: &'a Dir,
    devices_dir: &'a Path,
}

impl Opener<'_> {
    fn read_all(&self, addresses: &[PciAddress]) -> Inventory {
        let mut inventory = Inventory::default();
        inventory.devices.reserve(addresses.len());
        for &address in addresses {
            let read = match self.open(address) {
                Ok(Some(device)) => PciDeviceInfo::read(&device),
                // Removed while we listed: not an error.
                Ok(None) => continue,
                Err(err) => Err(err),
            };
            match read {
                Ok(info) => inventory.devices.push(info),
                Err(err) => inventory.problems.push(InventoryProblem {
                    address,
                    error: error_chain(&err),
                }),
            }
        }
        inventory
    }

    /// The device at `address` with its directory open; `None` when it has gone.
    fn open(&self, address: PciAddress) -> Result<Option<PciDevice>, SysfsError> {
        let name = address.to_string();
        let link = self.devices.with_link(&name, |target| {
            below_root(target).ok_or_else(|| {
                attr::join_link(self.devices_dir, Path::new(OsStr::from_bytes(target)))
            })
        });
        let (path, opened) = match link {
            // The real directory relative to the open root: no symlink to follow.
            Ok(Ok(relative)) => (
                self.sysfs.root().join(&relative),
                self.root.open_dir(&relative),
            ),
            Ok(Err(path)) => {
                let opened = self.open_path(&path);
                (path, opened)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Not a symlink (EINVAL) or unreadable: the entry itself; reads will say why.
            Err(_) => {
                let path = self.devices_dir.join(&name);
                let opened = self.open_path(&path);
                (path, opened)
            }
        };
        match opened {
            Ok(dir) => Ok(Some(PciDevice::with_dir(self.sysfs, address, path, dir))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SysfsError::read(&path, e)),
        }
    }

    /// Opens `path` relative to the open root when it is inside the tree, as sysfs links
    /// stay.
    fn open_path(&self, path: &Path) -> io::Result<Dir> {
        match path.strip_prefix(self.sysfs.root()) {
            Ok(relative) => self.root.open_dir(relative),
            Err(_) => Dir::open(path),
        }
    }
}

/// The part below the sysfs root of a `bus/pci/devices/<address>` link that goes up to the
/// root and then down by plain names, as the kernel's links do
/// (`../../../devices/pci0000:00/0000:00:01.0`); `None` for any other target.
fn below_root(target: &[u8]) -> Option<PathBuf> {
    // `bus/pci/devices` is three levels below the sysfs root.
    let rest = target.strip_prefix(b"../../../")?;
    rest.split(|b| *b == b'/')
        .all(|part| !matches!(part, b"" | b"." | b".."))
        .then(|| OsStr::from_bytes(rest).into())
}

#[cfg(test)]
mod tests {
    use super::below_root;
    use std::path::Path;

    #[test]
    fn kernel_shaped_links_are_read_below_the_root_and_others_are_resolved() {
        assert_eq!(
            below_root(b"../../../devices/pci0000:00/0000:00:01.0").as_deref(),
            Some(Path::new("devices/pci0000:00/0000:00:01.0"))
        );
        for other in [
            &b"../../devices/pci0000:00/0000:00:01.0"[..],
            b"../../../devices/../pci0000:00/0000:00:01.0",
            b"../../../devices/./0000:00:01.0",
            b"../../../devices//0000:00:01.0",
            b"../../../",
            b"/sys/devices/pci0000:00/0000:00:01.0",
            b"../../../../devices/pci0000:00/0000:00:01.0",
        ] {
            assert_eq!(
                below_root(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
