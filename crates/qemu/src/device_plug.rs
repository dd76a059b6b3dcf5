//! Carrying out the device manager's plug and unplug requests: plugboard-devices' `Hypervisor`
//! trait, implemented for [`QemuHypervisor`].
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
            vfio_fds: self.config.vfio_fds.as_deref(),
        };
        let plans = requests::plans(request, layout).map_err(|e| request_error(device, e))?;
        #[cfg(any(test, feature = "test-util"))]
        let plans = self.stand_in(plans);
        for (n, plan) in plans.iter().enumerate() {
            if let Err(e) = session.plug(plan) {
                let mut left = left_by_plug(&e);
                for done in plans[..n].iter().rev() {
                    if let Err(undo) = session.unplug(done, timeout) {
                        tracing::error!(device = %done.id, error = %undo, "could not take a plugged function back out; the VM may still hold it");
                        left.push(done.id.to_string());
                    }
                }
                if !left.is_empty() {
                    return Err(HypervisorError::Incomplete {
                        device,
                        source: Box::new(QemuError::RollbackIncomplete {
                            left,
                            cause: Box::new(e),
                        }),
                    });
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
            // Removal deletes by name, and a name that is not there counts as gone:
            // without descriptors the plans name every function's own iommufd object too,
            // so one cold-plugged (or plugged before descriptors were passed) goes as well.
            vfio_fds: None,
        };
        let plans = requests::plans(request, layout).map_err(|e| request_error(device, e))?;
        // A device cold-plugged on the root bus cannot leave a running q35 VM (no hotplug
        // there): QEMU is not asked.
        if request.mode == PlugMode::Cold
            && let Some(plan) = plans.iter().find(|p| p.bus().is_none() && p.removable)
        {
            tracing::info!(device = %plan.id, "a cold-plugged device on the root bus stays in the running VM");
            return Err(HypervisorError::NotRemovable { device });
        }
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
        // A descriptor reaches only a running QEMU (add-fd); a command line cannot name it.
        if plans.iter().any(|p| p.fd_set.is_some()) {
            return Err(HypervisorError::Unsupported {
                device,
                what: "coldplug of a disk passed by descriptor".into(),
            });
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

    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        self.view_now(request)
    }
}

impl QemuHypervisor {
    /// [`Hypervisor::guest_view`]: before the VM runs, what coldplug answered; once it runs,
    /// each PCI device's path as QEMU placed it.
    fn view_now(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        let device = request.device;
        let mut state = self.lock();
        let Some(session) = state.session.as_mut() else {
            let plans = self.cold_plans(request)?;
            if !plans
                .iter()
                .all(|p| state.boot.iter().any(|q| q.id == p.id))
            {
                return Err(HypervisorError::NotPlugged { device });
            }
            return Ok(guest_view(request, &plans, None));
        };
        let layout = VmLayout {
            ports: &session.pool,
            scsi_controller: session.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: true,
            // Only names and places matter here.
            vfio_fds: None,
        };
        let plans = requests::plans(request, layout).map_err(|e| request_error(device, e))?;
        let mut view = guest_view(request, &plans, None);
        for plan in &plans {
            let slots = match session.port_slot(plan) {
                Some(port) => Some(vec![port, 0]),
                // On the root bus (cold-plugged): the device's own slot, if it is on PCI.
                None if plan.bus().is_none() => session
                    .root_bus_slot(plan)
                    .map_err(|e| backend(device, e))?
                    .map(|slot| vec![slot]),
                None => None,
            };
            let path = slots.and_then(|s| {
                let slots: Option<Vec<PciSlot>> =
                    s.into_iter().map(|n| PciSlot::new(n).ok()).collect();
                PciPath::new(slots?).ok()
            });
            view.pci_paths.extend(path);
        }
        Ok(view)
    }

    /// The plans with the test's stand-in applied (see [`QemuHypervisor::with_stand_in`]).
    #[cfg(any(test, feature = "test-util"))]
    fn stand_in(&self, mut plans: Vec<Plan>) -> Vec<Plan> {
        if let Some(stand_in) = &self.stand_in {
            plans.iter_mut().for_each(|p| (stand_in.0)(p));
        }
        plans
    }

    fn cold_plans(&self, request: &PlugRequest) -> Result<Vec<Plan>, HypervisorError> {
        let layout = VmLayout {
            ports: &self.config.root_ports,
            scsi_controller: self.config.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: false,
            vfio_fds: None,
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

/// The backends a failed plan's own rollback could not delete.
fn left_by_plug(error: &QemuError) -> Vec<String> {
    match error {
        QemuError::Hotplug(HotplugError::Step { rollback, .. }) => rollback.left_behind.clone(),
        _ => Vec::new(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plugboard_devices::{BlockDriver, BlockIndex, BlockPlug, BlockSpec, RootPort, VfioBackend};
    use serde_json::{Value, json};

    use super::*;
    use crate::hypervisor::QemuConfig;
    use crate::qmp::fake::{Action, FakeQmp};

    /// A fake VM with two empty root ports and shared memory; `extra` answers the rest.
    fn fake_vm(
        mut extra: impl FnMut(&str, &Value) -> Option<Vec<Action>> + Send + 'static,
    ) -> FakeQmp {
        FakeQmp::start(move |cmd, args| {
            if let Some(actions) = extra(cmd, args) {
                return actions;
            }
            match (cmd, args["path"].as_str()) {
                ("qom-list", Some("/machine/peripheral")) => vec![Action::Return(json!([
                    {"name": "hp1", "type": "child<pcie-root-port>"},
                    {"name": "hp2", "type": "child<pcie-root-port>"},
                ]))],
                ("qom-list", _) => vec![Action::Return(json!([]))],
                ("qom-get", _) => vec![Action::Return(json!(40))],
                ("query-memdev", _) => vec![Action::Return(json!([{"id": "mem", "share": true}]))],
                _ => vec![Action::Return(json!({}))],
            }
        })
    }

    fn hv(fake: &FakeQmp) -> QemuHypervisor {
        let config = QemuConfig {
            unplug_timeout: Duration::from_secs(2),
            ..QemuConfig::default()
        };
        QemuHypervisor::connect(fake.socket(), config).unwrap()
    }

    fn disk(fake: &FakeQmp, driver: BlockDriver, mode: PlugMode) -> PlugRequest {
        let path = fake.dir().join("d.raw");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let id = DeviceId::from_raw(9);
        PlugRequest {
            device: id,
            mode,
            plug: Plug::Block(BlockPlug {
                name_id: id.name_id("drive"),
                spec: BlockSpec::new(path, driver),
                index: BlockIndex::try_from(0).unwrap(),
                drive_name: None,
                scsi_address: None,
                port: Some(RootPort::new(0)),
            }),
        }
    }

    fn vfio_pair() -> PlugRequest {
        crate::test_requests::vfio_pair(5, VfioBackend::Group { group: 3 })
    }

    #[test]
    fn a_vfio_group_is_all_or_nothing() {
        let fake = fake_vm(
            |cmd, args| match (cmd, args["id"].as_str(), args["host"].as_str()) {
                ("device_add", _, Some("0000:65:00.1")) => {
                    Some(vec![Action::Error("group 3 is not viable".into())])
                }
                ("device_del", Some(id), _) => Some(vec![
                    Action::Return(json!({})),
                    Action::Event(
                        "DEVICE_DELETED",
                        json!({"device": id, "path": format!("/machine/peripheral/{id}")}),
                    ),
                ]),
                _ => None,
            },
        );
        let hv = hv(&fake);
        let err = hv.hotplug_add(&vfio_pair()).unwrap_err();
        assert!(matches!(err, HypervisorError::Backend { .. }), "{err:?}");
        let tail: Vec<String> = fake
            .commands()
            .into_iter()
            .filter(|c| c.starts_with("device"))
            .collect();
        assert_eq!(
            tail,
            ["device_add", "device_add", "device_del"],
            "the first function is taken back out"
        );
    }

    /// Issue 17, item 1: a failed plug whose own rollback leaves a backend in QEMU (a
    /// `blockdev-del` refused) is `Incomplete`, naming what was left, not a plain failure.
    #[test]
    fn a_backend_the_rollback_cannot_delete_makes_the_plug_incomplete() {
        let fake = fake_vm(|cmd, _| match cmd {
            "device_add" => Some(vec![Action::Error("Bus 'hp1' not found".into())]),
            "blockdev-del" => Some(vec![Action::Error("Node is in use".into())]),
            _ => None,
        });
        let hv = hv(&fake);
        let err = hv
            .hotplug_add(&disk(&fake, BlockDriver::VirtioBlk, PlugMode::Hot))
            .unwrap_err();
        let HypervisorError::Incomplete { source, .. } = &err else {
            panic!("{err:?}")
        };
        let text = source.to_string();
        assert!(text.contains("left") && text.contains("-fmt"), "{text}");
    }

    /// A VFIO group whose first function the guest does not let go of when the second
    /// fails is `Incomplete` too.
    #[test]
    fn a_function_not_let_go_of_makes_the_group_plug_incomplete() {
        let fake = fake_vm(|cmd, args| {
            match (cmd, args["host"].as_str(), args["path"].as_str()) {
                ("device_add", Some("0000:65:00.1"), _) => {
                    Some(vec![Action::Error("group 3 is not viable".into())])
                }
                // Accepted, but no DEVICE_DELETED ever comes and the device stays listed:
                // the guest keeps it.
                ("device_del", _, _) => Some(vec![Action::Return(json!({}))]),
                ("qom-list", _, Some("/machine/peripheral")) => Some(vec![Action::Return(json!([
                    {"name": "hp1", "type": "child<pcie-root-port>"},
                    {"name": "hp2", "type": "child<pcie-root-port>"},
                    {"name": "vfio-0-0000000000000005", "type": "child<vfio-pci>"},
                ]))]),
                _ => None,
            }
        });
        let hv = hv(&fake);
        let err = hv.hotplug_add(&vfio_pair()).unwrap_err();
        assert!(matches!(err, HypervisorError::Incomplete { .. }), "{err:?}");
    }

    #[test]
    fn a_duplicate_is_already_plugged_and_a_good_plug_reports_the_pci_path() {
        // Like QEMU, the fake refuses a node name it already holds.
        let mut nodes = std::collections::BTreeSet::new();
        let fake = fake_vm(move |cmd, args| match (cmd, args["node-name"].as_str()) {
            ("blockdev-add", Some(n)) if !nodes.insert(n.to_owned()) => Some(vec![Action::Error(
                format!("Duplicate nodes with node-name='{n}'"),
            )]),
            _ => None,
        });
        let hv = hv(&fake);
        let view = hv
            .hotplug_add(&disk(&fake, BlockDriver::VirtioBlk, PlugMode::Hot))
            .unwrap();
        // qom-get addr 40 = slot 5.
        assert_eq!(
            view.pci_paths
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["05/00"]
        );
        // The same device again: QEMU already holds objects of its names.
        let dup = disk(&fake, BlockDriver::VirtioBlk, PlugMode::Hot);
        let err = hv.hotplug_add(&dup).unwrap_err();
        assert!(
            matches!(err, HypervisorError::AlreadyPlugged { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn nvdimm_removal_is_not_removable() {
        let fake = fake_vm(|_, _| None);
        let hv = hv(&fake);
        let request = disk(&fake, BlockDriver::Nvdimm, PlugMode::Hot);
        hv.hotplug_add(&request).unwrap();
        let err = hv.hotplug_remove(&request).unwrap_err();
        assert!(
            matches!(err, HypervisorError::NotRemovable { .. }),
            "{err:?}"
        );
        assert!(!fake.commands().contains(&"device_del".to_owned()));
    }

    #[test]
    fn coldplug_collects_boot_args_until_the_vm_runs() {
        let fake = fake_vm(|_, _| None);
        let hv = QemuHypervisor::new(QemuConfig {
            root_ports: vec!["hp1".into()],
            ..QemuConfig::default()
        });
        let request = disk(&fake, BlockDriver::VirtioBlk, PlugMode::Cold);
        hv.coldplug(&request).unwrap();
        assert!(matches!(
            hv.coldplug(&request),
            Err(HypervisorError::AlreadyPlugged { .. })
        ));
        let args = hv.boot_args();
        assert_eq!(args.iter().filter(|a| *a == "-blockdev").count(), 2);
        assert!(args.last().unwrap().contains("\"bus\":\"hp1\""), "{args:?}");
        // Removing a cold device before start takes it out of the boot arguments.
        hv.hotplug_remove(&request).unwrap();
        assert!(hv.boot_args().is_empty());
        assert!(matches!(
            hv.hotplug_remove(&request),
            Err(HypervisorError::NotPlugged { .. })
        ));
        // Once the VM runs, coldplug is refused.
        hv.attach(fake.socket()).unwrap();
        assert!(matches!(
            hv.coldplug(&request),
            Err(HypervisorError::Unsupported { .. })
        ));
    }
}
