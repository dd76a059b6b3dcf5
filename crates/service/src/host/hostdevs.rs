//! The host-device operations, over plugboard-hostdev: list, prepare and release for an
//! owner, the single-device detach, reattach and reset, and recover.
//!
//! Who may do what is in `auth.rs`: preparing or releasing for `plugboard/<vm>` is the
//! VM owner's business (the VMs are the daemon's: a [`VmDirectory`] says who owns one);
//! any other owner, and every operation outside a VM, is root's.

use plugboard_hostdev::{
    BatchError, BatchOptions, DetachOutcome, DeviceRelease, HostDevice, HostdevManager, Listing,
    NodeDeviceError, Owner, PrepareError, ReattachOutcome, Recovered, ResetOutcome,
};
use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use super::{HostService, hostdev_error};
use crate::auth::Caller;
use crate::error::{ErrorClass, ServiceError};

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

/// Who owns the VMs that own host devices as `plugboard/<vm>`.
pub trait VmDirectory {
    /// The uid owning VM `vm`, when a VM by that name is registered.
    fn vm_owner(&self, vm: &str) -> Option<u32>;
}

/// No VMs: the CLI working without the daemon, which keeps them.
impl VmDirectory for () {
    fn vm_owner(&self, _vm: &str) -> Option<u32> {
        None
    }
}

/// What a prepare did: the owner, and every device it holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareAnswer {
    /// The owner, `DRIVER/DOMAIN`.
    pub owner: String,
    /// Every device this prepare took (PCI addresses and claims, as `plugboard hostdev ls`
    /// names them), the IOMMU group members a whole-group prepare took included.
    pub devices: Vec<String>,
}

/// What a release did, one result per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAnswer {
    /// The devices' results, in request order.
    pub released: Vec<DeviceRelease>,
}

impl ReleaseAnswer {
    /// The devices whose release did not happen: it failed, or the owner did not hold the
    /// device (a script must be able to tell that nothing it asked was done).
    #[must_use]
    pub fn failures(&self) -> Vec<&str> {
        self.released
            .iter()
            .filter(|r| !r.result.is_done())
            .map(|r| r.device.as_str())
            .collect()
    }
}

/// What recover did, one entry per pending operation it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverAnswer {
    /// The operations settled (or left alone, with why).
    pub recovered: Vec<Recovered>,
}

/// What a detach, reattach or reset did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeDeviceResult {
    /// Detached.
    Detach {
        /// The device.
        address: PciAddress,
        /// How.
        result: DetachOutcome,
    },
    /// Given back to a host driver (or left with none: see
    /// [`left_driverless`](Self::left_driverless)).
    Reattach {
        /// The device.
        address: PciAddress,
        /// How: the driver it is on now, or `driverless`.
        result: ReattachOutcome,
    },
    /// Reset.
    Reset {
        /// The device.
        address: PciAddress,
        /// How.
        result: ResetOutcome,
    },
}

impl NodeDeviceResult {
    /// True for a reattach that left the device with no driver: nothing on the host can
    /// use it, so the command did not do what it was asked (the CLI exits non-zero).
    #[must_use]
    pub fn left_driverless(&self) -> bool {
        matches!(self, Self::Reattach { result, .. } if result.is_driverless())
    }
}

impl HostService {
    /// Both PCI lists, the other kinds' claims, and pending operations.
    ///
    /// # Errors
    /// The registry cannot be opened or read.
    pub fn hostdevs(&self) -> Result<Listing, ServiceError> {
        self.hostdev()?
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
        vms: &dyn VmDirectory,
    ) -> Result<PrepareAnswer, ServiceError> {
        let (owner, specs) = check_owner(caller, request, vms, "prepare host devices for")?;
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
        let mut hostdev = self.hostdev()?;
        let before = held_by(&mut hostdev, &owner)?;
        hostdev
            .prepare(&owner, &specs, options)
            .map_err(|e| hostdev_error("prepare", batch_class(&e), e))?;
        tracing::info!(owner = %owner, devices = ?request.devices, "host devices prepared; release them to undo");
        let devices = held_by(&mut hostdev, &owner)?
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        Ok(PrepareAnswer {
            owner: owner.to_string(),
            devices,
        })
    }

    /// Releases devices of an owner, best effort, one result per device.
    ///
    /// # Errors
    /// Bad names, not allowed, the registry failing.
    pub fn hostdev_release(
        &self,
        caller: Caller,
        request: &HostdevRequest,
        vms: &dyn VmDirectory,
    ) -> Result<ReleaseAnswer, ServiceError> {
        let (owner, specs) = check_owner(caller, request, vms, "release host devices of")?;
        let released = self
            .hostdev()?
            .release(&owner, &specs)
            .map_err(|e| hostdev_error("release", ErrorClass::Internal, e))?;
        Ok(ReleaseAnswer { released })
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
            .hostdev()?
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
        let result = self
            .hostdev()?
            .reattach(address)
            .map_err(|e| hostdev_error("reattach", node_class(&e), e))?;
        Ok(NodeDeviceResult::Reattach { address, result })
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
            .hostdev()?
            .reset(address)
            .map_err(|e| hostdev_error("reset", node_class(&e), e))?;
        Ok(NodeDeviceResult::Reset { address, result })
    }

    /// Finishes or undoes interrupted operations (root).
    ///
    /// # Errors
    /// Not root, or the registry failing.
    pub fn hostdev_recover(&self, caller: Caller) -> Result<RecoverAnswer, ServiceError> {
        caller.may_change_host("recover host devices")?;
        let recovered = self
            .hostdev()?
            .recover()
            .map_err(|e| hostdev_error("recover", ErrorClass::Internal, e))?;
        Ok(RecoverAnswer { recovered })
    }
}

/// Every device `owner` holds, as `hostdev ls` names them: PCI addresses, then claims.
fn held_by(hostdev: &mut HostdevManager, owner: &Owner) -> Result<Vec<String>, ServiceError> {
    let listing = hostdev
        .list()
        .map_err(|e| hostdev_error("list", ErrorClass::Internal, e))?;
    let pci = listing
        .pci
        .into_iter()
        .filter(|r| r.owner.as_ref() == Some(owner))
        .map(|r| r.address);
    let claims = listing
        .claims
        .into_iter()
        .filter(|c| c.owner == *owner)
        .map(|c| format!("{}:{}", c.kind.as_str(), c.key));
    Ok(pci.chain(claims).collect())
}

/// The owner and devices of `request`, once `caller` may act for that owner.
fn check_owner(
    caller: Caller,
    request: &HostdevRequest,
    vms: &dyn VmDirectory,
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
        .then(|| vms.vm_owner(owner.domain()))
        .flatten();
    match vm_owner {
        Some(uid) => caller.may_change_vm(owner.domain(), uid, action)?,
        None => caller.may_change_host(&format!("{action} {owner}"))?,
    }
    Ok((owner, specs))
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
