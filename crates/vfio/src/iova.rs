//! The IOVA ranges an address space accepts, and the check that keeps `map_dma` inside them.
//!
//! An IOMMU cannot map every I/O virtual address: its address width ends the space, and
//! reserved regions cut holes in it (on x86 the MSI window `0xfee00000..=0xfeefffff`, and any
//! RMRR of the devices attached). A VMM lays guest memory out where the IOMMU accepts it, so
//! it needs the ranges before it maps. Both interfaces report them: legacy type1 in the
//! `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability of `VFIO_IOMMU_GET_INFO` (with the
//! number of mappings still allowed in `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`), iommufd with
//! `IOMMU_IOAS_IOVA_RANGES`. Both shrink when a device with more reserved regions joins, so
//! the address spaces read them again then.
//!
//! A map outside the ranges is refused here, with the ranges in the error, before the kernel
//! would refuse it with a bare `EINVAL`. An empty list means the kernel did not say (a type1
//! without the capability): nothing is refused then.

use std::fmt;
use std::mem::{offset_of, size_of};

use serde::{Deserialize, Serialize};
use vfio_bindings::bindings::vfio::{
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, vfio_info_cap_header,
    vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range, vfio_iommu_type1_info_dma_avail,
    vfio_iova_range,
};

/// One range of usable I/O virtual addresses, both ends inclusive (as the kernel gives
/// them: a range can end at `u64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IovaRange {
    /// The first usable IOVA.
    pub start: u64,
    /// The last usable IOVA (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// Whether `[iova, iova + len)` (non-empty) lies inside this range.
    pub fn contains(&self, iova: u64, len: u64) -> bool {
        len > 0
            && iova >= self.start
            && iova
                .checked_add(len - 1)
                .is_some_and(|end| end <= self.last)
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.start, self.last)
    }
}

/// What an address space says about the IOVAs it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IovaInfo {
    /// The usable ranges, sorted (empty: the kernel did not say).
    pub ranges: Vec<IovaRange>,
    /// The page sizes the IOMMU maps, as a bitmap (type1's `iova_pgsizes`), or for iommufd
    /// the alignment it wants for an IOVA (`out_iova_alignment`), as one bit.
    pub page_sizes: u64,
    /// How many more DMA mappings the legacy container accepts (type1's `dma_entry_limit`
    /// minus what is mapped); `None` with iommufd, which has no such limit.
    pub dma_avail: Option<u32>,
}

/// The ranges for an error message: `0x0..=0xfedfffff, 0xfef00000..=0x7fffffffff`.
pub(crate) fn ranges_text(ranges: &[IovaRange]) -> String {
    if ranges.is_empty() {
        return "(none)".into();
    }
    ranges
        .iter()
        .map(IovaRange::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `[iova, iova + len)` lies inside one of `ranges`; an empty list accepts all.
pub(crate) fn fits(ranges: &[IovaRange], iova: u64, len: u64) -> bool {
    ranges.is_empty() || ranges.iter().any(|r| r.contains(iova, len))
}

/// What a type1 capability chain says: the IOVA ranges and the mappings still allowed.
/// `bytes` is what `VFIO_IOMMU_GET_INFO` wrote, `first` its `cap_offset` (0: no chain). A
/// malformed chain ends the parse; what was read up to there is kept.
pub(crate) fn parse_type1_caps(bytes: &[u8], first: u32) -> (Vec<IovaRange>, Option<u32>) {
    let mut ranges = Vec::new();
    let mut avail = None;
    let mut at = usize::try_from(first).unwrap_or(usize::MAX);
    let mut floor = size_of::<vfio_iommu_type1_info>();
    let read = |at: usize, n: usize| bytes.get(at..at.checked_add(n)?);
    let u32_at = |at: usize| {
        read(at, 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u64_at = |at: usize| {
        read(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    while at != 0 && at >= floor {
        let Some(header) = read(at, size_of::<vfio_info_cap_header>()) else {
            break;
        };
        let id = u16::from_ne_bytes([header[0], header[1]]);
        let Some(next) = u32_at(at + offset_of!(vfio_info_cap_header, next)) else {
            break;
        };
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let count_at = at + offset_of!(vfio_iommu_type1_info_cap_iova_range, nr_iovas);
                let list_at = at + offset_of!(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
                let count = u32_at(count_at).unwrap_or(0);
                for k in 0..usize::try_from(count).unwrap_or(0) {
                    let entry = list_at + k * size_of::<vfio_iova_range>();
                    let start = u64_at(entry + offset_of!(vfio_iova_range, start));
                    let end = u64_at(entry + offset_of!(vfio_iova_range, end));
                    let (Some(start), Some(last)) = (start, end) else {
                        break;
                    };
                    ranges.push(IovaRange { start, last });
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                avail = u32_at(at + offset_of!(vfio_iommu_type1_info_dma_avail, avail));
            }
            _ => {}
        }
        floor = at + size_of::<vfio_info_cap_header>();
        at = usize::try_from(next).unwrap_or(usize::MAX);
    }
    ranges.sort_by_key(|r| r.start);
    (ranges, avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: usize = size_of::<vfio_iommu_type1_info>();

    fn put(buf: &mut [u8], at: usize, value: &[u8]) {
        buf[at..at + value.len()].copy_from_slice(value);
    }

    fn header(buf: &mut [u8], at: usize, id: u32, next: u32) {
        put(buf, at, &u16::try_from(id).unwrap().to_ne_bytes());
        put(buf, at + 2, &1u16.to_ne_bytes());
        put(buf, at + 4, &next.to_ne_bytes());
    }

    /// The chain an x86 type1 container reports: two ranges around the MSI window, then
    /// the mappings left.
    fn x86_chain() -> Vec<u8> {
        let ranges_at = INFO;
        let avail_at = ranges_at + 16 + 2 * 16;
        let mut buf = vec![0u8; avail_at + 12];
        header(
            &mut buf,
            ranges_at,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
            u32::try_from(avail_at).unwrap(),
        );
        put(&mut buf, ranges_at + 8, &2u32.to_ne_bytes());
        for (k, (start, end)) in [(0xfef0_0000u64, 0x7f_ffff_ffffu64), (0, 0xfedf_ffff)]
            .into_iter()
            .enumerate()
        {
            put(&mut buf, ranges_at + 16 + k * 16, &start.to_ne_bytes());
            put(&mut buf, ranges_at + 24 + k * 16, &end.to_ne_bytes());
        }
        header(&mut buf, avail_at, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 0);
        put(&mut buf, avail_at + 8, &65000u32.to_ne_bytes());
        buf
    }

    #[test]
    fn type1_ranges_and_dma_avail_are_read_from_the_chain_sorted() {
        let (ranges, avail) = parse_type1_caps(&x86_chain(), u32::try_from(INFO).unwrap());
        assert_eq!(
            ranges,
            [
                IovaRange {
                    start: 0,
                    last: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    last: 0x7f_ffff_ffff
                }
            ]
        );
        assert_eq!(avail, Some(65000));
        assert_eq!(
            ranges_text(&ranges),
            "0x0..=0xfedfffff, 0xfef00000..=0x7fffffffff"
        );
        // No chain: nothing known.
        assert_eq!(parse_type1_caps(&x86_chain(), 0), (vec![], None));
    }

    #[test]
    fn a_truncated_or_looping_chain_stops_without_panicking() {
        let chain = x86_chain();
        for len in 0..chain.len() {
            let _ = parse_type1_caps(&chain[..len], u32::try_from(INFO).unwrap());
        }
        let mut looping = chain.clone();
        put(
            &mut looping,
            INFO + 4,
            &u32::try_from(INFO).unwrap().to_ne_bytes(),
        );
        let (ranges, _) = parse_type1_caps(&looping, u32::try_from(INFO).unwrap());
        assert_eq!(ranges.len(), 2, "read once, then the loop ends the parse");
        // A chain starting inside the info struct is not followed.
        assert_eq!(parse_type1_caps(&chain, 4), (vec![], None));
    }

    #[test]
    fn a_map_must_lie_inside_one_range() {
        let (ranges, _) = parse_type1_caps(&x86_chain(), u32::try_from(INFO).unwrap());
        assert!(fits(&ranges, 0x1_0000_0000, 0x20_0000));
        assert!(fits(&ranges, 0, 0x1000));
        assert!(fits(&ranges, 0x7f_ffff_f000, 0x1000), "up to the last byte");
        assert!(!fits(&ranges, 0x7f_ffff_f000, 0x2000), "past the end");
        assert!(!fits(&ranges, 0xfee0_0000, 0x1000), "inside the MSI window");
        assert!(
            !fits(&ranges, 0xfed0_0000, 0x20_0000),
            "across the MSI window, though both ends are usable"
        );
        assert!(!fits(&ranges, 1 << 40, 0x1000), "above the address width");
        assert!(!fits(&ranges, 0, 0), "empty");
        // Unknown ranges accept everything; a range ending at u64::MAX does not overflow.
        assert!(fits(&[], 0xfee0_0000, 0x1000));
        let all = [IovaRange {
            start: 0,
            last: u64::MAX,
        }];
        assert!(fits(&all, u64::MAX - 0xfff, 0x1000));
        assert!(!fits(&all, u64::MAX - 0xfff, 0x2000));
    }
}
