//! A VM's hypervisor as the service holds it: a closed set of backends behind
//! plugboard-devices' `Hypervisor` trait, and what each can report about the devices it
//! really holds (for reconciliation after a restart).

use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "test-util"))]
use std::sync::Arc;

use std::os::fd::AsFd;

use plugboard_devices::{GuestView, Hypervisor, HypervisorError, HypervisorKind, PlugRequest};
use plugboard_qemu::{Inspection, QemuConfig, QemuError, QemuHypervisor};
use serde::{Deserialize, Serialize};

use crate::open::OpenedFile;
use crate::service::ServiceConfig;

/// How to reach a VM's hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Endpoint {
    /// A running QEMU, through its QMP socket.
    Qemu {
        /// The QMP socket (`-qmp unix:PATH,server=on,wait=off`).
        qmp_socket: PathBuf,
    },
    /// A VM in memory (tests and load tests only).
    #[cfg(any(test, feature = "test-util"))]
    Memory,
}

impl Endpoint {
    /// The socket the hypervisor is reached at, for messages (`(memory)` for a VM in
    /// memory).
    pub fn socket(&self) -> PathBuf {
        match self {
            Self::Qemu { qmp_socket } => qmp_socket.clone(),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory => PathBuf::from("(memory)"),
        }
    }
}

/// A connected hypervisor.
#[derive(Debug)]
pub enum Backend {
    /// QEMU over QMP.
    Qemu(Box<QemuHypervisor>),
    /// plugboard-devices' in-memory hypervisor.
    #[cfg(any(test, feature = "test-util"))]
    Memory(Arc<plugboard_devices::test_util::InMemoryHypervisor>),
}

impl Backend {
    /// Connects to `endpoint`. For QEMU, `ports` is the root-port pool recorded at
    /// registration (empty: discover the free ports now); functions in iommufd mode are
    /// handed over by descriptor, opened under the service's `/dev` root.
    pub(crate) fn connect(
        endpoint: &Endpoint,
        ports: &[String],
        config: &ServiceConfig,
    ) -> Result<Self, QemuError> {
        match endpoint {
            Endpoint::Qemu { qmp_socket } => {
                let config = QemuConfig {
                    root_ports: ports.to_vec(),
                    unplug_timeout: config.unplug_timeout,
                    vfio_fds: Some(config.host.dev_root.clone()),
                    ..QemuConfig::default()
                };
                QemuHypervisor::connect(qmp_socket, config).map(|q| Self::Qemu(Box::new(q)))
            }
            #[cfg(any(test, feature = "test-util"))]
            Endpoint::Memory => Ok(Self::Memory(Arc::new(
                plugboard_devices::test_util::InMemoryHypervisor::new().without_call_log(),
            ))),
        }
    }

    /// The root ports devices may take, in the manager's order.
    pub(crate) fn port_pool(&self) -> Vec<String> {
        match self {
            Self::Qemu(q) => q.port_pool(),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(_) => (0..8).map(|n| format!("rp{n}")).collect(),
        }
    }

    /// Hands a file opened for a caller to the hypervisor (QEMU: `add-fd` into a new fd
    /// set) and returns the set's id, for the block device's `BlockSpec::passed_fd`. The
    /// device's removal closes the set; [`Self::remove_fd`] closes one no plug took.
    pub(crate) fn add_fd(&self, file: OpenedFile) -> Result<u32, QemuError> {
        match self {
            Self::Qemu(q) => {
                let added = q.add_fd(file.file().as_fd(), &fd_note(file.path()));
                // QEMU holds its own copy in the set now; ours closes here.
                drop(file);
                added
            }
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => Ok(m.add_fd(file.into_file())),
        }
    }

    /// Closes fd set `fdset`; one already gone counts as closed.
    pub(crate) fn remove_fd(&self, fdset: u32) -> Result<(), QemuError> {
        match self {
            Self::Qemu(q) => q.remove_fd(fdset),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => {
                m.remove_fd(fdset);
                Ok(())
            }
        }
    }

    /// Deletes what the VM still holds of a device dropped from the books: its backends,
    /// and the fd set its file was handed over in (`fd_file`: the path it was opened from)
    /// while QEMU still holds it as ours. Returns the devices of it still present, left
    /// alone.
    pub(crate) fn clear_leftovers(
        &self,
        request: &PlugRequest,
        fd_file: Option<&Path>,
    ) -> Result<Vec<String>, QemuError> {
        match self {
            Self::Qemu(q) => q.clear_leftovers(request, fd_file.map(fd_note).as_deref()),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(_) => Ok(Vec::new()),
        }
    }

    /// What the VM really holds of `requests`, and the devices it holds that are named like
    /// ours but belong to none of them.
    pub(crate) fn inspect(&self, requests: &[&PlugRequest]) -> Result<Inspection, QemuError> {
        match self {
            Self::Qemu(q) => q.inspect(requests),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => Ok(Inspection {
                held: requests.iter().map(|r| m.is_plugged(r.device)).collect(),
                strays: Vec::new(),
            }),
        }
    }
}

/// The note (QEMU's `opaque`) an fd set handed over for `path` carries, which tells our
/// sets from anyone else's.
fn fd_note(path: &Path) -> String {
    format!("plugboard: {}", path.display())
}

impl Hypervisor for Backend {
    fn kind(&self) -> HypervisorKind {
        match self {
            Self::Qemu(q) => q.kind(),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => m.kind(),
        }
    }

    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        match self {
            Self::Qemu(q) => q.hotplug_add(request),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => m.hotplug_add(request),
        }
    }

    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
        match self {
            Self::Qemu(q) => q.hotplug_remove(request),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => m.hotplug_remove(request),
        }
    }

    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        match self {
            Self::Qemu(q) => q.coldplug(request),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => m.coldplug(request),
        }
    }

    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        match self {
            Self::Qemu(q) => q.guest_view(request),
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => m.guest_view(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn endpoints_round_trip_as_tagged_json() {
        let e = Endpoint::Qemu {
            qmp_socket: "/run/vm/qmp.sock".into(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            json!({"kind": "qemu", "qmp_socket": "/run/vm/qmp.sock"})
        );
        assert_eq!(serde_json::from_value::<Endpoint>(json).unwrap(), e);
        serde_json::from_value::<Endpoint>(json!({"kind": "xen"})).unwrap_err();
    }
}
