//! A VFIO device, whichever interface opened it.
//!
//! [`VfioDevice`] knows its fd, its info, regions and IRQ indexes, and how it is tied to
//! its address space: a [`Group`] lease in a legacy [`Container`], or a binding and
//! attachment to an [`Iommufd`]. That tie is a private enum, chosen by the constructor that
//! built the device (one per interface), so no code ever downcasts a trait object to find
//! out (rust-vmm's `VfioDevice::new` and its `Drop` do, and the `Drop` `unwrap`s).
//!
//! Lifetimes hold by construction: in the legacy variant the device fd is declared before
//! the group lease, so it closes first and the group can then detach (the kernel refuses
//! while a device is open); the iommufd variant detaches from the IOAS before its cdev
//! closes. Both hold their address space in an `Arc`. Nothing here panics in `Drop`;
//! [`VfioDevice::close`] reports what drop would only log.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tracing::debug;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use crate::container::{Container, ContainerError, DmaReplay};
use crate::dma::{AddressSpace, DmaError};
use crate::group::{Group, GroupError};
use crate::info::DeviceInfo;
use crate::ioctl;
use crate::iommufd::{AttachedCdev, CdevError, Iommufd, IommufdError};
use crate::iova::IovaInfo;
use crate::irq::IrqInfo;
use crate::mode::Interface;
use crate::region::{RegionError, RegionInfo, pci_region_name};

/// Why a device could not be opened or used. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum VfioDeviceError {
    /// The group could not be used (not viable, cannot open, cannot get the device fd).
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The container could not be opened or adopted.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The iommufd could not be opened or set up.
    #[error(transparent)]
    Iommufd(#[from] IommufdError),
    /// The device cdev could not be opened, bound or attached.
    #[error(transparent)]
    Cdev(#[from] CdevError),
    /// An ioctl on the device failed.
    #[error("VFIO device {device}: {what} failed")]
    Ioctl {
        /// The device name.
        device: String,
        /// Which request.
        what: String,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
    /// A region's capability chain is malformed.
    #[error("VFIO device {device}: bad region info")]
    RegionCaps {
        /// The device name.
        device: String,
        /// What is wrong with it.
        #[source]
        source: RegionError,
    },
    /// The device has no such region.
    #[error("VFIO device {device} has no region {index}")]
    NoRegion {
        /// The device name.
        device: String,
        /// The region index asked for.
        index: u32,
    },
    /// An access falls outside the region or is not allowed by its flags.
    #[error(
        "VFIO device {device}: {access} of {len} bytes at {offset:#x} is outside {region} (size {size:#x}) or not allowed by its flags"
    )]
    BadAccess {
        /// The device name.
        device: String,
        /// The region's name.
        region: String,
        /// `read` or `write`.
        access: &'static str,
        /// Offset in the region.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The region's size.
        size: u64,
    },
    /// A read or write through the device fd failed.
    #[error("VFIO device {device}: {access} of {region} at {offset:#x} failed")]
    Access {
        /// The device name.
        device: String,
        /// The region's name.
        region: String,
        /// `read` or `write`.
        access: &'static str,
        /// Offset in the region.
        offset: u64,
        /// errno from `pread`/`pwrite`.
        #[source]
        source: io::Error,
    },
    /// The device does not support `VFIO_DEVICE_RESET`.
    #[error(
        "VFIO device {device} cannot be reset (no reset flag: no FLR, PM or bus reset available)"
    )]
    ResetUnsupported {
        /// The device name.
        device: String,
    },
}

/// The file a VMM registers with KVM's VFIO device for a [`VfioDevice`] (see
/// [`VfioDevice::kvm_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmFileKind {
    /// Legacy: the IOMMU group's fd (`/dev/vfio/<group>`).
    Group,
    /// iommufd: the device's own cdev fd (`/dev/vfio/devices/vfioN`).
    DeviceCdev,
}

/// How the device is tied to its address space. Field order is drop order.
enum DeviceIo {
    /// Legacy: the device fd closes first, then the group lease ends.
    Legacy { file: File, group: Group },
    /// iommufd: detaches, then closes the cdev, then releases the iommufd.
    Iommufd(AttachedCdev),
}

/// An open VFIO device, in either interface.
pub struct VfioDevice {
    io: DeviceIo,
    name: String,
    info: DeviceInfo,
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
}

impl fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDevice")
            .field("name", &self.name)
            .field("interface", &self.interface())
            .field("group", &self.group_id())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl VfioDevice {
    /// Opens device `name` (a PCI address or mdev UUID) of an attached legacy group. The
    /// device keeps the lease; two devices of one group each take a lease on the same
    /// group fd ([`Container::attach_group`] twice).
    pub fn open_in_group(group: Group, name: &str) -> Result<Self, VfioDeviceError> {
        let file = File::from(group.open_device(name)?);
        debug!(
            device = name,
            group = group.id(),
            "opened VFIO device through its group"
        );
        Self::load(DeviceIo::Legacy { file, group }, name)
    }

    /// Opens device `name` through its cdev at `cdev` (`/dev/vfio/devices/vfioN`), binds it
    /// to `iommufd` and attaches it to its IOAS.
    pub fn open_cdev(
        iommufd: &Arc<Iommufd>,
        cdev: &Path,
        name: &str,
    ) -> Result<Self, VfioDeviceError> {
        let attached = AttachedCdev::open(cdev, name, iommufd)?;
        debug!(device = name, cdev = %cdev.display(), ioas = iommufd.ioas_id(), "opened VFIO device cdev");
        Self::load(DeviceIo::Iommufd(attached), name)
    }

    /// Builds a device from the legacy fds a privileged helper handed over (see
    /// [`crate::VmmFds`]): a container with the group attached and the IOMMU set, which then
    /// does what `replay` says about the mappings the kernel drops with its last group.
    pub fn from_legacy_fds(
        container: OwnedFd,
        group: OwnedFd,
        group_id: u32,
        name: &str,
        replay: DmaReplay,
    ) -> Result<Self, VfioDeviceError> {
        let (_container, lease) = Container::from_fds(container, group, group_id, replay)?;
        Self::open_in_group(lease, name)
    }

    /// Builds a device from the iommufd fds a privileged helper handed over: the iommufd
    /// and a cdev already bound to it. Allocates an IOAS and attaches the device to it.
    pub fn from_iommufd_fds(
        iommufd: OwnedFd,
        cdev: OwnedFd,
        name: &str,
    ) -> Result<Self, VfioDeviceError> {
        let iommufd = Iommufd::from_fd(iommufd)?;
        let attached = AttachedCdev::from_bound(cdev, name, &iommufd)?;
        Self::load(DeviceIo::Iommufd(attached), name)
    }

    fn load(io: DeviceIo, name: &str) -> Result<Self, VfioDeviceError> {
        let fd = match &io {
            DeviceIo::Legacy { file, .. } => file.as_fd(),
            DeviceIo::Iommufd(attached) => attached.file().as_fd(),
        };
        let ioctl_error = |what: String| {
            let device = name.to_owned();
            move |source| VfioDeviceError::Ioctl {
                device,
                what,
                source,
            }
        };
        let raw = ioctl::device_info(fd).map_err(ioctl_error("VFIO_DEVICE_GET_INFO".into()))?;
        let info = DeviceInfo::from_kernel(&raw);
        let mut regions = Vec::new();
        for index in 0..info.num_regions {
            match ioctl::region_info(fd, index) {
                Ok((raw, bytes)) => {
                    regions.push(RegionInfo::from_kernel(&raw, &bytes).map_err(|source| {
                        VfioDeviceError::RegionCaps {
                            device: name.to_owned(),
                            source,
                        }
                    })?);
                }
                // vfio-pci answers EINVAL for an index the device lacks (VGA on a NIC).
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
                Err(err) => {
                    return Err(ioctl_error(format!("VFIO_DEVICE_GET_REGION_INFO({index})"))(err));
                }
            }
        }
        let mut irqs = Vec::new();
        for index in 0..info.num_irqs {
            match ioctl::irq_info(fd, index) {
                Ok(raw) => irqs.push(IrqInfo::from_kernel(&raw)),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
                Err(err) => {
                    return Err(ioctl_error(format!("VFIO_DEVICE_GET_IRQ_INFO({index})"))(
                        err,
                    ));
                }
            }
        }
        Ok(Self {
            io,
            name: name.to_owned(),
            info,
            regions,
            irqs,
        })
    }

    fn file(&self) -> &File {
        match &self.io {
            DeviceIo::Legacy { file, .. } => file,
            DeviceIo::Iommufd(attached) => attached.file(),
        }
    }

    /// The device's name: its PCI address (or mdev UUID).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel interface that opened it.
    pub fn interface(&self) -> Interface {
        match self.io {
            DeviceIo::Legacy { .. } => Interface::Legacy,
            DeviceIo::Iommufd(_) => Interface::Iommufd,
        }
    }

    /// Flags and counts from `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The regions the device has (absent indexes left out).
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// Region `index`, if the device has it.
    pub fn region(&self, index: u32) -> Option<&RegionInfo> {
        // Regions are kept in index order, so region `i` is usually at `i` (the BARs);
        // only indexes after a missing one (VGA on a NIC) need the search.
        let at = usize::try_from(index).ok()?;
        match self.regions.get(at) {
            Some(region) if region.index == index => Some(region),
            _ => self.regions.iter().find(|r| r.index == index),
        }
    }

    /// The IRQ indexes the device reports.
    pub fn irqs(&self) -> &[IrqInfo] {
        &self.irqs
    }

    /// The legacy group id (`None` for iommufd).
    pub fn group_id(&self) -> Option<u32> {
        match &self.io {
            DeviceIo::Legacy { group, .. } => Some(group.id()),
            DeviceIo::Iommufd(_) => None,
        }
    }

    /// The legacy container (`None` for iommufd).
    pub fn container(&self) -> Option<&Arc<Container>> {
        match &self.io {
            DeviceIo::Legacy { group, .. } => Some(group.container()),
            DeviceIo::Iommufd(_) => None,
        }
    }

    /// The iommufd (`None` for legacy).
    pub fn iommufd(&self) -> Option<&Arc<Iommufd>> {
        match &self.io {
            DeviceIo::Legacy { .. } => None,
            DeviceIo::Iommufd(attached) => Some(attached.iommufd()),
        }
    }

    /// The device id inside the iommufd, when this process bound it.
    pub fn iommufd_dev_id(&self) -> Option<u32> {
        match &self.io {
            DeviceIo::Legacy { .. } => None,
            DeviceIo::Iommufd(attached) => attached.dev_id(),
        }
    }

    /// The address space the device does DMA through, to map guest memory into.
    pub fn address_space(&self) -> Arc<dyn AddressSpace> {
        match &self.io {
            DeviceIo::Legacy { group, .. } => {
                Arc::clone(group.container()) as Arc<dyn AddressSpace>
            }
            DeviceIo::Iommufd(attached) => Arc::clone(attached.iommufd()) as Arc<dyn AddressSpace>,
        }
    }

    /// The device fd (for `VFIO_DEVICE_SET_IRQS`, mmap, or, with iommufd, a KVM VFIO
    /// device: see [`VfioDevice::kvm_file`]).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }

    /// The IOVA ranges (and legacy: page sizes, mappings left) of the device's address
    /// space, asked of the kernel now; see [`AddressSpace::iova_info`].
    pub fn iova_info(&self) -> Result<IovaInfo, DmaError> {
        match &self.io {
            DeviceIo::Legacy { group, .. } => group.container().iova_info(),
            DeviceIo::Iommufd(attached) => attached.iommufd().iova_info(),
        }
    }

    /// A new fd for the file a VMM registers with KVM's VFIO pseudo-device
    /// (`KVM_CREATE_DEVICE(KVM_DEV_TYPE_VFIO)`, then `KVM_SET_DEVICE_ATTR` with group
    /// `KVM_DEV_VFIO_FILE` and attribute `KVM_DEV_VFIO_FILE_ADD`, the fd's number pointed to
    /// by `addr`): the **group** fd in the legacy interface, the **device cdev** fd with
    /// iommufd. KVM takes its own reference, so the returned fd may be closed after the
    /// call; `KVM_DEV_VFIO_FILE_DEL` with the same file undoes it before the device closes.
    /// KVM needs it for devices whose DMA is not cache-coherent (it then honours the guest's
    /// WBINVD) and for the s390/PPC/KVMGT integrations.
    pub fn kvm_file(&self) -> Result<OwnedFd, VfioDeviceError> {
        let (what, fd) = match &self.io {
            DeviceIo::Legacy { group, .. } => ("duplicating the group fd", group.try_clone_fd()),
            DeviceIo::Iommufd(attached) => (
                "duplicating the device cdev fd",
                attached.file().as_fd().try_clone_to_owned(),
            ),
        };
        fd.map_err(|source| VfioDeviceError::Ioctl {
            device: self.name.clone(),
            what: what.into(),
            source,
        })
    }

    /// Which kind of file [`VfioDevice::kvm_file`] returns: `group` or `device`.
    pub fn kvm_file_kind(&self) -> KvmFileKind {
        match self.io {
            DeviceIo::Legacy { .. } => KvmFileKind::Group,
            DeviceIo::Iommufd(_) => KvmFileKind::DeviceCdev,
        }
    }

    fn checked_region(
        &self,
        index: u32,
        access: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<&RegionInfo, VfioDeviceError> {
        let region = self
            .region(index)
            .ok_or_else(|| VfioDeviceError::NoRegion {
                device: self.name.clone(),
                index,
            })?;
        let allowed = match access {
            "read" => region.flags.readable(),
            _ => region.flags.writable(),
        };
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| offset.checked_add(len));
        if !allowed || end.is_none_or(|end| end > region.size) {
            return Err(VfioDeviceError::BadAccess {
                device: self.name.clone(),
                region: pci_region_name(index),
                access,
                offset,
                len,
                size: region.size,
            });
        }
        Ok(region)
    }

    /// The error for a failed `pread`/`pwrite`; built only on failure (the device name is
    /// copied into it, which the hot path must not pay for).
    #[cold]
    fn access_failed(
        &self,
        index: u32,
        access: &'static str,
        offset: u64,
        source: io::Error,
    ) -> VfioDeviceError {
        VfioDeviceError::Access {
            device: self.name.clone(),
            region: pci_region_name(index),
            access,
            offset,
            source,
        }
    }

    /// Reads `buf.len()` bytes at `offset` of region `index` through the device fd.
    pub fn read_region(
        &self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VfioDeviceError> {
        let region = self.checked_region(index, "read", offset, buf.len())?;
        self.file()
            .read_exact_at(buf, region.offset + offset)
            .map_err(|source| self.access_failed(index, "read", offset, source))
    }

    /// Writes `buf` at `offset` of region `index` through the device fd.
    pub fn write_region(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), VfioDeviceError> {
        let region = self.checked_region(index, "write", offset, buf.len())?;
        self.file()
            .write_all_at(buf, region.offset + offset)
            .map_err(|source| self.access_failed(index, "write", offset, source))
    }

    /// Reads PCI config space (vfio-pci virtualises parts of it).
    pub fn read_config(&self, offset: u64, buf: &mut [u8]) -> Result<(), VfioDeviceError> {
        self.read_region(VFIO_PCI_CONFIG_REGION_INDEX, offset, buf)
    }

    /// Writes PCI config space.
    pub fn write_config(&self, offset: u64, buf: &[u8]) -> Result<(), VfioDeviceError> {
        self.write_region(VFIO_PCI_CONFIG_REGION_INDEX, offset, buf)
    }

    /// Resets the device (`VFIO_DEVICE_RESET`: FLR, PM or bus reset, as vfio-pci finds).
    pub fn reset(&self) -> Result<(), VfioDeviceError> {
        if !self.info.flags.resettable() {
            return Err(VfioDeviceError::ResetUnsupported {
                device: self.name.clone(),
            });
        }
        ioctl::device_reset(self.as_fd()).map_err(|source| VfioDeviceError::Ioctl {
            device: self.name.clone(),
            what: "VFIO_DEVICE_RESET".into(),
            source,
        })
    }

    /// Closes the device and reports what drop would only log: a failed IOAS detach, or a
    /// failed group detach when this was the group's last device.
    pub fn close(self) -> Result<(), VfioDeviceError> {
        let name = self.name;
        match self.io {
            DeviceIo::Legacy { file, group } => {
                drop(file);
                group.close()?;
            }
            DeviceIo::Iommufd(mut attached) => {
                attached.detach().map_err(|source| VfioDeviceError::Ioctl {
                    device: name.clone(),
                    what: "VFIO_DEVICE_DETACH_IOMMUFD_PT".into(),
                    source,
                })?;
            }
        }
        debug!(device = name, "closed VFIO device");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_errors_name_device_region_and_offset() {
        let err = VfioDeviceError::BadAccess {
            device: "0000:01:00.0".into(),
            region: "config".into(),
            access: "read",
            offset: 0x100,
            len: 4,
            size: 0x100,
        };
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:01:00.0: read of 4 bytes at 0x100 is outside config (size 0x100) or not allowed by its flags"
        );
        let err = VfioDeviceError::ResetUnsupported {
            device: "0000:01:00.0".into(),
        };
        assert!(
            err.to_string()
                .starts_with("VFIO device 0000:01:00.0 cannot be reset")
        );
    }
}
