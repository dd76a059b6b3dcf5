//! Device identifiers.
//!
//! Kata made IDs from 8 random bytes and retried on collision. A per-manager counter that is
//! saved with the manager can never collide, needs no retry, and makes tests deterministic, so
//! a [`DeviceId`] is a sequence number shown as 16 hex digits (Kata's width).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The manager-wide identifier of one device.
///
/// Shown and parsed as 16 lower-case hex digits (`000000000000002a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(u64);

impl DeviceId {
    /// The id with this sequence number.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The sequence number.
    #[must_use]
    pub const fn as_raw(self) -> u64 {
        self.0
    }

    /// The name a hypervisor should give its own objects for this device: `prefix-<id>`,
    /// cut to 31 characters (Kata's `MakeNameID` with `maxDevIDSize`).
    #[must_use]
    pub fn name_id(self, prefix: &str) -> String {
        let mut name = format!("{prefix}-{self}");
        name.truncate(MAX_NAME_ID_LEN);
        name
    }
}

/// The longest object name handed to a hypervisor (QEMU ids are limited by its users to 31).
pub const MAX_NAME_ID_LEN: usize = 31;

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not a [`DeviceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device id {input:?} is not 16 hex digits")]
pub struct DeviceIdError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DeviceIdError {
            input: s.to_owned(),
        };
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(s, 16).map(Self).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = DeviceId::from_raw(42);
        assert_eq!(id.to_string(), "000000000000002a");
        assert_eq!("000000000000002a".parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn parse_rejects_bad_input() {
        for bad in [
            "",
            "2a",
            "000000000000002g",
            "0000000000000002a",
            "+00000000000002a",
        ] {
            bad.parse::<DeviceId>().expect_err(bad);
        }
    }

    #[test]
    fn name_id_is_cut_to_31() {
        let id = DeviceId::from_raw(1);
        assert_eq!(id.name_id("drive"), "drive-0000000000000001");
        let long = id.name_id("a-very-long-prefix-name");
        assert_eq!(long.len(), MAX_NAME_ID_LEN);
    }
}
