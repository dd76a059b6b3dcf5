//! The DRA plugin on a real kernel: the lab guest (`lab/README.md`), a q35 machine with an
//! emulated IOMMU, e1000e NICs (8086:10d3) alone in their IOMMU groups and two behind a
//! PCIe-to-PCI bridge sharing one group.
//!
//! The plugin serves in this process on Unix sockets in a temp dir, over the guest's real
//! `/sys` and `/dev`, with the stand-in API server for the claims; the test drives it with
//! the kubelet's generated client. Every test is ignored on the host (`cargo test` never
//! binds anything here) and refuses to run outside the guest; every device it touched is
//! given back to e1000e when it ends, pass or fail.
//!
//! Run: `cargo run -q -p plugboard-lab -- test -p plugboard-dra -- --nocapture`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use plugboard_dra::proto::dra_v1;
use plugboard_dra::testing::{MemoryClaims, allocated_claim};
use plugboard_dra::{CdiSpec, Driver, DriverConfig, Sockets};
use plugboard_service::{HostConfig, HostService};
use plugboard_sysfs::{PciAddress, Sysfs};
use plugboard_vfio::Mode;
use tonic::transport::{Channel, Endpoint, Uri};

const E1000E: (u16, u16) = (0x8086, 0x10d3);
const DRIVER: &str = "vfio.plugboard.dev";
const NODE: &str = "lab";

fn in_lab_guest() -> Sysfs {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|a| a == "plugboard.lab=1"),
        "not in the lab guest: refusing to bind anything (run lab/run-tests.sh)"
    );
    Sysfs::default()
}

/// One e1000e alone in its group, and the shared group with its two e1000e.
fn nics(sysfs: &Sysfs) -> (PciAddress, u32, Vec<PciAddress>) {
    let mut by_group: BTreeMap<u32, Vec<PciAddress>> = BTreeMap::new();
    for dev in sysfs.pci_devices().unwrap() {
        if (dev.vendor_id().unwrap(), dev.device_id().unwrap()) == E1000E {
            let g = dev.iommu_group().unwrap().expect("the lab has an IOMMU");
            by_group.entry(g).or_default().push(dev.address());
        }
    }
    let mut single = None;
    let mut shared = None;
    for (g, members) in by_group {
        let endpoints = sysfs
            .iommu_group(g)
            .unwrap()
            .members
            .iter()
            .filter(|m| !m.bridge)
            .count();
        if endpoints == 1 {
            single.get_or_insert(members[0]);
        } else {
            shared = Some((g, members));
        }
    }
    let (group, members) = shared.expect("two e1000e sharing a group");
    assert_eq!(members.len(), 2);
    (
        single.expect("an e1000e alone in its group"),
        group,
        members,
    )
}

/// Gives every device back to e1000e when dropped.
struct Restore {
    sysfs: Sysfs,
    devices: Vec<PciAddress>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        for &a in &self.devices {
            let dev = self.sysfs.pci_device(a).unwrap();
            if dev.driver().unwrap().as_deref() != Some("e1000e")
                && let Err(err) = dev.reattach(Some("e1000e"))
            {
                eprintln!("restoring {a} to e1000e failed: {err}");
            }
        }
    }
}

async fn connect(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap()
}

fn driver_of(sysfs: &Sysfs, a: PciAddress) -> Option<String> {
    sysfs.pci_device(a).unwrap().driver().unwrap()
}

fn offer_name(a: PciAddress) -> String {
    format!("pci-{}", a.to_string().replace([':', '.'], "-"))
}

async fn claims_round_trip(mode: Mode) {
    let sysfs = in_lab_guest();
    let (single, group, pair) = nics(&sysfs);
    let mut all = vec![single];
    all.extend(&pair);
    let _restore = Restore {
        sysfs: sysfs.clone(),
        devices: all.clone(),
    };
    for &a in &all {
        assert_eq!(
            driver_of(&sysfs, a).as_deref(),
            Some("e1000e"),
            "{a} must start on e1000e"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(HostService::new(HostConfig {
        state_dir: dir.path().join("state"),
        sysfs_root: "/sys".into(),
        dev_root: "/dev".into(),
        pci_ids: None,
    }));
    let claims = Arc::new(MemoryClaims::new());
    let single_name = offer_name(single);
    let group_name = format!("iommu-group-{group}");
    claims.put(allocated_claim(
        "vms",
        "nic",
        "uid-nic",
        DRIVER,
        NODE,
        &[("nic", &single_name)],
    ));
    claims.put(allocated_claim(
        "vms",
        "pair",
        "uid-pair",
        DRIVER,
        NODE,
        &[("pair", &group_name)],
    ));
    let config = DriverConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        cdi_dir: dir.path().join("cdi"),
        vfio_mode: mode,
    };
    let driver = Arc::new(Driver::new(Arc::clone(&host), claims, config.clone()));
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
    for _ in 0..500 {
        if sockets.registration.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&sockets.dra).await);
    let claim = |name: &str, uid: &str| dra_v1::Claim {
        namespace: "vms".into(),
        uid: uid.into(),
        name: name.into(),
    };
    let both = vec![claim("nic", "uid-nic"), claim("pair", "uid-pair")];
    let answer = dra
        .node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: both.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    for (uid, c) in &answer.claims {
        assert_eq!(c.error, "", "{uid}");
    }
    for &a in &all {
        assert_eq!(driver_of(&sysfs, a).as_deref(), Some("vfio-pci"), "{a}");
    }
    for uid in ["uid-nic", "uid-pair"] {
        let path = plugboard_dra::spec_path(&config.cdi_dir, uid);
        let spec: CdiSpec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for device in &spec.devices {
            for node in &device.container_edits.device_nodes {
                let on_host = node.host_path.as_deref().unwrap_or(&node.path);
                assert!(Path::new(on_host).exists(), "{uid}: {on_host} missing");
            }
            eprintln!("{uid}: {:?}", device.container_edits);
        }
    }
    let answer = dra
        .node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest { claims: both })
        .await
        .unwrap()
        .into_inner();
    for (uid, c) in &answer.claims {
        assert_eq!(c.error, "", "{uid}");
    }
    for &a in &all {
        assert_eq!(driver_of(&sysfs, a).as_deref(), Some("e1000e"), "{a}");
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab guest only: binds real devices"]
async fn claims_for_an_e1000e_and_the_shared_group_pair_round_trip_in_legacy_mode() {
    claims_round_trip(Mode::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab guest only: binds real devices"]
async fn claims_for_an_e1000e_and_the_shared_group_pair_round_trip_in_iommufd_mode() {
    claims_round_trip(Mode::Iommufd).await;
}
