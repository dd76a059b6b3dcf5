//! The QMP wire format: newline-delimited JSON objects on a stream socket.
//!
//! QEMU sends three kinds of message: one greeting (`{"QMP": …}`) when the client connects,
//! replies (`{"return": …, "id": …}` or `{"error": {"class", "desc"}, "id": …}`) and
//! asynchronous events (`{"event": …, "data": …, "timestamp": …}`) interleaved with the
//! replies. This module only turns bytes into those messages and commands into bytes; it
//! knows nothing of sockets or deadlines (see `client.rs`).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::events::Event;

/// Why a line from QEMU could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The line is not a JSON object.
    #[error("QMP message is not JSON: {line}")]
    Json {
        /// The offending line (cut to 200 bytes).
        line: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON object is none of greeting, reply or event.
    #[error("QMP message of unknown shape: {line}")]
    Shape {
        /// The offending line (cut to 200 bytes).
        line: String,
    },
}

/// QEMU's version as announced in the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct QemuVersion {
    /// Major version (10 for 10.0.2).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// The greeting QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// The distribution's package string (e.g. `Debian 1:10.0.2+ds-…`).
    pub package: String,
    /// Capabilities QEMU offers (e.g. `oob`); we enable none of them.
    pub capabilities: Vec<String>,
}

/// A failed command as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QmpFailure {
    /// The error class (`GenericError`, `DeviceNotFound`, `CommandNotFound`, …).
    pub class: String,
    /// QEMU's human-readable description.
    pub desc: String,
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The connect-time greeting.
    Greeting(Greeting),
    /// A reply to the command with this id (`None` when the command carried no id).
    Reply {
        /// The echoed command id.
        id: Option<u64>,
        /// The `return` value or the error.
        result: Result<Value, QmpFailure>,
    },
    /// An asynchronous event.
    Event(Event),
}

#[derive(Deserialize)]
struct RawGreetingBody {
    version: RawVersion,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct RawVersion {
    qemu: QemuVersion,
    #[serde(default)]
    package: String,
}

/// Parses one line (without its newline) into a message.
pub fn parse_line(line: &[u8]) -> Result<Incoming, WireError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    let value: Map<String, Value> =
        serde_json::from_slice(line).map_err(|source| WireError::Json {
            line: shown(),
            source,
        })?;
    let shape = || WireError::Shape { line: shown() };
    if let Some(body) = value.get("QMP") {
        let body: RawGreetingBody = serde_json::from_value(body.clone()).map_err(|_| shape())?;
        return Ok(Incoming::Greeting(Greeting {
            version: body.version.qemu,
            package: body.version.package,
            capabilities: body.capabilities,
        }));
    }
    if let Some(name) = value.get("event").and_then(Value::as_str) {
        return Ok(Incoming::Event(Event {
            name: name.to_owned(),
            data: value.get("data").cloned().unwrap_or(Value::Null),
        }));
    }
    let id = value.get("id").and_then(Value::as_u64);
    if let Some(ret) = value.get("return") {
        return Ok(Incoming::Reply {
            id,
            result: Ok(ret.clone()),
        });
    }
    if let Some(err) = value.get("error") {
        let failure: QmpFailure = serde_json::from_value(err.clone()).map_err(|_| shape())?;
        return Ok(Incoming::Reply {
            id,
            result: Err(failure),
        });
    }
    Err(shape())
}

/// Encodes a command with its id as one line, newline included.
pub fn encode_command(id: u64, command: &str, arguments: Option<&Value>) -> Vec<u8> {
    let mut msg = json!({ "execute": command, "id": id });
    if let (Some(args), Value::Object(map)) = (arguments, &mut msg) {
        map.insert("arguments".to_owned(), args.clone());
    }
    let mut bytes = msg.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// Splits complete lines off the front of a receive buffer.
///
/// Bytes after the last newline stay in the buffer for the next read; that is what lets a
/// read time out in the middle of a message without losing it.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Appends bytes just read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete line without its line end (`\n`, or `\r\n` as QEMU writes
    /// it), skipping blank lines. Any other `\r` stays: JSON reads it as white space.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let end = self.buf.iter().position(|&b| b == b'\n')?;
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    /// Bytes held that do not yet form a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_real_greeting() {
        let line = br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;
        let Incoming::Greeting(g) = parse_line(line).unwrap() else {
            panic!("not a greeting");
        };
        assert_eq!(
            g.version,
            QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            }
        );
        assert_eq!(g.capabilities, ["oob"]);
        assert!(g.package.starts_with("Debian"));
    }

    #[test]
    fn parses_replies_errors_and_events() {
        assert_eq!(
            parse_line(br#"{"return": {}, "id": 7}"#).unwrap(),
            Incoming::Reply {
                id: Some(7),
                result: Ok(json!({}))
            }
        );
        assert_eq!(
            parse_line(br#"{"error": {"class": "GenericError", "desc": "Duplicate device ID 'x'"}, "id": 8}"#)
                .unwrap(),
            Incoming::Reply {
                id: Some(8),
                result: Err(QmpFailure {
                    class: "GenericError".into(),
                    desc: "Duplicate device ID 'x'".into()
                })
            }
        );
        let ev = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "vb0", "path": "/machine/peripheral/vb0"}}"#;
        let Incoming::Event(ev) = parse_line(ev).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(ev.name, "DEVICE_DELETED");
        assert_eq!(ev.data["device"], "vb0");
    }

    #[test]
    fn rejects_garbage_and_unknown_shapes() {
        assert!(matches!(
            parse_line(b"not json"),
            Err(WireError::Json { .. })
        ));
        assert!(matches!(
            parse_line(br#"{"x": 1}"#),
            Err(WireError::Shape { .. })
        ));
        assert!(matches!(parse_line(b"[1]"), Err(WireError::Json { .. })));
    }

    #[test]
    fn encodes_commands_with_id_and_arguments() {
        let line = encode_command(3, "device_del", Some(&json!({"id": "vb0"})));
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"execute": "device_del", "id": 3, "arguments": {"id": "vb0"}})
        );
        let v: Value = serde_json::from_slice(&encode_command(4, "query-version", None)).unwrap();
        assert_eq!(v, json!({"execute": "query-version", "id": 4}));
    }

    /// Found by the `qmp` fuzz target, whose invariant read the old doc comment ("without
    /// `\n` or `\r`"): only the line end is taken off, one `\r` with the `\n`; a second
    /// `\r` stays in the line, and the line still decodes.
    #[test]
    fn line_buffer_takes_off_the_line_end_only() {
        let mut b = LineBuffer::default();
        b.extend(b"{\"return\": {}, \"id\": 1}\r\r\n\r\r\n");
        let line = b.next_line().unwrap();
        assert_eq!(line, b"{\"return\": {}, \"id\": 1}\r");
        assert_eq!(b.next_line(), None);
        assert_eq!(b.pending(), 0);
        assert!(matches!(
            parse_line(&line).unwrap(),
            Incoming::Reply { id: Some(1), .. }
        ));
    }

    #[test]
    fn line_buffer_keeps_partial_lines() {
        let mut b = LineBuffer::default();
        b.extend(b"{\"a\":1}\n\n{\"b\"");
        assert_eq!(b.next_line().unwrap(), b"{\"a\":1}");
        assert_eq!(b.next_line(), None);
        assert_eq!(b.pending(), 4);
        b.extend(b":2}\r\n");
        assert_eq!(b.next_line().unwrap(), b"{\"b\":2}");
        assert_eq!(b.pending(), 0);
    }
}
