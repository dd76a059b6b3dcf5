//! Which processes hold a device's VFIO nodes open.
//!
//! Unbinding vfio-pci from a device while a process holds it (its group node
//! `/dev/vfio/N`, its cdev `/dev/vfio/devices/vfioX`, or an iommufd it is bound to through
//! that cdev) blocks in the kernel until the process lets go: a release would hang. So
//! before giving a device back, release scans `<proc>/*/fd` for links to those nodes and
//! refuses, naming the processes, instead of starting an unbind that would block.
//!
//! The scan is a snapshot: a process that opens a node after it and before the unbind is
//! not seen (the window is the few system calls between the two). Processes whose `fd`
//! directory this process may not read (another user's, without `CAP_SYS_PTRACE`) are not
//! seen either; the daemon runs as root.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A process that holds a device node open.
///
/// JSON (stable): `{"pid": 4242, "comm": "qemu-system-x86", "node": "/dev/vfio/7"}`.
/// [`Display`](fmt::Display): "qemu-system-x86 (pid 4242) holds /dev/vfio/7".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The process id.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`; empty when unreadable).
    pub comm: String,
    /// The node it holds, as the kernel shows it in the fd link.
    pub node: PathBuf,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}) holds {}",
            self.comm,
            self.pid,
            self.node.display()
        )
    }
}

/// Every process under `proc_root` with an fd linked to one of `nodes`, one entry per
/// process and node, by pid. Unreadable entries (a process that exited mid-scan, another
/// user's) are skipped.
pub(crate) fn holders(proc_root: &Path, nodes: &[PathBuf]) -> Vec<Holder> {
    if nodes.is_empty() {
        return Vec::new();
    }
    // The fd links name the node as the kernel resolves it: compare resolved paths.
    let wanted: Vec<(PathBuf, &PathBuf)> = nodes
        .iter()
        .map(|n| (std::fs::canonicalize(n).unwrap_or_else(|_| n.clone()), n))
        .collect();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut held: Vec<&PathBuf> = Vec::new();
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some((_, node)) = wanted.iter().find(|(real, _)| *real == target)
                && !held.contains(node)
            {
                held.push(node);
            }
        }
        if held.is_empty() {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        for node in held {
            found.push(Holder {
                pid,
                comm: comm.clone(),
                node: node.clone(),
            });
        }
    }
    found.sort_by(|a, b| (a.pid, &a.node).cmp(&(b.pid, &b.node)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_node_names_this_process_and_a_closed_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("7");
        std::fs::write(&node, "").unwrap();
        let other = dir.path().join("8");
        std::fs::write(&other, "").unwrap();
        let proc_root = Path::new("/proc");
        let nodes = [node.clone(), other.clone()];
        assert!(holders(proc_root, &nodes).is_empty());
        let file = std::fs::File::open(&node).unwrap();
        let found = holders(proc_root, &nodes);
        let me = std::process::id();
        let mine: Vec<&Holder> = found.iter().filter(|h| h.pid == me).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert_eq!(mine[0].node, node);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(mine[0].comm, comm.trim_end());
        assert_eq!(
            mine[0].to_string(),
            format!("{} (pid {me}) holds {}", mine[0].comm, node.display())
        );
        let json = serde_json::to_value(mine[0]).unwrap();
        assert_eq!(json["pid"], me);
        assert_eq!(serde_json::from_value::<Holder>(json).unwrap(), *mine[0]);
        drop(file);
        assert!(holders(proc_root, &nodes).iter().all(|h| h.pid != me));
    }
}
