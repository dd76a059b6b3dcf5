//! The VM table of the registry's database: one row per VM a front (the daemon's service)
//! registered, with the records it keeps about it as opaque JSON text.
//!
//! The service stores its VMs in the same file as the device registry, so that one state
//! directory holds one database. This crate owns that file: its location, WAL mode, busy
//! timeout and schema migrations (the `service_vms` table is part of schema version 2).
//! The service only hands over and gets back text; what the text means is its business.
//!
//! The handle opens its own connection with `synchronous=FULL` ([`Durability::PowerCut`]):
//! a VM's saved devices must survive a power cut, since its hypervisor may keep running.
//! Each method is one statement in its own transaction (SQLite's autocommit).

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::{Durability, Registry, RegistryError, RegistryOptions};

/// One stored VM, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// The VM's name (unique).
    pub name: String,
    /// The uid that registered it.
    pub owner_uid: u32,
    /// The front's record of the VM (JSON).
    pub record: String,
    /// Its saved device state (JSON), once one was saved.
    pub devices: Option<String>,
}

/// Why a VM table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmRecordsError {
    /// A VM with this name is already stored.
    #[error("the registry {path} already has a VM named {name:?}")]
    NameTaken {
        /// The database file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// The database failed (the error names the file and the step).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The VM table, on its own connection to the registry's database.
#[derive(Debug)]
pub struct VmRecords {
    registry: Registry,
}

impl VmRecords {
    /// Opens (creating if needed) the registry database in `state_dir`, brings its schema
    /// up to date, and returns the VM table on it.
    pub fn open(state_dir: &Path) -> Result<Self, VmRecordsError> {
        let options = RegistryOptions {
            durability: Durability::PowerCut,
            ..RegistryOptions::default()
        };
        Ok(Self {
            registry: Registry::open(state_dir, &options)?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.registry.path()
    }

    fn err(&self, step: &'static str) -> impl Fn(rusqlite::Error) -> VmRecordsError + '_ {
        move |e| RegistryError::classify(self.registry.path(), step, 0, e).into()
    }

    /// Adds a VM; [`VmRecordsError::NameTaken`] when the name is taken.
    pub fn insert(&self, name: &str, owner_uid: u32, record: &str) -> Result<(), VmRecordsError> {
        let added = self
            .registry
            .conn
            .execute(
                "INSERT INTO service_vms (name, owner_uid, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, owner_uid, record],
            )
            .map_err(self.err("inserting a VM"))?;
        if added == 0 {
            return Err(VmRecordsError::NameTaken {
                path: self.path().to_path_buf(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Replaces a VM's saved device state (a VM not stored is left alone).
    pub fn save_devices(&self, name: &str, devices: &str) -> Result<(), VmRecordsError> {
        self.registry
            .conn
            .execute(
                "UPDATE service_vms SET devices = ?2 WHERE name = ?1",
                params![name, devices],
            )
            .map_err(self.err("saving a VM's devices"))?;
        Ok(())
    }

    /// Drops a VM (a VM not stored is no error).
    pub fn delete(&self, name: &str) -> Result<(), VmRecordsError> {
        self.registry
            .conn
            .execute("DELETE FROM service_vms WHERE name = ?1", params![name])
            .map_err(self.err("deleting a VM"))?;
        Ok(())
    }

    /// Every VM, by name.
    pub fn load(&self) -> Result<Vec<VmRow>, VmRecordsError> {
        let mut stmt = self
            .registry
            .conn
            .prepare("SELECT name, owner_uid, record, devices FROM service_vms ORDER BY name")
            .map_err(self.err("listing VMs"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(VmRow {
                    name: r.get(0)?,
                    owner_uid: r.get(1)?,
                    record: r.get(2)?,
                    devices: r.get(3)?,
                })
            })
            .map_err(self.err("listing VMs"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("reading a VM"))
    }

    /// One VM's saved device state (`None`: no such VM, or none saved yet). For tests.
    #[cfg(any(test, feature = "test-util"))]
    pub fn devices(&self, name: &str) -> Result<Option<String>, VmRecordsError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .registry
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
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::registry::DB_FILE;

    #[test]
    fn insert_save_load_delete() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmRecords::open(dir.path()).unwrap();
        assert_eq!(vms.path(), dir.path().join(DB_FILE));
        vms.insert("b", 1000, r#"{"name":"b"}"#).unwrap();
        vms.insert("a", 0, r#"{"name":"a"}"#).unwrap();
        assert_eq!(vms.devices("a").unwrap(), None);
        vms.save_devices("a", r#"{"devices":[]}"#).unwrap();
        assert_eq!(
            vms.devices("a").unwrap().as_deref(),
            Some(r#"{"devices":[]}"#)
        );
        // Another handle (another process) sees the commits, in name order.
        let other = VmRecords::open(dir.path()).unwrap();
        let rows = other.load().unwrap();
        assert_eq!(
            rows,
            [
                VmRow {
                    name: "a".into(),
                    owner_uid: 0,
                    record: r#"{"name":"a"}"#.into(),
                    devices: Some(r#"{"devices":[]}"#.into()),
                },
                VmRow {
                    name: "b".into(),
                    owner_uid: 1000,
                    record: r#"{"name":"b"}"#.into(),
                    devices: None,
                },
            ]
        );
        vms.delete("a").unwrap();
        vms.delete("a").unwrap();
        assert_eq!(other.load().unwrap().len(), 1);
        assert_eq!(other.devices("a").unwrap(), None);
    }

    #[test]
    fn a_taken_name_is_refused_naming_the_file_and_keeps_the_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmRecords::open(dir.path()).unwrap();
        vms.insert("a", 1000, "first").unwrap();
        let err = vms.insert("a", 0, "second").unwrap_err();
        assert!(
            matches!(&err, VmRecordsError::NameTaken { name, .. } if name == "a"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&vms.path().display().to_string()),
            "{err}"
        );
        assert_eq!(vms.load().unwrap()[0].record, "first");
    }

    #[test]
    fn the_connection_is_durable_across_power_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmRecords::open(dir.path()).unwrap();
        let synchronous: i64 = vms
            .registry
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
    }

    /// A database written before the table was part of the registry's schema: version 1,
    /// with the table the service created itself (`IF NOT EXISTS`) and rows in it.
    #[test]
    fn a_version_1_database_with_the_service_table_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(DB_FILE);
        {
            let mut conn = Connection::open(&file).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(crate::registry::schema::MIGRATIONS[0])
                .unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS service_vms (
                    name TEXT PRIMARY KEY, owner_uid INTEGER NOT NULL,
                    record TEXT NOT NULL, devices TEXT) STRICT;
                 INSERT INTO service_vms VALUES ('old', 1000, '{}', '[]');",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let vms = VmRecords::open(dir.path()).unwrap();
        let rows = vms.load().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "old");
        assert_eq!(rows[0].devices.as_deref(), Some("[]"));
        let version: i64 = vms
            .registry
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::registry::schema::VERSION);
        // A version 1 database without the table gets it.
        let fresh = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(fresh.path().join(DB_FILE)).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(crate::registry::schema::MIGRATIONS[0])
                .unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.commit().unwrap();
        }
        let vms = VmRecords::open(fresh.path()).unwrap();
        vms.insert("new", 0, "{}").unwrap();
    }
}
