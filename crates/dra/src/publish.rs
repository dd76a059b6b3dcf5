//! Writing the node's slices to the API server, one write per slice that changed.
//!
//! [`SliceStore`] is what the publisher needs of the API server (list, create, replace,
//! delete ResourceSlices, with resourceVersion conflicts); `kube_api.rs` implements it over
//! kube-rs and `testing.rs` in memory. [`Publisher::publish`] compares the pool the host
//! shows with the pool the API server holds and writes only when they differ:
//!
//! - nothing changed (same devices in the same slices): no write;
//! - anything changed: the pool's generation goes up by one, and every slice of the pool
//!   is written at the new generation (the API asks that every slice of a pool carry the
//!   generation of the change, so a consumer can tell a complete pool from a half-written
//!   one), then the slices the pool no longer needs are deleted.
//!
//! A conflict (someone else wrote a slice since it was listed) starts the publish over
//! from a fresh list, a bounded number of times.

use std::future::Future;

use k8s_openapi::api::resource::v1::{Device, ResourceSlice};

use crate::error::{PublishError, StoreError};
use crate::offer::Offer;
use crate::slices::{chunks, slice_name, slices_of};

/// What the publisher needs of the API server. Every method is one request.
pub trait SliceStore: Send + Sync {
    /// The ResourceSlices of `driver` on node `node`.
    fn list(
        &self,
        driver: &str,
        node: &str,
    ) -> impl Future<Output = Result<Vec<ResourceSlice>, StoreError>> + Send;
    /// Creates `slice` ([`StoreError::Conflict`] when its name exists).
    fn create(&self, slice: &ResourceSlice) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces `slice`, which carries the resourceVersion it was read at
    /// ([`StoreError::Conflict`] when the stored one has changed since).
    fn replace(&self, slice: &ResourceSlice)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes the slice named `name`.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A shared store is a store.
impl<T: SliceStore> SliceStore for std::sync::Arc<T> {
    fn list(
        &self,
        driver: &str,
        node: &str,
    ) -> impl Future<Output = Result<Vec<ResourceSlice>, StoreError>> + Send {
        (**self).list(driver, node)
    }
    fn create(&self, slice: &ResourceSlice) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).create(slice)
    }
    fn replace(
        &self,
        slice: &ResourceSlice,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).replace(slice)
    }
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).delete(name)
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishReport {
    /// The pool's generation now.
    pub generation: i64,
    /// The pool's slices now.
    pub slices: usize,
    /// Slices created.
    pub created: usize,
    /// Slices replaced.
    pub replaced: usize,
    /// Slices deleted.
    pub deleted: usize,
    /// Conflicts met (each started the publish over).
    pub conflicts: u32,
}

impl PublishReport {
    /// Every write made: creates, replaces and deletes.
    #[must_use]
    pub fn writes(&self) -> usize {
        self.created + self.replaced + self.deleted
    }
}

/// Publishes one node's pool of one driver.
#[derive(Debug)]
pub struct Publisher<S> {
    store: S,
    driver: String,
    node: String,
}

/// How often a publish starts over after conflicts before it gives up.
const MAX_TRIES: u32 = 5;

impl<S: SliceStore> Publisher<S> {
    /// A publisher of `driver`'s pool on `node` (pool name = node name).
    pub fn new(store: S, driver: &str, node: &str) -> Self {
        Self {
            store,
            driver: driver.to_owned(),
            node: node.to_owned(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Makes the API server's pool hold `offers`. See the module documentation.
    ///
    /// # Errors
    /// A request failed, or conflicts went on past the retries.
    pub async fn publish(&self, offers: &[Offer]) -> Result<PublishReport, PublishError> {
        let mut wanted = chunks(offers);
        if wanted.is_empty() {
            wanted.push(Vec::new());
        }
        let mut conflicts = 0;
        for _ in 0..MAX_TRIES {
            match self.try_publish(&wanted).await {
                Ok(mut report) => {
                    report.conflicts = conflicts;
                    return Ok(report);
                }
                Err(PublishError::Store {
                    source: StoreError::Conflict(what),
                    op,
                    name,
                }) => {
                    tracing::debug!(op, slice = %name, %what, "ResourceSlice conflict; publishing again");
                    conflicts += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Err(PublishError::Conflicts {
            pool: self.node.clone(),
            tries: MAX_TRIES,
        })
    }

    async fn try_publish(&self, wanted: &[Vec<Device>]) -> Result<PublishReport, PublishError> {
        let store_error = |op, name: &str| {
            let name = name.to_owned();
            move |source| PublishError::Store { op, name, source }
        };
        let mut existing = self
            .store
            .list(&self.driver, &self.node)
            .await
            .map_err(store_error("list", ""))?;
        existing.retain(|s| s.spec.driver == self.driver && s.spec.pool.name == self.node);
        let generation = existing
            .iter()
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0);
        if self.unchanged(&existing, wanted, generation) {
            return Ok(PublishReport {
                generation,
                slices: wanted.len(),
                ..PublishReport::default()
            });
        }
        let generation = generation + 1;
        let mut report = PublishReport {
            generation,
            slices: wanted.len(),
            ..PublishReport::default()
        };
        for mut slice in slices_of(&self.driver, &self.node, generation, wanted.to_vec()) {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let current = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&name));
            match current {
                Some(current) => {
                    slice.metadata.resource_version = current.metadata.resource_version.clone();
                    self.store
                        .replace(&slice)
                        .await
                        .map_err(store_error("replace", &name))?;
                    report.replaced += 1;
                }
                None => {
                    self.store
                        .create(&slice)
                        .await
                        .map_err(store_error("create", &name))?;
                    report.created += 1;
                }
            }
        }
        let keep: Vec<String> = (0..wanted.len())
            .map(|i| slice_name(&self.node, &self.driver, i))
            .collect();
        for old in &existing {
            let Some(name) = old.metadata.name.as_deref() else {
                continue;
            };
            if keep.iter().any(|k| k == name) {
                continue;
            }
            match self.store.delete(name).await {
                Ok(()) | Err(StoreError::NotFound(_)) => report.deleted += 1,
                Err(e) => return Err(store_error("delete", name)(e)),
            }
        }
        tracing::info!(
            pool = %self.node,
            generation,
            slices = report.slices,
            writes = report.writes(),
            "ResourceSlices published"
        );
        Ok(report)
    }

    /// True when the stored pool is exactly `wanted` at `generation`: the same slices by
    /// name, each holding the same devices and the same slice count.
    fn unchanged(
        &self,
        existing: &[ResourceSlice],
        wanted: &[Vec<Device>],
        generation: i64,
    ) -> bool {
        let count = i64::try_from(wanted.len()).unwrap_or(i64::MAX);
        existing.len() == wanted.len()
            && wanted.iter().enumerate().all(|(i, devices)| {
                let name = slice_name(&self.node, &self.driver, i);
                existing.iter().any(|s| {
                    s.metadata.name.as_deref() == Some(name.as_str())
                        && s.spec.pool.generation == generation
                        && s.spec.pool.resource_slice_count == count
                        && s.spec.node_name.as_deref() == Some(self.node.as_str())
                        && s.spec.devices.as_deref().unwrap_or_default() == devices.as_slice()
                })
            })
    }
}
