//! The [`Sysfs`] handle: a sysfs root, a `/dev` root, and the seam through which writes go.
//!
//! Every path this crate touches is built from these two roots, so the same code reads the
//! real `/sys` on a host, a fake kernel's temp dir in tests, and the lab guest's `/sys`.
//!
//! Writes go through an [`AttrWriter`]. On a real kernel ([`KernelWriter`]) a write is one
//! `write(2)` to an existing attribute, and the kernel reacts (binds, unbinds, probes) before
//! the call returns, reporting errors through errno. A fake kernel's tree is a plain
//! directory that cannot react, so the fake installs its own writer that applies the kernel's
//! semantics and returns the kernel's errno. Everything above the writer (what is written
//! where, and the verification afterwards) is the same code in both cases.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::debug;

/// The default sysfs root.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// The default device-node root.
pub const DEFAULT_DEV_ROOT: &str = "/dev";

/// How an attribute write reaches the kernel. Small on purpose: one write of one value.
///
/// Implemented by [`KernelWriter`] (the real kernel) and, with the `test-util` feature, by
/// the fake kernel's writer (`plugboard_sysfs::fake::FakeKernel::sysfs`).
pub trait AttrWriter: fmt::Debug + Send + Sync {
    /// Writes `value` to the existing attribute `path` in a single `write(2)`, like
    /// `echo -n value > path`, and returns the kernel's answer (errno included).
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real kernel: opens the attribute write-only (never creating it) and writes once.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelWriter;

impl AttrWriter for KernelWriter {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        // sysfs wants the whole value in one write; a short write is an error there.
        let written = file.write(value.as_bytes())?;
        if written == value.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", value.len()),
            ))
        }
    }
}

/// A failed attribute write. The message names the file and the value.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The kernel (or the fake) refused the write.
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        /// The attribute written.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The kernel's answer, errno included (ENODEV, EBUSY, EINVAL…).
        #[source]
        source: io::Error,
    },
    /// The path is not under this handle's sysfs root.
    #[error("refusing to write {}: it is outside the sysfs root {}", path.display(), root.display())]
    OutsideRoot {
        /// The path asked for.
        path: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
}

impl WriteError {
    /// The errno of a refused write, if there is one (e.g. `libc::ENODEV`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Write { source, .. } => source.raw_os_error(),
            Self::OutsideRoot { .. } => None,
        }
    }
}

struct Inner {
    root: PathBuf,
    dev_root: PathBuf,
    writer: Arc<dyn AttrWriter>,
}

/// A handle on a sysfs tree (and its `/dev`). Cheap to clone; share it freely.
///
/// ```
/// use plugboard_sysfs::Sysfs;
/// let host = Sysfs::new("/sys"); // or a fake kernel's root in tests
/// assert_eq!(host.root(), std::path::Path::new("/sys"));
/// ```
#[derive(Clone)]
pub struct Sysfs {
    inner: Arc<Inner>,
}

impl fmt::Debug for Sysfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sysfs")
            .field("root", &self.inner.root)
            .field("dev_root", &self.inner.dev_root)
            .field("writer", &self.inner.writer)
            .finish()
    }
}

impl Default for Sysfs {
    /// `/sys` and `/dev`, writing to the real kernel.
    fn default() -> Self {
        Self::new(DEFAULT_SYSFS_ROOT)
    }
}

impl Sysfs {
    /// A handle on the sysfs tree at `root`, with `/dev` as the device-node root and the
    /// real kernel's writer.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_parts(
            root.into(),
            PathBuf::from(DEFAULT_DEV_ROOT),
            Arc::new(KernelWriter),
        )
    }

    /// A handle with every part given: the sysfs root, the `/dev` root and the writer.
    pub fn with_parts(root: PathBuf, dev_root: PathBuf, writer: Arc<dyn AttrWriter>) -> Self {
        Self {
            inner: Arc::new(Inner {
                root,
                dev_root,
                writer,
            }),
        }
    }

    /// The same handle with another device-node root (`/dev`).
    #[must_use]
    pub fn with_dev_root(&self, dev_root: impl Into<PathBuf>) -> Self {
        Self::with_parts(
            self.inner.root.clone(),
            dev_root.into(),
            Arc::clone(&self.inner.writer),
        )
    }

    /// The sysfs root (`/sys` on a host).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The device-node root (`/dev` on a host).
    pub fn dev_root(&self) -> &Path {
        &self.inner.dev_root
    }

    /// `<root>/<relative>`.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.inner.root.join(relative)
    }

    /// `<dev root>/<relative>`.
    pub fn dev_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.inner.dev_root.join(relative)
    }

    /// `<root>/bus/pci/devices`.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.path("bus/pci/devices")
    }

    /// `<root>/bus/pci/drivers`.
    pub fn pci_drivers_dir(&self) -> PathBuf {
        self.path("bus/pci/drivers")
    }

    /// `<root>/kernel/iommu_groups`.
    pub fn iommu_groups_dir(&self) -> PathBuf {
        self.path("kernel/iommu_groups")
    }

    /// `<dev root>/vfio/<group>`, the legacy VFIO group node.
    pub fn vfio_group_node(&self, group: u32) -> PathBuf {
        self.dev_path(format!("vfio/{group}"))
    }

    /// Writes `value` to the attribute `path` (which must be under the sysfs root) through
    /// this handle's writer, and logs it. Prefer the typed operations (bind, unbind,
    /// override, reset); this is the door for the rare attribute they do not cover.
    pub fn write_attribute(&self, path: &Path, value: &str) -> Result<(), WriteError> {
        if !path.starts_with(&self.inner.root)
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(WriteError::OutsideRoot {
                path: path.to_owned(),
                root: self.inner.root.clone(),
            });
        }
        debug!(path = %path.display(), value, "sysfs write");
        self.inner
            .writer
            .write_attr(path, value)
            .map_err(|source| WriteError::Write {
                path: path.to_owned(),
                value: value.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_writes_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::new(dir.path());
        let err = sysfs
            .write_attribute(Path::new("/etc/passwd"), "x")
            .unwrap_err();
        assert!(matches!(err, WriteError::OutsideRoot { .. }));
        let sneaky = dir.path().join("../escape");
        assert!(matches!(
            sysfs.write_attribute(&sneaky, "x"),
            Err(WriteError::OutsideRoot { .. })
        ));
    }

    #[test]
    fn kernel_writer_never_creates_files() {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::new(dir.path());
        let missing = dir.path().join("bus/pci/drivers_probe");
        let err = sysfs.write_attribute(&missing, "0000:00:00.0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(err.to_string().contains("drivers_probe"), "{err}");
        assert!(!missing.exists());
    }
}
