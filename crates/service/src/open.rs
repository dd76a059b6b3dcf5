//! Opening a caller's file once, on the caller's behalf.
//!
//! The service runs as root, so a path a caller names is checked before it is used: the
//! file must be the caller's (`auth.rs`) and a block device or a regular file. Checking a
//! path and opening it later are two lookups, and a path swapped in between (a symlink, a
//! rename) would get the caller a file that was never checked. So the path is looked up
//! once, and everything after works on that one open file:
//!
//! 1. `open(path, O_PATH)`: symlinks are followed, but nothing of the file is opened yet
//!    (no device's `open` runs, a FIFO does not block).
//! 2. `fstat` of that descriptor: the type (block device or regular file) and the owner.
//! 3. The file is opened for real through `/proc/self/fd/N`, which names the very inode
//!    found in step 1 whatever the path names by now; read-only or read-write as the device
//!    asks (QEMU matches the access mode when it duplicates the descriptor), with
//!    `O_CLOEXEC` and `O_NOCTTY`. Its `fstat` must show the same inode.
//! 4. The identity the device manager dedupes on comes from the same open file: a block
//!    device's `major:minor`, or a regular file's path as `/proc/self/fd/N` reads back
//!    (the canonical path of the file opened, not of whatever the caller's path names now).
//!
//! The open file then goes to the hypervisor as a descriptor (QEMU's `add-fd`), never the
//! path, so the VM gets the file that was checked.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use plugboard_devices::{DevKind, DeviceIdentity, DeviceNode, PassedFileType};
use rustix::fs::{Mode, OFlags};

use crate::auth::Caller;
use crate::error::ServiceError;

/// A block device's file, opened and checked for a caller. See the module documentation.
#[derive(Debug)]
pub struct OpenedFile {
    file: File,
    path: PathBuf,
    canonical: PathBuf,
    identity: DeviceIdentity,
    file_type: PassedFileType,
}

impl OpenedFile {
    /// Looks `path` up once, checks that one file (a block device or a regular file that
    /// `caller` may use) and opens it, read-only when `read_only`.
    ///
    /// # Errors
    /// [`ServiceError::BadRequest`] for a path that does not resolve or a file of another
    /// type; [`ServiceError::Forbidden`] for someone else's file.
    pub fn open(
        caller: Caller,
        path: &Path,
        read_only: bool,
        action: &str,
    ) -> Result<Self, ServiceError> {
        let bad = |e: std::io::Error| {
            ServiceError::BadRequest(format!("cannot use {}: {e}", path.display()))
        };
        let found: OwnedFd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| bad(e.into()))?;
        let found = File::from(found);
        let meta = found.metadata().map_err(bad)?;
        let file_type = if meta.file_type().is_block_device() {
            PassedFileType::BlockDevice
        } else if meta.is_file() {
            PassedFileType::File
        } else {
            return Err(ServiceError::BadRequest(format!(
                "{} is neither a block device nor a regular file",
                path.display()
            )));
        };
        caller.may_use_open_file(&meta, path, action)?;
        let access = if read_only {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let file: OwnedFd = rustix::fs::open(
            proc_fd(&found),
            access | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| bad(e.into()))?;
        // Owned from here; the O_PATH descriptor closes when `found` drops.
        let file = File::from(file);
        let opened = file.metadata().map_err(bad)?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(ServiceError::BadRequest(format!(
                "{} changed while it was opened",
                path.display()
            )));
        }
        let canonical = std::fs::read_link(proc_fd(&file)).map_err(bad)?;
        let identity = match file_type {
            PassedFileType::BlockDevice => {
                DeviceIdentity::Node(DeviceNode::from_rdev(DevKind::Block, opened.rdev()))
            }
            PassedFileType::File => DeviceIdentity::Path(canonical.clone()),
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            canonical,
            identity,
            file_type,
        })
    }

    /// The identity of the file opened (see the module documentation).
    #[must_use]
    pub const fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// A block device or a regular file.
    #[must_use]
    pub const fn file_type(&self) -> PassedFileType {
        self.file_type
    }

    /// The canonical path of the file opened, as `/proc/self/fd/N` reads back: one spelling
    /// of it, whichever the caller used.
    #[must_use]
    pub fn canonical_path(&self) -> &Path {
        &self.canonical
    }

    /// The path the caller named (for messages; the file is what counts).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    #[must_use]
    pub const fn file(&self) -> &File {
        &self.file
    }

    /// The open file, taken out.
    #[must_use]
    pub fn into_file(self) -> File {
        self.file
    }
}

/// `/proc/self/fd/N` of an open descriptor: the file it holds, whatever its path names now.
fn proc_fd(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn the_file_opened_is_the_one_found_even_when_the_path_is_swapped_after() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        std::fs::write(&disk, b"checked").unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        let opened = OpenedFile::open(Caller::ROOT, &link, true, "attach").unwrap();
        assert_eq!(opened.file_type(), PassedFileType::File);
        assert_eq!(
            *opened.identity(),
            DeviceIdentity::Path(disk.canonicalize().unwrap()),
            "the identity names the file opened, not the symlink"
        );
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, b"swapped").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut opened.into_file(), &mut text).unwrap();
        assert_eq!(text, "checked");
    }

    #[test]
    fn access_follows_read_only() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let access = |read_only| {
            let opened = OpenedFile::open(Caller::ROOT, f.path(), read_only, "attach").unwrap();
            let flags = rustix::fs::fcntl_getfl(opened.file()).unwrap();
            (
                flags & OFlags::RWMODE,
                rustix::io::fcntl_getfd(opened.file()).unwrap(),
            )
        };
        assert_eq!(access(true), (OFlags::RDONLY, rustix::io::FdFlags::CLOEXEC));
        assert_eq!(access(false), (OFlags::RDWR, rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn other_types_are_refused_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO would block an open for reading; it is refused before any open.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for path in [fifo.as_path(), dir.path(), Path::new("/dev/null")] {
            let err = OpenedFile::open(Caller::ROOT, path, true, "attach").unwrap_err();
            assert_eq!(err.class(), ErrorClass::BadRequest);
            assert!(err.to_string().contains("neither"), "{err}");
        }
        let err =
            OpenedFile::open(Caller::ROOT, &dir.path().join("none"), true, "attach").unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest);
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn someone_elses_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let owner = f.as_file().metadata().unwrap().uid();
        OpenedFile::open(Caller::new(owner), f.path(), false, "attach").unwrap();
        let other = Caller::new(owner.wrapping_add(4242));
        if !other.is_root() {
            let err = OpenedFile::open(other, f.path(), false, "attach").unwrap_err();
            assert_eq!(err.class(), ErrorClass::Forbidden);
        }
    }
}
