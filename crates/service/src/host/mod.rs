//! The host side of the core: what this host's devices are, who owns them, and the
//! host-device operations (prepare, release, detach, reattach, reset, recover, VFIO info).
//!
//! [`HostService`] is what every front calls for these. The daemon's [`Service`] holds
//! one and its HTTP handlers call its methods; the CLI, when no daemon serves this host,
//! builds one of its own and calls the very same methods. The answers are typed
//! (`Serialize + Deserialize`), so a front renders the same value whichever path produced
//! it, and the rules (who may do what, the in-use guard of `vfio info`, filters, names,
//! owners) live here once.
//!
//! The hostdev registry is opened on first need: listing the host as an ordinary user
//! reads owners through a read-only connection and never creates the database.
//!
//! [`Service`]: crate::Service

mod hostdevs;
mod inventory;
mod vfio;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use plugboard_hostdev::HostdevManager;
use plugboard_sysfs::{PciNames, PciNamesCache, Sysfs};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, ServiceError};

pub(crate) use hostdevs::batch_class;
pub use hostdevs::{
    HostdevRequest, NodeDeviceResult, OWNER_DRIVER, PrepareAnswer, RecoverAnswer, ReleaseAnswer,
    VmDirectory,
};
pub use inventory::{DeviceDetail, DeviceQuery, HostGroups, NamesQuery, Resolved};
pub use vfio::{IrqReport, RegionReport, VfioQuery, VfioReport};

/// Where the host side finds the host and keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    /// The state directory (`/var/lib/plugboard`), holding the hostdev registry.
    pub state_dir: PathBuf,
    /// The root of sysfs (`/sys`, a fake kernel's tree in tests).
    pub sysfs_root: PathBuf,
    /// The root of the device nodes (`/dev`).
    pub dev_root: PathBuf,
    /// The pci.ids file for device names (`None`: no names).
    pub pci_ids: Option<PathBuf>,
}

impl HostConfig {
    /// The host's sysfs as this configuration sees it.
    #[must_use]
    pub fn sysfs(&self) -> Sysfs {
        Sysfs::new(&self.sysfs_root).with_dev_root(&self.dev_root)
    }
}

/// The host side of the core. See the module documentation.
#[derive(Debug)]
pub struct HostService {
    config: HostConfig,
    sysfs: Sysfs,
    hostdev: Mutex<Option<HostdevManager>>,
    /// The configured pci.ids, read on first need and again only when it changes.
    names: Option<PciNamesCache>,
}

impl HostService {
    /// A host service over `config`; nothing is opened yet.
    #[must_use]
    pub fn new(config: HostConfig) -> Self {
        let sysfs = config.sysfs();
        Self::with_sysfs(config, sysfs)
    }

    /// A host service that sees the host through `sysfs` (which may carry its own writer:
    /// the fake kernel's in tests) instead of the one `config` names.
    #[must_use]
    pub fn with_sysfs(config: HostConfig, sysfs: Sysfs) -> Self {
        Self {
            names: config.pci_ids.as_deref().map(PciNamesCache::new),
            config,
            sysfs,
            hostdev: Mutex::new(None),
        }
    }

    /// Where this service sees the host and keeps its state.
    #[must_use]
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The host's sysfs.
    #[must_use]
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// The state directory.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// The hostdev registry, opened (and created) on first use.
    ///
    /// # Errors
    /// The registry cannot be opened.
    pub(crate) fn hostdev(&self) -> Result<HostdevGuard<'_>, ServiceError> {
        let mut slot = self.hostdev.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let manager = HostdevManager::open(self.sysfs.clone(), &self.config.state_dir)
                .map_err(|e| hostdev_error("open", ErrorClass::Internal, e))?;
            *slot = Some(manager);
        }
        Ok(HostdevGuard(slot))
    }

    /// The registry when it is open already (the daemon's), without opening it.
    pub(crate) fn open_hostdev(&self) -> Option<HostdevGuard<'_>> {
        let slot = self.hostdev.lock().unwrap_or_else(PoisonError::into_inner);
        slot.is_some().then_some(HostdevGuard(slot))
    }

    /// Device names for `ids`, from the configured pci.ids (none when names are not
    /// wanted, the file is not configured, or it does not parse: names are a courtesy,
    /// never a failure). The file is read once and again only when it changes (or
    /// when devices with new IDs appear), whichever request asks, so a daemon answering
    /// many listings neither re-reads nor re-parses it.
    fn names(
        &self,
        wanted: bool,
        ids: impl IntoIterator<Item = plugboard_sysfs::PciIds>,
    ) -> Arc<PciNames> {
        let Some(cache) = self.names.as_ref().filter(|_| wanted) else {
            return Arc::new(PciNames::empty());
        };
        cache.names_for(ids).unwrap_or_else(|err| {
            tracing::warn!(path = %cache.path().display(), error = %err, "no device names");
            Arc::new(PciNames::empty())
        })
    }

    /// How many times the names database has been read (0 when none is configured).
    #[must_use]
    pub fn names_loads(&self) -> u64 {
        self.names.as_ref().map_or(0, PciNamesCache::loads)
    }
}

/// The open hostdev registry, locked.
#[derive(Debug)]
pub(crate) struct HostdevGuard<'a>(MutexGuard<'a, Option<HostdevManager>>);

impl std::ops::Deref for HostdevGuard<'_> {
    type Target = HostdevManager;

    fn deref(&self) -> &HostdevManager {
        // The slot is filled before a guard is made, and never emptied.
        match self.0.as_ref() {
            Some(m) => m,
            None => unreachable!("a HostdevGuard is only made over an open registry"),
        }
    }
}

impl std::ops::DerefMut for HostdevGuard<'_> {
    fn deref_mut(&mut self) -> &mut HostdevManager {
        match self.0.as_mut() {
            Some(m) => m,
            None => unreachable!("a HostdevGuard is only made over an open registry"),
        }
    }
}

/// A hostdev failure as a service error of `class`.
pub(crate) fn hostdev_error(
    op: &'static str,
    class: ErrorClass,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ServiceError {
    ServiceError::Hostdev {
        op,
        class,
        source: Box::new(source),
    }
}
