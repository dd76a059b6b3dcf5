//! A VM's saved device state read back: `SavedState::from_json` (the service stores it in
//! its database and reads it at start and on reconnect), then `DeviceManager::load`, which
//! must refuse whatever does not add up.
//!
//! Invariants: decoded state survives its own JSON; a state that loads saves back the same
//! devices and allocations (sorted), loads again to the same state, and can be torn down
//! completely: every attached device detaches, which frees every block index and root
//! port, and every reference can be dropped, which leaves an empty manager.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use plugboard_devices::test_util::InMemoryHypervisor;
use plugboard_devices::{DeviceManager, Hypervisor, SavedState};

/// Teardown is a loop per reference: skip states with absurd counts.
const MAX_COUNTS: u64 = 10_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(state) = SavedState::from_json(text) else {
        return;
    };
    let json = state.to_json().unwrap();
    assert_eq!(SavedState::from_json(&json).unwrap(), state, "{json}");

    // The VM already holds what the state says is plugged.
    let hypervisor = Arc::new(InMemoryHypervisor::with_kind(state.hypervisor).without_call_log());
    let mut holds_all = true;
    for device in &state.devices {
        if let Some(request) = &device.plugged {
            holds_all &= hypervisor.hotplug_add(request).is_ok();
        }
    }
    let Ok(manager) = DeviceManager::load(Arc::clone(&hypervisor), state.clone()) else {
        return;
    };
    let saved = manager.save();
    let mut expected = state.clone();
    expected.devices.sort_by_key(|d| d.id);
    expected.block_indexes.sort();
    expected.root_ports.sort();
    assert_eq!(saved, expected);
    let again = DeviceManager::load(Arc::clone(&hypervisor), saved.clone()).unwrap();
    assert_eq!(again.save(), saved);
    drop(again);

    let counts: u64 = state
        .devices
        .iter()
        .map(|d| u64::from(d.references.get()) + u64::from(d.attachments.get()))
        .sum();
    if !holds_all || counts > MAX_COUNTS {
        return;
    }
    manager.detach_all().unwrap();
    assert_eq!(manager.allocations(), Default::default());
    assert!(hypervisor.plugged().is_empty());
    for device in manager.devices() {
        for _ in 0..device.references.get() {
            manager.remove_device(device.id).unwrap();
        }
    }
    assert!(manager.is_empty());
});
