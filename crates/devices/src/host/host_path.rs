//! Where a device is on the host, from the `(type, major:minor)` a container runtime gives.
//!
//! Kata's `GetHostPath`: the kernel names every node it creates in
//! `<sysfs>/dev/{block,char}/M:m/uevent` (`DEVNAME=sda`), so the host path is
//! `<dev>/<DEVNAME>`. A device the kernel has no entry for (`/dev/fuse` in some setups, a
//! node made by hand) keeps the container's path. An empty path, a `uevent` without
//! `DEVNAME` and a malformed `uevent` are errors, not guesses. The sysfs root is the
//! [`Sysfs`] handle's, never `/sys` itself.

use std::path::{Path, PathBuf};

use plugboard_sysfs::{DevNodeError, Sysfs};

use crate::kind::DeviceNode;

/// Why a host path could not be found.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// The request's container path is empty (Kata's "Empty path provided for device").
    #[error("empty container path for device {0}")]
    EmptyPath(String),
    /// The kernel knows the device but its `uevent` is unusable (malformed, no `DEVNAME`,
    /// a `DEVNAME` leaving `/dev`), or reading it failed.
    #[error("cannot resolve the host path of {node}")]
    Uevent {
        /// The device.
        node: DeviceNode,
        /// What `plugboard-sysfs` found.
        #[source]
        source: DevNodeError,
    },
}

/// The host path of `node`, seen by the container at `container_path`.
///
/// # Errors
/// [`HostPathError::EmptyPath`] for an empty `container_path`; [`HostPathError::Uevent`]
/// when the kernel has the device but its `uevent` does not name a node.
pub fn resolve(
    sysfs: &Sysfs,
    node: DeviceNode,
    container_path: &Path,
) -> Result<PathBuf, HostPathError> {
    if container_path.as_os_str().is_empty() {
        return Err(HostPathError::EmptyPath(node.to_string()));
    }
    match sysfs.resolve_devnode(node.node_type, node.number) {
        Ok(path) => Ok(path),
        // No sysfs entry, or one without a uevent: the container's path is the host's.
        Err(DevNodeError::NoDevice { .. } | DevNodeError::NoUevent { .. }) => {
            tracing::debug!(%node, path = %container_path.display(), "no uevent; using the container path");
            Ok(container_path.to_path_buf())
        }
        Err(source) => Err(HostPathError::Uevent { node, source }),
    }
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::DevKind;
    use plugboard_sysfs::fake::{FakeKernel, NodeSpec};

    use super::*;

    fn node(node_type: DevKind, major: u32, minor: u32) -> DeviceNode {
        DeviceNode::new(node_type, major, minor)
    }

    #[test]
    fn fixture_table() {
        let kernel = FakeKernel::builder()
            .node(NodeSpec::block("sda", 8, 0))
            .node(NodeSpec::block("mapper/vg-lv", 253, 1))
            .node(NodeSpec::char("net/tun", 10, 200))
            .node(NodeSpec::block("broken", 8, 16).no_uevent())
            .node(NodeSpec::block("weird", 8, 32).uevent("MAJOR=8\nnonkeyvaluedata\n"))
            .node(NodeSpec::block("nameless", 8, 48).uevent("MAJOR=8\nMINOR=48\n"))
            .node(NodeSpec::char("escape", 10, 1).uevent("DEVNAME=../etc/passwd\n"))
            .build()
            .unwrap();
        let sysfs = kernel.sysfs();
        let dev = kernel.dev_root();
        let c = Path::new("/dev/in-container");
        let ok = |n: DeviceNode| resolve(&sysfs, n, c).unwrap();
        let err = |n: DeviceNode| resolve(&sysfs, n, c).unwrap_err();

        assert_eq!(ok(node(DevKind::Block, 8, 0)), dev.join("sda"));
        assert_eq!(ok(node(DevKind::Block, 253, 1)), dev.join("mapper/vg-lv"));
        assert_eq!(ok(node(DevKind::Char, 10, 200)), dev.join("net/tun"));
        // The same numbers as a char device: no such device, so the container path.
        assert_eq!(ok(node(DevKind::Char, 8, 0)), c);
        // Unknown to the kernel (Kata's /dev/fuse case): the container path.
        assert_eq!(ok(node(DevKind::Char, 10, 229)), c);
        // A device directory without a uevent file: the container path, as Kata.
        assert_eq!(ok(node(DevKind::Block, 8, 16)), c);
        // A malformed uevent (Kata's "nonkeyvaluedata" case), no DEVNAME, or a DEVNAME
        // that leaves /dev: errors naming the device.
        let e = err(node(DevKind::Block, 8, 32));
        assert!(matches!(
            e,
            HostPathError::Uevent {
                source: DevNodeError::Malformed { .. },
                ..
            }
        ));
        assert_eq!(e.to_string(), "cannot resolve the host path of b 8:32");
        assert!(matches!(
            err(node(DevKind::Block, 8, 48)),
            HostPathError::Uevent {
                source: DevNodeError::NoDevName { .. },
                ..
            }
        ));
        assert!(matches!(
            err(node(DevKind::Char, 10, 1)),
            HostPathError::Uevent {
                source: DevNodeError::BadDevName { .. },
                ..
            }
        ));
    }

    #[test]
    fn empty_container_path_is_an_error() {
        let kernel = FakeKernel::builder()
            .node(NodeSpec::block("sda", 8, 0))
            .build()
            .unwrap();
        let e = resolve(&kernel.sysfs(), node(DevKind::Block, 8, 0), Path::new("")).unwrap_err();
        assert!(matches!(e, HostPathError::EmptyPath(_)));
        assert_eq!(e.to_string(), "empty container path for device b 8:0");
    }
}
