//! Laying out files and relative symlinks the way sysfs has them.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use super::FakeError;

/// Writes `contents` to `path`, creating parent directories.
pub(crate) fn file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), FakeError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, contents).map_err(|source| FakeError::io(path, source))
}

/// Creates a directory and its parents.
pub(crate) fn mkdir(path: &Path) -> Result<(), FakeError> {
    fs::create_dir_all(path).map_err(|source| FakeError::io(path, source))
}

/// `to` relative to the directory `from` (both absolute, lexically normal).
pub(crate) fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to[common..] {
        out.push(part.as_os_str());
    }
    out
}

/// Creates the symlink `link` → `target` as a relative link, like sysfs does, replacing a
/// link already there.
pub(crate) fn link(target: &Path, link: &Path) -> Result<(), FakeError> {
    let dir = link.parent().unwrap_or(Path::new("/"));
    mkdir(dir)?;
    match fs::symlink_metadata(link) {
        Ok(_) => fs::remove_file(link).map_err(|source| FakeError::io(link, source))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(FakeError::io(link, source)),
    }
    symlink(relative(dir, target), link).map_err(|source| FakeError::io(link, source))
}

/// Removes a file or symlink; a missing one is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_dir(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A PCI config space: the standard header bytes, then zeros up to `size` (sparse).
pub(crate) fn config_bytes(
    vendor: u16,
    device: u16,
    class: u32,
    revision: u8,
    header_type: u8,
    subsystem: (u16, u16),
) -> [u8; 64] {
    let mut config = [0u8; 64];
    config[0..2].copy_from_slice(&vendor.to_le_bytes());
    config[2..4].copy_from_slice(&device.to_le_bytes());
    config[8] = revision;
    let class = class.to_le_bytes();
    config[9..12].copy_from_slice(&class[0..3]);
    config[0x0e] = header_type;
    config[0x2c..0x2e].copy_from_slice(&subsystem.0.to_le_bytes());
    config[0x2e..0x30].copy_from_slice(&subsystem.1.to_le_bytes());
    config
}

/// Writes the config file with `head` and a total length of `size` bytes.
pub(crate) fn config_file(path: &Path, head: &[u8], size: usize) -> Result<(), FakeError> {
    let io = |source| FakeError::io(path, source);
    let file = fs::File::create(path).map_err(io)?;
    let mut file = io::BufWriter::new(file);
    io::Write::write_all(&mut file, head).map_err(io)?;
    let file = file
        .into_inner()
        .map_err(|e| FakeError::io(path, e.into_error()))?;
    file.set_len(u64::try_from(size).unwrap_or(4096))
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(
                Path::new("/t/sys/bus/pci/devices"),
                Path::new("/t/sys/devices/pci0000:00/0000:00:01.0")
            ),
            PathBuf::from("../../../devices/pci0000:00/0000:00:01.0")
        );
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/c")),
            PathBuf::from("c")
        );
    }
}
