//! The daemon API's request bodies and query strings, decoded as the handlers decode them:
//! `axum::Json::from_bytes` (what the handlers' `JsonBody` extractor runs) for
//! `RegisterVm`, `AttachRequest` and `HostdevRequest`, and `axum::extract::Query` for
//! `DeviceQuery`, `NamesQuery` and `VfioQuery`; then the checks the service runs on the
//! decoded request before it touches the host (VM name, owner and device names).
//!
//! Invariants: a decoded request written back as JSON (or as a query string) decodes to
//! the same request; a VM name that passes the check is what the rules say; an owner and
//! device names that parse print back to text that parses to the same values.
#![no_main]

use axum::Json;
use axum::extract::Query;
use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use plugboard_hostdev::{HostDevice, Owner};
use plugboard_service::{
    AttachRequest, DeviceQuery, HostdevRequest, NamesQuery, RegisterVm, VfioQuery, validate_name,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the request type; the rest is the body or query string.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Some(req) = json_round_trip::<RegisterVm>(body) {
                check_vm_name(&req.name);
            }
        }
        1 => {
            json_round_trip::<AttachRequest>(body);
        }
        2 => {
            if let Some(req) = json_round_trip::<HostdevRequest>(body) {
                check_hostdev_names(&req);
            }
        }
        3 => query_round_trip::<DeviceQuery>(body),
        4 => query_round_trip::<NamesQuery>(body),
        _ => query_round_trip::<VfioQuery>(body),
    }
});

/// Decodes `body` as the handlers do; a decoded value must survive its own JSON.
fn json_round_trip<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Json(value) = Json::<T>::from_bytes(body).ok()?;
    let json = serde_json::to_vec(&value).unwrap();
    let Json(again) = Json::<T>::from_bytes(&json)
        .unwrap_or_else(|e| panic!("{value:?} -> {}: {e}", String::from_utf8_lossy(&json)));
    assert_eq!(again, value);
    Some(value)
}

/// Decodes a query string as the handlers' `Query` extractor does; a decoded query must
/// survive being written as a query string again.
fn query_round_trip<T>(body: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(uri) = format!("/v1/x?{text}").parse::<Uri>() else {
        return;
    };
    let Ok(Query(value)) = Query::<T>::try_from_uri(&uri) else {
        return;
    };
    let query = serde_urlencoded_string(&value);
    let uri: Uri = format!("/v1/x?{query}").parse().unwrap();
    let Query(again) =
        Query::<T>::try_from_uri(&uri).unwrap_or_else(|e| panic!("{value:?} -> {query:?}: {e}"));
    assert_eq!(again, value);
}

/// `value` as a query string: each field `key=value`, percent-encoded.
fn serde_urlencoded_string<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_value(value).unwrap();
    let mut parts = Vec::new();
    for (key, value) in json.as_object().unwrap() {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{}={}", encode(key), encode(&text)));
    }
    parts.join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn check_vm_name(name: &str) {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
}

fn check_hostdev_names(req: &HostdevRequest) {
    if let Ok(owner) = req.owner.parse::<Owner>() {
        let shown = owner.to_string();
        assert_eq!(shown.parse::<Owner>().as_ref(), Ok(&owner), "{shown:?}");
    }
    for device in &req.devices {
        if let Ok(parsed) = device.parse::<HostDevice>() {
            let shown = parsed.to_string();
            let again = shown.parse::<HostDevice>();
            assert!(
                matches!(&again, Ok(d) if *d == parsed),
                "{device:?} -> {shown:?}"
            );
        }
    }
}
