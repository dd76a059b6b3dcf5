//! Plugboard's QEMU backend: a QMP client of our own and the `Hypervisor` implementation
//! that plugboard-devices attaches devices through.
//!
//! QEMU is driven over QMP, its JSON monitor. A device is hot-plugged by creating its
//! backends (block nodes with `blockdev-add`, a socket chardev for vhost-user, a netdev, an
//! `iommufd` or memory object) and then the guest-visible device with `device_add`, into a
//! free pre-created `pcie-root-port`. Removal is `device_del`, a wait for the guest to let go
//! (`DEVICE_DELETED`, or the device gone from QOM), then deleting the backends.
//!
//! Each device family turns its description into a [`Plan`] (backends + device). A plan is
//! executed over QMP ([`QemuHypervisor::plug`], undone step by step on failure), removed
//! ([`QemuHypervisor::unplug`]), or rendered as command-line arguments for a VM that has not
//! started yet ([`cmdline::plan_args`]), so hotplug and coldplug cannot disagree.
//!
//! [`QemuHypervisor`] implements `plugboard_devices::Hypervisor`: the device manager's
//! requests become plans ([`plans`]) and the manager's root port `N` is the `N`-th port of
//! the VM's pool ([`QemuHypervisor::port_pool`]). The names QEMU's objects get are made,
//! and read back, in one place ([`QemuId::for_device`], [`OurName`]), so
//! [`QemuHypervisor::inspect`] can say which requests a VM really holds and which devices
//! of ours no request accounts for.

mod backend_socket;
pub mod block;
pub mod cmdline;
mod device_plug;
#[cfg(any(test, feature = "test-util"))]
pub mod fake_vhost_user;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hotplug;
mod hypervisor;
mod id;
mod inspect;
pub mod nvdimm;
mod passed_fds;
mod plan;
mod ports;
pub mod qmp;
mod qom;
mod removal;
mod requests;
pub mod scsi;
#[cfg(any(test, feature = "test-util"))]
mod sys;
#[cfg(test)]
mod test_requests;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod vfio;
pub mod vhost_user;

pub use backend_socket::{BackendSocketError, check_listening};
pub use hotplug::{HotplugError, Rollback, VmFacts};
#[cfg(any(test, feature = "test-util"))]
pub use hypervisor::StandIn;
pub use hypervisor::{DEFAULT_UNPLUG_TIMEOUT, QemuConfig, QemuError, QemuHypervisor};
pub use id::{BackendRole, DeviceRole, OurName, QemuId, QemuIdError, VM_IOMMUFD, VM_IOMMUFD_FD};
pub use inspect::Inspection;
pub use passed_fds::PassFdError;
pub use plan::{BackendObject, FdSource, PassedFd, Plan, Requirements};
pub use ports::{PcieRootPort, PortError};
pub use removal::{Departure, POLL_INTERVAL, RemovalError};
pub use requests::{RequestError, VmLayout, plans};
