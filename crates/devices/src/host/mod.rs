//! From what a container runtime asks for to a [`DeviceSpec`]: the host reads.
//!
//! Kata's `NewDevice` took a `DeviceInfo` (container path, type, `major:minor`), found the
//! host path and picked the kind: a node under `/dev/vfio/` is VFIO; a block node with a
//! vhost-user store major is vhost-user-blk (241) or -scsi (242); another block node is a
//! block device; anything else is generic. [`HostDevices`] does the same, with every read
//! going through a [`Sysfs`] handle (so a fake kernel can stand in) and the manager itself
//! never touching the host.

mod host_path;
mod vfio;
mod vhost_user_store;

use std::path::PathBuf;

use plugboard_sysfs::{DevKind, DevNumber, Sysfs};

use crate::kind::{
    BlockDriver, BlockSpec, DeviceIdentity, DeviceKind, DeviceNode, DeviceSpec, GenericSpec,
    PlugMode, VhostUserDevice, VhostUserSpec,
};

pub use host_path::HostPathError;
pub use vfio::{VfioHostError, iommu_group as vfio_iommu_group};
pub use vhost_user_store::{
    VHOST_USER_BLK_MAJOR, VHOST_USER_SCSI_MAJOR, VhostUserStore, VhostUserStoreError,
};

/// A device as a container runtime describes it (Kata's `DeviceInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Where the container sees the device; must not be empty.
    pub container_path: PathBuf,
    /// Block or char.
    pub node_type: DevKind,
    /// `major:minor`, or `None` for a device without a node (an image file, a socket): then
    /// `host_path` is the device, and its identity.
    pub number: Option<DevNumber>,
    /// The host path of a device without a node.
    pub host_path: Option<PathBuf>,
    /// The guest may not write (block devices).
    pub read_only: bool,
    /// Hot or cold plug.
    pub mode: PlugMode,
}

impl DeviceRequest {
    /// The request's device node, when it has a number.
    fn node(&self) -> Option<DeviceNode> {
        self.number.map(|number| DeviceNode {
            node_type: self.node_type,
            number,
        })
    }
}

/// Why a request did not become a spec.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Finding the host path failed.
    #[error("cannot find the host path of {}", container_path.display())]
    HostPath {
        /// The request's container path.
        container_path: PathBuf,
        /// Why.
        #[source]
        source: HostPathError,
    },
    /// A device without a node and without a host path.
    #[error("device {} has neither a device number nor a host path", container_path.display())]
    NoHostPath {
        /// The request's container path.
        container_path: PathBuf,
    },
    /// The vhost-user store has no socket for the device.
    #[error("vhost-user store lookup failed for {}", container_path.display())]
    VhostUserStore {
        /// The request's container path.
        container_path: PathBuf,
        /// Why.
        #[source]
        source: VhostUserStoreError,
    },
    /// Expanding a VFIO node failed.
    #[error("cannot expand VFIO device {}", host_path.display())]
    Vfio {
        /// The VFIO node.
        host_path: PathBuf,
        /// Why.
        #[source]
        source: VfioHostError,
    },
}

/// Host reads for device requests: a sysfs handle, the VM's block driver, and an optional
/// vhost-user store.
#[derive(Debug, Clone)]
pub struct HostDevices {
    sysfs: Sysfs,
    block_driver: BlockDriver,
    store: Option<VhostUserStore>,
}

impl HostDevices {
    /// Reads through `sysfs` (its sysfs and `/dev` roots); block devices get `block_driver`.
    #[must_use]
    pub fn new(sysfs: Sysfs, block_driver: BlockDriver) -> Self {
        Self {
            sysfs,
            block_driver,
            store: None,
        }
    }

    /// Resolves block majors 241/242 through `store` (off by default, as in Kata).
    #[must_use]
    pub fn with_vhost_user_store(mut self, store: VhostUserStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The host path of a request (Kata's `GetHostPath`): the vhost-user store's socket for
    /// a store major, else `<dev>/<DEVNAME>` from the kernel's `uevent`, else the container
    /// path; the given host path for a device without a node.
    ///
    /// # Errors
    /// [`HostError::HostPath`] (an empty container path, an unusable `uevent`),
    /// [`HostError::NoHostPath`], [`HostError::VhostUserStore`].
    pub fn host_path(&self, request: &DeviceRequest) -> Result<PathBuf, HostError> {
        let container_path = || request.container_path.clone();
        if request.container_path.as_os_str().is_empty() {
            let what = request
                .node()
                .map_or_else(|| "without a node".to_owned(), |node| node.to_string());
            return Err(HostError::HostPath {
                container_path: container_path(),
                source: HostPathError::EmptyPath(what),
            });
        }
        let Some(node) = request.node() else {
            return match &request.host_path {
                Some(p) if !p.as_os_str().is_empty() => Ok(p.clone()),
                _ => Err(HostError::NoHostPath {
                    container_path: container_path(),
                }),
            };
        };
        if let Some(store) = self.store_for(node) {
            return store.socket(node.major(), node.minor()).map_err(|source| {
                HostError::VhostUserStore {
                    container_path: container_path(),
                    source,
                }
            });
        }
        host_path::resolve(&self.sysfs, node, &request.container_path).map_err(|source| {
            HostError::HostPath {
                container_path: container_path(),
                source,
            }
        })
    }

    /// The spec of a request (Kata's `createDevice`): VFIO for a node under `<dev>/vfio/`
    /// (not `vfio/vfio`), vhost-user for a store major, block for other block devices,
    /// generic for the rest.
    ///
    /// # Errors
    /// As [`Self::host_path`], and [`HostError::Vfio`].
    pub fn spec(&self, request: &DeviceRequest) -> Result<DeviceSpec, HostError> {
        let mut host_path = self.host_path(request)?;
        let node = request.node();
        // A nodeless device is its file: one file, one identity, however it was spelled
        // (symlinks, `.`, `//`). A file that does not resolve keeps its lexical form.
        if node.is_none() && !vfio::is_vfio_path(self.sysfs.dev_root(), &host_path) {
            host_path = std::fs::canonicalize(&host_path)
                .unwrap_or_else(|_| host_path.components().collect());
        }
        let mut identity = node.map_or_else(
            || DeviceIdentity::Path(host_path.clone()),
            DeviceIdentity::Node,
        );
        let kind = if vfio::is_vfio_path(self.sysfs.dev_root(), &host_path) {
            let (group, spec) =
                vfio::grouped_spec(&self.sysfs, &host_path).map_err(|source| HostError::Vfio {
                    host_path: host_path.clone(),
                    source,
                })?;
            // One group, one device, whichever node named it.
            identity = DeviceIdentity::IommuGroup(group);
            DeviceKind::Vfio(spec)
        } else if let Some(node) = node.filter(|n| self.store_for(*n).is_some()) {
            let device = if node.major() == VHOST_USER_BLK_MAJOR {
                VhostUserDevice::Blk {
                    driver: self.block_driver,
                }
            } else {
                VhostUserDevice::Scsi
            };
            DeviceKind::VhostUser(VhostUserSpec {
                socket: host_path,
                device,
            })
        } else if request.node_type == DevKind::Block {
            let mut block = BlockSpec::new(host_path, self.block_driver);
            block.read_only = request.read_only;
            DeviceKind::Block(block)
        } else {
            tracing::info!(path = %host_path.display(), "device is not passed to the VM, only counted");
            DeviceKind::Generic(GenericSpec { path: host_path })
        };
        Ok(DeviceSpec {
            identity,
            mode: request.mode,
            kind,
        })
    }

    fn store_for(&self, node: DeviceNode) -> Option<&VhostUserStore> {
        self.store.as_ref().filter(|_| {
            node.node_type == DevKind::Block && VhostUserStore::is_store_major(node.major())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use plugboard_sysfs::fake::{FakeKernel, NodeSpec, PciSpec};

    use super::*;
    use crate::kind::VfioBackend;

    fn request(node_type: DevKind, number: Option<(u32, u32)>, container: &str) -> DeviceRequest {
        DeviceRequest {
            container_path: PathBuf::from(container),
            node_type,
            number: number.map(|(major, minor)| DevNumber { major, minor }),
            host_path: None,
            read_only: false,
            mode: PlugMode::Hot,
        }
    }

    fn kernel() -> FakeKernel {
        FakeKernel::builder()
            .node(NodeSpec::block("sdb", 8, 16))
            .node(NodeSpec::char("fuse", 10, 229))
            .node(NodeSpec::char("vfio/12", 243, 12))
            .pci(
                PciSpec::new("0000:03:00.0", 0x8086, 0x10d3)
                    .class(0x02_0000)
                    .iommu_group(12)
                    .unbound(),
            )
            .build()
            .unwrap()
    }

    /// Issue 17, item 4: the cdevs of two functions of one IOMMU group (`vfio0`, `vfio1`)
    /// and the group node used to be three devices, each holding every function, so each
    /// attach plugged the group again. One group is one device, whichever node names it.
    #[test]
    fn one_iommu_group_is_one_device_whichever_node_names_it() {
        let k = FakeKernel::builder()
            .pci(
                PciSpec::new("0000:05:00.0", 0x10de, 0x2330)
                    .class(0x03_0000)
                    .iommu_group(14)
                    .unbound(),
            )
            .pci(
                PciSpec::new("0000:05:00.1", 0x10de, 0x22a3)
                    .class(0x04_0300)
                    .iommu_group(14)
                    .unbound(),
            )
            .build()
            .unwrap();
        let sysfs = k.sysfs();
        let mut requests = Vec::new();
        for f in ["0000:05:00.0", "0000:05:00.1"] {
            let d = sysfs
                .pci_device(f.parse::<plugboard_sysfs::PciAddress>().unwrap())
                .unwrap();
            d.bind("vfio-pci").unwrap();
            let cdev = d.vfio_cdev_path().unwrap().unwrap();
            let name = cdev.file_name().unwrap().to_str().unwrap().to_owned();
            let dev =
                std::fs::read_to_string(d.path().join("vfio-dev").join(&name).join("dev")).unwrap();
            let (major, minor) = dev.trim().split_once(':').unwrap();
            requests.push(request(
                DevKind::Char,
                Some((major.parse().unwrap(), minor.parse().unwrap())),
                &format!("/dev/vfio/devices/{name}"),
            ));
        }
        let mut group_node = request(DevKind::Char, None, "/dev/vfio/14");
        group_node.host_path = Some(k.dev_root().join("vfio/14"));
        requests.push(group_node);
        let h = HostDevices::new(sysfs, BlockDriver::VirtioBlk);
        let m = crate::DeviceManager::new(
            crate::test_util::InMemoryHypervisor::new(),
            crate::test_util::EIGHT_PORTS,
        );
        let mut ids = Vec::new();
        for r in &requests {
            let spec = h.spec(r).unwrap();
            assert_eq!(spec.identity, DeviceIdentity::IommuGroup(14), "{r:?}");
            let id = m.new_device(spec).unwrap();
            m.attach(id.id()).unwrap();
            ids.push(id);
        }
        assert!(matches!(ids[0], crate::NewDevice::Created(_)));
        assert!(
            ids[1..]
                .iter()
                .all(|n| *n == crate::NewDevice::Existing(ids[0].id()))
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m.hypervisor().calls().len(), 1, "the group is plugged once");
        assert_eq!(m.allocations().root_ports.len(), 2);
    }

    /// Issue 17, item 9: a nodeless device's identity is its file's canonical path.
    #[test]
    fn a_nodeless_path_is_identified_by_its_canonical_path() {
        let k = kernel();
        let h = HostDevices::new(k.sysfs(), BlockDriver::VirtioBlk);
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        let canonical = image.canonicalize().unwrap();
        for spelling in [image.clone(), dir.path().join(".").join("disk.raw"), link] {
            let mut r = request(DevKind::Block, None, "/dev/vdc");
            r.host_path = Some(spelling.clone());
            let s = h.spec(&r).unwrap();
            assert_eq!(
                s.identity,
                DeviceIdentity::Path(canonical.clone()),
                "{}",
                spelling.display()
            );
            assert!(matches!(&s.kind, DeviceKind::Block(b) if b.path == canonical));
        }
    }

    #[test]
    fn classifies_like_kata() {
        let k = kernel();
        let h = HostDevices::new(k.sysfs(), BlockDriver::VirtioScsi);

        let mut r = request(DevKind::Block, Some((8, 16)), "/dev/xvdb");
        r.read_only = true;
        let s = h.spec(&r).unwrap();
        let DeviceKind::Block(b) = &s.kind else {
            panic!("{s:?}")
        };
        assert_eq!(b.path, k.dev_root().join("sdb"));
        assert_eq!((b.driver, b.read_only), (BlockDriver::VirtioScsi, true));
        assert_eq!(s.identity.to_string(), "node b 8:16");

        let s = h
            .spec(&request(DevKind::Char, Some((10, 229)), "/dev/fuse"))
            .unwrap();
        assert!(matches!(&s.kind, DeviceKind::Generic(g) if g.path == k.dev_root().join("fuse")));

        let s = h
            .spec(&request(DevKind::Char, Some((243, 12)), "/dev/vfio/12"))
            .unwrap();
        let DeviceKind::Vfio(v) = &s.kind else {
            panic!("{s:?}")
        };
        assert_eq!(v.backend, VfioBackend::Group { group: 12 });
        assert_eq!(v.functions.len(), 1);

        // A block node the kernel does not know keeps the container path and is block.
        let s = h
            .spec(&request(DevKind::Block, Some((8, 99)), "/dev/sdz"))
            .unwrap();
        assert!(matches!(&s.kind, DeviceKind::Block(b) if b.path == Path::new("/dev/sdz")));

        // Nodeless: the host path is the identity.
        let mut r = request(DevKind::Block, None, "/dev/vdc");
        r.host_path = Some(PathBuf::from("/img/disk.raw"));
        let s = h.spec(&r).unwrap();
        assert_eq!(
            s.identity,
            DeviceIdentity::Path(PathBuf::from("/img/disk.raw"))
        );
        let r = request(DevKind::Block, None, "/dev/vdc");
        assert!(matches!(h.spec(&r), Err(HostError::NoHostPath { .. })));

        // An empty container path is an error first, as in Kata, node or not.
        let r = request(DevKind::Block, Some((8, 16)), "");
        assert!(matches!(h.spec(&r), Err(HostError::HostPath { .. })));
        let mut r = request(DevKind::Block, None, "");
        r.host_path = Some(PathBuf::from("/img/disk.raw"));
        let e = h.spec(&r).unwrap_err();
        assert!(
            matches!(&e, HostError::HostPath { source: HostPathError::EmptyPath(w), .. } if w == "without a node")
        );
    }

    #[test]
    fn store_majors_become_vhost_user() {
        let k = kernel();
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("block/devices")).unwrap();
        std::fs::create_dir_all(store.path().join("block/sockets")).unwrap();
        for (name, major) in [("blk0", "241"), ("scsi0", "242")] {
            let ok = Command::new("mknod")
                .arg(store.path().join("block/devices").join(name))
                .args(["b", major, "0"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mknod needs root");
            std::fs::write(store.path().join("block/sockets").join(name), "").unwrap();
        }
        let h = HostDevices::new(k.sysfs(), BlockDriver::VirtioBlk)
            .with_vhost_user_store(VhostUserStore::new(store.path()));
        let s = h
            .spec(&request(DevKind::Block, Some((241, 0)), "/dev/vdb"))
            .unwrap();
        let DeviceKind::VhostUser(v) = &s.kind else {
            panic!("{s:?}")
        };
        assert_eq!(v.socket, store.path().join("block/sockets/blk0"));
        assert_eq!(
            v.device,
            VhostUserDevice::Blk {
                driver: BlockDriver::VirtioBlk
            }
        );
        let s = h
            .spec(&request(DevKind::Block, Some((242, 0)), "/dev/sdc"))
            .unwrap();
        assert!(matches!(&s.kind, DeviceKind::VhostUser(v) if v.device == VhostUserDevice::Scsi));
        let e = h
            .spec(&request(DevKind::Block, Some((241, 3)), "/dev/vdd"))
            .unwrap_err();
        assert!(matches!(
            e,
            HostError::VhostUserStore {
                source: VhostUserStoreError::NoNode { .. },
                ..
            }
        ));
        // Without a store, 241 is an ordinary block device.
        let plain = HostDevices::new(k.sysfs(), BlockDriver::VirtioBlk);
        let s = plain
            .spec(&request(DevKind::Block, Some((241, 0)), "/dev/vdb"))
            .unwrap();
        assert!(matches!(s.kind, DeviceKind::Block(_)));
    }
}
