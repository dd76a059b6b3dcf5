//! Where a PCI device sits in the guest, as the guest sees it.
//!
//! A [`PciPath`] is the list of slots from the root bus down to the device, written
//! `01/0a/05` (Kata's `PciPath`): slot 1 on the root bus holds a bridge or root port, whose
//! bus holds slot `0a`, and so on. It is what a hypervisor reports after a plug and what the
//! guest agent uses to find the device, instead of guessing a `vdX` name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One PCI slot number, `0..=31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct PciSlot(u8);

/// The largest slot number on a PCI bus.
pub const MAX_PCI_SLOT: u8 = 31;

/// Why a slot or path did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciPathError {
    /// A slot number above 31.
    #[error("PCI slot {0} is out of range 0..=31")]
    SlotOutOfRange(u32),
    /// A slot that is not two hex digits.
    #[error("PCI slot {0:?} is not two hex digits")]
    SlotSyntax(String),
    /// A path without slots.
    #[error("PCI path is empty")]
    Empty,
}

impl PciSlot {
    /// The slot with this number.
    ///
    /// # Errors
    /// [`PciPathError::SlotOutOfRange`] above 31.
    pub fn new(slot: u8) -> Result<Self, PciPathError> {
        if slot > MAX_PCI_SLOT {
            return Err(PciPathError::SlotOutOfRange(slot.into()));
        }
        Ok(Self(slot))
    }

    /// The slot number.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for PciSlot {
    type Error = PciPathError;

    fn try_from(slot: u8) -> Result<Self, Self::Error> {
        Self::new(slot)
    }
}

impl From<PciSlot> for u8 {
    fn from(slot: PciSlot) -> Self {
        slot.0
    }
}

impl fmt::Display for PciSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl FromStr for PciSlot {
    type Err = PciPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PciPathError::SlotSyntax(s.to_owned()));
        }
        let n = u8::from_str_radix(s, 16).map_err(|_| PciPathError::SlotSyntax(s.to_owned()))?;
        Self::new(n)
    }
}

/// Slots from the guest's root bus down to a device, shown as `01/0a/05`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciPath(Vec<PciSlot>);

impl PciPath {
    /// A path from these slots, root bus first.
    ///
    /// # Errors
    /// [`PciPathError::Empty`] when `slots` is empty.
    pub fn new(slots: Vec<PciSlot>) -> Result<Self, PciPathError> {
        if slots.is_empty() {
            return Err(PciPathError::Empty);
        }
        Ok(Self(slots))
    }

    /// The slots, root bus first.
    #[must_use]
    pub fn slots(&self) -> &[PciSlot] {
        &self.0
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, slot) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{slot}")?;
        }
        Ok(())
    }
}

impl FromStr for PciPath {
    type Err = PciPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PciPathError::Empty);
        }
        let slots = s.split('/').map(str::parse).collect::<Result<_, _>>()?;
        Self::new(slots)
    }
}

impl TryFrom<String> for PciPath {
    type Error = PciPathError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PciPath> for String {
    fn from(path: PciPath) -> Self {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_table() {
        // Kata's pci_path.rs cases.
        assert_eq!("00".parse::<PciSlot>().unwrap().get(), 0);
        assert_eq!("1f".parse::<PciSlot>().unwrap().get(), 31);
        assert_eq!(
            "20".parse::<PciSlot>(),
            Err(PciPathError::SlotOutOfRange(32))
        );
        assert_eq!(PciSlot::new(1).unwrap().to_string(), "01");
        assert_eq!(PciSlot::new(31).unwrap().get(), 31);
        assert_eq!(PciSlot::new(32), Err(PciPathError::SlotOutOfRange(32)));
        assert!(matches!(
            "1".parse::<PciSlot>(),
            Err(PciPathError::SlotSyntax(_))
        ));
        assert!(matches!(
            "zz".parse::<PciSlot>(),
            Err(PciPathError::SlotSyntax(_))
        ));
    }

    #[test]
    fn path_round_trips() {
        let path: PciPath = "01/0a/05".parse().unwrap();
        let slots: Vec<u8> = path.slots().iter().map(|s| s.get()).collect();
        assert_eq!(slots, [1, 10, 5]);
        assert_eq!(path.to_string(), "01/0a/05");
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, "\"01/0a/05\"");
        assert_eq!(serde_json::from_str::<PciPath>(&json).unwrap(), path);
    }

    #[test]
    fn path_rejects_bad_input() {
        assert_eq!("".parse::<PciPath>(), Err(PciPathError::Empty));
        "01//05".parse::<PciPath>().unwrap_err();
        "01/20".parse::<PciPath>().unwrap_err();
        serde_json::from_str::<PciPath>("\"xx\"").unwrap_err();
    }
}
