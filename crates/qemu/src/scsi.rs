//! SCSI disks: `scsi-hd` on a virtio-scsi controller, at the `id:lun` the manager chose.
//!
//! The controller takes one PCI slot (a root port, or coldplugged); its disks take none,
//! which makes SCSI the cheap path for many volumes. QEMU names the controller's bus
//! `<controller id>.0`. Unplugging a `scsi-hd` needs no guest cooperation: QEMU sends
//! `DEVICE_DELETED` at once.

use plugboard_devices::GuestScsiAddress;
use serde_json::json;

use crate::block::Disk;
use crate::id::QemuId;
use crate::plan::{Plan, on_root_port};

/// A virtio-scsi-pci controller on a root port.
pub fn controller(id: QemuId, port: &str) -> Plan {
    let device = json!({"driver": "virtio-scsi-pci", "id": id.as_str()});
    Plan::device_only(id, on_root_port(device, Some(port)))
}

/// A `scsi-hd` disk at `address` (target id as QEMU's `scsi-id`, and LUN) on the
/// controller `controller`.
pub fn scsi_hd(id: QemuId, disk: &Disk, controller: &str, address: GuestScsiAddress) -> Plan {
    let device = json!({
        "driver": "scsi-hd",
        "id": id.as_str(),
        "bus": format!("{controller}.0"),
        "channel": 0,
        "scsi-id": address.id(),
        "lun": address.lun(),
    });
    let device = disk.attach_to(&id, device);
    let mut plan = Plan::device_only(id, device);
    plan.backends = disk.nodes(&plan.id);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{DiskFormat, DiskSource};

    #[test]
    fn scsi_hd_goes_on_the_controllers_bus_at_id_and_lun() {
        let disk = Disk::new(DiskSource::File("/v/s.raw".into()), DiskFormat::Raw);
        let plan = scsi_hd(
            "sd1".parse().unwrap(),
            &disk,
            "scsi0",
            GuestScsiAddress::from_index(3).unwrap(),
        );
        assert_eq!(
            plan.device,
            json!({"driver": "scsi-hd", "id": "sd1", "bus": "scsi0.0", "channel": 0,
                   "scsi-id": 0, "lun": 3, "drive": "sd1-fmt"})
        );
        assert_eq!(plan.backends.len(), 2);
        assert_eq!(plan.bus(), Some("scsi0.0"));
    }

    #[test]
    fn the_controller_sits_on_a_root_port() {
        let plan = controller("scsi0".parse().unwrap(), "hp3");
        assert_eq!(
            plan.device,
            json!({"driver": "virtio-scsi-pci", "id": "scsi0", "bus": "hp3", "addr": "0x0"})
        );
        assert!(plan.backends.is_empty());
    }
}
