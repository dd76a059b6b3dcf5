//! The API server's validation rules for what this driver writes, from the
//! `resource.k8s.io/v1` API documentation: the checks a stand-in API server cannot make,
//! made here so that a slice the tests accept is one the real server accepts too.

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};

use crate::slices::MAX_DEVICES_PER_SLICE;

/// Most attributes plus capacities one device may have (`ResourceSliceMaxAttributesAndCapacitiesPerDevice`).
pub const MAX_ATTRIBUTES_PER_DEVICE: usize = 32;

/// Longest string attribute value (`DeviceAttributeMaxValueLength`).
pub const MAX_ATTRIBUTE_VALUE_LENGTH: usize = 64;

/// Longest attribute identifier (`DeviceMaxIDLength`).
pub const MAX_ATTRIBUTE_ID_LENGTH: usize = 32;

/// True for a DNS label (RFC 1123): at most 63 of `a-z0-9-`, alphanumeric at both ends.
#[must_use]
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for a DNS subdomain (RFC 1123): at most 253, labels joined by dots.
#[must_use]
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// True for a C identifier of at most [`MAX_ATTRIBUTE_ID_LENGTH`] characters.
fn is_c_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= MAX_ATTRIBUTE_ID_LENGTH
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks `slice` as the API server would, returning every violation found (empty: valid).
#[must_use]
pub fn slice_problems(slice: &ResourceSlice) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |what: String| problems.push(what);
    match slice.metadata.name.as_deref() {
        Some(name) if is_dns_subdomain(name) => {}
        other => bad(format!("metadata.name {other:?} is not a DNS subdomain")),
    }
    let spec = &slice.spec;
    if !is_dns_subdomain(&spec.driver) || spec.driver.len() > 63 {
        bad(format!(
            "spec.driver {:?} is not a DNS subdomain of at most 63",
            spec.driver
        ));
    }
    let pool = &spec.pool;
    if pool.name.is_empty() || pool.name.len() > 253 || !pool.name.split('/').all(is_dns_subdomain)
    {
        bad(format!(
            "spec.pool.name {:?} is not DNS subdomains joined by /",
            pool.name
        ));
    }
    if pool.generation < 0 {
        bad(format!(
            "spec.pool.generation {} is negative",
            pool.generation
        ));
    }
    if pool.resource_slice_count <= 0 {
        bad(format!(
            "spec.pool.resourceSliceCount {} is not positive",
            pool.resource_slice_count
        ));
    }
    let placements = [
        spec.node_name.is_some(),
        spec.node_selector.is_some(),
        spec.all_nodes == Some(true),
        spec.per_device_node_selection == Some(true),
    ];
    if placements.iter().filter(|p| **p).count() != 1 {
        bad(
            "exactly one of nodeName, nodeSelector, allNodes, perDeviceNodeSelection must be set"
                .to_owned(),
        );
    }
    let devices = spec.devices.as_deref().unwrap_or_default();
    if devices.len() > MAX_DEVICES_PER_SLICE {
        bad(format!(
            "{} devices, more than {MAX_DEVICES_PER_SLICE}",
            devices.len()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for device in devices {
        if !is_dns_label(&device.name) {
            bad(format!("device name {:?} is not a DNS label", device.name));
        }
        if !names.insert(device.name.as_str()) {
            bad(format!("device name {:?} is not unique", device.name));
        }
        let attributes = device.attributes.as_ref();
        let count =
            attributes.map_or(0, |a| a.len()) + device.capacity.as_ref().map_or(0, |c| c.len());
        if count > MAX_ATTRIBUTES_PER_DEVICE {
            bad(format!(
                "device {}: {count} attributes and capacities, more than {MAX_ATTRIBUTES_PER_DEVICE}",
                device.name
            ));
        }
        for (key, value) in attributes.into_iter().flatten() {
            let id_ok = match key.split_once('/') {
                Some((domain, id)) => {
                    is_dns_subdomain(domain) && domain.len() <= 63 && is_c_identifier(id)
                }
                None => is_c_identifier(key),
            };
            if !id_ok {
                bad(format!(
                    "device {}: attribute name {key:?} is not [domain/]identifier",
                    device.name
                ));
            }
            if let Some(problem) = attribute_problem(value) {
                bad(format!(
                    "device {}: attribute {key}: {problem}",
                    device.name
                ));
            }
        }
    }
    problems
}

fn attribute_problem(value: &DeviceAttribute) -> Option<String> {
    let set = [
        value.bool.is_some(),
        value.int.is_some(),
        value.string.is_some(),
        value.version.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Some("exactly one of bool, int, string, version must be set".to_owned());
    }
    match (&value.string, &value.version) {
        (Some(s), _) | (_, Some(s)) if s.len() > MAX_ATTRIBUTE_VALUE_LENGTH => {
            Some(format!("value longer than {MAX_ATTRIBUTE_VALUE_LENGTH}"))
        }
        _ => None,
    }
}
