//! What a client asks to attach, turned into plugboard-devices' [`DeviceSpec`].
//!
//! A client names a disk by path (the common case) or hands over a whole `DeviceSpec`.
//! The device's identity, which the manager dedupes on, is derived here and not taken from
//! the client: a block device node is `major:minor`, any other file is its canonical path.
//! The caller's right to the files named is checked on the way (see `auth.rs`).
//!
//! A block device's file, named by a `Disk` or in a `Spec`, is opened here once, on the
//! caller's behalf ([`OpenedFile`], `open.rs`): its owner, type and identity are read from
//! that open file, and the service hands the same open file to the hypervisor, so a path
//! swapped after the request is not what the VM gets. The one exception is an nvdimm,
//! whose file QEMU's `memory-backend-file` opens by path itself: the service cannot check
//! what QEMU will open, so only root may attach one.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use plugboard_devices::{
    BlockDriver, BlockSpec, DevKind, DeviceIdentity, DeviceKind, DeviceNode, DeviceSpec,
    ImageFormat, PlugMode,
};
use serde::{Deserialize, Serialize};

use plugboard_sysfs::Sysfs;

use crate::auth::Caller;
use crate::error::ServiceError;
use crate::open::OpenedFile;

/// A device to attach to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AttachRequest {
    /// A disk: a host block device or an image file.
    Disk {
        /// The block device or image file.
        path: PathBuf,
        /// The guest driver (default `virtio-blk`).
        #[serde(default)]
        driver: Option<BlockDriver>,
        /// `raw` (default) or `qcow2`.
        #[serde(default)]
        format: ImageFormat,
        /// The guest may not write.
        #[serde(default)]
        read_only: bool,
    },
    /// A host PCI device passed through with VFIO: prepared in the hostdev registry for
    /// `plugboard/<vm>` (taken from its host driver onto vfio-pci), then plugged.
    Pci {
        /// The device, `DDDD:BB:SS.F`.
        address: plugboard_sysfs::PciAddress,
        /// Take every endpoint of its IOMMU group.
        #[serde(default)]
        whole_group: bool,
    },
    /// A full plugboard-devices spec (root only unless it is a block device of the
    /// caller's).
    Spec {
        /// The spec.
        spec: DeviceSpec,
    },
}

/// A request checked for its caller: the spec, and the file it names, opened once.
#[derive(Debug)]
pub struct CheckedSpec {
    /// The spec, its identity derived from the open file. A block device's
    /// `BlockSpec::passed_fd` is still `None`: it is set when the file is handed to the
    /// hypervisor.
    pub spec: DeviceSpec,
    /// The block device's file, opened and checked on the caller's behalf; `None` for
    /// other kinds and for an nvdimm (QEMU opens its path itself; root only).
    pub file: Option<OpenedFile>,
}

impl AttachRequest {
    /// The spec to hand the device manager, after checking `caller` may use what it names,
    /// with the block device's file opened once (see the module documentation).
    ///
    /// # Errors
    /// [`ServiceError::BadRequest`] for a missing file, a file that is neither a block
    /// device nor a regular file, or a spec that names a descriptor of its own
    /// (`passed_fd`); [`ServiceError::Forbidden`] for someone else's file, an nvdimm asked
    /// for by someone other than root, or a kind only root may attach.
    pub fn to_spec(
        &self,
        caller: Caller,
        vm: &str,
        sysfs: &Sysfs,
    ) -> Result<CheckedSpec, ServiceError> {
        let action = format!("attach to VM {vm:?}");
        match self {
            Self::Disk {
                path,
                driver,
                format,
                read_only,
            } => {
                let mut block =
                    BlockSpec::new(path.clone(), driver.unwrap_or(BlockDriver::VirtioBlk));
                block.format = *format;
                block.read_only = *read_only;
                let (identity, file) = open_block(caller, &mut block, &action)?;
                Ok(CheckedSpec {
                    spec: DeviceSpec {
                        identity,
                        mode: PlugMode::Hot,
                        kind: DeviceKind::Block(block),
                    },
                    file,
                })
            }
            Self::Pci { address, .. } => Err(ServiceError::BadRequest(format!(
                "PCI device {address}: passthrough is prepared by the service, not described by a spec"
            ))),
            Self::Spec { spec } => {
                let mut spec = spec.clone();
                let file = if let DeviceKind::Block(block) = &mut spec.kind {
                    let (identity, file) = open_block(caller, block, &action)?;
                    // Derived from the file, as for a disk: not taken from the client.
                    spec.identity = identity;
                    file
                } else if !caller.is_root() {
                    return Err(ServiceError::forbidden(
                        caller.uid(),
                        action,
                        format!(
                            "only root may attach {} devices by spec",
                            spec.kind.type_name()
                        ),
                    ));
                } else {
                    // Derived here too, never taken from the client.
                    spec.identity = derived_identity(&spec.kind, sysfs)?;
                    None
                };
                Ok(CheckedSpec { spec, file })
            }
        }
    }
}

/// Opens and checks a block device's file for `caller`: its identity and the open file,
/// or, for an nvdimm (root only), its identity by path and no file. The spec's path becomes
/// the file's canonical path, so two spellings of one file are one device.
fn open_block(
    caller: Caller,
    block: &mut BlockSpec,
    action: &str,
) -> Result<(DeviceIdentity, Option<OpenedFile>), ServiceError> {
    if let Some(fd) = block.passed_fd {
        return Err(ServiceError::BadRequest(format!(
            "{}: passed_fd (fd set {}) is set by the service when it hands the file over, \
             not by a request",
            block.path.display(),
            fd.fdset
        )));
    }
    if block.driver == BlockDriver::Nvdimm {
        if !caller.is_root() {
            return Err(ServiceError::forbidden(
                caller.uid(),
                format!("{action} {}", block.path.display()),
                "QEMU opens an nvdimm's file by path itself, so the service cannot make sure \
                 it is the file checked; only root may attach one",
            ));
        }
        let identity = identity_of(&block.path)?;
        block.path = canonical(&block.path)?;
        return Ok((identity, None));
    }
    let opened = OpenedFile::open(caller, &block.path, block.read_only, action)?;
    block.path = opened.canonical_path().to_owned();
    Ok((opened.identity().clone(), Some(opened)))
}

/// The identity of a device that is not a block device, derived from what it names: a
/// generic node's `major:minor` (or its canonical path), a vhost-user socket's canonical
/// path, a VFIO device's IOMMU group.
fn derived_identity(kind: &DeviceKind, sysfs: &Sysfs) -> Result<DeviceIdentity, ServiceError> {
    match kind {
        DeviceKind::Block(block) => identity_of(&block.path),
        DeviceKind::VhostUser(v) => Ok(DeviceIdentity::Path(canonical(&v.socket)?)),
        DeviceKind::Generic(g) => {
            let meta = std::fs::metadata(&g.path).map_err(|e| {
                ServiceError::BadRequest(format!("cannot use {}: {e}", g.path.display()))
            })?;
            let ft = meta.file_type();
            Ok(if ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_char_device() {
                    DevKind::Char
                } else {
                    DevKind::Block
                };
                DeviceIdentity::Node(DeviceNode::from_rdev(kind, meta.rdev()))
            } else {
                DeviceIdentity::Path(canonical(&g.path)?)
            })
        }
        DeviceKind::Vfio(v) => plugboard_devices::vfio_iommu_group(sysfs, v.backend)
            .map(DeviceIdentity::IommuGroup)
            .map_err(|e| ServiceError::BadRequest(format!("VFIO device {}: {e}", v.backend))),
    }
}

/// `path` with every symlink resolved.
fn canonical(path: &std::path::Path) -> Result<PathBuf, ServiceError> {
    path.canonicalize()
        .map_err(|e| ServiceError::BadRequest(format!("cannot use {}: {e}", path.display())))
}

/// A block device node's `major:minor`, or the canonical path of any other file, by path
/// (an nvdimm's, which QEMU opens by path).
fn identity_of(path: &std::path::Path) -> Result<DeviceIdentity, ServiceError> {
    let bad =
        |e: std::io::Error| ServiceError::BadRequest(format!("cannot use {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(bad)?;
    if meta.file_type().is_block_device() {
        return Ok(DeviceIdentity::Node(DeviceNode::from_rdev(
            DevKind::Block,
            meta.rdev(),
        )));
    }
    if !meta.is_file() {
        return Err(ServiceError::BadRequest(format!(
            "{} is neither a block device nor a regular file",
            path.display()
        )));
    }
    Ok(DeviceIdentity::Path(path.canonicalize().map_err(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn a_disk_file_is_identified_by_its_canonical_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.img");
        std::fs::write(&file, vec![0u8; 4096]).unwrap();
        let req: AttachRequest = serde_json::from_value(serde_json::json!({
            "kind": "disk", "path": dir.path().join(".").join("d.img"), "read_only": true
        }))
        .unwrap();
        let checked = req
            .to_spec(Caller::ROOT, "vm", &Sysfs::new("/nonexistent-sysfs"))
            .unwrap();
        let opened = checked.file.as_ref().unwrap();
        assert_eq!(opened.identity(), &checked.spec.identity);
        let spec = checked.spec;
        assert_eq!(
            spec.identity,
            DeviceIdentity::Path(file.canonicalize().unwrap())
        );
        let DeviceKind::Block(block) = spec.kind else {
            panic!("not a block spec")
        };
        assert_eq!(block.driver, BlockDriver::VirtioBlk);
        assert!(block.read_only);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let missing = AttachRequest::Disk {
            path: "/nonexistent/disk.img".into(),
            driver: None,
            format: ImageFormat::Raw,
            read_only: false,
        };
        let err = missing
            .to_spec(Caller::ROOT, "vm", &Sysfs::new("/nonexistent-sysfs"))
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest);
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
        let err = AttachRequest::Disk {
            path: "/".into(),
            driver: None,
            format: ImageFormat::Raw,
            read_only: false,
        }
        .to_spec(Caller::ROOT, "vm", &Sysfs::new("/nonexistent-sysfs"))
        .unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        let unknown = serde_json::from_value::<AttachRequest>(
            serde_json::json!({"kind": "disk", "path": "/x", "size": 3}),
        );
        unknown.unwrap_err();
        let bad_driver = serde_json::from_value::<AttachRequest>(
            serde_json::json!({"kind": "disk", "path": "/x", "driver": "ide"}),
        );
        bad_driver.unwrap_err();
    }

    #[test]
    fn dev_numbers_split_like_glibc() {
        let split_dev = |dev| {
            let node = DeviceNode::from_rdev(DevKind::Block, dev);
            (node.major(), node.minor())
        };
        assert_eq!(split_dev(0x0801), (8, 1));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
        assert_eq!(split_dev(0x0010_0000 | (1 << 8)), (1, 256));
    }
}
