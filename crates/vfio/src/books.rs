//! The legacy container's books of its DMA mappings.
//!
//! The kernel throws a container's mappings away when its last group leaves; the container
//! maps them again from these books when a group joins (see `container.rs`). The books must
//! keep each mapping as it was made, because type1v2 refuses to unmap part of a mapping: a
//! VMM that mapped 4 KiB pieces unmaps 4 KiB pieces, and after a replay those must still be
//! separate mappings in the kernel.
//!
//! They sit on the DMA hot path (one record per map, one removal per unmap, and a VMM may
//! map guest memory 4 KiB at a time), so they store *runs*: mappings of one size at
//! consecutive IOVAs backed by consecutive user addresses are one entry. A B-tree keyed by
//! the run's first IOVA finds the run around an address. Mapping guest memory piece by piece
//! extends one run in place; unmapping its first pieces moves a `skip` mark and unmapping its
//! last ones lowers its count, also in place, so the common cases change no key; unmapping
//! from the middle splits the run.
//!
//! The run touched last is kept out of the tree, as the *hot* run: the next piece of a
//! sequential map or unmap is then a few comparisons and an add, with no tree search (the
//! DMA benchmark maps 1 GiB in 4 KiB pieces, and the search was a measurable share of each
//! call). Any other operation first puts the hot run back into the tree.

use std::collections::BTreeMap;

/// Mappings of `piece` bytes each: piece `k` (for `skip <= k < count`) is at the key's IOVA
/// plus `k * piece` and at `vaddr + k * piece`. Pieces below `skip` were unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    piece: u64,
    count: u64,
    skip: u64,
    vaddr: u64,
}

impl Run {
    /// A run of the one mapping `len` bytes at `vaddr`.
    fn single(len: u64, vaddr: u64) -> Self {
        Self {
            piece: len,
            count: 1,
            skip: 0,
            vaddr,
        }
    }

    /// The span from the key to the end of the last piece.
    fn span(&self) -> u64 {
        self.piece * self.count
    }

    /// Whether a mapping of `len` bytes at `vaddr` made at `iova` is this run's next piece,
    /// the run being keyed `start`.
    fn continues_with(&self, start: u64, iova: u64, len: u64, vaddr: u64) -> bool {
        self.piece == len && start + self.span() == iova && self.vaddr + self.span() == vaddr
    }
}

/// One mapping, as replayed: IOVA, length, user address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) iova: u64,
    pub(crate) len: u64,
    pub(crate) vaddr: u64,
}

/// The books.
#[derive(Debug, Default)]
pub(crate) struct Books {
    /// Every run but the hot one, by first IOVA. Runs never overlap: `[key, key + span)` are
    /// disjoint, the hot run's included.
    runs: BTreeMap<u64, Run>,
    /// The run the last operation touched (key, run), not in `runs`.
    hot: Option<(u64, Run)>,
    mappings: usize,
}

impl Books {
    /// Records a mapping of `len` bytes at `vaddr` made at `iova` (not overlapping any
    /// recorded one: the kernel refused those).
    #[inline]
    pub(crate) fn insert(&mut self, iova: u64, len: u64, vaddr: u64) {
        self.mappings += 1;
        if let Some((start, run)) = &mut self.hot
            && run.continues_with(*start, iova, len, vaddr)
        {
            run.count += 1;
            return;
        }
        self.insert_slow(iova, len, vaddr);
    }

    /// [`Books::insert`] when the mapping does not extend the hot run: it goes into the tree
    /// and its run becomes hot.
    #[inline(never)]
    fn insert_slow(&mut self, iova: u64, len: u64, vaddr: u64) {
        self.settle();
        let key = self.insert_cold(iova, len, vaddr);
        self.hot = self.runs.remove_entry(&key);
    }

    /// Puts the hot run back into the tree.
    fn settle(&mut self) {
        if let Some((start, run)) = self.hot.take() {
            self.runs.insert(start, run);
        }
    }

    /// [`Books::insert`] in the tree, with no hot run; returns the key of the run that holds
    /// the new mapping.
    fn insert_cold(&mut self, iova: u64, len: u64, vaddr: u64) -> u64 {
        // One search finds the run with the greatest key at or below `iova`. Runs never
        // overlap, so it is the only one that can end at `iova` (extend it) or cover `iova`
        // with its unmapped front (move it).
        let Some((&start, run)) = self.runs.range_mut(..=iova).next_back() else {
            self.runs.insert(iova, Run::single(len, vaddr));
            return iova;
        };
        if run.continues_with(start, iova, len, vaddr) {
            run.count += 1;
            return start;
        }
        let run = *run;
        // A run whose unmapped front covers `iova` moves its key to its first live piece, so
        // that the new mapping can have a key of its own.
        if iova < start + run.skip * run.piece {
            self.runs.remove(&start);
            let moved = start + run.skip * run.piece;
            self.runs.insert(
                moved,
                Run {
                    count: run.count - run.skip,
                    skip: 0,
                    vaddr: run.vaddr + run.skip * run.piece,
                    ..run
                },
            );
        }
        self.runs.insert(iova, Run::single(len, vaddr));
        iova
    }

    /// Forgets the mappings that start inside `[iova, iova + len)`; returns the bytes
    /// forgotten.
    #[inline]
    pub(crate) fn forget(&mut self, iova: u64, len: u64) -> u64 {
        let end = iova.saturating_add(len);
        // The common case, in place: the range is the first or last live pieces of the hot
        // run (runs never overlap, so no other run is involved).
        if let Some((start, run)) = &mut self.hot
            && let Some(gone) = trim_in_place(*start, run, iova, end)
        {
            self.mappings -= usize::try_from(gone).unwrap_or(self.mappings);
            return gone * run.piece;
        }
        self.forget_slow(iova, end)
    }

    /// [`Books::forget`] when the range is not at either end of the hot run.
    #[inline(never)]
    fn forget_slow(&mut self, iova: u64, end: u64) -> u64 {
        self.settle();
        // Next, the same for the run around `iova`, found with one search; it becomes hot.
        if let Some((&start, run)) = self.runs.range_mut(..=iova).next_back()
            && let Some(gone) = trim_in_place(start, run, iova, end)
        {
            self.mappings -= usize::try_from(gone).unwrap_or(self.mappings);
            let bytes = gone * run.piece;
            self.hot = self.runs.remove_entry(&start);
            return bytes;
        }
        self.forget_general(iova, end)
    }

    /// [`Books::forget`] over any number of runs, in the tree (the hot run settled).
    fn forget_general(&mut self, iova: u64, end: u64) -> u64 {
        let mut forgotten = 0;
        // Walk back from the range's end over the runs that may hold a mapping starting in
        // it: those starting before its end and ending after its start (runs never overlap).
        // Whatever is changed below starts at or after `cursor`, so it is not seen again.
        let mut cursor = end;
        while let Some((&start, &run)) = self.runs.range(..cursor).next_back() {
            if start + run.span() <= iova {
                break;
            }
            cursor = start;
            // Live pieces k with start + k*piece in [iova, end).
            let first = iova
                .saturating_sub(start)
                .div_ceil(run.piece)
                .clamp(run.skip, run.count);
            let last = (end - start).div_ceil(run.piece).min(run.count);
            if first >= last {
                continue;
            }
            let gone = last - first;
            forgotten += gone * run.piece;
            self.mappings -= usize::try_from(gone).unwrap_or(self.mappings);
            match (first == run.skip, last == run.count) {
                (true, true) => {
                    self.runs.remove(&start);
                }
                (true, false) => {
                    if let Some(run) = self.runs.get_mut(&start) {
                        run.skip = last;
                    }
                }
                (false, true) => {
                    if let Some(run) = self.runs.get_mut(&start) {
                        run.count = first;
                    }
                }
                (false, false) => {
                    if let Some(run) = self.runs.get_mut(&start) {
                        run.count = first;
                    }
                    self.runs.insert(
                        start + last * run.piece,
                        Run {
                            count: run.count - last,
                            skip: 0,
                            vaddr: run.vaddr + last * run.piece,
                            ..run
                        },
                    );
                }
            }
        }
        forgotten
    }

    /// How many mappings there are.
    pub(crate) fn len(&self) -> usize {
        self.mappings
    }

    /// True when there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.mappings == 0
    }

    /// Every mapping, one by one, in IOVA order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        // The hot run goes between the runs below its key and those above.
        let split = self.hot.map_or(u64::MAX, |(start, _)| start);
        self.runs
            .range(..split)
            .map(|(&start, &run)| (start, run))
            .chain(self.hot)
            .chain(self.runs.range(split..).map(|(&start, &run)| (start, run)))
            .flat_map(|(start, run)| {
                (run.skip..run.count).map(move |k| Mapping {
                    iova: start + k * run.piece,
                    len: run.piece,
                    vaddr: run.vaddr + k * run.piece,
                })
            })
    }

    /// How many runs hold the mappings (tests only: shows that pieces were merged).
    #[cfg(test)]
    fn run_count(&self) -> usize {
        self.runs.len() + usize::from(self.hot.is_some())
    }
}

/// If `[iova, end)` is exactly the first or the last live pieces of the run keyed `start`,
/// and leaves some piece alive, forgets them in place and returns how many; else `None`.
#[inline]
fn trim_in_place(start: u64, run: &mut Run, iova: u64, end: u64) -> Option<u64> {
    if iova < start
        || !(iova - start).is_multiple_of(run.piece)
        || !(end - start).is_multiple_of(run.piece)
        || end - start > run.span()
    {
        return None;
    }
    let first = (iova - start) / run.piece;
    let last = (end - start) / run.piece;
    if first == run.skip && last < run.count {
        run.skip = last;
    } else if last == run.count && first > run.skip {
        run.count = first;
    } else {
        return None;
    }
    Some(last - first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    fn all(books: &Books) -> Vec<(u64, u64, u64)> {
        books.iter().map(|m| (m.iova, m.len, m.vaddr)).collect()
    }

    #[test]
    fn consecutive_pieces_make_one_run_and_unmapping_shrinks_or_splits_it() {
        let mut books = Books::default();
        for i in 0..8 {
            books.insert(0x10_0000 + i * PAGE, PAGE, 0x7000_0000 + i * PAGE);
        }
        assert_eq!((books.run_count(), books.len()), (1, 8));
        assert_eq!(books.forget(0x10_0000, PAGE), PAGE, "first piece");
        assert_eq!(books.forget(0x10_0000 + 7 * PAGE, PAGE), PAGE, "last piece");
        assert_eq!(
            books.forget(0x10_0000 + 3 * PAGE, PAGE),
            PAGE,
            "middle: splits"
        );
        assert_eq!(books.run_count(), 2);
        assert_eq!(
            all(&books),
            [
                (0x10_1000, PAGE, 0x7000_1000),
                (0x10_2000, PAGE, 0x7000_2000),
                (0x10_4000, PAGE, 0x7000_4000),
                (0x10_5000, PAGE, 0x7000_5000),
                (0x10_6000, PAGE, 0x7000_6000),
            ]
        );
        assert_eq!(books.forget(0, u64::MAX), 5 * PAGE);
        assert!(books.is_empty() && books.run_count() == 0);
    }

    #[test]
    fn runs_need_equal_pieces_and_contiguous_user_memory() {
        let mut books = Books::default();
        books.insert(0x1000, PAGE, 0x9000);
        books.insert(0x2000, 2 * PAGE, 0xa000); // another size
        books.insert(0x4000, 2 * PAGE, 0x10_0000); // user memory not contiguous
        books.insert(0x6000, 2 * PAGE, 0x10_2000); // extends the previous run
        assert_eq!(books.run_count(), 3);
        assert_eq!(books.len(), 4);
        // A range covering two whole mappings of different runs.
        assert_eq!(books.forget(0x1000, 0x3000), 0x3000);
        assert_eq!(
            all(&books),
            [(0x4000, 0x2000, 0x10_0000), (0x6000, 0x2000, 0x10_2000)]
        );
        // A range starting inside a mapping forgets only mappings starting in it.
        assert_eq!(books.forget(0x5000, 0x2000), 0x2000);
        assert_eq!(all(&books), [(0x4000, 0x2000, 0x10_0000)]);
        assert_eq!(books.forget(0x8000, 0x1000), 0, "nothing there");
    }

    #[test]
    fn mapping_again_where_a_run_was_unmapped_keeps_both() {
        let mut books = Books::default();
        for i in 0..4 {
            books.insert(i * PAGE, PAGE, 0x10_0000 + i * PAGE);
        }
        assert_eq!(
            books.forget(0, 2 * PAGE),
            2 * PAGE,
            "front pieces: in place"
        );
        assert_eq!(books.run_count(), 1);
        books.insert(PAGE, PAGE, 0x50_0000);
        books.insert(0, PAGE, 0x60_0000);
        assert_eq!(
            all(&books),
            [
                (0, PAGE, 0x60_0000),
                (PAGE, PAGE, 0x50_0000),
                (2 * PAGE, PAGE, 0x10_2000),
                (3 * PAGE, PAGE, 0x10_3000),
            ]
        );
        assert_eq!(books.forget(3 * PAGE, PAGE), PAGE, "last piece: in place");
        assert_eq!(books.len(), 3);
    }

    #[test]
    fn two_interleaved_streams_keep_two_runs_whichever_is_hot() {
        // Two regions mapped piece by piece, alternately: the hot run switches at every call
        // and each switch puts the other run back into the tree, where it must still extend.
        let mut books = Books::default();
        for i in 0..16 {
            books.insert(i * PAGE, PAGE, 0x10_0000 + i * PAGE);
            books.insert(0x100_0000 + i * PAGE, PAGE, 0x90_0000 + i * PAGE);
        }
        assert_eq!((books.run_count(), books.len()), (2, 32));
        // Unmap both from the front, alternately, then the rest of the second at once.
        for i in 0..8 {
            assert_eq!(books.forget(i * PAGE, PAGE), PAGE);
            assert_eq!(books.forget(0x100_0000 + i * PAGE, PAGE), PAGE);
        }
        assert_eq!(books.run_count(), 2);
        assert_eq!(books.forget(0x100_0000, 0x100_0000), 8 * PAGE);
        assert_eq!(
            all(&books),
            (8..16)
                .map(|i| (i * PAGE, PAGE, 0x10_0000 + i * PAGE))
                .collect::<Vec<_>>()
        );
        // The hot run (the last one touched, at 0x100_0000) lists between the runs below and
        // above it.
        books.insert(0x200_0000, PAGE, 0x2);
        books.insert(16 * PAGE, PAGE, 0x10_0000 + 16 * PAGE);
        books.insert(0x100_0000, PAGE, 0x1);
        assert_eq!(books.hot.map(|(start, _)| start), Some(0x100_0000));
        let iovas: Vec<u64> = books.iter().map(|m| m.iova).collect();
        assert!(iovas.is_sorted(), "{iovas:x?}");
        assert_eq!(iovas.len(), 11);
    }

    /// Model test: random maps and unmaps against a plain list of mappings; the books must
    /// always list the same mappings and forget the same bytes.
    #[test]
    fn agrees_with_a_list_of_mappings() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let mut books = Books::default();
            let mut model: Vec<(u64, u64, u64)> = Vec::new();
            for _ in 0..300 {
                let iova = next(64) * PAGE;
                if next(3) > 0 {
                    let len = (1 + next(3)) * PAGE;
                    let overlaps = model
                        .iter()
                        .any(|&(i, l, _)| iova < i + l && i < iova + len);
                    if !overlaps {
                        let vaddr = 0x7000_0000 + iova + next(2) * 0x100_0000;
                        books.insert(iova, len, vaddr);
                        model.push((iova, len, vaddr));
                    }
                } else {
                    let len = (1 + next(8)) * PAGE;
                    let gone: u64 = model
                        .iter()
                        .filter(|&&(i, _, _)| i >= iova && i < iova + len)
                        .map(|&(_, l, _)| l)
                        .sum();
                    model.retain(|&(i, _, _)| !(i >= iova && i < iova + len));
                    assert_eq!(books.forget(iova, len), gone);
                }
                model.sort_unstable();
                assert_eq!(all(&books), model);
                assert_eq!(books.len(), model.len());
            }
        }
    }
}
