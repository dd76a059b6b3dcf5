//! The crate's only `unsafe`: tie a child QEMU's life to the thread that started it.
//!
//! A test process that is killed runs no `Drop`, so a QEMU started by a test fixture is also
//! given `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills it when its parent thread dies, and
//! no stray QEMU outlives a crashed or timed-out test run.
//!
//! Also the one receive-with-file-descriptors that the test fakes share.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
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

/// What one [`recv_with_fds`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvOutcome {
    /// `bytes` bytes, with `fds` file descriptors riding on them (already closed).
    Data {
        /// Bytes read into the buffer.
        bytes: usize,
        /// File descriptors received.
        fds: usize,
    },
    /// Nothing yet (the read timed out or was interrupted): try again.
    Again,
    /// The peer closed the connection, or the socket failed.
    Closed,
}

/// Reads from `stream` into `buf`, counting the `SCM_RIGHTS` file descriptors that came
/// with the bytes and closing them: what the fake QMP server and the fake vhost-user
/// backend need of the fds QEMU sends (they check that fds arrived, never use them).
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> RecvOutcome {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    );
    let bytes = match got {
        Ok(msg) if msg.bytes == 0 => return RecvOutcome::Closed,
        Ok(msg) => msg.bytes,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return RecvOutcome::Again,
        Err(_) => return RecvOutcome::Closed,
    };
    let mut fds = 0;
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(rights) = msg {
            // Dropping each `OwnedFd` closes it.
            fds += rights.count();
        }
    }
    RecvOutcome::Data { bytes, fds }
}
