//! Best-effort teardown: detach every attached device, going on past failures.
//!
//! Kata's sandbox teardown returned at the first unplug error and left every later device
//! plugged (runtime #2246). [`DeviceManager::detach_all`] tries every device, detaches each
//! down to zero, and reports every failure together; a device that failed stays attached
//! (with its count as before the failing detach) so a retry can finish the job.

use plugboard_vfio::Released;

use crate::error::DeviceError;
use crate::hypervisor::Hypervisor;
use crate::id::DeviceId;
use crate::manager::DeviceManager;

/// The devices [`DeviceManager::detach_all`] could not detach, each with its error.
#[derive(Debug, thiserror::Error)]
#[error("{} device(s) could not be detached", failures.len())]
pub struct TeardownError {
    /// Each device that stays attached, with why.
    pub failures: Vec<(DeviceId, DeviceError)>,
}

impl<H: Hypervisor> DeviceManager<H> {
    /// Detaches every attached device completely, newest first (the reverse of creation).
    ///
    /// # Errors
    /// [`TeardownError`] listing every device that stays attached; all others are detached.
    pub fn detach_all(&self) -> Result<(), TeardownError> {
        let mut attached: Vec<DeviceId> = self
            .devices()
            .into_iter()
            .filter(|d| !d.attachments.is_zero())
            .map(|d| d.id)
            .collect();
        attached.reverse();
        let mut failures = Vec::new();
        for id in attached {
            loop {
                match self.detach(id) {
                    Ok(Released::StillUsed) => {}
                    // Detached, or gone/detached meanwhile by another caller: done.
                    Ok(Released::Last)
                    | Err(DeviceError::NotAttached { .. } | DeviceError::NotFound { .. }) => break,
                    Err(e) => {
                        tracing::error!(device = %id, error = %e, "teardown: device stays attached");
                        failures.push((id, e));
                        break;
                    }
                }
            }
        }
        // What failed plugs left in the VM goes too.
        for id in self.needing_cleanup() {
            if let Err(e) = self.clean_up(id) {
                tracing::error!(device = %id, error = %e, "teardown: a failed plug's leftovers stay");
                failures.push((id, e));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(TeardownError { failures })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::BlockDriver;
    use crate::test_util::{HypervisorOp, InMemoryHypervisor, block_spec, generic_spec};

    #[test]
    fn goes_on_past_failures_and_reports_them_all() {
        let m = DeviceManager::new(InMemoryHypervisor::new(), crate::test_util::EIGHT_PORTS);
        let ids: Vec<DeviceId> = (0..4)
            .map(|n| {
                m.new_device(block_spec(n, BlockDriver::VirtioBlk))
                    .unwrap()
                    .id()
            })
            .collect();
        let generic = m
            .new_device(generic_spec("/dev/fuse", 10, 229))
            .unwrap()
            .id();
        for &id in &ids {
            m.attach(id).unwrap();
        }
        m.attach(ids[1]).unwrap();
        m.attach(generic).unwrap();
        // Newest first: the generic device, then ids[3], ids[2] (fails), ids[1], ids[0].
        m.hypervisor().fail_next(HypervisorOp::HotplugRemove);
        m.hypervisor().clear_calls();
        let err = m.detach_all().unwrap_err();
        assert_eq!(err.failures.len(), 1);
        assert_eq!(err.failures[0].0, ids[3]);
        assert!(matches!(err.failures[0].1, DeviceError::Unplug { .. }));
        let attached: Vec<DeviceId> = m
            .devices()
            .iter()
            .filter(|d| !d.attachments.is_zero())
            .map(|d| d.id)
            .collect();
        assert_eq!(attached, [ids[3]]);
        assert_eq!(
            m.hypervisor().plugged().keys().copied().collect::<Vec<_>>(),
            [ids[3]]
        );
        // A retry finishes the job.
        m.detach_all().unwrap();
        assert!(m.hypervisor().plugged().is_empty());
        assert!(m.allocations().block_indexes.is_empty());
    }
}
