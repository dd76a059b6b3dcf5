//! The command channel over the guest's serial console (QEMU's stdio), host side.
//!
//! Protocol (the guest side is `lab/guest/init`):
//! - the guest prints [`READY`] once it serves commands (printk already silenced);
//! - the host sends `"<id> <base64 of a shell script>\n"`; the guest prints
//!   `@@PLUGBOARD-LAB-BEGIN id=<id>@@`, the script's stdout and stderr, then a newline and
//!   `@@PLUGBOARD-LAB-RESULT id=<id> status=<n>@@` (the machine-readable result line);
//! - `"diag <id>\n"`, sent when command `id` missed its deadline, makes the guest print
//!   `@@PLUGBOARD-LAB-DIAG-BEGIN id=<id>@@`, its state (blocked tasks and kernel stacks,
//!   every user thread's state, syscall and stack, open files, the kernel log) and
//!   `@@PLUGBOARD-LAB-DIAG-END id=<id>@@` (see [`Console::diagnostics`]);
//! - `"poweroff\n"` powers the guest off.
//!
//! The newline before the result line is the guest's, not the command's, and is dropped, so
//! output comes back exact except that a missing final newline is added.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

/// Printed by the guest's `/init` when it is ready for commands.
pub const READY: &str = "@@PLUGBOARD-LAB-READY@@";

/// Why no line came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The deadline passed.
    Timeout,
    /// The console closed (QEMU exited).
    Eof,
}

/// Lines from the serial console, with a tail kept for error messages.
#[derive(Debug)]
pub struct Console {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    tail: VecDeque<String>,
    eof: bool,
}

/// How many console lines error messages show.
const TAIL_LINES: usize = 40;

impl Console {
    /// A console fed by chunks of bytes on `rx` (a closed channel is end of file).
    pub fn new(rx: Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            pending: Vec::new(),
            tail: VecDeque::new(),
            eof: false,
        }
    }

    /// The next complete line (without `\n` or `\r`), waiting until `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Result<String, Stop> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=pos).collect();
                line.pop();
                while line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(line.clone());
                return Ok(line);
            }
            if self.eof {
                return Err(Stop::Eof);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => return Err(Stop::Timeout),
                Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    if !self.pending.is_empty() {
                        self.pending.push(b'\n');
                    }
                }
            }
        }
    }

    /// Waits for a line equal to `marker`.
    pub fn wait_for(&mut self, marker: &str, deadline: Instant) -> Result<(), Stop> {
        while self.next_line(deadline)? != marker {}
        Ok(())
    }

    /// Collects the output of command `id` (the request already sent), passing each line to
    /// `on_line` as it arrives. Returns the command's exit status and its output.
    pub fn collect(
        &mut self,
        id: u64,
        deadline: Instant,
        on_line: &mut dyn FnMut(&str),
        output: &mut String,
    ) -> Result<i32, Stop> {
        self.wait_for(&format!("@@PLUGBOARD-LAB-BEGIN id={id}@@"), deadline)?;
        let result_prefix = format!("@@PLUGBOARD-LAB-RESULT id={id} status=");
        // Empty lines are held back: the last one before the result line is the guest's.
        let mut held_empty = 0usize;
        loop {
            let line = self.next_line(deadline)?;
            if let Some(rest) = line.strip_prefix(&result_prefix) {
                for _ in 1..held_empty {
                    on_line("");
                    output.push('\n');
                }
                let status = rest.trim_end_matches("@@").parse().unwrap_or(-1);
                return Ok(status);
            }
            if line.is_empty() {
                held_empty += 1;
                continue;
            }
            for _ in 0..held_empty {
                on_line("");
                output.push('\n');
            }
            held_empty = 0;
            on_line(&line);
            output.push_str(&line);
            output.push('\n');
        }
    }

    /// Collects the guest's answer to `diag <id>` (the request already sent): every line up
    /// to the end marker, the begin marker dropped. Lines of the late command (its output,
    /// even its result line) that arrive first are kept. `Err` carries what came before the
    /// deadline or the end of the console.
    pub fn diagnostics(&mut self, id: u64, deadline: Instant) -> Result<String, (Stop, String)> {
        let begin = format!("@@PLUGBOARD-LAB-DIAG-BEGIN id={id}@@");
        let end = format!("@@PLUGBOARD-LAB-DIAG-END id={id}@@");
        let mut text = String::new();
        loop {
            match self.next_line(deadline) {
                Ok(line) if line == end => return Ok(text),
                Ok(line) if line == begin => {}
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(stop) => return Err((stop, text)),
            }
        }
    }

    /// The last console lines, for error messages.
    pub fn tail(&self) -> String {
        let mut s: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        let partial = String::from_utf8_lossy(&self.pending);
        if !partial.is_empty() {
            s.push(&partial);
        }
        s.join("\n")
    }
}

/// One request line for command `id`.
pub fn request(id: u64, script: &str) -> String {
    format!("{id} {}\n", base64(script.as_bytes()))
}

/// The request for the guest's state while command `id` runs past its deadline.
pub fn diag_request(id: u64) -> String {
    format!("diag {id}\n")
}

/// Standard base64 with padding, no line breaks (what busybox `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn console(chunks: &[&str]) -> Console {
        let (tx, rx) = mpsc::channel();
        for c in chunks {
            tx.send(c.as_bytes().to_vec()).unwrap();
        }
        Console::new(rx)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(request(7, "ls /"), "7 bHMgLw==\n");
    }

    #[test]
    fn output_is_exact_across_chunk_boundaries() {
        let mut c = console(&[
            "boot noise\r\n@@PLUGBOARD-LAB-READY@@\n@@PLUGBOARD-LAB-BE",
            "GIN id=3@@\nhello\n\nworld\n",
            "\n@@PLUGBOARD-LAB-RESULT id=3 status=2@@\n",
        ]);
        c.wait_for(READY, soon()).unwrap();
        let mut out = String::new();
        let mut lines = Vec::new();
        let st = c
            .collect(3, soon(), &mut |l| lines.push(l.to_string()), &mut out)
            .unwrap();
        assert_eq!(st, 2);
        assert_eq!(out, "hello\n\nworld\n");
        assert_eq!(lines, ["hello", "", "world"]);
    }

    #[test]
    fn empty_output_and_missing_final_newline() {
        let mut c =
            console(&["@@PLUGBOARD-LAB-BEGIN id=1@@\n\n@@PLUGBOARD-LAB-RESULT id=1 status=0@@\n"]);
        let mut out = String::new();
        assert_eq!(c.collect(1, soon(), &mut |_| {}, &mut out), Ok(0));
        assert_eq!(out, "");
        let mut c = console(&[
            "@@PLUGBOARD-LAB-BEGIN id=2@@\nno newline\n@@PLUGBOARD-LAB-RESULT id=2 status=1@@\n",
        ]);
        let mut out = String::new();
        assert_eq!(c.collect(2, soon(), &mut |_| {}, &mut out), Ok(1));
        assert_eq!(out, "no newline\n");
    }

    #[test]
    fn a_stale_result_of_another_id_is_output_not_the_end() {
        let mut c = console(&[
            "@@PLUGBOARD-LAB-BEGIN id=5@@\n@@PLUGBOARD-LAB-RESULT id=4 status=0@@\n\n@@PLUGBOARD-LAB-RESULT id=5 status=0@@\n",
        ]);
        let mut out = String::new();
        assert_eq!(c.collect(5, soon(), &mut |_| {}, &mut out), Ok(0));
        assert_eq!(out, "@@PLUGBOARD-LAB-RESULT id=4 status=0@@\n");
    }

    #[test]
    fn diagnostics_run_to_their_end_marker_and_keep_late_output() {
        let mut c = console(&[
            "late line\n@@PLUGBOARD-LAB-DIAG-BEGIN id=4@@\n=== blocked\n  [<0>] vfio_unregister_group_dev+0x9c/0x150\n",
            "@@PLUGBOARD-LAB-DIAG-END id=4@@\nafter\n",
        ]);
        let text = c.diagnostics(4, soon()).unwrap();
        assert_eq!(
            text,
            "late line\n=== blocked\n  [<0>] vfio_unregister_group_dev+0x9c/0x150\n"
        );
        assert_eq!(diag_request(4), "diag 4\n");
        // A guest that stops answering midway: what came is kept, with the reason.
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        tx.send(b"@@PLUGBOARD-LAB-DIAG-BEGIN id=5@@\npartial\n".to_vec())
            .unwrap();
        let mut c = Console::new(rx);
        let err = c
            .diagnostics(5, Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err, (Stop::Timeout, "partial\n".to_string()));
        drop(tx);
        assert_eq!(c.diagnostics(5, soon()), Err((Stop::Eof, String::new())));
    }

    #[test]
    fn timeout_and_eof_are_told_apart() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut c = Console::new(rx);
        let r = c.next_line(Instant::now() + Duration::from_millis(20));
        assert_eq!(r, Err(Stop::Timeout));
        tx.send(b"partial".to_vec()).unwrap();
        drop(tx);
        assert_eq!(c.next_line(soon()).as_deref(), Ok("partial"));
        assert_eq!(c.next_line(soon()), Err(Stop::Eof));
        assert!(c.tail().contains("partial"));
    }
}
