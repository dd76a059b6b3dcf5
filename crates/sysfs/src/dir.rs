//! An open sysfs directory, for reading many attributes of one object cheaply.
//!
//! Reading an attribute by absolute path makes the kernel walk every component again
//! (`/sys/bus/pci/devices/<bdf>` is a symlink, so a dozen components per read). With the
//! directory open (`O_PATH`), each read is an `openat` of one name. An inventory reads some
//! twenty attributes per device, so this is most of its cost.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// A directory opened with `O_PATH`; reads are relative to it.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens `path` (following symlinks) as a directory.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    fn open_read_only(&self, name: &str) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The whole (small) file `name`, read like [`crate::attr::read_small`].
    pub(crate) fn read_small(&self, name: &str) -> io::Result<String> {
        let file = self.open_read_only(name)?;
        let mut buf = [0u8; 1024];
        let mut out = Vec::new();
        loop {
            let n = rustix::io::read(&file, &mut buf)?;
            out.extend_from_slice(buf.get(..n).unwrap_or_default());
            if n < buf.len() {
                break;
            }
        }
        String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The first `buf.len()` bytes of `name` (fewer if it is shorter); returns the count.
    pub(crate) fn read_head(&self, name: &str, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.open_read_only(name)?;
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let n = rustix::io::read(&file, rest)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// The target of the symlink `name`, not followed.
    pub(crate) fn read_link(&self, name: &str) -> io::Result<PathBuf> {
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        let bytes = target.into_bytes();
        Ok(PathBuf::from(
            <std::ffi::OsString as OsStringExt>::from_vec(bytes),
        ))
    }

    /// The size of `name` (following symlinks).
    pub(crate) fn len(&self, name: &str) -> io::Result<u64> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::empty())?;
        Ok(u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// True when `name` exists (a symlink counts, even a dangling one).
    pub(crate) fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// True when `name` is a directory (following symlinks).
    pub(crate) fn is_dir(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::empty())
            .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
    }
}
