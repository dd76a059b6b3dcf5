//! The daemon API's path parameters, parsed by the functions the handlers call: PCI
//! addresses (`/v1/host/devices/{address}`, `/v1/hostdevs/{address}/…`), device node kinds
//! and numbers (`/v1/host/nodes/{kind}/{number}`), device ids
//! (`/v1/vms/{name}/devices/{id}`) and VM names (`/v1/vms/{name}`), and the host device
//! and owner names that hostdev requests carry.
//!
//! Invariants: whatever parses prints in its one text form, which parses back to the same
//! value; a device id's 16-hex-digit form parses to the same id; a VM name passes the check
//! exactly when the rules say so.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_hostdev::{HostDevice, Owner};
use plugboard_service::{MAX_VM_NAME_LEN, parse_device_id, validate_name};
use plugboard_sysfs::{DevKind, DevNumber, PciAddress};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(address) = text.parse::<PciAddress>() {
        assert_eq!(address.to_string().parse::<PciAddress>(), Ok(address));
    }
    if let Ok(kind) = text.parse::<DevKind>() {
        assert_eq!(kind.to_string().parse::<DevKind>().ok(), Some(kind));
        assert_eq!(kind.dir_name(), kind.to_string());
    }
    if let Ok(number) = text.parse::<DevNumber>() {
        let shown = number.to_string();
        assert_eq!(shown.parse::<DevNumber>().ok(), Some(number), "{text:?}");
    }
    if let Ok(id) = parse_device_id(text) {
        let shown = id.to_string();
        assert_eq!(shown.len(), 16);
        assert_eq!(
            parse_device_id(&shown).ok(),
            Some(id),
            "{text:?} -> {shown:?}"
        );
        // The deprecated decimal form names the same id.
        assert!(text.len() == 16 || text.parse::<u64>() == Ok(id.as_raw()));
    }
    let name_ok = (1..=MAX_VM_NAME_LEN).contains(&text.len())
        && !text.starts_with(['.', '-'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    assert_eq!(validate_name(text).is_ok(), name_ok, "{text:?}");
    if let Ok(device) = text.parse::<HostDevice>() {
        let shown = device.to_string();
        let again = shown.parse::<HostDevice>();
        assert!(
            matches!(&again, Ok(d) if *d == device),
            "{text:?} -> {shown:?}"
        );
        let json = serde_json::to_string(&device).unwrap();
        assert_eq!(serde_json::from_str::<HostDevice>(&json).unwrap(), device);
    }
    if let Ok(owner) = text.parse::<Owner>() {
        let shown = owner.to_string();
        assert_eq!(shown, text, "an owner prints as it was given");
        assert_eq!(shown.parse::<Owner>().as_ref(), Ok(&owner));
        let json = serde_json::to_string(&owner).unwrap();
        assert_eq!(serde_json::from_str::<Owner>(&json).unwrap(), owner);
    }
});
