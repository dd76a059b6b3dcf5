//! Kata's vhost-user store: block-device nodes that stand for vhost-user sockets.
//!
//! A container runtime can only hand a container device nodes, so Kata lets an operator make
//! fake block nodes in `<store>/block/devices/` (`mknod`, major 241 for vhost-user-blk, 242
//! for vhost-user-scsi; Linux reserves 240–254 for local use) and put each backend's socket
//! at `<store>/block/sockets/<same name>`. A device request with such a major is resolved by
//! finding the node with the same `major:minor` and taking the socket of the same name.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use plugboard_sysfs::DevKind;

use crate::kind::DeviceNode;

/// The major of vhost-user-blk nodes in the store.
pub const VHOST_USER_BLK_MAJOR: u32 = 241;
/// The major of vhost-user-scsi nodes in the store.
pub const VHOST_USER_SCSI_MAJOR: u32 = 242;

/// Why the store has no socket for a device.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserStoreError {
    /// No block node with this number in `<store>/block/devices`.
    #[error("required device node ({major}:{minor}) doesn't exist under directory {}", dir.display())]
    NoNode {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// The devices directory.
        dir: PathBuf,
    },
    /// The node exists but its socket does not.
    #[error("vhost-user socket {} for device node {major}:{minor} is missing", path.display())]
    NoSocket {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// The socket path looked for.
        path: PathBuf,
        /// The stat error.
        #[source]
        source: io::Error,
    },
    /// Reading the store failed.
    #[error("cannot read vhost-user store directory {}", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A vhost-user store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserStore {
    root: PathBuf,
}

impl VhostUserStore {
    /// The store at `root` (Kata's `vhost_user_store_path`, `/var/run/kata-containers/vhost-user`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `major` is one of the store's (241 or 242).
    #[must_use]
    pub const fn is_store_major(major: u32) -> bool {
        matches!(major, VHOST_USER_BLK_MAJOR | VHOST_USER_SCSI_MAJOR)
    }

    /// The socket of block node `major:minor`.
    ///
    /// # Errors
    /// [`VhostUserStoreError::NoNode`], [`VhostUserStoreError::NoSocket`],
    /// [`VhostUserStoreError::Read`].
    pub fn socket(&self, major: u32, minor: u32) -> Result<PathBuf, VhostUserStoreError> {
        let dir = self.root.join("block/devices");
        let read = |path: &Path, source| VhostUserStoreError::Read {
            path: path.to_path_buf(),
            source,
        };
        let wanted = DeviceNode::new(DevKind::Block, major, minor);
        let entries = fs::read_dir(&dir).map_err(|e| read(&dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| read(&dir, e))?;
            // Follow links, as Kata's stat does; skip entries that vanish or are not nodes.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            if meta.file_type().is_block_device()
                && DeviceNode::from_rdev(DevKind::Block, meta.rdev()) == wanted
            {
                names.push(entry.file_name());
            }
        }
        names.sort();
        let Some(name) = names.into_iter().next() else {
            return Err(VhostUserStoreError::NoNode { major, minor, dir });
        };
        let socket = self.root.join("block/sockets").join(name);
        fs::metadata(&socket).map_err(|source| VhostUserStoreError::NoSocket {
            major,
            minor,
            path: socket.clone(),
            source,
        })?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn mknod(path: &Path, kind: &str, major: u32, minor: u32) {
        let status = Command::new("mknod")
            .arg(path)
            .arg(kind)
            .arg(major.to_string())
            .arg(minor.to_string())
            .status()
            .expect("run mknod");
        assert!(
            status.success(),
            "mknod {} (tests need root)",
            path.display()
        );
    }

    fn store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("block/devices");
        let sockets = dir.path().join("block/sockets");
        fs::create_dir_all(&devices).unwrap();
        fs::create_dir_all(&sockets).unwrap();
        mknod(&devices.join("disk0"), "b", 241, 0);
        mknod(&devices.join("disk1"), "b", 241, 1);
        mknod(&devices.join("lun0"), "b", 242, 0);
        mknod(&devices.join("chr"), "c", 241, 5);
        fs::write(sockets.join("disk0"), "").unwrap();
        fs::write(sockets.join("lun0"), "").unwrap();
        fs::write(sockets.join("chr"), "").unwrap();
        dir
    }

    #[test]
    fn finds_the_socket_of_the_same_name() {
        let dir = store();
        let s = VhostUserStore::new(dir.path());
        assert_eq!(
            s.socket(241, 0).unwrap(),
            dir.path().join("block/sockets/disk0")
        );
        assert_eq!(
            s.socket(242, 0).unwrap(),
            dir.path().join("block/sockets/lun0")
        );
    }

    #[test]
    fn missing_node_or_socket_is_an_error() {
        let dir = store();
        let s = VhostUserStore::new(dir.path());
        let e = s.socket(241, 7).unwrap_err();
        assert!(matches!(
            e,
            VhostUserStoreError::NoNode {
                major: 241,
                minor: 7,
                ..
            }
        ));
        assert!(e.to_string().contains("(241:7) doesn't exist"));
        // A char node with the numbers does not count.
        assert!(matches!(
            s.socket(241, 5),
            Err(VhostUserStoreError::NoNode { .. })
        ));
        // disk1 has a node but no socket.
        let e = s.socket(241, 1).unwrap_err();
        assert!(
            matches!(&e, VhostUserStoreError::NoSocket { path, .. } if path.ends_with("sockets/disk1"))
        );
        let missing = VhostUserStore::new(dir.path().join("nope"));
        assert!(matches!(
            missing.socket(241, 0),
            Err(VhostUserStoreError::Read { .. })
        ));
    }
}
