//! A registered VM: its record (what is stored), its link to the hypervisor, and the lock
//! that orders its device changes.
//!
//! Changes to one VM's devices are serialized by [`Vm::ops`]: a change, then the save of
//! the manager's whole state, happen under it, so the stored state always follows the
//! order of the changes and never holds a half-done plug. QEMU takes one QMP command at a
//! time anyway, so this costs no throughput; other VMs and every read go on in parallel.

use std::sync::{Mutex, MutexGuard, PoisonError};

use plugboard_devices::{DeviceId, DeviceManager, DeviceState, ManagerConfig, SavedState};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Endpoint};
use crate::error::ServiceError;

/// The longest VM name.
pub const MAX_VM_NAME_LEN: usize = 64;

/// What is stored about a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's name (unique on the host).
    pub name: String,
    /// The uid that registered it: its owner.
    pub owner_uid: u32,
    /// How to reach its hypervisor.
    pub endpoint: Endpoint,
    /// The root ports devices may take, fixed at registration (the free ports then), so a
    /// restarted service maps the manager's port numbers onto the same ports.
    pub root_ports: Vec<String>,
    /// Drives the VM had before ours (its root disk is `vda`): the offset of drive names.
    pub name_offset: u32,
}

impl VmRecord {
    /// The device manager settings of this VM.
    #[must_use]
    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            root_ports: u32::try_from(self.root_ports.len()).unwrap_or(u32::MAX),
            name_offset: self.name_offset,
        }
    }
}

/// A request to register a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVm {
    /// The VM's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
    pub name: String,
    /// How to reach its hypervisor.
    pub endpoint: Endpoint,
    /// Drives the VM already has (default 0).
    #[serde(default)]
    pub name_offset: u32,
}

/// A VM as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The stored record.
    #[serde(flatten)]
    pub record: VmRecord,
    /// Whether the service holds a session with its hypervisor.
    pub connected: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its devices.
    pub devices: usize,
    /// Of which attached.
    pub attached: usize,
}

/// The hypervisor side of a VM.
#[derive(Debug)]
pub(crate) enum Link {
    /// Connected: a live device manager.
    Connected(DeviceManager<Backend>),
    /// Not reachable when the service started; the saved state is kept as it was.
    Disconnected {
        /// The stored devices.
        saved: Option<SavedState>,
        /// Why it is not connected.
        reason: String,
    },
}

/// A registered VM.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) record: VmRecord,
    pub(crate) link: Link,
    ops: Mutex<()>,
}

impl Vm {
    pub(crate) fn new(record: VmRecord, link: Link) -> Self {
        Self {
            record,
            link,
            ops: Mutex::new(()),
        }
    }

    /// Takes the VM's change lock.
    pub(crate) fn lock_ops(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing inconsistent.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device manager, or `NotConnected`.
    pub(crate) fn manager(&self) -> Result<&DeviceManager<Backend>, ServiceError> {
        match &self.link {
            Link::Connected(m) => Ok(m),
            Link::Disconnected { reason, .. } => Err(ServiceError::NotConnected {
                vm: self.record.name.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// The devices, from the manager or the stored state.
    pub(crate) fn devices(&self) -> Vec<DeviceState> {
        match &self.link {
            Link::Connected(m) => m.devices(),
            Link::Disconnected { saved, .. } => saved
                .as_ref()
                .map(|s| s.devices.clone())
                .unwrap_or_default(),
        }
    }

    /// The listing view.
    pub(crate) fn info(&self) -> VmInfo {
        let devices = self.devices();
        let (connected, reason) = match &self.link {
            Link::Connected(_) => (true, None),
            Link::Disconnected { reason, .. } => (false, Some(reason.clone())),
        };
        VmInfo {
            record: self.record.clone(),
            connected,
            reason,
            attached: devices.iter().filter(|d| !d.attachments.is_zero()).count(),
            devices: devices.len(),
        }
    }
}

/// Checks a VM name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (it is
/// used as the hostdev owner's domain and in URLs).
///
/// # Errors
/// [`ServiceError::BadRequest`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| Err(ServiceError::BadRequest(format!("VM name {name:?} {why}")));
    if name.is_empty() || name.len() > MAX_VM_NAME_LEN {
        return bad("must be 1 to 64 characters");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("may only hold A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// Reads a device id as an API path names it: 16 hex digits, its one text form (JSON
/// answers, logs and the CLI show it so). The decimal number that JSON answers held before
/// is still accepted, for scripts written against them; it is deprecated.
///
/// # Errors
/// [`ServiceError::BadRequest`] saying what is wrong.
pub fn parse_device_id(text: &str) -> Result<DeviceId, ServiceError> {
    if text.len() == 16 {
        return text
            .parse::<DeviceId>()
            .map_err(|e| ServiceError::BadRequest(e.to_string()));
    }
    text.parse::<u64>().map(DeviceId::from_raw).map_err(|_| {
        ServiceError::BadRequest(format!(
            "device id {text:?}: expected 16 hex digits or a decimal number"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["vm1", "web.prod_2", "A-b"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.to_string().contains("VM name"), "{err}");
        }
    }

    #[test]
    fn device_ids_are_16_hex_digits_or_the_deprecated_decimal() {
        let id = DeviceId::from_raw(42);
        assert_eq!(parse_device_id("000000000000002a").unwrap(), id);
        assert_eq!(parse_device_id("42").unwrap(), id);
        // Sixteen characters are always the hex form, even when they are decimal digits.
        assert_eq!(
            parse_device_id("0000000000000010").unwrap(),
            DeviceId::from_raw(16)
        );
        for bad in ["", "x", "-1", "00000000000000zz", "18446744073709551616"] {
            let err = parse_device_id(bad).unwrap_err();
            assert!(matches!(err, ServiceError::BadRequest(_)), "{bad:?}");
            assert!(err.to_string().contains("device id"), "{err}");
        }
    }

    #[test]
    fn register_requests_refuse_unknown_fields() {
        let ok: RegisterVm = serde_json::from_str(
            r#"{"name": "a", "endpoint": {"kind": "qemu", "qmp_socket": "/q"}}"#,
        )
        .unwrap();
        assert_eq!(ok.name_offset, 0);
        let err = serde_json::from_str::<RegisterVm>(
            r#"{"name": "a", "endpoint": {"kind": "qemu", "qmp_socket": "/q"}, "x": 1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
