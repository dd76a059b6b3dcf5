//! The manager's books: devices by id and by identity, and the allocators.
//!
//! Every field lives behind the manager's one lock; the methods here are plain `&mut self`
//! code with no locking and no hypervisor calls.

use std::collections::HashMap;

use plugboard_vfio::RefCount;
use serde::{Deserialize, Serialize};

use crate::config::ManagerConfig;
use crate::error::DeviceError;
use crate::hypervisor::{GuestView, PlugRequest};
use crate::id::DeviceId;
use crate::kind::{DeviceIdentity, DeviceSpec};
use crate::plan::Allocators;

/// Everything the manager knows about one device: a snapshot for readers, and the unit of
/// saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device's id.
    pub id: DeviceId,
    /// What was asked for.
    pub spec: DeviceSpec,
    /// Users of the device (`new_device` adds one, `remove_device` drops one).
    pub references: RefCount,
    /// Plugs (`attach` adds one, `detach` drops one).
    pub attachments: RefCount,
    /// While attached (and not generic): what the hypervisor was given, with the block index
    /// and root ports it holds.
    pub plugged: Option<PlugRequest>,
    /// While attached (and not generic): what the guest sees.
    pub guest: Option<GuestView>,
    /// A plug of this device failed and undoing it did not finish: what the VM may still
    /// hold, whose allocations stay taken until [`crate::DeviceManager::clean_up`] (or the
    /// next attach, which cleans up first) removes it. Absent from JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_cleanup: Option<Leftover>,
    /// A cold-plugged device whose last detach the running VM could not carry out (QEMU's
    /// root bus has no hotplug): not attached, but still in the VM until it stops, so
    /// `plugged`, `guest` and its allocations stay; attaching it again only counts, and its
    /// last reference cannot be removed. Absent from JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resident: bool,
}

/// What a plug whose undo did not finish may have left in the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftover {
    /// The request that was being plugged: removing it (every part that is still there)
    /// is the cleanup; its block index and root ports stay taken until then.
    pub request: PlugRequest,
    /// Whether the failed attach's reference stayed with the device so that it is not
    /// forgotten ([`crate::DeviceManager::attach_new`]); the cleanup drops it.
    pub holds_reference: bool,
}

/// One device in the books.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) state: DeviceState,
    /// A plug or unplug of this device is with the hypervisor; others wait for it.
    pub(crate) busy: bool,
}

/// The books.
#[derive(Debug)]
pub(crate) struct Books {
    pub(crate) devices: HashMap<DeviceId, Entry>,
    pub(crate) by_identity: HashMap<DeviceIdentity, DeviceId>,
    pub(crate) next_id: u64,
    pub(crate) alloc: Allocators,
}

impl Books {
    pub(crate) fn new(config: ManagerConfig) -> Self {
        Self {
            devices: HashMap::new(),
            by_identity: HashMap::new(),
            next_id: 0,
            alloc: Allocators::new(config),
        }
    }

    /// The entry of `id`; [`DeviceError::NotFound`] when there is none.
    pub(crate) fn entry_mut(&mut self, id: DeviceId) -> Result<&mut Entry, DeviceError> {
        self.devices
            .get_mut(&id)
            .ok_or(DeviceError::NotFound { id })
    }

    pub(crate) fn set_busy(&mut self, id: DeviceId, busy: bool) {
        if let Some(entry) = self.devices.get_mut(&id) {
            entry.busy = busy;
        }
    }

    /// Whether a plug or unplug of any device is with the hypervisor.
    pub(crate) fn any_busy(&self) -> bool {
        self.devices.values().any(|e| e.busy)
    }
}
