//! The error of every read: which file, and what went wrong with it.
//!
//! Reads are the bulk of this crate, and they fail in the same few ways whatever the
//! attribute: the file is missing or unreadable (errno kept), its contents do not parse, or
//! the object asked for does not exist. Modules with their own rules (binding, device nodes)
//! have their own error enums that wrap this one.

use std::io;
use std::path::{Path, PathBuf};

/// A failed read of the sysfs tree.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// A file or directory could not be read (missing, unreadable, a symlink loop…).
    #[error("cannot read {}", path.display())]
    Read {
        /// The path read.
        path: PathBuf,
        /// The operating system's error, errno included.
        #[source]
        source: io::Error,
    },
    /// A file was read but its contents are not what the kernel writes there.
    #[error("unexpected value {value:?} in {}: expected {expected}", path.display())]
    Parse {
        /// The path read.
        path: PathBuf,
        /// The text found (trimmed).
        value: String,
        /// What the kernel writes there.
        expected: &'static str,
    },
    /// The named object does not exist under this root.
    #[error("{what} not found: no {}", path.display())]
    NotFound {
        /// The object, e.g. `PCI device 0000:01:00.0` or `IOMMU group 7`.
        what: String,
        /// The path that would hold it.
        path: PathBuf,
    },
    /// A name given by the caller could escape the tree (`..`, `/`, empty).
    #[error("invalid {what} name {name:?}: it must be one path component")]
    BadName {
        /// What the name is for (driver, mdev, block device…).
        what: &'static str,
        /// The name rejected.
        name: String,
    },
}

impl SysfsError {
    /// True when the underlying cause is a missing file or object.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Read { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Self::NotFound { .. } => true,
            Self::Parse { .. } | Self::BadName { .. } => false,
        }
    }

    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn parse(path: &Path, value: &str, expected: &'static str) -> Self {
        Self::Parse {
            path: path.to_owned(),
            value: value.trim().to_owned(),
            expected,
        }
    }
}

/// Checks that `name` is a single, plain path component (no `/`, not `.`/`..`, not empty,
/// no NUL), so that joining it to a sysfs directory cannot leave that directory.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), SysfsError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(SysfsError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

/// An error and its sources on one line, `a: b: c`, for reports that keep one line per
/// failure (inventory problems, release and recovery results, logs). Every Plugboard crate
/// sits above this one, so this is the one place that walks a source chain.
#[must_use]
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
