//! A VM's hypervisor as the service holds it: a closed set of backends behind
//! plugboard-devices' `Hypervisor` trait, and what each can report about the devices it
//! really holds (for reconciliation after a restart).

use std::collections::BTreeSet;
use std::path::PathBuf;
#[cfg(any(test, feature = "test-util"))]
use std::sync::Arc;
use std::time::Duration;

use plugboard_devices::{GuestView, Hypervisor, HypervisorError, HypervisorKind, PlugRequest};
use plugboard_qemu::{QemuConfig, QemuError, QemuHypervisor, VmLayout};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    pub(crate) fn socket(&self) -> PathBuf {
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
    /// registration (empty: discover the free ports now).
    pub(crate) fn connect(
        endpoint: &Endpoint,
        ports: &[String],
        unplug_timeout: Duration,
    ) -> Result<Self, QemuError> {
        match endpoint {
            Endpoint::Qemu { qmp_socket } => {
                let config = QemuConfig {
                    root_ports: ports.to_vec(),
                    unplug_timeout,
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

    /// What the VM really holds of `requests`, and the objects it holds that look like
    /// ours (`drive-…`, `vfio-…`) but belong to none of them.
    pub(crate) fn inspect(&self, requests: &[&PlugRequest]) -> Result<Inspection, QemuError> {
        match self {
            Self::Qemu(q) => {
                let present = qemu_device_ids(q)?;
                let pool = q.port_pool();
                let layout = VmLayout {
                    ports: &pool,
                    scsi_controller: present.scsi_controller.as_deref(),
                    portless_ok: true,
                    for_removal: true,
                };
                let mut known = BTreeSet::new();
                let mut held = Vec::with_capacity(requests.len());
                for r in requests {
                    let ids: Vec<String> = plugboard_qemu::plans(r, layout)
                        .map(|plans| plans.iter().map(|p| p.id.as_str().to_owned()).collect())
                        .unwrap_or_default();
                    held.push(!ids.is_empty() && ids.iter().all(|id| present.ids.contains(id)));
                    known.extend(ids);
                }
                let strays = present
                    .ids
                    .into_iter()
                    .filter(|id| is_our_name(id) && !known.contains(id))
                    .collect();
                Ok(Inspection { held, strays })
            }
            #[cfg(any(test, feature = "test-util"))]
            Self::Memory(m) => Ok(Inspection {
                held: requests.iter().map(|r| m.is_plugged(r.device)).collect(),
                strays: Vec::new(),
            }),
        }
    }
}

/// What [`Backend::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inspection {
    /// Per request, in order: whether the VM holds all of its objects.
    pub(crate) held: Vec<bool>,
    /// Ids of ours the VM holds that no request accounts for.
    pub(crate) strays: Vec<String>,
}

/// Names plugboard-devices gives hypervisor objects: `<prefix>-<16 hex digits>`.
fn is_our_name(id: &str) -> bool {
    ["drive-", "blk-", "scsi-", "net-", "fs-", "vfio-"]
        .iter()
        .any(|p| id.starts_with(p))
        && id
            .rsplit('-')
            .next()
            .is_some_and(|tail| tail.len() == 16 && tail.bytes().all(|b| b.is_ascii_hexdigit()))
}

struct Present {
    ids: BTreeSet<String>,
    scsi_controller: Option<String>,
}

/// The ids of `/machine/peripheral` (every device QEMU holds with an id).
fn qemu_device_ids(q: &QemuHypervisor) -> Result<Present, QemuError> {
    let list = q
        .with_client(|c| c.execute("qom-list", Some(&json!({"path": "/machine/peripheral"}))))?
        .map_err(|source| QemuError::Query {
            what: "qom-list /machine/peripheral",
            source,
        })?;
    let entries: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("name").and_then(Value::as_str)?.to_owned(),
                p.get("type").and_then(Value::as_str)?.to_owned(),
            ))
        })
        .filter(|(_, t)| t.starts_with("child<"))
        .collect();
    let mut controllers: Vec<&String> = entries
        .iter()
        .filter(|(_, t)| t == "child<virtio-scsi-pci>")
        .map(|(n, _)| n)
        .collect();
    controllers.sort();
    let scsi_controller = controllers.first().map(|s| (*s).clone());
    Ok(Present {
        ids: entries.into_iter().map(|(n, _)| n).collect(),
        scsi_controller,
    })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_names_are_recognised() {
        assert!(is_our_name("drive-000000000000002a"));
        assert!(is_our_name("vfio-0-000000000000002a"));
        assert!(!is_our_name("drive-root"));
        assert!(!is_our_name("hp1"));
        assert!(!is_our_name("scsi0"));
    }

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
