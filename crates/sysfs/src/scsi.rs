//! SCSI devices (`bus/scsi/devices/H:C:T:L`): identity, and their block and sg nodes.
//!
//! Passing a SCSI device through (QEMU `scsi-generic`, libvirt's SCSI hostdev) needs its
//! SCSI generic node (`/dev/sgN`), found under the device's `scsi_generic/` directory.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::attr;
use crate::error::SysfsError;
use crate::sysfs::Sysfs;

/// A SCSI address: host, channel, target, LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScsiAddress {
    /// Host adapter number.
    pub host: u32,
    /// Channel (bus).
    pub channel: u32,
    /// Target ID.
    pub target: u32,
    /// Logical unit number.
    pub lun: u64,
}

impl fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.channel, self.target, self.lun
        )
    }
}

impl Serialize for ScsiAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScsiAddress {
    /// Reads the serialized form, `H:C:T:L`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A string that is not `H:C:T:L`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a SCSI address: expected H:C:T:L in decimal, e.g. 0:0:0:0")]
pub struct ScsiAddressError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for ScsiAddress {
    type Err = ScsiAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ScsiAddressError {
            input: s.to_owned(),
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [h, c, t, l] = parts.as_slice() else {
            return Err(bad());
        };
        let num = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                t.parse::<u64>().ok()
            }
        };
        let small = |t: &str| num(t).and_then(|n| u32::try_from(n).ok());
        Ok(Self {
            host: small(h).ok_or_else(bad)?,
            channel: small(c).ok_or_else(bad)?,
            target: small(t).ok_or_else(bad)?,
            lun: num(l).ok_or_else(bad)?,
        })
    }
}

/// One SCSI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiDevice {
    /// Its address.
    pub address: ScsiAddress,
    /// `vendor` (trimmed).
    pub vendor: String,
    /// `model` (trimmed).
    pub model: String,
    /// The peripheral type (0 disk, 1 tape, 5 CD-ROM…).
    pub scsi_type: u8,
    /// Its block device name (`sda`), if it has one.
    pub block: Option<String>,
    /// Its SCSI generic name (`sg0`), if the sg driver is loaded.
    pub sg: Option<String>,
    /// Its sysfs directory.
    pub path: PathBuf,
}

impl Sysfs {
    /// The SCSI device at `address`.
    pub fn scsi_device(&self, address: ScsiAddress) -> Result<ScsiDevice, SysfsError> {
        let path = self.path("bus/scsi/devices").join(address.to_string());
        let type_path = path.join("type");
        if attr::read_optional(&type_path)?.is_none() {
            return Err(SysfsError::NotFound {
                what: format!("SCSI device {address}"),
                path: type_path,
            });
        }
        Ok(ScsiDevice {
            address,
            vendor: attr::read_optional(&path.join("vendor"))?.unwrap_or_default(),
            model: attr::read_optional(&path.join("model"))?.unwrap_or_default(),
            scsi_type: attr::read_decimal(&type_path, "a SCSI peripheral type")?,
            block: attr::list_dir(&path.join("block"))?.into_iter().next(),
            sg: attr::list_dir(&path.join("scsi_generic"))?
                .into_iter()
                .next(),
            path,
        })
    }

    /// Every SCSI device (entries named `H:C:T:L`), sorted by address.
    pub fn scsi_devices(&self) -> Result<Vec<ScsiDevice>, SysfsError> {
        let mut addresses: Vec<ScsiAddress> = attr::list_dir(&self.path("bus/scsi/devices"))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        addresses.sort_unstable();
        addresses.into_iter().map(|a| self.scsi_device(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hctl() {
        let a: ScsiAddress = "2:0:1:3".parse().unwrap();
        assert_eq!((a.host, a.channel, a.target, a.lun), (2, 0, 1, 3));
        assert_eq!(a.to_string(), "2:0:1:3");
        for bad in [
            "",
            "0:0:0",
            "0:0:0:0:0",
            "a:0:0:0",
            "host0:0:0:0",
            "0:0:0:-1",
        ] {
            bad.parse::<ScsiAddress>().expect_err(bad);
        }
    }

    #[test]
    fn an_address_and_a_device_round_trip_through_json() {
        let address: ScsiAddress = "2:0:1:3".parse().unwrap();
        let json = serde_json::to_value(address).unwrap();
        assert_eq!(json, "2:0:1:3");
        assert_eq!(
            serde_json::from_value::<ScsiAddress>(json).unwrap(),
            address
        );
        serde_json::from_value::<ScsiAddress>("2:0:1".into()).unwrap_err();
        let device = ScsiDevice {
            address,
            vendor: "QEMU".to_owned(),
            model: "QEMU HARDDISK".to_owned(),
            scsi_type: 0,
            block: Some("sda".to_owned()),
            sg: None,
            path: PathBuf::from("/sys/bus/scsi/devices/2:0:1:3"),
        };
        let json = serde_json::to_value(&device).unwrap();
        assert_eq!(serde_json::from_value::<ScsiDevice>(json).unwrap(), device);
    }
}
