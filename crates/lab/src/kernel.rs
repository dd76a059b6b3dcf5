//! The guest kernel: a prebuilt one from `PLUGBOARD_LAB_KERNEL`, or the cached build of
//! `lab/build-kernel.sh` (which builds it when missing, ~8 minutes on 2 cores).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{LabError, Result};
use crate::paths::lab_dir;

/// Returns the path of the lab kernel's bzImage, building it if it is not cached.
///
/// The build's progress goes to our stderr; the script's last stdout line is the path.
pub fn kernel() -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("PLUGBOARD_LAB_KERNEL") {
        let k = PathBuf::from(k);
        if !k.is_file() {
            return Err(LabError::Tool {
                program: "PLUGBOARD_LAB_KERNEL".into(),
                status: "bad value".into(),
                detail: format!("{} is not a file", k.display()),
            });
        }
        return Ok(k);
    }
    let script = lab_dir().join("build-kernel.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| LabError::Spawn {
            program: script.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or("").trim();
    if !out.status.success() || path.is_empty() {
        return Err(LabError::Tool {
            program: script.display().to_string(),
            status: out.status.to_string(),
            detail: "see its messages above".into(),
        });
    }
    Ok(PathBuf::from(path))
}
