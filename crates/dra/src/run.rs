//! The whole plugin: recover, then serve the kubelet and keep the node's slices current.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plugboard_service::{Caller, HostService};
use tokio::sync::{Notify, watch};

use crate::claims::ClaimSource;
use crate::error::{PublishError, ServeError};
use crate::offer::Offer;
use crate::prepare::Driver;
use crate::publish::{PublishReport, Publisher, SliceStore};
use crate::server::{RegistrationStatus, Sockets, serve};

/// The node's offers now, read from the host on the blocking pool.
///
/// # Errors
/// The host's devices or groups cannot be read.
pub async fn current_offers(host: &Arc<HostService>) -> Result<Vec<Offer>, PublishError> {
    let host = Arc::clone(host);
    tokio::task::spawn_blocking(move || crate::host::node_offers(&host).map_err(PublishError::Host))
        .await
        .map_err(PublishError::Lost)?
}

/// Publishes the node's offers once.
///
/// # Errors
/// See [`Publisher::publish`].
pub async fn publish_once<S: SliceStore>(
    host: &Arc<HostService>,
    publisher: &Publisher<S>,
) -> Result<PublishReport, PublishError> {
    let offers = current_offers(host).await?;
    publisher.publish(&offers).await
}

/// Publishes now, then again after every `changed` notification and every `interval`,
/// until `stop` turns true. A failed publish is logged and tried again at the next turn.
pub async fn publish_loop<S: SliceStore>(
    host: Arc<HostService>,
    publisher: Publisher<S>,
    changed: Arc<Notify>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match publish_once(&host, &publisher).await {
            Ok(report) if report.writes() > 0 => {
                tracing::debug!(
                    writes = report.writes(),
                    generation = report.generation,
                    "published"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "publishing ResourceSlices failed; trying again");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = changed.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the plugin until `shutdown` completes: recovers interrupted host-device operations
/// first (a plugin killed mid-prepare leaves an intent; nothing is served over it), then
/// serves the kubelet and publishes the node's slices every `interval` and after every
/// change.
///
/// # Errors
/// Recovery failed, a socket cannot be made, or a server failed.
pub async fn run<C: ClaimSource + 'static, S: SliceStore + 'static>(
    driver: Arc<Driver<C>>,
    publisher: Publisher<S>,
    sockets: &Sockets,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let host = Arc::clone(driver.host());
    let recovered = {
        let host = Arc::clone(&host);
        tokio::task::spawn_blocking(move || host.hostdev_recover(Caller::ROOT))
            .await
            .map_err(ServeError::Lost)?
            .map_err(ServeError::Recover)?
    };
    for r in &recovered.recovered {
        tracing::info!(recovered = ?r, "interrupted host-device operation settled");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(publish_loop(
        Arc::clone(&host),
        publisher,
        driver.changed(),
        interval,
        stop_rx,
    ));
    let (status, _) = watch::channel::<RegistrationStatus>(None);
    let served = serve(driver, sockets, status, shutdown).await;
    stop_tx.send_replace(true);
    let _ = publishing.await;
    served
}
