//! Block devices: a host block device or an image file, and the guest driver that shows it.
//!
//! A block device reaches the hypervisor by path (the hypervisor opens it) or, when a
//! service opened the file on a caller's behalf and checked that open file, by descriptor
//! ([`PassedFd`]): the hypervisor then uses the very file that was checked, whatever the
//! path names by the time it plugs.

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

/// What an open file handed to the hypervisor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PassedFileType {
    /// A regular file (an image).
    File,
    /// A host block device node.
    BlockDevice,
}

/// A block device's file, opened once by whoever checked it and handed to the hypervisor as
/// a descriptor before the plug: the hypervisor uses that open file and never opens the
/// path itself.
///
/// For QEMU the descriptor sits in an fd set (QMP `add-fd`), the block node opens
/// `/dev/fdset/<fdset>`, and the removal of the device closes the set (`remove-fd`). The id
/// is saved with the device, so a manager loaded after a restart still closes it (QEMU
/// keeps the set while it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PassedFd {
    /// The hypervisor's handle of the descriptor: QEMU's fd set id.
    pub fdset: u32,
    /// What the open file is (QEMU's `file` or `host_device` driver).
    pub file_type: PassedFileType,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// The host block device (`/dev/sdb`) or image file. With [`Self::passed_fd`] it only
    /// says what was asked for: the hypervisor uses the descriptor.
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
    /// The file, already open, handed to the hypervisor by descriptor; `None`: the
    /// hypervisor opens [`Self::path`] itself. Absent from JSON when `None` (saved states
    /// written before it load unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_fd: Option<PassedFd>,
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
            passed_fd: None,
        }
    }

    /// Whether `self` and `other` describe the same device, however each reached the
    /// hypervisor: equal but for [`Self::passed_fd`] (every request opens the file anew,
    /// so a second request for an attached device carries a descriptor of its own).
    #[must_use]
    pub fn same_device(&self, other: &Self) -> bool {
        Self {
            passed_fd: None,
            ..self.clone()
        } == Self {
            passed_fd: None,
            ..other.clone()
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
    fn a_passed_fd_is_saved_only_when_there_is_one_and_is_not_part_of_the_device() {
        let by_path = BlockSpec::new("/v/d.img", BlockDriver::VirtioBlk);
        let json = serde_json::to_value(&by_path).unwrap();
        assert!(json.get("passed_fd").is_none(), "{json}");
        let mut by_fd = by_path.clone();
        by_fd.passed_fd = Some(PassedFd {
            fdset: 3,
            file_type: PassedFileType::BlockDevice,
        });
        let json = serde_json::to_value(&by_fd).unwrap();
        assert_eq!(
            json["passed_fd"],
            serde_json::json!({"fdset": 3, "file_type": "block-device"})
        );
        assert_eq!(serde_json::from_value::<BlockSpec>(json).unwrap(), by_fd);
        assert!(by_fd.same_device(&by_path));
        let mut read_only = by_fd.clone();
        read_only.read_only = true;
        assert!(!read_only.same_device(&by_path));
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
