//! One PCI function as sysfs shows it: [`PciDevice`] and its typed attribute reads.
//!
//! A [`PciDevice`] is a handle on `<root>/bus/pci/devices/<address>`; each method reads one
//! attribute when called (nothing is cached, so a value is always the kernel's current one).
//! Reads follow libvirt's virpci: the driver is the basename of the `driver` link (absent
//! means unbound), a `vfio-dev/` directory marks a VFIO variant driver, the header type is
//! config byte 0x0e, and a config space larger than 256 bytes means PCIe.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::PciAddress;
use crate::attr;
use crate::dir::Dir;
use crate::error::SysfsError;
use crate::resource::{Bar, parse_resource};
use crate::sysfs::Sysfs;

/// The name of the generic VFIO PCI driver.
pub const VFIO_PCI: &str = "vfio-pci";

/// The name of the PCI stub driver: it claims a device so that no host driver does, and
/// the kernel allows it beside VFIO in an IOMMU group (`vfio_driver_allowed[]` in
/// `drivers/vfio/group.c`).
pub const PCI_STUB: &str = "pci-stub";

/// A 24-bit PCI class code: base class, subclass, programming interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciClass(u32);

impl PciClass {
    /// Builds a class from its 24-bit code (higher bits are dropped).
    pub fn new(code: u32) -> Self {
        Self(code & 0x00ff_ffff)
    }

    /// The 24-bit code, e.g. `0x020000`.
    pub fn code(self) -> u32 {
        self.0
    }

    /// The base class (e.g. `0x02`, network).
    pub fn base(self) -> u8 {
        self.0.to_be_bytes()[1]
    }

    /// The subclass (e.g. `0x00`, Ethernet).
    pub fn subclass(self) -> u8 {
        self.0.to_be_bytes()[2]
    }

    /// The programming interface.
    pub fn prog_if(self) -> u8 {
        self.0.to_be_bytes()[3]
    }

    /// Base class and subclass as lspci's `[0200]` shows them.
    pub fn class_and_subclass(self) -> u16 {
        u16::from_be_bytes([self.base(), self.subclass()])
    }

    /// A host bridge (0x0600) or PCI-to-PCI bridge (0x0604). Bridges do not count for
    /// IOMMU-group viability.
    pub fn is_bridge(self) -> bool {
        matches!(self.class_and_subclass(), 0x0600 | 0x0604)
    }
}

impl fmt::Display for PciClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:06x}", self.0)
    }
}

impl Serialize for PciClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciClass {
    /// Reads the serialized form, `"0x"` and 1 to 6 hex digits.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.strip_prefix("0x")
            .filter(|hex| {
                !hex.is_empty() && hex.len() <= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(Self::new)
            .ok_or_else(|| {
                serde::de::Error::invalid_value(
                    serde::de::Unexpected::Str(&text),
                    &"a class code 0x000000 to 0xffffff",
                )
            })
    }
}

/// The layout of a function's config header (config byte 0x0e, bit 7 masked off).
///
/// JSON words (stable): `endpoint`, `pci_bridge`, `card_bus`. [`Display`](fmt::Display)
/// prints the human words: "endpoint", "PCI-to-PCI bridge", "CardBus bridge".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderType {
    /// Type 0: an endpoint.
    Endpoint,
    /// Type 1: a PCI-to-PCI bridge.
    PciBridge,
    /// Type 2: a CardBus bridge.
    CardBus,
}

impl HeaderType {
    /// The stable word used in JSON: `endpoint`, `pci_bridge`, `card_bus`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::PciBridge => "pci_bridge",
            Self::CardBus => "card_bus",
        }
    }
}

impl fmt::Display for HeaderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Endpoint => "endpoint",
            Self::PciBridge => "PCI-to-PCI bridge",
            Self::CardBus => "CardBus bridge",
        })
    }
}

/// What kind of driver a device is bound to, as far as VFIO is concerned.
///
/// JSON words (stable): `unbound`, `vfio_pci`, `vfio_variant`, `stub`, `host`.
/// [`Display`](fmt::Display) prints the human words: "unbound", "vfio-pci", "vfio variant
/// driver", "pci-stub (allowed beside VFIO)", "host driver".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// No driver.
    Unbound,
    /// `vfio-pci` itself.
    VfioPci,
    /// A vfio variant driver (e.g. `mlx5_vfio_pci`): the device has a `vfio-dev/` directory.
    VfioVariant,
    /// `pci-stub`: not usable through VFIO, but the kernel lets the rest of its IOMMU group
    /// be (a GPU's audio function parked there does not make the group non-viable).
    Stub,
    /// Any other host driver.
    Host,
}

impl DriverKind {
    /// The stable word used in JSON: `unbound`, `vfio_pci`, `vfio_variant`, `stub`, `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unbound => "unbound",
            Self::VfioPci => "vfio_pci",
            Self::VfioVariant => "vfio_variant",
            Self::Stub => "stub",
            Self::Host => "host",
        }
    }

    /// `vfio-pci` or a variant: the device is usable through VFIO.
    pub fn is_vfio(self) -> bool {
        matches!(self, Self::VfioPci | Self::VfioVariant)
    }

    /// Bound to a driver on the host's side, not a vfio one: a host driver or `pci-stub`.
    /// Taking such a device for a VM means detaching it from that driver.
    pub fn is_host_side(self) -> bool {
        matches!(self, Self::Stub | Self::Host)
    }

    /// An endpoint on this driver keeps its IOMMU group from being used through VFIO: a
    /// host driver. The kernel allows no driver, a vfio driver and `pci-stub`.
    pub fn blocks_group(self) -> bool {
        self == Self::Host
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unbound => "unbound",
            Self::VfioPci => VFIO_PCI,
            Self::VfioVariant => "vfio variant driver",
            Self::Stub => "pci-stub (allowed beside VFIO)",
            Self::Host => "host driver",
        })
    }
}

/// Which resets the kernel offers for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetMethods {
    /// The `reset` attribute exists (the kernel found at least one method).
    pub can_reset: bool,
    /// The methods from `reset_method` (`flr`, `pm`, `bus`…), in the kernel's order; empty
    /// when that attribute is missing (kernels before 5.15) or lists none.
    pub methods: Vec<String>,
}

/// A handle on one PCI function under a [`Sysfs`] root.
#[derive(Debug, Clone)]
pub struct PciDevice {
    sysfs: Sysfs,
    address: PciAddress,
    path: PathBuf,
    dir: Option<Arc<Dir>>,
}

impl Sysfs {
    /// Every PCI function on the host, sorted by address. Entries of
    /// `bus/pci/devices` that are not PCI addresses are skipped with a warning. A host
    /// without a PCI bus has none; a root that does not exist at all is
    /// [`SysfsError::NotFound`] (a mistyped `--sysfs-root` should not look like an empty host).
    pub fn pci_addresses(&self) -> Result<Vec<PciAddress>, SysfsError> {
        if !attr::is_dir(self.root()) {
            return Err(SysfsError::NotFound {
                what: "sysfs root".to_owned(),
                path: self.root().to_owned(),
            });
        }
        let dir = self.pci_devices_dir();
        let mut addresses: Vec<PciAddress> = attr::list_dir(&dir)?
            .into_iter()
            .filter_map(|name| match name.parse() {
                Ok(address) => Some(address),
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), %err, "skipping a non-PCI entry");
                    None
                }
            })
            .collect();
        addresses.sort_unstable();
        Ok(addresses)
    }

    /// Every PCI function on the host, sorted by address.
    pub fn pci_devices(&self) -> Result<Vec<PciDevice>, SysfsError> {
        let mut devices = Vec::new();
        for address in self.pci_addresses()? {
            match self.pci_device(address) {
                Ok(device) => devices.push(device),
                // Removed while we listed: not an error.
                Err(SysfsError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(devices)
    }

    /// The PCI function at `address`; [`SysfsError::NotFound`] when the host has none.
    ///
    /// The `bus/pci/devices/<address>` link is read once here, and the handle then reads
    /// attributes from the device's real directory (no symlink walk per attribute).
    pub fn pci_device(&self, address: PciAddress) -> Result<PciDevice, SysfsError> {
        let dir = self.pci_devices_dir();
        let link = dir.join(address.to_string());
        let path = match fs::read_link(&link) {
            Ok(target) => attr::join_link(&dir, &target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SysfsError::NotFound {
                    what: format!("PCI device {address}"),
                    path: link,
                });
            }
            // Not a symlink (EINVAL) or unreadable: use the entry itself; reads will say why.
            Err(_) => link,
        };
        Ok(PciDevice {
            path,
            sysfs: self.clone(),
            address,
            dir: None,
        })
    }
}

impl PciDevice {
    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The device's directory: where `<root>/bus/pci/devices/<address>` points (e.g.
    /// `<root>/devices/pci0000:00/0000:00:1c.0/0000:01:00.0`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle this device was read through.
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// `<device>/<name>`.
    pub fn attr_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The same device with its directory held open, so that each read is one `openat`
    /// instead of a walk of the whole path: use it to read many attributes at once (the
    /// inventory does). It holds one file descriptor; if the device goes away, reads fail
    /// with the kernel's error.
    pub fn opened(&self) -> Result<Self, SysfsError> {
        if self.dir.is_some() {
            return Ok(self.clone());
        }
        let dir = Dir::open(&self.path).map_err(|e| SysfsError::read(&self.path, e))?;
        Ok(Self {
            dir: Some(Arc::new(dir)),
            ..self.clone()
        })
    }

    /// A handle on the device at `path` (its real directory) held open as `dir`.
    pub(crate) fn with_dir(sysfs: &Sysfs, address: PciAddress, path: PathBuf, dir: Dir) -> Self {
        Self {
            sysfs: sysfs.clone(),
            address,
            path,
            dir: Some(Arc::new(dir)),
        }
    }

    /// Calls `f` with the attribute's bytes; through the open directory without
    /// allocating when there is one.
    pub(crate) fn with_raw<T>(&self, name: &str, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        match &self.dir {
            Some(dir) => dir.with_small(name, f),
            None => attr::read_small(&self.attr_path(name)).map(|t| f(t.as_bytes())),
        }
    }

    /// A trimmed attribute, `None` when the file does not exist.
    pub(crate) fn text_opt(&self, name: &str) -> Result<Option<String>, SysfsError> {
        match self
            .with_raw(name, |b| trimmed(b).map(str::to_owned))
            .and_then(|t| t.ok_or_else(not_utf8))
        {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SysfsError::read(&self.attr_path(name), e)),
        }
    }

    fn hex(&self, name: &str, max: u32, expected: &'static str) -> Result<u32, SysfsError> {
        // Parsed in place; the text is copied only for an error.
        let parsed = self
            .with_raw(name, |b| {
                trimmed(b)
                    .and_then(attr::parse_hex_u32)
                    .filter(|v| *v <= max)
                    .ok_or_else(|| String::from_utf8_lossy(b).trim().to_owned())
            })
            .map_err(|e| SysfsError::read(&self.attr_path(name), e))?;
        parsed.map_err(|text| SysfsError::parse(&self.attr_path(name), &text, expected))
    }

    fn hex16(&self, name: &str) -> Result<u16, SysfsError> {
        let v = self.hex(name, 0xffff, "a 16-bit hex number like 0x8086")?;
        u16::try_from(v).map_err(|_| SysfsError::parse(&self.attr_path(name), "", "16 bits"))
    }

    /// The basename of the symlink `name` (not followed); `None` when absent.
    fn link_name(&self, name: &str) -> Result<Option<String>, SysfsError> {
        let Some(dir) = &self.dir else {
            return attr::link_basename(&self.attr_path(name));
        };
        let read = dir.with_link(name, |target| {
            attr::link_target_name(target)
                .map(str::to_owned)
                .ok_or_else(|| String::from_utf8_lossy(target).into_owned())
        });
        match read {
            Ok(Ok(basename)) => Ok(Some(basename)),
            Ok(Err(target)) => Err(SysfsError::parse(
                &self.attr_path(name),
                &target,
                "a symlink to a named object",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SysfsError::read(&self.attr_path(name), e)),
        }
    }

    fn link_address(&self, name: &str) -> Result<Option<PciAddress>, SysfsError> {
        match self.link_name(name)? {
            None => Ok(None),
            Some(target) => target.parse().map(Some).map_err(|_| {
                SysfsError::parse(&self.attr_path(name), &target, "a link to a PCI device")
            }),
        }
    }

    fn exists(&self, name: &str) -> bool {
        match &self.dir {
            Some(dir) => dir.exists(name),
            None => fs::symlink_metadata(self.attr_path(name)).is_ok(),
        }
    }

    /// The vendor ID (`vendor`).
    pub fn vendor_id(&self) -> Result<u16, SysfsError> {
        self.hex16("vendor")
    }

    /// The device ID (`device`).
    pub fn device_id(&self) -> Result<u16, SysfsError> {
        self.hex16("device")
    }

    /// The subsystem vendor ID (`subsystem_vendor`).
    pub fn subsystem_vendor_id(&self) -> Result<u16, SysfsError> {
        self.hex16("subsystem_vendor")
    }

    /// The subsystem device ID (`subsystem_device`).
    pub fn subsystem_device_id(&self) -> Result<u16, SysfsError> {
        self.hex16("subsystem_device")
    }

    /// The class code (`class`, `0x020000`).
    pub fn class(&self) -> Result<PciClass, SysfsError> {
        self.hex("class", 0x00ff_ffff, "a 24-bit class code like 0x020000")
            .map(PciClass::new)
    }

    /// The revision (`revision`).
    pub fn revision(&self) -> Result<u8, SysfsError> {
        let v = self.hex("revision", 0xff, "an 8-bit hex number like 0x01")?;
        u8::try_from(v).map_err(|_| SysfsError::parse(&self.attr_path("revision"), "", "8 bits"))
    }

    /// The size of the `config` file: 256 for conventional PCI, 4096 for PCIe. (Unprivileged
    /// readers may see only 64 bytes of content, but the size is the real one.)
    pub fn config_size(&self) -> Result<u64, SysfsError> {
        let result = match &self.dir {
            Some(dir) => dir.len("config"),
            None => fs::metadata(self.attr_path("config")).map(|m| m.len()),
        };
        result.map_err(|e| SysfsError::read(&self.attr_path("config"), e))
    }

    /// PCI Express: the config space is larger than 256 bytes.
    pub fn is_pcie(&self) -> Result<bool, SysfsError> {
        Ok(self.config_size()? > 256)
    }

    /// The header type from config byte 0x0e (bit 7, multi-function, masked off).
    pub fn header_type(&self) -> Result<HeaderType, SysfsError> {
        Ok(self.config_head()?.header_type)
    }

    /// One open of `config`: its size, and config bytes 0x08 to 0x0f (revision, class,
    /// header type), read as two dwords (config reads can trap to a hypervisor, so no
    /// more than needed).
    pub(crate) fn config_head(&self) -> Result<ConfigHead, SysfsError> {
        let mut head = [0u8; 8];
        let read = match &self.dir {
            Some(dir) => dir.size_and_bytes_at("config", 8, &mut head),
            None => File::open(self.attr_path("config")).and_then(|f| {
                let size = f.metadata()?.len();
                let mut done = 0;
                while let Some(rest) = head.get_mut(done..).filter(|r| !r.is_empty()) {
                    let at = 8 + u64::try_from(done).unwrap_or(u64::MAX);
                    let n = std::os::unix::fs::FileExt::read_at(&f, rest, at)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok((size, done))
            }),
        };
        // The path is made only for an error: this runs for every device of a listing.
        let path = || self.attr_path("config");
        let (size, got) = read.map_err(|e| SysfsError::read(&path(), e))?;
        // Byte 0x0e is head[6]: 15 bytes of config space at least.
        let Some(&header) = head.get(6).filter(|_| got > 6) else {
            return Err(SysfsError::parse(
                &path(),
                &format!("{} bytes", 8 + got.min(8)),
                "at least 15 bytes of config space",
            ));
        };
        let header_type = match header & 0x7f {
            0 => HeaderType::Endpoint,
            1 => HeaderType::PciBridge,
            2 => HeaderType::CardBus,
            other => {
                return Err(SysfsError::parse(
                    &path(),
                    &format!("header type {other:#04x} at config offset 0x0e"),
                    "header type 0, 1 or 2",
                ));
            }
        };
        Ok(ConfigHead {
            size,
            revision: head[0],
            header_type,
        })
    }

    /// The bound driver's name, or `None` when unbound.
    pub fn driver(&self) -> Result<Option<String>, SysfsError> {
        self.link_name("driver")
    }

    /// The `vfioN` name under `vfio-dev/` (present while a VFIO driver that supports the
    /// device cdev is bound; `/dev/vfio/devices/vfioN` is its node).
    pub fn vfio_dev(&self) -> Result<Option<String>, SysfsError> {
        let names = match &self.dir {
            Some(dir) => match dir.list("vfio-dev") {
                Ok(names) => names,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(SysfsError::read(&self.attr_path("vfio-dev"), e)),
            },
            None => attr::list_dir(&self.attr_path("vfio-dev"))?,
        };
        // The lowest name, as a sorted listing would give it.
        Ok(names.into_iter().filter(|n| n.starts_with("vfio")).min())
    }

    /// The device cdev node, `<dev root>/vfio/devices/vfioN`, while one exists in sysfs.
    pub fn vfio_cdev_path(&self) -> Result<Option<PathBuf>, SysfsError> {
        Ok(self
            .vfio_dev()?
            .map(|name| self.sysfs.dev_path(format!("vfio/devices/{name}"))))
    }

    /// What the bound driver is to VFIO: none, vfio-pci, a variant, or a host driver.
    pub fn driver_kind(&self) -> Result<DriverKind, SysfsError> {
        Ok(self.driver_kind_of(self.driver()?.as_deref()))
    }

    /// [`Self::driver_kind`] for a driver name already read.
    pub(crate) fn driver_kind_of(&self, driver: Option<&str>) -> DriverKind {
        kind_of(driver, || match &self.dir {
            Some(dir) => dir.is_dir("vfio-dev"),
            None => attr::is_dir(&self.attr_path("vfio-dev")),
        })
    }

    /// The `driver_override`, or `None` when unset (the kernel shows `(null)`) or when the
    /// kernel has no such attribute.
    pub fn driver_override(&self) -> Result<Option<String>, SysfsError> {
        Ok(self
            .text_opt("driver_override")?
            .filter(|value| !value.is_empty() && value != "(null)"))
    }

    /// The IOMMU group number, or `None` when the device has none (IOMMU off).
    pub fn iommu_group(&self) -> Result<Option<u32>, SysfsError> {
        match self.link_name("iommu_group")? {
            None => Ok(None),
            Some(name) => name.parse().map(Some).map_err(|_| {
                SysfsError::parse(
                    &self.attr_path("iommu_group"),
                    &name,
                    "a link to kernel/iommu_groups/<N>",
                )
            }),
        }
    }

    /// The NUMA node, or `None` when the kernel reports -1 or has no such attribute.
    pub fn numa_node(&self) -> Result<Option<u32>, SysfsError> {
        let Some(text) = self.text_opt("numa_node")? else {
            return Ok(None);
        };
        let bad = || {
            SysfsError::parse(
                &self.attr_path("numa_node"),
                &text,
                "a NUMA node number or -1",
            )
        };
        match text.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => u32::try_from(n).map(Some).map_err(|_| bad()),
            Err(_) => Err(bad()),
        }
    }

    /// The used BARs, ROM and windows, from `resource`.
    pub fn bars(&self) -> Result<Vec<Bar>, SysfsError> {
        let parsed = self
            .with_raw("resource", |b| {
                std::str::from_utf8(b)
                    .map(parse_resource)
                    .map_err(|_| not_utf8())
            })
            .and_then(|r| r)
            .map_err(|e| SysfsError::read(&self.attr_path("resource"), e))?;
        parsed.map_err(|err| SysfsError::Parse {
            path: self.attr_path("resource"),
            value: err.to_string(),
            expected: "lines of '0x<start> 0x<end> 0x<flags>'",
        })
    }

    /// True when one BAR is larger than 4 GiB.
    pub fn has_large_bar(&self) -> Result<bool, SysfsError> {
        Ok(self.bars()?.iter().any(Bar::is_large))
    }

    /// For an SR-IOV virtual function, its physical function (`physfn` link).
    pub fn physfn(&self) -> Result<Option<PciAddress>, SysfsError> {
        self.link_address("physfn")
    }

    /// For an SR-IOV physical function, its virtual functions (`virtfnN` links), by N.
    pub fn virtfns(&self) -> Result<Vec<PciAddress>, SysfsError> {
        let mut found = Vec::new();
        let names = match &self.dir {
            Some(dir) => dir.list(".").map_err(|e| SysfsError::read(&self.path, e))?,
            None => attr::list_dir(&self.path)?,
        };
        for name in names {
            let Some(index) = name
                .strip_prefix("virtfn")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(address) = self.link_address(&name)? {
                found.push((index, address));
            }
        }
        found.sort_unstable();
        Ok(found.into_iter().map(|(_, address)| address).collect())
    }

    /// `sriov_totalvfs`, or `None` when the device is not an SR-IOV PF.
    pub fn sriov_totalvfs(&self) -> Result<Option<u32>, SysfsError> {
        self.text_opt("sriov_totalvfs")?
            .map(|text| {
                text.parse().map_err(|_| {
                    SysfsError::parse(&self.attr_path("sriov_totalvfs"), &text, "a decimal count")
                })
            })
            .transpose()
    }

    /// Which resets exist (`reset` and `reset_method`).
    ///
    /// Since 5.15 the kernel shows `reset_method` exactly when it shows `reset` (both are
    /// visible when `pci_reset_supported()`), so a readable `reset_method` answers both and
    /// `reset` is looked for only without one (older kernels, or no method listed).
    pub fn reset_methods(&self) -> Result<ResetMethods, SysfsError> {
        if let Some(text) = self.text_opt("reset_method")? {
            return Ok(ResetMethods {
                can_reset: true,
                methods: text.split_whitespace().map(str::to_owned).collect(),
            });
        }
        Ok(ResetMethods {
            can_reset: self.exists("reset"),
            methods: Vec::new(),
        })
    }

    /// The upstream PCI device (bridge or port) this function sits behind, if any: the
    /// device directory's parent, when it is named like a PCI address.
    pub fn parent(&self) -> Result<Option<PciAddress>, SysfsError> {
        // The component before the last, as `Path::parent` and `file_name` find it, but
        // on the bytes (this runs for every device of a listing).
        let mut components = self
            .path
            .as_os_str()
            .as_bytes()
            .rsplit(|b| *b == b'/')
            .filter(|part| !matches!(*part, b"" | b"."));
        Ok(components
            .nth(1)
            .and_then(|name| std::str::from_utf8(name).ok())
            .and_then(|name| name.parse().ok()))
    }
}

/// What one read of `config` tells: its size and the header's revision and type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConfigHead {
    /// The size of `config` (256 for PCI, 4096 for PCIe).
    pub(crate) size: u64,
    /// Config byte 0x08.
    pub(crate) revision: u8,
    /// Config byte 0x0e, decoded.
    pub(crate) header_type: HeaderType,
}

/// The attribute's text without surrounding whitespace; `None` when it is not UTF-8.
fn trimmed(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().map(str::trim)
}

fn not_utf8() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")
}

/// The driver kind from a driver name and a lazy "has `vfio-dev/`" check.
pub(crate) fn kind_of(driver: Option<&str>, has_vfio_dev: impl FnOnce() -> bool) -> DriverKind {
    match driver {
        None => DriverKind::Unbound,
        Some(VFIO_PCI) => DriverKind::VfioPci,
        Some(PCI_STUB) => DriverKind::Stub,
        Some(_) if has_vfio_dev() => DriverKind::VfioVariant,
        Some(_) => DriverKind::Host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_parts() {
        let c = PciClass::new(0x06_0401);
        assert_eq!((c.base(), c.subclass(), c.prog_if()), (0x06, 0x04, 0x01));
        assert!(c.is_bridge());
        assert!(PciClass::new(0x060000).is_bridge());
        assert!(!PciClass::new(0x020000).is_bridge());
        assert_eq!(PciClass::new(0x010802).to_string(), "0x010802");
        assert_eq!(PciClass::new(0x010802).class_and_subclass(), 0x0108);
    }

    #[test]
    fn driver_kinds() {
        assert_eq!(kind_of(None, || true), DriverKind::Unbound);
        assert_eq!(kind_of(Some("vfio-pci"), || false), DriverKind::VfioPci);
        assert_eq!(
            kind_of(Some("mlx5_vfio_pci"), || true),
            DriverKind::VfioVariant
        );
        assert_eq!(kind_of(Some("e1000e"), || false), DriverKind::Host);
        assert_eq!(kind_of(Some("pci-stub"), || false), DriverKind::Stub);
        let blocking: Vec<DriverKind> = [
            DriverKind::Unbound,
            DriverKind::VfioPci,
            DriverKind::VfioVariant,
            DriverKind::Stub,
            DriverKind::Host,
        ]
        .into_iter()
        .filter(|k| k.blocks_group())
        .collect();
        assert_eq!(blocking, [DriverKind::Host]);
        assert!(DriverKind::Stub.is_host_side() && DriverKind::Host.is_host_side());
        assert!(!DriverKind::Stub.is_vfio() && !DriverKind::Unbound.is_host_side());
    }

    #[test]
    fn kinds_have_a_snake_case_json_word_and_a_human_word() {
        let kinds = [
            (DriverKind::Unbound, "unbound", "unbound"),
            (DriverKind::VfioPci, "vfio_pci", "vfio-pci"),
            (
                DriverKind::VfioVariant,
                "vfio_variant",
                "vfio variant driver",
            ),
            (DriverKind::Stub, "stub", "pci-stub (allowed beside VFIO)"),
            (DriverKind::Host, "host", "host driver"),
        ];
        for (kind, word, human) in kinds {
            assert_eq!(serde_json::to_value(kind).unwrap(), word);
            assert_eq!(kind.as_str(), word);
            assert_eq!(kind.to_string(), human);
            assert_ne!(human, format!("{kind:?}"), "never the Debug name");
            assert_eq!(
                serde_json::from_value::<DriverKind>(word.into()).unwrap(),
                kind
            );
        }
        let headers = [
            (HeaderType::Endpoint, "endpoint", "endpoint"),
            (HeaderType::PciBridge, "pci_bridge", "PCI-to-PCI bridge"),
            (HeaderType::CardBus, "card_bus", "CardBus bridge"),
        ];
        for (header, word, human) in headers {
            assert_eq!(serde_json::to_value(header).unwrap(), word);
            assert_eq!(header.as_str(), word);
            assert_eq!(header.to_string(), human);
            assert_ne!(human, format!("{header:?}"), "never the Debug name");
            assert_eq!(
                serde_json::from_value::<HeaderType>(word.into()).unwrap(),
                header
            );
        }
        serde_json::from_value::<DriverKind>("vfio-pci".into()).unwrap_err();
    }

    #[test]
    fn a_class_round_trips_through_its_hex_string() {
        for code in [0, 0x02_0000, 0x06_0401, 0xff_ffff] {
            let class = PciClass::new(code);
            let json = serde_json::to_value(class).unwrap();
            assert_eq!(serde_json::from_value::<PciClass>(json).unwrap(), class);
        }
        for bad in ["020000", "0x", "0x1000000", "0xzz", ""] {
            serde_json::from_value::<PciClass>(bad.into()).expect_err(bad);
        }
    }
}
