//! Rows of the hostdev registry read back from SQLite, decoded as the registry decodes
//! them (`pci_devices`, `intents` and `claims` rows, whose text columns a hand edit or
//! another build may have filled with anything), and the service's VM records stored
//! beside them (`VmRecord` JSON).
//!
//! Input: a table byte (0 `pci_devices`, 1 `intents`, 2 `claims`, 3 a VM record), then the
//! row as a dump would show it: columns split by tabs, `\N` for NULL. A column SQLite
//! itself would refuse to hand over as the type read (text in an integer column) is not a
//! row of ours and is skipped; everything else goes to the decoder.
//!
//! Invariants: a row that decodes encodes to the same columns (reading back what was
//! written is exact); a VM record that decodes survives its own JSON.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use plugboard_hostdev::fuzzing::{RawClaim, RawIntent, RawRow};
use plugboard_service::VmRecord;

fuzz_target!(|data: &[u8]| {
    let Some((&table, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = match table % 4 {
        0 => pci_row(text),
        1 => intent(text),
        2 => claim(text),
        _ => vm_record(text),
    };
});

fn pci_row(text: &str) -> Option<()> {
    let c = columns::<7>(text)?;
    let raw = RawRow {
        address: c[0]?.to_owned(),
        list: c[1]?.to_owned(),
        owner_driver: c[2].map(str::to_owned),
        owner_domain: c[3].map(str::to_owned),
        managed: boolean(c[4]?)?,
        original_driver: c[5].map(str::to_owned),
        iommu_group: integer(c[6])?,
    };
    if let Ok(row) = raw.clone().into_row() {
        assert_eq!(RawRow::from_row(&row), raw);
    }
    Some(())
}

fn intent(text: &str) -> Option<()> {
    let c = columns::<12>(text)?;
    let raw = RawIntent {
        id: c[0]?.parse().ok()?,
        op: c[1]?.to_owned(),
        address: c[2]?.to_owned(),
        original_driver: c[3].map(str::to_owned),
        owner_driver: c[4].map(str::to_owned),
        owner_domain: c[5].map(str::to_owned),
        managed: boolean(c[6]?)?,
        writes_sysfs: boolean(c[7]?)?,
        iommu_group: integer(c[8])?,
        step: c[9]?.to_owned(),
        pid: c[10]?.parse().ok()?,
        pid_start: c[11]?.parse().ok()?,
    };
    if let Ok(intent) = raw.clone().into_intent() {
        assert_eq!(RawIntent::from_intent(&intent), raw);
    }
    Some(())
}

fn claim(text: &str) -> Option<()> {
    let c = columns::<6>(text)?;
    let raw = RawClaim {
        kind: c[0]?.to_owned(),
        key: c[1]?.to_owned(),
        owner_driver: c[2]?.to_owned(),
        owner_domain: c[3]?.to_owned(),
        shareable: boolean(c[4]?)?,
        detail: c[5].map(str::to_owned),
    };
    if let Ok(claim) = raw.clone().into_claim() {
        assert_eq!(RawClaim::from_claim(&claim), raw);
    }
    Some(())
}

fn vm_record(text: &str) -> Option<()> {
    let record = serde_json::from_str::<VmRecord>(text).ok()?;
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(serde_json::from_str::<VmRecord>(&json).unwrap(), record);
    Some(())
}

/// Exactly `N` tab-separated columns, `\N` as NULL.
fn columns<const N: usize>(text: &str) -> Option<[Option<&str>; N]> {
    let mut out = [None; N];
    let mut parts = text.split('\t');
    for slot in &mut out {
        let part = parts.next()?;
        *slot = (part != "\\N").then_some(part);
    }
    parts.next().is_none().then_some(out)
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A nullable integer column: `Some(None)` for NULL, `None` when SQLite would refuse it.
fn integer<T: FromStr>(column: Option<&str>) -> Option<Option<T>> {
    match column {
        None => Some(None),
        Some(text) => text.parse().ok().map(Some),
    }
}
