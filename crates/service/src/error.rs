//! What can go wrong in the service, and which kind of failure each is.
//!
//! Every error carries an [`ErrorClass`]: whether the caller asked for something invalid
//! (bad input, not allowed, not found, in conflict with the current state) or the service
//! or a backend failed. The HTTP layer maps classes to status codes; the rule "bad input is
//! never a server error" lives here, in one `match`.

use std::error::Error as StdError;
use std::path::PathBuf;

use plugboard_devices::{DeviceError, DeviceId, HypervisorError, PersistError};
use plugboard_qemu::QemuError;

/// The kind of a failure, as a client must tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or names something impossible.
    BadRequest,
    /// The caller may not do this.
    Forbidden,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with the current state (in use, already there, busy).
    Conflict,
    /// A backend (QEMU, the kernel) refused or failed.
    Backend,
    /// The service itself failed (its database, an inconsistency).
    Internal,
}

impl ErrorClass {
    /// A short name: `bad-request`, `forbidden`, `not-found`, `conflict`, `backend`,
    /// `internal`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::Backend => "backend",
            Self::Internal => "internal",
        }
    }
}

/// Why a service operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is invalid; the message says what is wrong with it.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("uid {uid} may not {action}: {reason}")]
    Forbidden {
        /// The caller.
        uid: u32,
        /// What was asked.
        action: String,
        /// Why not.
        reason: String,
    },
    /// The request conflicts with the current state; the message says how.
    #[error("{0}")]
    Conflict(String),
    /// No VM by that name.
    #[error("no VM named {0:?} is registered")]
    NoSuchVm(String),
    /// A VM by that name exists.
    #[error("a VM named {0:?} is already registered")]
    VmExists(String),
    /// Another VM is registered with the same hypervisor endpoint.
    #[error("VM {vm:?} is already registered with {endpoint}")]
    EndpointInUse {
        /// The VM holding it.
        vm: String,
        /// The endpoint.
        endpoint: String,
    },
    /// No device with that id in the VM.
    #[error("VM {vm:?} has no device {id}")]
    NoSuchDevice {
        /// The VM.
        vm: String,
        /// The device.
        id: DeviceId,
    },
    /// The VM still has devices; detach them first.
    #[error("VM {vm:?} still has {devices} device(s); detach them first")]
    VmHasDevices {
        /// The VM.
        vm: String,
        /// How many.
        devices: usize,
    },
    /// The VM's hypervisor is not connected (it was not reachable when the service
    /// started).
    #[error("VM {vm:?} is not connected to its hypervisor: {reason}")]
    NotConnected {
        /// The VM.
        vm: String,
        /// Why.
        reason: String,
    },
    /// QEMU's QMP socket could not be taken over.
    #[error("cannot connect to QEMU of VM {vm:?} at {socket}")]
    Connect {
        /// The VM.
        vm: String,
        /// The QMP socket.
        socket: PathBuf,
        /// QEMU's error.
        #[source]
        source: Box<QemuError>,
    },
    /// A file opened for the caller could not be handed to the VM's hypervisor.
    #[error("VM {vm:?}: cannot hand {} to the hypervisor", path.display())]
    PassFile {
        /// The VM.
        vm: String,
        /// The path the caller named.
        path: PathBuf,
        /// QEMU's error.
        #[source]
        source: Box<QemuError>,
    },
    /// The device manager refused or failed.
    #[error("VM {vm:?}: device operation failed")]
    Device {
        /// The VM.
        vm: String,
        /// The manager's error.
        #[source]
        source: Box<DeviceError>,
    },
    /// Saving a just-attached device failed, and so did undoing the attach: the device
    /// stays attached and counted in the VM, but the saved state does not have it.
    #[error(
        "VM {vm:?}: device {id} was attached but saving it failed ({persist}), and undoing the attach failed too; it stays attached"
    )]
    AttachUndoFailed {
        /// The VM.
        vm: String,
        /// The device.
        id: DeviceId,
        /// Why saving failed, on one line.
        persist: String,
        /// Why the undo failed.
        #[source]
        undo: Box<DeviceError>,
    },
    /// A host-device (hostdev registry) operation failed.
    #[error("host device operation {op} failed")]
    Hostdev {
        /// The operation.
        op: &'static str,
        /// What kind of failure it was.
        class: ErrorClass,
        /// The hostdev error.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
    /// sysfs could not be read.
    #[error("cannot read the host's {what}")]
    Sysfs {
        /// What was read.
        what: &'static str,
        /// The error.
        #[source]
        source: plugboard_sysfs::SysfsError,
    },
    /// A PCI device the request names could not be read.
    #[error("cannot read PCI device {address}")]
    HostDevice {
        /// The device.
        address: plugboard_sysfs::PciAddress,
        /// Why.
        #[source]
        source: Box<plugboard_sysfs::SysfsError>,
    },
    /// A device node the request names could not be found or read (the sysfs error names
    /// the node and the path).
    #[error(transparent)]
    HostNode(Box<plugboard_sysfs::DevNodeError>),
    /// The VFIO interface asked for (the service's `vfio_mode`) is not one the kernel and
    /// the device offer (plugboard-vfio's error names the device and the missing node).
    #[error(transparent)]
    VfioMode(Box<plugboard_vfio::ModeError>),
    /// A VFIO device could not be opened (plugboard-vfio's error names the device).
    #[error(transparent)]
    VfioOpen(Box<plugboard_vfio::OpenError>),
    /// A VFIO device could not be closed cleanly.
    #[error(transparent)]
    VfioClose(Box<plugboard_vfio::VfioDeviceError>),
    /// The service's VM table in the state database failed.
    #[error("the service's VM table: {step} failed")]
    Store {
        /// The database file (or the state directory, when it could not be opened).
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The registry's error (naming the file), or the encoding error.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
    /// A VM's saved device state does not load or encode.
    #[error("saved device state of VM {vm:?}")]
    Persist {
        /// The VM.
        vm: String,
        /// The error.
        #[source]
        source: PersistError,
    },
}

impl ServiceError {
    /// The kind of failure.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::BadRequest(_) => ErrorClass::BadRequest,
            Self::Forbidden { .. } => ErrorClass::Forbidden,
            Self::NoSuchVm(_) | Self::NoSuchDevice { .. } => ErrorClass::NotFound,
            Self::Conflict(_)
            | Self::VmExists(_)
            | Self::EndpointInUse { .. }
            | Self::VmHasDevices { .. }
            | Self::NotConnected { .. } => ErrorClass::Conflict,
            Self::Connect { .. } | Self::PassFile { .. } => ErrorClass::Backend,
            Self::AttachUndoFailed { .. } => ErrorClass::Internal,
            Self::Device { source, .. } => device_class(source.as_ref()),
            Self::Hostdev { class, .. } => *class,
            Self::HostDevice { source, .. } => {
                if source.is_not_found() {
                    ErrorClass::NotFound
                } else {
                    ErrorClass::Internal
                }
            }
            Self::HostNode(_) => ErrorClass::NotFound,
            Self::VfioOpen(_) | Self::VfioClose(_) => ErrorClass::Backend,
            Self::VfioMode(e) => match e.as_ref() {
                plugboard_vfio::ModeError::Sysfs { .. } => ErrorClass::Internal,
                _ => ErrorClass::Conflict,
            },
            Self::Sysfs { .. } | Self::Store { .. } | Self::Persist { .. } => ErrorClass::Internal,
        }
    }

    /// A forbidden error.
    pub(crate) fn forbidden(
        uid: u32,
        action: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Forbidden {
            uid,
            action: action.into(),
            reason: reason.into(),
        }
    }

    /// The message and every cause, joined with `: ` (for one-line reports).
    #[must_use]
    pub fn chain(&self) -> String {
        plugboard_sysfs::error_chain(self)
    }
}

fn device_class(err: &DeviceError) -> ErrorClass {
    match err {
        DeviceError::NotFound { .. } => ErrorClass::NotFound,
        DeviceError::InvalidVfio { .. } | DeviceError::InvalidVhostUser { .. } => {
            ErrorClass::BadRequest
        }
        DeviceError::Plug { source, .. } | DeviceError::Unplug { source, .. } => match source {
            HypervisorError::Unsupported { .. } => ErrorClass::BadRequest,
            HypervisorError::NotRemovable { .. }
            | HypervisorError::AlreadyPlugged { .. }
            | HypervisorError::NotPlugged { .. } => ErrorClass::Conflict,
            HypervisorError::Backend { .. } | HypervisorError::Incomplete { .. } => {
                ErrorClass::Backend
            }
        },
        DeviceError::PlugIncomplete { .. } | DeviceError::Cleanup { .. } => ErrorClass::Backend,
        // Counts, allocators (an exhausted pool), conflicting specs: the VM's state.
        _ => ErrorClass::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_never_internal() {
        let e = ServiceError::BadRequest("no such file /x".into());
        assert_eq!(e.class(), ErrorClass::BadRequest);
        let e = ServiceError::Device {
            vm: "a".into(),
            source: Box::new(DeviceError::NotFound {
                id: DeviceId::from_raw(1),
            }),
        };
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert_eq!(
            e.chain(),
            "VM \"a\": device operation failed: device 0000000000000001 not found".replace(
                "device 0000000000000001 not found",
                &DeviceError::NotFound {
                    id: DeviceId::from_raw(1)
                }
                .to_string()
            )
        );
    }

    #[test]
    fn forbidden_names_uid_action_and_reason() {
        let e = ServiceError::forbidden(1000, "detach 0000:01:00.0", "only root may");
        assert_eq!(
            e.to_string(),
            "uid 1000 may not detach 0000:01:00.0: only root may"
        );
        assert_eq!(e.class(), ErrorClass::Forbidden);
    }
}
