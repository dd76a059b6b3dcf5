//! SCSI addresses of virtio-scsi disks: `id:lun`.
//!
//! The block index maps to a SCSI target and LUN as `index / 256 : index % 256`, so up to
//! 65,535 disks fit one controller (Kata's `GetSCSIIdLun`, with the same bounds).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest block index that has a SCSI address (Kata's `maxSCSIDevices`).
pub const MAX_SCSI_INDEX: i64 = 65535;

/// A block index without a SCSI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block index {0} has no SCSI address (valid: 0..=65535)")]
pub struct ScsiAddressError(pub i64);

/// A virtio-scsi target and LUN, shown as `id:lun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScsiAddress {
    id: u16,
    lun: u8,
}

impl ScsiAddress {
    /// The address of block index `index`: `index / 256 : index % 256`.
    ///
    /// # Errors
    /// [`ScsiAddressError`] when `index` is negative or above 65,535.
    pub fn from_index(index: i64) -> Result<Self, ScsiAddressError> {
        if !(0..=MAX_SCSI_INDEX).contains(&index) {
            return Err(ScsiAddressError(index));
        }
        let id = u16::try_from(index / 256).map_err(|_| ScsiAddressError(index))?;
        let lun = u8::try_from(index % 256).map_err(|_| ScsiAddressError(index))?;
        Ok(Self { id, lun })
    }

    /// The SCSI target id.
    #[must_use]
    pub const fn id(self) -> u16 {
        self.id
    }

    /// The logical unit number.
    #[must_use]
    pub const fn lun(self) -> u8 {
        self.lun
    }
}

impl fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.lun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_table() {
        // Kata's TestGetSCSIIdLun / TestGetSCSIAddress vectors.
        let cases = [
            (0, 0, 0),
            (1, 0, 1),
            (2, 0, 2),
            (255, 0, 255),
            (256, 1, 0),
            (257, 1, 1),
            (258, 1, 2),
            (512, 2, 0),
            (513, 2, 1),
            (65535, 255, 255),
        ];
        for (index, id, lun) in cases {
            let addr = ScsiAddress::from_index(index).unwrap();
            assert_eq!((addr.id(), addr.lun()), (id, lun), "{index}");
            assert_eq!(addr.to_string(), format!("{id}:{lun}"));
        }
    }

    #[test]
    fn out_of_range() {
        assert_eq!(ScsiAddress::from_index(-1), Err(ScsiAddressError(-1)));
        assert_eq!(ScsiAddress::from_index(65536), Err(ScsiAddressError(65536)));
    }
}
