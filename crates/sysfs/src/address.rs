//! PCI addresses (`DDDD:BB:SS.F`): parsing, validation and display.
//!
//! The kernel names every PCI function by its domain, bus, slot (device) and function. Users
//! often leave out the domain (`01:00.0`), so parsing accepts that and fills in domain 0; the
//! canonical form printed everywhere is the kernel's (`0000:01:00.0`, lower-case hex).
//! Validation follows libvirt's virpci: bus ≤ 0xff, slot ≤ 0x1f, function ≤ 7, domain ≤ 0xffff.
//! Parsing never panics, whatever the input (see the property test at the bottom).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A validated PCI function address. The fields are private: build one with
/// [`PciAddress::new`] or by parsing (`"0000:01:00.0".parse()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    domain: u16,
    bus: u8,
    slot: u8,
    function: u8,
}

/// Why a string is not a PCI address. Every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciAddressError {
    /// The input does not have the `[DDDD:]BB:SS.F` shape.
    #[error("'{input}' is not a PCI address: expected [DDDD:]BB:SS.F in hex, e.g. 0000:01:00.0")]
    Format {
        /// The rejected input.
        input: String,
    },
    /// One field is not hexadecimal or is too long.
    #[error(
        "'{input}' is not a PCI address: the {field} '{value}' is not a hex number of at most {digits} digits"
    )]
    Hex {
        /// The rejected input.
        input: String,
        /// Which field: domain, bus, slot or function.
        field: &'static str,
        /// The field's text.
        value: String,
        /// The most digits the field may have.
        digits: usize,
    },
    /// One field is out of its range.
    #[error("'{input}' is not a PCI address: the {field} {value:#x} is above the maximum {max:#x}")]
    Range {
        /// The rejected input (or the numbers given to [`PciAddress::new`]).
        input: String,
        /// Which field: slot or function.
        field: &'static str,
        /// The value found.
        value: u32,
        /// The largest value allowed.
        max: u32,
    },
}

impl PciAddress {
    /// The largest slot (device) number.
    pub const MAX_SLOT: u8 = 0x1f;
    /// The largest function number.
    pub const MAX_FUNCTION: u8 = 7;

    /// Builds an address from its parts, checking slot ≤ 0x1f and function ≤ 7.
    pub fn new(domain: u16, bus: u8, slot: u8, function: u8) -> Result<Self, PciAddressError> {
        let input = || format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}");
        if slot > Self::MAX_SLOT {
            return Err(PciAddressError::Range {
                input: input(),
                field: "slot",
                value: slot.into(),
                max: Self::MAX_SLOT.into(),
            });
        }
        if function > Self::MAX_FUNCTION {
            return Err(PciAddressError::Range {
                input: input(),
                field: "function",
                value: function.into(),
                max: Self::MAX_FUNCTION.into(),
            });
        }
        Ok(Self {
            domain,
            bus,
            slot,
            function,
        })
    }

    /// The PCI domain (segment).
    pub fn domain(self) -> u16 {
        self.domain
    }

    /// The bus number.
    pub fn bus(self) -> u8 {
        self.bus
    }

    /// The slot (device) number, 0 to 0x1f.
    pub fn slot(self) -> u8 {
        self.slot
    }

    /// The function number, 0 to 7.
    pub fn function(self) -> u8 {
        self.function
    }

    /// The same device with another function number (for multi-function devices).
    pub fn with_function(self, function: u8) -> Result<Self, PciAddressError> {
        Self::new(self.domain, self.bus, self.slot, function)
    }
}

impl fmt::Display for PciAddress {
    /// `DDDD:BB:SS.F`, lowercase, as the kernel names devices; written byte by byte
    /// because a listing of many devices formats every address more than once.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digit = |value: u16, shift: u32| HEX[usize::from((value >> shift) & 0xf)];
        let (bus, slot) = (u16::from(self.bus), u16::from(self.slot));
        let text = [
            digit(self.domain, 12),
            digit(self.domain, 8),
            digit(self.domain, 4),
            digit(self.domain, 0),
            b':',
            digit(bus, 4),
            digit(bus, 0),
            b':',
            digit(slot, 4),
            digit(slot, 0),
            b'.',
            digit(u16::from(self.function), 0),
        ];
        // Every byte is an ASCII hex digit or punctuation.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// The canonical `DDDD:BB:SS.F` (what sysfs lists), parsed without splitting; `None` for
/// any other shape, which the general parser then handles (and explains).
fn parse_canonical(input: &[u8]) -> Option<PciAddress> {
    let &[d0, d1, d2, d3, b':', b0, b1, b':', s0, s1, b'.', f0] = input else {
        return None;
    };
    let hex = |b: u8| char::from(b).to_digit(16);
    let number = |digits: &[u8]| {
        digits
            .iter()
            .try_fold(0u32, |acc, &b| Some((acc << 4) | hex(b)?))
    };
    let domain = u16::try_from(number(&[d0, d1, d2, d3])?).ok()?;
    let bus = u8::try_from(number(&[b0, b1])?).ok()?;
    let slot = u8::try_from(number(&[s0, s1])?).ok()?;
    let function = u8::try_from(number(&[f0])?).ok()?;
    PciAddress::new(domain, bus, slot, function).ok()
}

fn hex_field(
    input: &str,
    field: &'static str,
    text: &str,
    digits: usize,
) -> Result<u32, PciAddressError> {
    let ok =
        !text.is_empty() && text.len() <= digits && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(PciAddressError::Hex {
            input: input.to_owned(),
            field,
            value: text.to_owned(),
            digits,
        });
    }
    u32::from_str_radix(text, 16).map_err(|_| PciAddressError::Hex {
        input: input.to_owned(),
        field,
        value: text.to_owned(),
        digits,
    })
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    /// Parses `DDDD:BB:SS.F` or `BB:SS.F` (domain 0), hex in either case. Surrounding
    /// whitespace is ignored (sysfs values end in a newline).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_canonical(s.as_bytes()) {
            Some(address) => Ok(address),
            None => parse_general(s),
        }
    }
}

/// Any accepted shape, with an error that says what is wrong.
fn parse_general(s: &str) -> Result<PciAddress, PciAddressError> {
    let input = s.trim();
    let format = || PciAddressError::Format {
        input: input.to_owned(),
    };
    let (head, function) = input.rsplit_once('.').ok_or_else(format)?;
    let parts: Vec<&str> = head.split(':').collect();
    let (domain, bus, slot) = match parts.as_slice() {
        [bus, slot] => ("0", *bus, *slot),
        [domain, bus, slot] => (*domain, *bus, *slot),
        _ => return Err(format()),
    };
    let domain = hex_field(input, "domain", domain, 4)?;
    let bus = hex_field(input, "bus", bus, 2)?;
    let slot = hex_field(input, "slot", slot, 2)?;
    let function = hex_field(input, "function", function, 1)?;
    let range = |field, value, max: u8| PciAddressError::Range {
        input: input.to_owned(),
        field,
        value,
        max: max.into(),
    };
    let slot = u8::try_from(slot).map_err(|_| range("slot", slot, PciAddress::MAX_SLOT))?;
    let function = u8::try_from(function)
        .map_err(|_| range("function", function, PciAddress::MAX_FUNCTION))?;
    let domain = u16::try_from(domain).map_err(|_| format())?;
    let bus = u8::try_from(bus).map_err(|_| format())?;
    PciAddress::new(domain, bus, slot, function).map_err(|err| match err {
        PciAddressError::Range {
            field, value, max, ..
        } => PciAddressError::Range {
            input: input.to_owned(),
            field,
            value,
            max,
        },
        other => other,
    })
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a: PciAddress = "0000:01:00.0".parse().unwrap();
        assert_eq!((a.domain(), a.bus(), a.slot(), a.function()), (0, 1, 0, 0));
        let b: PciAddress = "01:00.0".parse().unwrap();
        assert_eq!(a, b);
        let c: PciAddress = "ABCD:FF:1F.7\n".parse().unwrap();
        assert_eq!(c.to_string(), "abcd:ff:1f.7");
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        for bad in [
            "",
            "0000:01:00",
            "0000:01:00.",
            "1:2:3:4.0",
            "zz:00.0",
            "../00:00.0",
        ] {
            assert!(
                matches!(
                    bad.parse::<PciAddress>(),
                    Err(PciAddressError::Format { .. } | PciAddressError::Hex { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "0000:00:20.0".parse::<PciAddress>(),
            Err(PciAddressError::Range { field: "slot", .. })
        ));
        assert!(matches!(
            "0000:00:00.8".parse::<PciAddress>(),
            Err(PciAddressError::Range {
                field: "function",
                ..
            })
        ));
        assert!(matches!(
            "10000:00:00.0".parse::<PciAddress>(),
            Err(PciAddressError::Hex {
                field: "domain",
                ..
            })
        ));
        let msg = "0000:00:00.8"
            .parse::<PciAddress>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("0000:00:00.8"), "{msg}");
    }

    #[test]
    fn serde_round_trip() {
        let a: PciAddress = "0000:3b:00.1".parse().unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0000:3b:00.1\"");
        assert_eq!(serde_json::from_str::<PciAddress>(&json).unwrap(), a);
        serde_json::from_str::<PciAddress>("\"nope\"").unwrap_err();
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(s in ".{0,40}") {
            let _ = s.parse::<PciAddress>();
        }

        #[test]
        fn never_panics_on_address_like_strings(s in "[0-9a-fA-FxX:.]{0,16}") {
            if let Ok(a) = s.parse::<PciAddress>() {
                prop_assert!(a.slot() <= PciAddress::MAX_SLOT);
                prop_assert!(a.function() <= PciAddress::MAX_FUNCTION);
            }
        }

        #[test]
        fn the_canonical_fast_path_agrees_with_the_general_parser(
            s in "[0-9a-fA-Fg]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F:]{2}[.:][0-9a-f.]",
        ) {
            prop_assert_eq!(parse_canonical(s.as_bytes()), parse_general(&s).ok());
        }

        #[test]
        fn display_is_what_the_format_string_gives(
            d in any::<u16>(), b in any::<u8>(), s in 0u8..=0x1f, f in 0u8..=7,
        ) {
            let a = PciAddress::new(d, b, s, f).unwrap();
            prop_assert_eq!(a.to_string(), format!("{d:04x}:{b:02x}:{s:02x}.{f:x}"));
        }

        #[test]
        fn display_parse_round_trip(d in any::<u16>(), b in any::<u8>(), s in 0u8..=0x1f, f in 0u8..=7) {
            let a = PciAddress::new(d, b, s, f).unwrap();
            prop_assert_eq!(a.to_string().parse::<PciAddress>().unwrap(), a);
        }
    }
}
