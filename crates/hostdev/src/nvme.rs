//! NVMe namespaces: several namespaces share one PCI controller, which is prepared (as a
//! PCI device, managed or not) with the first namespace an owner takes and released with
//! the last. Namespaces are claims in the registry, keyed `DDDD:BB:SS.F/NSID`.
//!
//! Stricter than libvirt: a controller in use by one owner cannot serve a namespace to
//! another (VFIO gives the whole controller to one process).

use std::collections::BTreeSet;

use plugboard_sysfs::PciAddress;
use serde::{Deserialize, Serialize};

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::pci_request::{PrepareError, PrepareOptions};
use crate::registry::{ClaimKind, ClaimRow, List, RegistryError};
use crate::release::{PciReleased, ReleaseOutcome};

/// One namespace of one controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NvmeNamespace {
    /// The controller.
    pub controller: PciAddress,
    /// The namespace ID (1-based).
    pub namespace: u32,
}

impl NvmeNamespace {
    fn key(self) -> String {
        format!("{}/{}", self.controller, self.namespace)
    }
}

impl std::fmt::Display for NvmeNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nvme:{}/{}", self.controller, self.namespace)
    }
}

/// Why an NVMe prepare failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The namespace is already claimed.
    #[error("NVMe namespace {namespace} is in use by {owner}")]
    InUse {
        /// The namespace.
        namespace: NvmeNamespace,
        /// Its owner.
        owner: Owner,
    },
    /// Preparing the controller failed.
    #[error("NVMe controller {controller}: prepare failed")]
    Controller {
        /// The controller.
        controller: PciAddress,
        /// Why.
        #[source]
        source: Box<PrepareError>,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The result of releasing one namespace.
#[derive(Debug)]
pub struct NvmeReleased {
    /// The namespace.
    pub namespace: NvmeNamespace,
    /// Whether this owner held it.
    pub held: bool,
    /// The controller's release, when this was its last namespace.
    pub controller: Option<ReleaseOutcome>,
}

impl HostdevManager {
    /// Claims `namespaces` for `owner`, preparing each controller with its first namespace.
    /// All or nothing.
    pub fn prepare_nvme(
        &mut self,
        owner: &Owner,
        namespaces: &[NvmeNamespace],
        managed: bool,
    ) -> Result<(), NvmeError> {
        // Which controllers does this owner not hold yet?
        let controllers: BTreeSet<PciAddress> = namespaces.iter().map(|n| n.controller).collect();
        let to_prepare = self.registry.read(|tx| {
            for ns in namespaces {
                if let Some(c) = tx.claims_on(ClaimKind::Nvme, &ns.key())?.into_iter().next() {
                    return Err(NvmeError::InUse {
                        namespace: *ns,
                        owner: c.owner,
                    });
                }
            }
            let mut to_prepare = Vec::new();
            for &c in &controllers {
                let held = tx
                    .pci_row(&c.to_string())?
                    .is_some_and(|r| r.list == List::Active && r.owner.as_ref() == Some(owner));
                if !held {
                    to_prepare.push(c);
                }
            }
            Ok::<_, NvmeError>(to_prepare)
        })?;
        let options = PrepareOptions {
            managed,
            whole_group: false,
        };
        for (i, &c) in to_prepare.iter().enumerate() {
            if let Err(source) = self.prepare_pci(owner, &[c], options) {
                self.release_pci(owner, &to_prepare[..i])?;
                return Err(NvmeError::Controller {
                    controller: c,
                    source: Box::new(source),
                });
            }
        }
        let claimed = self.registry.write(|tx| {
            for ns in namespaces {
                if let Some(c) = tx.claims_on(ClaimKind::Nvme, &ns.key())?.into_iter().next() {
                    return Err(NvmeError::InUse {
                        namespace: *ns,
                        owner: c.owner,
                    });
                }
                tx.insert_claim(&ClaimRow {
                    kind: ClaimKind::Nvme,
                    key: ns.key(),
                    owner: owner.clone(),
                    shareable: false,
                    detail: Some(ns.controller.to_string()),
                })?;
            }
            Ok(())
        });
        if let Err(err) = claimed {
            self.release_pci(owner, &to_prepare)?;
            return Err(err);
        }
        Ok(())
    }

    /// Drops `owner`'s `namespaces`, releasing each controller whose last namespace
    /// this was. Best effort, a result per namespace.
    pub fn release_nvme(
        &mut self,
        owner: &Owner,
        namespaces: &[NvmeNamespace],
    ) -> Result<Vec<NvmeReleased>, RegistryError> {
        let (held, last) = self.registry.write(|tx| {
            let mut held = Vec::new();
            for ns in namespaces {
                held.push(tx.delete_claim(ClaimKind::Nvme, &ns.key(), owner)?);
            }
            let mut last = Vec::new();
            for c in namespaces
                .iter()
                .map(|n| n.controller)
                .collect::<BTreeSet<_>>()
            {
                if tx
                    .claims_with_prefix(ClaimKind::Nvme, &format!("{c}/"))?
                    .is_empty()
                {
                    last.push(c);
                }
            }
            Ok::<_, RegistryError>((held, last))
        })?;
        let mut controllers: Vec<ReleaseOutcome> = self.release_pci(owner, &last)?;
        let mut out = Vec::with_capacity(namespaces.len());
        for (ns, held) in namespaces.iter().zip(held) {
            let pos = controllers.iter().position(|o| o.address == ns.controller);
            let controller = pos.map(|p| controllers.swap_remove(p));
            out.push(NvmeReleased {
                namespace: *ns,
                held,
                controller,
            });
        }
        Ok(out)
    }
}

/// True when a controller release gave it back or left it inactive as it should.
pub fn controller_released(outcome: &ReleaseOutcome) -> bool {
    matches!(
        outcome.result,
        Ok(PciReleased::Reattached { .. } | PciReleased::Inactive)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn nvme_round_trip_with_two_namespaces_on_one_controller() {
        let fx = Fixture::new();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let ns = |n| NvmeNamespace {
            controller: addr(NVME),
            namespace: n,
        };
        m.prepare_nvme(&a, &[ns(1)], true).unwrap();
        assert_eq!(fx.driver(NVME).as_deref(), Some("vfio-pci"));
        let writes = fx.kernel.writes().len();
        m.prepare_nvme(&a, &[ns(2)], true).unwrap();
        assert_eq!(
            fx.kernel.writes().len(),
            writes,
            "the controller is prepared once"
        );
        assert_eq!(m.list().unwrap().claims.len(), 2);

        // Conflicts: the same namespace again (any owner), another owner on this controller.
        let before = books(&mut m);
        for who in ["qemu/vm1", "qemu/vm2"] {
            let err = m.prepare_nvme(&owner(who), &[ns(1)], true).unwrap_err();
            assert!(matches!(err, NvmeError::InUse { .. }), "{err:?}");
            assert!(err.to_string().contains("nvme:0000:06:00.0/1"), "{err}");
        }
        let err = m
            .prepare_nvme(&owner("qemu/vm2"), &[ns(3)], true)
            .unwrap_err();
        assert!(matches!(err, NvmeError::Controller { .. }), "{err:?}");
        assert_eq!(books(&mut m), before);
        assert_eq!(m.list().unwrap().claims.len(), 2);

        // The first release keeps the controller; the last gives it back to nvme.
        let out = m.release_nvme(&a, &[ns(1)]).unwrap();
        assert!(out[0].held && out[0].controller.is_none());
        assert_eq!(fx.driver(NVME).as_deref(), Some("vfio-pci"));
        let out = m.release_nvme(&a, &[ns(2)]).unwrap();
        assert!(out[0].held);
        assert!(controller_released(out[0].controller.as_ref().unwrap()));
        assert_eq!(fx.driver(NVME).as_deref(), Some("nvme"));
        assert!(books(&mut m).is_empty());
        assert!(m.list().unwrap().claims.is_empty());
    }
}
