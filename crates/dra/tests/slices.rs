//! The ResourceSlices: their shape from the fixture host, the 128-device split, the API
//! server's validation rules, the JSON round trip through the k8s-openapi types, and the
//! publisher against the stand-in API server (writes counted, resourceVersion conflicts).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};
use plugboard_dra::testing::MemorySlices;
use plugboard_dra::{
    Offer, OfferName, PCI_BUS_ID, Publisher, SliceEvents, SliceStore, StoreError, build_slices,
    publish_once, slice_problems,
};
use plugboard_service::{Caller, HostdevRequest};
use plugboard_sysfs::PciAddress;

use crate::util::{DRIVER, NODE, host, kernel};

fn string(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.to_owned()),
        ..DeviceAttribute::default()
    }
}

fn int(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    }
}

fn boolean(b: bool) -> DeviceAttribute {
    DeviceAttribute {
        bool: Some(b),
        ..DeviceAttribute::default()
    }
}

/// `n` offers of functions alone in their groups, made from one real device record.
fn synthetic_offers(n: usize) -> Vec<Offer> {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let offers = futures_free_offers(&kernel, dir.path());
    let template = offers
        .into_iter()
        .find(|o| o.name.to_string() == "pci-0000-02-00-0")
        .unwrap();
    (0..n)
        .map(|i| {
            let bus = u8::try_from(i / 32 + 1).unwrap_or(u8::MAX);
            let slot = u8::try_from(i % 32).unwrap();
            let address: PciAddress = format!("0001:{bus:02x}:{slot:02x}.0").parse().unwrap();
            let mut offer = template.clone();
            offer.name = OfferName::Function(address);
            offer.group = 1000 + u32::try_from(i).unwrap();
            offer.members[0].address = address;
            offer
        })
        .collect()
}

fn futures_free_offers(
    kernel: &plugboard_sysfs::fake::FakeKernel,
    dir: &std::path::Path,
) -> Vec<Offer> {
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

#[test]
fn the_host_is_offered_as_functions_and_whole_groups_with_typed_attributes() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let offers = futures_free_offers(&kernel, dir.path());
    let names: Vec<String> = offers.iter().map(|o| o.name.to_string()).collect();
    // Not the host bridge (a bridge), not the virtio NIC (no IOMMU group).
    assert_eq!(
        names,
        [
            "iommu-group-5",
            "pci-0000-02-00-0",
            "pci-0000-05-00-0",
            "pci-0000-3b-00-0"
        ]
    );
    let slices = build_slices(DRIVER, NODE, 1, &offers);
    assert_eq!(slices.len(), 1);
    let devices = slices[0].spec.devices.as_ref().unwrap();
    let nic = devices
        .iter()
        .find(|d| d.name == "pci-0000-02-00-0")
        .unwrap();
    let attributes = nic.attributes.as_ref().unwrap();
    assert_eq!(attributes[PCI_BUS_ID], string("0000:02:00.0"));
    assert_eq!(attributes["vendor"], string("0x8086"));
    assert_eq!(attributes["device"], string("0x10d3"));
    assert_eq!(attributes["class"], string("0x020000"));
    assert_eq!(attributes["iommuGroup"], int(7));
    assert_eq!(attributes["numaNode"], int(0));
    assert_eq!(attributes["driver"], string("e1000e"));
    assert_eq!(attributes["viable"], boolean(false));
    let gpu = devices
        .iter()
        .find(|d| d.name == "pci-0000-3b-00-0")
        .unwrap();
    let attributes = gpu.attributes.as_ref().unwrap();
    assert_eq!(attributes["driver"], string("vfio-pci"));
    assert_eq!(attributes["viable"], boolean(true));
    assert_eq!(attributes["numaNode"], int(1));
    let pair = devices.iter().find(|d| d.name == "iommu-group-5").unwrap();
    let attributes = pair.attributes.as_ref().unwrap();
    assert!(
        !attributes.contains_key(PCI_BUS_ID),
        "a group is not one function"
    );
    assert_eq!(attributes["memberCount"], int(2));
    assert_eq!(attributes["members"], string("0000:01:01.0,0000:01:02.0"));
    assert_eq!(attributes["iommuGroup"], int(5));
    assert_eq!(attributes["vendor"], string("0x8086"));
    assert_eq!(attributes["viable"], boolean(false));
    assert!(
        !attributes.contains_key("numaNode"),
        "the members' NUMA node is unknown"
    );

    let pool = &slices[0].spec.pool;
    assert_eq!(
        (
            pool.name.as_str(),
            pool.generation,
            pool.resource_slice_count
        ),
        (NODE, 1, 1)
    );
    assert_eq!(slices[0].spec.node_name.as_deref(), Some(NODE));
    assert_eq!(slices[0].spec.driver, DRIVER);
    assert_eq!(slice_problems(&slices[0]), Vec::<String>::new());
}

#[test]
fn three_hundred_devices_split_into_slices_of_128_that_name_the_count() {
    let offers = synthetic_offers(300);
    let slices = build_slices(DRIVER, NODE, 4, &offers);
    let sizes: Vec<usize> = slices
        .iter()
        .map(|s| s.spec.devices.as_ref().unwrap().len())
        .collect();
    assert_eq!(sizes, [128, 128, 44]);
    let mut names = std::collections::BTreeSet::new();
    for (i, slice) in slices.iter().enumerate() {
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some(format!("node-a-vfio.plugboard.dev-{i}").as_str())
        );
        assert_eq!(slice.spec.pool.resource_slice_count, 3);
        assert_eq!(slice.spec.pool.generation, 4);
        assert_eq!(slice_problems(slice), Vec::<String>::new());
        for d in slice.spec.devices.as_ref().unwrap() {
            assert!(names.insert(d.name.clone()), "{} twice", d.name);
        }
    }
    assert_eq!(names.len(), 300);
    // Exactly 128 still fits one slice; an empty node publishes one empty slice.
    assert_eq!(
        build_slices(DRIVER, NODE, 1, &synthetic_offers(128)).len(),
        1
    );
    let empty = build_slices(DRIVER, NODE, 1, &[]);
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].spec.devices.as_deref(), Some(&[][..]));
}

#[test]
fn slices_round_trip_through_the_api_json_of_k8s_openapi() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let slices = build_slices(DRIVER, NODE, 2, &futures_free_offers(&kernel, dir.path()));
    let json = serde_json::to_value(&slices[0]).unwrap();
    // The wire names of resource.k8s.io/v1.
    assert_eq!(json["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(json["kind"], "ResourceSlice");
    assert_eq!(json["spec"]["pool"]["resourceSliceCount"], 1);
    assert_eq!(json["spec"]["nodeName"], NODE);
    let first = &json["spec"]["devices"][1];
    assert_eq!(first["name"], "pci-0000-02-00-0");
    assert_eq!(first["attributes"][PCI_BUS_ID]["string"], "0000:02:00.0");
    assert_eq!(first["attributes"]["iommuGroup"]["int"], 7);
    let back: ResourceSlice = serde_json::from_value(json).unwrap();
    assert_eq!(back, slices[0]);
}

#[test]
fn the_validation_refuses_what_the_api_server_refuses() {
    let mut slice = build_slices(DRIVER, NODE, 1, &synthetic_offers(129)).remove(0);
    assert_eq!(slice_problems(&slice), Vec::<String>::new());
    let devices = slice.spec.devices.as_mut().unwrap();
    let extra = devices[0].clone();
    devices.push(extra);
    devices[1].name = "PCI_0".into();
    devices[2].attributes.as_mut().unwrap().insert(
        "two".into(),
        DeviceAttribute {
            int: Some(1),
            bool: Some(true),
            ..DeviceAttribute::default()
        },
    );
    devices[3]
        .attributes
        .as_mut()
        .unwrap()
        .insert("long".into(), string(&"x".repeat(65)));
    devices[4]
        .attributes
        .as_mut()
        .unwrap()
        .insert("not an identifier".into(), int(1));
    slice.spec.pool.resource_slice_count = 0;
    slice.spec.all_nodes = Some(true);
    let problems = slice_problems(&slice).join("\n");
    for expected in [
        "129 devices, more than 128",
        "device name \"PCI_0\" is not a DNS label",
        "is not unique",
        "attribute two: exactly one of bool, int, string, version must be set",
        "attribute long: value longer than 64",
        "attribute name \"not an identifier\"",
        "resourceSliceCount 0 is not positive",
        "exactly one of nodeName, nodeSelector, allNodes, perDeviceNodeSelection",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} missing from:\n{problems}"
        );
    }
}

#[tokio::test]
async fn the_publisher_writes_each_slice_once_and_only_when_the_pool_changed() {
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let mut offers = synthetic_offers(300);

    let first = publisher.publish(&offers).await.unwrap();
    assert_eq!((first.generation, first.slices, first.created), (1, 3, 3));
    assert_eq!(store.writes(), 3);

    let again = publisher.publish(&offers).await.unwrap();
    assert_eq!(again.writes(), 0);
    assert_eq!(store.writes(), 3);

    // One device changed: the pool's generation goes up, in every slice.
    offers[5].members[0].driver = Some("vfio-pci".into());
    let changed = publisher.publish(&offers).await.unwrap();
    assert_eq!(
        (changed.generation, changed.replaced, changed.created),
        (2, 3, 0)
    );
    assert!(store.slices().iter().all(|s| s.spec.pool.generation == 2));

    // The node shrank: one slice left, the others deleted.
    offers.truncate(100);
    let shrunk = publisher.publish(&offers).await.unwrap();
    assert_eq!(
        (shrunk.generation, shrunk.replaced, shrunk.deleted),
        (3, 1, 2)
    );
    let stored = store.slices();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].spec.pool.resource_slice_count, 1);
    assert_eq!(stored[0].spec.devices.as_ref().unwrap().len(), 100);
    assert_eq!(store.writes(), 3 + 3 + 3);
}

/// A store where another writer changes the first slice the publisher is about to
/// replace, once.
struct Interfering {
    inner: MemorySlices,
    armed: AtomicBool,
}

impl SliceStore for Interfering {
    async fn list(&self, driver: &str, node: &str) -> Result<Vec<ResourceSlice>, StoreError> {
        self.inner.list(driver, node).await
    }
    async fn create(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        self.inner.create(slice).await
    }
    async fn replace(&self, slice: &ResourceSlice) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.inner.touch(slice.metadata.name.as_deref().unwrap());
        }
        self.inner.replace(slice).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name).await
    }
    async fn watch(&self, driver: &str, node: &str) -> Result<SliceEvents, StoreError> {
        self.inner.watch(driver, node).await
    }
    async fn node_uid(&self, node: &str) -> Result<String, StoreError> {
        self.inner.node_uid(node).await
    }
}

#[tokio::test]
async fn a_resource_version_conflict_starts_the_publish_over() {
    let store = Arc::new(Interfering {
        inner: MemorySlices::new(),
        armed: AtomicBool::new(false),
    });
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let mut offers = synthetic_offers(10);
    publisher.publish(&offers).await.unwrap();

    store.armed.store(true, Ordering::SeqCst);
    offers.pop();
    let report = publisher.publish(&offers).await.unwrap();
    assert_eq!(report.conflicts, 1);
    assert_eq!(report.generation, 2);
    let stored = store.inner.slices();
    assert_eq!(stored[0].spec.devices.as_ref().unwrap().len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_a_vm_takes_outside_kubernetes_leaves_the_published_pool() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let host = host(&kernel, dir.path());
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let names = |store: &MemorySlices| -> Vec<String> {
        store.slices()[0]
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| d.name.clone())
            .collect()
    };
    publish_once(&host, &publisher).await.unwrap();
    assert!(names(&store).contains(&"pci-0000-05-00-0".to_owned()));

    let taker = Arc::clone(&host);
    tokio::task::spawn_blocking(move || {
        taker.hostdev_prepare(
            Caller::ROOT,
            &HostdevRequest {
                owner: "qemu/vm1".into(),
                devices: vec!["0000:05:00.0".into()],
                managed: true,
                whole_group: false,
                shareable: false,
            },
            &(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let report = publish_once(&host, &publisher).await.unwrap();
    assert_eq!(report.generation, 2);
    assert!(!names(&store).contains(&"pci-0000-05-00-0".to_owned()));
}
