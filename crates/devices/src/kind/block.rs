//! Block devices: a host block device or an image file, and the guest driver that shows it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The guest-side driver of a block device.
///
/// Parsed from Kata's names; an unknown name is an error (Kata silently used virtio-scsi).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockDriver {
    /// `virtio-blk` (PCI): a `vdX` disk.
    VirtioBlk,
    /// `virtio-scsi`: a LUN on the VM's SCSI controller, addressed `id:lun`.
    VirtioScsi,
    /// `virtio-mmio`: a `vdX` disk on the MMIO transport.
    VirtioMmio,
    /// `virtio-blk-ccw` (s390x): a `vdX` disk on the channel subsystem.
    VirtioBlkCcw,
    /// `nvdimm`: persistent memory.
    Nvdimm,
}

/// A block driver name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown block driver {0:?} (known: virtio-blk, virtio-scsi, virtio-mmio, virtio-blk-ccw, nvdimm)"
)]
pub struct BlockDriverError(pub String);

impl BlockDriver {
    /// Kata's name of the driver.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::VirtioBlk => "virtio-blk",
            Self::VirtioScsi => "virtio-scsi",
            Self::VirtioMmio => "virtio-mmio",
            Self::VirtioBlkCcw => "virtio-blk-ccw",
            Self::Nvdimm => "nvdimm",
        }
    }

    /// Whether the guest names the disk `vdX`: the virtio-blk family (blk, mmio, ccw).
    #[must_use]
    pub const fn is_virtio_blk_family(self) -> bool {
        matches!(
            self,
            Self::VirtioBlk | Self::VirtioMmio | Self::VirtioBlkCcw
        )
    }

    /// Whether the disk is a PCI function of its own (and so takes a root port).
    #[must_use]
    pub const fn is_pci(self) -> bool {
        matches!(self, Self::VirtioBlk)
    }
}

impl fmt::Display for BlockDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockDriver {
    type Err = BlockDriverError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "virtio-blk" => Self::VirtioBlk,
            "virtio-scsi" => Self::VirtioScsi,
            "virtio-mmio" => Self::VirtioMmio,
            "virtio-blk-ccw" => Self::VirtioBlkCcw,
            "nvdimm" => Self::Nvdimm,
            other => return Err(BlockDriverError(other.to_owned())),
        })
    }
}

/// The format of the data behind a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// Raw bytes (a block device, a raw image).
    #[default]
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// The host block device (`/dev/sdb`) or image file.
    pub path: PathBuf,
    /// The guest driver.
    pub driver: BlockDriver,
    /// The data format.
    pub format: ImageFormat,
    /// The guest may not write.
    pub read_only: bool,
    /// Other users may open the same backend read-write (QEMU `share-rw`).
    pub share_rw: bool,
    /// The backend is a persistent-memory file (with the `nvdimm` driver).
    pub pmem: bool,
}

impl BlockSpec {
    /// A read-write raw device at `path` with `driver`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>, driver: BlockDriver) -> Self {
        Self {
            path: path.into(),
            driver,
            format: ImageFormat::Raw,
            read_only: false,
            share_rw: false,
            pmem: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_round_trip() {
        for d in [
            BlockDriver::VirtioBlk,
            BlockDriver::VirtioScsi,
            BlockDriver::VirtioMmio,
            BlockDriver::VirtioBlkCcw,
            BlockDriver::Nvdimm,
        ] {
            assert_eq!(d.as_str().parse::<BlockDriver>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
    }

    #[test]
    fn unknown_driver_is_an_error_not_scsi() {
        let err = "virtio-foo".parse::<BlockDriver>().unwrap_err();
        assert_eq!(err, BlockDriverError("virtio-foo".into()));
        assert!(err.to_string().contains("virtio-foo"));
        "".parse::<BlockDriver>().unwrap_err();
    }

    #[test]
    fn families() {
        assert!(BlockDriver::VirtioBlk.is_virtio_blk_family());
        assert!(BlockDriver::VirtioMmio.is_virtio_blk_family());
        assert!(BlockDriver::VirtioBlkCcw.is_virtio_blk_family());
        assert!(!BlockDriver::VirtioScsi.is_virtio_blk_family());
        assert!(!BlockDriver::Nvdimm.is_virtio_blk_family());
        assert!(BlockDriver::VirtioBlk.is_pci());
        assert!(!BlockDriver::VirtioMmio.is_pci());
    }
}
