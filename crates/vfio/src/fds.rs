//! Opening a device on behalf of an unprivileged VMM, and handing it the file descriptors.
//!
//! A privileged helper (the plugboard daemon, a runtime's shim) opens and binds what the VMM
//! may not open itself, and passes the fds over a Unix socket (kata-containers #13548,
//! cloud-hypervisor #8287):
//!
//! - legacy: the container fd, with the group attached and the type1v2 IOMMU set, and the
//!   group fd; the VMM then gets the device fd from the group and maps DMA in the container;
//! - iommufd: the iommufd and the device cdev, already bound to it; the VMM allocates its
//!   IOAS and attaches the device.
//!
//! [`VmmFds::send`] and [`VmmFds::recv`] carry one device's fds and what the VMM needs to
//! use them (interface, group or device id, device name) in one `SCM_RIGHTS` message.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use plugboard_sysfs::{PciAddress, Sysfs};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::info;
use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1v2_IOMMU,
};

use crate::container::{ContainerError, DmaReplay};
use crate::device::{VfioDevice, VfioDeviceError};
use crate::group::GroupError;
use crate::ioctl;
use crate::iommufd::{CdevError, IommufdError};
use crate::mode::{self, Interface, Mode, Route};
use crate::node::open_node;
use crate::open::{OpenError, check_viable, explain_bind_refusal, name_blockers};

/// The fds a VMM needs for one device, opened and bound by a privileged helper.
#[derive(Debug)]
pub enum VmmFds {
    /// Legacy: a container (group attached, IOMMU set) and the group.
    Legacy {
        /// The container fd.
        container: OwnedFd,
        /// The group fd.
        group: OwnedFd,
        /// The group id.
        group_id: u32,
        /// The device name to ask the group for.
        device: String,
    },
    /// iommufd: the iommufd and the device cdev, bound to it.
    Iommufd {
        /// The iommufd.
        iommufd: OwnedFd,
        /// The device cdev.
        cdev: OwnedFd,
        /// The device id in the iommufd (from the bind).
        dev_id: u32,
        /// The device name.
        device: String,
    },
}

/// Why received fds could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FdsError {
    /// The socket call failed.
    #[error("passing VFIO fds over the socket failed")]
    Socket(#[source] io::Error),
    /// The message was not one [`VmmFds::send`] writes.
    #[error("the VFIO fd message is malformed: {0}")]
    Malformed(&'static str),
}

const MAGIC: &[u8; 8] = b"PBVFIO1\0";
const MAX_NAME: usize = 64;

impl VmmFds {
    /// The interface the fds belong to.
    pub fn interface(&self) -> Interface {
        match self {
            Self::Legacy { .. } => Interface::Legacy,
            Self::Iommufd { .. } => Interface::Iommufd,
        }
    }

    /// The device name.
    pub fn device(&self) -> &str {
        match self {
            Self::Legacy { device, .. } | Self::Iommufd { device, .. } => device,
        }
    }

    /// The two fds, in the order they are sent: container then group, or iommufd then cdev.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        match self {
            Self::Legacy {
                container, group, ..
            } => [container.as_fd(), group.as_fd()],
            Self::Iommufd { iommufd, cdev, .. } => [iommufd.as_fd(), cdev.as_fd()],
        }
    }

    /// Sends the fds and their description over `socket` in one message.
    pub fn send(&self, socket: &UnixStream) -> Result<(), FdsError> {
        let (kind, id) = match self {
            Self::Legacy { group_id, .. } => (0u8, *group_id),
            Self::Iommufd { dev_id, .. } => (1u8, *dev_id),
        };
        let name = self.device().as_bytes();
        if name.len() > MAX_NAME {
            return Err(FdsError::Malformed("device name longer than 64 bytes"));
        }
        let mut data = Vec::with_capacity(MAGIC.len() + 6 + name.len());
        data.extend_from_slice(MAGIC);
        data.push(kind);
        data.extend_from_slice(&id.to_le_bytes());
        data.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        data.extend_from_slice(name);
        let fds = self.fds();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(FdsError::Malformed("no room for two fds"));
        }
        let sent = rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&data)],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| FdsError::Socket(e.into()))?;
        if sent != data.len() {
            return Err(FdsError::Socket(io::Error::from(io::ErrorKind::WriteZero)));
        }
        Ok(())
    }

    /// Receives one message written by [`VmmFds::send`].
    pub fn recv(socket: &UnixStream) -> Result<Self, FdsError> {
        let mut data = [0u8; MAGIC.len() + 6 + MAX_NAME];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| FdsError::Socket(e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let data = data.get(..msg.bytes).ok_or(FdsError::Malformed("length"))?;
        let (magic, rest) = data
            .split_at_checked(MAGIC.len())
            .ok_or(FdsError::Malformed("too short"))?;
        if magic != MAGIC {
            return Err(FdsError::Malformed("wrong magic"));
        }
        let [kind, a, b, c, d, len, name @ ..] = rest else {
            return Err(FdsError::Malformed("too short"));
        };
        let id = u32::from_le_bytes([*a, *b, *c, *d]);
        if name.len() != usize::from(*len) {
            return Err(FdsError::Malformed("name length"));
        }
        let device = String::from_utf8(name.to_vec())
            .map_err(|_| FdsError::Malformed("name is not UTF-8"))?;
        let mut fds = fds.into_iter();
        let (Some(first), Some(second), None) = (fds.next(), fds.next(), fds.next()) else {
            return Err(FdsError::Malformed("expected exactly two fds"));
        };
        match kind {
            0 => Ok(Self::Legacy {
                container: first,
                group: second,
                group_id: id,
                device,
            }),
            1 => Ok(Self::Iommufd {
                iommufd: first,
                cdev: second,
                dev_id: id,
                device,
            }),
            _ => Err(FdsError::Malformed("unknown interface")),
        }
    }

    /// Builds the device from the fds (in the VMM). A legacy container keeps books of its
    /// DMA mappings ([`DmaReplay::On`]).
    pub fn into_device(self) -> Result<VfioDevice, VfioDeviceError> {
        self.into_device_with(DmaReplay::On)
    }

    /// [`VmmFds::into_device`] with the given [`DmaReplay`] for a legacy container (an
    /// iommufd IOAS has no such choice: it keeps its mappings while it exists).
    pub fn into_device_with(self, replay: DmaReplay) -> Result<VfioDevice, VfioDeviceError> {
        match self {
            Self::Legacy {
                container,
                group,
                group_id,
                device,
            } => VfioDevice::from_legacy_fds(container, group, group_id, &device, replay),
            Self::Iommufd {
                iommufd,
                cdev,
                device,
                ..
            } => VfioDevice::from_iommufd_fds(iommufd, cdev, &device),
        }
    }
}

/// Opens and binds PCI device `address` for a VMM, in the interface `mode` selects, and
/// returns the fds to hand over. The caller's copies can be dropped once sent.
pub fn open_for_vmm(sysfs: &Sysfs, address: PciAddress, mode: Mode) -> Result<VmmFds, OpenError> {
    let device = address.to_string();
    let route = mode::route(&device, mode, mode::pci_facts(sysfs, address)?)?;
    check_viable(sysfs, route.group(), &device)?;
    let fds = match route {
        Route::Legacy { group: group_id } => {
            let (container, group) =
                legacy_fds(sysfs.dev_root(), group_id).map_err(|err| match err {
                    LegacyError::Group(err) => OpenError::from(name_blockers(err, sysfs)),
                    LegacyError::Container(err) => OpenError::from(err),
                })?;
            VmmFds::Legacy {
                container,
                group,
                group_id,
                device,
            }
        }
        Route::Iommufd { group, cdev } => {
            let (iommufd, cdev, dev_id) = iommufd_fds(sysfs.dev_root(), &cdev, &device)
                .map_err(|err| explain_bind_refusal(err, sysfs, group))?;
            VmmFds::Iommufd {
                iommufd,
                cdev,
                dev_id,
                device,
            }
        }
    };
    info!(device = %fds.device(), interface = %fds.interface(), "opened VFIO fds for a VMM (closing them undoes it)");
    Ok(fds)
}

enum LegacyError {
    Container(ContainerError),
    Group(GroupError),
}

/// A container with group `group_id` attached and type1v2 set. No guard undoes the attach:
/// the VMM owns it from here, and closing the last copy of either fd undoes it.
fn legacy_fds(dev_root: &Path, group_id: u32) -> Result<(OwnedFd, OwnedFd), LegacyError> {
    let path = dev_root.join("vfio/vfio");
    let container_error = |what, source| {
        LegacyError::Container(ContainerError::Ioctl {
            path: path.clone(),
            what,
            source,
        })
    };
    let container = open_node(&path).map_err(|source| {
        LegacyError::Container(ContainerError::Open {
            path: path.clone(),
            source,
        })
    })?;
    let version = ioctl::get_api_version(container.as_fd())
        .map_err(|e| container_error("VFIO_GET_API_VERSION", e))?;
    if u32::try_from(version) != Ok(VFIO_API_VERSION) {
        return Err(LegacyError::Container(ContainerError::ApiVersion {
            path: path.clone(),
            found: version,
        }));
    }
    let group_path = dev_root.join("vfio").join(group_id.to_string());
    let group = open_node(&group_path).map_err(|source| {
        LegacyError::Group(GroupError::Open {
            group: group_id,
            path: group_path.clone(),
            source,
        })
    })?;
    let group_error = |what, source| {
        LegacyError::Group(GroupError::Ioctl {
            group: group_id,
            what,
            source,
        })
    };
    let flags =
        ioctl::group_status(group.as_fd()).map_err(|e| group_error("VFIO_GROUP_GET_STATUS", e))?;
    if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(LegacyError::Group(GroupError::NotViable {
            group: group_id,
            blockers: Vec::new(),
        }));
    }
    ioctl::group_set_container(group.as_fd(), container.as_fd())
        .map_err(|e| group_error("VFIO_GROUP_SET_CONTAINER", e))?;
    ioctl::set_iommu(container.as_fd(), VFIO_TYPE1v2_IOMMU)
        .map_err(|e| container_error("VFIO_SET_IOMMU(TYPE1v2)", e))?;
    Ok((container, group))
}

/// An iommufd and the device cdev bound to it.
fn iommufd_fds(
    dev_root: &Path,
    cdev_path: &Path,
    device: &str,
) -> Result<(OwnedFd, OwnedFd, u32), VfioDeviceError> {
    let iommu_path = dev_root.join("iommu");
    let iommufd = open_node(&iommu_path).map_err(|source| IommufdError::Open {
        path: iommu_path.clone(),
        source,
    })?;
    let cdev = open_node(cdev_path).map_err(|source| CdevError::Open {
        path: cdev_path.to_path_buf(),
        source,
    })?;
    let dev_id = ioctl::device_bind_iommufd(cdev.as_fd(), iommufd.as_fd()).map_err(|source| {
        CdevError::Ioctl {
            device: device.to_owned(),
            what: "VFIO_DEVICE_BIND_IOMMUFD",
            source,
        }
    })?;
    Ok((iommufd, cdev, dev_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn temp_fd() -> OwnedFd {
        tempfile::tempfile().unwrap().into()
    }

    #[test]
    fn fds_and_description_survive_the_socket() {
        let (a, b) = pair();
        let sent = VmmFds::Iommufd {
            iommufd: temp_fd(),
            cdev: temp_fd(),
            dev_id: 9,
            device: "0000:01:00.0".into(),
        };
        sent.send(&a).unwrap();
        let got = VmmFds::recv(&b).unwrap();
        let VmmFds::Iommufd { dev_id, device, .. } = &got else {
            panic!("{got:?}")
        };
        assert_eq!((*dev_id, device.as_str()), (9, "0000:01:00.0"));
        // The received fds are new descriptors for the same open files.
        use std::os::fd::AsRawFd;
        for (s, r) in sent.fds().iter().zip(got.fds()) {
            assert_ne!(s.as_raw_fd(), r.as_raw_fd());
            let s_stat = rustix::fs::fstat(s).unwrap();
            let r_stat = rustix::fs::fstat(r).unwrap();
            assert_eq!(
                (s_stat.st_dev, s_stat.st_ino),
                (r_stat.st_dev, r_stat.st_ino)
            );
        }

        let legacy = VmmFds::Legacy {
            container: temp_fd(),
            group: temp_fd(),
            group_id: 12,
            device: "0000:04:01.0".into(),
        };
        legacy.send(&a).unwrap();
        let got = VmmFds::recv(&b).unwrap();
        assert_eq!(got.interface(), Interface::Legacy);
        assert_eq!(got.device(), "0000:04:01.0");
    }

    #[test]
    fn a_message_without_fds_is_malformed() {
        let (a, b) = pair();
        use std::io::Write;
        (&a).write_all(b"PBVFIO1\0\0\x01\0\0\0\x00").unwrap();
        let err = VmmFds::recv(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the VFIO fd message is malformed: expected exactly two fds"
        );
        (&a).write_all(b"hello").unwrap();
        assert!(matches!(
            VmmFds::recv(&b),
            Err(FdsError::Malformed("too short"))
        ));
    }
}
