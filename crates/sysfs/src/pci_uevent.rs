//! The IDs and class in a PCI device's `uevent`, read in one go.
//!
//! The kernel's `pci_uevent()` writes `PCI_CLASS`, `PCI_ID` and `PCI_SUBSYS_ID` from the
//! same `struct pci_dev` fields that the `class`, `vendor`, `device`, `subsystem_vendor`
//! and `subsystem_device` attributes show, so one read of `uevent` replaces five attribute
//! reads (fifteen system calls). The driver core's `dev_uevent()` adds `DRIVER=<name>`
//! exactly while a driver is bound (from the same `dev->driver` the `driver` link shows),
//! so the same read also answers the driver without reading the link. The inventory uses
//! it when all three PCI keys are there and well formed, and reads the attributes and the
//! link otherwise.

use crate::ids::PciIds;
use crate::pci::PciClass;

/// What a PCI `uevent` says about a device's identity and driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UeventIds {
    /// `PCI_ID` and `PCI_SUBSYS_ID`.
    pub(crate) ids: PciIds,
    /// `PCI_CLASS`.
    pub(crate) class: PciClass,
    /// `DRIVER`: the bound driver; `None` when unbound.
    pub(crate) driver: Option<String>,
}

/// `XXXX:YYYY` as two 16-bit hex numbers.
fn pair(value: &str) -> Option<(u16, u16)> {
    let (a, b) = value.split_once(':')?;
    Some((hex(a, 4)?.try_into().ok()?, hex(b, 4)?.try_into().ok()?))
}

/// 1 to `digits` hex digits.
fn hex(text: &str, digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// The IDs and class in `text`, or `None` unless `PCI_CLASS` (up to 6 hex digits),
/// `PCI_ID` and `PCI_SUBSYS_ID` (`XXXX:YYYY`) are all there and well formed.
pub(crate) fn parse(text: &[u8]) -> Option<UeventIds> {
    let text = std::str::from_utf8(text).ok()?;
    let (mut class, mut id, mut subsys, mut driver) = (None, None, None, None);
    for line in crate::attr::lines(text) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "PCI_CLASS" => class = Some(hex(value.trim(), 6)?),
            "PCI_ID" => id = Some(pair(value.trim())?),
            "PCI_SUBSYS_ID" => subsys = Some(pair(value.trim())?),
            // A driver name is one path component, as the `driver` link's target ends;
            // anything else means: read the link.
            "DRIVER" if value.is_empty() || value.contains('/') => return None,
            "DRIVER" => driver = Some(value),
            _ => {}
        }
    }
    let ((vendor, device), (subsystem_vendor, subsystem_device)) = (id?, subsys?);
    Some(UeventIds {
        ids: PciIds {
            vendor,
            device,
            subsystem_vendor,
            subsystem_device,
        },
        class: PciClass::new(class?),
        driver: driver.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_kernel_writes() {
        // A real virtio-net function's uevent (DRIVER first, MODALIAS last).
        let text = b"DRIVER=virtio-pci\nPCI_CLASS=20000\nPCI_ID=1AF4:1041\n\
PCI_SUBSYS_ID=1AF4:1100\nPCI_SLOT_NAME=0000:00:02.0\n\
MODALIAS=pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00\n";
        let got = parse(text).unwrap();
        assert_eq!(
            got.ids,
            PciIds {
                vendor: 0x1af4,
                device: 0x1041,
                subsystem_vendor: 0x1af4,
                subsystem_device: 0x1100,
            }
        );
        assert_eq!(got.class, PciClass::new(0x02_0000));
        assert_eq!(got.driver.as_deref(), Some("virtio-pci"));
        // A host bridge: class 060000, subsystem 0000:0000.
        let bridge =
            parse(b"PCI_CLASS=60000\nPCI_ID=8086:29C0\nPCI_SUBSYS_ID=0000:0000\n").unwrap();
        assert_eq!(bridge.class, PciClass::new(0x06_0000));
        assert_eq!(bridge.ids.subsystem_vendor, 0);
        // No DRIVER: unbound.
        assert_eq!(bridge.driver, None);
    }

    #[test]
    fn anything_missing_or_malformed_means_read_the_attributes() {
        for text in [
            "",
            "PCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=20000\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=20000\nPCI_ID=8086:10D3\n",
            "PCI_CLASS=20000\nPCI_ID=8086\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=20000\nPCI_ID=8086:10D3X\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=1000000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=zz\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
            "PCI_CLASS=\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
            "DRIVER=\nPCI_CLASS=20000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
            "DRIVER=a/b\nPCI_CLASS=20000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:A01F\n",
        ] {
            assert_eq!(parse(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe]), None);
    }
}
