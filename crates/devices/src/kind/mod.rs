//! The device model: what a device is, before any plug.
//!
//! One [`DeviceSpec`] describes every kind (Kata had a second interface for vhost-user
//! devices; here vhost-user is one more [`DeviceKind`]). A spec carries the device's
//! [`DeviceIdentity`], the key the manager dedupes on: the device node's type and
//! `major:minor` for devices with a node, the host path for devices without one. An enum,
//! so "no node" can never look like node `0:0` (Kata's collision of every nodeless device).

use std::fmt;
use std::path::PathBuf;

use plugboard_sysfs::{DevKind, DevNumber};
use serde::{Deserialize, Serialize};

mod block;
mod generic;
mod vfio;
mod vhost_user;

pub use block::{BlockDriver, BlockDriverError, BlockSpec, ImageFormat, PassedFd, PassedFileType};
pub use generic::GenericSpec;
pub use vfio::{
    HostFunction, MdevUuid, PciAddress, VfioBackend, VfioFunction, VfioSpec, VfioSpecError,
};
pub use vhost_user::{FsCache, MacAddress, VhostUserDevice, VhostUserSpec, VhostUserSpecError};

/// A device node: its type and `major:minor`, as `plugboard-sysfs` types them (one parser
/// for `b`/`c`/`u` and one for `major:minor`, shared with the host side).
///
/// In JSON `{"node_type": "block", "major": 8, "minor": 1}`, the shape saved states have
/// always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Block or character.
    pub node_type: DevKind,
    /// `major:minor`.
    #[serde(flatten)]
    pub number: DevNumber,
}

impl DeviceNode {
    /// The node of type `node_type` with number `major:minor`.
    #[must_use]
    pub const fn new(node_type: DevKind, major: u32, minor: u32) -> Self {
        Self {
            node_type,
            number: DevNumber { major, minor },
        }
    }

    /// The node of type `node_type` whose `dev_t` (a file's `st_rdev`,
    /// [`std::os::unix::fs::MetadataExt::rdev`]) is `rdev`, split by `rustix`'s
    /// `major()`/`minor()` (glibc's arithmetic).
    #[must_use]
    pub fn from_rdev(node_type: DevKind, rdev: u64) -> Self {
        Self::new(node_type, rustix::fs::major(rdev), rustix::fs::minor(rdev))
    }

    /// The major number.
    #[must_use]
    pub const fn major(self) -> u32 {
        self.number.major
    }

    /// The minor number.
    #[must_use]
    pub const fn minor(self) -> u32 {
        self.number.minor
    }
}

impl fmt::Display for DeviceNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.node_type {
            DevKind::Block => 'b',
            DevKind::Char => 'c',
        };
        write!(f, "{t} {}", self.number)
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
    /// A VFIO device: its IOMMU group, whichever node named it (`/dev/vfio/<group>` or the
    /// cdev `/dev/vfio/devices/vfioN` of any of its functions) and whichever function was
    /// asked for. The kernel isolates a group as a unit, so one group is one device. JSON
    /// `{"iommu_group": 8}`.
    #[serde(rename = "iommu_group")]
    IommuGroup(u32),
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(node) => write!(f, "node {node}"),
            Self::Path(path) => write!(f, "path {}", path.display()),
            Self::IommuGroup(group) => write!(f, "IOMMU group {group}"),
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

/// How a request relates to the device of the same identity the manager holds
/// ([`DeviceSpec::sharing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The same device ([`DeviceSpec::same_device`]).
    Same,
    /// The same block device, asked for read-only where it is read-write: compatible. The
    /// device stays read-write; the reader mounts it read-only in the guest (Kata's case of
    /// two containers sharing a volume, one mounting it read-only).
    Reader,
    /// The same block device, asked for read-write where it is read-only: compatible only
    /// while it is not plugged (it then becomes read-write); a device plugged read-only
    /// cannot take a writer.
    Writer,
    /// Another device under the same identity (another driver, format, path, functions…).
    Different,
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

impl DeviceSpec {
    /// How `request` relates to `self`, a device of the same identity: the same device, the
    /// same block device with other access ([`Sharing::Reader`], [`Sharing::Writer`]: the
    /// only compatible difference), or another device.
    #[must_use]
    pub fn sharing(&self, request: &Self) -> Sharing {
        if self.same_device(request) {
            return Sharing::Same;
        }
        if let (DeviceKind::Block(mine), DeviceKind::Block(theirs)) = (&self.kind, &request.kind)
            && self.identity == request.identity
            && self.mode == request.mode
            && mine.same_device(&BlockSpec {
                read_only: mine.read_only,
                ..theirs.clone()
            })
        {
            return if theirs.read_only {
                Sharing::Reader
            } else {
                Sharing::Writer
            };
        }
        Sharing::Different
    }

    /// Whether `self` and `other` are the same device for deduplication: equal, except
    /// that a block device's [`BlockSpec::passed_fd`] does not count (see
    /// [`BlockSpec::same_device`]), nor which node named a VFIO device (its group node or
    /// any function's cdev): the same functions of one group are one device.
    #[must_use]
    pub fn same_device(&self, other: &Self) -> bool {
        let same_plug = self.identity == other.identity && self.mode == other.mode;
        match (&self.kind, &other.kind) {
            (DeviceKind::Block(a), DeviceKind::Block(b)) => same_plug && a.same_device(b),
            (DeviceKind::Vfio(a), DeviceKind::Vfio(b)) => same_plug && a.functions == b.functions,
            _ => self == other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_types() {
        // Kata's `DevType` letters, through the one parser (plugboard-sysfs's).
        assert_eq!("b".parse::<DevKind>().unwrap(), DevKind::Block);
        assert_eq!("c".parse::<DevKind>().unwrap(), DevKind::Char);
        assert_eq!("u".parse::<DevKind>().unwrap(), DevKind::Char);
        assert!(matches!(
            "p".parse::<DevKind>(),
            Err(plugboard_sysfs::DevNodeError::BadKind { input }) if input == "p"
        ));
    }

    #[test]
    fn node_json_keeps_its_shape() {
        // The shape saved states written before DeviceNode was built on plugboard-sysfs's
        // types: it still loads, and is written the same.
        let old = r#"{"node_type":"block","major":8,"minor":1}"#;
        let node: DeviceNode = serde_json::from_str(old).unwrap();
        assert_eq!(node, DeviceNode::new(DevKind::Block, 8, 1));
        assert_eq!(serde_json::to_string(&node).unwrap(), old);
        let identity = DeviceIdentity::Node(DeviceNode::new(DevKind::Char, 10, 229));
        let json = serde_json::to_string(&identity).unwrap();
        assert_eq!(
            json,
            r#"{"node":{"node_type":"char","major":10,"minor":229}}"#
        );
        assert_eq!(
            serde_json::from_str::<DeviceIdentity>(&json).unwrap(),
            identity
        );
        assert_eq!(node.to_string(), "b 8:1");
    }

    #[test]
    fn a_vfio_group_is_the_same_device_whichever_node_named_it() {
        let by_cdev = |index| {
            let mut spec = crate::test_util::vfio_spec(3, &[true, false]);
            if let DeviceKind::Vfio(v) = &mut spec.kind {
                v.backend = VfioBackend::Cdev { index };
            }
            spec
        };
        let group = crate::test_util::vfio_spec(3, &[true, false]);
        assert!(by_cdev(4).same_device(&by_cdev(5)));
        assert!(by_cdev(4).same_device(&group));
        // Other functions of the group are not the same device.
        let one = crate::test_util::vfio_spec(3, &[true]);
        assert!(!one.same_device(&group));
        assert_eq!(group.identity.to_string(), "IOMMU group 3");
        assert_eq!(
            serde_json::to_string(&group.identity).unwrap(),
            r#"{"iommu_group":3}"#
        );
    }

    #[test]
    fn dev_t_split() {
        let split = |dev| {
            let node = DeviceNode::from_rdev(DevKind::Block, dev);
            (node.major(), node.minor())
        };
        // makedev(8, 1) and a large one: makedev(259, 70000).
        assert_eq!(split(0x801), (8, 1));
        let dev = (259u64 & 0xfff) << 8 | (70000u64 & 0xff) | ((70000u64 & !0xff) << 12);
        assert_eq!(split(dev), (259, 70000));
        // A major above 4095 keeps its high bits out of the minor.
        assert_eq!(split(rustix::fs::makedev(4096, 1)), (4096, 1));
    }
}
