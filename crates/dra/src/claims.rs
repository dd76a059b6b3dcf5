//! What a claim was allocated: read from the API server, because the kubelet's request
//! names only the claim.
//!
//! [`ClaimSource`] fetches a `ResourceClaim`; `kube_api.rs` implements it over kube-rs and
//! `testing.rs` in memory. [`allocation`] reads this driver's share of the claim's
//! allocation, the same way for both.

use std::future::Future;

use k8s_openapi::api::resource::v1::ResourceClaim;

use crate::error::ClaimError;

/// The claim the kubelet names: namespace, name and uid (the `Claim` message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's uid.
    pub uid: String,
}

impl ClaimRef {
    /// The hostdev owner of the claim's devices: `k8s/<namespace>/<uid>`.
    #[must_use]
    pub fn owner(&self) -> String {
        format!(
            "{}/{}/{}",
            crate::offer::CLAIM_OWNER_DRIVER,
            self.namespace,
            self.uid
        )
    }
}

/// One device the scheduler gave the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The claim's request it satisfies.
    pub request: String,
    /// Its pool.
    pub pool: String,
    /// The device's name in the pool.
    pub device: String,
}

/// Where claims are read from.
pub trait ClaimSource: Send + Sync {
    /// The claim `namespace/name`.
    fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, ClaimError>> + Send;
}

/// The devices of `driver` in `claim`'s allocation, after checking that the claim is the one
/// meant (same uid) and is allocated.
///
/// # Errors
/// The claim was replaced, or is not allocated.
pub fn allocation(
    claim: &ResourceClaim,
    wanted: &ClaimRef,
    driver: &str,
) -> Result<Vec<Allocated>, ClaimError> {
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    if uid != wanted.uid {
        return Err(ClaimError::Replaced {
            namespace: wanted.namespace.clone(),
            name: wanted.name.clone(),
            expected: wanted.uid.clone(),
            found: uid.to_owned(),
        });
    }
    let results = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(|| ClaimError::NotAllocated {
            namespace: wanted.namespace.clone(),
            name: wanted.name.clone(),
        })?;
    Ok(results
        .results
        .iter()
        .flatten()
        .filter(|r| r.driver == driver)
        .map(|r| Allocated {
            request: r.request.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
        })
        .collect())
}

/// A shared source is a source.
impl<T: ClaimSource> ClaimSource for std::sync::Arc<T> {
    fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, ClaimError>> + Send {
        (**self).claim(namespace, name)
    }
}
