//! Device regions (`VFIO_DEVICE_GET_REGION_INFO`) and their capability chains.
//!
//! A region is a window on the device: a PCI BAR, the ROM, config space, VGA. Its info says
//! where it sits in the device fd (`offset`), how big it is, and whether it can be read,
//! written and mmapped. Extra facts come as a chain of capabilities after the struct: each
//! starts with a `vfio_info_cap_header` whose `next` is the offset of the following one (0
//! ends the chain). The sparse-mmap capability lists the parts of a region that may be
//! mmapped (an MSI-X table in a BAR must not be).
//!
//! The chain is parsed here from bytes with every offset and count checked against the
//! buffer, so a bad chain is an error, never a panic or a loop. Field offsets come from the
//! `vfio-bindings` structs (`offset_of!`), not from numbers written by hand.

use std::mem::{offset_of, size_of};

use serde::{Deserialize, Deserializer, Serialize};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    vfio_info_cap_header, vfio_region_info, vfio_region_info_cap_sparse_mmap,
    vfio_region_info_cap_type, vfio_region_sparse_mmap_area,
};

/// Why a region's capability chain could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// A capability runs past the end of the buffer the kernel filled.
    #[error(
        "region {index}: capability at offset {offset:#x} needs {need} bytes, but the buffer ends at {len:#x}"
    )]
    Truncated {
        /// The region index.
        index: u32,
        /// Where the capability starts.
        offset: usize,
        /// How many bytes it needs from there.
        need: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A `next` offset points backwards or at itself, which would loop.
    #[error("region {index}: capability at offset {offset:#x} points back to {next:#x}")]
    Backwards {
        /// The region index.
        index: u32,
        /// Where the capability starts.
        offset: usize,
        /// The `next` it gives.
        next: usize,
    },
}

/// The flags of a region, with names for the ones VFIO defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "Vec<&'static str>")]
pub struct RegionFlags(u32);

impl<'de> Deserialize<'de> for RegionFlags {
    /// Reads the list of names; `other` (bits VFIO does not define) comes back as one
    /// undefined bit.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        flags_from_names(deserializer, &Self::NAMES).map(Self)
    }
}

impl RegionFlags {
    const NAMES: [(u32, &'static str); 4] = [
        (VFIO_REGION_INFO_FLAG_READ, "read"),
        (VFIO_REGION_INFO_FLAG_WRITE, "write"),
        (VFIO_REGION_INFO_FLAG_MMAP, "mmap"),
        (VFIO_REGION_INFO_FLAG_CAPS, "caps"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The region can be read through the device fd.
    pub fn readable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// The region can be written through the device fd.
    pub fn writable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// The region (or the areas its sparse-mmap capability lists) can be mmapped.
    pub fn mmappable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_MMAP != 0
    }

    /// The names of the set flags, and `0x…` for unknown bits.
    pub fn names(self) -> Vec<&'static str> {
        names(self.0, &Self::NAMES)
    }
}

impl From<RegionFlags> for Vec<&'static str> {
    fn from(flags: RegionFlags) -> Self {
        flags.names()
    }
}

/// One area of a region that may be mmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One capability of a region. JSON: an object whose `kind` is `sparse_mmap`, `type`,
/// `msix_mappable` or `other`, with the variant's fields beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegionCap {
    /// Only these areas may be mmapped.
    SparseMmap {
        /// The areas.
        areas: Vec<SparseArea>,
    },
    /// A device-specific region type (graphics, migration, vendor).
    Type {
        /// The type.
        region_type: u32,
        /// The subtype.
        subtype: u32,
    },
    /// The MSI-X table in this region may be mmapped.
    MsixMappable,
    /// A capability this crate does not decode.
    Other {
        /// Its id.
        id: u16,
        /// Its version.
        version: u16,
    },
}

/// A region of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The region index (for PCI: BAR0–5 are 0–5, ROM 6, config 7, VGA 8).
    pub index: u32,
    /// What can be done with it.
    pub flags: RegionFlags,
    /// Size in bytes (0: the region is absent, e.g. an unused BAR).
    pub size: u64,
    /// Where the region starts in the device fd, for `pread`/`pwrite`/`mmap`.
    pub offset: u64,
    /// Its capabilities.
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    /// Builds the info from what `VFIO_DEVICE_GET_REGION_INFO` returned: the struct and the
    /// raw buffer it was written into (the capabilities follow the struct).
    pub(crate) fn from_kernel(info: &vfio_region_info, bytes: &[u8]) -> Result<Self, RegionError> {
        let caps = if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
            parse_caps(info.index, bytes, info.cap_offset)?
        } else {
            Vec::new()
        };
        Ok(Self {
            index: info.index,
            flags: RegionFlags(info.flags),
            size: info.size,
            offset: info.offset,
            caps,
        })
    }

    /// The PCI name of the region: `BAR0`…`BAR5`, `ROM`, `config`, `VGA`, else `region N`.
    pub fn pci_name(&self) -> String {
        pci_region_name(self.index)
    }

    /// The areas that may be mmapped: the sparse-mmap list if there is one, else the whole
    /// region if it is mmappable, else none.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        for cap in &self.caps {
            if let RegionCap::SparseMmap { areas } = cap {
                return areas.clone();
            }
        }
        if self.flags.mmappable() && self.size > 0 {
            vec![SparseArea {
                offset: 0,
                size: self.size,
            }]
        } else {
            Vec::new()
        }
    }
}

/// The PCI name of region `index`.
pub fn pci_region_name(index: u32) -> String {
    match index {
        i if i < VFIO_PCI_ROM_REGION_INDEX => format!("BAR{}", i - VFIO_PCI_BAR0_REGION_INDEX),
        VFIO_PCI_ROM_REGION_INDEX => "ROM".into(),
        VFIO_PCI_CONFIG_REGION_INDEX => "config".into(),
        VFIO_PCI_VGA_REGION_INDEX => "VGA".into(),
        i => format!("region {i}"),
    }
}

/// Names the set bits of `bits` from `table`; unknown bits as one `0x…` entry.
pub(crate) fn names(bits: u32, table: &[(u32, &'static str)]) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut rest = bits;
    for &(bit, name) in table {
        if bits & bit != 0 {
            out.push(name);
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push("other");
    }
    out
}

/// The bit a deserialized `other` stands for: the JSON names flags, and bits VFIO does not
/// define are only summed up as `other`, so reading one back sets this bit (which no table
/// defines), and the value serializes to the same names again.
pub(crate) const OTHER_BIT: u32 = 1 << 31;

/// Reads a list of flag names written by [`names`] back into bits; an unknown name is an
/// error, and `other` becomes [`OTHER_BIT`].
pub(crate) fn flags_from_names<'de, D: Deserializer<'de>>(
    deserializer: D,
    table: &[(u32, &'static str)],
) -> Result<u32, D::Error> {
    let mut bits = 0;
    for name in Vec::<String>::deserialize(deserializer)? {
        bits |= match table.iter().find(|(_, known)| *known == name) {
            Some(&(bit, _)) => bit,
            None if name == "other" => OTHER_BIT,
            None => {
                return Err(serde::de::Error::custom(format_args!(
                    "unknown flag {name:?}"
                )));
            }
        };
    }
    Ok(bits)
}

/// Parses the capability chain that starts at `first` in `bytes`.
pub(crate) fn parse_caps(
    index: u32,
    bytes: &[u8],
    first: u32,
) -> Result<Vec<RegionCap>, RegionError> {
    let mut caps = Vec::new();
    let mut offset = usize::try_from(first).unwrap_or(usize::MAX);
    let header = size_of::<vfio_info_cap_header>();
    // The chain starts after the struct itself; offset 0 means "no capabilities".
    let mut floor = size_of::<vfio_region_info>();
    while offset != 0 {
        if offset < floor {
            return Err(RegionError::Backwards {
                index,
                offset: floor,
                next: offset,
            });
        }
        let reader = Reader {
            index,
            bytes,
            base: offset,
        };
        let id = reader.u16(offset_of!(vfio_info_cap_header, id), header)?;
        let version = reader.u16(offset_of!(vfio_info_cap_header, version), header)?;
        let next = reader.u32(offset_of!(vfio_info_cap_header, next), header)?;
        let cap = match u32::from(id) {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let fixed = size_of::<vfio_region_info_cap_sparse_mmap>();
                let count = reader.u32(
                    offset_of!(vfio_region_info_cap_sparse_mmap, nr_areas),
                    fixed,
                )?;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                let area_size = size_of::<vfio_region_sparse_mmap_area>();
                let areas_at = offset_of!(vfio_region_info_cap_sparse_mmap, areas);
                let need = count
                    .checked_mul(area_size)
                    .and_then(|n| n.checked_add(areas_at))
                    .unwrap_or(usize::MAX);
                let mut areas = Vec::with_capacity(count.min(bytes.len() / area_size));
                for i in 0..count {
                    let at = areas_at + i * area_size;
                    areas.push(SparseArea {
                        offset: reader
                            .u64(at + offset_of!(vfio_region_sparse_mmap_area, offset), need)?,
                        size: reader
                            .u64(at + offset_of!(vfio_region_sparse_mmap_area, size), need)?,
                    });
                }
                RegionCap::SparseMmap { areas }
            }
            VFIO_REGION_INFO_CAP_TYPE => {
                let fixed = size_of::<vfio_region_info_cap_type>();
                RegionCap::Type {
                    region_type: reader.u32(offset_of!(vfio_region_info_cap_type, type_), fixed)?,
                    subtype: reader.u32(offset_of!(vfio_region_info_cap_type, subtype), fixed)?,
                }
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => RegionCap::MsixMappable,
            _ => RegionCap::Other { id, version },
        };
        caps.push(cap);
        let next = usize::try_from(next).unwrap_or(usize::MAX);
        if next != 0 && next <= offset {
            return Err(RegionError::Backwards {
                index,
                offset,
                next,
            });
        }
        floor = offset + header;
        offset = next;
    }
    Ok(caps)
}

/// Reads native-endian fields of one capability, checking that the capability's `need`
/// bytes fit in the buffer before reading any of them.
struct Reader<'a> {
    index: u32,
    bytes: &'a [u8],
    base: usize,
}

impl Reader<'_> {
    fn field<const N: usize>(&self, at: usize, need: usize) -> Result<[u8; N], RegionError> {
        let truncated = || RegionError::Truncated {
            index: self.index,
            offset: self.base,
            need,
            len: self.bytes.len(),
        };
        let end = self.base.checked_add(need).ok_or_else(truncated)?;
        if end > self.bytes.len() || at + N > need {
            return Err(truncated());
        }
        let start = self.base + at;
        self.bytes
            .get(start..start + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(truncated)
    }

    fn u16(&self, at: usize, need: usize) -> Result<u16, RegionError> {
        self.field::<2>(at, need).map(u16::from_ne_bytes)
    }

    fn u32(&self, at: usize, need: usize) -> Result<u32, RegionError> {
        self.field::<4>(at, need).map(u32::from_ne_bytes)
    }

    fn u64(&self, at: usize, need: usize) -> Result<u64, RegionError> {
        self.field::<8>(at, need).map(u64::from_ne_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: usize = size_of::<vfio_region_info>();

    /// Builds a region-info buffer the way the kernel lays it out: the struct, then each
    /// capability at the offset given, with `next` linking them.
    struct Chain(Vec<u8>);

    impl Chain {
        fn new(len: usize) -> Self {
            Self(vec![0; len])
        }

        fn put(&mut self, at: usize, value: &[u8]) {
            self.0[at..at + value.len()].copy_from_slice(value);
        }

        fn header(&mut self, at: usize, id: u32, version: u16, next: u32) {
            let id = u16::try_from(id).unwrap();
            self.put(at + offset_of!(vfio_info_cap_header, id), &id.to_ne_bytes());
            self.put(
                at + offset_of!(vfio_info_cap_header, version),
                &version.to_ne_bytes(),
            );
            self.put(
                at + offset_of!(vfio_info_cap_header, next),
                &next.to_ne_bytes(),
            );
        }

        fn sparse(&mut self, at: usize, next: u32, areas: &[(u64, u64)]) {
            self.header(at, VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, next);
            let count = u32::try_from(areas.len()).unwrap();
            self.put(
                at + offset_of!(vfio_region_info_cap_sparse_mmap, nr_areas),
                &count.to_ne_bytes(),
            );
            let base = at + offset_of!(vfio_region_info_cap_sparse_mmap, areas);
            for (i, (offset, size)) in areas.iter().enumerate() {
                let area = base + i * size_of::<vfio_region_sparse_mmap_area>();
                self.put(area, &offset.to_ne_bytes());
                self.put(area + 8, &size.to_ne_bytes());
            }
        }
    }

    #[test]
    fn sparse_mmap_then_type_then_msix() {
        // A BAR with its MSI-X table cut out: two mmappable areas around it.
        let sparse_at = INFO;
        let type_at = sparse_at + 16 + 2 * 16;
        let msix_at = type_at + 16;
        let mut chain = Chain::new(msix_at + 8);
        chain.sparse(
            sparse_at,
            u32::try_from(type_at).unwrap(),
            &[(0, 0x2000), (0x3000, 0x1000)],
        );
        chain.header(
            type_at,
            VFIO_REGION_INFO_CAP_TYPE,
            1,
            u32::try_from(msix_at).unwrap(),
        );
        chain.put(type_at + 8, &0x8000_8086u32.to_ne_bytes());
        chain.put(type_at + 12, &3u32.to_ne_bytes());
        chain.header(msix_at, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0);

        let caps = parse_caps(0, &chain.0, u32::try_from(sparse_at).unwrap()).unwrap();
        assert_eq!(
            caps,
            [
                RegionCap::SparseMmap {
                    areas: vec![
                        SparseArea {
                            offset: 0,
                            size: 0x2000
                        },
                        SparseArea {
                            offset: 0x3000,
                            size: 0x1000
                        }
                    ]
                },
                RegionCap::Type {
                    region_type: 0x8000_8086,
                    subtype: 3
                },
                RegionCap::MsixMappable,
            ]
        );
    }

    #[test]
    fn unknown_caps_are_kept_by_id_and_an_empty_chain_is_empty() {
        let mut chain = Chain::new(INFO + 8);
        chain.header(INFO, 42, 7, 0);
        assert_eq!(
            parse_caps(0, &chain.0, u32::try_from(INFO).unwrap()).unwrap(),
            [RegionCap::Other { id: 42, version: 7 }]
        );
        assert_eq!(parse_caps(0, &chain.0, 0).unwrap(), []);
    }

    #[test]
    fn a_chain_that_loops_is_an_error() {
        let mut chain = Chain::new(INFO + 32);
        chain.header(INFO, 42, 1, u32::try_from(INFO + 16).unwrap());
        chain.header(INFO + 16, 42, 1, u32::try_from(INFO).unwrap());
        let err = parse_caps(5, &chain.0, u32::try_from(INFO).unwrap()).unwrap_err();
        assert_eq!(
            err,
            RegionError::Backwards {
                index: 5,
                offset: INFO + 16,
                next: INFO
            }
        );
        // A chain may not start inside the region-info struct either.
        assert!(matches!(
            parse_caps(5, &chain.0, 4),
            Err(RegionError::Backwards { .. })
        ));
    }

    #[test]
    fn truncated_caps_are_errors_not_panics() {
        // A sparse-mmap capability claiming 1000 areas in a buffer with room for one.
        let mut chain = Chain::new(INFO + 32);
        chain.sparse(INFO, 0, &[(0, 0x1000)]);
        chain.put(INFO + 8, &1000u32.to_ne_bytes());
        let err = parse_caps(2, &chain.0, u32::try_from(INFO).unwrap()).unwrap_err();
        assert!(
            matches!(err, RegionError::Truncated { index: 2, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("region 2: capability at offset 0x20 needs 16016 bytes"),
            "{err}"
        );
        // A header past the end, and a next pointing past the end.
        parse_caps(0, &chain.0, u32::try_from(INFO + 30).unwrap()).unwrap_err();
        chain.sparse(INFO, 4096, &[(0, 0x1000)]);
        assert!(matches!(
            parse_caps(0, &chain.0, u32::try_from(INFO).unwrap()),
            Err(RegionError::Truncated { offset: 4096, .. })
        ));
        // Every prefix of a valid chain fails cleanly.
        let mut good = Chain::new(INFO + 32);
        good.sparse(INFO, 0, &[(0, 0x1000)]);
        for len in 0..good.0.len() {
            parse_caps(0, &good.0[..len], u32::try_from(INFO).unwrap()).unwrap_err();
        }
        parse_caps(0, &good.0, u32::try_from(INFO).unwrap()).unwrap();
    }

    #[test]
    fn region_info_from_kernel_and_mmap_areas() {
        let mut chain = Chain::new(INFO + 32);
        chain.sparse(INFO, 0, &[(0x1000, 0x1000)]);
        let info = vfio_region_info {
            argsz: u32::try_from(INFO + 32).unwrap(),
            flags: VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_MMAP
                | VFIO_REGION_INFO_FLAG_CAPS,
            index: 0,
            cap_offset: u32::try_from(INFO).unwrap(),
            size: 0x4000,
            offset: 0,
        };
        let region = RegionInfo::from_kernel(&info, &chain.0).unwrap();
        assert_eq!(region.pci_name(), "BAR0");
        assert_eq!(region.flags.names(), ["read", "mmap", "caps"]);
        assert_eq!(
            region.mmap_areas(),
            [SparseArea {
                offset: 0x1000,
                size: 0x1000
            }]
        );
        let plain = vfio_region_info {
            flags: VFIO_REGION_INFO_FLAG_MMAP | 0x100,
            ..info
        };
        let region = RegionInfo::from_kernel(&plain, &chain.0[..INFO]).unwrap();
        assert_eq!(
            region.mmap_areas(),
            [SparseArea {
                offset: 0,
                size: 0x4000
            }]
        );
        assert_eq!(region.flags.names(), ["mmap", "other"]);
        assert_eq!(pci_region_name(7), "config");
        assert_eq!(pci_region_name(9), "region 9");
    }
    #[test]
    fn regions_and_caps_round_trip_through_json_with_snake_case_kinds() {
        let region = RegionInfo {
            index: 2,
            flags: RegionFlags(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_CAPS),
            size: 0x4000,
            offset: 0x2_0000_0000,
            caps: vec![
                RegionCap::SparseMmap {
                    areas: vec![SparseArea {
                        offset: 0,
                        size: 0x1000,
                    }],
                },
                RegionCap::Type {
                    region_type: 1,
                    subtype: 3,
                },
                RegionCap::MsixMappable,
                RegionCap::Other { id: 9, version: 1 },
            ],
        };
        let json = serde_json::to_value(&region).unwrap();
        let kinds: Vec<&str> = json["caps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["sparse_mmap", "type", "msix_mappable", "other"]);
        assert_eq!(serde_json::from_value::<RegionInfo>(json).unwrap(), region);
        serde_json::from_value::<RegionFlags>(serde_json::json!(["read", "fly"])).unwrap_err();
    }
}
