//! Block and character device nodes by `major:minor`, through `/sys/dev/{block,char}`.
//!
//! Every device node the kernel creates has `<root>/dev/<block|char>/<major>:<minor>`, a link
//! to its device directory, whose `uevent` file holds `KEY=value` lines; `DEVNAME` is the
//! node's path relative to `/dev` (`sda`, `vfio/3`, `bus/usb/001/002`). Resolving a number
//! to a path therefore never guesses from names, and works for nodes udev renamed.
//! "No uevent file" and "a uevent without DEVNAME" and "a malformed uevent" are different
//! errors, because they mean different things (not a device; no node; a broken tree).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SysfsError;
use crate::sysfs::Sysfs;

/// Block or character device. In JSON `"block"` or `"char"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevKind {
    /// A block device (`b`).
    Block,
    /// A character device (`c`, or `u` for unbuffered).
    Char,
}

impl DevKind {
    /// `block` or `char`, the directory under `/sys/dev`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Char => "char",
        }
    }
}

impl fmt::Display for DevKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl FromStr for DevKind {
    type Err = DevNodeError;

    /// `b`/`block`, or `c`/`char`/`u` (`u` is an unbuffered char device, as `mknod` and
    /// Kata's `DevType` accept it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "b" | "block" => Ok(Self::Block),
            "c" | "u" | "char" => Ok(Self::Char),
            other => Err(DevNodeError::BadKind {
                input: other.to_owned(),
            }),
        }
    }
}

/// A device number, `major:minor`. In JSON `{"major": 8, "minor": 0}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DevNumber {
    /// The major number.
    pub major: u32,
    /// The minor number.
    pub minor: u32,
}

impl fmt::Display for DevNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNumber {
    type Err = DevNodeError;

    /// Decimal `MAJOR:MINOR`, e.g. `8:0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DevNodeError::BadNumber {
            input: s.to_owned(),
        };
        let (major, minor) = s.trim().split_once(':').ok_or_else(bad)?;
        let decimal = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                t.parse::<u32>().ok()
            }
        };
        Ok(Self {
            major: decimal(major).ok_or_else(bad)?,
            minor: decimal(minor).ok_or_else(bad)?,
        })
    }
}

/// A parsed `uevent` file: `KEY=value` lines, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Uevent {
    entries: Vec<(String, String)>,
}

/// A `uevent` text that is not `KEY=value` lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uevent line {line} {text:?} is not KEY=value")]
pub struct UeventError {
    /// The line number (0-based).
    pub line: usize,
    /// The line's text.
    pub text: String,
}

impl Uevent {
    /// Parses `KEY=value` lines (blank lines skipped). A key must be non-empty and made of
    /// upper-case letters, digits and `_`, as the kernel writes them.
    ///
    /// Lines end at `\n`, the kernel's only line end; any other byte (a `\r` included) is
    /// part of the value, wherever the line stands in the file.
    pub fn parse(text: &str) -> Result<Self, UeventError> {
        let mut entries = Vec::new();
        for (line, raw) in text.split('\n').enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let bad = || UeventError {
                line,
                text: raw.to_owned(),
            };
            let (key, value) = raw.split_once('=').ok_or_else(bad)?;
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(bad());
            }
            entries.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { entries })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `DEVNAME`: the node's path relative to `/dev`.
    pub fn devname(&self) -> Option<&str> {
        self.get("DEVNAME")
    }

    /// All entries, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Why a `major:minor` does not resolve to a node.
#[derive(Debug, thiserror::Error)]
pub enum DevNodeError {
    /// Not `b`, `c`, `u`, `block` or `char`.
    #[error("{input:?} is not a device kind: expected b (block), or c or u (char)")]
    BadKind {
        /// The rejected input.
        input: String,
    },
    /// Not `MAJOR:MINOR` in decimal.
    #[error("{input:?} is not a device number: expected MAJOR:MINOR in decimal, e.g. 8:0")]
    BadNumber {
        /// The rejected input.
        input: String,
    },
    /// The kernel has no such device.
    #[error("no {kind} device {number}: {} does not exist", path.display())]
    NoDevice {
        /// Block or char.
        kind: DevKind,
        /// The number asked for.
        number: DevNumber,
        /// `<root>/dev/<kind>/<M:m>`.
        path: PathBuf,
    },
    /// The device exists but has no `uevent` file.
    #[error("{kind} device {number} has no uevent file at {}", path.display())]
    NoUevent {
        /// Block or char.
        kind: DevKind,
        /// The number asked for.
        number: DevNumber,
        /// The missing file.
        path: PathBuf,
    },
    /// The `uevent` has no `DEVNAME` (the device has no node).
    #[error("{kind} device {number} has no DEVNAME in {}", path.display())]
    NoDevName {
        /// Block or char.
        kind: DevKind,
        /// The number asked for.
        number: DevNumber,
        /// The uevent file.
        path: PathBuf,
    },
    /// The `uevent` is not `KEY=value` lines.
    #[error("malformed uevent file {}", path.display())]
    Malformed {
        /// The uevent file.
        path: PathBuf,
        /// The offending line.
        #[source]
        source: UeventError,
    },
    /// `DEVNAME` would leave `/dev` (absolute, or with `..`).
    #[error("DEVNAME {devname:?} in {} would leave the device root", path.display())]
    BadDevName {
        /// The uevent file.
        path: PathBuf,
        /// The value found.
        devname: String,
    },
    /// Reading the tree failed.
    #[error(transparent)]
    Read(#[from] SysfsError),
}

impl Sysfs {
    /// The parsed `uevent` of device `number` of `kind`.
    pub fn dev_uevent(&self, kind: DevKind, number: DevNumber) -> Result<Uevent, DevNodeError> {
        let dir = self.path(format!("dev/{}/{number}", kind.dir_name()));
        if fs::symlink_metadata(&dir).is_err() {
            return Err(DevNodeError::NoDevice {
                kind,
                number,
                path: dir,
            });
        }
        let path = dir.join("uevent");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DevNodeError::NoUevent { kind, number, path });
            }
            Err(e) => return Err(SysfsError::read(&path, e).into()),
        };
        Uevent::parse(&text).map_err(|source| DevNodeError::Malformed { path, source })
    }

    /// The node of device `number` of `kind`: `<dev root>/<DEVNAME>`.
    pub fn resolve_devnode(
        &self,
        kind: DevKind,
        number: DevNumber,
    ) -> Result<PathBuf, DevNodeError> {
        let uevent = self.dev_uevent(kind, number)?;
        let path = self.path(format!("dev/{}/{number}/uevent", kind.dir_name()));
        let devname = uevent.devname().ok_or_else(|| DevNodeError::NoDevName {
            kind,
            number,
            path: path.clone(),
        })?;
        let relative = Path::new(devname);
        let safe = !devname.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(DevNodeError::BadDevName {
                path,
                devname: devname.to_owned(),
            });
        }
        Ok(self.dev_path(relative))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_uevents() {
        let u = Uevent::parse("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\nDISKSEQ=1\n").unwrap();
        assert_eq!(u.devname(), Some("sda"));
        assert_eq!(u.get("DEVTYPE"), Some("disk"));
        assert_eq!(u.get("NOPE"), None);
        let u = Uevent::parse("MAJOR=10\nMINOR=196\nDEVNAME=vfio/vfio\nDEVMODE=0666\n").unwrap();
        assert_eq!(u.devname(), Some("vfio/vfio"));
        assert_eq!(Uevent::parse("").unwrap(), Uevent::default());
    }

    /// Found by the `uevent` fuzz target: `str::lines` cut a `\r` before a `\n` but kept
    /// one at the end of the file, so `MINOR=0\r` read differently with and without a
    /// newline after it, and printed entries did not parse back to themselves.
    #[test]
    fn a_carriage_return_is_part_of_the_value_wherever_the_line_stands() {
        let last = Uevent::parse("MAJOR=8\nMINOR==\u{c}\r").unwrap();
        let inner = Uevent::parse("MAJOR=8\nMINOR==\u{c}\r\n").unwrap();
        assert_eq!(last.get("MINOR"), Some("=\u{c}\r"));
        assert_eq!(inner, last);
        let printed: String = last.entries().map(|(k, v)| format!("{k}={v}\n")).collect();
        assert_eq!(Uevent::parse(&printed).unwrap(), last);
    }

    #[test]
    fn rejects_malformed_uevents() {
        let err = Uevent::parse("MAJOR=8\ngarbage\n").unwrap_err();
        assert_eq!(err.line, 1);
        Uevent::parse("=x\n").unwrap_err();
        Uevent::parse("lower=x\n").unwrap_err();
    }

    #[test]
    fn parses_kinds_and_numbers() {
        assert_eq!("b".parse::<DevKind>().unwrap(), DevKind::Block);
        assert_eq!("char".parse::<DevKind>().unwrap(), DevKind::Char);
        assert_eq!("c".parse::<DevKind>().unwrap(), DevKind::Char);
        assert_eq!("u".parse::<DevKind>().unwrap(), DevKind::Char);
        "x".parse::<DevKind>().unwrap_err();
        let n: DevNumber = "259:3".parse().unwrap();
        assert_eq!((n.major, n.minor), (259, 3));
        for bad in [
            "",
            "8",
            "8:",
            ":0",
            "8:0:1",
            "-1:0",
            "8:x",
            "../8:0",
            "99999999999:0",
        ] {
            bad.parse::<DevNumber>().expect_err(bad);
        }
    }

    #[test]
    fn kinds_and_numbers_round_trip_through_json() {
        for kind in [DevKind::Block, DevKind::Char] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.dir_name()));
            assert_eq!(serde_json::from_str::<DevKind>(&json).unwrap(), kind);
        }
        let n = DevNumber {
            major: 259,
            minor: 3,
        };
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, r#"{"major":259,"minor":3}"#);
        assert_eq!(serde_json::from_str::<DevNumber>(&json).unwrap(), n);
    }

    proptest! {
        #[test]
        fn uevent_never_panics(text in "\\PC{0,300}") {
            let _ = Uevent::parse(&text);
        }

        #[test]
        fn uevent_like_text_round_trips(text in "([A-Z_=a-z0-9/.\r]{0,12}\n){0,10}[A-Z_=\r]{0,4}") {
            if let Ok(u) = Uevent::parse(&text) {
                let _ = u.devname();
                let printed: String = u.entries().map(|(k, v)| format!("{k}={v}\n")).collect();
                prop_assert_eq!(Uevent::parse(&printed).unwrap(), u);
            }
        }

        #[test]
        fn devnumber_never_panics(text in "\\PC{0,30}") {
            let _ = text.parse::<DevNumber>();
        }
    }
}
