//! A reference count as a type, whose steps say what they mean.
//!
//! Several users share one object, and only the first and the last of them do real work.
//! A legacy VFIO group can be opened only once, yet two devices of one group must both use
//! it (cloud-hypervisor #3078): the container keeps one group fd and counts its users; the
//! first user attaches the group, later ones only count, and the last one to leave detaches
//! it. The per-VM device manager (`plugboard-devices`) keeps two counts per device:
//! references (users of a device) and attachments (plugs); Kata runtime PR #655 explains why
//! one is not enough.
//!
//! `acquire` says [`Acquired::First`] or [`Acquired::Again`] and `release` says
//! [`Released::Last`] or [`Released::StillUsed`], so the caller never has to guess from
//! `Arc::strong_count` (rust-vmm's `put_group` does, under a comment that counts differently
//! from the code) or from a `bool` whose meaning flips between methods (Kata's
//! `increase_attach_count() -> Result<bool>`, `true` meaning "skip"; one driver's detach
//! even incremented, runtime #1259). A step that would wrap, or a release at zero (a
//! bookkeeping bug), is a [`RefCountError`] that changes nothing.
//!
//! This is the workspace's one reference-count type; `plugboard-devices` re-exports it.

use serde::{Deserialize, Serialize};

/// What a [`RefCount::acquire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Acquired {
    /// The count went from 0 to 1: the real work (attach a group, plug a device) is due.
    First,
    /// The count was already above 0: nothing to set up.
    Again,
}

/// What a [`RefCount::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Released {
    /// The count went from 1 to 0: the real undo (detach a group, unplug a device) is due.
    Last,
    /// The count is still above 0: other users remain.
    StillUsed,
}

/// A count step that would wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefCountError {
    /// Acquiring at the maximum.
    #[error("count is at its maximum ({})", u32::MAX)]
    Overflow,
    /// Releasing at zero: a bookkeeping bug, reported instead of wrapping around.
    #[error("count is already zero")]
    NotHeld,
}

/// A count of holders. It starts at 0; it never wraps or goes below 0. Serialized as the
/// bare number.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RefCount(u32);

impl RefCount {
    /// A count of zero.
    #[must_use]
    pub const fn new() -> Self {
        Self(0)
    }

    /// A count starting at `n` (saved state, tests).
    #[must_use]
    pub const fn from_raw(n: u32) -> Self {
        Self(n)
    }

    /// The count.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether nobody holds it.
    #[must_use]
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Adds a holder.
    ///
    /// # Errors
    /// [`RefCountError::Overflow`] at the maximum; the count is unchanged.
    pub fn acquire(&mut self) -> Result<Acquired, RefCountError> {
        let next = self.0.checked_add(1).ok_or(RefCountError::Overflow)?;
        let step = if self.0 == 0 {
            Acquired::First
        } else {
            Acquired::Again
        };
        self.0 = next;
        Ok(step)
    }

    /// Drops a holder.
    ///
    /// # Errors
    /// [`RefCountError::NotHeld`] at zero; the count is unchanged.
    pub fn release(&mut self) -> Result<Released, RefCountError> {
        self.0 = self.0.checked_sub(1).ok_or(RefCountError::NotHeld)?;
        Ok(if self.0 == 0 {
            Released::Last
        } else {
            Released::StillUsed
        })
    }

    /// What [`Self::acquire`] would do, without doing it.
    ///
    /// # Errors
    /// As [`Self::acquire`].
    pub fn peek_acquire(self) -> Result<Acquired, RefCountError> {
        let mut copy = self;
        copy.acquire()
    }

    /// What [`Self::release`] would do, without doing it.
    ///
    /// # Errors
    /// As [`Self::release`].
    pub fn peek_release(self) -> Result<Released, RefCountError> {
        let mut copy = self;
        copy.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Acquire,
        Release,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Step {
        A(Acquired),
        R(Released),
    }

    /// Kata's `bumpAttachCount` table, in our words.
    #[test]
    fn transition_table() {
        use Acquired::{Again, First};
        use Released::{Last, StillUsed};
        let max = u32::MAX;
        let table: [(u32, Op, u32, Result<Step, RefCountError>); 8] = [
            (0, Op::Acquire, 1, Ok(Step::A(First))),
            (1, Op::Acquire, 2, Ok(Step::A(Again))),
            (7, Op::Acquire, 8, Ok(Step::A(Again))),
            (max, Op::Acquire, max, Err(RefCountError::Overflow)),
            (0, Op::Release, 0, Err(RefCountError::NotHeld)),
            (1, Op::Release, 0, Ok(Step::R(Last))),
            (2, Op::Release, 1, Ok(Step::R(StillUsed))),
            (max, Op::Release, max - 1, Ok(Step::R(StillUsed))),
        ];
        for (before, op, after, want) in table {
            let mut c = RefCount::from_raw(before);
            let peeked = match op {
                Op::Acquire => c.peek_acquire().map(Step::A),
                Op::Release => c.peek_release().map(Step::R),
            };
            assert_eq!(c.get(), before, "peek changed {before} {op:?}");
            let got = match op {
                Op::Acquire => c.acquire().map(Step::A),
                Op::Release => c.release().map(Step::R),
            };
            assert_eq!(got, want, "{before} {op:?}");
            assert_eq!(peeked, want, "peek {before} {op:?}");
            assert_eq!(c.get(), after, "{before} {op:?}");
        }
    }

    /// Rust's `test_data_reference_count`: attach ×3 then detach ×3.
    #[test]
    fn sequence() {
        let mut c = RefCount::new();
        assert_eq!(c.acquire(), Ok(Acquired::First));
        assert_eq!(c.acquire(), Ok(Acquired::Again));
        assert_eq!(c.acquire(), Ok(Acquired::Again));
        assert_eq!(c.release(), Ok(Released::StillUsed));
        assert_eq!(c.release(), Ok(Released::StillUsed));
        assert_eq!(c.release(), Ok(Released::Last));
        assert!(c.is_zero());
        assert_eq!(c.release(), Err(RefCountError::NotHeld));
    }

    #[test]
    fn first_again_still_used_last() {
        let mut count = RefCount::default();
        assert_eq!(count.acquire(), Ok(Acquired::First));
        assert_eq!(count.acquire(), Ok(Acquired::Again));
        assert_eq!(count.get(), 2);
        assert_eq!(count.release(), Ok(Released::StillUsed));
        assert_eq!(count.release(), Ok(Released::Last));
        assert_eq!(count.release(), Err(RefCountError::NotHeld));
        assert_eq!(count.get(), 0);
        assert_eq!(
            count.acquire(),
            Ok(Acquired::First),
            "a count reused after Last starts over"
        );
    }

    /// Model test: a long pseudo-random walk of acquires and releases against a plain
    /// integer model; every answer must match what the model predicts.
    #[test]
    fn agrees_with_a_model_over_a_random_walk() {
        let mut count = RefCount::default();
        let mut model: u32 = 0;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed.is_multiple_of(3) {
                let expected = match model {
                    0 => Err(RefCountError::NotHeld),
                    1 => Ok(Released::Last),
                    _ => Ok(Released::StillUsed),
                };
                model = model.saturating_sub(1);
                assert_eq!(count.release(), expected);
            } else {
                let expected = if model == 0 {
                    Acquired::First
                } else {
                    Acquired::Again
                };
                model += 1;
                assert_eq!(count.acquire(), Ok(expected));
            }
            assert_eq!(count.get(), model);
        }
    }

    #[test]
    fn serializes_as_the_bare_number() {
        let json = serde_json::to_string(&RefCount::from_raw(3)).unwrap();
        assert_eq!(json, "3");
        assert_eq!(
            serde_json::from_str::<RefCount>("3").unwrap(),
            RefCount::from_raw(3)
        );
    }
}
