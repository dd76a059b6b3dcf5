//! Who may do what.
//!
//! The socket's mode and group decide who may talk to the service at all; these rules
//! decide what each caller, known by the uid the kernel reports for the socket's peer, may
//! change:
//!
//! | operation | allowed for |
//! |---|---|
//! | reads (host, hostdevs, VMs, devices, metrics) | everyone who can connect |
//! | register a VM | everyone; the caller becomes its owner; the QMP socket must be the caller's |
//! | unregister a VM, attach or detach its devices | its owner and root |
//! | a disk backed by a file | root, or a caller who owns the file |
//! | prepare (unmanaged) or release host devices for a VM, pass a detached device through | its owner and root |
//! | take a device from its host driver (managed prepare, `vm attach --pci` of a bound device) | root |
//! | prepare or release for an owner that is not a VM here, detach, reattach, reset, recover | root |
//!
//! Taking a device from its host driver is root's alone, even for a caller's own VM: the
//! device could be the host's own disk controller or network card. Root makes a device
//! available by detaching it (`plugboard hostdev detach`, libvirt's `nodedev-detach`); its
//! owner may then pass it through, and it stays on vfio-pci when they let it go.
//!
//! The file and socket checks stop a confused deputy: the service runs as root, so
//! without them any caller could hand a VM another user's disk or QEMU.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::ServiceError;

/// The peer of a request, as the kernel reports it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    uid: u32,
}

impl Caller {
    /// Root.
    pub const ROOT: Self = Self { uid: 0 };

    /// The caller with this uid.
    #[must_use]
    pub const fn new(uid: u32) -> Self {
        Self { uid }
    }

    /// The uid.
    #[must_use]
    pub const fn uid(self) -> u32 {
        self.uid
    }

    /// Whether the caller is root.
    #[must_use]
    pub const fn is_root(self) -> bool {
        self.uid == 0
    }

    /// Allows a change to a VM owned by `owner`: its owner or root.
    ///
    /// # Errors
    /// [`ServiceError::Forbidden`] naming the VM and its owner.
    pub fn may_change_vm(self, vm: &str, owner: u32, action: &str) -> Result<(), ServiceError> {
        if self.is_root() || self.uid == owner {
            return Ok(());
        }
        Err(ServiceError::forbidden(
            self.uid,
            format!("{action} VM {vm:?}"),
            format!("the VM belongs to uid {owner}; only its owner or root may change it"),
        ))
    }

    /// Allows a change to the host outside any VM: root only.
    ///
    /// # Errors
    /// [`ServiceError::Forbidden`].
    pub fn may_change_host(self, action: &str) -> Result<(), ServiceError> {
        if self.is_root() {
            return Ok(());
        }
        Err(ServiceError::forbidden(
            self.uid,
            action,
            "only root may change host devices outside a VM",
        ))
    }

    /// Allows taking a device away from its host driver (a managed prepare): root only,
    /// even for the caller's own VM, because the device may be one the host itself needs.
    ///
    /// # Errors
    /// [`ServiceError::Forbidden`], with the way to make the device available.
    pub fn may_take_from_host(self, action: &str) -> Result<(), ServiceError> {
        if self.is_root() {
            return Ok(());
        }
        Err(ServiceError::forbidden(
            self.uid,
            action,
            "only root may take a device from its host driver; root can make it available \
             with `plugboard hostdev detach`, and its owner may then pass it through",
        ))
    }

    /// Allows the service to open `path` on the caller's behalf: root, or the file's owner.
    ///
    /// # Errors
    /// [`ServiceError::BadRequest`] when the path does not exist, [`ServiceError::Forbidden`]
    /// when it belongs to someone else.
    ///
    /// This looks the path up, so a file the service then opens by the same path may not be
    /// the one checked: use it only where the path is all there is to hand on (a QMP socket
    /// to connect to); a file the service opens goes through
    /// [`OpenedFile::open`](crate::OpenedFile::open) and [`Self::may_use_open_file`].
    pub fn may_use_file(self, path: &Path, action: &str) -> Result<(), ServiceError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ServiceError::BadRequest(format!("cannot use {}: {e}", path.display())))?;
        self.may_use_open_file(&meta, path, action)
    }

    /// Allows the service to use, for the caller, the file whose `fstat` is `meta` (opened
    /// from `path`, which only names it in the message): root, or the file's owner.
    ///
    /// # Errors
    /// [`ServiceError::Forbidden`] when the file belongs to someone else.
    pub fn may_use_open_file(
        self,
        meta: &std::fs::Metadata,
        path: &Path,
        action: &str,
    ) -> Result<(), ServiceError> {
        if self.is_root() || meta.uid() == self.uid {
            return Ok(());
        }
        Err(ServiceError::forbidden(
            self.uid,
            format!("{action} {}", path.display()),
            format!("the file belongs to uid {}, not to the caller", meta.uid()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn owner_and_root_may_change_a_vm_others_may_not() {
        Caller::ROOT.may_change_vm("vm", 1000, "attach to").unwrap();
        Caller::new(1000)
            .may_change_vm("vm", 1000, "attach to")
            .unwrap();
        let err = Caller::new(1001)
            .may_change_vm("vm", 1000, "attach to")
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Forbidden);
        assert!(err.to_string().contains("belongs to uid 1000"), "{err}");
    }

    #[test]
    fn only_root_may_take_a_device_from_its_host_driver() {
        Caller::ROOT.may_take_from_host("detach").unwrap();
        let err = Caller::new(1000).may_take_from_host("detach").unwrap_err();
        assert!(err.to_string().contains("hostdev detach"), "{err}");
    }

    #[test]
    fn only_root_may_change_the_host() {
        Caller::ROOT.may_change_host("detach").unwrap();
        let err = Caller::new(5)
            .may_change_host("detach 0000:01:00.0")
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Forbidden);
    }

    #[test]
    fn files_must_belong_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"").unwrap();
        let owner = std::fs::metadata(&file).unwrap().uid();
        Caller::new(owner).may_use_file(&file, "attach").unwrap();
        Caller::ROOT.may_use_file(&file, "attach").unwrap();
        let other = Caller::new(owner.wrapping_add(4242));
        if !other.is_root() {
            let err = other.may_use_file(&file, "attach").unwrap_err();
            assert_eq!(err.class(), ErrorClass::Forbidden);
        }
        let err = Caller::ROOT
            .may_use_file(&dir.path().join("missing"), "attach")
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest);
    }
}
