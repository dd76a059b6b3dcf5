//! A scripted, in-process fake QMP server for tests.
//!
//! It listens on a Unix socket in a temp dir, sends a QEMU 10 greeting, answers
//! `qmp_capabilities` itself and hands every other command to a handler closure that
//! returns what to do: reply, refuse, send events, stall, or hang up. Every command and the
//! number of file descriptors that rode on it (SCM_RIGHTS) is recorded, so a test can check
//! exactly what reached "QEMU" and in which order.
#![expect(
    clippy::expect_used,
    reason = "a test fixture: failing to set it up is the test's failure"
)]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

/// What the fake does in answer to one command, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Reply `{"return": value}` with the command's id.
    Return(Value),
    /// Reply `{"error": {"class": "GenericError", "desc": …}}` with the command's id.
    Error(String),
    /// Send an event.
    Event(&'static str, Value),
    /// Send this raw line (a newline is added).
    Raw(String),
    /// Wait before the next action.
    Sleep(Duration),
    /// Close the connection (QEMU died).
    Close,
}

/// One command the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The `execute` name.
    pub command: String,
    /// The `arguments` (`Null` when absent).
    pub arguments: Value,
    /// How many file descriptors arrived with it.
    pub fds: usize,
}

type Handler = Box<dyn FnMut(&str, &Value) -> Vec<Action> + Send>;

/// A running fake QMP server; stops and joins its thread on drop.
pub struct FakeQmp {
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeQmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeQmp")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl FakeQmp {
    /// Starts a server whose answers come from `handler`; it serves connections one after
    /// another until dropped.
    pub fn start(handler: impl FnMut(&str, &Value) -> Vec<Action> + Send + 'static) -> Self {
        Self::start_with_greeting(
            r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "fake"}, "capabilities": ["oob"]}}"#,
            handler,
        )
    }

    /// Like [`start`](Self::start) with a custom first line instead of the greeting.
    pub fn start_with_greeting(
        greeting: &str,
        handler: impl FnMut(&str, &Value) -> Vec<Action> + Send + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake QMP socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let greeting = greeting.to_owned();
        let thread = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            let mut handler: Handler = Box::new(handler);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &greeting, &mut handler, &log, &stop),
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Self {
            dir,
            socket,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket path to connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A scratch directory that lives as long as the fake (for backend sockets, images).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every command received so far, `qmp_capabilities` included.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The names of the commands received so far, `qmp_capabilities` left out.
    pub fn commands(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|r| r.command)
            .filter(|c| c != "qmp_capabilities")
            .collect()
    }
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: UnixStream,
    greeting: &str,
    handler: &mut Handler,
    log: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    if writeln!(stream, "{greeting}").is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut fds = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut chunk = [0u8; 4096];
        let n = match crate::sys::recv_with_fds(&stream, &mut chunk) {
            crate::sys::RecvOutcome::Data { bytes, fds: got } => {
                fds += got;
                bytes
            }
            crate::sys::RecvOutcome::Again => continue,
            crate::sys::RecvOutcome::Closed => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let command = msg["execute"].as_str().unwrap_or_default().to_owned();
            let arguments = msg.get("arguments").cloned().unwrap_or(Value::Null);
            let id = msg.get("id").cloned().unwrap_or(Value::Null);
            if let Ok(mut l) = log.lock() {
                l.push(Received {
                    command: command.clone(),
                    arguments: arguments.clone(),
                    fds: std::mem::take(&mut fds),
                });
            }
            let actions = if command == "qmp_capabilities" {
                vec![Action::Return(json!({}))]
            } else {
                handler(&command, &arguments)
            };
            for action in actions {
                let line = match action {
                    Action::Return(v) => json!({"return": v, "id": id}).to_string(),
                    Action::Error(desc) => {
                        json!({"error": {"class": "GenericError", "desc": desc}, "id": id})
                            .to_string()
                    }
                    Action::Event(name, data) => json!({"event": name, "data": data,
                        "timestamp": {"seconds": 0, "microseconds": 0}})
                    .to_string(),
                    Action::Raw(s) => s,
                    Action::Sleep(d) => {
                        std::thread::sleep(d);
                        continue;
                    }
                    Action::Close => return,
                };
                if writeln!(stream, "{line}").is_err() {
                    return;
                }
            }
        }
    }
}
