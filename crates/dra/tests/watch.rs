//! Slices changed behind the plugin's back come back: the publish loop watches its pool
//! and publishes again when a slice of its own is deleted or edited by someone else, not on
//! the echo of its own writes. In memory and over HTTP (kube-rs against the stand-in API
//! server). And the slices' owner, the Node.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};
use plugboard_dra::testing::MemorySlices;
use plugboard_dra::{KubeSlices, Publisher, SliceEvent, SliceStore, node_owner, publish_loop};
use tokio::sync::{Notify, watch};

use crate::apiserver::ApiServer;
use crate::openapi::{Kind, assert_valid};
use crate::schema::many_offers;
use crate::util::{DRIVER, NODE, eventually, host, kernel};

const SLICE: &str = "node-a-vfio.plugboard.dev-0";

/// The publish loop over the fixture host, polling only once an hour: what it does here,
/// it does for the watch (or at start).
fn start_loop<S: SliceStore + 'static>(
    store: S,
    dir: &std::path::Path,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let kernel = kernel(true);
    let host = host(&kernel, dir);
    let publisher = Publisher::new(store, DRIVER, NODE);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _kernel = kernel;
        publish_loop(
            host,
            publisher,
            Arc::new(Notify::new()),
            Duration::from_secs(3600),
            stopped,
        )
        .await;
    });
    (stop, task)
}

fn has_slice(slices: &[ResourceSlice]) -> bool {
    slices
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some(SLICE))
}

fn driver_attribute(slices: &[ResourceSlice], device: &str) -> Option<String> {
    slices
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .find(|d| d.name == device)
        .and_then(|d| d.attributes.as_ref()?.get("driver")?.string.clone())
}

fn set_driver(slice: &mut ResourceSlice, value: &str) {
    let device = slice
        .spec
        .devices
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d.name == "pci-0000-02-00-0")
        .unwrap();
    device.attributes.as_mut().unwrap().insert(
        "driver".into(),
        DeviceAttribute {
            string: Some(value.into()),
            ..DeviceAttribute::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_deleted_or_edited_behind_the_plugins_back_comes_back_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemorySlices::new());
    store.put_node(NODE, "node-uid-1");
    let (stop, task) = start_loop(Arc::clone(&store), dir.path());
    eventually("the first publish", || has_slice(&store.slices())).await;
    assert_eq!(store.lists(), 1);

    // Deleted by an operator: published again, at the next generation.
    store.remove(SLICE);
    eventually("the slice back", || has_slice(&store.slices())).await;
    assert_eq!(store.slices()[0].spec.pool.generation, 2);

    // A change that is not one (a new resourceVersion, the same slice), and the echoes of
    // the publisher's own writes: no publish. An edit of a device's attribute: published
    // again, the edit undone.
    store.touch(SLICE);
    store.edit(SLICE, |s| set_driver(s, "edited"));
    eventually("the edit undone", || {
        driver_attribute(&store.slices(), "pci-0000-02-00-0").as_deref() == Some("e1000e")
    })
    .await;
    assert_eq!(store.slices()[0].spec.pool.generation, 3);
    // One list at start, one for the delete, one for the edit: the touch and the echoes
    // (create, replace) started none.
    assert_eq!(store.lists(), 3);
    // Every slice names its Node.
    assert_eq!(
        store.slices()[0].metadata.owner_references,
        Some(vec![node_owner(NODE, "node-uid-1")])
    );

    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_deleted_or_edited_behind_the_plugins_back_comes_back_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start().await;
    server.put_node(NODE, "node-uid-1");
    let (stop, task) = start_loop(KubeSlices::new(server.client()), dir.path());
    let watching = || {
        server
            .requests()
            .iter()
            .any(|r| r.contains("/resourceslices?") && r.contains("watch=true"))
    };
    eventually("the first publish and the watch", || {
        has_slice(&server.slices()) && watching()
    })
    .await;
    let lists = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/resource.k8s.io/v1/resourceslices?"))
            .filter(|r| !r.contains("watch=true"))
            .count()
    };
    // The watch's list (for its resourceVersion) and the publish's.
    assert_eq!(lists(&server), 2);
    let requests = server.requests();
    let watch = requests.iter().find(|r| r.contains("watch=true")).unwrap();
    assert!(
        watch.contains("resourceVersion=") && watch.contains("fieldSelector=spec.driver"),
        "{watch}"
    );
    assert!(requests.contains(&"GET /api/v1/nodes/node-a".to_owned()));

    server.delete_slice(SLICE);
    eventually("the slice back", || has_slice(&server.slices())).await;
    assert_eq!(server.slices()[0].spec.pool.generation, 2);

    server.edit_slice(SLICE, |s| {
        s["spec"]["devices"][1]["attributes"]["driver"]["string"] = "edited".into();
    });
    eventually("the edit undone", || {
        driver_attribute(&server.slices(), "pci-0000-02-00-0").as_deref() == Some("e1000e")
    })
    .await;
    assert_eq!(server.slices()[0].spec.pool.generation, 3);
    // Two at start, one for the delete, one for the edit: the echoes started none.
    assert_eq!(lists(&server), 4);
    let stored = server.slices();
    assert_eq!(
        stored[0].metadata.owner_references,
        Some(vec![node_owner(NODE, "node-uid-1")])
    );
    // What the stand-in holds passes the strict upstream schema, owner included.
    assert_valid(
        Kind::ResourceSlice,
        &serde_json::to_value(&stored[0]).unwrap(),
    );
    assert_eq!(server.refused(), Vec::<String>::new());

    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test]
async fn the_echo_of_the_publishers_own_writes_is_not_a_difference() {
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let offers = many_offers(200, 2);
    let mut echo = store.watch(DRIVER, NODE).await.unwrap();
    let seen = |e: &SliceEvent| publisher.differs(e);
    // Before the first publish, anything is a difference.
    let report = publisher.publish(&offers).await.unwrap();
    assert_eq!(report.created, 2);
    for _ in 0..2 {
        let event = tokio_stream::StreamExt::next(&mut echo)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(event, SliceEvent::Applied(_)));
        assert!(!seen(&event), "an echo taken for a change");
    }
    // The node shrank: the delete of the second slice is ours too.
    publisher.publish(&offers[..100]).await.unwrap();
    for _ in 0..2 {
        let event = tokio_stream::StreamExt::next(&mut echo)
            .await
            .unwrap()
            .unwrap();
        assert!(!seen(&event), "an echo taken for a change: {event:?}");
    }
    // Someone else's: a delete of ours, an edit, a slice in our pool we did not write.
    let mine = store.slices().remove(0);
    assert!(seen(&SliceEvent::Deleted(mine.clone())));
    let mut edited = mine.clone();
    edited.spec.devices.as_mut().unwrap().pop();
    assert!(seen(&SliceEvent::Applied(edited)));
    let mut stray = mine.clone();
    stray.metadata.name = Some("stray".into());
    assert!(seen(&SliceEvent::Applied(stray)));
    // Another driver's slice is none of ours.
    let mut other = mine;
    other.spec.driver = "other.example.com".into();
    assert!(!seen(&SliceEvent::Deleted(other)));
}

#[tokio::test]
async fn without_a_readable_node_the_slices_are_published_without_an_owner() {
    let server = ApiServer::start().await;
    let mut publisher = Publisher::new(KubeSlices::new(server.client()), DRIVER, NODE);
    let err = publisher.own_by_node().await.unwrap_err();
    assert!(
        matches!(err, plugboard_dra::StoreError::NotFound(_)),
        "{err:?}"
    );
    assert_eq!(publisher.owner(), None);
    publisher.publish(&many_offers(3, 0)).await.unwrap();
    assert_eq!(server.slices()[0].metadata.owner_references, None);

    // Once the Node can be read, the next publish adds the owner (a change: written).
    server.put_node(NODE, "node-uid-2");
    publisher.own_by_node().await.unwrap();
    let report = publisher.publish(&many_offers(3, 0)).await.unwrap();
    assert_eq!(report.replaced, 1);
    let owners = server.slices()[0]
        .metadata
        .owner_references
        .clone()
        .unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (
            owners[0].api_version.as_str(),
            owners[0].kind.as_str(),
            owners[0].name.as_str(),
            owners[0].uid.as_str(),
            owners[0].controller
        ),
        ("v1", "Node", NODE, "node-uid-2", Some(true))
    );
}
