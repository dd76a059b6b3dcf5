//! The VM operations of the service: register, unregister, list, and a VM's devices
//! (list, attach, detach). Every change is saved to the database before it is answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use plugboard_devices::{
    AttachError, DeviceError, DeviceId, DeviceIdentity, DeviceKind, DeviceSpec, DeviceState,
    PassedFd, Plug, PlugRequest, Released, Removed, SavedState,
};
use serde::{Deserialize, Serialize};

use crate::attach::{AttachRequest, CheckedSpec};
use crate::auth::Caller;
use crate::backend::{Backend, Endpoint};
use crate::error::ServiceError;
use crate::held::{pci_functions, spec_pci_functions};
use crate::reconcile::{Repair, clean_up_failed_plugs};
use crate::restore::{release_forgotten, restore};
use crate::service::Service;
use crate::store::StoredVm;
use crate::vm::{Link, RegisterVm, Vm, VmInfo, VmRecord, validate_name};

/// Every registered VM (`GET /v1/vms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    /// The VMs, by name.
    pub vms: Vec<VmInfo>,
}

/// A VM's devices (`GET /v1/vms/{name}/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The devices, by id.
    pub devices: Vec<DeviceState>,
}

/// What a reconnect did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconnected {
    /// The VM, connected.
    pub vm: VmInfo,
    /// What reconciliation repaired.
    pub repairs: Vec<Repair>,
}

/// What an attach did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// True when the device was plugged now; false when it was attached already and only
    /// gained an attachment.
    pub plugged: bool,
    /// The device as it is now.
    pub device: DeviceState,
}

/// What a detach did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// The device.
    pub id: DeviceId,
    /// True when the device left the VM now; false when other attachments remain.
    pub unplugged: bool,
}

impl Service {
    /// Registers a VM owned by `caller` and connects to its hypervisor.
    ///
    /// # Errors
    /// A bad name, a name in use, a QMP socket that is not the caller's, a hypervisor that
    /// cannot be reached.
    pub fn register_vm(&self, caller: Caller, request: RegisterVm) -> Result<VmInfo, ServiceError> {
        validate_name(&request.name)?;
        let name = request.name;
        match &request.endpoint {
            Endpoint::Qemu { qmp_socket } => {
                if !qmp_socket.is_absolute() {
                    return Err(ServiceError::BadRequest(format!(
                        "the QMP socket {} must be an absolute path",
                        qmp_socket.display()
                    )));
                }
                caller.may_use_file(qmp_socket, &format!("register VM {name:?} with"))?;
            }
            #[cfg(any(test, feature = "test-util"))]
            Endpoint::Memory => {}
        }
        check_free(&self.vms_read(), &name, &request.endpoint)?;
        let backend = Backend::connect(&request.endpoint, &[], &self.config).map_err(|source| {
            ServiceError::Connect {
                vm: name.clone(),
                socket: request.endpoint.socket(),
                source: Box::new(source),
            }
        })?;
        let record = VmRecord {
            name: name.clone(),
            owner_uid: caller.uid(),
            endpoint: request.endpoint,
            root_ports: backend.port_pool(),
            name_offset: request.name_offset,
        };
        let manager = plugboard_devices::DeviceManager::new(backend, record.manager_config());
        let vm = Vm::new(record.clone(), Link::Connected(manager));
        // Checked again under the write lock: another registration of the same name or
        // endpoint may have finished while this one connected.
        let mut vms = self.vms_write();
        check_free(&vms, &name, &record.endpoint)?;
        self.store().insert(&record)?;
        let info = vm.info();
        vms.insert(name.clone(), Arc::new(vm));
        drop(vms);
        tracing::info!(vm = name, owner = caller.uid(), ports = ?record.root_ports, "VM registered; unregister it to forget it");
        Ok(info)
    }

    /// Forgets a VM that has no devices, or whose hypervisor is gone (its saved devices
    /// are dropped and the host devices it held are released).
    ///
    /// # Errors
    /// Unknown VM, not the owner or root, devices still there on a connected VM.
    pub fn unregister_vm(&self, caller: Caller, name: &str) -> Result<(), ServiceError> {
        let vm = self.vm(name)?;
        caller.may_change_vm(name, vm.record.owner_uid, "unregister")?;
        let _ops = vm.lock_ops();
        let devices = vm.devices();
        if !devices.is_empty() {
            if matches!(vm.link, Link::Connected(_)) {
                return Err(ServiceError::VmHasDevices {
                    vm: name.to_owned(),
                    devices: devices.len(),
                });
            }
            tracing::warn!(
                vm = name,
                devices = devices.len(),
                "unregistering a disconnected VM; its saved devices are dropped"
            );
            let functions: Vec<_> = devices.iter().flat_map(pci_functions).collect();
            self.release_passthrough(name, &functions);
        }
        let mut vms = self.vms_write();
        self.store().delete(name)?;
        vms.remove(name);
        tracing::info!(vm = name, "VM unregistered");
        Ok(())
    }

    /// Connects a VM whose hypervisor was not reachable (it came back, or was restarted
    /// at the same socket), reconciling its saved devices as at start.
    ///
    /// # Errors
    /// Unknown VM, not the owner or root, a VM that is connected already
    /// ([`ServiceError::BadRequest`]), a hypervisor still not reachable.
    pub fn reconnect_vm(&self, caller: Caller, name: &str) -> Result<Reconnected, ServiceError> {
        let old = self.vm(name)?;
        caller.may_change_vm(name, old.record.owner_uid, "reconnect")?;
        let _ops = old.lock_ops();
        let saved = match &old.link {
            Link::Connected(_) => {
                return Err(ServiceError::Conflict(format!(
                    "VM {name:?} is connected already"
                )));
            }
            Link::Disconnected { saved, .. } => saved.clone(),
        };
        let devices = saved
            .as_ref()
            .map(|s| s.to_json())
            .transpose()
            .map_err(|source| ServiceError::Persist {
                vm: name.to_owned(),
                source,
            })?;
        let stored = StoredVm {
            record: old.record.clone(),
            devices,
        };
        let (vm, repairs) = restore(stored, &self.store(), &self.config);
        match self.hostdev() {
            Ok(mut hostdev) => release_forgotten(&mut hostdev, &repairs),
            Err(e) => {
                tracing::error!(vm = name, error = %e.chain(), "cannot release the host devices of dropped devices");
            }
        }
        if let Link::Disconnected { reason, .. } = &vm.link {
            return Err(ServiceError::NotConnected {
                vm: name.to_owned(),
                reason: reason.clone(),
            });
        }
        let info = vm.info();
        self.vms_write().insert(name.to_owned(), Arc::new(vm));
        tracing::info!(
            vm = name,
            repairs = repairs.len(),
            "VM reconnected on request"
        );
        Ok(Reconnected { vm: info, repairs })
    }

    /// Every VM.
    pub fn vms(&self) -> VmList {
        VmList {
            vms: self.vms_read().values().map(|vm| vm.info()).collect(),
        }
    }

    /// One VM.
    ///
    /// # Errors
    /// Unknown VM.
    pub fn vm_info(&self, name: &str) -> Result<VmInfo, ServiceError> {
        Ok(self.vm(name)?.info())
    }

    /// A VM's devices.
    ///
    /// # Errors
    /// Unknown VM.
    pub fn devices(&self, name: &str) -> Result<DeviceList, ServiceError> {
        Ok(DeviceList {
            devices: self.vm(name)?.devices(),
        })
    }

    /// Attaches a device to a VM (a second attach of the same device only counts), and
    /// saves the VM's state.
    ///
    /// # Errors
    /// Unknown VM, not allowed, a bad request, the manager or hypervisor refusing; the VM
    /// and the books are then as before.
    pub fn attach(
        &self,
        caller: Caller,
        name: &str,
        request: &AttachRequest,
    ) -> Result<Attached, ServiceError> {
        let vm = self.vm(name)?;
        caller.may_change_vm(name, vm.record.owner_uid, "attach a device to")?;
        let _ops = vm.lock_ops();
        let manager = vm.manager()?;
        self.retry_failed_plugs(&vm);
        let dev = |source| ServiceError::Device {
            vm: name.to_owned(),
            source: Box::new(source),
        };
        let (spec, passthrough) = match request {
            AttachRequest::Pci {
                address,
                whole_group,
            } => {
                if manager
                    .devices()
                    .iter()
                    .any(|d| pci_functions(d).contains(address))
                {
                    return Err(ServiceError::Conflict(format!(
                        "PCI device {address} is already passed through to VM {name:?}"
                    )));
                }
                // One IOMMU group is one device: another function of a group this VM
                // holds is refused before anything is prepared (bound, registered).
                if let Some(group) = self.iommu_group_of(*address)
                    && let Some(held) = manager
                        .find(&DeviceIdentity::IommuGroup(group))
                        .and_then(|id| manager.device(id))
                {
                    let functions: Vec<String> = pci_functions(&held)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    return Err(ServiceError::Conflict(format!(
                        "PCI device {address} is in IOMMU group {group}, which VM {name:?} \
                         holds already as device {} ({}); a group is one device: detach it \
                         and attach the group again with whole_group",
                        held.id,
                        functions.join(" ")
                    )));
                }
                // Only root takes a device from its host driver (see `auth`); others
                // pass through what root has already detached.
                if !caller.is_root() {
                    self.refuse_if_on_host_driver(caller, *address)?;
                }
                let spec =
                    self.prepare_passthrough(name, *address, *whole_group, caller.is_root())?;
                let functions = spec_pci_functions(&spec);
                (spec, functions)
            }
            other => {
                let checked = other.to_spec(caller, name, self.host.sysfs())?;
                (pass_file(manager.hypervisor(), name, checked)?, Vec::new())
            }
        };
        let passed = passed_fd_set(&spec);
        // One transaction: create or reference, count, plug and save; the manager undoes all
        // of it when a step fails, the save included.
        let saved = manager.attach_new(spec, |state: &SavedState| {
            let json = state.to_json().map_err(|source| ServiceError::Persist {
                vm: vm.record.name.clone(),
                source,
            })?;
            self.store().save_devices(&vm.record.name, &json)
        });
        // The fd set this call handed over stays only if the device plugged now uses it; a
        // device attached already keeps the file it was plugged with, and a failed attach
        // took nothing.
        if let Some(fdset) = passed {
            let plugged = match &saved {
                Ok(attached) => Some(attached.state.clone()),
                Err(
                    AttachError::PersistFailedUndoFailed { id, .. }
                    | AttachError::Device(DeviceError::PlugIncomplete { id, .. }),
                ) => manager.device(*id),
                Err(_) => None,
            };
            // A failed plug the VM may still hold part of keeps its set until its cleanup.
            let taken = plugged
                .as_ref()
                .and_then(|d| {
                    d.plugged
                        .as_ref()
                        .or(d.needs_cleanup.as_ref().map(|l| &l.request))
                })
                .and_then(plugged_fd_set)
                == Some(fdset);
            if !taken && let Err(e) = manager.hypervisor().remove_fd(fdset) {
                tracing::warn!(vm = name, fdset, error = %e, "cannot close an fd set no device took; QEMU keeps the file open until it exits");
            }
        }
        let attached = match saved {
            Ok(attached) => attached,
            Err(err) => {
                // A plug the VM may still hold part of is in the books, needing cleanup:
                // saved as such, its host devices kept (reconciliation cleans it up).
                if matches!(err, AttachError::Device(DeviceError::PlugIncomplete { .. }))
                    && let Err(e) = self.save(&vm)
                {
                    tracing::error!(vm = name, error = %e.chain(), "cannot save a device that needs cleanup");
                }
                // Host devices this call prepared that no device of the VM holds go back.
                if err.rolled_back() {
                    let held: Vec<_> = manager.devices().iter().flat_map(pci_functions).collect();
                    let unheld: Vec<_> = passthrough
                        .iter()
                        .filter(|a| !held.contains(a))
                        .copied()
                        .collect();
                    self.release_passthrough(name, &unheld);
                }
                return Err(match err {
                    AttachError::Device(e) => dev(e),
                    AttachError::PersistFailed { persist, .. } => persist,
                    AttachError::PersistFailedUndoFailed { id, persist, undo } => {
                        ServiceError::AttachUndoFailed {
                            vm: name.to_owned(),
                            id,
                            persist: persist.chain(),
                            undo: Box::new(undo),
                        }
                    }
                });
            }
        };
        let device = attached.state;
        tracing::info!(vm = name, device = %device.id, identity = %device.spec.identity, "device attached; detach it to undo");
        Ok(Attached {
            plugged: attached.attached == plugboard_devices::Acquired::First,
            device,
        })
    }

    /// Detaches a device (the last detach unplugs it and drops it), and saves the VM's
    /// state.
    ///
    /// # Errors
    /// Unknown VM or device, not allowed, the hypervisor refusing (the device stays).
    pub fn detach(
        &self,
        caller: Caller,
        name: &str,
        id: DeviceId,
    ) -> Result<Detached, ServiceError> {
        let vm = self.vm(name)?;
        caller.may_change_vm(name, vm.record.owner_uid, "detach a device from")?;
        let _ops = vm.lock_ops();
        let manager = vm.manager()?;
        self.retry_failed_plugs(&vm);
        let dev = |source| ServiceError::Device {
            vm: name.to_owned(),
            source: Box::new(source),
        };
        let Some(device) = manager.device(id) else {
            return Err(ServiceError::NoSuchDevice {
                vm: name.to_owned(),
                id,
            });
        };
        let functions = pci_functions(&device);
        let released = manager.detach(id).map_err(dev)?;
        let removed = manager.remove_device(id);
        let saved = self.save(&vm);
        if matches!(removed, Ok(Removed::Gone)) {
            self.release_passthrough(name, &functions);
        }
        removed.map_err(dev)?;
        saved?;
        tracing::info!(vm = name, device = %id, "device detached");
        Ok(Detached {
            id,
            unplugged: released == Released::Last,
        })
    }

    /// Cleans up what failed plugs left in a connected VM (as reconciliation does at start),
    /// before a change to its devices: the books and the saved state follow, and the host
    /// devices of a device that went with its cleanup are released. Failures are logged and
    /// retried next time.
    fn retry_failed_plugs(&self, vm: &Vm) {
        let Ok(manager) = vm.manager() else { return };
        if manager.needing_cleanup().is_empty() {
            return;
        }
        let name = &vm.record.name;
        let repairs = clean_up_failed_plugs(name, manager);
        if let Err(e) = self.save(vm) {
            tracing::error!(vm = name, error = %e.chain(), "cannot save the state after cleaning up failed plugs");
        }
        match self.hostdev() {
            Ok(mut hostdev) => release_forgotten(&mut hostdev, &repairs),
            Err(e) => {
                tracing::error!(vm = name, error = %e.chain(), "cannot release the host devices of cleaned-up plugs");
            }
        }
    }

    /// Writes a VM's whole device state to the database.
    fn save(&self, vm: &Vm) -> Result<(), ServiceError> {
        let manager = vm.manager()?;
        let json = manager
            .save()
            .to_json()
            .map_err(|source| ServiceError::Persist {
                vm: vm.record.name.clone(),
                source,
            })?;
        self.store().save_devices(&vm.record.name, &json)
    }

    /// Refuses a name or an endpoint that a registered VM has.
    pub(crate) fn vm(&self, name: &str) -> Result<Arc<Vm>, ServiceError> {
        self.vms_read()
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NoSuchVm(name.to_owned()))
    }
}

/// Hands the file `checked` opened to the VM's hypervisor and returns the spec that uses
/// it (`BlockSpec::passed_fd`); a spec with no file comes back as it is.
fn pass_file(
    backend: &Backend,
    vm: &str,
    checked: CheckedSpec,
) -> Result<DeviceSpec, ServiceError> {
    let CheckedSpec { mut spec, file } = checked;
    let (Some(file), DeviceKind::Block(block)) = (file, &mut spec.kind) else {
        return Ok(spec);
    };
    let path = file.path().to_owned();
    let file_type = file.file_type();
    let fdset = backend
        .add_fd(file)
        .map_err(|source| ServiceError::PassFile {
            vm: vm.to_owned(),
            path: path.clone(),
            source: Box::new(source),
        })?;
    tracing::debug!(vm, path = %path.display(), fdset, "file opened for the caller handed to the hypervisor");
    block.passed_fd = Some(PassedFd { fdset, file_type });
    Ok(spec)
}

/// The fd set a spec's block device was handed over in.
fn passed_fd_set(spec: &DeviceSpec) -> Option<u32> {
    match &spec.kind {
        DeviceKind::Block(block) => block.passed_fd.map(|fd| fd.fdset),
        _ => None,
    }
}

/// The fd set a plugged block device uses.
fn plugged_fd_set(request: &PlugRequest) -> Option<u32> {
    match &request.plug {
        Plug::Block(b) => b.spec.passed_fd.map(|fd| fd.fdset),
        Plug::VhostUser(_) | Plug::Vfio(_) => None,
    }
}

/// Refuses `name` or `endpoint` when a VM in `vms` already has it.
fn check_free(
    vms: &BTreeMap<String, Arc<Vm>>,
    name: &str,
    endpoint: &Endpoint,
) -> Result<(), ServiceError> {
    if vms.contains_key(name) {
        return Err(ServiceError::VmExists(name.to_owned()));
    }
    if let Some(other) = vms.values().find(|vm| vm.record.endpoint == *endpoint) {
        let endpoint = match endpoint {
            Endpoint::Qemu { qmp_socket } => qmp_socket.display().to_string(),
            #[cfg(any(test, feature = "test-util"))]
            Endpoint::Memory => return Ok(()),
        };
        return Err(ServiceError::EndpointInUse {
            vm: other.record.name.clone(),
            endpoint,
        });
    }
    Ok(())
}
