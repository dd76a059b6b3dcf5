//! The front door: [`HostdevManager`] ties one sysfs tree to one registry database.
//!
//! Make one per thread or process (it holds a SQLite connection); any number of managers,
//! in any number of processes, can share a state directory, because every decision is
//! taken inside a `BEGIN IMMEDIATE` transaction. The operations live in their own files:
//! `pci.rs` (prepare), `release.rs`, `node_device.rs` (detach/reattach/reset),
//! `recover.rs`, `listing.rs`, and one file per other device kind.

use std::path::{Path, PathBuf};

use plugboard_sysfs::Sysfs;

use crate::intent::IntentStep;
use crate::process::ProcessStamp;
use crate::registry::{Registry, RegistryError, RegistryOptions};

/// The host-wide manager of passthrough devices.
#[derive(Debug)]
pub struct HostdevManager {
    pub(crate) sysfs: Sysfs,
    pub(crate) registry: Registry,
    pub(crate) stamp: ProcessStamp,
    /// Where the kernel shows processes (`/proc`): scanned for holders of a device.
    pub(crate) proc_root: PathBuf,
}

impl HostdevManager {
    /// Opens the registry in `state_dir` (created if needed) for the host seen by `sysfs`.
    pub fn open(sysfs: Sysfs, state_dir: &Path) -> Result<Self, RegistryError> {
        Self::with_options(sysfs, state_dir, &RegistryOptions::default())
    }

    /// Like [`HostdevManager::open`] with explicit registry options.
    pub fn with_options(
        sysfs: Sysfs,
        state_dir: &Path,
        options: &RegistryOptions,
    ) -> Result<Self, RegistryError> {
        Ok(Self {
            sysfs,
            registry: Registry::open(state_dir, options)?,
            stamp: ProcessStamp::current(),
            proc_root: PathBuf::from("/proc"),
        })
    }

    /// Looks for processes under `proc_root` instead of `/proc` (for tests, or a host
    /// whose processes are seen elsewhere).
    #[must_use]
    pub fn with_proc_root(mut self, proc_root: impl Into<PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// The sysfs tree this manager acts on.
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// The registry (for listings and audits).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records that the sysfs write for `address`'s pending intent starts now, so that
    /// `recover` knows whether sysfs may have been touched.
    pub(crate) fn mark_binding(&mut self, address: &str) -> Result<(), RegistryError> {
        self.registry.write(|tx| {
            if let Some(intent) = tx.intent_for(address)? {
                tx.set_intent_step(intent.id, IntentStep::Binding)?;
            }
            Ok(())
        })
    }
}
