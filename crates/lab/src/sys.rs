//! The crate's only `unsafe`: make QEMU die with its parent, and SIGKILL it by pid.
//!
//! A test process that is killed (Ctrl-C, a CI timeout) runs no `Drop`, so QEMU is also tied
//! to it by `PR_SET_PDEATHSIG`: the kernel kills the guest when the thread that spawned it
//! exits. Spawn the guest from the thread that owns it.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arranges for the child started by `cmd` to get SIGKILL when the spawning thread dies.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, kill on ourselves); it touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then we were reparented to init.
            if libc::getppid() == 1 {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Sends SIGKILL to `pid` (the watchdog's way to end a guest it does not own).
pub fn kill_pid(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet (the owner joins the
    // watchdog before it reaps the child), so the pid cannot belong to another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
