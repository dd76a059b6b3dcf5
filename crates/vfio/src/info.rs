//! What a device says about itself (`VFIO_DEVICE_GET_INFO`): its flags and how many regions
//! and IRQ indexes it has.

use serde::{Deserialize, Deserializer, Serialize};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_AMBA, VFIO_DEVICE_FLAGS_AP, VFIO_DEVICE_FLAGS_CAPS, VFIO_DEVICE_FLAGS_CCW,
    VFIO_DEVICE_FLAGS_CDX, VFIO_DEVICE_FLAGS_FSL_MC, VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_PLATFORM, VFIO_DEVICE_FLAGS_RESET, vfio_device_info,
};

use crate::region::{flags_from_names, names};

/// The flags of a device, with names for the ones VFIO defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "Vec<&'static str>")]
pub struct DeviceFlags(u32);

impl<'de> Deserialize<'de> for DeviceFlags {
    /// Reads the list of names; `other` (bits VFIO does not define) comes back as one
    /// undefined bit, which serializes as `other` again.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        flags_from_names(deserializer, &Self::NAMES).map(Self)
    }
}

impl DeviceFlags {
    const NAMES: [(u32, &'static str); 9] = [
        (VFIO_DEVICE_FLAGS_RESET, "reset"),
        (VFIO_DEVICE_FLAGS_PCI, "pci"),
        (VFIO_DEVICE_FLAGS_PLATFORM, "platform"),
        (VFIO_DEVICE_FLAGS_AMBA, "amba"),
        (VFIO_DEVICE_FLAGS_CCW, "ccw"),
        (VFIO_DEVICE_FLAGS_AP, "ap"),
        (VFIO_DEVICE_FLAGS_FSL_MC, "fsl_mc"),
        (VFIO_DEVICE_FLAGS_CAPS, "caps"),
        (VFIO_DEVICE_FLAGS_CDX, "cdx"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The device supports `VFIO_DEVICE_RESET`.
    pub fn resettable(self) -> bool {
        self.0 & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// The device is a PCI device (regions and IRQs use the PCI indexes).
    pub fn pci(self) -> bool {
        self.0 & VFIO_DEVICE_FLAGS_PCI != 0
    }

    /// The names of the set flags (`other` for unknown bits).
    pub fn names(self) -> Vec<&'static str> {
        names(self.0, &Self::NAMES)
    }
}

impl From<DeviceFlags> for Vec<&'static str> {
    fn from(flags: DeviceFlags) -> Self {
        flags.names()
    }
}

/// A device's flags and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The flags.
    pub flags: DeviceFlags,
    /// How many region indexes there are (some may be absent, e.g. VGA).
    pub num_regions: u32,
    /// How many IRQ indexes there are.
    pub num_irqs: u32,
}

impl DeviceInfo {
    pub(crate) fn from_kernel(info: &vfio_device_info) -> Self {
        Self {
            flags: DeviceFlags(info.flags),
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_themselves() {
        let info = DeviceInfo::from_kernel(&vfio_device_info {
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI | (1 << 20),
            num_regions: 9,
            num_irqs: 5,
            ..Default::default()
        });
        assert!(info.flags.resettable() && info.flags.pci());
        assert_eq!(info.flags.names(), ["reset", "pci", "other"]);
        assert_eq!(
            serde_json::to_value(info).unwrap(),
            serde_json::json!({"flags": ["reset", "pci", "other"], "num_regions": 9, "num_irqs": 5})
        );
    }

    #[test]
    fn info_round_trips_through_json() {
        let info = DeviceInfo::from_kernel(&vfio_device_info {
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_FSL_MC,
            num_regions: 9,
            num_irqs: 5,
            ..Default::default()
        });
        let json = serde_json::to_value(info).unwrap();
        assert_eq!(json["flags"], serde_json::json!(["reset", "pci", "fsl_mc"]));
        assert_eq!(serde_json::from_value::<DeviceInfo>(json).unwrap(), info);
        // Unknown bits print as `other`, and read back as a value that prints the same.
        let odd = serde_json::json!(["pci", "other"]);
        let flags: DeviceFlags = serde_json::from_value(odd.clone()).unwrap();
        assert!(flags.pci());
        assert_eq!(serde_json::to_value(flags).unwrap(), odd);
        serde_json::from_value::<DeviceFlags>(serde_json::json!(["fsl-mc"])).unwrap_err();
    }
}
