//! A device as QEMU needs it: the backends to create first, then the guest device.
//!
//! Every device family (`block.rs`, `scsi.rs`, `nvdimm.rs`, `vhost_user.rs`, `vfio.rs`)
//! turns its description into a [`Plan`]. The same plan is then either executed over QMP
//! (`hotplug.rs`, undone by `removal.rs`) or rendered as command-line arguments
//! (`cmdline.rs`), so hotplug and coldplug cannot drift apart.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::id::QemuId;

/// One object a device needs besides itself, created before it and deleted after it.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendObject {
    /// A block graph node: `blockdev-add` / `blockdev-del`, `-blockdev`.
    BlockNode {
        /// The node name.
        node_name: String,
        /// The `blockdev-add` arguments (they include `node-name`).
        args: Value,
    },
    /// A Unix-socket client chardev: `chardev-add` / `chardev-remove`, `-chardev`.
    ///
    /// Never with `reconnect`: with it, a missing backend makes the next `device_add` block
    /// QEMU's whole monitor (checked on 10.0.2); without it `chardev-add` fails at once.
    Chardev {
        /// The chardev id.
        id: String,
        /// The backend's listening socket.
        path: PathBuf,
    },
    /// A network backend: `netdev_add` / `netdev_del`, `-netdev`.
    Netdev {
        /// The netdev id.
        id: String,
        /// The `netdev_add` arguments (they include `id` and `type`).
        args: Value,
    },
    /// A QOM object (memory backend, iommufd): `object-add` / `object-del`, `-object`.
    Object {
        /// The object id.
        id: String,
        /// The `object-add` arguments (they include `qom-type` and `id`).
        args: Value,
    },
}

impl BackendObject {
    /// The backend's name (node name or id).
    pub fn name(&self) -> &str {
        match self {
            Self::BlockNode { node_name, .. } => node_name,
            Self::Chardev { id, .. } | Self::Netdev { id, .. } | Self::Object { id, .. } => id,
        }
    }

    /// The QMP command and arguments that create it.
    pub fn add_command(&self) -> (&'static str, Value) {
        match self {
            Self::BlockNode { args, .. } => ("blockdev-add", args.clone()),
            Self::Chardev { id, path } => ("chardev-add", chardev_add_args(id, path)),
            Self::Netdev { args, .. } => ("netdev_add", args.clone()),
            Self::Object { args, .. } => ("object-add", args.clone()),
        }
    }

    /// The QMP command and arguments that delete it.
    pub fn delete_command(&self) -> (&'static str, Value) {
        match self {
            Self::BlockNode { node_name, .. } => {
                ("blockdev-del", json!({ "node-name": node_name }))
            }
            Self::Chardev { id, .. } => ("chardev-remove", json!({ "id": id })),
            Self::Netdev { id, .. } => ("netdev_del", json!({ "id": id })),
            Self::Object { id, .. } => ("object-del", json!({ "id": id })),
        }
    }
}

/// What must hold before QEMU is asked to add the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// A vhost-user backend must be listening on this socket.
    pub backend_socket: Option<PathBuf>,
    /// Guest RAM must be shared with other processes (vhost-user).
    pub shared_memory: bool,
}

/// Everything QEMU needs to add (and later remove) one guest device.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The device's qdev id.
    pub id: QemuId,
    /// Backends in creation order (deleted in reverse).
    pub backends: Vec<BackendObject>,
    /// The `device_add` arguments (`driver`, `id`, `bus`, …).
    pub device: Value,
    /// Whether QEMU can hot-unplug the device (nvdimm cannot).
    pub removable: bool,
    /// Checks to make before touching QEMU.
    pub requires: Requirements,
    /// The fd set the backends open (`/dev/fdset/<n>`): a file opened by whoever checked it
    /// and handed over before the plug ([`QemuHypervisor::add_fd`](crate::QemuHypervisor::add_fd)).
    /// The plan does not create it; its removal closes it (`remove-fd`) after the backends.
    pub fd_set: Option<u32>,
    /// Files the plug opens and hands QEMU by name (`getfd`) before the backends, for the
    /// device or its backends to take (`fd=<name>`); hotplug only, as a command line
    /// cannot name them. QEMU owns each one it takes; one left untaken is closed.
    pub passed_fds: Vec<PassedFd>,
    /// The VM's one shared `iommufd` object this plan's device uses, opened from the given
    /// `/dev/iommu` and created (by descriptor) by the first plan that needs it, never
    /// deleted: see [`VM_IOMMUFD`](crate::id::VM_IOMMUFD).
    pub vm_iommufd: Option<PathBuf>,
}

/// A file handed to QEMU by name before a plug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFd {
    /// The name the device or backend refers to it by (`getfd`'s `fdname`).
    pub name: String,
    /// What to open.
    pub source: FdSource,
}

/// Where a passed file comes from; opened read-write at plug time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdSource {
    /// The VFIO device cdev of the PCI function at `sysfs_path` (its `vfio-dev/vfioN`),
    /// under `dev_root` (`<dev_root>/vfio/devices/vfioN`).
    VfioCdev {
        /// The function's sysfs directory.
        sysfs_path: PathBuf,
        /// The `/dev` root.
        dev_root: PathBuf,
    },
}

impl Plan {
    /// A plan for a device with no backends.
    pub fn device_only(id: QemuId, device: Value) -> Self {
        Self {
            id,
            backends: Vec::new(),
            device,
            removable: true,
            requires: Requirements::default(),
            fd_set: None,
            passed_fds: Vec::new(),
            vm_iommufd: None,
        }
    }

    /// The qdev driver (`virtio-blk-pci`, …).
    pub fn driver(&self) -> &str {
        self.device
            .get("driver")
            .and_then(Value::as_str)
            .unwrap_or("device")
    }

    /// The root port (or other bus) the device goes on, if the plan names one.
    pub fn bus(&self) -> Option<&str> {
        self.device.get("bus").and_then(Value::as_str)
    }
}

/// The device arguments every PCIe device on a root port gets: the port as bus, slot 0.
/// Without a port (coldplug only) QEMU places the device on the root bus itself.
pub(crate) fn on_root_port(mut device: Value, port: Option<&str>) -> Value {
    if let (Some(port), Value::Object(map)) = (port, &mut device) {
        map.insert("bus".to_owned(), json!(port));
        map.insert("addr".to_owned(), json!("0x0"));
    }
    device
}

fn chardev_add_args(id: &str, path: &Path) -> Value {
    json!({
        "id": id,
        "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": path}},
            "server": false,
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chardevs_are_clients_without_reconnect() {
        let b = BackendObject::Chardev {
            id: "vu0-chr".into(),
            path: "/run/vu.sock".into(),
        };
        let (cmd, args) = b.add_command();
        assert_eq!(cmd, "chardev-add");
        assert_eq!(args["backend"]["data"]["server"], json!(false));
        assert_eq!(
            args["backend"]["data"]["addr"]["data"]["path"],
            json!("/run/vu.sock")
        );
        assert!(args["backend"]["data"].get("reconnect").is_none());
        assert!(args["backend"]["data"].get("reconnect-ms").is_none());
        assert_eq!(
            b.delete_command(),
            ("chardev-remove", json!({"id": "vu0-chr"}))
        );
    }

    #[test]
    fn delete_commands_name_the_backend() {
        let node = BackendObject::BlockNode {
            node_name: "d-fmt".into(),
            args: json!({}),
        };
        assert_eq!(
            node.delete_command(),
            ("blockdev-del", json!({"node-name": "d-fmt"}))
        );
        let net = BackendObject::Netdev {
            id: "n-net".into(),
            args: json!({}),
        };
        assert_eq!(net.delete_command(), ("netdev_del", json!({"id": "n-net"})));
        let obj = BackendObject::Object {
            id: "m-mem".into(),
            args: json!({}),
        };
        assert_eq!(obj.delete_command(), ("object-del", json!({"id": "m-mem"})));
        assert_eq!(obj.name(), "m-mem");
    }

    #[test]
    fn root_port_placement_sets_bus_and_slot_zero() {
        let d = on_root_port(json!({"driver": "virtio-blk-pci"}), Some("hp1"));
        assert_eq!(
            d,
            json!({"driver": "virtio-blk-pci", "bus": "hp1", "addr": "0x0"})
        );
        let d = on_root_port(json!({"driver": "virtio-blk-pci"}), None);
        assert_eq!(d, json!({"driver": "virtio-blk-pci"}));
    }
}
