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
//!
//! The publisher remembers what it wrote, so that a change to the pool seen on a watch of
//! its slices ([`SliceStore::watch`]) can be told from the echo of its own writes
//! ([`Publisher::differs`]): an operator's edit or delete, or the garbage collector's, is
//! answered by publishing again, as the upstream resourceslice controller does.
//!
//! Every slice names the node as its owner (`metadata.ownerReferences`: `v1` `Node`, with
//! the node's uid read once through [`Publisher::own_by_node`]), so that the slices go with
//! the Node object.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use k8s_openapi::api::resource::v1::{Device, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio_stream::Stream;

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
    /// Watches the ResourceSlices of `driver` on node `node` from now on: every change
    /// after the call, until the stream ends (the server closed the watch; watch again).
    fn watch(
        &self,
        driver: &str,
        node: &str,
    ) -> impl Future<Output = Result<SliceEvents, StoreError>> + Send;
    /// The uid of the Node object named `node`.
    fn node_uid(&self, node: &str) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// One change to a watched slice.
#[derive(Debug, Clone, PartialEq)]
pub enum SliceEvent {
    /// The slice was created or changed; this is it now.
    Applied(ResourceSlice),
    /// The slice was deleted; this is it as it was last.
    Deleted(ResourceSlice),
}

impl SliceEvent {
    /// The slice the event is about.
    #[must_use]
    pub fn slice(&self) -> &ResourceSlice {
        match self {
            Self::Applied(s) | Self::Deleted(s) => s,
        }
    }
}

/// The changes a watch reports, in order.
pub type SliceEvents = Pin<Box<dyn Stream<Item = Result<SliceEvent, StoreError>> + Send>>;

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
    fn watch(
        &self,
        driver: &str,
        node: &str,
    ) -> impl Future<Output = Result<SliceEvents, StoreError>> + Send {
        (**self).watch(driver, node)
    }
    fn node_uid(&self, node: &str) -> impl Future<Output = Result<String, StoreError>> + Send {
        (**self).node_uid(node)
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
    owner: Option<OwnerReference>,
    /// What the last publish left on the API server, by slice name (spec and owners; no
    /// resourceVersion). `None` before the first publish.
    written: Mutex<Option<BTreeMap<String, ResourceSlice>>>,
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
            owner: None,
            written: Mutex::new(None),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The owner every slice names (`None`: no owner).
    pub fn owner(&self) -> Option<&OwnerReference> {
        self.owner.as_ref()
    }

    /// Makes the node's Node object the owner of every slice (`v1` `Node`, its name and
    /// uid, as controller), reading its uid from the API server, so that deleting the Node
    /// deletes its slices. When the Node cannot be read the slices are published without
    /// an owner, and the error is logged and returned.
    ///
    /// # Errors
    /// The Node could not be read.
    pub async fn own_by_node(&mut self) -> Result<(), StoreError> {
        match self.store.node_uid(&self.node).await {
            Ok(uid) => {
                self.owner = Some(node_owner(&self.node, &uid));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    node = %self.node,
                    error = %plugboard_sysfs::error_chain(&e),
                    "cannot read the Node object; publishing ResourceSlices without an owner"
                );
                Err(e)
            }
        }
    }

    /// Watches this pool's slices on the API server.
    ///
    /// # Errors
    /// The watch could not be started.
    pub async fn watch(&self) -> Result<SliceEvents, StoreError> {
        self.store.watch(&self.driver, &self.node).await
    }

    /// True when `event` shows this pool's slices other than the last publish left them:
    /// a slice of ours deleted or changed by someone else, or a slice in our pool we did
    /// not write. The echo of this publisher's own writes is not a difference. Before the
    /// first publish, everything is.
    pub fn differs(&self, event: &SliceEvent) -> bool {
        let slice = event.slice();
        if slice.spec.driver != self.driver || slice.spec.pool.name != self.node {
            return false;
        }
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(written) = written.as_ref() else {
            return true;
        };
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        match (event, written.get(name)) {
            (SliceEvent::Deleted(_), mine) => mine.is_some(),
            (SliceEvent::Applied(_), None) => true,
            (SliceEvent::Applied(now), Some(mine)) => {
                now.spec != mine.spec
                    || now.metadata.owner_references != mine.metadata.owner_references
            }
        }
    }

    /// The highest generation the last publish left (0 before the first).
    fn last_generation(&self) -> i64 {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|w| w.values())
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0)
    }

    fn remember(&self, slices: impl IntoIterator<Item = ResourceSlice>) {
        let written = slices
            .into_iter()
            .map(|mut s| {
                s.metadata.resource_version = None;
                (s.metadata.name.clone().unwrap_or_default(), s)
            })
            .collect();
        *self.written.lock().unwrap_or_else(PoisonError::into_inner) = Some(written);
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
            self.remember(existing);
            return Ok(PublishReport {
                generation,
                slices: wanted.len(),
                ..PublishReport::default()
            });
        }
        // Never below what this publisher wrote last: a pool whose slices were all deleted
        // behind its back comes back at a new generation, not at 1 again.
        let generation = generation.max(self.last_generation()) + 1;
        let mut report = PublishReport {
            generation,
            slices: wanted.len(),
            ..PublishReport::default()
        };
        let mut slices = slices_of(&self.driver, &self.node, generation, wanted.to_vec());
        for slice in &mut slices {
            slice.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
        }
        for slice in &mut slices {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let current = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&name));
            match current {
                Some(current) => {
                    slice.metadata.resource_version = current.metadata.resource_version.clone();
                    self.store
                        .replace(slice)
                        .await
                        .map_err(store_error("replace", &name))?;
                    report.replaced += 1;
                }
                None => {
                    self.store
                        .create(slice)
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
        self.remember(slices);
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
        let owners = self.owner.clone().map(|o| vec![o]);
        existing.len() == wanted.len()
            && wanted.iter().enumerate().all(|(i, devices)| {
                let name = slice_name(&self.node, &self.driver, i);
                existing.iter().any(|s| {
                    s.metadata.name.as_deref() == Some(name.as_str())
                        && s.spec.pool.generation == generation
                        && s.spec.pool.resource_slice_count == count
                        && s.spec.node_name.as_deref() == Some(self.node.as_str())
                        && s.metadata.owner_references == owners
                        && s.spec.devices.as_deref().unwrap_or_default() == devices.as_slice()
                })
            })
    }
}

/// The owner reference of node `name`'s slices: its Node object, as controller.
#[must_use]
pub fn node_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Node".to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}
