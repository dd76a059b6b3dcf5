//! The kernel's table of Unix sockets (`/proc/net/unix`), as the vhost-user backend check
//! reads it to see whether a backend listens on its socket without connecting to it.
//!
//! Invariants: a line splits into seven whitespace-free fields and a path without leading
//! whitespace; joining them back splits the same way; a listening stream socket's line
//! (flags with `__SO_ACCEPTCON`, type `SOCK_STREAM`) makes the table report a listener on
//! its exact path (lines end at `\n` alone, so a `\r` before it is part of the path), and
//! the header line never counts.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use plugboard_qemu::fuzzing::{proc_net_unix_has_listener, split_proc_net_unix_line};

const SO_ACCEPTCON: u32 = 0x0001_0000;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = std::str::from_utf8(data) else {
        return;
    };
    // Lines end at `\n` alone: the kernel prints paths byte for byte, `\r` included.
    for (n, line) in table.split('\n').enumerate() {
        let Some((fields, path)) = split_proc_net_unix_line(line) else {
            continue;
        };
        for field in fields {
            assert!(
                !field.is_empty() && !field.contains(char::is_whitespace),
                "{line:?}"
            );
        }
        assert!(!path.starts_with(char::is_whitespace), "{line:?}");
        let joined = format!("{} {path}", fields.join(" "));
        assert_eq!(
            split_proc_net_unix_line(&joined),
            Some((fields, path)),
            "{line:?}"
        );
        let hex = |f: &str| u32::from_str_radix(f, 16).ok();
        let listening = hex(fields[3]).is_some_and(|f| f & SO_ACCEPTCON != 0)
            && hex(fields[4]) == Some(1)
            && !path.is_empty();
        if listening && n > 0 {
            assert!(
                proc_net_unix_has_listener(table, Path::new(path)),
                "{line:?}"
            );
        }
    }
    // The header alone never holds a listener.
    let header = table.split('\n').next().unwrap_or_default();
    if let Some((_, path)) = split_proc_net_unix_line(header) {
        assert!(!proc_net_unix_has_listener(header, Path::new(path)));
    }
});
