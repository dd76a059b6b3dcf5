//! VFIO: `vfio-pci` for a host PCI function or an mdev, in legacy or iommufd mode.
//!
//! The host side (unbinding from the host driver, binding to vfio-pci, checking the IOMMU
//! group is viable) is plugboard-hostdev's job and is done before QEMU sees the device.
//! Here we only tell QEMU which function to open and through which interface: the legacy
//! container/group (`host=`/`sysfsdev=` alone) or an `iommufd` object (QEMU ≥ 9.0), either
//! one this device owns (created before it, deleted after it) or a shared one.
//!
//! In iommufd mode a function can also be handed over by descriptor (`fd=`, the cdev opened
//! by us and passed with `getfd`), so QEMU itself opens nothing under `/dev/vfio` or
//! `/dev/iommu`: what an unprivileged QEMU needs. QEMU takes descriptors only in iommufd
//! mode; in legacy mode it opens the group itself.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::id::{BackendRole, QemuId};
use crate::plan::{BackendObject, Plan, on_root_port};

/// Which host function QEMU opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioHost {
    /// A PCI function by address, `DDDD:BB:SS.F` (`host=`).
    Pci(String),
    /// An mediated device by its sysfs path, `/sys/bus/mdev/devices/<uuid>` (`sysfsdev=`).
    Mdev(PathBuf),
}

/// Which VFIO interface QEMU uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioIommu {
    /// The legacy container and group (`/dev/vfio/<group>`).
    Legacy,
    /// An `iommufd` object created for this device as `<id>-iofd`, deleted with it.
    OwnIommufd,
    /// An `iommufd` object that already exists in the VM (shared by several devices).
    SharedIommufd(String),
}

/// A VFIO function to pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioPci {
    /// The host function.
    pub host: VfioHost,
    /// The interface.
    pub iommu: VfioIommu,
    /// The `getfd` name of the function's cdev, handed over before the plug (iommufd mode
    /// only): QEMU uses it instead of opening [`Self::host`].
    pub fd: Option<String>,
}

/// The optional iommufd object, then `vfio-pci` on a root port.
pub fn vfio_pci(id: QemuId, dev: &VfioPci, port: Option<&str>) -> Plan {
    let mut device = json!({"driver": "vfio-pci", "id": id.as_str()});
    let mut backends = Vec::new();
    if let Value::Object(map) = &mut device {
        match (&dev.fd, &dev.host) {
            (Some(name), _) => map.insert("fd".to_owned(), json!(name)),
            (None, VfioHost::Pci(bdf)) => map.insert("host".to_owned(), json!(bdf)),
            (None, VfioHost::Mdev(path)) => map.insert("sysfsdev".to_owned(), json!(path)),
        };
        let object = match &dev.iommu {
            VfioIommu::Legacy => None,
            VfioIommu::OwnIommufd => {
                let obj = id.backend_name(BackendRole::Iommufd);
                backends.push(BackendObject::Object {
                    id: obj.clone(),
                    args: json!({"qom-type": "iommufd", "id": obj}),
                });
                Some(obj)
            }
            VfioIommu::SharedIommufd(obj) => Some(obj.clone()),
        };
        if let Some(obj) = object {
            map.insert("iommufd".to_owned(), json!(obj));
        }
    }
    let mut plan = Plan::device_only(id, on_root_port(device, port));
    plan.backends = backends;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(host: VfioHost, iommu: VfioIommu) -> Plan {
        vfio_pci(
            "hostdev0".parse().unwrap(),
            &VfioPci {
                host,
                iommu,
                fd: None,
            },
            Some("hp3"),
        )
    }

    #[test]
    fn a_function_handed_over_by_descriptor_names_the_fd_not_the_host() {
        let p = vfio_pci(
            "hostdev0".parse().unwrap(),
            &VfioPci {
                host: VfioHost::Pci("0000:01:00.0".into()),
                iommu: VfioIommu::SharedIommufd("plugboard-iommufd".into()),
                fd: Some("hostdev0-fd".into()),
            },
            Some("hp3"),
        );
        assert_eq!(
            p.device,
            json!({"driver": "vfio-pci", "id": "hostdev0", "fd": "hostdev0-fd",
                   "iommufd": "plugboard-iommufd", "bus": "hp3", "addr": "0x0"})
        );
        assert!(p.backends.is_empty());
    }

    #[test]
    fn legacy_by_host_address() {
        let p = plan(VfioHost::Pci("0000:01:00.0".into()), VfioIommu::Legacy);
        assert_eq!(
            p.device,
            json!({"driver": "vfio-pci", "id": "hostdev0", "host": "0000:01:00.0", "bus": "hp3", "addr": "0x0"})
        );
        assert!(p.backends.is_empty());
    }

    #[test]
    fn mdev_by_sysfs_path_with_its_own_iommufd() {
        let path = PathBuf::from("/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        let p = plan(VfioHost::Mdev(path.clone()), VfioIommu::OwnIommufd);
        assert_eq!(p.device["sysfsdev"], json!(path));
        assert!(p.device.get("host").is_none());
        assert_eq!(p.device["iommufd"], "hostdev0-iofd");
        assert_eq!(
            p.backends,
            [BackendObject::Object {
                id: "hostdev0-iofd".into(),
                args: json!({"qom-type": "iommufd", "id": "hostdev0-iofd"})
            }]
        );
    }

    #[test]
    fn a_shared_iommufd_is_named_but_not_created() {
        let p = plan(
            VfioHost::Pci("0000:02:00.0".into()),
            VfioIommu::SharedIommufd("iommufd0".into()),
        );
        assert_eq!(p.device["iommufd"], "iommufd0");
        assert!(p.backends.is_empty());
    }
}
