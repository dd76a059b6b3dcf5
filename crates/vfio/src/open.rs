//! Opening devices by address, in the mode each one asks for: the front door for a VMM.
//!
//! A [`Vfio`] holds what a VM's devices share: at most one legacy [`Container`] and at most
//! one [`Iommufd`] (with its IOAS), each created on first use. [`Vfio::open`] reads sysfs,
//! chooses the interface ([`crate::select`]), checks that the device's IOMMU group is viable
//! (naming the member in the way), and calls the typed constructor for that interface.

use std::sync::Arc;

use plugboard_sysfs::{PciAddress, Sysfs, SysfsError};
use tracing::info;

use crate::container::{Container, ContainerError, DmaReplay};
use crate::device::{VfioDevice, VfioDeviceError};
use crate::group::{Blocker, GroupError};
use crate::iommufd::{CdevError, Iommufd, IommufdError};
use crate::mode::{self, Mode, ModeError, Route};

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The mode cannot be used for this device (not on vfio-pci, kernel lacks it…).
    #[error(transparent)]
    Mode(#[from] ModeError),
    /// The device could not be opened through the chosen interface.
    #[error(transparent)]
    Device(#[from] VfioDeviceError),
    /// Reading the device's IOMMU group from sysfs failed.
    #[error("{device}: cannot read its IOMMU group from sysfs")]
    Sysfs {
        /// The device.
        device: String,
        /// What failed.
        #[source]
        source: SysfsError,
    },
}

impl OpenError {
    /// The group and the members in the way, when the failure is a non-viable group.
    pub fn not_viable(&self) -> Option<(u32, &[Blocker])> {
        match self {
            Self::Device(VfioDeviceError::Group(GroupError::NotViable { group, blockers })) => {
                Some((*group, blockers.as_slice()))
            }
            _ => None,
        }
    }
}

impl From<GroupError> for OpenError {
    fn from(err: GroupError) -> Self {
        Self::Device(VfioDeviceError::Group(err))
    }
}

impl From<ContainerError> for OpenError {
    fn from(err: ContainerError) -> Self {
        Self::Device(VfioDeviceError::Container(err))
    }
}

impl From<IommufdError> for OpenError {
    fn from(err: IommufdError) -> Self {
        Self::Device(VfioDeviceError::Iommufd(err))
    }
}

/// The VFIO context of one VM: its address spaces, and device opening by mode.
#[derive(Debug)]
pub struct Vfio {
    sysfs: Sysfs,
    replay: DmaReplay,
    container: Option<Arc<Container>>,
    iommufd: Option<Arc<Iommufd>>,
}

impl Vfio {
    /// A context reading `sysfs` and opening nodes under its `/dev` root.
    pub fn new(sysfs: Sysfs) -> Self {
        Self {
            sysfs,
            replay: DmaReplay::On,
            container: None,
            iommufd: None,
        }
    }

    /// What the legacy container, when this context opens it, does about the mappings the
    /// kernel drops with its last group (default [`DmaReplay::On`]).
    #[must_use]
    pub fn with_dma_replay(mut self, replay: DmaReplay) -> Self {
        self.replay = replay;
        self
    }

    /// The legacy container, once a device has been opened through it.
    pub fn container(&self) -> Option<&Arc<Container>> {
        self.container.as_ref()
    }

    /// The iommufd, once a device has been opened through it.
    pub fn iommufd(&self) -> Option<&Arc<Iommufd>> {
        self.iommufd.as_ref()
    }

    /// The container, opened on first use.
    pub fn legacy_container(&mut self) -> Result<Arc<Container>, ContainerError> {
        if let Some(container) = &self.container {
            return Ok(Arc::clone(container));
        }
        let container = Container::open_with(self.sysfs.dev_root(), self.replay)?;
        self.container = Some(Arc::clone(&container));
        Ok(container)
    }

    /// The iommufd and its IOAS, opened on first use.
    pub fn shared_iommufd(&mut self) -> Result<Arc<Iommufd>, IommufdError> {
        if let Some(iommufd) = &self.iommufd {
            return Ok(Arc::clone(iommufd));
        }
        let iommufd = Iommufd::open(self.sysfs.dev_root())?;
        self.iommufd = Some(Arc::clone(&iommufd));
        Ok(iommufd)
    }

    /// Opens PCI device `address` through the interface `mode` selects.
    pub fn open(&mut self, address: PciAddress, mode: Mode) -> Result<VfioDevice, OpenError> {
        let name = address.to_string();
        let route = mode::route(&name, mode, mode::pci_facts(&self.sysfs, address)?)?;
        let group = route.group();
        check_viable(&self.sysfs, group, &name)?;
        info!(device = %name, %mode, interface = %route.interface(), group, "opening VFIO device");
        let device = match route {
            Route::Legacy { group } => {
                let container = self.legacy_container()?;
                let lease = container
                    .attach_group(group)
                    .map_err(|err| name_blockers(err, &self.sysfs))?;
                VfioDevice::open_in_group(lease, &name)?
            }
            Route::Iommufd { group, cdev } => {
                let iommufd = self.shared_iommufd()?;
                VfioDevice::open_cdev(&iommufd, &cdev, &name)
                    .map_err(|err| explain_bind_refusal(err, &self.sysfs, group))?
            }
        };
        Ok(device)
    }

    /// Opens mediated device `uuid` (legacy only).
    pub fn open_mdev(&mut self, uuid: &str, mode: Mode) -> Result<VfioDevice, OpenError> {
        let group = mode::route(uuid, mode, mode::mdev_facts(&self.sysfs, uuid)?)?.group();
        let container = self.legacy_container()?;
        let lease = container
            .attach_group(group)
            .map_err(|err| name_blockers(err, &self.sysfs))?;
        Ok(VfioDevice::open_in_group(lease, uuid)?)
    }
}

/// Fails with [`GroupError::NotViable`], naming the blockers, when sysfs shows an endpoint
/// of `group` on a host driver. The kernel checks again when the group or cdev is used;
/// this check comes first so that both interfaces fail the same way, before any fd is open.
pub(crate) fn check_viable(sysfs: &Sysfs, group: u32, device: &str) -> Result<(), OpenError> {
    let group_info = sysfs
        .iommu_group(group)
        .map_err(|source| OpenError::Sysfs {
            device: device.to_owned(),
            source,
        })?;
    let blockers = blockers_of(&group_info);
    if blockers.is_empty() {
        Ok(())
    } else {
        Err(GroupError::NotViable { group, blockers }.into())
    }
}

fn blockers_of(group: &plugboard_sysfs::IommuGroup) -> Vec<Blocker> {
    group
        .blockers()
        .map(|member| Blocker {
            device: member.address.to_string(),
            driver: member.driver.clone().unwrap_or_default(),
        })
        .collect()
}

/// The kernel refuses to bind a cdev with EPERM while another member of its group is on a
/// host driver (that driver holds the group's DMA ownership). When sysfs now shows such a
/// member (it was bound after [`check_viable`] looked), say so as a non-viable group.
pub(crate) fn explain_bind_refusal(err: VfioDeviceError, sysfs: &Sysfs, group: u32) -> OpenError {
    let refused = matches!(&err, VfioDeviceError::Cdev(CdevError::Ioctl { source, .. })
        if source.raw_os_error() == Some(libc::EPERM));
    if refused
        && let Ok(info) = sysfs.iommu_group(group)
        && !info.is_viable()
    {
        return GroupError::NotViable {
            group,
            blockers: blockers_of(&info),
        }
        .into();
    }
    err.into()
}

/// Fills in the blockers of a kernel "not viable" answer from sysfs.
pub(crate) fn name_blockers(err: GroupError, sysfs: &Sysfs) -> GroupError {
    match err {
        GroupError::NotViable { group, blockers } if blockers.is_empty() => {
            let blockers = sysfs
                .iommu_group(group)
                .map(|g| blockers_of(&g))
                .unwrap_or_default();
            GroupError::NotViable { group, blockers }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::{FakeKernel, PciSpec};

    use super::*;

    fn nic(address: &str) -> PciSpec {
        PciSpec::new(address, 0x8086, 0x10d3)
            .class(0x020000)
            .parent("0000:00:1e.0")
            .iommu_group(5)
            .driver("e1000e")
    }

    fn two_nics_behind_a_bridge() -> FakeKernel {
        FakeKernel::builder()
            .pci(PciSpec::bridge("0000:00:1e.0").iommu_group(5))
            .pci(nic("0000:01:01.0"))
            .pci(nic("0000:01:02.0"))
            .build()
            .unwrap()
    }

    #[test]
    fn a_non_viable_group_names_the_member_in_the_way_in_both_modes() {
        let kernel = two_nics_behind_a_bridge();
        let sysfs = kernel.sysfs();
        let first: PciAddress = "01:01.0".parse().unwrap();
        sysfs.pci_device(first).unwrap().bind("vfio-pci").unwrap();
        let mut vfio = Vfio::new(sysfs);
        for mode in [Mode::Legacy, Mode::Iommufd, Mode::Auto] {
            let err = vfio.open(first, mode).unwrap_err();
            let (group, blockers) = err.not_viable().unwrap_or_else(|| panic!("{mode}: {err}"));
            assert_eq!(group, 5);
            assert_eq!(
                blockers,
                [Blocker {
                    device: "0000:01:02.0".into(),
                    driver: "e1000e".into()
                }]
            );
            assert_eq!(
                err.to_string(),
                "IOMMU group 5 is not viable: 0000:01:02.0 (bound to e1000e) must be bound to vfio-pci or unbound first"
            );
        }
        assert!(
            vfio.container().is_none() && vfio.iommufd().is_none(),
            "nothing was opened"
        );
    }

    #[test]
    fn a_cdev_bind_refused_with_eperm_is_explained_by_the_group() {
        let kernel = two_nics_behind_a_bridge();
        let sysfs = kernel.sysfs();
        let refusal = || {
            VfioDeviceError::Cdev(CdevError::Ioctl {
                device: "0000:01:01.0".into(),
                what: "VFIO_DEVICE_BIND_IOMMUFD",
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            })
        };
        // Both NICs on e1000e: the group is not viable, so EPERM is explained.
        let err = explain_bind_refusal(refusal(), &sysfs, 5);
        let (group, blockers) = err.not_viable().expect("explained");
        assert_eq!((group, blockers.len()), (5, 2));
        // Once both are on vfio-pci, EPERM has another cause and is passed on as it is.
        for bdf in ["01:01.0", "01:02.0"] {
            sysfs
                .pci_device(bdf.parse().unwrap())
                .unwrap()
                .bind("vfio-pci")
                .unwrap();
        }
        let err = explain_bind_refusal(refusal(), &sysfs, 5);
        assert!(err.not_viable().is_none());
        assert!(
            err.to_string().ends_with("VFIO_DEVICE_BIND_IOMMUFD failed"),
            "{err}"
        );
    }

    #[test]
    fn a_device_on_a_host_driver_is_refused_before_any_node_is_opened() {
        let kernel = two_nics_behind_a_bridge();
        let mut vfio = Vfio::new(kernel.sysfs());
        let err = vfio
            .open("01:02.0".parse().unwrap(), Mode::Legacy)
            .unwrap_err();
        assert!(
            matches!(err, OpenError::Mode(ModeError::NotVfio { .. })),
            "{err:?}"
        );
        assert!(vfio.container().is_none());
    }

    #[test]
    fn the_fake_kernels_nodes_are_not_vfio_so_opening_fails_with_errno() {
        // The fake kernel's /dev nodes are plain files: everything up to the first ioctl
        // runs, and the failure says which request on which node, with errno kept.
        let kernel = two_nics_behind_a_bridge();
        let sysfs = kernel.sysfs();
        for bdf in ["01:01.0", "01:02.0"] {
            sysfs
                .pci_device(bdf.parse().unwrap())
                .unwrap()
                .bind("vfio-pci")
                .unwrap();
        }
        let mut vfio = Vfio::new(sysfs);
        let err = vfio
            .open("01:01.0".parse().unwrap(), Mode::Legacy)
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("vfio/vfio: VFIO_GET_API_VERSION failed"),
            "{err}"
        );
        let err = vfio
            .open("01:01.0".parse().unwrap(), Mode::Iommufd)
            .unwrap_err();
        assert!(
            err.to_string().ends_with("/iommu: IOMMU_IOAS_ALLOC failed"),
            "{err}"
        );
    }
}
