//! Removal: `device_del`, wait until the guest lets go, then delete the backends.
//!
//! `device_del` only asks. A PCI device leaves when the guest acknowledges (ACPI or native
//! PCIe hotplug) and QEMU then sends `DEVICE_DELETED`; a `scsi-hd` leaves at once. The
//! event for the device is the one whose `device` is its id or whose `path` is
//! `/machine/peripheral/<id>`; QEMU also reports children (`…/virtio-backend`), which we
//! ignore. Because the event for the device itself sometimes never comes (seen on 10.0.2
//! after `system_reset`), we also poll `qom-list /machine/peripheral`, as libvirt does.
//!
//! A guest that never acknowledges gives [`RemovalError::GuestTimeout`]. Nothing is deleted
//! then (the backends are still in use), and a later call finishes the job: `device_del` of
//! a device already being unplugged, or already gone, is not an error here, and deleting a
//! backend that is already gone counts as done. All names come from the plan, so a retry
//! needs no state of ours.
//!
//! A plan whose disk was passed by descriptor ends with `remove-fd` of its fd set, after
//! the block nodes that held the file are deleted; a set already gone counts as closed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::id::QemuId;
use crate::plan::Plan;
use crate::qmp::{Event, QmpClient, QmpError, QmpFailure};
use crate::qom;

/// How often the device's presence is polled while waiting for `DEVICE_DELETED`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How a removal learned that the guest had let the device go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// QEMU sent `DEVICE_DELETED` for the device itself.
    Event,
    /// The device left `/machine/peripheral` without its event (seen after resets).
    Vanished,
    /// It was gone before this call (a retry finishing an earlier removal).
    AlreadyGone,
}

/// Why a device was not (fully) removed.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// QEMU cannot hot-unplug this kind of device (nvdimm); QEMU was not asked.
    #[error("{device} ({driver}) cannot be hot-unplugged by QEMU; it goes away when the VM stops")]
    NotRemovable {
        /// The device.
        device: QemuId,
        /// Its qdev driver.
        driver: String,
    },
    /// `device_del` was refused or did not get through.
    #[error("device_del {device} failed")]
    Request {
        /// The device.
        device: QemuId,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// The guest did not release the device in time; the request stays pending in QEMU and
    /// calling remove again finishes the job.
    #[error(
        "the guest did not release {device} within {after:?}; the unplug is still pending, retry to finish it"
    )]
    GuestTimeout {
        /// The device.
        device: QemuId,
        /// How long we waited.
        after: Duration,
    },
    /// The guest reported that it could not release the device.
    #[error("the guest refused to release {device} (DEVICE_UNPLUG_GUEST_ERROR)")]
    GuestRefused {
        /// The device.
        device: QemuId,
    },
    /// Checking whether the device is still there failed.
    #[error("cannot check whether {device} is still present")]
    Query {
        /// The device.
        device: QemuId,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// The device and its backends are gone but its fd set could not be closed; retrying
    /// finishes the job.
    #[error("{device} is gone but its fd set {fdset} could not be closed")]
    FdSet {
        /// The device.
        device: QemuId,
        /// The fd set.
        fdset: u32,
        /// The error.
        #[source]
        source: QmpError,
    },
    /// The device is gone but a backend could not be deleted; retrying finishes the job.
    #[error("{device} is gone but its backend {backend} could not be deleted")]
    Backend {
        /// The device.
        device: QemuId,
        /// The backend's name.
        backend: String,
        /// The error.
        #[source]
        source: QmpError,
    },
}

/// Removes the plan's device and then its backends, waiting at most `timeout` for the guest.
pub fn unplug(
    client: &mut QmpClient,
    plan: &Plan,
    timeout: Duration,
) -> Result<Departure, RemovalError> {
    let id = &plan.id;
    if !plan.removable {
        return Err(RemovalError::NotRemovable {
            device: id.clone(),
            driver: plan.driver().to_owned(),
        });
    }
    // An event for an earlier device of the same id must not end this wait.
    while client
        .take_event(|e| e.is_device_deleted(id.as_str()))
        .is_some()
    {}
    let departure = match client.execute("device_del", Some(&json!({ "id": id.as_str() }))) {
        Ok(_) => wait_gone(client, id, timeout)?,
        Err(e) if e.failure().is_some_and(is_not_found) => {
            tracing::debug!(device = %id, "device already gone; deleting what is left of its backends");
            Departure::AlreadyGone
        }
        Err(e)
            if e.failure()
                .is_some_and(|f| f.desc.contains("already in the process of unplug")) =>
        {
            wait_gone(client, id, timeout)?
        }
        Err(source) => {
            return Err(RemovalError::Request {
                device: id.clone(),
                source,
            });
        }
    };
    delete_backends(client, plan, BACKEND_RELEASE_TIMEOUT)?;
    if let Some(fdset) = plan.fd_set {
        close_fd_set(client, fdset).map_err(|source| RemovalError::FdSet {
            device: id.clone(),
            fdset,
            source,
        })?;
        tracing::debug!(device = %id, fdset, "fd set closed");
    }
    tracing::info!(device = %id, driver = plan.driver(), ?departure, "device removed and its backends deleted");
    Ok(departure)
}

/// Waits for the device to leave: its `DEVICE_DELETED`, or its absence from
/// `/machine/peripheral`, whichever is seen first.
pub fn wait_gone(
    client: &mut QmpClient,
    id: &QemuId,
    timeout: Duration,
) -> Result<Departure, RemovalError> {
    let deadline = Instant::now() + timeout;
    let ours = |e: &Event| e.is_device_deleted(id.as_str()) || e.is_unplug_guest_error(id.as_str());
    // Events that arrived with the device_del reply (scsi-hd unplugs at once) are queued;
    // confirm those against QOM rather than trust an event that might be stale.
    if let Some(e) = client.take_event(ours) {
        if e.is_unplug_guest_error(id.as_str()) {
            return Err(RemovalError::GuestRefused { device: id.clone() });
        }
        if !present(client, id)? {
            return Ok(Departure::Event);
        }
    }
    let mut last_request = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = left.min(POLL_INTERVAL);
        let event = client
            .wait_event(slice, ours)
            .map_err(|source| RemovalError::Query {
                device: id.clone(),
                source,
            })?;
        match event {
            Some(e) if e.is_unplug_guest_error(id.as_str()) => {
                return Err(RemovalError::GuestRefused { device: id.clone() });
            }
            Some(_) => return Ok(Departure::Event),
            None if !present(client, id)? => return Ok(Departure::Vanished),
            None if left <= slice => {
                return Err(RemovalError::GuestTimeout {
                    device: id.clone(),
                    after: timeout,
                });
            }
            None if last_request.elapsed() >= RENOTIFY_INTERVAL => {
                renotify(client, id);
                last_request = Instant::now();
            }
            None => {}
        }
    }
}

/// How long a guest gets to answer an unplug request before it is asked again.
///
/// A Linux guest still busy with a device's hot-add can miss the eject request that
/// follows it (seen in the lab: `device_del` a few milliseconds after `device_add`, and
/// no `DEVICE_DELETED` ever). A repeated `device_del` notifies the guest again; QEMU
/// accepts it on a running VM and refuses it, harmlessly, on a paused one.
pub const RENOTIFY_INTERVAL: Duration = Duration::from_secs(1);

fn renotify(client: &mut QmpClient, id: &QemuId) {
    match client.execute("device_del", Some(&json!({ "id": id.as_str() }))) {
        Ok(_) => tracing::debug!(device = %id, "asked the guest again to release the device"),
        Err(e) => tracing::debug!(device = %id, error = %e, "repeated device_del refused"),
    }
}

/// Whether `/machine/peripheral/<id>` exists.
pub fn present(client: &mut QmpClient, id: &QemuId) -> Result<bool, RemovalError> {
    let list = qom::list(client, qom::PERIPHERALS).map_err(|source| RemovalError::Query {
        device: id.clone(),
        source,
    })?;
    Ok(list.iter().any(|p| p.name == id.as_str()))
}

/// Deletes the plan's backends, last created first; one already gone counts as deleted.
///
/// A device can leave `/machine/peripheral` (and `device_del` then says `DeviceNotFound`)
/// before QEMU has finalized it and let go of its backends: after `system_reset` on 10.0.2,
/// `blockdev-del` answered "Node … is in use" for up to 200 ms, until the device's
/// `DEVICE_DELETED` came. So a backend that is "in use" or "busy" is retried until
/// `timeout` passes, reading events (and so letting QEMU's main loop run) in between.
pub fn delete_backends(
    client: &mut QmpClient,
    plan: &Plan,
    timeout: Duration,
) -> Result<(), RemovalError> {
    let deadline = Instant::now() + timeout;
    for backend in plan.backends.iter().rev() {
        let (command, args) = backend.delete_command();
        loop {
            match client.execute(command, Some(&args)) {
                Ok(_) => {
                    tracing::debug!(device = %plan.id, command, backend = backend.name(), "backend deleted");
                }
                Err(e) if e.failure().is_some_and(is_not_found) => {
                    tracing::debug!(device = %plan.id, backend = backend.name(), "backend already gone");
                }
                Err(e) if e.failure().is_some_and(is_busy) && Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let id = plan.id.as_str();
                    client
                        .wait_event(left.min(BUSY_RETRY), |e| e.is_device_deleted(id))
                        .map_err(|source| RemovalError::Backend {
                            device: plan.id.clone(),
                            backend: backend.name().to_owned(),
                            source,
                        })?;
                    continue;
                }
                Err(source) => {
                    return Err(RemovalError::Backend {
                        device: plan.id.clone(),
                        backend: backend.name().to_owned(),
                        source,
                    });
                }
            }
            break;
        }
    }
    Ok(())
}

/// Closes fd set `fdset` (`remove-fd`); a set that is already gone counts as closed.
pub(crate) fn close_fd_set(client: &mut QmpClient, fdset: u32) -> Result<(), QmpError> {
    match client.remove_fd(fdset) {
        Err(e) if e.failure().is_some_and(is_not_found) => Ok(()),
        other => other,
    }
}

/// How long QEMU may take to let go of a removed device's backends. QEMU-internal work (the
/// device's finalization), not the guest's, so it does not scale with the unplug timeout.
pub const BACKEND_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to let QEMU run before asking again to delete a backend still in use.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// QEMU's ways of saying a backend is still held by a device being finalized.
fn is_busy(f: &QmpFailure) -> bool {
    // `Node … is in use`, `object '…' is in use, can not be deleted`, `Chardev '…' is busy`.
    f.desc.contains("is in use") || f.desc.ends_with("is busy")
}

/// QEMU's ways of saying "no such thing" (checked on 10.0.2): `DeviceNotFound` for devices
/// and netdevs, `Failed to find node with node-name=…` for block nodes, `Chardev '…' not
/// found`, `object '…' not found` for QOM objects, and `File descriptor named
/// 'fdset-id:…' not found` for fd sets.
fn is_not_found(f: &QmpFailure) -> bool {
    f.class == "DeviceNotFound"
        || f.desc.starts_with("Failed to find node")
        || f.desc.ends_with("not found")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::Value;

    use super::*;
    use crate::block::{Disk, DiskFormat, DiskSource, virtio_blk};
    use crate::nvdimm::{Nvdimm, nvdimm};
    use crate::qmp::fake::{Action, FakeQmp};

    fn disk_plan() -> Plan {
        let disk = Disk::new(DiskSource::File("/v/d.raw".into()), DiskFormat::Raw);
        virtio_blk("vb0".parse().unwrap(), &disk, Some("hp1"), None)
    }

    fn client(fake: &FakeQmp) -> QmpClient {
        QmpClient::connect(fake.socket(), Duration::from_secs(5)).unwrap()
    }

    fn peripheral(with: bool) -> Action {
        let mut l = vec![
            json!({"name": "type", "type": "string"}),
            json!({"name": "hp1", "type": "child<pcie-root-port>"}),
        ];
        if with {
            l.push(json!({"name": "vb0", "type": "child<virtio-blk-pci>"}));
        }
        Action::Return(Value::Array(l))
    }

    #[test]
    fn waits_for_the_devices_own_event_not_its_childs_then_deletes_nodes() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_del" => vec![
                Action::Return(json!({})),
                Action::Sleep(Duration::from_millis(20)),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"path": "/machine/peripheral/vb0/virtio-backend"}),
                ),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"device": "vb0", "path": "/machine/peripheral/vb0"}),
                ),
            ],
            _ => vec![Action::Return(json!({}))],
        });
        let how = unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(5)).unwrap();
        assert_eq!(how, Departure::Event);
        assert_eq!(
            fake.commands(),
            ["device_del", "blockdev-del", "blockdev-del"]
        );
        assert_eq!(
            fake.received()[2].arguments,
            json!({"node-name": "vb0-fmt"})
        );
    }

    #[test]
    fn a_disk_passed_by_descriptor_closes_its_fd_set_after_its_nodes() {
        let closed = Arc::new(AtomicBool::new(false));
        let c2 = Arc::clone(&closed);
        let fake = FakeQmp::start(move |cmd, args| match cmd {
            "device_del" => vec![
                Action::Return(json!({})),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"device": "vb0", "path": "/machine/peripheral/vb0"}),
                ),
            ],
            "qom-list" => vec![peripheral(false)],
            // QEMU's words for a set that is not there (a retry after the first close).
            "remove-fd" if c2.swap(true, Ordering::SeqCst) => vec![Action::Error(format!(
                "File descriptor named 'fdset-id:{}' not found",
                args["fdset-id"]
            ))],
            _ => vec![Action::Return(json!({}))],
        });
        let mut plan = disk_plan();
        plan.fd_set = Some(3);
        let mut c = client(&fake);
        unplug(&mut c, &plan, Duration::from_secs(5)).unwrap();
        let commands = fake.commands();
        assert_eq!(
            commands[commands.len() - 3..],
            ["blockdev-del", "blockdev-del", "remove-fd"]
        );
        assert_eq!(
            fake.received().last().unwrap().arguments,
            json!({"fdset-id": 3})
        );
        // A retry of the whole removal finds everything gone and still succeeds.
        unplug(&mut c, &plan, Duration::from_secs(5)).unwrap();
        assert!(closed.load(Ordering::SeqCst));
    }

    #[test]
    fn falls_back_to_polling_when_the_event_never_comes() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_del" => vec![
                Action::Return(json!({})),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"path": "/machine/peripheral/vb0/virtio-backend"}),
                ),
            ],
            "qom-list" => vec![peripheral(false)],
            _ => vec![Action::Return(json!({}))],
        });
        let how = unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(5)).unwrap();
        assert_eq!(how, Departure::Vanished);
        assert_eq!(
            fake.commands(),
            ["device_del", "qom-list", "blockdev-del", "blockdev-del"]
        );
    }

    #[test]
    fn a_silent_guest_times_out_leaving_backends_and_a_retry_finishes() {
        let released = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&released);
        let fake = FakeQmp::start(move |cmd, _| match cmd {
            "device_del" if r.load(Ordering::SeqCst) => {
                vec![Action::Error("Device 'vb0' not found".into())]
            }
            "device_del" => vec![Action::Return(json!({}))],
            "qom-list" => vec![peripheral(!r.load(Ordering::SeqCst))],
            _ => vec![Action::Return(json!({}))],
        });
        let mut c = client(&fake);
        let err = unplug(&mut c, &disk_plan(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, RemovalError::GuestTimeout { .. }), "{err}");
        assert!(err.to_string().contains("retry"), "{err}");
        assert!(
            !fake.commands().contains(&"blockdev-del".to_owned()),
            "nodes deleted while in use"
        );
        released.store(true, Ordering::SeqCst);
        unplug(&mut c, &disk_plan(), Duration::from_millis(300)).unwrap();
        assert_eq!(
            fake.commands()
                .iter()
                .filter(|c| *c == "blockdev-del")
                .count(),
            2
        );
    }

    #[test]
    fn a_retry_after_a_partial_cleanup_treats_missing_backends_as_done() {
        let fake = FakeQmp::start(|cmd, args| match (cmd, args["node-name"].as_str()) {
            ("device_del", _) => vec![Action::Error("Device 'vb0' not found".into())],
            ("blockdev-del", Some("vb0-fmt")) => vec![Action::Error(
                "Failed to find node with node-name='vb0-fmt'".into(),
            )],
            _ => vec![Action::Return(json!({}))],
        });
        unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            fake.commands(),
            ["device_del", "blockdev-del", "blockdev-del"]
        );
    }

    #[test]
    fn a_backend_still_in_use_is_retried_until_qemu_lets_go() {
        let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Arc::clone(&tries);
        let fake = FakeQmp::start(move |cmd, args| match (cmd, args["node-name"].as_str()) {
            ("device_del", _) => vec![Action::Error("Device 'vb0' not found".into())],
            ("blockdev-del", Some("vb0-fmt")) if t.fetch_add(1, Ordering::SeqCst) < 2 => {
                vec![Action::Error("Node vb0-fmt is in use".into())]
            }
            _ => vec![Action::Return(json!({}))],
        });
        unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(5)).unwrap();
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        // And a node that stays in use gives up at the deadline with a retryable error.
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_del" => vec![Action::Error("Device 'vb0' not found".into())],
            "blockdev-del" => vec![Action::Error("Node vb0-fmt is in use".into())],
            _ => vec![Action::Return(json!({}))],
        });
        let err = delete_backends(&mut client(&fake), &disk_plan(), Duration::from_millis(100))
            .unwrap_err();
        assert!(
            matches!(err, RemovalError::Backend { ref backend, .. } if backend == "vb0-fmt"),
            "{err}"
        );
    }

    #[test]
    fn a_guest_that_missed_the_request_is_asked_again() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = Arc::clone(&asked);
        let fake = FakeQmp::start(move |cmd, _| match cmd {
            // The guest answers only the second request.
            "device_del" if a.fetch_add(1, Ordering::SeqCst) == 1 => vec![
                Action::Return(json!({})),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"device": "vb0", "path": "/machine/peripheral/vb0"}),
                ),
            ],
            "qom-list" => vec![peripheral(true)],
            _ => vec![Action::Return(json!({}))],
        });
        let how = unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(5)).unwrap();
        assert_eq!(how, Departure::Event);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn qemus_busy_messages_are_recognised() {
        let f = |desc: &str| QmpFailure {
            class: "GenericError".into(),
            desc: desc.into(),
        };
        assert!(is_busy(&f("Node d-fmt is in use")));
        assert!(is_busy(&f("object 'v-iofd' is in use, can not be deleted")));
        assert!(is_busy(&f("Chardev 'c' is busy")));
        assert!(!is_busy(&f("Chardev 'c' not found")));
        assert!(is_not_found(&f("object 'v-iofd' not found")));
        assert!(is_not_found(&f("Failed to find node with node-name='x'")));
    }

    #[test]
    fn a_guest_error_event_is_reported() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_del" => vec![
                Action::Return(json!({})),
                Action::Event(
                    "DEVICE_UNPLUG_GUEST_ERROR",
                    json!({"device": "vb0", "path": "/machine/peripheral/vb0"}),
                ),
            ],
            _ => vec![Action::Return(json!({}))],
        });
        let err = unplug(&mut client(&fake), &disk_plan(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, RemovalError::GuestRefused { .. }), "{err}");
    }

    #[test]
    fn a_stale_queued_event_does_not_end_the_wait() {
        // The event arrives with the reply but the device is still present: keep waiting.
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "device_del" => vec![
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"device": "vb0", "path": "/machine/peripheral/vb0"}),
                ),
                Action::Return(json!({})),
            ],
            "qom-list" => vec![peripheral(true)],
            _ => vec![Action::Return(json!({}))],
        });
        let err = unplug(&mut client(&fake), &disk_plan(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, RemovalError::GuestTimeout { .. }), "{err}");
    }

    #[test]
    fn nvdimm_detach_is_refused_without_asking_qemu() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({}))]);
        let dimm = Nvdimm {
            path: "/v/pm".into(),
            size: 1 << 20,
            pmem: false,
            read_only: false,
        };
        let err = unplug(
            &mut client(&fake),
            &nvdimm("nv0".parse().unwrap(), &dimm),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, RemovalError::NotRemovable { .. }), "{err}");
        assert!(err.to_string().contains("nvdimm"), "{err}");
        assert!(fake.commands().is_empty());
    }
}
