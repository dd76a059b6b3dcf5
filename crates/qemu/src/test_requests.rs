//! Requests the unit tests of several modules plug, built in one place.

use plugboard_devices::{
    DeviceId, HostFunction, PciAddress, Plug, PlugMode, PlugRequest, RootPort, VfioBackend,
    VfioFunction, VfioFunctionPlug, VfioPlug,
};

/// Device `device`: functions 0 and 1 of `0000:65:00`, passed through with `backend`, each
/// on the root port of its function number.
pub(crate) fn vfio_pair(device: u64, backend: VfioBackend) -> PlugRequest {
    let id = DeviceId::from_raw(device);
    let function = |f: u8| VfioFunctionPlug {
        name_id: id.name_id(&format!("vfio-{f}")),
        function: VfioFunction {
            host: HostFunction::Pci(
                format!("0000:65:00.{f}")
                    .parse::<PciAddress>()
                    .unwrap_or_else(|e| panic!("a fixed test address: {e}")),
            ),
            sysfs_path: format!("/sys/bus/pci/devices/0000:65:00.{f}").into(),
            class: None,
            is_pcie: true,
            large_bar: false,
        },
        port: Some(RootPort::new(u32::from(f))),
    };
    PlugRequest {
        device: id,
        mode: PlugMode::Hot,
        plug: Plug::Vfio(VfioPlug {
            backend,
            functions: vec![function(0), function(1)],
        }),
    }
}
