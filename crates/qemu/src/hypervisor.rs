//! `QemuHypervisor`: one running QEMU, driven over its QMP socket.
//!
//! At connect it negotiates QMP, discovers the empty root ports (`ports.rs`) and reads
//! whether the VM's RAM is shared (`query-memdev`: every memory backend must say
//! `share: true`), then plugs and unplugs plans (`hotplug.rs`, `removal.rs`), keeping the
//! ports' occupancy up to date. The plugboard-devices `Hypervisor` trait is implemented on
//! top of this in `devices.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::hotplug::{self, HotplugError, VmFacts};
use crate::plan::Plan;
use crate::ports::{self, PortError, RootPort};
use crate::qmp::{DEFAULT_TIMEOUT, QmpClient, QmpError};
use crate::removal::{self, RemovalError};

/// How long to wait for a guest to release a device, unless told otherwise.
pub const DEFAULT_UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a QEMU could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The QMP session could not be opened.
    #[error("cannot open a QMP session")]
    Connect(#[source] QmpError),
    /// The root ports could not be listed.
    #[error("cannot discover the VM's hotplug ports")]
    Ports(#[source] PortError),
    /// The memory backends could not be read.
    #[error("cannot read the VM's memory backends (query-memdev)")]
    Memory(#[source] QmpError),
}

/// How to talk to a QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The deadline of each QMP command.
    pub command_timeout: Duration,
    /// How long to wait for the guest to release a device.
    pub unplug_timeout: Duration,
    /// Whether guest RAM is shared; `None` reads it from QEMU (`query-memdev`).
    pub memory_shared: Option<bool>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            command_timeout: DEFAULT_TIMEOUT,
            unplug_timeout: DEFAULT_UNPLUG_TIMEOUT,
            memory_shared: None,
        }
    }
}

/// A running QEMU that devices can be plugged into.
#[derive(Debug)]
pub struct QemuHypervisor {
    client: QmpClient,
    ports: Vec<RootPort>,
    memory_shared: bool,
    unplug_timeout: Duration,
}

impl QemuHypervisor {
    /// Connects to QEMU's QMP socket and reads the VM's ports and memory.
    pub fn connect(socket: &Path, options: ConnectOptions) -> Result<Self, HypervisorError> {
        let client = QmpClient::connect(socket, options.command_timeout)
            .map_err(HypervisorError::Connect)?;
        Self::from_client(client, options)
    }

    /// Takes over an open QMP session.
    pub fn from_client(
        mut client: QmpClient,
        options: ConnectOptions,
    ) -> Result<Self, HypervisorError> {
        client.set_timeout(options.command_timeout);
        let ports = ports::discover(&mut client).map_err(HypervisorError::Ports)?;
        let memory_shared = match options.memory_shared {
            Some(shared) => shared,
            None => {
                let memdevs = client
                    .execute("query-memdev", None)
                    .map_err(HypervisorError::Memory)?;
                all_shared(&memdevs)
            }
        };
        tracing::debug!(
            socket = %client.socket().display(), ports = ports.len(), memory_shared,
            "took over QEMU"
        );
        Ok(Self {
            client,
            ports,
            memory_shared,
            unplug_timeout: options.unplug_timeout,
        })
    }

    /// The VM's root ports, with what is on each.
    pub fn root_ports(&self) -> &[RootPort] {
        &self.ports
    }

    /// The ids of the root ports with nothing on them, in natural order.
    pub fn free_ports(&self) -> Vec<String> {
        self.ports
            .iter()
            .filter(|p| p.occupant.is_none())
            .map(|p| p.id.clone())
            .collect()
    }

    /// Whether guest RAM is shared (vhost-user possible).
    pub fn memory_shared(&self) -> bool {
        self.memory_shared
    }

    /// How long removal waits for the guest.
    pub fn unplug_timeout(&self) -> Duration {
        self.unplug_timeout
    }

    /// Changes how long removal waits for the guest.
    pub fn set_unplug_timeout(&mut self, timeout: Duration) {
        self.unplug_timeout = timeout;
    }

    /// The QMP session, for queries of one's own.
    pub fn client(&mut self) -> &mut QmpClient {
        &mut self.client
    }

    /// Hot-plugs a plan (checks, backends, device; rolled back on failure).
    pub fn plug(&mut self, plan: &Plan) -> Result<(), HotplugError> {
        let facts = VmFacts {
            memory_shared: self.memory_shared,
        };
        hotplug::plug(&mut self.client, plan, facts)?;
        self.set_occupant(plan, Some(plan.id.qom_path()));
        Ok(())
    }

    /// Removes a plan's device and backends; a [`RemovalError::GuestTimeout`] can be retried.
    pub fn unplug(&mut self, plan: &Plan) -> Result<(), RemovalError> {
        removal::unplug(&mut self.client, plan, self.unplug_timeout)?;
        self.set_occupant(plan, None);
        Ok(())
    }

    fn set_occupant(&mut self, plan: &Plan, occupant: Option<String>) {
        if let Some(bus) = plan.bus()
            && let Some(port) = self.ports.iter_mut().find(|p| p.id == bus)
        {
            port.occupant = occupant;
        }
    }
}

/// Whether every memory backend in a `query-memdev` answer is shared (and there is one).
fn all_shared(memdevs: &Value) -> bool {
    memdevs.as_array().is_some_and(|l| {
        !l.is_empty()
            && l.iter()
                .all(|m| m.get("share").and_then(Value::as_bool) == Some(true))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn memory_is_shared_only_when_every_backend_is() {
        assert!(all_shared(&json!([{"id": "mem", "share": true}])));
        assert!(!all_shared(&json!([{"id": "pc.ram", "share": false}])));
        assert!(!all_shared(
            &json!([{"id": "mem", "share": true}, {"id": "m2", "share": false}])
        ));
        assert!(!all_shared(&json!([])));
    }
}
