//! The fake kernel: a sysfs tree in a temp dir with the kernel's layout and semantics.
//!
//! Upper crates test everything that touches the host against this, and the same code then
//! runs unchanged on a real kernel in the lab guest. Enable it with
//! `plugboard-sysfs = { workspace = true, features = ["test-util"] }` in `[dev-dependencies]`.
//!
//! # A tree from a short table
//!
//! ```
//! use plugboard_sysfs::fake::{DriverSpec, FakeKernel, PciSpec};
//! use plugboard_sysfs::PciAddress;
//!
//! let kernel = FakeKernel::builder()
//!     // Two e1000e NICs behind a PCIe-to-PCI bridge share IOMMU group 5.
//!     .pci(PciSpec::bridge("0000:00:1e.0").iommu_group(5))
//!     .pci(PciSpec::new("0000:01:01.0", 0x8086, 0x10d3).class(0x020000)
//!         .parent("0000:00:1e.0").iommu_group(5).driver("e1000e"))
//!     .pci(PciSpec::new("0000:01:02.0", 0x8086, 0x10d3).class(0x020000)
//!         .parent("0000:00:1e.0").iommu_group(5).driver("e1000e"))
//!     // A NIC alone in group 7.
//!     .pci(PciSpec::new("0000:02:00.0", 0x8086, 0x10d3).class(0x020000)
//!         .iommu_group(7).driver("e1000e"))
//!     .build()?;
//!
//! let sysfs = kernel.sysfs(); // a `Sysfs` whose writes the fake kernel applies
//! let nic = sysfs.pci_device("02:00.0".parse::<PciAddress>()?)?;
//! nic.bind("vfio-pci")?; // override, unbind, drivers_probe, verify
//! assert_eq!(nic.driver()?.as_deref(), Some("vfio-pci"));
//! assert!(kernel.dev_root().join("vfio/7").exists()); // the group node appeared
//! assert!(nic.vfio_cdev_path()?.is_some_and(|p| p.exists())); // and the device cdev
//!
//! assert!(!sysfs.iommu_group(5)?.is_viable()); // both members are still on e1000e
//!
//! nic.reattach(Some("e1000e"))?; // clear override, unbind, probe: the ID table wins
//! assert!(!kernel.dev_root().join("vfio/7").exists()); // gone with the last member
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The layout
//!
//! Under [`FakeKernel::sysfs_root`] (`<tmp>/sys`): `devices/pciDDDD:BB/<bdf>/...` (children
//! of bridges nested in their parent's directory), `bus/pci/devices/<bdf>` links,
//! `bus/pci/drivers/<name>/{bind,unbind,new_id,remove_id,<bdf> links}`,
//! `bus/pci/drivers_probe`, each device's `driver` and `iommu_group` links,
//! `kernel/iommu_groups/N/devices/<bdf>` links, `dev/{block,char}/M:m` links to directories
//! with a `uevent`, `class/block/<name>`, `bus/mdev/devices/<uuid>`, `bus/usb/devices/<name>`,
//! `bus/scsi/devices/<H:C:T:L>`. Under [`FakeKernel::dev_root`] (`<tmp>/dev`): `vfio/vfio`,
//! `iommu` (unless [`FakeKernelBuilder::legacy_vfio_only`]), and the VFIO nodes as devices
//! bind. A device's attributes: `vendor`, `device`, `subsystem_vendor`, `subsystem_device`,
//! `class`, `revision`, `config` (the real header bytes; 4096 bytes for PCIe, 256 for PCI),
//! `driver_override`, `numa_node`, `resource`, `reset`, `reset_method`, `uevent`,
//! `modalias`, and `physfn`/`virtfnN`/`sriov_*` for SR-IOV.
//!
//! # The semantics, and how writes reach them
//!
//! A temp dir cannot react to writes, so [`FakeKernel::sysfs`] returns a [`Sysfs`] whose
//! writer (the [`AttrWriter`](crate::AttrWriter) seam) applies the kernel's rules *during*
//! the write and returns the kernel's errno, exactly where a real kernel would:
//!
//! - `driver_override` is stored (`(null)` when cleared with `"\n"`) and read only at probe.
//! - `bus/pci/drivers_probe` binds only an unbound device: to the override if one is set
//!   (and only to it), else to the first driver (by name) whose ID table has the device's
//!   `vendor:device`. It returns success even when nothing binds, like the kernel.
//! - `drivers/<d>/bind` fails with ENODEV on a bound device, or when `<d>` does not match;
//!   `drivers/<d>/unbind` fails with ENODEV unless the device is bound to `<d>`. (Real 6.12
//!   answers a bind on a bound device with EBUSY when `<d>` matches it and ENODEV when not;
//!   the fake follows libvirt's mock and always says ENODEV. Plugboard itself never writes
//!   `bind`: it uses `drivers_probe`, whose behaviour is the same in both.)
//! - A driver's probe fails (device left unbound) when the table says so
//!   ([`DriverSpec::fail_probe`]), and VFIO drivers fail on a device with no IOMMU group.
//! - Binding a VFIO driver (`vfio-pci` or a [`DriverSpec::vfio_variant`]) creates
//!   `/dev/vfio/<group>` when it is the group's first VFIO member, the device's
//!   `vfio-dev/vfioN/` (lowest free N, with `dev` and `uevent`) and
//!   `/dev/vfio/devices/vfioN`; unbinding removes the cdev, and the group node goes with the
//!   group's last VFIO member. `dev/char/M:m` links follow; a group node's minor is the
//!   lowest free one (the kernel numbers them in creation order, not by group).
//! - An mdev with an IOMMU group ([`MdevSpec::iommu_group`]) has its group node, its
//!   `vfio-dev/vfioN` and `/dev/vfio/devices/vfioN` from the start, as a real mdev bound to
//!   its vendor driver does; its parent is a PCI function or a virtual device
//!   ([`MdevSpec::on_virtual_parent`], like the kernel's `mtty` sample).
//! - `reset` accepts `1` and counts ([`FakeKernel::resets`]); `new_id`, `remove_id`,
//!   `remove` and `rescan` fail with EPERM (Plugboard never uses them); writing a missing
//!   attribute is ENOENT; other attributes just store the value.
//!
//! Drivers are registered from [`DriverSpec`]s, plus `vfio-pci` (no IDs), plus every
//! driver a [`PciSpec::driver`] names (with that device's IDs in its table, so reattaching
//! works as on a host). At build, devices bind as at boot (named driver, else override, else
//! ID table).
//!
//! Only writes made through this `Sysfs` (and its clones) get the semantics. Another process
//! writing into the tree (say, the `plugboard` binary run with `--sysfs-root`) sees a plain
//! directory; test such commands by reading, or through the library in-process.

mod build;
mod semantics;
mod spec;
mod synthetic;
mod tree;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use crate::address::PciAddress;
use crate::sysfs::Sysfs;

pub use semantics::{VFIO_CDEV_MAJOR, VFIO_GROUP_MAJOR};
pub use spec::{DriverSpec, MdevSpec, NodeSpec, PciSpec, ScsiSpec, UsbSpec};

use semantics::State;

/// A fake kernel could not be built (a bad table, or the temp dir failed).
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// A file system operation in the temp dir failed.
    #[error("fake kernel: cannot create {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The table is inconsistent (bad address, unknown parent, duplicate…).
    #[error("fake kernel table: {0}")]
    Table(String),
}

impl FakeError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A declarative description of a fake kernel; [`build`](Self::build) lays it out.
#[derive(Debug, Clone)]
pub struct FakeKernelBuilder {
    pub(crate) pci: Vec<PciSpec>,
    pub(crate) drivers: Vec<DriverSpec>,
    pub(crate) mdevs: Vec<MdevSpec>,
    pub(crate) usb: Vec<UsbSpec>,
    pub(crate) scsi: Vec<ScsiSpec>,
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) cdev: bool,
    pub(crate) vfio_pci: bool,
    pub(crate) in_dir: Option<PathBuf>,
}

impl Default for FakeKernelBuilder {
    fn default() -> Self {
        Self {
            pci: Vec::new(),
            drivers: Vec::new(),
            mdevs: Vec::new(),
            usb: Vec::new(),
            scsi: Vec::new(),
            nodes: Vec::new(),
            cdev: true,
            vfio_pci: true,
            in_dir: None,
        }
    }
}

impl FakeKernelBuilder {
    /// Adds a PCI function (bridges and parents before the devices behind them).
    #[must_use]
    pub fn pci(mut self, spec: PciSpec) -> Self {
        self.pci.push(spec);
        self
    }

    /// Registers a driver (its ID table, variant flag, probe failures).
    #[must_use]
    pub fn driver(mut self, spec: DriverSpec) -> Self {
        self.drivers.push(spec);
        self
    }

    /// Adds a mediated device.
    #[must_use]
    pub fn mdev(mut self, spec: MdevSpec) -> Self {
        self.mdevs.push(spec);
        self
    }

    /// Adds a USB device.
    #[must_use]
    pub fn usb(mut self, spec: UsbSpec) -> Self {
        self.usb.push(spec);
        self
    }

    /// Adds a SCSI device.
    #[must_use]
    pub fn scsi(mut self, spec: ScsiSpec) -> Self {
        self.scsi.push(spec);
        self
    }

    /// Adds a block or char device node.
    #[must_use]
    pub fn node(mut self, spec: NodeSpec) -> Self {
        self.nodes.push(spec);
        self
    }

    /// A kernel without VFIO cdev and iommufd: no `vfio-dev/`, no `/dev/vfio/devices`, no
    /// `/dev/iommu` (kernels before 6.2, or built without `CONFIG_VFIO_DEVICE_CDEV`).
    #[must_use]
    pub fn legacy_vfio_only(mut self) -> Self {
        self.cdev = false;
        self
    }

    /// No `vfio-pci` driver registered (module not loaded).
    #[must_use]
    pub fn without_vfio_pci(mut self) -> Self {
        self.vfio_pci = false;
        self
    }

    /// Builds in `dir` (which must exist and be empty) instead of a new temp dir; the
    /// caller then owns the tree's lifetime (used by benchmarks that keep a tree).
    #[must_use]
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.in_dir = Some(dir.to_owned());
        self
    }

    /// Lays the tree out and returns the running fake kernel.
    pub fn build(&self) -> Result<FakeKernel, FakeError> {
        build::build(self)
    }
}

/// A running fake kernel. Its temp dir is removed when it is dropped.
#[derive(Debug)]
pub struct FakeKernel {
    _dir: Option<TempDir>,
    root: PathBuf,
    state: Arc<Mutex<State>>,
    sysfs: Sysfs,
}

impl FakeKernel {
    /// Starts a table.
    pub fn builder() -> FakeKernelBuilder {
        FakeKernelBuilder::default()
    }

    /// A [`Sysfs`] on this tree whose writes the fake kernel applies. Clone it freely.
    pub fn sysfs(&self) -> Sysfs {
        self.sysfs.clone()
    }

    /// The directory holding `sys/` and `dev/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/sys`, what `--sysfs-root` should point at.
    pub fn sysfs_root(&self) -> PathBuf {
        self.root.join("sys")
    }

    /// `<root>/dev`, what `--dev-root` should point at.
    pub fn dev_root(&self) -> PathBuf {
        self.root.join("dev")
    }

    /// How many times `reset` was written for `address`.
    pub fn resets(&self, address: PciAddress) -> u32 {
        self.state
            .lock()
            .map_or(0, |s| s.resets.get(&address).copied().unwrap_or(0))
    }

    /// Every write so far, `(path, value)`, in order (paths as written).
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.state
            .lock()
            .map(|s| s.writes.clone())
            .unwrap_or_default()
    }

    /// The registered drivers and their ID tables.
    pub fn drivers(&self) -> BTreeMap<String, Vec<(u16, u16)>> {
        self.state
            .lock()
            .map(|s| {
                s.drivers
                    .iter()
                    .map(|(name, d)| (name.clone(), d.ids.iter().copied().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
