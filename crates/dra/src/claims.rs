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

/// Longest uid accepted: the API server's are UUIDs (36 characters).
const MAX_UID_LENGTH: usize = 64;

impl ClaimRef {
    /// Checks that the reference is one the API server could have made: a namespace that is
    /// a DNS label, a name that is a DNS subdomain, and a uid of letters, digits and `-`
    /// (the API server's are UUIDs). The uid names the claim's CDI spec file and, with the
    /// namespace, its owner; anything else could name another claim's owner or a file
    /// outside the CDI directory.
    ///
    /// # Errors
    /// The first part that is not what Kubernetes makes.
    pub fn check(&self) -> Result<(), ClaimError> {
        let bad = |field, value: &str, rule| {
            Err(ClaimError::BadReference {
                field,
                value: value.to_owned(),
                rule,
            })
        };
        if !crate::validate::is_dns_label(&self.namespace) {
            return bad("namespace", &self.namespace, "a DNS label");
        }
        if !crate::validate::is_dns_subdomain(&self.name) {
            return bad("name", &self.name, "a DNS subdomain");
        }
        let uid_ok = (1..=MAX_UID_LENGTH).contains(&self.uid.len())
            && self
                .uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !uid_ok {
            return bad("uid", &self.uid, "a Kubernetes uid (letters, digits, '-')");
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(namespace: &str, name: &str, uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }
    }

    #[test]
    fn only_references_the_api_server_could_make_pass() {
        let uuid = "0f6b3a55-7a0e-4d5f-9a4e-2f1c9d1b8e77";
        claim("vms", "vm-1-gpu.x", uuid).check().unwrap();
        for (bad, field) in [
            (claim("", "nic", uuid), "namespace"),
            (claim("Vms", "nic", uuid), "namespace"),
            (claim("a.b", "nic", uuid), "namespace"),
            (claim("vms", "", uuid), "name"),
            (claim("vms", "a/b", uuid), "name"),
            (claim("vms", "nic", ""), "uid"),
            (claim("vms", "nic", "../x"), "uid"),
            (claim("vms", "nic", "a/b"), "uid"),
            (claim("vms", "nic", &"a".repeat(65)), "uid"),
        ] {
            match bad.check() {
                Err(ClaimError::BadReference { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
