//! Guest drive names: `vda`, `vdb`, … `vdz`, `vdaa`, …
//!
//! The suffix is the drive index in bijective base 26 (`a`=1 … `z`=26, no zero digit), as the
//! Linux virtio-blk driver names disks. The manager adds a name offset for drives the
//! hypervisor plugged itself (a VM root disk is `vda`), which changes the name and not the
//! index. The name must fit the kernel's `DISK_NAME_LEN` (32 bytes with the NUL).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The prefix of virtio-blk disks.
pub const VIRTIO_PREFIX: &str = "vd";

/// The longest disk name the kernel keeps (`DISK_NAME_LEN` 32, less the NUL).
pub const MAX_DRIVE_NAME_LEN: usize = 31;

/// Why an index has no drive name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveNameError {
    /// A negative index.
    #[error("drive index {0} is negative")]
    Negative(i64),
    /// An index whose name would not fit the kernel's disk-name length.
    #[error("drive index {index} with prefix {prefix:?} gives a name longer than 31 bytes")]
    TooLong {
        /// The index.
        index: i64,
        /// The prefix.
        prefix: String,
    },
}

/// A guest disk name such as `vdaac`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DriveName(String);

impl DriveName {
    /// The virtio-blk name of drive `index`: 0→`vda`, 25→`vdz`, 26→`vdaa`.
    ///
    /// # Errors
    /// [`DriveNameError::Negative`] for a negative index.
    pub fn from_index(index: i64) -> Result<Self, DriveNameError> {
        Self::with_prefix(VIRTIO_PREFIX, index)
    }

    /// The name of drive `index` under another prefix (`sd`, `xvd`, …).
    ///
    /// # Errors
    /// [`DriveNameError::Negative`] for a negative index, [`DriveNameError::TooLong`] when the
    /// name would be longer than 31 bytes.
    pub fn with_prefix(prefix: &str, index: i64) -> Result<Self, DriveNameError> {
        let mut n = u64::try_from(index).map_err(|_| DriveNameError::Negative(index))?;
        let mut suffix = Vec::new();
        // Bijective base 26: shift by one before each digit, so there is no zero digit.
        loop {
            let digit = u8::try_from(n % 26).unwrap_or(0);
            suffix.push(b'a' + digit);
            n /= 26;
            if n == 0 {
                break;
            }
            n -= 1;
        }
        if prefix.len() + suffix.len() > MAX_DRIVE_NAME_LEN {
            return Err(DriveNameError::TooLong {
                index,
                prefix: prefix.to_owned(),
            });
        }
        suffix.reverse();
        let suffix: String = suffix.into_iter().map(char::from).collect();
        Ok(Self(format!("{prefix}{suffix}")))
    }

    /// The name, e.g. `vda`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DriveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_table() {
        // Kata's TestGetVirtDriveName vectors, plus the edges around each length change.
        let cases = [
            (0, "vda"),
            (1, "vdb"),
            (25, "vdz"),
            (26, "vdaa"),
            (27, "vdab"),
            (51, "vdaz"),
            (52, "vdba"),
            (701, "vdzz"),
            (702, "vdaaa"),
            (704, "vdaac"),
            (18277, "vdzzz"),
            (18278, "vdaaaa"),
        ];
        for (index, name) in cases {
            assert_eq!(
                DriveName::from_index(index).unwrap().as_str(),
                name,
                "{index}"
            );
        }
    }

    #[test]
    fn negative_index_is_an_error() {
        assert_eq!(DriveName::from_index(-1), Err(DriveNameError::Negative(-1)));
        assert_eq!(
            DriveName::from_index(i64::MIN),
            Err(DriveNameError::Negative(i64::MIN))
        );
    }

    #[test]
    fn largest_index_fits_with_vd() {
        // i64::MAX needs 14 letters: far below the limit with "vd".
        let name = DriveName::from_index(i64::MAX).unwrap();
        assert!(name.as_str().len() <= MAX_DRIVE_NAME_LEN);
    }

    #[test]
    fn too_long_is_an_error() {
        let prefix = "p".repeat(29);
        // 29 + 2 letters = 31: fits. 29 + 3 letters = 32: too long.
        assert_eq!(
            DriveName::with_prefix(&prefix, 701).unwrap().as_str().len(),
            31
        );
        assert_eq!(
            DriveName::with_prefix(&prefix, 702),
            Err(DriveNameError::TooLong { index: 702, prefix })
        );
    }
}
