//! A `uevent` file (`KEY=value` lines) as sysfs gives it: `Uevent::parse`, which resolves
//! a device number to its `/dev` node through `DEVNAME`.
//!
//! Invariants: every key is non-empty upper-case/digits/`_`, no value holds a newline;
//! printing the entries as `KEY=value\n` lines parses back to the same entries; `get` finds
//! the first entry of a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_sysfs::Uevent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uevent) = Uevent::parse(text) else {
        return;
    };
    let mut printed = String::new();
    for (key, value) in uevent.entries() {
        assert!(!key.is_empty());
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "{key:?}"
        );
        assert!(!value.contains('\n'), "{value:?}");
        let first = uevent.entries().find(|(k, _)| *k == key).map(|(_, v)| v);
        assert_eq!(uevent.get(key), first);
        printed.push_str(&format!("{key}={value}\n"));
    }
    let again = Uevent::parse(&printed).unwrap();
    assert_eq!(again, uevent, "{printed:?}");
    assert_eq!(uevent.devname(), uevent.get("DEVNAME"));
});
