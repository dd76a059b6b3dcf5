//! VFIO devices: an IOMMU group (or one iommufd cdev) and the functions that go to the guest.
//!
//! A group is plugged as a unit: every endpoint of the group goes to the guest, host bridges
//! (class `0x0600`) and PCI-PCI bridges (`0x0604`) are left out, and "other" bridges
//! (`0x0680`, e.g. NVSwitch) are kept. The host reads that fill a [`VfioSpec`] live in the
//! crate's `host` module.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

/// How the VMM opens the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum VfioBackend {
    /// Legacy container + group: `/dev/vfio/<group>`.
    Group {
        /// The IOMMU group number.
        group: u32,
    },
    /// iommufd cdev: `/dev/vfio/devices/vfio<index>`.
    Cdev {
        /// The `N` of `vfioN`.
        index: u32,
    },
}

impl fmt::Display for VfioBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Group { group } => write!(f, "/dev/vfio/{group}"),
            Self::Cdev { index } => write!(f, "/dev/vfio/devices/vfio{index}"),
        }
    }
}

/// Why a VFIO spec or one of its parts is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VfioSpecError {
    /// A mediated-device UUID that is not 8-4-4-4-12 hex digits.
    #[error("mdev UUID {0:?} is not 8-4-4-4-12 hex digits")]
    MdevUuid(String),
    /// A spec without functions.
    #[error("VFIO device {0} has no functions to pass through")]
    NoFunctions(VfioBackend),
}

/// A mediated device's UUID, lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MdevUuid(String);

impl MdevUuid {
    /// The UUID text, lower case.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MdevUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MdevUuid {
    type Err = VfioSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lens: Vec<usize> = s.split('-').map(str::len).collect();
        let hex = s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
        if lens != [8, 4, 4, 4, 12] || !hex {
            return Err(VfioSpecError::MdevUuid(s.to_owned()));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for MdevUuid {
    type Error = VfioSpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MdevUuid> for String {
    fn from(u: MdevUuid) -> Self {
        u.0
    }
}

/// Which host function: a PCI function by address, or a mediated device by UUID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostFunction {
    /// A normal PCI function.
    Pci(PciAddress),
    /// A mediated device.
    Mdev(MdevUuid),
}

impl fmt::Display for HostFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(a) => write!(f, "{a}"),
            Self::Mdev(u) => write!(f, "mdev {u}"),
        }
    }
}

/// One function of a VFIO device that goes to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioFunction {
    /// Which host function.
    pub host: HostFunction,
    /// Its sysfs directory (`/sys/bus/pci/devices/<bdf>`, or the mdev's resolved directory);
    /// QEMU's `sysfsdev=`.
    pub sysfs_path: PathBuf,
    /// The 24-bit PCI class code (`0x030000`), when known (mdevs have none).
    pub class: Option<u32>,
    /// PCI Express: config space larger than 256 bytes. Every function takes a root port
    /// of the VM's pool, PCIe or conventional.
    pub is_pcie: bool,
    /// A BAR larger than 4 GiB (the VMM must size its 64-bit MMIO window for it).
    pub large_bar: bool,
}

/// A VFIO device: the backend node and its functions, in group order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioSpec {
    /// How the VMM opens it.
    pub backend: VfioBackend,
    /// The functions that go to the guest (bridges already left out).
    pub functions: Vec<VfioFunction>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_serialize_with_the_kernel_address_form() {
        let f = VfioFunction {
            host: HostFunction::Pci("0000:02:1f.7".parse().unwrap()),
            sysfs_path: PathBuf::from("/sys/bus/pci/devices/0000:02:1f.7"),
            class: Some(0x03_0000),
            is_pcie: true,
            large_bar: true,
        };
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"0000:02:1f.7\""), "{json}");
        assert_eq!(serde_json::from_str::<VfioFunction>(&json).unwrap(), f);
    }

    #[test]
    fn mdev_uuid() {
        let u: MdevUuid = "C0FFEE00-1111-2222-3333-444455556666".parse().unwrap();
        assert_eq!(u.as_str(), "c0ffee00-1111-2222-3333-444455556666");
        "c0ffee00-1111-2222-3333".parse::<MdevUuid>().unwrap_err();
        "g0ffee00-1111-2222-3333-444455556666"
            .parse::<MdevUuid>()
            .unwrap_err();
    }

    #[test]
    fn backend_paths() {
        assert_eq!(VfioBackend::Group { group: 12 }.to_string(), "/dev/vfio/12");
        assert_eq!(
            VfioBackend::Cdev { index: 3 }.to_string(),
            "/dev/vfio/devices/vfio3"
        );
    }
}
