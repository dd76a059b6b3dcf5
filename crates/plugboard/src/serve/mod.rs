//! `plugboard serve`: the host daemon, HTTP/JSON on a Unix socket.
//!
//! The daemon is the HTTP face of `plugboard-service` and nothing more: it opens the
//! service (recover, load, reconnect, reconcile), binds the socket (`0660`, a chosen
//! group), serves the routes of `routes.rs` with the peer's uid from `SO_PEERCRED`, and on
//! SIGTERM or SIGINT stops accepting, lets in-flight requests finish (their blocking work
//! included), and removes the socket.
//!
//! The runtime is tokio's current-thread scheduler plus its blocking pool: the service's
//! calls run on blocking threads, started on demand and gone when idle, which keeps the
//! idle daemon small.

mod error;
mod handlers;
mod memory;
mod routes;
mod socket;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use plugboard_service::{Service, ServiceConfig};

pub use socket::resolve_group;

/// What `plugboard serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The socket to listen on.
    pub socket: PathBuf,
    /// The socket's group (`None`: root's).
    pub group: Option<u32>,
    /// The service's state directory, host and settings.
    pub service: ServiceConfig,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: &ServeOptions) -> anyhow::Result<()> {
    memory::tune();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(memory::BLOCKING_THREADS)
        .thread_name("plugboard-worker")
        .build()
        .context("cannot start the async runtime")?;
    let (service, report) = Service::open(options.service.clone()).with_context(|| {
        format!(
            "cannot open the service state in {}",
            options.service.host.state_dir.display()
        )
    })?;
    for (vm, reason) in &report.disconnected {
        tracing::warn!(vm, reason, "VM not connected");
    }
    let service = Arc::new(service);
    let result = runtime.block_on(serve(service, options, shutdown_signal()));
    // Dropping the runtime waits for blocking work still running (an operation whose
    // client went away), so nothing is left half-done.
    drop(runtime);
    if let Err(e) = std::fs::remove_file(&options.socket) {
        tracing::warn!(socket = %options.socket.display(), error = %e, "cannot remove the socket");
    }
    tracing::info!("daemon stopped");
    result
}

/// Serves `service` on `options.socket` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    service: Arc<Service>,
    options: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = socket::bind(&options.socket, options.group)?;
    tracing::info!(socket = %options.socket.display(), group = ?options.group, "listening");
    let app = routes::router(service).into_make_service_with_connect_info::<socket::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the server failed")
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
}
