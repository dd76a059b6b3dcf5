//! How a device is named on the command line and in APIs: one string per device, with a
//! prefix for every kind but PCI.
//!
//! | kind | form | example |
//! |------|------|---------|
//! | PCI  | `[DDDD:]BB:SS.F` (hex) | `0000:01:00.0` |
//! | USB by bus/device | `usb:BUS/DEV` (decimal) | `usb:1/4` |
//! | USB by IDs | `usb:VVVV:PPPP` (hex) | `usb:046d:c52b` |
//! | SCSI | `scsi:H:C:T:L` | `scsi:0:0:1:0` |
//! | mdev | `mdev:UUID` | `mdev:c4a9a4d2-1b2c-4d5e-8f90-0123456789ab` |
//! | NVMe namespace | `nvme:<PCI address>/NSID` | `nvme:0000:06:00.0/1` |

use std::fmt;
use std::str::FromStr;

use plugboard_sysfs::{PciAddress, PciAddressError, ScsiAddress, ScsiAddressError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::nvme::NvmeNamespace;
use crate::usb::UsbSelector;

/// One host device of any kind, as hostdev names it: a PCI function, a USB device, a SCSI
/// device, a mediated device or an NVMe namespace.
///
/// Its one text form (the table above) is also its JSON form: a string such as
/// `"0000:01:00.0"` or `"usb:1/4"`, through [`Display`](fmt::Display) and [`FromStr`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostDevice {
    /// A PCI function.
    Pci(PciAddress),
    /// A USB device.
    Usb(UsbSelector),
    /// A SCSI device.
    Scsi(ScsiAddress),
    /// A mediated device, by UUID (lower case).
    Mdev(String),
    /// An NVMe namespace.
    Nvme(NvmeNamespace),
}

/// Why a string names no device.
#[derive(Debug, thiserror::Error)]
pub enum HostDeviceParseError {
    /// Not a PCI address (and no known prefix).
    #[error(transparent)]
    Pci(#[from] PciAddressError),
    /// A bad SCSI address.
    #[error(transparent)]
    Scsi(#[from] ScsiAddressError),
    /// A bad USB, mdev or NVMe name.
    #[error("{input:?} is not a {kind} device: expected {expected}")]
    Format {
        /// The input.
        input: String,
        /// The kind its prefix names.
        kind: &'static str,
        /// The expected form.
        expected: &'static str,
    },
}

impl FromStr for HostDevice {
    type Err = HostDeviceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |kind, expected| HostDeviceParseError::Format {
            input: s.to_owned(),
            kind,
            expected,
        };
        if let Some(rest) = s.strip_prefix("usb:") {
            const USB: &str = "usb:BUS/DEV (decimal) or usb:VVVV:PPPP (hex)";
            if let Some((bus, dev)) = rest.split_once('/') {
                let n = |t: &str| {
                    t.parse::<u16>()
                        .ok()
                        .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                };
                return Ok(Self::Usb(UsbSelector::BusDevice {
                    bus: n(bus).ok_or_else(|| bad("USB", USB))?,
                    device: n(dev).ok_or_else(|| bad("USB", USB))?,
                }));
            }
            let (v, p) = rest.split_once(':').ok_or_else(|| bad("USB", USB))?;
            let hex = |t: &str| {
                (!t.is_empty() && t.len() <= 4)
                    .then(|| u16::from_str_radix(t, 16).ok())
                    .flatten()
            };
            return Ok(Self::Usb(UsbSelector::VendorProduct {
                vendor: hex(v).ok_or_else(|| bad("USB", USB))?,
                product: hex(p).ok_or_else(|| bad("USB", USB))?,
            }));
        }
        if let Some(rest) = s.strip_prefix("scsi:") {
            return Ok(Self::Scsi(rest.parse()?));
        }
        if let Some(rest) = s.strip_prefix("mdev:") {
            let shape = rest.split('-').map(str::len).eq([8, 4, 4, 4, 12])
                && rest.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
            if !shape {
                return Err(bad("mdev", "mdev:UUID (8-4-4-4-12 hex digits)"));
            }
            return Ok(Self::Mdev(rest.to_ascii_lowercase()));
        }
        if let Some(rest) = s.strip_prefix("nvme:") {
            const NVME: &str = "nvme:DDDD:BB:SS.F/NSID (namespace 1 or more)";
            let (ctrl, ns) = rest.rsplit_once('/').ok_or_else(|| bad("NVMe", NVME))?;
            let namespace = ns
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1 && ns.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("NVMe", NVME))?;
            return Ok(Self::Nvme(NvmeNamespace {
                controller: ctrl.parse()?,
                namespace,
            }));
        }
        Ok(Self::Pci(s.strip_prefix("pci:").unwrap_or(s).parse()?))
    }
}

impl fmt::Display for HostDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(a) => write!(f, "{a}"),
            Self::Usb(u) => write!(f, "{u}"),
            Self::Scsi(a) => write!(f, "scsi:{a}"),
            Self::Mdev(u) => write!(f, "mdev:{u}"),
            Self::Nvme(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for HostDevice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostDevice {
    /// Parses the text form.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for s in [
            "0000:01:00.0",
            "usb:1/4",
            "usb:046d:c52b",
            "scsi:0:0:1:0",
            "mdev:c4a9a4d2-1b2c-4d5e-8f90-0123456789ab",
            "nvme:0000:06:00.0/2",
        ] {
            let spec: HostDevice = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(json, s, "the JSON form is the text form");
            assert_eq!(serde_json::from_value::<HostDevice>(json).unwrap(), spec);
        }
        assert_eq!(
            "01:00.0".parse::<HostDevice>().unwrap(),
            HostDevice::Pci("0000:01:00.0".parse().unwrap())
        );
    }

    #[test]
    fn rejects_malformed_names_naming_the_input() {
        for s in [
            "",
            "0000:01:00",
            "0000:01:20.0",
            "01:00.8",
            "usb:1",
            "usb:x/4",
            "usb:12345:1",
            "scsi:0:0:1",
            "mdev:not-a-uuid",
            "nvme:0000:06:00.0",
            "nvme:0000:06:00.0/0",
            "nvme:zz/1",
        ] {
            let err = s.parse::<HostDevice>().unwrap_err();
            serde_json::from_value::<HostDevice>(s.into()).unwrap_err();
            let named = ["scsi:", "nvme:"]
                .iter()
                .find_map(|p| s.strip_prefix(p))
                .map_or(s, |rest| rest.split('/').next().unwrap_or(rest));
            assert!(err.to_string().contains(named), "{s:?}: {err}");
        }
    }
}
