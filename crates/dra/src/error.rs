//! Why the DRA front failed: one enum for the claim path (each failure is reported for its
//! claim, the others go on), one for publishing, one for serving.

use std::path::PathBuf;

use plugboard_service::ServiceError;

/// Why a claim could not be prepared or unprepared. The kubelet receives the message (with
/// its causes) as the claim's error and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The API server did not answer with the claim.
    #[error("ResourceClaim {namespace}/{name}: cannot read it from the API server")]
    Read {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The claim by that name is another object than the one the kubelet means.
    #[error("ResourceClaim {namespace}/{name} has uid {found}, not {expected}: it was replaced")]
    Replaced {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
        /// The uid the kubelet asked for.
        expected: String,
        /// The uid the API server has.
        found: String,
    },
    /// The kubelet named a claim by something that is not a Kubernetes name or uid (it would
    /// make another claim's owner, or a spec path outside the CDI directory).
    #[error("claim {field} '{value}' is not {rule}: refused")]
    BadReference {
        /// `namespace`, `name` or `uid`.
        field: &'static str,
        /// What was sent.
        value: String,
        /// What it must be.
        rule: &'static str,
    },
    /// The claim has no allocation yet.
    #[error("ResourceClaim {namespace}/{name} is not allocated")]
    NotAllocated {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
    },
    /// The allocation names a device of this driver in another pool (another node).
    #[error("device {device} of pool {pool} is not on this node (pool {node})")]
    OtherPool {
        /// The device.
        device: String,
        /// Its pool.
        pool: String,
        /// This node's pool.
        node: String,
    },
    /// The allocation names a device this node does not offer (any more).
    #[error(
        "device {device} is not offered by this node: it vanished or was taken outside Kubernetes"
    )]
    UnknownDevice {
        /// The DRA device name.
        device: String,
    },
    /// A device of the claim is held by an owner that is not this claim.
    #[error("device {device} ({address}) is in use by {owner}, not by this claim")]
    Taken {
        /// The DRA device name.
        device: String,
        /// The PCI function held.
        address: String,
        /// Its owner.
        owner: String,
    },
    /// The hostdev core refused or failed.
    #[error("host devices of {owner}: {op} failed")]
    Host {
        /// `prepare`, `release`, `list`.
        op: &'static str,
        /// The claim's owner, `k8s/<namespace>/<uid>`.
        owner: String,
        /// The core's answer.
        #[source]
        source: ServiceError,
    },
    /// The release left devices held.
    #[error("host devices of {owner}: release did not give back {}", .devices.join(", "))]
    NotReleased {
        /// The claim's owner.
        owner: String,
        /// The devices still held.
        devices: Vec<String>,
    },
    /// The devices' VFIO nodes could not be found.
    #[error("PCI device {address}: cannot tell its VFIO device nodes")]
    Nodes {
        /// The device.
        address: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The CDI spec could not be written or removed.
    #[error("CDI spec {}", .path.display())]
    Cdi {
        /// The spec file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The blocking work was lost (its thread panicked).
    #[error("the claim's work stopped unexpectedly")]
    Lost(#[source] tokio::task::JoinError),
}

/// Why publishing the node's ResourceSlices failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The host's devices could not be read.
    #[error("cannot read the host's devices")]
    Host(#[source] ServiceError),
    /// The API server refused or failed a request.
    #[error("ResourceSlice {name}: {op} failed")]
    Store {
        /// `list`, `create`, `replace`, `delete`.
        op: &'static str,
        /// The slice (empty for a list).
        name: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// Others kept changing the pool's slices: the last try still met a conflict.
    #[error("ResourceSlices of pool {pool}: still conflicting after {tries} tries")]
    Conflicts {
        /// The pool.
        pool: String,
        /// How often it tried.
        tries: u32,
    },
    /// The blocking work was lost (its thread panicked).
    #[error("reading the host stopped unexpectedly")]
    Lost(#[source] tokio::task::JoinError),
}

/// What a [`SliceStore`](crate::SliceStore) answers when a request fails.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read (HTTP 409 on update: resourceVersion mismatch),
    /// or it exists already (409 on create).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object is not there (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Why the plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket could not be made.
    #[error("socket {}", .path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Recovering interrupted host-device operations failed (the plugin does not serve
    /// over a half-done state).
    #[error("recovering interrupted host-device operations failed")]
    Recover(#[source] ServiceError),
    /// Recovery was lost (its thread panicked).
    #[error("recovering interrupted host-device operations stopped unexpectedly")]
    Lost(#[source] tokio::task::JoinError),
    /// A gRPC server stopped with an error.
    #[error("the {what} gRPC server failed")]
    Grpc {
        /// `registration` or `DRA`.
        what: &'static str,
        /// What failed.
        #[source]
        source: tonic::transport::Error,
    },
}
