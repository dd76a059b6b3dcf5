//! Plugboard's QEMU backend: a QMP client of our own and the `Hypervisor` implementation
//! that plugboard-devices attaches devices through.
//!
//! QEMU is driven over QMP, its JSON monitor: a device is hot-plugged by creating its
//! backend (block nodes with `blockdev-add`, a socket chardev for vhost-user, a netdev, an
//! `iommufd` object) and then the guest-visible device with `device_add` into a free
//! pre-created `pcie-root-port`. Removal is `device_del`, a wait for the guest to let go
//! (`DEVICE_DELETED`), then deleting the backends. The same device descriptions also render
//! as command-line arguments for a VM that has not started yet (coldplug).

pub mod qmp;
