//! The route handlers: extract, call the core on a blocking thread, answer.
//!
//! Each handler calls exactly the `plugboard-service` method the CLI calls when it works
//! without the daemon, and answers its typed value as JSON: the HTTP body is the answer
//! type, nothing added. The service's calls block (sysfs, SQLite, QMP), so each runs
//! under `spawn_blocking`; the handler awaits it, which is what lets a graceful shutdown
//! wait for it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use plugboard_service::{
    AttachRequest, Caller, DeviceQuery, HostdevRequest, NamesQuery, NodeDeviceResult, RegisterVm,
    Service, ServiceError, VfioQuery,
};
use plugboard_sysfs::{DevKind, DevNumber, PciAddress};
use serde::Serialize;

use super::error::{ApiError, JsonBody};
use super::socket::Peer;

type Svc = State<Arc<Service>>;
type PeerInfo = ConnectInfo<Peer>;

/// Runs `f` on a blocking thread and turns its error into an answer.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
{
    let job = move || {
        let result = f();
        super::memory::release();
        result
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!(
            "the operation did not finish: {e}"
        ))),
    }
}

fn ok<T: Serialize>(value: &T) -> Response {
    Json(value).into_response()
}

/// The caller; a peer whose uid is unknown is `nobody` (65534), who may only read.
fn caller(peer: &Peer) -> Caller {
    Caller::new(peer.uid.unwrap_or(65534))
}

/// A query string that does not parse is a 400 naming what is wrong.
fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

type QueryOf<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// `GET /healthz`: the daemon answers, and which host and state it serves.
pub async fn healthz(State(svc): Svc) -> Response {
    ok(&svc.health())
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(svc): Svc) -> Result<Response, ApiError> {
    let text = blocking(move || Ok(svc.render_metrics())).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /v1/host/devices`: the PCI inventory (`?class=`, `?driver=`, `?names=false`).
pub async fn host_devices(State(svc): Svc, q: QueryOf<DeviceQuery>) -> Result<Response, ApiError> {
    let q = query(q)?;
    Ok(ok(&blocking(move || svc.host().devices(&q)).await?))
}

/// `GET /v1/host/devices/{address}`: one PCI device.
pub async fn host_device(
    State(svc): Svc,
    Path(address): Path<String>,
    q: QueryOf<NamesQuery>,
) -> Result<Response, ApiError> {
    let address = pci_address(&address)?;
    let q = query(q)?;
    Ok(ok(&blocking(move || svc.host().device(address, q)).await?))
}

/// `GET /v1/host/iommu-groups`: IOMMU groups and viability.
pub async fn iommu_groups(State(svc): Svc, q: QueryOf<NamesQuery>) -> Result<Response, ApiError> {
    let q = query(q)?;
    Ok(ok(&blocking(move || svc.host().groups(q)).await?))
}

/// `GET /v1/host/nodes/{kind}/{number}`: a block or char device node by number.
pub async fn host_node(
    State(svc): Svc,
    Path((kind, number)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind: DevKind = kind
        .parse()
        .map_err(|e: plugboard_sysfs::DevNodeError| ApiError::bad_request(e.to_string()))?;
    let number: DevNumber = number
        .parse()
        .map_err(|e: plugboard_sysfs::DevNodeError| ApiError::bad_request(e.to_string()))?;
    Ok(ok(
        &blocking(move || svc.host().resolve(kind, number)).await?
    ))
}

/// `GET /v1/vfio/{address}`: open a device through VFIO and report it (root; refused for a
/// device a VM holds).
pub async fn vfio_info(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(address): Path<String>,
    q: QueryOf<VfioQuery>,
) -> Result<Response, ApiError> {
    let address = pci_address(&address)?;
    let q = query(q)?;
    let caller = caller(&peer);
    Ok(ok(&blocking(move || {
        svc.host().vfio_info(caller, address, q)
    })
    .await?))
}

/// `GET /v1/hostdevs`: the hostdev registry.
pub async fn hostdevs(State(svc): Svc) -> Result<Response, ApiError> {
    Ok(ok(&blocking(move || svc.host().hostdevs()).await?))
}

/// `POST /v1/hostdevs/prepare`.
pub async fn hostdev_prepare(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    JsonBody(req): JsonBody<HostdevRequest>,
) -> Result<Response, ApiError> {
    let caller = caller(&peer);
    Ok(ok(&blocking(move || {
        svc.host().hostdev_prepare(caller, &req, svc.as_ref())
    })
    .await?))
}

/// `POST /v1/hostdevs/release`.
pub async fn hostdev_release(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    JsonBody(req): JsonBody<HostdevRequest>,
) -> Result<Response, ApiError> {
    let caller = caller(&peer);
    Ok(ok(&blocking(move || {
        svc.host().hostdev_release(caller, &req, svc.as_ref())
    })
    .await?))
}

/// `POST /v1/hostdevs/recover` (root).
pub async fn hostdev_recover(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
) -> Result<Response, ApiError> {
    let caller = caller(&peer);
    Ok(ok(
        &blocking(move || svc.host().hostdev_recover(caller)).await?
    ))
}

fn pci_address(text: &str) -> Result<PciAddress, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("PCI address {text:?}: {e}")))
}

/// A node-device operation (detach, reattach, reset) on the PCI device in the path.
type NodeDeviceOp = fn(
    &plugboard_service::HostService,
    Caller,
    PciAddress,
) -> Result<NodeDeviceResult, ServiceError>;

async fn node_device(
    svc: Arc<Service>,
    peer: &Peer,
    address: &str,
    op: NodeDeviceOp,
) -> Result<Response, ApiError> {
    let address = pci_address(address)?;
    let caller = caller(peer);
    Ok(ok(&blocking(move || op(svc.host(), caller, address)).await?))
}

/// `POST /v1/hostdevs/{address}/detach` (root).
pub async fn hostdev_detach(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(address): Path<String>,
) -> Result<Response, ApiError> {
    node_device(
        svc,
        &peer,
        &address,
        plugboard_service::HostService::hostdev_detach,
    )
    .await
}

/// `POST /v1/hostdevs/{address}/reattach` (root).
pub async fn hostdev_reattach(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(address): Path<String>,
) -> Result<Response, ApiError> {
    node_device(
        svc,
        &peer,
        &address,
        plugboard_service::HostService::hostdev_reattach,
    )
    .await
}

/// `POST /v1/hostdevs/{address}/reset` (root).
pub async fn hostdev_reset(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(address): Path<String>,
) -> Result<Response, ApiError> {
    node_device(
        svc,
        &peer,
        &address,
        plugboard_service::HostService::hostdev_reset,
    )
    .await
}

/// `GET /v1/vms`.
pub async fn vms(State(svc): Svc) -> Result<Response, ApiError> {
    Ok(ok(&blocking(move || Ok(svc.vms())).await?))
}
/// `POST /v1/vms`: 201 with the VM.
pub async fn register_vm(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    JsonBody(req): JsonBody<RegisterVm>,
) -> Result<Response, ApiError> {
    let info = blocking(move || svc.register_vm(caller(&peer), req)).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `GET /v1/vms/{name}`.
pub async fn vm(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(&blocking(move || svc.vm_info(&name)).await?))
}

/// `DELETE /v1/vms/{name}`: 204.
pub async fn unregister_vm(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || svc.unregister_vm(caller(&peer), &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/vms/{name}/reconnect`: a disconnected VM's hypervisor, again.
pub async fn reconnect_vm(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(&blocking(move || {
        svc.reconnect_vm(caller(&peer), &name)
    })
    .await?))
}

/// `GET /v1/vms/{name}/devices`.
pub async fn devices(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(ok(&blocking(move || svc.devices(&name)).await?))
}

/// `POST /v1/vms/{name}/devices`: 201 when plugged now, 200 when only counted.
pub async fn attach(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<AttachRequest>,
) -> Result<Response, ApiError> {
    let attached = blocking(move || svc.attach(caller(&peer), &name, &req)).await?;
    let status = if attached.plugged {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(attached)).into_response())
}

/// `DELETE /v1/vms/{name}/devices/{id}`.
pub async fn detach(
    State(svc): Svc,
    ConnectInfo(peer): PeerInfo,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = plugboard_service::parse_device_id(&id)?;
    Ok(ok(
        &blocking(move || svc.detach(caller(&peer), &name, id)).await?
    ))
}
