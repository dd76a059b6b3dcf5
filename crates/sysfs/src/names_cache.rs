//! Names for a long-running process: `pci.ids` read once, and again only when it changes.
//!
//! The daemon names devices on every host listing. Reading the database each time costs a
//! file read and a parse per request, and the buffers that come and go make the heap grow.
//! A [`PciNamesCache`] keeps the [`PciNames`] it loaded last, with the file's identity
//! (device, inode, size, modification time) and what the load covered. A request is
//! answered from it when the file is the same (one `stat`) and every vendor and device it
//! asks about was covered; otherwise the file is read again, for the old coverage plus the
//! new IDs, so a host's devices are looked up once however often they are listed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::{fs, io};

use crate::error::SysfsError;
use crate::ids::PciIds;
use crate::names::{PciNames, Wanted};

/// What tells one version of the file from another: a file rewritten in place changes its
/// size or modification time, one replaced (renamed over, as package managers and
/// `update-pciids` do) changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
}

impl Stamp {
    /// The file's stamp now; `None` when there is no file.
    fn of(path: &Path) -> Result<Option<Self>, SysfsError> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(Self {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                modified: (m.mtime(), m.mtime_nsec()),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SysfsError::read(path, e)),
        }
    }
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    covered: Wanted,
    names: Arc<PciNames>,
}

/// Names from one `pci.ids`, loaded on first need and again only when the file changes or
/// a request asks about IDs not loaded yet. Share one per process (it is `Sync`).
#[derive(Debug)]
pub struct PciNamesCache {
    path: PathBuf,
    loaded: Mutex<Option<Loaded>>,
    loads: AtomicU64,
}

impl PciNamesCache {
    /// A cache of the names in `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Mutex::new(None),
            loads: AtomicU64::new(0),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names for devices of these IDs (a missing file gives an empty table, as
    /// [`PciNames::load_for_ids`] does). Reads the file only when it changed since the
    /// last read, or when these IDs were not covered by it.
    pub fn names_for(
        &self,
        ids: impl IntoIterator<Item = PciIds>,
    ) -> Result<Arc<PciNames>, SysfsError> {
        let wanted = Wanted::for_ids(ids);
        // The stamp is taken before reading: a change after it is seen next time.
        let stamp = Stamp::of(&self.path)?;
        let mut slot = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut covered = match slot.take() {
            Some(old) if old.stamp == stamp && old.covered.covers(&wanted) => {
                let names = Arc::clone(&old.names);
                *slot = Some(old);
                return Ok(names);
            }
            // Same file: keep what it covered, so the table only grows with the host.
            Some(old) if old.stamp == stamp => old.covered,
            _ => Wanted::default(),
        };
        covered.vendors.extend(&wanted.vendors);
        covered.devices.extend(&wanted.devices);
        self.loads.fetch_add(1, Ordering::Relaxed);
        let names = Arc::new(PciNames::load_wanted(&self.path, &covered)?);
        *slot = Some(Loaded {
            stamp,
            covered,
            names: Arc::clone(&names),
        });
        Ok(names)
    }

    /// How many times the file has been read.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\
8086  Intel Corporation\n\t10d3  82574L Gigabit Network Connection\n\
C 02  Network controller\n\t00  Ethernet controller\n";

    fn ids(vendor: u16, device: u16) -> PciIds {
        PciIds {
            vendor,
            device,
            subsystem_vendor: 0,
            subsystem_device: 0,
        }
    }

    #[test]
    fn an_unchanged_file_is_read_once_and_a_changed_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        fs::write(&path, V1).unwrap();
        let cache = PciNamesCache::new(&path);
        assert_eq!(cache.loads(), 0, "nothing is read before the first request");
        for _ in 0..5 {
            let names = cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
            assert_eq!(names.vendor(0x8086), Some("Intel Corporation"));
        }
        assert_eq!(cache.loads(), 1);

        // Rewritten in place with another size: read again, and the new name shows.
        fs::write(&path, V1.replace("Intel Corporation", "Intel Corp.")).unwrap();
        let names = cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert_eq!(names.vendor(0x8086), Some("Intel Corp."));
        assert_eq!(cache.loads(), 2);
        cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert_eq!(cache.loads(), 2);

        // Replaced by another file of the same size (a rename over it): read again.
        let new = dir.path().join("pci.ids.new");
        fs::write(&new, V1.replace("Intel Corporation", "INTEL CORPORATIO")).unwrap();
        fs::rename(&new, &path).unwrap();
        let names = cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert_eq!(names.vendor(0x8086), Some("INTEL CORPORATIO"));
        assert_eq!(cache.loads(), 3);
    }

    #[test]
    fn new_ids_load_once_and_the_old_ones_stay_covered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        fs::write(&path, V1).unwrap();
        let cache = PciNamesCache::new(&path);
        cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        // A device of another vendor appears: one more read, covering both.
        let names = cache.names_for([ids(0x1af4, 0x1041)]).unwrap();
        assert_eq!(cache.loads(), 2);
        assert_eq!(
            names.device(0x1af4, 0x1041),
            Some("Virtio 1.0 network device")
        );
        assert_eq!(
            names.device(0x8086, 0x10d3),
            Some("82574L Gigabit Network Connection")
        );
        // Either alone, or both, or none: from the cache.
        cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        cache
            .names_for([ids(0x8086, 0x10d3), ids(0x1af4, 0x1041)])
            .unwrap();
        cache.names_for([]).unwrap();
        assert_eq!(cache.loads(), 2);
    }

    #[test]
    fn a_missing_file_gives_no_names_and_a_file_that_appears_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        let cache = PciNamesCache::new(&path);
        let names = cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert!(!names.is_loaded());
        cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert_eq!(
            cache.loads(),
            1,
            "a missing file is not looked for in vain each time"
        );
        fs::write(&path, V1).unwrap();
        let names = cache.names_for([ids(0x8086, 0x10d3)]).unwrap();
        assert_eq!(names.vendor(0x8086), Some("Intel Corporation"));
        assert_eq!(cache.loads(), 2);
    }
}
