//! PCI BARs from the `resource` attribute.
//!
//! The kernel writes one line per resource, `0x<start> 0x<end> 0x<flags>` (each `%016llx`):
//! lines 0 to 5 are the BARs, line 6 the expansion ROM, and bridges add their windows after.
//! An unused resource is all zeros. The size is `end - start + 1`. A BAR above 4 GiB matters
//! for passthrough (the guest needs a 64-bit MMIO window big enough), hence
//! [`Bar::is_large`].

use serde::{Deserialize, Serialize};

/// `IORESOURCE_IO`: an I/O-port BAR.
pub const IORESOURCE_IO: u64 = 0x0000_0100;
/// `IORESOURCE_MEM`: a memory BAR.
pub const IORESOURCE_MEM: u64 = 0x0000_0200;
/// `IORESOURCE_PREFETCH`: prefetchable memory.
pub const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
/// `IORESOURCE_MEM_64`: a 64-bit memory BAR.
pub const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// 4 GiB: a BAR larger than this is "large" (needs a big 64-bit window in the guest).
pub const LARGE_BAR: u64 = 4 << 30;

/// One used resource line of a PCI device. Serializes with the computed `size` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// The line number: 0–5 are BARs, 6 is the ROM, higher ones are bridge windows.
    pub index: u8,
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// The kernel's `IORESOURCE_*` flags.
    pub flags: u64,
}

impl Bar {
    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }

    /// An I/O-port BAR.
    pub fn is_io(&self) -> bool {
        self.flags & IORESOURCE_IO != 0
    }

    /// A memory BAR.
    pub fn is_memory(&self) -> bool {
        self.flags & IORESOURCE_MEM != 0
    }

    /// A 64-bit memory BAR.
    pub fn is_64bit(&self) -> bool {
        self.flags & IORESOURCE_MEM_64 != 0
    }

    /// Prefetchable memory.
    pub fn is_prefetchable(&self) -> bool {
        self.flags & IORESOURCE_PREFETCH != 0
    }

    /// Larger than 4 GiB.
    pub fn is_large(&self) -> bool {
        self.size() > LARGE_BAR
    }

    /// The expansion ROM (line 6).
    pub fn is_rom(&self) -> bool {
        self.index == 6
    }
}

/// The serialized form: the four fields and the computed `size`.
#[derive(Serialize, Deserialize)]
struct BarShape {
    index: u8,
    start: u64,
    end: u64,
    size: u64,
    flags: u64,
}

impl Serialize for Bar {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BarShape {
            index: self.index,
            start: self.start,
            end: self.end,
            size: self.size(),
            flags: self.flags,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bar {
    /// Reads the serialized form; a `size` that disagrees with `start` and `end`, or an
    /// end before the start, is refused.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shape = BarShape::deserialize(deserializer)?;
        let bar = Self {
            index: shape.index,
            start: shape.start,
            end: shape.end,
            flags: shape.flags,
        };
        if shape.end < shape.start || bar.size() != shape.size {
            return Err(serde::de::Error::custom(format_args!(
                "BAR {}: size {} does not match {:#x}-{:#x}",
                shape.index, shape.size, shape.start, shape.end
            )));
        }
        Ok(bar)
    }
}

/// A `resource` file that is not what the kernel writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A line does not have three hex numbers.
    #[error(
        "resource line {line} {text:?}: expected three hex numbers '0x<start> 0x<end> 0x<flags>'"
    )]
    Format {
        /// The line number (0-based).
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A line ends before it starts.
    #[error("resource line {line} {text:?}: the end is before the start")]
    Inverted {
        /// The line number (0-based).
        line: usize,
        /// The line's text.
        text: String,
    },
    /// More lines than a PCI device has resources.
    #[error("resource file has more than 255 lines")]
    TooLong,
}

/// `0x` and 1 to 16 hex digits, in one pass.
fn hex64(word: &[u8]) -> Option<u64> {
    let digits = word.strip_prefix(b"0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut value = 0u64;
    for &b in digits {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

/// An unused line as the kernel writes it (`0x%016llx` three times).
const UNUSED_LINE: &[u8] = b"0x0000000000000000 0x0000000000000000 0x0000000000000000";

/// Parses the text of a `resource` attribute into its used lines (all-zero lines skipped).
///
/// Works on bytes (the kernel writes ASCII; any other byte fails the hex check), since an
/// inventory parses some fifteen lines for every device.
pub fn parse_resource(text: &str) -> Result<Vec<Bar>, ResourceError> {
    let mut bars = Vec::new();
    for (line, raw) in crate::attr::lines(text).enumerate() {
        // Most lines are unused resources, written by the kernel exactly like this.
        if raw.as_bytes() == UNUSED_LINE {
            continue;
        }
        let bytes = raw.as_bytes().trim_ascii();
        // Blank, counting Unicode spaces as `str::trim` does.
        if bytes.is_empty() || (!bytes.is_ascii() && raw.trim().is_empty()) {
            continue;
        }
        let format = || ResourceError::Format {
            line,
            text: raw.trim().to_owned(),
        };
        let index = u8::try_from(line).map_err(|_| ResourceError::TooLong)?;
        let mut words = bytes
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty());
        let (Some(start), Some(end), Some(flags), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format());
        };
        let (start, end, flags) = (
            hex64(start).ok_or_else(format)?,
            hex64(end).ok_or_else(format)?,
            hex64(flags).ok_or_else(format)?,
        );
        if start == 0 && end == 0 && flags == 0 {
            continue;
        }
        if end < start {
            return Err(ResourceError::Inverted {
                line,
                text: raw.trim().to_owned(),
            });
        }
        bars.push(Bar {
            index,
            start,
            end,
            flags,
        });
    }
    Ok(bars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VIRTIO: &str = "\
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe800000 0x00000000fe800fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000fc00000000 0x000000fdffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe840000 0x00000000fe87ffff 0x0000000000046200
";

    #[test]
    fn a_bar_round_trips_through_json_and_a_wrong_size_is_refused() {
        for bar in parse_resource(VIRTIO).unwrap() {
            let json = serde_json::to_value(bar).unwrap();
            assert_eq!(json["size"], bar.size());
            assert_eq!(serde_json::from_value::<Bar>(json).unwrap(), bar);
        }
        let bad = serde_json::json!({"index": 0, "start": 16, "end": 31, "size": 4, "flags": 512});
        serde_json::from_value::<Bar>(bad).unwrap_err();
        let inverted =
            serde_json::json!({"index": 0, "start": 32, "end": 16, "size": 1, "flags": 512});
        serde_json::from_value::<Bar>(inverted).unwrap_err();
    }

    #[test]
    fn parses_real_lines() {
        let bars = parse_resource(VIRTIO).unwrap();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].index, 1);
        assert_eq!(bars[0].size(), 0x1000);
        assert!(bars[0].is_memory() && !bars[0].is_64bit());
        assert_eq!(bars[1].index, 4);
        assert_eq!(bars[1].size(), 8 << 30);
        assert!(bars[1].is_large() && bars[1].is_64bit() && bars[1].is_prefetchable());
        assert!(bars[2].is_rom());
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(matches!(
            parse_resource("0x1 0x2\n"),
            Err(ResourceError::Format { line: 0, .. })
        ));
        assert!(matches!(
            parse_resource("0x10 0x1 0x200\n"),
            Err(ResourceError::Inverted { .. })
        ));
        assert!(matches!(
            parse_resource("1 2 3\n"),
            Err(ResourceError::Format { .. })
        ));
        assert_eq!(parse_resource("").unwrap(), vec![]);
    }

    #[test]
    fn full_range_bar_does_not_overflow() {
        let bars = parse_resource("0x0000000000000000 0xffffffffffffffff 0x200\n").unwrap();
        assert_eq!(bars[0].size(), u64::MAX);
    }

    proptest! {
        #[test]
        fn never_panics(text in "(0x[0-9a-f]{0,17}[ \n]{1,2}){0,12}") {
            let _ = parse_resource(&text);
        }

        #[test]
        fn never_panics_on_any_text(text in "\\PC{0,200}") {
            let _ = parse_resource(&text);
        }

        #[test]
        fn round_trips_valid_lines(start in any::<u32>(), len in 1u64..(1 << 40), flags in 1u64..0x00ff_ffff) {
            let start = u64::from(start) << 12;
            let end = start + len - 1;
            let text = format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}\n");
            let bars = parse_resource(&text).unwrap();
            prop_assert_eq!(bars[0].size(), len);
        }
    }
}
