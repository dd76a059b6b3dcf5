//! The per-VM settings of the device manager's allocators.
//!
//! A module of its own, below the manager, the planner and the books, so that all three can
//! read it without importing each other.

use serde::{Deserialize, Serialize};

/// The per-VM settings of the allocators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerConfig {
    /// PCIe root ports the VM was started with (`rp0`…); 0 when it has none and the
    /// hypervisor places PCI devices itself.
    pub root_ports: u32,
    /// Drives the hypervisor plugged itself before ours (a VM root disk is `vda`): added to
    /// the block index to make the drive name, without changing the index.
    pub name_offset: u32,
}
