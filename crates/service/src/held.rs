//! What a VM's devices hold on the host: the hostdev owner a VM's host devices are
//! registered under, and the host PCI functions a device passes through. Pure functions,
//! used by attach, detach, reconciliation and unregistration alike.

use plugboard_devices::{DeviceKind, DeviceSpec, DeviceState, HostFunction};
use plugboard_hostdev::Owner;
use plugboard_sysfs::PciAddress;

use crate::error::ServiceError;
use crate::host::OWNER_DRIVER;

/// The hostdev owner of a VM's devices.
pub(crate) fn owner_of(vm: &str) -> Result<Owner, ServiceError> {
    Owner::new(OWNER_DRIVER, vm).map_err(|e| ServiceError::BadRequest(format!("owner: {e}")))
}

/// The host PCI functions a device holds (VFIO devices), for release.
pub(crate) fn pci_functions(device: &DeviceState) -> Vec<PciAddress> {
    spec_pci_functions(&device.spec)
}

/// The host PCI functions a spec names (VFIO devices).
pub(crate) fn spec_pci_functions(spec: &DeviceSpec) -> Vec<PciAddress> {
    match &spec.kind {
        DeviceKind::Vfio(spec) => spec
            .functions
            .iter()
            .filter_map(|f| match f.host {
                HostFunction::Pci(a) => Some(a),
                HostFunction::Mdev(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
