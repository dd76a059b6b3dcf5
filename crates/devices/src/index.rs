//! Lowest-free index allocation, and the block index built on it.
//!
//! Kata once handed out block indexes from a counter that only grew, so a pod that restarted
//! containers ran out (runtime #2007); later it took the lowest free index from a map, in a
//! linear scan. [`IndexPool`] keeps a high-water mark and a sorted set of freed indexes below
//! it: taking and freeing are `O(log n)`, and the lowest free index is always the one taken.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The number of block indexes: `[0, 65535)`.
pub const BLOCK_INDEX_LIMIT: u32 = 65535;

/// What went wrong in an [`IndexPool`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Every index below the limit is taken.
    #[error("all {limit} indexes are in use")]
    Exhausted {
        /// The pool's size.
        limit: u32,
    },
    /// Freeing an index that is not taken.
    #[error("index {index} is not in use")]
    NotInUse {
        /// The index.
        index: u32,
    },
    /// Taking a given index that is already taken or out of range.
    #[error("index {index} is in use or not below {limit}")]
    Unavailable {
        /// The index.
        index: u32,
        /// The pool's size.
        limit: u32,
    },
}

/// Indexes `[0, limit)`, handed out lowest first and reused after release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPool {
    limit: u32,
    /// Every index at or above `next` is free.
    next: u32,
    /// Free indexes below `next`.
    free: BTreeSet<u32>,
}

impl IndexPool {
    /// An empty pool of `limit` indexes.
    #[must_use]
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            next: 0,
            free: BTreeSet::new(),
        }
    }

    /// The number of indexes.
    #[must_use]
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes the lowest free index.
    ///
    /// # Errors
    /// [`IndexError::Exhausted`] when all are taken.
    pub fn take(&mut self) -> Result<u32, IndexError> {
        if let Some(index) = self.free.pop_first() {
            return Ok(index);
        }
        if self.next >= self.limit {
            return Err(IndexError::Exhausted { limit: self.limit });
        }
        let index = self.next;
        self.next += 1;
        Ok(index)
    }

    /// Takes a given index (used when loading saved state).
    ///
    /// # Errors
    /// [`IndexError::Unavailable`] when it is taken or not below the limit.
    pub fn take_exact(&mut self, index: u32) -> Result<(), IndexError> {
        let unavailable = IndexError::Unavailable {
            index,
            limit: self.limit,
        };
        if index >= self.limit {
            return Err(unavailable);
        }
        if index < self.next {
            if !self.free.remove(&index) {
                return Err(unavailable);
            }
        } else {
            self.free.extend(self.next..index);
            self.next = index + 1;
        }
        Ok(())
    }

    /// Frees an index.
    ///
    /// # Errors
    /// [`IndexError::NotInUse`] when it is not taken; nothing changes.
    pub fn release(&mut self, index: u32) -> Result<(), IndexError> {
        if index >= self.next || self.free.contains(&index) {
            return Err(IndexError::NotInUse { index });
        }
        if index + 1 == self.next {
            // Lower the mark past every trailing free index, so `free` stays small.
            self.next = index;
            while let Some(&last) = self.free.last() {
                if last + 1 != self.next {
                    break;
                }
                self.free.pop_last();
                self.next = last;
            }
        } else {
            self.free.insert(index);
        }
        Ok(())
    }

    /// Whether `index` is taken.
    #[must_use]
    pub fn is_used(&self, index: u32) -> bool {
        index < self.next && !self.free.contains(&index)
    }

    /// How many indexes are taken.
    #[must_use]
    pub fn used_count(&self) -> usize {
        // `free` only holds indexes below `next`, so this cannot underflow.
        self.next as usize - self.free.len()
    }

    /// The taken indexes, in order.
    pub fn used(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.next).filter(|i| !self.free.contains(i))
    }
}

/// A block index: the VM-wide number of a disk, from which its `vdX` name and SCSI address
/// follow. Always below [`BLOCK_INDEX_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BlockIndex(u32);

/// A number that is not a block index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block index {0} is not below 65535")]
pub struct BlockIndexError(pub u32);

impl BlockIndex {
    /// The index as a number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for BlockIndex {
    type Error = BlockIndexError;

    fn try_from(n: u32) -> Result<Self, Self::Error> {
        if n >= BLOCK_INDEX_LIMIT {
            return Err(BlockIndexError(n));
        }
        Ok(Self(n))
    }
}

impl From<BlockIndex> for u32 {
    fn from(i: BlockIndex) -> Self {
        i.0
    }
}

impl fmt::Display for BlockIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_with_reuse() {
        let mut p = IndexPool::new(BLOCK_INDEX_LIMIT);
        assert_eq!((p.take(), p.take(), p.take()), (Ok(0), Ok(1), Ok(2)));
        p.release(1).unwrap();
        p.release(0).unwrap();
        assert_eq!(p.take(), Ok(0));
        assert_eq!(p.take(), Ok(1));
        assert_eq!(p.take(), Ok(3));
        assert_eq!(p.used().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(p.used_count(), 4);
    }

    #[test]
    fn release_of_the_top_lowers_the_mark() {
        let mut p = IndexPool::new(10);
        for _ in 0..5 {
            p.take().unwrap();
        }
        p.release(2).unwrap();
        p.release(3).unwrap();
        p.release(4).unwrap();
        assert_eq!(p, {
            let mut q = IndexPool::new(10);
            q.take().unwrap();
            q.take().unwrap();
            q
        });
    }

    #[test]
    fn exhausted_at_the_limit() {
        let mut p = IndexPool::new(2);
        p.take().unwrap();
        p.take().unwrap();
        let before = p.clone();
        assert_eq!(p.take(), Err(IndexError::Exhausted { limit: 2 }));
        assert_eq!(p, before);
    }

    #[test]
    fn block_pool_is_0_to_65534() {
        let mut p = IndexPool::new(BLOCK_INDEX_LIMIT);
        let mut last = 0;
        for _ in 0..BLOCK_INDEX_LIMIT {
            last = p.take().unwrap();
        }
        assert_eq!(last, 65534);
        p.take().unwrap_err();
        BlockIndex::try_from(last).unwrap();
        assert_eq!(BlockIndex::try_from(65535), Err(BlockIndexError(65535)));
    }

    #[test]
    fn double_release_changes_nothing() {
        let mut p = IndexPool::new(4);
        p.take().unwrap();
        p.take().unwrap();
        p.release(0).unwrap();
        let before = p.clone();
        assert_eq!(p.release(0), Err(IndexError::NotInUse { index: 0 }));
        assert_eq!(p.release(3), Err(IndexError::NotInUse { index: 3 }));
        assert_eq!(p, before);
    }

    #[test]
    fn take_exact() {
        let mut p = IndexPool::new(8);
        p.take_exact(3).unwrap();
        assert_eq!(p.used().collect::<Vec<_>>(), [3]);
        p.take_exact(3).unwrap_err();
        p.take_exact(8).unwrap_err();
        assert_eq!(p.take(), Ok(0));
        p.take_exact(1).unwrap();
        assert_eq!(p.take(), Ok(2));
        assert_eq!(p.take(), Ok(4));
    }
}
