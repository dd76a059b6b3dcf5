//! The registry: who owns which device, kept in an embedded SQLite database that several
//! processes (the daemon, CLI calls, runtimes embedding this crate) share at once.
//!
//! The file is `<state dir>/hostdev.db`, in WAL mode with a busy timeout, and
//! `synchronous=NORMAL` by default (see [`Durability`]): a commit survives the death of any
//! process, and the file is never corrupted. Every read-modify-write runs in a
//! `BEGIN IMMEDIATE` transaction, which takes the write lock up front: two processes can
//! never both read "free" and both claim. Row access lives in one file per table.
//!
//! The same file holds the VM table of the daemon's service ([`VmRecords`]), so that a
//! state directory has one database, whose schema this crate alone migrates.

mod claims;
mod error;
mod events;
mod intents;
mod pci_rows;
mod schema;
mod vm_records;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use claims::{ClaimKind, ClaimRow};
pub(crate) use error::Invalid;
pub use error::RegistryError;
pub use events::{AuditEvent, EventKind};
pub use pci_rows::{List, PciRow};

/// The rows as stored, for the `fuzzing` feature's entry points.
#[cfg(feature = "fuzzing")]
pub(crate) mod raw {
    pub use super::claims::RawClaim;
    pub use super::error::Invalid;
    pub use super::intents::RawIntent;
    pub use super::pci_rows::RawRow;
}
pub use vm_records::{VmRecords, VmRecordsError, VmRow};

/// The database file's name inside the state directory.
pub const DB_FILE: &str = "hostdev.db";

/// How to open the registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// How long a transaction waits for another process's write lock.
    pub busy_timeout: Duration,
    /// Open without write access (a read-only mount or a listing).
    pub read_only: bool,
    /// When a commit reaches the disk.
    pub durability: Durability,
}

/// When a commit reaches the disk (SQLite's `synchronous` in WAL mode).
///
/// `Process` is the default, and enough for this registry: a commit survives any process
/// crash (`kill -9`, a panic, OOM); only an OS crash or power cut can lose the last
/// commits, and those also reset every driver binding the commits describe, since sysfs
/// does not survive a reboot either, so the journal and the host stay in step. `PowerCut`
/// fsyncs every commit, at the disk's fsync rate (a few hundred per second on a VM disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: durable across process crashes; fsync at checkpoints.
    #[default]
    Process,
    /// `synchronous=FULL`: every commit is fsynced before it returns.
    PowerCut,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            read_only: false,
            durability: Durability::default(),
        }
    }
}

/// An open registry database.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

/// One transaction on the registry; the row methods live in the table files.
#[derive(Debug)]
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
}

impl Registry {
    /// Opens (creating if needed) `<state_dir>/hostdev.db` and brings its schema up to date.
    pub fn open(state_dir: &Path, options: &RegistryOptions) -> Result<Self, RegistryError> {
        let path = state_dir.join(DB_FILE);
        if !options.read_only {
            create_state_dir(state_dir)?;
        }
        let flags = if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let err = |step, e| RegistryError::classify(&path, step, 0, e);
        let mut conn = Connection::open_with_flags(&path, flags).map_err(|e| err("opening", e))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| err("setting the busy timeout", e))?;
        // Any read of a file that is not a database fails here, with NOTADB.
        conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .map_err(|e| err("reading the schema", e))?;
        if !options.read_only {
            if conn
                .is_readonly("main")
                .map_err(|e| err("checking access", e))?
            {
                return Err(RegistryError::ReadOnly { path, source: None });
            }
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| err("switching to WAL", e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %path.display(), mode, "registry is not in WAL mode");
            }
            let synchronous = match options.durability {
                Durability::Process => "NORMAL",
                Durability::PowerCut => "FULL",
            };
            conn.pragma_update(None, "synchronous", synchronous)
                .map_err(|e| err("setting synchronous", e))?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(|e| err("enabling foreign keys", e))?;
            schema::migrate(&mut conn, &path)?;
        } else {
            let found: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| err("reading the schema version", e))?;
            if found > schema::VERSION {
                return Err(RegistryError::TooNew {
                    path,
                    found,
                    supported: schema::VERSION,
                });
            }
        }
        Ok(Self {
            conn,
            path,
            busy_timeout: options.busy_timeout,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits if it returns `Ok`.
    ///
    /// The write lock is taken before `f` reads anything, so checks and writes in `f` are
    /// atomic with respect to every other process.
    pub fn write<T, E>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<RegistryError>,
    {
        self.run(TransactionBehavior::Immediate, f)
    }

    /// Runs `f` in a read transaction (a consistent snapshot; takes no write lock).
    pub fn read<T, E>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<RegistryError>,
    {
        self.run(TransactionBehavior::Deferred, f)
    }

    fn run<T, E>(
        &mut self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<RegistryError>,
    {
        let started = Instant::now();
        let path = self.path.as_path();
        let tx = self.conn.transaction_with_behavior(behavior).map_err(|e| {
            RegistryError::classify(
                path,
                "starting a transaction",
                started.elapsed().as_millis(),
                e,
            )
        })?;
        let tx = Tx { tx, path };
        let value = f(&tx)?;
        tx.tx.commit().map_err(|e| {
            RegistryError::classify(path, "committing", started.elapsed().as_millis(), e)
        })?;
        Ok(value)
    }

    /// The busy timeout this registry was opened with.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }
}

impl Tx<'_> {
    /// Maps a SQLite error met while doing `step` to a [`RegistryError`] naming the file.
    pub(crate) fn err(&self, step: &'static str) -> impl Fn(rusqlite::Error) -> RegistryError {
        let path = self.path;
        move |e| RegistryError::classify(path, step, 0, e)
    }

    /// The [`RegistryError::Invalid`] of a row that did not decode.
    pub(crate) fn invalid_row(&self, invalid: Invalid) -> RegistryError {
        RegistryError::Invalid {
            path: self.path.to_path_buf(),
            column: invalid.column,
            value: invalid.value,
        }
    }

    /// An [`RegistryError::Invalid`] for `column` holding `value`.
    pub(crate) fn invalid(&self, column: &'static str, value: &str) -> RegistryError {
        RegistryError::Invalid {
            path: self.path.to_path_buf(),
            column,
            value: value.to_owned(),
        }
    }
}

fn create_state_dir(dir: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| RegistryError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::Owner;

    fn row(address: &str, list: List, owner: Option<&str>) -> PciRow {
        PciRow {
            address: address.into(),
            list,
            owner: owner.map(|o| o.parse().unwrap()),
            managed: true,
            original_driver: Some("e1000e".into()),
            iommu_group: Some(7),
        }
    }

    #[test]
    fn creates_the_state_dir_and_a_wal_database() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        let mut reg = Registry::open(&state, &RegistryOptions::default()).unwrap();
        assert_eq!(reg.path(), state.join(DB_FILE));
        let mode: String = reg
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        reg.write(|tx| tx.put_pci_row(&row("0000:01:00.0", List::Active, Some("qemu/a"))))
            .unwrap();
        // A second handle (another process would do the same) sees the commit.
        let mut other = Registry::open(&state, &RegistryOptions::default()).unwrap();
        let rows = other.read(|tx| tx.pci_rows()).unwrap();
        assert_eq!(
            rows,
            vec![row("0000:01:00.0", List::Active, Some("qemu/a"))]
        );
        let events = other.read(|tx| tx.events_after(0)).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Active);
        assert_eq!(events[0].owner, Some(Owner::new("qemu", "a").unwrap()));
    }

    #[test]
    fn a_failed_closure_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path(), &RegistryOptions::default()).unwrap();
        let r: Result<(), RegistryError> = reg.write(|tx| {
            tx.put_pci_row(&row("0000:01:00.0", List::Inactive, None))?;
            Err(tx.invalid("test", "abort"))
        });
        assert!(r.is_err());
        assert!(reg.read(|tx| tx.pci_rows()).unwrap().is_empty());
        assert!(reg.read(|tx| tx.events_after(0)).unwrap().is_empty());
    }

    #[test]
    fn a_held_write_lock_gives_locked_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let options = RegistryOptions {
            busy_timeout: Duration::from_millis(50),
            ..RegistryOptions::default()
        };
        let mut holder = Registry::open(dir.path(), &options).unwrap();
        let mut waiter = Registry::open(dir.path(), &options).unwrap();
        let holder_tx = holder
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let err = waiter.write(|tx| tx.pci_rows()).unwrap_err();
        assert!(err.is_locked(), "{err:?}");
        assert!(
            err.to_string()
                .contains(&dir.path().join(DB_FILE).display().to_string())
        );
        drop(holder_tx);
        waiter.write(|tx| tx.pci_rows()).unwrap();
    }

    #[test]
    fn a_read_only_registry_refuses_writes_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(Registry::open(dir.path(), &RegistryOptions::default()).unwrap());
        let options = RegistryOptions {
            read_only: true,
            ..RegistryOptions::default()
        };
        let mut reg = Registry::open(dir.path(), &options).unwrap();
        assert!(reg.read(|tx| tx.pci_rows()).unwrap().is_empty());
        let err = reg
            .write(|tx| tx.put_pci_row(&row("0000:01:00.0", List::Inactive, None)))
            .unwrap_err();
        assert!(matches!(err, RegistryError::ReadOnly { .. }), "{err:?}");
        assert!(err.to_string().contains("hostdev.db"));
    }

    #[test]
    fn a_corrupt_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(DB_FILE);
        let junk = b"this is not a database, it is a shopping list\n".repeat(100);
        std::fs::write(&file, &junk).unwrap();
        let err = Registry::open(dir.path(), &RegistryOptions::default()).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&file.display().to_string()));
        assert_eq!(std::fs::read(&file).unwrap(), junk);
    }

    #[test]
    fn a_missing_read_only_registry_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let options = RegistryOptions {
            read_only: true,
            ..RegistryOptions::default()
        };
        let err = Registry::open(&dir.path().join("none"), &options).unwrap_err();
        assert!(matches!(err, RegistryError::CannotOpen { .. }), "{err:?}");
    }
}
