//! The node's offers as `resource.k8s.io/v1` ResourceSlices: a pure function of the
//! offers, so the whole shape is tested without an API server.
//!
//! One pool per node (pool name = node name), split into slices of at most
//! [`MAX_DEVICES_PER_SLICE`] devices in name order, each slice saying how many slices the
//! pool has at its generation (`resourceSliceCount`). Each device carries typed attributes;
//! names without a domain are in the driver's domain (`vfio.plugboard.dev/iommuGroup` in a
//! CEL selector):
//!
//! | attribute | type | value |
//! |---|---|---|
//! | `resource.kubernetes.io/pciBusID` | string | `0000:02:00.0` (functions only) |
//! | `vendor`, `device`, `class` | string | `0x8086`, `0x10d3`, `0x020000` (groups: when every member agrees) |
//! | `iommuGroup` | int | the IOMMU group |
//! | `numaNode` | int | the NUMA node (when known; groups: when every member agrees) |
//! | `driver` | string | the driver bound now (`none` when unbound; groups: when every member agrees) |
//! | `viable` | bool | no endpoint of the group is on a host driver now |
//! | `memberCount`, `members` | int, string | groups only: how many endpoints, and their addresses joined by `,` (when that fits the 64 characters of a string attribute) |

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::offer::{Offer, OfferName};

/// The most devices one ResourceSlice may hold (`ResourceSliceMaxDevices` of
/// resource.k8s.io/v1).
pub const MAX_DEVICES_PER_SLICE: usize = 128;

/// The standard attribute for a PCI function's address.
pub const PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";

/// The DRA device an offer is published as.
#[must_use]
pub fn device(offer: &Offer) -> Device {
    let mut attributes = BTreeMap::new();
    let string = |s: String| DeviceAttribute {
        string: Some(s),
        ..DeviceAttribute::default()
    };
    let int = |i: i64| DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    };
    // A value every member shares (a function has one member).
    fn common<T: PartialEq>(
        offer: &Offer,
        f: impl Fn(&plugboard_sysfs::PciDeviceInfo) -> T,
    ) -> Option<T> {
        let mut values = offer.members.iter().map(f);
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }
    if let OfferName::Function(address) = offer.name {
        attributes.insert(PCI_BUS_ID.to_owned(), string(address.to_string()));
    }
    if let Some(v) = common(offer, |d| d.ids.vendor) {
        attributes.insert("vendor".to_owned(), string(format!("0x{v:04x}")));
    }
    if let Some(v) = common(offer, |d| d.ids.device) {
        attributes.insert("device".to_owned(), string(format!("0x{v:04x}")));
    }
    if let Some(c) = common(offer, |d| d.class) {
        attributes.insert("class".to_owned(), string(c.to_string()));
    }
    attributes.insert("iommuGroup".to_owned(), int(i64::from(offer.group)));
    if let Some(Some(n)) = common(offer, |d| d.numa_node) {
        attributes.insert("numaNode".to_owned(), int(i64::from(n)));
    }
    if let Some(driver) = common(offer, |d| d.driver.clone()) {
        attributes.insert(
            "driver".to_owned(),
            string(driver.unwrap_or_else(|| "none".to_owned())),
        );
    }
    attributes.insert(
        "viable".to_owned(),
        DeviceAttribute {
            bool: Some(offer.viable),
            ..DeviceAttribute::default()
        },
    );
    if let OfferName::Group(_) = offer.name {
        let members: Vec<String> = offer.addresses().map(|a| a.to_string()).collect();
        attributes.insert(
            "memberCount".to_owned(),
            int(i64::try_from(members.len()).unwrap_or(i64::MAX)),
        );
        // A string attribute holds 64 characters: five addresses fit, a larger group says
        // only how many it has.
        let joined = members.join(",");
        if joined.len() <= 64 {
            attributes.insert("members".to_owned(), string(joined));
        }
    }
    Device {
        name: offer.name.to_string(),
        attributes: Some(attributes),
        ..Device::default()
    }
}

/// The pool's devices split into slices' worth, in name order: what the slices hold,
/// generation aside.
#[must_use]
pub fn chunks(offers: &[Offer]) -> Vec<Vec<Device>> {
    let mut devices: Vec<Device> = offers.iter().map(device).collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    devices
        .chunks(MAX_DEVICES_PER_SLICE)
        .map(<[Device]>::to_vec)
        .collect()
}

/// The name of slice `index` of `driver`'s pool on `node`: a DNS subdomain, stable so an
/// update replaces the same object.
#[must_use]
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let suffix = format!("-{index}");
    let mut prefix = format!("{}-{}", clean(node), clean(driver));
    // 253 characters at most, ending alphanumeric.
    prefix.truncate(253 - suffix.len());
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}{suffix}")
}

/// The node's whole pool as ResourceSlices at `generation`: at most
/// [`MAX_DEVICES_PER_SLICE`] devices each, every slice naming the pool's slice count. An
/// empty node publishes one empty slice, so the pool says "no devices" rather than nothing.
#[must_use]
pub fn build_slices(
    driver: &str,
    node: &str,
    generation: i64,
    offers: &[Offer],
) -> Vec<ResourceSlice> {
    let mut chunks = chunks(offers);
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    slices_of(driver, node, generation, chunks)
}

/// The slices that hold `chunks` at `generation`.
#[must_use]
pub fn slices_of(
    driver: &str,
    node: &str,
    generation: i64,
    chunks: Vec<Vec<Device>>,
) -> Vec<ResourceSlice> {
    let count = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, devices)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(node, driver, index)),
                ..ObjectMeta::default()
            },
            spec: ResourceSliceSpec {
                driver: driver.to_owned(),
                node_name: Some(node.to_owned()),
                pool: ResourcePool {
                    name: node.to_owned(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(devices),
                ..ResourceSliceSpec::default()
            },
        })
        .collect()
}
