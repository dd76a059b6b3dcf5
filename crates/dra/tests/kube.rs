//! The kube-rs code (`KubeSlices`, `KubeClaims`) over real HTTP against the stand-in API
//! server (`apiserver.rs`), which validates every object it receives against the upstream
//! schema: the publisher's requests, their errors, and a claim read for a prepare.

use std::sync::Arc;

use plugboard_dra::{
    ClaimRef, Driver, DriverConfig, KubeClaims, KubeSlices, Publisher, SliceStore, StoreError,
    build_slices,
};
use plugboard_vfio::Mode;

use crate::apiserver::ApiServer;
use crate::schema::many_offers;
use crate::util::{DRIVER, NODE, driver_of, host, kernel, nic_claim, owner_of};

#[tokio::test]
async fn the_publisher_writes_through_kube_rs_over_http_once_per_slice() {
    let server = ApiServer::start().await;
    let publisher = Publisher::new(KubeSlices::new(server.client()), DRIVER, NODE);
    let mut offers = many_offers(290, 5);

    let first = publisher.publish(&offers).await.unwrap();
    assert_eq!((first.generation, first.slices, first.created), (1, 3, 3));
    assert_eq!(server.writes(), 3);
    assert_eq!(server.refused(), Vec::<String>::new());
    let requests = server.requests();
    assert!(
        requests[0].starts_with("GET /apis/resource.k8s.io/v1/resourceslices?")
            && requests[0].contains(
                "fieldSelector=spec.driver%3Dvfio.plugboard.dev%2Cspec.nodeName%3Dnode-a"
            ),
        "{requests:?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("POST /apis/resource.k8s.io/v1/resourceslices"))
            .count(),
        3
    );
    let stored = server.slices();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|s| s.spec.pool.resource_slice_count == 3));
    assert!(stored.iter().all(|s| s.metadata.resource_version.is_some()));

    // Nothing changed: one list, no write.
    let again = publisher.publish(&offers).await.unwrap();
    assert_eq!(again.writes(), 0);
    assert_eq!(server.writes(), 3);

    // One device changed: every slice of the pool at the new generation, as PUTs with the
    // resourceVersion each was listed at.
    offers[5].members[0].driver = Some("vfio-pci".into());
    let changed = publisher.publish(&offers).await.unwrap();
    assert_eq!(
        (changed.generation, changed.replaced, changed.created),
        (2, 3, 0)
    );
    assert_eq!(server.writes(), 6);
    assert!(server.slices().iter().all(|s| s.spec.pool.generation == 2));

    // The node shrank: the slice it no longer needs is deleted.
    offers.truncate(200);
    let shrunk = publisher.publish(&offers).await.unwrap();
    assert_eq!((shrunk.replaced, shrunk.deleted), (2, 1));
    assert_eq!(server.slices().len(), 2);
    assert!(server.requests().iter().any(|r| r.starts_with(
        "DELETE /apis/resource.k8s.io/v1/resourceslices/node-a-vfio.plugboard.dev-2"
    )));
    assert_eq!(server.refused(), Vec::<String>::new());
}

#[tokio::test]
async fn a_stale_resource_version_over_http_is_a_conflict_and_the_publish_starts_over() {
    let server = ApiServer::start().await;
    let publisher = Publisher::new(KubeSlices::new(server.client()), DRIVER, NODE);
    let mut offers = many_offers(10, 1);
    publisher.publish(&offers).await.unwrap();

    server.interfere_with_next_replace("node-a-vfio.plugboard.dev-0");
    offers.pop();
    let report = publisher.publish(&offers).await.unwrap();
    assert_eq!(report.conflicts, 1);
    assert_eq!(report.generation, 2);
    let stored = server.slices();
    assert_eq!(stored[0].spec.devices.as_ref().unwrap().len(), 10);
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/resource.k8s.io/v1/resourceslices?"))
            .count(),
        3,
        "a fresh list after the conflict"
    );
}

#[tokio::test]
async fn kube_slices_map_the_api_servers_answers_to_store_errors() {
    let server = ApiServer::start().await;
    let store = KubeSlices::new(server.client());
    let mut slice = build_slices(DRIVER, NODE, 1, &many_offers(3, 1)).remove(0);
    store.create(&slice).await.unwrap();

    // 409 AlreadyExists on a second create.
    let err = store.create(&slice).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already exists")),
        "{err:?}"
    );
    // 409 Conflict on a stale resourceVersion.
    let listed = store.list(DRIVER, NODE).await.unwrap();
    assert_eq!(listed.len(), 1);
    slice.metadata.resource_version = Some("1000".into());
    let err = store.replace(&slice).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("the object has been modified")),
        "{err:?}"
    );
    // The listed version is current: the replace goes through.
    slice.metadata.resource_version = listed[0].metadata.resource_version.clone();
    store.replace(&slice).await.unwrap();
    // Another driver's or node's slices are not listed.
    assert_eq!(
        store.list("other.example.com", NODE).await.unwrap().len(),
        0
    );
    assert_eq!(store.list(DRIVER, "node-b").await.unwrap().len(), 0);
    // 404 on deleting what is not there.
    store.delete("node-a-vfio.plugboard.dev-0").await.unwrap();
    let err = store
        .delete("node-a-vfio.plugboard.dev-0")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // 422 Invalid: the stand-in holds objects to the upstream schema and the API's rules.
    let mut bad = build_slices(DRIVER, NODE, 1, &many_offers(2, 0)).remove(0);
    bad.spec.devices.as_mut().unwrap()[0].name = "PCI_0".into();
    let err = store.create(&bad).await.unwrap_err();
    let text = plugboard_error_chain(&err);
    assert!(
        text.contains("422") || text.contains("is invalid"),
        "{text}"
    );
    assert!(
        text.contains("device name \"PCI_0\" is not a DNS label"),
        "{text}"
    );
    assert_eq!(server.refused().len(), 1);
}

fn plugboard_error_chain(err: &dyn std::error::Error) -> String {
    let mut text = format!("{err}");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_reads_its_claim_through_kube_rs_over_http() {
    let server = ApiServer::start().await;
    server.put_claim(&nic_claim());
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let host = host(&kernel, dir.path());
    let config = DriverConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        cdi_dir: dir.path().join("cdi"),
        vfio_mode: Mode::Auto,
    };
    let driver = Driver::new(Arc::clone(&host), KubeClaims::new(server.client()), config);
    let claim = ClaimRef {
        namespace: "vms".into(),
        name: "nic".into(),
        uid: "uid-1".into(),
    };
    let prepared = driver.prepare(&claim).await.unwrap();
    assert_eq!(prepared.len(), 1);
    assert_eq!(prepared[0].device, "pci-0000-02-00-0");
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("vfio-pci")
    );
    assert_eq!(
        owner_of(&host, "0000:02:00.0").as_deref(),
        Some("k8s/vms/uid-1")
    );
    assert!(
        server
            .requests()
            .contains(&"GET /apis/resource.k8s.io/v1/namespaces/vms/resourceclaims/nic".to_owned())
    );

    // A claim the API server does not have: the 404 is the claim's error.
    let missing = ClaimRef {
        namespace: "vms".into(),
        name: "gone".into(),
        uid: "uid-9".into(),
    };
    let err = driver.prepare(&missing).await.unwrap_err();
    let text = plugboard_error_chain(&err);
    assert!(
        text.contains("ResourceClaim vms/gone: cannot read it from the API server")
            && text.contains("not found"),
        "{text}"
    );
}
