//! Disks: the two block nodes every disk needs, and virtio-blk-pci on a root port.
//!
//! A disk is a protocol node (`file` for an image, `host_device` for a block device) under
//! a format node (`raw` or `qcow2`). Read-only is set on **both** nodes: QEMU then opens the
//! image read-only and the guest sees a read-only disk. The nodes are named
//! `<id>-file` and `<id>-fmt` so that removal finds them from the device id.
//!
//! A disk whose file was opened and checked by the caller comes as an fd set: the protocol
//! node's `filename` is then `/dev/fdset/<n>` ([`DiskSource::from_fd_set`]), QEMU opens the
//! file by duplicating the set's descriptor whose access mode matches (read-only or
//! read-write, so the descriptor must have been opened the same way), and the path the
//! caller named is never opened by QEMU.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use plugboard_devices::PassedFileType;
use serde_json::{Value, json};

use crate::id::{BackendRole, QemuId};
use crate::plan::{BackendObject, Plan, on_root_port};

/// Why a disk could not be described.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image or device could not be inspected.
    #[error("cannot inspect disk source {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The stat error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the data is: an image file or a host block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A regular file (QEMU's `file` driver).
    File(PathBuf),
    /// A host block device (QEMU's `host_device` driver).
    HostDevice(PathBuf),
}

impl DiskSource {
    /// Picks `File` or `HostDevice` by what is at `path`.
    pub fn detect(path: &Path) -> Result<Self, BlockError> {
        let meta = std::fs::metadata(path).map_err(|source| BlockError::Inspect {
            path: path.to_owned(),
            source,
        })?;
        Ok(if meta.file_type().is_block_device() {
            Self::HostDevice(path.to_owned())
        } else {
            Self::File(path.to_owned())
        })
    }

    /// The file in fd set `fdset`, of type `file_type`: `/dev/fdset/<fdset>` with the `file`
    /// or `host_device` driver. Nothing is looked up: the type is what the opener saw.
    pub fn from_fd_set(fdset: u32, file_type: PassedFileType) -> Self {
        let path = PathBuf::from(format!("/dev/fdset/{fdset}"));
        match file_type {
            PassedFileType::File => Self::File(path),
            PassedFileType::BlockDevice => Self::HostDevice(path),
        }
    }

    /// The host path.
    pub fn path(&self) -> &Path {
        match self {
            Self::File(p) | Self::HostDevice(p) => p,
        }
    }

    fn driver(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::HostDevice(_) => "host_device",
        }
    }
}

/// The format of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    /// Raw bytes.
    #[default]
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl DiskFormat {
    fn driver(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A disk's backend: source, format and access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Where the data is.
    pub source: DiskSource,
    /// Its format.
    pub format: DiskFormat,
    /// Open read-only (both nodes).
    pub read_only: bool,
    /// Let other guest devices use the same node read-write (`share-rw`).
    pub share_rw: bool,
}

impl Disk {
    /// A read-write disk.
    pub fn new(source: DiskSource, format: DiskFormat) -> Self {
        Self {
            source,
            format,
            read_only: false,
            share_rw: false,
        }
    }

    /// The name of the node the guest device uses.
    pub fn top_node(id: &QemuId) -> String {
        id.backend_name(BackendRole::Format)
    }

    /// The protocol node and the format node, in creation order.
    pub fn nodes(&self, id: &QemuId) -> Vec<BackendObject> {
        let file = id.backend_name(BackendRole::File);
        let fmt = Self::top_node(id);
        vec![
            BackendObject::BlockNode {
                args: json!({
                    "node-name": file,
                    "driver": self.source.driver(),
                    "filename": self.source.path(),
                    "read-only": self.read_only,
                }),
                node_name: file.clone(),
            },
            BackendObject::BlockNode {
                args: json!({
                    "node-name": fmt,
                    "driver": self.format.driver(),
                    "file": file,
                    "read-only": self.read_only,
                }),
                node_name: fmt,
            },
        ]
    }

    /// Adds `drive` and, when asked, `share-rw` to a guest device's arguments.
    pub(crate) fn attach_to(&self, id: &QemuId, mut device: Value) -> Value {
        if let Value::Object(map) = &mut device {
            map.insert("drive".to_owned(), json!(Self::top_node(id)));
            if self.share_rw {
                map.insert("share-rw".to_owned(), json!(true));
            }
        }
        device
    }
}

/// A virtio-blk-pci disk on a root port.
pub fn virtio_blk(id: QemuId, disk: &Disk, port: Option<&str>, serial: Option<&str>) -> Plan {
    let mut device = json!({"driver": "virtio-blk-pci", "id": id.as_str()});
    if let (Some(serial), Value::Object(map)) = (serial, &mut device) {
        map.insert("serial".to_owned(), json!(serial));
    }
    let device = on_root_port(disk.attach_to(&id, device), port);
    let mut plan = Plan::device_only(id, device);
    plan.backends = disk.nodes(&plan.id);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QemuId {
        s.parse().unwrap()
    }

    #[test]
    fn a_read_only_qcow2_disk_is_read_only_on_both_nodes() {
        let mut disk = Disk::new(DiskSource::File("/v/d.qcow2".into()), DiskFormat::Qcow2);
        disk.read_only = true;
        let plan = virtio_blk(id("vb0"), &disk, Some("hp1"), Some("vol0"));
        let [
            BackendObject::BlockNode { args: file, .. },
            BackendObject::BlockNode { args: fmt, .. },
        ] = plan.backends.as_slice()
        else {
            panic!("two nodes expected: {:?}", plan.backends);
        };
        assert_eq!(
            *file,
            json!({"node-name": "vb0-file", "driver": "file", "filename": "/v/d.qcow2", "read-only": true})
        );
        assert_eq!(
            *fmt,
            json!({"node-name": "vb0-fmt", "driver": "qcow2", "file": "vb0-file", "read-only": true})
        );
        assert_eq!(
            plan.device,
            json!({"driver": "virtio-blk-pci", "id": "vb0", "drive": "vb0-fmt", "serial": "vol0",
                   "bus": "hp1", "addr": "0x0"})
        );
        assert!(plan.removable);
        assert_eq!(plan.requires, Default::default());
    }

    #[test]
    fn host_devices_use_the_host_device_driver() {
        let mut disk = Disk::new(DiskSource::HostDevice("/dev/sdb".into()), DiskFormat::Raw);
        disk.share_rw = true;
        let plan = virtio_blk(id("vb1"), &disk, Some("hp2"), None);
        let BackendObject::BlockNode { args, .. } = &plan.backends[0] else {
            panic!()
        };
        assert_eq!(args["driver"], "host_device");
        assert_eq!(plan.backends[1].name(), "vb1-fmt");
        assert_eq!(plan.device["share-rw"], json!(true));
        assert!(plan.device.get("serial").is_none());
    }

    #[test]
    fn a_disk_in_an_fd_set_opens_dev_fdset() {
        let disk = Disk::new(
            DiskSource::from_fd_set(4, PassedFileType::BlockDevice),
            DiskFormat::Raw,
        );
        let plan = virtio_blk(id("vb2"), &disk, Some("hp1"), None);
        let BackendObject::BlockNode { args, .. } = &plan.backends[0] else {
            panic!()
        };
        assert_eq!(args["driver"], "host_device");
        assert_eq!(args["filename"], "/dev/fdset/4");
        assert_eq!(
            DiskSource::from_fd_set(0, PassedFileType::File),
            DiskSource::File("/dev/fdset/0".into())
        );
    }

    #[test]
    fn detect_tells_files_from_block_devices() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            DiskSource::detect(f.path()).unwrap(),
            DiskSource::File(f.path().into())
        );
        let err = DiskSource::detect(Path::new("/nonexistent/disk")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk"));
        // A block device, when this machine shows one (read-only look).
        if let Some(dev) = ["/dev/vda", "/dev/sda", "/dev/nvme0n1"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        {
            assert!(matches!(
                DiskSource::detect(dev).unwrap(),
                DiskSource::HostDevice(_)
            ));
        }
    }
}
