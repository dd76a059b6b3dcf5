//! The whole plugin as `plugboard-dra` runs it: recovery before serving, the
//! slices published at start and again after a prepare.

use std::sync::Arc;
use std::time::Duration;

use plugboard_dra::proto::dra_v1;
use plugboard_dra::testing::{MemoryClaims, MemorySlices};
use plugboard_dra::{Driver, DriverConfig, Publisher, Sockets};
use plugboard_hostdev::registry::{Registry, RegistryOptions};
use plugboard_hostdev::{Intent, IntentOp, IntentStep, Owner, ProcessStamp};
use plugboard_vfio::Mode;
use tokio::sync::oneshot;

use crate::util::{
    DRIVER, NODE, connect, driver_of, eventually, host, kernel, nic_claim, owner_of,
};

fn driver_attribute(store: &MemorySlices, device: &str) -> Option<String> {
    store
        .slices()
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .find(|d| d.name == device)
        .and_then(|d| d.attributes.as_ref()?.get("driver")?.string.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_killed_mid_prepare_is_recovered_before_it_serves() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    // What a plugin killed between the bind and the registry's record leaves: the NIC on
    // vfio-pci, and a prepare intent of a process that is gone.
    kernel
        .sysfs()
        .pci_device("0000:02:00.0".parse().unwrap())
        .unwrap()
        .bind("vfio-pci")
        .unwrap();
    let mut registry =
        Registry::open(&dir.path().join("state"), &RegistryOptions::default()).unwrap();
    registry
        .write(|tx| {
            tx.insert_intent(&Intent {
                id: 0,
                op: IntentOp::Prepare,
                address: "0000:02:00.0".into(),
                original_driver: Some("e1000e".into()),
                owner: Some("k8s/vms/uid-1".parse::<Owner>().unwrap()),
                managed: true,
                writes_sysfs: true,
                iommu_group: Some(7),
                step: IntentStep::Binding,
                process: ProcessStamp {
                    pid: u32::MAX,
                    start: 1,
                },
            })
        })
        .unwrap();
    drop(registry);

    let host = host(&kernel, dir.path());
    let claims = Arc::new(MemoryClaims::new());
    claims.put(nic_claim());
    let config = DriverConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        cdi_dir: dir.path().join("cdi"),
        vfio_mode: Mode::Auto,
    };
    let driver = Arc::new(Driver::new(Arc::clone(&host), claims, config));
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);
    let sockets = Sockets::new(
        &dir.path().join("registry"),
        &dir.path().join("plugin"),
        DRIVER,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let sockets = sockets.clone();
        async move {
            plugboard_dra::run(
                driver,
                publisher,
                &sockets,
                Duration::from_secs(3600),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        }
    });
    eventually("the registration socket", || sockets.registration.exists()).await;
    // Recovered before serving: the half-done prepare undone, the NIC back on e1000e.
    assert!(host.hostdevs().unwrap().pending.is_empty());
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("e1000e")
    );
    assert_eq!(owner_of(&host, "0000:02:00.0"), None);

    // Published at start.
    eventually("the first publish", || {
        driver_attribute(&store, "pci-0000-02-00-0").is_some()
    })
    .await;
    assert_eq!(
        driver_attribute(&store, "pci-0000-02-00-0").as_deref(),
        Some("e1000e")
    );

    // The kubelet retries the prepare; the pool is published again at once (the poll is
    // an hour away), showing the NIC on vfio-pci.
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&sockets.dra).await);
    let answer = dra
        .node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![dra_v1::Claim {
                namespace: "vms".into(),
                uid: "uid-1".into(),
                name: "nic".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.claims["uid-1"].error, "");
    eventually("the publish after the prepare", || {
        driver_attribute(&store, "pci-0000-02-00-0").as_deref() == Some("vfio-pci")
    })
    .await;
    assert!(store.slices().iter().all(|s| s.spec.pool.generation == 2));

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
