//! What the DRA kubelet plugin reads from outside: the kubelet's gRPC requests (protobuf,
//! `dra.v1` `NodePrepareResources` / `NodeUnprepareResources`), the ResourceClaims the API
//! server answers (JSON, k8s-openapi's `resource.k8s.io/v1` types), and the device names
//! in an allocation (`OfferName`).
//!
//! Invariants: a request re-encoded decodes the same; a claim reference that passes
//! `ClaimRef::check` makes an owner that parses as `k8s/<namespace>/<uid>` and splits back
//! to the same two parts, and a CDI spec path that stays in the CDI directory; the
//! allocation read for the driver is exactly the claim's results of that driver; a device
//! name that parses prints back to the same text (one name per device).
#![no_main]

use std::path::Path;

use k8s_openapi::api::resource::v1::ResourceClaim;
use libfuzzer_sys::fuzz_target;
use plugboard_dra::proto::dra_v1;
use plugboard_dra::{ClaimRef, OfferName, allocation, spec_path};
use plugboard_hostdev::Owner;
use prost::Message;

const DRIVER: &str = "vfio.plugboard.dev";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the input; the rest is the input.
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(req) = dra_v1::NodePrepareResourcesRequest::decode(input) {
                let again = dra_v1::NodePrepareResourcesRequest::decode(&*req.encode_to_vec());
                assert_eq!(again.as_ref(), Ok(&req));
                req.claims.iter().for_each(check_reference);
            }
        }
        1 => {
            if let Ok(req) = dra_v1::NodeUnprepareResourcesRequest::decode(input) {
                let again = dra_v1::NodeUnprepareResourcesRequest::decode(&*req.encode_to_vec());
                assert_eq!(again.as_ref(), Ok(&req));
                req.claims.iter().for_each(check_reference);
            }
        }
        2 => {
            if let Ok(claim) = serde_json::from_slice::<ResourceClaim>(input) {
                check_allocation(&claim);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(input) {
                check_device_name(text);
            }
        }
    }
});

fn check_reference(claim: &dra_v1::Claim) {
    let reference = ClaimRef {
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        uid: claim.uid.clone(),
    };
    if reference.check().is_err() {
        return;
    }
    let owner: Owner = reference.owner().parse().expect("a checked claim's owner parses");
    assert_eq!(owner.driver(), "k8s");
    assert_eq!(
        owner.domain().split_once('/'),
        Some((claim.namespace.as_str(), claim.uid.as_str())),
        "the owner must name this claim and no other"
    );
    let dir = Path::new("/var/run/cdi");
    let spec = spec_path(dir, &claim.uid);
    assert_eq!(spec.parent(), Some(dir), "{}", spec.display());
    assert!(
        spec.components().all(|c| matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )),
        "{}",
        spec.display()
    );
}

fn check_allocation(claim: &ResourceClaim) {
    let wanted = ClaimRef {
        namespace: claim.metadata.namespace.clone().unwrap_or_default(),
        name: claim.metadata.name.clone().unwrap_or_default(),
        uid: claim.metadata.uid.clone().unwrap_or_default(),
    };
    let Ok(allocated) = allocation(claim, &wanted, DRIVER) else {
        return;
    };
    let ours: Vec<(&str, &str, &str)> = claim
        .status
        .iter()
        .flat_map(|s| &s.allocation)
        .flat_map(|a| &a.devices)
        .flat_map(|d| d.results.iter().flatten())
        .filter(|r| r.driver == DRIVER)
        .map(|r| (r.request.as_str(), r.pool.as_str(), r.device.as_str()))
        .collect();
    let read: Vec<(&str, &str, &str)> = allocated
        .iter()
        .map(|a| (a.request.as_str(), a.pool.as_str(), a.device.as_str()))
        .collect();
    assert_eq!(read, ours);
    for a in &allocated {
        check_device_name(&a.device);
    }
}

fn check_device_name(text: &str) {
    if let Ok(name) = text.parse::<OfferName>() {
        assert_eq!(name.to_string(), text, "one name per device");
        assert_eq!(name.to_string().parse::<OfferName>(), Ok(name));
    }
}
