//! The four IDs of a PCI function, and the hex-string serde forms the JSON records use.
//!
//! It sits below both `inventory.rs` (which records the IDs) and `names.rs` (which looks
//! them up in `pci.ids`), so neither of those imports the other's types.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The four IDs of a PCI function (serialized as 4-digit lower-case hex strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciIds {
    /// `vendor`.
    #[serde(with = "hex4")]
    pub vendor: u16,
    /// `device`.
    #[serde(with = "hex4")]
    pub device: u16,
    /// `subsystem_vendor`.
    #[serde(with = "hex4")]
    pub subsystem_vendor: u16,
    /// `subsystem_device`.
    #[serde(with = "hex4")]
    pub subsystem_device: u16,
}

/// Reads a hex string of 1 to `digits` digits (no `0x`), as the serialized forms hold.
fn parse_hex<'de, D: Deserializer<'de>>(deserializer: D, digits: usize) -> Result<u64, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() || text.len() > digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(&text),
            &format!("1 to {digits} hex digits").as_str(),
        ));
    }
    u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
}

/// A `u16` as 4 lower-case hex digits (`"8086"`).
pub(crate) mod hex4 {
    use super::{Deserializer, Serializer};

    /// Writes `value` as 4 hex digits.
    pub(crate) fn serialize<S: Serializer>(value: &u16, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:04x}"))
    }

    /// Reads 1 to 4 hex digits.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
        let value = super::parse_hex(deserializer, 4)?;
        u16::try_from(value).map_err(serde::de::Error::custom)
    }
}

/// A `u8` as 2 lower-case hex digits (`"03"`).
pub(crate) mod hex2 {
    use super::{Deserializer, Serializer};

    /// Writes `value` as 2 hex digits.
    pub(crate) fn serialize<S: Serializer>(value: &u8, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:02x}"))
    }

    /// Reads 1 to 2 hex digits.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
        let value = super::parse_hex(deserializer, 2)?;
        u8::try_from(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_strings_both_ways() {
        let ids = PciIds {
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x0001,
            subsystem_device: 0xabcd,
        };
        let json = serde_json::to_value(ids).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"vendor": "8086", "device": "10d3",
                "subsystem_vendor": "0001", "subsystem_device": "abcd"})
        );
        assert_eq!(serde_json::from_value::<PciIds>(json).unwrap(), ids);
    }

    #[test]
    fn rejects_what_is_not_short_hex() {
        for bad in ["", "12345", "0x12", "zz", "-1"] {
            let json = serde_json::json!({"vendor": bad, "device": "0",
                "subsystem_vendor": "0", "subsystem_device": "0"});
            serde_json::from_value::<PciIds>(json).expect_err(bad);
        }
    }
}
