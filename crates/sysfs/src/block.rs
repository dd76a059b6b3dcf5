//! Block-device facts passthrough cares about: loop backing files and NVDIMM PFN images.
//!
//! A loop device's backing file is `class/block/loopN/loop/backing_file`. An image (or
//! `/dev/pmemN`) formatted for `fsdax` carries an NVDIMM PFN info block: the signature
//! `NVDIMM_PFN_INFO\0` at byte 4096. Kata checks it before handing a file to a VM as
//! nvdimm, because QEMU must then be told the data starts after that metadata.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::attr;
use crate::error::{SysfsError, check_name};
use crate::sysfs::Sysfs;

/// The NVDIMM PFN info block signature.
pub const NVDIMM_PFN_SIGNATURE: &[u8; 16] = b"NVDIMM_PFN_INFO\0";
/// Where the signature sits.
pub const NVDIMM_PFN_OFFSET: u64 = 4096;

impl Sysfs {
    /// The backing file of the loop device `name` (e.g. `loop0`); `None` when it has none
    /// (detached).
    pub fn loop_backing_file(&self, name: &str) -> Result<Option<PathBuf>, SysfsError> {
        check_name("block device", name)?;
        let dir = self.path("class/block").join(name);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Err(SysfsError::NotFound {
                what: format!("block device {name}"),
                path: dir,
            });
        }
        Ok(attr::read_optional(&dir.join("loop/backing_file"))?
            .filter(|t| !t.is_empty())
            .map(PathBuf::from))
    }
}

/// True when `path` has the NVDIMM PFN signature at byte 4096. A file too short to hold
/// it is simply `false`.
pub fn has_nvdimm_pfn_signature(path: &Path) -> Result<bool, SysfsError> {
    let mut file = File::open(path).map_err(|e| SysfsError::read(path, e))?;
    file.seek(SeekFrom::Start(NVDIMM_PFN_OFFSET))
        .map_err(|e| SysfsError::read(path, e))?;
    let mut buf = [0u8; 16];
    match file.read_exact(&mut buf) {
        Ok(()) => Ok(&buf == NVDIMM_PFN_SIGNATURE),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(SysfsError::read(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_the_pfn_signature() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("pmem.img");
        let mut f = File::create(&with).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        f.write_all(NVDIMM_PFN_SIGNATURE).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        assert!(has_nvdimm_pfn_signature(&with).unwrap());

        let without = dir.path().join("plain.img");
        std::fs::write(&without, vec![0u8; 8192]).unwrap();
        assert!(!has_nvdimm_pfn_signature(&without).unwrap());

        let short = dir.path().join("short.img");
        std::fs::write(&short, b"tiny").unwrap();
        assert!(!has_nvdimm_pfn_signature(&short).unwrap());

        has_nvdimm_pfn_signature(&dir.path().join("missing")).unwrap_err();
    }
}
