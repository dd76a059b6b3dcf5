//! `plugboard dra-plugin`: run the Kubernetes DRA kubelet plugin (see `plugboard_dra`).
//!
//! Only the flags live here: the kubelet's paths with their defaults, the node's name, the
//! API server client from the pod's service account (or `KUBECONFIG`), the host service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use plugboard_dra::{
    DEFAULT_DRIVER_NAME, Driver, DriverConfig, KubeClaims, KubeSlices, Publisher, Sockets,
};
use plugboard_service::{HostConfig, HostService};
use plugboard_vfio::Mode;

use super::Global;

/// Options of `plugboard dra-plugin`.
#[derive(Debug, Args)]
pub struct DraArgs {
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
}

/// Runs the plugin until SIGTERM.
pub fn run(global: &Global, args: DraArgs) -> anyhow::Result<()> {
    let absolute =
        |p: &std::path::Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let host = Arc::new(HostService::new(HostConfig {
        state_dir: absolute(&global.state_dir)?,
        sysfs_root: absolute(&global.sysfs_root)?,
        dev_root: absolute(&global.dev_root)?,
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
            crate::serve::shutdown_signal(),
        )
        .await
        .context("the DRA plugin failed")
    });
    drop(runtime);
    result
}
