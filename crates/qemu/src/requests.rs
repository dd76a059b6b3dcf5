//! Turning plugboard-devices' [`PlugRequest`]s into [`Plan`]s.
//!
//! The device manager has already decided everything about the guest (root port, SCSI
//! address, drive name); this module only translates. The names of QEMU's objects are ours:
//! made in `id.rs` from the request's device id and what the device is, the same names
//! [`QemuHypervisor::inspect`](crate::QemuHypervisor::inspect) recognises (the manager's
//! own `name_id`s are not used). The manager's root port `N` is the
//! `N`-th port of the VM's pool (`VmLayout::ports`: the free ports found at connect, or the
//! ports named in the configuration for a VM not yet started). A VFIO request with several
//! functions in iommufd mode shares one `iommufd` object, owned by the first function, so
//! it is created first and deleted last.

use std::path::{Path, PathBuf};

use plugboard_devices::{
    BlockDriver, BlockPlug, DeviceId, HostFunction, ImageFormat, Plug, PlugRequest, RootPort,
    VfioBackend, VfioPlug, VhostUserDevice, VhostUserPlug,
};

use crate::block::{self, BlockError, Disk, DiskFormat, DiskSource};
use crate::id::{BackendRole, DeviceRole, QemuId, VM_IOMMUFD};
use crate::nvdimm::{self, Nvdimm, NvdimmError};
use crate::plan::{FdSource, PassedFd, Plan};
use crate::scsi;
use crate::vfio::{self, VfioHost, VfioIommu, VfioPci};
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
    /// `Some(dev_root)`: PCI functions in iommufd mode are handed to QEMU by descriptor
    /// (their cdev and the VM's iommufd, opened under `dev_root` at plug time) instead of
    /// QEMU opening them; hotplug only. `None`: QEMU opens them by sysfs path.
    pub vfio_fds: Option<&'a Path>,
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
        Plug::Block(b) => block_plan(request.device, b, vm).map(|p| vec![p]),
        Plug::VhostUser(v) => vhost_user_plan(request.device, v, vm).map(|p| vec![p]),
        Plug::Vfio(v) => vfio_plans(request.device, v, vm),
    }
}

fn block_plan(device: DeviceId, b: &BlockPlug, vm: VmLayout<'_>) -> Result<Plan, RequestError> {
    let id = QemuId::for_device(device, DeviceRole::Disk);
    if b.spec.driver == BlockDriver::Nvdimm {
        // memory-backend-file opens its mem-path itself; it takes no fd set.
        if b.spec.passed_fd.is_some() {
            return Err(RequestError::Unsupported {
                what: format!("nvdimm {id} from a file passed by descriptor"),
            });
        }
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
    // A disk passed by descriptor is the file that was opened, never what the path names
    // now: it is not looked at.
    let source = match (b.spec.passed_fd, DiskSource::detect(&b.spec.path)) {
        (Some(fd), _) => DiskSource::from_fd_set(fd.fdset, fd.file_type),
        (None, Err(_)) if vm.for_removal => DiskSource::File(b.spec.path.clone()),
        (None, other) => other?,
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
    let mut plan = disk_plan(id, &disk, b, vm)?;
    plan.fd_set = b.spec.passed_fd.map(|fd| fd.fdset);
    Ok(plan)
}

fn disk_plan(
    id: QemuId,
    disk: &Disk,
    b: &BlockPlug,
    vm: VmLayout<'_>,
) -> Result<Plan, RequestError> {
    match b.spec.driver {
        BlockDriver::VirtioBlk => {
            let port = vm.port(&id, b.port)?;
            Ok(block::virtio_blk(id, disk, port.as_deref(), None))
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
            Ok(scsi::scsi_hd(id, disk, controller, address))
        }
        other => Err(RequestError::Unsupported {
            what: format!("block driver {other} for {id}"),
        }),
    }
}

fn vhost_user_plan(
    device: DeviceId,
    v: &VhostUserPlug,
    vm: VmLayout<'_>,
) -> Result<Plan, RequestError> {
    let role = match &v.spec.device {
        VhostUserDevice::Blk { .. } => DeviceRole::VhostUserBlk,
        VhostUserDevice::Scsi => DeviceRole::VhostUserScsi,
        VhostUserDevice::Net { .. } => DeviceRole::VhostUserNet,
        VhostUserDevice::Fs { .. } => DeviceRole::VhostUserFs,
    };
    let id = QemuId::for_device(device, role);
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

fn vfio_plans(device: DeviceId, v: &VfioPlug, vm: VmLayout<'_>) -> Result<Vec<Plan>, RequestError> {
    let mut plans = Vec::with_capacity(v.functions.len());
    let mut shared: Option<String> = None;
    for (n, f) in v.functions.iter().enumerate() {
        let n = u8::try_from(n).map_err(|_| RequestError::Unsupported {
            what: format!(
                "VFIO device {device} with {} functions (at most 256)",
                v.functions.len()
            ),
        })?;
        let id = QemuId::for_device(device, DeviceRole::VfioFunction(n));
        let host = match &f.function.host {
            HostFunction::Pci(address) => VfioHost::Pci(address.to_string()),
            HostFunction::Mdev(_) => VfioHost::Mdev(PathBuf::from(&f.function.sysfs_path)),
        };
        let by_fd = match (v.backend, &f.function.host, vm.vfio_fds) {
            (VfioBackend::Cdev { .. }, HostFunction::Pci(_), Some(dev_root)) => Some(dev_root),
            _ => None,
        };
        let iommu = match (v.backend, &shared, by_fd) {
            (VfioBackend::Group { .. }, _, _) => VfioIommu::Legacy,
            (VfioBackend::Cdev { .. }, _, Some(_)) => VfioIommu::SharedIommufd(VM_IOMMUFD.into()),
            (VfioBackend::Cdev { .. }, None, None) => {
                shared = Some(id.backend_name(BackendRole::Iommufd));
                VfioIommu::OwnIommufd
            }
            (VfioBackend::Cdev { .. }, Some(obj), None) => VfioIommu::SharedIommufd(obj.clone()),
        };
        let port = vm.port(&id, f.port)?;
        let fd = by_fd.map(|_| id.fd_name());
        let mut plan = vfio::vfio_pci(
            id,
            &VfioPci {
                host,
                iommu,
                fd: fd.clone(),
            },
            port.as_deref(),
        );
        if let (Some(dev_root), Some(name)) = (by_fd, fd) {
            plan.passed_fds.push(PassedFd {
                name,
                source: FdSource::VfioCdev {
                    sysfs_path: f.function.sysfs_path.clone(),
                    dev_root: dev_root.to_path_buf(),
                },
            });
            plan.vm_iommufd = Some(dev_root.join("iommu"));
        }
        plans.push(plan);
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use plugboard_devices::{
        BlockIndex, BlockSpec, DeviceId, FsCache, GuestScsiAddress, HostFunction, MacAddress,
        PciAddress, PlugMode, VfioFunction, VfioFunctionPlug, VhostUserSpec,
    };
    use serde_json::json;

    use super::*;
    use crate::id::OurName;
    use crate::plan::BackendObject;

    static POOL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["hp1".to_owned(), "hp2".to_owned()]);

    fn layout(ports: &[String]) -> VmLayout<'_> {
        VmLayout {
            ports,
            scsi_controller: Some("scsi0"),
            portless_ok: false,
            for_removal: false,
            vfio_fds: None,
        }
    }

    fn ports() -> &'static [String] {
        &POOL
    }

    fn block(path: &Path, driver: BlockDriver, port: Option<u32>) -> PlugRequest {
        let id = DeviceId::from_raw(1);
        PlugRequest {
            device: id,
            mode: PlugMode::Hot,
            plug: Plug::Block(BlockPlug {
                name_id: id.name_id("drive"),
                spec: BlockSpec::new(path, driver),
                index: BlockIndex::try_from(3).unwrap(),
                drive_name: None,
                scsi_address: GuestScsiAddress::from_index(3).ok(),
                port: port.map(RootPort::new),
            }),
        }
    }

    fn vhost(device: VhostUserDevice) -> PlugRequest {
        let id = DeviceId::from_raw(2);
        PlugRequest {
            device: id,
            mode: PlugMode::Hot,
            plug: Plug::VhostUser(VhostUserPlug {
                name_id: id.name_id("vu"),
                spec: VhostUserSpec {
                    socket: "/run/be.sock".into(),
                    device,
                },
                index: None,
                drive_name: None,
                port: Some(RootPort::new(0)),
            }),
        }
    }

    /// `block` with its file passed by descriptor in fd set 5, as a block device.
    fn passed(path: &Path, driver: BlockDriver) -> PlugRequest {
        let mut request = block(path, driver, Some(0));
        if let Plug::Block(b) = &mut request.plug {
            b.spec.passed_fd = Some(plugboard_devices::PassedFd {
                fdset: 5,
                file_type: plugboard_devices::PassedFileType::BlockDevice,
            });
        }
        request
    }

    #[test]
    fn a_disk_passed_by_descriptor_opens_its_fd_set_and_never_looks_at_the_path() {
        // The path names a regular file now; what was opened was a block device.
        let f = tempfile::NamedTempFile::new().unwrap();
        for driver in [BlockDriver::VirtioBlk, BlockDriver::VirtioScsi] {
            let p = plans(&passed(f.path(), driver), layout(ports())).unwrap();
            assert_eq!(p[0].fd_set, Some(5));
            let BackendObject::BlockNode { args, .. } = &p[0].backends[0] else {
                panic!("{:?}", p[0].backends)
            };
            assert_eq!(args["filename"], "/dev/fdset/5");
            assert_eq!(args["driver"], "host_device");
        }
        // Gone from the path altogether: the removal's plan is the same.
        let gone = Path::new("/nonexistent/disk.raw");
        let removal = VmLayout {
            for_removal: true,
            ..layout(ports())
        };
        let p = plans(&passed(gone, BlockDriver::VirtioBlk), removal).unwrap();
        assert_eq!(p[0].fd_set, Some(5));
        let p = plans(
            &block(f.path(), BlockDriver::VirtioBlk, Some(0)),
            layout(ports()),
        )
        .unwrap();
        assert_eq!(p[0].fd_set, None, "a disk by path has no fd set");
        let err = plans(&passed(f.path(), BlockDriver::Nvdimm), layout(ports())).unwrap_err();
        assert!(matches!(err, RequestError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn the_managers_port_number_picks_the_pools_port() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = plans(
            &block(f.path(), BlockDriver::VirtioBlk, Some(1)),
            layout(ports()),
        )
        .unwrap();
        assert_eq!(p[0].bus(), Some("hp2"));
        assert_eq!(p[0].id.as_str(), "drive-0000000000000001");
        let err = plans(
            &block(f.path(), BlockDriver::VirtioBlk, Some(2)),
            layout(ports()),
        )
        .unwrap_err();
        assert!(
            matches!(err, RequestError::UnknownPort { pool: 2, .. }),
            "{err}"
        );
        let err = plans(
            &block(f.path(), BlockDriver::VirtioBlk, None),
            layout(ports()),
        )
        .unwrap_err();
        assert!(matches!(err, RequestError::NoPort { .. }), "{err}");
        let cold = VmLayout {
            portless_ok: true,
            ..layout(ports())
        };
        let p = plans(&block(f.path(), BlockDriver::VirtioBlk, None), cold).unwrap();
        assert_eq!(p[0].bus(), None);
    }

    #[test]
    fn scsi_needs_a_controller_and_mmio_is_unsupported() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = plans(
            &block(f.path(), BlockDriver::VirtioScsi, None),
            layout(ports()),
        )
        .unwrap();
        assert_eq!(p[0].device["bus"], "scsi0.0");
        assert_eq!(
            (p[0].device["scsi-id"].clone(), p[0].device["lun"].clone()),
            (json!(0), json!(3))
        );
        let none = VmLayout {
            scsi_controller: None,
            ..layout(ports())
        };
        let err = plans(&block(f.path(), BlockDriver::VirtioScsi, None), none).unwrap_err();
        assert!(matches!(err, RequestError::Unsupported { .. }), "{err}");
        let err = plans(
            &block(f.path(), BlockDriver::VirtioMmio, None),
            layout(ports()),
        )
        .unwrap_err();
        assert!(matches!(err, RequestError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_missing_file_fails_a_plug_but_not_a_removal() {
        let gone = Path::new("/nonexistent/disk.raw");
        let err = plans(
            &block(gone, BlockDriver::VirtioBlk, Some(0)),
            layout(ports()),
        )
        .unwrap_err();
        assert!(matches!(err, RequestError::Block(_)), "{err}");
        let removal = VmLayout {
            for_removal: true,
            ..layout(ports())
        };
        assert_eq!(
            plans(&block(gone, BlockDriver::VirtioBlk, Some(0)), removal)
                .unwrap()
                .len(),
            1
        );
        let p = plans(&block(gone, BlockDriver::Nvdimm, None), removal).unwrap();
        assert!(!p[0].removable);
    }

    #[test]
    fn vhost_user_kinds_map_to_their_devices() {
        let blk = plans(
            &vhost(VhostUserDevice::Blk {
                driver: BlockDriver::VirtioBlk,
            }),
            layout(ports()),
        )
        .unwrap();
        assert_eq!(blk[0].driver(), "vhost-user-blk-pci");
        assert_eq!(blk[0].device["num-queues"], 1);
        let mac: MacAddress = "52:54:00:aa:bb:cc".parse().unwrap();
        let net = plans(&vhost(VhostUserDevice::Net { mac }), layout(ports())).unwrap();
        assert_eq!(net[0].device["mac"], "52:54:00:aa:bb:cc");
        assert!(matches!(net[0].backends[1], BackendObject::Netdev { .. }));
        let fs = plans(
            &vhost(VhostUserDevice::Fs {
                tag: "share".into(),
                cache: FsCache::Auto,
            }),
            layout(ports()),
        )
        .unwrap();
        assert_eq!(fs[0].device["tag"], "share");
        let err = plans(
            &vhost(VhostUserDevice::Blk {
                driver: BlockDriver::VirtioMmio,
            }),
            layout(ports()),
        )
        .unwrap_err();
        assert!(matches!(err, RequestError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_cdev_group_shares_one_iommufd_object_owned_by_its_first_function() {
        let id = DeviceId::from_raw(3);
        let function = |f: u8, port: u32| VfioFunctionPlug {
            name_id: id.name_id(&format!("vfio-{f}")),
            function: VfioFunction {
                host: HostFunction::Pci(format!("0000:65:00.{f}").parse::<PciAddress>().unwrap()),
                sysfs_path: format!("/sys/bus/pci/devices/0000:65:00.{f}").into(),
                class: None,
                is_pcie: true,
                large_bar: false,
            },
            port: Some(RootPort::new(port)),
        };
        let request = |backend| PlugRequest {
            device: id,
            mode: PlugMode::Hot,
            plug: Plug::Vfio(VfioPlug {
                backend,
                functions: vec![function(0, 0), function(1, 1)],
            }),
        };
        let p = plans(&request(VfioBackend::Cdev { index: 4 }), layout(ports())).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].backends.len(),
            1,
            "the first function creates the object"
        );
        assert!(p[1].backends.is_empty(), "the second one only uses it");
        assert_eq!(p[0].device["iommufd"], p[1].device["iommufd"]);
        assert_eq!(p[1].device["host"], "0000:65:00.1");
        assert_eq!(p[1].bus(), Some("hp2"));
        let legacy = plans(&request(VfioBackend::Group { group: 7 }), layout(ports())).unwrap();
        assert!(
            legacy
                .iter()
                .all(|p| p.backends.is_empty() && p.device.get("iommufd").is_none())
        );
    }

    #[test]
    fn every_name_a_plan_gives_qemu_is_read_back_as_the_requests() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
        let vfio = |backend| crate::test_requests::vfio_pair(3, backend);
        let requests = [
            block(f.path(), BlockDriver::VirtioBlk, Some(0)),
            block(f.path(), BlockDriver::VirtioScsi, None),
            block(f.path(), BlockDriver::Nvdimm, None),
            vhost(VhostUserDevice::Blk {
                driver: BlockDriver::VirtioBlk,
            }),
            vhost(VhostUserDevice::Scsi),
            vhost(VhostUserDevice::Net {
                mac: "52:54:00:aa:bb:cc".parse().unwrap(),
            }),
            vhost(VhostUserDevice::Fs {
                tag: "share".into(),
                cache: FsCache::Auto,
            }),
            vfio(VfioBackend::Cdev { index: 4 }),
            vfio(VfioBackend::Group { group: 7 }),
        ];
        for request in &requests {
            for plan in plans(request, layout(ports())).unwrap() {
                let device = OurName::parse(plan.id.as_str());
                assert!(
                    device.is_some_and(|n| n.device == request.device && n.backend.is_none()),
                    "{}",
                    plan.id
                );
                let backends = plan.backends.iter().map(BackendObject::name);
                let referenced = ["drive", "chardev", "netdev", "memdev", "iommufd"]
                    .into_iter()
                    .filter_map(|key| plan.device.get(key).and_then(|v| v.as_str()));
                for name in backends.chain(referenced) {
                    let backend = OurName::parse(name);
                    assert!(
                        backend.is_some_and(|n| n.device == request.device && n.backend.is_some()),
                        "{name} of {}",
                        plan.id
                    );
                }
            }
        }
    }
}
