//! QEMU identifiers: the qdev id of a device and the names we derive from it.
//!
//! QEMU accepts ids made of letters, digits, `-`, `.` and `_`, starting with a letter, and
//! block node names are cut at 31 bytes. Every backend a device needs is named from the
//! device's id plus a fixed suffix (`<id>-file`, `<id>-fmt`, `<id>-chr`, …), so a later
//! removal (or a retry after a crash) can find them again from the id alone, with no state
//! of our own.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a usable QEMU id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuIdError {
    /// Empty, too long, not starting with a letter, or with a character QEMU refuses.
    #[error(
        "QEMU id {0:?} must be 1 to {max} letters, digits, '-', '.' or '_', starting with a letter",
        max = QemuId::MAX_LEN
    )]
    Invalid(String),
}

/// A validated qdev id, short enough that every derived backend name fits QEMU's limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuId(String);

impl QemuId {
    /// The longest id: 31 (QEMU's node-name limit) less the longest suffix we add (`-file`).
    pub const MAX_LEN: usize = 26;

    /// The id as QEMU sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A backend's name: the id and a suffix (`file`, `fmt`, `chr`, `net`, `mem`, `iofd`).
    pub fn derived(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.0)
    }

    /// The device's QOM path.
    pub fn qom_path(&self) -> String {
        format!("/machine/peripheral/{}", self.0)
    }
}

impl FromStr for QemuId {
    type Err = QemuIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(QemuIdError::Invalid(s.to_owned()))
        }
    }
}

impl fmt::Display for QemuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_qemu_ids_and_refuses_the_rest() {
        for good in ["vb0", "disk-1.a_b", "a", "x2345678901234567890123456"] {
            assert_eq!(good.parse::<QemuId>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "0disk",
            "-a",
            "has space",
            "a,b",
            "a/b",
            "x23456789012345678901234567",
        ] {
            assert_eq!(
                bad.parse::<QemuId>(),
                Err(QemuIdError::Invalid(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn derived_names_fit_qemus_node_name_limit() {
        let id: QemuId = "x".repeat(QemuId::MAX_LEN).parse().unwrap();
        for suffix in ["file", "fmt", "chr", "net", "mem", "iofd"] {
            assert!(id.derived(suffix).len() <= 31, "{suffix}");
        }
        assert_eq!(id.qom_path(), format!("/machine/peripheral/{id}"));
    }
}
