//! Turning plugboard-devices' [`PlugRequest`]s into [`Plan`]s.
//!
//! The device manager has already decided everything (object names, root port, SCSI
//! address, drive name); this module only translates. The manager's root port `N` is the
//! `N`-th port of the VM's pool (`VmLayout::ports`: the free ports found at connect, or the
//! ports named in the configuration for a VM not yet started). A VFIO request with several
//! functions in iommufd mode shares one `iommufd` object, owned by the first function, so
//! it is created first and deleted last.

use std::path::PathBuf;

use plugboard_devices::{
    BlockDriver, BlockPlug, HostFunction, ImageFormat, Plug, PlugRequest, RootPort, VfioBackend,
    VfioPlug, VhostUserDevice, VhostUserPlug,
};

use crate::block::{self, BlockError, Disk, DiskFormat, DiskSource};
use crate::id::{QemuId, QemuIdError};
use crate::nvdimm::{self, Nvdimm, NvdimmError};
use crate::plan::Plan;
use crate::scsi::{self, ScsiAddress};
use crate::vfio::{self, Vfio, VfioHost, VfioIommu};
use crate::vhost_user::{self, VhostUser, VhostUserKind};

/// Why a request cannot become QEMU commands.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Something QEMU on q35 cannot do (virtio-mmio, ccw, a SCSI disk without controller).
    #[error("QEMU (q35) cannot plug {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// A PCI device without a root port on a VM that needs one for hotplug.
    #[error("{device} needs a root port for hotplug and the request has none")]
    NoPort {
        /// The object name.
        device: String,
    },
    /// The manager's port number is past the VM's ports.
    #[error("root port {port} is not in the VM's pool of {pool} ports")]
    UnknownPort {
        /// The manager's port.
        port: RootPort,
        /// The pool size.
        pool: usize,
    },
    /// A manager name QEMU would refuse.
    #[error("object name is not a usable QEMU id")]
    Id(#[from] QemuIdError),
    /// The disk could not be inspected.
    #[error("cannot describe the disk")]
    Block(#[from] BlockError),
    /// The nvdimm file could not be inspected.
    #[error("cannot describe the nvdimm")]
    Nvdimm(#[from] NvdimmError),
}

/// What a request needs to know about the VM.
#[derive(Debug, Clone, Copy)]
pub struct VmLayout<'a> {
    /// The VM's port pool, in the manager's order.
    pub ports: &'a [String],
    /// The virtio-scsi controller's id, if the VM has one.
    pub scsi_controller: Option<&'a str>,
    /// Whether a PCI device may go without a port (coldplug onto the root bus).
    pub portless_ok: bool,
    /// The plans are for removal: only names matter, so files that are gone already do
    /// not make the request fail.
    pub for_removal: bool,
}

impl VmLayout<'_> {
    fn port(
        &self,
        device: &QemuId,
        port: Option<RootPort>,
    ) -> Result<Option<String>, RequestError> {
        match port {
            Some(p) => {
                let index = usize::try_from(p.get()).unwrap_or(usize::MAX);
                let name = self.ports.get(index).ok_or(RequestError::UnknownPort {
                    port: p,
                    pool: self.ports.len(),
                })?;
                Ok(Some(name.clone()))
            }
            None if self.portless_ok => Ok(None),
            None => Err(RequestError::NoPort {
                device: device.to_string(),
            }),
        }
    }
}

/// The plans for a request, in plug order (remove in reverse).
pub fn plans(request: &PlugRequest, vm: VmLayout<'_>) -> Result<Vec<Plan>, RequestError> {
    match &request.plug {
        Plug::Block(b) => block_plan(b, vm).map(|p| vec![p]),
        Plug::VhostUser(v) => vhost_user_plan(v, vm).map(|p| vec![p]),
        Plug::Vfio(v) => vfio_plans(v, vm),
    }
}

fn block_plan(b: &BlockPlug, vm: VmLayout<'_>) -> Result<Plan, RequestError> {
    let id: QemuId = b.name_id.parse()?;
    if b.spec.driver == BlockDriver::Nvdimm {
        let dimm = match Nvdimm::from_file(&b.spec.path, b.spec.pmem, b.spec.read_only) {
            Err(_) if vm.for_removal => Nvdimm {
                path: b.spec.path.clone(),
                size: 0,
                pmem: b.spec.pmem,
                read_only: b.spec.read_only,
            },
            other => other?,
        };
        return Ok(nvdimm::nvdimm(id, &dimm));
    }
    let source = match DiskSource::detect(&b.spec.path) {
        Err(_) if vm.for_removal => DiskSource::File(b.spec.path.clone()),
        other => other?,
    };
    let mut disk = Disk::new(
        source,
        match b.spec.format {
            ImageFormat::Raw => DiskFormat::Raw,
            ImageFormat::Qcow2 => DiskFormat::Qcow2,
        },
    );
    disk.read_only = b.spec.read_only;
    disk.share_rw = b.spec.share_rw;
    match b.spec.driver {
        BlockDriver::VirtioBlk => {
            let port = vm.port(&id, b.port)?;
            Ok(block::virtio_blk(id, &disk, port.as_deref(), None))
        }
        BlockDriver::VirtioScsi => {
            let controller = vm
                .scsi_controller
                .ok_or_else(|| RequestError::Unsupported {
                    what: format!("SCSI disk {id}: the VM has no virtio-scsi controller"),
                })?;
            let address = b.scsi_address.ok_or_else(|| RequestError::Unsupported {
                what: format!("SCSI disk {id} without a SCSI address"),
            })?;
            let address = ScsiAddress {
                target: address.id(),
                lun: u32::from(address.lun()),
            };
            Ok(scsi::scsi_hd(id, &disk, controller, address))
        }
        other => Err(RequestError::Unsupported {
            what: format!("block driver {other} for {id}"),
        }),
    }
}

fn vhost_user_plan(v: &VhostUserPlug, vm: VmLayout<'_>) -> Result<Plan, RequestError> {
    let id: QemuId = v.name_id.parse()?;
    let kind = match &v.spec.device {
        // One queue: QEMU's default is one per vCPU, and a backend that offers fewer
        // (qemu-storage-daemon's default is 1) makes device_add fail.
        VhostUserDevice::Blk {
            driver: BlockDriver::VirtioBlk,
        } => VhostUserKind::Blk { queues: Some(1) },
        VhostUserDevice::Blk { driver } => {
            return Err(RequestError::Unsupported {
                what: format!("vhost-user-blk with driver {driver} for {id}"),
            });
        }
        VhostUserDevice::Scsi => VhostUserKind::Scsi,
        VhostUserDevice::Net { mac } => VhostUserKind::Net {
            mac: mac.to_string(),
            queues: 1,
        },
        VhostUserDevice::Fs { tag, .. } => VhostUserKind::Fs {
            tag: tag.clone(),
            queue_size: 1024,
        },
    };
    let port = vm.port(&id, v.port)?;
    let dev = VhostUser {
        socket: v.spec.socket.clone(),
        kind,
    };
    Ok(vhost_user::vhost_user(id, &dev, port.as_deref()))
}

fn vfio_plans(v: &VfioPlug, vm: VmLayout<'_>) -> Result<Vec<Plan>, RequestError> {
    let mut plans = Vec::with_capacity(v.functions.len());
    let mut shared: Option<String> = None;
    for f in &v.functions {
        let id: QemuId = f.name_id.parse()?;
        let host = match &f.function.host {
            HostFunction::Pci(address) => VfioHost::Pci(address.to_string()),
            HostFunction::Mdev(_) => VfioHost::Mdev(PathBuf::from(&f.function.sysfs_path)),
        };
        let iommu = match (v.backend, &shared) {
            (VfioBackend::Group { .. }, _) => VfioIommu::Legacy,
            (VfioBackend::Cdev { .. }, None) => {
                shared = Some(id.derived("iofd"));
                VfioIommu::OwnIommufd
            }
            (VfioBackend::Cdev { .. }, Some(obj)) => VfioIommu::SharedIommufd(obj.clone()),
        };
        let port = vm.port(&id, f.port)?;
        plans.push(vfio::vfio_pci(id, &Vfio { host, iommu }, port.as_deref()));
    }
    Ok(plans)
}
