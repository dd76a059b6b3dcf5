//! A minimal QMP client for lab tests: JSON lines over the guest's Unix socket.
//!
//! Deliberately small (greeting, `qmp_capabilities`, commands, events); the real QMP client
//! is `plugboard-qemu`, which this harness must not depend on.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{LabError, Result};

/// A QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and negotiates capabilities. Retries the
    /// connection until `timeout` (QEMU creates the socket shortly after it starts).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(LabError::Qmp {
                        socket: socket.to_path_buf(),
                        detail: format!("cannot connect: {e}"),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let writer = stream
            .try_clone()
            .map_err(|e| LabError::io("clone socket", socket, e))?;
        let mut me = Self {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
        };
        let greeting = me.read_message(Duration::from_secs(10))?;
        if greeting.get("QMP").is_none() {
            return Err(me.err(format!("no greeting, got {greeting}")));
        }
        me.execute("qmp_capabilities", Value::Null)?;
        Ok(me)
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns its `return`.
    /// Events that arrive meanwhile are kept for [`Qmp::wait_event`].
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let line = format!("{msg}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| LabError::io("write to QMP socket", &self.socket, e))?;
        loop {
            let reply = self.read_message(Duration::from_secs(30))?;
            if reply.get("event").is_some() {
                self.events.push_back(reply);
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(LabError::QmpCommand {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.err(format!("unexpected reply to {command}: {reply}")));
        }
    }

    /// Waits up to `timeout` for an event named `name` (e.g. `DEVICE_DELETED`) and returns it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.events.iter().position(|e| e["event"] == name);
            if let Some(ev) = found.and_then(|i| self.events.remove(i)) {
                return Ok(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.err(format!("no {name} event within {timeout:?}")));
            }
            let msg = self.read_message(left)?;
            self.events.push_back(msg);
        }
    }

    fn read_message(&mut self, timeout: Duration) -> Result<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| LabError::io("set timeout on", &self.socket, e))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(self.err("socket closed (QEMU exited?)".into())),
            Ok(_) => {
                serde_json::from_str(&line).map_err(|e| self.err(format!("bad JSON {line:?}: {e}")))
            }
            Err(e) => Err(self.err(format!("read failed: {e}"))),
        }
    }

    fn err(&self, detail: String) -> LabError {
        LabError::Qmp {
            socket: self.socket.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QMP server: greets, then answers each command from a script.
    fn serve(path: &Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut seen = Vec::new();
            for answer in answers {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line.trim().to_string());
                s.write_all(answer.as_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn commands_errors_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = serve(
            &sock,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"hd0\"}}\n{\"return\": {}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Duplicate ID\"}}\n",
            ],
        );
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(
            q.execute("device_del", json!({"id": "hd0"})).unwrap(),
            json!({})
        );
        let err = q.execute("device_add", json!({"driver": "x"})).unwrap_err();
        assert!(err.to_string().contains("Duplicate ID"), "{err}");
        let ev = q
            .wait_event("DEVICE_DELETED", Duration::from_secs(1))
            .unwrap();
        assert_eq!(ev["data"]["device"], "hd0");
        let seen = server.join().unwrap();
        let parsed: Vec<Value> = seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed[0], json!({"execute": "qmp_capabilities"}));
        assert_eq!(
            parsed[1],
            json!({"execute": "device_del", "arguments": {"id": "hd0"}})
        );
    }
}
