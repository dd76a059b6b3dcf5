//! Cleaning up after a plug the hypervisor could not undo, and reading again what the
//! guest sees.
//!
//! A plug that fails with [`HypervisorError::Incomplete`] leaves the device in the books as
//! needing cleanup ([`crate::DeviceState::needs_cleanup`]), its allocations taken, because
//! the VM may still hold part of it. [`DeviceManager::clean_up`] (or the device's next
//! attach, in `attach.rs`) removes the failed request from the VM, frees the allocations
//! and drops the reference the failed attach kept. [`DeviceManager::refresh_guest_views`]
//! asks the hypervisor again what the guest sees: a device cold-plugged before the VM
//! started gets its PCI path once the VM runs.

use std::sync::MutexGuard;

use crate::attach::{Busy, OnFailure};
use crate::error::DeviceError;
use crate::hypervisor::{Hypervisor, HypervisorError, PlugRequest};
use crate::id::DeviceId;
use crate::manager::{DeviceManager, drop_reference};
use crate::state::Books;

impl<H: Hypervisor> DeviceManager<H> {
    /// Removes what a failed plug of `id` left in the VM ([`crate::DeviceState::needs_cleanup`]):
    /// `hotplug_remove` of the request that failed, then its block index and root ports are
    /// freed, and the reference the failed attach kept is dropped (the device goes if it was
    /// the last). Answers whether there was anything to clean up.
    ///
    /// # Errors
    /// [`DeviceError::NotFound`]; [`DeviceError::Cleanup`] when the hypervisor fails (the
    /// device still needs cleanup).
    pub fn clean_up(&self, id: DeviceId) -> Result<bool, DeviceError> {
        let books = self.lock_idle(id)?;
        let (books, result) = self.clean_up_locked(books, id);
        drop(books);
        self.idle.notify_all();
        result
    }

    /// Asks the hypervisor again what the guest sees of every plugged device, and books it:
    /// a device cold-plugged before the VM started gets its PCI path once the VM runs. Call
    /// it after the VM has started (for QEMU, once its QMP session is open).
    ///
    /// # Errors
    /// [`DeviceError::GuestView`] for the first device the hypervisor could not answer for;
    /// the devices before it are updated.
    pub fn refresh_guest_views(&self) -> Result<(), DeviceError> {
        let plugged: Vec<PlugRequest> = self
            .devices()
            .into_iter()
            .filter_map(|d| d.plugged)
            .collect();
        for request in plugged {
            let id = request.device;
            let view = self
                .hypervisor
                .guest_view(&request)
                .map_err(|source| DeviceError::GuestView { id, source })?;
            let mut books = self.lock();
            // Booked only if the device still holds this very plug.
            if let Some(entry) = books.devices.get_mut(&id)
                && entry.state.plugged.as_ref() == Some(&request)
            {
                entry.state.guest = Some(view);
            }
        }
        Ok(())
    }

    /// The devices whose failed plug still needs cleanup, by id.
    pub fn needing_cleanup(&self) -> Vec<DeviceId> {
        let books = self.lock();
        let mut ids: Vec<DeviceId> = books
            .devices
            .values()
            .filter(|e| e.state.needs_cleanup.is_some())
            .map(|e| e.state.id)
            .collect();
        drop(books);
        ids.sort();
        ids
    }

    /// [`Self::clean_up`] of `id`, idle in the locked `books`; answers the books locked
    /// again (the caller wakes the waiters).
    pub(crate) fn clean_up_locked<'m>(
        &'m self,
        mut books: MutexGuard<'m, Books>,
        id: DeviceId,
    ) -> (MutexGuard<'m, Books>, Result<bool, DeviceError>) {
        let Some(leftover) = books
            .devices
            .get(&id)
            .and_then(|e| e.state.needs_cleanup.clone())
        else {
            return (books, Ok(false));
        };
        books.set_busy(id, true);
        drop(books);
        let busy = Busy {
            manager: self,
            id,
            planned: None,
            on_failure: OnFailure::Keep,
        };
        let result = match self.hypervisor.hotplug_remove(&leftover.request) {
            // Nothing of it is in the VM: clean already.
            Ok(()) | Err(HypervisorError::NotPlugged { .. }) => Ok(()),
            Err(source) => Err(source),
        };
        let mut books = busy.finish();
        if let Err(source) = result {
            tracing::warn!(device = %id, error = %source, "cleaning up a failed plug failed; the device still needs cleanup");
            return (books, Err(DeviceError::Cleanup { id, source }));
        }
        if let Err(e) = books.alloc.release(&leftover.request) {
            tracing::error!(device = %id, error = %e, "freeing the allocations of a cleaned-up plug failed");
        }
        if let Some(entry) = books.devices.get_mut(&id) {
            entry.state.needs_cleanup = None;
        }
        if leftover.holds_reference
            && let Err(e) = drop_reference(&mut books, id)
        {
            tracing::error!(device = %id, error = %e, "dropping the reference a failed attach kept failed");
        }
        tracing::info!(device = %id, "what a failed plug left in the VM is removed; its allocations are free");
        (books, Ok(true))
    }
}
