//! A reference count as a type, for kernel objects that several users share.
//!
//! A legacy VFIO group can be opened only once, yet two devices of one group must both use
//! it (cloud-hypervisor #3078). The container therefore keeps one group fd and counts its
//! users: the first user attaches the group, later ones only count, and the last one to
//! leave detaches it. `acquire` and `release` say which case happened, so the caller never
//! has to guess from `Arc::strong_count` (rust-vmm's `put_group` does, under a comment that
//! counts differently from the code).

/// What [`RefCount::acquire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The count went from 0 to 1: the caller sets the object up.
    First,
    /// The object was already in use: nothing to set up.
    Again,
}

/// What [`RefCount::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The count went to 0: the caller tears the object down.
    Last,
    /// Other users remain.
    StillUsed,
    /// The count was already 0: a bookkeeping bug, reported instead of wrapping around.
    Unbalanced,
}

/// A count of users. It starts at 0; it never wraps or goes below 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RefCount(usize);

impl RefCount {
    /// Adds a user.
    pub(crate) fn acquire(&mut self) -> Acquired {
        self.0 = self.0.saturating_add(1);
        if self.0 == 1 {
            Acquired::First
        } else {
            Acquired::Again
        }
    }

    /// Removes a user.
    pub(crate) fn release(&mut self) -> Released {
        match self.0 {
            0 => Released::Unbalanced,
            1 => {
                self.0 = 0;
                Released::Last
            }
            _ => {
                self.0 -= 1;
                Released::StillUsed
            }
        }
    }

    /// How many users there are now.
    pub(crate) fn users(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_again_still_used_last() {
        let mut count = RefCount::default();
        assert_eq!(count.acquire(), Acquired::First);
        assert_eq!(count.acquire(), Acquired::Again);
        assert_eq!(count.users(), 2);
        assert_eq!(count.release(), Released::StillUsed);
        assert_eq!(count.release(), Released::Last);
        assert_eq!(count.release(), Released::Unbalanced);
        assert_eq!(count.users(), 0);
        assert_eq!(
            count.acquire(),
            Acquired::First,
            "a count reused after Last starts over"
        );
    }

    /// Model test: a long pseudo-random walk of acquires and releases against a plain
    /// integer model; every answer must match what the model predicts.
    #[test]
    fn agrees_with_a_model_over_a_random_walk() {
        let mut count = RefCount::default();
        let mut model: usize = 0;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed.is_multiple_of(3) {
                let expected = match model {
                    0 => Released::Unbalanced,
                    1 => Released::Last,
                    _ => Released::StillUsed,
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
                assert_eq!(count.acquire(), expected);
            }
            assert_eq!(count.users(), model);
        }
    }
}
