//! plugboard-devices' `Hypervisor` trait, implemented for [`QemuHypervisor`].
//!
//! A request becomes one plan per guest device (`requests.rs`), plugged in order. A VFIO
//! request is all or nothing: when a later function fails, the functions already plugged
//! are removed again before the error returns. Errors map onto the trait's variants where
//! the manager must tell them apart (unsupported, not removable, already plugged); every
//! other failure is `Backend` with our typed error as its source, so the chain names the QMP
//! command, the object and QEMU's words.

use plugboard_devices::{
    DeviceId, GuestView, Hypervisor, HypervisorError, HypervisorKind, PciPath, PciSlot, Plug,
    PlugMode, PlugRequest,
};

use crate::hotplug::HotplugError;
use crate::hypervisor::{QemuError, QemuHypervisor, Session};
use crate::plan::Plan;
use crate::removal::RemovalError;
use crate::requests::{self, RequestError, VmLayout};

impl Hypervisor for QemuHypervisor {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Qemu
    }

    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        let device = request.device;
        let timeout = self.config.unplug_timeout;
        let mut state = self.lock();
        let session = state
            .session
            .as_mut()
            .ok_or_else(|| backend(device, QemuError::NotRunning))?;
        let layout = VmLayout {
            ports: &session.pool,
            scsi_controller: session.scsi_controller.as_deref(),
            portless_ok: false,
            for_removal: false,
        };
        let plans = requests::plans(request, layout).map_err(|e| request_error(device, e))?;
        for (n, plan) in plans.iter().enumerate() {
            if let Err(e) = session.plug(plan) {
                for done in plans[..n].iter().rev() {
                    if let Err(undo) = session.unplug(done, timeout) {
                        tracing::error!(device = %done.id, error = %undo, "could not take a plugged VFIO function back out");
                    }
                }
                return Err(plug_error(device, e));
            }
        }
        Ok(guest_view(request, &plans, Some(session)))
    }

    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
        let device = request.device;
        let timeout = self.config.unplug_timeout;
        let mut state = self.lock();
        let Some(session) = state.session.as_mut() else {
            if request.mode == PlugMode::Cold {
                let plans = self.cold_plans(request)?;
                let before = state.boot.len();
                state.boot.retain(|p| !plans.iter().any(|q| q.id == p.id));
                if state.boot.len() == before {
                    return Err(HypervisorError::NotPlugged { device });
                }
                return Ok(());
            }
            return Err(backend(device, QemuError::NotRunning));
        };
        let layout = VmLayout {
            ports: &session.pool,
            scsi_controller: session.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: true,
        };
        let plans = requests::plans(request, layout).map_err(|e| request_error(device, e))?;
        for plan in plans.iter().rev() {
            session.unplug(plan, timeout).map_err(|e| match e {
                QemuError::Removal(RemovalError::NotRemovable { .. }) => {
                    tracing::warn!(device = %plan.id, error = %e, "detach refused");
                    HypervisorError::NotRemovable { device }
                }
                other => backend(device, other),
            })?;
        }
        Ok(())
    }

    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        let device = request.device;
        let plans = self.cold_plans(request)?;
        let mut state = self.lock();
        if state.session.is_some() {
            return Err(HypervisorError::Unsupported {
                device,
                what: "coldplug into a VM that is already running".into(),
            });
        }
        if plans
            .iter()
            .any(|p| state.boot.iter().any(|q| q.id == p.id))
        {
            return Err(HypervisorError::AlreadyPlugged { device });
        }
        if self.config.memory_shared == Some(false)
            && plans.iter().any(|p| p.requires.shared_memory)
        {
            return Err(HypervisorError::Unsupported {
                device,
                what: "vhost-user on a VM whose memory is not shared".into(),
            });
        }
        let view = guest_view(request, &plans, None);
        state.boot.extend(plans);
        Ok(view)
    }
}

impl QemuHypervisor {
    fn cold_plans(&self, request: &PlugRequest) -> Result<Vec<Plan>, HypervisorError> {
        let layout = VmLayout {
            ports: &self.config.root_ports,
            scsi_controller: self.config.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: false,
        };
        requests::plans(request, layout).map_err(|e| request_error(request.device, e))
    }
}

/// What the guest will see: PCI paths (root port slot, then slot 0), SCSI address, name.
fn guest_view(request: &PlugRequest, plans: &[Plan], session: Option<&Session>) -> GuestView {
    let pci_paths = session.map_or_else(Vec::new, |s| {
        plans
            .iter()
            .filter_map(|p| {
                let port = PciSlot::new(s.port_slot(p)?).ok()?;
                PciPath::new(vec![port, PciSlot::new(0).ok()?]).ok()
            })
            .collect()
    });
    let (scsi_address, drive_name) = match &request.plug {
        Plug::Block(b) => (b.scsi_address, b.drive_name.clone()),
        Plug::VhostUser(v) => (None, v.drive_name.clone()),
        Plug::Vfio(_) => (None, None),
    };
    GuestView {
        pci_paths,
        scsi_address,
        drive_name,
    }
}

fn backend(device: DeviceId, error: QemuError) -> HypervisorError {
    HypervisorError::Backend {
        device,
        source: Box::new(error),
    }
}

fn request_error(device: DeviceId, error: RequestError) -> HypervisorError {
    match error {
        RequestError::Unsupported { what } => HypervisorError::Unsupported { device, what },
        other => HypervisorError::Backend {
            device,
            source: Box::new(other),
        },
    }
}

fn plug_error(device: DeviceId, error: QemuError) -> HypervisorError {
    let duplicate = matches!(&error, QemuError::Hotplug(HotplugError::Step { source, .. })
        if source.failure().is_some_and(|f| f.desc.starts_with("Duplicate")));
    if duplicate {
        tracing::error!(%device, error = %error, "QEMU already holds an object of this device's name");
        return HypervisorError::AlreadyPlugged { device };
    }
    backend(device, error)
}
