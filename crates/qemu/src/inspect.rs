//! What a running VM really holds of the device manager's requests, and which devices of
//! ours it holds that no request accounts for: QEMU's side of reconciliation after a
//! restart.
//!
//! A request is held when every device its plans name is among the VM's peripherals
//! (`qom.rs`). Backends are not looked at: QEMU keeps a device's backends while it holds the
//! device. The plans are the ones a removal would use (the pool and SCSI controller of the
//! session; files that are gone do not matter, only names). A device whose id is one of
//! ours (`id.rs`) and that belongs to no request is a stray, most likely a plug whose result
//! was never saved. What to do about either is the caller's decision.

use std::collections::BTreeSet;

use plugboard_devices::PlugRequest;

use crate::hypervisor::{LIST_PERIPHERALS, QemuError, QemuHypervisor};
use crate::id::QemuId;
use crate::qom;
use crate::removal;
use crate::requests::{self, VmLayout};

/// What [`QemuHypervisor::inspect`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Per request, in the order given: whether the VM holds every device of it.
    pub held: Vec<bool>,
    /// The ids of the devices of ours that the VM holds and no request accounts for, in
    /// sort order.
    pub strays: Vec<String>,
}

impl QemuHypervisor {
    /// Which of `requests` the VM really holds, and which devices of ours it holds that none
    /// of them accounts for. Changes nothing in the VM.
    ///
    /// # Errors
    /// [`QemuError::NotRunning`] before [`attach`](Self::attach); [`QemuError::Query`] when
    /// the VM's devices cannot be listed.
    pub fn inspect(&self, requests: &[&PlugRequest]) -> Result<Inspection, QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        let present: BTreeSet<String> = qom::peripherals(&mut session.client)
            .map_err(|source| QemuError::Query {
                what: LIST_PERIPHERALS,
                source,
            })?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let layout = VmLayout {
            ports: &session.pool,
            scsi_controller: session.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: true,
            vfio_fds: None,
        };
        let mut known = BTreeSet::new();
        let mut held = Vec::with_capacity(requests.len());
        for request in requests {
            let ids: Vec<String> = match requests::plans(request, layout) {
                Ok(plans) => plans.iter().map(|p| p.id.to_string()).collect(),
                Err(error) => {
                    tracing::warn!(
                        device = %request.device, error = %error,
                        "a saved request cannot be a device of this VM; counted as not held"
                    );
                    Vec::new()
                }
            };
            held.push(!ids.is_empty() && ids.iter().all(|id| present.contains(id)));
            known.extend(ids);
        }
        let strays = present
            .into_iter()
            .filter(|id| QemuId::parse_ours(id).is_some() && !known.contains(id))
            .collect();
        Ok(Inspection { held, strays })
    }
}

impl QemuHypervisor {
    /// Deletes what the VM still holds of a request whose devices are gone (removed behind
    /// our back): the backends named from its id (ours by name), and its fd set if QEMU
    /// still holds it under `fd_note` (see [`Self::remove_fd_noted`]). A device of the
    /// request that is still present is left alone with its backends: taking a guest's
    /// device away is not a cleanup to make unasked. Returns what was left alone.
    ///
    /// # Errors
    /// [`QemuError::NotRunning`]; the first backend or fd set that could not be deleted.
    pub fn clear_leftovers(
        &self,
        request: &PlugRequest,
        fd_note: Option<&str>,
    ) -> Result<Vec<String>, QemuError> {
        let mut state = self.lock();
        let session = state.session.as_mut().ok_or(QemuError::NotRunning)?;
        let layout = VmLayout {
            ports: &session.pool,
            scsi_controller: session.scsi_controller.as_deref(),
            portless_ok: true,
            for_removal: true,
            vfio_fds: None,
        };
        let plans = requests::plans(request, layout).map_err(|source| QemuError::Request {
            device: request.device,
            source,
        })?;
        let mut left = Vec::new();
        for plan in plans.iter().rev() {
            if removal::present(&mut session.client, &plan.id)? {
                left.push(plan.id.to_string());
                continue;
            }
            removal::delete_backends(&mut session.client, plan, removal::BACKEND_RELEASE_TIMEOUT)?;
            if let (Some(fdset), Some(note)) = (plan.fd_set, fd_note) {
                session.remove_fd_noted(fdset, note)?;
            }
        }
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use plugboard_devices::{
        BlockDriver, BlockIndex, BlockPlug, BlockSpec, DeviceId, GuestScsiAddress, Plug, PlugMode,
        RootPort, VfioBackend,
    };
    use serde_json::json;

    use super::*;
    use crate::hypervisor::QemuConfig;
    use crate::id::DeviceRole;
    use crate::qmp::fake::{Action, FakeQmp};

    fn name(device: u64, role: DeviceRole) -> String {
        QemuId::for_device(DeviceId::from_raw(device), role).to_string()
    }

    /// A VM with root ports hp1 and hp2, a virtio-scsi controller and `devices` (ids), whose
    /// device list fails once `broken` is set.
    fn fake_vm(devices: Vec<String>, broken: Arc<AtomicBool>) -> FakeQmp {
        FakeQmp::start(move |cmd, args| match (cmd, args["path"].as_str()) {
            ("qom-list", Some("/machine/peripheral")) if broken.load(Ordering::SeqCst) => {
                vec![Action::Error("the monitor is busy".into())]
            }
            ("qom-list", Some("/machine/peripheral")) => {
                let mut list = vec![
                    json!({"name": "type", "type": "string"}),
                    json!({"name": "hp1", "type": "child<pcie-root-port>"}),
                    json!({"name": "hp2", "type": "child<pcie-root-port>"}),
                    json!({"name": "scsi0", "type": "child<virtio-scsi-pci>"}),
                ];
                list.extend(
                    devices
                        .iter()
                        .map(|d| json!({"name": d, "type": "child<virtio-blk-pci>"})),
                );
                vec![Action::Return(json!(list))]
            }
            ("qom-list", _) => vec![Action::Return(json!([]))],
            ("qom-get", _) => vec![Action::Return(json!(40))],
            ("query-memdev", _) => vec![Action::Return(json!([{"id": "mem", "share": true}]))],
            _ => vec![Action::Error("unexpected".into())],
        })
    }

    fn disk(device: u64, driver: BlockDriver) -> PlugRequest {
        let id = DeviceId::from_raw(device);
        let scsi = driver == BlockDriver::VirtioScsi;
        PlugRequest {
            device: id,
            mode: PlugMode::Hot,
            plug: Plug::Block(BlockPlug {
                name_id: id.name_id("drive"),
                spec: BlockSpec::new("/nonexistent/disk.raw", driver),
                index: BlockIndex::try_from(0).unwrap(),
                drive_name: None,
                scsi_address: scsi.then(|| GuestScsiAddress::from_index(0).unwrap()),
                port: (!scsi).then(|| RootPort::new(0)),
            }),
        }
    }

    fn vfio_pair(device: u64) -> PlugRequest {
        crate::test_requests::vfio_pair(device, VfioBackend::Group { group: 3 })
    }

    #[test]
    fn held_requests_missing_functions_and_strays() {
        let devices = vec![
            name(9, DeviceRole::Disk),
            name(7, DeviceRole::Disk),
            // Only the first function of the VFIO pair.
            name(5, DeviceRole::VfioFunction(0)),
            // Ours, but in no request.
            name(0xff, DeviceRole::VhostUserBlk),
            name(0xfe, DeviceRole::VfioFunction(1)),
            // The VM's own.
            "drive-root".to_owned(),
            "rng0".to_owned(),
        ];
        let broken = Arc::new(AtomicBool::new(false));
        let fake = fake_vm(devices, Arc::clone(&broken));
        let hv = QemuHypervisor::connect(fake.socket(), QemuConfig::default()).unwrap();
        let requests = [
            disk(9, BlockDriver::VirtioBlk),
            disk(7, BlockDriver::VirtioScsi),
            vfio_pair(5),
            disk(4, BlockDriver::VirtioBlk),
        ];
        let found = hv.inspect(&requests.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            found,
            Inspection {
                held: vec![true, true, false, false],
                strays: vec![
                    "blk-00000000000000ff".to_owned(),
                    "vfio-1-00000000000000fe".to_owned(),
                ],
            }
        );
        // With no request, every device of ours is a stray; the VM's own never are.
        let none = hv.inspect(&[]).unwrap();
        assert_eq!(none.held, Vec::<bool>::new());
        assert_eq!(none.strays.len(), 5, "{:?}", none.strays);
        assert!(!none.strays.iter().any(|s| s == "drive-root" || s == "rng0"));
        // Inspecting changed nothing: only listings were sent.
        assert!(
            fake.commands()
                .iter()
                .all(|c| matches!(c.as_str(), "qom-list" | "qom-get" | "query-memdev")),
            "{:?}",
            fake.commands()
        );

        broken.store(true, Ordering::SeqCst);
        let err = hv.inspect(&[]).unwrap_err();
        assert!(
            matches!(err, QemuError::Query { what, .. } if what == LIST_PERIPHERALS),
            "{err:?}"
        );
    }

    #[test]
    fn inspecting_before_attach_is_refused() {
        let hv = QemuHypervisor::new(QemuConfig::default());
        assert!(matches!(hv.inspect(&[]), Err(QemuError::NotRunning)));
    }
}
