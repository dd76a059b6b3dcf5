//! Vendor, device and class names from the system's `pci.ids`, through `pciid-parser`.
//!
//! Names are a convenience: when the file is missing, every lookup is `None` and nothing
//! fails. Parsing the whole 1.3 MB database costs tens of milliseconds, more than listing
//! a host's devices, so [`PciNames::load_for`] first cuts the file down to the vendors
//! actually present (plus the class table) with a cheap line scan, and hands only that
//! excerpt to the parser. lspci reads the file for the same reason lazily.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use pciid_parser::Database;

use crate::error::SysfsError;
use crate::pci::PciClass;

/// Where Debian's `pci.ids` package puts the database.
pub const DEFAULT_PCI_IDS: &str = "/usr/share/misc/pci.ids";

/// A name lookup table; empty when no database was found.
#[derive(Debug, Default)]
pub struct PciNames {
    db: Option<Database>,
}

fn vendor_of_line(line: &str) -> Option<u16> {
    let id = line.get(0..4)?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || !line[4..].starts_with(' ') {
        return None;
    }
    u16::from_str_radix(id, 16).ok()
}

impl PciNames {
    /// No names at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses the whole database at `path`; a missing file gives an empty table.
    pub fn load(path: &Path) -> Result<Self, SysfsError> {
        let Some(text) = read_db(path)? else {
            return Ok(Self::empty());
        };
        Self::parse(path, &text)
    }

    /// Loads only the given vendors' entries and the class table from `path`; a missing
    /// file gives an empty table.
    pub fn load_for(
        path: &Path,
        vendors: impl IntoIterator<Item = u16>,
    ) -> Result<Self, SysfsError> {
        let wanted: BTreeSet<u16> = vendors.into_iter().collect();
        let Some(text) = read_db(path)? else {
            return Ok(Self::empty());
        };
        let mut excerpt = String::with_capacity(64 * 1024);
        let mut keep = false;
        for line in text.lines() {
            match line.as_bytes().first() {
                None | Some(b'#') => continue,
                Some(b'\t') => {}
                Some(b'C') if line.starts_with("C ") => keep = true,
                Some(_) => match vendor_of_line(line) {
                    Some(vendor) => keep = wanted.contains(&vendor),
                    None => keep = false,
                },
            }
            if keep {
                excerpt.push_str(line);
                excerpt.push('\n');
            }
        }
        Self::parse(path, &excerpt)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, SysfsError> {
        match Database::parse_db(text.as_bytes()) {
            Ok(db) => Ok(Self { db: Some(db) }),
            Err(err) => Err(SysfsError::Parse {
                path: path.to_owned(),
                value: format!("{err:?}"),
                expected: "the pci.ids format",
            }),
        }
    }

    /// True when a database was loaded.
    pub fn is_loaded(&self) -> bool {
        self.db.is_some()
    }

    /// The vendor's name.
    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        Some(self.db.as_ref()?.vendors.get(&vendor)?.name.as_str())
    }

    /// The device's name.
    pub fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        let v = self.db.as_ref()?.vendors.get(&vendor)?;
        Some(v.devices.get(&device)?.name.as_str())
    }

    /// The subsystem's name.
    pub fn subsystem(
        &self,
        vendor: u16,
        device: u16,
        subsystem_vendor: u16,
        subsystem_device: u16,
    ) -> Option<&str> {
        self.db
            .as_ref()?
            .get_device_info(vendor, device, subsystem_vendor, subsystem_device)
            .subdevice_name
    }

    /// The class name: the subclass's (`Ethernet controller`) when known, else the base
    /// class's (`Network controller`).
    pub fn class(&self, class: PciClass) -> Option<&str> {
        let c = self.db.as_ref()?.classes.get(&class.base())?;
        Some(
            c.subclasses
                .get(&class.subclass())
                .map_or(c.name.as_str(), |s| s.name.as_str()),
        )
    }
}

fn read_db(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::read(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
0d57  Not Intel
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
\t\t8086 a01f  Gigabit CT Desktop Adapter
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
C 02  Network controller
\t00  Ethernet controller
C 06  Bridge
\t04  PCI bridge
C ff  Unassigned class
";

    #[test]
    fn excerpt_lookup_matches_full_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        std::fs::write(&path, SAMPLE).unwrap();
        let full = PciNames::load(&path).unwrap();
        let some = PciNames::load_for(&path, [0x8086]).unwrap();
        for names in [&full, &some] {
            assert_eq!(names.vendor(0x8086), Some("Intel Corporation"));
            assert_eq!(
                names.device(0x8086, 0x10d3),
                Some("82574L Gigabit Network Connection")
            );
            assert_eq!(
                names.subsystem(0x8086, 0x10d3, 0x8086, 0xa01f),
                Some("Gigabit CT Desktop Adapter")
            );
            assert_eq!(
                names.class(PciClass::new(0x020000)),
                Some("Ethernet controller")
            );
            assert_eq!(names.class(PciClass::new(0x060400)), Some("PCI bridge"));
            assert_eq!(
                names.class(PciClass::new(0xff0000)),
                Some("Unassigned class")
            );
        }
        assert_eq!(full.vendor(0x1af4), Some("Red Hat, Inc."));
        assert_eq!(some.vendor(0x1af4), None);
        assert_eq!(full.vendor(0x0d57), Some("Not Intel"));
    }

    #[test]
    fn missing_database_is_not_an_error() {
        let names = PciNames::load_for(Path::new("/nonexistent/pci.ids"), [1]).unwrap();
        assert!(!names.is_loaded());
        assert_eq!(names.vendor(0x8086), None);
        assert_eq!(names.class(PciClass::new(0x020000)), None);
    }
}
