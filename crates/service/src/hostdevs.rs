//! The host-device operations of the service, over plugboard-hostdev: list, prepare and
//! release for an owner, and the single-device detach, reattach and reset.
//!
//! Who may do what is in `auth.rs`: preparing or releasing for `plugboard/<vm>` is the
//! VM owner's business; any other owner, and every operation outside a VM, is root's.

use plugboard_hostdev::{
    BatchError, BatchOptions, DetachOutcome, DeviceRelease, HostDevice, Listing, NodeDeviceError,
    Owner, PrepareError, Recovered, ResetOutcome,
};
use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ErrorClass, ServiceError};
use crate::service::{Service, hostdev_error};

/// The hostdev owner driver under which the service's VMs own host devices.
pub const OWNER_DRIVER: &str = "plugboard";

/// A prepare or release request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostdevRequest {
    /// The owner: `DRIVER/DOMAIN`; `plugboard/<vm>` for a VM registered here.
    pub owner: String,
    /// The devices, as `plugboard hostdev` names them (`0000:01:00.0`, `usb:1/4`, …).
    pub devices: Vec<String>,
    /// Prepare: detach from the host driver (libvirt `managed='yes'`; default true).
    #[serde(default = "yes")]
    pub managed: bool,
    /// Prepare: take every endpoint of each device's IOMMU group.
    #[serde(default)]
    pub whole_group: bool,
    /// Prepare: SCSI devices may be shared.
    #[serde(default)]
    pub shareable: bool,
}

const fn yes() -> bool {
    true
}

/// What a detach, reattach or reset did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum NodeDeviceResult {
    /// Detached.
    Detach {
        /// The device.
        address: PciAddress,
        /// How.
        result: DetachOutcome,
    },
    /// Given back to a host driver.
    Reattach {
        /// The device.
        address: PciAddress,
        /// The driver it is on now.
        driver: Option<String>,
    },
    /// Reset.
    Reset {
        /// The device.
        address: PciAddress,
        /// How.
        result: ResetOutcome,
    },
}

impl Service {
    /// Both PCI lists, the other kinds' claims, and pending operations.
    ///
    /// # Errors
    /// The registry fails.
    pub fn hostdevs(&self) -> Result<Listing, ServiceError> {
        self.hostdev()
            .list()
            .map_err(|e| hostdev_error("list", ErrorClass::Internal, e))
    }

    /// Prepares devices for an owner, all or nothing.
    ///
    /// # Errors
    /// Bad names, not allowed, or the hostdev refusal (in use, not viable, …).
    pub fn hostdev_prepare(
        &self,
        caller: Caller,
        request: &HostdevRequest,
    ) -> Result<(), ServiceError> {
        let (owner, specs) = self.check_owner(caller, request, "prepare host devices for")?;
        if request.managed {
            caller.may_take_from_host(&format!(
                "take {} from its host driver (managed prepare)",
                request.devices.join(", ")
            ))?;
        }
        let options = BatchOptions {
            managed: request.managed,
            whole_group: request.whole_group,
            shareable: request.shareable,
        };
        self.hostdev()
            .prepare(&owner, &specs, options)
            .map_err(|e| hostdev_error("prepare", batch_class(&e), e))?;
        tracing::info!(owner = %owner, devices = ?request.devices, "host devices prepared; release them to undo");
        Ok(())
    }

    /// Releases devices of an owner, best effort, one result per device.
    ///
    /// # Errors
    /// Bad names, not allowed, the registry failing.
    pub fn hostdev_release(
        &self,
        caller: Caller,
        request: &HostdevRequest,
    ) -> Result<Vec<DeviceRelease>, ServiceError> {
        let (owner, specs) = self.check_owner(caller, request, "release host devices of")?;
        self.hostdev()
            .release(&owner, &specs)
            .map_err(|e| hostdev_error("release", ErrorClass::Internal, e))
    }

    /// Detaches a PCI device from its host driver onto vfio-pci, outside any VM (root).
    ///
    /// # Errors
    /// Not root, or the hostdev refusal.
    pub fn hostdev_detach(
        &self,
        caller: Caller,
        address: PciAddress,
    ) -> Result<NodeDeviceResult, ServiceError> {
        caller.may_change_host(&format!("detach PCI device {address}"))?;
        let result = self
            .hostdev()
            .detach(address)
            .map_err(|e| hostdev_error("detach", node_class(&e), e))?;
        Ok(NodeDeviceResult::Detach { address, result })
    }

    /// Gives an unused PCI device back to its host driver (root).
    ///
    /// # Errors
    /// Not root, or the hostdev refusal.
    pub fn hostdev_reattach(
        &self,
        caller: Caller,
        address: PciAddress,
    ) -> Result<NodeDeviceResult, ServiceError> {
        caller.may_change_host(&format!("reattach PCI device {address}"))?;
        let driver = self
            .hostdev()
            .reattach(address)
            .map_err(|e| hostdev_error("reattach", node_class(&e), e))?;
        Ok(NodeDeviceResult::Reattach { address, driver })
    }

    /// Resets an unused PCI device (root).
    ///
    /// # Errors
    /// Not root, or the hostdev refusal.
    pub fn hostdev_reset(
        &self,
        caller: Caller,
        address: PciAddress,
    ) -> Result<NodeDeviceResult, ServiceError> {
        caller.may_change_host(&format!("reset PCI device {address}"))?;
        let result = self
            .hostdev()
            .reset(address)
            .map_err(|e| hostdev_error("reset", node_class(&e), e))?;
        Ok(NodeDeviceResult::Reset { address, result })
    }

    /// Finishes or undoes interrupted operations (root).
    ///
    /// # Errors
    /// Not root, or the registry failing.
    pub fn hostdev_recover(&self, caller: Caller) -> Result<Vec<Recovered>, ServiceError> {
        caller.may_change_host("recover host devices")?;
        self.hostdev()
            .recover()
            .map_err(|e| hostdev_error("recover", ErrorClass::Internal, e))
    }

    fn check_owner(
        &self,
        caller: Caller,
        request: &HostdevRequest,
        action: &str,
    ) -> Result<(Owner, Vec<HostDevice>), ServiceError> {
        let owner: Owner = request
            .owner
            .parse()
            .map_err(|e| ServiceError::BadRequest(format!("owner: {e}")))?;
        if request.devices.is_empty() {
            return Err(ServiceError::BadRequest(
                "devices: the list is empty".into(),
            ));
        }
        let specs = request
            .devices
            .iter()
            .map(|d| {
                d.parse::<HostDevice>()
                    .map_err(|e| ServiceError::BadRequest(format!("device {d:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vm_owner = (owner.driver() == OWNER_DRIVER)
            .then(|| self.vm(owner.domain()).ok())
            .flatten()
            .map(|vm| vm.record.owner_uid);
        match vm_owner {
            Some(uid) => caller.may_change_vm(owner.domain(), uid, action)?,
            None => caller.may_change_host(&format!("{action} {owner}"))?,
        }
        Ok((owner, specs))
    }
}

fn prepare_class(e: &PrepareError) -> ErrorClass {
    match e {
        PrepareError::Device(d) if d.is_not_found() => ErrorClass::NotFound,
        PrepareError::Device(_) => ErrorClass::BadRequest,
        PrepareError::Bind { .. } => ErrorClass::Backend,
        PrepareError::Registry(_) => ErrorClass::Internal,
        _ => ErrorClass::Conflict,
    }
}

pub(crate) fn batch_class(e: &BatchError) -> ErrorClass {
    match e {
        BatchError::Pci(p) => prepare_class(p),
        BatchError::ManagedScsi(_) => ErrorClass::BadRequest,
        BatchError::Registry(_) => ErrorClass::Internal,
        _ => ErrorClass::Conflict,
    }
}

fn node_class(e: &NodeDeviceError) -> ErrorClass {
    match e {
        NodeDeviceError::Device(d) if d.is_not_found() => ErrorClass::NotFound,
        NodeDeviceError::Device(_) => ErrorClass::BadRequest,
        NodeDeviceError::Kernel { .. } => ErrorClass::Backend,
        NodeDeviceError::Registry(_) => ErrorClass::Internal,
        _ => ErrorClass::Conflict,
    }
}
