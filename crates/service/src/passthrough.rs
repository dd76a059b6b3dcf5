//! PCI passthrough through the service: the hostdev registry and the VM's device manager
//! in one operation.
//!
//! Attaching a host PCI device prepares it in the hostdev registry for the owner
//! `plugboard/<vm>` (for root, managed: detached from its host driver onto vfio-pci; for
//! anyone else, unmanaged: root must have detached it first; its IOMMU group checked
//! either way), then describes it as a VFIO group device from sysfs and attaches it.
//! If the attach fails, the device is released again. Detaching releases it after the
//! VM has let it go, which gives it back to its host driver.

use plugboard_devices::{
    DeviceIdentity, DeviceKind, DeviceSpec, HostFunction, PlugMode, VfioBackend, VfioFunction,
    VfioSpec,
};
use plugboard_hostdev::{BatchOptions, HostDevice};
use plugboard_sysfs::{DriverKind, PciAddress, Sysfs};
use plugboard_vfio::{Interface, Mode};

use crate::auth::Caller;
use crate::error::ServiceError;
use crate::held::owner_of;
use crate::host::{batch_class, hostdev_error};
use crate::service::Service;

impl Service {
    /// Prepares `address` (and, with `whole_group`, every endpoint of its IOMMU group) for
    /// `vm` and returns the VFIO spec that passes them through.
    ///
    /// `managed` (root's callers only) takes the devices from their host drivers and gives
    /// them back on release; otherwise they must already be detached (or found on vfio-pci)
    /// and stay detached after release.
    pub(crate) fn prepare_passthrough(
        &self,
        vm: &str,
        address: PciAddress,
        whole_group: bool,
        managed: bool,
    ) -> Result<DeviceSpec, ServiceError> {
        let owner = owner_of(vm)?;
        let options = BatchOptions {
            managed,
            whole_group,
            shareable: false,
        };
        self.hostdev()?
            .prepare(&owner, &[HostDevice::Pci(address)], options)
            .map_err(|e| hostdev_error("prepare", batch_class(&e), e))?;
        match vfio_spec(
            self.host.sysfs(),
            address,
            whole_group,
            self.config.vfio_mode,
        ) {
            Ok(spec) => Ok(spec),
            Err(e) => {
                // Everything this prepare took goes back: the whole group when asked for.
                let taken = if whole_group {
                    self.group_endpoints(address)
                } else {
                    vec![address]
                };
                self.release_passthrough(vm, &taken);
                Err(e)
            }
        }
    }

    /// Refuses, as an authorization matter, a non-root caller's passthrough of a device
    /// that is still on a host driver. Unreadable or missing devices are left to hostdev's
    /// prepare, which names them.
    pub(crate) fn refuse_if_on_host_driver(
        &self,
        caller: Caller,
        address: PciAddress,
    ) -> Result<(), ServiceError> {
        let Ok(device) = self.host.sysfs().pci_device(address) else {
            return Ok(());
        };
        if let (Ok(Some(driver)), Ok(DriverKind::Host | DriverKind::Stub)) =
            (device.driver(), device.driver_kind())
        {
            return caller.may_take_from_host(&format!(
                "take PCI device {address} from its host driver {driver}"
            ));
        }
        Ok(())
    }

    /// The IOMMU group of `address` as sysfs shows it; `None` when it cannot be read (the
    /// prepare that follows names what is wrong).
    pub(crate) fn iommu_group_of(&self, address: PciAddress) -> Option<u32> {
        self.host
            .sysfs()
            .pci_device(address)
            .ok()?
            .iommu_group()
            .ok()
            .flatten()
    }

    /// The endpoints of `address`'s IOMMU group (bridges left out, as a whole-group prepare
    /// leaves them); just `address` when the group cannot be read.
    fn group_endpoints(&self, address: PciAddress) -> Vec<PciAddress> {
        let sysfs = self.host.sysfs();
        self.iommu_group_of(address)
            .and_then(|g| sysfs.iommu_group(g).ok())
            .map_or_else(
                || vec![address],
                |g| {
                    g.members
                        .iter()
                        .filter(|m| !m.bridge)
                        .map(|m| m.address)
                        .collect()
                },
            )
    }

    /// Releases host PCI functions of `vm`, logging what could not be given back.
    pub(crate) fn release_passthrough(&self, vm: &str, functions: &[PciAddress]) {
        if functions.is_empty() {
            return;
        }
        let Ok(owner) = owner_of(vm) else { return };
        let specs: Vec<HostDevice> = functions.iter().map(|a| HostDevice::Pci(*a)).collect();
        let released = self.hostdev().and_then(|mut hostdev| {
            hostdev
                .release(&owner, &specs)
                .map_err(|e| hostdev_error("release", crate::ErrorClass::Internal, e))
        });
        match released {
            Ok(results) => {
                for r in results {
                    tracing::info!(vm, device = r.device, result = %r.result, detail = ?r.detail, "host device released");
                }
            }
            Err(e) => {
                tracing::error!(vm, devices = ?functions, error = %e, "cannot release host devices; run `plugboard hostdev release` to retry");
            }
        }
    }
}

/// The VFIO spec of `address` (or its whole group), read from sysfs after prepare, in the
/// interface `mode` chooses for `address` (`auto`: the cdev with iommufd when the kernel
/// and the device offer it, else the legacy group).
fn vfio_spec(
    sysfs: &Sysfs,
    address: PciAddress,
    whole_group: bool,
    mode: Mode,
) -> Result<DeviceSpec, ServiceError> {
    let read = |what: &'static str| move |source| ServiceError::Sysfs { what, source };
    let device = sysfs.pci_device(address).map_err(read("a PCI device"))?;
    let group = device
        .iommu_group()
        .map_err(read("an IOMMU group"))?
        .ok_or_else(|| {
            ServiceError::BadRequest(format!(
                "PCI device {address} has no IOMMU group (is the IOMMU on?)"
            ))
        })?;
    let addresses: Vec<PciAddress> = if whole_group {
        let g = sysfs.iommu_group(group).map_err(read("an IOMMU group"))?;
        g.members
            .iter()
            .filter(|m| !m.bridge)
            .map(|m| m.address)
            .collect()
    } else {
        vec![address]
    };
    let mut functions = Vec::with_capacity(addresses.len());
    for a in addresses {
        let d = sysfs.pci_device(a).map_err(read("a PCI device"))?;
        functions.push(VfioFunction {
            host: HostFunction::Pci(a),
            sysfs_path: d.path().to_path_buf(),
            class: d.class().ok().map(plugboard_sysfs::PciClass::code),
            is_pcie: d.is_pcie().map_err(read("a PCI device"))?,
            large_bar: d.has_large_bar().map_err(read("a PCI device"))?,
        });
    }
    let backend = match plugboard_vfio::select(sysfs, address, mode)
        .map_err(|e| ServiceError::VfioMode(Box::new(e)))?
    {
        Interface::Legacy => VfioBackend::Group { group },
        Interface::Iommufd => VfioBackend::Cdev {
            index: cdev_index(&device)?,
        },
    };
    tracing::debug!(device = %address, %mode, %backend, "VFIO interface chosen");
    Ok(DeviceSpec {
        identity: DeviceIdentity::IommuGroup(group),
        mode: PlugMode::Hot,
        kind: DeviceKind::Vfio(VfioSpec { backend, functions }),
    })
}

/// `N` of the device's cdev `vfioN`, which [`plugboard_vfio::select`] found when it chose
/// iommufd.
fn cdev_index(device: &plugboard_sysfs::PciDevice) -> Result<u32, ServiceError> {
    let name = device
        .vfio_dev()
        .map_err(|source| ServiceError::Sysfs {
            what: "a VFIO device cdev",
            source,
        })?
        .unwrap_or_default();
    name.strip_prefix("vfio")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            ServiceError::Conflict(format!(
                "PCI device {}: its VFIO cdev {name:?} went away or is not named vfioN",
                device.address()
            ))
        })
}
