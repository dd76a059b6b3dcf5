//! A PCI device's `resource` attribute (`0x<start> 0x<end> 0x<flags>` lines):
//! `parse_resource`, which gives the inventory its BARs.
//!
//! Invariants: every BAR ends at or after its start, indexes are the input's line numbers
//! (strictly increasing); printing the BARs in the kernel's format at their line numbers
//! (unused lines all zero) parses back to the same BARs; each BAR survives its JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_sysfs::{Bar, parse_resource};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(bars) = parse_resource(text) else {
        return;
    };
    let mut last: Option<u8> = None;
    for bar in &bars {
        assert!(bar.end >= bar.start, "{bar:?}");
        assert!(bar.size() >= 1);
        assert!(last.is_none_or(|l| bar.index > l), "{bars:?}");
        last = Some(bar.index);
        let json = serde_json::to_value(bar).unwrap();
        assert_eq!(serde_json::from_value::<Bar>(json).unwrap(), *bar);
    }
    let lines = last.map_or(0, |l| usize::from(l) + 1);
    let mut printed = String::new();
    for line in 0..lines {
        match bars.iter().find(|b| usize::from(b.index) == line) {
            Some(b) => printed.push_str(&format!(
                "0x{:016x} 0x{:016x} 0x{:016x}\n",
                b.start, b.end, b.flags
            )),
            None => printed.push_str(&format!("0x{0:016x} 0x{0:016x} 0x{0:016x}\n", 0)),
        }
    }
    let again = parse_resource(&printed).unwrap();
    assert_eq!(again, bars, "{printed:?}");
});
