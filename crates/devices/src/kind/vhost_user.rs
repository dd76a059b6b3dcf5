//! vhost-user devices: a backend process behind a Unix socket, shown to the guest as
//! virtio-blk, virtio-scsi, virtio-net or virtio-fs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::BlockDriver;

/// The longest virtio-fs tag (the `tag` field of `virtio_fs_config` is 36 bytes).
pub const MAX_FS_TAG_LEN: usize = 36;

/// Why a vhost-user spec or one of its parts is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VhostUserSpecError {
    /// A MAC address that is not six `:`-separated hex bytes.
    #[error("MAC address {0:?} is not six hex bytes separated by ':'")]
    Mac(String),
    /// An empty or too long virtio-fs tag.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    FsTag(String),
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The six bytes.
    #[must_use]
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddress {
    fn from(b: [u8; 6]) -> Self {
        Self(b)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = VhostUserSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VhostUserSpecError::Mac(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddress {
    type Error = VhostUserSpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddress> for String {
    fn from(m: MacAddress) -> Self {
        m.to_string()
    }
}

/// virtio-fs cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FsCache {
    /// No caching (`never`; Kata's `none`).
    Never,
    /// Cache metadata only.
    Metadata,
    /// Cache with timeouts.
    #[default]
    Auto,
    /// Cache everything.
    Always,
}

/// Which vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum VhostUserDevice {
    /// vhost-user-blk. Takes a block index (and a `vdX` name) only when `driver` is in the
    /// virtio-blk family.
    Blk {
        /// The VM's block driver.
        driver: BlockDriver,
    },
    /// vhost-user-scsi.
    Scsi,
    /// vhost-user-net.
    Net {
        /// The guest NIC's MAC address.
        mac: MacAddress,
    },
    /// vhost-user-fs (virtio-fs).
    Fs {
        /// The mount tag the guest uses, 1 to 36 bytes.
        tag: String,
        /// The cache mode.
        cache: FsCache,
    },
}

impl VhostUserDevice {
    /// Kata's device type name.
    #[must_use]
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Blk { .. } => "vhost-user-blk-pci",
            Self::Scsi => "vhost-user-scsi-pci",
            Self::Net { .. } => "virtio-net-pci",
            Self::Fs { .. } => "vhost-user-fs-pci",
        }
    }

    /// Whether it takes a block index: vhost-user-blk in the virtio-blk family only.
    #[must_use]
    pub const fn takes_block_index(&self) -> bool {
        match self {
            Self::Blk { driver } => driver.is_virtio_blk_family(),
            Self::Scsi | Self::Net { .. } | Self::Fs { .. } => false,
        }
    }

    /// Whether it is a PCI function (and so takes a root port): all but vhost-user-blk on
    /// virtio-mmio or ccw.
    #[must_use]
    pub const fn is_pci(&self) -> bool {
        match self {
            Self::Blk { driver } => {
                !matches!(driver, BlockDriver::VirtioMmio | BlockDriver::VirtioBlkCcw)
            }
            Self::Scsi | Self::Net { .. } | Self::Fs { .. } => true,
        }
    }

    /// Checks the fields a type cannot: the virtio-fs tag length.
    ///
    /// # Errors
    /// [`VhostUserSpecError::FsTag`] for an empty or too long tag.
    pub fn validate(&self) -> Result<(), VhostUserSpecError> {
        if let Self::Fs { tag, .. } = self
            && (tag.is_empty() || tag.len() > MAX_FS_TAG_LEN)
        {
            return Err(VhostUserSpecError::FsTag(tag.clone()));
        }
        Ok(())
    }
}

/// A vhost-user device: the backend's socket and what the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserSpec {
    /// The backend's Unix socket.
    pub socket: PathBuf,
    /// Which device.
    pub device: VhostUserDevice,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let m: MacAddress = "02:00:ca:fe:00:01".parse().unwrap();
        assert_eq!(m.octets(), [2, 0, 0xca, 0xfe, 0, 1]);
        assert_eq!(m.to_string(), "02:00:ca:fe:00:01");
        for bad in [
            "",
            "02:00:ca:fe:00",
            "02:00:ca:fe:00:01:02",
            "2:00:ca:fe:00:01",
            "zz:00:ca:fe:00:01",
        ] {
            bad.parse::<MacAddress>().expect_err(bad);
        }
    }

    #[test]
    fn index_only_for_virtio_blk_family() {
        let blk = |driver| VhostUserDevice::Blk { driver };
        assert!(blk(BlockDriver::VirtioBlk).takes_block_index());
        assert!(blk(BlockDriver::VirtioBlkCcw).takes_block_index());
        assert!(blk(BlockDriver::VirtioMmio).takes_block_index());
        assert!(!blk(BlockDriver::VirtioScsi).takes_block_index());
        assert!(!blk(BlockDriver::Nvdimm).takes_block_index());
        assert!(!VhostUserDevice::Scsi.takes_block_index());
    }

    #[test]
    fn fs_tag_bounds() {
        let fs = |tag: &str| VhostUserDevice::Fs {
            tag: tag.into(),
            cache: FsCache::Auto,
        };
        fs("").validate().unwrap_err();
        fs(&"t".repeat(37)).validate().unwrap_err();
        fs("kataShared").validate().unwrap();
        fs(&"t".repeat(36)).validate().unwrap();
    }
}
