//! The daemon's Unix socket: created `0660` with a chosen group, and the peer's uid read
//! from it for every connection (`SO_PEERCRED`, through tokio's `peer_cred`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// The peer of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Its uid; `None` when the kernel would not say (then only reads are allowed).
    pub uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let uid = match stream.io().peer_cred() {
            Ok(cred) => Some(cred.uid()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; treating it as nobody");
                None
            }
        };
        Self { uid }
    }
}

/// Binds the socket at `path` (its directory is created), mode `0660`, group `group` when
/// given. A stale socket file is replaced; a live one (another daemon) is an error.
pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another daemon is listening on it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the socket {}", path.display()))?;
    // Until the chmod below the socket has the umask's mode (at most 0755): connecting
    // needs write permission, so only its owner could connect in between.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    Ok(listener)
}

/// A group given by name or number, resolved through `/etc/group`.
pub fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .with_context(|| format!("no group named {group:?} in /etc/group"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("123").unwrap(), 123);
        assert_eq!(resolve_group("root").unwrap(), 0);
        let err = resolve_group("no-such-group-here").unwrap_err();
        assert!(err.to_string().contains("no-such-group-here"), "{err}");
    }

    #[tokio::test]
    async fn the_socket_is_0660_and_a_live_one_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/plugboard.sock");
        let listener = bind(&path, Some(0)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), 0);
        let err = bind(&path, None).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(listener);
        bind(&path, None).unwrap();
    }
}
