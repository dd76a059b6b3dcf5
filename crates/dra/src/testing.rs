//! Stand-ins for the API server, for tests: [`MemorySlices`] keeps ResourceSlices with the
//! semantics the publisher relies on (resourceVersion checked on update, names unique on
//! create, every write counted, a watch of every change, the Node's uid),
//! [`MemoryClaims`] answers claims from a map, and
//! [`allocated_claim`] builds a claim the way the scheduler leaves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult, ResourceClaim,
    ResourceClaimStatus, ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::claims::ClaimSource;
use crate::error::{ClaimError, StoreError};
use crate::publish::{SliceEvent, SliceEvents, SliceStore};

/// ResourceSlices in memory, with resourceVersions and write counts.
#[derive(Debug, Default)]
pub struct MemorySlices {
    state: Mutex<SliceState>,
}

#[derive(Debug, Default)]
struct SliceState {
    slices: BTreeMap<String, ResourceSlice>,
    version: u64,
    writes: usize,
    lists: usize,
    /// Open watches: driver, node, where their events go.
    watchers: Vec<(String, String, mpsc::UnboundedSender<SliceEvent>)>,
    /// The Node objects' uids, by name.
    nodes: BTreeMap<String, String>,
}

impl SliceState {
    /// Stores the publisher's `slice` as `name` at the next resourceVersion, counts the
    /// write and tells the watches.
    fn store_write(&mut self, name: String, slice: &ResourceSlice) {
        self.version += 1;
        let mut stored = slice.clone();
        stored.metadata.resource_version = Some(self.version.to_string());
        self.slices.insert(name, stored.clone());
        self.writes += 1;
        self.tell(&SliceEvent::Applied(stored));
    }

    /// Tells the open watches of `slice`'s driver and node about `event`.
    fn tell(&mut self, event: &SliceEvent) {
        let slice = event.slice();
        self.watchers.retain(|(driver, node, tx)| {
            if *driver != slice.spec.driver || slice.spec.node_name.as_deref() != Some(node) {
                return !tx.is_closed();
            }
            tx.send(event.clone()).is_ok()
        });
    }
}

impl MemorySlices {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SliceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every slice stored, by name.
    #[must_use]
    pub fn slices(&self) -> Vec<ResourceSlice> {
        self.state().slices.values().cloned().collect()
    }

    /// Writes (create, replace, delete) accepted so far.
    #[must_use]
    pub fn writes(&self) -> usize {
        self.state().writes
    }

    /// Lists answered so far.
    #[must_use]
    pub fn lists(&self) -> usize {
        self.state().lists
    }

    /// Changes slice `name` as another writer would: a new resourceVersion, so an update
    /// carrying the old one conflicts.
    pub fn touch(&self, name: &str) {
        self.edit(name, |_| {});
    }

    /// Changes slice `name` as another writer would (an operator's edit): `edit` applied,
    /// a new resourceVersion, watches told. Not counted as a write of the publisher's.
    pub fn edit(&self, name: &str, edit: impl FnOnce(&mut ResourceSlice)) {
        let mut state = self.state();
        state.version += 1;
        let version = state.version.to_string();
        let Some(slice) = state.slices.get_mut(name) else {
            return;
        };
        edit(slice);
        slice.metadata.resource_version = Some(version);
        let event = SliceEvent::Applied(slice.clone());
        state.tell(&event);
    }

    /// Deletes slice `name` as another writer would (an operator, the garbage collector):
    /// watches told. Not counted as a write of the publisher's.
    pub fn remove(&self, name: &str) {
        let mut state = self.state();
        if let Some(slice) = state.slices.remove(name) {
            state.tell(&SliceEvent::Deleted(slice));
        }
    }

    /// Stores a Node object named `name` with uid `uid`.
    pub fn put_node(&self, name: &str, uid: &str) {
        self.state().nodes.insert(name.to_owned(), uid.to_owned());
    }
}

impl SliceStore for MemorySlices {
    async fn list(&self, driver: &str, node: &str) -> Result<Vec<ResourceSlice>, StoreError> {
        let mut state = self.state();
        state.lists += 1;
        Ok(state
            .slices
            .values()
            .filter(|s| s.spec.driver == driver && s.spec.node_name.as_deref() == Some(node))
            .cloned()
            .collect())
    }

    async fn create(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        let mut state = self.state();
        let name = slice.metadata.name.clone().unwrap_or_default();
        if state.slices.contains_key(&name) {
            return Err(StoreError::Conflict(format!("{name} already exists")));
        }
        if slice.metadata.resource_version.is_some() {
            return Err(StoreError::Other(
                format!("{name}: resourceVersion must not be set on create").into(),
            ));
        }
        state.store_write(name, slice);
        Ok(())
    }

    async fn replace(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        let mut state = self.state();
        let name = slice.metadata.name.clone().unwrap_or_default();
        let Some(current) = state.slices.get(&name) else {
            return Err(StoreError::NotFound(name));
        };
        if current.metadata.resource_version != slice.metadata.resource_version {
            return Err(StoreError::Conflict(format!(
                "{name}: the object has been modified (resourceVersion {:?}, not {:?})",
                current.metadata.resource_version, slice.metadata.resource_version
            )));
        }
        state.store_write(name, slice);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let Some(gone) = state.slices.remove(name) else {
            return Err(StoreError::NotFound(name.to_owned()));
        };
        state.writes += 1;
        state.tell(&SliceEvent::Deleted(gone));
        Ok(())
    }

    async fn watch(&self, driver: &str, node: &str) -> Result<SliceEvents, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state()
            .watchers
            .push((driver.to_owned(), node.to_owned(), tx));
        Ok(Box::pin(UnboundedReceiverStream::new(rx).map(Ok)))
    }

    async fn node_uid(&self, node: &str) -> Result<String, StoreError> {
        self.state()
            .nodes
            .get(node)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("nodes {node:?} not found")))
    }
}

/// ResourceClaims in memory, by namespace and name.
#[derive(Debug, Default)]
pub struct MemoryClaims {
    claims: Mutex<HashMap<(String, String), ResourceClaim>>,
}

impl MemoryClaims {
    /// No claims.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `claim`.
    pub fn put(&self, claim: ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, claim);
    }
}

impl ClaimSource for MemoryClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<ResourceClaim, ClaimError> {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ClaimError::Read {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: format!("resourceclaims {name:?} not found").into(),
            })
    }
}

/// A claim as the scheduler leaves it: allocated `devices` (request, device) of `driver`'s
/// pool `pool`.
#[must_use]
pub fn allocated_claim(
    namespace: &str,
    name: &str,
    uid: &str,
    driver: &str,
    pool: &str,
    devices: &[(&str, &str)],
) -> ResourceClaim {
    ResourceClaim {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        },
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(
                        devices
                            .iter()
                            .map(|(request, device)| DeviceRequestAllocationResult {
                                request: (*request).to_owned(),
                                driver: driver.to_owned(),
                                pool: pool.to_owned(),
                                device: (*device).to_owned(),
                                ..DeviceRequestAllocationResult::default()
                            })
                            .collect(),
                    ),
                    ..DeviceAllocationResult::default()
                }),
                ..AllocationResult::default()
            }),
            ..ResourceClaimStatus::default()
        }),
        ..ResourceClaim::default()
    }
}

/// A gRPC channel to the plugin's Unix socket at `path`, as the kubelet opens one (the URI
/// is a placeholder; every connection goes to the socket).
///
/// # Panics
/// The socket does not accept the connection: in a test, that is the failure.
pub async fn connect(path: &std::path::Path) -> tonic::transport::Channel {
    let path = path.to_owned();
    let connected = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await;
    connected.unwrap_or_else(|e| panic!("cannot connect to the plugin's socket: {e}"))
}
