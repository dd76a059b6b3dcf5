//! The legacy container's books of its DMA mappings: IOVA → (length, user address).
//!
//! The kernel throws a container's mappings away when its last group leaves; the container
//! maps them again from these books when a group joins (see `container.rs`). The books sit
//! on the DMA hot path (one insert per map, one removal per unmap, a VMM may map guest
//! memory 4 KiB at a time), so they are a hash map keyed by IOVA with a cheap multiplicative
//! hash instead of SipHash or a B-tree, and an unmap of exactly one mapping (the common
//! case) is a single removal. An unmap covering several mappings scans the books.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One DMA mapping: its length and user address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Booked {
    pub(crate) len: u64,
    pub(crate) vaddr: u64,
}

/// Fibonacci hashing of the page number: IOVAs are page-aligned and often consecutive, and
/// the product spreads them over both the low bits (bucket) and high bits (tag) hashbrown
/// uses.
#[derive(Debug, Default, Clone, Copy)]
struct IovaHasher(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IovaHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ (n >> 12)).wrapping_mul(GOLDEN);
    }
}

/// The books.
#[derive(Debug, Default)]
pub(crate) struct Books(HashMap<u64, Booked, BuildHasherDefault<IovaHasher>>);

impl Books {
    /// Records a mapping made at `iova`.
    pub(crate) fn insert(&mut self, iova: u64, booked: Booked) {
        self.0.insert(iova, booked);
    }

    /// Forgets the mappings that start inside `[iova, iova + len)`; returns the bytes
    /// forgotten.
    pub(crate) fn forget(&mut self, iova: u64, len: u64) -> u64 {
        if let Some(booked) = self.0.get(&iova)
            && booked.len == len
        {
            self.0.remove(&iova);
            return len;
        }
        let end = iova.saturating_add(len);
        let mut forgotten = 0;
        self.0.retain(|&start, booked| {
            let inside = start >= iova && start < end;
            if inside {
                forgotten += booked.len;
            }
            !inside
        });
        forgotten
    }

    /// How many mappings there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mappings, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Booked)> + '_ {
        self.0.iter().map(|(&iova, &booked)| (iova, booked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(iova: u64) -> Booked {
        Booked {
            len: 0x1000,
            vaddr: iova,
        }
    }

    #[test]
    fn forget_whole_mappings_in_range() {
        let mut books = Books::default();
        for iova in [0x1000u64, 0x2000, 0x3000, 0x8000] {
            books.insert(iova, page(iova));
        }
        assert_eq!(
            books.forget(0x2000, 0x2000),
            0x2000,
            "two mappings, one range"
        );
        let mut left: Vec<u64> = books.iter().map(|(iova, _)| iova).collect();
        left.sort_unstable();
        assert_eq!(left, [0x1000, 0x8000]);
        assert_eq!(books.forget(0x4000, 0x1000), 0, "nothing there");
        assert_eq!(books.forget(0x8000, 0x1000), 0x1000, "exact match");
        assert_eq!(books.forget(0, u64::MAX), 0x1000);
        assert!(books.is_empty());
    }

    #[test]
    fn an_exact_start_with_another_length_scans() {
        // A 2-page mapping unmapped with a 4-page range starting at it: not the fast path.
        let mut books = Books::default();
        books.insert(
            0x1000,
            Booked {
                len: 0x2000,
                vaddr: 0,
            },
        );
        books.insert(0x3000, page(0x3000));
        assert_eq!(books.forget(0x1000, 0x4000), 0x3000);
        assert_eq!(books.len(), 0);
    }

    #[test]
    fn many_consecutive_pages_stay_findable() {
        let mut books = Books::default();
        for i in 0..100_000u64 {
            books.insert(0x1_0000_0000 + i * 0x1000, page(i));
        }
        for i in (0..100_000u64).rev() {
            assert_eq!(books.forget(0x1_0000_0000 + i * 0x1000, 0x1000), 0x1000);
        }
        assert!(books.is_empty());
    }
}
