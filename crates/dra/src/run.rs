//! The whole plugin: recover, then serve the kubelet and keep the node's slices current.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plugboard_service::{Caller, HostService};
use tokio::sync::{Notify, watch};

use crate::claims::ClaimSource;
use tokio_stream::StreamExt;

use crate::error::{PublishError, ServeError, StoreError};
use crate::offer::Offer;
use crate::prepare::Driver;
use crate::publish::{PublishReport, Publisher, SliceEvent, SliceEvents, SliceStore};
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

/// Keeps the node's pool published until `stop` turns true: first makes the Node object
/// the slices' owner ([`Publisher::own_by_node`]; without it when the Node cannot be read),
/// then publishes now, again after every `changed` notification, every `interval`, and
/// whenever the watch of the pool's slices shows them changed by someone else (an operator
/// or the garbage collector deleted or edited one: [`Publisher::differs`]; the echo of the
/// publisher's own writes is not a change). A watch that ends or fails is opened again
/// (after a second) and followed by a publish, since changes may have been missed. A failed
/// publish is logged and tried again at the next turn.
pub async fn publish_loop<S: SliceStore>(
    host: Arc<HostService>,
    mut publisher: Publisher<S>,
    changed: Arc<Notify>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Logged inside; publishing goes on without an owner.
    let _ = publisher.own_by_node().await;
    let mut events: Option<SliceEvents> = None;
    let mut due = true;
    loop {
        if events.is_none() {
            match publisher.watch().await {
                Ok(stream) => events = Some(stream),
                Err(e) => {
                    tracing::warn!(error = %plugboard_sysfs::error_chain(&e), "cannot watch the ResourceSlices; publishing on the interval only until it can");
                }
            }
            due = true;
        }
        if due {
            due = false;
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
                    tracing::warn!(error = %plugboard_sysfs::error_chain(&e), "publishing ResourceSlices failed; trying again");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => due = true,
            () = changed.notified() => due = true,
            _ = stop.wait_for(|s| *s) => return,
            event = next_event(&mut events) => match event {
                Some(Ok(event)) => {
                    if publisher.differs(&event) {
                        tracing::info!(
                            slice = event.slice().metadata.name.as_deref().unwrap_or_default(),
                            deleted = matches!(event, SliceEvent::Deleted(_)),
                            "a ResourceSlice of this node was changed by someone else; publishing again"
                        );
                        due = true;
                    }
                }
                ended => {
                    if let Some(Err(e)) = ended {
                        tracing::warn!(error = %plugboard_sysfs::error_chain(&e), "the ResourceSlice watch failed; watching again");
                    }
                    events = None;
                }
            },
        }
        if events.is_none() {
            // A watch that cannot be opened or keeps ending is not retried in a loop.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// The next event of `events`; never, when there is no watch.
async fn next_event(events: &mut Option<SliceEvents>) -> Option<Result<SliceEvent, StoreError>> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Runs the plugin until `shutdown` completes: recovers interrupted host-device operations
/// first (a plugin killed mid-prepare leaves an intent; nothing is served over it), then
/// serves the kubelet and keeps the node's slices published ([`publish_loop`]: every
/// `interval`, after every change, and when someone else changes them).
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
