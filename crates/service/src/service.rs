//! The service: the host side ([`HostService`]) and the registered VMs.
//!
//! [`Service::open`] is the daemon's start: it opens the hostdev registry in the state
//! directory, runs `recover` (finishing or undoing what a dead process left), loads every
//! VM's saved device state from the same database, reconnects to each VM's hypervisor and
//! reconciles (`reconcile.rs`). Every method is synchronous and may block on sysfs, SQLite
//! or QMP; the HTTP layer runs them on blocking threads. The VM operations are in `vms.rs`;
//! the host queries and host-device operations are [`HostService`]'s, reached through
//! [`Service::host`], the same methods the CLI calls when no daemon runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use plugboard_hostdev::Recovered;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, ServiceError};
use crate::host::{HostConfig, HostService, VmDirectory, hostdev_error};
use crate::metrics::{Gauges, Metrics};
use crate::reconcile::Repair;
use crate::restore::{release_forgotten, restore};
use crate::store::Store;
use crate::vm::{Link, Vm};

/// Where the service keeps its state and finds the host.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The host and the state directory (`/var/lib/plugboard`: the hostdev registry
    /// database, which also holds the VMs).
    pub host: HostConfig,
    /// How long a detach waits for the guest to let a device go.
    pub unplug_timeout: Duration,
    /// The VFIO interface passthrough uses: `auto` (the default) takes the device cdev with
    /// iommufd where the kernel and device offer it, else the legacy group. In iommufd
    /// mode a hot-plugged function is handed to QEMU by descriptor (its cdev, and one
    /// `/dev/iommu` per VM), so QEMU needs no access to `/dev/vfio` or `/dev/iommu`; in
    /// legacy mode QEMU opens `/dev/vfio/<group>` itself.
    pub vfio_mode: plugboard_vfio::Mode,
}

/// What `GET /healthz` answers: the daemon is up, and which host and state it serves (a
/// CLI uses the daemon only when these are its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The host and state directory served.
    #[serde(flatten)]
    pub host: HostConfig,
}

/// What happened at start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartReport {
    /// Pending hostdev operations settled by `recover`.
    pub recovered: Vec<Recovered>,
    /// VMs loaded.
    pub vms: usize,
    /// VMs whose hypervisor could not be reached (name, why).
    pub disconnected: Vec<(String, String)>,
    /// Differences between saved state and the hypervisors, and their repairs.
    pub repairs: Vec<Repair>,
}

/// The host service. See the module documentation.
#[derive(Debug)]
pub struct Service {
    pub(crate) config: ServiceConfig,
    pub(crate) host: HostService,
    pub(crate) store: Mutex<Store>,
    pub(crate) vms: RwLock<BTreeMap<String, Arc<Vm>>>,
    metrics: Metrics,
}

impl Service {
    /// Opens the state, recovers, loads and reconciles every VM. A VM whose hypervisor
    /// cannot be reached stays registered, disconnected, with its saved state untouched.
    ///
    /// # Errors
    /// The registry or the service's tables cannot be opened or read.
    pub fn open(config: ServiceConfig) -> Result<(Self, StartReport), ServiceError> {
        let host = HostService::new(config.host.clone());
        Self::open_with(config, host)
    }

    /// [`Service::open`] over a host side built by the caller (a runtime embedding the
    /// service with its own [`plugboard_sysfs::Sysfs`], or a test over the fake kernel).
    ///
    /// # Errors
    /// As [`Service::open`].
    pub fn open_with(
        config: ServiceConfig,
        host: HostService,
    ) -> Result<(Self, StartReport), ServiceError> {
        let mut hostdev = host.hostdev()?;
        let recovered = hostdev
            .recover()
            .map_err(|e| hostdev_error("recover", ErrorClass::Internal, e))?;
        for r in &recovered {
            tracing::info!(device = r.address, op = %r.op, action = %r.action, "recovered an interrupted host-device operation");
        }
        let store = Store::open(&config.host.state_dir)?;
        let mut report = StartReport {
            recovered,
            ..StartReport::default()
        };
        let mut vms = BTreeMap::new();
        for stored in store.load()? {
            let name = stored.record.name.clone();
            let (vm, repairs) = restore(stored, &store, &config);
            if let Link::Disconnected { reason, .. } = &vm.link {
                report.disconnected.push((name.clone(), reason.clone()));
            }
            release_forgotten(&mut hostdev, &repairs);
            report.repairs.extend(repairs);
            vms.insert(name, Arc::new(vm));
        }
        report.vms = vms.len();
        tracing::info!(
            vms = report.vms, disconnected = report.disconnected.len(),
            repairs = report.repairs.len(), recovered = report.recovered.len(),
            state_dir = %config.host.state_dir.display(), "service state loaded"
        );
        drop(hostdev);
        Ok((
            Self {
                config,
                host,
                store: Mutex::new(store),
                vms: RwLock::new(vms),
                metrics: Metrics::default(),
            },
            report,
        ))
    }

    /// Where the service keeps its state and sees the host.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The counters the HTTP layer records into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `/metrics` text: counters plus the current gauges.
    pub fn render_metrics(&self) -> String {
        let mut g = Gauges::default();
        for vm in self.vms_read().values() {
            let info = vm.info();
            if info.connected {
                g.vms_connected += 1;
            } else {
                g.vms_disconnected += 1;
            }
            g.devices_attached += info.attached as u64;
            g.devices_detached += (info.devices - info.attached) as u64;
        }
        if let Ok(listing) = self.hostdev().and_then(|mut h| {
            h.list()
                .map_err(|e| hostdev_error("list", ErrorClass::Internal, e))
        }) {
            for row in &listing.pci {
                match row.list {
                    plugboard_hostdev::registry::List::Active => g.hostdevs_active += 1,
                    plugboard_hostdev::registry::List::Inactive => g.hostdevs_inactive += 1,
                }
            }
        }
        self.metrics.render(&g)
    }

    /// `GET /healthz`'s answer.
    pub fn health(&self) -> Health {
        Health {
            status: "ok".to_owned(),
            host: self.config.host.clone(),
        }
    }

    /// The host side: host queries and host-device operations.
    pub fn host(&self) -> &HostService {
        &self.host
    }

    pub(crate) fn hostdev(&self) -> Result<crate::host::HostdevGuard<'_>, ServiceError> {
        self.host.hostdev()
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn vms_read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn vms_write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.vms.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The service's VMs, for the host side's rule that a VM's owner may prepare and release
/// host devices for it.
impl VmDirectory for Service {
    fn vm_owner(&self, vm: &str) -> Option<u32> {
        self.vms_read().get(vm).map(|vm| vm.record.owner_uid)
    }
}
