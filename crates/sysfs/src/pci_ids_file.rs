//! `pci.ids` read by seeking: only the blocks of the vendors asked for, and the classes.
//!
//! The database lists vendors in ascending ID order, each vendor line (`8086  Intel
//! Corporation`) followed by its device lines (one tab) and their subsystem lines (two
//! tabs), and ends with the class section (`C 02  Network controller`, subclasses with a
//! tab). So a vendor's block is found by binary search over byte offsets: from a probe
//! offset, the next vendor or class line (a "top" line) says on which side the wanted
//! vendor lies. Each probe is one 16 KiB `pread`; a lookup reads a few dozen kilobytes of
//! the 1.3 MB file instead of all of it, and nothing outside the wanted blocks is parsed.
//!
//! In a file that is not sorted (hand-edited) a vendor can look absent; when that is a
//! device's own vendor, the caller (`names.rs`) scans the whole file instead. Debian's and
//! upstream's files are sorted.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read per probe.
const WINDOW: usize = 16 * 1024;

/// A top-level line: a vendor, or the start of the class section (after every vendor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Top {
    /// `XXXX  Name`.
    Vendor(u16),
    /// `C XX  Name`.
    Classes,
}

/// Where a walk over one window of lines stopped.
enum Step {
    /// A top-level line.
    Found(u64, Top),
    /// The limit or the end of the file.
    Stop,
    /// A line whose head is not all in the window: read a window from it.
    ReadFrom(u64),
    /// A line that does not end in the window.
    PastLine(u64),
}

/// An open `pci.ids` with one cached window of bytes.
#[derive(Debug)]
pub(crate) struct IdsFile {
    file: File,
    len: u64,
    window: Vec<u8>,
    window_at: u64,
}

fn hex4(bytes: &[u8]) -> Option<u16> {
    let digits = bytes.get(..4)?;
    let mut value = 0u16;
    for &b in digits {
        let digit = char::from(b).to_digit(16)?;
        value = (value << 4) | u16::try_from(digit).ok()?;
    }
    Some(value)
}

/// What the line starting with `head` is, when it is a top-level line.
fn classify(head: &[u8]) -> Option<Top> {
    if head.starts_with(b"C ") {
        return Some(Top::Classes);
    }
    let vendor = hex4(head)?;
    (head.get(4) == Some(&b' ')).then_some(Top::Vendor(vendor))
}

impl IdsFile {
    /// Opens `path`; `None` when there is no such file.
    pub(crate) fn open(path: &Path) -> io::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok(Some(Self {
            file,
            len,
            window: Vec::new(),
            window_at: 0,
        }))
    }

    /// The bytes from `at` on (at least one unless at the end; up to a window).
    fn bytes_at(&mut self, at: u64) -> io::Result<&[u8]> {
        let end = self.window_at + u64::try_from(self.window.len()).unwrap_or(0);
        // From the window when `at` is inside it with a line head's worth of bytes after
        // it (or the rest of the file); else a new window starting at `at`.
        let inside = at >= self.window_at && at < end && (end - at >= 8 || end == self.len);
        if !inside {
            self.window.resize(WINDOW, 0);
            let mut got = 0;
            while got < WINDOW {
                let n = self.file.read_at(
                    &mut self.window[got..],
                    at + u64::try_from(got).unwrap_or(0),
                )?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.window.truncate(got);
            self.window_at = at;
        }
        let offset = usize::try_from(at - self.window_at).unwrap_or(usize::MAX);
        Ok(self.window.get(offset..).unwrap_or_default())
    }

    /// The offset just past the next `\n` at or after `from`, or `None` at the end.
    fn next_line(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        while at < self.len {
            let bytes = self.bytes_at(at)?;
            if bytes.is_empty() {
                return Ok(None);
            }
            match memchr::memchr(b'\n', bytes) {
                Some(i) => return Ok(Some(at + u64::try_from(i).unwrap_or(0) + 1)),
                None => at += u64::try_from(bytes.len()).unwrap_or(0),
            }
        }
        Ok(None)
    }

    /// The start of the first line that starts at or after `pos`.
    fn line_start(&mut self, pos: u64) -> io::Result<Option<u64>> {
        if pos == 0 {
            return Ok(Some(0));
        }
        if self.bytes_at(pos - 1)?.first() == Some(&b'\n') {
            return Ok(Some(pos));
        }
        self.next_line(pos)
    }

    /// The first top-level line starting in `[pos, limit)`. Walks the lines of each
    /// window in place (`memchr` from one line start to the next), since a probe can land
    /// in a vendor block of ten thousand device lines (Intel's is 370 KB).
    fn top_from(&mut self, pos: u64, limit: u64) -> io::Result<Option<(u64, Top)>> {
        let limit = limit.min(self.len);
        let Some(mut at) = self.line_start(pos)? else {
            return Ok(None);
        };
        while at < limit {
            let len = self.len;
            let step = {
                let bytes = self.bytes_at(at)?;
                let whole = at + u64::try_from(bytes.len()).unwrap_or(0) == len;
                let mut i = 0;
                // The lines starting in this window, their heads inside it.
                loop {
                    let line = bytes.get(i..).unwrap_or_default();
                    let start = at + u64::try_from(i).unwrap_or(0);
                    if start >= limit {
                        break Step::Stop;
                    }
                    if line.len() < 8 && !whole {
                        // The head may run past the window (or the window ended on a
                        // line end): read on from this line.
                        break Step::ReadFrom(start);
                    }
                    if line.is_empty() {
                        break Step::Stop;
                    }
                    if let Some(top) = classify(line) {
                        break Step::Found(start, top);
                    }
                    match memchr::memchr(b'\n', line) {
                        Some(j) => i += j + 1,
                        None => break Step::PastLine(start),
                    }
                }
            };
            at = match step {
                Step::Found(start, top) => return Ok(Some((start, top))),
                Step::Stop => return Ok(None),
                Step::ReadFrom(start) => start,
                // A line longer than the window: its end, then on.
                Step::PastLine(start) => match self.next_line(start)? {
                    Some(next) => next,
                    None => return Ok(None),
                },
            };
        }
        Ok(None)
    }

    /// The first top-level line whose key is at least `want`.
    fn lower_bound(&mut self, want: Top) -> io::Result<Option<(u64, Top)>> {
        let (mut lo, mut hi) = (0, self.len);
        // The first top line at or after `hi`, once a probe has seen one not below `want`.
        let mut candidate = None;
        while hi - lo > WINDOW as u64 {
            let mid = lo + (hi - lo) / 2;
            match self.top_from(mid, hi)? {
                // Every top line up to this one is below `want`.
                Some((at, top)) if top < want => lo = at + 1,
                // The answer is this one, or one before `mid`.
                Some(found) => {
                    candidate = Some(found);
                    hi = mid;
                }
                // No top line in [mid, hi): the answer is before `mid`, or the candidate.
                None => hi = mid,
            }
        }
        let mut at = lo;
        while let Some((start, top)) = self.top_from(at, hi)? {
            if top >= want {
                return Ok(Some((start, top)));
            }
            at = start + 1;
        }
        Ok(candidate)
    }

    /// The bytes in `[from, to)`.
    fn read_range(&self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0; usize::try_from(to.saturating_sub(from)).unwrap_or(0)];
        self.file.read_exact_at(&mut out, from)?;
        Ok(out)
    }

    /// The block of `vendor` (its line, device and subsystem lines), or `None` when the
    /// file has no such vendor.
    pub(crate) fn vendor_block(&mut self, vendor: u16) -> io::Result<Option<Vec<u8>>> {
        let Some((start, top)) = self.lower_bound(Top::Vendor(vendor))? else {
            return Ok(None);
        };
        if top != Top::Vendor(vendor) {
            return Ok(None);
        }
        let end = self
            .top_from(start + 1, self.len)?
            .map_or(self.len, |(next, _)| next);
        self.read_range(start, end).map(Some)
    }

    /// The class section, from its first `C` line to the end (empty when there is none).
    pub(crate) fn classes(&mut self) -> io::Result<Vec<u8>> {
        match self.lower_bound(Top::Classes)? {
            Some((start, Top::Classes)) => self.read_range(start, self.len),
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sorted database of `vendors` vendors (IDs 0x0010, 0x0020, ...), each with
    /// `devices` devices of one subsystem each, then two classes.
    fn database(vendors: u16, devices: u16) -> String {
        let mut text = String::from("# header comment\n#\n\n");
        for v in 1..=vendors {
            let vendor = v * 0x10;
            text.push_str(&format!("{vendor:04x}  Vendor {vendor:04x}\n"));
            for d in 0..devices {
                text.push_str(&format!("\t{d:04x}  Device {vendor:04x}:{d:04x}\n"));
                text.push_str(&format!(
                    "\t\t{vendor:04x} {d:04x}  Sub {vendor:04x}:{d:04x}\n"
                ));
            }
            if v % 7 == 0 {
                text.push_str("# a comment between vendors\n\n");
            }
        }
        text.push_str("\n# List of known device classes\nC 00  Unclassified device\n\t00  Non-VGA\nC 02  Network controller\n\t00  Ethernet controller\n");
        text
    }

    fn file_of(text: &str) -> (tempfile::TempDir, IdsFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pci.ids");
        std::fs::write(&path, text).unwrap();
        let file = IdsFile::open(&path).unwrap().unwrap();
        (dir, file)
    }

    /// The block as a line scan of the whole text finds it.
    fn scanned(text: &str, vendor: u16) -> Option<String> {
        let head = format!("{vendor:04x}  ");
        let start = text.find(&format!("\n{head}"))? + 1;
        let rest = &text[start..];
        let mut end = rest.len();
        let mut offset = 0;
        for line in rest.split_inclusive('\n') {
            if offset > 0 && classify(line.as_bytes()).is_some() {
                end = offset;
                break;
            }
            offset += line.len();
        }
        Some(rest[..end].to_owned())
    }

    #[test]
    fn finds_every_vendor_first_last_and_middle_as_a_scan_does() {
        // Big enough for many probes (about 400 KB), small vendors and a large one.
        let text = database(300, 40);
        let (_dir, mut file) = file_of(&text);
        for v in 1..=300u16 {
            let vendor = v * 0x10;
            let got = file
                .vendor_block(vendor)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap());
            assert_eq!(got, scanned(&text, vendor), "vendor {vendor:04x}");
            assert!(got.is_some());
        }
        let classes = String::from_utf8(file.classes().unwrap()).unwrap();
        assert!(
            classes.starts_with("C 00  Unclassified device\n"),
            "{classes}"
        );
        assert!(
            classes.ends_with("\t00  Ethernet controller\n"),
            "{classes}"
        );
    }

    #[test]
    fn a_missing_vendor_is_none_before_between_and_after() {
        let text = database(300, 40);
        let (_dir, mut file) = file_of(&text);
        for vendor in [0x0000, 0x0001, 0x0015, 0x0a05, 0x12c1, 0xffff] {
            assert_eq!(file.vendor_block(vendor).unwrap(), None, "{vendor:04x}");
        }
    }

    #[test]
    fn small_files_and_odd_shapes() {
        // Smaller than a window: the linear path alone.
        let (_dir, mut file) = file_of("8086  Intel\n\t10d3  NIC\nC 02  Network\n");
        assert_eq!(
            file.vendor_block(0x8086).unwrap().as_deref(),
            Some(&b"8086  Intel\n\t10d3  NIC\n"[..])
        );
        // No class section, no final newline.
        let (_dir, mut file) = file_of("1af4  Red Hat\n\t1041  virtio");
        assert_eq!(
            file.vendor_block(0x1af4).unwrap().as_deref(),
            Some(&b"1af4  Red Hat\n\t1041  virtio"[..])
        );
        assert!(file.classes().unwrap().is_empty());
        // Empty file.
        let (_dir, mut file) = file_of("");
        assert_eq!(file.vendor_block(0x8086).unwrap(), None);
        assert!(file.classes().unwrap().is_empty());
        // One huge vendor block spanning many windows, between two small ones.
        let mut text = String::from("0001  First\n1234  Huge\n");
        for d in 0..20_000u32 {
            text.push_str(&format!("\t{:04x}  Device {d}\n", d % 0x10000));
        }
        text.push_str("fffe  Last\n\t0001  Only\nC 02  Network\n");
        let (_dir, mut file) = file_of(&text);
        assert_eq!(
            file.vendor_block(0xfffe).unwrap().as_deref(),
            Some(&b"fffe  Last\n\t0001  Only\n"[..])
        );
        assert_eq!(
            file.vendor_block(0x0001).unwrap().as_deref(),
            Some(&b"0001  First\n"[..])
        );
        let huge = file.vendor_block(0x1234).unwrap().unwrap();
        assert!(huge.starts_with(b"1234  Huge\n\t0000  Device 0\n"));
        assert!(huge.ends_with(b"Device 19999\n"));
        assert_eq!(file.vendor_block(0x5000).unwrap(), None);
    }

    #[test]
    fn windows_that_end_exactly_on_a_line_end() {
        // Every line 16 bytes, so every window of 16 KiB read from a line start ends on a
        // line end: the walk must read on, not stop.
        let mut text = String::from("# 16-byte lines\n");
        for v in 1..=200u16 {
            text.push_str(&format!("{v:04x}  Vend {v:04x}\n"));
            for d in 0..(v % 9) * 40 {
                text.push_str(&format!("\t{d:04x}  Dev {d:04x}\n"));
            }
        }
        text.push_str("C 02  Network  \n");
        let (_dir, mut file) = file_of(&text);
        for v in 1..=200u16 {
            let got = file
                .vendor_block(v)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap());
            assert_eq!(got, scanned(&text, v), "vendor {v:04x}");
        }
        assert_eq!(file.classes().unwrap(), b"C 02  Network  \n");
    }

    #[test]
    fn no_file_is_none() {
        assert!(
            IdsFile::open(Path::new("/nonexistent/pci.ids"))
                .unwrap()
                .is_none()
        );
    }
}
