//! Interrupt indexes of a device (`VFIO_DEVICE_GET_IRQ_INFO`).
//!
//! A VFIO device reports, per IRQ index (for PCI: INTx, MSI, MSI-X, error, request), how
//! many vectors it has and how they behave (signalled by eventfd, maskable, masked
//! automatically after firing, resizable). The VMM wires them with `VFIO_DEVICE_SET_IRQS`;
//! this crate reports them.

use serde::{Deserialize, Deserializer, Serialize};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX, vfio_irq_info,
};

use crate::region::{flags_from_names, names};

/// The flags of an IRQ index, with names for the ones VFIO defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "Vec<&'static str>")]
pub struct IrqFlags(u32);

impl<'de> Deserialize<'de> for IrqFlags {
    /// Reads the list of names; `other` comes back as one undefined bit.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        flags_from_names(deserializer, &Self::NAMES).map(Self)
    }
}

impl IrqFlags {
    const NAMES: [(u32, &'static str); 4] = [
        (VFIO_IRQ_INFO_EVENTFD, "eventfd"),
        (VFIO_IRQ_INFO_MASKABLE, "maskable"),
        (VFIO_IRQ_INFO_AUTOMASKED, "automasked"),
        (VFIO_IRQ_INFO_NORESIZE, "noresize"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The names of the set flags (`other` for unknown bits).
    pub fn names(self) -> Vec<&'static str> {
        names(self.0, &Self::NAMES)
    }
}

impl From<IrqFlags> for Vec<&'static str> {
    fn from(flags: IrqFlags) -> Self {
        flags.names()
    }
}

/// One IRQ index of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqInfo {
    /// The index (for PCI: INTx 0, MSI 1, MSI-X 2, error 3, request 4).
    pub index: u32,
    /// How its vectors behave.
    pub flags: IrqFlags,
    /// How many vectors it has (0: not available on this device).
    pub count: u32,
}

impl IrqInfo {
    pub(crate) fn from_kernel(info: &vfio_irq_info) -> Self {
        Self {
            index: info.index,
            flags: IrqFlags(info.flags),
            count: info.count,
        }
    }

    /// The PCI name of the index: `INTx`, `MSI`, `MSI-X`, `ERR`, `REQ`, else `irq N`.
    pub fn pci_name(&self) -> String {
        match self.index {
            VFIO_PCI_INTX_IRQ_INDEX => "INTx".into(),
            VFIO_PCI_MSI_IRQ_INDEX => "MSI".into(),
            VFIO_PCI_MSIX_IRQ_INDEX => "MSI-X".into(),
            VFIO_PCI_ERR_IRQ_INDEX => "ERR".into(),
            VFIO_PCI_REQ_IRQ_INDEX => "REQ".into(),
            i => format!("irq {i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags() {
        let info = IrqInfo::from_kernel(&vfio_irq_info {
            argsz: 16,
            flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            index: 2,
            count: 5,
        });
        assert_eq!(info.pci_name(), "MSI-X");
        assert_eq!(info.flags.names(), ["eventfd", "noresize"]);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"index": 2, "flags": ["eventfd", "noresize"], "count": 5})
        );
        assert_eq!(serde_json::from_value::<IrqInfo>(json).unwrap(), info);
    }
}
