//! Where the lab's files are: the repository's `lab/` directory and the cache.
//!
//! The harness is a dev tool of this workspace, so it finds `lab/` next to its own crate
//! (`PLUGBOARD_LAB_DIR` overrides that, e.g. for a copied-out harness).

use std::path::PathBuf;

/// The workspace root (two levels above this crate), or the parent of `PLUGBOARD_LAB_DIR`.
pub fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PLUGBOARD_LAB_DIR") {
        let dir = PathBuf::from(dir);
        if let Some(parent) = dir.parent() {
            return parent.to_path_buf();
        }
    }
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(|p| p.parent())
        .map_or(crate_dir.clone(), std::path::Path::to_path_buf)
}

/// The repository's `lab/` directory (scripts, kernel fragment, guest `/init`).
pub fn lab_dir() -> PathBuf {
    std::env::var_os("PLUGBOARD_LAB_DIR")
        .map_or_else(|| workspace_root().join("lab"), PathBuf::from)
}

/// The lab's cache: `PLUGBOARD_LAB_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/plugboard/lab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PLUGBOARD_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("plugboard").join("lab")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_dir_holds_the_kernel_script_and_init() {
        let lab = lab_dir();
        assert!(lab.join("build-kernel.sh").is_file(), "{}", lab.display());
        assert!(lab.join("guest/init").is_file(), "{}", lab.display());
        assert!(lab.join("kernel/lab.config").is_file(), "{}", lab.display());
    }
}
