//! Bringing a stored VM back: reconnect to its hypervisor, reconcile its saved devices
//! with what the VM really holds (`reconcile.rs`), load the repaired state into a fresh
//! manager, and give back the host devices of devices that reconciliation dropped. Used at
//! the service's start and by `reconnect`.

use plugboard_devices::{DeviceManager, SavedState};
use plugboard_hostdev::HostdevManager;

use crate::backend::Backend;
use crate::error::ServiceError;
use crate::held::owner_of;
use crate::reconcile::{Repair, clean_up_failed_plugs, reconcile};
use crate::service::ServiceConfig;
use crate::store::{Store, StoredVm};
use crate::vm::{Link, Vm, VmRecord};

/// Reconnects one stored VM and reconciles its devices; saves the repaired state.
pub(crate) fn restore(
    stored: StoredVm,
    store: &Store,
    config: &ServiceConfig,
) -> (Vm, Vec<Repair>) {
    let StoredVm { record, devices } = stored;
    let name = record.name.clone();
    let saved = match devices.as_deref().map(SavedState::from_json).transpose() {
        Ok(saved) => saved,
        Err(e) => {
            tracing::error!(vm = name, error = %e, "saved device state does not load; VM left disconnected");
            let reason = format!("saved device state does not load: {e}");
            return (disconnected(record, None, reason), Vec::new());
        }
    };
    let backend = match Backend::connect(&record.endpoint, &record.root_ports, config) {
        Ok(b) => b,
        Err(e) => {
            let reason = ServiceError::Connect {
                vm: name.clone(),
                socket: record.endpoint.socket(),
                source: Box::new(e),
            }
            .chain();
            tracing::warn!(
                vm = name,
                reason,
                "VM's hypervisor not reachable; left disconnected"
            );
            return (disconnected(record, saved, reason), Vec::new());
        }
    };
    let config = record.manager_config();
    let Some(saved) = saved else {
        return (
            Vm::new(record, Link::Connected(DeviceManager::new(backend, config))),
            Vec::new(),
        );
    };
    let (repaired, repairs) = match reconcile(&name, &backend, saved.clone()) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("cannot ask the hypervisor what it holds: {e}");
            tracing::warn!(vm = name, reason, "VM left disconnected");
            return (disconnected(record, Some(saved), reason), Vec::new());
        }
    };
    match DeviceManager::load(backend, repaired) {
        Ok(manager) => {
            let mut repairs = repairs;
            repairs.extend(clean_up_failed_plugs(&name, &manager));
            if !repairs.is_empty() {
                let json = manager.save().to_json();
                match json.map(|j| store.save_devices(&name, &j)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(vm = name, error = %e.chain(), "cannot save the repaired state");
                    }
                    Err(e) => {
                        tracing::error!(vm = name, error = %e, "cannot encode the repaired state");
                    }
                }
            }
            tracing::info!(vm = name, devices = manager.len(), "VM reconnected");
            (Vm::new(record, Link::Connected(manager)), repairs)
        }
        Err(e) => {
            let reason = format!("saved device state does not load: {e}");
            tracing::error!(vm = name, reason, "VM left disconnected");
            (disconnected(record, Some(saved), reason), repairs)
        }
    }
}

/// A VM left disconnected, keeping what was saved for a later reconnect.
fn disconnected(record: VmRecord, saved: Option<SavedState>, reason: String) -> Vm {
    Vm::new(record, Link::Disconnected { saved, reason })
}

/// Gives back the host PCI functions of devices that reconciliation dropped.
pub(crate) fn release_forgotten(hostdev: &mut HostdevManager, repairs: &[Repair]) {
    for repair in repairs {
        let (Repair::Forgotten { vm, host_pci, .. } | Repair::CleanedUp { vm, host_pci, .. }) =
            repair
        else {
            continue;
        };
        if host_pci.is_empty() {
            continue;
        }
        let Ok(owner) = owner_of(vm) else {
            continue;
        };
        let specs: Vec<_> = host_pci
            .iter()
            .map(|a| plugboard_hostdev::HostDevice::Pci(*a))
            .collect();
        match hostdev.release(&owner, &specs) {
            Ok(results) => {
                for r in results {
                    tracing::warn!(
                        vm,
                        device = r.device,
                        result = %r.result,
                        "host device of a dropped device released"
                    );
                }
            }
            Err(e) => {
                tracing::error!(vm, error = %e, "cannot release the host devices of a dropped device");
            }
        }
    }
}
