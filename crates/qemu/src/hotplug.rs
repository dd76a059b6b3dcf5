//! Executing a plan over QMP: checks first, backends next, the device last; on failure,
//! undo exactly what was done, in reverse order.
//!
//! The checks run before QEMU is touched: a vhost-user backend must be listening (see
//! `backend_socket.rs`), and vhost-user needs the VM's RAM to be shared. If QEMU goes away
//! in the middle, there is nothing left to undo in it (its objects died with it); the error
//! says so and the caller (the device manager) rolls its own books back.

use std::fmt;

use crate::backend_socket::{self, BackendSocketError};
use crate::id::QemuId;
use crate::passed_fds::{self, PassFdError};
use crate::plan::Plan;
use crate::qmp::{QmpClient, QmpError};

/// What we know about the running VM that decides whether a plan may go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmFacts {
    /// Every memory backend of the VM is shared (`share=on`).
    pub memory_shared: bool,
}

/// What became of the steps already done when a later one failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollback {
    /// Backends deleted again (names).
    pub undone: Vec<String>,
    /// Backends that could not be deleted (names); they are left in QEMU.
    pub left_behind: Vec<String>,
    /// QEMU was gone, so nothing of the plan survives in it.
    pub qemu_gone: bool,
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.qemu_gone {
            f.write_str("QEMU is gone, nothing was left in it")
        } else if self.left_behind.is_empty() {
            write!(f, "rolled back ({} backends deleted)", self.undone.len())
        } else {
            write!(f, "rollback left {} behind", self.left_behind.join(", "))
        }
    }
}

/// Why a device was not hot-plugged.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// vhost-user on a VM whose RAM is not shared: refused before QEMU was asked.
    #[error(
        "refusing to hot-plug {device}: the VM's memory is not shared, which vhost-user needs \
         (start it with memory-backend-memfd or memory-backend-file, share=on)"
    )]
    MemoryNotShared {
        /// The device.
        device: QemuId,
    },
    /// The vhost-user backend is not listening: refused before QEMU was asked.
    #[error("refusing to hot-plug {device}: its vhost-user backend is not ready")]
    BackendSocket {
        /// The device.
        device: QemuId,
        /// What is wrong with the socket.
        #[source]
        source: BackendSocketError,
    },
    /// A file the plan hands QEMU by descriptor could not be opened or passed; QEMU was
    /// left as it was (a descriptor passed before is closed again).
    #[error("hot-plugging {device}: cannot hand it to QEMU by descriptor")]
    PassFd {
        /// The device.
        device: QemuId,
        /// What failed.
        #[source]
        source: PassFdError,
    },
    /// A QMP step failed; the steps before it were undone as `rollback` says.
    #[error("hot-plugging {device}: {step} failed; {rollback}")]
    Step {
        /// The device.
        device: QemuId,
        /// The command and object (`blockdev-add vb0-file`, `device_add vb0`).
        step: String,
        /// QEMU's answer or the transport error (boxed: it is large).
        #[source]
        source: Box<QmpError>,
        /// What became of the earlier steps.
        rollback: Rollback,
    },
}

impl HotplugError {
    /// The QMP error of a failed step, if that is what failed.
    pub fn qmp(&self) -> Option<&QmpError> {
        match self {
            Self::Step { source, .. } => Some(source.as_ref()),
            Self::PassFd { source, .. } => source.qmp(),
            _ => None,
        }
    }
}

/// Checks the plan's requirements, without touching QEMU.
pub fn check(plan: &Plan, vm: VmFacts) -> Result<(), HotplugError> {
    if plan.requires.shared_memory && !vm.memory_shared {
        return Err(HotplugError::MemoryNotShared {
            device: plan.id.clone(),
        });
    }
    if let Some(socket) = &plan.requires.backend_socket {
        backend_socket::check_listening(socket).map_err(|source| HotplugError::BackendSocket {
            device: plan.id.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Checks, hands over the plan's descriptors, then adds the backends and the device; undoes
/// the backends and closes the descriptors nothing took if a step fails.
pub fn plug(client: &mut QmpClient, plan: &Plan, vm: VmFacts) -> Result<(), HotplugError> {
    check(plan, vm)?;
    let passed = pass_fds(client, plan)?;
    let plugged = add(client, plan);
    if plugged.is_err() {
        passed_fds::close_untaken(client, &passed);
    }
    plugged
}

/// Opens the plan's files (before QEMU is touched, so a missing one changes nothing), creates
/// the VM's iommufd object if the plan needs it and is the first, then sends the files;
/// returns their names.
fn pass_fds(client: &mut QmpClient, plan: &Plan) -> Result<Vec<String>, HotplugError> {
    let failed = |source| HotplugError::PassFd {
        device: plan.id.clone(),
        source,
    };
    let files = plan
        .passed_fds
        .iter()
        .map(|fd| passed_fds::open(&fd.source).map(|file| (fd.name.as_str(), file)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if let Some(iommu) = &plan.vm_iommufd {
        passed_fds::ensure_vm_iommufd(client, iommu).map_err(failed)?;
    }
    let mut sent = Vec::with_capacity(files.len());
    for (name, file) in &files {
        if let Err(e) = passed_fds::send(client, name, file) {
            passed_fds::close_untaken(client, &sent);
            return Err(failed(e));
        }
        sent.push((*name).to_owned());
    }
    Ok(sent)
}

/// Adds the backends and the device; undoes the backends if a step fails.
fn add(client: &mut QmpClient, plan: &Plan) -> Result<(), HotplugError> {
    for (done, backend) in plan.backends.iter().enumerate() {
        let (command, args) = backend.add_command();
        if let Err(source) = client.execute(command, Some(&args)) {
            let rollback = undo(client, plan, done, &source);
            return Err(HotplugError::Step {
                device: plan.id.clone(),
                step: format!("{command} {}", backend.name()),
                source: Box::new(source),
                rollback,
            });
        }
        tracing::debug!(device = %plan.id, command, backend = backend.name(), "backend added");
    }
    if let Err(source) = client.execute("device_add", Some(&plan.device)) {
        let rollback = undo(client, plan, plan.backends.len(), &source);
        return Err(HotplugError::Step {
            device: plan.id.clone(),
            step: format!("device_add {}", plan.id),
            source: Box::new(source),
            rollback,
        });
    }
    tracing::info!(
        device = %plan.id, driver = plan.driver(), bus = plan.bus().unwrap_or("-"),
        undo = %format!("device_del {}", plan.id), "device hot-plugged"
    );
    Ok(())
}

/// Deletes the first `done` backends of the plan, last first.
fn undo(client: &mut QmpClient, plan: &Plan, done: usize, cause: &QmpError) -> Rollback {
    let mut rollback = Rollback::default();
    if cause.is_disconnected() {
        rollback.qemu_gone = true;
        return rollback;
    }
    for backend in plan.backends.iter().take(done).rev() {
        let (command, args) = backend.delete_command();
        match client.execute(command, Some(&args)) {
            Ok(_) => rollback.undone.push(backend.name().to_owned()),
            Err(e) if e.is_disconnected() => {
                rollback.qemu_gone = true;
                break;
            }
            Err(e) => {
                tracing::error!(device = %plan.id, backend = backend.name(), error = %e, "rollback could not delete a backend");
                rollback.left_behind.push(backend.name().to_owned());
            }
        }
    }
    rollback
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::block::{Disk, DiskFormat, DiskSource, virtio_blk};
    use crate::qmp::fake::{Action, FakeQmp};
    use crate::vhost_user::{VhostUser, VhostUserKind, vhost_user};

    const SHARED: VmFacts = VmFacts {
        memory_shared: true,
    };

    fn disk_plan(id: &str) -> Plan {
        let disk = Disk::new(DiskSource::File("/v/d.qcow2".into()), DiskFormat::Qcow2);
        virtio_blk(id.parse().unwrap(), &disk, Some("hp1"), None)
    }

    fn client(fake: &FakeQmp) -> QmpClient {
        QmpClient::connect(fake.socket(), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn backends_then_device_in_order() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({}))]);
        plug(&mut client(&fake), &disk_plan("vb0"), SHARED).unwrap();
        assert_eq!(
            fake.commands(),
            ["blockdev-add", "blockdev-add", "device_add"]
        );
    }

    #[test]
    fn a_failed_device_add_deletes_both_nodes_in_reverse() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_add" => vec![Action::Error("Bus 'hp1' not found".into())],
            _ => vec![Action::Return(json!({}))],
        });
        let err = plug(&mut client(&fake), &disk_plan("vb0"), SHARED).unwrap_err();
        let HotplugError::Step { step, rollback, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(step, "device_add vb0");
        assert_eq!(rollback.undone, ["vb0-fmt", "vb0-file"]);
        assert!(err.to_string().contains("rolled back"), "{err}");
        let got = fake.received();
        let dels: Vec<&Value> = got
            .iter()
            .filter(|r| r.command == "blockdev-del")
            .map(|r| &r.arguments)
            .collect();
        assert_eq!(
            dels,
            [
                &json!({"node-name": "vb0-fmt"}),
                &json!({"node-name": "vb0-file"})
            ]
        );
    }

    #[test]
    fn a_failed_second_node_deletes_only_the_first() {
        let fake = FakeQmp::start(|cmd, args| match (cmd, args["node-name"].as_str()) {
            ("blockdev-add", Some("vb0-fmt")) => {
                vec![Action::Error("Image is not in qcow2 format".into())]
            }
            _ => vec![Action::Return(json!({}))],
        });
        let err = plug(&mut client(&fake), &disk_plan("vb0"), SHARED).unwrap_err();
        assert!(
            matches!(&err, HotplugError::Step { step, .. } if step == "blockdev-add vb0-fmt"),
            "{err}"
        );
        assert_eq!(
            fake.commands(),
            ["blockdev-add", "blockdev-add", "blockdev-del"]
        );
    }

    #[test]
    fn qemu_dying_mid_plug_is_reported_without_rollback_attempts() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_add" => vec![Action::Close],
            _ => vec![Action::Return(json!({}))],
        });
        let err = plug(&mut client(&fake), &disk_plan("vb0"), SHARED).unwrap_err();
        assert!(err.qmp().unwrap().is_disconnected(), "{err}");
        let HotplugError::Step { rollback, .. } = &err else {
            panic!()
        };
        assert!(rollback.qemu_gone);
        assert!(err.to_string().contains("QEMU is gone"), "{err}");
    }

    #[test]
    fn vhost_user_is_refused_before_qemu_when_memory_is_not_shared_or_backend_is_missing() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({}))]);
        let socket = fake.dir().join("be.sock");
        let dev = VhostUser {
            socket: socket.clone(),
            kind: VhostUserKind::Blk { queues: None },
        };
        let plan = vhost_user("vu0".parse().unwrap(), &dev, Some("hp1"));
        let mut c = client(&fake);
        let err = plug(&mut c, &plan, SHARED).unwrap_err();
        assert!(matches!(err, HotplugError::BackendSocket { .. }), "{err}");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = plug(
            &mut c,
            &plan,
            VmFacts {
                memory_shared: false,
            },
        )
        .unwrap_err();
        assert!(matches!(err, HotplugError::MemoryNotShared { .. }), "{err}");
        assert!(
            fake.commands().is_empty(),
            "QEMU was touched: {:?}",
            fake.commands()
        );
        plug(&mut c, &plan, SHARED).unwrap();
        assert_eq!(fake.commands(), ["chardev-add", "device_add"]);
    }
}
