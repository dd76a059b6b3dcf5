//! The guest's root filesystem: busybox, the lab `/init`, and the programs to run, each with
//! the shared libraries `ldd` lists for it (the workspace's dev-profile binaries are
//! dynamically linked; copying their libraries avoids a second, static build).
//!
//! Binaries are copied with their debug info stripped (`strip --strip-debug`) by default:
//! dev-profile test binaries are mostly DWARF, and the whole image lives in guest RAM.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{LabError, Result};
use crate::paths::lab_dir;

/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    HostFile { host: PathBuf, perm: u32 },
    Bytes { data: Vec<u8>, perm: u32 },
    Symlink(String),
    CharDev(u32, u32),
}

/// An initramfs being put together. [`Initramfs::new`] already holds busybox and `/init`.
#[derive(Debug)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    strip: bool,
    scratch: tempfile::TempDir,
    stripped: usize,
}

impl Initramfs {
    /// The base image: busybox (from `/bin/busybox`), the lab `/init` (`lab/guest/init`),
    /// the usual directories and `/dev/console`.
    pub fn new() -> Result<Self> {
        Self::with_busybox(Path::new(BUSYBOX))
    }

    /// The base image with a static busybox from `busybox` instead of `/bin/busybox`.
    pub fn with_busybox(busybox: &Path) -> Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("plugboard-lab-initramfs.")
            .tempdir()
            .map_err(|e| LabError::io("create temp dir", std::env::temp_dir(), e))?;
        let mut me = Self {
            entries: BTreeMap::new(),
            strip: true,
            scratch,
            stripped: 0,
        };
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc",
        ] {
            me.entries.insert(d.to_string(), Entry::Dir);
        }
        me.entries
            .insert("dev/console".into(), Entry::CharDev(5, 1));
        let busybox = busybox.to_path_buf();
        if !busybox.is_file() {
            return Err(LabError::io(
                "busybox not found (install busybox-static, lab/install-deps.sh):",
                busybox,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        me.insert(
            "bin/busybox",
            Entry::HostFile {
                host: busybox,
                perm: 0o755,
            },
        );
        me.insert("bin/sh", Entry::Symlink("busybox".into()));
        let init = lab_dir().join("guest/init");
        let data = fs::read(&init).map_err(|e| LabError::io("read", &init, e))?;
        me.insert("init", Entry::Bytes { data, perm: 0o755 });
        me.insert(
            "etc/passwd",
            Entry::Bytes {
                data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
                perm: 0o644,
            },
        );
        me.insert(
            "etc/group",
            Entry::Bytes {
                data: b"root:x:0:\n".to_vec(),
                perm: 0o644,
            },
        );
        Ok(me)
    }

    /// Whether to strip debug info from binaries added from now on (default: yes).
    pub fn strip_debug(&mut self, strip: bool) -> &mut Self {
        self.strip = strip;
        self
    }

    /// Adds the host's QEMU as `/usr/bin/qemu-system-x86_64`, with the SeaBIOS image
    /// Debian's QEMU looks for in `/usr/share/seabios`, for a nested QEMU in the guest.
    /// `qemu` is a path, or a name looked up in `/usr/bin`.
    pub fn add_qemu(&mut self, qemu: &Path) -> Result<&mut Self> {
        let qemu = if qemu.is_absolute() {
            qemu.to_path_buf()
        } else {
            Path::new("/usr/bin").join(qemu)
        };
        self.add_binary(&qemu, "/usr/bin/qemu-system-x86_64")?;
        self.add_file(
            Path::new("/usr/share/seabios/bios-256k.bin"),
            "/usr/share/seabios/bios-256k.bin",
            0o644,
        );
        Ok(self)
    }

    /// Adds a host program at `guest` (an absolute guest path) together with the shared
    /// libraries it needs, each at its host path. A static program needs none.
    pub fn add_binary(&mut self, host: &Path, guest: &str) -> Result<&mut Self> {
        let source = self.maybe_stripped(host)?;
        self.insert(
            guest,
            Entry::HostFile {
                host: source,
                perm: 0o755,
            },
        );
        for lib in shared_libraries(host)? {
            let key = lib.display().to_string();
            if !self.entries.contains_key(key.trim_start_matches('/')) {
                self.insert(
                    &key,
                    Entry::HostFile {
                        host: lib,
                        perm: 0o755,
                    },
                );
            }
        }
        Ok(self)
    }

    /// Adds a host file as is at `guest`, with permission bits `perm`.
    pub fn add_file(&mut self, host: &Path, guest: &str, perm: u32) -> &mut Self {
        self.insert(
            guest,
            Entry::HostFile {
                host: host.to_path_buf(),
                perm,
            },
        );
        self
    }

    /// Adds a file with the given contents at `guest`.
    pub fn add_bytes(&mut self, guest: &str, data: &[u8], perm: u32) -> &mut Self {
        self.insert(
            guest,
            Entry::Bytes {
                data: data.to_vec(),
                perm,
            },
        );
        self
    }

    /// Adds a symbolic link at `guest` pointing to `target`.
    pub fn add_symlink(&mut self, guest: &str, target: &str) -> &mut Self {
        self.insert(guest, Entry::Symlink(target.to_string()));
        self
    }

    /// The guest paths in the image, sorted (directories included).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the image as an uncompressed newc cpio to `path`; returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let file = fs::File::create(path).map_err(|e| LabError::io("create", path, e))?;
        let mut w = CpioWriter::new(BufWriter::with_capacity(1 << 20, file));
        let io = |e| LabError::io("write", path, e);
        for (name, entry) in &self.entries {
            match entry {
                Entry::Dir => w.dir(name, 0o755).map_err(io)?,
                Entry::HostFile { host, perm } => {
                    let data = fs::read(host).map_err(|e| LabError::io("read", host, e))?;
                    w.file(name, *perm, &data).map_err(io)?;
                }
                Entry::Bytes { data, perm } => w.file(name, *perm, data).map_err(io)?,
                Entry::Symlink(target) => w.symlink(name, target).map_err(io)?,
                Entry::CharDev(major, minor) => {
                    w.char_dev(name, 0o600, *major, *minor).map_err(io)?;
                }
            }
        }
        w.finish().map_err(io)?;
        fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| LabError::io("stat", path, e))
    }

    /// Inserts an entry and every missing parent directory.
    fn insert(&mut self, guest: &str, entry: Entry) {
        let name = guest.trim_start_matches('/').to_string();
        let mut parent = Path::new(&name).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy().to_string();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s).or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.entries.insert(name, entry);
    }

    /// A debug-stripped copy of `host` in the scratch dir, or `host` itself.
    fn maybe_stripped(&mut self, host: &Path) -> Result<PathBuf> {
        if !host.is_file() {
            return Err(LabError::io(
                "no such program",
                host,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        if !self.strip {
            return Ok(host.to_path_buf());
        }
        self.stripped += 1;
        let out = self.scratch.path().join(format!("bin{}", self.stripped));
        let ok = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(host)
            .output()
            .is_ok_and(|o| o.status.success());
        Ok(if ok { out } else { host.to_path_buf() })
    }
}

/// The shared libraries (and dynamic loader) `ldd` lists for `program`; empty when static.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|source| LabError::Spawn {
            program: "ldd".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 for "not a dynamic executable" (static programs).
        return Ok(Vec::new());
    }
    parse_ldd(&text).map_err(|line| LabError::Tool {
        program: format!("ldd {}", program.display()),
        status: "unresolved library".into(),
        detail: line,
    })
}

/// Parses `ldd` output into library paths; an unresolved library is an error (its line).
fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(line.to_string());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so => not found\n"),
            Err("libfoo.so => not found".to_string())
        );
    }

    #[test]
    fn parents_are_created_and_libraries_come_along() {
        let dir = tempfile::tempdir().unwrap();
        let busybox = dir.path().join("busybox");
        fs::write(&busybox, vec![0u8; 1_000_000]).unwrap();
        let mut img = Initramfs::with_busybox(&busybox).unwrap();
        // Any dynamically linked host program does: bash is essential on Debian.
        let sh = Path::new("/bin/bash");
        img.add_binary(sh, "/usr/local/bin/hostbash").unwrap();
        let paths: Vec<&str> = img.paths().collect();
        assert!(paths.contains(&"usr/local"), "{paths:?}");
        assert!(paths.contains(&"usr/local/bin/hostbash"));
        assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
        assert!(paths.contains(&"init") && paths.contains(&"dev/console"));
        let size = img.write(&dir.path().join("i.cpio")).unwrap();
        assert!(size > 1_000_000, "busybox alone is 1 MB: {size}");
        let err = Initramfs::with_busybox(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().contains("busybox not found"), "{err}");
    }
}
