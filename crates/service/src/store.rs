//! The service's own tables, in the hostdev registry's database (`<state dir>/hostdev.db`).
//!
//! One row per registered VM: its name, owner, hypervisor endpoint, the root-port pool it
//! was registered with, and its device manager's whole [`SavedState`] as JSON, rewritten
//! after every change. The hostdev crate owns the file, its WAL mode and its schema version
//! (`user_version`); our table is created with `IF NOT EXISTS`, never touches
//! `user_version`, and is prefixed `service_` so the two schemas cannot collide.
//!
//! [`SavedState`]: plugboard_devices::SavedState

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::error::ServiceError;
use crate::vm::VmRecord;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS service_vms (
    name      TEXT PRIMARY KEY,
    owner_uid INTEGER NOT NULL,
    record    TEXT NOT NULL,
    devices   TEXT
) STRICT;
";

/// One stored VM: its record and its device state (JSON), if any was saved.
#[derive(Debug, Clone)]
pub(crate) struct StoredVm {
    pub(crate) record: VmRecord,
    pub(crate) devices: Option<String>,
}

/// The open tables.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the database file (which the hostdev registry has created).
    pub(crate) fn open(path: &Path) -> Result<Self, ServiceError> {
        let err = |step| {
            let path = path.to_path_buf();
            move |source| ServiceError::Store { path, step, source }
        };
        let conn = Connection::open(path).map_err(err("opening"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(err("setting the busy timeout"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("setting synchronous=FULL"))?;
        conn.execute_batch(SCHEMA)
            .map_err(err("creating the service tables"))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, step: &'static str) -> impl Fn(rusqlite::Error) -> ServiceError {
        let path = self.path.clone();
        move |source| ServiceError::Store {
            path: path.clone(),
            step,
            source,
        }
    }

    fn encode(&self, record: &VmRecord) -> Result<String, ServiceError> {
        serde_json::to_string(record).map_err(|e| ServiceError::Store {
            path: self.path.clone(),
            step: "encoding a VM record",
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })
    }

    /// Adds a VM; `Err(VmExists)` when the name is taken.
    pub(crate) fn insert(&self, record: &VmRecord) -> Result<(), ServiceError> {
        let json = self.encode(record)?;
        let n = self
            .conn
            .execute(
                "INSERT INTO service_vms (name, owner_uid, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![record.name, record.owner_uid, json],
            )
            .map_err(self.err("inserting a VM"))?;
        if n == 0 {
            return Err(ServiceError::VmExists(record.name.clone()));
        }
        Ok(())
    }

    /// Replaces a VM's saved devices.
    pub(crate) fn save_devices(&self, name: &str, devices: &str) -> Result<(), ServiceError> {
        self.conn
            .execute(
                "UPDATE service_vms SET devices = ?2 WHERE name = ?1",
                params![name, devices],
            )
            .map_err(self.err("saving a VM's devices"))?;
        Ok(())
    }

    /// Drops a VM.
    pub(crate) fn delete(&self, name: &str) -> Result<(), ServiceError> {
        self.conn
            .execute("DELETE FROM service_vms WHERE name = ?1", params![name])
            .map_err(self.err("deleting a VM"))?;
        Ok(())
    }

    /// One VM's saved devices.
    #[cfg(test)]
    pub(crate) fn devices(&self, name: &str) -> Result<Option<String>, ServiceError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row(
                "SELECT devices FROM service_vms WHERE name = ?1",
                params![name],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.err("reading a VM's devices"))?
            .flatten())
    }

    /// Every VM, by name. A record that does not decode is skipped with an error log.
    pub(crate) fn load(&self) -> Result<Vec<StoredVm>, ServiceError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, record, devices FROM service_vms ORDER BY name")
            .map_err(self.err("listing VMs"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(self.err("listing VMs"))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, record, devices) = row.map_err(self.err("reading a VM"))?;
            match serde_json::from_str::<VmRecord>(&record) {
                Ok(record) => out.push(StoredVm { record, devices }),
                Err(e) => {
                    tracing::error!(vm = name, error = %e, "stored VM record does not decode; skipped");
                }
            }
        }
        Ok(out)
    }
}
