//! Low-level attribute reads: text files, hex numbers, symlink basenames.
//!
//! sysfs attributes are small text files ending in a newline. These helpers read one, trim
//! it and parse it, and turn every failure into a [`SysfsError`] that names the path.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::SysfsError;

/// Reads a whole small file: open, read, close. Unlike `fs::read_to_string`, no `statx`
/// for a size hint (sysfs reports 4096 for every attribute anyway), and no extra `read`
/// to see EOF when the first one came back short (a sysfs attribute arrives in one read;
/// a short read of a regular file is its end). That is half the syscalls, which matters
/// when an inventory reads tens of thousands of attributes.
pub(crate) fn read_small(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut buf = [0u8; 1024];
    let mut out = Vec::new();
    loop {
        let n = file.read(&mut buf)?;
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
        if n < buf.len() {
            break;
        }
    }
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads a text attribute and trims surrounding whitespace.
pub(crate) fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    let text = read_small(path).map_err(|e| SysfsError::read(path, e))?;
    Ok(text.trim().to_owned())
}

/// Like [`read_trimmed`], but a missing file is `None`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match read_small(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::read(path, e)),
    }
}

/// `base` joined with the relative symlink target `target`, resolving `..` lexically
/// (sysfs links are relative and point within the tree, through real directories).
pub(crate) fn join_link(base: &Path, target: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = base.to_path_buf();
    for part in target.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            Component::RootDir => out = std::path::PathBuf::from("/"),
            other => out.push(other.as_os_str()),
        }
    }
    out
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
    basename_of_link(path, fs::read_link(path))
}

/// [`link_basename`] of a link already read (by path or through a directory fd): `read` is
/// what reading the link at `path` gave.
pub(crate) fn basename_of_link(
    path: &Path,
    read: io::Result<PathBuf>,
) -> Result<Option<String>, SysfsError> {
    match read {
        Ok(target) => link_target_name(target.as_os_str().as_bytes())
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

/// The last component of a symlink's target, as [`Path::file_name`] gives it (`None` for
/// one that ends in `..`), and `None` when it is not UTF-8. Sysfs targets end in a plain
/// name, which is found without parsing the whole path.
pub(crate) fn link_target_name(target: &[u8]) -> Option<&str> {
    match target.rsplit(|b| *b == b'/').next() {
        Some(b"" | b"." | b"..") | None => Path::new(std::ffi::OsStr::from_bytes(target))
            .file_name()
            .and_then(|n| n.to_str()),
        Some(name) => std::str::from_utf8(name).ok(),
    }
}

/// The lines of `text` exactly as [`str::lines`] gives them (`\r\n` ends a line too), found
/// with `memchr`: attributes are parsed for every device of a listing, and the generic
/// `char` searcher behind `str::lines` costs more than the parsing itself.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(end) => {
                // `\n` is ASCII, so both ends are character boundaries.
                let (line, next) = (&rest[..end], &rest[end + 1..]);
                rest = next;
                Some(line.strip_suffix('\r').unwrap_or(line))
            }
            // A last line without `\n` keeps a final `\r`, as `str::lines` does.
            None => Some(std::mem::take(&mut rest)),
        }
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_the_lines_str_gives() {
        for text in [
            "", "\n", "a", "a\n", "a\r\nb", "a\n\nb\n", "\r\n", "a\r", "x\ry\n", "é\nü",
        ] {
            let ours: Vec<&str> = super::lines(text).collect();
            let std: Vec<&str> = text.lines().collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn lines_match_str_lines_on_any_text(text in "[a\r\né]{0,16}") {
            let ours: Vec<&str> = super::lines(&text).collect();
            let std: Vec<&str> = text.lines().collect();
            proptest::prop_assert_eq!(ours, std);
        }

        #[test]
        fn link_target_name_is_what_path_file_name_gives(target in "[a./]{0,10}") {
            let by_path = std::path::Path::new(&target).file_name().and_then(|n| n.to_str());
            proptest::prop_assert_eq!(super::link_target_name(target.as_bytes()), by_path);
        }
    }
}
