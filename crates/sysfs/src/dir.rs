//! An open sysfs directory, for reading many attributes of one object cheaply.
//!
//! Reading an attribute by absolute path makes the kernel walk every component again
//! (`/sys/bus/pci/devices/<bdf>` is a symlink, so a dozen components per read). With the
//! directory open (`O_PATH`), each read is an `openat` of one name. An inventory reads some
//! twenty attributes per device, so this is most of its cost.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

/// The stack buffer for one attribute: sysfs shows at most a page.
const SMALL: usize = 4096;

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

    /// Calls `f` with the whole (small) file `name`, read like
    /// [`crate::attr::read_small`] but into a buffer on the stack: a sysfs attribute is at
    /// most a page and arrives in one read, so nothing is allocated unless the file is
    /// larger than that.
    pub(crate) fn with_small<T>(&self, name: &str, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        let file = self.open_read_only(name)?;
        // Uninitialized: zeroing a page per attribute costs more than parsing it.
        let mut buf = [MaybeUninit::<u8>::uninit(); SMALL];
        let (first, rest) = rustix::io::read(&file, &mut buf)?;
        if !rest.is_empty() {
            return Ok(f(first));
        }
        let mut out = first.to_vec();
        loop {
            out.reserve(SMALL);
            let got = rustix::io::read(&file, rustix::buffer::spare_capacity(&mut out))?;
            if got == 0 {
                break;
            }
        }
        Ok(f(&out))
    }

    /// Opens the directory `path` relative to this one (following symlinks).
    pub(crate) fn open_dir(&self, path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::openat(
            &self.fd,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// The names in the directory `name` (`"."` for this one), unsorted, without `.` and
    /// `..`; names that are not UTF-8 are left out.
    pub(crate) fn list(&self, name: &str) -> io::Result<Vec<String>> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = rustix::fs::Dir::new(fd)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if let Ok(text) = std::str::from_utf8(bytes) {
                names.push(text.to_owned());
            }
        }
        Ok(names)
    }

    /// The size of the file `name` and its bytes from `offset` into `buf` (fewer when it
    /// is shorter), with one open: `(size, bytes read)`. For `config`, whose size says
    /// PCI or PCIe and whose header holds the revision and header type.
    pub(crate) fn size_and_bytes_at(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<(u64, usize)> {
        let file = self.open_read_only(name)?;
        let stat = rustix::fs::fstat(&file)?;
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let at = offset + u64::try_from(done).unwrap_or(u64::MAX);
            let n = rustix::io::pread(&file, rest, at)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok((u64::try_from(stat.st_size).unwrap_or(0), done))
    }

    /// Calls `f` with the target of the symlink `name` (not followed), read into a buffer
    /// on the stack: sysfs link targets are far shorter than a page, and a longer one is
    /// refused with `ENAMETOOLONG` rather than cut short.
    pub(crate) fn with_link<T>(&self, name: &str, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        let mut buf = [MaybeUninit::<u8>::uninit(); SMALL];
        let (target, rest) = rustix::fs::readlinkat_raw(&self.fd, name, &mut buf)?;
        if rest.is_empty() {
            return Err(rustix::io::Errno::NAMETOOLONG.into());
        }
        Ok(f(target))
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
