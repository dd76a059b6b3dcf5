//! The API-server contract against the upstream OpenAPI schema document
//! (`schema/resource.k8s.io-v1.json`, the `resource.k8s.io/v1` definitions of Kubernetes
//! 1.34's `api/openapi-spec/swagger.json`, unchanged): the slices the publisher writes and
//! the claims the stand-in builds, as JSON, validated by the `jsonschema` crate in strict
//! mode (an unknown field fails, as with kubeconform's strict schemas). What OpenAPI does
//! not carry (name rules, counts) is `validate.rs`'s, tested here too.

use std::sync::Arc;

use k8s_openapi::api::resource::v1::{Device, DeviceAttribute, ResourceSlice};
use plugboard_dra::testing::{MemorySlices, allocated_claim};
use plugboard_dra::{Offer, OfferName};
use plugboard_dra::{Publisher, build_slices, publish_once, slice_problems};
use plugboard_sysfs::PciAddress;
use plugboard_sysfs::fake::FakeKernel;
use serde_json::{Value, json};

use crate::openapi::{DOCUMENT, Kind, assert_valid, schema_problems, strict_definitions};
use crate::util::{DRIVER, NODE, host, kernel, nic_claim};

fn slice_json(slice: &ResourceSlice) -> Value {
    serde_json::to_value(slice).unwrap()
}

#[test]
fn the_document_is_the_upstream_one_with_every_reference_resolved() {
    let document: Value = serde_json::from_str(DOCUMENT).unwrap();
    assert_eq!(document["swagger"], "2.0");
    assert!(
        document["info"]["x-source"]
            .as_str()
            .unwrap()
            .contains("release-1.34")
    );
    let definitions = document["definitions"].as_object().unwrap();
    // Every $ref names a definition the document holds.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&document, &mut all);
    assert!(all.len() > 40);
    for r in all {
        let name = r.strip_prefix("#/definitions/").unwrap();
        assert!(definitions.contains_key(name), "{r} does not resolve");
    }
    // Unchanged upstream text, e.g. the pool's required fields.
    assert_eq!(
        definitions["io.k8s.api.resource.v1.ResourcePool"]["required"],
        json!(["name", "generation", "resourceSliceCount"])
    );
    // Strict mode closed the objects that list their properties.
    let strict = strict_definitions();
    assert_eq!(
        strict["io.k8s.api.resource.v1.Device"]["additionalProperties"],
        false
    );
    assert_eq!(
        strict["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["additionalProperties"],
        false
    );
    // A map stays a map (attributes: name -> DeviceAttribute).
    assert!(
        strict["io.k8s.api.resource.v1.Device"]["properties"]["attributes"]["additionalProperties"]
            .is_object()
    );
}

#[test]
fn the_slices_of_the_fixture_host_match_the_upstream_schema() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let host = host(&kernel, dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    runtime.block_on(publish_once(&host, &publisher)).unwrap();
    let slices = store.slices();
    assert_eq!(slices.len(), 1);
    let json = slice_json(&slices[0]);
    // The shared-group pair is in it, as one device.
    let names: Vec<&str> = json["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"iommu-group-5"), "{names:?}");
    assert_valid(Kind::ResourceSlice, &json);
    assert_eq!(slice_problems(&slices[0]), Vec::<String>::new());
    // As the list the API server answers.
    let list = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSliceList",
        "metadata": { "resourceVersion": "7" },
        "items": [json],
    });
    assert_valid(Kind::ResourceSliceList, &list);
}

/// `functions` offers of functions alone in their groups and `pairs` offers of two-member
/// groups, cloned from the fixture host's (the fake kernel takes minutes to build 10,000
/// devices in a debug build; the publisher and the slices do not care where offers came
/// from).
pub fn many_offers(functions: usize, pairs: usize) -> Vec<Offer> {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let offers = fixture_offers(&kernel, dir.path());
    let function = offers
        .iter()
        .find(|o| o.name.to_string() == "pci-0000-02-00-0")
        .unwrap();
    let pair = offers
        .iter()
        .find(|o| o.name.to_string() == "iommu-group-5")
        .unwrap();
    let address = |i: usize| -> PciAddress {
        let bus = i / 256 + 1;
        let slot = (i / 8) % 32;
        let function = i % 8;
        format!("0001:{bus:02x}:{slot:02x}.{function}")
            .parse()
            .unwrap()
    };
    let mut all = Vec::new();
    for i in 0..functions {
        let mut offer = function.clone();
        offer.name = OfferName::Function(address(i));
        offer.group = 100 + u32::try_from(i).unwrap();
        offer.members[0].address = address(i);
        all.push(offer);
    }
    for p in 0..pairs {
        let mut offer = pair.clone();
        let group = 100 + u32::try_from(functions + p).unwrap();
        offer.name = OfferName::Group(group);
        offer.group = group;
        offer.members[0].address = address(functions + 2 * p);
        offer.members[1].address = address(functions + 2 * p + 1);
        all.push(offer);
    }
    all
}

/// The fixture host's offers.
fn fixture_offers(kernel: &FakeKernel, dir: &std::path::Path) -> Vec<Offer> {
    let host = host(kernel, dir);
    let inventory = host
        .devices(&plugboard_service::DeviceQuery {
            names: false,
            ..Default::default()
        })
        .unwrap();
    let groups = host.sysfs().iommu_groups().unwrap();
    plugboard_dra::offers(&inventory.devices, &groups)
}

#[tokio::test]
async fn ten_thousand_devices_publish_as_slices_that_match_the_upstream_schema() {
    // 9,800 functions alone in their groups and 100 shared-group pairs: 10,000 PCI
    // functions, 9,900 DRA devices.
    let offers = many_offers(9_800, 100);
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let report = publisher.publish(&offers).await.unwrap();
    assert_eq!(report.slices, 9_900_usize.div_ceil(128));
    assert_eq!(report.writes(), report.slices);
    let slices = store.slices();
    assert_eq!(slices.len(), report.slices);
    let mut groups = 0;
    let mut devices = 0;
    for slice in &slices {
        assert_eq!(
            slice.spec.pool.resource_slice_count,
            i64::try_from(report.slices).unwrap()
        );
        assert_eq!(slice_problems(slice), Vec::<String>::new());
        assert_valid(Kind::ResourceSlice, &slice_json(slice));
        for d in slice.spec.devices.iter().flatten() {
            devices += 1;
            if d.name.starts_with("iommu-group-") {
                groups += 1;
                let attributes = d.attributes.as_ref().unwrap();
                assert_eq!(attributes["memberCount"].int, Some(2));
                assert!(attributes["members"].string.is_some());
            }
        }
    }
    assert_eq!((devices, groups), (9_900, 100));
}

#[test]
fn allocated_claims_match_the_upstream_schema() {
    let one = nic_claim();
    assert_valid(Kind::ResourceClaim, &serde_json::to_value(&one).unwrap());
    let several = allocated_claim(
        "vms",
        "pair",
        "uid-2",
        DRIVER,
        NODE,
        &[("pair", "iommu-group-5"), ("gpu", "pci-0000-3b-00-0")],
    );
    let json = serde_json::to_value(&several).unwrap();
    assert_eq!(json["kind"], "ResourceClaim");
    assert_eq!(json["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(
        json["status"]["allocation"]["devices"]["results"][0]["device"],
        "iommu-group-5"
    );
    assert_valid(Kind::ResourceClaim, &json);
}

/// A valid slice's JSON to break.
fn good_slice() -> Value {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let offers = fixture_offers(&kernel, dir.path());
    let json = slice_json(&build_slices(DRIVER, NODE, 1, &offers)[0]);
    assert_valid(Kind::ResourceSlice, &json);
    json
}

#[test]
fn the_schema_refuses_an_unknown_field_a_wrong_type_and_a_missing_required_field() {
    /// What is broken, how, and what the answer must name.
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: [Case; 6] = [
        (
            "misspelled spec field",
            |s| {
                let spec = s["spec"].as_object_mut().unwrap();
                let node = spec.remove("nodeName").unwrap();
                spec.insert("nodename".into(), node);
            },
            "nodename",
        ),
        (
            "unknown device field",
            |s| s["spec"]["devices"][0]["iommuGroup"] = json!(5),
            "iommuGroup",
        ),
        (
            "unknown attribute value kind",
            |s| s["spec"]["devices"][0]["attributes"]["iommuGroup"] = json!({ "integer": 5 }),
            "integer",
        ),
        (
            "a string where an int is",
            |s| s["spec"]["pool"]["generation"] = json!("1"),
            "/spec/pool/generation",
        ),
        (
            "an int where a string is",
            |s| s["spec"]["devices"][0]["attributes"]["vendor"]["string"] = json!(0x8086),
            "/spec/devices/0/attributes/vendor/string",
        ),
        (
            "missing required field",
            |s| {
                s["spec"]["pool"]
                    .as_object_mut()
                    .unwrap()
                    .remove("resourceSliceCount");
            },
            "resourceSliceCount",
        ),
    ];
    for (what, break_it, expected) in cases {
        let mut slice = good_slice();
        break_it(&mut slice);
        let problems = schema_problems(Kind::ResourceSlice, &slice).join("\n");
        assert!(
            problems.contains(expected),
            "{what}: {expected:?} not in {problems:?}"
        );
    }
    // A claim without its required spec, and one whose result lacks its device.
    let mut claim = serde_json::to_value(nic_claim()).unwrap();
    claim["status"]["allocation"]["devices"]["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("device");
    claim.as_object_mut().unwrap().remove("spec");
    let problems = schema_problems(Kind::ResourceClaim, &claim).join("\n");
    assert!(
        problems.contains("\"device\" is a required property"),
        "{problems}"
    );
    assert!(
        problems.contains("\"spec\" is a required property"),
        "{problems}"
    );
}

#[test]
fn the_limits_openapi_does_not_carry_are_checked_by_validate() {
    let mut slice = build_slices(DRIVER, NODE, 1, &[]).remove(0);
    let attribute = |i: i64| DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    };
    let device = |name: &str, attributes: usize| Device {
        name: name.to_owned(),
        attributes: Some(
            (0..attributes)
                .map(|i| (format!("a{i}"), attribute(i64::try_from(i).unwrap())))
                .collect(),
        ),
        ..Device::default()
    };
    // 32 attributes is the most; a DNS label of 63 is the longest name.
    let longest = "d".repeat(63);
    slice.spec.devices = Some(vec![device("ok", 32), device(&longest, 1)]);
    assert_eq!(slice_problems(&slice), Vec::<String>::new());
    assert_valid(Kind::ResourceSlice, &slice_json(&slice));

    slice.spec.devices = Some(vec![
        device("too-many", 33),
        device(&"d".repeat(64), 1),
        device("pci-0000:02:00.0", 1),
        device("-dash", 1),
    ]);
    // The schema has no word on any of these: validate.rs must.
    assert_valid(Kind::ResourceSlice, &slice_json(&slice));
    let problems = slice_problems(&slice).join("\n");
    for expected in [
        "device too-many: 33 attributes and capacities, more than 32",
        &format!("device name {:?} is not a DNS label", "d".repeat(64)),
        "device name \"pci-0000:02:00.0\" is not a DNS label",
        "device name \"-dash\" is not a DNS label",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} missing from:\n{problems}"
        );
    }
    // 129 devices: valid OpenAPI, refused by the count rule.
    slice.spec.devices = Some((0..129).map(|i| device(&format!("d{i}"), 1)).collect());
    assert_valid(Kind::ResourceSlice, &slice_json(&slice));
    assert!(
        slice_problems(&slice)
            .join("\n")
            .contains("129 devices, more than 128")
    );
}
