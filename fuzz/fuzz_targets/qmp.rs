//! What QEMU sends on its QMP socket: bytes cut into lines by `LineBuffer` (in whatever
//! pieces the socket delivers them), each decoded by `parse_line` into a greeting, a reply
//! or an event, and events matched by the unplug wait.
//!
//! Invariants: cutting the input at any point yields the same lines as feeding it whole,
//! and those are the lines of the contract (each `\n`-ended piece less its `\n` or `\r\n`,
//! blank ones skipped); a decoded message written back as QEMU would write it decodes to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_qemu::qmp::{Event, EventQueue, Incoming, LineBuffer, parse_line};
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // The first byte says where the socket cut the rest in two.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(bytes.len());
    let whole = lines(&[bytes]);
    let pieces = lines(&[&bytes[..cut], &bytes[cut..]]);
    assert_eq!(whole, pieces);
    assert_eq!(whole, model_lines(bytes));
    let mut queue = EventQueue::default();
    for line in &whole {
        let Ok(message) = parse_line(line) else {
            continue;
        };
        let again = parse_line(&encode(&message)).unwrap();
        assert!(same_message(&again, &message), "{message:?} -> {again:?}");
        if let Incoming::Event(event) = message {
            let id = event
                .data
                .get("device")
                .and_then(Value::as_str)
                .unwrap_or("x");
            let deleted = event.is_device_deleted(id);
            let failed = event.is_unplug_guest_error(id);
            assert!(!(deleted && failed), "{event:?}");
            queue.push(event);
        }
    }
    let before = queue.len();
    let taken = queue.take_first(|e: &Event| e.name.starts_with('D'));
    assert_eq!(queue.len() + usize::from(taken.is_some()), before);
    assert!(queue.len() <= EventQueue::CAPACITY);
});

/// The lines a `LineBuffer` yields when `chunks` arrive one after another.
fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut buffer = LineBuffer::default();
    let mut out = Vec::new();
    for chunk in chunks {
        buffer.extend(chunk);
        while let Some(line) = buffer.next_line() {
            out.push(line);
        }
    }
    out
}

/// The lines of `bytes` by the contract: every piece before a `\n`, less one `\r` before
/// the `\n`, blank ones left out; bytes after the last `\n` are no line yet.
fn model_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    pieces.pop();
    pieces
        .into_iter()
        .map(|p| p.strip_suffix(b"\r").unwrap_or(p))
        .filter(|p| !p.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}

/// The message as QEMU writes it.
fn encode(message: &Incoming) -> Vec<u8> {
    let value = match message {
        Incoming::Greeting(g) => json!({"QMP": {
            "version": {"qemu": {"major": g.version.major, "minor": g.version.minor,
                                 "micro": g.version.micro}, "package": g.package},
            "capabilities": g.capabilities,
        }}),
        Incoming::Reply { id, result } => {
            let mut v = match result {
                Ok(ret) => json!({"return": ret}),
                Err(f) => json!({"error": {"class": f.class, "desc": f.desc}}),
            };
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            v
        }
        Incoming::Event(e) => json!({"event": e.name, "data": e.data,
                                     "timestamp": {"seconds": 1, "microseconds": 2}}),
    };
    serde_json::to_vec(&value).unwrap()
}

/// Equal messages, with floating-point numbers compared as JSON prints them (serde_json
/// without `float_roundtrip` may read a printed float back one ulp off).
fn same_message(a: &Incoming, b: &Incoming) -> bool {
    match (a, b) {
        (
            Incoming::Reply {
                id: i,
                result: Ok(x),
            },
            Incoming::Reply {
                id: j,
                result: Ok(y),
            },
        ) => i == j && same_json(x, y),
        (Incoming::Event(x), Incoming::Event(y)) => x.name == y.name && same_json(&x.data, &y.data),
        _ => a == b,
    }
}

fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || ((x - y) / x).abs() < 1e-12
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
