//! Host-side lab tests: each boots a lab guest under QEMU from the host and drives it
//! (commands over the serial console, hotplug over QMP).
//!
//! They need QEMU and the lab kernel, so they are `#[ignore]`d and `cargo test` stays
//! hermetic; `lab/run-tests.sh` runs them with `--ignored --test-threads=1`.

mod deadlines;
mod hotplug;
mod topology;

use plugboard_lab::{Guest, LabError};

/// The reason every test here gives for being ignored.
pub const IGNORE: &str = "boots the lab guest (lab/run-tests.sh)";

/// Boots the standard guest and says which accelerator ran.
pub fn boot() -> Guest {
    let guest =
        Guest::boot_default().unwrap_or_else(|e: LabError| panic!("lab guest failed to boot: {e}"));
    eprintln!(
        "lab guest booted in {:?} with {}{}",
        guest.boot_time(),
        guest.accel(),
        guest
            .accel_note()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    guest
}

/// Runs `script` in the guest and returns its output; panics (with the output) if it fails.
pub fn sh(guest: &mut Guest, script: &str) -> String {
    let out = guest
        .exec(script)
        .unwrap_or_else(|e| panic!("guest `{script}`: {e}"));
    assert!(
        out.success(),
        "guest `{script}` exited {}:\n{}",
        out.status,
        out.output
    );
    out.output
}
