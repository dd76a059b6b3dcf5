//! Errors of the registry: every one names the database file, and the ones a caller must
//! act on (locked, read-only, corrupt, too new) are their own variants.

use std::path::PathBuf;

use rusqlite::ErrorCode;

/// What went wrong with the registry database.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the write lock longer than the busy timeout.
    #[error("the registry {path} is locked by another process (waited {waited_ms} ms)")]
    Locked {
        /// The database file.
        path: PathBuf,
        /// How long we waited.
        waited_ms: u128,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database cannot be written (read-only file, directory or mount).
    #[error("the registry {path} is read-only")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// SQLite's error, when it gave one.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// The file cannot be opened (permissions, a missing directory).
    #[error("cannot open the registry {path}")]
    CannotOpen {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a SQLite database, or its pages are damaged.
    #[error("the registry {path} is corrupt or not a Plugboard database")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer Plugboard.
    #[error(
        "the registry {path} has schema version {found}, newer than this build knows ({supported})"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A column holds a value this build cannot read.
    #[error("the registry {path} holds an invalid {column}: {value:?}")]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// Table and column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// Any other SQLite failure, with the step that failed.
    #[error("registry {path}: {step} failed")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        step: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl RegistryError {
    /// Sorts a SQLite error into locked / read-only / corrupt / other, naming `path`.
    pub(crate) fn classify(
        path: &std::path::Path,
        step: &'static str,
        waited_ms: u128,
        source: rusqlite::Error,
    ) -> Self {
        let path = path.to_path_buf();
        let code = match &source {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        match code {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Locked {
                path,
                waited_ms,
                source,
            },
            Some(ErrorCode::CannotOpen) => Self::CannotOpen { path, source },
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => Self::ReadOnly {
                path,
                source: Some(source),
            },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                Self::Corrupt { path, source }
            }
            _ => Self::Sqlite { path, step, source },
        }
    }

    /// True when the error is "another process holds the lock".
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked { .. })
    }
}

/// A column holding a value this build cannot read: a [`RegistryError::Invalid`] before
/// the transaction names the database file. Row decoding returns it, so it needs no open
/// database (and can be fuzzed without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Table and column.
    pub column: &'static str,
    /// The value found.
    pub value: String,
}

impl Invalid {
    pub(crate) fn new(column: &'static str, value: impl Into<String>) -> Self {
        Self {
            column,
            value: value.into(),
        }
    }
}
