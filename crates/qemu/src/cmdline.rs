//! Coldplug: the same plans rendered as QEMU command-line arguments for a VM not yet started.
//!
//! `-blockdev`, `-netdev`, `-object` and `-device` take the very JSON objects QMP takes
//! (checked on 10.0.2), so those render one-to-one and no value needs comma escaping.
//! `-chardev` has no JSON form; it renders as `socket,id=…,path=…` with commas in the path
//! doubled, QEMU's escape. Also here: the topology and memory arguments that hotplug needs
//! at boot (empty root ports, shared RAM).

use crate::plan::{BackendObject, Plan};

/// The arguments that create the plan's backends and device at boot, in order.
pub fn plan_args(plan: &Plan) -> Vec<String> {
    let mut args = Vec::with_capacity(2 * plan.backends.len() + 2);
    for backend in &plan.backends {
        match backend {
            BackendObject::BlockNode { args: json, .. } => {
                push(&mut args, "-blockdev", json.to_string());
            }
            BackendObject::Chardev { id, path } => {
                let path = path.to_string_lossy().replace(',', ",,");
                push(&mut args, "-chardev", format!("socket,id={id},path={path}"));
            }
            BackendObject::Netdev { args: json, .. } => {
                push(&mut args, "-netdev", json.to_string());
            }
            BackendObject::Object { args: json, .. } => {
                push(&mut args, "-object", json.to_string());
            }
        }
    }
    push(&mut args, "-device", plan.device.to_string());
    args
}

/// Empty `pcie-root-port`s for hotplug, one per id, on `pcie.0` with chassis numbers from
/// `first_chassis` (each port needs a unique chassis/slot pair).
pub fn root_port_args(ids: &[&str], first_chassis: u8) -> Vec<String> {
    let mut args = Vec::with_capacity(2 * ids.len());
    for (chassis, id) in (first_chassis..=u8::MAX).zip(ids) {
        push(
            &mut args,
            "-device",
            format!("pcie-root-port,id={id},bus=pcie.0,chassis={chassis},slot={chassis}"),
        );
    }
    args
}

/// Guest RAM as one shared memfd (what vhost-user needs): `-m`, the memory backend `mem`,
/// and `-machine memory-backend=mem` (QEMU merges repeated `-machine` options).
pub fn shared_memory_args(mib: u64) -> Vec<String> {
    vec![
        "-m".into(),
        format!("{mib}M"),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        "-machine".into(),
        "memory-backend=mem".into(),
    ]
}

fn push(args: &mut Vec<String>, flag: &str, value: String) {
    args.push(flag.to_owned());
    args.push(value);
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::block::{Disk, DiskFormat, DiskSource, virtio_blk};
    use crate::vhost_user::{VhostUser, VhostUserKind, vhost_user};

    #[test]
    fn a_disk_renders_as_two_blockdevs_and_a_device_of_the_same_json() {
        let disk = Disk::new(DiskSource::File("/v/a,b.qcow2".into()), DiskFormat::Qcow2);
        let plan = virtio_blk("vb0".parse().unwrap(), &disk, Some("hp1"), None);
        let args = plan_args(&plan);
        assert_eq!(
            args.iter().step_by(2).collect::<Vec<_>>(),
            ["-blockdev", "-blockdev", "-device"]
        );
        let BackendObject::BlockNode { args: file, .. } = &plan.backends[0] else {
            panic!()
        };
        assert_eq!(serde_json::from_str::<Value>(&args[1]).unwrap(), *file);
        assert_eq!(
            serde_json::from_str::<Value>(&args[5]).unwrap(),
            plan.device
        );
    }

    #[test]
    fn chardevs_render_as_keyval_with_commas_doubled() {
        let dev = VhostUser {
            socket: "/run/a,b.sock".into(),
            kind: VhostUserKind::Net {
                mac: "52:54:00:00:00:01".into(),
                queues: 1,
            },
        };
        let args = plan_args(&vhost_user("n0".parse().unwrap(), &dev, Some("hp1")));
        assert_eq!(args[0], "-chardev");
        assert_eq!(args[1], "socket,id=n0-chr,path=/run/a,,b.sock");
        assert_eq!(args[2], "-netdev");
        assert_eq!(
            serde_json::from_str::<Value>(&args[3]).unwrap(),
            json!({"type": "vhost-user", "id": "n0-net", "chardev": "n0-chr", "queues": 1})
        );
        assert_eq!(args[4], "-device");
    }

    #[test]
    fn root_ports_get_unique_chassis_numbers() {
        let args = root_port_args(&["hp1", "hp2"], 10);
        assert_eq!(
            args,
            [
                "-device",
                "pcie-root-port,id=hp1,bus=pcie.0,chassis=10,slot=10",
                "-device",
                "pcie-root-port,id=hp2,bus=pcie.0,chassis=11,slot=11"
            ]
        );
        assert_eq!(
            shared_memory_args(256)[3],
            "memory-backend-memfd,id=mem,size=256M,share=on"
        );
    }
}
