//! Files we open and hand QEMU by name (`getfd`) before a plug, so that QEMU need not open
//! them itself: a VFIO function's cdev, and `/dev/iommu` for the VM's shared iommufd object.
//!
//! QEMU takes a named descriptor out of the monitor's table when a device or object takes
//! it (`monitor_fd_param`), and owns it from then on. A name nothing took is closed again
//! (`closefd`) when the plug fails, so no descriptor stays behind in QEMU.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::id::{VM_IOMMUFD, VM_IOMMUFD_FD};
use crate::plan::FdSource;
use crate::qmp::{QmpClient, QmpError};

/// Why a file could not be handed to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum PassFdError {
    /// The file could not be found or opened.
    #[error("cannot open {} to hand it to QEMU", path.display())]
    Open {
        /// The file (for a VFIO cdev whose node is unknown, its sysfs `vfio-dev` directory).
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A QMP step (`getfd`, `object-add`, `qom-list`) failed.
    #[error("{step} failed")]
    Qmp {
        /// The command and object.
        step: String,
        /// QEMU's answer or the transport error (boxed: it is large).
        #[source]
        source: Box<QmpError>,
    },
}

impl PassFdError {
    /// The QMP error, if a QMP step is what failed.
    pub fn qmp(&self) -> Option<&QmpError> {
        match self {
            Self::Qmp { source, .. } => Some(source),
            Self::Open { .. } => None,
        }
    }
}

/// Opens `source` read-write (close-on-exec, as Rust opens every file).
pub(crate) fn open(source: &FdSource) -> Result<File, PassFdError> {
    let path = match source {
        FdSource::VfioCdev {
            sysfs_path,
            dev_root,
        } => cdev_node(sysfs_path, dev_root)?,
    };
    open_rw(&path)
}

/// `<dev_root>/vfio/devices/vfioN` for the function at `sysfs_path` (its `vfio-dev/vfioN`).
fn cdev_node(sysfs_path: &Path, dev_root: &Path) -> Result<PathBuf, PassFdError> {
    let dir = sysfs_path.join("vfio-dev");
    let error = |source| PassFdError::Open {
        path: dir.clone(),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(error)? {
        let name = entry.map_err(error)?.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("vfio")) {
            return Ok(dev_root.join("vfio/devices").join(name));
        }
    }
    Err(error(io::Error::new(
        io::ErrorKind::NotFound,
        "no vfioN cdev: is the function on vfio-pci, and the kernel built with VFIO_DEVICE_CDEV?",
    )))
}

fn open_rw(path: &Path) -> Result<File, PassFdError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| PassFdError::Open {
            path: path.to_owned(),
            source,
        })
}

fn qmp(step: String) -> impl FnOnce(QmpError) -> PassFdError {
    move |source| PassFdError::Qmp {
        step,
        source: Box::new(source),
    }
}

/// Hands `file` to QEMU as `name`.
pub(crate) fn send(client: &mut QmpClient, name: &str, file: &File) -> Result<(), PassFdError> {
    client
        .send_fd(name, file.as_fd())
        .map_err(qmp(format!("getfd {name}")))
}

/// Closes the descriptors QEMU holds under `names` that nothing took; a name QEMU no
/// longer has was taken, and counts as done.
pub(crate) fn close_untaken(client: &mut QmpClient, names: &[String]) {
    for name in names {
        match client.close_fd(name) {
            Ok(()) => tracing::debug!(fd = name, "closed a descriptor no device took"),
            Err(e) if e.failure().is_some() => {}
            Err(e) => {
                tracing::warn!(fd = name, error = %e, "cannot close a descriptor no device took; QEMU keeps it until it exits");
            }
        }
    }
}

/// Creates the VM's shared iommufd object from `iommu` (`/dev/iommu`, passed by
/// descriptor) unless it exists.
pub(crate) fn ensure_vm_iommufd(client: &mut QmpClient, iommu: &Path) -> Result<(), PassFdError> {
    let objects = client
        .execute("qom-list", Some(&json!({"path": "/objects"})))
        .map_err(qmp("qom-list /objects".to_owned()))?;
    let exists = objects
        .as_array()
        .is_some_and(|list| list.iter().any(|o| o["name"] == VM_IOMMUFD));
    if exists {
        return Ok(());
    }
    let file = open_rw(iommu)?;
    send(client, VM_IOMMUFD_FD, &file)?;
    let args: Value = json!({"qom-type": "iommufd", "id": VM_IOMMUFD, "fd": VM_IOMMUFD_FD});
    if let Err(e) = client.execute("object-add", Some(&args)) {
        close_untaken(client, &[VM_IOMMUFD_FD.to_owned()]);
        return Err(qmp(format!("object-add {VM_IOMMUFD}"))(e));
    }
    tracing::info!(
        object = VM_IOMMUFD,
        iommu = %iommu.display(),
        "the VM's iommufd object created by descriptor; it lives as long as QEMU"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plugboard_devices::VfioBackend;

    use super::*;
    use crate::hotplug::{HotplugError, VmFacts, plug};
    use crate::plan::Plan;
    use crate::qmp::fake::{Action, FakeQmp, Received};
    use crate::requests::{VmLayout, plans};

    const VM: VmFacts = VmFacts {
        memory_shared: false,
    };

    /// A `/dev` with `/dev/iommu` and the cdevs `vfio3` and `vfio4`, and the sysfs
    /// directories of two functions pointing at them, as plain files and directories.
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let dev = dir.path().join("dev");
            std::fs::create_dir_all(dev.join("vfio/devices")).unwrap();
            std::fs::write(dev.join("iommu"), "").unwrap();
            for (f, n) in [(0, 3), (1, 4)] {
                std::fs::write(dev.join(format!("vfio/devices/vfio{n}")), "").unwrap();
                let sys = dir
                    .path()
                    .join(format!("sys/0000:65:00.{f}/vfio-dev/vfio{n}"));
                std::fs::create_dir_all(sys).unwrap();
            }
            Self { dir }
        }

        fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }

        /// The pair's plans in iommufd mode with descriptors, its functions' sysfs paths
        /// moved into this host.
        fn plans(&self) -> Vec<Plan> {
            let mut request = crate::test_requests::vfio_pair(7, VfioBackend::Cdev { index: 3 });
            if let plugboard_devices::Plug::Vfio(v) = &mut request.plug {
                for (f, function) in v.functions.iter_mut().enumerate() {
                    function.function.sysfs_path =
                        self.dir.path().join(format!("sys/0000:65:00.{f}"));
                }
            }
            let ports = ["hp0".to_owned(), "hp1".to_owned()];
            let dev = self.dev();
            let layout = VmLayout {
                ports: &ports,
                scsi_controller: None,
                portless_ok: false,
                for_removal: false,
                vfio_fds: Some(&dev),
            };
            plans(&request, layout).unwrap()
        }
    }

    fn client(fake: &FakeQmp) -> QmpClient {
        QmpClient::connect(fake.socket(), Duration::from_secs(5)).unwrap()
    }

    /// A fake QEMU whose `/objects` holds the VM's iommufd once it was added, and whose
    /// `device_add` fails for ids in `refuse`.
    fn qemu(refuse: &'static [&'static str]) -> FakeQmp {
        let mut created = false;
        FakeQmp::start(move |cmd, args| match cmd {
            "qom-list" if created => vec![Action::Return(
                json!([{"name": VM_IOMMUFD, "type": "child<iommufd>"}]),
            )],
            "qom-list" => vec![Action::Return(json!([]))],
            "object-add" => {
                created = true;
                vec![Action::Return(json!({}))]
            }
            "device_add" if refuse.iter().any(|id| args["id"] == *id) => {
                vec![Action::Error("vfio: device busy".into())]
            }
            _ => vec![Action::Return(json!({}))],
        })
    }

    fn steps(got: &[Received]) -> Vec<String> {
        got.iter()
            .filter(|r| r.command != "qmp_capabilities")
            .map(|r| match r.command.as_str() {
                "getfd" | "closefd" => format!("{} {}", r.command, r.arguments["fdname"]),
                other => other.to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_cdev_function_goes_in_by_descriptor_on_the_vms_one_iommufd() {
        let host = Host::new();
        let plans = host.plans();
        for plan in &plans {
            assert_eq!(plan.device["iommufd"], VM_IOMMUFD);
            assert_eq!(plan.device["fd"], plan.id.fd_name());
            assert!(plan.device.get("host").is_none(), "{}", plan.device);
            assert!(plan.backends.is_empty());
            assert_eq!(plan.vm_iommufd, Some(host.dev().join("iommu")));
        }
        let fake = qemu(&[]);
        let mut c = client(&fake);
        for plan in &plans {
            plug(&mut c, plan, VM).unwrap();
        }
        let got = fake.received();
        let (first, second) = (plans[0].id.fd_name(), plans[1].id.fd_name());
        assert_eq!(
            steps(&got),
            [
                "qom-list".to_owned(),
                format!("getfd \"{VM_IOMMUFD_FD}\""),
                "object-add".to_owned(),
                format!("getfd \"{first}\""),
                "device_add".to_owned(),
                // The object exists now: the second function only sends its cdev.
                "qom-list".to_owned(),
                format!("getfd \"{second}\""),
                "device_add".to_owned(),
            ]
        );
        assert!(
            got.iter()
                .filter(|r| r.command == "getfd")
                .all(|r| r.fds == 1)
        );
        let object = got.iter().find(|r| r.command == "object-add").unwrap();
        assert_eq!(
            object.arguments,
            json!({"qom-type": "iommufd", "id": VM_IOMMUFD, "fd": VM_IOMMUFD_FD})
        );
    }

    #[test]
    fn a_refused_device_add_closes_the_descriptor_it_did_not_take() {
        let host = Host::new();
        let plans = host.plans();
        let refused: &'static str = Box::leak(plans[0].id.to_string().into_boxed_str());
        let fake = qemu(Box::leak(Box::new([refused])));
        let err = plug(&mut client(&fake), &plans[0], VM).unwrap_err();
        assert!(matches!(err, HotplugError::Step { .. }), "{err}");
        let name = plans[0].id.fd_name();
        assert_eq!(
            steps(&fake.received()).last().unwrap(),
            &format!("closefd \"{name}\"")
        );
    }

    #[test]
    fn a_function_without_a_cdev_leaves_qemu_untouched_and_names_the_directory() {
        let host = Host::new();
        let plans = host.plans();
        std::fs::remove_dir_all(host.dir.path().join("sys/0000:65:00.0/vfio-dev")).unwrap();
        let fake = qemu(&[]);
        let err = plug(&mut client(&fake), &plans[0], VM).unwrap_err();
        let HotplugError::PassFd {
            source: PassFdError::Open { path, .. },
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert!(
            path.ends_with("0000:65:00.0/vfio-dev"),
            "{}",
            path.display()
        );
        assert!(fake.commands().is_empty(), "{:?}", fake.commands());
    }

    #[test]
    fn legacy_functions_and_coldplug_leave_the_opening_to_qemu() {
        let host = Host::new();
        let dev = host.dev();
        let ports = ["hp0".to_owned(), "hp1".to_owned()];
        let layout = VmLayout {
            ports: &ports,
            scsi_controller: None,
            portless_ok: false,
            for_removal: false,
            vfio_fds: Some(&dev),
        };
        let legacy = crate::test_requests::vfio_pair(7, VfioBackend::Group { group: 9 });
        for plan in plans(&legacy, layout).unwrap() {
            assert!(plan.passed_fds.is_empty() && plan.vm_iommufd.is_none());
            assert!(plan.device.get("fd").is_none() && plan.device.get("host").is_some());
        }
        let cdev = crate::test_requests::vfio_pair(7, VfioBackend::Cdev { index: 3 });
        let cold = VmLayout {
            vfio_fds: None,
            ..layout
        };
        let p = plans(&cdev, cold).unwrap();
        assert!(p.iter().all(|p| p.passed_fds.is_empty()));
        assert_eq!(
            p[0].backends.len(),
            1,
            "the first function owns an iommufd object"
        );
    }
}
