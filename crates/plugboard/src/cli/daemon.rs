//! Where an answer comes from: the daemon when it serves this host, or the core in this
//! process otherwise. Nothing else.
//!
//! A command uses the daemon when its socket (`$PLUGBOARD_SOCKET`, else the default) is
//! there and the daemon looks at the same host as the command would (its `/healthz` names
//! the same sysfs root, dev root and state directory as this command's options, and for
//! host listings the same pci.ids). Then the daemon's authorization and its one view of
//! the registry apply: a member of the socket's group can read the registry and prepare
//! devices for their own VMs without being root. `PLUGBOARD_LOCAL=1` forces local work.
//!
//! Either way the answer is the same typed value from the same `plugboard-service`
//! method ([`Core`] has one method per command, with one `match` each), and one renderer
//! per command prints it.

use std::path::{Path, PathBuf};

use plugboard_hostdev::Listing;
use plugboard_service::{
    Caller, DeviceDetail, DeviceQuery, HostConfig, HostGroups, HostService, HostdevRequest,
    NamesQuery, NodeDeviceResult, PrepareAnswer, RecoverAnswer, ReleaseAnswer, Resolved, VfioQuery,
    VfioReport,
};
use plugboard_sysfs::{DevKind, DevNumber, Inventory, PciAddress};

use super::Global;
use crate::client::{Client, DEFAULT_SOCKET};

/// Where answers come from.
#[derive(Debug)]
pub enum Core {
    /// The core in this process, acting as the calling user.
    Local {
        /// The host side of the core.
        host: Box<HostService>,
        /// The calling user, for the core's rules.
        caller: Caller,
    },
    /// The daemon serving this host.
    Daemon(Client),
}

impl Core {
    /// The core for `global`'s host; `pci_ids` is the names database a host listing uses
    /// (`None` for commands that show no names).
    pub fn for_host(global: &Global, pci_ids: Option<&Path>) -> Self {
        let config = HostConfig {
            state_dir: absolute(&global.state_dir),
            sysfs_root: absolute(&global.sysfs_root),
            dev_root: absolute(&global.dev_root),
            pci_ids: pci_ids.filter(|p| p.exists()).map(absolute),
        };
        match daemon_for(&config, pci_ids.is_some()) {
            Some(client) => Self::Daemon(client),
            None => Self::Local {
                host: Box::new(HostService::new(config)),
                caller: Caller::new(rustix::process::geteuid().as_raw()),
            },
        }
    }

    /// `host ls`.
    pub fn devices(&self, query: &DeviceQuery) -> anyhow::Result<Inventory> {
        match self {
            Self::Local { host, .. } => Ok(host.devices(query)?),
            Self::Daemon(client) => client.host_devices(query),
        }
    }

    /// `host groups`.
    pub fn groups(&self, query: NamesQuery) -> anyhow::Result<HostGroups> {
        match self {
            Self::Local { host, .. } => Ok(host.groups(query)?),
            Self::Daemon(client) => client.host_groups(query),
        }
    }

    /// `host show`.
    pub fn device(&self, address: PciAddress, query: NamesQuery) -> anyhow::Result<DeviceDetail> {
        match self {
            Self::Local { host, .. } => Ok(host.device(address, query)?),
            Self::Daemon(client) => client.host_device(address, query),
        }
    }

    /// `host resolve`.
    pub fn resolve(&self, kind: DevKind, number: DevNumber) -> anyhow::Result<Resolved> {
        match self {
            Self::Local { host, .. } => Ok(host.resolve(kind, number)?),
            Self::Daemon(client) => client.host_node(kind, number),
        }
    }

    /// `hostdev ls`.
    pub fn hostdevs(&self) -> anyhow::Result<Listing> {
        match self {
            Self::Local { host, .. } => Ok(host.hostdevs()?),
            Self::Daemon(client) => client.hostdevs(),
        }
    }

    /// `hostdev prepare`.
    pub fn prepare(&self, request: &HostdevRequest) -> anyhow::Result<PrepareAnswer> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_prepare(*caller, request, &())?),
            Self::Daemon(client) => client.hostdev_prepare(request),
        }
    }

    /// `hostdev release`.
    pub fn release(&self, request: &HostdevRequest) -> anyhow::Result<ReleaseAnswer> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_release(*caller, request, &())?),
            Self::Daemon(client) => client.hostdev_release(request),
        }
    }

    /// `hostdev detach`.
    pub fn detach(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_detach(*caller, address)?),
            Self::Daemon(client) => client.hostdev_detach(address),
        }
    }

    /// `hostdev reattach`.
    pub fn reattach(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_reattach(*caller, address)?),
            Self::Daemon(client) => client.hostdev_reattach(address),
        }
    }

    /// `hostdev reset`.
    pub fn reset(&self, address: PciAddress) -> anyhow::Result<NodeDeviceResult> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_reset(*caller, address)?),
            Self::Daemon(client) => client.hostdev_reset(address),
        }
    }

    /// `hostdev recover`.
    pub fn recover(&self) -> anyhow::Result<RecoverAnswer> {
        match self {
            Self::Local { host, caller } => Ok(host.hostdev_recover(*caller)?),
            Self::Daemon(client) => client.hostdev_recover(),
        }
    }

    /// `vfio info`.
    pub fn vfio_info(&self, address: PciAddress, query: VfioQuery) -> anyhow::Result<VfioReport> {
        match self {
            Self::Local { host, caller } => Ok(host.vfio_info(*caller, address, query)?),
            Self::Daemon(client) => client.vfio_info(address, query),
        }
    }
}

/// The daemon's client, when a daemon serves exactly `config`'s host and state (and, when
/// `names` matters, the same pci.ids).
fn daemon_for(config: &HostConfig, names: bool) -> Option<Client> {
    if std::env::var_os("PLUGBOARD_LOCAL").is_some_and(|v| v != "0") {
        return None;
    }
    let socket = std::env::var_os("PLUGBOARD_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    if !socket.exists() {
        return None;
    }
    let client = Client::new(&socket).ok()?;
    let health = match client.health() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "the daemon's socket is there but it does not answer; working locally");
            return None;
        }
    };
    let served = &health.host;
    let same = served.sysfs_root == config.sysfs_root
        && served.dev_root == config.dev_root
        && served.state_dir == config.state_dir
        && (!names || served.pci_ids == config.pci_ids);
    if same {
        tracing::debug!(socket = %socket.display(), "using the daemon");
        Some(client)
    } else {
        tracing::debug!(socket = %socket.display(), "the daemon looks at another host or state; working locally");
        None
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
