//! The intent journal's record: what an operation is about to do to one device, committed
//! to the registry **before** the first sysfs write, so that `recover` can finish or undo
//! it after a crash by comparing it with what sysfs shows.
//!
//! An intent also reserves its device: while it is pending, no other process may claim
//! the device or, for a prepare, another member of its IOMMU group for a different owner.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::owner::Owner;
use crate::process::ProcessStamp;

/// The operation an intent belongs to.
///
/// JSON and registry words (stable): `prepare`, `release`, `detach`, `reattach`; its
/// [`Display`](fmt::Display) prints the same words, which read as English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentOp {
    /// Taking the device for an owner; recovery undoes it (the caller never saw success).
    Prepare,
    /// Giving a managed device back to its host driver; recovery finishes it.
    Release,
    /// `detach`: binding to vfio-pci for the inactive list; recovery keeps what sysfs shows.
    Detach,
    /// `reattach`: back to the host driver; recovery finishes it.
    Reattach,
}

impl IntentOp {
    /// The word stored in the registry and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Release => "release",
            Self::Detach => "detach",
            Self::Reattach => "reattach",
        }
    }

    /// Parses a stored name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "prepare" => Self::Prepare,
            "release" => Self::Release,
            "detach" => Self::Detach,
            "reattach" => Self::Reattach,
            _ => return None,
        })
    }
}

impl fmt::Display for IntentOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far an intent got; updated in the registry as sysfs writes complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStep {
    /// Recorded; nothing written to sysfs for it yet (or nothing needs writing).
    Reserved,
    /// The sysfs write for this device is under way or done; look at sysfs to know.
    Binding,
}

impl IntentStep {
    /// The name stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Binding => "binding",
        }
    }

    /// Parses a stored name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "binding" => Self::Binding,
            _ => return None,
        })
    }
}

/// One pending change to one PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Row id (assigned by the registry; 0 before insertion).
    pub id: i64,
    /// Which operation.
    pub op: IntentOp,
    /// The device, `DDDD:BB:SS.F`.
    pub address: String,
    /// The host driver to give the device back to (`None`: no driver, or already vfio).
    pub original_driver: Option<String>,
    /// The owner being added (prepare) or removed (release).
    pub owner: Option<Owner>,
    /// The managed flag that will be (or was) recorded for the device.
    pub managed: bool,
    /// True when this intent binds the device to vfio-pci (prepare, detach) or back to the
    /// host (release, reattach); false when it only reserves.
    pub writes_sysfs: bool,
    /// The device's IOMMU group.
    pub iommu_group: Option<u32>,
    /// How far it got.
    pub step: IntentStep,
    /// The process that wrote it, to tell a crashed operation from a running one.
    pub process: ProcessStamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_has_one_word_in_json_the_registry_and_text() {
        for op in [
            IntentOp::Prepare,
            IntentOp::Release,
            IntentOp::Detach,
            IntentOp::Reattach,
        ] {
            let word = op.as_str();
            assert_eq!(serde_json::to_value(op).unwrap(), word);
            assert_eq!(serde_json::from_value::<IntentOp>(word.into()).unwrap(), op);
            assert_eq!(IntentOp::from_name(word), Some(op));
            assert_eq!(op.to_string(), word);
        }
    }
}
