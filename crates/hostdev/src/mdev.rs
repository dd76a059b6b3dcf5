//! Mediated devices, by UUID: one owner at a time. They are created elsewhere (mdevctl,
//! the parent driver's `create`); hostdev only checks one exists, is a VFIO mdev, and is
//! free. Release drops the claim; nothing is rebound (as in libvirt).

use plugboard_sysfs::{Mdev, SysfsError};

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{ClaimKind, ClaimRow, RegistryError};

/// Why an mdev prepare failed. Nothing was claimed.
#[derive(Debug, thiserror::Error)]
pub enum MdevError {
    /// No such mdev.
    #[error("mdev {uuid} not found")]
    NotFound {
        /// The UUID asked for.
        uuid: String,
        /// What sysfs said.
        #[source]
        source: SysfsError,
    },
    /// Not a VFIO device API.
    #[error("mdev {uuid} has device API {device_api:?}, not vfio-pci, vfio-ccw or vfio-ap")]
    NotVfio {
        /// The mdev.
        uuid: String,
        /// Its device API.
        device_api: String,
    },
    /// Already claimed.
    #[error("mdev {uuid} is in use by {owner}")]
    InUse {
        /// The mdev.
        uuid: String,
        /// Its owner.
        owner: Owner,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl HostdevManager {
    /// Claims the mdevs `uuids` for `owner`, all or nothing.
    pub fn prepare_mdev(
        &mut self,
        owner: &Owner,
        uuids: &[String],
    ) -> Result<Vec<Mdev>, MdevError> {
        let found = uuids
            .iter()
            .map(|uuid| {
                let mdev = self
                    .sysfs
                    .mdev(uuid)
                    .map_err(|source| MdevError::NotFound {
                        uuid: uuid.clone(),
                        source,
                    })?;
                if !mdev.device_api.starts_with("vfio-") {
                    return Err(MdevError::NotVfio {
                        uuid: uuid.clone(),
                        device_api: mdev.device_api,
                    });
                }
                Ok(mdev)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.registry.write(|tx| {
            for mdev in &found {
                if let Some(c) = tx
                    .claims_on(ClaimKind::Mdev, &mdev.uuid)?
                    .into_iter()
                    .next()
                {
                    return Err(MdevError::InUse {
                        uuid: mdev.uuid.clone(),
                        owner: c.owner,
                    });
                }
                tx.insert_claim(&ClaimRow {
                    kind: ClaimKind::Mdev,
                    key: mdev.uuid.clone(),
                    owner: owner.clone(),
                    shareable: false,
                    detail: Some(mdev.type_id.clone()),
                })?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Drops `owner`'s claims on `uuids`; returns, per mdev, whether there was one.
    pub fn release_mdev(
        &mut self,
        owner: &Owner,
        uuids: &[String],
    ) -> Result<Vec<(String, bool)>, RegistryError> {
        self.registry.write(|tx| {
            uuids
                .iter()
                .map(|u| Ok((u.clone(), tx.delete_claim(ClaimKind::Mdev, u, owner)?)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::MdevSpec;

    use super::*;
    use crate::test_support::*;

    const UUID: &str = "c4a9a4d2-1b2c-4d5e-8f90-0123456789ab";

    #[test]
    fn an_mdev_has_one_owner_at_a_time() {
        let fx = Fixture::with(
            host_spec().mdev(MdevSpec::new(UUID, FN0, "i915-GVTg_V5_4").device_api("vfio-pci")),
        );
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        m.prepare_mdev(&a, &[UUID.to_owned()]).unwrap();
        let err = m
            .prepare_mdev(&owner("qemu/vm2"), &[UUID.to_owned()])
            .unwrap_err();
        assert!(matches!(err, MdevError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains(UUID));
        assert!(
            !m.release_mdev(&owner("qemu/vm2"), &[UUID.to_owned()])
                .unwrap()[0]
                .1
        );
        assert!(m.release_mdev(&a, &[UUID.to_owned()]).unwrap()[0].1);
        m.prepare_mdev(&owner("qemu/vm2"), &[UUID.to_owned()])
            .unwrap();
        let missing = "00000000-0000-0000-0000-000000000000".to_owned();
        let err = m.prepare_mdev(&a, &[missing]).unwrap_err();
        assert!(matches!(err, MdevError::NotFound { .. }), "{err:?}");
    }
}
