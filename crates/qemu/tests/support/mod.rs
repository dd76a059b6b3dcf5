//! What the bare-QEMU tests (`bare_qemu.rs`) and the lab-guest tests (`guest.rs`) share:
//! a device manager over a connected QEMU, and hot-plugged image-file disks.

use std::path::Path;

use plugboard_devices::{
    BlockDriver, BlockSpec, DeviceId, DeviceIdentity, DeviceKind, DeviceManager, DeviceSpec,
    ImageFormat, ManagerConfig, PlugMode,
};
use plugboard_qemu::{DeviceRole, QemuHypervisor, QemuId};

/// A device manager whose root ports are the whole of `hv`'s port pool.
pub fn manager_over(hv: QemuHypervisor) -> DeviceManager<QemuHypervisor> {
    let ports = u32::try_from(hv.port_pool().len()).unwrap();
    DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: ports,
            name_offset: 0,
        },
    )
}

/// Registers a hot-plugged disk with the manager and returns its id.
pub fn new_disk(
    m: &DeviceManager<QemuHypervisor>,
    path: &Path,
    driver: BlockDriver,
    format: ImageFormat,
    read_only: bool,
) -> DeviceId {
    m.new_device(disk_spec(path, driver, format, read_only))
        .unwrap()
        .id()
}

/// A hot-plugged disk backed by the image file at `path`.
pub fn disk_spec(
    path: &Path,
    driver: BlockDriver,
    format: ImageFormat,
    read_only: bool,
) -> DeviceSpec {
    let mut block = BlockSpec::new(path, driver);
    block.format = format;
    block.read_only = read_only;
    DeviceSpec {
        identity: DeviceIdentity::Path(path.to_owned()),
        mode: PlugMode::Hot,
        kind: DeviceKind::Block(block),
    }
}

/// The qdev id plugboard-qemu gives the device `id` plugged as `role`.
pub fn qemu_name(id: DeviceId, role: DeviceRole) -> String {
    QemuId::for_device(id, role).to_string()
}
