//! vhost-user devices: blk, scsi and fs through a socket chardev; net through a netdev.
//!
//! QEMU is the client of a backend process that already listens on a Unix socket. Two rules
//! QEMU does not enforce, so the plans carry them as [`Requirements`] checked before QEMU
//! is touched (`hotplug.rs`): the backend must be listening (QEMU's monitor can freeze
//! otherwise), and the VM's RAM must be shared memory (the backend maps guest RAM through
//! the fds QEMU sends; QEMU accepts the device without it and the guest breaks later).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::id::{BackendRole, QemuId};
use crate::plan::{BackendObject, Plan, Requirements, on_root_port};

/// Which vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostUserKind {
    /// vhost-user-blk-pci.
    Blk {
        /// Request queues (`num-queues`); `None` keeps QEMU's default.
        queues: Option<u16>,
    },
    /// vhost-user-scsi-pci.
    Scsi,
    /// vhost-user-fs-pci (virtio-fs).
    Fs {
        /// The mount tag the guest uses.
        tag: String,
        /// Virtqueue size (QEMU's default 128 is small for file systems; Kata uses 1024).
        queue_size: u16,
    },
    /// virtio-net-pci over a vhost-user netdev.
    Net {
        /// The NIC's MAC address (`52:54:00:12:34:56`).
        mac: String,
        /// Queue pairs (`queues`); more than one turns on multiqueue.
        queues: u16,
    },
}

/// A vhost-user device: its backend's socket and what the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUser {
    /// The backend's listening socket.
    pub socket: PathBuf,
    /// The device.
    pub kind: VhostUserKind,
}

/// The chardev (and for net the netdev), then the device on a root port.
pub fn vhost_user(id: QemuId, dev: &VhostUser, port: Option<&str>) -> Plan {
    let chr = id.backend_name(BackendRole::Chardev);
    let mut backends = vec![BackendObject::Chardev {
        id: chr.clone(),
        path: dev.socket.clone(),
    }];
    let device = match &dev.kind {
        VhostUserKind::Blk { queues } => {
            let mut d = json!({"driver": "vhost-user-blk-pci", "id": id.as_str(), "chardev": chr});
            if let (Some(q), Value::Object(map)) = (queues, &mut d) {
                map.insert("num-queues".to_owned(), json!(q));
            }
            d
        }
        VhostUserKind::Scsi => {
            json!({"driver": "vhost-user-scsi-pci", "id": id.as_str(), "chardev": chr})
        }
        VhostUserKind::Fs { tag, queue_size } => json!({
            "driver": "vhost-user-fs-pci", "id": id.as_str(), "chardev": chr,
            "tag": tag, "queue-size": queue_size,
        }),
        VhostUserKind::Net { mac, queues } => {
            let net = id.backend_name(BackendRole::Netdev);
            backends.push(BackendObject::Netdev {
                id: net.clone(),
                args: json!({"type": "vhost-user", "id": net, "chardev": chr, "queues": queues}),
            });
            let mut d =
                json!({"driver": "virtio-net-pci", "id": id.as_str(), "netdev": net, "mac": mac});
            if *queues > 1
                && let Value::Object(map) = &mut d
            {
                map.insert("mq".to_owned(), json!(true));
                map.insert("vectors".to_owned(), json!(2 * u32::from(*queues) + 2));
            }
            d
        }
    };
    let mut plan = Plan::device_only(id, on_root_port(device, port));
    plan.backends = backends;
    plan.requires = Requirements {
        backend_socket: Some(dev.socket.clone()),
        shared_memory: true,
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: VhostUserKind) -> Plan {
        let dev = VhostUser {
            socket: "/run/vu/be.sock".into(),
            kind,
        };
        vhost_user("vu0".parse().unwrap(), &dev, Some("hp2"))
    }

    #[test]
    fn blk_scsi_and_fs_use_one_socket_chardev() {
        let p = plan(VhostUserKind::Blk { queues: Some(2) });
        assert_eq!(p.backends.len(), 1);
        assert_eq!(p.backends[0].name(), "vu0-chr");
        assert_eq!(
            p.device,
            json!({"driver": "vhost-user-blk-pci", "id": "vu0", "chardev": "vu0-chr",
                   "num-queues": 2, "bus": "hp2", "addr": "0x0"})
        );
        assert_eq!(
            p.requires.backend_socket.as_deref(),
            Some(std::path::Path::new("/run/vu/be.sock"))
        );
        assert!(p.requires.shared_memory);
        assert_eq!(plan(VhostUserKind::Scsi).driver(), "vhost-user-scsi-pci");
        let fs = plan(VhostUserKind::Fs {
            tag: "share".into(),
            queue_size: 1024,
        });
        assert_eq!(fs.device["tag"], "share");
        assert_eq!(fs.device["queue-size"], 1024);
    }

    #[test]
    fn net_adds_a_vhost_user_netdev_and_the_mac() {
        let p = plan(VhostUserKind::Net {
            mac: "52:54:00:12:34:56".into(),
            queues: 2,
        });
        assert_eq!(p.backends.len(), 2);
        let BackendObject::Netdev { id, args } = &p.backends[1] else {
            panic!()
        };
        assert_eq!(id, "vu0-net");
        assert_eq!(
            *args,
            json!({"type": "vhost-user", "id": "vu0-net", "chardev": "vu0-chr", "queues": 2})
        );
        assert_eq!(p.device["driver"], "virtio-net-pci");
        assert_eq!(p.device["mac"], "52:54:00:12:34:56");
        assert_eq!(p.device["netdev"], "vu0-net");
        assert_eq!(p.device["mq"], true);
        assert_eq!(p.device["vectors"], 6);
        let single = plan(VhostUserKind::Net {
            mac: "52:54:00:12:34:57".into(),
            queues: 1,
        });
        assert!(single.device.get("mq").is_none());
    }
}
