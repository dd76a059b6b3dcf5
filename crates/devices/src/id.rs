//! Device identifiers.
//!
//! Kata made IDs from 8 random bytes and retried on collision. A per-manager counter that is
//! saved with the manager can never collide, needs no retry, and makes tests deterministic, so
//! a [`DeviceId`] is a sequence number shown as 16 hex digits (Kata's width).
//!
//! The id has one text form everywhere: logs, the CLI, URLs and JSON all say
//! `000000000000002a`. Saved states written before that wrote the id as a JSON number;
//! reading still accepts it, so they load.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The manager-wide identifier of one device.
///
/// Shown and parsed as 16 lower-case hex digits (`000000000000002a`), in JSON too (a
/// string); a JSON number (the form of older saved states) is still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DeviceIdVisitor)
    }
}

/// Reads the 16-hex-digit string, or the sequence number as older saved states wrote it.
struct DeviceIdVisitor;

impl Visitor<'_> for DeviceIdVisitor {
    type Value = DeviceId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a device id: 16 hex digits (or, as older saved states wrote it, a number)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DeviceId, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<DeviceId, E> {
        Ok(DeviceId(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<DeviceId, E> {
        u64::try_from(v)
            .map(DeviceId)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
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
    fn json_is_the_hex_text_and_old_numbers_still_read() {
        let id = DeviceId::from_raw(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""000000000000002a""#);
        assert_eq!(
            serde_json::from_str::<DeviceId>(r#""000000000000002a""#).unwrap(),
            id
        );
        // Saved states written before the id had one text form hold the number.
        assert_eq!(serde_json::from_str::<DeviceId>("42").unwrap(), id);
        let max = u64::MAX.to_string();
        assert_eq!(
            serde_json::from_str::<DeviceId>(&max).unwrap(),
            DeviceId::from_raw(u64::MAX)
        );
        for bad in ["-1", "1.5", r#""2a""#, r#""42""#, "null", "[]"] {
            serde_json::from_str::<DeviceId>(bad).expect_err(bad);
        }
        // As a map key (BTreeMap<DeviceId, _> in JSON) it is the same text.
        let map: std::collections::BTreeMap<DeviceId, u8> = [(id, 1)].into();
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"000000000000002a":1}"#);
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<DeviceId, u8>>(&json).unwrap(),
            map
        );
    }

    #[test]
    fn name_id_is_cut_to_31() {
        let id = DeviceId::from_raw(1);
        assert_eq!(id.name_id("drive"), "drive-0000000000000001");
        let long = id.name_id("a-very-long-prefix-name");
        assert_eq!(long.len(), MAX_NAME_ID_LEN);
    }
}
