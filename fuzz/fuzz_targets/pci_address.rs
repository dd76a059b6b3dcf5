//! PCI addresses (`[DDDD:]BB:SS.F`) as users, sysfs and API paths give them:
//! `PciAddress::from_str`, its JSON form and `with_function`.
//!
//! Invariants: a parsed address is in range and prints in the kernel's canonical form,
//! which parses back to the same address (also through JSON); the canonical form of the
//! input (trimmed, lower-cased, domain added) is exactly what is printed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_sysfs::PciAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(address) = text.parse::<PciAddress>() else {
        return;
    };
    assert!(address.slot() <= PciAddress::MAX_SLOT);
    assert!(address.function() <= PciAddress::MAX_FUNCTION);
    let shown = address.to_string();
    assert_eq!(shown.len(), 12, "{shown:?}");
    assert_eq!(
        shown.parse::<PciAddress>().as_ref(),
        Ok(&address),
        "{shown:?}"
    );
    let json = serde_json::to_string(&address).unwrap();
    assert_eq!(serde_json::from_str::<PciAddress>(&json).unwrap(), address);
    // The printed form is the input's own, canonicalized: no digit is dropped or invented.
    let trimmed = text.trim().to_ascii_lowercase();
    let canonical = if trimmed.matches(':').count() == 1 {
        format!("0000:{trimmed}")
    } else {
        trimmed
    };
    let digits = |s: &str| -> Vec<u32> {
        s.split([':', '.'])
            .map(|f| u32::from_str_radix(f, 16).unwrap())
            .collect()
    };
    assert_eq!(digits(&canonical), digits(&shown), "{text:?} -> {shown:?}");
    for function in 0..=PciAddress::MAX_FUNCTION {
        let sibling = address.with_function(function).unwrap();
        assert_eq!(sibling.function(), function);
        assert_eq!(
            (sibling.domain(), sibling.bus(), sibling.slot()),
            (address.domain(), address.bus(), address.slot())
        );
    }
    address
        .with_function(PciAddress::MAX_FUNCTION + 1)
        .unwrap_err();
});
