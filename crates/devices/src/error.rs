//! The errors of the manager's operations.
//!
//! Callers match on these: "not found", "not attached", "still attached" and the exhausted
//! allocators are variants of their own. Every variant names the device.

use crate::drive_name::DriveNameError;
use crate::hypervisor::HypervisorError;
use crate::id::DeviceId;
use crate::index::IndexError;
use crate::kind::{DeviceIdentity, VfioSpecError, VhostUserSpecError};
use crate::scsi::GuestScsiAddressError;

/// Why a [`crate::DeviceManager`] operation did nothing.
///
/// Whatever the variant, the manager (counts, allocators) and the hypervisor's view are as
/// they were before the call, except [`DeviceError::PlugIncomplete`]: a plug the hypervisor
/// could not undo, which the manager records as needing cleanup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No device has this id (Kata's `ErrDeviceNotExist`).
    #[error("device {id} does not exist")]
    NotFound {
        /// The id asked for.
        id: DeviceId,
    },
    /// Detaching a device that is not attached (Kata's `ErrDeviceNotAttached`).
    #[error("device {id} is not attached")]
    NotAttached {
        /// The device.
        id: DeviceId,
    },
    /// Removing the last reference of an attached device (Kata's `ErrRemoveAttachedDevice`).
    #[error("device {id} is still attached {attachments} time(s); detach it before removing it")]
    StillAttached {
        /// The device.
        id: DeviceId,
        /// Its attach count.
        attachments: u32,
    },
    /// The attach count is at its maximum.
    #[error("device {id} is attached the maximum number of times")]
    TooManyAttachments {
        /// The device.
        id: DeviceId,
    },
    /// The reference count is at its maximum.
    #[error("device {id} is referenced the maximum number of times")]
    TooManyReferences {
        /// The device.
        id: DeviceId,
    },
    /// A request for an existing device (same identity) that differs from it.
    #[error("device {id} already exists for {identity} with a different specification")]
    Conflict {
        /// The existing device.
        id: DeviceId,
        /// The shared identity.
        identity: DeviceIdentity,
    },
    /// A read-write request for a block device plugged read-only (read-only and read-write
    /// users share a device otherwise: see [`crate::Sharing`]).
    #[error(
        "device {id} is plugged read-only; a read-write request cannot share it (ask for it read-only, or detach it first)"
    )]
    ReadOnly {
        /// The existing device.
        id: DeviceId,
    },
    /// A spec with an empty host path (identity, block path or socket).
    #[error("device {identity} has an empty host path")]
    EmptyPath {
        /// The request's identity.
        identity: DeviceIdentity,
    },
    /// A VFIO spec that cannot be plugged.
    #[error("invalid VFIO device for {identity}")]
    InvalidVfio {
        /// The request's identity.
        identity: DeviceIdentity,
        /// What is wrong.
        #[source]
        source: VfioSpecError,
    },
    /// A vhost-user spec that cannot be plugged.
    #[error("invalid vhost-user device for {identity}")]
    InvalidVhostUser {
        /// The request's identity.
        identity: DeviceIdentity,
        /// What is wrong.
        #[source]
        source: VhostUserSpecError,
    },
    /// Every block index is in use.
    #[error("no block index for device {id}")]
    BlockIndex {
        /// The device.
        id: DeviceId,
        /// The pool's answer.
        #[source]
        source: IndexError,
    },
    /// Every root port holds a device.
    #[error("no free PCIe root port for device {id}")]
    RootPort {
        /// The device.
        id: DeviceId,
        /// The pool's answer.
        #[source]
        source: IndexError,
    },
    /// The drive name of the device's index does not exist.
    #[error("no drive name for device {id}")]
    DriveName {
        /// The device.
        id: DeviceId,
        /// Why.
        #[source]
        source: DriveNameError,
    },
    /// The SCSI address of the device's index does not exist.
    #[error("no SCSI address for device {id}")]
    ScsiAddress {
        /// The device.
        id: DeviceId,
        /// Why.
        #[source]
        source: GuestScsiAddressError,
    },
    /// The hypervisor refused to plug the device.
    #[error("plugging device {id} failed")]
    Plug {
        /// The device.
        id: DeviceId,
        /// The hypervisor's error.
        #[source]
        source: HypervisorError,
    },
    /// The hypervisor failed to plug the device and could not undo all of it: the VM may
    /// still hold part of it. Not attached, but recorded as needing cleanup
    /// ([`crate::DeviceState::needs_cleanup`]), its block index and root ports still taken;
    /// [`crate::DeviceManager::clean_up`] or the next attach finishes the undo.
    #[error(
        "plugging device {id} failed and the VM may still hold part of it; it is recorded as needing cleanup"
    )]
    PlugIncomplete {
        /// The device.
        id: DeviceId,
        /// The hypervisor's error ([`HypervisorError::Incomplete`]).
        #[source]
        source: HypervisorError,
    },
    /// Removing what a failed plug left in the VM failed; the device still needs cleanup.
    #[error(
        "cleaning up what a failed plug of device {id} left in the VM failed; it still needs cleanup"
    )]
    Cleanup {
        /// The device.
        id: DeviceId,
        /// The hypervisor's error.
        #[source]
        source: HypervisorError,
    },
    /// Removing the last reference of a device whose failed plug is not cleaned up yet.
    #[error("device {id} needs cleanup of a failed plug before it can be removed")]
    NeedsCleanup {
        /// The device.
        id: DeviceId,
    },
    /// Removing the last reference of a cold-plugged device that the running VM could not
    /// take out ([`crate::DeviceState::resident`]): it stays, with its allocations, until the
    /// VM stops.
    #[error(
        "device {id} was cold-plugged and stays in the running VM until it stops; it cannot be removed before"
    )]
    StaysInVm {
        /// The device.
        id: DeviceId,
    },
    /// The hypervisor could not say what the guest sees of the device.
    #[error("cannot read what the guest sees of device {id}")]
    GuestView {
        /// The device.
        id: DeviceId,
        /// The hypervisor's error.
        #[source]
        source: HypervisorError,
    },
    /// The hypervisor refused to unplug the device; it stays attached.
    #[error("unplugging device {id} failed; it stays attached")]
    Unplug {
        /// The device.
        id: DeviceId,
        /// The hypervisor's error.
        #[source]
        source: HypervisorError,
    },
}
