//! The one error type of the lab harness.
//!
//! Every message names the thing that failed (a path, a command, a QMP command) and the
//! console tail when the guest is involved, because a lab failure is read in CI logs.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while building, booting or talking to the lab guest.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file or directory operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done ("read", "create run dir", ...).
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A host program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A host helper program ran but failed.
    #[error("{program} failed ({status}): {detail}")]
    Tool {
        /// The program and its main argument.
        program: String,
        /// Its exit status.
        status: String,
        /// The last lines of its error output, or what was wrong with its output.
        detail: String,
    },
    /// The guest did not print its ready line in time; it was killed.
    #[error(
        "lab guest did not boot within {timeout:?} ({accel}); killed it. Console tail:\n{tail}"
    )]
    BootTimeout {
        /// The boot deadline.
        timeout: Duration,
        /// The accelerator used.
        accel: String,
        /// The last console output.
        tail: String,
    },
    /// QEMU exited while we were waiting for the guest.
    #[error(
        "lab guest exited ({status}) while {during}. Console tail:\n{tail}\nQEMU stderr:\n{stderr}"
    )]
    GuestExited {
        /// QEMU's exit status.
        status: String,
        /// What we were waiting for.
        during: String,
        /// The last console output.
        tail: String,
        /// QEMU's own error output.
        stderr: String,
    },
    /// A guest command did not finish in time; the guest was asked for its state, then
    /// killed.
    #[error(
        "guest command `{command}` did not finish within {timeout:?}; killed the guest. Output tail:\n{tail}\n{diagnostics}"
    )]
    ExecTimeout {
        /// The command (shortened).
        command: String,
        /// Its deadline.
        timeout: Duration,
        /// The output seen so far.
        tail: String,
        /// The guest's state at the deadline: its blocked tasks with their kernel stacks,
        /// every user thread's state, syscall, wait channel and kernel stack, open files,
        /// and the kernel log since the command started; or why the guest gave none.
        diagnostics: String,
    },
    /// The guest is not running any more (it was killed or powered off).
    #[error("lab guest is not running (it was {0})")]
    NotRunning(&'static str),
    /// The QMP socket misbehaved.
    #[error("QMP {socket}: {detail}")]
    Qmp {
        /// The socket path.
        socket: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// QMP answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's error description.
        desc: String,
    },
}

impl LabError {
    /// Whether QEMU itself died from a signal (an assertion's abort) before the guest was
    /// ready: a QEMU crash, which a caller may retry once, unlike a guest that fails.
    pub fn is_qemu_abort_while_booting(&self) -> bool {
        matches!(self, Self::GuestExited { status, during, .. }
            if during == "booting" && status.contains("signal"))
    }

    /// Shorthand for [`LabError::Io`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, LabError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(status: &str, during: &str) -> LabError {
        LabError::GuestExited {
            status: status.into(),
            during: during.into(),
            tail: String::new(),
            stderr: String::new(),
        }
    }

    #[test]
    fn only_a_qemu_killed_by_a_signal_while_booting_is_retried() {
        assert!(exited("signal: 6 (SIGABRT)", "booting").is_qemu_abort_while_booting());
        // QEMU's own error exit (bad arguments), or a guest that powered off or panicked
        // (`-no-reboot`): not a QEMU crash.
        assert!(!exited("exit status: 1", "booting").is_qemu_abort_while_booting());
        assert!(!exited("exit status: 0", "booting").is_qemu_abort_while_booting());
        // After boot, a crash fails the test that saw it.
        assert!(!exited("signal: 6 (SIGABRT)", "running a command").is_qemu_abort_while_booting());
        assert!(
            !LabError::NotRunning("never started").is_qemu_abort_while_booting(),
            "other errors are not retried"
        );
    }
}
