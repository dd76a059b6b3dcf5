//! `plugboard serve`: start the host daemon (see `crate::serve`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use plugboard_service::{HostConfig, ServiceConfig};
use plugboard_vfio::Mode;

use super::Global;
use crate::client::DEFAULT_SOCKET;
use crate::serve::{self, ServeOptions};

/// Options of `plugboard serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The Unix socket to listen on (created 0660).
    #[arg(long, env = "PLUGBOARD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The socket's group (name or gid): its members may use the daemon.
    #[arg(long)]
    socket_group: Option<String>,
    /// The pci.ids database for device names (a missing file means no names).
    #[arg(long, env = "PLUGBOARD_PCI_IDS", default_value = plugboard_sysfs::DEFAULT_PCI_IDS)]
    pci_ids: PathBuf,
    /// Seconds a detach waits for the guest to release a device.
    #[arg(long, default_value_t = 10)]
    unplug_timeout: u64,
    /// The VFIO interface for passthrough: auto (the device cdev with iommufd where the
    /// kernel and device offer it, handed to QEMU by descriptor; else the legacy group),
    /// legacy, or iommufd.
    #[arg(long, env = "PLUGBOARD_VFIO_MODE", default_value_t = Mode::Auto)]
    vfio_mode: Mode,
}

/// Runs the daemon until SIGTERM.
pub fn run(global: &Global, args: ServeArgs) -> anyhow::Result<()> {
    let group = args
        .socket_group
        .as_deref()
        .map(serve::resolve_group)
        .transpose()
        .context("--socket-group")?;
    // Absolute, so `/healthz` tells clients exactly which host and state this daemon serves.
    let absolute =
        |p: &std::path::Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    serve::run(&ServeOptions {
        socket: args.socket,
        group,
        service: ServiceConfig {
            host: HostConfig {
                state_dir: absolute(&global.state_dir)?,
                sysfs_root: absolute(&global.sysfs_root)?,
                dev_root: absolute(&global.dev_root)?,
                pci_ids: if args.pci_ids.exists() {
                    Some(absolute(&args.pci_ids)?)
                } else {
                    None
                },
            },
            unplug_timeout: std::time::Duration::from_secs(args.unplug_timeout),
            vfio_mode: args.vfio_mode,
        },
    })
}
