//! The API server through kube-rs: [`KubeSlices`] for the publisher and [`KubeClaims`] for
//! prepare. Each method is one request.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use tokio_stream::StreamExt;

use crate::claims::ClaimSource;
use crate::error::{ClaimError, StoreError};
use crate::publish::{SliceEvent, SliceEvents, SliceStore};

/// ResourceSlices (and the node's Node object, for the slices' owner) through kube-rs.
#[derive(Clone)]
pub struct KubeSlices {
    api: Api<ResourceSlice>,
    nodes: Api<Node>,
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
            api: Api::all(client.clone()),
            nodes: Api::all(client),
        }
    }
}

/// The field selector of one node's slices of one driver (ResourceSlices have field
/// selectors for exactly these).
fn fields(driver: &str, node: &str) -> String {
    format!("spec.driver={driver},spec.nodeName={node}")
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
        let params = ListParams::default().fields(&fields(driver, node));
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

    /// A list for the collection's resourceVersion, then a watch from it: the changes
    /// after the call. Bookmarks are skipped; an ERROR event (410 Gone: the version is too
    /// old) is an error, after which the caller watches again.
    async fn watch(&self, driver: &str, node: &str) -> Result<SliceEvents, StoreError> {
        let fields = fields(driver, node);
        let listed = self
            .api
            .list(&ListParams::default().fields(&fields))
            .await
            .map_err(store_error)?;
        let version = listed.metadata.resource_version.unwrap_or_default();
        let events = self
            .api
            .watch(&WatchParams::default().fields(&fields), &version)
            .await
            .map_err(store_error)?;
        Ok(Box::pin(events.filter_map(|event| match event {
            Ok(WatchEvent::Added(s) | WatchEvent::Modified(s)) => Some(Ok(SliceEvent::Applied(s))),
            Ok(WatchEvent::Deleted(s)) => Some(Ok(SliceEvent::Deleted(s))),
            Ok(WatchEvent::Bookmark(_)) => None,
            Ok(WatchEvent::Error(status)) => Some(Err(StoreError::Other(
                format!("watch ended: {} ({})", status.message, status.code).into(),
            ))),
            Err(e) => Some(Err(store_error(e))),
        })))
    }

    async fn node_uid(&self, node: &str) -> Result<String, StoreError> {
        let node = self.nodes.get(node).await.map_err(store_error)?;
        node.metadata
            .uid
            .ok_or_else(|| StoreError::Other("the Node object has no uid".into()))
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
