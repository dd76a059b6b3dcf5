//! `plugboard-dra`: the Kubernetes DRA kubelet plugin, as a DaemonSet runs it.
//!
//! Thin glue, like `plugboard`'s commands: the flags (the kubelet's paths with their
//! defaults, the node's name, where Plugboard keeps its state and sees the host), the API
//! server client from the pod's service account (or `KUBECONFIG`), the host service, then
//! [`plugboard_dra::run`] until SIGTERM. It is a binary of its own so that the `plugboard`
//! daemon does not carry the Kubernetes client: the two share the host core and its
//! registry, not an executable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use plugboard_dra::{
    DEFAULT_DRIVER_NAME, Driver, DriverConfig, KubeClaims, KubeSlices, Publisher, Sockets,
};
use plugboard_service::{HostConfig, HostService};
use plugboard_vfio::Mode;

/// Runs the Kubernetes DRA kubelet plugin: publishes this node's passthrough-capable PCI
/// devices as ResourceSlices and prepares claims through Plugboard's host-device core.
#[derive(Debug, Parser)]
#[command(name = "plugboard-dra", version)]
struct Args {
    /// This node's name (the pool's name; the downward API gives it as `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The DRA driver name, as DeviceClasses select it.
    #[arg(long, env = "PLUGBOARD_DRA_DRIVER", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// The kubelet's plugin registration directory.
    #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
    registry_dir: PathBuf,
    /// The plugin's own directory, for its DRA socket (default
    /// `/var/lib/kubelet/plugins/<driver name>`).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Where CDI specs are written for the container runtime.
    #[arg(long, default_value = "/var/run/cdi")]
    cdi_dir: PathBuf,
    /// Which VFIO device nodes a prepared claim gets: `legacy` (/dev/vfio/vfio and the
    /// group), `iommufd` (/dev/iommu and the device's cdev), or `auto` (iommufd where the
    /// kernel and device offer it).
    #[arg(long, default_value = "auto")]
    vfio_mode: Mode,
    /// Seconds between two looks at the host for the ResourceSlices (a prepare or
    /// unprepare publishes at once).
    #[arg(long, default_value_t = 30)]
    publish_interval: u64,
    /// Root of the sysfs tree to read and write.
    #[arg(long, env = "PLUGBOARD_SYSFS_ROOT", default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Root of the device-node tree (`/dev`).
    #[arg(long, env = "PLUGBOARD_DEV_ROOT", default_value = "/dev")]
    dev_root: PathBuf,
    /// Directory of Plugboard's persistent state (the hostdev registry the CLI and the
    /// daemon share).
    #[arg(
        long,
        env = "PLUGBOARD_STATE_DIR",
        default_value = "/var/lib/plugboard"
    )]
    state_dir: PathBuf,
    /// More log output on stderr (repeat for more); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plugboard-dra: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = ["warn", "info", "debug"]
        .get(usize::from(verbose))
        .copied()
        .unwrap_or("trace");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the plugin until SIGTERM or SIGINT.
fn run(args: Args) -> anyhow::Result<()> {
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let host = Arc::new(HostService::new(HostConfig {
        state_dir: absolute(&args.state_dir)?,
        sysfs_root: absolute(&args.sysfs_root)?,
        dev_root: absolute(&args.dev_root)?,
        pci_ids: None,
    }));
    let plugin_dir = args
        .plugin_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/plugins").join(&args.driver_name));
    let sockets = Sockets::new(&args.registry_dir, &plugin_dir, &args.driver_name);
    let config = DriverConfig {
        driver_name: args.driver_name.clone(),
        node_name: args.node_name.clone(),
        cdi_dir: args.cdi_dir,
        vfio_mode: args.vfio_mode,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("plugboard-dra")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes API server (in-cluster service account or KUBECONFIG)")?;
        let driver = Arc::new(Driver::new(host, KubeClaims::new(client.clone()), config));
        let publisher = Publisher::new(KubeSlices::new(client), &args.driver_name, &args.node_name);
        plugboard_dra::run(
            driver,
            publisher,
            &sockets,
            Duration::from_secs(args.publish_interval),
            shutdown_signal(),
        )
        .await
        .context("the DRA plugin failed")
    });
    drop(runtime);
    result
}

/// Completes at SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
