//! The service's VMs, kept in the hostdev registry's database through
//! [`plugboard_hostdev::registry::VmRecords`].
//!
//! One row per registered VM: its name, owner, and its [`VmRecord`] (hypervisor endpoint,
//! root-port pool…) and device manager's whole [`SavedState`] as JSON, rewritten after
//! every change. plugboard-hostdev owns the file, its WAL mode and its schema; this module
//! only turns our types into the text it stores and back, and its errors into ours.
//!
//! [`SavedState`]: plugboard_devices::SavedState

use std::path::Path;

use plugboard_hostdev::registry::{VmRecords, VmRecordsError};

use crate::error::ServiceError;
use crate::vm::VmRecord;

/// One stored VM: its record and its device state (JSON), if any was saved.
#[derive(Debug, Clone)]
pub(crate) struct StoredVm {
    pub(crate) record: VmRecord,
    pub(crate) devices: Option<String>,
}

/// The open VM table.
#[derive(Debug)]
pub(crate) struct Store {
    vms: VmRecords,
}

impl Store {
    /// Opens the VM table of the registry database in `state_dir`.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, ServiceError> {
        let vms = VmRecords::open(state_dir).map_err(|source| ServiceError::Store {
            path: state_dir.to_path_buf(),
            step: "opening the VM table",
            source: Box::new(source),
        })?;
        Ok(Self { vms })
    }

    fn err(&self, step: &'static str) -> impl Fn(VmRecordsError) -> ServiceError + '_ {
        move |source| ServiceError::Store {
            path: self.vms.path().to_path_buf(),
            step,
            source: Box::new(source),
        }
    }

    /// Adds a VM; `Err(VmExists)` when the name is taken.
    pub(crate) fn insert(&self, record: &VmRecord) -> Result<(), ServiceError> {
        let json = serde_json::to_string(record).map_err(|source| ServiceError::Store {
            path: self.vms.path().to_path_buf(),
            step: "encoding a VM record",
            source: Box::new(source),
        })?;
        match self.vms.insert(&record.name, record.owner_uid, &json) {
            Err(VmRecordsError::NameTaken { name, .. }) => Err(ServiceError::VmExists(name)),
            other => other.map_err(self.err("inserting a VM")),
        }
    }

    /// Replaces a VM's saved devices.
    pub(crate) fn save_devices(&self, name: &str, devices: &str) -> Result<(), ServiceError> {
        self.vms
            .save_devices(name, devices)
            .map_err(self.err("saving a VM's devices"))
    }

    /// Drops a VM.
    pub(crate) fn delete(&self, name: &str) -> Result<(), ServiceError> {
        self.vms.delete(name).map_err(self.err("deleting a VM"))
    }

    /// One VM's saved devices.
    #[cfg(test)]
    pub(crate) fn devices(&self, name: &str) -> Result<Option<String>, ServiceError> {
        self.vms
            .devices(name)
            .map_err(self.err("reading a VM's devices"))
    }

    /// Every VM, by name. A record that does not decode is skipped with an error log.
    pub(crate) fn load(&self) -> Result<Vec<StoredVm>, ServiceError> {
        let rows = self.vms.load().map_err(self.err("listing VMs"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_str::<VmRecord>(&row.record) {
                Ok(record) => out.push(StoredVm {
                    record,
                    devices: row.devices,
                }),
                Err(e) => {
                    tracing::error!(vm = row.name, error = %e, "stored VM record does not decode; skipped");
                }
            }
        }
        Ok(out)
    }
}
