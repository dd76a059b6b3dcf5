//! The crate's only `unsafe`: tie a child QEMU's life to the thread that started it.
//!
//! A test process that is killed runs no `Drop`, so a QEMU started by a test fixture is also
//! given `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills it when its parent thread dies, and
//! no stray QEMU outlives a crashed or timed-out test run.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the command's process receive SIGKILL when the spawning thread exits.
pub fn kill_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (prctl), touching no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        })
    }
}
