//! What the fake kernel does when an attribute is written: the kernel's PCI bus semantics.
//!
//! The tree itself is the state of every device (its `driver` link, its `driver_override`
//! file), so a test can also inspect or edit it by hand. What the tree cannot hold lives in
//! [`State`]: drivers' ID tables and behaviour, the reset counters, and the write log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::address::PciAddress;
use crate::attr;
use crate::sysfs::AttrWriter;

use super::tree;

/// Major number the fake gives VFIO group nodes (`/dev/vfio/<group>`).
pub const VFIO_GROUP_MAJOR: u32 = 243;
/// Major number the fake gives VFIO device cdevs (`/dev/vfio/devices/vfioN`).
pub const VFIO_CDEV_MAJOR: u32 = 242;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// One registered driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct Driver {
    pub(crate) ids: BTreeSet<(u16, u16)>,
    pub(crate) vfio: bool,
    pub(crate) fail_probe: BTreeSet<PciAddress>,
}

/// What the fake kernel knows beyond the tree.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) sys: PathBuf,
    pub(crate) dev: PathBuf,
    pub(crate) drivers: BTreeMap<String, Driver>,
    pub(crate) cdev: bool,
    pub(crate) resets: BTreeMap<PciAddress, u32>,
    pub(crate) writes: Vec<(PathBuf, String)>,
}

/// The fake kernel's [`AttrWriter`]: applies the kernel's semantics to every write.
#[derive(Debug, Clone)]
pub(crate) struct FakeWriter {
    pub(crate) state: Arc<Mutex<State>>,
}

impl AttrWriter for FakeWriter {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("fake kernel state poisoned by a panicking test"))?;
        state.writes.push((path.to_owned(), value.to_owned()));
        state.apply(path, value)
    }
}

impl State {
    /// Applies one write, returning the errno the kernel would.
    pub(crate) fn apply(&mut self, path: &Path, value: &str) -> io::Result<()> {
        let rel = path
            .strip_prefix(&self.sys)
            .map_err(|_| errno(libc::EACCES))?
            .to_owned();
        // The kernel never creates attributes: writing a missing one is ENOENT.
        fs::symlink_metadata(path)?;
        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
        match parts.as_slice() {
            ["bus", "pci", "drivers_probe"] => self.drivers_probe(value),
            ["bus", "pci", "drivers", driver, "bind"] => self.bind_store(driver, value),
            ["bus", "pci", "drivers", driver, "unbind"] => self.unbind_store(driver, value),
            // Plugboard never uses these: they act on every device with the IDs.
            ["bus", "pci", "drivers", _, "new_id" | "remove_id"] => Err(errno(libc::EPERM)),
            [.., device, attribute] if device.parse::<PciAddress>().is_ok() => {
                let address = device
                    .parse::<PciAddress>()
                    .map_err(|_| errno(libc::EINVAL))?;
                match *attribute {
                    "driver_override" => override_store(path, value),
                    "reset" => self.reset_store(address, value),
                    "remove" | "rescan" => Err(errno(libc::EPERM)),
                    _ => fs::write(path, value),
                }
            }
            _ => fs::write(path, value),
        }
    }

    fn device_dir(&self, address: PciAddress) -> Option<PathBuf> {
        fs::canonicalize(self.sys.join("bus/pci/devices").join(address.to_string())).ok()
    }

    fn device_named(&self, value: &str) -> io::Result<(PciAddress, PathBuf)> {
        let name = value.strip_suffix('\n').unwrap_or(value);
        let address: PciAddress = name.parse().map_err(|_| errno(libc::ENODEV))?;
        if address.to_string() != name {
            return Err(errno(libc::ENODEV));
        }
        let dir = self
            .device_dir(address)
            .ok_or_else(|| errno(libc::ENODEV))?;
        Ok((address, dir))
    }

    fn current_driver(dir: &Path) -> Option<String> {
        attr::link_basename(&dir.join("driver")).ok().flatten()
    }

    fn override_of(dir: &Path) -> Option<String> {
        fs::read_to_string(dir.join("driver_override"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t != "(null)")
    }

    fn ids_of(dir: &Path) -> Option<(u16, u16)> {
        let read = |name: &str| attr::read_hex_u16(&dir.join(name)).ok();
        Some((read("vendor")?, read("device")?))
    }

    fn group_of(dir: &Path) -> Option<u32> {
        attr::link_basename(&dir.join("iommu_group"))
            .ok()
            .flatten()
            .and_then(|n| n.parse().ok())
    }

    /// The kernel's `pci_bus_match`: the override names the only driver that may bind;
    /// without one, the ID table decides.
    fn matches(&self, driver: &str, dir: &Path) -> bool {
        let Some(entry) = self.drivers.get(driver) else {
            return false;
        };
        match Self::override_of(dir) {
            Some(name) => name == driver,
            None => Self::ids_of(dir).is_some_and(|ids| entry.ids.contains(&ids)),
        }
    }

    /// The driver's probe: fails when told to, and for VFIO drivers without an IOMMU group.
    fn probe_ok(&self, driver: &str, address: PciAddress, dir: &Path) -> bool {
        self.drivers.get(driver).is_some_and(|d| {
            !d.fail_probe.contains(&address) && (!d.vfio || Self::group_of(dir).is_some())
        })
    }

    fn drivers_probe(&mut self, value: &str) -> io::Result<()> {
        let (address, dir) = self.device_named(value)?;
        if Self::current_driver(&dir).is_some() {
            return Ok(());
        }
        let candidate = self
            .drivers
            .keys()
            .find(|name| self.matches(name, &dir) && self.probe_ok(name, address, &dir))
            .cloned();
        if let Some(driver) = candidate {
            self.attach(address, &dir, &driver)?;
        }
        // Like the kernel: success even when nothing bound.
        Ok(())
    }

    fn bind_store(&mut self, driver: &str, value: &str) -> io::Result<()> {
        let (address, dir) = self.device_named(value)?;
        if Self::current_driver(&dir).is_some()
            || !self.matches(driver, &dir)
            || !self.probe_ok(driver, address, &dir)
        {
            return Err(errno(libc::ENODEV));
        }
        self.attach(address, &dir, driver)
    }

    fn unbind_store(&mut self, driver: &str, value: &str) -> io::Result<()> {
        let (address, dir) = self.device_named(value)?;
        if Self::current_driver(&dir).as_deref() != Some(driver) {
            return Err(errno(libc::ENODEV));
        }
        self.detach(address, &dir, driver)
    }

    fn reset_store(&mut self, address: PciAddress, value: &str) -> io::Result<()> {
        if value.trim() != "1" {
            return Err(errno(libc::EINVAL));
        }
        *self.resets.entry(address).or_default() += 1;
        Ok(())
    }

    fn is_vfio(&self, driver: &str) -> bool {
        self.drivers.get(driver).is_some_and(|d| d.vfio)
    }

    /// Binds: the `driver` links both ways, and for VFIO drivers the group node (first
    /// member) and the device cdev.
    pub(crate) fn attach(
        &mut self,
        address: PciAddress,
        dir: &Path,
        driver: &str,
    ) -> io::Result<()> {
        let driver_dir = self.sys.join("bus/pci/drivers").join(driver);
        let io = |e: super::FakeError| io::Error::other(e.to_string());
        tree::link(&driver_dir, &dir.join("driver")).map_err(io)?;
        tree::link(dir, &driver_dir.join(address.to_string())).map_err(io)?;
        uevent_driver(dir, Some(driver))?;
        if !self.is_vfio(driver) {
            return Ok(());
        }
        self.vfio_nodes(dir, Self::group_of(dir))
    }

    /// What binding a VFIO driver creates: the group node `/dev/vfio/<group>` (if it is
    /// not there yet) and, with cdev support, the device's `vfio-dev/vfioN` (lowest free N)
    /// and `/dev/vfio/devices/vfioN`. An mdev gets the same from its vendor driver.
    pub(crate) fn vfio_nodes(&mut self, dir: &Path, group: Option<u32>) -> io::Result<()> {
        let io = |e: super::FakeError| io::Error::other(e.to_string());
        if let Some(group) = group {
            let node = self.dev.join(format!("vfio/{group}"));
            if !node.exists() {
                tree::file(&node, "").map_err(io)?;
                // The kernel numbers group nodes' minors from 0 in creation order (the lab
                // showed /dev/vfio/18 as 247:0), not by group number.
                let prefix = format!("{VFIO_GROUP_MAJOR}:");
                let taken: BTreeSet<u32> = attr::list_dir(&self.sys.join("dev/char"))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|n| n.strip_prefix(&prefix).and_then(|m| m.parse().ok()))
                    .collect();
                let minor = (0..).find(|m| !taken.contains(m)).unwrap_or(0);
                let class_dir = self.sys.join(format!("devices/virtual/vfio/{group}"));
                tree::file(
                    &class_dir.join("uevent"),
                    format!("MAJOR={VFIO_GROUP_MAJOR}\nMINOR={minor}\nDEVNAME=vfio/{group}\n"),
                )
                .map_err(io)?;
                tree::file(
                    &class_dir.join("dev"),
                    format!("{VFIO_GROUP_MAJOR}:{minor}\n"),
                )
                .map_err(io)?;
                tree::link(
                    &class_dir,
                    &self
                        .sys
                        .join(format!("dev/char/{VFIO_GROUP_MAJOR}:{minor}")),
                )
                .map_err(io)?;
            }
        }
        if self.cdev {
            let taken: BTreeSet<u32> = attr::list_dir(&self.dev.join("vfio/devices"))
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n.strip_prefix("vfio").and_then(|n| n.parse().ok()))
                .collect();
            let index = (0..).find(|i| !taken.contains(i)).unwrap_or(0);
            let name = format!("vfio{index}");
            let cdev_dir = dir.join("vfio-dev").join(&name);
            tree::file(
                &cdev_dir.join("uevent"),
                format!("MAJOR={VFIO_CDEV_MAJOR}\nMINOR={index}\nDEVNAME=vfio/devices/{name}\n"),
            )
            .map_err(io)?;
            tree::file(
                &cdev_dir.join("dev"),
                format!("{VFIO_CDEV_MAJOR}:{index}\n"),
            )
            .map_err(io)?;
            tree::link(
                &cdev_dir,
                &self.sys.join(format!("dev/char/{VFIO_CDEV_MAJOR}:{index}")),
            )
            .map_err(io)?;
            tree::file(&self.dev.join("vfio/devices").join(&name), "").map_err(io)?;
        }
        Ok(())
    }

    /// Unbinds, undoing [`attach`](Self::attach); the group node goes with the last member
    /// on a VFIO driver.
    fn detach(&mut self, address: PciAddress, dir: &Path, driver: &str) -> io::Result<()> {
        tree::remove(&dir.join("driver"))?;
        uevent_driver(dir, None)?;
        tree::remove(
            &self
                .sys
                .join("bus/pci/drivers")
                .join(driver)
                .join(address.to_string()),
        )?;
        if !self.is_vfio(driver) {
            return Ok(());
        }
        for name in attr::list_dir(&dir.join("vfio-dev")).unwrap_or_default() {
            if let Some(index) = name.strip_prefix("vfio") {
                tree::remove(&self.sys.join(format!("dev/char/{VFIO_CDEV_MAJOR}:{index}")))?;
            }
            tree::remove(&self.dev.join("vfio/devices").join(&name))?;
        }
        tree::remove_dir(&dir.join("vfio-dev"))?;
        if let Some(group) = Self::group_of(dir) {
            let members = self
                .sys
                .join(format!("kernel/iommu_groups/{group}/devices"));
            let still_open = attr::list_dir(&members)
                .unwrap_or_default()
                .iter()
                .any(|m| Self::current_driver(&members.join(m)).is_some_and(|d| self.is_vfio(&d)));
            if !still_open {
                tree::remove(&self.dev.join(format!("vfio/{group}")))?;
                let class_dir = self.sys.join(format!("devices/virtual/vfio/{group}"));
                if let Ok(number) = std::fs::read_to_string(class_dir.join("dev")) {
                    tree::remove(&self.sys.join(format!("dev/char/{}", number.trim())))?;
                }
                tree::remove_dir(&class_dir)?;
            }
        }
        Ok(())
    }
}

/// Keeps a device's `uevent` in step with its driver, as the driver core's `dev_uevent()`
/// writes it: `DRIVER=<name>` first while bound, no such line while unbound. A device
/// without a `uevent` file (a test took it away) stays without one.
fn uevent_driver(dir: &Path, driver: Option<&str>) -> io::Result<()> {
    let path = dir.join("uevent");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut updated: String = driver.map(|d| format!("DRIVER={d}\n")).unwrap_or_default();
    for line in text.lines().filter(|l| !l.starts_with("DRIVER=")) {
        updated.push_str(line);
        updated.push('\n');
    }
    fs::write(&path, updated)
}

/// The kernel's `driver_override_store`: a trailing newline is dropped, empty clears it
/// (shown as `(null)`), and the value takes effect only at the next probe.
fn override_store(path: &Path, value: &str) -> io::Result<()> {
    let name = value.strip_suffix('\n').unwrap_or(value);
    if name.len() >= 4096 {
        return Err(errno(libc::EINVAL));
    }
    if name.is_empty() {
        fs::write(path, "(null)\n")
    } else {
        fs::write(path, format!("{name}\n"))
    }
}
