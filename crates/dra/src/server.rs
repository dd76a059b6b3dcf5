//! The plugin's two gRPC endpoints on Unix sockets, as the kubelet expects them:
//!
//! - the **registration** socket, `<registry dir>/<driver>-reg.sock`, where the kubelet's
//!   plugin watcher finds the plugin, asks `GetInfo` (type `DRAPlugin`, the driver's name,
//!   the DRA socket, the services offered) and answers with `NotifyRegistrationStatus`;
//! - the **DRA** socket, `<plugin dir>/dra.sock`, serving `DRAPlugin` of `dra.v1` and
//!   `dra.v1beta1` (same calls, same answers).
//!
//! The DRA socket is made first, so that the kubelet never finds a plugin that cannot
//! answer yet.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::claims::{ClaimRef, ClaimSource};
use crate::error::{ClaimError, ServeError};
use crate::prepare::Driver;
use crate::proto::{dra_v1, dra_v1beta1, pluginregistration as reg};

/// The plugin type the kubelet's plugin watcher hands to its DRA manager.
pub const PLUGIN_TYPE: &str = "DRAPlugin";

/// The services offered, as the kubelet names them in `supported_versions`.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["v1.DRAPlugin", "v1beta1.DRAPlugin"];

/// Where the plugin's sockets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    /// The registration socket.
    pub registration: PathBuf,
    /// The DRA socket.
    pub dra: PathBuf,
}

impl Sockets {
    /// The kubelet's layout: `<registry_dir>/<driver>-reg.sock` and `<plugin_dir>/dra.sock`.
    #[must_use]
    pub fn new(registry_dir: &Path, plugin_dir: &Path, driver: &str) -> Self {
        Self {
            registration: registry_dir.join(format!("{driver}-reg.sock")),
            dra: plugin_dir.join("dra.sock"),
        }
    }
}

/// What the kubelet said of the registration: `None` until it says something.
pub type RegistrationStatus = Option<Result<(), String>>;

/// The registration service.
#[derive(Debug)]
struct Registration {
    info: reg::PluginInfo,
    status: watch::Sender<RegistrationStatus>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _request: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "registered with the kubelet");
            self.status.send_replace(Some(Ok(())));
        } else {
            tracing::error!(driver = %self.info.name, error = %status.error, "the kubelet refused the registration");
            self.status.send_replace(Some(Err(status.error)));
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// The DRA service, for both API versions.
#[derive(Debug)]
struct Dra<C> {
    driver: Arc<Driver<C>>,
}

impl<C> Clone for Dra<C> {
    fn clone(&self) -> Self {
        Self {
            driver: Arc::clone(&self.driver),
        }
    }
}

/// What the kubelet is told of a claim whose `op` failed: the error and its causes on one
/// line, also logged with the claim's name.
fn claim_error(op: &str, claim: &ClaimRef, e: &ClaimError) -> String {
    let error = plugboard_sysfs::error_chain(e);
    tracing::error!(claim = %format!("{}/{}", claim.namespace, claim.name), %error, "{op} failed");
    error
}

/// `DRAPlugin` over one version's generated types (the messages are the same in v1 and
/// v1beta1, under another package).
macro_rules! dra_service {
    ($version:ident) => {
        #[tonic::async_trait]
        impl<C: ClaimSource + 'static> $version::dra_plugin_server::DraPlugin for Dra<C> {
            async fn node_prepare_resources(
                &self,
                request: Request<$version::NodePrepareResourcesRequest>,
            ) -> Result<Response<$version::NodePrepareResourcesResponse>, Status> {
                let mut claims = HashMap::new();
                for claim in request.into_inner().claims {
                    let claim = ClaimRef {
                        namespace: claim.namespace,
                        name: claim.name,
                        uid: claim.uid,
                    };
                    let answer = match self.driver.prepare(&claim).await {
                        Ok(devices) => $version::NodePrepareResourceResponse {
                            devices: devices
                                .into_iter()
                                .map(|d| $version::Device {
                                    request_names: vec![d.request],
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_ids,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(e) => $version::NodePrepareResourceResponse {
                            devices: Vec::new(),
                            error: claim_error("prepare", &claim, &e),
                        },
                    };
                    claims.insert(claim.uid, answer);
                }
                Ok(Response::new($version::NodePrepareResourcesResponse {
                    claims,
                }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$version::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$version::NodeUnprepareResourcesResponse>, Status> {
                let mut claims = HashMap::new();
                for claim in request.into_inner().claims {
                    let claim = ClaimRef {
                        namespace: claim.namespace,
                        name: claim.name,
                        uid: claim.uid,
                    };
                    let error = match self.driver.unprepare(&claim).await {
                        Ok(()) => String::new(),
                        Err(e) => claim_error("unprepare", &claim, &e),
                    };
                    claims.insert(claim.uid, $version::NodeUnprepareResourceResponse { error });
                }
                Ok(Response::new($version::NodeUnprepareResourcesResponse {
                    claims,
                }))
            }
        }
    };
}

dra_service!(dra_v1);
dra_service!(dra_v1beta1);

/// A listening Unix socket at `path`, replacing a stale one left by an earlier run.
fn listen(path: &Path) -> Result<UnixListenerStream, ServeError> {
    let socket_error = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket_error)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(socket_error(e)),
        _ => {}
    }
    // Bound and listening under a hidden temporary name (the kubelet's plugin watcher
    // ignores names starting with '.'), then renamed into place: a socket file appears at
    // bind(), before listen(), and the watcher dials as soon as it sees the file, so a
    // connection in between would be refused. The rename keeps the listening socket (it
    // follows the inode), so the name appears only once it accepts.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(socket_error)?;
    if let Err(e) = std::fs::rename(&staging, path) {
        let _ = std::fs::remove_file(&staging);
        return Err(socket_error(e));
    }
    Ok(UnixListenerStream::new(listener))
}

/// Serves the DRA socket, then the registration socket, until `shutdown` completes;
/// removes both sockets at the end. `status` receives what the kubelet says of the
/// registration.
///
/// # Errors
/// A socket cannot be made, or a server fails.
pub async fn serve<C: ClaimSource + 'static>(
    driver: Arc<Driver<C>>,
    sockets: &Sockets,
    status: watch::Sender<RegistrationStatus>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let dra_incoming = listen(&sockets.dra)?;
    let dra = Dra {
        driver: Arc::clone(&driver),
    };
    let mut dra_stop = stop_rx.clone();
    let dra_server = tonic::transport::Server::builder()
        .add_service(dra_v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
        .add_service(dra_v1beta1::dra_plugin_server::DraPluginServer::new(dra))
        .serve_with_incoming_shutdown(dra_incoming, async move {
            let _ = dra_stop.wait_for(|stop| *stop).await;
        });
    let dra_task = tokio::spawn(dra_server);

    let config = driver.config();
    let registration = Registration {
        info: reg::PluginInfo {
            r#type: PLUGIN_TYPE.to_owned(),
            name: config.driver_name.clone(),
            endpoint: sockets.dra.to_string_lossy().into_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        },
        status,
    };
    let reg_incoming = match listen(&sockets.registration) {
        Ok(incoming) => incoming,
        Err(e) => {
            stop_tx.send_replace(true);
            let _ = dra_task.await;
            return Err(e);
        }
    };
    let mut reg_stop = stop_rx;
    let reg_server = tonic::transport::Server::builder()
        .add_service(reg::registration_server::RegistrationServer::new(
            registration,
        ))
        .serve_with_incoming_shutdown(reg_incoming, async move {
            let _ = reg_stop.wait_for(|stop| *stop).await;
        });
    let reg_task = tokio::spawn(reg_server);
    tracing::info!(
        registration = %sockets.registration.display(),
        dra = %sockets.dra.display(),
        "DRA plugin serving"
    );
    shutdown.await;
    stop_tx.send_replace(true);
    let reg_result = reg_task.await;
    let dra_result = dra_task.await;
    for path in [&sockets.registration, &sockets.dra] {
        let _ = std::fs::remove_file(path);
    }
    for (what, result) in [("registration", reg_result), ("DRA", dra_result)] {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(ServeError::Grpc { what, source }),
            Err(join) => {
                tracing::error!(what, error = %join, "gRPC server task lost");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_is_named_only_once_it_listens_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin-reg.sock");
        std::fs::write(&path, "stale").unwrap();
        let _incoming = listen(&path).unwrap();
        // Accepting at the final name, right away (a connect before listen() is refused).
        tokio::net::UnixStream::connect(&path).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["plugin-reg.sock"]);
    }
}
