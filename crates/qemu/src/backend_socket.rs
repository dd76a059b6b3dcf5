//! Is a vhost-user backend listening on its socket? Checked without connecting.
//!
//! QEMU must not be asked to attach a vhost-user device whose backend is not there: with
//! `reconnect` its monitor freezes, without it the chardev fails. So we check first. But we
//! must not *connect* to find out: virtiofsd serves exactly one connection and exits when it
//! closes (checked with virtiofsd 1.14: "Client disconnected, shutting down"), so a probe
//! connection would kill the backend we are about to use. Instead we read the kernel's table
//! of Unix sockets (`/proc/net/unix`) and look for a listening stream socket bound to the
//! path. A backend must bind the absolute path we are given (ours all do).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Why the backend socket is not usable.
#[derive(Debug, thiserror::Error)]
pub enum BackendSocketError {
    /// Nothing at the path.
    #[error("vhost-user backend socket {path} does not exist")]
    Missing {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is at the path.
    #[error("vhost-user backend path {path} is not a socket")]
    NotSocket {
        /// The path.
        path: PathBuf,
    },
    /// A socket file with no process listening on it (a stale file of a dead backend).
    #[error("no vhost-user backend is listening on {path}")]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// The path or the kernel's socket table could not be read.
    #[error("cannot check vhost-user backend socket {path}")]
    Read {
        /// The path that could not be read.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `__SO_ACCEPTCON`: the socket is listening.
const SO_ACCEPTCON: u32 = 0x0001_0000;
/// `SOCK_STREAM`.
const SOCK_STREAM: u32 = 1;

/// Checks that a stream socket at `path` is listening, reading the socket table at
/// `proc_net_unix` (normally `/proc/net/unix`).
pub fn check_listening_in(path: &Path, proc_net_unix: &Path) -> Result<(), BackendSocketError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackendSocketError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(BackendSocketError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BackendSocketError::NotSocket {
            path: path.to_owned(),
        });
    }
    let table =
        std::fs::read_to_string(proc_net_unix).map_err(|source| BackendSocketError::Read {
            path: proc_net_unix.to_owned(),
            source,
        })?;
    if listening_in_table(&table, path) {
        Ok(())
    } else {
        Err(BackendSocketError::NotListening {
            path: path.to_owned(),
        })
    }
}

/// Checks that a stream socket at `path` is listening.
pub fn check_listening(path: &Path) -> Result<(), BackendSocketError> {
    check_listening_in(path, Path::new("/proc/net/unix"))
}

/// Whether the text of `/proc/net/unix` (its header line first) has a listening stream
/// socket bound to `path`.
///
/// Lines end at `\n` only: the kernel prints a socket's path byte for byte, so a `\r` before
/// the `\n` belongs to the path (`str::lines` would drop it).
pub(crate) fn listening_in_table(table: &str, path: &Path) -> bool {
    table
        .split('\n')
        .skip(1)
        .any(|line| is_listener_for(line, path))
}

/// One line of `/proc/net/unix`:
/// `Num RefCount Protocol Flags Type St Inode Path`.
fn is_listener_for(line: &str, path: &Path) -> bool {
    let Some((fields, bound)) = split_unix_line(line) else {
        return false;
    };
    let hex = |f: &str| u32::from_str_radix(f, 16).ok();
    hex(fields[3]).is_some_and(|f| f & SO_ACCEPTCON != 0)
        && hex(fields[4]) == Some(SOCK_STREAM)
        && Path::new(bound) == path
}

/// The seven fields before the path, and the path: the rest of the line, which may hold
/// spaces (the kernel prints it as it is). `None` for a line with no path (an unbound
/// socket).
pub(crate) fn split_unix_line(line: &str) -> Option<([&str; 7], &str)> {
    let mut rest = line;
    let mut fields = [""; 7];
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        (*field, rest) = rest.split_at(end);
    }
    Some((fields, rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    #[test]
    fn a_listening_socket_passes_without_being_connected_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("be.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        check_listening(&path).unwrap();
        // Nobody connected: the backend did not see a client come and go.
        listener.accept().unwrap_err();
    }

    #[test]
    fn a_path_with_spaces_is_matched_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vhost user be.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        check_listening(&path).unwrap();
        // Only the whole path matches, not its first word.
        let line = "0000000000000000: 00000002 00000000 00010000 0001 01  4242 /run/a b.sock";
        assert!(is_listener_for(line, Path::new("/run/a b.sock")));
        assert!(!is_listener_for(line, Path::new("/run/a")));
        assert!(!is_listener_for(
            "0000000000000000: 00000002 00000000 00010000 0001 01  4242",
            Path::new("")
        ));
    }

    #[test]
    fn missing_stale_and_non_socket_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("be.sock");
        assert!(matches!(
            check_listening(&path),
            Err(BackendSocketError::Missing { .. })
        ));
        // A stale socket file: bound once, listener gone.
        drop(UnixListener::bind(&path).unwrap());
        let err = check_listening(&path).unwrap_err();
        assert!(
            matches!(err, BackendSocketError::NotListening { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("be.sock"));
        UnixStream::connect(&path).unwrap_err();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_listening(&file),
            Err(BackendSocketError::NotSocket { .. })
        ));
    }

    /// The `str::lines` fault the `uevent` fuzz target found, seen here by review (the
    /// `proc_net_unix` target now checks it): read with `str::lines`, a socket bound to a
    /// path ending in `\r` lost the `\r`, so its own path was "not listening" and the path
    /// without it was taken for a listener.
    #[test]
    fn a_carriage_return_ending_a_path_is_part_of_it() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                     0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/a\r\n";
        assert!(listening_in_table(table, Path::new("/run/a\r")));
        assert!(!listening_in_table(table, Path::new("/run/a")));
    }

    #[test]
    fn parses_the_kernel_table() {
        let p = Path::new("/tmp/vf/fs.sock");
        let listening =
            "000000002284cc38: 00000002 00000000 00010000 0001 01 31352 /tmp/vf/fs.sock";
        let connected =
            "000000002284cc38: 00000003 00000000 00000000 0001 03 31353 /tmp/vf/fs.sock";
        let dgram = "000000002284cc38: 00000002 00000000 00010000 0002 01 31352 /tmp/vf/fs.sock";
        assert!(is_listener_for(listening, p));
        assert!(!is_listener_for(connected, p));
        assert!(!is_listener_for(dgram, p));
        assert!(!is_listener_for(listening, Path::new("/tmp/vf/fs.sock2")));
        assert!(!is_listener_for("garbage", p));
    }
}
