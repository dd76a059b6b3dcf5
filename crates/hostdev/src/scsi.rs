//! SCSI devices (`H:C:T:L`): one owner, or several when **every** user marked the device
//! shareable (libvirt's rule). No managed mode: the host keeps its driver (the VM gets
//! the device through its `sg` node).

use plugboard_sysfs::{ScsiAddress, ScsiDevice, SysfsError};

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{ClaimKind, ClaimRow, RegistryError};

/// Why a SCSI prepare failed. Nothing was claimed.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// No such device.
    #[error("SCSI device {address} not found")]
    NotFound {
        /// The device.
        address: ScsiAddress,
        /// What sysfs said.
        #[source]
        source: SysfsError,
    },
    /// In use, and not every user (this one included) agreed to share.
    #[error("SCSI device {address} is already in use by {users} and is not shared by every user")]
    InUse {
        /// The device.
        address: ScsiAddress,
        /// Its users, comma separated.
        users: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl HostdevManager {
    /// Claims `devices` for `owner`, all or nothing; `shareable` is this user's consent
    /// to share them.
    pub fn prepare_scsi(
        &mut self,
        owner: &Owner,
        devices: &[ScsiAddress],
        shareable: bool,
    ) -> Result<Vec<ScsiDevice>, ScsiError> {
        let found = devices
            .iter()
            .map(|&address| {
                self.sysfs
                    .scsi_device(address)
                    .map_err(|source| ScsiError::NotFound { address, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.registry.write(|tx| {
            for d in &found {
                let key = d.address.to_string();
                let users = tx.claims_on(ClaimKind::Scsi, &key)?;
                let same_owner = users.iter().any(|u| u.owner == *owner);
                if !users.is_empty()
                    && (same_owner || !shareable || users.iter().any(|u| !u.shareable))
                {
                    let users: Vec<String> = users.iter().map(|u| u.owner.to_string()).collect();
                    return Err(ScsiError::InUse {
                        address: d.address,
                        users: users.join(", "),
                    });
                }
                tx.insert_claim(&ClaimRow {
                    kind: ClaimKind::Scsi,
                    key,
                    owner: owner.clone(),
                    shareable,
                    detail: Some(format!("{} {}", d.vendor, d.model).trim().to_owned()),
                })?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Drops `owner`'s use of `devices`; other users keep theirs. Returns, per device,
    /// whether this owner was a user.
    pub fn release_scsi(
        &mut self,
        owner: &Owner,
        devices: &[ScsiAddress],
    ) -> Result<Vec<(ScsiAddress, bool)>, RegistryError> {
        self.registry.write(|tx| {
            devices
                .iter()
                .map(|&a| Ok((a, tx.delete_claim(ClaimKind::Scsi, &a.to_string(), owner)?)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::ScsiSpec;

    use super::*;
    use crate::test_support::*;

    #[test]
    fn scsi_is_shared_only_when_every_user_says_so() {
        let fx = Fixture::with(
            host_spec()
                .scsi(ScsiSpec::new("0:0:1:0"))
                .scsi(ScsiSpec::new("0:0:2:0")),
        );
        let mut m = fx.manager();
        let disk: ScsiAddress = "0:0:1:0".parse().unwrap();
        let (a, b, c) = (owner("qemu/vm1"), owner("qemu/vm2"), owner("kata/vm3"));
        m.prepare_scsi(&a, &[disk], true).unwrap();
        m.prepare_scsi(&b, &[disk], true).unwrap();
        // The same owner again, or a user who will not share, is refused.
        let err = m.prepare_scsi(&a, &[disk], true).unwrap_err();
        assert!(matches!(err, ScsiError::InUse { .. }), "{err:?}");
        let err = m.prepare_scsi(&c, &[disk], false).unwrap_err();
        assert!(err.to_string().contains("0:0:1:0") && err.to_string().contains("qemu/vm1"));
        // A device claimed unshared cannot be shared later.
        let other: ScsiAddress = "0:0:2:0".parse().unwrap();
        m.prepare_scsi(&a, &[other], false).unwrap();
        m.prepare_scsi(&b, &[other], true).unwrap_err();
        // Release removes only this user.
        assert_eq!(m.release_scsi(&a, &[disk]).unwrap(), vec![(disk, true)]);
        assert_eq!(m.release_scsi(&a, &[disk]).unwrap(), vec![(disk, false)]);
        let left = m.list().unwrap().claims;
        assert_eq!(left.len(), 2);
        assert!(left.iter().any(|c| c.key == "0:0:1:0" && c.owner == b));
        let err = m
            .prepare_scsi(&a, &["1:0:0:0".parse().unwrap()], false)
            .unwrap_err();
        assert!(matches!(err, ScsiError::NotFound { .. }), "{err:?}");
    }
}
