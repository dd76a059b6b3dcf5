//! The registry's schema and its migrations.
//!
//! The version lives in SQLite's `user_version`. Each migration is one SQL batch run in
//! the same `BEGIN IMMEDIATE` transaction that bumps the version, so a crash mid-upgrade
//! leaves the old schema intact. A file newer than this build is refused, never touched.

use rusqlite::Connection;

use super::RegistryError;

/// Migrations in order; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // Version 1: both PCI lists, the other kinds' claims, the intent journal, the audit trail.
    r"
    CREATE TABLE pci_devices (
        address         TEXT PRIMARY KEY,
        list            TEXT NOT NULL CHECK (list IN ('active', 'inactive')),
        owner_driver    TEXT,
        owner_domain    TEXT,
        managed         INTEGER NOT NULL,
        original_driver TEXT,
        iommu_group     INTEGER,
        CHECK ((list = 'active') = (owner_driver IS NOT NULL AND owner_domain IS NOT NULL))
    ) STRICT;
    CREATE INDEX pci_devices_group ON pci_devices (iommu_group);

    CREATE TABLE claims (
        kind         TEXT NOT NULL CHECK (kind IN ('usb', 'scsi', 'mdev', 'nvme')),
        key          TEXT NOT NULL,
        owner_driver TEXT NOT NULL,
        owner_domain TEXT NOT NULL,
        shareable    INTEGER NOT NULL DEFAULT 0,
        detail       TEXT,
        PRIMARY KEY (kind, key, owner_driver, owner_domain)
    ) STRICT;

    CREATE TABLE intents (
        id              INTEGER PRIMARY KEY,
        op              TEXT NOT NULL CHECK (op IN ('prepare', 'release', 'detach', 'reattach')),
        address         TEXT NOT NULL UNIQUE,
        original_driver TEXT,
        owner_driver    TEXT,
        owner_domain    TEXT,
        managed         INTEGER NOT NULL,
        writes_sysfs    INTEGER NOT NULL,
        iommu_group     INTEGER,
        step            TEXT NOT NULL,
        pid             INTEGER NOT NULL,
        pid_start       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX intents_group ON intents (iommu_group);

    CREATE TABLE events (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        address      TEXT NOT NULL,
        iommu_group  INTEGER,
        event        TEXT NOT NULL CHECK (event IN ('active', 'inactive', 'host', 'gone')),
        owner_driver TEXT,
        owner_domain TEXT
    ) STRICT;
    ",
    // Version 2: the VM table of the daemon's service (`vm_records.rs`). The service
    // created it itself with `IF NOT EXISTS` before it became part of this schema, so a
    // version-1 file may already hold it, with rows: keep those.
    r"
    CREATE TABLE IF NOT EXISTS service_vms (
        name      TEXT PRIMARY KEY,
        owner_uid INTEGER NOT NULL,
        record    TEXT NOT NULL,
        devices   TEXT
    ) STRICT;
    ",
];

/// The schema version this build writes.
#[expect(clippy::cast_possible_wrap, reason = "a handful of migrations")]
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `path` up to [`VERSION`], or refuses a newer one.
pub(crate) fn migrate(conn: &mut Connection, path: &std::path::Path) -> Result<(), RegistryError> {
    let err = |step, e| RegistryError::classify(path, step, 0, e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| err("starting the schema migration", e))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err("reading the schema version", e))?;
    if found > VERSION {
        return Err(RegistryError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: VERSION,
        });
    }
    let start = usize::try_from(found).map_err(|_| RegistryError::Invalid {
        path: path.to_path_buf(),
        column: "user_version",
        value: found.to_string(),
    })?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql)
            .map_err(|e| err("migrating the schema", e))?;
        tracing::info!(path = %path.display(), version = i + 1, "registry schema migrated");
    }
    if start < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(|e| err("writing the schema version", e))?;
    }
    tx.commit()
        .map_err(|e| err("committing the schema migration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = std::path::Path::new(":memory:");
        migrate(&mut conn, path).unwrap();
        migrate(&mut conn, path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        conn.execute("SELECT count(*) FROM pci_devices", []).ok();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn, std::path::Path::new("/x/hostdev.db")).unwrap_err();
        assert!(matches!(err, RegistryError::TooNew { found, .. } if found == VERSION + 1));
        assert!(err.to_string().contains("/x/hostdev.db"));
    }

    #[test]
    fn an_active_row_needs_an_owner() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let bad = conn.execute(
            "INSERT INTO pci_devices (address, list, managed) VALUES ('0000:01:00.0', 'active', 0)",
            [],
        );
        bad.unwrap_err();
    }
}
