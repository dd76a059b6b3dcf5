//! The API server through kube-rs: [`KubeSlices`] for the publisher and [`KubeClaims`] for
//! prepare. Each method is one request.

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::claims::ClaimSource;
use crate::error::{ClaimError, StoreError};
use crate::publish::SliceStore;

/// ResourceSlices through kube-rs.
#[derive(Clone)]
pub struct KubeSlices {
    api: Api<ResourceSlice>,
}

impl std::fmt::Debug for KubeSlices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSlices")
    }
}

impl KubeSlices {
    /// ResourceSlices (cluster-scoped) through `client`.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

/// A kube-rs error as a store error: 409 is a conflict, 404 not found.
fn store_error(e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => {
            StoreError::Conflict(status.message.clone())
        }
        kube::Error::Api(status) if status.code == 404 => {
            StoreError::NotFound(status.message.clone())
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

impl SliceStore for KubeSlices {
    async fn list(&self, driver: &str, node: &str) -> Result<Vec<ResourceSlice>, StoreError> {
        // ResourceSlices have field selectors for exactly these.
        let params =
            ListParams::default().fields(&format!("spec.driver={driver},spec.nodeName={node}"));
        self.api
            .list(&params)
            .await
            .map(|l| l.items)
            .map_err(store_error)
    }

    async fn create(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        self.api
            .create(&PostParams::default(), slice)
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn replace(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.api
            .replace(&name, &PostParams::default(), slice)
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .map(drop)
            .map_err(store_error)
    }
}

/// ResourceClaims through kube-rs.
#[derive(Clone)]
pub struct KubeClaims {
    client: kube::Client,
}

impl std::fmt::Debug for KubeClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClaims")
    }
}

impl KubeClaims {
    /// ResourceClaims through `client`.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl ClaimSource for KubeClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<ResourceClaim, ClaimError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get(name).await.map_err(|e| ClaimError::Read {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(e),
        })
    }
}
