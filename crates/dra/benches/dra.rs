//! The DRA front's two figures, on the fake kernel:
//!
//! 1. **Prepare latency** of a one-device claim through the kubelet's gRPC call
//!    (`NodePrepareResources` over the Unix socket: claim read from the stand-in API
//!    server, offers read from sysfs, hostdev prepare, CDI spec written), p50 and p99, with
//!    the kernel bind excluded: the NIC is on vfio-pci already, so prepare adopts it and
//!    unprepare leaves it there. The peer, measured in the same run on the same host, is the
//!    core's own `HostService::hostdev_prepare` of the same device (what the CLI calls); the
//!    ratio is the front's overhead. Goal: p99 under 50 ms.
//! 2. **Publishing 10,000 devices** (each alone in its IOMMU group): reading the host,
//!    building the 79 slices and writing them to the stand-in API server; then again with
//!    nothing changed, then after one device changed. Time and API writes of each. Goal:
//!    under 1 s, one write per changed slice.
//!
//! Run: `cargo bench -p plugboard-dra --bench dra`.

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: any failure must stop it loudly"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_dra::proto::dra_v1;
use plugboard_dra::testing::{MemoryClaims, MemorySlices, allocated_claim, connect};
use plugboard_dra::{Driver, DriverConfig, Publisher, Sockets, current_offers};
use plugboard_service::{Caller, HostConfig, HostService, HostdevRequest};
use plugboard_sysfs::fake::{FakeKernel, PciSpec};
use plugboard_vfio::Mode;

const DRIVER: &str = "vfio.plugboard.dev";
const NODE: &str = "node-a";
const ROUNDS: usize = 400;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(prepare_latency());
    runtime.block_on(publish_10k());
}

fn host(kernel: &FakeKernel, dir: &Path) -> Arc<HostService> {
    Arc::new(HostService::with_sysfs(
        HostConfig {
            state_dir: dir.join("state"),
            sysfs_root: kernel.sysfs_root(),
            dev_root: kernel.dev_root(),
            pci_ids: None,
        },
        kernel.sysfs(),
    ))
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a few hundred samples"
        )]
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i]
    };
    (at(0.50), at(0.99))
}

async fn prepare_latency() {
    let kernel = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:02:00.0", 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(7)
                .driver("vfio-pci"),
        )
        .pci(
            PciSpec::new("0000:03:00.0", 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(8)
                .driver("e1000e"),
        )
        .legacy_vfio_only()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = host(&kernel, dir.path());
    let claims = Arc::new(MemoryClaims::new());
    for i in 0..ROUNDS {
        claims.put(allocated_claim(
            "ns",
            &format!("c{i}"),
            &format!("uid-{i}"),
            DRIVER,
            NODE,
            &[("nic", "pci-0000-02-00-0")],
        ));
        claims.put(allocated_claim(
            "ns",
            &format!("m{i}"),
            &format!("mid-{i}"),
            DRIVER,
            NODE,
            &[("nic", "pci-0000-03-00-0")],
        ));
    }
    let config = DriverConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        cdi_dir: dir.path().join("cdi"),
        vfio_mode: Mode::Auto,
    };
    let driver = Arc::new(Driver::new(Arc::clone(&host), Arc::clone(&claims), config));
    let sockets = Sockets::new(&dir.path().join("reg"), &dir.path().join("plugin"), DRIVER);
    let (status, _) = tokio::sync::watch::channel(None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let sockets = sockets.clone();
        async move {
            plugboard_dra::serve(driver, &sockets, status, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    while !sockets.registration.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&sockets.dra).await);
    let claim = |name: String, uid: String| dra_v1::Claim {
        namespace: "ns".into(),
        uid,
        name,
    };

    let mut grpc = Vec::with_capacity(ROUNDS);
    let mut managed = Vec::with_capacity(ROUNDS);
    let mut core = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        // The front: one claim, one device already on vfio-pci.
        let c = claim(format!("c{i}"), format!("uid-{i}"));
        let started = Instant::now();
        let answer = dra
            .node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
                claims: vec![c.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        grpc.push(started.elapsed());
        assert_eq!(answer.claims[&c.uid].error, "");
        let answer = dra
            .node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
                claims: vec![c.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.claims[&c.uid].error, "");

        // For information: the same with the fake kernel's bind (e1000e to vfio-pci and back).
        let m = claim(format!("m{i}"), format!("mid-{i}"));
        let started = Instant::now();
        dra.node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![m.clone()],
        })
        .await
        .unwrap();
        managed.push(started.elapsed());
        dra.node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest { claims: vec![m] })
            .await
            .unwrap();

        // The peer: the core's prepare of the same device, as the CLI calls it.
        let request = HostdevRequest {
            owner: format!("k8s/ns/peer-{i}"),
            devices: vec!["0000:02:00.0".into()],
            managed: true,
            whole_group: true,
            shareable: false,
        };
        let h = Arc::clone(&host);
        let elapsed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            h.hostdev_prepare(Caller::ROOT, &request, &()).unwrap();
            let elapsed = started.elapsed();
            h.hostdev_release(Caller::ROOT, &request, &()).unwrap();
            elapsed
        })
        .await
        .unwrap();
        core.push(elapsed);
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();

    let (g50, g99) = percentiles(grpc);
    let (c50, c99) = percentiles(core);
    let (m50, m99) = percentiles(managed);
    println!("== prepare of a one-device claim, kernel bind excluded ({ROUNDS} rounds)");
    println!("NodePrepareResources over gRPC: p50 {g50:?}  p99 {g99:?}");
    println!("HostService::hostdev_prepare:    p50 {c50:?}  p99 {c99:?}  (peer)");
    println!(
        "front / core: p50 {:.2}x  p99 {:.2}x",
        g50.as_secs_f64() / c50.as_secs_f64(),
        g99.as_secs_f64() / c99.as_secs_f64()
    );
    println!("with the fake kernel's bind (information): p50 {m50:?}  p99 {m99:?}");
    println!(
        "goal p99 < 50 ms: {}",
        if g99 < Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    );
}

async fn publish_10k() {
    const DEVICES: usize = 10_000;
    let mut builder = FakeKernel::builder();
    for i in 0..DEVICES {
        let bus = i / 256 + 1;
        let slot = (i / 8) % 32;
        let function = i % 8;
        builder = builder.pci(
            PciSpec::new(
                &format!("0001:{bus:02x}:{slot:02x}.{function}"),
                0x8086,
                0x10d3,
            )
            .class(0x02_0000)
            .iommu_group(u32::try_from(i).unwrap() + 100)
            .driver("vfio-pci"),
        );
    }
    let built = Instant::now();
    let kernel = builder.legacy_vfio_only().build().unwrap();
    println!(
        "== publishing {DEVICES} devices (fake kernel built in {:?})",
        built.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    let host = host(&kernel, dir.path());
    let store = Arc::new(MemorySlices::new());
    let publisher = Publisher::new(Arc::clone(&store), DRIVER, NODE);

    let started = Instant::now();
    let inventory = host
        .devices(&plugboard_service::DeviceQuery {
            names: false,
            ..plugboard_service::DeviceQuery::default()
        })
        .unwrap();
    let devices_read = started.elapsed();
    let groups = host.sysfs().iommu_groups().unwrap();
    println!(
        "host read, for information: {} devices {devices_read:?}, {} groups {:?}",
        inventory.devices.len(),
        groups.len(),
        started.elapsed() - devices_read
    );

    let started = Instant::now();
    let offers = current_offers(&host).await.unwrap();
    let read = started.elapsed();
    let report = publisher.publish(&offers).await.unwrap();
    let first = started.elapsed();
    println!(
        "first publish: {first:?} (host read {read:?}), {} slices, {} writes",
        report.slices,
        report.writes()
    );
    let goal_first = first < Duration::from_secs(1) && report.writes() == report.slices;

    let started = Instant::now();
    let offers = current_offers(&host).await.unwrap();
    let report = publisher.publish(&offers).await.unwrap();
    let unchanged = started.elapsed();
    println!(
        "unchanged republish: {unchanged:?}, {} writes",
        report.writes()
    );

    let mut changed = offers;
    changed[4321].members[0].numa_node = Some(1);
    let started = Instant::now();
    let report = publisher.publish(&changed).await.unwrap();
    println!(
        "one device changed: {:?}, {} writes (the pool's new generation goes to all {} slices)",
        started.elapsed(),
        report.writes(),
        report.slices
    );
    println!("total API writes: {}", store.writes());
    println!(
        "goal first publish < 1 s with one write per slice, none when unchanged: {}",
        if goal_first && unchanged < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
}
