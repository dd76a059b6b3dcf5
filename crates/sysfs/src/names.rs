//! Vendor, device and class names from the system's `pci.ids`, through `pciid-parser`.
//!
//! Names are a convenience: when the file is missing, every lookup is `None` and nothing
//! fails. Parsing the whole 1.3 MB database costs tens of milliseconds, more than listing
//! a host's devices, so [`PciNames::load_for_ids`] reads only the blocks of the vendors
//! present, found by binary search in the sorted file (`pci_ids_file.rs`), keeps from them
//! the entries the present devices need (plus the class table), and hands only that
//! excerpt to the parser ([`PciNames::load_for`] keeps whole vendors). lspci reads the
//! file lazily for the same reason. A long-running process keeps the names in a
//! [`PciNamesCache`](crate::PciNamesCache), which reads the file again only when it changes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use pciid_parser::Database;

use crate::error::SysfsError;
use crate::ids::PciIds;
use crate::pci::PciClass;
use crate::pci_ids_file::IdsFile;

/// Where Debian's `pci.ids` package puts the database.
pub const DEFAULT_PCI_IDS: &str = "/usr/share/misc/pci.ids";

/// A name lookup table; empty when no database was found.
#[derive(Debug, Default)]
pub struct PciNames {
    db: Option<Database>,
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

    /// Loads only the given vendors' entries (all their devices) and the class table from
    /// `path`; a missing file gives an empty table.
    pub fn load_for(
        path: &Path,
        vendors: impl IntoIterator<Item = u16>,
    ) -> Result<Self, SysfsError> {
        let wanted = Wanted {
            vendors: vendors.into_iter().collect(),
            devices: BTreeSet::new(),
            all_devices: true,
        };
        Self::load_wanted(path, &wanted)
    }

    /// Loads only what naming these devices needs: their vendors' and subsystem vendors'
    /// names, their own device and subsystem entries, and the class table. This is the
    /// fast path for listing a host: the excerpt handed to the parser is a few dozen lines.
    pub fn load_for_ids(
        path: &Path,
        ids: impl IntoIterator<Item = PciIds>,
    ) -> Result<Self, SysfsError> {
        Self::load_wanted(path, &Wanted::for_ids(ids))
    }

    /// Loads what `wanted` asks for: the wanted vendors' blocks, found by seeking, cut
    /// down to the wanted devices, and the class section.
    pub(crate) fn load_wanted(path: &Path, wanted: &Wanted) -> Result<Self, SysfsError> {
        let read = |e| SysfsError::read(path, e);
        let Some(mut file) = IdsFile::open(path).map_err(read)? else {
            return Ok(Self::empty());
        };
        let mut blocks = Vec::new();
        for &vendor in &wanted.vendors {
            match file.vendor_block(vendor).map_err(read)? {
                Some(block) => {
                    blocks.extend_from_slice(&block);
                    if !blocks.ends_with(b"\n") {
                        blocks.push(b'\n');
                    }
                }
                // A device's own vendor missing is rare in a sorted file and what an
                // unsorted (hand-edited) one looks like: scan the whole file instead, as
                // before seeking existed. (Subsystem vendors are often absent: 0000.)
                None if wanted.is_device_vendor(vendor) => {
                    let whole = fs::read(path).map_err(read)?;
                    return Self::parse(path, &String::from_utf8_lossy(&excerpt(&whole, wanted)));
                }
                None => {}
            }
        }
        blocks.extend_from_slice(&file.classes().map_err(read)?);
        let excerpt = excerpt(&blocks, wanted);
        Self::parse(path, &String::from_utf8_lossy(&excerpt))
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

/// What to keep from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// Vendors whose names (and, with `all_devices`, devices) are wanted.
    pub(crate) vendors: BTreeSet<u16>,
    /// `(vendor, device)` pairs whose names and subsystems are wanted.
    pub(crate) devices: BTreeSet<(u16, u16)>,
    /// Every device of the wanted vendors.
    pub(crate) all_devices: bool,
}

impl Wanted {
    /// What naming devices of these IDs needs.
    pub(crate) fn for_ids(ids: impl IntoIterator<Item = PciIds>) -> Self {
        let mut wanted = Self::default();
        wanted.add(ids);
        wanted
    }

    /// Adds what naming devices of these IDs needs.
    pub(crate) fn add(&mut self, ids: impl IntoIterator<Item = PciIds>) {
        for id in ids {
            self.vendors.insert(id.vendor);
            self.vendors.insert(id.subsystem_vendor);
            self.devices.insert((id.vendor, id.device));
        }
    }

    /// True when `vendor` is the vendor of a wanted device (not only a subsystem vendor).
    pub(crate) fn is_device_vendor(&self, vendor: u16) -> bool {
        self.all_devices
            || self
                .devices
                .range((vendor, 0)..=(vendor, u16::MAX))
                .next()
                .is_some()
    }

    /// True when everything `other` wants is wanted here too.
    pub(crate) fn covers(&self, other: &Self) -> bool {
        (self.all_devices || !other.all_devices)
            && other.vendors.is_subset(&self.vendors)
            && other.devices.is_subset(&self.devices)
    }
}

fn hex4(bytes: &[u8]) -> Option<u16> {
    let digits = bytes.get(..4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// The lines of `db` that `wanted` needs, in order: vendor lines of wanted vendors, their
/// wanted device lines with their subsystem lines, and the whole class section (`C xx` to
/// the end). Works on bytes: only each line's first bytes are looked at.
fn excerpt(db: &[u8], wanted: &Wanted) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut vendor: Option<u16> = None;
    let mut vendor_emitted = false;
    let mut keep_device = false;
    let mut rest = db;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        match line.first() {
            Some(b'#' | b'\n') | None => {}
            Some(b'C') if line.starts_with(b"C ") => {
                // The class section runs to the end of the file.
                out.extend_from_slice(line);
                out.extend_from_slice(rest);
                break;
            }
            Some(b'\t') if line.get(1) == Some(&b'\t') => {
                if keep_device {
                    out.extend_from_slice(line);
                }
            }
            Some(b'\t') => {
                keep_device = match (vendor, line.get(1..).and_then(hex4)) {
                    (Some(v), Some(d)) => {
                        (wanted.all_devices && wanted.vendors.contains(&v))
                            || wanted.devices.contains(&(v, d))
                    }
                    _ => false,
                };
                if keep_device {
                    if !vendor_emitted {
                        // A device wanted under a vendor whose name was not: the parser
                        // still needs the vendor line first.
                        vendor_emitted = true;
                        if let Some(v) = vendor {
                            out.extend_from_slice(format!("{v:04x}  \n").as_bytes());
                        }
                    }
                    out.extend_from_slice(line);
                }
            }
            Some(_) => {
                keep_device = false;
                vendor = hex4(line).filter(|_| line.get(4) == Some(&b' '));
                vendor_emitted = vendor.is_some_and(|v| wanted.vendors.contains(&v));
                if vendor_emitted {
                    out.extend_from_slice(line);
                    if !line.ends_with(b"\n") {
                        out.push(b'\n');
                    }
                }
            }
        }
    }
    out
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

    /// Sorted by vendor, as the real database is (lookups seek by binary search).
    const SAMPLE: &str = "\
# comment
0d57  Not Intel
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
\t\t8086 a01f  Gigabit CT Desktop Adapter
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
        let ids = PciIds {
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x8086,
            subsystem_device: 0xa01f,
        };
        let exact = PciNames::load_for_ids(&path, [ids]).unwrap();
        for names in [&full, &some, &exact] {
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
        // Only what was asked for: not the other vendors, not the other devices.
        assert_eq!(exact.vendor(0x1af4), None);
        assert_eq!(exact.device(0x8086, 0x10d4), None);
    }

    #[test]
    fn a_device_without_a_wanted_vendor_name_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        std::fs::write(&path, SAMPLE).unwrap();
        // Subsystem vendor 1af4 wanted, device 8086:10d3 wanted: both come out.
        let ids = PciIds {
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x1af4,
            subsystem_device: 0x0001,
        };
        let names = PciNames::load_for_ids(&path, [ids]).unwrap();
        assert_eq!(
            names.device(0x8086, 0x10d3),
            Some("82574L Gigabit Network Connection")
        );
        assert_eq!(names.vendor(0x1af4), Some("Red Hat, Inc."));
    }

    #[test]
    fn real_database_lookup_agrees_with_full_parse() {
        let path = Path::new(DEFAULT_PCI_IDS);
        if !path.exists() {
            return;
        }
        let full = PciNames::load(path).unwrap();
        let pairs = [
            (0x8086, 0x10d3, 0x8086, 0xa01f),
            (0x1af4, 0x1041, 0x1af4, 0x1100),
            (0x10de, 0x2330, 0x10de, 0x16c1),
        ];
        let ids = pairs.map(
            |(vendor, device, subsystem_vendor, subsystem_device)| PciIds {
                vendor,
                device,
                subsystem_vendor,
                subsystem_device,
            },
        );
        let fast = PciNames::load_for_ids(path, ids).unwrap();
        for id in ids {
            assert_eq!(fast.vendor(id.vendor), full.vendor(id.vendor));
            assert_eq!(
                fast.device(id.vendor, id.device),
                full.device(id.vendor, id.device)
            );
            assert_eq!(
                fast.subsystem(
                    id.vendor,
                    id.device,
                    id.subsystem_vendor,
                    id.subsystem_device
                ),
                full.subsystem(
                    id.vendor,
                    id.device,
                    id.subsystem_vendor,
                    id.subsystem_device
                )
            );
        }
        for class in [0x020000, 0x010802, 0x060400, 0x030200, 0x0c0330] {
            assert_eq!(
                fast.class(PciClass::new(class)),
                full.class(PciClass::new(class))
            );
        }
    }

    /// Every vendor of the real database (and every device of a few) named by the seeking
    /// lookup as by the full parse: the first vendor, the last, Intel's huge block, and
    /// IDs the file does not have.
    #[test]
    fn real_database_seeking_agrees_for_every_vendor_and_misses_absent_ones() {
        let path = Path::new(DEFAULT_PCI_IDS);
        if !path.exists() {
            return;
        }
        let full = PciNames::load(path).unwrap();
        let db = full.db.as_ref().unwrap();
        let mut vendors: Vec<u16> = db.vendors.keys().copied().collect();
        vendors.sort_unstable();
        let (first, last) = (vendors[0], vendors[vendors.len() - 1]);
        // Every vendor's block is found by seeking.
        let mut file = IdsFile::open(path).unwrap().unwrap();
        for &vendor in &vendors {
            let block = file.vendor_block(vendor).unwrap().unwrap_or_default();
            assert!(
                block.starts_with(format!("{vendor:04x}  ").as_bytes()),
                "{vendor:04x}"
            );
        }
        // And named as the full parse names it (every 40th, and both ends).
        for (i, &vendor) in vendors.iter().enumerate() {
            if i % 40 == 0 || vendor == last {
                let one = PciNames::load_for(path, [vendor]).unwrap();
                assert_eq!(one.vendor(vendor), full.vendor(vendor), "{vendor:04x}");
            }
        }
        for vendor in [first, last, 0x8086, 0x1af4, 0x10de] {
            let Some(entry) = db.vendors.get(&vendor) else {
                continue;
            };
            let ids: Vec<PciIds> = entry
                .devices
                .keys()
                .map(|&device| PciIds {
                    vendor,
                    device,
                    subsystem_vendor: 0,
                    subsystem_device: 0,
                })
                .collect();
            let some = PciNames::load_for_ids(path, ids.iter().copied()).unwrap();
            for id in &ids {
                assert_eq!(
                    some.device(vendor, id.device),
                    full.device(vendor, id.device),
                    "{vendor:04x}:{:04x}",
                    id.device
                );
            }
        }
        // Absent: a vendor between two present ones, and a device the vendor lacks.
        let absent = (1..=u16::MAX)
            .find(|v| !db.vendors.contains_key(v) && *v > first && *v < last)
            .unwrap();
        let names = PciNames::load_for_ids(
            path,
            [PciIds {
                vendor: absent,
                device: 1,
                subsystem_vendor: absent,
                subsystem_device: 1,
            }],
        )
        .unwrap();
        assert_eq!(names.vendor(absent), None);
        assert_eq!(names.device(absent, 1), None);
        assert_eq!(names.device(0x8086, 0xfffe), full.device(0x8086, 0xfffe));
    }

    #[test]
    fn an_unsorted_file_still_names_every_device() {
        // 10de after 8086: seeking misses it, and the whole file is scanned instead.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        std::fs::write(
            &path,
            "8086  Intel Corporation\n\t10d3  82574L\n10de  NVIDIA Corporation\n\t2330  GH100\nC 03  Display controller\n\t02  3D controller\n",
        )
        .unwrap();
        let ids = [(0x8086, 0x10d3), (0x10de, 0x2330)].map(|(vendor, device)| PciIds {
            vendor,
            device,
            subsystem_vendor: 0,
            subsystem_device: 0,
        });
        let names = PciNames::load_for_ids(&path, ids).unwrap();
        assert_eq!(names.device(0x8086, 0x10d3), Some("82574L"));
        assert_eq!(names.device(0x10de, 0x2330), Some("GH100"));
        assert_eq!(names.class(PciClass::new(0x03_0200)), Some("3D controller"));
        // A vendor that is nowhere: no name, no error.
        let names = PciNames::load_for_ids(
            &path,
            [PciIds {
                vendor: 0x1234,
                device: 1,
                subsystem_vendor: 0,
                subsystem_device: 0,
            }],
        )
        .unwrap();
        assert_eq!(names.vendor(0x1234), None);
    }

    #[test]
    fn missing_database_is_not_an_error() {
        let names = PciNames::load_for(Path::new("/nonexistent/pci.ids"), [1]).unwrap();
        assert!(!names.is_loaded());
        assert_eq!(names.vendor(0x8086), None);
        assert_eq!(names.class(PciClass::new(0x020000)), None);
    }
}
