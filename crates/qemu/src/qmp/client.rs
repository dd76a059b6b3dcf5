//! A synchronous QMP client over a Unix stream socket.
//!
//! Synchronous on purpose: the `Hypervisor` trait of plugboard-devices is synchronous, and
//! one VM's monitor is a strictly ordered conversation, so a blocking client with a read
//! timeout per call is simpler than an async runtime and loses nothing.
//!
//! Every call has a deadline. A reply is matched to its command by the `id` we attach, so a
//! reply that arrives after its command timed out is recognised and dropped instead of being
//! taken for the answer to the next command. Events read while waiting are queued (see
//! `events.rs`). End of stream or a reset mid-call is [`QmpError::Disconnected`], which names
//! the command that was in flight.

use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::events::{Event, EventQueue};
use super::wire::{self, Greeting, Incoming, LineBuffer, QmpFailure, WireError};

/// The deadline of a call when the caller gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The monitor socket could not be reached.
    #[error("cannot connect to the QMP socket {socket}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the connection (it exited or was killed) while `command` was in flight.
    #[error("QEMU went away (QMP socket {socket} closed) during {command}")]
    Disconnected {
        /// The socket path.
        socket: PathBuf,
        /// The command in flight, or `greeting`/`wait for event`.
        command: String,
    },
    /// No answer before the deadline.
    #[error("QMP {command} on {socket} got no answer within {after:?}")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The command (or `greeting`/`wait for event`).
        command: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// A read or write on the socket failed.
    #[error("QMP socket {socket} I/O error during {command}")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The command in flight.
        command: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP socket {socket} sent a malformed message")]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// What was wrong with it.
        #[source]
        source: WireError,
    },
    /// QEMU sent a valid message at the wrong moment (no greeting first, a second greeting).
    #[error("QMP socket {socket}: unexpected {what}")]
    Unexpected {
        /// The socket path.
        socket: PathBuf,
        /// What came.
        what: String,
    },
    /// QEMU ran the command and refused it.
    #[error("QEMU refused {command}: {} ({})", failure.desc, failure.class)]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class and description.
        failure: QmpFailure,
    },
}

impl QmpError {
    /// QEMU's refusal, when this is one.
    pub fn failure(&self) -> Option<&QmpFailure> {
        match self {
            Self::Command { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// Whether QEMU is gone (closed socket, or the socket could not be reached).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected { .. } | Self::Connect { .. })
    }
}

/// QEMU's answer to `add-fd`: the set the fd went into, and QEMU's number for its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedFd {
    /// The fd set (`/dev/fdset/<fdset>`).
    pub fdset: u32,
    /// QEMU's own fd number for the copy (as `query-fdsets` lists it).
    pub fd: u64,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    socket: PathBuf,
    lines: LineBuffer,
    events: EventQueue,
    greeting: Greeting,
    next_id: u64,
    timeout: Duration,
    /// The deadline budget of the call in flight, reported by [`QmpError::Timeout`].
    budget: Duration,
}

impl QmpClient {
    /// Connects to QEMU's monitor socket, reads the greeting and negotiates capabilities,
    /// all within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(socket).map_err(|source| QmpError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        Self::handshake(stream, socket.to_owned(), timeout)
    }

    /// Runs the greeting and capabilities negotiation on an already connected stream
    /// (a socketpair in tests, or a monitor fd handed over by whoever started QEMU).
    /// `label` names the stream in errors.
    pub fn handshake(
        stream: UnixStream,
        label: PathBuf,
        timeout: Duration,
    ) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut client = Self {
            stream,
            socket: label,
            lines: LineBuffer::default(),
            events: EventQueue::default(),
            greeting: Greeting {
                version: wire::QemuVersion {
                    major: 0,
                    minor: 0,
                    micro: 0,
                },
                package: String::new(),
                capabilities: Vec::new(),
            },
            next_id: 1,
            timeout,
            budget: timeout,
        };
        match client.read_message("greeting", deadline)? {
            Incoming::Greeting(g) => client.greeting = g,
            other => {
                return Err(QmpError::Unexpected {
                    socket: client.socket,
                    what: format!("{other:?} before the greeting"),
                });
            }
        }
        client.execute_until("qmp_capabilities", None, deadline)?;
        tracing::debug!(socket = %client.socket.display(), version = ?client.greeting.version, "QMP session negotiated");
        Ok(client)
    }

    /// The greeting QEMU sent (its version, capabilities).
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The socket path (or label) this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The deadline used by [`execute`](Self::execute).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the deadline used by [`execute`](Self::execute).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs a command and returns its `return` value, within the client's timeout.
    pub fn execute(&mut self, command: &str, arguments: Option<&Value>) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, self.timeout)
    }

    /// Runs a command with an explicit deadline.
    pub fn execute_within(
        &mut self,
        command: &str,
        arguments: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.budget = timeout;
        self.execute_until(command, arguments, Instant::now() + timeout)
    }

    /// Passes a file descriptor to QEMU under `name` (`getfd`, the fd rides on the command
    /// bytes as SCM_RIGHTS). QEMU keeps its own copy; the caller keeps `fd`.
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        self.execute_with_fd("getfd", &json!({ "fdname": name }), fd)
            .map(drop)
    }

    /// Closes the descriptor QEMU holds under `name` (`closefd`): one passed with
    /// [`Self::send_fd`] that nothing took.
    pub fn close_fd(&mut self, name: &str) -> Result<(), QmpError> {
        self.execute("closefd", Some(&json!({ "fdname": name })))
            .map(drop)
    }

    /// Adds a copy of `fd` to an fd set (`add-fd`, the fd riding as SCM_RIGHTS): to the set
    /// `fdset` when given, else to a new set with the lowest free id. `opaque` is a note QEMU
    /// shows in `query-fdsets`. A block node then opens the file as `/dev/fdset/<id>` (QEMU
    /// dups the set's fd whose access mode matches), and [`Self::remove_fd`] closes it. The
    /// caller keeps `fd`.
    pub fn add_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        fdset: Option<u32>,
        opaque: Option<&str>,
    ) -> Result<AddedFd, QmpError> {
        let mut args = serde_json::Map::new();
        if let Some(id) = fdset {
            args.insert("fdset-id".to_owned(), json!(id));
        }
        if let Some(note) = opaque {
            args.insert("opaque".to_owned(), json!(note));
        }
        let answer = self.execute_with_fd("add-fd", &Value::Object(args), fd)?;
        let field = |name: &str| answer.get(name).and_then(Value::as_u64);
        match (
            field("fdset-id").and_then(|n| u32::try_from(n).ok()),
            field("fd"),
        ) {
            (Some(fdset), Some(fd)) => Ok(AddedFd { fdset, fd }),
            _ => Err(self.unexpected(&format!("add-fd answer {answer}"))),
        }
    }

    /// Removes fd set `fdset` (`remove-fd` without `fd`: every fd of the set). QEMU closes
    /// each fd now, or, while a block node still uses the file, when it lets go of it.
    pub fn remove_fd(&mut self, fdset: u32) -> Result<(), QmpError> {
        self.execute("remove-fd", Some(&json!({ "fdset-id": fdset })))
            .map(drop)
    }

    /// Runs `command` with `fd` attached to its bytes as SCM_RIGHTS, within the client's
    /// timeout.
    fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: &Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.budget = self.timeout;
        let deadline = Instant::now() + self.timeout;
        let id = self.take_id();
        let bytes = wire::encode_command(id, command, Some(arguments));
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
        self.set_write_deadline(command, deadline)?;
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[IoSlice::new(&bytes)],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )
        .map_err(|e| self.io_error(command, io::Error::from(e)))?;
        if let Some(rest) = bytes.get(sent..).filter(|rest| !rest.is_empty()) {
            self.write_bytes(command, rest)?;
        }
        self.wait_reply(command, id, deadline)
    }

    /// Waits until an event matching `matches` arrives (or is already queued) and takes it.
    /// `Ok(None)` when the deadline passes first.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&Event) -> bool,
    ) -> Result<Option<Event>, QmpError> {
        if let Some(e) = self.events.take_first(&mut matches) {
            return Ok(Some(e));
        }
        self.budget = timeout;
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message("wait for event", deadline) {
                Ok(Incoming::Event(e)) if matches(&e) => return Ok(Some(e)),
                Ok(Incoming::Event(e)) => self.events.push(e),
                Ok(Incoming::Reply { id, .. }) => {
                    tracing::debug!(?id, "dropped a late QMP reply while waiting for an event");
                }
                Ok(Incoming::Greeting(_)) => return Err(self.unexpected("a second greeting")),
                Err(QmpError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the first queued event that matches, without reading the socket.
    pub fn take_event(&mut self, matches: impl FnMut(&Event) -> bool) -> Option<Event> {
        self.events.take_first(matches)
    }

    /// Takes every queued event, oldest first, without reading the socket.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn execute_until(
        &mut self,
        command: &str,
        arguments: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let id = self.take_id();
        let bytes = wire::encode_command(id, command, arguments);
        self.set_write_deadline(command, deadline)?;
        self.write_bytes(command, &bytes)?;
        tracing::trace!(command, id, "QMP command sent");
        self.wait_reply(command, id, deadline)
    }

    fn wait_reply(&mut self, command: &str, id: u64, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            match self.read_message(command, deadline)? {
                Incoming::Event(e) => self.events.push(e),
                Incoming::Reply {
                    id: Some(got),
                    result,
                } if got == id => {
                    return result.map_err(|failure| QmpError::Command {
                        command: command.to_owned(),
                        failure,
                    });
                }
                Incoming::Reply { id: got, .. } => {
                    tracing::debug!(
                        ?got,
                        waiting_for = id,
                        "dropped a late QMP reply to an earlier command"
                    );
                }
                Incoming::Greeting(_) => return Err(self.unexpected("a second greeting")),
            }
        }
    }

    /// Writes all of `bytes` with MSG_NOSIGNAL, so a dead QEMU is an EPIPE error and never
    /// a SIGPIPE that kills an embedding process which did not ignore it.
    fn write_bytes(&mut self, command: &str, mut bytes: &[u8]) -> Result<(), QmpError> {
        while !bytes.is_empty() {
            match rustix::net::send(&self.stream, bytes, rustix::net::SendFlags::NOSIGNAL) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(self.io_error(command, e));
                }
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.io_error(command, io::Error::from(e))),
            }
        }
        Ok(())
    }

    fn set_write_deadline(&self, command: &str, deadline: Instant) -> Result<(), QmpError> {
        let left = remaining(deadline).ok_or_else(|| self.timeout_error(command))?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|e| self.io_error(command, e))
    }

    fn read_message(&mut self, command: &str, deadline: Instant) -> Result<Incoming, QmpError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(line) = self.lines.next_line() {
                return wire::parse_line(&line).map_err(|source| QmpError::Protocol {
                    socket: self.socket.clone(),
                    source,
                });
            }
            let left = remaining(deadline).ok_or_else(|| self.timeout_error(command))?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.io_error(command, e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Disconnected {
                        socket: self.socket.clone(),
                        command: command.to_owned(),
                    });
                }
                Ok(n) => self.lines.extend(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.io_error(command, e)),
            }
        }
    }

    fn io_error(&self, command: &str, source: io::Error) -> QmpError {
        let gone = matches!(
            source.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        );
        if gone {
            QmpError::Disconnected {
                socket: self.socket.clone(),
                command: command.to_owned(),
            }
        } else if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.timeout_error(command)
        } else {
            QmpError::Io {
                socket: self.socket.clone(),
                command: command.to_owned(),
                source,
            }
        }
    }

    fn timeout_error(&self, command: &str) -> QmpError {
        QmpError::Timeout {
            socket: self.socket.clone(),
            command: command.to_owned(),
            after: self.budget,
        }
    }

    fn unexpected(&self, what: &str) -> QmpError {
        QmpError::Unexpected {
            socket: self.socket.clone(),
            what: what.to_owned(),
        }
    }
}

/// Time left before `deadline`, `None` once it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::qmp::fake::{Action, FakeQmp};

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn negotiates_and_reports_the_version() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({"qemu": {"major": 10}}))]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        assert_eq!(c.greeting().version.major, 10);
        assert_eq!(c.greeting().capabilities, ["oob"]);
        c.execute("query-version", None).unwrap();
        let got = fake.received();
        assert_eq!(got[0].command, "qmp_capabilities");
        assert_eq!(got[1].command, "query-version");
    }

    #[test]
    fn events_read_while_waiting_for_a_reply_are_queued() {
        let fake = FakeQmp::start(|cmd, args| match cmd {
            "device_del" => vec![
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"path": "/machine/peripheral/vb0/virtio-backend"}),
                ),
                Action::Event(
                    "DEVICE_DELETED",
                    json!({"device": args["id"], "path": "/machine/peripheral/vb0"}),
                ),
                Action::Return(json!({})),
            ],
            _ => vec![Action::Return(json!({}))],
        });
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        c.execute("device_del", Some(&json!({"id": "vb0"})))
            .unwrap();
        // Both events arrived before the reply; the one for the device itself is there.
        let ev = c
            .wait_event(Duration::ZERO, |e| e.is_device_deleted("vb0"))
            .unwrap();
        assert_eq!(ev.unwrap().data["device"], "vb0");
        assert_eq!(c.drain_events().len(), 1, "the child's event stays queued");
    }

    #[test]
    fn a_refusal_carries_class_and_description() {
        let fake = FakeQmp::start(|_, _| vec![Action::Error("Duplicate device ID 'vb0'".into())]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let err = c
            .execute("device_add", Some(&json!({"id": "vb0"})))
            .unwrap_err();
        assert_eq!(err.failure().unwrap().desc, "Duplicate device ID 'vb0'");
        assert_eq!(err.failure().unwrap().class, "GenericError");
        assert!(err.to_string().contains("device_add"), "{err}");
    }

    #[test]
    fn a_late_reply_is_not_taken_for_the_next_commands_answer() {
        let fake = FakeQmp::start(|cmd, _| match cmd {
            "slow" => vec![
                Action::Sleep(Duration::from_millis(300)),
                Action::Return(json!("slow")),
            ],
            _ => vec![Action::Return(json!("fast"))],
        });
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let err = c
            .execute_within("slow", None, Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(err, QmpError::Timeout { ref command, .. } if command == "slow"),
            "{err}"
        );
        assert_eq!(c.execute("fast", None).unwrap(), json!("fast"));
    }

    #[test]
    fn qemu_going_away_mid_call_names_the_command() {
        let fake = FakeQmp::start(|_, _| vec![Action::Close]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let err = c.execute("device_add", None).unwrap_err();
        assert!(err.is_disconnected());
        assert!(
            matches!(err, QmpError::Disconnected { ref command, .. } if command == "device_add"),
            "{err}"
        );
        // And the next call fails cleanly as well, without waiting for its deadline.
        let err = c
            .execute_within("query-status", None, Duration::from_secs(30))
            .unwrap_err();
        assert!(err.is_disconnected(), "{err}");
    }

    #[test]
    fn connect_fails_clearly_without_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let err = QmpClient::connect(&dir.path().join("none.sock"), T).unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("none.sock"));
    }

    #[test]
    fn a_missing_greeting_is_a_protocol_error() {
        let fake = FakeQmp::start_with_greeting(r#"{"return": {}}"#, |_, _| vec![]);
        let err = QmpClient::connect(fake.socket(), T).unwrap_err();
        assert!(matches!(err, QmpError::Unexpected { .. }), "{err}");
        let fake = FakeQmp::start_with_greeting("hello", |_, _| vec![]);
        let err = QmpClient::connect(fake.socket(), T).unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
    }

    #[test]
    fn a_silent_server_times_out_the_greeting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = QmpClient::connect(&path, Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(err, QmpError::Timeout { ref command, .. } if command == "greeting"),
            "{err}"
        );
    }

    #[test]
    fn wait_event_times_out_with_none() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({}))]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let got = c
            .wait_event(Duration::from_millis(50), |e| e.name == "NEVER")
            .unwrap();
        assert_eq!(got, None);
    }

    #[test]
    fn send_fd_passes_the_descriptor_with_getfd() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({}))]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        c.send_fd("fd0", file.as_fd()).unwrap();
        let got = fake.received();
        let getfd = got.iter().find(|r| r.command == "getfd").unwrap();
        assert_eq!(getfd.arguments, json!({"fdname": "fd0"}));
        assert_eq!(getfd.fds, 1);
    }

    #[test]
    fn add_fd_passes_the_descriptor_and_reads_the_set_back() {
        let fake = FakeQmp::start(|cmd, args| match cmd {
            "add-fd" => vec![Action::Return(
                json!({"fdset-id": args.get("fdset-id").cloned().unwrap_or(json!(0)), "fd": 25}),
            )],
            "remove-fd" => vec![Action::Return(json!({}))],
            _ => vec![Action::Return(json!({}))],
        });
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let added = c.add_fd(file.as_fd(), None, Some("disk d.img")).unwrap();
        assert_eq!(added, AddedFd { fdset: 0, fd: 25 });
        let added = c.add_fd(file.as_fd(), Some(7), None).unwrap();
        assert_eq!(added.fdset, 7);
        c.remove_fd(7).unwrap();
        let got = fake.received();
        let adds: Vec<_> = got.iter().filter(|r| r.command == "add-fd").collect();
        assert_eq!(adds[0].arguments, json!({"opaque": "disk d.img"}));
        assert_eq!(adds[0].fds, 1);
        assert_eq!(adds[1].arguments, json!({"fdset-id": 7}));
        let remove = got.iter().find(|r| r.command == "remove-fd").unwrap();
        assert_eq!(remove.arguments, json!({"fdset-id": 7}));
        assert_eq!(remove.fds, 0);
    }

    #[test]
    fn a_malformed_add_fd_answer_is_an_error() {
        let fake = FakeQmp::start(|_, _| vec![Action::Return(json!({"fd": 3}))]);
        let mut c = QmpClient::connect(fake.socket(), T).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = c.add_fd(file.as_fd(), None, None).unwrap_err();
        assert!(matches!(err, QmpError::Unexpected { .. }), "{err}");
    }
}
