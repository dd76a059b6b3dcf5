//! The device model: what a device is, before any plug.
//!
//! One [`DeviceSpec`] describes every kind (Kata had a second interface for vhost-user
//! devices; here vhost-user is one more [`DeviceKind`]). A spec carries the device's
//! [`DeviceIdentity`], the key the manager dedupes on: the device node's type and
//! `major:minor` for devices with a node, the host path for devices without one. An enum,
//! so "no node" can never look like node `0:0` (Kata's collision of every nodeless device).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod block;
mod generic;
mod vfio;
mod vhost_user;

pub use block::{BlockDriver, BlockDriverError, BlockSpec, ImageFormat};
pub use generic::GenericSpec;
pub use vfio::{
    HostFunction, MdevUuid, PciAddress, VfioBackend, VfioFunction, VfioSpec, VfioSpecError,
};
pub use vhost_user::{FsCache, MacAddress, VhostUserDevice, VhostUserSpec, VhostUserSpecError};

/// Block or character device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeType {
    /// A block device (`b`).
    Block,
    /// A character device (`c`, or `u` for unbuffered).
    Char,
}

impl NodeType {
    /// The `/sys/dev` folder of this node type: `block` or `char`.
    #[must_use]
    pub const fn sys_dev_dir(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Char => "char",
        }
    }
}

/// A device type that is not `b`, `c` or `u`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device type {0:?} is not b (block), c or u (char)")]
pub struct NodeTypeError(pub String);

impl FromStr for NodeType {
    type Err = NodeTypeError;

    /// Kata's `DevType`: `b` is block; `c` and `u` (unbuffered) are char.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "b" => Ok(Self::Block),
            "c" | "u" => Ok(Self::Char),
            other => Err(NodeTypeError(other.to_owned())),
        }
    }
}

/// A device node: its type and `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Block or character.
    pub node_type: NodeType,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DeviceNode {
    /// The node of type `node_type` whose `dev_t` (a file's `st_rdev`,
    /// [`std::os::unix::fs::MetadataExt::rdev`]) is `rdev`, split by `rustix`'s
    /// `major()`/`minor()` (glibc's arithmetic).
    #[must_use]
    pub fn from_rdev(node_type: NodeType, rdev: u64) -> Self {
        Self {
            node_type,
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        }
    }
}

impl fmt::Display for DeviceNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.node_type {
            NodeType::Block => 'b',
            NodeType::Char => 'c',
        };
        write!(f, "{t} {}:{}", self.major, self.minor)
    }
}

/// What makes two requests the same device: the manager dedupes on this.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceIdentity {
    /// A device with a node: the same node type and `major:minor` is the same device.
    Node(DeviceNode),
    /// A device without a node (an image file, a vhost-user socket): the same host path is
    /// the same device.
    Path(PathBuf),
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(node) => write!(f, "node {node}"),
            Self::Path(path) => write!(f, "path {}", path.display()),
        }
    }
}

/// How a device reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlugMode {
    /// Plugged into the running VM (Kata's `HotplugAddDevice`).
    #[default]
    Hot,
    /// Added to the VM's boot configuration (Kata's `AppendDevice`).
    Cold,
}

/// Everything about one device except its identity and plug mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceKind {
    /// A host block device or an image file.
    Block(BlockSpec),
    /// A VFIO group or cdev, expanded to the functions that go to the guest.
    Vfio(VfioSpec),
    /// A vhost-user backend: blk, scsi, net or fs.
    VhostUser(VhostUserSpec),
    /// A character device the guest sees through the container only; it never reaches the
    /// hypervisor.
    Generic(GenericSpec),
}

impl DeviceKind {
    /// A short name of the kind, as Kata's `DeviceType` strings: `block`, `vfio`,
    /// `vhost-user-blk-pci`, `vhost-user-scsi-pci`, `virtio-net-pci`, `vhost-user-fs-pci`,
    /// `generic`.
    #[must_use]
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Block(_) => "block",
            Self::Vfio(_) => "vfio",
            Self::VhostUser(spec) => spec.device.type_name(),
            Self::Generic(_) => "generic",
        }
    }
}

/// A request for one device, as [`crate::DeviceManager::new_device`] takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// The dedupe key.
    pub identity: DeviceIdentity,
    /// Hot or cold plug.
    pub mode: PlugMode,
    /// What the device is.
    pub kind: DeviceKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_types() {
        assert_eq!("b".parse::<NodeType>(), Ok(NodeType::Block));
        assert_eq!("c".parse::<NodeType>(), Ok(NodeType::Char));
        assert_eq!("u".parse::<NodeType>(), Ok(NodeType::Char));
        assert_eq!("p".parse::<NodeType>(), Err(NodeTypeError("p".into())));
    }

    #[test]
    fn dev_t_split() {
        let split = |dev| {
            let node = DeviceNode::from_rdev(NodeType::Block, dev);
            (node.major, node.minor)
        };
        // makedev(8, 1) and a large one: makedev(259, 70000).
        assert_eq!(split(0x801), (8, 1));
        let dev = (259u64 & 0xfff) << 8 | (70000u64 & 0xff) | ((70000u64 & !0xff) << 12);
        assert_eq!(split(dev), (259, 70000));
        // A major above 4095 keeps its high bits out of the minor.
        assert_eq!(split(rustix::fs::makedev(4096, 1)), (4096, 1));
    }
}
