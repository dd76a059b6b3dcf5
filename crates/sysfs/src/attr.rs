//! Low-level attribute reads: text files, hex numbers, symlink basenames.
//!
//! sysfs attributes are small text files ending in a newline. These helpers read one, trim
//! it and parse it, and turn every failure into a [`SysfsError`] that names the path.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::SysfsError;

/// Reads a text attribute and trims surrounding whitespace.
pub(crate) fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    let text = fs::read_to_string(path).map_err(|e| SysfsError::read(path, e))?;
    Ok(text.trim().to_owned())
}

/// Like [`read_trimmed`], but a missing file is `None`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::read(path, e)),
    }
}

/// Parses `0x1af4` (or `1af4`) as hex.
pub(crate) fn parse_hex_u32(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// Reads a hex attribute (`0x8086\n`) that must fit in `u16`.
pub(crate) fn read_hex_u16(path: &Path) -> Result<u16, SysfsError> {
    let text = read_trimmed(path)?;
    parse_hex_u32(&text)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| SysfsError::parse(path, &text, "a 16-bit hex number like 0x8086"))
}

/// Reads a hex attribute that must fit in `u8`.
pub(crate) fn read_hex_u8(path: &Path) -> Result<u8, SysfsError> {
    let text = read_trimmed(path)?;
    parse_hex_u32(&text)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| SysfsError::parse(path, &text, "an 8-bit hex number like 0x01"))
}

/// Reads a decimal attribute.
pub(crate) fn read_decimal<T: std::str::FromStr>(
    path: &Path,
    expected: &'static str,
) -> Result<T, SysfsError> {
    let text = read_trimmed(path)?;
    text.parse()
        .map_err(|_| SysfsError::parse(path, &text, expected))
}

/// The last component of a symlink's target, without following it (`driver` →
/// `../../../bus/pci/drivers/e1000e` gives `e1000e`). A missing link is `None`.
pub(crate) fn link_basename(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_link(path) {
        Ok(target) => target
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| Some(n.to_owned()))
            .ok_or_else(|| {
                SysfsError::parse(
                    path,
                    &target.to_string_lossy(),
                    "a symlink to a named object",
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::read(path, e)),
    }
}

/// The names in a directory, sorted. A missing directory is an empty list.
pub(crate) fn list_dir(path: &Path) -> Result<Vec<String>, SysfsError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SysfsError::read(path, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SysfsError::read(path, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// True when `path` is a directory (following symlinks); errors count as "no".
pub(crate) fn is_dir(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_dir())
}
