//! `QemuHypervisor`: one QEMU, before it starts (coldplug) and while it runs (hotplug).
//!
//! Before the VM starts, plans are collected and rendered as command-line arguments
//! ([`QemuHypervisor::boot_args`]). Once QEMU runs, [`QemuHypervisor::attach`] opens the QMP
//! session: it negotiates, discovers the root ports (`ports.rs`), finds the virtio-scsi
//! controller, and reads whether guest RAM is shared (`query-memdev`: every memory backend
//! must say `share: true`). Plans are then plugged and unplugged over QMP.
//!
//! The state sits behind one mutex because QMP is one ordered conversation: a call holds it
//! for its whole exchange, including the wait for the guest to release a device.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;

use crate::cmdline;
use crate::hotplug::{self, HotplugError, VmFacts};
use crate::plan::Plan;
use crate::ports::{self, PcieRootPort, PortError};
use crate::qmp::{DEFAULT_TIMEOUT, QmpClient, QmpError};
use crate::qom;
use crate::removal::{self, Departure, RemovalError};

/// The qdev type of the controller SCSI disks go on.
const SCSI_CONTROLLER: &str = "virtio-scsi-pci";

/// How long to wait for a guest to release a device, unless told otherwise.
pub const DEFAULT_UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// Why QEMU could not be taken over or used.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The QMP session could not be opened.
    #[error("cannot open a QMP session")]
    Connect(#[source] QmpError),
    /// The root ports could not be listed.
    #[error("cannot discover the VM's hotplug ports")]
    Ports(#[source] PortError),
    /// A QOM or memory query at connect failed.
    #[error("cannot query the VM ({what})")]
    Query {
        /// The query.
        what: &'static str,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// A configured root port is not in the VM.
    #[error("the configured root port {port} is not a pcie-root-port of this VM")]
    MissingPort {
        /// The port id.
        port: String,
    },
    /// A file could not be handed to QEMU (`add-fd`).
    #[error("cannot hand {what} to QEMU as a descriptor (add-fd)")]
    AddFd {
        /// What the file is (the note given with it).
        what: String,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// An fd set could not be closed (`remove-fd`).
    #[error("cannot close fd set {fdset} in QEMU (remove-fd)")]
    RemoveFd {
        /// The fd set.
        fdset: u32,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// Hotplug or removal before [`QemuHypervisor::attach`].
    #[error("QEMU is not running yet (no QMP session)")]
    NotRunning,
    /// Coldplug after the VM started.
    #[error("the VM is already running; coldplug is for a VM not yet started")]
    AlreadyRunning,
    /// A hotplug failed.
    #[error(transparent)]
    Hotplug(#[from] HotplugError),
    /// A removal failed.
    #[error(transparent)]
    Removal(#[from] RemovalError),
    /// A request cannot be a device of this VM (its port is not in the pool, …).
    #[error("device {device} cannot be a device of this VM")]
    Request {
        /// The device.
        device: plugboard_devices::DeviceId,
        /// Why.
        #[source]
        source: crate::requests::RequestError,
    },
    /// A plug failed (the source), and undoing what it had done did not finish: the VM may
    /// still hold the objects named (devices whose removal the guest has not acknowledged,
    /// backends that could not be deleted). Removing the same request later finishes it.
    #[error("a plug failed and undoing it left {} in the VM", left.join(", "))]
    RollbackIncomplete {
        /// The devices and backends that may still be in the VM.
        left: Vec<String>,
        /// Why the plug failed.
        #[source]
        cause: Box<QemuError>,
    },
}

/// How to drive a QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The deadline of each QMP command.
    pub command_timeout: Duration,
    /// How long to wait for the guest to release a device.
    pub unplug_timeout: Duration,
    /// Whether guest RAM is shared; `None` reads it from QEMU at attach (`query-memdev`).
    pub memory_shared: Option<bool>,
    /// The root ports of the manager's pool, in order. Empty: the free root ports found at
    /// attach, in natural order (coldplug then cannot use ports). Give it explicitly when
    /// reattaching to a VM that already holds the manager's devices, or the saved port
    /// numbers would map onto other ports.
    pub root_ports: Vec<String>,
    /// The virtio-scsi controller for SCSI disks; `None`: the first one found at attach.
    pub scsi_controller: Option<String>,
    /// `Some(dev_root)`: hot-plugged PCI functions in iommufd mode are handed to QEMU by
    /// descriptor: we open their cdev (`<dev_root>/vfio/devices/vfioN`) and, once per VM,
    /// `<dev_root>/iommu` for the shared [`VM_IOMMUFD`](crate::id::VM_IOMMUFD) object, and
    /// pass them with `getfd`, so a QEMU without access to `/dev/vfio` and `/dev/iommu`
    /// (an unprivileged one) can use them. `None` (the default): QEMU opens them itself.
    /// Legacy-mode functions and coldplug always leave the opening to QEMU (it takes no
    /// group descriptor, and a command line cannot name a passed one).
    pub vfio_fds: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            command_timeout: DEFAULT_TIMEOUT,
            unplug_timeout: DEFAULT_UNPLUG_TIMEOUT,
            memory_shared: None,
            root_ports: Vec::new(),
            scsi_controller: None,
            vfio_fds: None,
        }
    }
}

/// The QMP session and what was learned at attach.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: QmpClient,
    pub(crate) ports: Vec<PcieRootPort>,
    pub(crate) pool: Vec<String>,
    pub(crate) memory_shared: bool,
    pub(crate) scsi_controller: Option<String>,
    pub(crate) last_departure: Option<(String, Departure)>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) session: Option<Session>,
    pub(crate) boot: Vec<Plan>,
}

/// A QEMU VM that devices can be plugged into.
#[derive(Debug)]
pub struct QemuHypervisor {
    pub(crate) config: QemuConfig,
    state: Mutex<State>,
    /// Rewrites each plan of a manager's request before it is plugged (feature `test-util`).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) stand_in: Option<StandIn>,
}

/// A rewrite of the plans of a manager's request before they are plugged: a test on a host
/// where nothing may be opened for VFIO swaps `vfio-pci` for an emulated device on the same
/// bus and slot (see [`QemuHypervisor::with_stand_in`]).
#[cfg(any(test, feature = "test-util"))]
pub struct StandIn(pub Box<dyn Fn(&mut Plan) + Send + Sync>);

#[cfg(any(test, feature = "test-util"))]
impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandIn")
    }
}

impl QemuHypervisor {
    /// A VM not started yet: coldplugged devices collect into [`boot_args`](Self::boot_args).
    pub fn new(config: QemuConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            #[cfg(any(test, feature = "test-util"))]
            stand_in: None,
        }
    }

    /// The same hypervisor, with every plan of a manager's hot plug passed through `rewrite`
    /// first (feature `test-util`): the manager's placement and this crate's plug, rollback
    /// and error mapping run as they are, with another device in place of one the host
    /// cannot give (`vfio-pci` on a host where nothing may be opened for VFIO).
    #[cfg(any(test, feature = "test-util"))]
    #[must_use]
    pub fn with_stand_in(mut self, rewrite: impl Fn(&mut Plan) + Send + Sync + 'static) -> Self {
        self.stand_in = Some(StandIn(Box::new(rewrite)));
        self
    }

    /// Takes over a running QEMU through its QMP socket.
    pub fn connect(socket: &Path, config: QemuConfig) -> Result<Self, QemuError> {
        let hv = Self::new(config);
        hv.attach(socket)?;
        Ok(hv)
    }

    /// Opens the QMP session of the now running VM.
    pub fn attach(&self, socket: &Path) -> Result<(), QemuError> {
        let client =
            QmpClient::connect(socket, self.config.command_timeout).map_err(QemuError::Connect)?;
        self.attach_client(client)
    }

    /// Takes over an open QMP session.
    pub fn attach_client(&self, mut client: QmpClient) -> Result<(), QemuError> {
        client.set_timeout(self.config.command_timeout);
        let ports = ports::discover(&mut client).map_err(QemuError::Ports)?;
        let pool = if self.config.root_ports.is_empty() {
            ports
                .iter()
                .filter(|p| p.occupant.is_none())
                .map(|p| p.id.clone())
                .collect()
        } else {
            for port in &self.config.root_ports {
                if !ports.iter().any(|p| &p.id == port) {
                    return Err(QemuError::MissingPort { port: port.clone() });
                }
            }
            self.config.root_ports.clone()
        };
        let memory_shared = match self.config.memory_shared {
            Some(shared) => shared,
            None => {
                let memdevs =
                    client
                        .execute("query-memdev", None)
                        .map_err(|source| QemuError::Query {
                            what: "query-memdev",
                            source,
                        })?;
                all_shared(&memdevs)
            }
        };
        let scsi_controller = match &self.config.scsi_controller {
            Some(c) => Some(c.clone()),
            None => first_of_type(&mut client, SCSI_CONTROLLER)?,
        };
        tracing::info!(
            socket = %client.socket().display(), pool = ?pool, memory_shared,
            scsi_controller = ?scsi_controller, "attached to QEMU"
        );
        self.lock().session = Some(Session {
            client,
            ports,
            pool,
            memory_shared,
            scsi_controller,
            last_departure: None,
        });
        Ok(())
    }

    /// The root ports the manager's pool maps onto, in order; its size is what
    /// `ManagerConfig::root_ports` should be.
    pub fn port_pool(&self) -> Vec<String> {
        match &self.lock().session {
            Some(s) => s.pool.clone(),
            None => self.config.root_ports.clone(),
        }
    }

    /// The VM's root ports as discovered at attach, with what is on each.
    pub fn root_ports(&self) -> Vec<PcieRootPort> {
        self.lock()
            .session
            .as_ref()
            .map(|s| s.ports.clone())
            .unwrap_or_default()
    }

    /// Whether guest RAM is shared (vhost-user possible); `None` before attach.
    pub fn memory_shared(&self) -> Option<bool> {
        self.lock().session.as_ref().map(|s| s.memory_shared)
    }

    /// The arguments that create every coldplugged device, for QEMU's command line.
    pub fn boot_args(&self) -> Vec<String> {
        self.lock()
            .boot
            .iter()
            .flat_map(cmdline::plan_args)
            .collect()
    }

    /// Runs `f` on the QMP session (feature `test-util`: the queries a test makes of its
    /// own; what the VM holds of the manager's devices is [`inspect`](Self::inspect)).
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_client<R>(&self, f: impl FnOnce(&mut QmpClient) -> R) -> Result<R, QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        Ok(f(&mut session.client))
    }

    /// Hands an open file to the running QEMU in a new fd set (`add-fd`) and returns the
    /// set's id; `note` names the file in `query-fdsets` (QEMU's `opaque`) and in errors.
    ///
    /// A disk whose `BlockSpec::passed_fd` names the set then opens `/dev/fdset/<id>`: QEMU
    /// duplicates the set's descriptor, so it uses the very file that was opened, and the
    /// descriptor must have been opened with the access the disk asks for (read-only or
    /// read-write). The device's removal closes the set; [`Self::remove_fd`] closes one that
    /// no plug took.
    ///
    /// # Errors
    /// [`QemuError::NotRunning`] before [`attach`](Self::attach) (a VM not yet started cannot
    /// take descriptors); [`QemuError::AddFd`].
    pub fn add_fd(&self, fd: BorrowedFd<'_>, note: &str) -> Result<u32, QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        let added = session
            .client
            .add_fd(fd, None, Some(note))
            .map_err(|source| QemuError::AddFd {
                what: note.to_owned(),
                source,
            })?;
        tracing::debug!(
            fdset = added.fdset,
            qemu_fd = added.fd,
            note,
            "file handed to QEMU; remove-fd closes it"
        );
        Ok(added.fdset)
    }

    /// Closes fd set `fdset` (`remove-fd`); one that is already gone counts as closed.
    ///
    /// # Errors
    /// [`QemuError::NotRunning`]; [`QemuError::RemoveFd`].
    pub fn remove_fd(&self, fdset: u32) -> Result<(), QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        removal::close_fd_set(&mut session.client, fdset)
            .map_err(|source| QemuError::RemoveFd { fdset, source })
    }

    /// Closes fd set `fdset` only if it is still the one handed over with `note` (QEMU's
    /// `opaque`, as given to [`Self::add_fd`]): after a reconnect, a QEMU that restarted may
    /// hold a set of someone else's under the same id. Returns whether a set was closed.
    ///
    /// # Errors
    /// [`QemuError::NotRunning`]; [`QemuError::RemoveFd`] (also when `query-fdsets` fails).
    pub fn remove_fd_noted(&self, fdset: u32, note: &str) -> Result<bool, QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        session.remove_fd_noted(fdset, note)
    }

    /// Hot-plugs one plan (checks, backends, device; rolled back on failure).
    pub fn plug(&self, plan: &Plan) -> Result<(), QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        session.plug(plan)
    }

    /// Removes one plan's device and backends; a [`RemovalError::GuestTimeout`] can be
    /// retried and the retry finishes the job.
    pub fn unplug(&self, plan: &Plan) -> Result<Departure, QemuError> {
        let timeout = self.config.unplug_timeout;
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        session.unplug(plan, timeout)
    }

    /// The last device removed and how its departure was seen (for checks and reports).
    pub fn last_departure(&self) -> Option<(String, Departure)> {
        self.lock()
            .session
            .as_ref()
            .and_then(|s| s.last_departure.clone())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves QEMU as it was after the last whole QMP
        // exchange, so the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Session {
    pub(crate) fn plug(&mut self, plan: &Plan) -> Result<(), QemuError> {
        let facts = VmFacts {
            memory_shared: self.memory_shared,
        };
        hotplug::plug(&mut self.client, plan, facts)?;
        self.set_occupant(plan, Some(plan.id.qom_path()));
        Ok(())
    }

    pub(crate) fn unplug(
        &mut self,
        plan: &Plan,
        timeout: Duration,
    ) -> Result<Departure, QemuError> {
        let departure = removal::unplug(&mut self.client, plan, timeout)?;
        self.set_occupant(plan, None);
        self.last_departure = Some((plan.id.to_string(), departure));
        Ok(departure)
    }

    /// [`QemuHypervisor::remove_fd_noted`] on this session.
    pub(crate) fn remove_fd_noted(&mut self, fdset: u32, note: &str) -> Result<bool, QemuError> {
        let error = |source| QemuError::RemoveFd { fdset, source };
        let sets = self.client.execute("query-fdsets", None).map_err(error)?;
        let ours = sets.as_array().into_iter().flatten().any(|set| {
            set["fdset-id"] == fdset
                && set["fds"]
                    .as_array()
                    .is_some_and(|fds| fds.iter().any(|fd| fd["opaque"] == note))
        });
        if ours {
            removal::close_fd_set(&mut self.client, fdset).map_err(error)?;
        }
        Ok(ours)
    }

    /// The slot on the root bus of a plan's device placed there (cold-plugged, no bus named):
    /// its `addr` property (the devfn) read from QOM; `None` when it has none (not PCI).
    pub(crate) fn root_bus_slot(&mut self, plan: &Plan) -> Result<Option<u8>, QemuError> {
        let path = plan.id.qom_path();
        match self.client.execute(
            "qom-get",
            Some(&serde_json::json!({"path": path, "property": "addr"})),
        ) {
            // `addr` is the devfn: slot << 3 | function.
            Ok(devfn) => Ok(devfn.as_u64().and_then(|d| u8::try_from(d >> 3).ok())),
            Err(e) if e.failure().is_some() => Ok(None),
            Err(source) => Err(QemuError::Query {
                what: "qom-get addr",
                source,
            }),
        }
    }

    /// The root bus slot of the port a plan sits on.
    pub(crate) fn port_slot(&self, plan: &Plan) -> Option<u8> {
        let bus = plan.bus()?;
        self.ports.iter().find(|p| p.id == bus)?.slot
    }

    fn set_occupant(&mut self, plan: &Plan, occupant: Option<String>) {
        if let Some(bus) = plan.bus()
            && let Some(port) = self.ports.iter_mut().find(|p| p.id == bus)
        {
            port.occupant = occupant;
        }
    }
}

/// The query that lists the VM's devices, as [`QemuError::Query`] names it.
pub(crate) const LIST_PERIPHERALS: &str = "qom-list /machine/peripheral";

/// The id of the VM's first device (in sort order) of the qdev type `kind`.
fn first_of_type(client: &mut QmpClient, kind: &str) -> Result<Option<String>, QemuError> {
    let peripherals = qom::peripherals(client).map_err(|source| QemuError::Query {
        what: LIST_PERIPHERALS,
        source,
    })?;
    Ok(peripherals
        .into_iter()
        .filter(|(_, t)| t == kind)
        .map(|(id, _)| id)
        .min())
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

    #[test]
    fn a_noted_fd_set_is_closed_only_while_it_is_still_ours() {
        use crate::qmp::fake::{Action, FakeQmp};
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "query-fdsets" => vec![Action::Return(json!([
                {"fdset-id": 0, "fds": [{"fd": 30, "opaque": "plugboard: /v/a.img"}]},
                {"fdset-id": 1, "fds": [{"fd": 31, "opaque": "libvirt: other"}]},
            ]))],
            "qom-list" => vec![Action::Return(json!([]))],
            "query-memdev" => vec![Action::Return(json!([]))],
            _ => vec![Action::Return(json!({}))],
        });
        let hv = QemuHypervisor::connect(fake.socket(), QemuConfig::default()).unwrap();
        // Set 1 is someone else's now (QEMU restarted); set 0 is still ours; set 2 is gone.
        assert!(!hv.remove_fd_noted(1, "plugboard: /v/a.img").unwrap());
        assert!(!hv.remove_fd_noted(2, "plugboard: /v/a.img").unwrap());
        assert!(hv.remove_fd_noted(0, "plugboard: /v/a.img").unwrap());
        let removed: Vec<_> = fake
            .received()
            .into_iter()
            .filter(|r| r.command == "remove-fd")
            .map(|r| r.arguments)
            .collect();
        assert_eq!(removed, [json!({"fdset-id": 0})]);
    }

    #[test]
    fn hotplug_before_attach_is_refused() {
        let hv = QemuHypervisor::new(QemuConfig::default());
        let plan = Plan::device_only(
            "x".parse().unwrap(),
            json!({"driver": "virtio-rng-pci", "id": "x"}),
        );
        assert!(matches!(hv.plug(&plan), Err(QemuError::NotRunning)));
        assert!(matches!(hv.unplug(&plan), Err(QemuError::NotRunning)));
        assert_eq!(hv.memory_shared(), None);
    }
}
