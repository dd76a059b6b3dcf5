//! The daemon's typed client: one method per route of the HTTP API, sending the very
//! request types the server parses and decoding the very answer types it serves (the
//! types of `plugboard-service`), as Cloud Hypervisor's `ch-remote` sends `DiskConfig`.
//!
//! One HTTP/1.1 request per call over the Unix socket, with hyper doing the HTTP. An
//! answer that is not a 2xx is an error carrying the daemon's message and status.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use plugboard_devices::DeviceId;
use plugboard_hostdev::Listing;
use plugboard_service::{
    AttachRequest, Attached, Detached, DeviceDetail, DeviceList, DeviceQuery, Health, HostGroups,
    HostdevRequest, NamesQuery, NodeDeviceResult, PrepareAnswer, Reconnected, RecoverAnswer,
    RegisterVm, ReleaseAnswer, Resolved, VfioQuery, VfioReport, VmInfo, VmList,
};
use plugboard_sysfs::{DevKind, DevNumber, Inventory, PciAddress};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/plugboard/plugboard.sock";

/// A client of the daemon at one socket.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON, or text for `/metrics`).
    pub body: String,
}

/// The daemon's error body.
#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    message: String,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Self {
            socket: socket.to_path_buf(),
            runtime,
        })
    }

    /// `GET /healthz`: the daemon answers, and which host and state it serves.
    pub fn health(&self) -> anyhow::Result<Health> {
        self.call("GET", "/healthz", None::<&()>)
    }

    /// `GET /metrics`: the Prometheus text.
    #[allow(
        dead_code,
        reason = "the CLI has no metrics command: Prometheus and the tests read /metrics"
    )]
    pub fn metrics(&self) -> anyhow::Result<String> {
        let answer = self.send("GET", "/metrics", None)?;
        check(&answer, "GET", "/metrics")?;
        Ok(answer.body)
    }

    /// `GET /v1/host/devices`: the PCI inventory, filtered.
    pub fn host_devices(&self, query: &DeviceQuery) -> anyhow::Result<Inventory> {
        self.call("GET", &with_query("/v1/host/devices", query)?, None::<&()>)
    }

    /// `GET /v1/host/devices/{address}`: one PCI device.
    pub fn host_device(
        &self,
        address: PciAddress,
        query: NamesQuery,
    ) -> anyhow::Result<DeviceDetail> {
        let path = with_query(&format!("/v1/host/devices/{address}"), &query)?;
        self.call("GET", &path, None::<&()>)
    }

    /// `GET /v1/host/iommu-groups`: IOMMU groups and viability.
    pub fn host_groups(&self, query: NamesQuery) -> anyhow::Result<HostGroups> {
        self.call(
            "GET",
            &with_query("/v1/host/iommu-groups", &query)?,
            None::<&()>,
        )
    }

    /// `GET /v1/host/nodes/{kind}/{number}`: a device node by number.
    pub fn host_node(&self, kind: DevKind, number: DevNumber) -> anyhow::Result<Resolved> {
        self.call(
            "GET",
            &format!("/v1/host/nodes/{kind}/{number}"),
            None::<&()>,
        )
    }

    /// `GET /v1/hostdevs`: the hostdev registry.
    pub fn hostdevs(&self) -> anyhow::Result<Listing> {
        self.call("GET", "/v1/hostdevs", None::<&()>)
    }

    /// `POST /v1/hostdevs/prepare`.
    pub fn hostdev_prepare(&self, request: &HostdevRequest) -> anyhow::Result<PrepareAnswer> {
        self.call("POST", "/v1/hostdevs/prepare", Some(request))
    }

    /// `POST /v1/hostdevs/release`.
    pub fn hostdev_release(&self, request: &HostdevRequest) -> anyhow::Result<ReleaseAnswer> {
        self.call("POST", "/v1/hostdevs/release", Some(request))
    }

    /// `POST /v1/hostdevs/recover`.
    pub fn hostdev_recover(&self) -> anyhow::Result<RecoverAnswer> {
        self.call("POST", "/v1/hostdevs/recover", None::<&()>)
    }

    /// `POST /v1/hostdevs/{address}/detach`.
    pub fn hostdev_detach(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        self.call(
            "POST",
            &format!("/v1/hostdevs/{address}/detach"),
            None::<&()>,
        )
    }

    /// `POST /v1/hostdevs/{address}/reattach`.
    pub fn hostdev_reattach(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        self.call(
            "POST",
            &format!("/v1/hostdevs/{address}/reattach"),
            None::<&()>,
        )
    }

    /// `POST /v1/hostdevs/{address}/reset`.
    pub fn hostdev_reset(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        self.call(
            "POST",
            &format!("/v1/hostdevs/{address}/reset"),
            None::<&()>,
        )
    }

    /// `GET /v1/vfio/{address}`: open a device through VFIO and report it.
    pub fn vfio_info(&self, address: PciAddress, query: VfioQuery) -> anyhow::Result<VfioReport> {
        let path = with_query(&format!("/v1/vfio/{address}"), &query)?;
        self.call("GET", &path, None::<&()>)
    }

    /// `GET /v1/vms`.
    pub fn vms(&self) -> anyhow::Result<VmList> {
        self.call("GET", "/v1/vms", None::<&()>)
    }

    /// `POST /v1/vms`.
    pub fn register_vm(&self, request: &RegisterVm) -> anyhow::Result<VmInfo> {
        self.call("POST", "/v1/vms", Some(request))
    }

    /// `GET /v1/vms/{name}`.
    pub fn vm(&self, name: &str) -> anyhow::Result<VmInfo> {
        self.call("GET", &format!("/v1/vms/{name}"), None::<&()>)
    }

    /// `DELETE /v1/vms/{name}`.
    pub fn unregister_vm(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/vms/{name}");
        let answer = self.send("DELETE", &path, None)?;
        check(&answer, "DELETE", &path)
    }

    /// `POST /v1/vms/{name}/reconnect`.
    pub fn reconnect_vm(&self, name: &str) -> anyhow::Result<Reconnected> {
        self.call("POST", &format!("/v1/vms/{name}/reconnect"), None::<&()>)
    }

    /// `GET /v1/vms/{name}/devices`.
    pub fn devices(&self, name: &str) -> anyhow::Result<DeviceList> {
        self.call("GET", &format!("/v1/vms/{name}/devices"), None::<&()>)
    }

    /// `POST /v1/vms/{name}/devices`.
    pub fn attach(&self, name: &str, request: &AttachRequest) -> anyhow::Result<Attached> {
        self.call("POST", &format!("/v1/vms/{name}/devices"), Some(request))
    }

    /// `DELETE /v1/vms/{name}/devices/{id}`.
    pub fn detach(&self, name: &str, id: DeviceId) -> anyhow::Result<Detached> {
        self.call(
            "DELETE",
            &format!("/v1/vms/{name}/devices/{id}"),
            None::<&()>,
        )
    }

    /// Sends one request with an optional JSON body.
    pub fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Answer> {
        self.runtime.block_on(self.send_async(method, path, body))
    }

    async fn send_async(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the daemon at {} (is `plugboard serve` running?)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon failed")?;
        let conn = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "plugboard");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = conn.await;
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends `body` as JSON and decodes a 2xx JSON answer as `T`.
    fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let answer = self.send(method, path, bytes)?;
        check(&answer, method, path)?;
        serde_json::from_str(&answer.body).with_context(|| {
            format!("the daemon's answer to {method} {path} is not the JSON expected")
        })
    }
}

/// An error carrying the daemon's message unless the answer is a 2xx.
fn check(answer: &Answer, method: &str, path: &str) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let message = serde_json::from_str::<ErrorBody>(&answer.body)
        .map_or_else(|_| answer.body.clone(), |e| e.message);
    bail!(
        "the daemon refused {method} {path} ({}): {message}",
        answer.status
    )
}

/// `path?query` with `query` encoded as the server's `Query` extractor decodes it.
fn with_query<Q: Serialize>(path: &str, query: &Q) -> anyhow::Result<String> {
    let encoded = serde_urlencoded::to_string(query).context("cannot encode the query")?;
    Ok(if encoded.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{encoded}")
    })
}
