//! Guest SCSI addresses of virtio-scsi disks: `id:lun` on the VM's one controller.
//!
//! The block index maps to a SCSI target and LUN as `index / 256 : index % 256`, so up to
//! 65,535 disks fit one controller (Kata's `GetSCSIIdLun`, with the same bounds).
//!
//! "Guest" because the host has SCSI addresses too, of another shape:
//! `plugboard_sysfs::ScsiAddress` is a host `H:C:T:L`. `plugboard-qemu` puts this type's
//! target and LUN on its `scsi-hd` devices.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest block index that has a SCSI address (Kata's `maxSCSIDevices`).
pub const MAX_SCSI_INDEX: i64 = 65535;

/// A block index without a SCSI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block index {0} has no SCSI address (valid: 0..=65535)")]
pub struct GuestScsiAddressError(pub i64);

/// A virtio-scsi target and LUN in the guest, shown as `id:lun`; in JSON
/// `{"id": 0, "lun": 2}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuestScsiAddress {
    id: u16,
    lun: u8,
}

impl GuestScsiAddress {
    /// The address of block index `index`: `index / 256 : index % 256`.
    ///
    /// # Errors
    /// [`GuestScsiAddressError`] when `index` is negative or above 65,535.
    pub fn from_index(index: i64) -> Result<Self, GuestScsiAddressError> {
        if !(0..=MAX_SCSI_INDEX).contains(&index) {
            return Err(GuestScsiAddressError(index));
        }
        let id = u16::try_from(index / 256).map_err(|_| GuestScsiAddressError(index))?;
        let lun = u8::try_from(index % 256).map_err(|_| GuestScsiAddressError(index))?;
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

impl fmt::Display for GuestScsiAddress {
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
            let addr = GuestScsiAddress::from_index(index).unwrap();
            assert_eq!((addr.id(), addr.lun()), (id, lun), "{index}");
            assert_eq!(addr.to_string(), format!("{id}:{lun}"));
        }
    }

    #[test]
    fn out_of_range() {
        assert_eq!(
            GuestScsiAddress::from_index(-1),
            Err(GuestScsiAddressError(-1))
        );
        assert_eq!(
            GuestScsiAddress::from_index(65536),
            Err(GuestScsiAddressError(65536))
        );
    }
}
